"""Tests for video_bridge.core.encoders and the hub's video variants: real x264/libvpx encodes,
decoded again with FFmpeg's decoders (PyAV) to prove the units are a valid stream."""

import cv2
import numpy as np
import pytest
from support.pictures import h264_loop, HEIGHT, picture, raw, WIDTH
from video_bridge.core import encoders
from video_bridge.core.protocol import Variant
from video_bridge.core.streams import COMPRESSED, SourceImage, StreamHub, StreamSettings

av = pytest.importorskip('av')


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
    assert jpeg_viewer.take().data[:2] == b'\xff\xd8'
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


# -- H.264 sources: pass-through, one decoder, hardware encoders ---------------------------

def x264_source(count, keyint=10):
    """Units as a robot's H.264 camera publishes them (libx264, SPS/PPS on every keyframe)."""
    return [unit for unit, _ in h264_loop(picture, count, WIDTH, HEIGHT, keyint)]


def h264_message(data, index, image_format='h264'):
    return SourceImage(stamp_sec=1000, stamp_nanosec=index * 33_333_333, data=data,
                       image_format=image_format, received_time=2000.0 + index / 30)


def h264_stream(clock=lambda: 0.0):
    from video_bridge.core.streams import H264
    return StreamHub(clock=clock).add(StreamSettings('cam', 'image_raw/h264', kind=H264))


def test_an_h264_source_reaches_every_top_layer_peer_unchanged_with_no_codec_at_all():
    units = x264_source(25)
    stream = h264_stream()
    peers = [stream.attach(Variant(codec=encoders.H264)) for _ in range(3)]
    for index, unit in enumerate(units):
        stream.publish(h264_message(unit, index))
    counters = stream.counters()
    assert (counters.video_encoders, counters.video_decoders, counters.video_encodes) == \
        (0, 0, 0)
    assert counters.encode_count == 0 and (counters.width, counters.height) == (WIDTH, HEIGHT)
    taken = [peer.take_all() for peer in peers]
    assert [f.data for f in taken[0]] == units[-8:], 'the source bytes, the newest 8 kept'
    assert taken[0][0] is taken[1][0] is taken[2][0], 'one unit shared by every peer'
    assert [f.keyframe for f in taken[0]] == [i % 10 == 0 for i in range(17, 25)]
    assert taken[0][-1].pts == round((1000 + 24 * 0.033333333) * encoders.CLOCK_RATE)
    peers[0].request_keyframe()       # cannot reach the source: nothing breaks, nothing comes
    stream.publish(h264_message(units[1], 25))
    assert not peers[0].take_all()[0].keyframe


def test_jpeg_viewers_and_lower_layers_share_one_decoder_held_only_while_they_watch():
    units = x264_source(30)
    stream = h264_stream()
    top = stream.attach(Variant(codec=encoders.H264))
    stream.publish(h264_message(units[0], 0))
    jpeg = stream.attach(Variant())
    low = stream.attach(Variant(codec=encoders.H264, layer=1))
    vp8 = stream.attach(Variant(codec=encoders.VP8))
    for index in range(1, 10):        # the decoder starts at the next keyframe (unit 10)
        stream.publish(h264_message(units[index], index))
    assert jpeg.take() is None and low.take_all() == []
    assert stream.counters().video_decoders == 1
    for index in range(10, 18):
        stream.publish(h264_message(units[index], index))
    counters = stream.counters()
    assert (counters.video_encoders, counters.video_decoders) == (2, 1)
    assert counters.video_encodes == 16, 'two encoded layers, eight pictures'
    frame = jpeg.take()
    shown = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(shown.astype(int) - picture(17).astype(int)).mean() < 12
    for viewer, codec in ((low, encoders.H264), (vp8, encoders.VP8)):
        layer = viewer.take_all()
        assert layer[0].keyframe
        assert decode(decoder(codec), layer[0].data)[0].width == WIDTH
    assert len(top.take_all()) == 8
    for viewer in (jpeg, low, vp8):
        viewer.detach()
    stream.publish(h264_message(units[18], 18))
    assert stream.counters().video_decoders == 0, 'no picture wanted: no decoder'


def test_malformed_units_are_counted_by_kind_and_the_peers_keep_their_units():
    from video_bridge.core import h264, image_codec
    now = [0.0]
    units = x264_source(12)
    stream = h264_stream(lambda: now[0])
    peer = stream.attach(Variant(codec=encoders.H264))
    jpeg = stream.attach(Variant())
    bad = {h264.EMPTY: b'', h264.GARBAGE: b'\xde\xad\xbe\xef' * 100,
           h264.TRUNCATED: units[0][:12], 'encoding': units[1]}
    for index, unit in enumerate(units):
        stream.publish(h264_message(unit, index))
        if index == 3:
            for kind, data in bad.items():
                with pytest.raises(image_codec.MalformedImage) as caught:
                    stream.publish(h264_message(data, index, 'jpeg' if kind == 'encoding'
                                                else 'h264'))
                assert caught.value.kind == kind
    counters = stream.counters()
    assert {k: v for k, v in counters.malformed.items() if v} == dict.fromkeys(bad, 1)
    assert [f.data for f in peer.take_all()] == units[-8:], 'no unit lost to the bad ones'
    assert jpeg.take() is not None
    assert stream.malformed_log_due(h264.GARBAGE, 0.0) == 1
    assert stream.malformed_log_due(h264.GARBAGE, 1.0) is None, 'logged once per kind'
    # then the source stops sending keyframes: its units still pass, and it is reported
    for index in range(12, 40):
        now[0] = index * 0.5
        try:
            stream.publish(h264_message(units[1 + index % 9], index))
        except h264.KeyframeOverdue:
            pass
    assert stream.counters().malformed[h264.NO_KEYFRAME] == 1
    assert len(peer.take_all()) == 8


