"""An H.264 source through the real bridge_node: passed to WebRTC peers undecoded.

The topic carries what a robot's own encoder publishes (Isaac ROS, camera_node h264:=true):
sensor_msgs/CompressedImage with format "h264", one Annex B access unit per message, here
made by libx264 with a keyframe every second. What a user relies on: aiortc clients decode it
while the bridge runs no video encoder and no decoder, however many peers watch; a snapshot
(JPEG) of the same stream works through one decoder; a peer that joins mid-stream starts at a
keyframe; malformed units are counted by kind and logged once, and other peers keep playing.
"""

import asyncio
import json
import os
import threading
import urllib.request

from conftest import wait_for
import numpy as np
import pytest
from support.pictures import h264_loop
from support.webrtc_support import (AiortcViewer, Control, HOST_ADDRESS, host_address, session,
                                    wait_until)
from video_bridge.core import h264

pytest.importorskip('aiortc')
av = pytest.importorskip('av')

TOPIC = '/robot/image_raw/h264'
WIDTH, HEIGHT, FPS, GOP = 640, 480, 30, 30


def pattern(index):
    """A bar moving 8 px a frame over a flat background."""
    picture = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    picture[:, (index * 8) % WIDTH:(index * 8) % WIDTH + 24] = (40, 200, 250)
    return picture


def encode_loop(count=2 * GOP):
    """Units of a moving pattern, two GOPs (support.pictures.h264_loop)."""
    return h264_loop(pattern, count, WIDTH, HEIGHT, GOP, FPS)


class H264Publisher:
    """Publishes the units as CompressedImage (format h264) at FPS; can slip bad ones in."""

    def __init__(self, node, units):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage
        self.node, self.units, self._message = node, units, CompressedImage
        self.publisher = node.create_publisher(CompressedImage, TOPIC, qos_profile_sensor_data)
        self.keyframe_stamps = set()     # header.stamp (ns) of every keyframe published
        self.published = 0
        self.bad = []                    # bytes to publish next, instead of a good unit
        self.serialized = []             # whole messages (CDR bytes) to publish as they are
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.node.destroy_publisher(self.publisher)

    def inject(self, *units):
        with self._lock:
            self.bad.extend(units)

    def inject_serialized(self, *messages):
        with self._lock:
            self.serialized.extend(messages)

    def last_was_keyframe(self):
        return self.units[(self.published - 1) % len(self.units)][1]

    def _run(self):
        import time
        next_time = time.monotonic()
        index = 0
        while not self._stop.is_set():
            with self._lock:
                bad = self.bad.pop(0) if self.bad else None
                serialized = self.serialized.pop(0) if self.serialized else None
            if serialized is not None:   # in a frame's slot (depth 1: not overwritten at once)
                self.publisher.publish(serialized)    # rclpy publishes bytes as they are
                next_time += 1.0 / FPS
                self._stop.wait(max(0.0, next_time - time.monotonic()))  # pacing, not sync
                continue
            msg = self._message()
            msg.header.stamp = self.node.get_clock().now().to_msg()
            msg.header.frame_id = 'camera'
            msg.format = 'h264'
            if bad is not None:
                msg.data = bad
            else:
                data, key = self.units[index % len(self.units)]
                msg.data = data
                if key:
                    self.keyframe_stamps.add(msg.header.stamp.sec * 10**9
                                             + msg.header.stamp.nanosec)
                index += 1
                self.published = index
            self.publisher.publish(msg)
            next_time += 1.0 / FPS
            self._stop.wait(max(0.0, next_time - time.monotonic()))  # pacing, not sync


@pytest.fixture(scope='module')
def units():
    return encode_loop()


@pytest.fixture
def source(ros, units):
    with host_address(), H264Publisher(ros.node, units) as publisher:
        yield publisher


def start(start_bridge, **parameters):
    return start_bridge(webrtc_host_addresses=[HOST_ADDRESS], **{
        'streams.camera.type': 'h264', 'streams.camera.topic': TOPIC, **parameters})


def api_streams(bridge):
    with urllib.request.urlopen(bridge.http + '/api/streams', timeout=5) as response:
        return json.loads(response.read())


