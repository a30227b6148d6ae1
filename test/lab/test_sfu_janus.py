"""The SFU path with the real Janus (Debian's janus 1.1): the bridge's publisher dials out to
it over WebRTC, aiortc viewers subscribe through the Janus API with tokens the bridge minted.

Janus runs inside the test's private namespace (scripts/test), from the configs in
deploy/cloud/ with test secrets, and is stopped by its PID however the test ends. The lab's
pieces (Janus, nginx, the fed hub, the viewers, the veth pair Janus gathers candidates on) are
in test/support/janus_lab.py, which bench/sfu_bench.py uses too.
"""

import asyncio
import contextlib
import json
import shutil
import subprocess
import time

import pytest
from support.janus_lab import (ADDRESS, busy_h264, Feeder, forward_feed, Forwarder, Janus,
                               JanusEdge, JanusViewer, lab_interface, media_ports, OTHER_ROOM,
                               publisher, remote_publishers, ROOM, secret_files, uplink_rate)
from support.waiting import wait_for
from support.webrtc_support import wait_until
from video_bridge.core import sfu
from video_bridge.core.streams import H264

pytest.importorskip('aiortc')


@pytest.fixture
def janus():
    with lab_interface():
        server = Janus()
        try:
            yield server
        finally:
            server.close()


@contextlib.asynccontextmanager
async def publishing(janus, feeder):
    """The robot's publisher for the feeder's stream, once it publishes, and a list of viewers
    (closed at the end, then the publisher stopped)."""
    published = publisher(janus, feeder)
    published.start()
    published.set_wanted({'cam'})
    viewers = []
    try:
        await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
        yield published, viewers
    finally:
        for viewer in viewers:
            await viewer.close()
        await published.stop()


async def watch(url, published, viewers, pages):
    """One viewer per page name, watching the robot's feed through ``url``."""
    for page in pages:
        viewer = JanusViewer(url)
        viewers.append(viewer)
        await viewer.watch(published.viewer_access('cam', page))


def test_one_stream_up_for_one_or_five_viewers(janus):
    """Five viewers through Janus cost the robot's uplink what one does; one encoder.

    The viewers come in through nginx with deploy/cloud's location, as pages would.
    """
    edge = JanusEdge(janus)
    feeder = Feeder()

    async def scenario():
        async with publishing(janus, feeder) as (published, viewers):
            feed = published.feeds['cam']
            access = published.viewer_access('cam', 'page-1')
            assert access['feed'] == feed.feed_id and access['room'] == ROOM
            first = JanusViewer(edge.url)
            viewers.append(first)
            await first.watch(access)
            await wait_until(lambda: first.frames >= 30, 20, 'the first viewer gets frames')
            one = await uplink_rate(feed, 3.0)
            await watch(edge.url, published, viewers, [f'page-{i}' for i in range(2, 6)])
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

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()
        edge.close()


def test_an_h264_source_goes_up_undecoded_for_three_viewers(janus):
    """A robot whose camera already encodes H.264: the units go to Janus as they are (no
    encoder, no decoder in the robot), and every viewer through Janus gets them."""
    feeder = Feeder(busy_h264(320, 240), kind=H264)

    async def scenario():
        async with publishing(janus, feeder) as (published, viewers):
            await watch(janus.url, published, viewers, ['page-0', 'page-1', 'page-2'])
            await wait_until(lambda: all(v.frames >= 30 for v in viewers), 30,
                             'three viewers get frames')
            counters = feeder.stream.counters()
            assert (counters.video_encoders, counters.video_decoders) == (0, 0), counters
            assert feeder.stream.counters().frames_malformed == 0

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()


