import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  CLOSE, closeMeaning, controlPath, FLAG_COLORMAPPED, FLAG_PASSTHROUGH, FLAG_SCALED, FrameError,
  messages, packFrameHeader, parseControl, parseFrame, streamChoices, streamsPath, videoPath,
  websocketBase,
} from '../js/protocol.js';
import { hexToArrayBuffer } from './helpers.js';

// Bytes made by protocol.py: pack_frame_header(FrameHeader(seq=4294967295, width=640,
// height=480, stamp_sec=1712345678, stamp_nanosec=123456789, received_time=1712345678.5,
// flags=FLAG_PASSTHROUGH | FLAG_COLORMAPPED))
const PY_HEADER = '5642463120000500ffffffff8002e0014e52106615cd5b070000a0931484d941';
// FrameHeader(seq=7, width=2, height=1, stamp_sec=-5, stamp_nanosec=999999999,
// received_time=0.25, flags=FLAG_SCALED)
const PY_HEADER_2 = '56424631200002000700000002000100fbffffffffc99a3b000000000000d03f';

function withJpeg(headerHex, jpeg) {
  const header = new Uint8Array(hexToArrayBuffer(headerHex));
  const out = new Uint8Array(header.length + jpeg.length);
  out.set(header);
  out.set(jpeg, header.length);
  return out.buffer;
}

describe('parseFrame', () => {
  it('reads the 32-byte little-endian header protocol.py writes', () => {
    const jpeg = Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3, 0xff, 0xd9]);
    const frame = parseFrame(withJpeg(PY_HEADER, jpeg));
    assert.equal(frame.seq, 4294967295);
    assert.equal(frame.width, 640);
    assert.equal(frame.height, 480);
    assert.equal(frame.stampSec, 1712345678);
    assert.equal(frame.stampNanosec, 123456789);
    assert.ok(Math.abs(frame.stamp - 1712345678.123456789) < 1e-6);
    assert.equal(frame.receivedTime, 1712345678.5);
    assert.equal(frame.flags, FLAG_PASSTHROUGH | FLAG_COLORMAPPED);
    assert.equal(frame.headerLength, 32);
    assert.deepEqual([...frame.jpeg], [...jpeg]);
  });

  it('reads a negative stamp_sec and the scaled flag', () => {
    const frame = parseFrame(hexToArrayBuffer(PY_HEADER_2));
    assert.equal(frame.stampSec, -5);
    assert.equal(frame.stampNanosec, 999999999);
    assert.equal(frame.seq, 7);
    assert.equal(frame.flags, FLAG_SCALED);
    assert.equal(frame.receivedTime, 0.25);
    assert.equal(frame.jpeg.byteLength, 0);
  });

  it('gives the JPEG as a view, without copying', () => {
    const buffer = withJpeg(PY_HEADER, new Uint8Array(1000));
    const frame = parseFrame(buffer);
    assert.equal(frame.jpeg.buffer, buffer);
    assert.equal(frame.jpeg.byteOffset, 32);
    assert.equal(frame.byteLength, 1032);
  });

  it('skips to header_length, so later versions may add fields', () => {
    const bytes = new Uint8Array(withJpeg(PY_HEADER, Uint8Array.from([9, 9, 0xff, 0xd8])));
    new DataView(bytes.buffer).setUint16(4, 34, true);  // two extra header bytes
    const frame = parseFrame(bytes.buffer);
    assert.deepEqual([...frame.jpeg], [0xff, 0xd8]);
  });

  it('refuses what is not a frame', () => {
    assert.throws(() => parseFrame(new ArrayBuffer(31)), FrameError);
    const bad = new Uint8Array(hexToArrayBuffer(PY_HEADER));
    bad[0] = 0x58;
    assert.throws(() => parseFrame(bad.buffer), FrameError);
    const short = new Uint8Array(hexToArrayBuffer(PY_HEADER));
    new DataView(short.buffer).setUint16(4, 16, true);
    assert.throws(() => parseFrame(short.buffer), FrameError);
    const long = new Uint8Array(hexToArrayBuffer(PY_HEADER));
    new DataView(long.buffer).setUint16(4, 64, true);
    assert.throws(() => parseFrame(long.buffer), FrameError);
    assert.throws(() => parseFrame('VBF1'), FrameError);
  });

  it('packFrameHeader writes exactly what protocol.py writes', () => {
    const buffer = packFrameHeader({ seq: 4294967295, width: 640, height: 480,
      stampSec: 1712345678, stampNanosec: 123456789, receivedTime: 1712345678.5,
      flags: FLAG_PASSTHROUGH | FLAG_COLORMAPPED });
    assert.equal(Buffer.from(buffer).toString('hex'), PY_HEADER);
  });
});

