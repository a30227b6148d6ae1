// What the user touches: keyboard, on-screen joystick, gamepad. The mapping functions at the
// top are pure (tested with `node --test`); the classes below attach them to the DOM.
//
// Every input reports a *command* to the drive controller, or null when released:
//   {kind: 'named', name: 'forward_left'}  (keyboard: a text command of hello.commands)
//   {kind: 'vector', x, y}                 (joystick / gamepad: x right, y forward, in -1..1)
// An input reports non-null only after a fresh press: after cancel() (blur, hidden page,
// e-stop, reconnect) a key, finger or deadman button still held does nothing until it is
// released and pressed again.

// --- keyboard mapping --------------------------------------------------------------------------

export const KEY_DIRECTIONS = Object.freeze({
  ArrowUp: 'up', KeyW: 'up',
  ArrowDown: 'down', KeyS: 'down',
  ArrowLeft: 'left', KeyA: 'left',
  ArrowRight: 'right', KeyD: 'right',
});

const NAMES = {
  '1,0': 'forward', '1,-1': 'forward_left', '1,1': 'forward_right',
  '-1,0': 'back', '-1,-1': 'back_left', '-1,1': 'back_right',
  '0,-1': 'left', '0,1': 'right',
};

export function isDriveKey(code) {
  return Object.hasOwn(KEY_DIRECTIONS, code);
}

/**
 * The text command for the set of held key codes (KeyboardEvent.code), or null when they do
 * not move (none, or only opposite keys). Two keys give a diagonal (up+left: forward_left).
 * `available` (hello.commands) limits the result: a missing diagonal falls back to its
 * forward/back part, then its turning part.
 */
export function keysToCommand(codes, available = null) {
  const held = new Set();
  for (const code of codes) {
    if (isDriveKey(code)) held.add(KEY_DIRECTIONS[code]);
  }
  const v = (held.has('up') ? 1 : 0) - (held.has('down') ? 1 : 0);
  const h = (held.has('right') ? 1 : 0) - (held.has('left') ? 1 : 0);
  const has = (name) => name && (!available || available.includes(name));
  for (const [tv, th] of [[v, h], [v, 0], [0, h]]) {
    const name = NAMES[`${tv},${th}`];
    if (has(name)) return name;
  }
  return null;
}

// --- joystick / gamepad math ------------------------------------------------------------------

/**
 * Radial deadzone: vectors shorter than `deadzone` are zero, longer ones are rescaled so the
 * output grows smoothly from 0 at the deadzone edge to 1 at the rim. Input and output are
 * clamped to the unit circle.
 */
export function applyDeadzone(x, y, deadzone) {
  let r = Math.hypot(x, y);
  if (!Number.isFinite(r) || r <= deadzone || r === 0) return { x: 0, y: 0 };
  if (r > 1) {
    x /= r; y /= r; r = 1;
  }
  const scale = (r - deadzone) / (1 - deadzone) / r;
  return { x: x * scale, y: y * scale };
}

/**
 * Joystick pad: a pointer `dx`, `dy` pixels from the pad's centre (screen y grows downwards),
 * pad radius `radius` px. Returns the knob position (clamped to the rim, -1..1 each) and the
 * drive vector after the deadzone: x right, y forward.
 */
export function joystickVector(dx, dy, radius, deadzone = 0.12) {
  let kx = radius > 0 ? dx / radius : 0;
  let ky = radius > 0 ? -dy / radius : 0;
  const r = Math.hypot(kx, ky);
  if (r > 1) {
    kx /= r; ky /= r;
  }
  const { x, y } = applyDeadzone(kx, ky, deadzone);
  return { knobX: kx, knobY: ky, x, y };
}

/**
 * Velocity for a drive vector within the bridge's limits (hello.limits) and the speed scale
 * (0..1): forward is +linear.x, right is -angular.z (REP-103: +z turns left). Never exceeds
 * the limits, whatever the input.
 */
export function vectorToVelocity({ x, y }, limits, speed) {
  const clamp = (v) => Math.min(1, Math.max(-1, Number.isFinite(v) ? v : 0));
  const s = clamp(speed);
  const scale = Math.max(0, s);
  const linear = clamp(y) * (limits?.linear ?? 0) * scale;
  const angular = -clamp(x) * (limits?.angular ?? 0) * scale;
  return { linear: linear === 0 ? 0 : linear, angular: angular === 0 ? 0 : angular };
}

