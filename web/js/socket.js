// A websocket that comes back by itself: exponential backoff with jitter between attempts,
// a visible countdown (retryAt), and no retry where retrying cannot help (closeMeaning).
// The WebSocket class and the timers are injectable, so the state machine runs under Node.

import { Backoff } from './backoff.js';
import { closeMeaning } from './protocol.js';

export class ReconnectingSocket {
  /**
   * url(): the absolute ws:// URL to open now, or null to stay closed.
   * Callbacks: onOpen(), onMessage(data), onClose({code, reason, meaning, retryAt}), onStatus().
   */
  constructor({ url, binaryType = 'blob', WebSocketImpl = globalThis.WebSocket, timers = globalThis,
                backoff = new Backoff(), now = () => Date.now(), onOpen = () => {},
                onMessage = () => {}, onClose = () => {}, onStatus = () => {} }) {
    Object.assign(this, { url, binaryType, WebSocketImpl, timers, backoff, now, onOpen,
                          onMessage, onClose, onStatus });
    this.ws = null;
    this.status = 'disconnected';   // disconnected | connecting | open
    this.retryAt = null;            // page time (ms) of the next attempt while waiting
    this.retryTimer = null;
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
    ws.onopen = () => {
      if (ws !== this.ws) return;
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
    const meaning = closeMeaning(code, reason);
    this.lastClose = { code, reason, meaning };
    const retry = meaning.retry && !this.stopped;
    if (retry) this.scheduleRetry();
    this.setStatus('disconnected');
    this.onClose({ code, reason, meaning, retryAt: retry ? this.retryAt : null });
  }

  scheduleRetry() {
    this.cancelRetry();
    const delay = this.backoff.next();
    this.retryAt = this.now() + delay;
    this.retryTimer = this.timers.setTimeout(() => {
      this.retryTimer = null;
      this.retryAt = null;
      this.connect();
    }, delay);
  }

  cancelRetry() {
    if (this.retryTimer !== null) this.timers.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retryAt = null;
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
    if (this.retryTimer !== null) this.connect();
  }

  drop() {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(1000, 'page reconnects');
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
