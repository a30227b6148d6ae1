"""
bridge_node's parameters: one table with defaults, descriptions and ranges.

Declared through rclpy so they show up in ``ros2 param describe`` and are validated by rclpy
(ranges, read-only); ``config/bridge.yaml`` mirrors this table with comments.

The names in RUNTIME_PARAMETERS (and the stream fields in RUNTIME_STREAM_FIELDS) take a change
while the bridge runs (``ros2 param set``, ``ros2 param load``): bridge_node validates the whole
change, then applies all of it (see ``BridgeNode._validate_parameters``). Every other parameter
is read once at start and declared read-only; its description says that it needs a restart.
"""

from types import SimpleNamespace

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from video_bridge.core import codec_registry

# Codec names and H.264 encoders the parameters accept: the codec registry's, nothing else.
_H264 = codec_registry.get(codec_registry.H264)
H264_ENCODERS = ('auto',) + tuple(encoder.name for encoder in _H264.encoders)
_HARDWARE_H264 = [encoder.name for encoder in _H264.encoders if encoder.hardware]


def _either(names) -> str:
    """Spell a choice for a description: 'a, b or c'."""
    names = list(names)
    return ', '.join(names[:-1]) + ' or ' + names[-1] if len(names) > 1 else ''.join(names)


# name: (default, description, (min, max) or None)
BRIDGE_PARAMETERS = {
    # network
    'host': ('0.0.0.0', 'Address to listen on; 0.0.0.0 serves every interface '
             '(set a token then).', None),
    'port': (8080, 'TCP port for the page, the API, video, MJPEG and control (0: any free).',
             (0, 65535)),
    'web_root': ('', 'Folder served at /; empty: share/video_bridge/web.', None),
    'tls_cert': ('', 'PEM certificate: with tls_key, serve https/wss on the same port.', None),
    'tls_key': ('', 'PEM private key for tls_cert.', None),
    # access
    'token_file': ('', 'File whose first line is the token needed to drive (never logged, never '
                   'a parameter). Empty: the VIDEO_BRIDGE_TOKEN environment variable; if that '
                   'is empty too and host is beyond loopback, a random token is made at start '
                   'and the page URL with it is printed on stdout.', None),
    'view_requires_token': (True, 'Watching video and listing image topics need the token '
                            'too (when there is one). false: anyone who reaches the port '
                            'watches the configured streams (logged at start); driving, TURN '
                            'credentials and topic streams still need the token.', None),
    'allow_anonymous_driving': (False, 'Beyond loopback with no token: let anyone who reaches '
                                'the port drive instead of making a random token. No effect '
                                'when a token is configured.', None),
    'allowed_origins': ([''], 'Browser origins allowed to open websockets IN ADDITION to the '
                        "bridge's own, scheme included, e.g. https://ops.example.org:8443; "
                        '*: any.', None),
    'allowed_hosts': ([''], 'Host names browsers may use to reach the bridge besides IP '
                      "literals, localhost and this machine's names (DNS rebinding defence); "
                      '*: any.', None),
    'cors_origins': ([''], 'Origins whose pages may read /api/streams and /snapshot '
                     '(CORS); *: any.', None),
    'trusted_proxies': ([''], 'Addresses of reverse proxies / tunnels in front of the bridge '
                        '(e.g. 127.0.0.1): exempt from max_connections_per_client; their '
                        'X-Forwarded-For / -Proto are believed.', None),
    'max_connections': (1000, 'Open TCP connections in total (kept below the file limit); '
                        'the next gets a 503 and is closed.', (16, 1000000)),
    'max_connections_per_client': (256, 'Open TCP connections from one client (an address, '
                                   'an IPv6 /64, or behind trusted_proxies the forwarded '
                                   'client); when full, its own idle connection makes room, '
                                   'else the next gets a 503.', (1, 1000000)),
    'handshake_timeout': (5.0, 'Seconds a new connection has to finish its TLS handshake and '
                          'send a request head, else it is dropped.', (0.5, 300.0)),
    'send_timeout': (5.0, 'Seconds any send may take (a stalled video, MJPEG or control '
                     'client is dropped and frees its slot).', (0.5, 300.0)),
    'ping_interval': (2.0, 'Seconds of silence after which a websocket is pinged.',
                      (0.2, 600.0)),
    'ping_timeout': (6.0, 'Seconds to wait for the pong (long enough for a 3 s link outage and '
                     "TCP's resend backoff after it); a silent driver loses the lock within "
                     '2 x ping_interval + ping_timeout.', (0.2, 600.0)),
    # streams
    'stream_names': (['camera'], 'Streams to offer; each reads streams.<name>.topic.', None),
    'default_quality': (80, 'JPEG quality when a stream or viewer names none (a change applies '
                        'to viewers that start watching after it).', (1, 100)),
    'max_viewers': (100, 'Viewers (websocket, MJPEG, snapshot) across all streams; the next '
                    'is refused with a clear reason.', (1, 10000)),
    'frames_in_flight': (2, 'Video frames sent to a viewer and not yet acknowledged (by the '
                         'pong to the ping after each frame); more only helps long round trips.',
                         (1, 16)),
    'max_variants': (4, 'Distinct size/quality variants encoded per stream at once, the '
                     "stream's default one included (its place is always kept for it).",
                     (1, 64)),
    'max_total_variants': (16, 'Size/quality variants encoded at once across all streams '
                           '(topic streams included), besides each configured stream'
                           "'s default one, which the page uses and which is always admitted.",
                           (1, 1024)),
    'subscribe_on_demand': (True, 'Subscribe an image topic only while someone watches it.',
                            None),
    'unsubscribe_delay': (5.0, 'Seconds after the last viewer leaves before unsubscribing.',
                          (0.0, 3600.0)),
    'allow_topic_streams': (True, 'Let clients with the token (everyone when there is none) '
                            'watch any image topic in the graph as /video/<url-escaped '
                            'topic>.', None),
    'image_reliable': (False, 'Subscribe images reliable instead of best effort (sensor data).',
                       None),
    'video_thread_nice': (10, 'Niceness added (Linux) to the thread that takes, converts and '
                          'encodes images: when the CPU is short, commands, the e-stop and '
                          'the network are served before video. 0: the same priority as the '
                          'rest of the bridge.', (0, 19)),
    'status_period': (1.0, 'Seconds between BridgeStatus messages on ~/status.', (0.05, 60.0)),
    # teleop
    'cmd_vel_stamped': (False, 'Publish geometry_msgs/TwistStamped instead of Twist.', None),
    'cmd_vel_frame_id': ('base_link', 'frame_id of TwistStamped commands.', None),
    'max_linear': (0.5, 'Largest |linear.x| and |linear.y| published, m/s.', (0.0, 100.0)),
    'max_angular': (1.0, 'Largest |angular.z| published, rad/s.', (0.0, 100.0)),
    'max_linear_accel': (0.0, 'Limit on speeding up, m/s^2 (0: none). Slowing down is never '
                         'limited.', (0.0, 1000.0)),
    'max_angular_accel': (0.0, 'Limit on turning faster, rad/s^2 (0: none).', (0.0, 1000.0)),
    'command_timeout': (0.5, 'Deadman: seconds without a command before the car is stopped.',
                        (0.05, 10.0)),
    'republish_rate': (10.0, 'Hz at which a held non-zero command is republished (0: off).',
                       (0.0, 100.0)),
    'holonomic': (False, 'Accept linear.y (sideways) commands.', None),
    'allow_takeover': (False, 'Let an authorised client take the driver lock from another.',
                       None),
    'default_speed': (1.0, 'Speed scale of text commands that name none, 0..1.', (0.0, 1.0)),
    'commands_file': ('', 'Text command vocabulary (YAML); empty: '
                      'share/video_bridge/config/teleop_commands.yaml.', None),
    'commands_per_second': (50.0, 'Control messages per second per connection before errors.',
                            (1.0, 1000.0)),
    'command_burst': (20, 'Control messages a connection may send at once.', (1, 1000)),
    'max_message_size': (4096, 'Largest control message in bytes; larger ones close the '
                         'socket (1009).', (64, 1048576)),
    # webrtc (issue 10)
    'webrtc_enabled': (True, 'Offer WebRTC video and data-channel teleop on /control (the page '
                       'falls back to websocket JPEG without it).', None),
    'webrtc_codecs': (list(codec_registry.WEBRTC_CODECS), 'Video codecs offered over WebRTC, '
                      f'preferred first (any of {", ".join(codec_registry.WEBRTC_CODECS)}).',
                      None),
    'webrtc_bitrate': (1200000, 'Bit/s of the full WebRTC layer; further layers at 1/2, 1/4 '
                       '(a change restarts the encoders at the new rate with a keyframe).',
                       (50000, 20000000)),
    'webrtc_layers': (3, 'WebRTC quality layers per stream and codec (full, half, quarter '
                      'bitrate); each peer moves between them by its bandwidth estimate '
                      '(each peer is built on the count, so it cannot change at run time).',
                      (1, 3)),
    'webrtc_max_peers': (20, 'WebRTC peer connections at once.', (1, 1000)),
    'webrtc_connect_timeout': (15.0, 'Seconds from the offer until a WebRTC peer must be '
                               'connected (ICE and DTLS done); else it is closed and its slot '
                               'freed.', (1.0, 120.0)),
    'h264_encoder': ('auto', 'H.264 encoder of the layers the bridge encodes: auto (the first '
                     f'of {", ".join(_HARDWARE_H264)} that passes a test encode at start, else '
                     f'{_H264.software_encoder.name}), {_either(H264_ENCODERS[1:])} (one that '
                     f'fails its test encode falls back to {_H264.software_encoder.name}).',
                     None),
    'ice_servers': ([''], 'STUN/TURN URLs for the page and the bridge: stun:host:3478, '
                    'turn:host:3478?transport=udp, turns:host:443?transport=tcp (TURN over TLS). '
                    'turn:/turns: entries use turn_secret_file or turn_username/'
                    'turn_password_file.', None),
    'turn_username': ('', 'Static TURN user name (prefer turn_secret_file).', None),
    'turn_password_file': ('', 'File whose first line is the static TURN password for '
                           'turn_username (never logged, never a parameter; prefer '
                           'turn_secret_file).', None),
    'turn_secret_file': ('', "File with the TURN server's shared secret (coturn "
                         'use-auth-secret / static-auth-secret): each client gets its own '
                         'short-lived credential.', None),
    'turn_credential_ttl': (3600.0, 'Seconds a minted TURN credential stays valid.',
                            (60.0, 604800.0)),
    'webrtc_host_addresses': ([''], 'Local addresses or networks (CIDR) WebRTC may use as host '
                              'candidates (no other interface is offered or sends); empty: '
                              'every interface.', None),
    # SFU (docs/sfu.md): the robot publishes watched streams to Janus once; viewers watch there
    'sfu_janus_url': ('', 'Janus websocket URL the bridge publishes to (its VideoRoom plugin), '
                      'e.g. wss://cloud.example.org/janus; pages that ask (sfu_watch) watch '
                      'through it. Empty: no SFU.', None),
    'sfu_viewer_url': ('', 'Janus websocket URL the pages are told (empty: sfu_janus_url), when '
                       'viewers reach Janus another way than the robot does.', None),
    'sfu_room': (0, 'Janus VideoRoom room id of this robot (one room per robot, made in '
                 'janus.plugin.videoroom.jcfg).', (0, 2 ** 53)),
    'sfu_token_secret_file': ('', "File with Janus's token_auth_secret: the bridge mints "
                              'short-lived tokens from it, its own and those of pages that '
                              'passed the view check (never logged, never a parameter).', None),
    'sfu_room_secret_file': ('', "File with the room's secret: the bridge puts its own token "
                             "on the room's allowed list with it, so only the robot publishes.",
                             None),
    'sfu_room_pin_file': ('', "File with the room's pin: needed to join it; given to pages "
                          'that passed the view check.', None),
    'sfu_codec': (codec_registry.H264, 'Codec the bridge publishes to Janus: '
                  f'{_either(codec_registry.WEBRTC_CODECS)} (the room must allow it).', None),
    'sfu_token_ttl': (300.0, 'Seconds a minted Janus token stays valid (pages renew theirs '
                      'with their sfu_watch heartbeat).', (30.0, 86400.0)),
}

