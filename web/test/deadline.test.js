// A path that dies without closing the socket: the page's reply deadline and stall watches.
// (Wi-Fi gone, a NAT mapping dropped: no FIN, no RST; TCP alone would wait for minutes.)

import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { Backoff } from '../js/backoff.js';
import { ControlClient, PROBE_PERIOD, REPLY_DEADLINE } from '../js/control.js';
import { DriveController } from '../js/drive.js';
import { packFrameHeader } from '../js/protocol.js';
import { ABANDONED, HANDSHAKE_BOUNDS, handshakeTimeout, OPEN_TIMEOUT,
         ReconnectingSocket } from '../js/socket.js';
import { STALL_TIMEOUT as VIDEO_STALL, VideoClient } from '../js/video.js';
import { CONNECTED_PLAY_TIMEOUT, RETRY_BACKOFF, STALL_TIMEOUT as WEBRTC_STALL,
         WebRtcVideo } from '../js/webrtc.js';
import { FakeTimers, FakeWebSocket } from './helpers.js';

const HELLO = { type: 'hello', protocol: 2, client_id: 'c1', can_drive: true,
                token_required: false, commands: ['forward', 'stop'],
                limits: { linear: 0.5, angular: 1.0 }, command_timeout: 0.5 };
const FORWARD = { kind: 'named', name: 'forward' };

/** The bridge's side of one socket: answers probes and requests, or goes silent. */
function bridge(ws, { driver = null } = {}) {
  const answered = { count: 0, types: [] };
  answered.answer = () => {
    for (const text of ws.sent.splice(0)) {
      const m = JSON.parse(text);
      answered.count += 1;
      answered.types.push(m.type);
      if (m.type === 'time') {
        ws.receiveJson({ type: 'time', t0: m.t0, server_time: m.t0 / 1000 });
      } else if (m.type === 'acquire') {
        ws.receiveJson({ type: 'ack', id: m.id });
        ws.receiveJson({ type: 'state', driver: 'c1', you_drive: true, estop: false });
      } else if (m.id !== undefined) {
        ws.receiveJson({ type: 'ack', id: m.id });
      }
    }
  };
  ws.open();
  ws.receiveJson(HELLO);
  ws.receiveJson({ type: 'state', driver, you_drive: false, estop: false });
  return answered;
}

/** A ControlClient wired to a DriveController the way app.js does it. */
function page() {
  const timers = new FakeTimers(1_700_000_000_000);
  const closes = [];
  let drive = null;
  const control = new ControlClient({
    url: () => 'wss://car.example.org/control', WebSocketImpl: FakeWebSocket, timers,
    now: timers.now, backoff: new Backoff({ jitter: 0 }),
    onHello: (hello) => drive.setHello(hello),
    onState: (state) => drive.setState(state),
    onReply: (message, request) => drive.reply(message, request),
    onClose: (info) => {
      closes.push(info);
      drive.setDisconnected();
    },
  });
  drive = new DriveController({ send: (m) => control.send(m), timers, now: timers.now });
  return { timers, control, drive, closes };
}

/** Advance in steps, letting the bridge answer after each (a live path). */
function live(timers, answered, ms, step = 50) {
  for (let t = 0; t < ms; t += step) {
    timers.advance(step);
    answered.answer();
  }
}

const sentTypes = (ws) => ws.sent.map((text) => JSON.parse(text).type);

/** Advance until the page sends a probe (at most one probe period); its send time. */
function untilProbe(timers, ws) {
  for (let t = 0; t <= PROBE_PERIOD; t += 10) {
    if (sentTypes(ws).includes('time')) return timers.time;
    timers.advance(10);
  }
  throw new Error('no probe within a probe period');
}

