"""The network edge in-process: routes, headers, rights, caps and close codes in milliseconds.

``net/`` has no rclpy import, so the pieces bridge_node assembles (stream hub, access policy,
teleop core, control service, aiohttp server) are built here directly on 127.0.0.1, port 0, with
a plain Python callback standing where bridge_node publishes ``cmd_vel``. The clients are
aiohttp's own HTTP and websocket client. What reaches the robot is checked at the callback:
the velocity the teleop core decided, after limits and the deadman.

The live-node tests (test_bridge_*.py, test_edge_*.py) cover the same edge through a real
bridge_node process; these cover its decisions without one, fast enough to run on every edit.
"""

import asyncio
import contextlib
import json
import logging
import os
import time

import aiohttp
from conftest import REPO
from support.ws_client import receive_json
from video_bridge.core import protocol
from video_bridge.core.access import AccessPolicy
from video_bridge.core.streams import StreamHub, StreamSettings
from video_bridge.core.teleop import TeleopConfig, TeleopCore
from video_bridge.net.control import ControlService
from video_bridge.net.server import BridgeServer, ServerConfig

TOKEN = 'net-edge-token'
WEB_ROOT = os.path.join(REPO, 'web')


class Edge:
    """One bridge edge without ROS: what bridge_node builds, and what it would publish."""

    def __init__(self, token=TOKEN, view_requires_token=True, command_timeout=0.3, **server):
        self.published = []          # (time.monotonic(), protocol.Velocity)
        self.hub = StreamHub(8)
        self.hub.add(StreamSettings(name='camera', topic='/camera/image_raw'))
        self.access = AccessPolicy(token, view_requires_token)
        self.teleop = TeleopCore(TeleopConfig(max_linear=0.5, max_angular=1.0,
                                              command_timeout=command_timeout))
        self.control = ControlService(self.teleop, self.access, self._publish)
        self.server = BridgeServer(self.hub, self.access,
                                   ServerConfig(host='127.0.0.1', port=0, web_root=WEB_ROOT,
                                                **server),
                                   control=self.control)

    def _publish(self, velocity):
        self.published.append((time.monotonic(), velocity))

    @property
    def http(self) -> str:
        return f'http://127.0.0.1:{self.server.port}'

    @property
    def ws(self) -> str:
        return f'ws://127.0.0.1:{self.server.port}'

    async def __aenter__(self):
        await self.server.start()
        self.control.start()
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.session.close()
        await self.control.stop()
        await self.server.stop()


def run(scenario, **edge):
    """Run ``scenario(edge)`` against a fresh edge on its own loop, within 20 s."""
    async def main():
        async with Edge(**edge) as edge_:
            return await asyncio.wait_for(scenario(edge_), 20)
    return asyncio.run(main())


async def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {what}')
        await asyncio.sleep(0.005)   # a poll interval on the loop, not a synchronisation


def test_the_page_and_its_security_headers():
    async def scenario(edge):
        async with edge.session.get(edge.http + '/') as response:
            body = await response.text()
            return response.status, dict(response.headers), body
    status, headers, body = run(scenario)
    assert status == 200 and '<html' in body.lower()
    assert headers['X-Content-Type-Options'] == 'nosniff'
    assert headers['Referrer-Policy'] == 'no-referrer'
    assert "frame-ancestors 'self'" in headers['Content-Security-Policy']


def test_the_stream_list_needs_the_token_and_names_the_stream():
    async def scenario(edge):
        seen = {}
        for label, query in (('none', ''), ('wrong', '?token=nope'), ('good', f'?token={TOKEN}')):
            async with edge.session.get(edge.http + protocol.STREAMS_PATH + query) as response:
                seen[label] = (response.status, await response.text())
        return seen
    seen = run(scenario)
    assert seen['none'][0] == 401 and seen['wrong'][0] == 401
    assert seen['good'][0] == 200
    assert 'camera' in [s['name'] for s in json.loads(seen['good'][1])['streams']]


