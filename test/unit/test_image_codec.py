"""Tests for video_bridge.core.image_codec against known pixel values (no mocks)."""

import array
import sys

import cv2
from hypothesis import given, settings as hyp_settings, strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest
from video_bridge.core import image_codec
from video_bridge.core.image_codec import DisplaySettings, MalformedImage, UnsupportedEncoding

JUNK = 0xA5
MACHINE_IS_BIG = sys.byteorder == 'big'


def pack(pixels, step, is_bigendian=False, junk=JUNK):
    """Lay out pixels row by row in a `step`-byte stride with junk padding, as on the wire."""
    pixels = np.asarray(pixels)
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder('>' if is_bigendian else '<'))
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(pixels.shape[0], -1)
    assert rows.shape[1] <= step
    buf = np.full((pixels.shape[0], step), junk, np.uint8)
    buf[:, :rows.shape[1]] = rows
    return bytearray(buf.tobytes())


def to_array(encoding, pixels, step, is_bigendian=False, junk=JUNK):
    """Pack `pixels` and decode them back with image_to_array."""
    height, width = pixels.shape[:2]
    data = pack(pixels, step, is_bigendian, junk)
    return image_codec.image_to_array(encoding, width, height, step, is_bigendian, data)


def colour(level, colormap=cv2.COLORMAP_JET):
    """Return the BGR colour OpenCV's colormap gives an 8-bit level."""
    return cv2.applyColorMap(np.array([[level]], np.uint8), colormap)[0, 0]


def bayer_mosaic(pattern, bgr, height=8, width=10):
    """Sample a uniform BGR scene through a Bayer pattern such as 'rggb'."""
    value = {'b': bgr[0], 'g': bgr[1], 'r': bgr[2]}
    mosaic = np.zeros((height, width), np.uint8)
    for i, channel in enumerate(pattern):
        mosaic[i // 2::2, i % 2::2] = value[channel]
    return mosaic


RNG = np.random.default_rng(1234)
BGR = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)


# ---------------------------------------------------------------- encodings

def test_supported_encodings_lists_every_encoding():
    assert image_codec.SUPPORTED_ENCODINGS >= {
        'bgr8', 'rgb8', 'bgra8', 'rgba8', 'mono8', 'mono16', '16UC1', '32FC1',
        'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv',
        'bayer_rggb8', 'bayer_bggr8', 'bayer_gbrg8', 'bayer_grbg8', '8UC1', '8UC3'}


