"""
The bridge assembled without ROS: hub, access, teleop, control, server, WebRTC and SFU.

:class:`Bridge` builds every piece from a :class:`BridgeConfig` and one :class:`RosCallbacks`
object, wires them to each other, and owns what runs between them: which frame wakes whom,
when an image topic is subscribed (:mod:`video_bridge.core.demand`), topic streams made on
request, run-time reconfiguration, the status report, start (with the page URL when it made
the token) and stop. It imports :mod:`core` and :mod:`net` only, never rclpy (test_assembly
checks it), so the whole bridge runs in-process in a test with a plain object standing where
ROS is.

:mod:`video_bridge.ros.bridge_node` is the ROS side: it declares the parameters, turns them
into the config, implements :class:`RosCallbacks` with publishers and subscriptions, and spins.

Threads: the bridge lives on one asyncio loop. ``publish_velocity`` and ``publish_estop`` are
called on that loop; :meth:`Bridge.reconcile` (which calls ``subscribe`` / ``unsubscribe``) is
called by the ROS side on its own thread, after ``request_reconcile`` or from a timer.
"""

import asyncio
import dataclasses
from dataclasses import dataclass, field
import logging
import os
import socket
import time
from typing import Callable, Dict, Mapping, Optional, Protocol, Set, Tuple

from video_bridge.core import ice
from video_bridge.core import protocol
from video_bridge.core.access import AccessPolicy, generate_token, is_loopback, load_token
from video_bridge.core.demand import Demand
from video_bridge.core.encoders import choose_h264_encoder, LIBX264, MIN_BITRATE
from video_bridge.core.health import StreamMonitor
from video_bridge.core.image_codec import DisplaySettings
from video_bridge.core.layers import layer_bitrates
from video_bridge.core.secret_file import exposure_warning, read_secret_file
from video_bridge.core.status import bridge_report, BridgeReport
from video_bridge.core.streams import COMPRESSED, H264, RAW, Stream, StreamHub, StreamSettings
from video_bridge.core.teleop import (DEFAULT_VOCABULARY, load_vocabulary, TeleopConfig,
                                      TeleopCore)
from video_bridge.net import wvs_compat
from video_bridge.net.auth import machine_names
from video_bridge.net.control import ControlService
from video_bridge.net.server import BridgeServer, ServerConfig
from video_bridge.net.webrtc import WebRtcConfig, WebRtcService

# ROS message types by name (the ROS side maps them to classes).
IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE_TYPE = 'sensor_msgs/msg/CompressedImage'
COMPRESSED_VIDEO_TYPE = 'foxglove_msgs/msg/CompressedVideo'   # H.264 in it is passed through
IMAGE_TYPES = {IMAGE_TYPE: RAW, COMPRESSED_IMAGE_TYPE: COMPRESSED, COMPRESSED_VIDEO_TYPE: H264}
MESSAGE_TYPE = {RAW: IMAGE_TYPE, COMPRESSED: COMPRESSED_IMAGE_TYPE, H264: COMPRESSED_IMAGE_TYPE}
STREAM_TYPES = ('raw', 'compressed', 'h264', 'compressed_video')
# TeleopConfig fields a running bridge takes from the config (the rest are read at start).
RUNTIME_TELEOP = ('max_linear', 'max_angular', 'max_linear_accel', 'max_angular_accel',
                  'command_timeout', 'republish_rate', 'allow_takeover', 'default_speed')


class RosCallbacks(Protocol):
    """
    What the bridge asks of ROS; bridge_node implements it, a test implements it with lists.

    ``log`` is a logging.Logger-like object (``debug`` ... ``exception`` with %-arguments).
    """

    log: logging.Logger

    def publish_velocity(self, velocity: protocol.Velocity) -> None:
        """Publish a velocity the teleop core decided on (cmd_vel); on the bridge's loop."""

    def publish_estop(self, engaged: bool) -> None:
        """Latch the e-stop state (twist_mux ``locks``): at start and on each change; on loop."""

    def subscribe(self, stream: Stream, message_type: str) -> None:
        """Subscribe ``stream.settings.topic`` as ``message_type`` and feed ``stream.publish``."""

    def unsubscribe(self, stream: Stream) -> None:
        """Drop the stream's subscription (nobody watches it any more)."""

    def request_reconcile(self) -> None:
        """Run :meth:`Bridge.reconcile` on the ROS side soon (called on the loop)."""

    def image_topics(self) -> list:
        """Return the graph's image topics: ``{'topic', 'type', 'kind'}`` dicts."""

    def flush_velocity(self, timeout: float) -> None:
        """Wait (bounded, blocking, off the loop) until the last velocity was delivered."""


