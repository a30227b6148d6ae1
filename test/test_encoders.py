"""Tests for video_bridge.core.encoders and the hub's video variants: real x264/libvpx encodes,
decoded again with FFmpeg's decoders (PyAV) to prove the units are a valid stream."""

import cv2
import numpy as np
import pytest
from video_bridge.core import encoders
from video_bridge.core.protocol import Variant
from video_bridge.core.streams import COMPRESSED, SourceImage, StreamHub, StreamSettings

av = pytest.importorskip('av')
WIDTH, HEIGHT = 160, 120


def picture(index):
    """A moving bar on a gradient, so inter frames carry real motion."""
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    frame[:, :, 1] = np.linspace(0, 255, WIDTH, dtype=np.uint8)
    frame[:, (index * 3) % WIDTH:(index * 3) % WIDTH + 8] = (255, 255, 255)
    return frame


def raw(index):
    image = picture(index)
    return SourceImage(stamp_sec=1000, stamp_nanosec=index * 33_333_333, data=image.tobytes(),
                       encoding='bgr8', width=WIDTH, height=HEIGHT, step=WIDTH * 3,
                       received_time=2000.0 + index / 30)


def decoder(codec):
    return av.CodecContext.create('h264' if codec == encoders.H264 else 'vp8', 'r')


def decode(context, data):
    return context.decode(av.Packet(data))


@pytest.mark.parametrize('codec', encoders.VIDEO_CODECS)
def test_video_encoder_makes_a_decodable_stream_with_keyframes_on_request(codec):
    if encoders.video_available(codec):
        pytest.skip(encoders.video_available(codec))
    encoder = encoders.VideoEncoder(codec, 300_000)
    context = decoder(codec)
    decoded, keys = [], []
    for index in range(40):
        unit = encoder.encode(picture(index), pts=index * 3000, keyframe=index == 25)
        assert unit is not None, 'zerolatency / lag-in-frames 0: one unit per picture'
        keys.append(unit.keyframe)
        decoded += decode(context, unit.data)
    assert [i for i, key in enumerate(keys) if key] == [0, 25]
    assert len(decoded) == 40
    last = decoded[-1].to_ndarray(format='bgr24')
    assert last.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(last.astype(int) - picture(39).astype(int)).mean() < 12
    # A decoder that starts at the requested keyframe can decode from there on.
    late = decoder(codec)
    encoder2 = encoders.VideoEncoder(codec, 300_000)
    units = [encoder2.encode(picture(i), i * 3000, keyframe=i == 10) for i in range(15)]
    frames = [f for unit in units[10:] for f in decode(late, unit.data)]
    assert len(frames) == 5


def test_h264_is_constrained_baseline_with_headers_on_every_keyframe():
    encoder = encoders.VideoEncoder(encoders.H264, 300_000)
    first = encoder.encode(picture(0), 0).data
    second = encoder.encode(picture(1), 3000, keyframe=True).data
    for data in (first, second):
        nal_types = [data[i + 3] & 0x1F for i in range(len(data) - 3)
                     if data[i:i + 3] == b'\x00\x00\x01']
        assert 7 in nal_types and 8 in nal_types and 5 in nal_types  # SPS, PPS, IDR
        sps = data[data.index(b'\x00\x00\x01\x67') + 4:]
        assert sps[0] == 66   # profile_idc 66: baseline


def test_video_encoder_refuses_bad_settings_and_tiny_pictures():
    with pytest.raises(ValueError):
        encoders.VideoEncoder('mpeg2', 300_000)
    with pytest.raises(ValueError):
        encoders.VideoEncoder(encoders.H264, 10)
    with pytest.raises(Exception):
        encoders.VideoEncoder(encoders.H264, 300_000).encode(np.zeros((8, 8, 3), np.uint8))


def test_odd_sizes_and_grey_pictures_encode():
    encoder = encoders.VideoEncoder(encoders.H264, 300_000)
    unit = encoder.encode(np.full((121, 161), 128, np.uint8), 0)
    frame = decode(decoder(encoders.H264), unit.data)[0]
    assert (frame.width, frame.height) == (160, 120)


def test_jpeg_encoder_is_the_v1_jpeg():
    unit = encoders.JpegEncoder(80).encode(picture(0))
    assert unit.data[:2] == b'\xff\xd8' and unit.keyframe
    assert cv2.imdecode(np.frombuffer(unit.data, np.uint8), cv2.IMREAD_COLOR).shape == (
        HEIGHT, WIDTH, 3)


def test_hub_encodes_each_layer_once_for_all_its_peers():
    hub = StreamHub(clock=lambda: 0.0)
    stream = hub.add(StreamSettings('cam', 'image_raw'))
    h264 = Variant(codec=encoders.H264)
    peers = [stream.attach(h264) for _ in range(3)]
    jpeg_viewer = stream.attach(Variant())
    assert stream.counters().video_encoders == 1
    for index in range(5):
        stream.publish(raw(index))
    counters = stream.counters()
    assert counters.video_encodes == 5, 'three peers, one encode per frame'
    units = [peer.take_all() for peer in peers]
    assert all(len(u) == 5 for u in units)
    assert units[0][0] is units[1][0] is units[2][0], 'one unit shared by every peer'
    assert units[0][0].keyframe and not units[0][1].keyframe
    assert jpeg_viewer.take().jpeg[:2] == b'\xff\xd8'
    low = stream.attach(Variant(codec=encoders.H264, layer=2))
    stream.publish(raw(5))
    assert stream.counters().video_encoders == 2
    assert low.take_all()[0].keyframe
    for peer in peers + [low]:
        peer.detach()
    assert stream.counters().video_encoders == 0


