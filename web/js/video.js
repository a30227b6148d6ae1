// The /video/<stream> websocket drawn on a canvas. The newest frame wins: while one JPEG is
// being decoded, only the latest frame that arrived meanwhile is kept, older ones are dropped
// (the bridge does the same on its side, so the picture is never behind by a queue).
//
// A stream that was live and goes silent for STALL_TIMEOUT is reconnected: its path may have died
// without closing the socket (TCP would wait for minutes). Only once frames flowed on the socket:
// a camera that publishes nothing gets one new socket that waits, not a reconnect loop.

import { pageNow } from './clock.js';
import { parseFrame } from './protocol.js';
import { handshakeTimeout, ReconnectingSocket } from './socket.js';
import { plausibleLatency, RateMeter, RecentMedian } from './stats.js';

// ms without a frame on a live stream before its socket is given up: a camera at 5 fps or more
// sends well within it, and a bridge that drops frames to fit a slow link still sends some each
// second (its pong window moves on every answer). A slower stream gets STALL_GAPS times its
// usual gap between frames (a 0.2 fps camera: 15 s), so it is not reconnected on every frame.
export const STALL_TIMEOUT = 3000;
export const STALL_GAPS = 3;

/**
 * Run `process(item)` (async) for pushed items one at a time; while it runs, keep only the
 * newest pushed item. Pure, so the dropping rule is tested under Node.
 */
export class NewestOnly {
  constructor(process) {
    this.process = process;
    this.busy = false;
    this.pending = null;
    this.dropped = 0;
    this.errors = 0;
  }

  push(item) {
    if (this.busy) {
      if (this.pending !== null) this.dropped += 1;
      this.pending = item;
      return;
    }
    this.run(item);
  }

  async run(item) {
    this.busy = true;
    try {
      while (item !== null) {
        try {
          await this.process(item);
        } catch {
          this.errors += 1;  // one undecodable frame must not stop the picture
        }
        item = this.pending;
        this.pending = null;
      }
    } finally {
      this.busy = false;
    }
  }

  clear() {
    if (this.pending !== null) this.dropped += 1;
    this.pending = null;
  }
}

export class VideoClient {
  /**
   * url(): absolute ws:// URL of the chosen stream (token included), or null for none.
   * clock: the ClockOffset of the control connection (bridge clock for latency).
   */
  constructor(canvas, { url, clock, now = pageNow, timers = globalThis, WebSocketImpl,
                        stallTimeout = STALL_TIMEOUT, onStatus = () => {}, onClose = () => {},
                        onFirstFrame = () => {} }) {
    this.canvas = canvas;
    this.context = canvas.getContext('2d', { alpha: false });
    this.clock = clock;
    this.now = now;
    this.timers = timers;
    this.stallTimeout = stallTimeout;
    this.stallTimer = null;
    this.receivedAt = null;   // page time of the last frame received on this connection
    this.gaps = new RecentMedian(15);  // ms between frames received, for slow streams
    this.stalls = 0;          // sockets given up because a live stream went silent
    this.onFirstFrame = onFirstFrame;
    this.generation = 0;
    this.queue = new NewestOnly((frame) => this.draw(frame, this.generation));
    this.frames = new RateMeter(2000);     // frames drawn
    this.bytes = new RateMeter(2000);      // bytes received
    this.latency = new RecentMedian(30);   // camera stamp -> drawn, s
    this.bridgeLatency = new RecentMedian(30);  // bridge received -> drawn, s
    this.resetCounters();
    this.socket = new ReconnectingSocket({
      url, binaryType: 'arraybuffer', now, timers, WebSocketImpl,
      openTimeout: () => handshakeTimeout(this.clock.rtt ?? null),
      onOpen: () => {
        this.stopWatch();
        this.connectionFrames = 0;
        this.receivedAt = null;
        this.gaps.reset();
      },
      onMessage: (data) => this.receive(data),
      onStatus: (status) => onStatus(status),
      onClose: (info) => {
        this.stopWatch();
        this.queue.clear();
        onClose(info);
      },
    });
  }

  resetCounters() {
    this.lastSeq = null;
    this.bridgeSkipped = 0;   // seq gaps: frames the bridge did not send us (newest wins)
    this.badFrames = 0;
    this.drawn = 0;
    this.lastFrame = null;
    this.drawnAt = null;
    this.connectionFrames = 0;
  }

