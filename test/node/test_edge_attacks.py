"""Issue 8's attack table, row by row, against a live bridge_node.

Every test starts a real bridge_node process, attacks it with real sockets (raw TCP, hand-made
websocket frames, TLS), watches it with real clients (the ``websockets`` library) and, where the
car matters, a real rclpy subscriber on ``/cmd_vel``. Each docstring names the row of issue 8 and
what the test proves. The three 15 s soaks (rows 1, 2, 6) carry ``@pytest.mark.soak``
(``-m 'not soak'`` skips them; ``ATTACK_SOAK_SECONDS`` shortens them while developing).

Parameters used (issue 8 / /work/coord/edge.md): allowed_hosts, allowed_origins,
max_connections, max_connections_per_client, handshake_timeout, send_timeout, ping_interval,
ping_timeout, allow_anonymous_driving; token only from token_file / VIDEO_BRIDGE_TOKEN.
"""

import contextlib
import json
import math
import os
import re
import resource
import shutil
import socket
import ssl
import threading
import time
from urllib.parse import quote, unquote

from conftest import (bridge_ros_args, CmdVelRecorder, FramePublisher, free_port, port_open,
                      wait_for)
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from support import hostile_clients as hc

SOAK_SECONDS = float(os.environ.get('ATTACK_SOAK_SECONDS', '15'))
RSS_GROWTH_MB = 20.0
# Row 6's deadline for a TLS handshake and request head: short so the test is quick, long
# enough that a legitimate client on a loaded 2-core runner is never the one cut off.
HANDSHAKE_TIMEOUT = 3.0
SOAK_FPS = 28.0
RELIABLE = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
ATTACKER = '127.0.0.2'  # another loopback address: the attacker is not the viewer's client
TRACEBACK = 'Traceback (most recent call last)'
LOAD_BOUND = 5.0  # s: the page, the API and a new viewer's first frame under attack (row 3)


pytestmark = pytest.mark.usefixtures('many_file_descriptors')


@pytest.fixture
def cmd_vel(ros):
    """A recorder of this test's own (a whole-module one would mix the tests' commands)."""
    recorder = CmdVelRecorder(ros.node)
    yield recorder
    recorder.close()


def ros_args_for(port, parameters):
    """--ros-args for bridge_node: the shipped YAML, then overrides (like conftest)."""
    return bridge_ros_args({'port': port, **parameters})


class LiveBridge:
    """A bridge_node process started by a test, and where to reach it."""

    def __init__(self, process, port, tls=False):
        self.process = process
        self.port = port
        self.pid = process.proc.pid
        scheme = 'https' if tls else 'http'
        self.http = f'{scheme}://127.0.0.1:{port}'
        self.ws = f'{"wss" if tls else "ws"}://127.0.0.1:{port}'

    def log(self) -> str:
        return self.process.output()

    def alive(self) -> bool:
        return self.process.proc.poll() is None


