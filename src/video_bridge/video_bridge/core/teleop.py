"""
The teleop safety core: who may drive, what reaches cmd_vel, and when the car stops.

Pure: no rclpy, no asyncio and no clock reads; the server passes decoded control messages
and a monotonic ``now`` (seconds) and carries out the Effects it gets back. Everything that
decides whether the car moves lives here, so it can be tested exhaustively with a fake clock.

The rules, in short:

* only the client holding the driver lock moves the car, and only with a valid token;
* every published velocity is finite and within the configured per-axis limits;
* zero is published at once when the driver releases, disconnects, is taken over, goes quiet
  for ``command_timeout`` (deadman), on emergency stop and on shutdown;
* the acceleration limit only slows increases of speed: stopping is never delayed;
* anybody connected may engage the emergency stop; only a client that may drive (or the ROS
  service) may release it, and the car stays still until the driver commands again; an engage
  while engaged publishes nothing new.
"""

from dataclasses import dataclass, field
import math
import re
import time
from types import MappingProxyType
from typing import Callable, Mapping, Optional

from video_bridge.core.protocol import (
    Ack, Acquire, ControlState, EmergencyStop, ErrorCode, ErrorReply, Hello, MAX_NAME,
    NamedCommand, Release, TimeReply, TimeSync, Velocity, VelocityCommand, ZERO)
import yaml

NAME_PATTERN = re.compile(r'[A-Za-z0-9_-]{1,64}')
VOCABULARY_FIELDS = ('linear_x', 'angular_z', 'linear_y')
REQUIRED_FIELDS = ('linear_x', 'angular_z')
MAX_RAMP_STEP = 0.1  # s; the acceleration ramp advances at least this often, whatever the rate
# TeleopConfig fields a running bridge may change (update_limits logs each change).
LIMIT_FIELDS = ('max_linear', 'max_angular', 'max_linear_accel', 'max_angular_accel',
                'command_timeout', 'republish_rate', 'holonomic', 'allow_takeover',
                'default_speed')
# A deadline within this of ``now`` counts as reached, so float noise in ``last + period``
# cannot make a timer that fires exactly at next_deadline() find nothing to do.
TIME_TOLERANCE = 1e-6  # s


def _is_finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


# --- vocabulary ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TextCommand:
    """One vocabulary entry: the velocity at full speed (speed scale 1.0)."""

    linear_x: float   # m/s
    angular_z: float  # rad/s
    linear_y: float = 0.0  # m/s, only used on holonomic bases

    def __post_init__(self):
        """Refuse anything but finite numbers, so a bad entry can never reach cmd_vel."""
        for name in VOCABULARY_FIELDS:
            value = getattr(self, name)
            if not _is_finite_number(value):
                raise ValueError(f'{name} must be a finite number, got {value!r}')
            object.__setattr__(self, name, float(value))

    def is_zero(self) -> bool:
        """Tell whether the entry does not move the car."""
        return not any((self.linear_x, self.angular_z, self.linear_y))

    def scaled(self, speed: float) -> Velocity:
        """Return the entry's velocity at ``speed`` times full speed."""
        return Velocity(linear_x=self.linear_x * speed, linear_y=self.linear_y * speed,
                        angular_z=self.angular_z * speed)


DEFAULT_VOCABULARY = MappingProxyType({
    'forward': TextCommand(0.5, 0.0),
    'back': TextCommand(-0.5, 0.0),
    'left': TextCommand(0.0, 1.0),
    'right': TextCommand(0.0, -1.0),
    'forward_left': TextCommand(0.5, 0.5),
    'forward_right': TextCommand(0.5, -0.5),
    'back_left': TextCommand(-0.5, -0.5),   # car convention: reversing towards the left
    'back_right': TextCommand(-0.5, 0.5),
    'stop': TextCommand(0.0, 0.0),
})


def _check_vocabulary(vocabulary: Mapping, source: str):
    """Raise ValueError unless names are valid, entries are TextCommands and stop is zero."""
    if not isinstance(vocabulary, Mapping) or not vocabulary:
        raise ValueError(f"{source}: 'commands' must be a non-empty mapping of names")
    for name, entry in vocabulary.items():
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError(f'{source}: command name {name!r} must be 1..{MAX_NAME} characters '
                             'of A-Z a-z 0-9 _ -')
        if not isinstance(entry, TextCommand):
            raise ValueError(f'{source}: command {name!r} is not a TextCommand')
    stop = vocabulary.get('stop')
    if stop is None or not stop.is_zero():
        raise ValueError(f"{source}: command 'stop' must exist and be all zero")