def test_watching_opens_with_view_requires_token_false_and_driving_still_needs_it():
    async def scenario(edge):
        async with edge.session.get(edge.http + protocol.STREAMS_PATH) as response:
            listed = response.status
        async with edge.session.ws_connect(edge.ws + protocol.CONTROL_PATH) as socket:
            hello = await receive_json(socket, 'hello')
            await socket.send_str(json.dumps({'type': 'acquire', 'id': 1}))
            reply = await receive_json(socket, 'error')
        return listed, hello, reply
    listed, hello, reply = run(scenario, view_requires_token=False)
    assert listed == 200
    assert hello['can_drive'] is False and hello['token_required'] is True
    assert reply['id'] == 1


def test_a_foreign_host_or_a_foreign_websocket_origin_is_refused_before_any_route():
    async def scenario(edge):
        url = edge.http + protocol.STREAMS_PATH + f'?token={TOKEN}'
        async with edge.session.get(url, headers={'Host': 'evil.example'}) as response:
            host = response.status, await response.text()
        async with edge.session.get(url, headers={'Origin': 'http://evil.example'}) as response:
            plain_origin = response.status   # a plain GET: CORS headers decide what JS reads
        try:
            await edge.session.ws_connect(edge.ws + f'/control?token={TOKEN}',
                                          origin='http://evil.example')
            upgrade = 101, ''
        except aiohttp.WSServerHandshakeError as exc:
            upgrade = exc.status, exc.message
        return host, plain_origin, upgrade
    host, plain_origin, upgrade = run(scenario)
    assert host[0] == 403 and 'allowed_hosts' in host[1]
    assert plain_origin == 200
    assert upgrade[0] == 403


def test_a_malformed_target_gets_400_and_an_unknown_stream_its_close_code():
    async def scenario(edge):
        async with edge.session.get(edge.http + '/snapshot/a%00b') as response:
            bad = response.status
        async with edge.session.ws_connect(
                edge.ws + f'/video/nothing?token={TOKEN}') as socket:
            message = await socket.receive()
        return bad, message.type, socket.close_code
    bad, kind, code = run(scenario)
    assert bad == 400
    assert kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert code == protocol.CLOSE_UNKNOWN_STREAM


def test_a_wrong_token_closes_control_with_4401():
    async def scenario(edge):
        async with edge.session.ws_connect(edge.ws + '/control?token=wrong') as socket:
            await socket.receive()
            return socket.close_code
    assert run(scenario) == protocol.CLOSE_UNAUTHORIZED


def test_a_control_message_over_the_limit_closes_with_1009():
    async def scenario(edge):
        async with edge.session.ws_connect(edge.ws + f'/control?token={TOKEN}') as socket:
            await receive_json(socket, 'hello')
            await socket.send_str('x' * (protocol.MAX_CONTROL_MESSAGE + 1))
            with contextlib.suppress(AssertionError):
                await receive_json(socket, 'never')
            return socket.close_code
    assert run(scenario) == protocol.CLOSE_TOO_BIG


def test_a_command_reaches_the_callback_within_limits_and_the_deadman_stops_it():
    async def scenario(edge):
        async with edge.session.ws_connect(edge.ws + f'/control?token={TOKEN}') as socket:
            await receive_json(socket, 'hello')
            await socket.send_str(json.dumps({'type': 'acquire', 'id': 1}))
            await receive_json(socket, 'ack')
            sent = time.monotonic()
            await socket.send_str(json.dumps({'type': 'velocity', 'id': 2,
                                              'linear': {'x': 9.0}, 'angular': {'z': -9.0}}))
            await until(lambda: any(v.linear_x for _, v in edge.published), 2, 'the command')
            await until(lambda: edge.published[-1][1].linear_x == 0.0
                        and edge.published[-1][0] > sent, 2, 'the deadman stop')
            return sent, list(edge.published)
    sent, published = run(scenario, command_timeout=0.3)
    moving = [(t, v) for t, v in published if v.linear_x]
    assert moving[0][1].linear_x == 0.5 and moving[0][1].angular_z == -1.0, 'clamped to limits'
    stop = next(t for t, v in published if t > moving[0][0] and v.linear_x == 0.0)
    assert 0.25 <= stop - sent <= 1.0, f'the deadman stopped it {stop - sent:.3f} s after'


