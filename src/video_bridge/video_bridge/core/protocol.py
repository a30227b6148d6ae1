"""
The wire format between the bridge and its clients, in one place.

Mirrored by ``web/js/protocol.js`` and documented in ``docs/protocol.md``; the three change
together. Pure: no sockets, no ROS. The server feeds it bytes and strings and gets typed values
back; the teleop core consumes the typed control messages and produces the typed replies.
"""

from dataclasses import dataclass, field
import enum
import json
import math
import struct
from typing import Any, Optional, Union
from urllib.parse import parse_qs, quote, unquote

PROTOCOL_VERSION = 2  # 2: WebRTC signalling on /control (webrtc_* messages); v1 unchanged

# --- routes -----------------------------------------------------------------------------------

VIDEO_PREFIX = '/video/'
MJPEG_PREFIX = '/mjpeg/'
SNAPSHOT_PREFIX = '/snapshot/'
CONTROL_PATH = '/control'
STREAMS_PATH = '/api/streams'

MAX_STREAM_NAME = 128
MAX_DIMENSION = 8192
MAX_FPS = 120


class ProtocolError(ValueError):
    """A client sent something the protocol does not allow; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Variant:
    """
    How a viewer wants a stream: size bounds (0 = source size) and JPEG quality (0 = default).

    Each distinct variant of a stream is encoded once per frame and shared by its viewers.
    """

    max_width: int = 0
    max_height: int = 0
    quality: int = 0
    codec: str = ''   # '' = JPEG (websocket, MJPEG, snapshot); 'h264' or 'vp8' (WebRTC)
    layer: int = 0    # video only: 0 = full bitrate, 1 = half, 2 = quarter ...

    def resolved(self, default_quality: int) -> 'Variant':
        """Return the variant with the stream's default quality filled in."""
        if self.quality or self.codec:
            return self
        return Variant(self.max_width, self.max_height, default_quality)


@dataclass(frozen=True)
class Target:
    """A parsed request target: which endpoint, which stream, and the query."""

    kind: str  # 'video', 'mjpeg', 'snapshot', 'control', 'streams' or 'static'
    stream: str = ''
    path: str = '/'
    query: dict = field(default_factory=dict)


def quote_stream(name: str) -> str:
    """Escape a stream name for a URL path segment (topic-named streams contain '/')."""
    return quote(name, safe='')


def parse_target(target: str) -> Target:
    """
    Split a request target into endpoint kind, stream name and single-valued query.

    A stream is one path segment: a configured name (``front``) or an image topic with its
    slashes escaped (``%2Fcamera%2Fimage_raw``).
    """
    # Not urlsplit: a target like '//[' is a path here, not a network location.
    raw_path, _, raw_query = target.partition('#')[0].partition('?')
    raw_path = raw_path or '/'
    path = unquote(raw_path)
    try:
        query = {k: v[-1] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_TARGET, 'malformed query string') from None
    for prefix, kind in ((VIDEO_PREFIX, 'video'), (MJPEG_PREFIX, 'mjpeg'),
                         (SNAPSHOT_PREFIX, 'snapshot')):
        if raw_path.startswith(prefix):
            segment = raw_path[len(prefix):]
            stream = unquote(segment)
            if not segment or '/' in segment or len(stream) > MAX_STREAM_NAME \
                    or not stream.isprintable():
                raise ProtocolError(ErrorCode.BAD_STREAM, f'invalid stream name in {path!r}')
            return Target(kind, stream, path, query)
    if path == CONTROL_PATH:
        return Target('control', '', path, query)
    if path == STREAMS_PATH:
        return Target('streams', '', path, query)
    return Target('static', '', path, query)


def _query_int(query: dict, name: str, low: int, high: int) -> int:
    raw = query.get(name, '')
    if raw == '':
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise ProtocolError(ErrorCode.BAD_VARIANT, f'{name} must be an integer, got {raw[:20]!r}')
    value = int(raw)
    if not low <= value <= high:
        raise ProtocolError(ErrorCode.BAD_VARIANT,
                            f'{name} must be within {low}..{high}, got {value}')
    return value


