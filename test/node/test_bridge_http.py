"""HTTP side and every kind of camera: MJPEG and snapshots read by ffmpeg, passthrough,
shared variants, depth colour maps, the stream list, static files."""

import asyncio
import json
import subprocess
import threading

from conftest import FramePublisher
import cv2
import numpy as np
from support.http_support import ffmpeg_frames, get, JpegPublisher
from video_bridge.core.protocol import (FLAG_COLORMAPPED, FLAG_PASSTHROUGH, FLAG_SCALED,
                                        unpack_frame)
from video_bridge_msgs.msg import BridgeStatus
import websockets


def read_slowly(seconds):
    """Pause between reads: this client is slow on purpose (it is not synchronisation)."""
    threading.Event().wait(seconds)


async def first_frames(url, count=3):
    async with websockets.connect(url) as ws:
        async with asyncio.timeout(15):
            return [unpack_frame(await ws.recv()) for _ in range(count)]


def test_ffmpeg_reads_the_mjpeg_stream_and_the_snapshot(ros, start_bridge, tmp_path):
    bridge = start_bridge(**{'streams.camera.topic': '/h1/image'})
    with FramePublisher(ros.node, '/h1/image'):
        frames = ffmpeg_frames(f'{bridge.http}/mjpeg/camera?width=320', 5, tmp_path, 'mjpeg')
        snapshot = ffmpeg_frames(f'{bridge.http}/snapshot/camera?quality=50', 1, tmp_path,
                                 'snapshot')[0]
        status, headers, body = get(f'{bridge.http}/snapshot/camera')
    assert all(frame is not None and frame.shape == (240, 320, 3) for frame in frames)
    assert snapshot.shape == (480, 640, 3)
    assert status == 200 and headers['Content-Type'] == 'image/jpeg'
    assert headers['X-Timestamp'] and int(headers['X-Sequence']) > 0
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)