describe('control messages', () => {
  it('builds the messages of docs/protocol.md', () => {
    assert.deepEqual(messages.acquire(), { type: 'acquire' });
    assert.deepEqual(messages.acquire(true), { type: 'acquire', takeover: true });
    assert.deepEqual(messages.release(), { type: 'release' });
    assert.deepEqual(messages.command('forward', 0.5), { type: 'command', name: 'forward', speed: 0.5 });
    assert.deepEqual(messages.command('left'), { type: 'command', name: 'left' });
    assert.deepEqual(messages.stop(), { type: 'command', name: 'stop' });
    assert.deepEqual(messages.velocity(0.2, 0.4),
                     { type: 'velocity', linear: { x: 0.2 }, angular: { z: 0.4 } });
    assert.deepEqual(messages.velocity(0.2, 0, 0.1),
                     { type: 'velocity', linear: { x: 0.2, y: 0.1 }, angular: { z: 0 } });
    assert.deepEqual(messages.estop(true), { type: 'estop', engage: true });
    assert.deepEqual(messages.estop(false), { type: 'estop', engage: false });
    assert.deepEqual(messages.time(1712345678901.2), { type: 'time', t0: 1712345678901.2 });
  });

  it('keeps speed within 0..1 and numbers finite (the bridge refuses NaN)', () => {
    assert.equal(messages.command('forward', 1.7).speed, 1);
    assert.equal(messages.command('forward', -0.2).speed, 0);
    assert.throws(() => messages.command('forward', NaN), RangeError);
    assert.throws(() => messages.velocity(Infinity, 0), RangeError);
    assert.throws(() => messages.time(NaN), RangeError);
    assert.throws(() => messages.command(''), TypeError);
    // -0 and long fractions stay out of the JSON
    assert.equal(JSON.stringify(messages.velocity(-0, 0.123456789)),
                 '{"type":"velocity","linear":{"x":0},"angular":{"z":0.1235}}');
  });

  it('parses server messages and refuses what is not a typed object', () => {
    assert.equal(parseControl('{"type":"hello","protocol":1}').type, 'hello');
    assert.throws(() => parseControl('[1]'));
    assert.throws(() => parseControl('null'));
    assert.throws(() => parseControl('{"x":1}'));
    assert.throws(() => parseControl('{nope'));
  });
});

describe('close codes', () => {
  it('tells a wrong token from a missing one, and does not retry either', () => {
    const wrong = closeMeaning(CLOSE.UNAUTHORIZED, 'invalid token');
    assert.equal(wrong.retry, false);
    assert.equal(wrong.needsToken, true);
    assert.equal(wrong.invalidToken, true);
    assert.match(wrong.text, /invalid token/);
    const missing = closeMeaning(4401, 'token required');
    assert.equal(missing.retry, false);
    assert.equal(missing.invalidToken, false);
  });

  it('retries after losses, shutdowns and limits, not after bad requests', () => {
    for (const code of [1000, 1001, 1003, 1006, 1009, 4429, 4503]) {
      assert.equal(closeMeaning(code).retry, true, `code ${code}`);
      assert.equal(closeMeaning(code).needsToken, false);
    }
    for (const code of [4400, 4404]) assert.equal(closeMeaning(code, 'x').retry, false);
    assert.match(closeMeaning(4404, "unknown stream 'x' (streams: camera)").text, /streams: camera/);
  });
});

describe('URLs and the stream list', () => {
  it('puts the token in the query of both sockets and escapes it', () => {
    assert.equal(controlPath(''), '/control');
    assert.equal(controlPath('a b&c'), '/control?token=a+b%26c');
    assert.equal(videoPath('camera'), '/video/camera');
    assert.equal(videoPath('/camera/depth/image_raw', { token: 't' }),
                 '/video/%2Fcamera%2Fdepth%2Fimage_raw?token=t');
    assert.equal(videoPath('/video/camera', { width: 320, quality: 50 }),
                 '/video/camera?width=320&quality=50');
    assert.equal(streamsPath('s3cret'), '/api/streams?token=s3cret');
  });

  it('uses wss:// on an https page', () => {
    assert.equal(websocketBase({ protocol: 'https:', host: 'robot:8443' }), 'wss://robot:8443');
    assert.equal(websocketBase({ protocol: 'http:', host: '127.0.0.1:8080' }), 'ws://127.0.0.1:8080');
  });

  it('offers configured streams first, then topics no stream shows', () => {
    const doc = {
      protocol: 1,
      streams: [{ name: 'camera', topic: '/camera/image_raw', kind: 'raw', viewers: 1,
                  frames_in: 5321, width: 640, height: 480, video: '/video/camera',
                  mjpeg: '/mjpeg/camera', snapshot: '/snapshot/camera' }],
      topics: [
        { topic: '/camera/image_raw', type: 'sensor_msgs/msg/Image', kind: 'raw' },
        { topic: '/camera/depth/image_raw', type: 'sensor_msgs/msg/Image', kind: 'raw' },
      ],
      access: { token_required: false, view_requires_token: false },
    };
    assert.deepEqual(streamChoices(doc).map((c) => [c.label, c.video]), [
      ['camera', '/video/camera'],
      ['/camera/depth/image_raw (topic)', '/video/%2Fcamera%2Fdepth%2Fimage_raw'],
    ]);
    assert.deepEqual(streamChoices({}), []);
  });

  it('carries whether a stream can be watched through the SFU (topics never can)', () => {
    const doc = {
      streams: [{ name: 'camera', topic: '/camera/image_raw', sfu: true },
                { name: 'depth', topic: '/depth' }],
      topics: [{ topic: '/other', kind: 'raw' }],
    };
    assert.deepEqual(streamChoices(doc).map((c) => [c.name, c.sfu]),
                     [['camera', true], ['depth', false], ['/other', false]]);
  });
});