def parse_variant(query: dict) -> Variant:
    """Read ``width``, ``height`` and ``quality`` (web_video_server's names) from a query."""
    return Variant(
        max_width=_query_int(query, 'width', 0, MAX_DIMENSION),
        max_height=_query_int(query, 'height', 0, MAX_DIMENSION),
        quality=_query_int(query, 'quality', 1, 100),
    )


def parse_fps(query: dict) -> float:
    """Read ``fps``, the most frames per second this client wants (0 or absent: every frame)."""
    raw = query.get('fps', '')
    if raw == '':
        return 0.0
    try:
        value = float(raw) if raw.isascii() and len(raw) <= 16 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_FPS):
        raise ProtocolError(ErrorCode.BAD_VARIANT, f'fps must be a number within 0..{MAX_FPS}, '
                            f'got {raw[:20]!r}')
    return value


def presented_token(query: dict, headers) -> Optional[str]:
    """Token a client presented: ``Authorization: Bearer`` header, else ``token`` query value."""
    auth = headers.get('Authorization') if headers is not None else None
    if auth and auth.lower().startswith('bearer ') and auth[7:].strip():
        return auth[7:].strip()
    token = query.get('token')
    return token if token else None


# --- close codes (websocket) --------------------------------------------------------------

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003  # something was sent on a receive-only video socket
CLOSE_POLICY = 1008            # the client did not keep up (send deadline, unread data)
CLOSE_TOO_BIG = 1009           # a message over max_message_size
CLOSE_BAD_REQUEST = 4400       # bad variant parameters
CLOSE_UNAUTHORIZED = 4401      # token missing or wrong
CLOSE_UNKNOWN_STREAM = 4404
CLOSE_RATE_LIMITED = 4429      # kept exceeding the per-connection command rate
CLOSE_CAPACITY = 4503          # viewer or variant limit reached


class ErrorCode(enum.StrEnum):
    """
    Every machine-readable ``code`` a client can get, in one list.

    They reach clients in ``error`` and ``webrtc_error`` replies, as websocket close reasons'
    meanings and as HTTP statuses; the tables below map them per transport, and
    docs/protocol.md lists them all (a test keeps the three in step). A StrEnum: each member
    is its string, on the wire and in comparisons.
    """

    # the message itself
    BAD_JSON = 'bad_json'
    BAD_MESSAGE = 'bad_message'
    BAD_NUMBER = 'bad_number'
    TOO_LARGE = 'too_large'
    UNKNOWN_TYPE = 'unknown_type'
    UNKNOWN_COMMAND = 'unknown_command'
    # the URL and the frame header
    BAD_TARGET = 'bad_target'
    BAD_STREAM = 'bad_stream'
    BAD_VARIANT = 'bad_variant'
    BAD_FRAME = 'bad_frame'
    UNKNOWN_STREAM = 'unknown_stream'
    # rights, limits and state
    UNAUTHORIZED = 'unauthorized'
    CAPACITY = 'capacity'
    RATE_LIMITED = 'rate_limited'
    NOT_CONNECTED = 'not_connected'
    NOT_DRIVER = 'not_driver'
    DRIVER_BUSY = 'driver_busy'
    ESTOP_ENGAGED = 'estop_engaged'
    SHUTTING_DOWN = 'shutting_down'
    # WebRTC signalling (webrtc_error)
    WEBRTC_UNAVAILABLE = 'webrtc_unavailable'
    NO_COMMON_CODEC = 'no_common_codec'
    SUPERSEDED = 'superseded'
    BAD_STATE = 'bad_state'
    BAD_ANSWER = 'bad_answer'
    TOO_MANY_CANDIDATES = 'too_many_candidates'
    CANDIDATE_REFUSED = 'candidate_refused'
    CONNECT_TIMEOUT = 'connect_timeout'
    WEBRTC_FAILED = 'webrtc_failed'
    BAD_CHANNEL_MESSAGE = 'bad_channel_message'


