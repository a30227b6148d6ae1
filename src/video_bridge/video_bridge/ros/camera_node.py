"""
camera_node: publish a test pattern, a video file or a V4L2 camera as sensor_msgs/Image.

A thin ROS adapter around video_bridge.core.sources (where all capture logic lives).

Topics (relative, so namespaces and remaps apply): ``image_raw`` (Image, bgr8), ``camera_info``
(CameraInfo, same stamp), with publish_compressed ``image_raw/compressed`` (CompressedImage,
jpeg) and with h264 ``image_raw/h264`` (CompressedImage, format ``h264``: one Annex B access
unit per message, SPS/PPS on every keyframe, a keyframe every h264_keyframe_interval seconds).
The stamp is the capture time on the node's clock.

H.264 is a CompressedImage, not foxglove_msgs/CompressedVideo: sensor_msgs is on every ROS
install (no extra package on the robot or the viewer), Isaac ROS's hardware encoder publishes
the same, and the bridge passes it to WebRTC browsers undecoded. The encoder is chosen once at
start like the bridge's (h264_encoder: auto tries the hardware encoders with a test encode and
falls back to libx264); it runs only while someone subscribes, and a new subscriber starts at
a keyframe.

QoS: depth 1, KEEP_LAST, VOLATILE, RELIABLE by default, as REP 2003 asks of sensor drivers
(SystemDefaults reliability): every subscriber matches, the reliable ones (rviz2's Image
display, image_proc, camera_calibration) and the best-effort ones (the bridge, which takes
only the newest frame). ``reliability:=best_effort`` publishes best effort, which only
best-effort subscribers receive; bench/qos_bench.py measures what reliable costs.

Pacing: pattern and file sources are read by a timer at ``fps`` on the executor; a device is
read on its own thread, its blocking read pacing it. A missing or unplugged device is logged
once per outage and retried with exponential backoff until it is back; the node never exits
for it. An unusable file or an invalid parameter ends main() with exit code 1.

Passthrough: for an MJPG device with publish_compressed the device's JPEG bytes are published
unchanged; they are decoded for ``image_raw`` only while someone subscribes to it. Likewise a
JPEG is encoded for pattern/file sources only while ``image_raw/compressed`` has subscribers.
"""

import array
import signal
import sys
import threading
import time

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from video_bridge.core import encoders, image_codec
from video_bridge.core.sources import (as_bgr, Backoff, DeviceSource, load_camera_info,
                                       make_source, PIXEL_FORMATS, SourceError, SOURCES)
from video_bridge.ros.parameters import unknown_parameters
from video_bridge.ros.usage import handle_help

# name: (default, description, (min, max) or choices or None)
PARAMETERS = {
    'source': ('pattern', 'where frames come from: pattern, device or file', SOURCES),
    'device': ('/dev/video0', 'V4L2 device path or index (source=device)', None),
    'file': ('', 'video file path (source=file)', None),
    'loop': (True, 'restart the file at its end (source=file)', None),
    'width': (640, 'frame width in pixels (pattern; requested from a device)', (16, 7680)),
    'height': (480, 'frame height in pixels (pattern; requested from a device)', (16, 4320)),
    'fps': (30.0, 'frames per second (pattern/file pace; requested from a device)',
            (0.1, 240.0)),
    'pixel_format': ('', "device pixel format: '' (driver default), MJPG or YUYV",
                     PIXEL_FORMATS),
    'frame_id': ('camera', 'header.frame_id of every message', None),
    'calibration_file': ('', "camera_calibration YAML; '' publishes an uncalibrated "
                         'CameraInfo (size and frame_id only)', None),
    'publish_compressed': (False, 'also publish image_raw/compressed (an MJPG device is '
                           'passed through undecoded)', None),
    'jpeg_quality': (80, 'JPEG quality when encoding image_raw/compressed', (1, 100)),
    'h264': (False, 'also publish image_raw/h264 (CompressedImage, format h264), encoded '
             'once here while someone subscribes', None),
    'h264_encoder': ('auto', 'H.264 encoder: auto (first hardware encoder that passes a test '
                     'encode, else libx264), libx264, h264_v4l2m2m, h264_nvenc, h264_qsv',
                     encoders.H264_ENCODERS),
    'h264_bitrate': (1000000, 'H.264 target bit/s',
                     (encoders.MIN_BITRATE, encoders.MAX_BITRATE)),
    'h264_keyframe_interval': (1.0, 'seconds between H.264 keyframes (a viewer that joins or '
                               'loses a packet waits up to this long)', (0.1, 10.0)),
    'retry_initial': (0.5, 'first retry delay (s) after a device fails', (0.01, 60.0)),
    'retry_max': (8.0, 'longest retry delay (s) for a failed device', (0.01, 600.0)),
    'reliability': ('reliable', 'QoS reliability of every topic: reliable (REP 2003 for '
                    'drivers: every subscriber matches) or best_effort',
                    ('reliable', 'best_effort')),
}


