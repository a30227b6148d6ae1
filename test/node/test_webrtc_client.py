"""WebRTC through the real bridge_node with an aiortc client instead of a browser (fast): the
signalling on the authenticated /control websocket, video, and teleop over the data channel
into the same teleop core (limits, driver lock, stop when the channel closes)."""

import asyncio
import json
import re

from conftest import camera_node
import pytest
from support.webrtc_support import (AiortcViewer, Control, HOST_ADDRESS, host_address, session,
                                    wait_until)

pytest.importorskip('aiortc')
websockets = pytest.importorskip('websockets')


@pytest.fixture(scope='module')
def camera():
    with host_address(), camera_node() as process:
        yield process


def test_signalling_video_and_channel_teleop(start_bridge, camera, cmd_vel):
    bridge = start_bridge(webrtc_host_addresses=[HOST_ADDRESS], max_linear=0.3)
    cmd_vel.wait_publisher()

    async def scenario():
        async with await session(bridge.ws) as socket:
            control = Control(socket)
            hello = await control.wait('hello')
            assert hello['protocol'] == 2
            await control.send(type='webrtc_config', id=1)
            config = await control.wait('webrtc_config', 1)
            assert config['enabled'] and 'h264' in config['codecs']
            await control.send(type='webrtc_start', id=2, stream='camera', codecs=['vp8'])
            offer = await control.wait('webrtc_offer', 2)
            assert offer['codec'] == 'vp8' and HOST_ADDRESS in offer['sdp']
            viewer = AiortcViewer()
            try:
                answer = await viewer.answer(offer['sdp'])
                await control.send(type='webrtc_answer', id=3, sdp=answer)
                await wait_until(lambda: len(viewer.frames) >= 30, 30, '30 decoded frames')
                assert (viewer.frames[-1].width, viewer.frames[-1].height) == (640, 480)
                await asyncio.wait_for(viewer.channel_open.wait(), 10)
                channel = viewer.channel
                mark = cmd_vel.mark()
                channel.send(json.dumps({'type': 'acquire', 'id': 'a'}))
                await control.wait('ack', 'a')
                for _ in range(10):
                    channel.send(json.dumps({'type': 'velocity', 'id': 'v',
                                             'linear': {'x': 5.0}}))
                    await asyncio.sleep(0.05)  # a driver's command rate, not a synchronisation
                ack = await control.wait('ack', 'v')
                assert ack['clamped'], 'the same limits as on the websocket'
                await wait_until(lambda: any(abs(m[1] - 0.3) < 1e-6
                                             for m in cmd_vel.since(mark)), 5, 'clamped 0.3')
                channel.send(json.dumps({'type': 'webrtc_start', 'stream': 'camera'}))
                error = await control.wait('webrtc_error')
                assert error['code'] == 'bad_channel_message'
                await viewer.close()     # the channel goes away while moving
                await wait_until(lambda: cmd_vel.last(mark) and cmd_vel.last(mark)[1] == 0.0,
                                 5, 'zero when the channel closes')
            finally:
                await viewer.close()

    asyncio.run(scenario())


def test_watching_needs_the_token_when_the_bridge_says_so(start_bridge, camera, cmd_vel,
                                                          tmp_path):
    token_file = tmp_path / 'token'
    token_file.write_text('sesame\n')
    bridge = start_bridge(webrtc_host_addresses=[HOST_ADDRESS], token_file=str(token_file),
                          view_requires_token=True)

    async def scenario():
        with pytest.raises(Exception):
            async with await session(bridge.ws) as socket:
                control = Control(socket)
                await control.wait('hello', timeout=5)
        async with await session(bridge.ws, 'sesame') as socket:
            control = Control(socket)
            await control.wait('hello')
            await control.send(type='webrtc_start', id=1, stream='camera')
            assert (await control.wait('webrtc_offer', 1))['codec'] == 'h264'
            await control.send(type='webrtc_stop', id=2)
            await control.wait('webrtc_stopped', 2)

    asyncio.run(scenario())


async def start_peer(control, request_id):
    """webrtc_start and answer on one /control session; return its aiortc viewer."""
    await control.send(type='webrtc_start', id=request_id, stream='camera', codecs=['h264'])
    offer = await control.wait('webrtc_offer', request_id)
    viewer = AiortcViewer()
    await control.send(type='webrtc_answer', id=request_id + 1,
                       sdp=await viewer.answer(offer['sdp']))
    return viewer


def test_a_data_channel_flood_costs_the_flooder_its_session_not_the_bridge(start_bridge, camera,
                                                                           cmd_vel):
    # Binary junk on the data channel never reaches the teleop core, but it is counted as the
    # session's messages: the flooder is closed (4429) as a flood of commands would be, while
    # another viewer keeps its video and the bridge's memory stays put.
    from support.hostile_clients import rss_mb
    bridge = start_bridge(webrtc_host_addresses=[HOST_ADDRESS])
    pid = bridge.process.proc.pid

    async def scenario():
        async with await session(bridge.ws) as watch_socket, \
                await session(bridge.ws) as flood_socket:
            watcher, flooder = Control(watch_socket), Control(flood_socket)
            watching = await start_peer(watcher, 1)
            flooding = await start_peer(flooder, 1)
            try:
                await wait_until(lambda: len(watching.frames) >= 10
                                 and len(flooding.frames) >= 10, 30, 'both peers decoding')
                await asyncio.wait_for(flooding.channel_open.wait(), 10)
                rss_before, frames_before = rss_mb(pid), len(watching.frames)
                closed = asyncio.ensure_future(flood_socket.wait_closed())
                loop = asyncio.get_running_loop()
                deadline, sent = loop.time() + 20, 0
                while not closed.done() and sent < 20000 and loop.time() < deadline:
                    if flooding.channel.readyState != 'open':
                        break
                    if flooding.channel.bufferedAmount > 64 * 1024:
                        await asyncio.sleep(0.005)  # aiortc's SCTP still sending: pace it
                        continue
                    flooding.channel.send(b'\x00' * 512)
                    sent += 1
                    if sent % 20 == 0:
                        await asyncio.sleep(0)
                await asyncio.wait_for(closed, 10)
                assert flood_socket.close_code == 4429, (flood_socket.close_code, sent)
                assert sent < 5000, f'closed only after {sent} junk messages'
                during = len(watching.frames) - frames_before
                await wait_until(lambda: len(watching.frames) >= frames_before + during + 30,
                                 10, 'the watcher still decoding after the flood')
                assert rss_mb(pid) - rss_before < 30, (rss_before, rss_mb(pid))
                doc = json.loads(await asyncio.to_thread(_streams, bridge))
                assert doc['webrtc']['peers'] == 1, "the flooder's peer went with its session"
            finally:
                await watching.close()
                await flooding.close()

    asyncio.run(scenario())


