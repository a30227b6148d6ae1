"""
Frame sources for camera_node: a test pattern, a video file and a V4L2 device.

Deliberately pure (no rclpy) so the capture logic is testable without ROS; camera_node is a thin
adapter around it. Frames are BGR uint8 arrays, or, for an MJPG device in passthrough mode, the
device's own JPEG bytes, so a compressed stream can be forwarded without decoding it.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Protocol, Tuple

import cv2
import numpy as np
from video_bridge.core import image_codec
import yaml

SOURCES = ('pattern', 'device', 'file')
PIXEL_FORMATS = ('', 'MJPG', 'YUYV')


@dataclass
class Frame:
    """One captured frame: pixels, raw JPEG bytes, or both."""

    image: Optional[np.ndarray]   # HxWx3 uint8 BGR; None when only jpeg is given
    capture_time: float           # time.time() at capture (wall clock, s)
    jpeg: Optional[bytes] = None  # the device's own MJPEG bytes, when passthrough is on

    @property
    def size(self) -> Tuple[int, int]:
        """Return (width, height), read from the JPEG header when there are no pixels."""
        if self.image is not None:
            return self.image.shape[1], self.image.shape[0]
        if self.jpeg is not None:
            return jpeg_size(self.jpeg)
        raise ValueError('frame has neither image nor jpeg')


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message names the path and the reason."""


class FrameSource(Protocol):
    """What camera_node needs from a source of frames."""

    description: str

    def open(self) -> None:  # noqa: A003 (the FrameSource API)
        """Acquire the underlying resource; raise SourceError if impossible."""

    def read(self) -> Optional[Frame]:
        """Return the next frame, or None at the end of a (non-looping) file."""

    def close(self) -> None:
        """Release the underlying resource; safe to call repeatedly."""


def jpeg_size(data: bytes) -> Tuple[int, int]:
    """Return (width, height) from a JPEG's frame header, without decoding the image."""
    size = image_codec.jpeg_size(data)
    if size is None:
        raise ValueError('not a JPEG with a frame header')
    return size


