"""
bridge_node: the ROS side of the bridge, around the ROS-free assembly.

Declares the parameters and turns them into a :class:`video_bridge.assembly.BridgeConfig`;
publishes cmd_vel, the latched e-stop lock, BridgeStatus and /diagnostics; offers the e-stop
service; subscribes image topics when the bridge asks (on demand: only while someone watches).
It is the bridge's :class:`video_bridge.assembly.RosCallbacks`; the hub, access, teleop,
control, server, WebRTC and SFU are built and wired by :class:`video_bridge.assembly.Bridge`.

Threads: rclpy callbacks run on an executor thread; the network runs on one asyncio loop in the
main thread. Frames cross with one thread-safe wake-up per frame; the teleop core lives on the
loop, and ROS-side calls into it (e-stop service, status) are marshalled onto the loop.

Image intake: every stream's topic is taken as CDR bytes on a thread of its own, which also
converts and encodes (:mod:`video_bridge.ros.image_intake`); the executor thread is left to
the e-stop service, parameters and timers.

QoS, on purpose: images are subscribed best-effort, depth 1 (sensor data: only the newest frame
matters, a retransmitted stale frame is worse than none; matches reliable publishers too);
cmd_vel is reliable, depth 10 (a stop must arrive); status is reliable, depth 1.
"""

import asyncio
import concurrent.futures
import ctypes
import dataclasses
import os
import signal
import sys
import threading
import time
from types import SimpleNamespace

from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
import rclpy
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool
from video_bridge.assembly import (Bridge, BridgeConfig, COMPRESSED_IMAGE_TYPE,
                                   COMPRESSED_VIDEO_TYPE, IMAGE_TYPE, IMAGE_TYPES, StreamConfig)
from video_bridge.core import cdr
from video_bridge.core.image_codec import MalformedImage, UnsupportedEncoding
from video_bridge.core.streams import SourceImage
from video_bridge.net.server import (collect_young_objects_less_often,
                                     freeze_start_up_objects)
from video_bridge.ros.image_intake import ImageIntake
from video_bridge.ros.parameters import (BRIDGE_PARAMETERS, declare, described,
                                         RUNTIME_PARAMETERS, RUNTIME_STREAM_FIELDS,
                                         STREAM_PARAMETERS, unknown_parameters)
from video_bridge.ros.usage import handle_help
from video_bridge_msgs.msg import BridgeStatus, StreamStatus, TeleopStatus
from video_bridge_msgs.srv import SetEmergencyStop


def _raw_image(buffer, received: float) -> SourceImage:
    """Read a serialised sensor_msgs Image as the hub's SourceImage (its data not copied)."""
    frame = cdr.raw_frame(buffer)
    return SourceImage(frame.stamp_sec, frame.stamp_nanosec, frame.data, frame.encoding,
                       frame.width, frame.height, frame.step, frame.is_bigendian,
                       received_time=received)


def _compressed_image(buffer, received: float, layout=cdr.COMPRESSED_IMAGE) -> SourceImage:
    """Read a serialised CompressedImage as the hub's SourceImage (its data not copied)."""
    frame = cdr.compressed_frame(buffer, layout)
    return SourceImage(frame.stamp_sec, frame.stamp_nanosec, frame.data,
                       image_format=frame.image_format, received_time=received)


def _compressed_video_image(buffer, received: float) -> SourceImage:
    """Read a serialised foxglove_msgs CompressedVideo as the hub's SourceImage."""
    return _compressed_image(buffer, received, cdr.COMPRESSED_VIDEO)


# How the CDR bytes of each image message type are read (its class: MESSAGE_CLASSES, or
# compressed_video_class()).
MESSAGE_CLASSES = {IMAGE_TYPE: Image, COMPRESSED_IMAGE_TYPE: CompressedImage}
READERS = {IMAGE_TYPE: _raw_image, COMPRESSED_IMAGE_TYPE: _compressed_image,
           COMPRESSED_VIDEO_TYPE: _compressed_video_image}


