"""The Janus lab the SFU tests and bench/sfu_bench.py share: Janus and nginx from deploy/cloud/
with test secrets, a hub fed from a thread (the robot's camera side), the robot's publisher,
aiortc viewers that subscribe through the Janus API, and the readings they are measured by.

Janus gathers ICE candidates on no loopback interface, so :func:`lab_interface` adds a veth
pair (198.51.100.1/24 on one end) to the caller's private network namespace and removes it
afterwards; every process here is started by its caller and stopped by its PID. Janus and
its nginx also run in a lab namespace of support.netlab (``namespace``), as in
support/sfu_lab.py.
"""

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from conftest import ChildProcess, free_port, only_loopback, port_open, REPO, wait_for
import pytest
from support.pictures import h264_loop, raw
from video_bridge.core import sfu
from video_bridge.core.streams import RAW, SourceImage, StreamHub, StreamSettings

JANUS = shutil.which('janus')
ROOM = 4242
OTHER_ROOM = 4343
ADDRESS = '198.51.100.1'
DEPLOY = os.path.join(REPO, 'deploy', 'cloud')
ADMIN_KEY = 'test-admin-key'


@contextlib.contextmanager
def lab_interface():
    """A veth pair in this private namespace: an address Janus will gather candidates on."""
    if not only_loopback():
        pytest.fail('the Janus tests change the network namespace: run them with scripts/test')
    subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)
    subprocess.run(['ip', 'link', 'add', 'sfu0', 'type', 'veth', 'peer', 'name', 'sfu1'],
                   check=True)
    try:
        subprocess.run(['ip', 'addr', 'add', f'{ADDRESS}/24', 'dev', 'sfu0'], check=True)
        for name in ('sfu0', 'sfu1'):
            subprocess.run(['ip', 'link', 'set', name, 'up'], check=True)
        yield ADDRESS
    finally:
        subprocess.run(['ip', 'link', 'del', 'sfu0'], capture_output=True)


class Janus:
    """Janus with deploy/cloud's configs (test secrets, a free port), restartable."""

    def __init__(self, rtp_ports='40000-40999', namespace=None, address=ADDRESS):
        """``namespace``: a lab namespace (support.netlab) to run in instead of this one;
        ``address``: Janus's public address there (``-i``)."""
        if JANUS is None:
            pytest.skip('janus is not installed: scripts/bootstrap installs it')
        self.namespace, self.address = namespace, address
        self.dir = tempfile.mkdtemp(prefix='janus-')
        self.port = free_port()
        self.url = f'ws://127.0.0.1:{self.port}'
        self.token_secret = 'test-token-secret'
        self.room_secret = 'test-room-secret'
        self.pin = 'test-pin'
        self.other_room_secret = 'other-secret'   # the second robot's room (OTHER_ROOM)
        self.other_pin = 'other'
        values = {'TOKEN_AUTH_SECRET': self.token_secret, 'ADMIN_SECRET': 'test-admin',
                  'ADMIN_KEY': ADMIN_KEY, 'ROOM': str(ROOM), 'ROBOT': 'car1',
                  'ROOM_SECRET': self.room_secret, 'ROOM_PIN': self.pin,
                  'ROOM2': str(OTHER_ROOM), 'ROBOT2': 'car2',
                  'ROOM2_SECRET': self.other_room_secret, 'ROOM2_PIN': self.other_pin}
        for name in ('janus.jcfg', 'janus.transport.websockets.jcfg',
                     'janus.plugin.videoroom.jcfg'):
            with open(os.path.join(DEPLOY, name)) as template:
                text = template.read()
            text = re.sub(r'@([A-Z_0-9]+)@', lambda m: values.get(m.group(1), m.group(0)), text)
            text = text.replace('"/etc/janus"', f'"{self.dir}"')
            text = text.replace('ws_port = 8188', f'ws_port = {self.port}')
            text = text.replace('"20000-40000"', f'"{rtp_ports}"')
            assert '@' not in re.sub(r'#.*', '', text), (name, 'a placeholder left')
            with open(os.path.join(self.dir, name), 'w') as out:
                out.write(text)
        self.process = None
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def start(self):
        command = [JANUS, '-C', os.path.join(self.dir, 'janus.jcfg'), '-F', self.dir, '-o',
                   '-i', self.address]
        self.process = ChildProcess(in_namespace(self.namespace) + command, 'janus')
        try:
            self.process.wait_output('WebSockets thread started', 20)
            wait_for(lambda: port_open_in(self.namespace, '127.0.0.1', self.port), 10,
                     'janus websocket port')
        except BaseException:   # a Janus that never came up is stopped (by its PID) too
            self.stop()
            raise

    def stop(self):
        if self.process is not None:
            self.process.stop(signal.SIGTERM, 10)
            self.process = None

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def in_namespace(namespace) -> list:
    """The command prefix that runs a program in lab namespace ``namespace`` (None: here)."""
    return ['ip', 'netns', 'exec', namespace] if namespace else []