def test_unsupported_encoding_names_the_encoding():
    with pytest.raises(UnsupportedEncoding) as info:
        image_codec.image_to_array('nv12', 4, 4, 4, False, bytes(16))
    assert info.value.encoding == 'nv12'
    assert "'nv12'" in str(info.value) and 'bgr8' in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnsupportedEncoding, match='nv12'):
        image_codec.to_display('nv12', np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize('encoding', ['bgr8', '8UC3'])
def test_bgr8_is_a_zero_copy_padded_view(encoding):
    step = 5 * 3 + 7
    data = pack(BGR, step)
    arr = image_codec.image_to_array(encoding, 5, 3, step, False, data)
    assert arr.shape == (3, 5, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, BGR)
    assert np.shares_memory(arr, np.frombuffer(data, np.uint8))
    data[step + 3] = 77  # row 1, pixel 1, channel 0 is visible through the view
    assert arr[1, 1, 0] == 77
    assert image_codec.to_display(encoding, arr) is arr


@pytest.mark.parametrize(
    'container', [bytes, bytearray, memoryview, lambda b: array.array('B', b)])
def test_accepts_every_buffer_type(container):
    data = container(bytes(pack(BGR, 20)))
    arr = image_codec.image_to_array('bgr8', 5, 3, 20, False, data)
    np.testing.assert_array_equal(arr, BGR)
    assert np.shares_memory(arr, np.frombuffer(data, np.uint8))


def test_rgb8_keeps_channel_order_and_displays_as_bgr():
    rgb = BGR[..., ::-1]
    arr = to_array('rgb8', rgb, 16)
    np.testing.assert_array_equal(arr, rgb)
    np.testing.assert_array_equal(image_codec.to_display('rgb8', arr), BGR)


@pytest.mark.parametrize('encoding,order', [('bgra8', [0, 1, 2, 3]), ('rgba8', [2, 1, 0, 3])])
def test_four_channel_encodings_drop_alpha(encoding, order):
    alpha = RNG.integers(0, 256, (3, 5, 1), dtype=np.uint8)
    pixels = np.concatenate([BGR, alpha], axis=2)[..., order]
    arr = to_array(encoding, pixels, 5 * 4 + 3)
    assert arr.shape == (3, 5, 4)
    np.testing.assert_array_equal(arr, pixels)
    picture = image_codec.to_display(encoding, arr)
    assert picture.shape == (3, 5, 3)
    np.testing.assert_array_equal(picture, BGR)


@pytest.mark.parametrize('encoding', ['mono8', '8UC1'])
def test_mono8_passes_through(encoding):
    grey = BGR[..., 0]
    arr = to_array(encoding, grey, 9)
    assert arr.shape == (3, 5)
    np.testing.assert_array_equal(arr, grey)
    assert image_codec.to_display(encoding, arr) is arr


@pytest.mark.parametrize('encoding,dtype,values', [
    ('mono16', np.uint16, [[0, 1, 258], [65535, 4660, 43981]]),
    ('16UC1', np.uint16, [[0, 1, 258], [65535, 4660, 43981]]),
    ('32FC1', np.float32, [[0.0, 1.5, -2.25], [np.nan, np.inf, 1e-3]]),
])
@pytest.mark.parametrize('is_bigendian', [False, True])
def test_wide_encodings_honour_endianness(encoding, dtype, values, is_bigendian):
    pixels = np.array(values, dtype)
    step = 3 * pixels.itemsize + 5
    data = pack(pixels, step, is_bigendian)
    arr = image_codec.image_to_array(encoding, 3, 2, step, is_bigendian, data)
    assert arr.shape == (2, 3) and arr.dtype == np.dtype(dtype)
    assert arr.dtype.isnative
    np.testing.assert_array_equal(arr, pixels)
    # Copy only when the wire byte order differs from the machine's.
    assert np.shares_memory(arr, np.frombuffer(data, np.uint8)) == (is_bigendian == MACHINE_IS_BIG)


@pytest.mark.parametrize('encoding,y_first', [
    ('yuv422', False), ('uyvy', False), ('yuv422_yuy2', True), ('yuyv', True)])
def test_yuv422_byte_orders(encoding, y_first):
    # Two pixel pairs: neutral chroma with dark/bright luma, then BT.601 pure red.
    pairs = [(50, 128, 200, 128), (82, 90, 82, 240)]  # (Y0, U, Y1, V)
    row = []
    for y0, u, y1, v in pairs:
        row += [y0, u, y1, v] if y_first else [u, y0, v, y1]
    raw = np.array([row, row], np.uint8).reshape(2, 4, 2)
    arr = to_array(encoding, raw, 8 + 3)
    assert arr.shape == (2, 4, 2)
    np.testing.assert_array_equal(arr, raw)
    picture = image_codec.to_display(encoding, arr).astype(int)
    assert picture.shape == (2, 4, 3)
    expected = [[41] * 3, [214] * 3, [0, 1, 255], [0, 1, 255]]  # 1.164 * (Y - 16), ...
    np.testing.assert_allclose(picture[0], expected, atol=2)
    np.testing.assert_array_equal(picture[0], picture[1])


@pytest.mark.parametrize('encoding', ['yuv422', 'yuyv'])
def test_yuv422_neutral_grey(encoding):
    arr = to_array(encoding, np.full((2, 4, 2), 128, np.uint8), 8)
    np.testing.assert_allclose(image_codec.to_display(encoding, arr), 128, atol=3)


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
@pytest.mark.parametrize('scene', [(30, 100, 200), (0, 0, 255), (255, 0, 0), (0, 255, 0)])
def test_bayer_recovers_a_uniform_scene(pattern, scene):
    mosaic = bayer_mosaic(pattern, scene)
    arr = to_array(f'bayer_{pattern}8', mosaic, 10 + 6)
    assert arr.shape == (8, 10) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, mosaic)
    picture = image_codec.to_display(f'bayer_{pattern}8', arr)
    assert picture.shape == (8, 10, 3)
    np.testing.assert_allclose(picture[2:-2, 2:-2].astype(int) - scene, 0, atol=1)


# ---------------------------------------------------------------- malformed

@pytest.mark.parametrize('width,height,step,size', [
    (4, 3, 12, 35),   # one byte short of step * height
    (4, 3, 11, 100),  # step < width * 3
    (0, 3, 12, 36),
    (4, 0, 12, 36),
    (-4, 3, 12, 36),
    (4, 3, 0, 36),
])
def test_malformed_bgr8(width, height, step, size):
    with pytest.raises(MalformedImage):
        image_codec.image_to_array('bgr8', width, height, step, False, bytes(size))