describe('control reply deadline', () => {
  beforeEach(() => FakeWebSocket.reset());

  it('stays connected while the bridge answers, for minutes', () => {
    const { timers, control, closes } = page();
    control.start();
    const answered = bridge(FakeWebSocket.last());
    live(timers, answered, 120_000, 200);
    assert.equal(control.status, 'connected');
    assert.equal(closes.length, 0);
    assert.equal(control.deadlines, 0);
    assert.ok(control.probes >= 120_000 / PROBE_PERIOD, `only ${control.probes} probes`);
  });

  it('an answer just inside the deadline keeps the connection', () => {
    const { timers, control } = page();
    control.start();
    const ws = FakeWebSocket.last();
    const answered = bridge(ws);
    live(timers, answered, 10_000);
    for (let i = 0; i < 5; i += 1) {   // a slow path: each reply takes nearly the deadline
      untilProbe(timers, ws);
      assert.deepEqual(sentTypes(ws), ['time']);
      timers.advance(REPLY_DEADLINE - 10);
      answered.answer();
      assert.equal(control.status, 'connected', `probe ${i}`);
    }
    assert.equal(control.deadlines, 0);
  });

  it('no answer to a probe: closes the socket and reconnects with backoff', () => {
    const { timers, control, closes } = page();
    control.start();
    const ws = FakeWebSocket.last();
    const answered = bridge(ws);
    live(timers, answered, 10_000);
    const silentFrom = timers.time;   // the path dies: nothing arrives any more
    const probed = untilProbe(timers, ws);
    assert.ok(probed - silentFrom <= PROBE_PERIOD);
    timers.advance(probed + REPLY_DEADLINE - 1 - timers.time);
    assert.equal(control.status, 'connected');
    timers.advance(1);
    assert.equal(control.status, 'disconnected');
    assert.ok(timers.time - silentFrom <= PROBE_PERIOD + REPLY_DEADLINE);
    assert.equal(control.deadlines, 1);
    assert.equal(ws.closedWith.code, 1000, 'the page closes the dead socket itself');
    assert.match(ws.closedWith.reason, /no answer/);
    assert.equal(closes.at(-1).code, ABANDONED);
    assert.ok(closes.at(-1).meaning.retry);
    assert.equal(control.retryAt, timers.time + 500, 'the reconnect is scheduled');
    ws.receiveJson({ type: 'time', t0: 1, server_time: 1 });   // too late: ignored
    assert.equal(control.hello, null);
    timers.advance(500);
    assert.equal(FakeWebSocket.instances.length, 2);
    assert.equal(control.status, 'connecting');
  });

  it('a request over the websocket arms the deadline too (between probes)', () => {
    const { timers, control } = page();
    control.start();
    const ws = FakeWebSocket.last();
    const answered = bridge(ws);
    live(timers, answered, 10_000);
    untilProbe(timers, ws);
    answered.answer();                  // the next probe is a period away
    timers.advance(100);                // the path dies; then a request goes out
    control.send({ type: 'release' });
    timers.advance(REPLY_DEADLINE - 1);
    assert.equal(control.status, 'connected');
    timers.advance(1);
    assert.equal(control.status, 'disconnected');
  });

  it('anything heard from the bridge counts as an answer', () => {
    const { timers, control } = page();
    control.start();
    const ws = FakeWebSocket.last();
    bridge(ws);
    for (let i = 0; i < 20; i += 1) {   // the bridge never answers probes but keeps talking
      timers.advance(1000);
      ws.receiveJson({ type: 'state', driver: null, you_drive: false, estop: false });
    }
    assert.equal(control.status, 'connected');
  });

  it('commands sent over the data channel do not arm it (they may be lost by design)', () => {
    const { timers, control } = page();
    control.start();
    const ws = FakeWebSocket.last();
    const answered = bridge(ws);
    live(timers, answered, 10_000);
    ws.sent.splice(0);
    const channel = [];
    const dead = control.deadlines;
    control.send({ type: 'command', name: 'forward' }, { via: (text) => channel.push(text) });
    assert.equal(channel.length, 1);
    assert.equal(control.deadlineTimer, null);
    assert.equal(control.deadlines, dead);
  });

  it('no hello after the handshake: gives up and retries', () => {
    const { timers, control, closes } = page();
    control.start();
    FakeWebSocket.last().open();
    timers.advance(REPLY_DEADLINE);
    assert.equal(control.status, 'disconnected');
    assert.equal(closes.at(-1).code, ABANDONED);
    assert.notEqual(control.retryAt, null);
  });

  it('a handshake that never completes is given up after OPEN_TIMEOUT', () => {
    const { timers, control, closes } = page();
    control.start();
    timers.advance(OPEN_TIMEOUT - 1);
    assert.equal(control.status, 'connecting');
    timers.advance(1);
    assert.equal(control.status, 'disconnected');
    assert.equal(FakeWebSocket.last().closedWith.reason, 'no handshake in time');
    assert.equal(closes.at(-1).code, ABANDONED);
    timers.advance(500);
    assert.equal(FakeWebSocket.instances.length, 2, 'and tried again');
  });

  it('a reconnect into a still dead path hangs only a few known round trips', () => {
    const { timers, control } = page();
    control.start();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receiveJson(HELLO);
    const probe = JSON.parse(ws.sent.at(-1));
    timers.advance(40);   // a 40 ms round trip
    ws.receiveJson({ type: 'time', t0: probe.t0, server_time: probe.t0 / 1000 });
    timers.advance(REPLY_DEADLINE);   // the path dies: the burst's next probe goes unanswered
    assert.equal(control.status, 'disconnected');
    timers.advance(500);
    assert.equal(control.status, 'connecting');   // the retry's handshake goes nowhere
    timers.advance(HANDSHAKE_BOUNDS.min - 1);
    assert.equal(control.status, 'connecting');
    timers.advance(1);
    assert.equal(control.status, 'disconnected', 'given up after the floor, not OPEN_TIMEOUT');
  });

  it('while driving: the dead path ends the drive, the reconnect does not drive again', () => {
    const { timers, control, drive, closes } = page();
    control.start();
    let ws = FakeWebSocket.last();
    let answered = bridge(ws);
    drive.input('keys', FORWARD);   // the key goes down and stays down
    live(timers, answered, 2000);
    assert.ok(drive.youDrive);
    assert.ok(answered.count > 10, 'commands flowed');
    // The path dies: the page stops hearing anything (its commands go nowhere).
    timers.advance(REPLY_DEADLINE + 100);
    assert.equal(control.status, 'disconnected');
    assert.equal(closes.length, 1);
    assert.equal(drive.youDrive, false);
    const before = ws.sent.length;
    timers.advance(1000);
    assert.equal(ws.sent.length, before, 'nothing more goes into the dead socket');
    // The path is back: the next attempt connects; nobody drives; the key is still down.
    ws = FakeWebSocket.last();
    assert.notEqual(ws, null);
    answered = bridge(ws);
    live(timers, answered, 5000);
    assert.equal(control.status, 'connected');
    assert.equal(drive.youDrive, false);
    assert.equal(drive.driver, null);
    assert.ok(answered.count > 0);
    assert.deepEqual(new Set(answered.types), new Set(['time']),
                     'only clock probes: no acquire, no command with the key still down');
    drive.input('keys', null);        // released ...
    drive.input('keys', FORWARD);     // ... and pressed again: that drives
    answered.answer();
    assert.ok(answered.types.includes('acquire'));
  });
});