_TYPE_NAMES = {bool: 'a boolean', int: 'an integer', str: 'a string',
               float: 'a double (write 30.0, not 30)'}


class StartupError(Exception):
    """The node cannot start: bad parameter values or an unusable file."""


def _byte_array(buffer) -> array.array:
    """Copy a bytes-like object into the array type message fields keep (one memcpy)."""
    data = array.array('B')
    data.frombytes(buffer)
    return data


def image_message(image: np.ndarray, header) -> Image:
    """Build a bgr8 Image with one copy of the pixels (see the note in the body)."""
    # With check_fields=True an array.array is stored as is; by default the setter copies it
    # once more (measured per 640x480 frame: 0.55 ms this way, 1.1 ms with data.tobytes()).
    msg = Image(check_fields=True)
    msg.header = header
    msg.height, msg.width = image.shape[0], image.shape[1]
    msg.encoding = 'bgr8'
    msg.step = image.shape[1] * 3
    msg.data = _byte_array(np.ascontiguousarray(image))
    return msg


def compressed_message(jpeg, header, image_format: str = 'jpeg') -> CompressedImage:
    """Build a jpeg (or h264) CompressedImage from bytes without re-encoding."""
    msg = CompressedImage(check_fields=True)
    msg.header = header
    msg.format = image_format
    msg.data = _byte_array(jpeg)
    return msg


class H264Publisher:
    """Encode frames to H.264 once, while ``image_raw/h264`` has subscribers; publish the units."""

    def __init__(self, publisher, encoder_name: str, bitrate: int, fps: float,
                 keyframe_interval: float):
        self.publisher = publisher
        self.encoder = encoders.VideoEncoder(encoders.H264, bitrate, max(1, round(fps)),
                                             encoder_name)
        self.keyframe_every = max(1, round(fps * keyframe_interval))
        self._since_keyframe = None     # None: the next unit must be a keyframe

    def publish(self, image, header) -> None:
        """Encode and publish one frame; nothing (and the encoder idle) without subscribers."""
        if not self.publisher.get_subscription_count():
            self._since_keyframe = None   # whoever subscribes next starts at a keyframe
            return
        keyframe = self._since_keyframe is None or \
            self._since_keyframe + 1 >= self.keyframe_every
        pts = header.stamp.sec * encoders.CLOCK_RATE + \
            header.stamp.nanosec * encoders.CLOCK_RATE // 1_000_000_000
        unit = self.encoder.encode(image, pts, keyframe)
        if unit is None:
            return
        self._since_keyframe = 0 if unit.keyframe else (self._since_keyframe or 0) + 1
        self.publisher.publish(compressed_message(unit.data, header, 'h264'))


class _Log:
    """A logging.Logger face on the node's logger (the encoder choice logs through it)."""

    def __init__(self, node):
        self._logger = node.get_logger()

    def info(self, message, *args):
        self._logger.info(message % args if args else message)

    def warning(self, message, *args):
        self._logger.warning(message % args if args else message)


