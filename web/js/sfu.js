// Watching through the SFU (a Janus server in the cloud): which path the page takes, when it
// repeats sfu_watch, when it subscribes anew, and when it gives the SFU up. Decisions only;
// sfu_video.js carries them out with janus.js, app.js renders.
//
// Paths: 'direct' is the page's own peer to the robot (WebRTC, or JPEG: transport.js decides
// between them); 'sfu' is a subscription in the robot's Janus room, so the robot's uplink
// carries the stream once however many pages watch. The selector offers Auto, Direct and SFU.
// Auto: a page that drives (holds the lock, or is asking for it) takes the direct path, so the
// driver's picture never depends on the cloud or on who else watches; every other page (an
// observer) watches through the SFU when the bridge advertises one for the stream (its
// /api/streams entry has `sfu: true`). A page that stopped driving stays direct for
// DRIVER_HOLD, so releasing and taking the lock again does not switch paths back and forth.
// When the SFU fails, Auto falls back to the direct path and tries the SFU again after a
// backoff (2 s doubling to 30 s); the SFU chosen by hand is retried on the same backoff with no
// fallback. A switch is made before it breaks: the path the page leaves keeps playing until the
// other one plays. Commands never go through the SFU: they take /control (or the direct peer's data
// channel, when it plays).

import { Backoff } from './backoff.js';

export const PATHS = ['auto', 'direct', 'sfu'];
export const DRIVER_HOLD = 10000;      // ms a page that stopped driving keeps the direct path
export const SFU_BACKOFF = Object.freeze({ base: 2000, max: 30000 });
export const STEADY = 30000;           // ms of playing after which the backoff starts afresh
export const FEED_POLL = 1000;         // ms between sfu_watch while the robot is not publishing yet
export const RENEW_DEFAULT = 15000;    // ms between heartbeats when the bridge names no `renew`
export const RENEW_MIN = 1000;
export const RENEW_MAX = 60000;
// s before the Janus session's token expires that the page subscribes anew with a fresher one
// (janus.js keeps a session's token for its life, and Janus checks it on every keepalive)
export const RESUBSCRIBE_MARGIN = 30;

/** The stored choice, or 'auto' for anything else (a stale or hand-edited value). */
export function pathChoice(value) {
  return PATHS.includes(value) ? value : 'auto';
}

const ACTIVE = ['starting', 'playing'];

// ctx: { wanted: 'auto' | 'direct' | 'sfu',
//        available: the chosen stream is advertised on an SFU, the page may watch
//                   (connected, a bridge of protocol 2, a transport other than JPEG),
//        driving: this page holds the driver lock or is asking for it,
//        stream: the chosen stream's name, null when there is none,
//        direct: the direct path shows video now (WebRTC plays, or JPEG frames come),
//        sfu: { status, stream } }          // SfuVideo
export class PathPolicy {
  constructor({ now, random = Math.random }) {
    this.now = now;
    this.droveAt = null;       // page time this page last drove (or asked to)
    this.retryAt = null;       // page time before which a failed SFU is not tried again
    this.backoff = new Backoff(SFU_BACKOFF, random);
  }

  /** 'direct' or 'sfu': the path the page should watch on now. */
  path(ctx) {
    if (ctx.driving) this.droveAt = this.now();
    if (!ctx.available || ctx.stream === null || ctx.wanted === 'direct') return 'direct';
    if (ctx.wanted === 'sfu') return 'sfu';
    if (this.droveAt !== null && this.now() - this.droveAt < DRIVER_HOLD) return 'direct';
    if (this.retryAt !== null && this.now() < this.retryAt) return 'direct';
    return 'sfu';
  }

  /** What the SFU viewer should do: 'start', 'stop' or 'keep' (also: wait for its retry). */
  sfu(ctx, path = this.path(ctx)) {
    const { status, stream } = ctx.sfu;
    if (path === 'direct') {
      if (status === 'off') return 'keep';
      return status === 'playing' && !ctx.direct ? 'keep' : 'stop';  // until direct shows
    }
    if (ACTIVE.includes(status) && stream === ctx.stream) return 'keep';
    if (status === 'failed' && this.retryAt !== null && this.now() < this.retryAt) return 'keep';
    return 'start';
  }

  /** What the direct path should do: 'run' (start it if it does not), 'stop', or 'keep' (leave
   *  it as it is: it goes on showing video until the SFU plays, and is not started for it). */
  direct(ctx, path = this.path(ctx)) {
    if (path === 'direct') return 'run';
    return ctx.sfu.status === 'playing' && ctx.sfu.stream === ctx.stream ? 'stop' : 'keep';
  }

  /** The SFU failed (Janus refused, the path broke, no video in time): back off. */
  failed() {
    this.retryAt = this.now() + this.backoff.next();
  }

  /** The user chose a path: a failed SFU is tried again at once, not after its backoff. */
  chosen() {
    this.retryAt = null;
  }

  /** The SFU played for `ms`: after STEADY, a later failure backs off from the start. */
  playing(ms) {
    if (ms >= STEADY) this.backoff.reset();
    this.retryAt = null;
  }
}

/** ms until the next sfu_watch, after a reply (`sfu_access`): the heartbeat, or a poll. */
export function nextWatchDelay(access) {
  if (!access?.feed) return FEED_POLL;   // the robot starts publishing on our first sfu_watch
  const renew = Number(access.renew) * 1000;
  if (!Number.isFinite(renew) || renew <= 0) return RENEW_DEFAULT;
  return Math.min(RENEW_MAX, Math.max(RENEW_MIN, renew));
}

/**
 * Why the page must subscribe anew, given the subscription it has (`current`: the access it
 * subscribed with, or null) and the newest `sfu_access`; null when it need not.
 * `nowSeconds` is Unix time (the tokens' `expires` are too).
 */
export function resubscribeReason(current, latest, nowSeconds) {
  if (!latest?.feed) return null;                    // nothing to subscribe to yet
  if (!current) return 'subscribe';
  if (latest.url !== current.url || latest.room !== current.room) return 'server changed';
  if (latest.feed !== current.feed) return 'feed changed';   // the robot published anew
  if (Number.isFinite(current.expires) && Number.isFinite(latest.expires)
      && latest.expires > current.expires
      && nowSeconds >= current.expires - RESUBSCRIBE_MARGIN) {
    return 'token expires';
  }
  return null;
}

/** The VideoRoom `join` of a subscriber to the feed `access` names. */
export function joinRequest(access) {
  const join = { request: 'join', ptype: 'subscriber', room: access.room,
                 streams: [{ feed: access.feed }] };
  if (access.room_token) join.token = access.room_token;
  if (access.pin) join.pin = access.pin;
  return join;
}
