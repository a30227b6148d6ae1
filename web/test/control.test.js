import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { Backoff } from '../js/backoff.js';
import { ControlClient } from '../js/control.js';
import { ReconnectingSocket } from '../js/socket.js';
import { FakeTimers, FakeWebSocket } from './helpers.js';

const HELLO = { type: 'hello', protocol: 1, client_id: 'c3', can_drive: true,
                token_required: false, commands: ['forward', 'stop'],
                limits: { linear: 0.5, angular: 1.0 }, command_timeout: 0.5 };

function client(extra = {}) {
  const timers = new FakeTimers(1_700_000_000_000);
  const events = [];
  const control = new ControlClient({
    url: () => 'ws://127.0.0.1:8080/control', WebSocketImpl: FakeWebSocket, timers,
    now: timers.now, backoff: new Backoff({ jitter: 0 }),
    onStatus: (s) => events.push(['status', s]),
    onHello: (h) => events.push(['hello', h.client_id]),
    onState: (s) => events.push(['state', s.driver]),
    onReply: (m, request) => events.push([m.type, request?.type ?? null]),
    onClose: (info) => events.push(['close', info.code, info.retryAt !== null]),
    ...extra,
  });
  return { timers, events, control };
}

describe('ControlClient', () => {
  beforeEach(() => FakeWebSocket.reset());

  it('is connecting until hello, then connected', () => {
    const { control } = client();
    control.start();
    assert.equal(control.status, 'connecting');
    FakeWebSocket.last().open();
    assert.equal(control.status, 'connecting');
    assert.equal(control.send({ type: 'acquire' }), null, 'nothing is sent before hello');
    FakeWebSocket.last().receiveJson(HELLO);
    assert.equal(control.status, 'connected');
    assert.equal(control.clientId, 'c3');
  });

  it('numbers messages and hands each reply the request it answers', () => {
    const { control, events } = client();
    control.start();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receiveJson(HELLO);
    const id = control.send({ type: 'acquire' });
    assert.deepEqual(JSON.parse(ws.sent.at(-1)), { type: 'acquire', id });
    ws.receiveJson({ type: 'ack', id, clamped: false, applied: null });
    assert.deepEqual(events.at(-1), ['ack', 'acquire']);
    ws.receiveJson({ type: 'error', id: 999, code: 'bad_message', message: 'x' });
    assert.deepEqual(events.at(-1), ['error', null]);
    ws.receive('not json');  // ignored, no throw
  });

  it('probes the clock right after hello and estimates the offset', () => {
    const { control, timers } = client();
    control.start();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receiveJson(HELLO);
    const probe = JSON.parse(ws.sent.at(-1));
    assert.equal(probe.type, 'time');
    assert.equal(probe.t0, timers.time);
    assert.equal(probe.id, undefined, "the bridge's time reply carries no id");
    timers.advance(10);
    ws.receiveJson({ type: 'time', t0: probe.t0, server_time: (probe.t0 + 5) / 1000 + 3 });
    assert.ok(Math.abs(control.clock.offset - 3) < 1e-9);
    timers.advance(0);
    assert.equal(JSON.parse(ws.sent.at(-1)).type, 'time', 'a burst of probes follows');
  });

  it('reconnects with growing delays after losses and shows when', () => {
    const { control, timers, events } = client();
    control.start();
    FakeWebSocket.last().serverClose(1006);
    assert.equal(control.status, 'disconnected');
    assert.equal(control.retryAt, timers.time + 500);
    timers.advance(499);
    assert.equal(FakeWebSocket.instances.length, 1);
    timers.advance(1);
    assert.equal(FakeWebSocket.instances.length, 2);
    assert.equal(control.status, 'connecting');
    FakeWebSocket.last().serverClose(1006);
    assert.equal(control.retryAt, timers.time + 1000);
    timers.advance(1000);
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receiveJson(HELLO);                 // success: the next loss starts from 500 ms again
    ws.serverClose(1001, 'bridge shutting down');
    assert.equal(control.retryAt, timers.time + 500);
    assert.deepEqual(events.filter((e) => e[0] === 'close').map((e) => e[1]), [1006, 1006, 1001]);
  });

  it('does not retry a refused token', () => {
    const { control, timers, events } = client();
    control.start();
    FakeWebSocket.last().serverClose(4401, 'invalid token');
    assert.equal(control.retryAt, null);
    timers.advance(60_000);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.deepEqual(events.at(-1), ['close', 4401, false]);
    control.reconnectNow();                // a new token was entered
    assert.equal(FakeWebSocket.instances.length, 2);
  });

  it('forgets hello and state when the connection is lost', () => {
    const { control } = client();
    control.start();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receiveJson(HELLO);
    ws.receiveJson({ type: 'state', driver: 'c3', you_drive: true, estop: false });
    ws.serverClose(1006);
    assert.equal(control.hello, null);
    assert.equal(control.state, null);
    assert.equal(control.send({ type: 'command', name: 'forward' }), null);
  });
});

describe('ReconnectingSocket', () => {
  beforeEach(() => FakeWebSocket.reset());

  it('ignores events of a socket it replaced', () => {
    const timers = new FakeTimers();
    const messages = [];
    const socket = new ReconnectingSocket({ url: () => 'ws://x/video/camera', WebSocketImpl: FakeWebSocket,
      timers, now: timers.now, binaryType: 'arraybuffer', onMessage: (d) => messages.push(d) });
    socket.start();
    const old = FakeWebSocket.last();
    assert.equal(old.binaryType, 'arraybuffer');
    socket.reconnectNow();
    assert.deepEqual(old.closedWith, { code: 1000, reason: 'page reconnects' });
    old.receive('stale');
    FakeWebSocket.last().open();
    FakeWebSocket.last().receive('fresh');
    assert.deepEqual(messages, ['fresh']);
  });

  it('stays closed without a URL and after stop()', () => {
    const timers = new FakeTimers();
    let url = null;
    const socket = new ReconnectingSocket({ url: () => url, WebSocketImpl: FakeWebSocket, timers,
                                            now: timers.now });
    socket.start();
    assert.equal(FakeWebSocket.instances.length, 0);
    url = 'ws://x/control';
    socket.reconnectNow();
    FakeWebSocket.last().serverClose(1006);
    socket.stop();
    timers.advance(60_000);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it('retries at once when asked while waiting (the other socket is back)', () => {
    const timers = new FakeTimers();
    const socket = new ReconnectingSocket({ url: () => 'ws://x/control', WebSocketImpl: FakeWebSocket,
                                            timers, now: timers.now });
    socket.start();
    socket.retrySoon();                    // not waiting: nothing happens
    assert.equal(FakeWebSocket.instances.length, 1);
    FakeWebSocket.last().serverClose(1006);
    socket.retrySoon();
    assert.equal(FakeWebSocket.instances.length, 2);
  });
});