describe('handshakeTimeout', () => {
  it('scales with the known round trip, within bounds', () => {
    assert.equal(handshakeTimeout(null), OPEN_TIMEOUT);
    assert.equal(handshakeTimeout(undefined), OPEN_TIMEOUT);
    assert.equal(handshakeTimeout(0.005), HANDSHAKE_BOUNDS.min);
    assert.equal(handshakeTimeout(0.5), 5000);
    assert.equal(handshakeTimeout(30), HANDSHAKE_BOUNDS.max);
  });
});

describe('ReconnectingSocket.abandon', () => {
  beforeEach(() => FakeWebSocket.reset());

  it('closes the socket, reports it lost and ignores its late events', () => {
    const timers = new FakeTimers();
    const events = [];
    const socket = new ReconnectingSocket({
      url: () => 'ws://x/video/camera', WebSocketImpl: FakeWebSocket, timers, now: timers.now,
      backoff: new Backoff({ jitter: 0 }), onMessage: (d) => events.push(['message', d]),
      onClose: (info) => events.push(['close', info.code, info.reason, info.retryAt]) });
    socket.start();
    const ws = FakeWebSocket.last();
    ws.open();
    socket.abandon('no frame');
    assert.deepEqual(ws.closedWith, { code: 1000, reason: 'no frame' });
    assert.deepEqual(events, [['close', ABANDONED, 'no frame', timers.time + 500]]);
    ws.receive('late');
    ws.serverClose(1006);
    assert.equal(events.length, 1);
    socket.abandon('again');   // nothing to abandon while waiting
    assert.equal(events.length, 1);
  });
});

// --- video websocket stall watch -----------------------------------------------------------

function frameBytes(seq) {
  const header = new Uint8Array(packFrameHeader({ seq, width: 640, height: 480 }));
  const buffer = new Uint8Array(header.length + 4);
  buffer.set(header);
  buffer.set([0xff, 0xd8, 0xff, 0xd9], header.length);
  return buffer.buffer;
}

function videoClient(extra = {}) {
  const timers = new FakeTimers();
  const closes = [];
  const canvas = { getContext: () => ({ drawImage() {} }), width: 0, height: 0 };
  const video = new VideoClient(canvas, {
    url: () => 'ws://x/video/camera', clock: { age: () => null }, timers, now: timers.now,
    WebSocketImpl: FakeWebSocket, onClose: (info) => closes.push(info), ...extra });
  video.queue.process = async () => {};   // no decoder under Node: receiving is what counts
  return { timers, video, closes };
}