# One table per transport: how a refusal of a request reads there (others: 4400 / 400).
VIDEO_CLOSE_CODES = {ErrorCode.UNAUTHORIZED: CLOSE_UNAUTHORIZED,
                     ErrorCode.UNKNOWN_STREAM: CLOSE_UNKNOWN_STREAM,
                     ErrorCode.CAPACITY: CLOSE_CAPACITY}
HTTP_STATUSES = {ErrorCode.UNAUTHORIZED: 401, ErrorCode.UNKNOWN_STREAM: 404,
                 ErrorCode.CAPACITY: 503}

# --- video frames (binary websocket messages) ------------------------------------------------

FRAME_MAGIC = b'VBF1'
# magic, header_length, flags, seq, width, height, stamp_sec, stamp_nanosec, received_time
FRAME_HEADER = struct.Struct('<4sHHIHHiId')
FLAG_PASSTHROUGH = 1  # JPEG bytes exactly as the source published them
FLAG_SCALED = 2       # downscaled to the viewer's width/height bounds
FLAG_COLORMAPPED = 4  # depth or 16-bit data drawn through a colour map


@dataclass(frozen=True)
class FrameHeader:
    """Metadata sent ahead of each JPEG on a video socket."""

    seq: int
    width: int
    height: int
    stamp_sec: int
    stamp_nanosec: int
    received_time: float  # bridge wall clock (s since the epoch) when the frame arrived
    flags: int = 0

    @property
    def stamp(self) -> float:
        """Source ``header.stamp`` in seconds."""
        return self.stamp_sec + self.stamp_nanosec * 1e-9


def pack_frame_header(header: FrameHeader) -> bytes:
    """Serialize a frame header; the JPEG follows it in the same message."""
    return FRAME_HEADER.pack(FRAME_MAGIC, FRAME_HEADER.size, header.flags,
                             header.seq & 0xFFFFFFFF, header.width, header.height,
                             header.stamp_sec, header.stamp_nanosec, header.received_time)


def unpack_frame(message: bytes) -> tuple:
    """Split a video message into ``(FrameHeader, jpeg memoryview)``; ProtocolError if bad."""
    if len(message) < FRAME_HEADER.size:
        raise ProtocolError(ErrorCode.BAD_FRAME, f'frame message too short ({len(message)} bytes)')
    (magic, header_length, flags, seq, width, height, sec, nsec,
     received) = FRAME_HEADER.unpack_from(message)
    if magic != FRAME_MAGIC or not FRAME_HEADER.size <= header_length <= len(message):
        raise ProtocolError(ErrorCode.BAD_FRAME, 'not a video_bridge frame')
    header = FrameHeader(seq, width, height, sec, nsec, received, flags)
    return header, memoryview(message)[header_length:]


# --- control messages (JSON text websocket messages) -----------------------------------------

MAX_CONTROL_MESSAGE = 4096
MAX_REQUEST_ID = 64
MAX_SAFE_INTEGER = 2 ** 53 - 1  # the largest integer a browser's JSON numbers hold exactly
MAX_NAME = 64


@dataclass(frozen=True)
class Velocity:
    """A Twist's six components (m/s, rad/s)."""

    linear_x: float = 0.0
    linear_y: float = 0.0
    linear_z: float = 0.0
    angular_x: float = 0.0
    angular_y: float = 0.0
    angular_z: float = 0.0

    def is_zero(self) -> bool:
        """Tell whether every component is zero."""
        return not any((self.linear_x, self.linear_y, self.linear_z,
                        self.angular_x, self.angular_y, self.angular_z))

    def as_dict(self) -> dict:
        """Nested ``{"linear": {...}, "angular": {...}}`` as on the wire."""
        return {'linear': {'x': self.linear_x, 'y': self.linear_y, 'z': self.linear_z},
                'angular': {'x': self.angular_x, 'y': self.angular_y, 'z': self.angular_z}}


ZERO = Velocity()


@dataclass(frozen=True)
class Acquire:
    """Ask for the driver lock; ``takeover`` asks to take it from the current driver."""

    takeover: bool = False


@dataclass(frozen=True)
class Release:
    """Give the driver lock back (the car stops)."""