# streams.<name>.<field>: (default, description, range)
STREAM_PARAMETERS = {
    'topic': (None, 'Image topic of this stream (relative names follow the node namespace and '
              'remapping); default <stream name>/image_raw.', None),
    'type': ('raw', 'raw (sensor_msgs/Image), compressed (sensor_msgs/CompressedImage, JPEG '
             'passed through untouched), h264 (CompressedImage with format h264: passed '
             'through to WebRTC undecoded) or compressed_video (foxglove_msgs/CompressedVideo '
             'with format h264, likewise).', None),
    'quality': (0, 'JPEG quality of this stream (0: default_quality).', (0, 100)),
    'depth_min': (0.0, 'Depth drawn at the near end of the colour map, metres.', (0.0, 1000.0)),
    'depth_max': (5.0, 'Depth drawn at the far end of the colour map, metres.', (0.0, 1000.0)),
    'colormap': ('turbo', 'OpenCV colour map for depth images (turbo, jet, viridis, ...).',
                 None),
}


# Parameters a running bridge_node takes (ros2 param set / load); all others need a restart.
RUNTIME_PARAMETERS = frozenset({
    'max_linear', 'max_angular', 'max_linear_accel', 'max_angular_accel', 'command_timeout',
    'republish_rate', 'allow_takeover', 'default_speed',            # teleop limits and policy
    'default_quality', 'max_variants', 'webrtc_bitrate',            # encoding
    'max_viewers', 'subscribe_on_demand', 'unsubscribe_delay', 'allow_topic_streams',
    'status_period', 'cmd_vel_frame_id',
})
RUNTIME_STREAM_FIELDS = frozenset({'quality', 'depth_min', 'depth_max', 'colormap'})
RUNTIME_NOTE = 'Changeable at run time (ros2 param set).'
RESTART_NOTE = 'Read-only: read once at start, a change needs a restart.'


