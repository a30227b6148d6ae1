"""web_video_server's URLs on the bridge, read by curl and ffmpeg (clients nobody here wrote)."""

import shutil
import subprocess

from conftest import FramePublisher, wait_for
import cv2
import numpy as np
import pytest
from support.http_support import ffmpeg_frames, JpegPublisher

try:
    from video_bridge.net import wvs_compat  # noqa: F401  (the aiohttp edge)
    WVS = True
except ImportError:
    WVS = False

pytestmark = [
    pytest.mark.skipif(not WVS, reason='net/wvs_compat needs the aiohttp network edge'),
    pytest.mark.skipif(shutil.which('curl') is None or shutil.which('ffmpeg') is None,
                       reason='curl and ffmpeg are the clients of these tests'),
]


def curl(url, *options):
    """``(status, body bytes)`` of one GET by curl."""
    done = subprocess.run(['curl', '-sS', '--max-time', '15', '-o', '-', '-w',
                           '\n%{http_code}', *options, url], capture_output=True, timeout=30)
    body, _, status = done.stdout.rpartition(b'\n')
    return int(status), body


def test_stream_and_snapshot_by_topic_with_size_and_quality(ros, start_bridge, tmp_path):
    bridge = start_bridge(**{'streams.camera.topic': '/w1/image_raw'})
    with FramePublisher(ros.node, '/w1/image_raw', width=640, height=480):
        frames = ffmpeg_frames(f'{bridge.http}/stream?topic=/w1/image_raw&width=320'
                               '&type=mjpeg', 3, tmp_path, 'wvs')
        status, jpeg = curl(f'{bridge.http}/snapshot?topic=/w1/image_raw&width=160'
                            '&quality=40')
        status_q, jpeg_q = curl(f'{bridge.http}/snapshot?topic=/w1/image_raw&width=160'
                                '&quality=95')
    assert all(frame.shape == (240, 320, 3) for frame in frames)
    assert status == 200 and status_q == 200
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (120, 160, 3)
    assert len(jpeg) < len(jpeg_q)  # quality reaches the encoder
    # the configured stream served it: no second subscription to the same topic
    assert ros.node.count_subscribers('/w1/image_raw') <= 1


def test_any_image_topic_and_ros_compressed_passthrough(ros, start_bridge, tmp_path):
    bridge = start_bridge()
    with JpegPublisher(ros.node, '/w2/image_raw/compressed') as publisher:
        def listed():
            status, page = curl(f'{bridge.http}/stream_list')
            return status == 200 and b'/w2/image_raw/compressed' in page
        wait_for(listed, 15, 'the compressed topic in /stream_list')
        status, jpeg = curl(f'{bridge.http}/snapshot?topic=/w2/image_raw&type=ros_compressed')
    assert status == 200
    assert jpeg in publisher.sent.values(), "the camera's JPEG, byte for byte"


def test_viewer_page_and_topic_list_link_to_the_stream(ros, start_bridge):
    bridge = start_bridge(**{'streams.camera.topic': '/w3/image_raw'})
    with FramePublisher(ros.node, '/w3/image_raw', width=160, height=120):
        status, page = curl(f'{bridge.http}/stream_viewer?topic=/w3/image_raw&width=80')
        assert status == 200
        assert b'<img src="/stream?topic=/w3/image_raw&amp;width=80"' in page
        status, listing = curl(f'{bridge.http}/stream_list')
    assert status == 200
    assert b'href="/stream_viewer?topic=/w3/image_raw"' in listing
    assert b'href="/snapshot?topic=/w3/image_raw"' in listing


@pytest.mark.parametrize('query, status, text', [
    ('topic=/w4/image_raw&type=vp8', 400, b"type 'vp8' is not supported here"),
    ('type=mjpeg', 400, b'topic must be an absolute topic name'),
    ('topic=/nobody/publishes/this', 404, b'unknown stream'),
    ('topic=/w4/image_raw&width=-3', 400, b'width'),
])
def test_what_web_video_server_would_refuse_is_refused_clearly(start_bridge, query, status,
                                                               text):
    bridge = start_bridge(**{'streams.camera.topic': '/w4/image_raw'})
    got, body = curl(f'{bridge.http}/stream?{query}')
    assert got == status and text in body, body