@dataclass(frozen=True)
class NamedCommand:
    """A text command from the vocabulary, e.g. ``forward``, scaled by ``speed`` in [0, 1]."""

    name: str
    speed: Optional[float] = None


@dataclass(frozen=True)
class VelocityCommand:
    """An explicit velocity."""

    velocity: Velocity


@dataclass(frozen=True)
class EmergencyStop:
    """Engage (latch zero velocity) or release the emergency stop."""

    engage: bool


@dataclass(frozen=True)
class TimeSync:
    """Clock probe: the server answers with its own time; ``t0`` is echoed untouched."""

    t0: float


ControlMessage = Union[Acquire, Release, NamedCommand, VelocityCommand, EmergencyStop, TimeSync]
RequestId = Union[str, int, float, None]


def _reject_constant(name: str) -> Any:
    raise ProtocolError(ErrorCode.BAD_NUMBER, f'{name} is not a number this protocol accepts')


def _number(obj: dict, key: str, default: Optional[float] = None) -> Optional[float]:
    if key not in obj:
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f'{key!r} must be a number')
    try:
        value = float(value)
    except OverflowError:  # a JSON integer too large for a float
        raise ProtocolError(ErrorCode.BAD_NUMBER, f'{key!r} is out of range') from None
    if not math.isfinite(value):
        raise ProtocolError(ErrorCode.BAD_NUMBER, f'{key!r} must be finite')
    return value


def _vector(obj: dict, key: str) -> tuple:
    part = obj.get(key, {})
    if not isinstance(part, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f'{key!r} must be an object with x, y, z')
    unknown = set(part) - {'x', 'y', 'z'}
    if unknown:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f'{key!r} has unknown fields {sorted(unknown)}')
    return tuple(_number(part, axis, 0.0) for axis in 'xyz')


def _boolean(obj: dict, key: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f'{key!r} must be true or false')
    return value


def _request_id(obj: dict) -> RequestId:
    value = obj.get('id')
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'id' must be a string or a number")
    if isinstance(value, str) and len(value) > MAX_REQUEST_ID:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'id' longer than {MAX_REQUEST_ID} characters")
    if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            "'id' must be an integer JavaScript can hold exactly")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(ErrorCode.BAD_NUMBER, "'id' must be finite")
    return value


def decode_control(data: Union[str, bytes], max_size: int = MAX_CONTROL_MESSAGE) -> tuple:
    """
    Parse one control message into ``(request_id, ControlMessage)``.

    Raises ProtocolError with a code and a message fit to send back; ``request_id`` is
    attached to the error as ``error.request_id`` when it could be read.
    """
    return decode_control_object(parse_control_object(data, max_size))