def test_make_video_encoder_is_the_one_place_that_picks_pass_through():
    top = encoders.make_video_encoder(encoders.H264, 0, 1_000_000, 30, source=encoders.H264)
    assert top.passthrough and top.codec == encoders.H264
    for codec, layer, source in ((encoders.H264, 1, encoders.H264),
                                 (encoders.VP8, 0, encoders.H264), (encoders.H264, 0, '')):
        made = encoders.make_video_encoder(codec, layer, 300_000, 30, source=source)
        assert isinstance(made, encoders.VideoEncoder) and made.codec == codec


def test_auto_probes_every_hardware_encoder_and_falls_back_to_libx264(caplog):
    import logging
    tried = []

    def probe(name):
        tried.append(name)
        return None if name == encoders.LIBX264 else f'{name} is not here'
    with caplog.at_level(logging.INFO, logger='video_bridge.core.encoders'):
        name, skipped = encoders.choose_h264_encoder('auto', probe)
    assert name == encoders.LIBX264
    assert tried == list(encoders.HARDWARE_H264) + [encoders.LIBX264]
    assert skipped == {n: f'{n} is not here' for n in encoders.HARDWARE_H264}
    line = caplog.messages[-1]
    assert 'libx264' in line and all(f'skipped {n}: {n} is not here' in line
                                     for n in encoders.HARDWARE_H264)
    # the first hardware encoder that works is taken, the ones before it said why not
    name, skipped = encoders.choose_h264_encoder(
        'auto', lambda n: None if n == 'h264_qsv' else 'no')
    assert name == 'h264_qsv' and skipped == {'h264_nvenc': 'no'}
    # a named encoder that fails falls back, with a warning naming the reason
    with caplog.at_level(logging.INFO, logger='video_bridge.core.encoders'):
        name, skipped = encoders.choose_h264_encoder('h264_v4l2m2m', lambda n: n != 'libx264'
                                                     and 'no device' or None)
    assert name == encoders.LIBX264 and 'h264_v4l2m2m cannot be used (no device)' in \
        caplog.messages[-1]
    with pytest.raises(ValueError):
        encoders.choose_h264_encoder('h264_vaapi', probe)


def test_the_real_probe_on_this_machine_says_why_each_hardware_encoder_is_skipped():
    if encoders.video_available(encoders.H264):
        pytest.skip(encoders.video_available(encoders.H264))
    assert encoders.probe_h264_encoder(encoders.LIBX264) is None
    name, skipped = encoders.choose_h264_encoder('auto')
    assert name in (encoders.LIBX264,) + encoders.HARDWARE_H264
    assert all(reason for reason in skipped.values())
    for hardware in encoders.HARDWARE_H264:   # a probe passes only if that encoder encodes
        if encoders.probe_h264_encoder(hardware) is None:
            encoder = encoders.VideoEncoder(encoders.H264, 300_000, 30, hardware,
                                            fall_back=False)
            encoder.encode(picture(0), 0, True)   # hardware may hold the first unit back
            assert encoder.encoder_name == hardware
        else:
            with pytest.raises(Exception):
                encoders.VideoEncoder(encoders.H264, 300_000, 30, hardware,
                                      fall_back=False).encode(picture(0), 0, True)


@pytest.mark.parametrize('name', encoders.HARDWARE_H264)
def test_a_hardware_encoder_makes_a_decodable_stream_where_there_is_one(name):
    reason = encoders.probe_h264_encoder(name)
    if reason:
        pytest.skip(f'{name}: {reason}')
    encoder = encoders.VideoEncoder(encoders.H264, 300_000, 30, name)
    context = decoder(encoders.H264)
    units = [encoder.encode(picture(i), i * 3000, keyframe=i in (0, 20)) for i in range(30)]
    units = [u for u in units if u is not None]
    assert units[0].keyframe
    frames = [f for unit in units for f in decode(context, unit.data)]
    assert frames and frames[-1].width == WIDTH


def test_h264_on_a_compressed_stream_says_which_stream_type_it_needs():
    from video_bridge.core import image_codec
    stream = StreamHub().add(StreamSettings('cam', 'image_raw/h264', kind=COMPRESSED))
    stream.attach(Variant())
    with pytest.raises(image_codec.MalformedImage, match='type h264') as caught:
        stream.publish(h264_message(x264_source(1)[0], 0, 'H264'))
    assert caught.value.kind == 'encoding'


def test_a_hardware_encoder_that_fails_after_its_probe_falls_back_to_libx264(caplog):
    # Here no hardware encoder opens: exactly what a device that went away looks like later.
    import logging
    if encoders.video_available(encoders.H264):
        pytest.skip(encoders.video_available(encoders.H264))
    name = next((n for n in encoders.HARDWARE_H264 if encoders.probe_h264_encoder(n)), None)
    if name is None:
        pytest.skip('every hardware encoder works here')
    encoder = encoders.VideoEncoder(encoders.H264, 300_000, 30, name)
    with caplog.at_level(logging.WARNING, logger='video_bridge.core.encoders'):
        units = [encoder.encode(picture(i), i * 3000) for i in range(3)]
    assert encoder.encoder_name == encoders.LIBX264
    assert units[0].keyframe and f'H.264 encoder {name} failed' in caplog.text
    assert decode(decoder(encoders.H264), units[0].data)[0].width == WIDTH