def test_a_slow_mjpeg_client_skips_frames_instead_of_queueing(ros, start_bridge):
    import socket
    import time
    bridge = start_bridge(**{'streams.camera.topic': '/h2/image'})
    with FramePublisher(ros.node, '/h2/image', make=lambda i: np.random.default_rng(i).integers(
            0, 255, (480, 640, 3), np.uint8)):  # noise: big JPEGs fill buffers quickly
        with socket.create_connection(('127.0.0.1', bridge.port), timeout=10) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.sendall(b'GET /mjpeg/camera HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
            stamps = []
            buffer = b''
            deadline = time.monotonic() + 20
            while len(stamps) < 12 and time.monotonic() < deadline:
                client.settimeout(5)
                buffer += client.recv(65536)
                while b'X-Timestamp: ' in buffer:
                    head, _, buffer = buffer.partition(b'X-Timestamp: ')
                    value, _, buffer = buffer.partition(b'\r\n')
                    stamps.append(float(value))
                read_slowly(0.05)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert len(stamps) >= 12, stamps
    assert max(gaps[3:]) > 0.15, f'a slow client got every frame (a queue): {gaps}'


def test_compressed_jpeg_passes_through_byte_identical(ros, start_bridge):
    bridge = start_bridge(**{'streams.camera.topic': '/h3/image/compressed',
                             'streams.camera.type': 'compressed'})
    with JpegPublisher(ros.node, '/h3/image/compressed') as publisher:
        native = asyncio.run(first_frames(f'{bridge.ws}/video/camera'))
        reencoded = asyncio.run(first_frames(f'{bridge.ws}/video/camera?quality=40'))
        sent = dict(publisher.sent)
    for header, jpeg in native:
        assert header.flags & FLAG_PASSTHROUGH and (header.width, header.height) == (320, 240)
        assert bytes(jpeg) == sent[(header.stamp_sec, header.stamp_nanosec)]
    for header, jpeg in reencoded:
        assert not header.flags & FLAG_PASSTHROUGH
        assert bytes(jpeg) != sent[(header.stamp_sec, header.stamp_nanosec)]
        picture = cv2.imdecode(np.frombuffer(bytes(jpeg), np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (240, 320, 3)


def test_viewers_of_one_variant_share_one_encode(ros, start_bridge):
    bridge = start_bridge(status_period=0.25, max_variants=2,
                          **{'streams.camera.topic': '/h4/image'})
    statuses = ros.collect(BridgeStatus, '/bridge_node/status')

    async def ten_viewers():
        urls = [f'{bridge.ws}/video/camera?width=320'] * 5 + [f'{bridge.ws}/video/camera'] * 5
        sockets = [await websockets.connect(url) for url in urls]
        for ws in sockets:
            await ws.recv()
        mark = len(statuses)
        while len(statuses) < mark + 4:
            await asyncio.sleep(0.05)  # keep reading while status messages accumulate
            for ws in sockets:
                while True:
                    try:
                        header, _ = unpack_frame(await asyncio.wait_for(ws.recv(), 0.001))
                    except TimeoutError:
                        break
        third = await first_frames_or_close(f'{bridge.ws}/video/camera?width=160')
        snapshot = await asyncio.to_thread(
            get, f'{bridge.http}/snapshot/camera?width=100&quality=10')
        for ws in sockets:
            await ws.close()
        return statuses[mark + 1], statuses[mark + 3], third, snapshot

    async def first_frames_or_close(url):
        try:
            await first_frames(url, 1)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code, closed.rcvd.reason
        return None

    with FramePublisher(ros.node, '/h4/image'):
        before, after, third, (status, _, body) = asyncio.run(ten_viewers())
    first, last = before.streams[0], after.streams[0]
    frames = last.frames_in - first.frames_in
    encodes = last.frames_encoded - first.frames_encoded
    assert last.viewers == 10 and last.variants == 2
    assert frames > 10 and abs(encodes - 2 * frames) <= 2, (frames, encodes)
    assert third[0] == 4503 and 'variant limit' in third[1]
    assert status == 503 and b'variant limit' in body


def test_depth_is_drawn_through_the_colour_map_with_invalid_pixels_distinct(
        ros, start_bridge):
    bridge = start_bridge(stream_names=['depth', 'metres'],
                          **{'streams.depth.topic': '/h5/depth', 'streams.depth.depth_min': 0.5,
                             'streams.depth.depth_max': 4.5, 'streams.depth.quality': 95,
                             'streams.metres.topic': '/h5/metres', 'streams.metres.quality': 95,
                             'streams.metres.depth_max': 4.5, 'streams.metres.depth_min': 0.5})
    millimetres = np.zeros((120, 160), np.uint16)
    millimetres[:, 40:80], millimetres[:, 80:120], millimetres[:, 120:] = 500, 2500, 4500
    metres = millimetres.astype(np.float32) / 1000.0
    metres[:, :40] = np.nan
    with FramePublisher(ros.node, '/h5/depth', encoding='16UC1', make=lambda i: millimetres), \
            FramePublisher(ros.node, '/h5/metres', encoding='32FC1', make=lambda i: metres):
        shots = {}
        for stream in ('depth', 'metres'):
            status, _, body = get(f'{bridge.http}/snapshot/{stream}')
            assert status == 200
            shots[stream] = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        header = asyncio.run(first_frames(f'{bridge.ws}/video/depth', 1))[0][0]
    assert header.flags & FLAG_COLORMAPPED and not header.flags & FLAG_SCALED
    turbo = cv2.applyColorMap(np.array([[0, 128, 255]], np.uint8), cv2.COLORMAP_TURBO)[0]
    for picture in shots.values():
        assert picture[60, 20].max() < 25  # invalid: black, not a colour of the map
        for column, expected in zip((60, 100, 140), turbo):
            assert np.abs(picture[60, column].astype(int) - expected).max() < 30, (
                column, picture[60, column], expected)


def test_stream_list_static_files_and_view_token(ros, start_bridge):
    bridge = start_bridge(token='s3cret', view_requires_token=True)
    status, headers, body = get(f'{bridge.http}/api/streams')
    assert status == 401
    status, headers, body = get(f'{bridge.http}/api/streams',
                                {'Authorization': 'Bearer s3cret'})
    document = json.loads(body)
    assert status == 200 and document['protocol'] == 2
    assert document['streams'][0]['name'] == 'camera'
    assert document['streams'][0]['video'] == '/video/camera'
    assert document['access'] == {'token_required': True, 'view_requires_token': True}
    assert document['streams'][0]['sfu'] is False, 'no SFU configured'
    status, _, _ = get(f'{bridge.http}/snapshot/camera?token=wrong')
    assert status == 401
    status, headers, body = get(f'{bridge.http}/')
    assert status == 200 and headers['Content-Type'].startswith('text/html')
    status, headers, _ = get(f'{bridge.http}/vendor/janus-gateway/janus.js')
    assert status == 200 and headers['Content-Type'].startswith('text/javascript')
    assert get(f'{bridge.http}/vendor/README.md')[0] == 404
    assert get(f'{bridge.http}/vendor/janus-gateway/LICENSE')[0] == 404
    assert get(f'{bridge.http}/../../../etc/passwd')[0] == 404
    assert get(f'{bridge.http}/%2e%2e/%2e%2e/etc/passwd')[0] == 404
    assert get(f'{bridge.http}/video/camera')[0] == 426


def test_ffprobe_sees_mjpeg(ros, start_bridge):
    bridge = start_bridge(**{'streams.camera.topic': '/h6/image'})
    with FramePublisher(ros.node, '/h6/image'):
        probe = subprocess.run(
            ['ffprobe', '-v', 'error', '-select_streams', 'v:0', '-show_entries',
             'stream=codec_name,width,height', '-of', 'json', f'{bridge.http}/mjpeg/camera'],
            capture_output=True, text=True, timeout=60, check=True)
    stream = json.loads(probe.stdout)['streams'][0]
    assert (stream['codec_name'], stream['width'], stream['height']) == ('mjpeg', 640, 480)