def compressed_video_class():
    """Return foxglove_msgs' CompressedVideo; ValueError naming the package if it is missing."""
    try:
        from foxglove_msgs.msg import CompressedVideo
    except ImportError:
        raise ValueError('stream type compressed_video needs foxglove_msgs (rosdep key '
                         'foxglove_msgs; apt: ros-$ROS_DISTRO-foxglove-msgs)') from None
    return CompressedVideo


def share_path(*parts: str) -> str:
    """Path inside this package's share directory (installed launch/, config/, web/)."""
    try:
        share = get_package_share_directory('video_bridge')
    except PackageNotFoundError:  # running from a source checkout
        share = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..'))
    return os.path.join(share, *parts)


class RosLog:
    """A logging.Logger-like face on the node's rcutils logger, for the pure-Python layers."""

    def __init__(self, logger):
        self._logger = logger

    def _format(self, message, args):
        return str(message) % args if args else str(message)

    def debug(self, message, *args):
        self._logger.debug(self._format(message, args))

    def info(self, message, *args):
        self._logger.info(self._format(message, args))

    def warning(self, message, *args):
        self._logger.warning(self._format(message, args))

    def error(self, message, *args):
        self._logger.error(self._format(message, args))

    def exception(self, message, *args):
        import traceback
        self._logger.error(self._format(message, args) + '\n' + traceback.format_exc())