def test_janus_refuses_what_the_bridge_did_not_mint(janus):
    """No token, a forged or expired one, another room's, a wrong pin; viewers cannot publish.

    Two robots on one Janus (deploy/cloud's two rooms, each its own secret, pin and tokens):
    each robot's viewer watches its own robot, and a viewer's access minted for robot A is
    refused in robot B's room, even with B's pin."""
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
        wrong_pin = dict(subscribe, pin='nope', token=grant.room_token)
        assert (await refused(good, wrong_pin)).code == 433
        # the robot's own session puts its token on the room's allowed list; a viewer's
        # token, good for the room, is not on it and may not publish. A second robot
        # publishes into its own room with its own secret and pin.
        feeder = Feeder()
        published = publisher(janus, feeder)
        robot_b = publisher(janus, feeder, room=OTHER_ROOM, room_secret=janus.other_room_secret,
                            room_pin=janus.other_pin)
        viewers = []
        for robot in (published, robot_b):
            robot.start()
            robot.set_wanted({'cam'})
        try:
            await wait_until(lambda: published.feeds['cam'].published and
                             robot_b.feeds['cam'].published, 20, 'both robots published')
            as_publisher = {'request': 'join', 'ptype': 'publisher', 'room': ROOM,
                            'pin': janus.pin, 'token': grant.room_token}
            assert 'allowed' in (await refused(good, as_publisher)).reason
            access_a = published.viewer_access('cam', 'page-a')
            access_b = robot_b.viewer_access('cam', 'page-b')
            assert access_b['room'] == OTHER_ROOM and access_b['pin'] == janus.other_pin
            for access in (access_a, access_b):   # each robot's viewer watches its robot
                viewer = JanusViewer(janus.url)
                viewers.append(viewer)
                await viewer.watch(access, decode=False)
            await wait_until(lambda: all(v.frames >= 10 for v in viewers), 15,
                             "each robot's viewer gets frames")
            # robot A's viewer access in robot B's room: refused, with A's pin or B's
            for pin in (janus.pin, janus.other_pin):
                into_b = dict(subscribe, room=OTHER_ROOM, pin=pin, token=access_a['room_token'],
                              streams=[{'feed': access_b['feed']}])
                assert 'wrong token' in (await refused(access_a['token'], into_b)).reason
        finally:
            for viewer in viewers:
                await viewer.close()
            for robot in (published, robot_b):
                await robot.stop()
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

    async def polled(fetch, good, tries=50):
        """What ``fetch()`` answers once ``good`` holds (polled every 0.1 s, ``tries`` times)."""
        for _ in range(tries):
            found = await fetch()
            if good(found):
                break
            await asyncio.sleep(0.1)              # a poll interval
        return found

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
            # Janus lists a publisher once its PeerConnection is up, a moment after it answered
            assert len(await polled(participants, lambda found: len(found) == 1)) == 1
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
            assert await polled(participants, lambda found: found == []) == []
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
    return {'sfu_janus_url': janus.url, 'sfu_room': ROOM, **secret_files(janus, tmp_path)}


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

    # Small frames: this test's ROS participant began before the Janus lab's veth existed and
    # bridge_node's after, so Fast DDS may take them for two hosts and skip shared memory. Over
    # UDP a best-effort frame larger than one datagram is lost whole with any fragment (a
    # 320x240 frame reached the bridge 5-12 times in 121); 160x120 fits one datagram.
    with FramePublisher(ros.node, '/camera/image_raw', width=160, height=120):
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


@pytest.fixture
def camera():
    """The real camera node in its own process (started before the lab's veth: it checks
    that it runs in a private namespace with loopback only)."""
    from conftest import camera_node
    with camera_node() as process:
        yield process


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


