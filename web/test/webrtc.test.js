// Pure parts of webrtc.js: which codecs the page asks for, and the RTP -> stamp table.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CHANNEL_COMMANDS, decodableCodecs, StampTable } from '../js/webrtc.js';

test('decodableCodecs keeps the codecs the bridge encodes, in its order', () => {
  const capabilities = { codecs: [{ mimeType: 'video/VP9' }, { mimeType: 'video/VP8' },
    { mimeType: 'video/H264' }, { mimeType: 'video/H264' }, { mimeType: 'video/rtx' }] };
  assert.deepEqual(decodableCodecs(capabilities), ['h264', 'vp8']);
  assert.deepEqual(decodableCodecs({ codecs: [{ mimeType: 'video/AV1' }] }), []);
  assert.deepEqual(decodableCodecs(null), []);
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

test('only the repeated driving commands take the data channel', () => {
  assert.ok(CHANNEL_COMMANDS.has('velocity') && CHANNEL_COMMANDS.has('command'));
  assert.ok(!CHANNEL_COMMANDS.has('estop') && !CHANNEL_COMMANDS.has('acquire'));
});
