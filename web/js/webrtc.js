// WebRTC video and data-channel teleop, signalled over the /control websocket (protocol v2).
//
// The bridge offers (it picks the codec and makes the data channel); this page answers. While a
// peer plays, the <video> element shows it and the websocket JPEG stream is stopped; when the
// bridge offers no WebRTC, refuses it, or the peer does not play within START_TIMEOUT, the page
// falls back to websocket JPEG by itself (app.js decides, from `status`).
//
// Latency: for each video frame the bridge sends {rtp, stamp} on the data channel; the frame
// the browser displays carries its RTP timestamp in requestVideoFrameCallback's metadata, so
// latency = now (in the bridge's clock) - stamp, exactly as for JPEG frames.
//
// A peer that played and then goes silent (its path died: ICE consent would only call it failed
// after ~30 s) is given up after STALL_TIMEOUT without video bytes, like a closed or failed one;
// the page then falls back to JPEG (app.js) and this tries WebRTC again with backoff, as long as
// the control connection is up. So is one that connected (ICE and DTLS) but did not play in time
// (its first keyframe lost, say). A peer that never connected is not retried (that path does not
// do WebRTC; the fallback is for it). A lost control connection stops the peer without a retry:
// the next hello starts afresh.

import { Backoff, RetryTimer } from './backoff.js';

import { pageNow } from './clock.js';
import { plausibleLatency, RateMeter, RecentMedian } from './stats.js';

export const CHANNEL_COMMANDS = new Set(['command', 'velocity']);
const START_TIMEOUT = 10000;    // ms from start to the first displayed frame
// ms from connected (ICE and DTLS done) to playing: normally a few hundred (the join keyframe);
// a peer connected that long without video is retried, not waited out to START_TIMEOUT.
export const CONNECTED_PLAY_TIMEOUT = 4000;
const GATHER_TIMEOUT = 3000;    // ms to wait for this page's ICE candidates before answering
const STAMP_TABLE = 240;        // frames remembered for the RTP -> stamp mapping (8 s)
export const STALL_TIMEOUT = 3000;   // ms without video bytes while playing
export const RETRY_BACKOFF = Object.freeze({ base: 2000, max: 30000 });
const STEADY = 30000;           // ms of playing after which the retry backoff starts afresh

/**
 * The bridge's codecs this browser can decode, in the bridge's order.
 *
 * `mimeTypes` is webrtc_config's {codec name: MIME type} (the bridge's codec registry), so
 * the page names no codec itself; `capabilities` is RTCRtpReceiver.getCapabilities('video').
 */
export function decodableCodecs(capabilities, mimeTypes) {
  const found = new Set();
  for (const codec of capabilities?.codecs ?? []) found.add(String(codec.mimeType).toLowerCase());
  return Object.entries(mimeTypes ?? {})
    .filter(([, mime]) => found.has(String(mime).toLowerCase()))
    .map(([name]) => name);
}

/** The bridge's name of a MIME type from the stats (null when it names no codec of the bridge). */
export function codecName(mimeType, mimeTypes) {
  const wanted = String(mimeType).toLowerCase();
  const entry = Object.entries(mimeTypes ?? {}).find(([, m]) => String(m).toLowerCase() === wanted);
  return entry ? entry[0] : null;
}

const RTP_CLOCK = 90000;         // Hz: the bridge's RTP timestamps are header.stamp on this clock
const MAX_EXTRAPOLATION = 10;    // s: further from the newest `frame` message, no estimate

/**
 * Bounded RTP timestamp -> {stamp, received} table fed by the bridge's `frame` messages.
 *
 * The bridge sends one on every keyframe and about five a second, not one per frame; a frame in
 * between is placed from the newest message: its RTP timestamp is header.stamp on the 90 kHz
 * clock, so the stamp difference is the RTP difference (signed, across the 32-bit wrap).
 */
export class StampTable {
  constructor(size = STAMP_TABLE) {
    this.size = size;
    this.map = new Map();
    this.newest = null;
  }

  add(message) {
    if (!Number.isFinite(message?.rtp) || !Number.isFinite(message?.stamp)) return;
    this.map.set(message.rtp >>> 0, message);
    this.newest = message;
    if (this.map.size > this.size) this.map.delete(this.map.keys().next().value);
  }