def port_open_in(namespace, host: str, port: int) -> bool:
    """:func:`conftest.port_open` for ``host`` in lab namespace ``namespace`` (None: here)."""
    if namespace is None and host == '127.0.0.1':
        return port_open(port)
    from support import netlab

    def connect():
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False
    return netlab.in_namespace(namespace, connect) if namespace else connect()


class JanusEdge:
    """nginx with deploy/cloud/janus-nginx-location.conf in front of Janus (ws://.../janus).

    With ``spread`` (Janus nodes, the first being ``janus``), also the viewers' location of
    deploy/cloud/janus-nginx-viewers-location.conf over janus-nginx-upstream.conf's upstream,
    its servers replaced by the nodes' ports (``viewers_url``, ws://.../janus-view).
    In a lab: runs in Janus's namespace, listens on ``listen`` and serves ``extra`` (more
    nginx lines for the server block) too.
    """

    def __init__(self, janus: 'Janus', spread=(), listen='127.0.0.1', extra=''):
        nginx = shutil.which('nginx') or '/usr/sbin/nginx'
        if not os.path.exists(nginx):
            pytest.skip('nginx is not installed: scripts/bootstrap installs it')
        self.port = free_port()
        self.url = f'ws://{listen}:{self.port}/janus'
        self.viewers_url = f'ws://{listen}:{self.port}/janus-view'
        with open(os.path.join(DEPLOY, 'janus-nginx-location.conf')) as snippet:
            location = snippet.read().replace('127.0.0.1:8188', f'127.0.0.1:{janus.port}')
        includes = [os.path.join(janus.dir, 'janus-location.conf')]
        with open(includes[0], 'w') as out:
            out.write(location)
        upstream = ''
        if spread:
            with open(os.path.join(DEPLOY, 'janus-nginx-upstream.conf')) as snippet:
                upstream = snippet.read()
            servers = re.findall(r'^\s*server (\S+:8188)', upstream, re.MULTILINE)
            assert len(servers) == len(spread), (servers, 'one upstream server per node')
            for server, node in zip(servers, spread):
                upstream = upstream.replace(f'server {server}', f'server 127.0.0.1:{node.port}')
            includes.append(os.path.join(janus.dir, 'janus-viewers-location.conf'))
            shutil.copy(os.path.join(DEPLOY, 'janus-nginx-viewers-location.conf'), includes[1])
        conf = os.path.join(janus.dir, 'nginx.conf')
        temp = os.path.join(janus.dir, 'nginx-temp')
        os.makedirs(temp, exist_ok=True)
        include_lines = '\n'.join(f'        include {path};' for path in includes)
        with open(conf, 'w') as out:
            out.write(f"""pid {janus.dir}/nginx.pid;
error_log stderr;
events {{}}
http {{
    access_log off;
    client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
    uwsgi_temp_path {temp}; scgi_temp_path {temp};
    limit_req_zone $binary_remote_addr zone=video_bridge_attempts:1m rate=10r/s;
{upstream}
    server {{
        listen {listen}:{self.port};
{include_lines}
{extra}
    }}
}}
""")
        self.process = ChildProcess(in_namespace(janus.namespace) +
                                    [nginx, '-c', conf, '-g', 'daemon off;'], 'nginx-janus')
        try:
            def up():
                if self.process.proc.poll() is not None:
                    pytest.fail(f'nginx exited:\n{self.process.output()[-3000:]}')
                return port_open_in(janus.namespace, listen, self.port)
            wait_for(up, 20, f'nginx to serve port {self.port}')
        except BaseException:
            self.close()
            raise

    def close(self):
        self.process.stop(signal.SIGTERM, 10)


