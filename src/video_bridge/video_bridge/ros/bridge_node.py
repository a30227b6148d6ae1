"""
bridge_node: the ROS adapter between image topics / cmd_vel and the bridge's server.

Declares the parameters, subscribes image topics (on demand: only while someone watches),
publishes cmd_vel, BridgeStatus and the e-stop service, and hands everything else to the pure
core (:mod:`streams`, :mod:`teleop`) and the network adapter (:mod:`server`, :mod:`control`).

Threads: rclpy callbacks run on an executor thread; the network runs on one asyncio loop in the
main thread. Frames cross with one thread-safe wake-up per frame; the teleop core lives on the
loop, and ROS-side calls into it (e-stop service, status) are marshalled onto the loop.

Image intake: an H.264 stream's topic is taken as CDR bytes on a thread of its own
(:mod:`video_bridge.ros.image_intake`).

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
import socket
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
from video_bridge.core import cdr
from video_bridge.core import health
from video_bridge.core import ice
from video_bridge.core.access import AccessPolicy, generate_token, is_loopback, load_token
from video_bridge.core.demand import Demand
from video_bridge.core.encoders import choose_h264_encoder, LIBX264, MIN_BITRATE
from video_bridge.core.image_codec import DisplaySettings, MalformedImage, UnsupportedEncoding
from video_bridge.core.layers import layer_bitrates
from video_bridge.core.secret_file import exposure_warning, read_secret_file
from video_bridge.core.streams import (COMPRESSED, H264, RAW, SourceImage, StreamHub,
                                       StreamSettings)
from video_bridge.core.teleop import load_vocabulary, TeleopConfig, TeleopCore
from video_bridge.net import wvs_compat
from video_bridge.net.auth import machine_names
from video_bridge.net.control import ControlService
from video_bridge.net.server import BridgeServer, ServerConfig
from video_bridge.net.webrtc import WebRtcConfig, WebRtcService
from video_bridge.ros.image_intake import ImageIntake
from video_bridge.ros.parameters import (BRIDGE_PARAMETERS, declare, described,
                                         RUNTIME_PARAMETERS, RUNTIME_STREAM_FIELDS,
                                         STREAM_PARAMETERS, unknown_parameters)
from video_bridge.ros.usage import handle_help
from video_bridge_msgs.msg import BridgeStatus, StreamStatus, TeleopStatus
from video_bridge_msgs.srv import SetEmergencyStop

COMPRESSED_VIDEO_TYPE = 'foxglove_msgs/msg/CompressedVideo'   # H.264 in it is passed through
IMAGE_TYPES = {'sensor_msgs/msg/Image': RAW, 'sensor_msgs/msg/CompressedImage': COMPRESSED,
               COMPRESSED_VIDEO_TYPE: H264}
MESSAGE_CLASS = {RAW: Image, COMPRESSED: CompressedImage, H264: CompressedImage}
MESSAGE_TYPE = {RAW: 'sensor_msgs/msg/Image', COMPRESSED: 'sensor_msgs/msg/CompressedImage',
                H264: 'sensor_msgs/msg/CompressedImage'}


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
    """Parameters, subscriptions and publishers; the logic lives in the core modules."""

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
        self.monitor = health.StreamMonitor(stale_after=2.0)
        self.hub = StreamHub(self.p.max_viewers, on_frame=self._frame_ready,
                             on_viewers=self._viewers_changed,
                             max_total_variants=self.p.max_total_variants)
        # Probed once (a tiny test encode per candidate); only WebRTC layers encode H.264.
        self.h264_encoder = choose_h264_encoder(self.p.h264_encoder, logger=self.log)[0] \
            if self.p.webrtc_enabled else LIBX264
        self._message_types = {}   # stream name -> ROS message type it subscribes
        for name in self.p.stream_names:
            self.hub.add(self._stream_settings(name))
        token = load_token(self.p.token_file)
        if self.p.token_file:
            self._warn_if_exposed(self.p.token_file, 'token_file')
        # Secure by default: beyond loopback, nobody drives without a token unless asked to.
        self.generated_token = not token and not is_loopback(self.p.host) and \
            not self.p.allow_anonymous_driving
        if self.generated_token:
            token = generate_token()
        self.access = AccessPolicy(
            token, self.p.view_requires_token, tuple(self.p.allowed_origins),
            tuple(self.p.allowed_hosts) + machine_names(), tuple(self.p.cors_origins))
        vocabulary = load_vocabulary(self.p.commands_file or share_path('config',
                                                                        'teleop_commands.yaml'))
        self.teleop = TeleopCore(TeleopConfig(
            max_linear=self.p.max_linear, max_angular=self.p.max_angular,
            max_linear_accel=self.p.max_linear_accel, max_angular_accel=self.p.max_angular_accel,
            command_timeout=self.p.command_timeout, republish_rate=self.p.republish_rate,
            holonomic=self.p.holonomic, allow_takeover=self.p.allow_takeover,
            default_speed=self.p.default_speed, vocabulary=vocabulary))
        self.control = ControlService(self.teleop, self.access, self.publish_velocity,
                                      self.p.commands_per_second, self.p.command_burst,
                                      self.p.max_message_size, logger=self.log,
                                      send_timeout=self.p.send_timeout,
                                      on_estop=self._publish_estop)
        self.server = BridgeServer(
            self.hub, self.access,
            ServerConfig(host=self.p.host, port=self.p.port,
                         web_root=self.p.web_root or share_path('web'),
                         tls_cert=self.p.tls_cert, tls_key=self.p.tls_key,
                         frames_in_flight=self.p.frames_in_flight,
                         max_message_size=self.p.max_message_size,
                         handshake_timeout=self.p.handshake_timeout,
                         send_timeout=self.p.send_timeout, ping_interval=self.p.ping_interval,
                         ping_timeout=self.p.ping_timeout,
                         max_connections=self.p.max_connections,
                         max_connections_per_client=self.p.max_connections_per_client,
                         trusted_proxies=tuple(self.p.trusted_proxies)),
            control=self.control, logger=self.log, resolve_stream=self._topic_stream,
            list_topics=lambda: list(self._image_topics),
            extra_routes=[wvs_compat.add_routes])  # web_video_server's URLs
        self.webrtc = self._webrtc_service() if self.p.webrtc_enabled else None
        if self.webrtc is not None:
            self.control.signalling = self.webrtc   # webrtc_* messages of /control sessions
            self.server.webrtc = self.webrtc
        self.sfu = self._sfu_service() if self.p.sfu_janus_url else None
        if self.sfu is not None:
            self.control.sfu = self.sfu             # sfu_* messages (docs/sfu.md)
            self.server.sfu = self.sfu              # /api/streams advertises it
        self.intake = ImageIntake.create(self, self.log)   # H.264 streams' messages
        self._image_subs = {}
        self.closing = False
        self._demand = Demand()
        self._image_topics = []
        self._reconcile_now = self.create_guard_condition(self._reconcile)
        self.create_timer(0.5, self._reconcile)
        self.create_timer(1.0, self._refresh_topics)
        self._status_timer = self.create_timer(self.p.status_period, self._publish_status)
        self._parameter_change = None  # (monotonic time, text) of the last run-time change
        self._values_before = {}       # of the change being applied, for the log
        self.create_service(SetEmergencyStop, '~/set_emergency_stop', self._estop_service)
        if not self.p.subscribe_on_demand:
            for stream in self.hub.streams():
                self._subscribe(stream)
        for name in unknown_parameters(self):
            self.get_logger().warning(f'parameter {name!r} is not a bridge_node parameter and '
                                      'is ignored (misspelt, or from an older version?)')
        # Registered last: declaring parameters runs these callbacks too.
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

    def _secret(self, path: str, parameter: str) -> str:
        """Read a secret file a parameter names ('' when none); warn if others may read it."""
        if not path:
            return ''
        secret = read_secret_file(path, parameter)
        self._warn_if_exposed(path, parameter)
        return secret

    def _warn_if_exposed(self, path: str, parameter: str):
        warning = exposure_warning(path, parameter)
        if warning:
            self.get_logger().warning(warning)

    def _webrtc_service(self) -> WebRtcService:
        """Build the WebRTC service (peers signalled over /control) from its parameters."""
        stun, turn = ice.split_urls(self.p.ice_servers)
        secret = self._secret(self.p.turn_secret_file, 'turn_secret_file')
        password = self._secret(self.p.turn_password_file, 'turn_password_file')
        settings = ice.IceSettings(
            stun_urls=stun, turn_urls=turn, turn_username=self.p.turn_username,
            turn_password=password, turn_secret=secret,
            turn_credential_ttl=self.p.turn_credential_ttl,
            host_addresses=tuple(a for a in self.p.webrtc_host_addresses if a))
        codecs = tuple(c.lower() for c in self.p.webrtc_codecs if c)
        service = WebRtcService(
            self.hub, settings,
            WebRtcConfig(codecs=codecs, max_peers=self.p.webrtc_max_peers,
                         max_message_size=self.p.max_message_size,
                         connect_timeout=self.p.webrtc_connect_timeout),
            send=lambda client_id, message: self.control.send(client_id, message),
            deliver=lambda client_id, text: self.control.deliver(client_id, text),
            resolve_stream=self._topic_stream,
            charge=lambda client_id: self.control.charge(client_id), logger=self.log)
        missing = [c for c in codecs if c not in service.codecs]
        if missing:
            self.get_logger().warning(f'WebRTC codecs not available here: {missing}')
        return service

    def _sfu_service(self):
        """Build the SFU publisher (Janus) and its /control plug-in (docs/sfu.md)."""
        from video_bridge.net.sfu import SfuService
        from video_bridge.net.sfu_janus import JanusPublisher, JanusSettings
        if self.webrtc is None:
            raise ValueError('sfu_janus_url needs webrtc_enabled (the robot publishes to Janus '
                             'over WebRTC)')
        settings = JanusSettings(
            url=self.p.sfu_janus_url, room=self.p.sfu_room, viewer_url=self.p.sfu_viewer_url,
            token_secret=self._secret(self.p.sfu_token_secret_file, 'sfu_token_secret_file'),
            room_secret=self._secret(self.p.sfu_room_secret_file, 'sfu_room_secret_file'),
            room_pin=self._secret(self.p.sfu_room_pin_file, 'sfu_room_pin_file'),
            codec=self.p.sfu_codec.lower(), token_ttl=self.p.sfu_token_ttl)
        return SfuService(JanusPublisher(self.hub, settings, logger=self.log), self.hub,
                          send=lambda client_id, message: self.control.send(client_id, message),
                          logger=self.log)

    # -- streams -----------------------------------------------------------------------

    def _stream_settings(self, name: str, topic: str = '', kind: str = '',
                         values=None) -> StreamSettings:
        """
        Build a stream's settings from the parameters, or from ``values`` (a proposed change).

        Configured streams have streams.<name>.* parameters; topic streams use the defaults.
        ValueError when the values cannot make a stream (depth_max <= depth_min, ...).
        """
        values = values or self.p
        if topic:
            per = self.p.stream_defaults()
        else:
            self.p.stream(name)  # declared (once) and checked
            per = SimpleNamespace(**{field: getattr(values, f'streams.{name}.{field}', None)
                                     for field in STREAM_PARAMETERS})
            for field in STREAM_PARAMETERS:
                if getattr(per, field) is None:
                    setattr(per, field, self.get_parameter(f'streams.{name}.{field}').value)
        display = DisplaySettings(depth_min=per.depth_min, depth_max=per.depth_max,
                                  colormap=per.colormap)
        # Resolved now (namespace, remapping): /api/streams and web_video_server URLs name the
        # topic as `ros2 topic list` does.
        resolved = topic or self.resolve_topic_name(per.topic)
        kind = kind or per.type
        message_type = MESSAGE_TYPE.get(kind)
        if kind == 'compressed_video' or (topic and kind == H264):   # foxglove_msgs
            kind, message_type = H264, COMPRESSED_VIDEO_TYPE
            compressed_video_class()    # fails now (a clear configuration error) if missing
        self._message_types[name] = message_type
        return StreamSettings(name=name, topic=resolved, kind=kind,
                              quality=per.quality or values.default_quality,
                              max_variants=values.max_variants, display=display,
                              video_bitrates=layer_bitrates(values.webrtc_bitrate,
                                                            self.p.webrtc_layers),
                              topic_stream=bool(topic), h264_encoder=self.h264_encoder)

    def _topic_stream(self, name: str):
        """Create a stream for an image topic seen in the graph (``/video/%2Fsome%2Ftopic``)."""
        if not self.p.allow_topic_streams or not name.startswith('/'):
            return None
        for entry in self._image_topics:
            if entry['topic'] == name:
                try:
                    return self.hub.add(self._stream_settings(name, name, entry['kind']))
                except ValueError:   # CompressedVideo without foxglove_msgs installed here
                    return None
        return None

    def _frame_ready(self, name: str):
        self.server.notify_frame(name)
        if self.webrtc is not None:
            self.webrtc.notify_frame(name)
        if self.sfu is not None:
            self.sfu.publisher.notify_frame(name)

    def _viewers_changed(self, name: str, count: int):
        self._demand.viewers(name, count)
        if not self.closing:
            self._reconcile_now.trigger()

    def _reconcile(self):
        """Subscribe streams someone watches; unsubscribe a while after the last one left."""
        streams = {stream.name: stream for stream in self.hub.streams()}
        subscribe, unsubscribe = self._demand.plan(
            streams, set(self._image_subs), time.monotonic(),
            self.p.subscribe_on_demand, self.p.unsubscribe_delay)
        for name in subscribe:
            self._subscribe(streams[name])
        for name in unsubscribe:
            if self.intake is not None:
                self.intake.remove(name)
            self.destroy_subscription(self._image_subs.pop(name))
            self.get_logger().info(f'stream {name!r}: nobody watches; unsubscribed '
                                   f'{streams[name].settings.topic}')

    def _subscribe(self, stream):
        settings = stream.settings
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE if self.p.image_reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        if settings.kind == H264:
            self._subscribe_encoded(stream, qos)
        else:
            callback = self._raw_callback(stream) if settings.kind == RAW \
                else self._compressed_callback(stream)
            self._image_subs[stream.name] = self.create_subscription(
                MESSAGE_CLASS[settings.kind], settings.topic, callback, qos)
        self.get_logger().info(f'stream {stream.name!r}: subscribed '
                               f'{self.resolve_topic_name(settings.topic)}')

    def _subscribe_encoded(self, stream, qos):
        """Subscribe an H.264 stream's topic as CDR bytes, served by the intake thread."""
        message_class, layout = CompressedImage, cdr.COMPRESSED_IMAGE
        if self._message_types.get(stream.name) == COMPRESSED_VIDEO_TYPE:
            message_class, layout = compressed_video_class(), cdr.COMPRESSED_VIDEO
        handler = self._encoded_handler(stream, layout)
        intake = self.intake
        subscription = self.create_subscription(
            message_class, stream.settings.topic, handler, qos, raw=True,
            callback_group=intake.group if intake is not None else None)
        self._image_subs[stream.name] = subscription
        if intake is not None:
            intake.add(stream.name, subscription, handler)

    def _encoded_handler(self, stream, layout):
        def on_bytes(buffer: bytes):
            received = time.time()
            try:
                frame = cdr.compressed_frame(buffer, layout)
            except cdr.MalformedMessage as exc:
                stream.count_malformed(exc.kind)
                self._log_malformed(stream, exc)
                return
            self._feed(stream, SourceImage(frame.stamp_sec, frame.stamp_nanosec, frame.data,
                                           image_format=frame.image_format,
                                           received_time=received), frame.image_format)
        return on_bytes

    def _raw_callback(self, stream):
        def on_image(msg: Image):
            self._feed(stream, SourceImage(
                msg.header.stamp.sec, msg.header.stamp.nanosec, msg.data, msg.encoding,
                msg.width, msg.height, msg.step, bool(msg.is_bigendian),
                received_time=time.time()), msg.encoding)
        return on_image

    def _compressed_callback(self, stream):
        def on_compressed(msg: CompressedImage):
            self._feed(stream, SourceImage(
                msg.header.stamp.sec, msg.header.stamp.nanosec, msg.data, image_format=msg.format,
                received_time=time.time()), msg.format)
        return on_compressed

    def _feed(self, stream, image: SourceImage, encoding: str):
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

    def _proposed(self, parameters) -> SimpleNamespace:
        """Every run-time value as it would be after ``parameters`` (streams.* by full name)."""
        values = {name: getattr(self.p, name) for name in RUNTIME_PARAMETERS}
        values.update((parameter.name, parameter.value) for parameter in parameters)
        return SimpleNamespace(**values)

    def _plan(self, values: SimpleNamespace) -> tuple:
        """Build what ``values`` would apply: (TeleopConfig, {stream: settings}); ValueError."""
        teleop = dataclasses.replace(self.teleop.config, **{
            name: getattr(values, name) for name in (
                'max_linear', 'max_angular', 'max_linear_accel', 'max_angular_accel',
                'command_timeout', 'republish_rate', 'allow_takeover', 'default_speed')})
        bitrates = layer_bitrates(values.webrtc_bitrate, self.p.webrtc_layers)
        if bitrates[-1] < MIN_BITRATE:
            raise ValueError(f'webrtc_bitrate {values.webrtc_bitrate} gives layer '
                             f'{len(bitrates) - 1} {bitrates[-1]} bit/s, below the encoders '
                             f'lowest {MIN_BITRATE} (webrtc_layers is {self.p.webrtc_layers})')
        streams = {}
        for stream in self.hub.streams():
            settings = stream.settings
            topic = settings.name if settings.name.startswith('/') else ''
            streams[stream] = self._stream_settings(settings.name, topic, settings.kind, values)
        return teleop, streams

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
            self._plan(self._proposed(parameters))
        except (ValueError, TypeError) as exc:
            names = ', '.join(parameter.name for parameter in parameters)
            self.get_logger().warning(f'refused a parameter change ({names}): {exc}')
            return SetParametersResult(successful=False, reason=str(exc))
        # rclpy runs the post-set callback right after this one, with the same list.
        self._values_before = {parameter.name: self.get_parameter(parameter.name).value
                               for parameter in parameters}
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters):
        """Apply a validated change to the core and log it (rclpy's post-set callback)."""
        changes = []
        for parameter in parameters:
            old = self._values_before.get(parameter.name, getattr(self.p, parameter.name, None))
            setattr(self.p, parameter.name, parameter.value)
            changes.append(f'{parameter.name} {old!r} -> {parameter.value!r}')
        teleop, streams = self._plan(self.p)   # validated a moment ago: cannot fail now
        self.hub.max_viewers = self.p.max_viewers
        for stream, settings in streams.items():
            stream.reconfigure(settings)
        if any(parameter.name == 'status_period' for parameter in parameters):
            self.destroy_timer(self._status_timer)
            self._status_timer = self.create_timer(self.p.status_period, self._publish_status)
        try:
            self.on_loop(lambda: self.control.apply(
                self.teleop.update_limits(teleop, self.control.clock())))
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            self.get_logger().error(f'teleop limits not applied: bridge loop not answering: '
                                    f'{exc}')
        text = ', '.join(changes)
        self._parameter_change = (time.monotonic(), text)
        self.get_logger().info(f'parameters changed at run time: {text}')

    # -- teleop ------------------------------------------------------------------------

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
            state = self.on_loop(self.control.set_estop, bool(request.engage), 'ROS service')
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            response.success, response.message = False, f'bridge loop not answering: {exc}'
            return response
        response.success = state.estop == bool(request.engage)
        response.message = 'emergency stop ' + ('engaged' if state.estop else 'released')
        return response

    # -- status ------------------------------------------------------------------------

    def _publish_status(self):
        now = time.monotonic()
        msg = BridgeStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.url = self.server.url
        prefix = self.get_fully_qualified_name().lstrip('/') + ': '
        diagnostics = []
        for stream in self.hub.streams():
            counters = stream.counters()
            topic = self.resolve_topic_name(stream.settings.topic)
            subscribed = stream.name in self._image_subs
            report = self.monitor.update(now, stream.name, topic, subscribed, counters, prefix)
            diagnostics.append(report.diagnostic)
            bad = counters.malformed
            entry = StreamStatus(
                name=stream.name, topic=topic,
                type=self._message_types.get(stream.name, MESSAGE_TYPE[stream.settings.kind]),
                subscribed=subscribed, viewers=counters.viewers,
                variants=counters.variants, frames_in=counters.frames_in,
                frames_sent=counters.frames_sent, frames_dropped=counters.frames_dropped,
                frames_skipped=counters.frames_skipped, frames_encoded=counters.encode_count,
                frames_malformed=counters.frames_malformed,
                frames_bad_width=bad.get('width', 0), frames_bad_height=bad.get('height', 0),
                frames_bad_step=bad.get('step', 0), frames_short_data=bad.get('data', 0),
                frames_undecodable=bad.get('undecodable', 0),
                frames_unsupported_encoding=bad.get('encoding', 0))
            entry.encode_ms = float(report.encode_ms)
            entry.bytes_per_second = float(report.bytes_per_second)
            entry.input_fps = float(report.input_fps)
            msg.streams.append(entry)
        try:
            teleop = self.on_loop(self.control.status, timeout=0.5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            teleop = None
        diagnostics.append(health.teleop_diagnostic(teleop, self.p.command_timeout, prefix))
        diagnostics.append(health.parameters_diagnostic(
            {name: getattr(self.p, name) for name in sorted(RUNTIME_PARAMETERS)},
            self._parameter_change, now, prefix))
        self._publish_diagnostics(diagnostics)
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

    def _publish_estop(self, engaged: bool):
        """Latch the e-stop state for twist_mux ``locks`` (called on start and on each change)."""
        self.estop_pub.publish(Bool(data=engaged))

    def flush_cmd_vel(self, timeout: float = 1.0):
        """Wait until subscribers acknowledged the last cmd_vel (the final zero at shutdown)."""
        try:
            self.cmd_vel.wait_for_all_acked(Duration(seconds=timeout))
        except Exception:  # best effort: never block shutdown on it
            pass


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
        try:
            await node.server.start()
        except OSError as exc:
            node.get_logger().error(f'cannot listen on {node.p.host}:{node.p.port}: {exc}')
            return 1
        node.control.start()
        if node.webrtc is not None:
            node.webrtc.start()
        if node.sfu is not None:
            node.sfu.start()
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor,), daemon=True)
        spinner.start()
        node.get_logger().info(
            f'video_bridge serving {node.server.url}/ (streams: '
            f'{", ".join(s.name for s in node.hub.streams()) or "none"}; '
            f'control token {"required" if node.access.token_required else "not set"})')
        beyond_loopback = not is_loopback(node.p.host)
        rights = node.access.summary(beyond_loopback)
        if node.generated_token:
            print_page_url(node.server, node.access.token)
        if (beyond_loopback and not node.access.token) or (
                node.access.token and not node.access.view_requires_token):
            node.get_logger().warning(f'who may do what: {rights}')
        else:
            node.get_logger().info(f'who may do what: {rights}')
        await stop.wait()
        node.closing = True
        node.get_logger().info('shutting down: stopping the car')
        await node.control.stop()
        if node.webrtc is not None:
            await node.webrtc.stop()
        if node.sfu is not None:
            await node.sfu.stop()
        # Off the loop, so control messages arriving meanwhile are still answered.
        await loop.run_in_executor(None, node.flush_cmd_vel)
        await node.server.stop()
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