def test_exact_and_oversized_data_are_fine():
    assert image_codec.image_to_array('bgr8', 4, 3, 12, False, bytes(36)).shape == (3, 4, 3)
    assert image_codec.image_to_array('bgr8', 4, 3, 12, False, bytes(40)).shape == (3, 4, 3)


def test_malformed_wide_and_yuv():
    with pytest.raises(MalformedImage):  # 16-bit needs 2 bytes per pixel
        image_codec.image_to_array('16UC1', 4, 2, 7, False, bytes(64))
    with pytest.raises(MalformedImage):
        image_codec.image_to_array('32FC1', 4, 2, 16, False, bytes(31))
    with pytest.raises(MalformedImage, match='even'):
        image_codec.image_to_array('yuyv', 3, 2, 6, False, bytes(12))


# ---------------------------------------------------------------- depth

DEPTH = DisplaySettings(depth_min=0.0, depth_max=2.55, colormap='jet',
                        invalid_color=(255, 0, 255))  # 1 level per centimetre


def test_depth_maps_known_distances_to_colormap_levels():
    metres = np.array([[0.5, 1.0, 2.0, 0.01]], np.float32)
    picture = image_codec.to_display('32FC1', metres, DEPTH)
    assert picture.shape == (1, 4, 3) and picture.dtype == np.uint8
    for i, level in enumerate([50, 100, 200, 1]):
        np.testing.assert_array_equal(picture[0, i], colour(level))


def test_depth_near_and_far_ends_and_clipping():
    near_far = DisplaySettings(depth_min=0.5, depth_max=3.05, colormap='viridis')
    metres = np.array([[0.1, 0.5, 1.5, 3.05, 40.0]], np.float32)
    picture = image_codec.to_display('32FC1', metres, near_far)
    for i, level in enumerate([0, 0, 100, 255, 255]):
        np.testing.assert_array_equal(picture[0, i], colour(level, cv2.COLORMAP_VIRIDIS))
    assert not np.array_equal(colour(0, cv2.COLORMAP_VIRIDIS), colour(255, cv2.COLORMAP_VIRIDIS))


def test_invalid_depth_uses_invalid_color():
    metres = np.array([[0.0, np.nan, np.inf, -np.inf, -1.0, 1.0]], np.float32)
    picture = image_codec.to_display('32FC1', metres, DEPTH)
    np.testing.assert_array_equal(picture[0, :5], [[255, 0, 255]] * 5)
    np.testing.assert_array_equal(picture[0, 5], colour(100))


@pytest.mark.parametrize('is_bigendian', [False, True])
def test_16uc1_millimetres_match_32fc1_metres(is_bigendian):
    mm = np.array([[0, 10, 500, 1000], [1234, 2000, 2550, 65535]], np.uint16)
    depth16 = to_array('16UC1', mm, 4 * 2 + 2, is_bigendian)
    depth32 = to_array('32FC1', mm.astype(np.float32) / 1000, 4 * 4 + 4, is_bigendian)
    picture16 = image_codec.to_display('16UC1', depth16, DEPTH)
    np.testing.assert_array_equal(picture16, image_codec.to_display('32FC1', depth32, DEPTH))
    np.testing.assert_array_equal(picture16[0, 0], [255, 0, 255])
    np.testing.assert_array_equal(picture16[0, 3], colour(100))
    np.testing.assert_array_equal(picture16[1, 3], colour(255))


def test_16uc1_matches_32fc1_over_a_millimetre_sweep():
    mm = np.arange(0, 6001, dtype=np.uint16).reshape(1, -1)
    sweep = DisplaySettings(depth_min=0.3, depth_max=5.4)
    np.testing.assert_array_equal(
        image_codec.to_display('16UC1', mm, sweep),
        image_codec.to_display('32FC1', mm.astype(np.float32) / 1000, sweep))


def test_default_settings_use_turbo_over_zero_to_five_metres():
    metres = np.array([[0.01, 5.0, 0.0]], np.float32)
    picture = image_codec.to_display('32FC1', metres)
    np.testing.assert_array_equal(picture[0, 0], colour(1, cv2.COLORMAP_TURBO))
    np.testing.assert_array_equal(picture[0, 1], colour(255, cv2.COLORMAP_TURBO))
    np.testing.assert_array_equal(picture[0, 2], [0, 0, 0])


