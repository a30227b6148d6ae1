"""Tests for video_bridge.core.h264: splitting Annex B units, keyframes, malformed units by kind.

Real units come from libx264 through PyAV (what Isaac ROS's encoder or ffmpeg publish looks
alike: Annex B, one access unit per message); the properties hold for arbitrary bytes.
"""

import fractions

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
from video_bridge.core import h264

av = pytest.importorskip('av')


def x264_units(count=12, width=320, height=240, keyint=5, slices=1, profile='baseline'):
    """Encode a moving pattern with libx264; return the units and their keyframe flags."""
    context = av.CodecContext.create('libx264', 'w')
    context.width, context.height, context.pix_fmt = width, height, 'yuv420p'
    context.time_base = fractions.Fraction(1, 30)
    context.options = {'preset': 'ultrafast', 'tune': 'zerolatency', 'profile': profile,
                       'x264-params': f'keyint={keyint}:min-keyint={keyint}:scenecut=0:'
                                      f'repeat-headers=1:slices={slices}:'
                                      'sliced-threads=0:threads=1'}
    units, keys = [], []
    for index in range(count):
        picture = np.zeros((height, width, 3), np.uint8)
        picture[:, (index * 9) % width:(index * 9) % width + 12] = 255
        frame = av.VideoFrame.from_ndarray(picture, format='bgr24')
        frame.pts = index
        for packet in context.encode(frame):
            units.append(bytes(packet))
            keys.append(packet.is_keyframe)
    return units, keys


@pytest.fixture(scope='module')
def units():
    return x264_units()


def test_real_units_split_into_their_nal_units_and_keyframes_are_found(units):
    data, keys = units
    assert keys[0] and keys[5] and not keys[1]
    infos = [h264.inspect(unit) for unit in data]
    assert infos[0].nal_types[:2] == (h264.NAL_SPS, h264.NAL_PPS)
    assert h264.NAL_IDR in infos[0].nal_types and infos[0].self_contained
    assert infos[0].size == (320, 240)
    assert [info.idr for info in infos] == keys
    assert set(infos[1].nal_types) == {h264.NAL_SLICE}
    source = h264.H264Source()
    fed = [source.feed(unit, 0.0) for unit in data]
    assert [unit.keyframe for unit in fed] == keys
    assert [unit.data for unit in fed] == data, 'units with headers pass unchanged'


@pytest.mark.parametrize('width,height', [(320, 240), (318, 238), (1920, 1080), (64, 64)])
def test_the_sps_gives_the_cropped_picture_size(width, height):
    data, _ = x264_units(count=1, width=width, height=height, profile='high')
    assert h264.inspect(data[0]).size == (width, height)


def test_a_picture_larger_than_4k_is_refused_before_anything_decodes_it():
    data, _ = x264_units(count=1, width=4096, height=2320)
    with pytest.raises(h264.MalformedUnit) as caught:
        h264.inspect(data[0])
    assert caught.value.kind == h264.TOO_LARGE
    data, _ = x264_units(count=1, width=3840, height=2160)
    assert h264.inspect(data[0]).size == (3840, 2160)


def test_multi_slice_units_and_four_or_three_byte_start_codes():
    data, keys = x264_units(count=3, slices=4)
    info = h264.inspect(data[0])
    assert info.nal_types.count(h264.NAL_IDR) == 4
    three = data[0].replace(b'\x00\x00\x00\x01', b'\x00\x00\x01')
    assert h264.split_nal_units(three) == h264.split_nal_units(data[0])
    assert h264.split_nal_units(b'\x00' * 5 + three) == h264.split_nal_units(data[0])


def without_parameter_sets(unit):
    return b''.join(b'\x00\x00\x00\x01' + nal for nal in h264.split_nal_units(unit)
                    if h264.nal_type(nal) not in (h264.NAL_SPS, h264.NAL_PPS))


def test_an_idr_without_headers_gets_the_remembered_ones_and_decodes_from_there(units):
    # A source that sends SPS/PPS once (or out of band) and bare IDRs after that.
    data, keys = units
    data = data[:1] + [without_parameter_sets(unit) for unit in data[1:]]
    assert h264.inspect(data[5]).idr and not h264.inspect(data[5]).self_contained
    source = h264.H264Source()
    fed = [source.feed(unit, 0.0) for unit in data]
    assert fed[5].keyframe and h264.inspect(fed[5].data).self_contained
    # a decoder that joins at the second keyframe decodes it and what follows
    decoder = av.CodecContext.create('h264', 'r')
    frames = [f for unit in fed[5:] for f in decoder.decode(av.Packet(unit.data))]
    assert len(frames) == len(fed) - 5 and frames[0].width == 320


def test_an_idr_before_any_parameter_set_is_no_keyframe(units):
    data, _ = units
    assert not h264.H264Source().feed(without_parameter_sets(data[5]), 0.0).keyframe


def kind_of(data):
    with pytest.raises(h264.MalformedUnit) as caught:
        h264.inspect(data)
    return caught.value.kind