PAGE_URL_VARIABLE = 'VIDEO_BRIDGE_PAGE_URL'


def network_namespace():
    """
    Name this process's network namespace when it is not the machine's own, else None.

    A namespace made with ``ip netns add`` is found by name under /run/netns; another one
    (``unshare --net``) is '' when pid 1's namespace can be read to compare, else unknown (None).
    """
    try:
        mine = os.stat('/proc/self/ns/net')
    except OSError:
        return None
    try:
        for name in sorted(os.listdir('/run/netns')):
            named = os.stat(os.path.join('/run/netns', name))
            if (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
                return name
    except OSError:
        pass
    try:
        return '' if os.stat('/proc/1/ns/net').st_ino != mine.st_ino else None
    except OSError:  # pid 1's namespace is not ours to read: cannot tell
        return None


def page_urls(server, token: str, page_url: str = '') -> tuple:
    """
    Return ``(urls, where)``: the page URLs with the token, and where they open.

    ``page_url`` (``$VIDEO_BRIDGE_PAGE_URL``) is the page as the user reaches it from outside,
    e.g. ``http://203.0.113.2:8080/`` for scripts/demo's namespace: then it is the only URL.
    Otherwise the bridge's own names, which inside a network namespace open only there.
    """
    query = f'?token={token}'
    if page_url:
        return [page_url.rstrip('/') + '/' + query], ''
    scheme = 'https' if server.config.tls_cert else 'http'
    hosts = [socket.gethostname(), '127.0.0.1'] if server.config.host in ('0.0.0.0', '::') \
        else [server.config.host]
    namespace = network_namespace()
    where = '' if namespace is None else (
        f' (addresses inside network namespace {namespace or "of bridge_node"}, valid only '
        'there: from outside it use the address of its interface, or set '
        '$VIDEO_BRIDGE_PAGE_URL to print that)')
    return [f'{scheme}://{host}:{server.port}/{query}' for host in hosts], where


def print_page_url(server, token: str):
    """
    Show the page URL with the generated token on stdout (not /rosout: DDS nodes read that).

    Jupyter-style: open it once; the page keeps the token for the tab and drops it from the
    address bar.
    """
    urls, where = page_urls(server, token, os.environ.get(PAGE_URL_VARIABLE, '').strip())
    what = 'watch and drive' if server.access.view_requires_token else \
        'drive (anyone may watch: view_requires_token is false)'
    print('video_bridge: no token was configured and the bridge is reachable beyond this '
          f'machine, so it made one.\nTo {what}, open{where}:\n'
          + '\n'.join(f'    {url}' for url in urls) +
          '\n(set token_file or $VIDEO_BRIDGE_TOKEN to choose your own)', flush=True)


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
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: frames come from the reusable heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: do not give freed frames back
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