@pytest.fixture
def bridge(launch_node):
    """Start bridge_node (shipped config + overrides, host 127.0.0.1 unless given)."""
    def start(env=None, wait=True, nofile=None, **parameters):
        port = free_port()
        parameters.setdefault('host', '127.0.0.1')
        process = launch_node('bridge_node', ros_args=ros_args_for(port, parameters),
                              name='bridge_node', env=env)
        if nofile:
            # Soft and hard (the bridge may raise its soft limit to the hard one), set at once
            # after the fork: the interpreter is still importing when this lands.
            resource.prlimit(process.proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
        live = LiveBridge(process, port, tls=bool(parameters.get('tls_cert')))
        if wait:
            process.wait_port(port, 20)
        return live
    return start


def noise(index):
    """Incompressible frames: big JPEGs fill socket buffers quickly."""
    return np.random.default_rng(index % 8).integers(0, 255, (480, 640, 3), np.uint8)


def no_tracebacks(live):
    """No traceback, and no aiohttp 'Error handling request' (a 500 with a logged exception)."""
    log = live.log()
    for marker in (TRACEBACK, 'Error handling request'):
        where = log.find(marker)
        assert where < 0, f'{marker!r} in the bridge log:\n{log[max(0, where - 300):where + 2000]}'


def start_viewer(live, path='/video/camera', ssl_context=None, duration=90.0):
    viewer = hc.Viewer(live.ws + path, ssl_context=ssl_context, duration=duration)
    viewer.start()
    wait_for(lambda: len(viewer.frames) >= 20 or viewer.error, 15, 'the viewer to get frames')
    assert viewer.error is None, (
        f'the normal viewer failed {viewer.failed - viewer.started:.2f} s after it began to '
        f'connect: {viewer.error!r} (cause: {viewer.error.__cause__!r}); bridge log:\n'
        f'{live.log()[-2000:]}')
    return viewer


def soak(live, viewer, attack, publisher, seconds=SOAK_SECONDS):
    """Run ``attack`` for ``seconds`` while sampling RSS; return figures for the assertions."""
    base = hc.rss_mb(live.pid)
    start = time.monotonic()
    published_before = publisher.count
    attack.start()
    peak = base
    end = start + seconds
    while time.monotonic() < end and live.alive():
        peak = max(peak, hc.rss_mb(live.pid))
        threading.Event().wait(0.25)  # sampling period of the RSS probe, not synchronisation
    attack.stop()
    stop = time.monotonic()
    alive = live.alive()
    final = hc.rss_mb(live.pid) if alive else float('nan')
    return {
        'seconds': stop - start, 'rss_base': base, 'rss_peak': peak, 'rss_end': final,
        'growth': max(peak, final) - base, 'alive': alive,
        'fps': viewer.fps(start, stop), 'worst_5s': viewer.worst_window(start, stop),
        'publisher_fps': (publisher.count - published_before) / (stop - start),
        'attack_steps': attack.steps, 'attack_error': attack.error, 'viewer_error': viewer.error,
    }


def assert_soak(figures, what):
    summary = (f'{what}: RSS {figures["rss_base"]:.1f} -> peak {figures["rss_peak"]:.1f} / end '
               f'{figures["rss_end"]:.1f} MB (growth {figures["growth"]:.1f} MB), viewer '
               f'{figures["fps"]:.1f} fps (worst 5 s {figures["worst_5s"]:.1f}), publisher '
               f'{figures["publisher_fps"]:.1f} fps, over {figures["seconds"]:.1f} s')
    print(summary)
    assert figures['alive'], f'the bridge died: {summary}'
    assert figures['attack_error'] is None, f'attacker failed: {figures["attack_error"]!r}'
    assert figures['viewer_error'] is None, f'viewer failed: {figures["viewer_error"]!r}; ' \
        + summary
    assert figures['growth'] < RSS_GROWTH_MB, summary
    # The bound is the soak's average; the worst 5 s window only catches collapses
    # (main: 2.4 fps) without failing on this shared 2-core machine's scheduling noise.
    assert figures['fps'] >= SOAK_FPS and figures['worst_5s'] >= SOAK_FPS - 4, summary


class ReconnectingAttacker:
    """Keeps one hostile websocket going: reconnects (at most 20/s) when the bridge drops it."""

    def __init__(self, port, path, first, chunk, period, source=ATTACKER, rcvbuf=None):
        self.port, self.path, self.first, self.chunk = port, path, first, chunk
        self.period, self.source, self.rcvbuf = period, source, rcvbuf
        self.ws = None
        self.sent = 0
        self.connects = 0
        self.refused = 0

    def step(self, stop):
        if self.ws is None:
            self.connects += 1
            try:
                ws = hc.RawWebSocket(self.port, self.path, source=self.source, timeout=2,
                                     rcvbuf=self.rcvbuf)
            except OSError:
                self.refused += 1
                stop.wait(0.05)  # reconnect pacing (bounded attack), not synchronisation
                return
            if not ws.accepted or not ws.send(self.first, timeout=1):
                ws.close()
                self.refused += 1
                stop.wait(0.05)
                return
            self.ws = ws
        if self.ws.send(self.chunk, timeout=1):
            self.sent += len(self.chunk)
        else:
            self.ws.close()
            self.ws = None
        stop.wait(self.period)  # the attack's pace, not synchronisation

    def close(self):
        if self.ws is not None:
            self.ws.close()
            self.ws = None


class Attack:
    """Several attacker steps on threads, started and stopped together (like one Stopwatch)."""

    def __init__(self, attackers, duration):
        self.attackers = attackers
        self.threads = [hc.Stopwatch(a.step, duration + 5) for a in attackers]

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        for thread in self.threads:
            thread.stop()
        for attacker in self.attackers:
            attacker.close()

    @property
    def steps(self):
        return sum(t.steps for t in self.threads)

    @property
    def error(self):
        return next((t.error for t in self.threads if t.error), None)


def soak_reconnecting(ros, live, topic, first, then, pause, row, what, **options):
    """Soak ``live`` with a ReconnectingAttacker on /control and on /video while a viewer
    watches; assert the soak's bounds and that the attackers sent at least 5 MB."""
    with FramePublisher(ros.node, topic) as publisher:
        viewer = start_viewer(live)
        attackers = [ReconnectingAttacker(live.port, path, first, then, pause, **options)
                     for path in ('/control', '/video/camera')]
        try:
            figures = soak(live, viewer, Attack(attackers, SOAK_SECONDS), publisher)
        finally:
            viewer.stop()
    sent = sum(a.sent for a in attackers) / 1e6
    print(f'{row}: sent {sent:.1f} MB {what}, {sum(a.connects for a in attackers)} connections')
    assert_soak(figures, f'{row} ({sent:.1f} MB {what})')
    assert sent >= 5, f'the attack did not reach the bridge: {sent:.1f} MB sent'


# -- rows 1, 2, 6: the soaks --------------------------------------------------------------------

@pytest.mark.soak
def test_empty_continuation_frames_do_not_grow_memory_or_starve_viewers(ros, bridge):
    """
    Row 1: websocket continuation frames with empty payloads (~1.2 MB/s on /control and on
    /video) for SOAK_SECONDS (15 s). Proves per-connection memory is bounded whatever a client
    sends (bridge RSS grows < 20 MB) and that a normal viewer keeps >= 28 fps meanwhile.
    """
    soak_reconnecting(ros, bridge(**{'streams.camera.topic': '/a1/image'}), '/a1/image',
                      hc.ws_frame(hc.OP_TEXT, b'', False),
                      hc.ws_frame(hc.OP_CONT, b'', fin=False) * 10000,  # 60 KB of frames
                      0.05, 'row 1', 'of empty continuation frames')


@pytest.mark.soak
def test_pings_without_reading_do_not_pile_up_pongs(ros, bridge):
    """
    Row 2: clients that send 125-byte pings (~1.3 MB/s) and never read, on /control and
    /video, for SOAK_SECONDS (15 s). Proves unsent data per connection is bounded (the client is
    closed, pongs do not pile up: RSS grows < 20 MB) and a normal viewer keeps >= 28 fps.
    """
    soak_reconnecting(ros, bridge(**{'streams.camera.topic': '/a2/image'}), '/a2/image',
                      hc.ws_frame(hc.OP_PING, b'p'), hc.ws_frame(hc.OP_PING, b'p' * 125) * 100,
                      0.01, 'row 2', 'of pings never read', rcvbuf=4096)


class TlsSquatters:
    """Opens TCP connections to a TLS port that never send a ClientHello (<= 1000 open)."""

    def __init__(self, port, rate=50.0, keep=1000):
        self.port, self.period, self.keep = port, 1.0 / rate, keep
        self.open = []
        self.opened = 0
        self.sources = [f'127.0.0.{i}' for i in range(2, 6)]

    def step(self, stop):
        try:
            sock = hc.connect(self.port, source=self.sources[self.opened % 4], timeout=1)
            self.open.append(sock)
            self.opened += 1
        except OSError:
            pass
        while len(self.open) > self.keep:
            self.open.pop(0).close()
        stop.wait(self.period)  # the attack's pace, not synchronisation

    def close(self):
        for sock in self.open:
            sock.close()
        self.open = []


@pytest.mark.soak
def test_tls_sockets_without_client_hello_are_bounded(ros, bridge, tmp_path):
    """
    Row 6: TLS sockets that never send a ClientHello (50 new per second, up to 1000 open) for
    SOAK_SECONDS (15 s). Proves the TLS handshake is bounded by handshake_timeout (one such
    socket is closed within handshake_timeout + 3 s, not asyncio's 60 s), memory stays flat
    (< 20 MB) and a wss viewer keeps >= 28 fps. Also: TLS 1.1 is refused, TLS 1.2 accepted.
    """
    if shutil.which('openssl') is None:
        pytest.skip('the openssl command is needed to make a test certificate')
    cert, key = hc.self_signed_cert(str(tmp_path))
    live = bridge(tls_cert=cert, tls_key=key, handshake_timeout=HANDSHAKE_TIMEOUT,
                  **{'streams.camera.topic': '/a6/image'})
    # TLS version floor.
    old = hc.insecure_client_context(minimum=ssl.TLSVersion.TLSv1,
                                     maximum=ssl.TLSVersion.TLSv1_1)
    with hc.connect(live.port) as raw:
        try:
            with old.wrap_socket(raw) as tls:
                pytest.fail(f'bridge accepted {tls.version()}: TLS 1.2+ only')
        except (ssl.SSLError, ConnectionError):
            pass
    modern = hc.insecure_client_context(minimum=ssl.TLSVersion.TLSv1_2,
                                        maximum=ssl.TLSVersion.TLSv1_2)
    with hc.connect(live.port) as raw, modern.wrap_socket(raw) as tls:
        assert tls.version() == 'TLSv1.2'
    # One silent socket: closed within handshake_timeout.
    with hc.connect(live.port, source='127.0.0.6') as silent:
        silent.settimeout(HANDSHAKE_TIMEOUT + 3.0)
        started = time.monotonic()
        try:
            data = silent.recv(1)
        except socket.timeout:
            data = None
        except OSError:
            data = b''
        took = time.monotonic() - started
    with FramePublisher(ros.node, '/a6/image') as publisher:
        viewer = start_viewer(live, ssl_context=hc.insecure_client_context())
        squatters = TlsSquatters(live.port)
        try:
            figures = soak(live, viewer, Attack([squatters], SOAK_SECONDS), publisher)
        finally:
            viewer.stop()
    closed = data == b''
    print(f'row 6: a socket without ClientHello was {"closed" if closed else "still open"} '
          f'after {took:.1f} s (handshake_timeout {HANDSHAKE_TIMEOUT:g} s)')
    try:
        assert_soak(figures, f'row 6 ({squatters.opened} silent TLS sockets)')
    finally:
        assert closed, f'a socket without ClientHello was still open after {took:.1f} s ' \
            f'(handshake_timeout {HANDSHAKE_TIMEOUT:g} s)'
    assert squatters.opened >= 500, f'only {squatters.opened} silent sockets were opened'


# -- row 3: idle sockets and the file limit; connection caps ------------------------------------

def emfile_lines(log: str) -> int:
    pattern = re.compile(r'EMFILE|Too many open files|out of system resource', re.I)
    return sum(1 for line in log.splitlines() if pattern.search(line))


@pytest.mark.parametrize('addresses', [4, 40])
def test_idle_sockets_at_the_file_limit_do_not_lock_viewers_out(ros, bridge, addresses):
    """
    Row 3: 2000 idle sockets (re-opened at 100/s when closed) from 4 attacker addresses, and
    from 40 (50 each, under the per-client cap: a distributed slowloris), against a bridge
    started with RLIMIT_NOFILE 1024 (soft and hard) and default caps. The viewer, page and API
    requests start as soon as the bridge holds 1000 descriptors (or 2000 attempts were made).
    Proves new viewers, the page and /api/streams still load (within LOAD_BOUND = 5 s each;
    the viewer's first frame within 15 s) and that running out of descriptors is logged at
    most once per 3 s, without tracebacks.
    """
    live = bridge(nofile=1024, **{'streams.camera.topic': '/a3/image'})
    limit = resource.prlimit(live.pid, resource.RLIMIT_NOFILE)
    assert limit == (1024, 1024), f'the bridge runs with file limit {limit}, not 1024'
    sources = [f'127.0.{2 + i // 250}.{2 + i % 250}' for i in range(addresses)]
    started = time.monotonic()
    with FramePublisher(ros.node, '/a3/image'):
        squatters = hc.Squatters(live.port, 2000, sources)
        attack = hc.Stopwatch(squatters.step, 40)
        attack.start()
        try:
            wait_for(lambda: squatters.attempts >= 2000 or hc.open_fds(live.pid) >= 1000 or
                     not attack.is_alive(), 20, '1000 descriptors or 2000 attempts')
            opened = len(squatters.open)
            asked = time.monotonic()
            page = hc.get(live.port, '/', timeout=LOAD_BOUND)
            page_took = time.monotonic() - asked
            api = hc.get(live.port, '/api/streams', timeout=LOAD_BOUND)
            viewer = hc.Viewer(live.ws + '/video/camera', duration=20)
            viewer.start()
            try:
                got_frame = wait_for(lambda: viewer.frames or viewer.error or
                                     time.monotonic() - asked > 3 * LOAD_BOUND, 4 * LOAD_BOUND,
                                     'a new viewer') and bool(viewer.frames)
            finally:
                viewer.stop()
            fds = hc.open_fds(live.pid)
        finally:
            attack.stop()
            squatters.close()
    elapsed = time.monotonic() - started
    log = live.log()
    emfile = emfile_lines(log)
    print(f'row 3 ({addresses} addresses): bridge file limit {limit}, {opened} idle sockets, '
          f'bridge fds {fds}, page {page and page.status} after {page_took:.1f} s, api '
          f'{api and api.status}, viewer frame {got_frame}, EMFILE lines {emfile} in '
          f'{elapsed:.1f} s')
    assert opened >= 900, f'only {opened} idle sockets were open when the page was asked for'
    assert page is not None and page.status == 200, f'page did not load: {page!r}'
    assert api is not None and api.status == 200, f'/api/streams did not load: {api!r}'
    assert got_frame, f'a new viewer got no frame: {viewer.error!r}'
    assert emfile <= elapsed / 3 + 1, f'{emfile} EMFILE log lines in {elapsed:.1f} s'
    no_tracebacks(live)


def test_connection_caps_refuse_clearly(bridge):
    """
    Row 3 (caps): max_connections_per_client=5 and max_connections=16. Proves the 6th
    connection from one address holding 5 control websockets (fresh, so not idle) gets a clear
    refusal (HTTP 503/429 with a reason) while
    another address is served, and that with 16 active connections (control websockets from
    8 addresses, which may not be evicted like a socket that sent nothing) the 17th overall
    is refused clearly too.
    """
    live = bridge(max_connections_per_client=5, max_connections=16)
    base = hc.open_fds(live.pid)
    working = [hc.RawWebSocket(live.port, '/control', source=ATTACKER) for _ in range(5)]
    try:
        assert all(ws.accepted for ws in working)
        sixth = hc.get(live.port, '/api/streams', source=ATTACKER)
        other = hc.get(live.port, '/api/streams', source='127.0.0.3')
    finally:
        for ws in working:
            ws.close()
    wait_for(lambda: hc.open_fds(live.pid) <= base + 1, 5, 'the sockets to go')
    active = []
    try:
        for index in range(16):
            ws = hc.RawWebSocket(live.port, '/control', source=f'127.0.0.{4 + index // 2}')
            active.append(ws)
            assert ws.accepted, f'active connection {index + 1} of 16 refused: {ws.response}'
        over = hc.get(live.port, '/api/streams')
    finally:
        for ws in active:
            ws.close()
    print(f'row 3 caps: 6th from one address {sixth!r}; other {other!r}; 17th {over!r}')
    assert other is not None and other.status == 200, f'a client under the caps: {other!r}'
    for what, response in (('6th connection from one address', sixth),
                           ('17th connection overall', over)):
        assert response is not None and response.status in (429, 503) and response.body, \
            f'{what} was not refused clearly: {response!r}'
    no_tracebacks(live)


# -- row 4: stalled clients free their slots ----------------------------------------------------

def test_stalled_mjpeg_and_video_clients_free_their_slots(ros, bridge):
    """
    Row 4: max_viewers=6 held by 3 MJPEG and 3 video clients that never read (4 KB receive
    buffers, noise frames). Proves every send has a deadline: with send_timeout=2 s (and
    ping_interval/ping_timeout 1 s) the slots are free within 8 s, so a new viewer gets frames
    and /snapshot answers 200.
    """
    live = bridge(max_viewers=6, send_timeout=2.0, ping_interval=1.0, ping_timeout=1.0,
                  **{'streams.camera.topic': '/a4/image'})
    stalled = []
    try:
        with FramePublisher(ros.node, '/a4/image', make=noise):
            for _ in range(3):
                sock = hc.connect(live.port, rcvbuf=4096)
                stalled.append(sock)
                sock.sendall(f'GET /mjpeg/camera HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n'
                             '\r\n'.encode())
            for _ in range(3):
                ws = hc.RawWebSocket(live.port, '/video/camera', rcvbuf=4096)
                assert ws.accepted, ws.response
                stalled.append(ws.sock)

            def viewers():
                response = hc.get(live.port, '/api/streams')
                return response and response.status == 200 and \
                    json.loads(response.body)['streams'][0]['viewers'] == 6
            wait_for(viewers, 10, 'six stalled viewers attached')
            stall_start = time.monotonic()
            served = None
            attempts = 0
            while time.monotonic() - stall_start < 8.0 and served is None:
                attempts += 1
                viewer = hc.Viewer(live.ws + '/video/camera', duration=2.0)
                viewer.run()  # on this thread: one bounded attempt
                if viewer.frames:
                    served = time.monotonic() - stall_start
                else:
                    threading.Event().wait(0.2)  # retry pacing of a refused viewer, not sync
            snapshot = hc.get(live.port, '/snapshot/camera', timeout=6)
    finally:
        for sock in stalled:
            sock.close()
    print(f'row 4: new viewer served after {served} s ({attempts} attempts); snapshot '
          f'{snapshot and snapshot.status}')
    assert served is not None, f'6 stalled clients kept every slot for 8 s ({attempts} ' \
        f'refused attempts, last: {viewer.error!r})'
    assert snapshot is not None and snapshot.status == 200, f'snapshot: {snapshot!r}'
    no_tracebacks(live)


# -- row 5: 2000 idle control sockets and a driver -----------------------------------------------

def test_driver_never_waits_behind_idle_control_sockets(ros, bridge, cmd_vel):
    """
    Row 5: 2000 idle /control websockets (from 20 addresses, never reading; opened after the
    driver, viewer and lazy client are in, measured once the bridge has settled) plus one
    driver changing velocity 40 times/s for 5 s. send_timeout, ping_interval and ping_timeout
    are 30 s here, so neither the idle sockets nor the lazy client are dropped meanwhile.
    Proves the driver's commands do not wait behind them (command -> cmd_vel p95 <= 50 ms,
    max <= 250 ms), a viewer keeps >= 27 fps, and a control client (4 KB receive buffer) that
    reads nothing while the driver then makes 600 more changes as fast as it can gets the
    newest state, not a backlog: at most half of the 800 states. (On loopback the kernel
    alone would buffer ~2.8 MB, i.e. all of them, unless
    the edge keeps a control socket's send buffer small and coalesces states.)
    """
    from websockets.sync.client import connect as ws_connect
    live = bridge(commands_per_second=1000.0, command_burst=1000, send_timeout=30.0,
                  ping_interval=30.0, ping_timeout=30.0, **{'streams.camera.topic': '/a5/image'})
    cmd_vel.wait_matched()
    upgrade = ('GET /control HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n'
               'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
               'Sec-WebSocket-Version: 13\r\n\r\n').format(port=live.port).encode()
    sources = [f'127.0.0.{i}' for i in range(2, 22)]
    latencies = []
    with FramePublisher(ros.node, '/a5/image'):
        lazy = hc.RawWebSocket(live.port, '/control', rcvbuf=4096)
        assert lazy.accepted, lazy.response
        viewer = start_viewer(live)
        try:
            with ws_connect(f'{live.ws}/control', open_timeout=10) as driver:
                json.loads(driver.recv(timeout=10))  # hello
                driver.send(json.dumps({'type': 'acquire', 'id': 0}))

                def reply(request_id):
                    deadline = time.monotonic() + 2
                    while time.monotonic() < deadline:
                        message = json.loads(driver.recv(timeout=2))
                        if message.get('id') == request_id:
                            return message
                    return None
                assert (reply(0) or {}).get('type') == 'ack', 'driver could not acquire'
                # The attack starts once the driver, the viewer and the lazy client are in.
                with hc.IdleSockets(live.port, 2000, sources=sources, time_limit=15,
                                    payload=upgrade) as idle:
                    opened = len(idle.sockets)
                    # Measure the steady state: wait until the bridge has taken (or refused)
                    # them all, i.e. a clock probe comes back within 20 ms (bounded).
                    attacked = time.monotonic()
                    probes = 0
                    while time.monotonic() - attacked < 20:
                        probes += 1
                        asked = time.monotonic()
                        driver.send(json.dumps({'type': 'time', 'id': f't{probes}', 't0': 0}))
                        try:
                            reply(f't{probes}')
                        except TimeoutError:
                            continue  # the bridge is still busy with the newcomers
                        if time.monotonic() - asked < 0.020:
                            break
                    settled = time.monotonic() - attacked
                    bridge_fds = hc.open_fds(live.pid)
                    start = time.monotonic()
                    for i in range(1, 201):
                        value = round(0.001 * i, 6)
                        after = len(cmd_vel.messages)
                        sent = time.monotonic()
                        driver.send(json.dumps({'type': 'velocity', 'id': i,
                                                'linear': {'x': value}}))
                        reply(i)
                        arrival = wait_for(lambda: cmd_vel.first(value, after), 5,
                                           f'cmd_vel {value}')
                        latencies.append(arrival - sent)
                        pace = start + i / 40.0 - time.monotonic()
                        if pace > 0:
                            threading.Event().wait(pace)  # the driver's 40 Hz, not sync
                    burst_end = time.monotonic()
                    # Then 600 more changes as fast as acks come back (bounded to 6 s).
                    flood_end = time.monotonic() + 6
                    changes = 200
                    for i in range(201, 801, 50):
                        if time.monotonic() > flood_end:
                            break
                        for j in range(i, i + 50):
                            driver.send(json.dumps({'type': 'velocity', 'id': j,
                                                    'linear': {'x': round(0.0001 * j, 6)}}))
                        reply(i + 49)
                        changes += 50
                    driver.send(json.dumps({'type': 'release', 'id': 999}))
                    reply(999)
            fps = viewer.fps(start, burst_end)
        finally:
            viewer.stop()
        states = 0
        final_seen = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and states < 1000:
            message = lazy.recv_json(timeout=3)
            if message is None:
                break
            if message.get('type') == 'state':
                states += 1
                if message.get('driver') is None and states > 1:
                    final_seen = True
                    break
        lazy.close()
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f'row 5: {opened} idle control sockets opened (bridge fds {bridge_fds}, settled '
          f'after {settled:.1f} s); '
          f'command->cmd_vel p50 '
          f'{latencies[len(latencies) // 2] * 1e3:.1f} ms p95 {p95 * 1e3:.1f} ms max '
          f'{latencies[-1] * 1e3:.1f} ms; viewer {fps:.1f} fps; lazy client read {states} '
          f'states for {changes} changes (final seen {final_seen})')
    assert opened >= 1000, f'only {opened} idle control sockets were opened'
    assert p95 <= 0.050 and latencies[-1] <= 0.250, \
        f'command->cmd_vel p95 {p95 * 1e3:.0f} ms, max {latencies[-1] * 1e3:.0f} ms'
    assert fps >= 27, f'viewer fell to {fps:.1f} fps during the burst'
    assert final_seen, f'the lazy control client never got the final state ({states} read)'
    assert changes == 800, f'the driver got only {changes} of 800 changes through in time'
    assert states <= changes // 2, f'the lazy control client got a backlog of {states} ' \
        f'states for {changes} changes (newest state only expected)'
    no_tracebacks(live)