def _is_jpeg(data: Optional[np.ndarray]) -> bool:
    """Tell whether a capture buffer holds encoded JPEG bytes (1xN) rather than pixels."""
    return (data is not None and data.dtype == np.uint8 and data.ndim <= 2
            and data.size == data.shape[-1] and data.size > 4
            and data.ravel()[0] == 0xFF and data.ravel()[1] == 0xD8)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Return a 3-channel BGR image (some backends hand out grey or BGRA)."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class TestPatternSource:
    """
    Colour bars, a grey ramp and a moving box, with the frame counter and the time drawn in.

    The bars and ramp are drawn once; each frame is one copy of them plus a box and two
    strings, well under a millisecond at 640x480, so the pattern measures the pipeline rather
    than itself. Content is deterministic except for the counter, the clock and the box.
    """

    __test__ = False  # not a pytest test class despite its name

    # 75 % SMPTE bars, BGR: grey, yellow, cyan, green, magenta, red, blue
    _BARS = ((191, 191, 191), (0, 191, 191), (191, 191, 0), (0, 191, 0),
             (191, 0, 191), (0, 0, 191), (191, 0, 0))

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0):
        """Precompute the static background for ``width`` x ``height``."""
        if width < 1 or height < 1 or not fps > 0:
            raise ValueError(f'test pattern needs a positive size and fps, got '
                             f'{width}x{height} at {fps} fps')
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.description = f'test pattern {self.width}x{self.height}'
        self.count = 0
        self._background = self._draw_background()
        self._bars_height = self.height * 2 // 3
        self._box = max(2, self.height // 8)
        # the box crosses the frame in about two seconds whatever the frame rate
        self._box_step = max(1, int(round(self.width / (2.0 * self.fps))))
        self._font_scale = max(0.3, self.height / 480.0 * 0.8)
        self._thickness = max(1, self.height // 240)

    def _draw_background(self) -> np.ndarray:
        w, h = self.width, self.height
        image = np.empty((h, w, 3), np.uint8)
        bars_h = h * 2 // 3
        edges = np.linspace(0, w, len(self._BARS) + 1).astype(int)
        for colour, left, right in zip(self._BARS, edges[:-1], edges[1:]):
            image[:bars_h, left:right] = colour
        ramp = np.linspace(0, 255, w).astype(np.uint8)
        image[bars_h:] = ramp[np.newaxis, :, np.newaxis]
        return image

    def open(self) -> None:  # noqa: A003 (the FrameSource API)
        """Nothing to acquire: the pattern is always available."""

    def read(self) -> Frame:
        """Draw the next frame."""
        now = time.time()
        image = self._background.copy()
        span = max(1, self.width - self._box)
        x = (self.count * self._box_step) % span
        y = max(0, (self._bars_height - self._box) // 2)
        image[y:y + self._box, x:x + self._box] = 255
        image[y + self._box // 4:y + self._box * 3 // 4,
              x + self._box // 4:x + self._box * 3 // 4] = 0
        stamp = time.strftime('%H:%M:%S', time.localtime(now)) + f'.{int(now * 1000) % 1000:03d}'
        line = int(24 * self._font_scale / 0.8)
        for row, text in enumerate((f'#{self.count:06d}', stamp)):
            origin = (4, self._bars_height + line * (row + 1))
            cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, self._font_scale,
                        (0, 0, 0), self._thickness + 2, cv2.LINE_8)
            cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, self._font_scale,
                        (255, 255, 255), self._thickness, cv2.LINE_8)
        self.count += 1
        return Frame(image=image, capture_time=now)

    def close(self) -> None:
        """Nothing to release."""


class VideoFileSource:
    """Frames of a video file (anything OpenCV's FFmpeg backend reads), optionally looped."""

    def __init__(self, path: str, loop: bool = True):
        """Remember the file; nothing is opened until open()."""
        if not path:
            raise ValueError('video file path is empty')
        self.path = path
        self.loop = bool(loop)
        self.description = f"video file '{path}'" + (' (looping)' if self.loop else '')
        self._capture: Optional[cv2.VideoCapture] = None

    def open(self) -> None:  # noqa: A003 (the FrameSource API)
        """Open the file; raise SourceError saying why it is unusable."""
        self.close()
        if not os.path.exists(self.path):
            raise SourceError(f"video file '{self.path}' does not exist")
        if not os.path.isfile(self.path):
            raise SourceError(f"video file '{self.path}' is not a regular file")
        if not os.access(self.path, os.R_OK):
            raise SourceError(f"video file '{self.path}' is not readable (permission denied)")
        capture = cv2.VideoCapture(self.path, cv2.CAP_ANY)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open video file '{self.path}': "
                              'not a video format OpenCV can decode')
        self._capture = capture

    def read(self) -> Optional[Frame]:
        """Return the next frame; at the end rewind if looping, else return None."""
        if self._capture is None:
            raise SourceError(f"video file '{self.path}' is not open")
        ok, image = self._capture.read()
        if not ok and self.loop:
            # rewinding by seeking is cheap; reopen if the container refuses to seek
            if not self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
                self.open()
            ok, image = self._capture.read()
        if not ok or image is None:
            return None
        return Frame(image=as_bgr(image), capture_time=time.time())

    def close(self) -> None:
        """Release the file."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class DeviceSource:
    """
    A camera read through OpenCV: V4L2 for /dev/... paths and indices, CAP_ANY for other paths.

    Any other path opens with CAP_ANY so tests can emulate a camera with a video file; such an
    emulated device is paced at ``fps`` (a real camera's blocking read paces itself) and its end
    of stream is a read failure, like an unplugged camera. With ``passthrough_jpeg`` and MJPG the
    device's JPEG bytes are returned undecoded (V4L2: CONVERT_RGB=0; FFmpeg: raw packets); a
    backend that gives no JPEG falls back to decoded frames and pop_warning() says so once.
    """

    def __init__(self, device: str, width: int = 640, height: int = 480, fps: float = 30.0,
                 pixel_format: str = '', passthrough_jpeg: bool = False):
        """Check and remember the settings; nothing is opened until open()."""
        if not device:
            raise ValueError('device is empty')
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f'pixel_format {pixel_format!r} is not one of '
                             f'{", ".join(repr(p) for p in PIXEL_FORMATS)}')
        if width < 1 or height < 1 or not fps > 0:
            raise ValueError(f'device needs a positive size and fps, got '
                             f'{width}x{height} at {fps} fps')
        self.device = device
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.pixel_format = pixel_format
        self.passthrough_jpeg = bool(passthrough_jpeg) and pixel_format == 'MJPG'
        self.is_v4l2 = device.isdigit() or device.startswith('/dev/')
        mode = f', {pixel_format}' if pixel_format else ''
        mode += ', JPEG passthrough' if self.passthrough_jpeg else ''
        self.description = f"device '{device}'" + (f' ({mode[2:]})' if mode else '')
        self.actual_size: Optional[Tuple[int, int]] = None
        self._capture: Optional[cv2.VideoCapture] = None
        self._raw = False
        self._raw_unsupported = False
        self._warning: Optional[str] = None
        self._warned = False
        self._next_due = 0.0

    def _open_capture(self, raw: bool) -> cv2.VideoCapture:
        if not self.is_v4l2:
            params = [cv2.CAP_PROP_FORMAT, -1] if raw else []
            return cv2.VideoCapture(self.device, cv2.CAP_ANY, params)
        target = int(self.device) if self.device.isdigit() else self.device
        capture = cv2.VideoCapture(target, cv2.CAP_V4L2)
        if capture.isOpened():
            if self.pixel_format:  # the format first: it limits the sizes on offer
                capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.pixel_format))
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            capture.set(cv2.CAP_PROP_FPS, self.fps)
            # a stalled camera must not block the capture thread (and shutdown) for long
            capture.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(2000, int(3000 / self.fps)))
            if raw:
                capture.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        return capture

    def open(self) -> None:  # noqa: A003 (the FrameSource API)
        """Open the device; raise SourceError naming it and the reason when impossible."""
        self.close()
        where = f"device '{self.device}'"
        if not self.device.isdigit():
            if not os.path.exists(self.device):
                hint = ' (is the camera plugged in?)' if self.is_v4l2 else ''
                raise SourceError(f'{where}: no such device{hint}')
            if not os.access(self.device, os.R_OK):
                raise SourceError(f"{where}: permission denied (is this user in the 'video' "
                                  'group?)')
        self._raw = self.passthrough_jpeg and not self._raw_unsupported
        capture = self._open_capture(self._raw)
        if not capture.isOpened() and self._raw:
            capture.release()
            self._fall_back('the backend refused raw capture')
            capture = self._open_capture(False)
        if not capture.isOpened():
            capture.release()
            backend = 'V4L2' if self.is_v4l2 else 'any OpenCV backend'
            raise SourceError(f'{where}: cannot open it with {backend} (busy, or not a camera)')
        self._capture = capture
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.actual_size = (width, height) if width > 0 and height > 0 else None
        self._next_due = time.monotonic()

    def _fall_back(self, reason: str) -> None:
        self._raw = False
        self._raw_unsupported = True
        if not self._warned:
            self._warned = True
            self._warning = (f"device '{self.device}': no raw JPEG from the capture backend "
                             f'({reason}); decoding frames instead of passing JPEG through')

    def pop_warning(self) -> Optional[str]:
        """Return the passthrough fallback warning once (then None), for the node to log."""
        warning, self._warning = self._warning, None
        return warning

    def _pace(self) -> None:
        # only an emulated device needs this: a camera's blocking read paces itself
        now = time.monotonic()
        if self._next_due > now:
            time.sleep(self._next_due - now)
        self._next_due = max(self._next_due + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)

    def _grab(self) -> np.ndarray:
        if not self.is_v4l2:
            self._pace()
        try:
            ok, data = self._capture.read()
        except cv2.error as err:
            raise SourceError(f"device '{self.device}': read failed ({err})") from None
        if not ok or data is None:
            raise SourceError(f"device '{self.device}': read failed (unplugged, or the stream "
                              'stopped)')
        return data

    def read(self) -> Frame:
        """Return the next frame; raise SourceError when the device stops delivering."""
        if self._capture is None:
            raise SourceError(f"device '{self.device}' is not open")
        data = self._grab()
        if self._raw:
            if _is_jpeg(data):
                return Frame(image=None, capture_time=time.time(), jpeg=data.tobytes())
            self._fall_back(f'got a {data.shape} {data.dtype} buffer')
            self._capture.release()
            self._capture = self._open_capture(False)
            if not self._capture.isOpened():
                raise SourceError(f"device '{self.device}': cannot reopen it for decoded frames")
            data = self._grab()
        return Frame(image=as_bgr(data), capture_time=time.time())

    def close(self) -> None:
        """Release the device."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class Backoff:
    """Exponential retry delays: initial, initial*factor, ... capped at maximum."""

    def __init__(self, initial: float = 0.5, maximum: float = 8.0, factor: float = 2.0):
        """Check the settings and start at ``initial``."""
        if not initial > 0 or not maximum >= initial or not factor >= 1:
            raise ValueError(f'backoff needs 0 < initial <= maximum and factor >= 1, got '
                             f'initial={initial} maximum={maximum} factor={factor}')
        self.initial, self.maximum, self.factor = float(initial), float(maximum), float(factor)
        self._next = self.initial

    def next_delay(self) -> float:
        """Return the delay before the next attempt and grow the following one."""
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay

    def reset(self) -> None:
        """Start again at ``initial`` (after a success)."""
        self._next = self.initial


def _number(params: Mapping[str, Any], name: str, default, kind=float, low=None) -> Any:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{name} must be a number, got {value!r}')
    if kind is int and value != int(value):
        raise ValueError(f'{name} must be an integer, got {value!r}')
    if not math.isfinite(value) or (low is not None and value < low):
        raise ValueError(f'{name} must be at least {low}, got {value!r}')
    return kind(value)


def make_source(params: Mapping[str, Any]) -> FrameSource:
    """Build the source selected by camera_node's parameter values; ValueError on nonsense."""
    kind = params.get('source', 'pattern')
    if kind not in SOURCES:
        raise ValueError(f'source {kind!r} is not one of {", ".join(map(repr, SOURCES))}')
    width = _number(params, 'width', 640, int, 1)
    height = _number(params, 'height', 480, int, 1)
    fps = _number(params, 'fps', 30.0, float, 1e-3)
    if kind == 'pattern':
        return TestPatternSource(width, height, fps)
    if kind == 'file':
        path = params.get('file', '')
        if not path:
            raise ValueError("source 'file' needs the file parameter (a video file path)")
        return VideoFileSource(path, bool(params.get('loop', True)))
    device = params.get('device', '/dev/video0')
    if not device:
        raise ValueError("source 'device' needs the device parameter (e.g. /dev/video0)")
    return DeviceSource(device, width, height, fps, params.get('pixel_format', ''),
                        passthrough_jpeg=bool(params.get('publish_compressed', False)))


_MATRICES = {  # YAML key: (CameraInfo field, rows, cols or None for any, required)
    'camera_matrix': ('k', 3, 3, True),
    'distortion_coefficients': ('d', 1, None, True),
    'rectification_matrix': ('r', 3, 3, False),
    'projection_matrix': ('p', 3, 4, True),
}


def _matrix(path: str, key: str, node: Any, rows: int, cols: Optional[int]) -> List[float]:
    if not isinstance(node, dict) or not {'rows', 'cols', 'data'} <= set(node):
        raise ValueError(f'{path}: {key} must be a mapping with rows, cols and data')
    if node['rows'] != rows or (cols is not None and node['cols'] != cols):
        want = f'{rows}x{cols}' if cols is not None else f'{rows}xN'
        raise ValueError(f"{path}: {key} must be {want}, got {node['rows']}x{node['cols']}")
    data = node['data']
    if not isinstance(data, list) or len(data) != node['rows'] * node['cols']:
        count = node['rows'] * node['cols']
        raise ValueError(f'{path}: {key}.data must hold rows*cols = {count} numbers')
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in data):
        raise ValueError(f'{path}: {key}.data must hold only finite numbers')
    return [float(v) for v in data]


def load_camera_info(path: str) -> Dict[str, Any]:
    """
    Read a ROS camera_calibration YAML file into CameraInfo field values.

    Returns width, height, camera_name, distortion_model, d, k, r, p (lists of floats), so a
    node can copy them onto a sensor_msgs/CameraInfo. A missing rectification_matrix means a
    monocular camera (identity).
    """
    try:
        with open(path) as stream:
            content = yaml.safe_load(stream)
    except OSError as err:
        raise ValueError(f'{path}: cannot read calibration file ({err.strerror})') from None
    except yaml.YAMLError as err:
        raise ValueError(f'{path}: not valid YAML ({err})') from None
    if not isinstance(content, dict):
        raise ValueError(f'{path}: expected a mapping of calibration fields')
    info: Dict[str, Any] = {}
    for key, field in (('image_width', 'width'), ('image_height', 'height')):
        value = content.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f'{path}: {key} must be a positive integer, got {value!r}')
        info[field] = value
    info['camera_name'] = str(content.get('camera_name') or '')
    model = content.get('distortion_model')
    if not isinstance(model, str) or not model:
        raise ValueError(f'{path}: distortion_model must be a name such as plumb_bob, '
                         f'got {model!r}')
    info['distortion_model'] = model
    for key, (field, rows, cols, required) in _MATRICES.items():
        if key in content:
            info[field] = _matrix(path, key, content[key], rows, cols)
        elif required:
            raise ValueError(f'{path}: missing {key}')
        else:
            info[field] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    return info