  get(rtp) {
    return this.map.get(rtp >>> 0) ?? null;
  }

  /** The message for `rtp`, or one estimated from the newest message (`estimated: true`). */
  lookup(rtp) {
    const exact = this.get(rtp);
    if (exact || !this.newest) return exact;
    const seconds = (((rtp >>> 0) - (this.newest.rtp >>> 0)) | 0) / RTP_CLOCK;
    if (Math.abs(seconds) > MAX_EXTRAPOLATION) return null;
    const received = Number.isFinite(this.newest.received) ? this.newest.received + seconds
      : undefined;
    return { rtp: rtp >>> 0, stamp: this.newest.stamp + seconds, received, estimated: true };
  }
}

export class WebRtcVideo {
  /**
   * video: a <video> element; control: the ControlClient (signalling); clock: its ClockOffset.
   * relay: force TURN relay candidates (iceTransportPolicy 'relay').
   */
  constructor(video, { control, clock, relay = false, now = pageNow, timers = globalThis,
                       onStatus = () => {} }) {
    Object.assign(this, { video, control, clock, relay, now, timers, onStatus });
    this.status = 'off';     // off | starting | playing | failed | unavailable
    this.problem = null;
    this.pc = null;
    this.channel = null;
    this.stream = null;
    this.codec = null;
    this.config = null;
    this.generation = 0;
    this.stamps = new StampTable();
    this.frames = new RateMeter(2000);
    this.latency = new RecentMedian(30);
    this.bridgeLatency = new RecentMedian(30);
    this.kbpsValue = 0;
    this.lastBytes = null;
    this.channelMessages = 0;
    this.displayed = 0;
    this.framesMapped = 0;
    this.latencySamples = [];
    this.channelSent = 0;      // commands that went over the data channel
    this.layer = null;
    this.pendingConfig = null;
    this.proven = false;       // a peer connected or played since start(): failures are retried
    this.timer = null;
    this.statsTimer = null;
    this.retries = new Backoff(RETRY_BACKOFF);
    this.retry = new RetryTimer(this);  // the next attempt after a failure while playing
    this.playingSince = null;
    this.progressAt = null;    // page time video bytes last grew
    this.stalls = 0;           // peers given up for silence
  }

  setStatus(status, problem = null) {
    this.status = status;
    this.problem = problem;
    if (status === 'playing') {
      this.proven = true;
      this.playingSince = this.now();
      this.progressAt = this.now();
    }
    this.onStatus(status);
  }

  /** Start (or restart) WebRTC for a stream name; resolves when signalling is under way. */
  start(streamName) {
    this.stop();
    this.proven = false;
    this.begin(streamName);
  }

  begin(streamName) {
    const generation = ++this.generation;
    this.stream = streamName;
    if (typeof RTCPeerConnection === 'undefined') {
      this.setStatus('unavailable', 'This browser has no WebRTC.');
      return;
    }
    this.setStatus('starting');
    this.configId = this.control.send({ type: 'webrtc_config' });
    this.startId = null;
    if (this.configId === null) {
      this.setStatus('failed', 'not connected');
      return;
    }
    this.timer = this.timers.setTimeout(() => {
      if (generation === this.generation && this.status === 'starting') {
        this.fail('WebRTC did not start playing in time');
      }
    }, START_TIMEOUT);
  }

  /** Give the peer up; if one connected or played since start(), try again later (see the top). */
  fail(problem) {
    this.cancelRetry();
    this.close();
    this.setStatus('failed', problem);
    if (this.proven && this.stream !== null) this.scheduleRetry();
  }

  scheduleRetry() {
    const stream = this.stream;
    this.retry.schedule(this.retries.next(), () => {
      if (this.status === 'failed' && this.control.status === 'connected') this.begin(stream);
    });
  }

  /** Page time (ms) of the next attempt after a failure while playing, else null. */
  get retryAt() {
    return this.retry.at;
  }

  cancelRetry() {
    this.retry.cancel();
  }

  /** Stop, and forget about trying again (the control connection is gone, the user chose). */
  stop() {
    this.cancelRetry();
    this.close();
  }