describe('video stall watch', () => {
  beforeEach(() => FakeWebSocket.reset());

  it('reconnects a live stream that stops sending frames', () => {
    const { timers, video, closes } = videoClient();
    video.start();
    const ws = FakeWebSocket.last();
    ws.open();
    for (let i = 0; i < 90; i += 1) {
      ws.receive(frameBytes(i));
      timers.advance(33);
    }
    assert.equal(video.status, 'open');
    timers.advance(VIDEO_STALL - 40);
    assert.equal(video.status, 'open', 'a short gap is not a stall');
    timers.advance(40);
    assert.equal(video.status, 'disconnected');
    assert.equal(video.stalls, 1);
    assert.match(ws.closedWith.reason, /no frame/);
    assert.equal(closes.at(-1).code, ABANDONED);
    assert.notEqual(video.retryAt, null);
    timers.advance(700);   // the first retry: 500 ms +-25 %
    assert.equal(FakeWebSocket.instances.length, 2);
  });

  it('does not loop on a stream that has not sent its first frame', () => {
    const { timers, video } = videoClient();
    video.start();
    FakeWebSocket.last().open();
    timers.advance(60_000);
    assert.equal(video.status, 'open');
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it('gives a slow camera a few of its own frame gaps', () => {
    const { timers, video } = videoClient();
    video.start();
    const ws = FakeWebSocket.last();
    ws.open();
    for (let i = 0; i < 10; i += 1) {   // 0.25 fps
      ws.receive(frameBytes(i));
      timers.advance(4000);
      assert.equal(video.status, 'open', `frame ${i}`);
    }
    timers.advance(3 * 4000);
    assert.equal(video.stalls, 1, 'silent for three of its gaps: given up');
  });

  it('stops watching on stop() and on a stream switch', () => {
    const { timers, video } = videoClient();
    video.start();
    FakeWebSocket.last().open();
    FakeWebSocket.last().receive(frameBytes(1));
    video.restart();
    FakeWebSocket.last().open();
    timers.advance(60_000);
    assert.equal(video.status, 'open', 'the new socket waits for its first frame');
    video.stop();
    timers.advance(60_000);
    assert.equal(FakeWebSocket.instances.length, 2);
  });
});

// --- WebRTC: stall and retry ---------------------------------------------------------------

/** A stand-in RTCPeerConnection whose only part used here is getStats(). */
class FakePeer {
  constructor() {
    this.bytes = 0;
    this.closed = false;
  }

  async getStats() {
    return new Map([['in', { type: 'inbound-rtp', kind: 'video', timestamp: Date.now(),
                              bytesReceived: this.bytes, framesDecoded: 0 }]]);
  }

  close() {
    this.closed = true;
  }
}

function webrtcPlaying() {
  const timers = new FakeTimers();
  const sent = [];
  const control = { status: 'connected', send: (m) => { sent.push(m); return sent.length; } };
  const statuses = [];
  const webrtc = new WebRtcVideo({ srcObject: null }, {
    control, clock: { age: () => null }, timers, now: timers.now,
    onStatus: (s) => statuses.push(s) });
  const starts = [];
  webrtc.begin = (stream) => {   // what start() would signal; here: a peer that plays
    starts.push(stream);
    const generation = ++webrtc.generation;
    webrtc.stream = stream;
    webrtc.pc = new FakePeer();
    webrtc.statsTimer = timers.setInterval(() => webrtc.readStats(generation), 1000);
    webrtc.setStatus('playing');
  };
  return { timers, control, webrtc, sent, statuses, starts };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

async function run(timers, ms, peer = null) {
  for (let t = 0; t < ms; t += 250) {
    if (peer) peer.bytes += 1000;
    timers.advance(250);
    await flush();
  }
}

describe('WebRTC stall watch', () => {
  it('keeps a peer whose video bytes grow', async () => {
    const t = webrtcPlaying();
    t.webrtc.start('camera');
    await run(t.timers, 20_000, t.webrtc.pc);
    assert.equal(t.webrtc.status, 'playing');
    assert.equal(t.webrtc.stalls, 0);
  });

  it('gives up a silent peer, tells the bridge and tries again with backoff', async () => {
    const t = webrtcPlaying();
    t.webrtc.start('camera');
    const peer = t.webrtc.pc;
    await run(t.timers, 5000, peer);
    await run(t.timers, WEBRTC_STALL + 1000);   // no more bytes
    assert.equal(t.webrtc.status, 'failed');
    assert.match(t.webrtc.problem, /no video/);
    assert.equal(t.webrtc.stalls, 1);
    assert.ok(peer.closed);
    assert.deepEqual(t.sent.map((m) => m.type), ['webrtc_stop']);
    assert.deepEqual(t.starts, ['camera']);
    await run(t.timers, RETRY_BACKOFF.base * 1.25 + 250, null);
    assert.deepEqual(t.starts, ['camera', 'camera'], 'tried again');
    assert.equal(t.webrtc.status, 'playing');
  });

  it('does not retry once stopped (control lost, user switched)', async () => {
    const t = webrtcPlaying();
    t.webrtc.start('camera');
    await run(t.timers, 1000, t.webrtc.pc);
    for (let i = 0; i < 40 && t.webrtc.status !== 'failed'; i += 1) await run(t.timers, 250);
    assert.equal(t.webrtc.status, 'failed');
    t.webrtc.stop();
    await run(t.timers, RETRY_BACKOFF.max * 2);
    assert.deepEqual(t.starts, ['camera']);
    assert.equal(t.webrtc.status, 'off');
  });

  it('does not retry while the control connection is down', async () => {
    const t = webrtcPlaying();
    t.webrtc.start('camera');
    await run(t.timers, 1000, t.webrtc.pc);
    for (let i = 0; i < 40 && t.webrtc.status !== 'failed'; i += 1) await run(t.timers, 250);
    assert.equal(t.webrtc.status, 'failed');
    t.control.status = 'disconnected';   // lost before the retry is due
    await run(t.timers, RETRY_BACKOFF.max * 2);
    assert.deepEqual(t.starts, ['camera']);
  });
});

describe('WebRTC start: connected without video', () => {
  it('is given up 4 s after connecting and tried again, not waited out', async () => {
    class FakeRtcPeer {
      constructor(config) {
        this.config = config;
        this.iceGatheringState = 'complete';
        this.connectionState = 'new';
        FakeRtcPeer.last = this;
      }

      async setRemoteDescription() {}

      async createAnswer() { return { type: 'answer', sdp: 'v=0 answer' }; }

      async setLocalDescription(description) { this.localDescription = description; }

      addEventListener() {}

      async getStats() { return new Map(); }

      close() { this.closed = true; }
    }
    const saved = [globalThis.RTCPeerConnection, globalThis.RTCRtpReceiver];
    globalThis.RTCPeerConnection = FakeRtcPeer;
    globalThis.RTCRtpReceiver = { getCapabilities: () => ({ codecs: [{ mimeType: 'video/H264' }] }) };
    try {
      const timers = new FakeTimers();
      const sent = [];
      const control = { status: 'connected', send: (m) => { sent.push(m); return sent.length; } };
      const webrtc = new WebRtcVideo({ srcObject: null }, { control, clock: { age: () => null },
                                                           timers, now: timers.now });
      const signal = async () => {   // the bridge's side of one start
        const config = sent.findLast((m) => m.type === 'webrtc_config');
        await webrtc.message({ type: 'webrtc_config', id: sent.indexOf(config) + 1,
                               enabled: true, ice_servers: [], codecs: ['h264'],
                               mime_types: { h264: 'video/H264' } });
        const start = sent.findLast((m) => m.type === 'webrtc_start');
        await webrtc.message({ type: 'webrtc_offer', id: sent.indexOf(start) + 1, sdp: 'v=0',
                               codec: 'h264' });
        await flush();
      };
      webrtc.start('camera');
      await signal();
      assert.ok(sent.some((m) => m.type === 'webrtc_answer'));
      const first = FakeRtcPeer.last;
      first.connectionState = 'connected';
      first.onconnectionstatechange();
      timers.advance(CONNECTED_PLAY_TIMEOUT - 1);
      assert.equal(webrtc.status, 'starting');
      timers.advance(1);
      assert.equal(webrtc.status, 'failed');
      assert.ok(first.closed);
      assert.notEqual(webrtc.retryAt, null);
      const configs = sent.filter((m) => m.type === 'webrtc_config').length;
      timers.advance(RETRY_BACKOFF.base * 1.25);
      assert.equal(sent.filter((m) => m.type === 'webrtc_config').length, configs + 1,
                   'a new start');
      assert.equal(webrtc.status, 'starting');
      webrtc.stop();
    } finally {
      [globalThis.RTCPeerConnection, globalThis.RTCRtpReceiver] = saved;
    }
  });
});