class Feeder:
    """
    A hub with one stream fed 30 frames/s from a thread (the camera side of the bridge).

    ``kind``: the stream's (streams.RAW, or streams.H264 with :func:`busy_h264`'s units).
    """

    def __init__(self, picture=raw, kind=RAW):
        self.picture = picture
        self.hub = StreamHub()
        self.stream = self.hub.add(StreamSettings('cam', 'image_raw', kind=kind))
        self.listeners = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        index = 0
        while not self._stop.wait(1 / 30):
            self.stream.publish(self.picture(index))
            for listener in self.listeners:
                listener('cam')
            index += 1

    def close(self):
        self._stop.set()
        self.thread.join(5)


def count_frames(pc, counted, sized=None):
    """Call ``counted()`` per assembled video frame instead of decoding it (and ``sized`` with
    the frame's size, the RTP payloads it was assembled from).

    aiortc hands each frame its jitter buffer completes to a decoder thread's queue; the queue
    is swapped for a counter (the end-of-stream marker still reaches the thread). Twenty
    decoders would not fit two cores, and a decoder's speed is not what these tests measure.
    """
    class Counter:
        def __init__(self, queue):
            self.queue = queue

        def get(self):          # the decoder thread, if it starts after the swap
            return self.queue.get()

        def put(self, item):
            if item is None:
                self.queue.put(None)
            else:
                counted()
                if sized is not None:
                    sized(len(item[1].data))    # (codec, the jitter buffer's frame)

    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        name = '_RTCRtpReceiver__decoder_queue'
        if not hasattr(receiver, name):
            pytest.skip('this aiortc keeps no decoder queue to count frames at')
        setattr(receiver, name, Counter(getattr(receiver, name)))


class JanusViewer:
    """A page's half in aiortc: a Janus session, a VideoRoom subscriber, frames counted."""

    def __init__(self, url: str, keep_sizes: bool = False):
        """``keep_sizes``: keep (time.monotonic(), bytes) of every frame counted without
        decoding, in ``sizes`` (the caller bounds the run)."""
        from video_bridge.net.sfu_janus import JanusSession, JanusSettings
        self.settings = JanusSettings(url=url, room=ROOM)
        self.session_class = JanusSession
        self.janus = None
        self.pc = None
        self.frames = 0
        self.sizes = [] if keep_sizes else None
        self.first_frame_at = None

    async def session(self, token):
        import logging
        self.janus = self.session_class(self.settings, token, logging.getLogger('viewer'))
        await self.janus.connect()
        return await self.janus.attach(sfu.VIDEOROOM)

    async def watch(self, access: dict, decode: bool = True):
        """Subscribe to the feed ``access`` names (an ``sfu_access`` message's fields)."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        handle = await self.session(access.get('token'))
        join = {'request': 'join', 'ptype': 'subscriber', 'room': access['room'],
                'streams': [{'feed': access['feed']}]}
        if access.get('room_token'):
            join['token'] = access['room_token']
        if access.get('pin'):
            join['pin'] = access['pin']
        _, jsep = await self.janus.message(handle, join)
        # no ICE servers, as the page (Janus has a public address); not aiortc's default
        # (stun.l.google.com), which in a lab without DNS costs the resolver's timeout
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @self.pc.on('track')
        def on_track(track):
            if decode:
                asyncio.ensure_future(self._read(track))

        await self.pc.setRemoteDescription(RTCSessionDescription(jsep['sdp'], 'offer'))
        if not decode:
            self.count_without_decoding()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.janus.message(handle, {'request': 'start'}, jsep={
            'type': 'answer', 'sdp': self.pc.localDescription.sdp})
        self.started_at = time.monotonic()

    def count_without_decoding(self):
        """Count assembled frames instead of decoding them (see :func:`count_frames`)."""
        def counted():
            self.frames += 1
            if self.first_frame_at is None:
                self.first_frame_at = time.monotonic()

        def sized(size):
            if self.sizes is not None:
                self.sizes.append((time.monotonic(), size))
        count_frames(self.pc, counted, sized)

    async def _read(self, track):
        from aiortc.mediastreams import MediaStreamError
        try:
            while True:
                await track.recv()
                self.frames += 1
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
        except MediaStreamError:
            pass

    async def close(self):
        if self.pc is not None:
            await self.pc.close()
        if self.janus is not None:
            await self.janus.close()


def secret_files(janus, directory) -> dict:
    """bridge_node's SFU secret parameters for ``janus``, in files in ``directory`` (0600)."""
    parameters = {}
    for name, value in (('sfu_token_secret_file', janus.token_secret),
                        ('sfu_room_secret_file', janus.room_secret),
                        ('sfu_room_pin_file', janus.pin)):
        path = directory / name
        path.write_text(value + '\n')
        path.chmod(0o600)
        parameters[name] = str(path)
    return parameters