def test_nginx_spreads_viewers_over_two_nodes(janus):
    """deploy/cloud's upstream: viewers through nginx's /janus-view land on node A or node B
    (B fed by A with the feed's own id), all get frames, the robot still sends one stream."""
    second = Janus(rtp_ports='41000-41999')
    edge = JanusEdge(janus, spread=(janus, second))
    feeder = Feeder()

    async def scenario():
        published = publisher(janus, feeder, codec='vp8')   # see the test below: VP8
        published.start()
        published.set_wanted({'cam'})
        viewers = []
        try:
            await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
            feed = published.feeds['cam']
            await forward_feed(janus, second, feed.feed_id, 'vp8')
            first = JanusViewer(edge.viewers_url)
            viewers.append(first)
            await first.watch(published.viewer_access('cam', 'page-0'), decode=False)
            await wait_until(lambda: first.frames >= 15, 20, 'the first viewer gets frames')
            one = await uplink_rate(feed, 2.0)
            for index in range(1, 4):
                viewer = JanusViewer(edge.viewers_url)
                viewers.append(viewer)
                await viewer.watch(published.viewer_access('cam', f'page-{index}'),
                                   decode=False)
            await wait_until(lambda: all(v.frames >= 15 for v in viewers), 20,
                             'four viewers get frames')
            four = await uplink_rate(feed, 2.0)
            nodes = ['A' if all(40000 <= p < 41000 for p in media_ports(v)) else
                     'B' if all(41000 <= p < 42000 for p in media_ports(v)) else '?'
                     for v in viewers]
            print(f'viewers landed on {nodes}; robot uplink {one / 1000:.0f} kbit/s for one '
                  f'viewer, {four / 1000:.0f} kbit/s for four on two nodes')
            assert sorted(nodes) == ['A', 'A', 'B', 'B'], nodes   # least_conn: two each
            assert four < one * 1.25 + 50_000, (one, four)
        finally:
            for viewer in viewers:
                await viewer.close()
            await published.stop()

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()
        edge.close()
        second.close()


async def until_remote_publishers(node, wanted: set, timeout: float, what: str) -> float:
    """Wait until ``node``'s remote publishers are ``wanted``; return how long it took."""
    started = time.monotonic()
    while (have := await remote_publishers(node)) != wanted:
        if time.monotonic() - started > timeout:
            pytest.fail(f'timed out after {timeout} s waiting for {what}: {have}')
        await asyncio.sleep(0.1)   # the poll period of this wait, not a synchronisation
    return time.monotonic() - started