def described(description: str, runtime: bool) -> str:
    """Say in a description whether a change needs a restart (``ros2 param describe``)."""
    return f'{description} {RUNTIME_NOTE if runtime else RESTART_NOTE}'


def default_topic(stream_name: str) -> str:
    """Relative image topic of a stream with no topic parameter: camera -> camera/image_raw."""
    return f'{stream_name}/image_raw'


def unknown_parameters(node) -> list:
    """
    Names in the node's parameter overrides (params files, ``-p``) that it never declared.

    rclpy ignores those silently, so a misspelt or outdated key (``address:`` for ``host:``)
    would change nothing without a word; nodes call this after declaring and log each name.
    """
    overrides = getattr(node, '_parameter_overrides', {})  # rclpy keeps no public accessor
    return sorted(name for name in overrides if not node.has_parameter(name))


def _descriptor(description, limits, value, runtime=False):
    # Read once at startup unless `runtime`: read-only, so `ros2 param set` cannot pretend to
    # change them (rclpy refuses "Trying to set a read-only parameter").
    descriptor = ParameterDescriptor(description=described(description, runtime),
                                     read_only=not runtime)
    if limits is not None:
        low, high = limits
        if isinstance(value, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                                  to_value=float(high))]
        else:
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
    return descriptor


# Secrets that once were parameters: name -> why it is refused (any DDS node reads parameters).
REMOVED_SECRETS = {
    'token': "the 'token' parameter was removed (any DDS node can read parameters): put the "
             'token in token_file or $VIDEO_BRIDGE_TOKEN',
    'turn_password': 'turn_password is no longer a parameter (any DDS node can read '
                     'parameters): put the password in a file and name it in turn_password_file',
}