  get status() {
    return this.socket.status;
  }

  get retryAt() {
    return this.socket.retryAt;
  }

  start() {
    this.socket.start();
  }

  /** Show another stream (or the same one with a new token): start afresh. */
  restart() {
    this.generation += 1;
    this.stopWatch();
    this.queue.clear();
    this.resetCounters();
    this.frames.reset();
    this.bytes.reset();
    this.latency.reset();
    this.bridgeLatency.reset();
    this.socket.reconnectNow();
  }

  retrySoon() {
    this.socket.retrySoon();
  }

  stop() {
    this.generation += 1;
    this.stopWatch();
    this.socket.stop();
  }

  // --- stall watch -------------------------------------------------------------------------

  /**
   * A frame arrived: (re)start the watch once the connection has shown its pace (two frames);
   * it checks once per stall limit, not per frame.
   */
  watch() {
    const now = this.now();
    if (this.receivedAt !== null) this.gaps.add(now - this.receivedAt);
    this.receivedAt = now;
    if (this.stallTimer === null && this.stallTimeout !== null && this.gaps.value() !== null) {
      this.checkStall();
    }
  }

  /** ms of silence after which this stream counts as stalled. */
  stallLimit() {
    return Math.max(this.stallTimeout, STALL_GAPS * (this.gaps.value() ?? 0));
  }

  checkStall() {
    this.stallTimer = null;
    if (this.receivedAt === null) return;
    const silent = this.now() - this.receivedAt;
    const limit = this.stallLimit();
    if (silent >= limit) {
      this.stalls += 1;
      this.socket.abandon(`no frame for ${(silent / 1000).toFixed(1)} s`);
      return;
    }
    this.stallTimer = this.timers.setTimeout(() => this.checkStall(), limit - silent);
  }

  stopWatch() {
    if (this.stallTimer !== null) this.timers.clearTimeout(this.stallTimer);
    this.stallTimer = null;
  }

  receive(data) {
    this.watch();
    let frame;
    try {
      frame = parseFrame(data);
    } catch {
      this.badFrames += 1;
      return;
    }
    this.bytes.add(this.now(), frame.byteLength);
    if (this.lastSeq !== null && frame.seq > this.lastSeq + 1) {
      this.bridgeSkipped += frame.seq - this.lastSeq - 1;
    }
    this.lastSeq = frame.seq;
    this.queue.push(frame);
  }

  async draw(frame, generation) {
    const bitmap = await createImageBitmap(new Blob([frame.jpeg], { type: 'image/jpeg' }));
    try {
      if (generation !== this.generation) return;  // a stream switch happened meanwhile
      if (this.canvas.width !== bitmap.width || this.canvas.height !== bitmap.height) {
        this.canvas.width = bitmap.width;
        this.canvas.height = bitmap.height;
      }
      this.context.drawImage(bitmap, 0, 0);
    } finally {
      bitmap.close();
    }
    const drawnAt = this.now();
    this.frames.add(drawnAt);
    const age = this.clock.age(frame.stamp, drawnAt);
    if (plausibleLatency(age)) this.latency.add(age);
    const bridgeAge = this.clock.age(frame.receivedTime, drawnAt);
    if (plausibleLatency(bridgeAge)) this.bridgeLatency.add(bridgeAge);
    this.drawn += 1;
    this.connectionFrames += 1;
    this.drawnAt = drawnAt;
    this.lastFrame = frame;
    if (this.connectionFrames === 1) {
      this.socket.succeeded();  // frames flow: the next loss starts the backoff afresh
      this.onFirstFrame(frame);
    }
  }

  /** The figures shown over the video. */
  stats() {
    const now = this.now();
    return {
      fps: this.frames.rate(now),
      kbps: this.bytes.kbps(now),
      latency: this.latency.value(),
      bridgeLatency: this.bridgeLatency.value(),
      width: this.lastFrame?.width ?? 0,
      height: this.lastFrame?.height ?? 0,
      seq: this.lastFrame?.seq ?? null,
      dropped: this.queue.dropped + this.bridgeSkipped,
      frameAge: this.drawnAt === null ? null : (now - this.drawnAt) / 1000,
      drawn: this.drawn,
    };
  }
}
