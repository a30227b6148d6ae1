"""
Convert sensor_msgs/Image field values to numpy arrays, display pictures and JPEG.

This replaces cv_bridge, which is not available. It is deliberately pure (no rclpy,
no message types) so it can be tested without ROS, and it sits on the video hot path,
so raw images are wrapped as zero-copy strided views and copies happen only where a
conversion needs one (byte swapping, colour conversion, depth colouring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import cv2
import numpy as np


class UnsupportedEncoding(ValueError):
    """Raised for an image encoding this module cannot convert."""

    def __init__(self, encoding: str):
        """Name the offending encoding and list the supported ones."""
        self.encoding = encoding
        super().__init__(
            f'unsupported image encoding {encoding!r}; '
            f'supported: {", ".join(sorted(SUPPORTED_ENCODINGS))}')


MALFORMED_KINDS = ('width', 'height', 'step', 'data', 'undecodable', 'encoding')


class MalformedImage(ValueError):
    """
    Raised when image fields are inconsistent or compressed data cannot be decoded.

    ``kind`` names what is wrong (one of MALFORMED_KINDS), so each kind can be counted and
    logged on its own.
    """

    def __init__(self, message: str, kind: str = 'data'):
        """Keep the human-readable message and the kind of defect."""
        super().__init__(message)
        self.kind = kind


class _Layout(NamedTuple):
    """Memory layout of one pixel: channels per pixel and the channel dtype."""

    channels: int
    dtype: np.dtype


_U8 = np.dtype(np.uint8)
_LAYOUTS = {
    'bgr8': _Layout(3, _U8), '8UC3': _Layout(3, _U8), 'rgb8': _Layout(3, _U8),
    'bgra8': _Layout(4, _U8), 'rgba8': _Layout(4, _U8),
    'mono8': _Layout(1, _U8), '8UC1': _Layout(1, _U8),
    'mono16': _Layout(1, np.dtype(np.uint16)), '16UC1': _Layout(1, np.dtype(np.uint16)),
    '32FC1': _Layout(1, np.dtype(np.float32)),
    'yuv422': _Layout(2, _U8), 'uyvy': _Layout(2, _U8),
    'yuv422_yuy2': _Layout(2, _U8), 'yuyv': _Layout(2, _U8),
    'bayer_rggb8': _Layout(1, _U8), 'bayer_bggr8': _Layout(1, _U8),
    'bayer_gbrg8': _Layout(1, _U8), 'bayer_grbg8': _Layout(1, _U8),
}

SUPPORTED_ENCODINGS = frozenset(_LAYOUTS)

# OpenCV names a Bayer pattern by the 2x2 block starting at the second row and
# column, so ROS's rggb is OpenCV's BG (verified by tests against known mosaics).
_CVT_CODES = {
    'rgb8': cv2.COLOR_RGB2BGR,
    'rgba8': cv2.COLOR_RGBA2BGR,
    'bgra8': cv2.COLOR_BGRA2BGR,
    'yuv422': cv2.COLOR_YUV2BGR_UYVY,
    'uyvy': cv2.COLOR_YUV2BGR_UYVY,
    'yuv422_yuy2': cv2.COLOR_YUV2BGR_YUY2,
    'yuyv': cv2.COLOR_YUV2BGR_YUY2,
    'bayer_rggb8': cv2.COLOR_BayerBG2BGR,
    'bayer_bggr8': cv2.COLOR_BayerRG2BGR,
    'bayer_gbrg8': cv2.COLOR_BayerGR2BGR,
    'bayer_grbg8': cv2.COLOR_BayerGB2BGR,
}
_PASS_THROUGH = frozenset({'bgr8', '8UC3', 'mono8', '8UC1'})
_YUV = frozenset({'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'})
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# image_transport's compressedDepth prepends a 12-byte config header to its PNG.
_COMPRESSED_DEPTH_HEADER = 12


def _layout(encoding: str) -> _Layout:
    try:
        return _LAYOUTS[encoding]
    except (KeyError, TypeError):
        raise UnsupportedEncoding(encoding) from None


def image_to_array(encoding: str, width: int, height: int, step: int, is_bigendian: bool,
                   data) -> np.ndarray:
    """
    Return a natural-layout view of the pixels of a sensor_msgs/Image.

    Shapes: HxWx3 (bgr8, rgb8), HxWx4 (bgra8, rgba8), HxWx2 (YUV 4:2:2), HxW otherwise.
    Row padding is skipped with strides, so the result shares memory with ``data``;
    16/32-bit data is copied only when ``is_bigendian`` differs from this machine.
    """
    channels, dtype = _layout(encoding)
    pixel_bytes = channels * dtype.itemsize
    if width <= 0:
        raise MalformedImage(f'image width must be positive, got {width}x{height}', 'width')
    if height <= 0:
        raise MalformedImage(f'image height must be positive, got {width}x{height}', 'height')
    if step < width * pixel_bytes:
        raise MalformedImage(
            f'step {step} is smaller than width {width} x {pixel_bytes} bytes per pixel', 'step')
    if encoding in _YUV and width % 2:
        raise MalformedImage(f'{encoding} needs an even width, got {width}', 'width')
    buffer = memoryview(data).cast('B')
    if buffer.nbytes < step * height:
        raise MalformedImage(
            f'data has {buffer.nbytes} bytes, expected step {step} x height {height}'
            f' = {step * height}', 'data')
    wire_dtype = dtype.newbyteorder('>' if is_bigendian else '<') if dtype.itemsize > 1 else dtype
    shape = (height, width, channels) if channels > 1 else (height, width)
    strides = (step, pixel_bytes, dtype.itemsize)[:len(shape)]
    array = np.ndarray(shape, wire_dtype, buffer=buffer, strides=strides)
    return array if array.dtype.isnative else array.astype(dtype)


@dataclass(frozen=True)
class DisplaySettings:
    """
    Choose how non-colour images (depth, mono16) are turned into pictures.

    Depth is in metres (16UC1 millimetres are converted first); pixels that are 0,
    negative, NaN or infinite are drawn in ``invalid_color`` (BGR). The colormap's
    first colour is ``depth_min`` (near) and its last is ``depth_max`` (far).
    mono16 is scaled linearly from [mono16_min, mono16_max] to [0, 255]; None takes
    that bound from the frame itself.
    """

    depth_min: float = 0.0
    depth_max: float = 5.0
    colormap: str = 'turbo'
    invalid_color: Tuple[int, int, int] = (0, 0, 0)
    mono16_min: Optional[float] = None
    mono16_max: Optional[float] = None

    def __post_init__(self):
        """Reject settings that cannot produce a picture, at construction time."""
        if not hasattr(cv2, 'COLORMAP_' + str(self.colormap).upper()):
            raise ValueError(f'unknown OpenCV colormap {self.colormap!r}')
        if not self.depth_max > self.depth_min:
            raise ValueError(
                f'depth_max ({self.depth_max}) must exceed depth_min ({self.depth_min})')
        if (self.mono16_min is not None and self.mono16_max is not None
                and not self.mono16_max > self.mono16_min):
            raise ValueError(
                f'mono16_max ({self.mono16_max}) must exceed mono16_min ({self.mono16_min})')
        if len(self.invalid_color) != 3 or not all(0 <= c <= 255 for c in self.invalid_color):
            raise ValueError(f'invalid_color must be a BGR triple of 0..255, '
                             f'got {self.invalid_color!r}')

    @property
    def colormap_code(self) -> int:
        """Return the OpenCV constant for ``colormap``."""
        return getattr(cv2, 'COLORMAP_' + self.colormap.upper())


def _to_levels(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (clipped, rounded) as uint8."""
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += 0.5
    return scaled.astype(np.uint8)