def _refuse_removed_token(node):
    """
    Refuse an old secret parameter (``token``, ``turn_password``) instead of ignoring it.

    Ignoring it would run without the secret, or serve it to DDS readers. Declared only for the
    instant it takes to read the override, before the node spins.
    """
    for name, reason in REMOVED_SECRETS.items():
        node.declare_parameter(name, '', ParameterDescriptor(dynamic_typing=True))
        value = node.get_parameter(name).value
        node.undeclare_parameter(name)
        if value not in ('', None):
            raise ValueError(reason)


def check_codec_parameters(webrtc_codecs, sfu_codec: str, h264_encoder: str) -> tuple:
    """
    Check ``webrtc_codecs``, ``sfu_codec`` and ``h264_encoder`` against the codec registry.

    Returns them normalised (codec names lower-cased, blanks dropped); ValueError names the
    parameter and what it accepts. One place, so the parameters accept exactly the registry's
    names: a codec added there is accepted here with no change.
    """
    allowed = codec_registry.WEBRTC_CODECS
    webrtc_codecs = codec_registry.check_names('webrtc_codecs', webrtc_codecs, allowed)
    sfu_codec = (codec_registry.check_names('sfu_codec', [sfu_codec], allowed) or [''])[0]
    if h264_encoder not in H264_ENCODERS:
        raise ValueError(f'h264_encoder: unknown H.264 encoder {h264_encoder!r} (one of: '
                         f'{", ".join(H264_ENCODERS)})')
    return webrtc_codecs, sfu_codec, h264_encoder


