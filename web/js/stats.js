// Live video figures: frames per second, kbit/s and latency over a sliding window. Pure.

/** Events (with a size) in the last `windowMs`: rate per second and bits per second. */
export class RateMeter {
  constructor(windowMs = 2000) {
    this.windowMs = windowMs;
    this.events = [];  // [time ms, bytes]
    this.start = null; // first event since reset: a young meter divides by its age, not the window
  }

  add(time, bytes = 0) {
    if (this.start === null) this.start = time;
    this.events.push([time, bytes]);
    this.trim(time);
  }

  /** The span the events are counted over: the window, or less while the meter is young. */
  span(now) {
    if (this.start === null) return this.windowMs;
    return Math.min(this.windowMs, Math.max(now - this.start, 1000));
  }

  trim(now) {
    const oldest = now - this.windowMs;
    let drop = 0;
    while (drop < this.events.length && this.events[drop][0] <= oldest) drop += 1;
    if (drop) this.events.splice(0, drop);
  }

  /** Events per second over the window (0 when there are none). */
  rate(now) {
    this.trim(now);
    return this.events.length * 1000 / this.span(now);
  }

  /** kbit/s over the window. */
  kbps(now) {
    this.trim(now);
    let bytes = 0;
    for (const [, size] of this.events) bytes += size;
    return bytes * 8 / this.span(now);  // bits per ms = kbit/s
  }

  /** Time of the newest event, or null. */
  last() {
    return this.events.length ? this.events[this.events.length - 1][0] : null;
  }

  reset() {
    this.events = [];
    this.start = null;
  }
}

/** Median of the last `size` values (robust to a single slow frame). */
export class RecentMedian {
  constructor(size = 30) {
    this.size = size;
    this.values = [];
  }

  add(value) {
    if (!Number.isFinite(value)) return;
    this.values.push(value);
    if (this.values.length > this.size) this.values.shift();
  }

  value() {
    if (!this.values.length) return null;
    const sorted = [...this.values].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  reset() {
    this.values = [];
  }
}

/** "12 ms", "1.3 s" */
export function formatDuration(seconds) {
  if (seconds === null || !Number.isFinite(seconds)) return '–';
  if (Math.abs(seconds) < 1) return `${Math.round(seconds * 1000)} ms`;
  return `${seconds.toFixed(1)} s`;
}

/** "850 kbit/s", "12.4 Mbit/s" */
export function formatBitrate(kbps) {
  if (!Number.isFinite(kbps)) return '–';
  if (kbps >= 10000) return `${(kbps / 1000).toFixed(1)} Mbit/s`;
  return `${Math.round(kbps)} kbit/s`;
}

/**
 * A camera stamp's latency is shown only when it is plausible: a camera whose clock is not the
 * bridge's (simulation time, an unsynchronised machine) gives ages that mean nothing.
 */
export function plausibleLatency(seconds) {
  return seconds !== null && Number.isFinite(seconds) && seconds > -0.5 && seconds < 60;
}

/**
 * What the "via" figure says: the transport that draws the picture now, never one that is only
 * being tried. `webrtc` is the WebRTC status (off | starting | playing | failed | unavailable),
 * `websocket` the video socket's (disconnected | connecting | open).
 * Returns [text, data-value].
 */
export function transportLabel({ webrtc, websocket, sfu = 'off', codec = '', candidateType = '' }) {
  if (sfu === 'playing') return [`SFU ${codec.toUpperCase()}`.trim(), 'sfu'];
  if (webrtc === 'playing') {
    return [`WebRTC ${codec.toUpperCase()}${candidateType === 'relay' ? ' relay' : ''}`.trim(),
      'webrtc'];
  }
  if (websocket === 'open') return ['WebSocket JPEG', 'websocket'];
  if (webrtc === 'starting') return ['WebRTC…', 'webrtc-starting'];
  if (sfu === 'starting') return ['SFU…', 'sfu-starting'];
  if (websocket === 'connecting') return ['WebSocket…', 'websocket-connecting'];
  return ['–', ''];
}

/** The stats tooltip; `probePeriodMs` is how often the page probes the bridge clock. */
export function statsTooltip(probePeriodMs) {
  const every = probePeriodMs % 1000 ? `${probePeriodMs} ms` : `${probePeriodMs / 1000} s`;
  return 'fps: frames drawn per second. latency: camera stamp (header.stamp) to drawn on this '
    + "screen, in the bridge's clock: the page estimates the bridge clock offset from 'time' "
    + `probes (smallest round trip wins, one probe every ${every}) and assumes the camera `
    + "stamps with the bridge's clock (same machine, or NTP/chrony-synced). kbit/s: video "
    + 'received.';
}
