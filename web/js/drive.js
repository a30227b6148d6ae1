// The page's half of the deadman: what is sent to /control while a control is held.
//
// Rules (the bridge enforces its own; these make the page behave):
//  * while a key, the joystick or the gamepad deadman is held and this page drives, the current
//    command is sent at once and then repeated every 50 ms (the bridge stops the car after
//    `command_timeout`, 0.5 s by default, without one; 50 ms keeps it going through a 400 ms
//    link gap); changes go at most every 40 ms, under half the bridge's rate limit;
//  * on release: one `stop` command;
//  * cancelAll() (window blur, page hidden, pagehide, e-stop, connection lost, driver lock lost)
//    stops sending, sends `stop` if it was moving, and makes every input ignore what is still
//    held until it is released and pressed again;
//  * the driver lock is asked for (`acquire`) only on a fresh user action: the Drive button, or
//    a new press of a control while nobody drives. Never after a reconnect by itself.
// Pure: `send`, the timers and the clock are injected.

import { messages } from './protocol.js';
import { vectorToVelocity } from './input.js';

// 50 ms: the car must keep going through a 400 ms link gap (a cellular handover) with a
// command_timeout of 500 ms; at 100 ms the first command after the gap came up to ~520 ms later.
export const HEARTBEAT_MS = 50;
export const MIN_GAP_MS = 40;   // changes (joystick drags) are sent at most this often

function sameCommand(a, b) {
  if (!a || !b || a.kind !== b.kind) return false;
  return a.kind === 'named' ? a.name === b.name : a.x === b.x && a.y === b.y;
}

export class DriveController {
  constructor({ send, timers = globalThis, now = () => performance.now(),
                onNotice = () => {}, onCancelInputs = () => {}, onChange = () => {} }) {
    Object.assign(this, { send, timers, now, onNotice, onCancelInputs, onChange });
    this.connected = false;
    this.clientId = null;
    this.canDrive = false;
    this.limits = { linear: 0, angular: 0 };
    this.commands = null;
    this.driver = null;
    this.youDrive = false;
    this.estop = false;
    this.speed = 0.5;
    this.sources = new Map();   // input name -> command, in order of activation
    this.moving = false;        // a motion command was sent since the last stop
    this.lastSent = null;
    this.lastSentAt = -Infinity;
    this.acquireId = null;      // an acquire is on its way
    this.interval = null;
    this.soon = null;
  }

  // --- what the bridge says ------------------------------------------------------------------

  setHello(hello) {
    this.connected = true;
    this.clientId = hello.client_id;
    this.canDrive = Boolean(hello.can_drive);
    this.limits = { linear: hello.limits?.linear ?? 0, angular: hello.limits?.angular ?? 0 };
    this.commands = Array.isArray(hello.commands) ? hello.commands : null;
    this.driver = null;
    this.youDrive = false;
    this.acquireId = null;
    this.onChange();
  }

  /** The control socket closed: whatever was held is void, the lock is gone. */
  setDisconnected() {
    this.connected = false;
    this.youDrive = false;
    this.driver = null;
    this.acquireId = null;
    this.cancelAll('connection lost');
  }

  setState(state) {
    const wasDriving = this.youDrive;
    const wasEstop = this.estop;
    this.driver = state.driver ?? null;
    this.youDrive = Boolean(state.you_drive);
    this.estop = Boolean(state.estop);
    if (this.youDrive) this.acquireId = null;
    if ((this.estop && !wasEstop) || (wasDriving && !this.youDrive)) {
      this.cancelAll(this.estop && !wasEstop ? 'e-stop' : 'driver lock lost');
    } else {
      this.update();
    }
    this.onChange();
  }

  /** A reply to one of our messages (ack or error); `request` is the message it answers. */
  reply(message, request) {
    if (request?.type === 'acquire' && message.id === this.acquireId) {
      this.acquireId = null;
      if (message.type === 'error') this.onNotice(message.message || message.code, 'warn');
    }
  }

  setSpeed(speed) {
    this.speed = Math.min(1, Math.max(0, Number(speed) || 0));
    this.update(true);
  }

  // --- what the user does ----------------------------------------------------------------------

  /**
   * An input reports its command (null: released). A fresh press counts only if it can lead
   * to driving now (this page drives, or it just asked for the lock); a press during an e-stop,
   * while someone else drives or while disconnected is dropped, so it cannot start the car
   * later when that changes.
   */
  input(source, command) {
    const before = this.sources.get(source) ?? null;
    this.sources.delete(source);  // re-inserted last: the newest active input wins
    if (command && (before || this.freshPress())) this.sources.set(source, command);
    this.update();
  }

