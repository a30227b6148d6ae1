// SfuVideo carrying out sfu.js's decisions, with a fake janus.js, control socket and <video>.

import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { FEED_POLL, RESUBSCRIBE_MARGIN } from '../js/sfu.js';
import { SfuVideo, STALL_TIMEOUT, START_TIMEOUT } from '../js/sfu_video.js';
import { FakeTimers } from './helpers.js';

globalThis.MediaStream ??= class { constructor(tracks) { this.tracks = tracks; } };

class FakeControl {
  constructor() {
    this.status = 'connected';
    this.sent = [];
    this.nextId = 1;
  }

  send(message) {
    if (this.status !== 'connected') return null;
    const id = this.nextId++;
    this.sent.push({ ...message, id });
    return id;
  }

  watches() {
    return this.sent.filter((m) => m.type === 'sfu_watch');
  }
}

class FakeJanus {
  static instances = [];

  constructor(options) {
    this.options = options;
    this.destroyed = false;
    this.handle = null;
    FakeJanus.instances.push(this);
  }

  static last() {
    return FakeJanus.instances[FakeJanus.instances.length - 1];
  }

  attach(callbacks) {
    this.callbacks = callbacks;
  }

  destroy() {
    this.destroyed = true;
  }

  /** getStats of a subscription whose video bytes grow (a report set by a test wins). */
  flowing() {
    this.bytes = (this.bytes ?? 0) + 1000;
    return new Map([['in', { type: 'inbound-rtp', kind: 'video', timestamp: this.bytes,
                             bytesReceived: this.bytes }]]);
  }

  // what Janus does: the session is up, the plugin attached, the offer made, the video arrives
  connect() {
    this.options.success();
    this.handle = {
      sent: [],
      send: (request) => this.handle.sent.push(request),
      createAnswer: ({ success }) => success({ type: 'answer', sdp: 'v=0 answer' }),
      webrtcStuff: { pc: { getStats: async () => this.report ?? this.flowing() } },
    };
    this.callbacks.success(this.handle);
    this.callbacks.onmessage({ videoroom: 'attached' }, { type: 'offer', sdp: 'v=0 offer' });
    this.track = { kind: 'video', muted: false };
    this.callbacks.onremotetrack(this.track, '0', true);
  }
}

class FakeVideo {
  constructor() {
    this.srcObject = null;
    this.frameCallbacks = [];
    this.videoWidth = 640;
    this.videoHeight = 480;
  }

  play() {
    return Promise.resolve();
  }

  requestVideoFrameCallback(callback) {
    this.frameCallbacks.push(callback);
  }

