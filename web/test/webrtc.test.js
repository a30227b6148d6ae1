// Pure parts of webrtc.js: which codecs the page asks for, and the RTP -> stamp table.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CHANNEL_COMMANDS, codecName, decodableCodecs, StampTable,
         WebRtcVideo } from '../js/webrtc.js';
import { FakeTimers } from './helpers.js';

// what webrtc_config's mime_types says (the bridge's codec registry), here with a third codec
const MIME_TYPES = { h264: 'video/H264', vp8: 'video/VP8', av1: 'video/AV1' };

test('decodableCodecs keeps the codecs the bridge offers that this browser decodes, in its order',
  () => {
    const capabilities = { codecs: [{ mimeType: 'video/VP9' }, { mimeType: 'video/vp8' },
      { mimeType: 'video/H264' }, { mimeType: 'video/H264' }, { mimeType: 'video/rtx' }] };
    assert.deepEqual(decodableCodecs(capabilities, MIME_TYPES), ['h264', 'vp8']);
    assert.deepEqual(decodableCodecs({ codecs: [{ mimeType: 'video/AV1' }] }, MIME_TYPES),
      ['av1'], 'a codec the bridge adds needs no change here');
    assert.deepEqual(decodableCodecs(capabilities, { vp8: 'video/VP8' }), ['vp8']);
    assert.deepEqual(decodableCodecs(capabilities, undefined), []);
    assert.deepEqual(decodableCodecs(null, MIME_TYPES), []);
  });

test('codecName names a MIME type of the stats by the bridge\'s name for it', () => {
  assert.equal(codecName('video/H264', MIME_TYPES), 'h264');
  assert.equal(codecName('video/av1', MIME_TYPES), 'av1');
  assert.equal(codecName('video/VP9', MIME_TYPES), null);
  assert.equal(codecName('video/VP8', undefined), null);
});

test('a browser decoding none of the offered codecs asks for no peer and says why', async () => {
  const saved = [globalThis.RTCPeerConnection, globalThis.RTCRtpReceiver];
  globalThis.RTCPeerConnection = class {};
  globalThis.RTCRtpReceiver = { getCapabilities: () => ({ codecs: [{ mimeType: 'video/VP9' }] }) };
  try {
    const timers = new FakeTimers();
    const sent = [];
    const control = { status: 'connected', send: (m) => { sent.push(m); return sent.length; } };
    const webrtc = new WebRtcVideo({ srcObject: null }, { control, clock: { age: () => null },
                                                         timers, now: timers.now });
    webrtc.start('camera');
    assert.deepEqual(sent.map((m) => m.type), ['webrtc_config']);
    await webrtc.message({ type: 'webrtc_config', id: 1, enabled: true, ice_servers: [],
                           codecs: ['h264', 'vp8'], mime_types: MIME_TYPES });
    assert.equal(webrtc.status, 'unavailable');
    assert.match(webrtc.problem, /decodes none of the bridge's codecs \(h264, vp8\)/);
    assert.deepEqual(sent.map((m) => m.type), ['webrtc_config'], 'no webrtc_start');
  } finally {
    [globalThis.RTCPeerConnection, globalThis.RTCRtpReceiver] = saved;
  }
});

test('StampTable maps full 32-bit RTP timestamps and forgets the oldest', () => {
  const table = new StampTable(2);
  table.add({ rtp: 4294967295, stamp: 1.5 });
  table.add({ rtp: 10, stamp: 2.5 });
  assert.equal(table.get(4294967295).stamp, 1.5);
  assert.equal(table.get(-1).stamp, 1.5, 'a signed view of the same timestamp');
  table.add({ rtp: 20, stamp: 3.5 });
  assert.equal(table.get(4294967295), null);
  assert.equal(table.get(20).stamp, 3.5);
  table.add({ rtp: 'x', stamp: 1 });
  table.add({ rtp: 30 });
  assert.equal(table.map.size, 2, 'malformed entries are ignored');
});

test('StampTable places frames between messages from the newest one, across the wrap', () => {
  const table = new StampTable();
  assert.equal(table.lookup(5), null, 'nothing known yet');
  table.add({ rtp: 4294967295 - 8999, stamp: 100, received: 100.004 });
  const exact = table.lookup(4294967295 - 8999);
  assert.equal(exact.stamp, 100);
  assert.equal(exact.estimated, undefined);
  const later = table.lookup(9000);              // 0.2 s later, past the 32-bit wrap
  assert.ok(later.estimated);
  assert.ok(Math.abs(later.stamp - 100.2) < 1e-9, later.stamp);
  assert.ok(Math.abs(later.received - 100.204) < 1e-9);
  const earlier = table.lookup(4294967295 - 9000 - 8999);  // 0.1 s before it
  assert.ok(Math.abs(earlier.stamp - 99.9) < 1e-9, earlier.stamp);
  assert.equal(table.lookup(4294967295 - 8999 + 90000 * 11), null, 'over 10 s away: no guess');
});

test('only the repeated driving commands take the data channel', () => {
  assert.ok(CHANNEL_COMMANDS.has('velocity') && CHANNEL_COMMANDS.has('command'));
  assert.ok(!CHANNEL_COMMANDS.has('estop') && !CHANNEL_COMMANDS.has('acquire'));
});