def publisher(janus, feeder, **overrides):
    from video_bridge.net.sfu_janus import JanusPublisher, JanusSettings
    settings = {'url': janus.url, 'room': ROOM, 'token_secret': janus.token_secret,
                'room_pin': janus.pin, 'room_secret': janus.room_secret, 'backoff_max': 2.0}
    settings.update(overrides)
    published = JanusPublisher(feeder.hub, JanusSettings(**settings))
    feeder.listeners.append(published.notify_frame)
    return published


async def bytes_sent(feed) -> int:
    """RTP bytes the publisher's sender put on the wire (aiortc's outbound-rtp stats)."""
    stats = await feed.peer.pc.getStats()
    return sum(s.bytesSent for s in stats.values() if s.type == 'outbound-rtp')


async def uplink_rate(feed, seconds: float) -> float:
    """Bit/s the robot sent towards Janus over ``seconds`` (a measuring window)."""
    before, started = await bytes_sent(feed), time.monotonic()
    await asyncio.sleep(seconds)   # the measuring window, not a synchronisation
    return (await bytes_sent(feed) - before) * 8 / (time.monotonic() - started)


def busy_picture(width=640, height=480, count=8, step=2):
    """Pictures that cost the encoder its bit rate (noise moving over a gradient).

    Noise on every ``step``-th pixel of every ``step``-th row: at 2, H.264 holds 1.2 Mbit/s
    (its VBV cap) but VP8 cannot (5.7 Mbit/s at qmax); at 8 VP8 makes about 1.1 Mbit/s.
    """
    import numpy as np
    from video_bridge.core.streams import SourceImage
    rng = np.random.default_rng(7)
    base = np.zeros((height, width, 3), np.uint8)
    base[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)
    frames = []
    for index in range(count):
        frame = base.copy()
        frame[::step, ::step] = rng.integers(0, 255, (len(range(0, height, step)),
                                                      len(range(0, width, step)), 3), np.uint8)
        frames.append(frame.tobytes())

    def make(index):
        return SourceImage(stamp_sec=1000, stamp_nanosec=index * 33_333_333,
                           data=frames[index % count], encoding='bgr8', width=width,
                           height=height, step=width * 3, received_time=time.time())
    return make


def busy_h264(width=640, height=480, step=2, gop=30):
    """
    busy_picture's pictures as the units a robot's own H.264 encoder would send: two GOPs of
    libx264 at the 1.2 Mbit/s top layer's rate, looped, for a Feeder of kind streams.H264.
    """
    import numpy as np
    busy = busy_picture(width, height, step=step)

    def picture(index):
        return np.frombuffer(busy(index).data, np.uint8).reshape(height, width, 3)
    units = h264_loop(picture, 2 * gop, width, height, gop, bitrate=1_200_000)

    def make(index):
        return SourceImage(stamp_sec=1000 + index // 30, stamp_nanosec=index % 30 * 33_333_333,
                           data=units[index % len(units)][0], image_format='h264',
                           received_time=time.time())
    return make


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    with open(f'/proc/{pid}/stat') as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def janus_cpu_seconds(janus) -> float:
    return process_cpu_seconds(janus.process.proc.pid)


