// A subscription to the robot's feed in its Janus room, with Janus's own janus.js (vendor/).
//
// The thin edge of sfu.js's decisions: sfu_watch on /control brings the Janus URL, room, feed
// and short-lived tokens (the bridge mints them only for a page that may watch) and is
// repeated as a heartbeat; janus.js makes the session, attaches the VideoRoom plugin, joins
// as a subscriber and answers Janus's offer, receive-only. A fresher token or a new feed id
// means a new subscription, made before the old one is destroyed (sfu.js's
// resubscribeReason), so the picture does not stop. The SFU carries video only: no data
// channel, no commands.
//
// janus.js and its webrtc-adapter are loaded on the first subscription, so a page that never
// watches through an SFU never loads them.

import { pageNow } from './clock.js';
import { joinRequest, nextWatchDelay, resubscribeReason } from './sfu.js';
import { RateMeter } from './stats.js';

export const START_TIMEOUT = 10000;   // ms from start() to playing
export const STALL_TIMEOUT = 3000;    // ms without video bytes while playing
const VIDEOROOM = 'janus.plugin.videoroom';

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = src;
    script.async = false;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(script);
  });
}

let library = null;

/** janus.js (and the webrtc-adapter it wants), loaded and initialised once. */
export function loadJanusLibrary(base = 'vendor/') {
  library ??= (async () => {
    if (typeof globalThis.adapter === 'undefined') {
      await loadScript(`${base}webrtc-adapter/adapter.js`);
    }
    if (typeof globalThis.Janus === 'undefined') await loadScript(`${base}janus-gateway/janus.js`);
    const { Janus } = globalThis;
    await new Promise((resolve) => {
      Janus.init({ debug: false, dependencies: Janus.useDefaultDependencies(), callback: resolve });
    });
    return Janus;
  })();
  library.catch(() => { library = null; });
  return library;
}

export class SfuVideo {
  /**
   * video: a <video> element; control: the ControlClient (sfu_watch goes there);
   * iceServers(): the ICE servers a subscription uses (none: Janus has a public address).
   */
  constructor(video, { control, loadJanus = loadJanusLibrary, now = pageNow,
                       wallSeconds = () => Date.now() / 1000, timers = globalThis,
                       iceServers = () => [], onStatus = () => {}, onFailed = () => {} }) {
    Object.assign(this, { video, control, loadJanus, now, wallSeconds, timers, iceServers,
                          onStatus, onFailed });
    this.status = 'off';        // off | starting | playing | failed
    this.problem = null;
    this.stream = null;
    this.access = null;         // the newest sfu_access
    this.current = null;        // the subscription shown: { janus, handle, access, media }
    this.next = null;           // a subscription being made to replace it
    this.watchId = null;
    this.watchTimer = null;
    this.startTimer = null;
    this.statsTimer = null;
    this.generation = 0;
    this.frames = new RateMeter(2000);
    this.displayed = 0;
    this.subscriptions = 0;     // subscriptions made (a resubscription counts)
    this.heartbeats = 0;        // sfu_watch sent
    this.stalls = 0;
    this.failures = 0;          // subscriptions given up (sfu.js falls back or retries)
    this.kbpsValue = 0;
    this.lastBytes = null;
    this.progressAt = null;
    this.playingSince = null;
    this.framesDecoded = 0;
  }

  setStatus(status, problem = null) {
    this.status = status;
    this.problem = problem;
    if (status === 'playing') {
      this.playingSince = this.now();
      this.progressAt = this.now();
    }
    this.onStatus(status);
  }

  /** The peer connection of the subscription shown (tests read its getStats). */
  get pc() {
    return this.current?.handle?.webrtcStuff?.pc ?? null;
  }

  /** How long (ms) the SFU has played without a break, 0 when it does not play. */
  playedFor() {
    return this.status === 'playing' ? this.now() - this.playingSince : 0;
  }