class _Values:
    """Attribute access to declared parameter values."""

    def __init__(self, node, names, prefix=''):
        for name in names:
            setattr(self, name, node.get_parameter(prefix + name).value)


class BridgeParameters(_Values):
    """All bridge parameters of a node, declared."""

    def __init__(self, node):
        _refuse_removed_token(node)
        for name, (default, description, limits) in BRIDGE_PARAMETERS.items():
            node.declare_parameter(name, default, _descriptor(description, limits, default,
                                                              name in RUNTIME_PARAMETERS))
        super().__init__(node, BRIDGE_PARAMETERS)
        self._node = node
        for name in ('allowed_origins', 'allowed_hosts', 'cors_origins', 'trusted_proxies'):
            setattr(self, name, [value.strip() for value in getattr(self, name)
                                 if value.strip() and value.strip() != '__same_origin__'])
        self.stream_names = [name for name in self.stream_names if name]
        self._check_codecs()
        for name in self.stream_names:
            self.stream(name)  # declare now so a typo in the YAML fails at startup

    def _check_codecs(self):
        """Refuse codec and encoder names the registry does not know (a typo fails at start)."""
        self.webrtc_codecs, self.sfu_codec, self.h264_encoder = check_codec_parameters(
            self.webrtc_codecs, self.sfu_codec, self.h264_encoder)

    def stream_defaults(self) -> SimpleNamespace:
        """Stream settings for a stream with no parameters of its own (an ad-hoc topic)."""
        return SimpleNamespace(**{field: default for field, (default, _, _)
                                  in STREAM_PARAMETERS.items()})

    def stream(self, name: str) -> _Values:
        """Declare (once) and read the ``streams.<name>.*`` parameters."""
        prefix = f'streams.{name}.'
        node = self._node
        for field, (default, description, limits) in STREAM_PARAMETERS.items():
            if not node.has_parameter(prefix + field):
                if default is None:
                    default = default_topic(name)
                node.declare_parameter(prefix + field, default,
                                       _descriptor(description, limits, default,
                                                   field in RUNTIME_STREAM_FIELDS))
        values = _Values(node, STREAM_PARAMETERS, prefix)
        if values.type not in ('raw', 'compressed', 'h264', 'compressed_video'):
            raise ValueError(f'{prefix}type must be raw, compressed, h264 or compressed_video, '
                             f'not {values.type!r}')
        return values


def declare(node) -> BridgeParameters:
    """Declare every bridge parameter on ``node`` and return their values."""
    return BridgeParameters(node)