/** Pointer offset straight to a velocity (joystickVector, then vectorToVelocity). */
export function joystickToVelocity(dx, dy, radius, limits, speed, deadzone = 0.12) {
  return vectorToVelocity(joystickVector(dx, dy, radius, deadzone), limits, speed);
}

export const GAMEPAD = Object.freeze({
  deadmanButton: 4,   // LB on the standard mapping: the sticks drive only while it is held
  estopButton: 1,     // B / circle: emergency stop
  linearAxis: 1,      // left stick, up is negative
  angularAxis: 0,     // left stick, right is positive
  deadzone: 0.15,
});

function pressed(button) {
  return Boolean(button && (typeof button === 'object' ? button.pressed : button > 0.5));
}

/**
 * A Gamepad (or {axes, buttons}) to a drive vector, or null when the deadman button is not
 * held. Stick up is forward, stick right turns right.
 */
export function gamepadVector(pad, options = GAMEPAD) {
  const o = { ...GAMEPAD, ...options };
  if (!pad || !pressed(pad.buttons?.[o.deadmanButton])) return null;
  const x = pad.axes?.[o.angularAxis] ?? 0;
  const y = -(pad.axes?.[o.linearAxis] ?? 0);
  return applyDeadzone(x, y, o.deadzone);
}

/**
 * Edge logic of the gamepad deadman: the sticks drive only after a fresh press of the deadman
 * button; cancel() disarms until it has been released. Pure: feed it gamepad snapshots.
 */
export class GamepadDeadman {
  constructor(options = GAMEPAD) {
    this.options = { ...GAMEPAD, ...options };
    this.armed = false;
    this.wasHeld = false;
  }

  /** Returns the drive vector (deadman held, armed) or null. */
  update(pad) {
    const held = Boolean(pad) && pressed(pad.buttons?.[this.options.deadmanButton]);
    if (held && !this.wasHeld) this.armed = true;  // rising edge: a fresh press
    if (!held) this.armed = false;
    this.wasHeld = held;
    return held && this.armed ? gamepadVector(pad, this.options) : null;
  }

  cancel() {
    this.armed = false;
  }
}

// --- DOM inputs ----------------------------------------------------------------------------------

const TEXT_TYPES = new Set(['text', 'password', 'search', 'email', 'url', 'tel', 'number']);

/** Whether a key event belongs to the focused element rather than to driving. */
function ownedByFocus(target, code) {
  if (!target || !target.tagName) return false;
  const tag = target.tagName;
  if (tag === 'TEXTAREA' || target.isContentEditable) return true;
  if (tag === 'INPUT' && TEXT_TYPES.has(target.type)) return true;
  // A focused slider or selector keeps its arrow keys (W A S D still drive).
  const arrow = code.startsWith('Arrow');
  if (arrow && (tag === 'SELECT' || (tag === 'INPUT' && target.type === 'range'))) return true;
  return false;
}

/** Arrows and WASD: hold to move, release to stop, two keys for a diagonal; Space: e-stop. */
export class KeyboardInput {
  constructor(target, { onChange, onEstop, available = () => null }) {
    this.held = new Set();
    this.onChange = onChange;
    this.onEstop = onEstop;
    this.available = available;
    this.last = null;
    target.addEventListener('keydown', (event) => this.keydown(event));
    target.addEventListener('keyup', (event) => this.keyup(event));
  }

  keydown(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (ownedByFocus(event.target, event.code)) return;
    if (event.code === 'Space') {
      event.preventDefault();  // no scrolling, no button activation: Space is the e-stop
      if (!event.repeat) this.onEstop();
      return;
    }
    if (!isDriveKey(event.code)) return;
    event.preventDefault();
    // An auto-repeat of a key held since before cancel() is not a fresh press.
    if (event.repeat && !this.held.has(event.code)) return;
    this.held.add(event.code);
    this.emit();
  }

  keyup(event) {
    if (event.code === 'Space' && !ownedByFocus(event.target, event.code)) {
      event.preventDefault();
      return;
    }
    if (!this.held.delete(event.code)) return;
    event.preventDefault();
    this.emit();
  }

