"""The SFU path with the real Janus (Debian's janus 1.1): the bridge's publisher dials out to
it over WebRTC, aiortc viewers subscribe through the Janus API with tokens the bridge minted.

Janus runs inside the test's private namespace (scripts/test), from the configs in
deploy/cloud/ with test secrets, and is stopped by its PID however the test ends. Janus
gathers ICE candidates on no loopback interface, so the test adds a veth pair of its own
(198.51.100.1/24 on one end) and removes it afterwards.
"""

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from conftest import ChildProcess, free_port, only_loopback, port_open, REPO, wait_for
import pytest
from support.pictures import raw
from support.webrtc_support import wait_until
from video_bridge.core import sfu
from video_bridge.core.streams import StreamHub, StreamSettings

pytest.importorskip('aiortc')
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

    def __init__(self, rtp_ports='40000-40999'):
        if JANUS is None:
            pytest.skip('janus is not installed: scripts/bootstrap installs it')
        self.dir = tempfile.mkdtemp(prefix='janus-')
        self.port = free_port()
        self.url = f'ws://127.0.0.1:{self.port}'
        self.token_secret = 'test-token-secret'
        self.room_secret = 'test-room-secret'
        self.pin = 'test-pin'
        values = {'TOKEN_AUTH_SECRET': self.token_secret, 'ADMIN_SECRET': 'test-admin',
                  'ADMIN_KEY': ADMIN_KEY, 'ROOM': str(ROOM), 'ROBOT': 'car1',
                  'ROOM_SECRET': self.room_secret, 'ROOM_PIN': self.pin}
        for name in ('janus.jcfg', 'janus.transport.websockets.jcfg',
                     'janus.plugin.videoroom.jcfg'):
            with open(os.path.join(DEPLOY, name)) as template:
                text = template.read()
            text = re.sub(r'@([A-Z_0-9]+)@', lambda m: values.get(m.group(1), m.group(0)), text)
            text = text.replace('"/etc/janus"', f'"{self.dir}"')
            text = text.replace('ws_port = 8188', f'ws_port = {self.port}')
            text = text.replace('"20000-40000"', f'"{rtp_ports}"')
            if name == 'janus.plugin.videoroom.jcfg':   # a second robot's room
                text += (f'\nroom-{OTHER_ROOM}: {{\n\tsecret = "other-secret"\n'
                         '\tpin = "other"\n\tsigned_tokens = true\n\tpublishers = 6\n'
                         '\tvideocodec = "h264,vp8"\n}\n')
            with open(os.path.join(self.dir, name), 'w') as out:
                out.write(text)
        self.process = None
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def start(self):
        self.process = ChildProcess(
            [JANUS, '-C', os.path.join(self.dir, 'janus.jcfg'), '-F', self.dir, '-o',
             '-i', ADDRESS], 'janus')
        try:
            self.process.wait_output('WebSockets thread started', 20)
            wait_for(lambda: port_open(self.port), 10, 'janus websocket port')
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


class JanusEdge:
    """nginx with deploy/cloud/janus-nginx-location.conf in front of Janus (ws://.../janus)."""

    def __init__(self, janus: 'Janus'):
        nginx = shutil.which('nginx') or '/usr/sbin/nginx'
        if not os.path.exists(nginx):
            pytest.skip('nginx is not installed: scripts/bootstrap installs it')
        self.port = free_port()
        self.url = f'ws://127.0.0.1:{self.port}/janus'
        with open(os.path.join(DEPLOY, 'janus-nginx-location.conf')) as snippet:
            location = snippet.read().replace('127.0.0.1:8188', f'127.0.0.1:{janus.port}')
        with open(os.path.join(janus.dir, 'janus-location.conf'), 'w') as out:
            out.write(location)
        conf = os.path.join(janus.dir, 'nginx.conf')
        temp = os.path.join(janus.dir, 'nginx-temp')
        os.makedirs(temp, exist_ok=True)
        with open(conf, 'w') as out:
            out.write(f"""pid {janus.dir}/nginx.pid;
error_log stderr;
events {{}}
http {{
    access_log off;
    client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
    uwsgi_temp_path {temp}; scgi_temp_path {temp};
    limit_req_zone $binary_remote_addr zone=video_bridge_attempts:1m rate=10r/s;
    server {{
        listen 127.0.0.1:{self.port};
        include {janus.dir}/janus-location.conf;
    }}
}}
""")
        self.process = ChildProcess([nginx, '-c', conf, '-g', 'daemon off;'], 'nginx-janus')
        try:
            self.process.wait_port(self.port, 20)
        except BaseException:
            self.close()
            raise

    def close(self):
        self.process.stop(signal.SIGTERM, 10)