def test_a_client_over_its_connection_cap_gets_503():
    async def scenario(edge):
        sockets = [await edge.session.ws_connect(edge.ws + f'/control?token={TOKEN}')
                   for _ in range(2)]
        try:
            for socket in sockets:
                await receive_json(socket, 'hello')
            fresh = aiohttp.ClientSession()   # its own connection, not a pooled one
            try:
                async with fresh.get(edge.http + protocol.STREAMS_PATH) as response:
                    return response.status, response.headers.get('Retry-After')
            finally:
                await fresh.close()
        finally:
            for socket in sockets:
                await socket.close()
    status, retry_after = run(scenario, max_connections_per_client=2, view_requires_token=False)
    assert status == 503 and retry_after == '5'


def test_sockets_opened_together_are_pinged_at_spread_times():
    """
    Each websocket's keepalive starts at a random point of its first interval: sockets opened
    together are not all pinged in the same turn of the loop (a driver's command arriving then
    would wait behind every ping), here 30 of them over most of an interval.
    """
    interval, count = 1.0, 30

    async def first_ping(socket, opened):
        while True:
            message = await socket.receive()
            if message.type == aiohttp.WSMsgType.PING:
                return time.monotonic() - opened
            assert message.type == aiohttp.WSMsgType.TEXT, message   # hello, state

    async def scenario(edge):
        sockets, opened = [], []
        try:
            for _ in range(count):
                sockets.append(await edge.session.ws_connect(
                    edge.ws + f'/control?token={TOKEN}', autoping=False))
                opened.append(time.monotonic())
            return await asyncio.gather(*(first_ping(socket, at)
                                          for socket, at in zip(sockets, opened)))
        finally:
            for socket in sockets:
                await socket.close()
    delays = sorted(run(scenario, ping_interval=interval, ping_timeout=10.0))
    # silent for a whole interval before its ping, and never later than two
    assert interval * 0.9 <= delays[0] and delays[-1] <= 2 * interval + 0.5, delays
    # all at one point of the interval (each socket's ping `interval` after its opening)
    # would leave a spread of only the loop's lag
    assert delays[-1] - delays[0] >= 0.5 * interval, delays


def test_watchers_dropped_for_flooding_are_logged_within_a_budget(caplog):
    """
    Each control client dropped for exceeding the message rate wrote a WARN line: anyone who
    may watch could write as many as it opened sockets. Proves 12 view-only clients dropped
    for flooding leave one line per 5 s, while token holders dropped the same way are each
    said.
    """
    async def flood(edge, path):
        async with edge.session.ws_connect(edge.ws + path) as socket:
            for index in range(200):
                if socket.closed:
                    break
                await socket.send_str(json.dumps({'type': 'time', 't0': 1.0, 'id': index}))
            async with asyncio.timeout(10):
                async for _ in socket:   # replies, until the bridge closes it
                    pass
            return socket.close_code

    async def scenario(edge):
        started = time.monotonic()
        watchers = await asyncio.gather(*(flood(edge, protocol.CONTROL_PATH)
                                          for _ in range(12)))
        took = time.monotonic() - started
        holders = [await flood(edge, f'{protocol.CONTROL_PATH}?token={TOKEN}')
                   for _ in range(2)]
        return watchers, took, holders
    with caplog.at_level(logging.INFO, logger='video_bridge.net.control'):
        watchers, took, holders = run(scenario, view_requires_token=False)
    assert set(watchers) == set(holders) == {protocol.CLOSE_RATE_LIMITED}
    dropped = [record.getMessage() for record in caplog.records
               if 'kept exceeding' in record.getMessage()]
    # each holder's line, and one a period for the watchers (all in one, unless this is slow)
    assert 2 + 1 <= len(dropped) <= 2 + took // 5 + 1, (took, dropped)
    assert all(record.levelno == logging.WARNING for record in caplog.records
               if 'kept exceeding' in record.getMessage())


def test_young_collections_run_less_often_and_the_older_thresholds_stay():
    """bridge_node's collector setting (net/server.py): only the youngest generation's."""
    import gc
    from video_bridge.net.server import collect_young_objects_less_often, \
        YOUNG_COLLECTION_THRESHOLD
    saved = gc.get_threshold()
    try:
        collect_young_objects_less_often()
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *saved[1:])
        assert YOUNG_COLLECTION_THRESHOLD > saved[0]
    finally:
        gc.set_threshold(*saved)