async def janus_request(node, body: dict) -> dict:
    """One VideoRoom request on a short session of its own, with a token ``node`` accepts."""
    viewer = JanusViewer(node.url)
    try:
        handle = await viewer.session(sfu.session_token(node.token_secret, time.time()))
        data, _ = await viewer.janus.message(handle, body)
        return data
    finally:
        await viewer.close()


async def forward_feed(origin, edge_node, feed_id: int, codec: str,
                       remote_id: str = 'node-b') -> dict:
    """Janus 1.1's remote publishers: ``origin`` forwards the robot's feed ``feed_id`` to
    ``edge_node`` (plain RTP, RTCP back for keyframe requests), where it gets the same id, so
    one sfu_access is good on both nodes. Returns add_remote_publisher's answer."""
    remote = await janus_request(edge_node, {
        'request': 'add_remote_publisher', 'room': ROOM, 'secret': edge_node.room_secret,
        'admin_key': ADMIN_KEY, 'id': feed_id, 'display': 'robot via the origin',
        'iface': ADDRESS,
        'streams': [{'type': 'video', 'mid': '0', 'mindex': 0, 'codec': codec}]})
    await janus_request(origin, {
        'request': 'publish_remotely', 'room': ROOM, 'publisher_id': feed_id,
        'secret': origin.room_secret, 'admin_key': ADMIN_KEY,
        'remote_id': remote_id, 'host': ADDRESS, 'port': remote['port'],
        'rtcp_port': remote['rtcp_port']})
    return remote


def media_ports(viewer: 'JanusViewer') -> set:
    """The UDP ports of the Janus node a viewer's media comes from (its offer's candidates):
    which node it landed on, each node having its own rtp_port_range."""
    sdp = viewer.pc.remoteDescription.sdp
    return {int(m.group(1)) for m in re.finditer(
        rf'a=candidate:\S+ \d+ udp \d+ {re.escape(ADDRESS)} (\d+)', sdp, re.IGNORECASE)}


class Forwarder:
    """The cloud's SFU forwarder as its own process (python3 -m video_bridge.sfu_forwarder),
    from a config like deploy/cloud/sfu-forwarder.yaml: ``origin`` to the ``edges`` (Janus
    nodes of this lab), the lab's rooms, its secrets in files of the origin's directory."""

    def __init__(self, origin: 'Janus', edges, rooms=((ROOM, 'test-room-secret', 'test-pin'),),
                 poll_interval: float = 0.5):
        import sys
        import yaml
        secrets_dir = os.path.join(origin.dir, 'forwarder')
        os.makedirs(secrets_dir, mode=0o700, exist_ok=True)

        def secret(name, value):
            path = os.path.join(secrets_dir, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as out:
                out.write(value + '\n')
            return path
        config = {
            'origin': {'url': origin.url},
            'edges': [{'name': f'node-{index + 1}', 'url': edge.url, 'address': ADDRESS}
                      for index, edge in enumerate(edges)],
            'rooms': [{'room': room, 'secret_file': secret(f'room-{room}-secret', room_secret),
                       'pin_file': secret(f'room-{room}-pin', pin)}
                      for room, room_secret, pin in rooms],
            'admin_key_file': secret('admin-key', ADMIN_KEY),
            'token_secret_file': secret('token-secret', origin.token_secret),
            'poll_interval': poll_interval, 'request_timeout': 3.0, 'backoff_max': 2.0}
        self.config_path = os.path.join(secrets_dir, 'sfu-forwarder.yaml')
        with open(self.config_path, 'w') as out:
            yaml.safe_dump(config, out)
        self.process = ChildProcess([sys.executable, '-m', 'video_bridge.sfu_forwarder',
                                     '--config', self.config_path], 'sfu-forwarder')
        try:
            self.process.wait_output('sfu_forwarder: rooms', 20)
        except BaseException:
            self.close()
            raise

    def close(self):
        self.process.stop(signal.SIGTERM, 10)


async def remote_publishers(node, room: int = ROOM) -> set:
    """The ids of the remote publishers ``node`` has in ``room`` (what forwards feed it)."""
    answer = await janus_request(node, {'request': 'listparticipants', 'room': room})
    return {p['id'] for p in answer.get('participants', []) if p.get('remote')}
