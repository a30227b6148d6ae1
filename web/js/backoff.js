// Reconnection delays: exponential backoff with jitter. Pure (the random source is injectable).

export const DEFAULT_BACKOFF = Object.freeze({
  base: 500,      // ms, first retry
  factor: 2,      // growth per failed attempt
  max: 8000,      // ms, cap
  jitter: 0.25,   // +-25 %: clients that lost the same bridge do not all come back at once
});

/**
 * Delay in ms before retry number `attempt` (0 for the first retry):
 * min(max, base * factor^attempt), spread by +-jitter, never above max nor below 0.
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const { base, factor, max, jitter } = { ...DEFAULT_BACKOFF, ...options };
  const ideal = Math.min(max, base * factor ** Math.max(0, attempt));
  const spread = 1 + jitter * (2 * random() - 1);
  return Math.round(Math.min(max, Math.max(0, ideal * spread)));
}

/** Successive backoff delays; reset() after a connection that worked. */
export class Backoff {
  constructor(options = {}, random = Math.random) {
    this.options = options;
    this.random = random;
    this.attempt = 0;
  }

  next() {
    const delay = backoffDelay(this.attempt, this.options, this.random);
    this.attempt += 1;
    return delay;
  }

  reset() {
    this.attempt = 0;
  }
}

/**
 * One pending retry of an owner that has `timers` (setTimeout/clearTimeout) and `now()`:
 * `at` is the page time (ms) it fires, for the countdowns the page shows; null when none waits.
 */
export class RetryTimer {
  constructor(owner) {
    this.owner = owner;
    this.timer = null;
    this.at = null;
  }

  get pending() {
    return this.timer !== null;
  }

  /** Run `run` after `delay` ms, replacing a retry already waiting. */
  schedule(delay, run) {
    this.cancel();
    this.at = this.owner.now() + delay;
    this.timer = this.owner.timers.setTimeout(() => {
      this.timer = null;
      this.at = null;
      run();
    }, delay);
  }

  cancel() {
    if (this.timer !== null) this.owner.timers.clearTimeout(this.timer);
    this.timer = null;
    this.at = null;
  }
}