# -- rows 7, 14: Host and Origin ----------------------------------------------------------------

def ws_handshake(live, path='/control', host=None, origin=None):
    headers = {'Origin': origin} if origin else {}
    ws = hc.RawWebSocket(live.port, path, headers=headers, host_header=host)
    ws.close()
    return ws.response.status if ws.response else None


def test_dns_rebinding_and_wrong_scheme_origins_are_refused(ros, bridge, cmd_vel):
    """
    Row 7: Host/Origin evil.example (DNS rebinding), https:// and ftp:// origins with the
    right host:port. Proves Host alone is not trusted (evil.example refused for websockets and
    plain HTTP, so the car cannot be driven that way), the scheme is part of the origin, and
    that allowed_hosts and the bridge's own origin still work (the test is not passing by
    refusing everything).
    """
    live = bridge(allowed_hosts=['robot.example'])
    cmd_vel.wait_matched()
    port = live.port
    evil = f'evil.example:{port}'
    problems = []
    rebound = hc.RawWebSocket(port, '/control', headers={'Origin': f'http://{evil}'},
                              host_header=evil)
    if rebound.accepted:
        problems.append('websocket with Host/Origin evil.example was accepted')
        rebound.recv_json()
        rebound.recv_json()
        rebound.send_text(json.dumps({'type': 'acquire', 'id': 1}))
        rebound.send_text(json.dumps({'type': 'velocity', 'id': 2, 'linear': {'x': 0.3}}))
        rebound.recv_json()
        rebound.recv_json()
    rebound.close()
    for path in ('/', '/api/streams'):
        response = hc.http_exchange(port, f'GET {path} HTTP/1.1\r\nHost: {evil}\r\n'
                                    'Connection: close\r\n\r\n'.encode())
        status = response[0].status if response else None
        if status is None or status < 400:
            problems.append(f'GET {path} with Host {evil} answered {status}')
    own = f'127.0.0.1:{port}'
    for origin in (f'https://{own}', f'ftp://{own}'):
        status = ws_handshake(live, origin=origin)
        if status == 101:
            problems.append(f'origin {origin} was accepted on an http bridge')
    assert ws_handshake(live, origin=f'http://{own}') == 101, 'own origin refused'
    robot = f'robot.example:{port}'
    assert ws_handshake(live, host=robot, origin=f'http://{robot}') == 101, \
        'allowed_hosts robot.example refused'
    moved = cmd_vel.nonzero()
    if moved:
        problems.append(f'the car moved: {moved[:3]}')
    assert not problems, problems
    no_tracebacks(live)