  close() {
    this.generation += 1;
    this.timers.clearTimeout(this.timer);
    this.timers.clearInterval(this.statsTimer);
    this.timer = null;
    this.statsTimer = null;
    this.playingSince = null;
    this.progressAt = null;
    if (this.pc) {
      if (this.control.status === 'connected') this.control.send({ type: 'webrtc_stop' });
      try { this.pc.close(); } catch { /* already closed */ }
    }
    this.pc = null;
    this.channel = null;
    this.codec = null;
    this.lastBytes = null;
    this.kbpsValue = 0;
    this.frames.reset();
    this.latency.reset();
    this.bridgeLatency.reset();
    if (this.video.srcObject) this.video.srcObject = null;
    if (this.status !== 'unavailable') this.setStatus('off');
  }

  /** A webrtc_* message from the bridge (ControlClient hands every such message here). */
  async message(message) {
    const generation = this.generation;
    switch (message.type) {
      case 'webrtc_config':
        if (this.status !== 'starting' || message.id !== this.configId) return;
        if (!message.enabled) {
          this.setStatus('unavailable', 'The bridge offers no WebRTC.');
          return;
        }
        this.config = message;
        this.wantedCodecs = decodableCodecs(globalThis.RTCRtpReceiver?.getCapabilities?.('video'),
                                            message.mime_types);
        if (!this.wantedCodecs.length) {
          this.setStatus('unavailable', 'This browser decodes none of the bridge\'s codecs '
                         + `(${(message.codecs ?? []).join(', ') || 'none'}).`);
          return;
        }
        this.startId = this.control.send({ type: 'webrtc_start', stream: this.stream,
                                           codecs: this.wantedCodecs });
        return;
      case 'webrtc_offer':
        if (this.status !== 'starting' || message.id !== this.startId) return;
        try {
          await this.answer(message, generation);
        } catch (error) {
          if (generation === this.generation) this.fail(`WebRTC: ${error.message ?? error}`);
        }
        return;
      case 'webrtc_error':
        if (this.status === 'starting' || this.status === 'playing') {
          if (message.code === 'bad_channel_message') return;
          if (message.id !== null && message.id !== this.configId && message.id !== this.startId
              && message.id !== this.answerId) return;  // about an earlier attempt
          this.fail(message.message || message.code);
        }
        return;
      case 'webrtc_stopped':
        if (message.id === null && this.status === 'playing') this.fail(message.reason ?? 'stopped');
        return;
      default:
    }
  }

  /** The bridge said it knows no webrtc_* (a version 1 bridge): fall back. */
  refused(problem) {
    if (this.status === 'starting') {
      this.stop();
      this.setStatus('unavailable', problem);
    }
  }