def _depth_to_display(encoding: str, array: np.ndarray, settings: DisplaySettings) -> np.ndarray:
    metres = array / np.float32(1000.0) if encoding == '16UC1' else array
    invalid = ~((metres > 0) & np.isfinite(metres))
    levels = _to_levels(np.where(invalid, np.float32(settings.depth_min), metres),
                        settings.depth_min, settings.depth_max)
    picture = cv2.applyColorMap(levels, settings.colormap_code)
    picture[invalid] = settings.invalid_color
    return picture


def _mono16_to_display(array: np.ndarray, settings: DisplaySettings) -> np.ndarray:
    low = float(array.min()) if settings.mono16_min is None else settings.mono16_min
    high = float(array.max()) if settings.mono16_max is None else settings.mono16_max
    if high <= low:  # a flat frame (auto range) has no contrast to show
        return np.zeros(array.shape, np.uint8)
    return _to_levels(array, low, high)


def to_display(encoding: str, array: np.ndarray,
               settings: DisplaySettings = DisplaySettings()) -> np.ndarray:
    """
    Turn an ``image_to_array`` result into a uint8 picture ready for JPEG.

    Returns HxWx3 BGR, or HxW grey for mono8/mono16. bgr8 and mono8 are returned
    as-is (no copy); colour encodings go through cv2.cvtColor; 16UC1 (mm) and 32FC1
    (m) are colour-mapped depth; mono16 is scaled to grey.
    """
    _layout(encoding)
    if encoding in _PASS_THROUGH:
        return array
    if encoding in _CVT_CODES:
        return cv2.cvtColor(array, _CVT_CODES[encoding])
    if encoding == 'mono16':
        return _mono16_to_display(array, settings)
    return _depth_to_display(encoding, array, settings)


