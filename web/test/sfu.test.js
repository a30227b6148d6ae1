import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  DRIVER_HOLD, FEED_POLL, joinRequest, nextWatchDelay, PathPolicy, pathChoice, RENEW_DEFAULT,
  RENEW_MAX, RENEW_MIN, RESUBSCRIBE_MARGIN, resubscribeReason, SFU_BACKOFF, STEADY,
} from '../js/sfu.js';
import { FakeTimers } from './helpers.js';

function page(overrides = {}) {
  return {
    wanted: 'auto', available: true, driving: false, stream: 'camera', direct: false,
    sfu: { status: 'off', stream: null },
    ...overrides,
  };
}

const noJitter = () => 0.5;   // Backoff's random source: no spread

describe('pathChoice', () => {
  it('keeps the three choices and reads anything else as auto', () => {
    for (const value of ['auto', 'direct', 'sfu']) assert.equal(pathChoice(value), value);
    for (const value of [null, '', 'SFU', 'webrtc', 'undefined']) assert.equal(pathChoice(value), 'auto');
  });
});

describe('PathPolicy.path: which path the page watches on', () => {
  it('an observer watches through the SFU when the stream is advertised on one', () => {
    const policy = new PathPolicy({ now: () => 0 });
    assert.equal(policy.path(page()), 'sfu');
  });

  it('the direct path when no SFU offers the stream, or there is no stream', () => {
    const policy = new PathPolicy({ now: () => 0 });
    assert.equal(policy.path(page({ available: false })), 'direct');
    assert.equal(policy.path(page({ available: false, wanted: 'sfu' })), 'direct');
    assert.equal(policy.path(page({ stream: null })), 'direct');
  });

  it('a page that drives (or asks to) keeps the direct path, and for DRIVER_HOLD after', () => {
    const timers = new FakeTimers();
    const policy = new PathPolicy({ now: timers.now });
    assert.equal(policy.path(page({ driving: true })), 'direct');
    timers.advance(DRIVER_HOLD - 1);
    assert.equal(policy.path(page()), 'direct', 'released a moment ago: no flapping');
    timers.advance(1);
    assert.equal(policy.path(page()), 'sfu', 'an observer again');
  });

  it('the selector wins over the role: direct, or the SFU even while driving', () => {
    const policy = new PathPolicy({ now: () => 0 });
    assert.equal(policy.path(page({ wanted: 'direct' })), 'direct');
    assert.equal(policy.path(page({ wanted: 'sfu', driving: true })), 'sfu');
  });

  it('Auto falls back to the direct path when the SFU failed, and tries it again later', () => {
    const timers = new FakeTimers();
    const policy = new PathPolicy({ now: timers.now, random: noJitter });
    policy.failed();
    assert.equal(policy.path(page()), 'direct');
    timers.advance(SFU_BACKOFF.base - 1);
    assert.equal(policy.path(page()), 'direct');
    timers.advance(1);
    assert.equal(policy.path(page()), 'sfu');
    policy.failed();
    timers.advance(SFU_BACKOFF.base);
    assert.equal(policy.path(page()), 'direct', 'the backoff doubles');
    timers.advance(SFU_BACKOFF.base);
    assert.equal(policy.path(page()), 'sfu');
  });

  it('a path chosen by hand tries the SFU at once, whatever the backoff', () => {
    const policy = new PathPolicy({ now: () => 0 });
    policy.failed();
    assert.equal(policy.path(page()), 'direct');
    policy.chosen();
    assert.equal(policy.path(page()), 'sfu');
  });

  it('the backoff starts afresh after the SFU played STEADY ms', () => {
    const timers = new FakeTimers();
    const policy = new PathPolicy({ now: timers.now, random: noJitter });
    for (let i = 0; i < 5; i += 1) policy.failed();
    policy.playing(STEADY - 1);
    policy.failed();
    assert.equal(policy.retryAt - timers.now(), SFU_BACKOFF.max);
    policy.playing(STEADY);
    policy.failed();
    assert.equal(policy.retryAt - timers.now(), SFU_BACKOFF.base);
  });
});