def test_allowed_origins_add_to_own_origin_and_localhost_is_127(bridge):
    """
    Row 14: allowed_origins ["http://ops:8094"]. Proves the list adds to the bridge's own
    origin (the page is not locked out), the listed origin is accepted, localhost and
    127.0.0.1 are the same machine (either way round), and others (or another scheme) are
    refused.
    """
    live = bridge(allowed_origins=['http://ops:8094'])
    port = live.port
    cases = {
        ('127.0.0.1', f'http://127.0.0.1:{port}'): 101,
        ('127.0.0.1', 'http://ops:8094'): 101,
        ('127.0.0.1', f'http://localhost:{port}'): 101,
        ('localhost', f'http://127.0.0.1:{port}'): 101,
        ('localhost', f'http://localhost:{port}'): 101,
        ('127.0.0.1', 'http://evil:8094'): 'refused',
        ('127.0.0.1', 'https://ops:8094'): 'refused',
    }
    wrong = {}
    for (host, origin), expected in cases.items():
        status = ws_handshake(live, host=f'{host}:{port}', origin=origin)
        ok = status == 101 if expected == 101 else (status is not None and status >= 400)
        if not ok:
            wrong[f'Host {host} Origin {origin}'] = status
    assert not wrong, f'wrong answers (expected {cases}): {wrong}'


