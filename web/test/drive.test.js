import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { DriveController, HEARTBEAT_MS, MIN_GAP_MS } from '../js/drive.js';
import { KeyboardInput } from '../js/input.js';
import { FakeTimers } from './helpers.js';

const COMMANDS = ['forward', 'back', 'left', 'right', 'forward_left', 'forward_right',
                  'back_left', 'back_right', 'stop'];
const hello = (id = 'c1', canDrive = true) => ({
  type: 'hello', client_id: id, can_drive: canDrive, token_required: !canDrive, commands: COMMANDS,
  limits: { linear: 0.5, angular: 1.0 }, command_timeout: 0.5,
});
const state = (driver, you, estop = false) => ({ type: 'state', driver, you_drive: you, estop });
const FORWARD = { kind: 'named', name: 'forward' };

function setup({ connected = true } = {}) {
  const timers = new FakeTimers();
  const log = [];       // [time, message]
  const notices = [];
  let cancels = 0;
  let nextId = 1;
  const drive = new DriveController({
    send(message) {
      log.push([timers.time, message]);
      return nextId++;
    },
    timers,
    now: timers.now,
    onNotice: (text) => notices.push(text),
    onCancelInputs: () => { cancels += 1; },
  });
  if (connected) {
    drive.setHello(hello());
    drive.setState(state(null, false));
  }
  const types = () => log.map(([, m]) => (m.type === 'command' ? m.name : m.type));
  return { timers, log, notices, drive, types, cancels: () => cancels,
           clear: () => log.splice(0) };
}

/** Press forward with nobody driving; the bridge grants the lock. */
function driving(t) {
  t.drive.input('keys', FORWARD);
  assert.deepEqual(t.types(), ['acquire']);
  t.drive.reply({ type: 'ack', id: 1 }, { type: 'acquire' });
  t.drive.setState(state('c1', true));
  t.clear();
  return t;
}

describe('DriveController', () => {
  it('acquires on a fresh press while nobody drives, then sends at once and every 50 ms', () => {
    const t = setup();
    t.drive.input('keys', FORWARD);
    assert.deepEqual(t.types(), ['acquire']);
    t.timers.advance(300);
    assert.deepEqual(t.types(), ['acquire'], 'nothing moves before the lock is granted');
    t.drive.setState(state('c1', true));
    assert.deepEqual(t.types(), ['acquire', 'forward']);
    t.clear();
    t.timers.advance(1000);
    const times = t.log.map(([time]) => time);
    assert.ok(times.length >= 19 && times.length <= 21, `${times.length} heartbeats in 1 s`);
    for (let i = 1; i < times.length; i += 1) {
      assert.ok(times[i] - times[i - 1] <= HEARTBEAT_MS * 1.5, 'gap under the deadman');
    }
    assert.ok(t.log.every(([, m]) => m.type === 'command' && m.name === 'forward' && m.speed === 0.5));
  });

  it('sends one stop on release and nothing afterwards', () => {
    const t = driving(setup());
    t.timers.advance(250);
    t.clear();
    t.drive.input('keys', null);
    assert.deepEqual(t.types(), ['stop']);
    t.timers.advance(2000);
    assert.deepEqual(t.types(), ['stop']);
  });

  it('sends a change of direction at once', () => {
    const t = driving(setup());
    t.timers.advance(HEARTBEAT_MS + MIN_GAP_MS + 5);   // the last heartbeat MIN_GAP_MS + 5 ago
    t.clear();
    t.drive.input('keys', { kind: 'named', name: 'forward_left' });
    assert.deepEqual(t.types(), ['forward_left']);
  });

  it('never drives by itself after a reconnect, not even with the key still down', () => {
    const t = driving(setup());
    t.timers.advance(500);
    const cancelsBefore = t.cancels();
    t.drive.setDisconnected();                        // the bridge went away mid-drive
    assert.ok(t.cancels() > cancelsBefore, 'inputs are told to forget held keys');
    t.clear();
    t.drive.setHello(hello('c7'));                    // a new bridge process, a new client id
    t.drive.setState(state(null, false));
    t.timers.advance(3000);
    assert.deepEqual(t.log, [], 'no acquire, no command');
    t.drive.input('keys', FORWARD);                   // a new key press: now it may drive
    assert.deepEqual(t.types(), ['acquire']);
  });

  it('does not take the lock from someone else and says who drives', () => {
    const t = setup();
    t.drive.setState(state('c2', false));
    t.drive.input('keys', FORWARD);
    t.timers.advance(1000);
    assert.deepEqual(t.log, []);
    assert.match(t.notices.at(-1), /Someone else drives \(c2\)/);
  });

  it('does not ask for the lock without a token', () => {
    const t = setup({ connected: false });
    t.drive.setHello(hello('c1', false));
    t.drive.setState(state(null, false));
    t.drive.input('keys', FORWARD);
    t.drive.acquire();
    assert.deepEqual(t.log, []);
    assert.match(t.notices.at(-1), /token/);
  });

  it('stops sending when the e-stop engages and needs a fresh press after release', () => {
    const t = driving(setup());
    t.timers.advance(300);
    t.clear();
    t.drive.setState(state('c1', true, true));        // someone pressed the e-stop
    t.timers.advance(1000);
    assert.deepEqual(t.log, [], 'no commands (and no stop: the e-stop already published zero)');
    t.drive.input('keys', FORWARD);                   // keys pressed while engaged
    t.timers.advance(1000);
    assert.deepEqual(t.log, []);
    assert.match(t.notices.at(-1), /emergency stop/);
    t.drive.setState(state('c1', true, false));       // released: still nothing by itself
    t.timers.advance(1000);
    assert.deepEqual(t.log, []);
  });

  it('engages the e-stop from the page without a stop first', () => {
    const t = driving(setup());
    t.timers.advance(200);
    t.clear();
    t.drive.engageEstop();
    t.timers.advance(1000);
    assert.deepEqual(t.log.map(([, m]) => m), [{ type: 'estop', engage: true }]);
  });

  it('stops once and forgets held inputs on blur / hidden / pagehide', () => {
    const t = driving(setup());
    t.timers.advance(200);
    t.clear();
    const cancels = t.cancels();
    t.drive.cancelAll('page hidden');
    assert.deepEqual(t.types(), ['stop']);
    assert.equal(t.cancels(), cancels + 1);
    t.timers.advance(1000);
    assert.deepEqual(t.types(), ['stop']);
  });

  it('stops quietly when the lock is lost (takeover, release)', () => {
    const t = driving(setup());
    t.timers.advance(200);
    t.clear();
    t.drive.setState(state('c9', false));
    t.timers.advance(1000);
    assert.deepEqual(t.log, []);
  });

  it('scales named commands by speed and joystick vectors by limits and speed', () => {
    const t = driving(setup());
    t.drive.setSpeed(0.3);
    t.timers.advance(60);
    assert.equal(t.log.at(-1)[1].speed, 0.3);
    t.drive.input('keys', null);
    t.clear();
    t.drive.input('joystick', { kind: 'vector', x: -1, y: 1 });
    assert.deepEqual(t.log.at(-1)[1], { type: 'velocity', linear: { x: 0.15 }, angular: { z: 0.3 } });
  });

  it('coalesces fast joystick drags to stay under the bridge rate limit', () => {
    const t = driving(setup());
    t.drive.input('keys', null);
    t.clear();
    for (let i = 0; i < 1000; i += 1) {   // 1000 pointer moves in 1 s
      t.drive.input('joystick', { kind: 'vector', x: 0, y: (i % 100) / 100 });
      t.timers.advance(1);
    }
    // one per MIN_GAP_MS (heartbeats skipped meanwhile) and the first: half the bridge's 50/s
    assert.ok(t.log.length <= 1000 / MIN_GAP_MS + 1, `${t.log.length} messages in 1 s`);
    assert.ok(t.log.length >= 10);
  });

  it('lets the newest active input win and falls back to the other when it is released', () => {
    const t = driving(setup());
    t.drive.input('gamepad', { kind: 'vector', x: 0, y: 1 });
    t.timers.advance(60);
    assert.equal(t.log.at(-1)[1].type, 'velocity');
    t.drive.input('gamepad', null);
    t.timers.advance(HEARTBEAT_MS);
    assert.equal(t.log.at(-1)[1].name, 'forward');
  });
});

