"""Fuzz the live control socket: 10,000+ random and malformed messages at a real bridge.

The bridge must never crash, never publish a velocity beyond its limits (or a non-finite one),
and answer every message exactly once or close the socket cleanly with a documented code.
"""

import asyncio
import json
import math

from conftest import wait_for
from hypothesis import given, HealthCheck, settings, strategies as st
import websockets

MAX_LINEAR, MAX_ANGULAR = 0.5, 1.0
BATCH = 25
EXAMPLES = 420  # x BATCH = 10,500 messages
CLEAN_CLOSES = {1009: 'message too big', 4429: 'too many messages'}

numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**30, 10**30),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 0.5, -0.5, 1.0, 100.0]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
vectors = st.fixed_dictionaries({}, optional={'x': st.one_of(numbers, scalars),
                                              'y': numbers, 'z': numbers})
types = st.sampled_from(['command', 'velocity', 'acquire', 'release', 'estop', 'time',
                         'teleport', '', 'VELOCITY'])
structured = st.fixed_dictionaries(
    {'type': st.one_of(types, scalars)},
    optional={'id': st.one_of(scalars, st.text(min_size=60, max_size=80)),
              'name': st.one_of(st.sampled_from(['forward', 'left', 'back_right', 'stop',
                                                 'warp']), scalars),
              'speed': st.one_of(numbers, scalars), 'linear': st.one_of(vectors, scalars),
              'angular': st.one_of(vectors, scalars), 'engage': st.one_of(st.booleans(),
                                                                          scalars),
              'takeover': st.one_of(st.booleans(), scalars), 't0': numbers})
texts = st.one_of(
    structured.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.sampled_from(['{"type": "velocity", "linear": {"x": NaN}}', '{"type": "time", "t0": '
                     'Infinity}', '[' * 5000, '{"type": "command"', 'null', '""', '{}',
                     '{"type": "velocity", "linear": {"x": 1e999}}']),
    st.builds(lambda n: json.dumps({'type': 'time', 'pad': 'x' * n}), st.integers(4000, 6000)))
messages = st.lists(st.one_of(texts, texts, texts, st.binary(max_size=64)),
                    min_size=BATCH, max_size=BATCH)


class Session:
    """A control connection that acquires the driver lock and reconnects after clean closes."""

    def __init__(self, url):
        self.url = url
        self.ws = None
        self.loop = asyncio.new_event_loop()
        self.replies = 0
        self.closes = {}

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    async def connect(self):
        self.ws = await websockets.connect(self.url, max_size=None)
        await self.ws.recv()  # hello
        await self.exchange(json.dumps({'type': 'estop', 'engage': False}))
        await self.exchange(json.dumps({'type': 'acquire'}))

    async def exchange(self, message):
        """Send one message; return its reply, or ('closed', code) if the bridge closed."""
        if self.ws is None:
            await self.connect()
        try:
            await self.ws.send(message)
            async with asyncio.timeout(5):
                while True:
                    reply = json.loads(await self.ws.recv())
                    if reply['type'] != 'state':
                        self.replies += 1
                        return reply
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            self.closes[code] = self.closes.get(code, 0) + 1
            self.ws = None
            return ('closed', code)

    def close(self):
        if self.ws is not None:
            self.run(self.ws.close())
        self.loop.close()


def test_control_socket_survives_random_and_malformed_messages(start_bridge, cmd_vel):
    bridge = start_bridge(commands_per_second=1000.0, command_burst=1000,
                          max_linear=MAX_LINEAR, max_angular=MAX_ANGULAR, holonomic=True)
    mark = cmd_vel.mark()
    session = Session(f'{bridge.ws}/control')
    session.run(session.connect())
    sent = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages)
    def batch(batch_messages):
        for message in batch_messages:
            sent.append(message)
            reply = session.run(session.exchange(message))
            if isinstance(reply, tuple):
                assert reply[1] in CLEAN_CLOSES, f'unclean close {reply[1]} after {message!r}'
                assert reply[1] != 1009 or len(message) > 4096
            else:
                assert reply['type'] in ('ack', 'error', 'time'), reply
                if reply['type'] == 'ack' and reply['applied'] is not None:
                    applied = reply['applied']
                    assert abs(applied['linear']['x']) <= MAX_LINEAR
                    assert abs(applied['angular']['z']) <= MAX_ANGULAR

    try:
        batch()
    finally:
        session.close()
    assert len(sent) >= 10000
    assert bridge.process.proc.poll() is None, 'the bridge crashed'
    wait_for(lambda: cmd_vel.since(mark), 5, 'at least one cmd_vel from the fuzzed commands')
    for twist in (sample.msg for sample in cmd_vel.since(mark)):
        values = (twist.linear.x, twist.linear.y, twist.linear.z,
                  twist.angular.x, twist.angular.y, twist.angular.z)
        assert all(math.isfinite(v) for v in values)
        assert abs(twist.linear.x) <= MAX_LINEAR and abs(twist.linear.y) <= MAX_LINEAR
        assert abs(twist.angular.z) <= MAX_ANGULAR
        assert twist.linear.z == twist.angular.x == twist.angular.y == 0.0
    log = bridge.process.output()
    assert 'Traceback' not in log and 'error serving' not in log