def camera_entry(bridge):
    return next(s for s in api_streams(bridge)['streams'] if s['name'] == 'camera')


async def start_peer(control, request_id, codecs=('h264', 'vp8'), stream='camera'):
    await control.send(type='webrtc_start', id=request_id, stream=stream, codecs=list(codecs))
    offer = await control.wait('webrtc_offer', request_id)
    viewer = AiortcViewer()
    viewer.codec = offer['codec']
    await control.send(type='webrtc_answer', id=request_id + 1,
                       sdp=await viewer.answer(offer['sdp']))
    return viewer


# One layer where a test counts encoders: on this shared 2-core machine aiortc's receiver-side
# estimator sometimes reports congestion after a few seconds, and a peer moved down to a lower
# layer gets one decode and one encode by design (tested in test_encoders.py).
ONE_LAYER = {'webrtc_layers': 1}


def test_peers_decode_the_source_units_with_no_encoder_and_no_decoder(start_bridge, source):
    bridge = start(start_bridge, **ONE_LAYER)

    async def scenario():
        sockets, viewers = [], []
        try:
            for count in (1, 2, 3):
                socket = await session(bridge.ws)
                sockets.append(socket)
                control = Control(socket)
                await control.wait('hello')
                viewers.append(await start_peer(control, 1))
                await wait_until(lambda: all(len(v.frames) >= 30 for v in viewers), 30,
                                 f'{count} peer(s) decoding 30 frames each')
                entry = await asyncio.to_thread(camera_entry, bridge)
                assert entry['kind'] == 'h264'
                assert (entry['video_encoders'], entry['video_decoders'],
                        entry['video_encodes']) == (0, 0, 0), entry
            assert all(v.codec == 'h264' for v in viewers), 'H.264 offered first for it'
            last = viewers[-1].frames[-1]
            assert (last.width, last.height) == (WIDTH, HEIGHT)
            picture = last.to_ndarray(format='bgr24')
            assert abs(int(picture[HEIGHT // 2, 0:WIDTH].mean()) - 60) < 60
        finally:
            for viewer in viewers:
                await viewer.close()
            for socket in sockets:
                await socket.close()

    asyncio.run(scenario())


def test_a_vp8_only_page_gets_vp8_from_one_decoder(start_bridge, source):
    bridge = start(start_bridge)

    async def scenario():
        async with await session(bridge.ws) as socket:
            control = Control(socket)
            await control.wait('hello')
            viewer = await start_peer(control, 1, codecs=('vp8',))
            try:
                assert viewer.codec == 'vp8'
                await wait_until(lambda: len(viewer.frames) >= 20, 30, '20 VP8 frames')
                entry = await asyncio.to_thread(camera_entry, bridge)
                assert (entry['video_encoders'], entry['video_decoders']) == (1, 1), entry
            finally:
                await viewer.close()

    asyncio.run(scenario())


def test_a_snapshot_of_the_stream_is_a_jpeg_while_peers_keep_the_pass_through(start_bridge,
                                                                              source):
    import cv2
    bridge = start(start_bridge, **ONE_LAYER)

    async def scenario():
        async with await session(bridge.ws) as socket:
            control = Control(socket)
            await control.wait('hello')
            viewer = await start_peer(control, 1)
            try:
                await wait_until(lambda: len(viewer.frames) >= 10, 30, 'the peer decoding')
                with urllib.request.urlopen(bridge.http + '/snapshot/camera',
                                            timeout=10) as response:
                    jpeg = response.read()
                    assert response.headers['Content-Type'].startswith('image/jpeg')
                shown = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                assert shown.shape == (HEIGHT, WIDTH, 3)
                entry = await asyncio.to_thread(camera_entry, bridge)
                assert entry['video_encoders'] == 0, 'the JPEG viewer adds no video encoder'
                before = len(viewer.frames)
                await wait_until(lambda: len(viewer.frames) >= before + 30, 10,
                                 'the peer still decoding after the snapshot')
            finally:
                await viewer.close()

    asyncio.run(scenario())


def shown_index(frame):
    """Which unit of the loop a decoded frame shows: the bar's position says (x = index * 8)."""
    bright = frame.to_ndarray(format='bgr24')[:, :, 1].mean(axis=0) > 130
    return int(np.argmax(bright)) // 8


def test_a_peer_joining_mid_stream_starts_at_the_next_keyframe(start_bridge, source):
    bridge = start(start_bridge)

    async def scenario():
        async with await session(bridge.ws) as first_socket, \
                await session(bridge.ws) as second_socket:
            first, second = Control(first_socket), Control(second_socket)
            await first.wait('hello')
            await second.wait('hello')
            early = await start_peer(first, 1)
            late = None
            try:
                await wait_until(lambda: len(early.frames) >= 15, 30, 'the first peer decoding')
                await wait_until(lambda: not source.last_was_keyframe()
                                 and source.published % GOP > GOP // 3, 5, 'mid-GOP')
                late = await start_peer(second, 1)
                await wait_until(lambda: len(late.frames) >= 10, 30, 'the late peer decoding')
                keyframes = [i for i, (_, key) in enumerate(source.units) if key]
                assert keyframes == [0, GOP]
                assert shown_index(late.frames[0]) in keyframes, 'starts at a keyframe'
                assert shown_index(early.frames[0]) in keyframes
                assert [shown_index(f) for f in late.frames[:5]] == [
                    (shown_index(late.frames[0]) + i) % len(source.units) for i in range(5)]
            finally:
                await early.close()
                if late is not None:
                    await late.close()

    asyncio.run(scenario())


def test_malformed_units_are_counted_logged_once_and_the_peers_keep_playing(start_bridge,
                                                                            source, units):
    bridge = start(start_bridge)
    key = units[0][0]
    bad = {'h264_garbage': b'\xde\xad\xbe\xef' * 256, 'h264_empty': b'',
           'h264_truncated': b'\x00\x00\x00\x01\x65',
           'h264_no_picture': b''.join(b'\x00\x00\x00\x01' + nal
                                       for nal in h264.split_nal_units(key)[:2])}

    async def scenario():
        async with await session(bridge.ws) as socket_a, await session(bridge.ws) as socket_b:
            a, b = Control(socket_a), Control(socket_b)
            await a.wait('hello')
            await b.wait('hello')
            viewers = [await start_peer(a, 1), await start_peer(b, 1)]
            try:
                await wait_until(lambda: all(len(v.frames) >= 15 for v in viewers), 30,
                                 'both peers decoding')
                for _ in range(10):
                    source.inject(*bad.values())
                await wait_until(lambda: not source.bad, 10, 'the bad units published')
                counts = [len(v.frames) for v in viewers]
                await wait_until(lambda: all(len(v.frames) >= c + 45
                                             for v, c in zip(viewers, counts)), 15,
                                 'both peers still decoding after the bad units')

                def counted():
                    malformed = camera_entry(bridge).get('malformed', {})
                    return all(malformed.get(kind, 0) >= 5 for kind in bad)
                await asyncio.to_thread(wait_for, counted, 10, 'every kind counted')
            finally:
                for viewer in viewers:
                    await viewer.close()

    asyncio.run(scenario())
    log = bridge.process.output()
    assert log.count('not an Annex B H.264 access unit') == 1, 'logged once per kind'
    assert log.count('empty access unit') == 1
    assert 'Traceback' not in log


def test_messages_that_are_not_compressed_images_are_counted_and_the_peers_keep_playing(
        start_bridge, source, units):
    """CDR bytes cut short or made up reach the bridge (a broken publisher, or a topic of the
    wrong type); each is counted as ``message`` and dropped, the stream keeps playing."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage
    bridge = start(start_bridge, **ONE_LAYER)
    good = serialize_message(CompressedImage(format='h264', data=units[1][0]))
    bad = [good[:len(good) // 2], good[:10], b'\x00\x01\x00\x00' + b'\xff' * 16,
           b'\x00\x01\x00\x00' + b'\x01\x00\x00\x00' * 2 + b'\xff\xff\xff\x7f' + b'x' * 40]

    async def scenario():
        async with await session(bridge.ws) as socket:
            control = Control(socket)
            await control.wait('hello')
            viewer = await start_peer(control, 1)
            try:
                await wait_until(lambda: len(viewer.frames) >= 15, 30, 'the peer decoding')
                for _ in range(5):
                    source.inject_serialized(*bad)
                await wait_until(lambda: not source.serialized, 10, 'the bad messages sent')
                count = len(viewer.frames)
                await wait_until(lambda: len(viewer.frames) >= count + 45, 15,
                                 'the peer still decoding after the bad messages')

                def counted():
                    return camera_entry(bridge).get('malformed', {}).get('message', 0) >= 10
                await asyncio.to_thread(wait_for, counted, 10, 'the bad messages counted')
            finally:
                await viewer.close()

    asyncio.run(scenario())
    log = bridge.process.output()
    assert log.count('malformed serialised message') == 1, 'logged once'
    assert 'Traceback' not in log


def test_the_stream_unsubscribes_resubscribes_and_the_bridge_stops_cleanly(start_bridge, source):
    """The intake thread lets go of a subscription the bridge drops while nobody watches, takes
    the new one when a viewer comes back, and ends with the bridge (exit code 0)."""
    bridge = start(start_bridge, unsubscribe_delay=0.5, **ONE_LAYER)

    async def watch(request_id):
        async with await session(bridge.ws) as socket:
            control = Control(socket)
            await control.wait('hello')
            viewer = await start_peer(control, request_id)
            try:
                await wait_until(lambda: len(viewer.frames) >= 15, 30, '15 frames decoded')
            finally:
                await viewer.close()

    for round_ in (1, 2):
        asyncio.run(watch(round_))
        wait_for(lambda: bridge.process.output().count('nobody watches; unsubscribed')
                 == round_, 20, f'unsubscription {round_}')
    assert bridge.process.output().count("stream 'camera': subscribed") == 2
    assert bridge.process.stop() == 0
    log = bridge.process.output()
    assert 'image intake' not in log and 'Traceback' not in log, log[-3000:]


def test_camera_node_h264_plays_in_chromium_with_nothing_encoded_on_the_bridge(
        start_bridge, launch_node):
    # The robot encodes once, at the camera (camera_node h264:=true); the bridge passes the
    # units on and Chromium's decoder shows them.
    from conftest import CHROMIUM, chromium, WEBRTC_CHROMIUM_ARGS
    if not os.path.exists(CHROMIUM):
        pytest.skip('chromium is not installed')
    pytest.importorskip('playwright.sync_api')
    from support.webrtc_support import decode_rate
    with host_address():
        camera = launch_node('camera_node', ros_args=[
            '-r', '__ns:=/robot', '-r', '__node:=camera_node', '-p', 'h264:=true',
            '-p', 'h264_encoder:=libx264', '-p', 'h264_keyframe_interval:=1.0'],
            name='camera_node')
        camera.wait_output('H.264 by libx264')
        bridge = start(start_bridge)
        with chromium(WEBRTC_CHROMIUM_ARGS) as browser:
            context = browser.new_context(viewport={'width': 1280, 'height': 800})
            page = context.new_page()
            errors = []
            page.on('pageerror', lambda error: errors.append(str(error)))
            page.goto(f'{bridge.http}/')
            page.wait_for_function(
                "document.getElementById('stat-transport').dataset.value === 'webrtc' && "
                "Number(document.getElementById('stat-fps').dataset.value) > 20",
                timeout=45000)
            stats = page.evaluate('window.videoBridge.webrtc.stats()')
            assert stats['codec'] == 'h264' and (stats['width'], stats['height']) == (640, 480)
            rate = decode_rate(page)
            assert rate > 20, f'Chromium decoded {rate:.1f} frames per second (30 sent)'
            entry = camera_entry(bridge)
            assert (entry['video_encoders'], entry['video_decoders'],
                    entry['video_encodes']) == (0, 0, 0), entry
            page.wait_for_function(
                "document.getElementById('stat-latency').dataset.value !== ''")
            latency = float(page.get_attribute('#stat-latency', 'data-value'))
            assert 0 <= latency < 0.5, f'camera stamp to shown: {latency} s'
            assert not errors, errors
            context.close()


# -- foxglove_msgs/CompressedVideo -----------------------------------------------------------
# This machine's pip-based ROS has no foxglove_msgs: the tests build a TEST-ONLY copy of its
# CompressedVideo from the published definition (test/interfaces/foxglove_msgs) with colcon,
# into build/test-interfaces, once (kept while its sources do not change).

VIDEO_TOPIC = '/robot/video'


def publish_compressed_video(topic):
    """Child process: publish encode_loop() as foxglove_msgs/CompressedVideo at FPS."""
    import signal
    import time
    from foxglove_msgs.msg import CompressedVideo
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    units = encode_loop()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)   # ours below: destroy first
    node = rclpy.create_node('compressed_video_publisher')
    publisher = node.create_publisher(CompressedVideo, topic, qos_profile_sensor_data)
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print('publishing', flush=True)
    next_time, index = time.monotonic(), 0
    while not stop:
        msg = CompressedVideo()
        msg.timestamp = node.get_clock().now().to_msg()
        msg.frame_id = 'camera'
        msg.format = 'h264'
        msg.data = units[index % len(units)][0]
        publisher.publish(msg)
        index += 1
        next_time += 1.0 / FPS
        time.sleep(max(0.0, next_time - time.monotonic()))   # pacing, not synchronisation
    node.destroy_node()
    rclpy.shutdown()


def test_foxglove_compressed_video_is_passed_through_too(start_bridge, foxglove_env):
    import sys
    from conftest import ChildProcess
    with host_address():
        # This file as the publisher's script: test/ on its path for conftest and support.
        test_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**foxglove_env,
               'PYTHONPATH': os.pathsep.join([test_dir, foxglove_env['PYTHONPATH']])}
        publisher = ChildProcess([sys.executable, __file__, VIDEO_TOPIC], 'cv_publisher',
                                 env=env)
        try:
            publisher.wait_output('publishing', 30)
            bridge = start_bridge(webrtc_host_addresses=[HOST_ADDRESS], env=foxglove_env, **{
                'streams.camera.type': 'compressed_video', 'streams.camera.topic': VIDEO_TOPIC,
                **ONE_LAYER})

            async def scenario():
                async with await session(bridge.ws) as socket:
                    control = Control(socket)
                    await control.wait('hello')
                    viewer = await start_peer(control, 1)
                    try:
                        await wait_until(lambda: len(viewer.frames) >= 30, 30, '30 frames')
                        entry = await asyncio.to_thread(camera_entry, bridge)
                        assert entry['kind'] == 'h264'
                        assert (entry['video_encoders'], entry['video_decoders']) == (0, 0)
                        doc = await asyncio.to_thread(api_streams, bridge)
                        assert {'topic': VIDEO_TOPIC, 'type': 'foxglove_msgs/msg/CompressedVideo',
                                'kind': 'h264'} in doc['topics']
                        # the topic asked for by name (/video/%2Frobot%2Fvideo) is the
                        # configured stream: the same pass-through, no second stream
                        by_topic = await start_peer(control, 3, stream=VIDEO_TOPIC)
                        try:
                            await wait_until(lambda: len(by_topic.frames) >= 30, 30, 'by topic')
                            doc = await asyncio.to_thread(api_streams, bridge)
                            assert [s['name'] for s in doc['streams']] == ['camera']
                            entry = await asyncio.to_thread(camera_entry, bridge)
                            assert entry['kind'] == 'h264' and entry['video_encoders'] == 0
                        finally:
                            await by_topic.close()
                    finally:
                        await viewer.close()
            asyncio.run(scenario())
        finally:
            publisher.stop()


def test_compressed_video_without_foxglove_msgs_is_a_clear_configuration_error(launch_node):
    from conftest import bridge_ros_args, free_port
    process = launch_node('bridge_node', ros_args=bridge_ros_args({
        'host': '127.0.0.1', 'port': free_port(), 'streams.camera.type': 'compressed_video'}),
        name='bridge_node')
    wait_for(lambda: process.proc.poll() is not None, 20, 'bridge_node to exit')
    assert process.proc.returncode == 1
    assert 'needs foxglove_msgs (rosdep key foxglove_msgs' in process.output()


if __name__ == '__main__':
    import sys
    publish_compressed_video(sys.argv[1])