  /** Drive button (or a fresh press while nobody drives): ask for the driver lock. */
  acquire(takeover = false) {
    if (!this.connected) {
      this.onNotice('Not connected to the bridge.', 'warn');
      return;
    }
    if (!this.canDrive) {
      this.onNotice('A valid token is required to drive.', 'warn');
      return;
    }
    if (this.youDrive || this.acquireId !== null) return;
    this.acquireId = this.send(messages.acquire(takeover));
    this.onChange();
  }

  release() {
    this.cancelAll('released');
    if (this.youDrive) this.send(messages.release());
  }

  engageEstop() {
    // Anyone connected may engage; the bridge publishes zero at once, so no stop is needed.
    const sent = this.send(messages.estop(true));
    this.moving = false;
    this.cancelAll('e-stop');
    if (sent === null) this.onNotice('Not connected: the e-stop could not be sent.', 'error');
  }

  releaseEstop() {
    this.cancelAll('e-stop released');
    this.send(messages.estop(false));
  }

  /** Stop sending and forget every held control (blur, hidden, pagehide, e-stop ...). */
  cancelAll(reason = '') {
    this.sources.clear();
    this.onCancelInputs(reason);
    this.update();
  }

  /** A control was just pressed: may it drive (asking for the lock if nobody drives)? */
  freshPress() {
    if (!this.connected) {
      this.onNotice('Not connected to the bridge.', 'warn');
    } else if (this.estop) {
      this.onNotice('The emergency stop is engaged: release it first.', 'warn');
    } else if (this.youDrive) {
      return true;
    } else if (this.driver !== null) {
      this.onNotice(`Someone else drives (${this.driver}).`, 'warn');
    } else if (!this.canDrive) {
      this.onNotice('A valid token is required to drive.', 'warn');
    } else {
      this.acquire();
      return this.acquireId !== null;
    }
    return false;
  }

  // --- sending ---------------------------------------------------------------------------------

  active() {
    let last = null;
    for (const command of this.sources.values()) last = command;
    return last;
  }

  mayMove() {
    return this.connected && this.youDrive && !this.estop;
  }

  update(changed = false) {
    const active = this.active();
    if (active && this.mayMove()) {
      if (!this.moving || changed || !sameCommand(active, this.lastSent)) this.sendSoon();
      if (this.interval === null) {
        this.interval = this.timers.setInterval(() => this.beat(), HEARTBEAT_MS);
      }
      return;
    }
    this.stopTimers();
    if (this.moving) {
      this.moving = false;
      this.lastSent = null;
      if (this.mayMove()) this.send(messages.stop());
    }
  }

  sendSoon() {
    const wait = this.lastSentAt + MIN_GAP_MS - this.now();
    if (!this.moving || wait <= 0) {
      this.sendNow();
    } else if (this.soon === null) {
      this.soon = this.timers.setTimeout(() => {
        this.soon = null;
        // a heartbeat due at the same moment may have sent the newest command already
        if (this.now() - this.lastSentAt >= MIN_GAP_MS) this.sendNow();
        else if (!sameCommand(this.active(), this.lastSent)) this.sendSoon();
      }, wait);
    }
  }

  beat() {
    // Skip a beat right after a change was sent: the gap stays well under the deadman.
    if (this.now() - this.lastSentAt >= HEARTBEAT_MS * 0.8) this.sendNow();
  }

  sendNow() {
    const active = this.active();
    if (!active || !this.mayMove()) {
      this.update();
      return;
    }
    const message = this.build(active);
    if (this.send(message) === null) return;
    this.moving = true;
    this.lastSent = active;
    this.lastSentAt = this.now();
  }

  build(command) {
    if (command.kind === 'named') return messages.command(command.name, this.speed);
    const { linear, angular } = vectorToVelocity(command, this.limits, this.speed);
    return messages.velocity(linear, angular);
  }

  stopTimers() {
    if (this.interval !== null) this.timers.clearInterval(this.interval);
    if (this.soon !== null) this.timers.clearTimeout(this.soon);
    this.interval = null;
    this.soon = null;
  }

  /** What the page shows: 'none' (nobody drives), 'you', 'other' (driver id in .driver). */
  get role() {
    if (this.youDrive) return 'you';
    return this.driver === null ? 'none' : 'other';
  }
}