class CameraNode(Node):
    """Declare parameters, build the source, publish what it captures."""

    def __init__(self):
        """Create the node; start() does the work that can fail."""
        super().__init__('camera_node')
        self._stop = threading.Event()
        self._thread = None
        self._timer = None
        self._source = None
        self._warned_size = False

    def _declare(self) -> dict:
        values = {}
        for name, (default, text, limits) in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=text, read_only=True)
            if isinstance(limits, tuple) and isinstance(default, int):
                descriptor.integer_range = [IntegerRange(from_value=limits[0],
                                                         to_value=limits[1], step=1)]
            elif isinstance(limits, tuple) and isinstance(default, float):
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=limits[0], to_value=limits[1])]
            elif limits:
                descriptor.additional_constraints = 'one of: ' + ', '.join(map(repr, limits))
            try:
                values[name] = self.declare_parameter(name, default, descriptor).value
            except ParameterException as err:
                wanted = _TYPE_NAMES[type(default)]
                if isinstance(limits, tuple) and not isinstance(default, str):
                    wanted += f' in {limits[0]}..{limits[1]}'
                raise StartupError(f'invalid parameter {name} ({text}): {err}; '
                                   f'expected {wanted}') from None
            if limits and not isinstance(limits[0], (int, float)) and values[name] not in limits:
                raise StartupError(f'invalid parameter {name}={values[name]!r}: expected one '
                                   f'of {", ".join(map(repr, limits))}')
        return values

    def start(self) -> None:
        """Read parameters, open the source, create publishers and start capturing."""
        p = self._declare()
        for name in unknown_parameters(self):
            self.get_logger().warning(f'parameter {name!r} is not a camera_node parameter and '
                                      'is ignored (misspelt, or from an older version?)')
        try:
            self._source = make_source(p)
        except ValueError as err:
            raise StartupError(f'invalid parameters: {err}') from None
        self._frame_id = p['frame_id']
        self._quality = p['jpeg_quality']
        self._info = CameraInfo()
        if p['calibration_file']:
            try:
                calibration = load_camera_info(p['calibration_file'])
            except ValueError as err:
                raise StartupError(f'invalid calibration_file: {err}') from None
            for field in ('width', 'height', 'distortion_model', 'd', 'k', 'r', 'p'):
                setattr(self._info, field, calibration[field])
        reliability = (ReliabilityPolicy.RELIABLE if p['reliability'] == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability,
                         durability=DurabilityPolicy.VOLATILE)
        self._image_pub = self.create_publisher(Image, 'image_raw', qos)
        self._info_pub = self.create_publisher(CameraInfo, 'camera_info', qos)
        self._jpeg_pub = (self.create_publisher(CompressedImage, 'image_raw/compressed', qos)
                          if p['publish_compressed'] else None)
        self._h264 = None
        if p['h264']:
            name, _ = encoders.choose_h264_encoder(p['h264_encoder'], logger=_Log(self))
            self._h264 = H264Publisher(self.create_publisher(CompressedImage, 'image_raw/h264',
                                                             qos),
                                       name, p['h264_bitrate'], p['fps'],
                                       p['h264_keyframe_interval'])
        if isinstance(self._source, DeviceSource):
            try:
                backoff = Backoff(p['retry_initial'], p['retry_max'])
            except ValueError as err:
                raise StartupError(f'invalid retry_initial/retry_max: {err}') from None
            self._thread = threading.Thread(target=self._capture_loop, args=(backoff,),
                                            name='capture', daemon=True)
        else:
            try:
                self._source.open()
            except SourceError as err:
                raise StartupError(str(err)) from None
            self._timer = self.create_timer(1.0 / p['fps'], self._on_timer)
        h264_text = (f' (+ {self._h264.publisher.topic_name}, H.264 by '
                     f'{self._h264.encoder.encoder_name})' if self._h264 else '')
        self.get_logger().info(
            f'camera_node: publishing {self._source.description} as '
            f'{self._image_pub.topic_name} at {p["width"]}x{p["height"]} {p["fps"]} fps'
            f'{" (+ " + self._jpeg_pub.topic_name + ")" if self._jpeg_pub else ""}'
            f'{h264_text}'
            f', {p["reliability"]} QoS')
        if self._thread:
            self._thread.start()

    def _on_timer(self) -> None:
        try:
            frame = self._source.read()
        except SourceError as err:  # e.g. the file vanished before a loop's reopen
            self.get_logger().error(f'{err}: stopping')
            self._timer.cancel()
            return
        if frame is None:
            self.get_logger().info(f'end of {self._source.description}: no more frames '
                                   '(loop:=true repeats it)')
            self._timer.cancel()
            return
        self._publish(frame)

    def _capture_loop(self, backoff: Backoff) -> None:
        """Read the device until stopped; on failure log once, retry with backoff."""
        log, source = self.get_logger(), self._source
        outage_start, failures, is_open = None, 0, False
        while not self._stop.is_set() and self.context.ok():
            try:
                if not is_open:
                    source.open()
                    is_open = True
                frame = source.read()
            except SourceError as err:
                source.close()
                is_open = False
                if not self.context.ok():  # shutting down: not an outage to report
                    break
                failures += 1
                if outage_start is None:
                    outage_start = time.monotonic()
                    log.error(f'{err}; retrying every {backoff.initial:g}..{backoff.maximum:g}'
                              ' s until it is back')
                else:
                    log.debug(f'retry {failures} failed: {err}')
                self._stop.wait(backoff.next_delay())
                continue
            if outage_start is not None:
                log.info(f'{source.description} recovered after {failures} failed attempt(s) '
                         f'({time.monotonic() - outage_start:.1f} s): frames flowing again')
                outage_start, failures = None, 0
                backoff.reset()
            warning = source.pop_warning()
            if warning:
                log.warning(warning)
            self._publish(frame)
        source.close()

    def _stamp(self, capture_time: float):
        """Map the source's wall-clock capture time onto the node clock (sim time too)."""
        age_ns = max(0, int((time.time() - capture_time) * 1e9))
        return Time(nanoseconds=self.get_clock().now().nanoseconds - age_ns).to_msg()

    def _publish(self, frame) -> None:
        info = self._info
        info.header.stamp = self._stamp(frame.capture_time)
        info.header.frame_id = self._frame_id
        image, jpeg = frame.image, frame.jpeg
        try:
            if self._jpeg_pub is not None:
                if jpeg is None and self._jpeg_pub.get_subscription_count():
                    jpeg = image_codec.encode_jpeg(image, self._quality)
                if jpeg is not None:
                    self._jpeg_pub.publish(compressed_message(jpeg, info.header))
            wanted = self._image_pub.get_subscription_count() or (
                self._h264 is not None and self._h264.publisher.get_subscription_count())
            if image is None and wanted:
                try:
                    image = as_bgr(image_codec.decode_compressed(jpeg))
                except image_codec.MalformedImage:  # a corrupt device frame: publish no image
                    image = None
            if image is not None and self._h264 is not None:
                self._h264.publish(image, info.header)
            if image is not None:
                self._image_pub.publish(image_message(image, info.header))
            self._check_size(frame)
            self._info_pub.publish(info)
        except Exception as err:  # e.g. RCLError 'cannot publish data' under reliable QoS
            if not self._stop.is_set() and self.context.ok():
                self.get_logger().warning(f'publishing failed: {err}', throttle_duration_sec=5)

    def _check_size(self, frame) -> None:
        width, height = frame.size
        if not self._info.k[8]:  # uncalibrated: the size is all there is to say
            self._info.width, self._info.height = width, height
        elif (width, height) != (self._info.width, self._info.height) and not self._warned_size:
            self._warned_size = True
            self.get_logger().warning(
                f'calibration is for {self._info.width}x{self._info.height} but frames are '
                f'{width}x{height}: publishing the calibration unchanged')

    def close(self) -> None:
        """Stop capturing, release the source and destroy the node."""
        self._stop.set()
        if self._thread and self._thread.is_alive():
            self._thread.join(timeout=5.0)
        elif self._source is not None:
            self._source.close()
        self.destroy_node()


