import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  applyDeadzone, gamepadVector, GamepadDeadman, isDriveKey, joystickToVelocity, joystickVector,
  keysToCommand, vectorToVelocity,
} from '../js/input.js';

const ALL = ['forward', 'back', 'left', 'right', 'forward_left', 'forward_right', 'back_left',
             'back_right', 'stop'];
const close = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) < eps, `${a} != ${b}`);

describe('keysToCommand', () => {
  it('maps single arrows and WASD', () => {
    assert.equal(keysToCommand(['ArrowUp']), 'forward');
    assert.equal(keysToCommand(['ArrowDown']), 'back');
    assert.equal(keysToCommand(['ArrowLeft']), 'left');
    assert.equal(keysToCommand(['ArrowRight']), 'right');
    assert.equal(keysToCommand(['KeyW']), 'forward');
    assert.equal(keysToCommand(['KeyS']), 'back');
    assert.equal(keysToCommand(['KeyA']), 'left');
    assert.equal(keysToCommand(['KeyD']), 'right');
  });

  it('gives diagonals for two keys, whatever their order or kind', () => {
    assert.equal(keysToCommand(['ArrowUp', 'ArrowLeft'], ALL), 'forward_left');
    assert.equal(keysToCommand(['ArrowRight', 'ArrowUp'], ALL), 'forward_right');
    assert.equal(keysToCommand(['ArrowDown', 'ArrowLeft'], ALL), 'back_left');
    assert.equal(keysToCommand(['ArrowDown', 'ArrowRight'], ALL), 'back_right');
    assert.equal(keysToCommand(new Set(['KeyW', 'KeyA'])), 'forward_left');
    assert.equal(keysToCommand(['KeyS', 'ArrowRight']), 'back_right');
  });

  it('lets opposite keys cancel, and ignores keys that do not drive', () => {
    assert.equal(keysToCommand([]), null);
    assert.equal(keysToCommand(['ArrowUp', 'ArrowDown']), null);
    assert.equal(keysToCommand(['ArrowLeft', 'KeyD']), null);
    assert.equal(keysToCommand(['ArrowUp', 'ArrowDown', 'ArrowLeft']), 'left');
    assert.equal(keysToCommand(['ArrowUp', 'KeyW']), 'forward');
    assert.equal(keysToCommand(['Space', 'KeyQ', 'Enter']), null);
    assert.equal(isDriveKey('KeyQ'), false);
    assert.equal(isDriveKey('ArrowUp'), true);
  });

  it('falls back when the bridge has no diagonal commands', () => {
    const basic = ['forward', 'back', 'left', 'right', 'stop'];
    assert.equal(keysToCommand(['ArrowUp', 'ArrowLeft'], basic), 'forward');
    assert.equal(keysToCommand(['ArrowDown', 'ArrowRight'], basic), 'back');
    assert.equal(keysToCommand(['ArrowUp'], ['left', 'stop']), null);
    assert.equal(keysToCommand(['ArrowUp', 'ArrowLeft'], ['left', 'stop']), 'left');
  });
});

describe('joystick math', () => {
  const limits = { linear: 0.5, angular: 1.0 };

  it('has a radial deadzone and rescales beyond it', () => {
    assert.deepEqual(applyDeadzone(0.05, 0.05, 0.12), { x: 0, y: 0 });
    assert.deepEqual(applyDeadzone(0, 0, 0.12), { x: 0, y: 0 });
    const edge = applyDeadzone(0, 0.13, 0.12);
    assert.ok(edge.y > 0 && edge.y < 0.02);
    close(applyDeadzone(0, 1, 0.12).y, 1);
    close(applyDeadzone(0, 0.56, 0.12).y, 0.5);
    close(applyDeadzone(3, 4, 0.12).x, 0.6);   // outside the circle: clamped to the rim
    assert.deepEqual(applyDeadzone(NaN, 1, 0.1), { x: 0, y: 0 });
  });

  it('maps screen offsets: up is forward, right turns right', () => {
    const up = joystickToVelocity(0, -100, 100, limits, 1, 0.1);
    close(up.linear, 0.5);
    close(up.angular, 0);
    const right = joystickToVelocity(100, 0, 100, limits, 1, 0.1);
    close(right.angular, -1.0);
    close(right.linear, 0);
    const back = joystickToVelocity(0, 100, 100, limits, 0.5, 0.1);
    close(back.linear, -0.25);
  });

  it('never exceeds the limits, however far the pointer goes', () => {
    for (const [dx, dy] of [[1e6, -1e6], [-500, 0], [0, 9999], [70, -70], [-1e9, 1e9]]) {
      for (const speed of [0, 0.3, 1, 5]) {
        const v = joystickToVelocity(dx, dy, 80, limits, speed, 0.12);
        assert.ok(Math.abs(v.linear) <= 0.5 + 1e-12, `linear ${v.linear}`);
        assert.ok(Math.abs(v.angular) <= 1.0 + 1e-12, `angular ${v.angular}`);
        assert.ok(Number.isFinite(v.linear) && Number.isFinite(v.angular));
      }
    }
    const knob = joystickVector(300, 400, 50);
    close(Math.hypot(knob.knobX, knob.knobY), 1);
    close(Math.hypot(knob.x, knob.y), 1);
  });

  it('scales by speed and survives nonsense', () => {
    const v = vectorToVelocity({ x: -1, y: 1 }, limits, 0.4);
    close(v.linear, 0.2);
    close(v.angular, 0.4);
    assert.deepEqual(vectorToVelocity({ x: NaN, y: Infinity }, limits, 1), { linear: 0, angular: 0 });
    assert.deepEqual(vectorToVelocity({ x: 1, y: 1 }, undefined, 1), { linear: 0, angular: 0 });
    assert.deepEqual(vectorToVelocity({ x: 0, y: 0 }, limits, 1), { linear: 0, angular: 0 });
    assert.ok(Object.is(vectorToVelocity({ x: 0, y: -0 }, limits, 1).linear, 0));
    assert.deepEqual(joystickToVelocity(0, 0, 0, limits, 1), { linear: 0, angular: 0 });
  });
});

describe('gamepad', () => {
  const pad = (lb, x, y, b = false) => ({
    axes: [x, y, 0, 0],
    buttons: Array.from({ length: 16 }, (_, i) => ({ pressed: (i === 4 && lb) || (i === 1 && b) })),
  });

  it('drives only while the deadman button is held', () => {
    assert.equal(gamepadVector(pad(false, 0, -1)), null);
    assert.equal(gamepadVector(null), null);
    const v = gamepadVector(pad(true, 0, -1));
    close(v.y, 1);
    close(v.x, 0);
    assert.deepEqual(gamepadVector(pad(true, 0.05, 0.1)), { x: 0, y: 0 });  // stick drift
  });

  it('needs a fresh deadman press after cancel()', () => {
    const deadman = new GamepadDeadman();
    assert.notEqual(deadman.update(pad(true, 0, -1)), null);
    deadman.cancel();
    assert.equal(deadman.update(pad(true, 0, -1)), null);   // still held: nothing
    assert.equal(deadman.update(pad(true, 0, -1)), null);
    assert.equal(deadman.update(pad(false, 0, -1)), null);  // released
    assert.notEqual(deadman.update(pad(true, 0, -1)), null); // pressed again: drives
    assert.equal(deadman.update(undefined), null);           // unplugged
  });

  it('does not drive on a pad that was held when first seen... after cancel', () => {
    const deadman = new GamepadDeadman();
    deadman.cancel();
    assert.notEqual(deadman.update(pad(true, 0.5, 0)), null);  // first sight counts as a press
  });
});