# -- row 8: secure by default -------------------------------------------------------------------

def test_shipped_config_beyond_loopback_makes_a_random_token(ros, bridge, cmd_vel):
    """
    Row 8: the shipped config (host 0.0.0.0, no token) reached from 192.0.2.10 (an address
    added to lo in the test's private namespace). Proves an anonymous network client cannot
    take the lock or move /cmd_vel, that the bridge printed a page URL with a random token on
    stdout (never on /rosout), and that this token drives.
    """
    from rcl_interfaces.msg import Log
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect as ws_connect
    if not hc.private_network_namespace():
        pytest.skip('needs the private network namespace of scripts/test')
    rosout = []
    sub = ros.node.create_subscription(Log, '/rosout', rosout.append, RELIABLE)
    env = {k: '' for k in ('VIDEO_BRIDGE_TOKEN',) if k in os.environ}
    try:
        live = bridge(host='0.0.0.0', env=env)
        cmd_vel.wait_matched()
        # Added after DDS discovery so the ROS graph keeps its loopback locators.
        with hc.LoopbackAddress('192.0.2.10'):
            url = f'ws://192.0.2.10:{live.port}/control'
            hello, replies, refused = {}, {}, None
            try:
                with ws_connect(url, open_timeout=10) as anonymous:
                    hello = json.loads(anonymous.recv(timeout=5))
                    anonymous.recv(timeout=5)
                    anonymous.send(json.dumps({'type': 'acquire', 'id': 1}))
                    anonymous.send(json.dumps({'type': 'velocity', 'id': 2,
                                               'linear': {'x': 0.3}}))
                    deadline = time.monotonic() + 5
                    while len(replies) < 2 and time.monotonic() < deadline:
                        message = json.loads(anonymous.recv(timeout=5))
                        if 'id' in message:
                            replies[message['id']] = message
            except (ConnectionClosed, InvalidStatus) as exc:
                refused = repr(exc)  # refusing the anonymous socket outright is fine too
            if replies.get(2, {}).get('type') == 'ack':
                wait_for(lambda: cmd_vel.nonzero(), 3, 'the anonymous command on cmd_vel')
            moved = cmd_vel.nonzero()
            assert not moved and not hello.get('can_drive') and \
                (refused or replies.get(1, {}).get('type') == 'error'), \
                f'an anonymous client from 192.0.2.10 drove: hello {hello}, replies ' \
                f'{replies}, cmd_vel {moved[:3]}'
            output = live.process.wait_output('token=', timeout=5)
            match = re.search(r'https?://\S*[?&]token=([^\s&#]+)', output)
            assert match, f'no page URL with a token on stdout:\n{output[-2000:]}'
            token = unquote(match.group(1))
            assert len(token) >= 16, f'token too short to be random: {len(token)} characters'
            with ws_connect(f'{url}?token={quote(token, safe="")}', open_timeout=10) as driver:
                assert json.loads(driver.recv(timeout=5))['can_drive']
                driver.recv(timeout=5)
                driver.send(json.dumps({'type': 'acquire', 'id': 1}))
                driver.send(json.dumps({'type': 'velocity', 'id': 2, 'linear': {'x': 0.2}}))
                cmd_vel.wait_value(0.2)
    finally:
        ros.node.destroy_subscription(sub)
    leaked = [m.msg for m in rosout if token in m.msg]
    assert not leaked, f'the token appeared on /rosout: {len(leaked)} messages'


# -- row 9: e-stop flood -----------------------------------------------------------------------