@pytest.fixture
def janus():
    with lab_interface():
        server = Janus()
        try:
            yield server
        finally:
            server.close()


class Feeder:
    """A hub with one stream fed 30 frames/s from a thread (the camera side of the bridge)."""

    def __init__(self, picture=raw):
        self.picture = picture
        self.hub = StreamHub()
        self.stream = self.hub.add(StreamSettings('cam', 'image_raw'))
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


def count_frames(pc, counted):
    """Call ``counted()`` per assembled video frame instead of decoding it.

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

    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        name = '_RTCRtpReceiver__decoder_queue'
        if not hasattr(receiver, name):
            pytest.skip('this aiortc keeps no decoder queue to count frames at')
        setattr(receiver, name, Counter(getattr(receiver, name)))


class JanusViewer:
    """A page's half in aiortc: a Janus session, a VideoRoom subscriber, frames counted."""

    def __init__(self, url: str):
        from video_bridge.net.sfu_janus import JanusSession, JanusSettings
        self.settings = JanusSettings(url=url, room=ROOM)
        self.session_class = JanusSession
        self.janus = None
        self.pc = None
        self.frames = 0
        self.first_frame_at = None

    async def session(self, token):
        import logging
        self.janus = self.session_class(self.settings, token, logging.getLogger('viewer'))
        await self.janus.connect()
        return await self.janus.attach(sfu.VIDEOROOM)

    async def watch(self, access: dict, decode: bool = True):
        """Subscribe to the feed ``access`` names (an ``sfu_access`` message's fields)."""
        from aiortc import RTCPeerConnection, RTCSessionDescription
        handle = await self.session(access.get('token'))
        join = {'request': 'join', 'ptype': 'subscriber', 'room': access['room'],
                'streams': [{'feed': access['feed']}]}
        if access.get('room_token'):
            join['token'] = access['room_token']
        if access.get('pin'):
            join['pin'] = access['pin']
        _, jsep = await self.janus.message(handle, join)
        self.pc = RTCPeerConnection()

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
        count_frames(self.pc, counted)

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


