"""
Control messages (JSON text on ``/control`` and the data channel): teleop requests in, replies out.

The teleop core consumes the typed requests and produces the typed replies; the WebRTC
signalling messages that share the socket are in :mod:`.signalling`.
"""

from dataclasses import dataclass
import json
import math
from typing import Any, Optional, Union

from video_bridge.core.protocol.errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 2  # 2: WebRTC signalling on /control (webrtc_* messages); v1 unchanged

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