def test_estop_flood_publishes_one_zero(ros, bridge, cmd_vel):
    """
    Row 9: 20,000 e-stop engages on one control socket while driving at 0.1 m/s. Proves the
    first engage gets through (a zero follows the 0.1) and engages while engaged publish
    nothing new: between the last 0.1 and the 0.2 driven after releasing there are at most 3
    zero Twists (the engage, one spare, a stop when the lock or e-stop changes), not
    thousands.
    """
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect
    live = bridge(**{'streams.camera.topic': '/a9/image'})
    cmd_vel.wait_matched()
    url = f'{live.ws}/control'

    def drain(ws, want_ids, timeout=5):
        got = set()
        deadline = time.monotonic() + timeout
        while want_ids - got and time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=timeout))
            if 'id' in message:
                got.add(message['id'])
        return got
    sent = 0
    with contextlib.ExitStack() as sockets:
        ws = sockets.enter_context(ws_connect(url, open_timeout=10, max_queue=None))
        ws.recv(timeout=5)
        ws.recv(timeout=5)
        ws.send(json.dumps({'type': 'acquire', 'id': 'a'}))
        ws.send(json.dumps({'type': 'velocity', 'id': 'v', 'linear': {'x': 0.1}}))
        drain(ws, {'a', 'v'})
        cmd_vel.wait_value(0.1)
        deadline = time.monotonic() + 30
        try:
            while sent < 20000 and time.monotonic() < deadline:
                batch = range(sent, min(sent + 250, 20000))
                for i in batch:
                    ws.send(json.dumps({'type': 'estop', 'engage': True, 'id': i}))
                drain(ws, set(batch))
                sent = batch[-1] + 1
        except (ConnectionClosed, TimeoutError):
            # The bridge may close a flooding client: release and drive on a fresh socket.
            ws = sockets.enter_context(ws_connect(url, open_timeout=10))
            ws.recv(timeout=5)
            ws.recv(timeout=5)
            ws.send(json.dumps({'type': 'acquire', 'id': 'a'}))
            drain(ws, {'a'})
        ws.send(json.dumps({'type': 'estop', 'engage': False, 'id': 'r'}))
        ws.send(json.dumps({'type': 'velocity', 'id': 'v', 'linear': {'x': 0.2}}))
        drain(ws, {'r', 'v'})
        cmd_vel.wait_value(0.2, timeout=10)
    xs = [sample.linear_x for sample in cmd_vel.messages]
    last_01 = max(i for i, x in enumerate(xs) if math.isclose(x, 0.1))
    first_02 = next(i for i, x in enumerate(xs) if math.isclose(x, 0.2))
    zeros = sum(1 for x in xs[last_01 + 1:first_02] if x == 0.0)
    print(f'row 9: {sent} engages sent, {zeros} zero Twists published')
    assert sent >= 1000, f'only {sent} engages got through the socket'
    assert zeros >= 1, 'the first engage published no zero'
    assert zeros <= 3, f'{sent} engages published {zeros} zero Twists'
    no_tracebacks(live)


# -- rows 10-13: HTTP hygiene ------------------------------------------------------------------

def test_malformed_requests_get_answers_not_tracebacks(ros, bridge):
    """
    Row 10: duplicate Host / Origin / Upgrade headers, '[' in a path, two pipelined requests,
    a non-ASCII stream name whose close reason passes 123 bytes. Proves each gets an answer
    (400-class status, both pipelined responses, close 4404 / 404) and none leaves a
    traceback in the bridge log.
    """
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect as ws_connect
    live = bridge(**{'streams.camera.topic': '/a10/image'})
    port = live.port
    own = f'127.0.0.1:{port}'
    upgrade = ('Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n'
               'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n')
    cases = {
        'duplicate Host': (f'GET / HTTP/1.1\r\nHost: {own}\r\nHost: evil.example\r\n\r\n',
                           lambda s: s is not None and 400 <= s < 500),
        'duplicate Origin': (f'GET /control HTTP/1.1\r\nHost: {own}\r\n{upgrade}'
                             f'Origin: http://{own}\r\nOrigin: http://evil.example\r\n\r\n',
                             lambda s: s is not None and 400 <= s < 500),
        'duplicate Upgrade': (f'GET /video/camera HTTP/1.1\r\nHost: {own}\r\n{upgrade}'
                              'Upgrade: websocket\r\n\r\n',
                              lambda s: s is not None and (s == 101 or 400 <= s < 500)),
        "'[' in the path": (f'GET /[ HTTP/1.1\r\nHost: {own}\r\n\r\n',
                            lambda s: s in (400, 404)),
        "'//[' path (a netloc to urlsplit)": (f'GET //[ HTTP/1.1\r\nHost: {own}\r\n\r\n',
                                              lambda s: s in (400, 404)),
    }
    wrong = {}
    for name, (request, good) in cases.items():
        found = hc.http_exchange(port, request.encode())
        status = found[0].status if found else None
        if not good(status):
            wrong[name] = status
    pipelined = hc.http_exchange(port, (f'GET /api/streams HTTP/1.1\r\nHost: {own}\r\n\r\n'
                                        f'GET /api/streams HTTP/1.1\r\nHost: {own}\r\n\r\n'
                                        ).encode(), responses=2)
    if [r.status for r in pipelined] != [200, 200]:
        wrong['two pipelined requests'] = [r.status for r in pipelined]
    name = quote('é' * 100, safe='')
    try:
        with ws_connect(f'{live.ws}/video/{name}', open_timeout=5) as ws:
            ws.recv(timeout=5)
        outcome = 'no close'
    except ConnectionClosed as exc:
        outcome = exc.rcvd.code if exc.rcvd else 'no close frame'
    except InvalidStatus as exc:
        outcome = exc.response.status_code
    except (TimeoutError, OSError) as exc:
        outcome = repr(exc)
    if outcome not in (4404, 404):
        wrong['non-ASCII unknown stream name'] = outcome
    assert not wrong, f'malformed requests answered wrongly: {wrong}'
    no_tracebacks(live)


def test_methods_head_and_keep_alive(bridge):
    """
    Row 11: POST / DELETE / PUT / lowercase get, HEAD, keep-alive. Proves other methods get
    405 (lowercase: 400/405/501), HEAD has headers but no body (the next pipelined response
    follows directly), static files carry ETag or Last-Modified, and the page's files come
    over one kept-alive connection.
    """
    live = bridge()
    port = live.port
    own = f'127.0.0.1:{port}'
    wrong = {}
    for method, path, allowed in (('POST', '/', (405,)), ('DELETE', '/api/streams', (405,)),
                                  ('PUT', '/index.html', (405,)),
                                  ('get', '/', (400, 405, 501))):
        found = hc.http_exchange(port, f'{method} {path} HTTP/1.1\r\nHost: {own}\r\n'
                                 'Content-Length: 0\r\nConnection: close\r\n\r\n'.encode())
        status = found[0].status if found else None
        if status not in allowed:
            wrong[f'{method} {path}'] = status
    with hc.connect(port) as sock:
        sock.sendall(f'HEAD / HTTP/1.1\r\nHost: {own}\r\n\r\n'
                     f'GET /api/streams HTTP/1.1\r\nHost: {own}\r\n\r\n'.encode())
        reader = hc.HttpReader(sock, time.monotonic() + 5)
        head = reader.response(head_request=True)
        after = reader.response()
    if head is None or head.status != 200:
        wrong['HEAD /'] = head
    elif after is None or after.status != 200 or not after.body.startswith(b'{'):
        wrong['HEAD / had a body (next response garbled)'] = after
    files = ['/', '/js/app.js', '/css/app.css', '/js/protocol.js']
    with hc.connect(port) as sock:
        reader = hc.HttpReader(sock, time.monotonic() + 10)
        for path in files:
            sock.sendall(f'GET {path} HTTP/1.1\r\nHost: {own}\r\n\r\n'.encode())
            response = reader.response()
            if response is None or response.status != 200:
                wrong[f'keep-alive GET {path}'] = response and response.status
                break
            if (response.header('connection') or '').lower() == 'close':
                wrong[f'keep-alive GET {path}'] = 'Connection: close'
                break
            if not (response.header('etag') or response.header('last-modified')):
                wrong[f'validators on {path}'] = 'no ETag / Last-Modified'
    assert not wrong, wrong
    no_tracebacks(live)


