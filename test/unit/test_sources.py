"""Unit tests of video_bridge.core.sources, pure Python without ROS: frames, files, devices."""

import os
import time

import cv2
import numpy as np
import pytest
from video_bridge.core import sources
from video_bridge.core.sources import (Backoff, DeviceSource, Frame, jpeg_size,
                                       load_camera_info, make_source, SourceError,
                                       TestPatternSource, VideoFileSource)

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..'))
EXAMPLE_CALIBRATION = os.path.join(REPO, 'config', 'calibration_example.yaml')


def write_avi(path, frames=10, size=(160, 120), fourcc='MJPG'):
    """Write a small video whose frame i is filled with grey level 20*i (plus its number)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30.0, size)
    assert writer.isOpened(), f'OpenCV cannot write {fourcc} here'
    for i in range(frames):
        image = np.full((size[1], size[0], 3), (20 * i) % 256, np.uint8)
        cv2.putText(image, str(i), (10, size[1] // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0,
                    (0, 0, 255), 2)
        writer.write(image)
    writer.release()
    return str(path)


def mean_grey(frame):
    """Return the grey level of a frame written by write_avi (top-left corner, no text)."""
    return float(frame.image[:10, :10].mean())


@pytest.fixture
def avi(tmp_path):
    """Provide a 10-frame 160x120 MJPG clip."""
    return write_avi(tmp_path / 'clip.avi')


# --- test pattern -----------------------------------------------------------------------------

def test_pattern_has_the_requested_size_and_dtype():
    source = TestPatternSource(640, 480, 30.0)
    source.open()
    frame = source.read()
    assert frame.image.shape == (480, 640, 3)
    assert frame.image.dtype == np.uint8
    assert frame.jpeg is None
    assert frame.size == (640, 480)
    assert abs(frame.capture_time - time.time()) < 60
    assert source.description == 'test pattern 640x480'


@pytest.mark.parametrize('size', [(16, 16), (17, 31), (1920, 1080)])
def test_pattern_works_at_odd_and_large_sizes(size):
    frame = TestPatternSource(*size, fps=30.0).read()
    assert frame.image.shape == (size[1], size[0], 3)


def test_pattern_changes_between_frames():
    source = TestPatternSource(320, 240, 30.0)
    first, second = source.read(), source.read()
    assert not np.array_equal(first.image, second.image)
    assert second.capture_time >= first.capture_time
    # the static bars stay put: the left edge of the first (grey) bar
    assert np.array_equal(first.image[:20, :5], second.image[:20, :5])


def test_pattern_is_deterministic_apart_from_counter_time_and_motion(monkeypatch):
    monkeypatch.setattr(sources.time, 'time', lambda: 1_700_000_000.25)
    one, two = TestPatternSource(320, 240, 30.0), TestPatternSource(320, 240, 30.0)
    for _ in range(3):
        assert np.array_equal(one.read().image, two.read().image)


def test_pattern_is_cheap():
    source = TestPatternSource(640, 480, 30.0)
    source.read()
    count = 200
    start = time.perf_counter()
    for _ in range(count):
        source.read()
    per_frame_ms = (time.perf_counter() - start) / count * 1e3
    print(f'test pattern 640x480: {per_frame_ms:.3f} ms per frame')
    assert per_frame_ms < 50, 'sanity bound only; the target is < 3 ms'


def test_pattern_rejects_a_bad_size():
    with pytest.raises(ValueError):
        TestPatternSource(0, 480, 30.0)


# --- video file -------------------------------------------------------------------------------

def test_file_reads_every_frame_then_ends(avi):
    source = VideoFileSource(avi, loop=False)
    source.open()
    frames = list(iter(source.read, None))
    source.close()
    assert len(frames) == 10
    assert all(f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8 for f in frames)
    greys = [mean_grey(f) for f in frames]
    assert greys == sorted(greys), 'frames come in order'
    with pytest.raises(SourceError, match='not open'):
        source.read()


def test_file_loops_back_to_the_start(avi):
    source = VideoFileSource(avi, loop=True)
    source.open()
    frames = [source.read() for _ in range(25)]
    source.close()
    assert all(f is not None for f in frames)
    assert np.array_equal(frames[0].image, frames[10].image)
    assert np.array_equal(frames[3].image, frames[23].image)


@pytest.mark.parametrize('name, content, reason', [
    ('missing.avi', None, 'does not exist'),
    ('garbage.avi', b'this is not a video', 'cannot open video file'),
    ('folder', 'dir', 'not a regular file'),
])
def test_file_that_cannot_be_used_raises_source_error(tmp_path, name, content, reason):
    path = tmp_path / name
    if content == 'dir':
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    source = VideoFileSource(str(path), loop=True)
    with pytest.raises(SourceError, match=reason) as error:
        source.open()
    assert str(path) in str(error.value)


def test_file_read_before_open_raises(avi):
    with pytest.raises(SourceError, match='not open'):
        VideoFileSource(avi).read()


# --- device -----------------------------------------------------------------------------------

def test_missing_device_path_raises_source_error(tmp_path):
    path = str(tmp_path / 'video0')
    with pytest.raises(SourceError, match='no such device') as error:
        DeviceSource(path).open()
    assert path in str(error.value)


def test_missing_v4l2_device_raises_source_error():
    with pytest.raises(SourceError, match='/dev/video97.*plugged in'):
        DeviceSource('/dev/video97').open()


def test_emulated_device_delivers_paced_frames_then_fails_like_an_unplug(avi):
    source = DeviceSource(avi, 640, 480, fps=100.0)
    source.open()
    start = time.monotonic()
    frames = [source.read() for _ in range(10)]
    elapsed = time.monotonic() - start
    assert all(f.image.shape == (120, 160, 3) for f in frames)
    assert elapsed >= 9 / 100.0, 'an emulated device is paced at fps'
    with pytest.raises(SourceError, match='read failed'):
        source.read()
    source.close()


def test_passthrough_returns_the_devices_jpeg_bytes(avi):
    source = DeviceSource(avi, 160, 120, 100.0, 'MJPG', passthrough_jpeg=True)
    source.open()
    frame = source.read()
    source.close()
    assert frame.image is None
    assert frame.jpeg[:2] == b'\xff\xd8' and frame.jpeg[-2:] == b'\xff\xd9'
    assert frame.size == (160, 120)
    decoded = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (120, 160, 3)
    assert source.pop_warning() is None


def test_passthrough_falls_back_to_decoded_frames_with_one_warning(tmp_path):
    path = write_avi(tmp_path / 'lossless.avi', frames=4, fourcc='FFV1')
    source = DeviceSource(path, 160, 120, 100.0, 'MJPG', passthrough_jpeg=True)
    source.open()
    frames = [source.read() for _ in range(3)]
    assert all(f.image is not None and f.image.shape == (120, 160, 3) for f in frames)
    assert all(f.jpeg is None for f in frames)
    warning = source.pop_warning()
    assert 'no raw JPEG' in warning and path in warning
    assert source.pop_warning() is None
    source.close()


def test_passthrough_needs_mjpg():
    assert not DeviceSource('/dev/video0', pixel_format='YUYV', passthrough_jpeg=True) \
        .passthrough_jpeg
    assert DeviceSource('/dev/video0', pixel_format='MJPG', passthrough_jpeg=True) \
        .passthrough_jpeg


def test_device_rejects_an_unknown_pixel_format():
    with pytest.raises(ValueError, match='pixel_format'):
        DeviceSource('/dev/video0', pixel_format='H264')


def test_jpeg_size_reads_the_header_without_decoding():
    ok, encoded = cv2.imencode('.jpg', np.zeros((37, 53, 3), np.uint8))
    assert jpeg_size(encoded.tobytes()) == (53, 37)
    assert Frame(image=None, capture_time=0.0, jpeg=encoded.tobytes()).size == (53, 37)
    with pytest.raises(ValueError):
        jpeg_size(b'\x89PNG\r\n\x1a\n')


# --- backoff ----------------------------------------------------------------------------------

def test_backoff_doubles_up_to_the_maximum_and_resets():
    backoff = Backoff()
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_with_custom_settings():
    backoff = Backoff(initial=0.1, maximum=0.5, factor=3.0)
    assert [round(backoff.next_delay(), 6) for _ in range(4)] == [0.1, 0.3, 0.5, 0.5]


@pytest.mark.parametrize('kwargs', [{'initial': 0}, {'initial': 2, 'maximum': 1},
                                    {'factor': 0.5}])
def test_backoff_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# --- camera info ------------------------------------------------------------------------------

def test_load_camera_info_reads_the_example():
    info = load_camera_info(EXAMPLE_CALIBRATION)
    assert (info['width'], info['height']) == (640, 480)
    assert info['distortion_model'] == 'plumb_bob'
    assert len(info['k']) == 9 and info['k'][8] == 1.0
    assert len(info['d']) == 5
    assert info['r'] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert len(info['p']) == 12
    assert info['camera_name'] == 'example_webcam'


with open(EXAMPLE_CALIBRATION) as _example:
    GOOD = _example.read()


@pytest.mark.parametrize('content, field', [
    (GOOD.replace('image_width: 640', 'image_width: -1'), 'image_width'),
    (GOOD.replace('image_height: 480\n', ''), 'image_height'),
    (GOOD.replace('distortion_model: plumb_bob', 'distortion_model: 3'), 'distortion_model'),
    (GOOD.replace('data: [554.38271, 0.0, 320.5, ', 'data: ['), 'camera_matrix'),
    (GOOD.replace('  data: [554.38271', '  data: [abc'), 'camera_matrix'),
    (GOOD.replace('rows: 3\n  cols: 4', 'rows: 3\n  cols: 3'), 'projection_matrix'),
    (GOOD[:GOOD.index('projection_matrix')], 'projection_matrix'),
    ('camera_matrix: [1, 2\n', 'YAML'),
    ('- just\n- a list\n', 'mapping'),
])
def test_load_camera_info_names_the_file_and_field(tmp_path, content, field):
    path = tmp_path / 'calibration.yaml'
    path.write_text(content)
    with pytest.raises(ValueError, match=field) as error:
        load_camera_info(str(path))
    assert str(path) in str(error.value)


def test_load_camera_info_missing_file(tmp_path):
    with pytest.raises(ValueError, match='cannot read'):
        load_camera_info(str(tmp_path / 'nope.yaml'))


def test_load_camera_info_defaults_rectification_to_identity(tmp_path):
    start = GOOD.index('rectification_matrix')
    path = tmp_path / 'mono.yaml'
    path.write_text(GOOD[:start] + GOOD[GOOD.index('projection_matrix'):])
    assert load_camera_info(str(path))['r'] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


# --- make_source ------------------------------------------------------------------------------

def test_make_source_builds_each_kind(avi):
    pattern = make_source({'source': 'pattern', 'width': 320, 'height': 240, 'fps': 15.0})
    assert isinstance(pattern, TestPatternSource) and pattern.read().size == (320, 240)
    video = make_source({'source': 'file', 'file': avi, 'loop': False})
    assert isinstance(video, VideoFileSource) and not video.loop
    device = make_source({'source': 'device', 'device': '/dev/video3', 'pixel_format': 'MJPG',
                          'publish_compressed': True})
    assert isinstance(device, DeviceSource) and device.passthrough_jpeg
    assert isinstance(make_source({}), TestPatternSource)


@pytest.mark.parametrize('params, message', [
    ({'source': 'webcam'}, 'source'),
    ({'source': 'file', 'file': ''}, 'file parameter'),
    ({'source': 'device', 'device': ''}, 'device parameter'),
    ({'source': 'device', 'pixel_format': 'H264'}, 'pixel_format'),
    ({'width': 0}, 'width'),
    ({'height': 'tall'}, 'height'),
    ({'width': 10.5}, 'width'),
    ({'fps': 0.0}, 'fps'),
    ({'fps': True}, 'fps'),
])
def test_make_source_rejects_nonsense(params, message):
    with pytest.raises(ValueError, match=message):
        make_source(params)