def _streams(bridge):
    import urllib.request
    with urllib.request.urlopen(bridge.http + '/api/streams', timeout=5) as response:
        return response.read()


@pytest.fixture
def coturn_tls():
    from support.webrtc_support import Coturn
    # On 443, where networks that block UDP still let TLS out (free in this test namespace).
    server = Coturn(tls=True, tls_port=443)   # before the bridge, so it is stopped after it
    yield server
    server.stop()


def test_turn_over_tls_when_the_robot_may_only_speak_tls(coturn_tls, start_bridge, camera,
                                                         cmd_vel):
    # A robot on a network that lets only TLS out: its one ICE server is turns: (TCP + TLS),
    # and it offers no host candidate; video and the data channel still work through the relay.
    coturn = coturn_tls
    bridge = start_bridge(webrtc_host_addresses=['203.0.113.77'], ice_servers=[coturn.tls_url],
                          turn_secret_file=coturn.secret_file,
                          env={'SSL_CERT_FILE': coturn.cert})   # trust the test's certificate
    cmd_vel.wait_publisher()

    async def scenario():
        async with await session(bridge.ws) as socket:
            control = Control(socket)
            await control.send(type='webrtc_start', id=1, stream='camera', codecs=['h264'])
            offer = await control.wait('webrtc_offer', 1, timeout=20)
            candidates = [line for line in offer['sdp'].splitlines()
                          if line.startswith('a=candidate')]
            assert candidates and all(' typ relay' in line for line in candidates), candidates
            viewer = AiortcViewer()
            try:
                await control.send(type='webrtc_answer', id=2,
                                   sdp=await viewer.answer(offer['sdp']))
                await wait_until(lambda: len(viewer.frames) >= 30, 30,
                                 '30 frames relayed over TURN/TLS')
                await asyncio.wait_for(viewer.channel_open.wait(), 10)
                mark = cmd_vel.mark()
                viewer.channel.send(json.dumps({'type': 'acquire', 'id': 'a'}))
                await control.wait('ack', 'a')
                viewer.channel.send(json.dumps({'type': 'command', 'name': 'stop', 'id': 's'}))
                await control.wait('ack', 's')
                await wait_until(lambda: cmd_vel.since(mark), 5, 'a Twist from the channel')
            finally:
                await viewer.close()

    asyncio.run(scenario())
    log = coturn.output()   # the bridge's own allocation, over TLS
    assert re.search(r'username=<\d+:bridge-c\d+>.*method=TLSv1\.[23]', log), log[-3000:]
    assert coturn.allocations() >= 1, log[-3000:]


def test_an_untrusted_turn_certificate_is_named_not_hidden(coturn_tls, start_bridge, camera):
    # The same robot without the certificate in its trust store: TLS to the relay fails. aioice
    # drops the reason; the bridge says which server gave no relay candidate, and the page
    # gets a refusal it can fall back on (websocket JPEG) instead of a silent wait.
    bridge = start_bridge(webrtc_host_addresses=['203.0.113.77'],
                          ice_servers=[coturn_tls.tls_url],
                          turn_secret_file=coturn_tls.secret_file)

    async def scenario():
        async with await session(bridge.ws) as socket:
            control = Control(socket)
            await control.send(type='webrtc_start', id=1, stream='camera', codecs=['h264'])
            return await control.wait('webrtc_error', 1, timeout=20)

    error = asyncio.run(scenario())
    assert error['code'] == 'webrtc_unavailable' and 'TURN' in error['message'], error
    bridge.process.wait_output(f'no relay candidate from {coturn_tls.tls_url}')


def test_a_compressed_jpeg_topic_feeds_webrtc_too(ros, start_bridge, camera):
    # A camera that publishes only sensor_msgs/CompressedImage (JPEG): the bridge decodes it
    # once per frame for the shared H.264 encoder, and the peer decodes the camera's picture.
    from support.http_support import JpegPublisher
    bridge = start_bridge(webrtc_host_addresses=[HOST_ADDRESS],
                          **{'streams.camera.topic': '/wc/image/compressed',
                             'streams.camera.type': 'compressed'})

    async def scenario():
        async with await session(bridge.ws) as socket:
            viewer = await start_peer(Control(socket), 1)
            try:
                await wait_until(lambda: len(viewer.frames) >= 30, 30, '30 decoded frames')
                return viewer.frames[-1]
            finally:
                await viewer.close()

    with JpegPublisher(ros.node, '/wc/image/compressed') as publisher:
        frame = asyncio.run(scenario())
        assert publisher.count >= 30
    assert (frame.width, frame.height) == (320, 240), "the JPEG topic's own picture"