def test_the_forwarder_keeps_the_robots_feed_on_a_second_node(janus):
    """The cloud's forwarder (deploy/cloud/sfu-forwarder.yaml's program, its own process)
    gives node B the robot's feed from node A (Janus 1.1's remote publishers: plain RTP, RTCP
    back for PLIs) with no request made by hand, under the feed's own id: a viewer on B
    watches. The robot publishes again (a new feed id): B gets the new feed and drops the
    old one, a new viewer on B watches. B restarts, then A: the forwarder reconnects and feeds
    B again. The robot stops: B's remote publisher goes."""
    second = Janus(rtp_ports='41000-41999')
    feeder = Feeder()
    forwarder = None

    async def watch_on_b(published, what):
        viewer = JanusViewer(second.url)
        viewers.append(viewer)
        await viewer.watch(published.viewer_access('cam', 'page-b'), decode=False)
        await wait_until(lambda: viewer.frames >= 15, 15, what)
        return viewer.first_frame_at

    viewers = []

    async def scenario():
        # VP8: 1.1.2 offers a remote publisher's H.264 without its fmtp line, which a
        # browser (and aiortc) cannot match
        published = publisher(janus, feeder, codec='vp8')
        published.start()
        published.set_wanted({'cam'})
        try:
            await wait_until(lambda: published.feeds['cam'].published, 20, 'published')
            first = published.feeds['cam'].feed_id
            took = await until_remote_publishers(second, {first}, 10, 'B gets the feed')
            await watch_on_b(published, 'a viewer on node B gets frames')
            # the robot publishes again (as after a bridge or link restart): a new feed id
            published.set_wanted(set())
            await wait_until(lambda: 'cam' not in published.feeds, 10, 'unpublished')
            published.set_wanted({'cam'})
            await wait_until(lambda: 'cam' in published.feeds and
                             published.feeds['cam'].published, 20, 'published again')
            again, republished_at = published.feeds['cam'].feed_id, time.monotonic()
            assert again != first
            relinked = await until_remote_publishers(second, {again}, 10,
                                                     'B gets the new feed, not the old')
            seen = await watch_on_b(published, 'a new viewer on B gets the new feed')
            back = seen - republished_at
            # node B restarts: the forwarder reconnects (backoff 1-2 s here) and feeds it
            await asyncio.get_running_loop().run_in_executor(None, second.stop)
            restarted_at = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, second.start)
            await until_remote_publishers(second, {again}, 15, 'B fed again after its restart')
            await watch_on_b(published, 'a viewer on the restarted B gets frames')
            after_restart = time.monotonic() - restarted_at
            # the origin restarts: the robot publishes anew there (its own backoff), the
            # forwarder reconnects, B gets the new feed and drops the one that died with A
            await asyncio.get_running_loop().run_in_executor(None, janus.stop)
            origin_restarted_at = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, janus.start)
            await wait_until(lambda: 'cam' in published.feeds and
                             published.feeds['cam'].published and
                             published.feeds['cam'].feed_id != again, 30,
                             'published again after the origin restarted')
            third = published.feeds['cam'].feed_id
            await until_remote_publishers(second, {third}, 15,
                                          'B gets the feed the robot published after A restarted')
            await watch_on_b(published, 'a viewer on B after the origin restarted')
            after_origin = time.monotonic() - origin_restarted_at
            await published.stop()
            gone = await until_remote_publishers(second, set(), 10,
                                                 "the robot's feed gone from B")
            print(f'B had the feed {took:.2f} s after the publish; after a republish, B had '
                  f'it in {relinked:.2f} s and a viewer there its first frame in {back:.2f} '
                  f's; B restarted and watched again in {after_restart:.2f} s, A in '
                  f'{after_origin:.2f} s; the feed left B {gone:.2f} s after the robot stopped')
            # bound: the forwarder's round (0.5 s here, 1 s deployed), a probe and two
            # requests, then the viewer's own subscription, ICE, DTLS and first keyframe
            assert back < 5.0, back
        finally:
            for viewer in viewers:
                await viewer.close()
            await published.stop()

    try:
        forwarder = Forwarder(janus, [second], rooms=(
            (ROOM, janus.room_secret, janus.pin),
            (OTHER_ROOM, janus.other_room_secret, janus.other_pin)))
        asyncio.run(scenario())
        assert 'Traceback' not in forwarder.process.output()
    finally:
        if forwarder is not None:
            forwarder.close()
        feeder.close()
        second.close()


