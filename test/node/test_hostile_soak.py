"""
Issue 16's hostile-client soak: every attack at once while a viewer and a driver use the bridge.

One real bridge_node over TLS, with a token (watching left open: ``view_requires_token: false``,
the setting that lets anonymous clients reach the most slots), fed by the real camera_node
(640x480 at 30 fps).
``support/soak_attacks.py`` runs rows 1, 2, 3, 4, 8, 9 and 10 of the issue together from a
process of its own for ``HOSTILE_SOAK_SECONDS`` (60 by default) while this process measures a
normal wss viewer (its frame rate, and its share of the frames the bridge took in), a driver
holding the lock (``support/soak_driver.py``, also a process of its own: each command from its
send to its arrival on ``/cmd_vel``, a real rclpy subscription here), the bridge's RSS and the
CPU of the bridge and of the attackers. Afterwards every
slot is free again: no WebRTC peer, no viewer, the bridge's descriptors back where they were.
Two quick tests beside it check two of the fixes the soak's figures led to: an unanswered offer
holds no viewer slot or encoder, and the memory a burst of connections freed is given back.
"""

import collections
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time

from conftest import camera_node, wait_for
import pytest
from support import hostile_clients as hc
from support.webrtc_support import HOST_ADDRESS, host_address

pytest.importorskip('aiortc')
websockets = pytest.importorskip('websockets')

SECONDS = float(os.environ.get('HOSTILE_SOAK_SECONDS', '60'))
ROWS = os.environ.get('HOSTILE_SOAK_ROWS', '1,2,3,4,8,9,10')   # fewer while looking into one
# Another checkout's bridge (its src/video_bridge first on the bridge's PYTHONPATH; messages,
# config and everything else from here): bench/soak_bench.py measures before and after with it.
BRIDGE_SOURCE = os.environ.get('HOSTILE_SOAK_BRIDGE_SOURCE', '')
# Extra environment for the bridge only ('NAME=VALUE NAME=VALUE'; $NAME in a value is what the
# bridge would have had): bench/soak_bench.py's --bridge-env, to try an allocator setting or a
# probe (PYTHONPATH=/tmp/probe:$PYTHONPATH) without touching the bridge.
BRIDGE_ENV = dict(item.split('=', 1) for item in
                  os.environ.get('HOSTILE_SOAK_BRIDGE_ENV', '').split() if '=' in item)
# The bridge's certificate key: 'rsa' (RSA-2048, the default) or 'ec' (ECDSA P-256);
# bench/soak_bench.py's --key.
KEY_TYPE = os.environ.get('HOSTILE_SOAK_KEY', 'rsa')
TOKEN = 'soak-token-0123456789'
# The goal is 28 of the camera's 30 fps. A loaded CI machine may not run the camera at 30, so
# the test holds the bridge to the same share of the frames it took in during the window (the
# span of frame numbers, as test_edge_slots counts frames published); the absolute rate is
# printed, and bench/run soak reports it against the goal. The floor only says video moved.
VIEWER_SHARE = 28.0 / 30.0
VIEWER_FPS_FLOOR = 10.0
# Bounds a loaded, shared 2-core CI machine keeps; the figures themselves are printed, and the
# issue's goals (5 ms, 20 MB) are measured by bench/run soak (bench/soak_bench.py), not here.
# Commands are never late enough to trip the deadman (command_timeout 0.5 s): on a 2-core
# machine shared with other work (load average 4 to 10) the p99 of one bridge moved between
# 12 ms and 2.5 s from run to run, so no tighter. Memory is bounded by what the caps admit.
COMMAND_P99 = 0.250
RSS_GROWTH_MB = 60.0
COMMAND_PERIOD = 0.05      # a driver's 20 Hz
DRIVER_QUIET = 0.25        # s without a send from the driver: half the deadman's timeout
TEST_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACKS = os.path.join(TEST_DIR, 'support', 'soak_attacks.py')
DRIVER = os.path.join(TEST_DIR, 'support', 'soak_driver.py')


pytestmark = pytest.mark.usefixtures('many_file_descriptors')


class Driver:
    """
    The driver (support/soak_driver.py, a process of its own): holds the driver lock and sends
    a distinct velocity every 50 ms; ``sent`` records each send as it is reported.

    Its own process, as the attackers': a thread here waited for this process's interpreter
    lock behind the viewer between stamping a command and writing it.
    """

    def __init__(self, url, duration):
        self.url, self.duration = url, duration
        self.sent = []              # (monotonic send time, wall-clock send time, linear.x)
        self.error = None
        self.ready = threading.Event()
        self.process = None
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, DRIVER, '--url', self.url, '--seconds', str(self.duration)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            kind, _, rest = line.strip().partition(' ')
            if kind == 'sent':
                monotonic, wall, x = rest.split()
                self.sent.append((float(monotonic), float(wall), float(x)))
            elif kind == 'ready':
                self.ready.set()
            elif kind == 'error':
                self.error = rest
                self.ready.set()
        if not self.ready.is_set():
            self.error = self.error or f'the driver exited ({self.process.wait()})'
            self.ready.set()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.process is None or self.process.returncode is not None:
            return
        self.process.stdin.close()   # the driver stops and exits
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()      # our own child
            self.process.wait(10)
        self._reader.join(5)