def test_malformed_units_are_told_apart_by_kind(units):
    data, _ = units
    key, delta = data[0], data[1]
    nals = h264.split_nal_units(key)
    sps = b'\x00\x00\x00\x01' + nals[0]
    assert kind_of(b'') == h264.EMPTY
    assert kind_of(b'\x00\x00\x00\x00') == h264.EMPTY
    assert kind_of(b'GET / HTTP/1.1\r\n\r\n') == h264.GARBAGE
    assert kind_of(bytes(np.random.default_rng(1).integers(1, 255, 4000, np.uint8))) == \
        h264.GARBAGE
    avcc = len(nals[0]).to_bytes(4, 'big') + nals[0]
    assert kind_of(avcc) == h264.GARBAGE, 'length-prefixed AVCC is not Annex B'
    assert kind_of(b'\x00\x00\x01\x80\x11') == h264.GARBAGE, 'forbidden bit'
    assert kind_of(b'\x00\x00\x01\x00\x11') == h264.GARBAGE, 'reserved type 0'
    assert kind_of(sps[:9]) == h264.TRUNCATED, 'cut inside the SPS'
    assert kind_of(b'\x00\x00\x00\x01\x65') == h264.TRUNCATED, 'an IDR cut to its header'
    assert kind_of(delta[:5] + b'\x00\x00\x01') == h264.TRUNCATED, 'a bare start code'
    assert kind_of(b'\x00\x00\x00\x01\x41\x00') == h264.TRUNCATED, 'slice header cut short'
    headers_only = b''.join(b'\x00\x00\x00\x01' + nal for nal in nals[:2])
    assert kind_of(headers_only) == h264.NO_PICTURE
    assert kind_of(b'\x00\x00\x01' + b'\x41\x9a' * (h264.MAX_UNIT_BYTES // 2)) == \
        h264.TOO_LARGE
    assert kind_of(b'\x00\x00\x01\x41\x9a' * (h264.MAX_NAL_UNITS + 1)) == h264.TOO_LARGE
    assert all(kind in h264.MALFORMED_KINDS for kind in (
        h264.EMPTY, h264.GARBAGE, h264.TRUNCATED, h264.TOO_LARGE, h264.NO_PICTURE))


def test_a_source_without_keyframes_is_reported_once_per_period(units):
    data, keys = units
    deltas = [unit for unit, key in zip(data, keys) if not key]
    source = h264.H264Source(no_keyframe_after=10.0)
    source.feed(data[0], 0.0)
    assert source.keyframe_overdue(9.9) is None
    assert source.keyframe_overdue(10.5) == pytest.approx(10.5)
    assert source.keyframe_overdue(15.0) is None, 'once per period'
    assert source.keyframe_overdue(20.6) == pytest.approx(20.6)
    source.feed(data[0], 21.0)          # a keyframe: the wait starts over
    assert source.keyframe_overdue(30.0) is None
    fresh = h264.H264Source(no_keyframe_after=10.0)   # never a keyframe at all
    for index, unit in enumerate(deltas * 3):
        fresh.feed(unit, index * 1.0)
    assert fresh.keyframe_overdue(11.0) is not None


@pytest.mark.parametrize('spelling', ['h264', 'H264', 'video/h264', ' video/H264 ', 'h.264',
                                      'avc', 'h264; profile=baseline'])
def test_the_usual_spellings_of_h264_are_accepted(spelling):
    assert h264.is_h264_format(spelling)


@pytest.mark.parametrize('spelling', ['jpeg', 'png', 'h265', 'hevc', 'vp8', '', 'rgb8; jpeg'])
def test_other_formats_are_not_h264(spelling):
    assert not h264.is_h264_format(spelling)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_either_pass_as_a_unit_or_fail_with_a_known_kind(data):
    try:
        info = h264.inspect(data)
    except h264.MalformedUnit as exc:
        assert exc.kind in h264.MALFORMED_KINDS
    else:
        assert h264.VCL_TYPES.intersection(info.nal_types)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_real_unit_cut_anywhere_or_with_a_flipped_byte_never_raises_anything_else(data):
    units, _ = x264_units_cached()
    unit = data.draw(st.sampled_from(units[:3]))
    cut = data.draw(st.integers(0, len(unit)))
    damaged = bytearray(unit[:cut])
    if damaged and data.draw(st.booleans()):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= data.draw(st.integers(1, 255))
    source = h264.H264Source()
    try:
        out = source.feed(bytes(damaged), 0.0)
    except h264.MalformedUnit as exc:
        assert exc.kind in h264.MALFORMED_KINDS
    else:
        assert out.keyframe == (h264.NAL_IDR in out.nal_types and source.sps is not None
                                and source.pps is not None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=60).filter(lambda b: b'\x00\x00' not in b
                                                          and b[-1] != 0),
                min_size=1, max_size=20),
       st.lists(st.booleans(), min_size=20, max_size=20))
def test_split_returns_exactly_the_nal_units_that_were_joined(nals, four_byte):
    joined = b''.join((b'\x00\x00\x00\x01' if long else b'\x00\x00\x01') + nal
                      for nal, long in zip(nals, four_byte))
    assert h264.split_nal_units(joined) == nals


_CACHE = []


def x264_units_cached():
    if not _CACHE:
        _CACHE.append(x264_units(count=4))
    return _CACHE[0]