@pytest.mark.parametrize('kwargs', [
    {'colormap': 'not_a_colormap'},
    {'depth_min': 2.0, 'depth_max': 2.0},
    {'mono16_min': 10, 'mono16_max': 5},
    {'invalid_color': (0, 0, 256)},
])
def test_bad_settings_fail_at_construction(kwargs):
    with pytest.raises(ValueError):
        DisplaySettings(**kwargs)


def test_colormap_names_are_case_insensitive():
    assert DisplaySettings(colormap='Inferno').colormap_code == cv2.COLORMAP_INFERNO


# ---------------------------------------------------------------- mono16

def test_mono16_explicit_range():
    values = np.array([[0, 50, 100, 300, 510, 600]], np.uint16)
    grey = image_codec.to_display(
        'mono16', values, DisplaySettings(mono16_min=100, mono16_max=610))
    assert grey.shape == (1, 6) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey, [[0, 0, 0, 100, 205, 250]])


def test_mono16_auto_range_uses_frame_min_and_max():
    values = np.array([[100, 500], [1120, 300]], np.uint16)
    grey = image_codec.to_display('mono16', values)
    np.testing.assert_array_equal(grey, [[0, 100], [255, 50]])


def test_mono16_one_sided_range():
    values = np.array([[0, 400, 1020]], np.uint16)
    grey = image_codec.to_display('mono16', values, DisplaySettings(mono16_min=0))
    np.testing.assert_array_equal(grey, [[0, 100, 255]])


def test_mono16_flat_frame_is_black():
    grey = image_codec.to_display('mono16', np.full((2, 2), 777, np.uint16))
    np.testing.assert_array_equal(grey, np.zeros((2, 2), np.uint8))


@pytest.mark.parametrize('is_bigendian', [False, True])
def test_mono16_end_to_end_from_wire(is_bigendian):
    arr = to_array('mono16', np.array([[256, 512, 1276]], np.uint16), 8, is_bigendian)
    np.testing.assert_array_equal(image_codec.to_display('mono16', arr), [[0, 64, 255]])


# ---------------------------------------------------------------- jpeg

def decode(jpeg):
    """Decode with OpenCV directly, keeping channels as stored."""
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)


def noisy(height=48, width=64):
    """Return a reproducible noise picture (incompressible, so quality shows in size)."""
    return np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize('limits,size', [
    ((0, 0), (64, 48)),
    ((32, 0), (32, 24)),
    ((0, 12), (16, 12)),
    ((32, 6), (8, 6)),
    ((16, 100), (16, 12)),
    ((1000, 1000), (64, 48)),
    ((64, 48), (64, 48)),
])
def test_encode_jpeg_sizes(limits, size):
    jpeg = image_codec.encode_jpeg(noisy(), max_width=limits[0], max_height=limits[1])
    assert image_codec.is_jpeg(jpeg)
    assert decode(jpeg).shape == (size[1], size[0], 3)
    assert image_codec.scaled_size(64, 48, *limits) == size


def test_encode_jpeg_downscale_averages_pixels():
    checkers = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    decoded = decode(image_codec.encode_jpeg(checkers, 100, max_width=4))
    assert decoded.shape == (4, 4)
    np.testing.assert_allclose(decoded, 128, atol=3)  # INTER_AREA, not nearest-neighbour


def test_encode_jpeg_keeps_colour_and_grey():
    flat = np.full((16, 16, 3), (40, 120, 200), np.uint8)
    np.testing.assert_allclose(decode(image_codec.encode_jpeg(flat, 95)), flat, atol=3)
    grey = np.full((16, 16), 90, np.uint8)
    decoded = decode(image_codec.encode_jpeg(grey, max_width=8))
    assert decoded.shape == (8, 8)
    np.testing.assert_allclose(decoded, 90, atol=2)


def test_encode_jpeg_accepts_padded_read_only_views():
    step = 10 * 3 + 6
    arr = image_codec.image_to_array('bgr8', 10, 4, step, False, bytes(pack(noisy(4, 10), step)))
    assert not arr.flags.writeable and not arr.flags.c_contiguous
    assert decode(image_codec.encode_jpeg(arr)).shape == (4, 10, 3)


def test_encode_jpeg_quality():
    small = image_codec.encode_jpeg(noisy(), quality=10)
    large = image_codec.encode_jpeg(noisy(), quality=95)
    assert len(small) < len(large)
    image_codec.encode_jpeg(noisy(), quality=1)
    image_codec.encode_jpeg(noisy(), quality=100)
    for quality in (0, 101, -5):
        with pytest.raises(ValueError):
            image_codec.encode_jpeg(noisy(), quality=quality)