  start(stream) {
    this.stop();
    const generation = this.generation;
    this.stream = stream;
    this.setStatus('starting');
    this.startTimer = this.timers.setTimeout(() => {
      if (generation === this.generation && this.status === 'starting') {
        this.fail('no video through the SFU in time');
      }
    }, START_TIMEOUT);
    this.statsTimer = this.timers.setInterval(() => this.readStats(generation), 1000);
    this.watch();
  }

  watch() {
    this.timers.clearTimeout(this.watchTimer);
    this.watchTimer = null;
    this.watchId = this.control.send({ type: 'sfu_watch', stream: this.stream });
    if (this.watchId === null) {
      this.fail('not connected');
      return;
    }
    this.heartbeats += 1;
  }

  /** Stop watching: leave on /control, destroy every subscription. */
  stop() {
    const watching = this.status === 'starting' || this.status === 'playing';
    this.close();
    if (watching && this.control.status === 'connected') this.control.send({ type: 'sfu_leave' });
    if (this.status !== 'off') this.setStatus('off');
  }

  /** Give the SFU up (app.js falls back to the direct path, or retries: sfu.js). */
  fail(problem) {
    if (this.status === 'failed' || this.status === 'off') return;
    const watching = this.status === 'starting' || this.status === 'playing';
    this.close();
    if (watching && this.control.status === 'connected') this.control.send({ type: 'sfu_leave' });
    this.failures += 1;
    this.onFailed(problem);      // first: the policy's backoff is set when the status is read
    this.setStatus('failed', problem);
  }

  close() {
    this.generation += 1;
    for (const timer of [this.watchTimer, this.startTimer]) this.timers.clearTimeout(timer);
    this.timers.clearInterval(this.statsTimer);
    this.watchTimer = this.startTimer = this.statsTimer = null;
    this.watchId = null;
    for (const subscription of [this.current, this.next]) this.destroy(subscription);
    this.current = this.next = null;
    this.access = null;
    this.lastBytes = null;
    this.kbpsValue = 0;
    this.progressAt = null;
    this.playingSince = null;
    this.frames.reset();
    if (this.video.srcObject) this.video.srcObject = null;
  }

  destroy(subscription) {
    if (!subscription) return;
    subscription.dead = true;
    try {
      subscription.janus?.destroy({ cleanupHandles: true, notifyDestroyed: false });
    } catch { /* the session is gone already */ }
  }

  /** An sfu_* message from the bridge. */
  message(message) {
    if (message.id !== this.watchId || this.watchId === null) return;
    if (message.type === 'sfu_error') {
      this.fail(message.message || message.code);
      return;
    }
    if (message.type !== 'sfu_access') return;
    this.access = message;
    this.watchTimer = this.timers.setTimeout(() => this.watch(), nextWatchDelay(message));
    if (this.next) return;   // one subscription in the making at a time
    const reason = resubscribeReason(this.current?.access ?? null, message, this.wallSeconds());
    if (reason !== null) this.subscribe(message);
  }

  /** The bridge refused sfu_watch as an unknown message (it has no SFU). */
  refused(problem) {
    if (this.status === 'starting' || this.status === 'playing') this.fail(problem);
  }

  async subscribe(access) {
    const generation = this.generation;
    const subscription = { access, janus: null, handle: null, media: null, dead: false };
    this.next = subscription;
    this.subscriptions += 1;
    const lost = (problem) => {
      if (subscription.dead || generation !== this.generation) return;
      if (subscription === this.current || this.current === null) this.fail(problem);
      else {                                 // a replacement failed: the shown one goes on
        this.destroy(subscription);
        if (this.next === subscription) this.next = null;
      }
    };
    let Janus;
    try {
      Janus = await this.loadJanus();
    } catch (error) {
      lost(`janus.js: ${error.message ?? error}`);
      return;
    }
    if (subscription.dead || generation !== this.generation) return;
    subscription.janus = new Janus({
      server: access.url,
      token: access.token,
      iceServers: this.iceServers(),
      destroyOnUnload: true,
      success: () => this.attach(subscription, lost),
      error: (error) => lost(`Janus: ${error}`),
    });
  }

