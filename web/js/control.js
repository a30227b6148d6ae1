// The /control websocket: hello, state, replies and clock probes.
//
// State machine: disconnected -> connecting (socket opening, waiting for hello) -> connected.
// A lost connection goes back to disconnected and, unless retrying cannot help (token refused),
// comes back with exponential backoff + jitter (`retryAt` feeds the countdown). A reconnect is
// a new client for the bridge: whoever drove lost the lock when the socket closed, and this
// client never asks for it again by itself (see drive.js: only a fresh user action acquires).
//
// A path can die without closing the socket (Wi-Fi gone, a NAT mapping dropped: no FIN, no RST),
// and TCP then waits for minutes. So the page has a reply deadline: whenever it sent something
// the bridge answers (the hello it waits for, a clock probe, a request with an id), it must hear
// from the bridge within REPLY_DEADLINE, or it declares the connection dead and reconnects.
// Anything heard counts (the bridge is there); probes every PROBE_PERIOD keep something
// awaited, so a dead path is noticed within PROBE_PERIOD + REPLY_DEADLINE.

import { ClockOffset, pageNow } from './clock.js';
import { messages, parseControl } from './protocol.js';
import { handshakeTimeout, ReconnectingSocket } from './socket.js';

export const PROBE_BURST = 4;   // probes right after connecting, one after another
// ms between probes afterwards: the estimate follows drift, and the reply deadline needs
// something awaited. About 150 bytes each way per probe, so 2 s costs nothing worth counting.
export const PROBE_PERIOD = 2000;
// ms the page waits to hear from the bridge after sending something it answers. A bad cellular
// round trip is 0.3-1 s (with a second of bufferbloat on top when the uplink is full); the car's
// deadman is 0.5 s, so a path silent for this long is useless for driving anyway.
export const REPLY_DEADLINE = 2500;
const MAX_PENDING = 256;

export class ControlClient {
  constructor({ url, WebSocketImpl, timers = globalThis, now = pageNow, backoff,
                onStatus = () => {}, onHello = () => {}, onState = () => {},
                onReply = () => {}, onClose = () => {}, onOther = () => {} }) {
    Object.assign(this, { timers, now, onStatus, onHello, onState, onReply, onClose, onOther });
    this.status = 'disconnected';
    this.hello = null;
    this.state = null;
    this.clock = new ClockOffset();
    this.nextId = 1;
    this.pending = new Map();   // id -> message sent, until its ack or error
    this.probeTimer = null;
    this.deadlineTimer = null;  // armed while an answer is due and nothing was heard since
    this.deadlines = 0;         // connections declared dead for want of an answer
    this.probes = 0;
    this.sent = [];             // the last messages sent, newest last (for the debug console)
    this.sentCount = 0;         // all messages sent so far
    this.wasConnected = false;  // a hello was seen once: later attempts are reconnects
    this.socket = new ReconnectingSocket({
      url, WebSocketImpl, timers, now, backoff,
      openTimeout: () => handshakeTimeout(this.clock.rtt),
      onOpen: () => {
        this.setStatus('connecting');
        this.expectAnswer();  // the hello
      },
      onMessage: (data) => {
        this.heard();
        this.message(data);
      },
      onClose: (info) => this.closed(info),
      onStatus: (status) => {
        if (status !== 'open') this.setStatus(status);
      },
    });
  }

  get retryAt() {
    return this.socket.retryAt;
  }

  get clientId() {
    return this.hello?.client_id ?? null;
  }

  setStatus(status) {
    if (status !== this.status) {
      this.status = status;
      this.onStatus(status);
    }
  }

  start() {
    this.socket.start();
  }

  reconnectNow() {
    this.reset();
    this.socket.reconnectNow();
  }

  retrySoon() {
    this.socket.retrySoon();
  }

  stop() {
    this.reset();
    this.socket.stop();
  }

  reset() {
    this.hello = null;
    this.state = null;
    this.pending.clear();
    this.timers.clearTimeout(this.probeTimer);
    this.probeTimer = null;
    this.heard();
  }

  // --- reply deadline ----------------------------------------------------------------------

  /** Something the bridge answers went out: hear from it within REPLY_DEADLINE. */
  expectAnswer() {
    if (this.deadlineTimer !== null) return;  // already counting from an earlier request
    this.deadlineTimer = this.timers.setTimeout(() => {
      this.deadlineTimer = null;
      this.deadlines += 1;
      this.socket.abandon(`no answer from the bridge within ${REPLY_DEADLINE / 1000} s`);
    }, REPLY_DEADLINE);
  }

  /** A message arrived: the bridge and the path are there. */
  heard() {
    if (this.deadlineTimer !== null) this.timers.clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
  }

  /**
   * Send a message; returns its id (echoed by the ack or error), or null when not connected.
   * `track: false` sends no id (time probes: the bridge's time reply does not echo one).
   * `via(text) -> bool` sends it another way (the WebRTC data channel; replies still come here).
   */
  send(message, { track = true, via = null } = {}) {
    if (this.status !== 'connected') return null;
    const id = track ? this.nextId++ : 0;
    const text = JSON.stringify(track ? { ...message, id } : message);
    if (!(via ? via(text) : this.socket.send(text))) return null;
    // Over the data channel (unordered, no retransmits) a command may be lost by design; the
    // deadline is for the websocket, which delivers or is dead.
    if (!via) this.expectAnswer();
    if (track) {
      if (this.pending.size >= MAX_PENDING) this.pending.clear();
      this.pending.set(id, message);
    }
    this.sent.push(text);
    this.sentCount += 1;
    if (this.sent.length > 100) this.sent.shift();
    return id;
  }

  message(data) {
    let message;
    try {
      message = parseControl(data);
    } catch {
      return;  // not ours to interpret; the protocol says the bridge sends typed JSON objects
    }
    switch (message.type) {
      case 'hello':
        this.hello = message;
        this.wasConnected = true;
        this.clock.reset();
        this.socket.succeeded();
        this.setStatus('connected');
        this.onHello(message);
        this.probe();
        break;
      case 'state':
        this.state = message;
        this.onState(message);
        break;
      case 'time':
        this.timeReply(message);
        break;
      case 'ack':
      case 'error': {
        const request = this.pending.get(message.id) ?? null;
        this.pending.delete(message.id);
        this.onReply(message, request);
        break;
      }
      default:
        this.onOther(message);  // webrtc_* signalling (protocol v2)
        break;
    }
  }

  closed(info) {
    this.reset();
    this.onClose(info);
  }

  // --- clock probes ------------------------------------------------------------------------

  probe() {
    this.timers.clearTimeout(this.probeTimer);
    this.probeTimer = null;
    if (this.send(messages.time(this.now()), { track: false }) === null) return;
    // If the answer never comes, probe again later anyway.
    this.probeTimer = this.timers.setTimeout(() => this.probe(), PROBE_PERIOD);
  }

  timeReply(message) {
    const t3 = this.now();
    this.clock.add(message.t0, message.server_time, t3);
    this.probes += 1;
    this.timers.clearTimeout(this.probeTimer);
    const delay = this.clock.samples.length < PROBE_BURST ? 0 : PROBE_PERIOD;
    this.probeTimer = this.timers.setTimeout(() => this.probe(), delay);
  }
}