describe('PathPolicy.sfu and .direct: switching, made before it breaks', () => {
  it('starts the SFU for the chosen stream and keeps one that starts or plays it', () => {
    const policy = new PathPolicy({ now: () => 0 });
    assert.equal(policy.sfu(page()), 'start');
    assert.equal(policy.sfu(page({ sfu: { status: 'starting', stream: 'camera' } })), 'keep');
    assert.equal(policy.sfu(page({ sfu: { status: 'playing', stream: 'camera' } })), 'keep');
    assert.equal(policy.sfu(page({ sfu: { status: 'playing', stream: 'other' } })), 'start');
  });

  it('the direct path goes on until the SFU plays, and is not started for it', () => {
    const policy = new PathPolicy({ now: () => 0 });
    assert.equal(policy.direct(page({ direct: true, sfu: { status: 'starting', stream: 'camera' } })),
                 'keep');
    assert.equal(policy.direct(page({ direct: true, sfu: { status: 'playing', stream: 'camera' } })),
                 'stop');
    assert.equal(policy.direct(page({ driving: true })), 'run');
  });

  it('leaving the SFU: it plays on until the direct path shows video, then stops', () => {
    const policy = new PathPolicy({ now: () => 0 });
    const playing = { status: 'playing', stream: 'camera' };
    assert.equal(policy.sfu(page({ driving: true, sfu: playing })), 'keep');
    assert.equal(policy.sfu(page({ driving: true, direct: true, sfu: playing })), 'stop');
    assert.equal(policy.sfu(page({ driving: true, sfu: { status: 'starting', stream: 'camera' } })),
                 'stop', 'one that does not play yet is dropped at once');
    assert.equal(policy.sfu(page({ driving: true })), 'keep', 'off stays off');
  });

  it('the SFU chosen by hand is retried after the backoff, with no fallback meanwhile', () => {
    const timers = new FakeTimers();
    const policy = new PathPolicy({ now: timers.now, random: noJitter });
    const failed = page({ wanted: 'sfu', sfu: { status: 'failed', stream: 'camera' } });
    policy.failed();
    assert.equal(policy.path(failed), 'sfu');
    assert.equal(policy.sfu(failed), 'keep', 'waits for the retry');
    timers.advance(SFU_BACKOFF.base);
    assert.equal(policy.sfu(failed), 'start');
  });
});

describe('nextWatchDelay: the sfu_watch heartbeat', () => {
  it('polls every FEED_POLL while the robot is not publishing yet', () => {
    assert.equal(nextWatchDelay({ feed: null, renew: 15 }), FEED_POLL);
    assert.equal(nextWatchDelay(null), FEED_POLL);
  });

  it('repeats every `renew` seconds the bridge names, within bounds', () => {
    assert.equal(nextWatchDelay({ feed: 7, renew: 15 }), 15000);
    assert.equal(nextWatchDelay({ feed: 7, renew: 0.01 }), RENEW_MIN);
    assert.equal(nextWatchDelay({ feed: 7, renew: 1e9 }), RENEW_MAX);
    assert.equal(nextWatchDelay({ feed: 7 }), RENEW_DEFAULT);
    assert.equal(nextWatchDelay({ feed: 7, renew: 'x' }), RENEW_DEFAULT);
  });
});

describe('resubscribeReason: when the page subscribes anew', () => {
  const access = { url: 'wss://cloud/janus', room: 4242, feed: 7, expires: 1000 };

  it('subscribes once a feed is named, not before', () => {
    assert.equal(resubscribeReason(null, { ...access, feed: null }, 0), null);
    assert.equal(resubscribeReason(null, access, 0), 'subscribe');
  });

  it('keeps the subscription while nothing that matters changed', () => {
    assert.equal(resubscribeReason(access, { ...access, expires: 1015 }, 900), null);
    assert.equal(resubscribeReason(access, { ...access, feed: null }, 999), null,
                 'the robot republishing: the page waits for the new feed');
  });

  it('a new feed (the robot published again) or another server: anew', () => {
    assert.equal(resubscribeReason(access, { ...access, feed: 8 }, 0), 'feed changed');
    assert.equal(resubscribeReason(access, { ...access, room: 1 }, 0), 'server changed');
    assert.equal(resubscribeReason(access, { ...access, url: 'wss://b/janus' }, 0), 'server changed');
  });

  it('anew with a fresher token RESUBSCRIBE_MARGIN s before the session token expires', () => {
    const fresher = { ...access, expires: 1300 };
    assert.equal(resubscribeReason(access, fresher, 1000 - RESUBSCRIBE_MARGIN - 1), null);
    assert.equal(resubscribeReason(access, fresher, 1000 - RESUBSCRIBE_MARGIN), 'token expires');
    assert.equal(resubscribeReason(access, access, 999), null, 'not without a fresher token');
    assert.equal(resubscribeReason({ ...access, expires: undefined }, fresher, 5000), null,
                 'a Janus without token_auth: tokens never expire');
  });
});

describe('joinRequest', () => {
  it('joins the room as a subscriber of the feed, with the room token and pin', () => {
    assert.deepEqual(joinRequest({ room: 4242, feed: 7, room_token: 'rt', pin: 'p', token: 't' }),
                     { request: 'join', ptype: 'subscriber', room: 4242, streams: [{ feed: 7 }],
                       token: 'rt', pin: 'p' });
    assert.deepEqual(joinRequest({ room: 1, feed: 2 }),
                     { request: 'join', ptype: 'subscriber', room: 1, streams: [{ feed: 2 }] });
  });
});