class BridgeNode(Node):
    """
    The ROS side of the bridge: parameters, publishers, subscriptions, the e-stop service.

    It builds the bridge (:class:`video_bridge.assembly.Bridge`) from its parameters and is
    that bridge's :class:`video_bridge.assembly.RosCallbacks`; everything else is decided there.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__('bridge_node')
        self.loop = loop
        self.p = declare(self)
        self.log = RosLog(self.get_logger())
        stamped = self.p.cmd_vel_stamped
        self.cmd_vel = self.create_publisher(
            TwistStamped if stamped else Twist, 'cmd_vel',
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.status_pub = self.create_publisher(BridgeStatus, '~/status', QoSProfile(depth=1))
        # Absolute, as diagnostic_aggregator and rqt_robot_monitor expect it.
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics',
                                                     QoSProfile(depth=10))
        # Latched e-stop state for twist_mux `locks` (true: locked, other cmd_vel muted).
        self.estop_pub = self.create_publisher(
            Bool, '~/emergency_stop',
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._image_subs = {}     # stream name -> its subscription
        self._image_topics = []   # the graph's image topics, refreshed every second
        self.bridge = Bridge(self._config(), self)
        self.intake = ImageIntake.create(self, self.log, self.p.video_thread_nice)
        self._reconcile_now = self.create_guard_condition(self.bridge.reconcile)
        self.create_timer(0.5, self.bridge.reconcile)
        self.create_timer(1.0, self._refresh_topics)
        self._status_timer = self.create_timer(self.p.status_period, self._publish_status)
        self._parameter_change = None  # (monotonic time, text) of the last run-time change
        self._values_before = {}       # of the change being applied, for the log
        self.create_service(SetEmergencyStop, '~/set_emergency_stop', self._estop_service)
        self.bridge.reconcile()   # without subscribe_on_demand: every stream from now on
        for name in unknown_parameters(self):
            self.get_logger().warning(f'parameter {name!r} is not a bridge_node parameter and '
                                      'is ignored (misspelt, or from an older version?)')
        # Registered last: declaring parameters runs these callbacks too.
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

    def _config(self, changes=None) -> BridgeConfig:
        """
        Return the bridge's configuration: the parameters, ``changes`` (name -> value) over them.

        Stream topics are resolved here (namespace, remapping): /api/streams and
        web_video_server URLs name the topic as ``ros2 topic list`` does.
        """
        changes = changes or {}
        values = SimpleNamespace(**{name: changes.get(name, getattr(self.p, name))
                                    for name in BRIDGE_PARAMETERS})
        streams = {}
        for name in self.p.stream_names:
            per = {field: changes.get(f'streams.{name}.{field}',
                                      self.get_parameter(f'streams.{name}.{field}').value)
                   for field in STREAM_PARAMETERS}
            if per['type'] == 'compressed_video':
                compressed_video_class()    # fails now (a clear configuration error) if missing
            per['topic'] = self.resolve_topic_name(per['topic'])
            per['stream_type'] = per.pop('type')
            streams[name] = StreamConfig(**per)
        return BridgeConfig.from_values(
            values, streams=streams, web_root=values.web_root or share_path('web'),
            commands_file=values.commands_file or share_path('config', 'teleop_commands.yaml'))

    # -- RosCallbacks: what the bridge asks of ROS ---------------------------------------

    def publish_velocity(self, velocity):
        """Publish a velocity the teleop core decided on (called on the network loop)."""
        twist = Twist()
        twist.linear.x, twist.linear.y, twist.linear.z = (
            velocity.linear_x, velocity.linear_y, velocity.linear_z)
        twist.angular.x, twist.angular.y, twist.angular.z = (
            velocity.angular_x, velocity.angular_y, velocity.angular_z)
        if self.p.cmd_vel_stamped:
            stamped = TwistStamped()
            stamped.header.stamp = self.get_clock().now().to_msg()
            stamped.header.frame_id = self.p.cmd_vel_frame_id
            stamped.twist = twist
            self.cmd_vel.publish(stamped)
        else:
            self.cmd_vel.publish(twist)

    def publish_estop(self, engaged: bool):
        """Latch the e-stop state for twist_mux ``locks`` (called on start and on each change)."""
        self.estop_pub.publish(Bool(data=engaged))

    def flush_velocity(self, timeout: float = 1.0):
        """Wait until subscribers acknowledged the last cmd_vel (the final zero at shutdown)."""
        try:
            self.cmd_vel.wait_for_all_acked(Duration(seconds=timeout))
        except Exception:  # best effort: never block shutdown on it
            pass

    def request_reconcile(self):
        """Have the executor run the bridge's reconcile now (a viewer came or went)."""
        self._reconcile_now.trigger()

    def image_topics(self) -> list:
        """Return the graph's image topics as last refreshed."""
        return self._image_topics

    def subscribe(self, stream, message_type: str):
        """
        Subscribe a stream's topic (best effort, depth 1, unless image_reliable).

        Taken as CDR bytes (``raw=True``, fields read by :mod:`video_bridge.core.cdr`) and
        served by the image intake thread (:mod:`video_bridge.ros.image_intake`); through the
        executor, with the same handler, only when this rclpy lacks what the intake uses.
        """
        settings = stream.settings
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE if self.p.image_reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        message_class = compressed_video_class() if message_type == COMPRESSED_VIDEO_TYPE \
            else MESSAGE_CLASSES[message_type]   # foxglove_msgs is imported only when used
        handler = self._bytes_handler(stream, READERS[message_type])
        intake = self.intake
        subscription = self.create_subscription(
            message_class, settings.topic, handler, qos, raw=True,
            callback_group=intake.group if intake is not None else None)
        self._image_subs[stream.name] = subscription
        if intake is not None:
            intake.add(stream.name, subscription, handler)
        self.get_logger().info(f'stream {stream.name!r}: subscribed '
                               f'{self.resolve_topic_name(settings.topic)}')

    def unsubscribe(self, stream):
        """Drop a stream's subscription (nobody has watched it for unsubscribe_delay)."""
        if self.intake is not None:
            self.intake.remove(stream.name)
        self.destroy_subscription(self._image_subs.pop(stream.name))
        self.get_logger().info(f'stream {stream.name!r}: nobody watches; unsubscribed '
                               f'{stream.settings.topic}')

    # -- image subscriptions -------------------------------------------------------------

    def _bytes_handler(self, stream, read):
        def on_bytes(buffer: bytes):
            received = time.time()
            try:
                image = read(buffer, received)
            except cdr.MalformedMessage as exc:
                stream.count_malformed(exc.kind)
                self._log_malformed(stream, exc)
                return
            self._feed(stream, image)
        return on_bytes

    def _feed(self, stream, image: SourceImage):
        try:
            stream.publish(image)
        except (UnsupportedEncoding, MalformedImage) as exc:
            self._log_malformed(stream, exc)

    def _log_malformed(self, stream, exc):
        """Log a frame that cannot be shown: the first of its kind, then once in a while."""
        kind = getattr(exc, 'kind', 'encoding')
        count = stream.malformed_log_due(kind, time.monotonic())
        if count:
            more = f' ({count} such frames since the last report)' if count > 1 else ''
            self.get_logger().warning(
                f'stream {stream.name!r}: cannot show a frame of '
                f'{self.resolve_topic_name(stream.settings.topic)}: {exc}{more}')

    def _compressed_video_known(self) -> bool:
        if not hasattr(self, '_has_compressed_video'):
            try:
                self._has_compressed_video = bool(compressed_video_class())
            except ValueError:
                self._has_compressed_video = False
        return self._has_compressed_video

    def _refresh_topics(self):
        topics = []
        for topic, types in self.get_topic_names_and_types():
            for type_name in types:
                if type_name == COMPRESSED_VIDEO_TYPE and not self._compressed_video_known():
                    continue   # cannot be subscribed here: not offered
                if type_name in IMAGE_TYPES:
                    topics.append({'topic': topic, 'type': type_name,
                                   'kind': IMAGE_TYPES[type_name]})
        self._image_topics = topics

    # -- run-time parameters (ros2 param set / load) -------------------------------------

    def _validate_parameters(self, parameters):
        """
        Accept a whole change or none of it, with the reason (rclpy's on-set callback).

        rclpy has already checked types, ranges and read-only; this checks what a range cannot
        (a field a stream does not take at run time, depth_max above depth_min, a layer below
        the encoders' lowest bit rate) by building everything the change would apply.
        """
        from rcl_interfaces.msg import SetParametersResult
        for parameter in parameters:
            field = parameter.name.rpartition('.')[2]
            if parameter.name not in RUNTIME_PARAMETERS and not (
                    parameter.name.startswith('streams.') and field in RUNTIME_STREAM_FIELDS):
                return SetParametersResult(successful=False, reason=(
                    f'{parameter.name} is read once at start: a change needs a restart'))
        try:
            self.bridge.plan(self._config({parameter.name: parameter.value
                                           for parameter in parameters}))
        except (ValueError, TypeError) as exc:
            names = ', '.join(parameter.name for parameter in parameters)
            self.get_logger().warning(f'refused a parameter change ({names}): {exc}')
            return SetParametersResult(successful=False, reason=str(exc))
        # rclpy runs the post-set callback right after this one, with the same list.
        self._values_before = {parameter.name: self.get_parameter(parameter.name).value
                               for parameter in parameters}
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters):
        """Apply a validated change to the bridge and log it (rclpy's post-set callback)."""
        changes = []
        for parameter in parameters:
            old = self._values_before.get(parameter.name, getattr(self.p, parameter.name, None))
            setattr(self.p, parameter.name, parameter.value)
            changes.append(f'{parameter.name} {old!r} -> {parameter.value!r}')
        teleop = self.bridge.reconfigure(self._config())   # validated: cannot fail now
        if any(parameter.name == 'status_period' for parameter in parameters):
            self.destroy_timer(self._status_timer)
            self._status_timer = self.create_timer(self.p.status_period, self._publish_status)
        try:
            self.on_loop(self.bridge.apply_teleop_limits, teleop)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            self.get_logger().error(f'teleop limits not applied: bridge loop not answering: '
                                    f'{exc}')
        text = ', '.join(changes)
        self._parameter_change = (time.monotonic(), text)
        self.get_logger().info(f'parameters changed at run time: {text}')

    # -- calls into the loop -----------------------------------------------------------

    def on_loop(self, function, *args, timeout: float = 2.0):
        """Run ``function(*args)`` on the network loop and return its result (ROS thread)."""
        future = concurrent.futures.Future()

        def run():
            try:
                future.set_result(function(*args))
            except Exception as exc:
                future.set_exception(exc)
        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def _estop_service(self, request, response):
        try:
            state = self.on_loop(self.bridge.control.set_estop, bool(request.engage),
                                 'ROS service')
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            response.success, response.message = False, f'bridge loop not answering: {exc}'
            return response
        response.success = state.estop == bool(request.engage)
        response.message = 'emergency stop ' + ('engaged' if state.estop else 'released')
        return response

    # -- status ------------------------------------------------------------------------

    def _publish_status(self):
        now = time.monotonic()
        try:
            teleop = self.on_loop(self.bridge.control.status, timeout=0.5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            teleop = None
        report = self.bridge.report(
            now, teleop, {name: getattr(self.p, name) for name in sorted(RUNTIME_PARAMETERS)},
            self._parameter_change, prefix=self.get_fully_qualified_name().lstrip('/') + ': ',
            resolve=self.resolve_topic_name)
        self._publish_diagnostics(report.diagnostics)
        msg = BridgeStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.url = self.bridge.server.url
        for entry in report.streams:
            fields = dataclasses.asdict(entry)
            fields['type'] = fields.pop('message_type')
            msg.streams.append(StreamStatus(**fields))
        if teleop is not None:
            msg.teleop = TeleopStatus(driver_id=teleop.driver_id or '',
                                      control_clients=teleop.control_clients,
                                      last_command_age=float(teleop.last_command_age),
                                      estop_engaged=teleop.estop)
            velocity = teleop.velocity
            msg.teleop.velocity.linear.x = velocity.linear_x
            msg.teleop.velocity.linear.y = velocity.linear_y
            msg.teleop.velocity.angular.z = velocity.angular_z
        self.status_pub.publish(msg)

    def _publish_diagnostics(self, diagnostics):
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        hardware_id = self.get_fully_qualified_name()
        for item in diagnostics:
            array.status.append(DiagnosticStatus(
                level=bytes([item.level]), name=item.name, message=item.message,
                hardware_id=hardware_id,
                values=[KeyValue(key=key, value=value) for key, value in item.values]))
        self.diagnostics_pub.publish(array)


async def run_bridge(args=None) -> int:
    """Run the bridge until SIGINT/SIGTERM; publish zero on cmd_vel before exiting."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    executor = SingleThreadedExecutor()
    spinner = None
    try:
        try:
            node = BridgeNode(loop)
        except (ValueError, OSError, InvalidParameterValueException,
                InvalidParameterTypeException) as exc:
            print(f'bridge_node: configuration error: {exc}', file=sys.stderr)
            return 1
        bridge = node.bridge
        try:
            await bridge.start()
        except OSError as exc:
            node.get_logger().error(f'cannot listen on {node.p.host}:{node.p.port}: {exc}')
            return 1
        freeze_start_up_objects()   # full collections walk only what clients make
        collect_young_objects_less_often()
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor,), daemon=True)
        spinner.start()
        bridge.announce()
        await stop.wait()
        await bridge.stop()
        return 0
    finally:
        if node is not None and node.intake is not None:
            node.intake.stop()
        executor.shutdown(timeout_sec=2.0)
        if spinner is not None:
            spinner.join(timeout=2.0)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def _spin(executor):
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


def keep_frame_memory():
    """
    Stop glibc from handing each frame's buffers back to the kernel.

    rclpy copies every raw frame into fresh ~1 MB buffers; by default glibc returns them to the
    kernel after each frame, so every frame page-faults its memory in again (644 faults and
    about 2 ms per 640x480 frame, measured in bench/). Keeping freed memory for reuse costs a
    few MB of RSS and removes that.

    Two malloc arenas, not glibc's 8 per core: the frames are allocated on the image intake
    thread, and each thread's own arena kept its own slack besides the main one (in the
    hostile-client soak, RSS growth 0.6-0.8 MB lower at the peak and 1.2-1.4 MB lower after,
    the command latency and CPU unchanged; bench/reports/soak-2026-12-06d.md).
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: frames come from the reusable heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: do not give freed frames back
        libc.mallopt(-8, 2)          # M_ARENA_MAX: threads share two arenas
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def main(args=None):
    """Entry point of ``ros2 run video_bridge bridge_node``."""
    parameters = {name: (default, described(text, name in RUNTIME_PARAMETERS), *rest)
                  for name, (default, text, *rest) in BRIDGE_PARAMETERS.items()}
    code = handle_help('bridge_node', __doc__, parameters, args)
    if code is not None:
        sys.exit(code)
    keep_frame_memory()
    sys.exit(asyncio.run(run_bridge(args)))