def test_only_the_pages_files_and_security_headers(ros, bridge):
    """
    Row 12: README.md, package.json, test/helpers.js live under web/. Proves they are not
    served (404/403) while the page is, and that every response (page, script, API,
    snapshot, error) carries nosniff, Referrer-Policy no-referrer and a CSP frame-ancestors.
    """
    live = bridge(**{'streams.camera.topic': '/a12/image'})
    port = live.port
    wrong = {}
    for path in ('/README.md', '/package.json', '/test/helpers.js', '/test/'):
        response = hc.get(port, path)
        if response is None or response.status not in (403, 404):
            wrong[path] = response and response.status
    with FramePublisher(ros.node, '/a12/image'):
        responses = {path: hc.get(port, path) for path in
                     ('/', '/js/app.js', '/api/streams', '/snapshot/camera', '/no-such-file')}
    for path, response in responses.items():
        if response is None:
            wrong[path] = None
            continue
        missing = []
        if (response.header('x-content-type-options') or '').lower() != 'nosniff':
            missing.append('X-Content-Type-Options: nosniff')
        if (response.header('referrer-policy') or '').lower() != 'no-referrer':
            missing.append('Referrer-Policy: no-referrer')
        if 'frame-ancestors' not in (response.header('content-security-policy') or ''):
            missing.append('CSP frame-ancestors')
        if missing:
            wrong[f'{path} ({response.status})'] = missing
    assert responses['/'].status == 200
    assert not wrong, wrong


def test_url_encoded_plus_in_token_is_accepted(bridge, tmp_path):
    """
    Row 13: a token with '+', '/' and '=' sent URL-encoded in ?token= (as the page's
    URLSearchParams sends it). Proves standard query decoding on every route that takes a
    token (API, /control, /video) and the Bearer header, while a wrong token is refused.
    """
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect
    token = 'Tk+9/z=aB3+xY7/pQ'
    token_file = tmp_path / 'token'
    token_file.write_text(token + '\n')
    live = bridge(token_file=str(token_file), view_requires_token=True)
    encoded = quote(token, safe='')
    good = hc.get(live.port, f'/api/streams?token={encoded}')
    wrong = hc.get(live.port, '/api/streams?token=' + quote(token[:-1], safe=''))
    bearer = hc.get(live.port, '/api/streams', headers={'Authorization': f'Bearer {token}'})
    assert good is not None and good.status == 200, f'URL-encoded token refused: {good!r}'
    assert wrong is not None and wrong.status == 401, f'a wrong token was accepted: {wrong!r}'
    assert bearer is not None and bearer.status == 200, f'Bearer token refused: {bearer!r}'
    with ws_connect(f'{live.ws}/control?token={encoded}', open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=5))['can_drive'], 'control: token not accepted'
    with ws_connect(f'{live.ws}/video/camera?token={encoded}', open_timeout=10) as ws:
        try:
            ws.recv(timeout=1.0)  # no camera runs: nothing arrives, but it must stay open
        except TimeoutError:
            pass
        except ConnectionClosed as exc:
            pytest.fail(f'/video refused the URL-encoded token: {exc.rcvd}')


# -- row 15: slow MJPEG reader ------------------------------------------------------------------

class SlowMjpegReader(threading.Thread):
    """Reads one MJPEG part every 0.5 s; records the age of each part when read."""

    def __init__(self, port, query, parts=14, rcvbuf=None):
        super().__init__(daemon=True)
        self.port, self.query, self.parts, self.rcvbuf = port, query, parts, rcvbuf
        self.ages = []
        self.sizes = []
        self.receive_buffer = 0
        self.error = None

    def run(self):
        try:
            with hc.connect(self.port, timeout=10, rcvbuf=self.rcvbuf) as sock:
                self.receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                sock.sendall(f'GET /mjpeg/camera{self.query} HTTP/1.1\r\nHost: 127.0.0.1:'
                             f'{self.port}\r\n\r\n'.encode())
                reader = hc.HttpReader(sock, time.monotonic() + 30)
                head = reader.response(head_request=True)
                assert head is not None and head.status == 200, head
                for _ in range(self.parts):
                    while b'\r\n\r\n' not in reader.buffer:
                        assert reader._fill(), 'stream ended'
                    part_head, _, reader.buffer = reader.buffer.partition(b'\r\n\r\n')
                    fields = dict(re.findall(r'([\w-]+): ([^\r\n]+)', part_head.decode()))
                    length = int(fields['Content-Length'])
                    while len(reader.buffer) < length + 2:
                        assert reader._fill(), 'stream ended'
                    reader.buffer = reader.buffer[length + 2:]
                    self.sizes.append(length)
                    self.ages.append(time.time() - float(fields['X-Timestamp']))
                    threading.Event().wait(0.5)  # this client is slow on purpose
        except BaseException as exc:
            self.error = exc


def test_slow_mjpeg_reader_never_gets_old_frames(ros, bridge):
    """
    Row 15: MJPEG readers taking 2 parts/s, with ?fps=2 and without. Proves (X-Timestamp
    against the publisher's clock) that a reader asking fps=2 never gets a part older than
    1 s, and that one without (64 KB receive buffer) gets none older than what the documented
    buffers can hold (the bridge's MJPEG_SEND_BUFFER, doubled by the kernel, plus the client's
    receive buffer, in parts, times 0.5 s): the bridge itself queues nothing more.
    """
    live = bridge(**{'streams.camera.topic': '/a15/image'})
    with FramePublisher(ros.node, '/a15/image'):
        readers = {'?fps=2': SlowMjpegReader(live.port, '?fps=2'),
                   '': SlowMjpegReader(live.port, '', rcvbuf=65536)}
        for reader in readers.values():
            reader.start()
        for reader in readers.values():
            reader.join(40)
    report = {q or 'no fps': [round(a, 2) for a in r.ages] for q, r in readers.items()}
    print(f'row 15: ages of the parts read (s): {report}')
    for query, reader in readers.items():
        assert reader.error is None, f'{query}: {reader.error!r}'
    limited = max(readers['?fps=2'].ages[2:])
    assert limited <= 1.0, f'fps=2 reader got a part {limited:.2f} s old: {report}'
    slow = readers['']
    buffered = 2 * mjpeg_send_buffer() + slow.receive_buffer
    bound = (buffered / min(slow.sizes) + 2) * 0.5 + 0.5
    unlimited = max(slow.ages[2:])
    assert unlimited <= bound, f'slow reader got a part {unlimited:.2f} s old, more than ' \
        f'its buffers ({buffered} B, parts of {min(slow.sizes)} B) explain ({bound:.1f} s)'