@dataclass(frozen=True)
class StreamConfig:
    """One configured stream (the ``streams.<name>.*`` parameters, topic already resolved)."""

    topic: str
    stream_type: str = 'raw'    # the type parameter: one of STREAM_TYPES
    quality: int = 0            # 0: default_quality
    depth_min: float = 0.0
    depth_max: float = 5.0
    colormap: str = 'turbo'


@dataclass(frozen=True)
class BridgeConfig:
    """
    Everything the bridge is built from: the bridge_node parameters of the same names.

    Defaults equal the parameters' defaults (test_assembly holds them together), except the
    ones the ROS side resolves: ``web_root`` and ``commands_file`` ('' here: the web folder
    must be named; the built-in vocabulary) and ``streams`` (none).
    """

    # network
    host: str = '0.0.0.0'
    port: int = 8080
    web_root: str = ''
    tls_cert: str = ''
    tls_key: str = ''
    # access
    token_file: str = ''
    view_requires_token: bool = True
    allow_anonymous_driving: bool = False
    allowed_origins: Tuple[str, ...] = ()
    allowed_hosts: Tuple[str, ...] = ()
    cors_origins: Tuple[str, ...] = ()
    trusted_proxies: Tuple[str, ...] = ()
    max_connections: int = 1000
    max_connections_per_client: int = 256
    handshake_timeout: float = 5.0
    send_timeout: float = 5.0
    ping_interval: float = 2.0
    ping_timeout: float = 6.0
    # streams
    streams: Mapping[str, StreamConfig] = field(default_factory=dict)
    default_quality: int = 80
    max_viewers: int = 100
    frames_in_flight: int = 2
    max_variants: int = 4
    max_total_variants: int = 16
    subscribe_on_demand: bool = True
    unsubscribe_delay: float = 5.0
    allow_topic_streams: bool = True
    # teleop
    max_linear: float = 0.5
    max_angular: float = 1.0
    max_linear_accel: float = 0.0
    max_angular_accel: float = 0.0
    command_timeout: float = 0.5
    republish_rate: float = 10.0
    holonomic: bool = False
    allow_takeover: bool = False
    default_speed: float = 1.0
    commands_file: str = ''
    commands_per_second: float = 50.0
    command_burst: int = 20
    max_message_size: int = 4096
    # webrtc
    webrtc_enabled: bool = True
    webrtc_codecs: Tuple[str, ...] = ('h264', 'vp8')
    webrtc_bitrate: int = 1200000
    webrtc_layers: int = 3
    webrtc_max_peers: int = 20
    webrtc_connect_timeout: float = 15.0
    h264_encoder: str = 'auto'
    ice_servers: Tuple[str, ...] = ()
    turn_username: str = ''
    turn_password_file: str = ''
    turn_secret_file: str = ''
    turn_credential_ttl: float = 3600.0
    webrtc_host_addresses: Tuple[str, ...] = ()
    # sfu
    sfu_janus_url: str = ''
    sfu_viewer_url: str = ''
    sfu_room: int = 0
    sfu_token_secret_file: str = ''
    sfu_room_secret_file: str = ''
    sfu_room_pin_file: str = ''
    sfu_codec: str = 'h264'
    sfu_token_ttl: float = 300.0

    @classmethod
    def from_values(cls, values, **given) -> 'BridgeConfig':
        """Build from an object with the parameters as attributes (``given`` over them)."""
        kwargs = {}
        for item in dataclasses.fields(cls):
            if item.name in given:
                kwargs[item.name] = given[item.name]
            elif hasattr(values, item.name):
                value = getattr(values, item.name)
                kwargs[item.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)