  attach(subscription, lost) {
    if (subscription.dead) return;
    const { access } = subscription;
    subscription.janus.attach({
      plugin: VIDEOROOM,
      token: access.token,
      success: (handle) => {
        subscription.handle = handle;
        handle.send({ message: joinRequest(access) });
      },
      error: (error) => lost(`Janus: ${error}`),
      onmessage: (message, jsep) => {
        if (subscription.dead) return;
        if (message?.error) {
          lost(`Janus: ${message.error}`);
          return;
        }
        if (!jsep) return;
        subscription.handle.createAnswer({
          jsep,
          tracks: [{ type: 'data' }],      // receive what is offered, send nothing
          success: (answer) => subscription.handle.send({ message: { request: 'start' },
                                                          jsep: answer }),
          error: (error) => lost(`WebRTC: ${error?.message ?? error}`),
        });
      },
      onremotetrack: (track, mid, on) => {
        if (subscription.dead || !on || track.kind !== 'video') return;
        subscription.media = new MediaStream([track]);
        if (track.muted) track.addEventListener('unmute', () => this.show(subscription), { once: true });
        else this.show(subscription);
      },
      iceState: (state) => {
        if (state === 'failed') lost('the SFU connection failed');
      },
      webrtcState: (up, reason) => {
        if (!up) lost(`the SFU hung up${reason ? `: ${reason}` : ''}`);
      },
    });
  }

  /** A subscription's video arrives: it becomes the one shown, the older one goes. */
  show(subscription) {
    if (subscription.dead || subscription.media === null) return;
    if (this.current && this.current !== subscription) this.destroy(this.current);
    this.current = subscription;
    if (this.next === subscription) this.next = null;
    this.video.srcObject = subscription.media;
    this.video.muted = true;
    this.video.play?.().catch(() => {});
    this.watchFrames(this.generation);
  }

  watchFrames(generation) {
    const video = this.video;
    if (this.framesWatched === generation || typeof video.requestVideoFrameCallback !== 'function') {
      return;
    }
    this.framesWatched = generation;
    let shown = 0;
    const onFrame = () => {
      if (generation !== this.generation) return;
      this.frames.add(this.now());
      this.displayed += 1;
      shown += 1;
      if (this.status === 'starting' && shown >= 2) {
        this.timers.clearTimeout(this.startTimer);
        this.setStatus('playing');
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  async readStats(generation) {
    const pc = this.pc;
    if (!pc || generation !== this.generation) return;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return;
    }
    if (generation !== this.generation) return;
    report.forEach((entry) => {
      if (entry.type !== 'inbound-rtp' || entry.kind !== 'video') return;
      if (this.lastBytes && entry.bytesReceived > this.lastBytes.bytes) this.progressAt = this.now();
      if (this.lastBytes && entry.timestamp > this.lastBytes.at) {
        this.kbpsValue = (entry.bytesReceived - this.lastBytes.bytes) * 8
          / (entry.timestamp - this.lastBytes.at);
      }
      this.lastBytes = { at: entry.timestamp, bytes: entry.bytesReceived };
      this.framesDecoded = entry.framesDecoded ?? 0;
      const codec = report.get(entry.codecId);
      if (codec?.mimeType) this.codec = codec.mimeType.replace('video/', '').toLowerCase();
    });
    if (this.status === 'playing' && this.progressAt !== null
        && this.now() - this.progressAt >= STALL_TIMEOUT) {
      this.stalls += 1;
      this.fail(`no video through the SFU for ${STALL_TIMEOUT / 1000} s`);
    }
  }

  stats() {
    const now = this.now();
    return {
      fps: this.frames.rate(now),
      kbps: this.kbpsValue,
      latency: null,           // no camera stamps come through the SFU (no data channel)
      bridgeLatency: null,
      width: this.video.videoWidth,
      height: this.video.videoHeight,
      drawn: this.displayed,
      frameAge: this.frames.last() === null ? null : (now - this.frames.last()) / 1000,
      codec: this.codec ?? null,
      candidateType: null,
    };
  }
}