  async answer(offer, generation) {
    const pc = new RTCPeerConnection({
      iceServers: this.config?.ice_servers ?? [],
      iceTransportPolicy: this.relay ? 'relay' : 'all',
    });
    this.pc = pc;
    this.codec = offer.codec;
    pc.ontrack = (event) => {
      if (generation !== this.generation) return;
      const stream = event.streams[0] ?? new MediaStream([event.track]);
      this.video.srcObject = stream;
      this.video.muted = true;
      this.video.play().catch(() => {});
      this.watchFrames(generation);
    };
    pc.ondatachannel = (event) => {
      if (generation !== this.generation) return;
      const channel = event.channel;
      this.channel = channel;
      channel.onmessage = (e) => this.channelMessage(e.data);
      channel.onclose = () => {
        if (this.channel === channel) this.channel = null;
      };
    };
    pc.onconnectionstatechange = () => {
      if (generation !== this.generation) return;
      if (pc.connectionState === 'connected' && this.status === 'starting') {
        this.proven = true;   // the path does WebRTC
        this.timers.clearTimeout(this.timer);
        this.timer = this.timers.setTimeout(() => {
          if (generation === this.generation && this.status === 'starting') {
            this.fail(`connected, but no video within ${CONNECTED_PLAY_TIMEOUT / 1000} s`);
          }
        }, CONNECTED_PLAY_TIMEOUT);
      }
      if (pc.connectionState === 'failed') this.fail('WebRTC connection failed');
    };
    await pc.setRemoteDescription({ type: 'offer', sdp: offer.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') { resolve(); return; }
      const timer = this.timers.setTimeout(resolve, GATHER_TIMEOUT);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { this.timers.clearTimeout(timer); resolve(); }
      });
    });
    if (generation !== this.generation) return;
    this.answerId = this.control.send({ type: 'webrtc_answer', sdp: pc.localDescription.sdp });
    this.statsTimer = this.timers.setInterval(() => this.readStats(generation), 1000);
  }

  channelMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    this.channelMessages += 1;
    if (message?.type === 'frame') {
      this.stamps.add(message);
      this.layer = message.layer ?? this.layer;
    }
  }

  watchFrames(generation) {
    const video = this.video;
    if (typeof video.requestVideoFrameCallback !== 'function') return;
    const onFrame = (nowMs, metadata) => {
      if (generation !== this.generation) return;
      const at = this.now();
      this.frames.add(at);
      this.displayed += 1;
      const entry = metadata.rtpTimestamp !== undefined
        ? this.stamps.lookup(metadata.rtpTimestamp) : null;
      if (entry) {
        this.framesMapped += 1;
        const age = this.clock.age(entry.stamp, at);
        if (plausibleLatency(age)) {
          this.latency.add(age);
          this.latencySamples.push(age);   // every frame's figure, for bench/ (bounded)
          if (this.latencySamples.length > 20000) this.latencySamples.shift();
        }
        const bridgeAge = this.clock.age(entry.received, at);
        if (plausibleLatency(bridgeAge)) this.bridgeLatency.add(bridgeAge);
      }
      if (this.status === 'starting' && this.displayed >= 2) {
        this.timers.clearTimeout(this.timer);
        this.setStatus('playing');
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  async readStats(generation) {
    if (!this.pc || generation !== this.generation) return;
    const report = await this.pc.getStats();
    if (generation !== this.generation) return;
    report.forEach((entry) => {
      if (entry.type === 'inbound-rtp' && entry.kind === 'video') {
        const at = entry.timestamp;
        if (this.lastBytes && entry.bytesReceived > this.lastBytes.bytes) {
          this.progressAt = this.now();
        }
        if (this.lastBytes) {
          const ms = at - this.lastBytes.at;
          if (ms > 0) this.kbpsValue = (entry.bytesReceived - this.lastBytes.bytes) * 8 / ms;
        }
        this.lastBytes = { at, bytes: entry.bytesReceived };
        this.framesDecoded = entry.framesDecoded;
        const codec = report.get(entry.codecId);
        const name = codec?.mimeType ? codecName(codec.mimeType, this.config?.mime_types) : null;
        if (name) this.codec = name;
      }
      if (entry.type === 'candidate-pair' && entry.state === 'succeeded' && entry.nominated) {
        const local = report.get(entry.localCandidateId);
        this.candidateType = local?.candidateType ?? null;
      }
    });
    this.checkStall();
  }

  /** While playing: give the peer up after STALL_TIMEOUT without video bytes. */
  checkStall() {
    if (this.status !== 'playing' || this.progressAt === null) return;
    const now = this.now();
    if (now - this.playingSince >= STEADY) this.retries.reset();
    const silent = now - this.progressAt;
    if (silent >= STALL_TIMEOUT) {
      this.stalls += 1;
      this.fail(`no video for ${(silent / 1000).toFixed(1)} s`);
    }
  }

  /** Send a driving command over the data channel; false when it is not open. */
  sendCommand(text) {
    const channel = this.channel;
    if (!channel || channel.readyState !== 'open') return false;
    try {
      channel.send(text);
      this.channelSent += 1;
      return true;
    } catch {
      return false;
    }
  }

  stats() {
    const now = this.now();
    return {
      fps: this.frames.rate(now),
      kbps: this.kbpsValue,
      latency: this.latency.value(),
      bridgeLatency: this.bridgeLatency.value(),
      width: this.video.videoWidth,
      height: this.video.videoHeight,
      drawn: this.displayed,
      frameAge: this.frames.last() === null ? null : (now - this.frames.last()) / 1000,
      codec: this.codec,
      candidateType: this.candidateType ?? null,
      layer: this.layer,
    };
  }
}