def test_one_stream_up_for_one_or_five_viewers(janus):
    """Five viewers through Janus cost the robot's uplink what one does; one encoder.

    The viewers come in through nginx with deploy/cloud's location, as pages would.
    """
    edge = JanusEdge(janus)
    feeder = Feeder()

    async def scenario():
        published = publisher(janus, feeder)
        published.start()
        published.set_wanted({'cam'})
        viewers = []
        try:
            await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
            feed = published.feeds['cam']
            access = published.viewer_access('cam', 'page-1')
            assert access['feed'] == feed.feed_id and access['room'] == ROOM
            first = JanusViewer(edge.url)
            viewers.append(first)
            await first.watch(access)
            await wait_until(lambda: first.frames >= 30, 20, 'the first viewer gets frames')
            one = await uplink_rate(feed, 3.0)
            for index in range(4):
                viewer = JanusViewer(edge.url)
                viewers.append(viewer)
                await viewer.watch(published.viewer_access('cam', f'page-{index + 2}'))
            await wait_until(lambda: all(v.frames >= 30 for v in viewers), 30,
                             'five viewers get frames')
            five = await uplink_rate(feed, 3.0)
            waits = [v.first_frame_at - v.started_at for v in viewers]
            print('first frame after subscribing: ' + ', '.join(f'{w:.2f}' for w in waits))
            # a new viewer's first frame soon: its PLI reaches the shared encoder through
            # Janus (the keyframe gate allows one per 0.5 s). Measured from the subscription's
            # start, so the viewer's ICE and DTLS are included: 0.07-0.6 s, once 1.1 s on the
            # shared 2-core machine; the goal is 1 s, the bound leaves room for that load.
            assert sorted(waits)[len(waits) // 2] <= 1.0 and max(waits) <= 1.5, waits
            counts = [v.frames for v in viewers]
            await asyncio.sleep(1.0)   # a window over which every viewer keeps receiving
            assert all(v.frames > c for v, c in zip(viewers, counts)), 'a viewer stalled'
            print(f'robot uplink: {one / 1000:.0f} kbit/s for 1 viewer, '
                  f'{five / 1000:.0f} kbit/s for 5')
            assert one > 0 and five < one * 1.25 + 50_000
            counters = feeder.stream.counters()
            assert counters.video_encoders == 1       # the SFU adds no encode per viewer
        finally:
            for viewer in viewers:
                await viewer.close()
            await published.stop()

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()
        edge.close()


def test_janus_refuses_what_the_bridge_did_not_mint(janus):
    """No token, a forged or expired one, another room's, a wrong pin; viewers cannot publish."""
    from video_bridge.net.sfu_janus import JanusError

    async def refused(token, body=None):
        viewer = JanusViewer(janus.url)
        try:
            handle = await viewer.session(token)
            if body is not None:
                await viewer.janus.message(handle, body)
        except JanusError as exc:
            return exc
        finally:
            await viewer.close()
        return None

    async def scenario():
        now = time.time()
        grant = sfu.room_grant(janus.token_secret, ROOM, now)
        good = grant.token
        assert (await refused(None)).code == 403
        forged = sfu.room_grant('not-the-secret', ROOM, now).token
        assert (await refused(forged)).code == 403
        expired = sfu.mint_token(janus.token_secret, now - 5, (sfu.VIDEOROOM,))
        assert (await refused(expired)).code == 403
        edited = good.replace(sfu.VIDEOROOM, 'janus.plugin.streaming')
        assert (await refused(edited)).code == 403
        listing = {'request': 'listparticipants', 'room': ROOM}
        assert await refused(good, listing) is None        # the minted one is good
        subscribe = {'request': 'join', 'ptype': 'subscriber', 'room': ROOM, 'pin': janus.pin,
                     'streams': [{'feed': 1}]}
        # the room wants its room token: none, forged, expired, another room's are refused
        assert 'wrong token' in (await refused(good, subscribe)).reason
        for token in (sfu.room_grant('not-the-secret', ROOM, now).room_token,
                      sfu.mint_token(janus.token_secret, now - 5, (sfu.room_descriptor(ROOM),),
                                     sfu.VIDEOROOM),
                      sfu.room_grant(janus.token_secret, OTHER_ROOM, now).room_token):
            assert 'wrong token' in (await refused(good, dict(subscribe, token=token))).reason
        other_room = dict(subscribe, room=OTHER_ROOM, pin='other', token=grant.room_token)
        assert 'wrong token' in (await refused(good, other_room)).reason
        wrong_pin = dict(subscribe, pin='nope', token=grant.room_token)
        assert (await refused(good, wrong_pin)).code == 433
        # the robot's own session puts its token on the room's allowed list; a viewer's
        # token, good for the room, is not on it and may not publish
        feeder = Feeder()
        published = publisher(janus, feeder)
        published.start()
        published.set_wanted({'cam'})
        try:
            await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
            as_publisher = {'request': 'join', 'ptype': 'publisher', 'room': ROOM,
                            'pin': janus.pin, 'token': grant.room_token}
            assert 'allowed' in (await refused(good, as_publisher)).reason
        finally:
            await published.stop()
            feeder.close()

    asyncio.run(scenario())


def test_publishing_resumes_after_janus_restarts(janus):
    """Janus goes away and comes back: the publisher publishes again by itself."""
    feeder = Feeder()

    async def scenario():
        published = publisher(janus, feeder)
        published.start()
        published.set_wanted({'cam'})
        try:
            await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
            first_id = published.feeds['cam'].feed_id
            await asyncio.get_running_loop().run_in_executor(None, janus.stop)
            await wait_until(lambda: not published.feeds['cam'].published, 20,
                             'the publisher notices Janus is gone')
            await asyncio.get_running_loop().run_in_executor(None, janus.start)
            await wait_until(lambda: published.feeds['cam'].published, 30,
                             'published again after the restart')
            assert published.feeds['cam'].publishes == 2
            await a_viewer_gets_frames(janus, published.viewer_access('cam', 'page'), 10,
                                       'a viewer after the restart')
            print(f'feed {first_id} before the restart, {published.feeds["cam"].feed_id} after')
        finally:
            await published.stop()

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()


def test_publishes_only_while_sfu_viewers_watch(janus):
    """sfu_watch starts publishing; after the last viewer leaves, the linger, then nothing."""
    from video_bridge.net.sfu import SfuService
    feeder = Feeder()
    sent = []

    async def participants():
        viewer = JanusViewer(janus.url)
        try:
            handle = await viewer.session(sfu.room_grant(janus.token_secret, ROOM,
                                                         time.time()).token)
            data, _ = await viewer.janus.message(handle, {'request': 'listparticipants',
                                                          'room': ROOM})
            return [p for p in data['participants'] if p.get('publisher')]
        finally:
            await viewer.close()

    async def allowed_list():
        viewer = JanusViewer(janus.url)
        try:
            handle = await viewer.session(sfu.room_grant(janus.token_secret, ROOM,
                                                         time.time()).token)
            data, _ = await viewer.janus.message(handle, {
                'request': 'allowed', 'room': ROOM, 'secret': janus.room_secret,
                'action': 'add', 'allowed': []})
            return data['allowed']
        finally:
            await viewer.close()

    async def scenario():
        published = publisher(janus, feeder)
        service = SfuService(published, feeder.hub, lambda cid, m: sent.append((cid, m)),
                             sfu.SfuWatchers(ttl=30.0, linger=1.0))
        service.start()
        try:
            assert await participants() == []
            service.handle('page', None, {'type': 'sfu_watch', 'id': 1, 'stream': 'cam'})
            assert sent[-1][1]['type'] == 'sfu_access' and sent[-1][1]['token']
            await wait_until(lambda: 'cam' in published.feeds and
                             published.feeds['cam'].published, 20, 'published')
            assert len(await participants()) == 1
            service.handle('page', None, {'type': 'sfu_watch', 'id': 2, 'stream': 'nope'})
            assert sent[-1][1]['code'] == 'unknown_stream'
            service.handle('other', None, {'type': 'sfu_watch', 'id': 3, 'stream': 'cam'})
            service.handle('other', None, {'type': 'sfu_leave', 'id': 4})
            assert sent[-1] == ('other', {'type': 'sfu_left', 'id': 4})
            assert service.watchers.watchers('cam') == 1
            service.handle('page', None, {'type': 'sfu_watch', 'id': 5, 'stream': 'cam'})
            service.disconnect('page')                # the page's control session ended
            assert 'cam' in published.feeds           # the linger: still published
            await wait_until(lambda: 'cam' not in published.feeds, 5, 'publishing stopped')
            for _ in range(50):                       # Janus forgets the publisher at once
                if not await participants():
                    break
                await asyncio.sleep(0.1)              # a poll interval
            assert await participants() == []
            assert feeder.stream.counters().video_encoders == 0   # the encoder is gone too
            assert await allowed_list() == []   # the robot took its token off the list
        finally:
            await service.stop()

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()


def sfu_parameters(janus, tmp_path) -> dict:
    """bridge_node's SFU parameters, its secrets in files (mode 0600)."""
    parameters = {'sfu_janus_url': janus.url, 'sfu_room': ROOM}
    for name, value in (('sfu_token_secret_file', janus.token_secret),
                        ('sfu_room_secret_file', janus.room_secret),
                        ('sfu_room_pin_file', janus.pin)):
        path = tmp_path / name
        path.write_text(value + '\n')
        path.chmod(0o600)
        parameters[name] = str(path)
    return parameters


def test_bridge_node_publishes_to_janus_for_pages_that_may_watch(ros, start_bridge, janus,
                                                                 tmp_path):
    """The real bridge_node: sfu_watch on /control with the token gets Janus tokens and the
    stream is published; a page without the robot's token gets no Janus token."""
    from conftest import FramePublisher
    import websockets
    bridge = start_bridge(token='robot-token', **sfu_parameters(janus, tmp_path))

    async def ask(ws, message):
        await ws.send(json.dumps(message))
        async with asyncio.timeout(10):
            while True:
                reply = json.loads(await ws.recv())
                if reply.get('id') == message['id']:
                    return reply

    async def scenario():
        async with websockets.connect(f'{bridge.ws}/control') as stranger:
            try:
                reply = await ask(stranger, {'type': 'sfu_watch', 'id': 1, 'stream': 'camera'})
            except websockets.ConnectionClosed:
                reply = None
            # watching needs the token (view_requires_token): /control is closed to it
            assert reply is None, reply
        async with websockets.connect(f'{bridge.ws}/control?token=robot-token') as page:
            access = await ask(page, {'type': 'sfu_watch', 'id': 2, 'stream': 'camera'})
            assert access['type'] == 'sfu_access' and access['room'] == ROOM, access
            assert sfu.read_token(access['token'], janus.token_secret, time.time())
            for _ in range(100):                  # the heartbeat: until the feed is up
                if access.get('feed'):
                    break
                await asyncio.sleep(0.2)          # the page's heartbeat interval, shortened
                access = await ask(page, {'type': 'sfu_watch', 'id': 3, 'stream': 'camera'})
            assert access.get('feed'), access
            await a_viewer_gets_frames(janus, access, 15, 'frames through Janus')

    with FramePublisher(ros.node, '/camera/image_raw', width=320, height=240):
        asyncio.run(scenario())


@contextlib.contextmanager
def link_down(janus_port: int):
    """Drop everything between the robot and Janus (API and media) in this namespace."""
    table = 'sfu_link_down'
    rules = f"""table inet {table} {{
        chain output {{
            type filter hook output priority 0; policy accept;
            tcp dport {janus_port} drop
            tcp sport {janus_port} drop
            ip saddr {ADDRESS} udp dport 1-65535 drop
        }}
    }}"""
    subprocess.run(['nft', '-f', '-'], input=rules, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(['nft', 'delete', 'table', 'inet', table], capture_output=True)


def test_publishing_resumes_after_the_link_comes_back(janus):
    """The robot's link to Janus drops (nothing passes): the publisher notices through its
    keepalive, backs off, and publishes again by itself once the link is back."""
    if shutil.which('nft') is None:
        pytest.skip('nft (nftables) is not installed: scripts/bootstrap installs it')
    feeder = Feeder()

    async def scenario():
        published = publisher(janus, feeder, keepalive=1.0, request_timeout=3.0)
        published.start()
        published.set_wanted({'cam'})
        try:
            await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
            with link_down(janus.port):
                await wait_until(lambda: not published.feeds['cam'].published, 15,
                                 'the publisher notices the link is gone')
                attempts = published.feeds['cam'].attempts
                await wait_until(lambda: published.feeds['cam'].attempts > attempts + 1, 20,
                                 'attempts while the link is down')
                assert not published.feeds['cam'].published
            await wait_until(lambda: published.feeds['cam'].published, 20,
                             'published again once the link is back')
            await a_viewer_gets_frames(janus, published.viewer_access('cam', 'page'), 10,
                                       'a viewer after the outage')
        finally:
            await published.stop()

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()


async def a_viewer_gets_frames(janus, access, frames: int, what: str):
    """A viewer through Janus with ``access`` gets ``frames`` frames within 20 s, then leaves."""
    viewer = JanusViewer(janus.url)
    try:
        await viewer.watch(access)
        await wait_until(lambda: viewer.frames >= frames, 20, what)
    finally:
        await viewer.close()


def busy_picture(width=640, height=480, count=8):
    """Pictures that cost the encoder its bit rate (noise moving over a gradient)."""
    import numpy as np
    from video_bridge.core.streams import SourceImage
    rng = np.random.default_rng(7)
    base = np.zeros((height, width, 3), np.uint8)
    base[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)
    frames = []
    for index in range(count):
        frame = base.copy()
        frame[::2, ::2] = rng.integers(0, 255, (height // 2, width // 2, 3), np.uint8)
        frames.append(frame.tobytes())

    def make(index):
        return SourceImage(stamp_sec=1000, stamp_nanosec=index * 33_333_333,
                           data=frames[index % count], encoding='bgr8', width=width,
                           height=height, step=width * 3, received_time=time.time())
    return make


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    with open(f'/proc/{pid}/stat') as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def janus_cpu_seconds(janus) -> float:
    return process_cpu_seconds(janus.process.proc.pid)


def test_uplink_stays_one_stream_from_1_to_20_viewers(janus):
    """640x480 at the top layer: the robot's uplink at 1, 5 and 20 viewers through Janus
    (viewers count frames without decoding), every viewer's frame rate, Janus's CPU."""
    feeder = Feeder(busy_picture())

    async def scenario():
        published = publisher(janus, feeder)
        published.start()
        published.set_wanted({'cam'})
        viewers = []
        rows = []
        try:
            await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
            feed = published.feeds['cam']
            for target in (1, 5, 20):
                while len(viewers) < target:
                    viewer = JanusViewer(janus.url)
                    viewers.append(viewer)
                    await viewer.watch(published.viewer_access('cam', f'p{len(viewers)}'),
                                       decode=False)
                await wait_until(lambda: all(v.frames >= 30 for v in viewers), 40,
                                 f'{target} viewers get frames')
                frames = [v.frames for v in viewers]
                cpu, started = janus_cpu_seconds(janus), time.monotonic()
                rate = await uplink_rate(feed, 5.0)
                elapsed = time.monotonic() - started
                fps = [(v.frames - f) / elapsed for v, f in zip(viewers, frames)]
                janus_cpu = (janus_cpu_seconds(janus) - cpu) / elapsed
                rows.append((target, rate, min(fps), janus_cpu))
                print(f'{target:3d} viewers: robot uplink {rate / 1000:5.0f} kbit/s, '
                      f'slowest viewer {min(fps):4.1f} fps, Janus {janus_cpu * 100:4.1f} % '
                      f'of a core, layer {feed.peer.chooser.current}')
            one = rows[0][1]
            for target, rate, slowest, _ in rows:
                assert rate < one * 1.15 + 50_000, (target, rate, one)
                assert slowest >= 20, (target, slowest)   # ~30 fps sent; a loaded CI machine
            assert feeder.stream.counters().video_encoders == 1
        finally:
            for viewer in viewers:
                await viewer.close()
            await published.stop()

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()


@pytest.fixture
def camera():
    """The real camera node in its own process (started before the lab's veth: it checks
    that it runs in a private namespace with loopback only)."""
    from conftest import camera_node
    with camera_node() as process:
        yield process


def test_the_drivers_direct_video_and_commands_are_unchanged_while_sfu_viewers_watch(
        cmd_vel, start_bridge, camera, janus, tmp_path):
    """The real bridge_node and camera_node: a driver on the direct peer, then one and five
    observers through Janus. The driver's frame rate stays, its commands still reach
    cmd_vel, and bridge_node's CPU does not grow with the observers."""
    from support.webrtc_support import AiortcViewer, Control, session
    bridge = start_bridge(token='robot-token', webrtc_host_addresses=[ADDRESS],
                          **sfu_parameters(janus, tmp_path))
    cmd_vel.wait_publisher()

    direct_frames = []

    def frames_in() -> int:
        """Frames the bridge received from the camera so far (/api/streams)."""
        import urllib.request
        with urllib.request.urlopen(f'{bridge.http}/api/streams?token=robot-token',
                                    timeout=5) as reply:
            document = json.load(reply)
        return next(s['frames_in'] for s in document['streams'] if s['name'] == 'camera')

    async def direct_fps(viewer, seconds=3.0):
        """The driver's frames per second, and the share of the camera's it got."""
        loop = asyncio.get_running_loop()
        count, camera = len(direct_frames), await loop.run_in_executor(None, frames_in)
        started = time.monotonic()
        await asyncio.sleep(seconds)   # the measuring window
        got = len(direct_frames) - count
        camera = await loop.run_in_executor(None, frames_in) - camera
        return got / (time.monotonic() - started), got / max(camera, 1)

    async def drive(channel, control, speed):
        mark = cmd_vel.mark()
        channel.send(json.dumps({'type': 'velocity', 'id': f'v{speed}',
                                 'linear': {'x': speed}}))
        await control.wait('ack', f'v{speed}')
        await wait_until(lambda: any(abs(m[1] - speed) < 1e-6 for m in cmd_vel.since(mark)),
                         5, f'cmd_vel {speed}')

    async def observe(index):
        control = Control(await session(bridge.ws, 'robot-token'))
        for attempt in range(100):                 # heartbeat until the feed is up
            await control.send(type='sfu_watch', id=attempt, stream='camera')
            access = await control.wait('sfu_access', attempt)
            if access.get('feed'):
                break
            await asyncio.sleep(0.2)               # the page's heartbeat, shortened
        viewer = JanusViewer(janus.url)
        await viewer.watch(access, decode=False)
        return control, viewer

    async def scenario():
        driver = Control(await session(bridge.ws, 'robot-token'))
        direct = AiortcViewer()
        observers = []
        try:
            await driver.send(type='webrtc_start', id='s', stream='camera')
            offer = await driver.wait('webrtc_offer', 's')
            answer = await direct.answer(offer['sdp'])
            count_frames(direct.pc, lambda: direct_frames.append(time.monotonic()))
            await driver.send(type='webrtc_answer', id='a', sdp=answer)
            await wait_until(lambda: len(direct_frames) >= 30, 30, 'direct frames')
            await asyncio.wait_for(direct.channel_open.wait(), 10)
            direct.channel.send(json.dumps({'type': 'acquire', 'id': 'lock'}))
            await driver.wait('ack', 'lock')
            await drive(direct.channel, driver, 0.2)
            before, share_before = await direct_fps(direct)
            cpu = {}
            for count in (1, 5):
                while len(observers) < count:
                    observers.append(await observe(len(observers)))
                await wait_until(lambda: all(v.frames >= 30 for _, v in observers), 30,
                                 f'{count} observers get frames through Janus')
                started = process_cpu_seconds(bridge.process.proc.pid), time.monotonic()
                after, share = await direct_fps(direct)
                cpu[count] = (process_cpu_seconds(bridge.process.proc.pid) - started[0]) / \
                    (time.monotonic() - started[1])
                print(f'{count} SFU viewers: driver direct {after:.1f} fps, {share:.0%} of '
                      f"the camera's frames (alone {before:.1f} fps, {share_before:.0%}), "
                      f'bridge_node {cpu[count] * 100:.0f} % of a core')
                # the camera's own rate moves with the shared machine's load: what must not
                # drop is the share of its frames the driver gets
                assert share >= min(share_before, 1.0) - 0.15, (share_before, share)
            await drive(direct.channel, driver, 0.3)
            # the robot's CPU does not grow with SFU viewers (loosely: a shared machine)
            assert cpu[5] < cpu[1] * 1.3 + 0.05, cpu
        finally:
            for control, viewer in observers:
                await viewer.close()
                await control.socket.close()
            await direct.close()
            await driver.socket.close()

    asyncio.run(scenario())


def test_publishing_outlives_its_tokens(janus):
    """Janus checks the session token on every request, keepalives too: a publication lasts
    longer than any one token (sfu_token_ttl), without renegotiating."""
    feeder = Feeder()

    async def scenario():
        published = publisher(janus, feeder, token_ttl=2.0, keepalive=0.5)
        published.start()
        published.set_wanted({'cam'})
        try:
            await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
            await asyncio.sleep(4.0)   # a window two token lifetimes long (keepalives in it)
            feed = published.feeds['cam']
            assert feed.published and feed.publishes == 1 and feed.attempts == 1, \
                published.counters()
            await a_viewer_gets_frames(janus, published.viewer_access('cam', 'page'), 10,
                                       'frames after 4 s')
        finally:
            await published.stop()

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()


def test_a_second_node_gets_the_robots_feed_from_the_first(janus):
    """Janus 1.1's remote publishers: node A forwards the robot's feed to node B (plain RTP,
    with RTCP back for PLIs); a viewer on B watches; the robot still sends one stream."""
    second = Janus(rtp_ports='41000-41999')
    feeder = Feeder()

    async def request(node, body):
        viewer = JanusViewer(node.url)
        try:
            handle = await viewer.session(sfu.session_token(node.token_secret, time.time()))
            data, _ = await viewer.janus.message(handle, body)
            return data
        finally:
            await viewer.close()

    async def scenario():
        # VP8: 1.1.2 offers a remote publisher's H.264 without its fmtp line, which a
        # browser (and aiortc) cannot match
        published = publisher(janus, feeder, codec='vp8')
        published.start()
        published.set_wanted({'cam'})
        viewers = []
        try:
            await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
            feed = published.feeds['cam']
            one_node = await uplink_rate(feed, 3.0)
            # on B: a remote publisher waiting for the feed; on A: forward it there
            remote = await request(second, {
                'request': 'add_remote_publisher', 'room': ROOM, 'secret': second.room_secret,
                'admin_key': ADMIN_KEY, 'display': 'car1 via node A', 'iface': ADDRESS,
                'streams': [{'type': 'video', 'mid': '0', 'mindex': 0, 'codec': 'vp8'}]})
            await request(janus, {
                'request': 'publish_remotely', 'room': ROOM, 'publisher_id': feed.feed_id,
                'secret': janus.room_secret, 'admin_key': ADMIN_KEY, 'remote_id': 'node-b',
                'host': ADDRESS, 'port': remote['port'], 'rtcp_port': remote['rtcp_port']})
            on_a = JanusViewer(janus.url)
            viewers.append(on_a)
            await on_a.watch(published.viewer_access('cam', 'page-a'))
            on_b = JanusViewer(second.url)
            viewers.append(on_b)
            access = dict(published.viewer_access('cam', 'page-b'), feed=remote['id'])
            await on_b.watch(access)
            await wait_until(lambda: on_a.frames >= 30 and on_b.frames >= 30, 30,
                             'viewers on both nodes get frames')
            two_nodes = await uplink_rate(feed, 3.0)
            print(f'robot uplink: {one_node / 1000:.0f} kbit/s to one node, '
                  f'{two_nodes / 1000:.0f} kbit/s with a viewer on each of two nodes')
            assert two_nodes < one_node * 1.25 + 50_000
        finally:
            for viewer in viewers:
                await viewer.close()
            await published.stop()

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()
        second.close()