describe('KeyboardInput', () => {
  function keyboard() {
    const changes = [];
    let estops = 0;
    const target = { addEventListener() {} };
    const input = new KeyboardInput(target, {
      onChange: (c) => changes.push(c && c.name), onEstop: () => { estops += 1; },
    });
    const ev = (code, extra = {}) => ({ code, repeat: false, target: { tagName: 'BODY' },
                                        preventDefault() { this.prevented = true; }, ...extra });
    return { input, changes, estops: () => estops, ev };
  }

  it('reports hold, diagonal and release', () => {
    const k = keyboard();
    k.input.keydown(k.ev('ArrowUp'));
    k.input.keydown(k.ev('ArrowUp', { repeat: true }));
    k.input.keydown(k.ev('ArrowLeft'));
    k.input.keyup(k.ev('ArrowUp'));
    k.input.keyup(k.ev('ArrowLeft'));
    assert.deepEqual(k.changes, ['forward', 'forward_left', 'left', null]);
  });

  it('ignores auto-repeat of a key held since cancel()', () => {
    const k = keyboard();
    k.input.keydown(k.ev('KeyW'));
    k.input.cancel();
    k.input.keydown(k.ev('KeyW', { repeat: true }));
    k.input.keyup(k.ev('KeyW'));
    assert.deepEqual(k.changes, ['forward']);
    k.input.keydown(k.ev('KeyW'));
    assert.deepEqual(k.changes, ['forward', 'forward']);
  });

  it('makes Space the e-stop, leaves typing and focused sliders alone', () => {
    const k = keyboard();
    const space = k.ev('Space');
    k.input.keydown(space);
    assert.equal(k.estops(), 1);
    assert.equal(space.prevented, true);
    k.input.keydown(k.ev('Space', { repeat: true }));
    assert.equal(k.estops(), 1);
    k.input.keydown(k.ev('KeyW', { target: { tagName: 'INPUT', type: 'password' } }));
    k.input.keydown(k.ev('Space', { target: { tagName: 'INPUT', type: 'text' } }));
    k.input.keydown(k.ev('ArrowUp', { target: { tagName: 'INPUT', type: 'range' } }));
    k.input.keydown(k.ev('ArrowUp', { ctrlKey: true }));
    assert.deepEqual(k.changes, []);
    assert.equal(k.estops(), 1);
    k.input.keydown(k.ev('KeyW', { target: { tagName: 'INPUT', type: 'range' } }));
    assert.deepEqual(k.changes, ['forward']);
  });
});