def test_the_page_watches_through_janus_and_the_driver_directly(cmd_vel, start_bridge, camera,
                                                                janus, tmp_path, request):
    """Headless Chromium with the real bridge_node, camera_node, Janus and nginx in front of
    it (the pages' way to Janus, sfu_viewer_url): an observer's page watches through Janus
    (janus.js, decoded frames, no direct peer on the robot); a page that drives takes the
    direct path and its commands reach cmd_vel; the selector moves the observer to the direct
    path and back; when Janus goes away the observer falls back to the direct path, and
    watches through Janus again once it is back."""
    import urllib.request
    from conftest import chromium, WEBRTC_CHROMIUM_ARGS
    from support.page_probes import RECEIVER_STATS
    edge = JanusEdge(janus)                      # pages reach Janus through nginx, as deployed
    request.addfinalizer(edge.close)
    bridge = start_bridge(token='robot-token', webrtc_host_addresses=[ADDRESS],
                          sfu_viewer_url=edge.url, sfu_token_ttl=30.0,
                          **sfu_parameters(janus, tmp_path))
    cmd_vel.wait_publisher()
    sfu_stats = RECEIVER_STATS.replace('videoBridge.webrtc.pc', 'videoBridge.sfu.pc')
    assert sfu_stats != RECEIVER_STATS

    def streams() -> dict:
        with urllib.request.urlopen(f'{bridge.http}/api/streams?token=robot-token',
                                    timeout=5) as reply:
            return json.load(reply)

    assert [s['sfu'] for s in streams()['streams'] if s['name'] == 'camera'] == [True]

    def via(page, value, timeout=20000):
        page.wait_for_function(
            f"document.getElementById('stat-transport').dataset.value === '{value}'",
            timeout=timeout)

    def decoded(page, frames):
        """Chromium decoded ``frames`` more frames of the SFU subscription (getStats)."""
        start = page.evaluate(sfu_stats).get('framesDecoded', 0)
        wait_for(lambda: page.evaluate(sfu_stats).get('framesDecoded', 0) >= start + frames,
                 15, f'{frames} frames decoded through Janus')

    with chromium(WEBRTC_CHROMIUM_ARGS) as browser:
        pages = []

        def open_page():
            page = browser.new_context(viewport={'width': 1280, 'height': 800}).new_page()
            page.errors = []
            page.on('pageerror', lambda error: page.errors.append(str(error)))
            page.goto(f'{bridge.http}/?token=robot-token')
            pages.append(page)
            return page

        observer = open_page()
        via(observer, 'sfu')
        decoded(observer, 30)
        assert observer.evaluate('window.videoBridge.webrtc.status') == 'off'
        assert observer.locator('#path-picker').is_visible()
        assert observer.locator('#sfu-video').is_visible()
        assert streams()['webrtc']['peers'] == 0, 'the observer has no peer on the robot'

        # A fresher token than the session's (30 s tokens: at once): a new subscription is
        # made, and the old one destroyed only once the new one has video, without a gap.
        subscribed = observer.evaluate('window.videoBridge.sfu.subscriptions')
        resubscribed = f"""() => {{ const sfu = window.videoBridge.sfu;
            if (sfu.subscriptions === {subscribed}) sfu.watch();   // the heartbeat, now
            return sfu.subscriptions > {subscribed} && sfu.next === null; }}"""
        wait_for(lambda: observer.evaluate(resubscribed), 15,
                 'a new subscription with the fresher token')
        shown = observer.evaluate('window.videoBridge.sfu.displayed')
        observer.wait_for_function(f'window.videoBridge.sfu.displayed >= {shown + 15}')
        assert observer.evaluate('window.videoBridge.sfu.failures') == 0
        assert observer.evaluate('window.videoBridge.sfu.status') == 'playing'

        driver = open_page()
        via(driver, 'sfu')
        mark = cmd_vel.mark()
        driver.keyboard.down('ArrowUp')          # takes the lock: the driver goes direct
        cmd_vel.wait_last(mark, 0.25, 0.0, 'the driver drives')
        via(driver, 'webrtc')
        driver.wait_for_function("window.videoBridge.sfu.status === 'off'", timeout=10000)
        driver.keyboard.up('ArrowUp')
        cmd_vel.wait_last(mark, 0.0, 0.0, 'the driver stops')
        assert streams()['webrtc']['peers'] == 1, 'only the driver has a peer on the robot'
        decoded(observer, 15)                    # the observer watched on meanwhile

        observer.select_option('#path', 'direct')
        via(observer, 'webrtc')
        observer.wait_for_function("window.videoBridge.sfu.status === 'off'", timeout=10000)
        observer.select_option('#path', 'sfu')
        via(observer, 'sfu')
        observer.wait_for_function("window.videoBridge.webrtc.status === 'off'", timeout=10000)
        decoded(observer, 15)

        observer.select_option('#path', 'auto')  # an observer: still through Janus
        janus.stop()                             # the SFU goes away: Auto falls back
        via(observer, 'webrtc')
        janus.start()                            # and comes back: so does the observer
        via(observer, 'sfu', timeout=40000)
        decoded(observer, 15)
        for page in pages:
            assert not page.errors, page.errors