def bridge_env() -> dict:
    """The bridge's extra environment: HOSTILE_SOAK_BRIDGE_SOURCE and _ENV."""
    env = {'PYTHONPATH': os.pathsep.join([os.path.join(BRIDGE_SOURCE, 'src', 'video_bridge'),
                                          os.environ.get('PYTHONPATH', '')])} \
        if BRIDGE_SOURCE else {}
    for name, value in BRIDGE_ENV.items():
        env[name] = value.replace(f'${name}', env.get(name, os.environ.get(name, '')))
    return env


def command_latencies(sent, arrivals):
    """For each send, the delay to the first /cmd_vel message with its value after it."""
    latencies = []
    for t_send, x in sent:
        first = next((t for t, value in arrivals if t >= t_send and abs(value - x) < 1e-9),
                     None)
        if first is not None:
            latencies.append(first - t_send)
    return latencies


def largest_gap(times, start, end) -> float:
    """The longest span in [start, end] with none of ``times`` (sorted) in it."""
    inside = [start] + [t for t in times if start < t < end] + [end]
    return max(b - a for a, b in zip(inside, inside[1:]))


def children_cpu_seconds() -> float:
    """CPU s used by this process's children that ended and were waited for (the attackers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def api_streams(port, tls):
    import urllib.request
    with urllib.request.urlopen(f'https://127.0.0.1:{port}/api/streams?token={TOKEN}',
                                timeout=5, context=tls) as response:
        return json.loads(response.read())


def slots(port, tls):
    doc = api_streams(port, tls)
    return doc['webrtc']['peers'], sum(stream['viewers'] for stream in doc['streams'])


def start_webrtc_once(port, tls):
    """
    What a normal page does first: ask for a WebRTC offer (then go, and the peer with it).

    The bridge loads aiortc for its first peer (about 14 MB, once per process): before the
    baseline, so the soak's RSS growth is what the attacks cost, not that import.
    """
    ws = hc.RawWebSocket(port, f'/control?token={TOKEN}', timeout=10, tls=tls)
    try:
        assert ws.accepted, ws.response
        reply = ask_offer(ws)
        assert reply.get('type') == 'webrtc_offer', reply
    finally:
        ws.close()
    wait_for(lambda: slots(port, tls)[0] == 0, 15, 'the first WebRTC peer gone')


@pytest.mark.soak
def test_every_attack_at_once_leaves_the_viewer_the_driver_and_the_slots(
        start_bridge, cmd_vel, tmp_path):
    """
    All of issue 16's attacks together for a minute: the viewer keeps 28 of 30 frames, the driver's
    commands reach /cmd_vel with no deadman stop (p99 within COMMAND_P99), RSS stays within
    RSS_GROWTH_MB, no token is guessed, and afterwards no peer, viewer or connection is left.
    """
    cert, key = hc.self_signed_cert(str(tmp_path), key_type=KEY_TYPE)
    tls = hc.insecure_client_context()
    mark = cmd_vel.mark()

    def arrivals(clock='at'):
        """(time, linear x) of each /cmd_vel message since the mark; ``clock``: a Sample field."""
        return [(getattr(sample, clock), sample.linear_x) for sample in cmd_vel.since(mark)]
    # The camera is a process of its own: this process's DDS participant was made before
    # host_address() added an interface, and raw frames from it then arrive at half rate.
    with host_address(), camera_node(), contextlib.ExitStack() as stack:
        bridge = start_bridge(token=TOKEN, tls_cert=cert, tls_key=key, env=bridge_env(),
                              view_requires_token=False, webrtc_host_addresses=[HOST_ADDRESS],
                              webrtc_connect_timeout=4.0, webrtc_max_peers=6)
        pid = bridge.process.proc.pid
        viewer = hc.Viewer(f'wss://127.0.0.1:{bridge.port}/video/camera?token={TOKEN}',
                           ssl_context=tls, duration=SECONDS + 60)
        viewer.start()
        wait_for(lambda: len(viewer.frames) >= 30 or viewer.error, 20, 'viewer frames')
        assert viewer.error is None, repr(viewer.error)
        driver = stack.enter_context(
            Driver(f'wss://127.0.0.1:{bridge.port}/control?token={TOKEN}', SECONDS + 30))
        assert driver.ready.wait(15) and driver.error is None, repr(driver.error)
        wait_for(lambda: cmd_vel.subscription.get_publisher_count() > 0, 10, 'cmd_vel matched')
        wait_for(lambda: len(cmd_vel.since(mark)) > 5, 10, 'the driver on /cmd_vel')
        start_webrtc_once(bridge.port, tls)
        fds_before = hc.open_fds(pid)
        rss_before = hc.rss_mb(pid)
        cpu_before, children_before = hc.cpu_seconds(pid), children_cpu_seconds()
        lines_before = bridge.process.output().count('\n')
        started = time.monotonic()
        attack = subprocess.Popen(
            [sys.executable, ATTACKS, '--port', str(bridge.port), '--seconds', str(SECONDS),
             '--rows', ROWS],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # Attackers are other machines: here they share the bridge's two cores, so they
            # run at the lowest priority instead of taking CPU a real attacker could not.
            preexec_fn=lambda: os.nice(19))
        try:
            peak = rss_before
            while attack.poll() is None and time.monotonic() - started < SECONDS + 90:
                peak = max(peak, hc.rss_mb(pid))
                threading.Event().wait(0.5)   # the RSS probe's period, not synchronisation
            output, errors = attack.communicate(timeout=30)
        finally:
            if attack.poll() is None:
                attack.kill()
                attack.wait(10)
        ended = time.monotonic()
        bridge_cpu = hc.cpu_seconds(pid) - cpu_before
        attackers_cpu = children_cpu_seconds() - children_before   # the attack process only
        load = os.getloadavg()[0]
        log_lines = bridge.process.output().count('\n') - lines_before
        driver.stop()
        viewer.stop()
        report = json.loads(output.strip().splitlines()[-1]) if output.strip() else {}
        print('attacks:', json.dumps(report, sort_keys=True))
        assert bridge.process.proc.poll() is None, 'the bridge died'
        window = (started + 1, min(ended, started + SECONDS))
        fps = viewer.fps(*window)
        delivered = viewer.delivered(*window)
        sent = [sent for sent in driver.sent if started + 1 <= sent[0] <= started + SECONDS]
        # To the DDS layer's reception in this process: what the bridge took. To the recorder's
        # callback: that plus this process's executor, for comparison.
        sent_wall = [(wall, x) for _, wall, x in sent]
        latencies = command_latencies(sent_wall, arrivals('received'))
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        callback_p99 = percentile(command_latencies([(t, x) for t, _, x in sent], arrivals()),
                                  0.99)
        # To the bridge's handing it to DDS: the bridge alone, without the delivery to here.
        written_p99 = percentile(command_latencies(sent_wall, arrivals('written')), 0.99)

        # Every slot free again: no peer, no viewer, the descriptors of before. RSS
        # "after" is read once they are (what the attack left behind, not what it still held).
        seen = []

        def free():
            seen.append((slots(bridge.port, tls), hc.open_fds(pid)))
            (peers, viewers), fds = seen[-1]
            return peers == 0 and viewers == 0 and fds <= fds_before
        try:
            wait_for(free, 20, 'every slot free again')
            left = None
        except BaseException:
            left = (f'((peers, viewers), descriptors) stayed {seen[-1]}; '
                    f'{fds_before} descriptors before the attack')
        # A deadman stop is the bridge's fault only if the driver kept sending. If this
        # process's own driver thread went quiet (starved on a loaded machine), stopping the
        # car was right; such stops are counted in the summary, not failed.
        stops = [t for t, x in arrivals() if started <= t <= started + SECONDS and x == 0.0]
        sends = [t for t, _, _ in driver.sent]
        faults = [t for t in stops if largest_gap(sends, t - 1.0, t) < DRIVER_QUIET]
        deadman = [line for line in bridge.process.output().splitlines() if 'deadman' in line]
        rss_after = hc.rss_mb(pid)
        summary = (f'viewer {fps:.1f} fps ({delivered:.1%} of the frames the bridge took in); '
                   f'commands {len(latencies)} p50 {p50 * 1e3:.2f} ms p99 {p99 * 1e3:.2f} ms '
                   f'(written p99 {written_p99 * 1e3:.2f} ms, '
                   f'at the callback p99 {callback_p99 * 1e3:.2f} ms); '
                   f'RSS {rss_before:.1f} -> peak {peak:.1f} / after {rss_after:.1f} MB; '
                   f'CPU s bridge {bridge_cpu:.1f} attackers {attackers_cpu:.1f} over '
                   f'{ended - started:.0f} s, load {load:.1f}; deadman stops {len(stops)}, '
                   f"{len(stops) - len(faults)} after a gap in the driver's own sends; "
                   f'bridge log lines {log_lines}')
        print(summary)
        assert not report.get('errors'), (report, errors[-2000:])
        counts = collections.defaultdict(dict, report['counts'])
        # The attacks reached the bridge (else the test proves nothing).
        # Row 10's guesses are answered (101) or, once its budget is empty, held a second and
        # refused before TLS: about one a second.
        reached = {'1': ('rounds', 5), '3': ('webrtc_offer', 2), '4': ('opened', 100),
                   '9': ('opened', 500), '10': ('101|refused', 20)}
        for row in set(ROWS.split(',')) & set(reached):
            what, least = reached[row]
            got = sum(counts[f'row{row}'].get(kind, 0) for kind in what.split('|'))
            assert got >= least, (row, counts[f'row{row}'])
        assert 'GUESSED' not in counts['row10'], counts['row10']
        assert delivered >= VIEWER_SHARE and fps >= VIEWER_FPS_FLOOR, summary
        assert len(latencies) >= 0.95 * SECONDS / COMMAND_PERIOD * 0.9, summary
        assert p99 <= COMMAND_P99, summary
        assert not faults, (f'{len(faults)} deadman stops while the driver sent every '
                            f'{COMMAND_PERIOD} s ({deadman[-3:]}); {summary}')
        assert max(peak, rss_after) - rss_before < RSS_GROWTH_MB, summary
        assert left is None, left


def control_socket(port, tls, source='127.0.0.1'):
    """A wss /control socket with the token that has read its hello."""
    ws = hc.RawWebSocket(port, f'/control?token={TOKEN}', source=source, timeout=10, tls=tls)
    assert ws.accepted, ws.response
    hello = ws.recv_json(10)
    assert hello and hello['type'] == 'hello', hello
    return ws


def ask_offer(ws) -> dict:
    """Send webrtc_start; return the webrtc_offer or webrtc_error that answers it."""
    ws.send_text(json.dumps({'type': 'webrtc_start', 'id': 1, 'stream': 'camera',
                             'codecs': ['h264']}))
    deadline = time.monotonic() + 20
    reply = {}
    while reply.get('type') not in ('webrtc_offer', 'webrtc_error') and \
            time.monotonic() < deadline:
        reply = ws.recv_json(max(0.1, deadline - time.monotonic())) or {}
    return reply


def test_an_offer_never_answered_holds_no_viewer_slot_and_no_encoder(start_bridge, tmp_path):
    """
    An unanswered offer (rows 1 and 3 of the soak make them all the time) costs aiortc's side
    of the peer until its deadline, not a viewer slot and a running H.264 encoder as well: the
    peer joins the stream with the page's answer.
    """
    cert, key = hc.self_signed_cert(str(tmp_path))
    tls = hc.insecure_client_context()
    with host_address():
        bridge = start_bridge(token=TOKEN, tls_cert=cert, tls_key=key, env=bridge_env(),
                              webrtc_host_addresses=[HOST_ADDRESS])
        ws = control_socket(bridge.port, tls)
        try:
            reply = ask_offer(ws)
            assert reply.get('type') == 'webrtc_offer', reply
            doc = api_streams(bridge.port, tls)
            held = (doc['webrtc']['peers'], sum(s['viewers'] for s in doc['streams']),
                    sum(s['video_encoders'] for s in doc['streams']))
            assert held == (1, 0, 0), f'(peers, viewer slots, encoders) {held}'
        finally:
            ws.close()


def test_the_memory_a_burst_of_connections_freed_is_given_back(start_bridge, tmp_path):
    """
    Once a burst of connections is over, the bridge collects and gives freed heap back.

    The bridge keeps freed memory for its frames (glibc's trim threshold is raised), so what
    200 idle wss control sockets took stayed in the process after they closed. The trigger is
    checked here (its log line); how much comes back depends on what else the process has
    allocated meanwhile (4 to 7 MB after the soak in bench/run soak), so the figures are only
    printed.
    """
    cert, key = hc.self_signed_cert(str(tmp_path))
    tls = hc.insecure_client_context()
    bridge = start_bridge(token=TOKEN, tls_cert=cert, tls_key=key, env=bridge_env())
    pid = bridge.process.proc.pid
    before = hc.rss_mb(pid)
    sockets = []
    try:
        for index in range(200):
            sockets.append(control_socket(bridge.port, tls, f'127.0.0.{10 + index % 20}'))
        held = hc.rss_mb(pid)
    finally:
        for ws in sockets:
            ws.close()
    bridge.process.wait_output('a burst of 200 connections is over (0 open): giving the '
                               'memory it freed back', 15)
    print(f'RSS {before:.1f} MB, with 200 idle wss sockets {held:.1f} MB')