def mjpeg_send_buffer() -> int:
    """The bridge's documented MJPEG send-buffer size (net/mjpeg.py, or net/server.py)."""
    try:
        from video_bridge.net.mjpeg import MJPEG_SEND_BUFFER
    except ImportError:
        from video_bridge.net.server import MJPEG_SEND_BUFFER
    return MJPEG_SEND_BUFFER


# -- row 16: the token is not a ROS parameter ---------------------------------------------------

def parameters_of(ros, node_name='/bridge_node'):
    """All parameter names and values of a node, read like any DDS node could."""
    from rcl_interfaces.srv import GetParameters, ListParameters
    lister = ros.node.create_client(ListParameters, f'{node_name}/list_parameters')
    getter = ros.node.create_client(GetParameters, f'{node_name}/get_parameters')
    try:
        wait_for(lambda: lister.service_is_ready() and getter.service_is_ready(), 10,
                 'parameter services of bridge_node')
        future = lister.call_async(ListParameters.Request())
        wait_for(future.done, 10, 'list_parameters')
        names = list(future.result().result.names)
        future = getter.call_async(GetParameters.Request(names=names))
        wait_for(future.done, 10, 'get_parameters')
        values = future.result().values
        readable = {}
        for name, value in zip(names, values):
            readable[name] = repr((value.string_value, list(value.string_array_value)))
        return readable
    finally:
        ros.node.destroy_client(lister)
        ros.node.destroy_client(getter)


def test_token_is_not_a_readable_ros_parameter(ros, bridge, tmp_path):
    """
    Row 16: a token from token_file. Proves no parameter of /bridge_node (as get_parameters
    shows any DDS node) is named token or holds its value, while the token still guards
    driving.
    """
    from websockets.sync.client import connect as ws_connect
    token = 'file-secret-6f1d2c'
    token_file = tmp_path / 'token'
    token_file.write_text(token + '\n')
    live = bridge(token_file=str(token_file), view_requires_token=False)  # anonymous watches
    readable = parameters_of(ros)
    assert 'token_file' in readable, sorted(readable)
    leaks = [name for name, value in readable.items() if token in value]
    assert not leaks, f'parameters holding the token: {leaks}'
    assert 'token' not in readable, 'a readable ROS parameter named token exists'
    with ws_connect(f'{live.ws}/control', open_timeout=10) as ws:
        assert not json.loads(ws.recv(timeout=5))['can_drive']


def test_old_token_parameter_is_never_readable_nor_silently_dropped(ros, launch_node, cmd_vel):
    """
    Row 16 (old configs): ``-p token:=...`` as in older YAML files. Proves the value never
    becomes readable through get_parameters, and the bridge does not silently run open
    instead: it either refuses to start with a clear message or still refuses anonymous
    drivers.
    """
    from websockets.sync.client import connect as ws_connect
    secret = 'param-secret-91ab77'
    port = free_port()
    process = launch_node('bridge_node', ros_args=ros_args_for(
        port, {'host': '127.0.0.1', 'token': secret}), name='bridge_node')
    wait_for(lambda: process.proc.poll() is not None or port_open(port), 20,
             'bridge_node to listen or exit')
    if process.proc.poll() is not None:
        assert 'token' in process.output(), 'exited without naming the token parameter'
        return
    readable = parameters_of(ros)
    leaks = [name for name, value in readable.items() if secret in value]
    assert not leaks, f'parameters holding the token: {leaks}'
    cmd_vel.wait_matched()
    with ws_connect(f'ws://127.0.0.1:{port}/control', open_timeout=10) as ws:
        hello = json.loads(ws.recv(timeout=5))
    assert not hello['can_drive'], 'token parameter silently ignored: anonymous may drive'


# -- row 17: a silent driver --------------------------------------------------------------------

def test_silent_driver_loses_the_lock(ros, bridge, cmd_vel):
    """
    Row 17: the driver's link goes silent (a raw websocket client that stops reading and
    answering pings: no FIN, no RST). With ping_interval=1 s and ping_timeout=1 s, proves the
    car stops by the deadman, the driver loses the lock within 5 s, every other control client
    is told (state driver null) and a second operator can then drive.
    """
    from websockets.sync.client import connect as ws_connect
    live = bridge(ping_interval=1.0, ping_timeout=1.0)
    cmd_vel.wait_matched()
    driver = hc.RawWebSocket(live.port, '/control')
    assert driver.accepted, driver.response
    hello = driver.recv_json()
    driver.recv_json()
    driver.send_text(json.dumps({'type': 'acquire', 'id': 1}))
    driver.send_text(json.dumps({'type': 'velocity', 'id': 2, 'linear': {'x': 0.2}}))
    cmd_vel.wait_value(0.2)
    states = {'observer': [], 'second': []}
    try:
        with ws_connect(f'{live.ws}/control', open_timeout=10) as observer, \
                ws_connect(f'{live.ws}/control', open_timeout=10) as second:
            def read_states(ws, name):
                try:
                    while True:
                        message = json.loads(ws.recv(timeout=0.05))
                        if message.get('type') == 'state':
                            states[name].append(message)
                except TimeoutError:
                    pass
                return states[name]

            def lock_released(ws, name):
                return any(s['driver'] is None for s in read_states(ws, name))
            for ws, name in ((observer, 'observer'), (second, 'second')):
                wait_for(lambda: read_states(ws, name), 5, f'{name} state')
                assert states[name][-1]['driver'] == hello['client_id'], states[name]
            # A last command, then silence: from here on nobody reads the driver's socket.
            after = len(cmd_vel.messages)
            driver.send_text(json.dumps({'type': 'velocity', 'id': 3, 'linear': {'x': 0.25}}))
            cmd_vel.wait_value(0.25, after=after)
            silent_at = time.monotonic()
            after = len(cmd_vel.messages)
            stopped = cmd_vel.wait_value(0.0, timeout=3, after=after) - silent_at
            assert stopped <= 0.5 + 0.3, f'deadman (0.5 s) stopped the car after {stopped:.2f} s'
            released = None
            while time.monotonic() - silent_at < 5.0:
                if lock_released(observer, 'observer') and lock_released(second, 'second'):
                    released = time.monotonic() - silent_at
                    break
            assert released is not None, 'the silent driver still held the lock after 5 s ' \
                f'(observer states: {states["observer"][-2:]})'
            second.send(json.dumps({'type': 'acquire', 'id': 'b'}))
            reply = None
            while reply is None:
                message = json.loads(second.recv(timeout=5))
                if message.get('id') == 'b':
                    reply = message
            assert reply['type'] == 'ack', f'second operator could not drive: {reply}'
            second.send(json.dumps({'type': 'velocity', 'id': 'v', 'linear': {'x': 0.15}}))
            cmd_vel.wait_value(0.15)
    finally:
        driver.close()
    print(f'row 17: car stopped {stopped:.2f} s, lock released {released:.2f} s after silence')