def spin_until_stopped(node: Node, stop: threading.Event, wake: float = 0.25) -> None:
    """
    Spin ``node`` until ``stop`` is set (by SIGINT/SIGTERM) or its context ends.

    The context is still up when this returns, so the node is destroyed before rclpy shuts
    down. With rclpy's own signal handler the context ended first, and destroying a publisher
    after that crashed Fast DDS now and then (SIGSEGV in rmw's destroy_publisher, 2 stops in
    19 of a node publishing image_raw/compressed). A Python signal handler runs only between
    spin_once calls, hence the wake: a signal is seen within ``wake`` s.
    """
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        while not stop.is_set() and node.context.ok():
            executor.spin_once(timeout_sec=wake)
    finally:
        executor.remove_node(node)


def main(args=None) -> int:
    """Run camera_node until SIGINT/SIGTERM (exit 0); exit 1 if it cannot start."""
    code = handle_help('camera_node', __doc__, PARAMETERS, args)
    if code is not None:
        return code
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as err:  # malformed --ros-args
        print(f'camera_node: invalid arguments: {err}', file=sys.stderr)
        return 1
    node = None
    try:
        node = CameraNode()
        node.start()
        spin_until_stopped(node, stop)
    except ExternalShutdownException:  # another owner of the context ended it
        pass
    except StartupError as err:
        rclpy.logging.get_logger('camera_node').error(str(err))
        return 1
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