  emit() {
    const name = keysToCommand(this.held, this.available());
    const command = name ? { kind: 'named', name } : null;
    if (command?.name !== this.last?.name) {
      this.last = command;
      this.onChange(command);
    }
  }

  /** Forget held keys: only a new key press drives again. */
  cancel() {
    this.held.clear();
    this.last = null;
  }
}

/** On-screen joystick for touch, pen and mouse: drag the knob, let go to stop. */
export class Joystick {
  constructor(pad, knob, { onChange, deadzone = 0.12 }) {
    this.pad = pad;
    this.knob = knob;
    this.onChange = onChange;
    this.deadzone = deadzone;
    this.pointerId = null;
    this.dead = false;  // cancelled while a finger was down: ignore it until it lifts
    pad.addEventListener('pointerdown', (event) => this.down(event));
    pad.addEventListener('pointermove', (event) => this.move(event));
    for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) {
      pad.addEventListener(type, (event) => this.up(event));
    }
  }

  down(event) {
    if (this.pointerId !== null || (event.pointerType === 'mouse' && event.button !== 0)) return;
    event.preventDefault();
    this.pointerId = event.pointerId;
    this.dead = false;
    this.pad.setPointerCapture?.(event.pointerId);
    this.pad.classList.add('active');
    this.move(event);
  }

  move(event) {
    if (event.pointerId !== this.pointerId || this.dead) return;
    const rect = this.pad.getBoundingClientRect();
    // The knob's centre travels within the pad's rim (knob fully inside at full deflection).
    const radius = Math.max(1, Math.min(rect.width, rect.height) / 2 - this.knob.offsetWidth / 2);
    const v = joystickVector(event.clientX - rect.left - rect.width / 2,
                             event.clientY - rect.top - rect.height / 2, radius, this.deadzone);
    this.place(v.knobX, v.knobY, radius);
    this.onChange({ kind: 'vector', x: v.x, y: v.y });
  }

  up(event) {
    if (event.pointerId !== this.pointerId) return;
    const wasLive = !this.dead;
    this.pointerId = null;
    this.dead = false;
    this.reset();
    if (wasLive) this.onChange(null);
  }

  place(kx, ky, radius) {
    this.knob.style.transform = `translate(${kx * radius}px, ${-ky * radius}px)`;
  }

  reset() {
    this.pad.classList.remove('active');
    this.knob.style.transform = '';
  }

  cancel() {
    if (this.pointerId !== null) this.dead = true;
    this.reset();
  }
}

/** Gamepad API: hold the deadman button (LB) and steer with the left stick; B is the e-stop. */
export class GamepadInput {
  constructor(win, { onChange, onEstop, onConnected = () => {} }) {
    this.win = win;
    this.onChange = onChange;
    this.onEstop = onEstop;
    this.onConnected = onConnected;
    this.deadman = new GamepadDeadman();
    this.timer = null;
    this.last = null;
    this.estopWasHeld = false;
    win.addEventListener('gamepadconnected', () => this.refresh());
    win.addEventListener('gamepaddisconnected', () => this.refresh());
  }

  pads() {
    return [...(this.win.navigator.getGamepads?.() ?? [])].filter(Boolean);
  }

  refresh() {
    const pads = this.pads();
    this.onConnected(pads.length ? pads[0].id : null);
    if (pads.length && this.timer === null) {
      this.timer = this.win.setInterval(() => this.poll(), 50);
    } else if (!pads.length && this.timer !== null) {
      this.win.clearInterval(this.timer);
      this.timer = null;
      this.deadman.cancel();
      this.report(null);
    }
  }

  poll() {
    const pad = this.pads()[0];
    const estop = Boolean(pad?.buttons?.[GAMEPAD.estopButton]?.pressed);
    if (estop && !this.estopWasHeld) this.onEstop();
    this.estopWasHeld = estop;
    const vector = this.deadman.update(pad);
    this.report(vector ? { kind: 'vector', x: vector.x, y: vector.y } : null);
  }

  report(command) {
    if (command === null && this.last === null) return;
    this.last = command;
    this.onChange(command);
  }

  cancel() {
    this.deadman.cancel();
    this.last = null;
  }
}
