// A websocket that comes back by itself: exponential backoff with jitter between attempts,
// a visible countdown (retryAt), and no retry where retrying cannot help (closeMeaning).
// The WebSocket class and the timers are injectable, so the state machine runs under Node.
//
// A socket can hang without ever closing: a handshake into a dead path (nginx accepted, the
// tunnel behind it is gone) or an open socket whose path died silently (no FIN, no RST; TCP
// retransmits for minutes). `openTimeout` bounds the first, and the owner, which knows what it
// expects to hear, calls abandon() for the second; both count as a failed attempt (backoff).

import { Backoff, RetryTimer } from './backoff.js';
import { closeMeaning } from './protocol.js';

// A handshake through nginx and the tunnel is a TCP + TLS + HTTP exchange plus a channel opened
// across the tunnel: about five round trips. With no round trip known yet, OPEN_TIMEOUT; with one
// (the clock probes of the last connection measured it), HANDSHAKE_RTTS of it, within bounds: a
// reconnect into a path that is still dead should not hang longer than it must.
export const OPEN_TIMEOUT = 5000;
export const HANDSHAKE_RTTS = 10;
export const HANDSHAKE_BOUNDS = Object.freeze({ min: 3000, max: 10000 });

/** ms to allow a handshake, from the last known round trip in seconds (null: unknown). */
export function handshakeTimeout(rtt) {
  if (!Number.isFinite(rtt) || rtt < 0) return OPEN_TIMEOUT;
  const { min, max } = HANDSHAKE_BOUNDS;
  return Math.round(Math.min(max, Math.max(min, HANDSHAKE_RTTS * rtt * 1000)));
}
// What an abandoned socket reports (the browser's code for "closed without a close frame").
export const ABANDONED = 1006;

export class ReconnectingSocket {
  /**
   * url(): the absolute ws:// URL to open now, or null to stay closed.
   * Callbacks: onOpen(), onMessage(data), onClose({code, reason, meaning, retryAt}), onStatus().
   * openTimeout: ms a handshake may take before it is given up (null: as long as the browser),
   * or a function returning that for each attempt.
   */
  constructor({ url, binaryType = 'blob', WebSocketImpl = globalThis.WebSocket, timers = globalThis,
                backoff = new Backoff(), now = () => Date.now(), openTimeout = OPEN_TIMEOUT,
                onOpen = () => {}, onMessage = () => {}, onClose = () => {},
                onStatus = () => {} }) {
    Object.assign(this, { url, binaryType, WebSocketImpl, timers, backoff, now, openTimeout,
                          onOpen, onMessage, onClose, onStatus });
    this.ws = null;
    this.status = 'disconnected';   // disconnected | connecting | open
    this.retry = new RetryTimer(this);  // the next attempt while waiting
    this.openTimer = null;
    this.stopped = true;
    this.lastClose = null;
  }

  setStatus(status) {
    if (status !== this.status) {
      this.status = status;
      this.onStatus(status);
    }
  }

  /** Connect now (and keep reconnecting after losses until stop()). */
  start() {
    this.stopped = false;
    this.connect();
  }

  connect() {
    this.cancelRetry();
    if (this.stopped) return;
    const url = this.url();
    if (!url) {
      this.setStatus('disconnected');
      return;
    }
    let ws;
    try {
      ws = new this.WebSocketImpl(url);
    } catch (error) {  // a malformed URL: treat like a failed attempt
      this.closed(null, 1006, String(error));
      return;
    }
    ws.binaryType = this.binaryType;
    this.ws = ws;
    this.setStatus('connecting');
    const openTimeout = typeof this.openTimeout === 'function' ? this.openTimeout()
      : this.openTimeout;
    if (openTimeout !== null) {
      this.openTimer = this.timers.setTimeout(() => {
        this.openTimer = null;
        if (ws === this.ws && this.status === 'connecting') this.abandon('no handshake in time');
      }, openTimeout);
    }
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.cancelOpenTimer();
      this.setStatus('open');
      this.onOpen();
    };
    ws.onmessage = (event) => {
      if (ws === this.ws) this.onMessage(event.data);
    };
    ws.onclose = (event) => this.closed(ws, event.code, event.reason);
  }

  closed(ws, code, reason) {
    if (ws !== this.ws) return;  // a socket we already replaced
    this.ws = null;
    this.lost(code, reason);
  }

  lost(code, reason) {
    this.cancelOpenTimer();
    const meaning = closeMeaning(code, reason);
    this.lastClose = { code, reason, meaning };
    const retry = meaning.retry && !this.stopped;
    if (retry) this.scheduleRetry();
    this.setStatus('disconnected');
    this.onClose({ code, reason, meaning, retryAt: retry ? this.retryAt : null });
  }

  scheduleRetry() {
    this.retry.schedule(this.backoff.next(), () => this.connect());
  }

  /** Page time (ms) of the next attempt while waiting, else null. */
  get retryAt() {
    return this.retry.at;
  }

  cancelRetry() {
    this.retry.cancel();
  }

  /** The connection worked (the owner decides what that means): start backoff afresh. */
  succeeded() {
    this.backoff.reset();
  }

  /** Drop the current socket (if any) and connect again at once, backoff reset. */
  reconnectNow() {
    this.backoff.reset();
    this.drop();
    this.stopped = false;
    this.connect();
  }

  /** If waiting for a retry, try now (another socket to the same bridge just came back). */
  retrySoon() {
    if (this.retry.pending) this.connect();
  }

  /**
   * Give up on the current socket although it did not close (its path is dead, it is stuck):
   * close it and go on as if it had been lost, retry with backoff included.
   */
  abandon(reason) {
    const ws = this.ws;
    if (!ws) return;
    this.drop(reason);
    this.lost(ABANDONED, reason);
  }

  cancelOpenTimer() {
    if (this.openTimer !== null) this.timers.clearTimeout(this.openTimer);
    this.openTimer = null;
  }

  drop(reason = 'page reconnects') {
    const ws = this.ws;
    this.ws = null;
    this.cancelOpenTimer();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(1000, reason);
      } catch {
        // already closing
      }
    }
  }

  stop() {
    this.stopped = true;
    this.cancelRetry();
    this.drop();
    this.setStatus('disconnected');
  }

  send(data) {
    if (!this.ws || this.status !== 'open') return false;
    this.ws.send(data);
    return true;
  }
}