def test_a_joining_peer_and_a_pli_get_a_keyframe_rate_limited():
    now = [0.0]
    hub = StreamHub(clock=lambda: now[0])
    stream = hub.add(StreamSettings('cam', 'image_raw'))
    first = stream.attach(Variant(codec=encoders.H264))
    stream.publish(raw(0))
    assert first.take_all()[0].keyframe
    now[0] = 0.1
    second = stream.attach(Variant(codec=encoders.H264))   # join inside the interval ...
    stream.publish(raw(1))
    # the kept history lets it start at once, at the last keyframe
    assert [f.keyframe for f in second.take_all()] == [True, False]
    now[0] = 0.6                                            # ... granted when it is over
    stream.publish(raw(2))
    assert second.take_all()[0].keyframe
    first.take_all()
    now[0] = 1.2
    first.request_keyframe()
    stream.publish(raw(3))
    assert first.take_all()[0].keyframe


def test_a_peer_that_falls_behind_sees_the_gap():
    hub = StreamHub(clock=lambda: 0.0)
    stream = hub.add(StreamSettings('cam', 'image_raw'))
    peer = stream.attach(Variant(codec=encoders.VP8))
    stream.publish(raw(0))
    assert [f.seq for f in peer.take_all()] == [1]
    for index in range(1, 12):    # more than the history holds
        stream.publish(raw(index))
    seqs = [f.seq for f in peer.take_all()]
    assert seqs[0] > 2 and len(seqs) == 8 and seqs == list(range(seqs[0], seqs[0] + 8))
    assert stream.counters().frames_dropped == seqs[0] - 2


def test_compressed_jpeg_sources_feed_video_too():
    hub = StreamHub(clock=lambda: 0.0)
    stream = hub.add(StreamSettings('cam', 'image_raw/compressed', kind=COMPRESSED))
    peer = stream.attach(Variant(codec=encoders.H264))
    jpeg = cv2.imencode('.jpg', picture(3))[1].tobytes()
    stream.publish(SourceImage(5, 0, jpeg, image_format='jpeg'))
    (unit,) = peer.take_all()
    frame = decode(decoder(encoders.H264), unit.data)[0]
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    assert unit.pts == 5 * encoders.CLOCK_RATE


def test_unknown_codec_or_layer_is_refused():
    from video_bridge.core.streams import CapacityError
    stream = StreamHub().add(StreamSettings('cam', 'image_raw'))
    with pytest.raises(CapacityError):
        stream.attach(Variant(codec='theora'))
    with pytest.raises(CapacityError):
        stream.attach(Variant(codec=encoders.H264, layer=3))
    assert stream.counters().viewers == 0


@pytest.mark.parametrize('codec', encoders.VIDEO_CODECS)
@pytest.mark.parametrize('height', [120, 118, 119])
def test_every_even_height_reaches_the_encoder_whole(codec, height):
    """PyAV's buffer frames get heights with height % 4 == 2 wrong; the encoder must not."""
    if encoders.video_available(codec):
        pytest.skip(encoders.video_available(codec))
    encoder = encoders.VideoEncoder(codec, 1_000_000)
    context = decoder(codec)
    frames, images = [], []
    for index in range(5):
        image = picture(index)[:height].copy()
        image[:, :, 2] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]  # red by row
        images.append(image)
        frames += decode(context, encoder.encode(image, pts=index * 3000).data)
    assert len(frames) == 5
    last = frames[-1].to_ndarray(format='bgr24').astype(int)
    expected = images[-1][:height & ~1].astype(int)
    assert last.shape == expected.shape
    assert np.abs(last - expected).mean() < 6
    assert np.abs(last[-8:] - expected[-8:]).mean() < 12   # the bottom rows too


@pytest.mark.parametrize('codec', encoders.VIDEO_CODECS)
def test_the_encoder_keeps_no_reference_to_the_picture_memory(codec):
    """Frames wrap the I420 array without a copy; FFmpeg must copy it before encode returns."""
    if encoders.video_available(codec):
        pytest.skip(encoders.video_available(codec))
    encoder = encoders.VideoEncoder(codec, 1_000_000)
    context = decoder(codec)
    frames = []
    for index in range(6):
        video = encoders.VideoPicture(picture(index))
        unit = encoder.encode(video, pts=index * 3000)
        video.i420[:] = 0   # scribble over the source once the encoder has it
        frames += decode(context, unit.data)
    assert len(frames) == 6
    last = frames[-1].to_ndarray(format='bgr24').astype(int)
    assert np.abs(last - picture(5).astype(int)).mean() < 12