def test_encode_jpeg_rejects_non_uint8_and_negative_limits():
    with pytest.raises(ValueError):
        image_codec.encode_jpeg(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError):
        image_codec.encode_jpeg(noisy(), max_width=-1)


@given(st.integers(1, 4000), st.integers(1, 4000), st.integers(0, 5000), st.integers(0, 5000))
def test_scaled_size_fits_limits_keeps_aspect_never_upscales(width, height, max_w, max_h):
    new_w, new_h = image_codec.scaled_size(width, height, max_w, max_h)
    assert 1 <= new_w <= width and 1 <= new_h <= height
    assert new_w <= (max_w or width) and new_h <= (max_h or height)
    if (new_w, new_h) != (width, height):
        assert new_w == max_w or new_h == max_h  # the tighter limit is used fully
        # Both sides use one scale factor, up to rounding or the 1-pixel floor.
        scale = min(max_w / width if max_w else 1, max_h / height if max_h else 1)
        assert abs(width * scale - new_w) <= 1 and abs(height * scale - new_h) <= 1


# ---------------------------------------------------------------- decode

@pytest.mark.parametrize('image', [
    np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8),
    np.random.default_rng(4).integers(0, 256, (5, 7), dtype=np.uint8),
    np.random.default_rng(5).integers(0, 65536, (5, 7), dtype=np.uint16),
])
def test_decode_png_round_trip_is_exact(image):
    png = cv2.imencode('.png', image)[1].tobytes()
    decoded = image_codec.decode_compressed(array.array('B', png))
    assert decoded.dtype == image.dtype
    np.testing.assert_array_equal(decoded, image)
    assert not image_codec.is_jpeg(png)


def test_decode_compressed_depth_header_is_skipped():
    depth = np.array([[0, 1000], [2500, 65535]], np.uint16)
    payload = bytes(12) + cv2.imencode('.png', depth)[1].tobytes()
    np.testing.assert_array_equal(image_codec.decode_compressed(payload), depth)


def test_decode_jpeg_round_trip():
    flat = np.full((24, 32, 3), (200, 30, 90), np.uint8)
    jpeg = image_codec.encode_jpeg(flat, quality=95)
    decoded = image_codec.decode_compressed(memoryview(jpeg))
    assert decoded.shape == (24, 32, 3) and decoded.dtype == np.uint8
    np.testing.assert_allclose(decoded, flat, atol=4)


@pytest.mark.parametrize('data', [b'', b'garbage', b'\xff\xd8\xff\xe0' + bytes(20)])
def test_decode_malformed(data):
    with pytest.raises(MalformedImage):
        image_codec.decode_compressed(data)


def test_is_jpeg():
    jpeg = image_codec.encode_jpeg(noisy(8, 8))
    assert image_codec.is_jpeg(jpeg)
    assert image_codec.is_jpeg(array.array('B', jpeg))
    assert not image_codec.is_jpeg(b'')
    assert not image_codec.is_jpeg(b'\xff\xd8')
    assert not image_codec.is_jpeg(b'\x89PNG\r\n\x1a\n')


# ---------------------------------------------------------------- properties

@st.composite
def padded_images(draw, dtype, channels):
    """Draw (pixels, step, junk byte) with random size and row padding."""
    height = draw(st.integers(1, 12))
    width = draw(st.integers(1, 12))
    shape = (height, width, channels) if channels > 1 else (height, width)
    pixels = draw(hnp.arrays(dtype, shape))
    padding = draw(st.integers(0, 9))
    junk = draw(st.integers(0, 255))
    return pixels, width * channels * np.dtype(dtype).itemsize + padding, junk


@hyp_settings(max_examples=200)
@given(padded_images(np.uint8, 3))
def test_bgr8_round_trips_exactly(case):
    pixels, step, junk = case
    arr = to_array('bgr8', pixels, step, junk=junk)
    np.testing.assert_array_equal(arr, pixels)
    assert image_codec.to_display('bgr8', arr) is arr


@hyp_settings(max_examples=200)
@given(padded_images(np.uint16, 1), st.booleans())
def test_16uc1_round_trips_exactly(case, is_bigendian):
    pixels, step, junk = case
    arr = to_array('16UC1', pixels, step, is_bigendian, junk)
    assert arr.dtype == np.uint16 and arr.dtype.isnative
    np.testing.assert_array_equal(arr, pixels)
