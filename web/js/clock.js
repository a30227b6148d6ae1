// Bridge clock offset from `time` probes (NTP's rule: trust the sample with the smallest round
// trip). Pure: times are passed in.
//
// Times on the page are wall-clock milliseconds (performance.timeOrigin + performance.now(),
// which does not jump backwards); the bridge answers in seconds since the epoch.
//   offset  = server_time - (t0 + t3) / 2         (s; bridge clock minus page clock)
//   latency = page_now + offset - stamp           (s; the camera stamp in the bridge's clock)
// The error of an offset is at most half its round trip.

export const DEFAULT_WINDOW = 12;  // samples kept; older ones drop out, so drift is followed

export class ClockOffset {
  constructor(window = DEFAULT_WINDOW) {
    this.window = window;
    this.samples = [];
  }

  /** Add one probe: sent at t0 ms, answered with serverTime s, received at t3 ms. */
  add(t0, serverTime, t3) {
    if (![t0, serverTime, t3].every(Number.isFinite) || t3 < t0) return null;
    const sample = { offset: serverTime - (t0 + t3) / 2000, rtt: (t3 - t0) / 1000, at: t3 };
    this.samples.push(sample);
    if (this.samples.length > this.window) this.samples.shift();
    return sample;
  }

  /** The sample with the smallest round trip among the kept ones (null before any). */
  best() {
    let best = null;
    for (const sample of this.samples) {
      if (best === null || sample.rtt < best.rtt) best = sample;
    }
    return best;
  }

  /** Bridge clock minus page clock, s (null until a probe was answered). */
  get offset() {
    return this.best()?.offset ?? null;
  }

  /** Round trip of the sample in use, s: the offset is known within +-rtt/2. */
  get rtt() {
    return this.best()?.rtt ?? null;
  }

  /** The bridge's clock (s since the epoch) at page time `nowMs`; null before any probe. */
  bridgeTime(nowMs) {
    const offset = this.offset;
    return offset === null ? null : nowMs / 1000 + offset;
  }

  /** Age of a bridge-clock timestamp (s) at page time `nowMs`; null before any probe. */
  age(stamp, nowMs) {
    const bridgeNow = this.bridgeTime(nowMs);
    return bridgeNow === null ? null : bridgeNow - stamp;
  }

  reset() {
    this.samples = [];
  }
}

/** Wall-clock ms that does not jump with NTP steps while the page is open. */
export function pageNow() {
  return performance.timeOrigin + performance.now();
}