def scaled_size(width: int, height: int, max_width: int, max_height: int) -> Tuple[int, int]:
    """Return the (width, height) ``encode_jpeg`` produces: fit both limits, never upscale."""
    if max_width < 0 or max_height < 0:
        raise ValueError(f'size limits must be >= 0, got {max_width}x{max_height}')
    scale = min(1.0, max_width / width if max_width else 1.0,
                max_height / height if max_height else 1.0)
    if scale >= 1.0:
        return width, height
    new_width = min(max(1, round(width * scale)), max_width or width)
    new_height = min(max(1, round(height * scale)), max_height or height)
    return new_width, new_height


def encode_jpeg(picture: np.ndarray, quality: int = 80, max_width: int = 0,
                max_height: int = 0) -> bytes:
    """Encode a uint8 BGR or grey picture as JPEG, downscaling (INTER_AREA) to fit the limits."""
    if not 1 <= quality <= 100:
        raise ValueError(f'JPEG quality must be in 1..100, got {quality}')
    if picture.dtype != np.uint8:
        raise ValueError(f'JPEG needs a uint8 picture, got {picture.dtype}')
    height, width = picture.shape[:2]
    size = scaled_size(width, height, max_width, max_height)
    if size != (width, height):
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode('.jpg', picture, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError('OpenCV failed to encode the picture as JPEG')
    return encoded.tobytes()


def decode_compressed(data) -> np.ndarray:
    """
    Decode sensor_msgs/CompressedImage data (JPEG, PNG) to a BGR or grey array.

    Bit depth is kept, so a 16-bit PNG (as in compressedDepth, whose 12-byte header
    is skipped) comes back as uint16.
    """
    buffer = np.frombuffer(memoryview(data).cast('B'), np.uint8)
    if buffer[_COMPRESSED_DEPTH_HEADER:][:len(_PNG_SIGNATURE)].tobytes() == _PNG_SIGNATURE:
        buffer = buffer[_COMPRESSED_DEPTH_HEADER:]
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as error:
        raise MalformedImage(f'cannot decode compressed image: {error}',
                             'undecodable') from None
    if image is None:
        raise MalformedImage(f'cannot decode compressed image ({buffer.size} bytes)',
                             'undecodable')
    return image


def is_jpeg(data) -> bool:
    """Return True if ``data`` starts with a JPEG SOI marker (cheap, no decoding)."""
    return bytes(memoryview(data).cast('B')[:3]) == b'\xff\xd8\xff'


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data) -> Optional[Tuple[int, int]]:
    """
    Return ``(width, height)`` read from a JPEG's frame header, without decoding it.

    Passthrough streams forward the source's JPEG bytes untouched and still report the size.
    None when no frame header is found (truncated or not a JPEG).
    """
    view = memoryview(data).cast('B')
    if bytes(view[:2]) != b'\xff\xd8':
        return None
    pos, end = 2, len(view)
    while pos + 4 <= end:
        if view[pos] != 0xFF:
            return None
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        if marker in _SOF_MARKERS:
            if pos + 9 > end:
                return None
            height = (view[pos + 5] << 8) | view[pos + 6]
            width = (view[pos + 7] << 8) | view[pos + 8]
            return width, height
        pos += 2 + length
    return None