  frame() {
    const callbacks = this.frameCallbacks;
    this.frameCallbacks = [];
    for (const callback of callbacks) callback(0, {});
  }
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

/** Let `ms` pass a second at a time, the page's getStats answering in between. */
async function pass(timers, ms) {
  for (let left = ms; left > 0; left -= 1000) {
    timers.advance(Math.min(1000, left));
    await tick();
  }
}

function access(id, overrides = {}) {
  return { type: 'sfu_access', id, stream: 'camera', server: 'janus', url: 'ws://janus',
           room: 4242, feed: 7, token: 'session-1', room_token: 'room-1', expires: 1300,
           pin: 'pin', renew: 15, ...overrides };
}

function viewer({ wall = 1000 } = {}) {
  const timers = new FakeTimers();
  const control = new FakeControl();
  const video = new FakeVideo();
  const clock = { wall };
  const failures = [];
  const sfu = new SfuVideo(video, {
    control, timers, now: timers.now, wallSeconds: () => clock.wall,
    loadJanus: async () => FakeJanus, onFailed: (problem) => failures.push(problem),
  });
  return { sfu, timers, control, video, clock, failures };
}

async function playing(setup) {
  const { sfu, control, video } = setup;
  sfu.start('camera');
  sfu.message(access(control.watches().at(-1).id));
  await tick();
  FakeJanus.last().connect();
  video.frame();
  video.frame();
  assert.equal(sfu.status, 'playing');
}

beforeEach(() => {
  FakeJanus.instances = [];
});

describe('SfuVideo: sfu_watch and the subscription', () => {
  it('asks on /control, polls while the robot is not publishing, then subscribes', async () => {
    const { sfu, timers, control } = viewer();
    sfu.start('camera');
    assert.deepEqual(control.watches().map((m) => m.stream), ['camera']);
    sfu.message(access(control.watches()[0].id, { feed: null }));
    await tick();
    assert.equal(FakeJanus.instances.length, 0, 'no feed yet: nothing to subscribe to');
    timers.advance(FEED_POLL);
    assert.equal(control.watches().length, 2, 'asked again after FEED_POLL');
    sfu.message(access(control.watches()[1].id));
    await tick();
    const janus = FakeJanus.last();
    assert.equal(janus.options.server, 'ws://janus');
    assert.equal(janus.options.token, 'session-1');
    assert.deepEqual(janus.options.iceServers, [], 'no STUN server of janus.js default');
    janus.connect();
    assert.equal(janus.callbacks.plugin, 'janus.plugin.videoroom');
    assert.deepEqual(janus.handle.sent[0].message,
                     { request: 'join', ptype: 'subscriber', room: 4242, streams: [{ feed: 7 }],
                       token: 'room-1', pin: 'pin' });
    assert.deepEqual(janus.handle.sent[1], { message: { request: 'start' },
                                             jsep: { type: 'answer', sdp: 'v=0 answer' } });
  });

  it('plays once frames show, and repeats sfu_watch every `renew` s as the heartbeat', async () => {
    const setup = viewer();
    await playing(setup);
    const { timers, control } = setup;
    const before = control.watches().length;
    await pass(timers, 14999);
    assert.equal(control.watches().length, before);
    await pass(timers, 1);
    assert.equal(control.watches().length, before + 1);
  });

  it('ignores replies to an earlier sfu_watch', async () => {
    const { sfu, control } = viewer();
    sfu.start('camera');
    sfu.message(access(control.watches()[0].id + 100));
    await tick();
    assert.equal(FakeJanus.instances.length, 0);
  });

  it('subscribes anew before the session token expires, and drops the old one only once the '
     + 'new one has video', async () => {
    const setup = viewer();
    await playing(setup);
    const { sfu, timers, control, video, clock } = setup;
    const old = FakeJanus.last();
    clock.wall = 1300 - RESUBSCRIBE_MARGIN;
    await pass(timers, 15000);
    sfu.message(access(control.watches().at(-1).id, { token: 'session-2', expires: 1600 }));
    await tick();
    const fresh = FakeJanus.last();
    assert.notEqual(fresh, old);
    assert.equal(fresh.options.token, 'session-2');
    assert.equal(old.destroyed, false, 'the shown subscription plays on meanwhile');
    fresh.connect();
    assert.equal(old.destroyed, true);
    assert.equal(video.srcObject.tracks[0], fresh.track);
    assert.equal(sfu.status, 'playing', 'no gap in the status');
    assert.equal(sfu.subscriptions, 2);
  });

  it('a replacement that fails leaves the shown subscription playing', async () => {
    const setup = viewer();
    await playing(setup);
    const { sfu, timers, control, clock } = setup;
    clock.wall = 1290;
    await pass(timers, 15000);
    sfu.message(access(control.watches().at(-1).id, { expires: 1600 }));
    await tick();
    FakeJanus.last().options.error('Lost connection');
    assert.equal(sfu.status, 'playing');
    assert.equal(sfu.next, null);
  });

  it('stop leaves on /control and destroys the Janus session', async () => {
    const setup = viewer();
    await playing(setup);
    setup.sfu.stop();
    assert.equal(setup.sfu.status, 'off');
    assert.equal(setup.control.sent.at(-1).type, 'sfu_leave');
    assert.equal(FakeJanus.last().destroyed, true);
    assert.equal(setup.video.srcObject, null);
  });
});

describe('SfuVideo: when the SFU is given up (sfu.js then falls back or retries)', () => {
  it('Janus losing the session fails it, leaves, and says so once', async () => {
    const setup = viewer();
    await playing(setup);
    FakeJanus.last().options.error('Lost connection to the server (is it down?)');
    assert.equal(setup.sfu.status, 'failed');
    assert.match(setup.sfu.problem, /Lost connection/);
    assert.deepEqual(setup.failures.length, 1);
    assert.equal(setup.control.sent.at(-1).type, 'sfu_leave');
    assert.equal(FakeJanus.last().destroyed, true);
  });

  it('the plugin refusing the join (a wrong pin, an expired token) fails it', async () => {
    const { sfu, control, failures } = viewer();
    sfu.start('camera');
    sfu.message(access(control.watches()[0].id));
    await tick();
    const janus = FakeJanus.last();
    janus.options.success();
    janus.callbacks.success({ send() {} });
    janus.callbacks.onmessage({ videoroom: 'event', error_code: 433, error: 'Unauthorized' });
    assert.equal(sfu.status, 'failed');
    assert.equal(failures.length, 1);
  });

  it('the bridge refusing sfu_watch fails it', () => {
    const { sfu, control } = viewer();
    sfu.start('camera');
    sfu.message({ type: 'sfu_error', id: control.watches()[0].id, code: 'capacity',
                  message: 'too many SFU viewers' });
    assert.equal(sfu.status, 'failed');
    assert.equal(sfu.problem, 'too many SFU viewers');
  });

  it('no video within START_TIMEOUT fails it', async () => {
    const { sfu, timers, control, failures } = viewer();
    sfu.start('camera');
    sfu.message(access(control.watches()[0].id));
    await tick();
    timers.advance(START_TIMEOUT - 1);
    assert.equal(sfu.status, 'starting');
    timers.advance(1);
    assert.equal(sfu.status, 'failed');
    assert.equal(failures.length, 1);
  });

  it('a playing subscription whose bytes stop for STALL_TIMEOUT fails it', async () => {
    const setup = viewer();
    await playing(setup);
    const janus = FakeJanus.last();
    let bytes = 1000;
    const report = () => new Map([['in', { type: 'inbound-rtp', kind: 'video', timestamp: 1,
                                            bytesReceived: bytes }]]);
    janus.report = report();
    for (let i = 0; i < 3; i += 1) {      // bytes grow: playing
      bytes += 1000;
      janus.report = report();
      setup.timers.advance(1000);
      await tick();
    }
    assert.equal(setup.sfu.status, 'playing');
    for (let i = 0; i < STALL_TIMEOUT / 1000 + 1 && setup.sfu.status === 'playing'; i += 1) {
      setup.timers.advance(1000);        // no more bytes
      await tick();
    }
    assert.equal(setup.sfu.status, 'failed');
    assert.equal(setup.sfu.stalls, 1);
  });

  it('a lost control connection fails it without a leave', () => {
    const { sfu, control } = viewer();
    control.status = 'disconnected';
    sfu.start('camera');
    assert.equal(sfu.status, 'failed');
    assert.equal(control.sent.length, 0);
  });
});
