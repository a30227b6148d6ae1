import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { AUTO_FALLBACK, TransportPolicy, transportChoice } from '../js/transport.js';
import { FakeTimers } from './helpers.js';

function page(overrides = {}) {
  return {
    wanted: 'auto', protocol: 2, connected: true, stream: 'camera',
    webrtc: { status: 'off', stream: null },
    jpeg: { status: 'disconnected', retryAt: null },
    ...overrides,
  };
}

describe('transportChoice', () => {
  it('keeps the three choices and reads anything else as auto', () => {
    for (const value of ['auto', 'webrtc', 'websocket']) assert.equal(transportChoice(value), value);
    for (const value of [null, '', 'WebRTC', 'jpeg', 'undefined']) {
      assert.equal(transportChoice(value), 'auto');
    }
  });
});

describe('TransportPolicy.restart', () => {
  it('auto starts WebRTC alone and gives it AUTO_FALLBACK ms before JPEG', () => {
    const timers = new FakeTimers();
    const policy = new TransportPolicy({ now: timers.now });
    assert.deepEqual(policy.restart(page()), { webrtc: 'start', jpeg: 'stop' });
    assert.equal(policy.fallbackAt, timers.now() + AUTO_FALLBACK);
  });

  it('websocket starts JPEG and never WebRTC', () => {
    const policy = new TransportPolicy({ now: () => 0 });
    assert.deepEqual(policy.restart(page({ wanted: 'websocket' })), { webrtc: 'stop', jpeg: 'restart' });
    assert.equal(policy.fallbackAt, null);
  });

  it('webrtc starts WebRTC with no JPEG fallback at all', () => {
    const policy = new TransportPolicy({ now: () => 0 });
    assert.deepEqual(policy.restart(page({ wanted: 'webrtc' })), { webrtc: 'start', jpeg: 'stop' });
    assert.equal(policy.fallbackAt, null);
  });

  it('a version 1 bridge gets JPEG at once, whatever was chosen', () => {
    const policy = new TransportPolicy({ now: () => 0 });
    for (const wanted of ['auto', 'webrtc']) {
      assert.deepEqual(policy.restart(page({ wanted, protocol: 1 })), { webrtc: 'stop', jpeg: 'restart' });
    }
  });

  it('before the hello, or without a stream or a connection, WebRTC does not start', () => {
    const policy = new TransportPolicy({ now: () => 0 });
    assert.equal(policy.restart(page({ protocol: null })).webrtc, 'stop');
    assert.equal(policy.restart(page({ stream: null })).webrtc, 'stop');
    assert.equal(policy.restart(page({ connected: false })).webrtc, 'stop');
  });

  it('restarts WebRTC even when it already plays the stream (a restart is a fresh start)', () => {
    const policy = new TransportPolicy({ now: () => 0 });
    const playing = page({ webrtc: { status: 'playing', stream: 'camera' } });
    assert.equal(policy.restart(playing).webrtc, 'start');
    assert.equal(policy.webrtc(playing), 'keep');
  });
});

describe('TransportPolicy.webrtc', () => {
  it('keeps a session that starts or plays the chosen stream, starts one for another', () => {
    const policy = new TransportPolicy({ now: () => 0 });
    assert.equal(policy.webrtc(page({ webrtc: { status: 'starting', stream: 'camera' } })), 'keep');
    assert.equal(policy.webrtc(page({ webrtc: { status: 'playing', stream: 'other' } })), 'start');
    assert.equal(policy.webrtc(page({ webrtc: { status: 'failed', stream: 'camera' } })), 'start');
    assert.equal(policy.webrtc(page({ wanted: 'websocket' })), 'stop');
  });
});

describe('TransportPolicy.show', () => {
  it('shows the video element while WebRTC plays and closes the JPEG socket', () => {
    const policy = new TransportPolicy({ now: () => 0 });
    const plan = policy.show(page({ webrtc: { status: 'playing', stream: 'camera' },
                                    jpeg: { status: 'connected', retryAt: null } }));
    assert.deepEqual(plan, { webrtcVisible: true, jpeg: 'stop' });
  });

  it('falls back to JPEG when WebRTC failed or is unavailable, unless WebRTC was chosen', () => {
    const policy = new TransportPolicy({ now: () => 0 });
    for (const status of ['failed', 'unavailable']) {
      assert.deepEqual(policy.show(page({ webrtc: { status, stream: 'camera' } })),
                       { webrtcVisible: false, jpeg: 'restart' });
      assert.equal(policy.show(page({ wanted: 'webrtc', webrtc: { status, stream: 'camera' } })).jpeg,
                   null);
    }
  });

  it('leaves a JPEG socket alone that waits for its own retry or already runs', () => {
    const policy = new TransportPolicy({ now: () => 0 });
    const failed = { status: 'failed', stream: 'camera' };
    assert.equal(policy.show(page({ webrtc: failed, jpeg: { status: 'disconnected', retryAt: 5 } })).jpeg,
                 null);
    assert.equal(policy.show(page({ webrtc: failed, jpeg: { status: 'connected', retryAt: null } })).jpeg,
                 null);
    assert.equal(policy.show(page({ webrtc: { status: 'starting', stream: 'camera' } })).jpeg, null);
  });
});

describe('TransportPolicy.tick', () => {
  it('starts JPEG once when Auto waited AUTO_FALLBACK ms without WebRTC playing', () => {
    const timers = new FakeTimers();
    const policy = new TransportPolicy({ now: timers.now });
    const starting = page({ webrtc: { status: 'starting', stream: 'camera' } });
    policy.restart(page());
    timers.advance(AUTO_FALLBACK - 1);
    assert.equal(policy.tick(starting), null);
    timers.advance(1);
    assert.equal(policy.tick(starting), 'restart');
    assert.equal(policy.tick(starting), null, 'once');
  });

  it('does nothing when WebRTC plays by then, or for the websocket and webrtc choices', () => {
    const timers = new FakeTimers();
    const policy = new TransportPolicy({ now: timers.now });
    policy.restart(page());
    timers.advance(AUTO_FALLBACK);
    assert.equal(policy.tick(page({ webrtc: { status: 'playing', stream: 'camera' } })), null);
    for (const wanted of ['websocket', 'webrtc']) {
      policy.restart(page({ wanted }));
      timers.advance(AUTO_FALLBACK * 2);
      assert.equal(policy.tick(page({ wanted })), null);
    }
  });

  it('a restart cancels the previous wait and starts a new one', () => {
    const timers = new FakeTimers();
    const policy = new TransportPolicy({ now: timers.now });
    policy.restart(page());
    timers.advance(AUTO_FALLBACK - 100);
    policy.restart(page());
    timers.advance(200);
    assert.equal(policy.tick(page()), null);
    timers.advance(AUTO_FALLBACK);
    assert.equal(policy.tick(page()), 'restart');
  });
});