class Bridge:
    """One bridge: its pieces, wired, and the decisions that sit between them and ROS."""

    def __init__(self, config: BridgeConfig, ros: RosCallbacks,
                 clock: Callable[[], float] = time.monotonic):
        """Build every piece; ValueError / OSError on a configuration that cannot run."""
        self.config = config
        self.ros = ros
        self.log = ros.log
        self.clock = clock
        self.closing = False
        self.subscribed: Set[str] = set()        # streams whose topic the ROS side subscribes
        self.message_types: Dict[str, str] = {}  # stream name -> ROS message type it takes
        self.monitor = StreamMonitor(stale_after=2.0)
        self._demand = Demand()
        self.hub = StreamHub(config.max_viewers, on_frame=self._frame_ready,
                             on_viewers=self._viewers_changed,
                             max_total_variants=config.max_total_variants)
        # Probed once (a tiny test encode per candidate); only WebRTC layers encode H.264.
        self.h264_encoder = choose_h264_encoder(config.h264_encoder, logger=self.log)[0] \
            if config.webrtc_enabled else LIBX264
        for name in config.streams:
            settings, self.message_types[name] = self.stream_settings(name, config)
            self.hub.add(settings)
        self.access, self.generated_token = self._access(config)
        vocabulary = load_vocabulary(config.commands_file) if config.commands_file \
            else DEFAULT_VOCABULARY
        self.teleop = TeleopCore(TeleopConfig(
            holonomic=config.holonomic, vocabulary=vocabulary,
            **{name: getattr(config, name) for name in RUNTIME_TELEOP}))
        self.control = ControlService(self.teleop, self.access, ros.publish_velocity,
                                      config.commands_per_second, config.command_burst,
                                      config.max_message_size, logger=self.log,
                                      clock=clock, send_timeout=config.send_timeout,
                                      on_estop=ros.publish_estop)
        self.server = BridgeServer(
            self.hub, self.access,
            ServerConfig(host=config.host, port=config.port, web_root=config.web_root,
                         tls_cert=config.tls_cert, tls_key=config.tls_key,
                         frames_in_flight=config.frames_in_flight,
                         max_message_size=config.max_message_size,
                         handshake_timeout=config.handshake_timeout,
                         send_timeout=config.send_timeout, ping_interval=config.ping_interval,
                         ping_timeout=config.ping_timeout,
                         max_connections=config.max_connections,
                         max_connections_per_client=config.max_connections_per_client,
                         trusted_proxies=tuple(config.trusted_proxies)),
            control=self.control, logger=self.log, resolve_stream=self._topic_stream,
            list_topics=lambda: list(self.ros.image_topics()),
            extra_routes=[wvs_compat.add_routes])  # web_video_server's URLs
        self.webrtc = self._webrtc_service(config) if config.webrtc_enabled else None
        if self.webrtc is not None:
            self.control.signalling = self.webrtc   # webrtc_* messages of /control sessions
            self.server.webrtc = self.webrtc        # its figures join /api/streams
        self.sfu = self._sfu_service(config) if config.sfu_janus_url else None
        if self.sfu is not None:
            self.control.sfu = self.sfu             # sfu_* messages (docs/sfu.md)
            self.server.sfu = self.sfu              # /api/streams advertises it

    # -- building -------------------------------------------------------------------------

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
            self.log.warning('%s', warning)

    def _access(self, config: BridgeConfig) -> Tuple[AccessPolicy, bool]:
        """Return the access policy and whether its token was made here (none configured)."""
        token = load_token(config.token_file)
        if config.token_file:
            self._warn_if_exposed(config.token_file, 'token_file')
        # Secure by default: beyond loopback, nobody drives without a token unless asked to.
        generated = not token and not is_loopback(config.host) and \
            not config.allow_anonymous_driving
        if generated:
            token = generate_token()
        access = AccessPolicy(
            token, config.view_requires_token, tuple(config.allowed_origins),
            tuple(config.allowed_hosts) + machine_names(), tuple(config.cors_origins))
        return access, generated

    def _webrtc_service(self, config: BridgeConfig) -> WebRtcService:
        """Build the WebRTC service (peers signalled over /control) from its parameters."""
        stun, turn = ice.split_urls(config.ice_servers)
        settings = ice.IceSettings(
            stun_urls=stun, turn_urls=turn, turn_username=config.turn_username,
            turn_password=self._secret(config.turn_password_file, 'turn_password_file'),
            turn_secret=self._secret(config.turn_secret_file, 'turn_secret_file'),
            turn_credential_ttl=config.turn_credential_ttl,
            host_addresses=tuple(a for a in config.webrtc_host_addresses if a))
        codecs = tuple(c.lower() for c in config.webrtc_codecs if c)
        control = self.control
        service = WebRtcService(
            self.hub, settings,
            WebRtcConfig(codecs=codecs, max_peers=config.webrtc_max_peers,
                         max_message_size=config.max_message_size,
                         connect_timeout=config.webrtc_connect_timeout),
            send=control.send, deliver=control.deliver, resolve_stream=self._topic_stream,
            charge=control.charge, logger=self.log, clock=self.clock)
        missing = [c for c in codecs if c not in service.codecs]
        if missing:
            self.log.warning('WebRTC codecs not available here: %s', missing)
        return service

    def _sfu_service(self, config: BridgeConfig):
        """Build the SFU publisher (Janus) and its /control plug-in (docs/sfu.md)."""
        from video_bridge.net.sfu import SfuService
        from video_bridge.net.sfu_janus import JanusPublisher, JanusSettings
        if self.webrtc is None:
            raise ValueError('sfu_janus_url needs webrtc_enabled (the robot publishes to Janus '
                             'over WebRTC)')
        settings = JanusSettings(
            url=config.sfu_janus_url, room=config.sfu_room, viewer_url=config.sfu_viewer_url,
            token_secret=self._secret(config.sfu_token_secret_file, 'sfu_token_secret_file'),
            room_secret=self._secret(config.sfu_room_secret_file, 'sfu_room_secret_file'),
            room_pin=self._secret(config.sfu_room_pin_file, 'sfu_room_pin_file'),
            codec=config.sfu_codec.lower(), token_ttl=config.sfu_token_ttl)
        return SfuService(JanusPublisher(self.hub, settings, logger=self.log), self.hub,
                          send=self.control.send, logger=self.log, clock=self.clock)

    def stream_settings(self, name: str, config: BridgeConfig,
                        kind: str = '') -> Tuple[StreamSettings, str]:
        """
        Return a stream's settings under ``config``, and the ROS message type it takes.

        A configured stream (in ``config.streams``) has its own fields; any other name is a
        topic stream (the name is the topic, ``kind`` as the graph offers it) with the defaults.
        ValueError when the values cannot make a stream (depth_max <= depth_min, ...).
        """
        per = config.streams.get(name)
        topic_stream = per is None
        if topic_stream:
            per = StreamConfig(topic=name)
        elif per.stream_type not in STREAM_TYPES:
            raise ValueError(f'streams.{name}.type must be one of {", ".join(STREAM_TYPES)}, '
                             f'not {per.stream_type!r}')
        display = DisplaySettings(depth_min=per.depth_min, depth_max=per.depth_max,
                                  colormap=per.colormap)
        kind = kind or per.stream_type
        message_type = MESSAGE_TYPE.get(kind)
        if kind == 'compressed_video' or (topic_stream and kind == H264):   # foxglove_msgs
            kind, message_type = H264, COMPRESSED_VIDEO_TYPE
        settings = StreamSettings(
            name=name, topic=per.topic, kind=kind,
            quality=per.quality or config.default_quality, max_variants=config.max_variants,
            display=display,
            video_bitrates=layer_bitrates(config.webrtc_bitrate, config.webrtc_layers),
            topic_stream=topic_stream, h264_encoder=self.h264_encoder)
        return settings, message_type

    # -- streams ----------------------------------------------------------------------------

    def _topic_stream(self, name: str) -> Optional[Stream]:
        """Create a stream for an image topic seen in the graph (``/video/%2Fsome%2Ftopic``)."""
        if not self.config.allow_topic_streams or not name.startswith('/'):
            return None
        for entry in self.ros.image_topics():
            if entry['topic'] == name:
                try:
                    settings, message_type = self.stream_settings(name, self.config,
                                                                  entry['kind'])
                except ValueError:
                    return None
                self.message_types[name] = message_type
                return self.hub.add(settings)
        return None

    def _frame_ready(self, name: str):
        """Wake whoever sends the stream's frames (called on the ROS thread, per frame)."""
        self.server.notify_frame(name)
        if self.webrtc is not None:
            self.webrtc.notify_frame(name)
        if self.sfu is not None:
            self.sfu.publisher.notify_frame(name)

    def _viewers_changed(self, name: str, count: int):
        self._demand.viewers(name, count)
        if not self.closing:
            self.ros.request_reconcile()

    def reconcile(self):
        """Subscribe streams someone watches; unsubscribe a while after the last one left."""
        streams = {stream.name: stream for stream in self.hub.streams()}
        subscribe, unsubscribe = self._demand.plan(
            streams, set(self.subscribed), self.clock(), self.config.subscribe_on_demand,
            self.config.unsubscribe_delay)
        for name in subscribe:
            stream = streams[name]
            self.ros.subscribe(stream, self.message_types.get(
                name, MESSAGE_TYPE[stream.settings.kind]))
            self.subscribed.add(name)
        for name in unsubscribe:
            self.subscribed.discard(name)
            self.ros.unsubscribe(streams[name])

    def report(self, now: float, teleop, runtime_values: dict, parameter_change=None,
               prefix: str = '', resolve: Callable[[str], str] = str) -> BridgeReport:
        """Report the status period (:func:`video_bridge.core.status.bridge_report`)."""
        streams = self.hub.streams()
        types = {stream.name: self.message_types.get(stream.name,
                                                     MESSAGE_TYPE[stream.settings.kind])
                 for stream in streams}
        return bridge_report(streams, self.monitor, now, self.subscribed, types, teleop,
                             self.config.command_timeout, runtime_values, parameter_change,
                             prefix, resolve)

    # -- run-time changes ---------------------------------------------------------------------

    def plan(self, config: BridgeConfig) -> Tuple[TeleopConfig, dict]:
        """Build what ``config`` would apply: (TeleopConfig, {stream: settings}); ValueError."""
        teleop = dataclasses.replace(self.teleop.config, **{
            name: getattr(config, name) for name in RUNTIME_TELEOP})
        bitrates = layer_bitrates(config.webrtc_bitrate, config.webrtc_layers)
        if bitrates[-1] < MIN_BITRATE:
            raise ValueError(f'webrtc_bitrate {config.webrtc_bitrate} gives layer '
                             f'{len(bitrates) - 1} {bitrates[-1]} bit/s, below the encoders '
                             f'lowest {MIN_BITRATE} (webrtc_layers is {config.webrtc_layers})')
        streams = {}
        for stream in self.hub.streams():
            settings = stream.settings
            kind = settings.kind if settings.topic_stream else ''
            streams[stream] = self.stream_settings(settings.name, config, kind)[0]
        return teleop, streams

    def reconfigure(self, config: BridgeConfig) -> TeleopConfig:
        """
        Take a run-time change of ``config`` (validated by :meth:`plan`) for the streams.

        Returns the new teleop limits, which :meth:`apply_teleop_limits` takes on the loop.
        """
        teleop, streams = self.plan(config)
        self.config = config
        self.hub.max_viewers = config.max_viewers
        for stream, settings in streams.items():
            stream.reconfigure(settings)
        return teleop

    def apply_teleop_limits(self, teleop: TeleopConfig):
        """Hand new teleop limits to the core and carry out its decisions (on the loop)."""
        self.control.apply(self.teleop.update_limits(teleop, self.control.clock()))

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self):
        """Listen (OSError if the port is taken), then start the clocks of control and video."""
        await self.server.start()
        self.control.start()
        if self.webrtc is not None:
            self.webrtc.start()
        if self.sfu is not None:
            self.sfu.start()

    def announce(self):
        """Log where the bridge serves and who may do what; print the page URL of a made token."""
        config, access = self.config, self.access
        self.log.info(
            f'video_bridge serving {self.server.url}/ (streams: '
            f'{", ".join(s.name for s in self.hub.streams()) or "none"}; '
            f'control token {"required" if access.token_required else "not set"})')
        beyond_loopback = not is_loopback(config.host)
        rights = access.summary(beyond_loopback)
        if self.generated_token:
            print_page_url(self.server, access.token)
        if (beyond_loopback and not access.token) or (
                access.token and not access.view_requires_token):
            self.log.warning(f'who may do what: {rights}')
        else:
            self.log.info(f'who may do what: {rights}')

    async def stop(self):
        """Stop the car (a final zero, delivered), the peers, then every client connection."""
        self.closing = True
        self.log.info('shutting down: stopping the car')
        await self.control.stop()
        if self.webrtc is not None:
            await self.webrtc.stop()
        if self.sfu is not None:
            await self.sfu.stop()
        # Off the loop, so control messages arriving meanwhile are still answered.
        await asyncio.get_running_loop().run_in_executor(None, self.ros.flush_velocity, 1.0)
        await self.server.stop()


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