def parse_control_object(data: Union[str, bytes], max_size: int = MAX_CONTROL_MESSAGE) -> dict:
    """First step of :func:`decode_control`: the JSON object, so a router can read ``type``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, 'control messages are JSON text, not binary')
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f'control message over {max_size} characters')
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f'not valid JSON: {exc}') from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, 'a control message is a JSON object')
    return obj


def decode_control_object(obj: dict) -> tuple:
    """Second step of :func:`decode_control`: ``(request_id, ControlMessage)`` from the object."""
    request_id = _request_id(obj)
    try:
        return request_id, _control_body(obj)
    except ProtocolError as exc:
        exc.request_id = request_id
        raise


def _control_body(obj: dict) -> ControlMessage:
    kind = obj.get('type')
    if kind == 'command':
        name = obj.get('name')
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'name' must be a non-empty string")
        speed = _number(obj, 'speed')
        if speed is not None and not 0.0 <= speed <= 1.0:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'speed' must be within 0..1")
        return NamedCommand(name, speed)
    if kind == 'velocity':
        unknown = set(obj) - {'type', 'id', 'linear', 'angular'}
        if unknown:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f'unknown fields {sorted(unknown)}')
        lx, ly, lz = _vector(obj, 'linear')
        ax, ay, az = _vector(obj, 'angular')
        return VelocityCommand(Velocity(lx, ly, lz, ax, ay, az))
    if kind == 'acquire':
        return Acquire(_boolean(obj, 'takeover', False))
    if kind == 'release':
        return Release()
    if kind == 'estop':
        if 'engage' not in obj:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'engage' (true or false) is required")
        return EmergencyStop(_boolean(obj, 'engage', True))
    if kind == 'time':
        return TimeSync(_number(obj, 't0', 0.0))
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'type' must be a string")
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f'unknown message type {kind[:MAX_NAME]!r}')


# --- WebRTC signalling (version 2; JSON objects on /control, see docs/protocol.md) -------------

WEBRTC_PREFIX = 'webrtc_'
WEBRTC_REQUESTS = frozenset({'webrtc_config', 'webrtc_start', 'webrtc_answer', 'webrtc_ice',
                             'webrtc_stop'})            # client -> bridge
WEBRTC_REPLIES = frozenset({'webrtc_config', 'webrtc_offer', 'webrtc_error',
                            'webrtc_stopped'})          # bridge -> client
DATA_CHANNEL_LABEL = 'control'   # created by the bridge: unordered, no retransmits
DATA_CHANNEL_COMMANDS = frozenset({'command', 'velocity', 'acquire', 'release', 'estop'})


def is_signalling(obj) -> bool:
    """Tell whether a decoded control message is WebRTC signalling (``type`` webrtc_*)."""
    return isinstance(obj, dict) and isinstance(obj.get('type'), str) and \
        obj['type'].startswith(WEBRTC_PREFIX)


@dataclass(frozen=True)
class Hello:
    """First message on a control socket: who you are and what the bridge allows."""

    client_id: str
    can_drive: bool
    token_required: bool
    commands: tuple
    max_linear: float
    max_angular: float
    command_timeout: float
    holonomic: bool = False
    allow_takeover: bool = False


@dataclass(frozen=True)
class Ack:
    """A command was accepted; ``applied`` is the velocity after limits."""

    request_id: RequestId
    applied: Optional[Velocity] = None
    clamped: bool = False
    message: str = ''


@dataclass(frozen=True)
class ErrorReply:
    """A message was refused; nothing was published because of it."""

    request_id: RequestId
    code: str
    message: str


@dataclass(frozen=True)
class ControlState:
    """Driver lock, e-stop and current velocity, pushed to every control client on change."""

    driver: Optional[str]
    estop: bool
    velocity: Velocity


@dataclass(frozen=True)
class TimeReply:
    """Answer to TimeSync: ``server_time`` is the bridge wall clock in seconds."""

    t0: float
    server_time: float
    request_id: RequestId = None


def encode_control(message: Any, recipient: Optional[str] = None) -> str:
    """Serialize an outgoing control message as compact JSON text."""
    if isinstance(message, Hello):
        obj = {'type': 'hello', 'protocol': PROTOCOL_VERSION, 'client_id': message.client_id,
               'can_drive': message.can_drive, 'token_required': message.token_required,
               'commands': list(message.commands),
               'limits': {'linear': message.max_linear, 'angular': message.max_angular},
               'command_timeout': message.command_timeout, 'holonomic': message.holonomic,
               'allow_takeover': message.allow_takeover}
    elif isinstance(message, Ack):
        obj = {'type': 'ack', 'id': message.request_id, 'clamped': message.clamped,
               'applied': message.applied.as_dict() if message.applied else None}
        if message.message:
            obj['message'] = message.message
    elif isinstance(message, ErrorReply):
        obj = {'type': 'error', 'id': message.request_id, 'code': message.code,
               'message': message.message}
    elif isinstance(message, ControlState):
        obj = {'type': 'state', 'driver': message.driver,
               'you_drive': recipient is not None and message.driver == recipient,
               'estop': message.estop, 'velocity': message.velocity.as_dict()}
    elif isinstance(message, TimeReply):
        obj = {'type': 'time', 'id': message.request_id, 't0': message.t0,
               'server_time': message.server_time}
    else:
        raise TypeError(f'not an outgoing control message: {message!r}')
    return json.dumps(obj, separators=(',', ':'), allow_nan=False)