def parse_vocabulary(data: dict, source: str = '<config>') -> dict:
    """Build the ``name -> TextCommand`` vocabulary from parsed YAML; ValueError if bad."""
    if not isinstance(data, Mapping) or 'commands' not in data:
        raise ValueError(f"{source}: expected a mapping with a 'commands' key")
    unknown = set(data) - {'commands'}
    if unknown:
        raise ValueError(f'{source}: unknown top-level keys {sorted(map(str, unknown))}; '
                         "only 'commands' is allowed")
    commands = data['commands']
    if not isinstance(commands, Mapping):
        raise ValueError(f"{source}: 'commands' must be a non-empty mapping of names")
    vocabulary = {}
    for name, entry in commands.items():
        where = f'{source}: command {name!r}'
        if not isinstance(entry, Mapping):
            raise ValueError(f'{where} must be a mapping like {{linear_x: 0.5, angular_z: 0.0}}')
        unknown = set(entry) - set(VOCABULARY_FIELDS)
        if unknown:
            raise ValueError(f'{where}: unknown fields {sorted(map(str, unknown))}; '
                             f'allowed: {", ".join(VOCABULARY_FIELDS)}')
        missing = [key for key in REQUIRED_FIELDS if key not in entry]
        if missing:
            raise ValueError(f'{where}: missing {", ".join(missing)}')
        try:
            vocabulary[name] = TextCommand(**entry)
        except ValueError as exc:
            raise ValueError(f'{where}: {exc}') from None
    _check_vocabulary(vocabulary, source)
    return vocabulary


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys, which PyYAML would silently overwrite."""


def _construct_unique_mapping(loader, node, deep=False):
    mapping = loader.construct_mapping(node, deep)
    keys = [loader.construct_object(key, deep) for key, _ in node.value]
    if len(keys) != len(set(keys)):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise yaml.constructor.ConstructorError(
            None, None, f'duplicate key {duplicate!r}', node.start_mark)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _construct_unique_mapping)


def load_vocabulary(path: str) -> dict:
    """Read a vocabulary YAML file (see config/teleop_commands.yaml); ValueError if bad."""
    try:
        with open(path, encoding='utf-8') as stream:
            data = yaml.load(stream, Loader=_StrictLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f'{path}: not valid YAML: {exc}') from None
    return parse_vocabulary(data, path)


# --- configuration and results --------------------------------------------------------------


@dataclass(frozen=True)
class TeleopConfig:
    """Limits and policy of the teleop core; validated so a typo cannot disable a safeguard."""

    max_linear: float = 0.5          # m/s, per axis |linear.x|, |linear.y|
    max_angular: float = 1.0         # rad/s, |angular.z|
    max_linear_accel: float = 0.0    # m/s^2 on increasing speed only; 0 = off
    max_angular_accel: float = 0.0   # rad/s^2, same rule
    command_timeout: float = 0.5     # s, deadman
    republish_rate: float = 10.0     # Hz while a non-zero velocity is held; 0 = off
    holonomic: bool = False          # allow linear.y
    allow_takeover: bool = False
    default_speed: float = 1.0       # NamedCommand scale when its speed is None
    vocabulary: Mapping = field(default_factory=lambda: DEFAULT_VOCABULARY, hash=False)

    def __post_init__(self):
        """Validate every field; ValueError names the first bad one."""
        for name in ('max_linear', 'max_angular', 'command_timeout'):
            value = getattr(self, name)
            if not (_is_finite_number(value) and value > 0):
                raise ValueError(f'{name} must be a positive finite number, got {value!r}')
        for name in ('max_linear_accel', 'max_angular_accel', 'republish_rate'):
            value = getattr(self, name)
            if not (_is_finite_number(value) and value >= 0):
                raise ValueError(f'{name} must be a finite number >= 0, got {value!r}')
        if not (_is_finite_number(self.default_speed) and 0 <= self.default_speed <= 1):
            raise ValueError(f'default_speed must be within 0..1, got {self.default_speed!r}')
        for name in ('holonomic', 'allow_takeover'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'{name} must be true or false, got {getattr(self, name)!r}')
        _check_vocabulary(self.vocabulary, 'vocabulary')
        object.__setattr__(self, 'vocabulary', MappingProxyType(dict(self.vocabulary)))


@dataclass
class Effects:
    """What the adapters must do after one call into the core, in this order."""

    publish: Optional[Velocity] = None  # publish on cmd_vel now (already limited)
    replies: list = field(default_factory=list)  # (client_id, outgoing message) pairs
    state_changed: bool = False  # send the new ControlState to every control client
    events: list = field(default_factory=list)  # control events to log once each
    disconnect: list = field(default_factory=list)  # (client_id, close code, reason)
    # The e-stop changed: latch this on the lock topic (twist_mux ``locks``); None: no change.
    estop: Optional[bool] = None


@dataclass(frozen=True)
class TeleopStatus:
    """Snapshot for the periodic ROS status message."""

    driver_id: Optional[str]
    control_clients: int
    last_command_age: float  # s since the driver's last accepted motion command; -1 if none
    estop: bool
    velocity: Velocity  # last published


@dataclass(frozen=True)
class _Client:
    can_drive: bool
    token_required: bool


def _approach(current: float, target: float, max_increase: float) -> float:
    """Move toward ``target``: a smaller speed at once, a larger one by ``max_increase``."""
    same_direction = current * target > 0
    if same_direction and abs(target) <= abs(current):
        return target
    base = abs(current) if same_direction else 0.0  # reversing passes through zero at once
    return math.copysign(min(abs(target), base + max_increase), target) + 0.0


# --- the core -------------------------------------------------------------------------------


class TeleopCore:
    """Driver lock, limits, deadman, republish, acceleration ramp and e-stop for one bridge."""

    def __init__(self, config: TeleopConfig, wall_clock: Callable[[], float] = time.time):
        """Start idle: nobody drives, e-stop released, nothing published yet."""
        self._wall_clock = wall_clock  # only for TimeReply.server_time
        self._use_config(config)
        self._clients: dict = {}
        self._driver: Optional[str] = None
        self._estop = False
        self._closed = False
        self._published = ZERO  # what cmd_vel last got
        self._target = ZERO  # what the driver asked for, after limits (the ramp's goal)
        self._last_publish: Optional[float] = None
        self._last_command: Optional[float] = None  # driver's last accepted motion command
        self._handlers = {
            Acquire: self._on_acquire, Release: self._on_release,
            NamedCommand: self._on_named, VelocityCommand: self._on_velocity,
            EmergencyStop: self._on_estop, TimeSync: self._on_time,
        }

    def _use_config(self, config: TeleopConfig):
        self.config = config
        rate = config.republish_rate
        self._republish_period = 1.0 / rate if rate > 0 else None
        self._ramp_step = min(self._republish_period or MAX_RAMP_STEP, MAX_RAMP_STEP)

    # --- public API ---

    def update_limits(self, config: TeleopConfig, now: float) -> Effects:
        """
        Take new limits and policy at run time (``ros2 param set``); they hold from now on.

        A velocity above the new limits is brought within them at once (slowing down is never
        ramped, so a lowered ``max_linear`` shows on cmd_vel in this call); a raised limit moves
        nothing by itself: the driver's next command may use it. The deadman counts the new
        ``command_timeout`` from the driver's last command. Clients see the new limits in the
        ``hello`` of their next connection, and in ``clamped`` acks meanwhile.
        """
        if not isinstance(config, TeleopConfig):
            raise TypeError(f'expected a TeleopConfig, got {type(config).__name__}')
        old = self.config
        self._use_config(config)
        effects = Effects()
        changes = [f'{name} {getattr(old, name)!r} -> {getattr(config, name)!r}'
                   for name in LIMIT_FIELDS if getattr(old, name) != getattr(config, name)]
        if changes:
            effects.events.append('teleop limits changed: ' + ', '.join(changes))
        self._target = self._clamp(self._target)[0]
        limited = self._clamp(self._published)[0]
        if limited != self._published:
            self._publish(effects, limited, now)
            effects.events.append(f'velocity brought within the new limits: {limited}')
        return effects

    def connect(self, client_id: str, can_drive: bool, token_required: bool,
                now: float) -> Effects:
        """Register a control client; reply Hello, then the current ControlState."""
        effects = self.disconnect(client_id, now)  # a reused id must not inherit the lock
        self._clients[client_id] = _Client(bool(can_drive), bool(token_required))
        cfg = self.config
        hello = Hello(client_id, bool(can_drive), bool(token_required), tuple(cfg.vocabulary),
                      cfg.max_linear, cfg.max_angular, cfg.command_timeout, cfg.holonomic,
                      cfg.allow_takeover)
        effects.replies += [(client_id, hello), (client_id, self.state())]
        return effects

    def disconnect(self, client_id: str, now: float) -> Effects:
        """Forget a client; if it was driving, stop the car and free the lock."""
        effects = Effects()
        if self._clients.pop(client_id, None) is not None and client_id == self._driver:
            self._drop_driver(effects, now)
            effects.events.append(f'driver {client_id} disconnected, stopped')
        return effects

    def receive(self, client_id: str, request_id, message, now: float) -> Effects:
        """Handle one decoded control message; it always gets exactly one reply."""
        handler = self._handlers.get(type(message))
        if handler is None:
            return self.refuse(client_id, request_id, ErrorCode.UNKNOWN_TYPE,
                               f'not a control message: {type(message).__name__}')
        client = self._clients.get(client_id)
        if client is None:
            if not (isinstance(message, EmergencyStop) and message.engage):
                return self.refuse(client_id, request_id, ErrorCode.NOT_CONNECTED,
                                   f'client {client_id} is not connected')
            client = _Client(False, False)  # stopping is allowed to anyone
        return handler(client_id, client, request_id, message, now)

    def refuse(self, client_id: str, request_id, code: str, message: str) -> Effects:
        """Answer a message with an ErrorReply; nothing is published."""
        return Effects(replies=[(client_id, ErrorReply(request_id, code, message))])

    def set_estop(self, engage: bool, source: str, now: float) -> Effects:
        """Engage (publish zero, latch) or release the e-stop; ``source`` is logged."""
        effects = Effects()
        if engage:
            # The first engage always stops (and is never rate-limited, see net/control.py).
            # While engaged nothing can move the car, so a repeated engage publishes nothing:
            # a flood of engages cannot flood cmd_vel.
            if not self._estop:
                self._stop(effects, now)
                self._estop = True
                effects.state_changed = True
                effects.estop = True
                effects.events.append(f'emergency stop engaged by {source}')
        elif self._estop:
            self._estop = False
            effects.state_changed = True
            effects.estop = False
            effects.events.append(f'emergency stop released by {source}')
        return effects

    def tick(self, now: float) -> Effects:
        """Run the deadman, then republish or advance the ramp when due."""
        effects = Effects()
        if self._moving() and now >= self._deadman_deadline() - TIME_TOLERANCE:
            age = now - self._last_command if self._last_command is not None else math.inf
            driver = self._driver
            self._stop(effects, now)
            effects.events.append(f'deadman: no command from {driver} for {age:.2f} s, stopped')
            return effects
        due = self._next_publish()
        if due is not None and now >= due - TIME_TOLERANCE:
            self._publish(effects, self._ramp(self._target, now), now)
        return effects

    def next_deadline(self) -> Optional[float]:
        """Tell when tick() must next run; None while the car is still."""
        if not self._moving():
            return None
        due = self._next_publish()
        deadman = self._deadman_deadline()
        return deadman if due is None else min(due, deadman)

    def shutdown(self, now: float) -> Effects:
        """Publish zero (always), drop the driver and refuse driving from now on."""
        effects = Effects()
        self._closed = True
        event = 'shutdown: stopped'
        if self._driver is not None:
            event += f', driver {self._driver} released'
            self._drop_driver(effects, now)
        else:
            self._stop(effects, now)
        effects.events.append(event)
        return effects

    def status(self, now: float) -> TeleopStatus:
        """Return the numbers for the periodic ROS status message."""
        age = -1.0 if self._last_command is None else max(now - self._last_command, 0.0)
        return TeleopStatus(self._driver, len(self._clients), age, self._estop, self._published)

    def state(self) -> ControlState:
        """Return the ControlState every control client is shown."""
        return ControlState(self._driver, self._estop, self._published)

    # --- message handlers ---

    def _on_acquire(self, client_id, client, request_id, message, now) -> Effects:
        if self._closed:
            return self.refuse(client_id, request_id, ErrorCode.SHUTTING_DOWN,
                               'the bridge is stopping')
        if not client.can_drive:
            effects = self.refuse(client_id, request_id, ErrorCode.UNAUTHORIZED,
                                  'a valid token is required to drive')
            effects.events.append(f'refused driver lock to client {client_id}: no valid token')
            return effects
        ack = (client_id, Ack(request_id, message='you drive'))
        if self._driver == client_id:
            return Effects(replies=[ack])
        previous = self._driver
        if previous is not None and not (message.takeover and self.config.allow_takeover):
            reason = f'{previous} is driving'
            if message.takeover:
                reason += ' and takeover is not allowed'
            effects = self.refuse(client_id, request_id, ErrorCode.DRIVER_BUSY, reason)
            effects.events.append(f'refused driver lock to client {client_id}: {reason}')
            return effects
        effects = Effects(replies=[ack], state_changed=True)
        if previous is None:
            effects.events.append(f'client {client_id} now drives')
        else:
            self._stop(effects, now)
            effects.events.append(f'client {client_id} took over driving from {previous}, '
                                  'stopped')
        self._driver = client_id
        self._last_command = None
        return effects

    def _on_release(self, client_id, client, request_id, message, now) -> Effects:
        if self._driver != client_id:
            return self.refuse(client_id, request_id, ErrorCode.NOT_DRIVER,
                               self._not_driver_reason())
        effects = Effects(replies=[(client_id, Ack(request_id, ZERO, message='released'))])
        self._drop_driver(effects, now)
        effects.events.append(f'client {client_id} released the driver lock, stopped')
        return effects

    def _on_named(self, client_id, client, request_id, message, now) -> Effects:
        refusal = self._motion_refusal(client_id, client)
        if refusal:
            return self.refuse(client_id, request_id, *refusal)
        entry = self.config.vocabulary.get(message.name) if isinstance(message.name,
                                                                       str) else None
        if entry is None:
            return self.refuse(client_id, request_id, ErrorCode.UNKNOWN_COMMAND,
                               f'unknown command {str(message.name)[:MAX_NAME]!r}; known: '
                               f'{", ".join(self.config.vocabulary)}')
        speed = self.config.default_speed if message.speed is None else message.speed
        if not (_is_finite_number(speed) and 0 <= speed <= 1):
            return self.refuse(client_id, request_id, ErrorCode.BAD_MESSAGE,
                               "'speed' must be within 0..1")
        return self._drive(client_id, request_id, entry.scaled(speed), now)

    def _on_velocity(self, client_id, client, request_id, message, now) -> Effects:
        refusal = self._motion_refusal(client_id, client)
        if refusal:
            return self.refuse(client_id, request_id, *refusal)
        velocity = message.velocity
        if not isinstance(velocity, Velocity) or not all(
                _is_finite_number(value) for value in _components(velocity)):
            return self.refuse(client_id, request_id, ErrorCode.BAD_NUMBER,
                               'velocity components must be finite numbers')
        return self._drive(client_id, request_id, velocity, now)

    def _on_estop(self, client_id, client, request_id, message, now) -> Effects:
        if not message.engage and not client.can_drive:
            effects = self.refuse(client_id, request_id, ErrorCode.UNAUTHORIZED,
                                  'a valid token is required to release the emergency stop')
            effects.events.append(f'refused emergency stop release to client {client_id}: '
                                  'no valid token')
            return effects
        was_engaged = self._estop
        effects = self.set_estop(message.engage, f'client {client_id}', now)
        if message.engage:
            text = 'emergency stop already engaged' if was_engaged else 'emergency stop engaged'
            ack = Ack(request_id, ZERO, message=text)
        else:
            text = 'emergency stop released' if was_engaged else 'emergency stop was not engaged'
            ack = Ack(request_id, message=text)
        effects.replies.append((client_id, ack))
        return effects

    def _on_time(self, client_id, client, request_id, message, now) -> Effects:
        if not _is_finite_number(message.t0):
            return self.refuse(client_id, request_id, ErrorCode.BAD_NUMBER,
                               "'t0' must be finite")
        reply = TimeReply(message.t0, float(self._wall_clock()), request_id)
        return Effects(replies=[(client_id, reply)])

    # --- motion ---

    def _motion_refusal(self, client_id, client) -> Optional[tuple]:
        if self._closed:
            return ErrorCode.SHUTTING_DOWN, 'the bridge is stopping'
        if not client.can_drive:
            return ErrorCode.UNAUTHORIZED, 'a valid token is required to drive'
        if self._driver != client_id:
            return ErrorCode.NOT_DRIVER, self._not_driver_reason()
        if self._estop:
            return ErrorCode.ESTOP_ENGAGED, 'the emergency stop is engaged; release it first'
        return None

    def _not_driver_reason(self) -> str:
        if self._driver is None:
            return 'nobody drives: acquire the driver lock first'
        return f'{self._driver} is driving'

    def _drive(self, client_id, request_id, requested: Velocity, now) -> Effects:
        target, notes = self._clamp(requested)
        clamped = bool(notes)
        velocity = self._ramp(target, now)
        if velocity != target:
            notes.append('ramping up under the acceleration limit')
        self._target = target
        self._last_command = now
        effects = Effects()
        self._publish(effects, velocity, now)
        effects.replies.append(
            (client_id, Ack(request_id, effects.publish, clamped, '; '.join(notes))))
        return effects

    def _clamp(self, requested: Velocity) -> tuple:
        """Limit each axis; return the velocity and a note for each axis that changed."""
        cfg = self.config
        notes = []

        def limit(axis, value, bound):
            result = min(max(value, -bound), bound) + 0.0
            if result != value:
                notes.append(f'{axis} clamped to {result:g}')
            return result

        def force_zero(axis, value, why=''):
            if value != 0:
                notes.append(f'{axis} forced to 0{why}')
            return 0.0

        linear_x = limit('linear.x', requested.linear_x, cfg.max_linear)
        if cfg.holonomic:
            linear_y = limit('linear.y', requested.linear_y, cfg.max_linear)
        else:
            linear_y = force_zero('linear.y', requested.linear_y, ' (base is not holonomic)')
        force_zero('linear.z', requested.linear_z)
        force_zero('angular.x', requested.angular_x)
        force_zero('angular.y', requested.angular_y)
        angular_z = limit('angular.z', requested.angular_z, cfg.max_angular)
        return Velocity(linear_x=linear_x, linear_y=linear_y, angular_z=angular_z), notes

    def _ramp(self, target: Velocity, now: float) -> Velocity:
        """
        Step from the published velocity toward ``target`` within the acceleration limits.

        The time step is capped at one ramp period: after standing still for a minute the
        car must not be allowed a minute's worth of acceleration in one jump.
        """
        cfg = self.config
        if not (cfg.max_linear_accel or cfg.max_angular_accel):
            return target
        if self._last_publish is None:
            dt = self._ramp_step
        else:
            dt = min(max(now - self._last_publish, 0.0), self._ramp_step)
        linear = cfg.max_linear_accel * dt if cfg.max_linear_accel else math.inf
        angular = cfg.max_angular_accel * dt if cfg.max_angular_accel else math.inf
        current = self._published
        return Velocity(linear_x=_approach(current.linear_x, target.linear_x, linear),
                        linear_y=_approach(current.linear_y, target.linear_y, linear),
                        angular_z=_approach(current.angular_z, target.angular_z, angular))

    # --- state helpers ---

    def _moving(self) -> bool:
        return not (self._published.is_zero() and self._target.is_zero())

    def _deadman_deadline(self) -> float:
        last = self._last_command if self._last_command is not None else -math.inf
        return last + self.config.command_timeout

    def _next_publish(self) -> Optional[float]:
        if self._last_publish is None:
            return None
        if self._published != self._target:
            return self._last_publish + self._ramp_step
        if self._republish_period is not None and not self._published.is_zero():
            return self._last_publish + self._republish_period
        return None

    def _stop(self, effects: Effects, now: float):
        self._target = ZERO
        self._publish(effects, ZERO, now)

    def _drop_driver(self, effects: Effects, now: float):
        self._driver = None
        self._last_command = None
        effects.state_changed = True
        self._stop(effects, now)

    def _publish(self, effects: Effects, velocity: Velocity, now: float):
        """Hand ``velocity`` to cmd_vel, through a last gate that only ever lets zero pass."""
        if not velocity.is_zero() and not self._may_move(velocity):
            effects.events.append(f'internal error: refused to publish {velocity}, stopped')
            velocity = ZERO
            self._target = ZERO
        effects.publish = velocity
        if velocity != self._published:
            effects.state_changed = True
        self._published = velocity
        self._last_publish = now

    def _may_move(self, velocity: Velocity) -> bool:
        cfg = self.config
        if self._estop or self._closed or self._driver is None:
            return False
        if not all(_is_finite_number(value) for value in _components(velocity)):
            return False
        return (abs(velocity.linear_x) <= cfg.max_linear
                and abs(velocity.linear_y) <= (cfg.max_linear if cfg.holonomic else 0.0)
                and velocity.linear_z == velocity.angular_x == velocity.angular_y == 0
                and abs(velocity.angular_z) <= cfg.max_angular)


def _components(velocity: Velocity) -> tuple:
    return (velocity.linear_x, velocity.linear_y, velocity.linear_z,
            velocity.angular_x, velocity.angular_y, velocity.angular_z)
