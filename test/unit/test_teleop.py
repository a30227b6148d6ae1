"""
Tests for the teleop safety core (video_bridge.core.teleop) with a fake clock.

Real code only: the real vocabulary file, the real protocol decoder, and a clock that is a
number passed in. A rule-based state machine drives several clients at random and checks the
safety invariants after every step.
"""

import json
import math
import os

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import (
    initialize, invariant, precondition, rule, RuleBasedStateMachine)
import pytest
from video_bridge.core import teleop
from video_bridge.core.protocol import (
    Ack, Acquire, ControlState, decode_control, EmergencyStop, ErrorReply, Hello, NamedCommand,
    ProtocolError, Release, TimeReply, TimeSync, Velocity, VelocityCommand, ZERO)
from video_bridge.core.teleop import (
    Effects, load_vocabulary, parse_vocabulary, TeleopConfig, TeleopCore, TextCommand)

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..'))
VOCABULARY_FILE = os.path.join(REPO, 'config', 'teleop_commands.yaml')
WALL_TIME = 1_700_000_000.25
NAN, INF = float('nan'), float('inf')


def make_core(**overrides) -> TeleopCore:
    """Build a core with the given config fields and a fixed wall clock."""
    return TeleopCore(TeleopConfig(**overrides), wall_clock=lambda: WALL_TIME)


def driving(core: TeleopCore, client_id: str = 'c1', now: float = 0.0) -> TeleopCore:
    """Connect ``client_id`` with a valid token and give it the driver lock."""
    core.connect(client_id, True, True, now)
    assert isinstance(only_reply(core.receive(client_id, 'a', Acquire(), now)), Ack)
    return core


def only_reply(effects: Effects):
    """Return the single reply of ``effects`` (every client message gets exactly one)."""
    assert len(effects.replies) == 1, effects.replies
    return effects.replies[0][1]


def error_code(effects: Effects) -> str:
    """Return the code of the single ErrorReply, checking nothing was published for it."""
    reply = only_reply(effects)
    assert isinstance(reply, ErrorReply), reply
    assert effects.publish is None
    return reply.code


def send(core, velocity, now, client_id='c1', request_id=7) -> Effects:
    """Send a VelocityCommand built from ``Velocity(*velocity)``."""
    return core.receive(client_id, request_id, VelocityCommand(Velocity(*velocity)), now)


def named(core, name, now, speed=None, client_id='c1') -> Effects:
    """Send a NamedCommand."""
    return core.receive(client_id, 3, NamedCommand(name, speed), now)


def forward(x=0.3, z=0.0) -> tuple:
    """Return Velocity arguments for linear.x ``x`` and angular.z ``z``."""
    return (x, 0.0, 0.0, 0.0, 0.0, z)


def tick_through(core: TeleopCore, until: float) -> list:
    """Tick at every deadline up to ``until``, as the server's timer does; return (t, effects)."""
    ticks = []
    deadline = core.next_deadline()
    while deadline is not None and deadline <= until:
        ticks.append((deadline, core.tick(deadline)))
        deadline = core.next_deadline()
    return ticks


# ---------------------------------------------------------------- vocabulary


def test_the_shipped_vocabulary_file_is_the_default_vocabulary():
    """config/teleop_commands.yaml and TeleopConfig's default agree entry by entry."""
    vocabulary = load_vocabulary(VOCABULARY_FILE)
    assert vocabulary == dict(TeleopConfig().vocabulary)
    assert set(vocabulary) == {'forward', 'back', 'left', 'right', 'forward_left',
                               'forward_right', 'back_left', 'back_right', 'stop'}
    assert vocabulary['forward'] == TextCommand(0.5, 0.0)
    assert vocabulary['back'] == TextCommand(-0.5, 0.0)
    assert vocabulary['left'] == TextCommand(0.0, 1.0)
    assert vocabulary['right'] == TextCommand(0.0, -1.0)
    assert vocabulary['stop'] == TextCommand(0.0, 0.0)
    assert vocabulary['forward_left'].angular_z > 0 > vocabulary['forward_right'].angular_z
    # car convention: reversing towards the left turns clockwise
    assert vocabulary['back_left'].angular_z < 0 < vocabulary['back_right'].angular_z


@pytest.mark.parametrize('name', sorted(load_vocabulary(VOCABULARY_FILE)))
def test_each_named_command_publishes_its_yaml_entry(name):
    """A named command at full speed publishes exactly its entry from the YAML file."""
    entry = load_vocabulary(VOCABULARY_FILE)[name]
    core = driving(TeleopCore(TeleopConfig(vocabulary=load_vocabulary(VOCABULARY_FILE))))
    effects = named(core, name, 1.0)
    expected = Velocity(linear_x=entry.linear_x, angular_z=entry.angular_z)
    assert effects.publish == expected
    assert only_reply(effects) == Ack(3, expected, False, '')


def test_speed_scales_a_named_command_and_default_speed_applies_without_one():
    """Velocity = entry * speed, or entry * default_speed when the message has none."""
    core = driving(make_core(default_speed=0.4))
    assert named(core, 'forward_left', 1.0, speed=0.5).publish == Velocity(
        linear_x=0.25, angular_z=0.25)
    assert named(core, 'forward_left', 1.1).publish == Velocity(linear_x=0.2, angular_z=0.2)
    assert named(core, 'forward', 1.2, speed=0.0).publish == ZERO


def test_stop_is_a_vocabulary_entry_that_stops_at_once():
    """'stop' publishes zero immediately, also with an acceleration limit."""
    core = driving(make_core(max_linear_accel=0.1))
    named(core, 'forward', 1.0)
    assert named(core, 'stop', 1.01).publish == ZERO
    assert core.next_deadline() is None


def test_unknown_command_is_refused_listing_the_known_names():
    """An unknown name gets 'unknown_command' with the vocabulary, and nothing moves."""
    core = driving(make_core())
    effects = named(core, 'fly', 1.0)
    assert error_code(effects) == 'unknown_command'
    assert "'fly'" in only_reply(effects).message
    assert 'forward, back, left, right' in only_reply(effects).message


@pytest.mark.parametrize('data, complaint', [
    (None, "'commands' key"),
    ([1, 2], "'commands' key"),
    ({'commands': {'stop': {'linear_x': 0, 'angular_z': 0}}, 'extra': 1}, 'extra'),
    ({'commands': None}, 'non-empty mapping'),
    ({'commands': {}}, 'non-empty mapping'),
    ({'commands': {'go fast': {'linear_x': 1, 'angular_z': 0}}}, "'go fast'"),
    ({'commands': {'x' * 65: {'linear_x': 1, 'angular_z': 0}}}, '1..64'),
    ({'commands': {'': {'linear_x': 1, 'angular_z': 0}}}, '1..64'),
    ({'commands': {7: {'linear_x': 1, 'angular_z': 0}}}, 'command name 7'),
    ({'commands': {'go': [1, 0]}}, "command 'go' must be a mapping"),
    ({'commands': {'go': {'linear_x': 1, 'angular_z': 0, 'linear_z': 1}}}, 'linear_z'),
    ({'commands': {'go': {'linear_x': 1}}}, "command 'go': missing angular_z"),
    ({'commands': {'go': {'linear_x': NAN, 'angular_z': 0}}}, "'go': linear_x must be finite"),
    ({'commands': {'go': {'linear_x': INF, 'angular_z': 0}}}, "'go': linear_x"),
    ({'commands': {'go': {'linear_x': '1e3', 'angular_z': 0}}}, "'go': linear_x"),
    ({'commands': {'go': {'linear_x': True, 'angular_z': 0}}}, "'go': linear_x"),
    ({'commands': {'go': {'linear_x': 1, 'angular_z': 10 ** 400}}}, "'go': angular_z"),
    ({'commands': {'go': {'linear_x': 1, 'angular_z': 0}}}, "'stop' must exist"),
    ({'commands': {'stop': {'linear_x': 0, 'angular_z': 0.1}}}, "'stop' must exist and be"),
])
def test_bad_vocabulary_content_is_refused_naming_source_and_entry(data, complaint):
    """Every malformed vocabulary raises ValueError naming the source and the bad part."""
    with pytest.raises(ValueError) as raised:
        parse_vocabulary(data, 'robot.yaml')
    message = str(raised.value).replace('a finite number', 'finite')
    assert message.startswith('robot.yaml: ')
    assert complaint in message


def test_a_holonomic_entry_keeps_linear_y():
    """linear_y is optional in the file and reaches cmd_vel only on a holonomic base."""
    vocabulary = parse_vocabulary({'commands': {
        'slide': {'linear_x': 0.0, 'angular_z': 0.0, 'linear_y': 0.3},
        'stop': {'linear_x': 0, 'angular_z': 0}}})
    assert vocabulary['slide'] == TextCommand(0.0, 0.0, 0.3)
    core = driving(TeleopCore(TeleopConfig(holonomic=True, vocabulary=vocabulary)))
    assert named(core, 'slide', 1.0).publish == Velocity(linear_y=0.3)
    core = driving(TeleopCore(TeleopConfig(vocabulary=vocabulary)))
    effects = named(core, 'slide', 1.0)
    assert effects.publish == ZERO
    assert only_reply(effects).clamped


@pytest.mark.parametrize('text, complaint', [
    ('commands: [unclosed', 'not valid YAML'),
    ('commands:\n  stop: {linear_x: 0, angular_z: 0}\n  stop: {linear_x: 1, angular_z: 0}\n',
     "duplicate key 'stop'"),
    ('commands:\n  go: {linear_x: .nan, angular_z: 0}\n  stop: {linear_x: 0, angular_z: 0}\n',
     "command 'go': linear_x"),
    ('commands:\n  go: {linear_x: 1e3, angular_z: 0}\n  stop: {linear_x: 0, angular_z: 0}\n',
     "command 'go': linear_x"),
])
def test_a_bad_vocabulary_file_names_the_file(tmp_path, text, complaint):
    """load_vocabulary reports the path, including for YAML syntax and duplicate keys."""
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(ValueError) as raised:
        load_vocabulary(str(path))
    assert str(path) in str(raised.value)
    assert complaint in str(raised.value)


@pytest.mark.parametrize('field, value', [
    ('max_linear', 0.0), ('max_linear', -1.0), ('max_linear', NAN), ('max_linear', INF),
    ('max_angular', 0), ('max_angular', '1'), ('command_timeout', 0.0), ('command_timeout', NAN),
    ('max_linear_accel', -0.1), ('max_angular_accel', INF), ('republish_rate', -1.0),
    ('republish_rate', NAN), ('default_speed', 1.5), ('default_speed', -0.1),
    ('holonomic', 1), ('allow_takeover', 'yes'), ('vocabulary', {}),
    ('vocabulary', {'go': TextCommand(1.0, 0.0)}),
    ('vocabulary', {'stop': TextCommand(0.0, 0.0), 'go': (1.0, 0.0)}),
])
def test_invalid_config_is_refused(field, value):
    """A config that could disable a safeguard fails loudly at start-up."""
    with pytest.raises(ValueError) as raised:
        TeleopConfig(**{field: value})
    assert field in str(raised.value)


def test_text_command_refuses_non_finite_values():
    """A vocabulary entry built in code is checked like one read from a file."""
    with pytest.raises(ValueError):
        TextCommand(NAN, 0.0)
    with pytest.raises(ValueError):
        TextCommand(0.0, 0.0, INF)


# ---------------------------------------------------------------- limits


def test_each_axis_is_clamped_and_the_ack_says_which():
    """Over-limit axes are clamped independently; the ack reports what was published."""
    core = driving(make_core(max_linear=0.5, max_angular=1.0))
    effects = send(core, (2.0, 0.0, 0.0, 0.0, 0.0, -3.0), 1.0, request_id='r1')
    expected = Velocity(linear_x=0.5, angular_z=-1.0)
    assert effects.publish == expected
    ack = only_reply(effects)
    assert ack.request_id == 'r1' and ack.applied == expected and ack.clamped
    assert ack.message == 'linear.x clamped to 0.5; angular.z clamped to -1'


def test_a_velocity_within_limits_is_published_unchanged():
    """No limit hit: published as asked, clamped False, no message."""
    core = driving(make_core())
    effects = send(core, (-0.25, 0.0, 0.0, 0.0, 0.0, 0.75), 1.0)
    assert effects.publish == Velocity(linear_x=-0.25, angular_z=0.75)
    assert only_reply(effects) == Ack(7, effects.publish, False, '')


def test_linear_y_is_forced_to_zero_unless_holonomic():
    """A differential base never gets linear.y; a holonomic one gets it within max_linear."""
    core = driving(make_core())
    effects = send(core, (0.1, 0.2, 0.0, 0.0, 0.0, 0.0), 1.0)
    assert effects.publish == Velocity(linear_x=0.1)
    assert only_reply(effects).clamped
    assert 'linear.y forced to 0' in only_reply(effects).message
    core = driving(make_core(holonomic=True))
    assert send(core, (0.1, 0.2, 0.0, 0.0, 0.0, 0.0), 1.0).publish == Velocity(0.1, 0.2)
    effects = send(core, (0.1, -9.0, 0.0, 0.0, 0.0, 0.0), 1.1)
    assert effects.publish == Velocity(0.1, -0.5)
    assert only_reply(effects).message == 'linear.y clamped to -0.5'


def test_linear_z_angular_x_and_angular_y_are_always_zero():
    """A car cannot fly or roll: the three other axes are forced to 0 and reported."""
    core = driving(make_core(holonomic=True))
    effects = send(core, (0.1, 0.0, 0.3, 0.4, -0.5, 0.2), 1.0)
    assert effects.publish == Velocity(linear_x=0.1, angular_z=0.2)
    ack = only_reply(effects)
    assert ack.clamped
    assert ack.message == 'linear.z forced to 0; angular.x forced to 0; angular.y forced to 0'


def test_a_named_command_over_the_limits_is_clamped():
    """The limits apply to vocabulary entries too."""
    vocabulary = {'zoom': TextCommand(3.0, -5.0), 'stop': TextCommand(0.0, 0.0)}
    core = driving(make_core(max_linear=0.3, max_angular=0.6, vocabulary=vocabulary))
    effects = named(core, 'zoom', 1.0, speed=1.0)
    assert effects.publish == Velocity(linear_x=0.3, angular_z=-0.6)
    assert only_reply(effects).message == 'linear.x clamped to 0.3; angular.z clamped to -0.6'


@pytest.mark.parametrize('text', [
    '{"type":"velocity","id":1,"linear":{"x":NaN}}',
    '{"type":"velocity","id":1,"linear":{"x":Infinity}}',
    '{"type":"velocity","id":1,"angular":{"z":-Infinity}}',
    '{"type":"velocity","id":1,"linear":{"x":1e999}}',
    '{"type":"command","id":1,"name":"forward","speed":NaN}',
    '{"type":"command","id":1,"name":"forward","speed":1e999}',
    '{"type":"time","id":1,"t0":1e999}',
])
def test_non_finite_numbers_never_reach_the_core(text):
    """The decoder rejects NaN/Infinity; the server's refuse() answers and nothing moves."""
    core = driving(make_core())
    send(core, forward(0.2), 1.0)
    with pytest.raises(ProtocolError) as raised:
        decode_control(text)
    assert raised.value.code == 'bad_number'
    effects = core.refuse('c1', getattr(raised.value, 'request_id', None), raised.value.code,
                          raised.value.message)
    assert error_code(effects) == 'bad_number'
    assert core.state().velocity == Velocity(linear_x=0.2)


def test_huge_finite_numbers_are_decoded_and_clamped():
    """1e308 is a valid JSON number; the core clamps it to the limit."""
    core = driving(make_core())
    request_id, message = decode_control(
        '{"type":"velocity","id":"x","linear":{"x":1e308,"y":-1e308},"angular":{"z":-1e308}}')
    effects = core.receive('c1', request_id, message, 1.0)
    assert effects.publish == Velocity(linear_x=0.5, angular_z=-1.0)
    assert only_reply(effects).request_id == 'x'


def test_decoded_messages_drive_the_core_end_to_end():
    """Acquire, command and release decoded from JSON text behave as typed messages do."""
    core = make_core()
    core.connect('c1', True, True, 0.0)
    for text in ('{"type":"acquire","id":1}', '{"type":"command","id":2,"name":"left"}'):
        effects = core.receive('c1', *decode_control(text), 0.5)
    assert effects.publish == Velocity(angular_z=1.0)
    effects = core.receive('c1', *decode_control('{"type":"release","id":3}'), 0.6)
    assert effects.publish == ZERO and only_reply(effects).request_id == 3


def test_the_core_refuses_non_finite_values_on_its_own():
    """Defence in depth: typed messages with NaN/inf built by other code are refused too."""
    core = driving(make_core())
    assert error_code(send(core, (NAN, 0, 0, 0, 0, 0), 1.0)) == 'bad_number'
    assert error_code(send(core, (0, 0, 0, 0, 0, -INF), 1.0)) == 'bad_number'
    assert error_code(send(core, (0, 0, INF, 0, 0, 0), 1.0)) == 'bad_number'
    assert error_code(named(core, 'forward', 1.0, speed=NAN)) == 'bad_message'
    assert error_code(named(core, 'forward', 1.0, speed=2.0)) == 'bad_message'
    assert error_code(core.receive('c1', 1, TimeSync(NAN), 1.0)) == 'bad_number'
    assert error_code(core.receive('c1', 1, 'forward', 1.0)) == 'unknown_type'
    assert core.state().velocity == ZERO


# ---------------------------------------------------------------- deadman


def test_deadman_fires_exactly_at_the_timeout():
    """1 ms before the timeout nothing happens; at the timeout zero is published once."""
    core = driving(make_core(command_timeout=0.5, republish_rate=0.0))
    send(core, forward(), 10.0)
    assert core.next_deadline() == pytest.approx(10.5)
    quiet = core.tick(10.5 - 1e-3)
    assert quiet.publish is None and not quiet.events
    effects = core.tick(10.5)
    assert effects.publish == ZERO
    assert effects.state_changed
    assert effects.events == ['deadman: no command from c1 for 0.50 s, stopped']
    assert core.state() == ControlState('c1', False, ZERO)  # the driver keeps the lock
    assert core.next_deadline() is None
    assert core.tick(11.0) == Effects() and core.tick(60.0) == Effects()


def test_a_command_refreshes_the_deadman():
    """Each accepted motion command restarts the timeout."""
    core = driving(make_core(command_timeout=0.5, republish_rate=0.0))
    send(core, forward(), 10.0)
    send(core, forward(), 10.4)
    assert core.tick(10.5).publish is None
    assert core.next_deadline() == pytest.approx(10.9)
    assert core.tick(10.9).publish == ZERO


def test_refused_commands_do_not_refresh_the_deadman():
    """Only accepted commands from the driver keep the car going."""
    core = driving(make_core(command_timeout=0.5, republish_rate=0.0))
    core.connect('c2', True, True, 10.0)
    send(core, forward(), 10.0)
    send(core, forward(), 10.3, client_id='c2')   # not the driver
    named(core, 'nonsense', 10.4)                 # unknown command
    assert core.tick(10.5).publish == ZERO


def test_after_the_deadman_a_new_command_drives_again():
    """The deadman stops the car but does not take the lock away."""
    core = driving(make_core(republish_rate=0.0))
    send(core, forward(), 1.0)
    core.tick(1.5)
    assert send(core, forward(0.1), 5.0).publish == Velocity(linear_x=0.1)


def test_no_deadman_stop_when_already_stopped():
    """A driver who stopped and went quiet gets no spurious zero or event."""
    core = driving(make_core())
    send(core, forward(), 1.0)
    named(core, 'stop', 1.1)
    assert core.next_deadline() is None
    assert core.tick(5.0) == Effects()


# ---------------------------------------------------------------- republish


def test_republish_cadence_until_the_deadman():
    """A held velocity is republished every 1/rate s; the deadman ends it at the timeout."""
    core = driving(make_core(command_timeout=0.5, republish_rate=10.0))
    send(core, forward(0.3), 0.0)
    assert core.next_deadline() == pytest.approx(0.1)
    assert core.tick(0.05) == Effects()  # early tick: nothing due yet
    ticks = tick_through(core, 2.0)
    times = [round(t, 6) for t, _ in ticks]
    published = [effects.publish for _, effects in ticks]
    assert times == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert published == [Velocity(linear_x=0.3)] * 4 + [ZERO]
    assert not any(effects.state_changed for _, effects in ticks[:4])
    assert core.next_deadline() is None


def test_republish_does_not_extend_the_deadman():
    """However many republishes, the car stops command_timeout after the last command."""
    core = driving(make_core(command_timeout=0.35, republish_rate=50.0))
    send(core, forward(0.3), 0.0)
    send(core, forward(0.3), 0.2)
    ticks = tick_through(core, 5.0)
    moving = [t for t, effects in ticks if effects.publish != ZERO]
    assert len(moving) >= 15
    assert max(moving) < 0.55
    assert ticks[-1][1].publish == ZERO and ticks[-1][0] == pytest.approx(0.55)


def test_republish_off_means_only_the_deadman_deadline():
    """republish_rate 0 publishes once per command; tick only runs for the deadman."""
    core = driving(make_core(republish_rate=0.0, command_timeout=0.5))
    send(core, forward(), 1.0)
    assert core.next_deadline() == pytest.approx(1.5)
    assert [effects.publish for _, effects in tick_through(core, 3.0)] == [ZERO]


# ---------------------------------------------------------------- acceleration


def test_increases_are_ramped_at_the_acceleration_limit():
    """From rest, linear.x grows by accel * dt per step until it reaches the target."""
    core = driving(make_core(max_linear_accel=1.0, republish_rate=10.0, command_timeout=5.0))
    effects = send(core, forward(0.5), 1.0)
    assert effects.publish == Velocity(linear_x=pytest.approx(0.1))
    ack = only_reply(effects)
    assert ack.applied == effects.publish and not ack.clamped
    assert 'acceleration' in ack.message
    ticks = tick_through(core, 1.45)
    values = [effects.publish.linear_x for _, effects in ticks]
    assert values == pytest.approx([0.2, 0.3, 0.4, 0.5])
    # target reached: plain republishing at the same value
    assert tick_through(core, 1.55)[0][1].publish == Velocity(linear_x=0.5)


def test_decreases_and_stops_are_immediate():
    """Slowing down, stopping and the reversal through zero are never delayed."""
    core = driving(make_core(max_linear_accel=0.5, max_angular_accel=0.5,
                             command_timeout=10.0))
    send(core, forward(0.5, 1.0), 0.0)
    tick_through(core, 3.0)
    assert core.state().velocity == Velocity(linear_x=0.5, angular_z=1.0)
    assert send(core, forward(0.2, 0.5), 3.0).publish == Velocity(linear_x=0.2, angular_z=0.5)
    # reversing: through zero at once, then ramp up in the new direction
    assert send(core, forward(-0.5, 0.0), 3.1).publish == Velocity(
        linear_x=pytest.approx(-0.05))
    assert send(core, forward(0.0, 0.0), 3.2).publish == ZERO


def test_angular_acceleration_is_limited_separately():
    """Each limit applies to its own axes; 0 switches a limit off."""
    core = driving(make_core(max_angular_accel=2.0, command_timeout=10.0))
    effects = send(core, forward(0.5, 1.0), 1.0)
    assert effects.publish == Velocity(linear_x=0.5, angular_z=pytest.approx(0.2))


def test_a_long_idle_does_not_buy_a_jump_to_full_speed():
    """The ramp's dt is capped at one step: minutes at rest allow one step, not full speed."""
    core = driving(make_core(max_linear_accel=1.0, republish_rate=10.0), now=0.0)
    send(core, forward(0.0), 0.0)
    assert send(core, forward(0.5), 600.0).publish == Velocity(linear_x=pytest.approx(0.1))


def test_a_flood_of_commands_cannot_bypass_the_ramp():
    """Commands in the same instant add no speed: dt since the last publish is 0."""
    core = driving(make_core(max_linear_accel=1.0, command_timeout=5.0))
    first = send(core, forward(0.5), 1.0).publish
    for _ in range(100):
        assert send(core, forward(0.5), 1.0).publish == first


def test_the_ramp_continues_on_tick_even_without_republishing():
    """republish_rate 0 still advances a ramp (at MAX_RAMP_STEP), then goes quiet."""
    core = driving(make_core(max_linear_accel=2.0, republish_rate=0.0, command_timeout=5.0))
    send(core, forward(0.5), 0.0)
    values = [effects.publish.linear_x for _, effects in tick_through(core, 4.9)]
    assert values == pytest.approx([0.4, 0.5])
    assert core.next_deadline() == pytest.approx(5.0)


def test_the_deadman_stops_a_car_that_is_still_ramping():
    """The deadman does not wait for the ramp."""
    core = driving(make_core(max_linear_accel=0.1, command_timeout=0.5))
    send(core, forward(0.5), 0.0)
    ticks = tick_through(core, 5.0)
    assert ticks[-1][1].publish == ZERO and ticks[-1][0] == pytest.approx(0.5)
    assert all(effects.publish.linear_x < 0.1 for _, effects in ticks)


# ---------------------------------------------------------------- e-stop


def test_any_client_may_engage_the_estop_and_it_latches():
    """A view-only client stops the car; motion is refused until the e-stop is released."""
    core = driving(make_core())
    core.connect('viewer', False, True, 0.0)
    send(core, forward(), 1.0)
    effects = core.receive('viewer', 'e', EmergencyStop(True), 1.1)
    assert effects.publish == ZERO
    assert effects.state_changed
    assert effects.events == ['emergency stop engaged by client viewer']
    assert only_reply(effects) == Ack('e', ZERO, False, 'emergency stop engaged')
    assert core.state() == ControlState('c1', True, ZERO)
    assert error_code(send(core, forward(), 1.2)) == 'estop_engaged'
    assert error_code(named(core, 'forward', 1.2)) == 'estop_engaged'
    assert core.tick(5.0) == Effects() and core.next_deadline() is None


def test_engaging_twice_acks_without_a_second_event():
    """A repeated engage publishes, logs and broadcasts nothing new (the car is already still)."""
    core = driving(make_core())
    core.receive('c1', 1, EmergencyStop(True), 1.0)
    effects = core.receive('c1', 2, EmergencyStop(True), 1.1)
    assert effects.publish is None
    assert not effects.events and not effects.state_changed
    assert only_reply(effects) == Ack(2, ZERO, False, 'emergency stop already engaged')


def test_a_flood_of_engages_publishes_one_zero():
    """20,000 engages: the first stops the car, the rest publish nothing."""
    core = driving(make_core())
    send(core, forward(), 1.0)
    published = [core.receive('c1', i, EmergencyStop(True), 1.0 + i * 1e-5).publish
                 for i in range(20000)]
    assert published[0] == ZERO and published[1:] == [None] * 19999
    assert core.set_estop(True, 'service', 2.0).publish is None


def test_the_first_engage_always_publishes_even_when_still():
    """Nothing moves and nobody drives: the first engage still publishes zero."""
    core = make_core()
    core.connect('viewer', False, True, 0.0)
    assert core.receive('viewer', 1, EmergencyStop(True), 0.1).publish == ZERO
    core.set_estop(False, 'service', 0.2)
    assert core.set_estop(True, 'service', 0.3).publish == ZERO


def test_only_a_client_that_may_drive_releases_the_estop():
    """Release needs can_drive; afterwards the car stays still until a new command."""
    core = driving(make_core())
    core.connect('viewer', False, True, 0.0)
    send(core, forward(), 1.0)
    core.receive('viewer', 1, EmergencyStop(True), 1.1)
    effects = core.receive('viewer', 2, EmergencyStop(False), 1.2)
    assert error_code(effects) == 'unauthorized'
    assert effects.events == ['refused emergency stop release to client viewer: no valid token']
    assert core.state().estop
    effects = core.receive('c1', 3, EmergencyStop(False), 1.3)
    assert effects.publish is None and effects.state_changed
    assert effects.events == ['emergency stop released by client c1']
    assert only_reply(effects) == Ack(3, None, False, 'emergency stop released')
    assert core.next_deadline() is None and core.tick(1.4) == Effects()
    assert core.state() == ControlState('c1', False, ZERO)
    assert send(core, forward(0.2), 1.5).publish == Velocity(linear_x=0.2)


def test_releasing_a_released_estop_is_acked_quietly():
    """Nothing to release: Ack, no event, no broadcast."""
    core = driving(make_core())
    effects = core.receive('c1', 1, EmergencyStop(False), 1.0)
    assert only_reply(effects).message == 'emergency stop was not engaged'
    assert not effects.events and not effects.state_changed


def test_the_service_engages_and_releases_the_estop():
    """set_estop names its source in the event; it needs no client."""
    core = driving(make_core())
    send(core, forward(), 1.0)
    effects = core.set_estop(True, 'service /video_bridge/set_estop', 1.1)
    assert effects.publish == ZERO and effects.state_changed and not effects.replies
    assert effects.events == ['emergency stop engaged by service /video_bridge/set_estop']
    assert core.status(1.1).estop
    effects = core.set_estop(False, 'service', 1.2)
    assert effects.events == ['emergency stop released by service']
    assert effects.publish is None and not core.status(1.2).estop


def test_an_estop_from_an_unknown_connection_still_stops():
    """Stopping is allowed to anyone, even a client the core has not seen connect."""
    core = driving(make_core())
    send(core, forward(), 1.0)
    effects = core.receive('ghost', 1, EmergencyStop(True), 1.1)
    assert effects.publish == ZERO and core.state().estop
    assert error_code(core.receive('ghost', 2, EmergencyStop(False), 1.2)) == 'not_connected'
    assert error_code(core.receive('ghost', 3, Acquire(), 1.2)) == 'not_connected'


# ---------------------------------------------------------------- driver lock


def test_the_first_client_that_may_drive_gets_the_lock():
    """Acquire grants a free lock, broadcasts the state and logs it; a repeat is a no-op ack."""
    core = make_core()
    core.connect('c1', True, True, 0.0)
    effects = core.receive('c1', 1, Acquire(), 0.0)
    assert only_reply(effects) == Ack(1, None, False, 'you drive')
    assert effects.state_changed and effects.publish is None
    assert effects.events == ['client c1 now drives']
    assert core.state().driver == 'c1'
    again = core.receive('c1', 2, Acquire(), 0.1)
    assert isinstance(only_reply(again), Ack) and not again.state_changed and not again.events


def test_a_second_client_is_refused_naming_the_driver():
    """While c1 drives, c2 gets 'driver_busy' saying 'c1 is driving'; c1 keeps driving."""
    core = driving(make_core())
    core.connect('c2', True, True, 0.0)
    send(core, forward(), 1.0)
    effects = core.receive('c2', 5, Acquire(), 1.1)
    assert error_code(effects) == 'driver_busy'
    assert only_reply(effects) == ErrorReply(5, 'driver_busy', 'c1 is driving')
    assert effects.events == ['refused driver lock to client c2: c1 is driving']
    assert core.state() == ControlState('c1', False, Velocity(linear_x=0.3))


def test_takeover_is_refused_unless_allowed():
    """takeover=True is not enough: the config must allow takeovers."""
    core = driving(make_core(allow_takeover=False))
    core.connect('c2', True, True, 0.0)
    effects = core.receive('c2', 5, Acquire(takeover=True), 1.0)
    assert error_code(effects) == 'driver_busy'
    assert 'c1 is driving' in only_reply(effects).message
    assert core.state().driver == 'c1'


def test_takeover_when_allowed_stops_first_and_transfers_the_lock():
    """An allowed takeover publishes zero, hands over the lock and logs both names."""
    core = driving(make_core(allow_takeover=True))
    core.connect('c2', True, True, 0.0)
    send(core, forward(), 1.0)
    assert error_code(core.receive('c2', 4, Acquire(), 1.05)) == 'driver_busy'  # not asked
    effects = core.receive('c2', 5, Acquire(takeover=True), 1.1)
    assert effects.publish == ZERO and effects.state_changed
    assert effects.replies == [('c2', Ack(5, None, False, 'you drive'))]
    assert effects.events == ['client c2 took over driving from c1, stopped']
    assert core.state() == ControlState('c2', False, ZERO)
    assert core.status(1.1).last_command_age == -1.0
    assert error_code(send(core, forward(), 1.2, client_id='c1')) == 'not_driver'
    assert send(core, forward(0.1), 1.2, client_id='c2').publish == Velocity(linear_x=0.1)


def test_a_client_without_a_valid_token_cannot_drive():
    """can_drive False: 'unauthorized' for acquire and for motion, nothing published."""
    core = make_core()
    core.connect('viewer', False, True, 0.0)
    effects = core.receive('viewer', 1, Acquire(), 0.0)
    assert only_reply(effects) == ErrorReply(1, 'unauthorized',
                                             'a valid token is required to drive')
    assert effects.events == ['refused driver lock to client viewer: no valid token']
    assert error_code(send(core, forward(), 0.1, client_id='viewer')) == 'unauthorized'
    assert error_code(named(core, 'forward', 0.1, client_id='viewer')) == 'unauthorized'
    assert core.state().driver is None


def test_motion_from_a_non_driver_is_refused():
    """Only the lock holder moves the car."""
    core = make_core()
    core.connect('c1', True, True, 0.0)
    assert error_code(send(core, forward(), 0.1)) == 'not_driver'
    driving(core, 'c2')
    effects = named(core, 'forward', 0.2)
    assert error_code(effects) == 'not_driver'
    assert only_reply(effects).message == 'c2 is driving'


def test_release_stops_and_frees_the_lock():
    """The driver's release publishes zero at once; a non-driver's release is refused."""
    core = driving(make_core())
    core.connect('c2', True, True, 0.0)
    send(core, forward(), 1.0)
    assert error_code(core.receive('c2', 1, Release(), 1.1)) == 'not_driver'
    effects = core.receive('c1', 2, Release(), 1.2)
    assert effects.publish == ZERO and effects.state_changed
    assert only_reply(effects) == Ack(2, ZERO, False, 'released')
    assert effects.events == ['client c1 released the driver lock, stopped']
    assert core.state() == ControlState(None, False, ZERO)
    assert core.next_deadline() is None
    assert isinstance(only_reply(core.receive('c2', 3, Acquire(), 1.3)), Ack)


def test_the_driver_disconnecting_stops_the_car_at_once():
    """The gap twist_mux leaves open: the browser going away stops the car."""
    core = driving(make_core(command_timeout=5.0))
    send(core, forward(), 1.0)
    effects = core.disconnect('c1', 1.01)
    assert effects.publish == ZERO and effects.state_changed
    assert effects.events == ['driver c1 disconnected, stopped']
    assert core.state() == ControlState(None, False, ZERO)
    assert core.next_deadline() is None


def test_a_viewer_disconnecting_changes_nothing():
    """Viewers come and go without touching cmd_vel."""
    core = driving(make_core())
    core.connect('viewer', False, True, 0.0)
    send(core, forward(), 1.0)
    assert core.disconnect('viewer', 1.1) == Effects()
    assert core.disconnect('never-connected', 1.1) == Effects()
    assert core.state().velocity == Velocity(linear_x=0.3)


def test_a_reused_client_id_does_not_inherit_the_lock():
    """Connecting an id that is already connected first disconnects the old one."""
    core = driving(make_core())
    send(core, forward(), 1.0)
    effects = core.connect('c1', True, True, 1.1)
    assert effects.publish == ZERO
    assert core.state().driver is None
    assert effects.replies[-1] == ('c1', ControlState(None, False, ZERO))


def test_messages_from_unknown_clients_are_refused():
    """The server must connect() a client before it may do anything but stop."""
    core = make_core()
    assert error_code(core.receive('ghost', 1, Acquire(), 0.0)) == 'not_connected'
    assert error_code(core.receive('ghost', 2, NamedCommand('forward'), 0.0)) == 'not_connected'


# ---------------------------------------------------------------- lifecycle and status


def test_connect_says_hello_then_the_state():
    """Hello carries the limits and vocabulary; the ControlState follows it."""
    core = make_core(max_linear=0.4, max_angular=0.8, command_timeout=0.7, holonomic=True,
                     allow_takeover=True)
    effects = core.connect('c9', False, True, 0.0)
    assert effects.replies == [
        ('c9', Hello('c9', False, True, ('forward', 'back', 'left', 'right', 'forward_left',
                                         'forward_right', 'back_left', 'back_right', 'stop'),
                     0.4, 0.8, 0.7, True, True)),
        ('c9', ControlState(None, False, ZERO)),
    ]
    assert effects.publish is None and not effects.state_changed


def test_shutdown_always_publishes_zero_and_refuses_driving_afterwards():
    """Shutdown stops even an idle car, drops the driver and keeps it stopped."""
    core = make_core()
    assert core.shutdown(0.0).publish == ZERO
    core = driving(make_core())
    send(core, forward(), 1.0)
    effects = core.shutdown(1.1)
    assert effects.publish == ZERO and effects.state_changed
    assert effects.events == ['shutdown: stopped, driver c1 released']
    assert core.state() == ControlState(None, False, ZERO)
    assert error_code(core.receive('c1', 1, Acquire(), 1.2)) == 'shutting_down'
    assert error_code(send(core, forward(), 1.2)) == 'shutting_down'
    assert core.receive('c1', 2, EmergencyStop(True), 1.3).publish == ZERO
    assert core.next_deadline() is None


def test_status_reports_driver_clients_command_age_estop_and_velocity():
    """status() gives the TeleopStatus message's numbers."""
    core = make_core()
    assert core.status(0.0) == teleop.TeleopStatus(None, 0, -1.0, False, ZERO)
    driving(core, 'c1', 1.0)
    core.connect('viewer', False, False, 1.0)
    assert core.status(2.0).last_command_age == -1.0
    send(core, forward(0.2), 10.0)
    status = core.status(10.25)
    assert status == teleop.TeleopStatus('c1', 2, pytest.approx(0.25), False,
                                         Velocity(linear_x=0.2))
    core.set_estop(True, 'test', 10.3)
    assert core.status(10.3).estop and core.status(10.3).velocity == ZERO


def test_time_sync_answers_with_the_wall_clock():
    """The reply echoes t0 and reports the injected wall clock, not the monotonic now."""
    core = make_core()
    core.connect('c1', False, False, 0.0)
    effects = core.receive('c1', 1, TimeSync(123.5), 42.0)
    assert effects.replies == [('c1', TimeReply(123.5, WALL_TIME, 1))]
    assert effects.publish is None


def test_refuse_answers_without_publishing():
    """refuse() turns a ProtocolError into an ErrorReply; no other effect."""
    core = driving(make_core())
    assert core.refuse('c1', 'q', 'bad_json', 'not valid JSON') == Effects(
        replies=[('c1', ErrorReply('q', 'bad_json', 'not valid JSON'))])


# ---------------------------------------------------------------- property tests


def within_limits(velocity: Velocity, config: TeleopConfig) -> bool:
    """Check the published-velocity invariant independently of the core's own code."""
    values = (velocity.linear_x, velocity.linear_y, velocity.linear_z,
              velocity.angular_x, velocity.angular_y, velocity.angular_z)
    return (all(math.isfinite(v) for v in values)
            and abs(velocity.linear_x) <= config.max_linear
            and abs(velocity.linear_y) <= (config.max_linear if config.holonomic else 0.0)
            and velocity.linear_z == velocity.angular_x == velocity.angular_y == 0.0
            and abs(velocity.angular_z) <= config.max_angular)


def expected_target(requested: Velocity, config: TeleopConfig) -> Velocity:
    """Clamp ``requested`` the way the rules say, written independently of the core."""
    def clip(value, bound):
        return min(max(value, -bound), bound)
    return Velocity(linear_x=clip(requested.linear_x, config.max_linear),
                    linear_y=clip(requested.linear_y, config.max_linear)
                    if config.holonomic else 0.0,
                    angular_z=clip(requested.angular_z, config.max_angular))


WILD = st.one_of(st.floats(-3, 3), st.floats(), st.sampled_from(
    [0.0, -0.0, 1e308, -1e308, 5e-324, NAN, INF, -INF, 0.5, -1.0]), st.integers(-10, 10))
FINITE = st.one_of(st.floats(-3, 3), st.floats(allow_nan=False, allow_infinity=False))
JSON_NUMBERS = st.one_of(FINITE, st.integers(), st.sampled_from([10 ** 400, -10 ** 400]))
VELOCITIES = st.builds(Velocity, WILD, WILD, WILD, WILD, WILD, WILD)
CONFIGS = st.builds(
    TeleopConfig,
    max_linear=st.floats(0.01, 5), max_angular=st.floats(0.01, 5),
    max_linear_accel=st.one_of(st.just(0.0), st.floats(0.05, 20)),
    max_angular_accel=st.one_of(st.just(0.0), st.floats(0.05, 20)),
    command_timeout=st.floats(0.05, 2), republish_rate=st.sampled_from([0.0, 2.0, 10.0, 50.0]),
    holonomic=st.booleans(), allow_takeover=st.booleans(), default_speed=st.floats(0, 1))


@settings(max_examples=2000, deadline=None, database=None)
@given(config=CONFIGS, velocity=VELOCITIES, now=st.floats(0, 1e6))
def test_any_velocity_command_publishes_within_limits_or_nothing(config, velocity, now):
    """Whatever is asked, what is published is finite and within every limit."""
    core = TeleopCore(config)
    driving(core, 'c1', now)
    effects = core.receive('c1', 1, VelocityCommand(velocity), now)
    reply = only_reply(effects)
    values = (velocity.linear_x, velocity.linear_y, velocity.linear_z,
              velocity.angular_x, velocity.angular_y, velocity.angular_z)
    if all(math.isfinite(v) for v in values):
        assert isinstance(reply, Ack) and reply.applied == effects.publish
        assert within_limits(effects.publish, config)
        if not (config.max_linear_accel or config.max_angular_accel):
            assert effects.publish == expected_target(velocity, config)
            assert reply.clamped == (effects.publish != velocity)
    else:
        assert reply.code == 'bad_number' and effects.publish is None


@settings(max_examples=1500, deadline=None, database=None)
@given(linear=st.dictionaries(st.sampled_from('xyz'), JSON_NUMBERS),
       angular=st.dictionaries(st.sampled_from('xyz'), JSON_NUMBERS),
       holonomic=st.booleans())
def test_any_decodable_velocity_text_publishes_within_limits(linear, angular, holonomic):
    """decode_control + core: JSON numbers of any size end up clamped, never raw."""
    config = TeleopConfig(holonomic=holonomic)
    core = driving(TeleopCore(config))
    text = json.dumps({'type': 'velocity', 'id': 9, 'linear': linear, 'angular': angular})
    try:
        request_id, message = decode_control(text)
    except ProtocolError as exc:  # an integer too large for a float: refused, not raised
        assert exc.code == 'bad_number'
        assert core.refuse('c1', 9, exc.code, exc.message).publish is None
        return
    effects = core.receive('c1', request_id, message, 1.0)
    assert only_reply(effects).request_id == 9
    assert within_limits(effects.publish, config)


def test_an_integer_too_large_for_a_float_is_a_protocol_error():
    """A 400-digit integer must be refused like 1e999, not crash the connection."""
    with pytest.raises(ProtocolError) as raised:
        decode_control('{"type":"velocity","linear":{"x":' + '9' * 400 + '}}')
    assert raised.value.code == 'bad_number'


class TeleopMachine(RuleBasedStateMachine):
    """Several clients doing anything in any order on a monotonic clock; invariants hold."""

    CLIENTS = st.sampled_from(['c0', 'c1', 'c2'])

    @initialize(config=CONFIGS, start=st.floats(0, 1e5))
    def start(self, config, start):
        """Create the core with c0 driving, c1 (may drive) and c2 (view only) connected."""
        self.config = config
        self.core = TeleopCore(config, wall_clock=lambda: WALL_TIME)
        self.now = start
        self.connected = {}     # client id -> can_drive
        self.driver = None
        self.estop = False
        self.closed = False
        self.published = ZERO   # last velocity published
        self.published_at = None
        self.target = ZERO      # the driver's clamped request, zeroed by every stop
        self.last_command = None
        self.request = 0
        for client_id, can_drive in (('c0', True), ('c1', True), ('c2', False)):
            self.connect(client_id, can_drive)
        self.acquire('c0', False)

    # --- checks shared by every call into the core ---

    def apply(self, effects: Effects, must_stop: bool = False) -> Effects:
        """Check one call's effects against the invariants, then update the model."""
        assert not any('internal error' in event for event in effects.events)
        if must_stop:
            assert effects.publish == ZERO
        if effects.publish is not None:
            velocity = effects.publish
            assert within_limits(velocity, self.config), velocity
            self.check_acceleration(velocity)
            if not velocity.is_zero():
                assert self.driver is not None and not self.estop and not self.closed
                assert self.now < self.last_command + self.config.command_timeout
            self.published, self.published_at = velocity, self.now
        return effects

    def check_acceleration(self, velocity: Velocity):
        """Increases of |v| per axis stay within accel * dt (dt capped at one ramp step)."""
        if self.published_at is None:
            dt = teleop.MAX_RAMP_STEP
        else:
            dt = min(self.now - self.published_at, teleop.MAX_RAMP_STEP)
        for axis, accel in (('linear_x', self.config.max_linear_accel),
                            ('linear_y', self.config.max_linear_accel),
                            ('angular_z', self.config.max_angular_accel)):
            old, new = getattr(self.published, axis), getattr(velocity, axis)
            increase = abs(new) - abs(old) if old * new > 0 else abs(new)
            if accel and increase > 0:
                assert increase <= accel * dt + 1e-9, (axis, old, new, dt)

    def receive(self, client_id, message) -> tuple:
        """Send one message; check it got exactly one reply, to its sender, with its id."""
        self.request += 1
        effects = self.core.receive(client_id, self.request, message, self.now)
        assert len(effects.replies) == 1
        recipient, reply = effects.replies[0]
        assert recipient == client_id
        if isinstance(reply, Ack) and isinstance(message, (NamedCommand, VelocityCommand)):
            self.last_command = self.now  # an accepted motion command refreshes the deadman
        self.apply(effects)
        if isinstance(reply, ErrorReply):
            assert reply.request_id == self.request
            assert effects.publish is None
        elif isinstance(reply, Ack):
            assert reply.request_id == self.request
        else:
            assert isinstance(reply, TimeReply) and isinstance(message, TimeSync)
        return effects, reply

    @staticmethod
    def refused(reply, *codes):
        """Check that ``reply`` is an ErrorReply with one of ``codes``."""
        assert isinstance(reply, ErrorReply) and reply.code in codes, (reply, codes)

    def stopped(self):
        """Record in the model that the car was stopped."""
        self.target = ZERO

    def expected_motion_refusal(self, client_id):
        """Return the error code a motion command from ``client_id`` must get, if any."""
        if client_id not in self.connected:
            return 'not_connected'
        if self.closed:
            return 'shutting_down'
        if not self.connected[client_id]:
            return 'unauthorized'
        if self.driver != client_id:
            return 'not_driver'
        if self.estop:
            return 'estop_engaged'
        return None

    def check_motion(self, client_id, requested, effects, reply, refusal):
        """Check a motion command's outcome against the independently clamped request."""
        if refusal is not None:
            self.refused(reply, refusal)
            return
        assert isinstance(reply, Ack), reply
        target = expected_target(requested, self.config)
        assert reply.applied == effects.publish
        for axis in ('linear_x', 'linear_y', 'angular_z'):
            applied, wanted = getattr(reply.applied, axis), getattr(target, axis)
            assert applied == wanted or (abs(applied) < abs(wanted) and applied * wanted >= 0)
        self.target = target

    # --- rules ---

    @rule(client_id=CLIENTS, can_drive=st.booleans())
    def connect(self, client_id, can_drive):
        """Connect (or reconnect) a client."""
        was_driver = client_id == self.driver
        effects = self.apply(self.core.connect(client_id, can_drive, True, self.now),
                             must_stop=was_driver)
        if was_driver:
            self.driver, self.last_command = None, None
            self.stopped()
        assert [type(reply) for _, reply in effects.replies] == [Hello, ControlState]
        self.connected[client_id] = can_drive

    @rule(client_id=CLIENTS, roll=st.integers(0, 2))
    def disconnect_sometimes(self, client_id, roll):
        """Disconnect a client a third of the times this is drawn, so most stay connected."""
        if roll == 0:
            self.disconnect(client_id)

    def disconnect(self, client_id):
        """Disconnect a client: the driver's car stops, a viewer changes nothing."""
        was_driver = client_id == self.driver
        effects = self.apply(self.core.disconnect(client_id, self.now), must_stop=was_driver)
        if was_driver:
            self.driver, self.last_command = None, None
            self.stopped()
        else:
            assert effects.publish is None and not effects.state_changed
        self.connected.pop(client_id, None)

    @rule(client_id=CLIENTS, takeover=st.booleans())
    def acquire(self, client_id, takeover):
        """Ask for the lock, with or without takeover."""
        effects, reply = self.receive(client_id, Acquire(takeover))
        if client_id not in self.connected:
            self.refused(reply, 'not_connected')
        elif self.closed:
            self.refused(reply, 'shutting_down')
        elif not self.connected[client_id]:
            self.refused(reply, 'unauthorized')
        elif self.driver in (None, client_id):
            assert isinstance(reply, Ack) and effects.publish is None
            if self.driver is None:
                self.driver, self.last_command = client_id, None
        elif takeover and self.config.allow_takeover:
            assert isinstance(reply, Ack) and effects.publish == ZERO
            self.driver, self.last_command = client_id, None
            self.stopped()
        else:
            self.refused(reply, 'driver_busy')
            assert f'{self.driver} is driving' in reply.message

    @rule(client_id=CLIENTS)
    def release(self, client_id):
        """Give the lock back: zero at once if it was the driver."""
        effects, reply = self.receive(client_id, Release())
        if client_id in self.connected and client_id == self.driver:
            assert isinstance(reply, Ack) and effects.publish == ZERO
            self.driver, self.last_command = None, None
            self.stopped()
        else:
            self.refused(reply, 'not_driver', 'not_connected')

    @rule(client_id=CLIENTS, velocity=VELOCITIES)
    def velocity(self, client_id, velocity):
        """Send any velocity, including huge and non-finite ones."""
        refusal = self.expected_motion_refusal(client_id)
        values = (velocity.linear_x, velocity.linear_y, velocity.linear_z,
                  velocity.angular_x, velocity.angular_y, velocity.angular_z)
        if refusal is None and not all(math.isfinite(v) for v in values):
            refusal = 'bad_number'
        effects, reply = self.receive(client_id, VelocityCommand(velocity))
        self.check_motion(client_id, velocity, effects, reply, refusal)

    @rule(client_id=CLIENTS, name=st.sampled_from(['forward', 'back', 'left', 'back_left',
                                                   'forward_right', 'stop', 'fly']),
          speed=st.one_of(st.none(), st.floats(0, 1)))
    def command(self, client_id, name, speed):
        """Send a named command, sometimes an unknown one."""
        refusal = self.expected_motion_refusal(client_id)
        if refusal is None and name not in self.config.vocabulary:
            refusal = 'unknown_command'
        effects, reply = self.receive(client_id, NamedCommand(name, speed))
        scale = self.config.default_speed if speed is None else speed
        requested = self.config.vocabulary[name].scaled(scale) if refusal is None else None
        self.check_motion(client_id, requested, effects, reply, refusal)

    @precondition(lambda self: self.driver is not None)
    @rule(velocity=st.builds(Velocity, FINITE, FINITE, st.just(0.0), st.just(0.0), st.just(0.0),
                             FINITE))
    def drive(self, velocity):
        """Send a plausible velocity from the driver (the common case, so drawn often)."""
        self.velocity(self.driver, velocity)

    @precondition(lambda self: self.driver is not None)
    @rule(name=st.sampled_from(['forward', 'left', 'back_right', 'stop']),
          speed=st.one_of(st.none(), st.floats(0, 1)))
    def drive_named(self, name, speed):
        """Send a named command from the driver."""
        self.command(self.driver, name, speed)

    @rule(client_id=CLIENTS, engage=st.sampled_from([True, False, False, False]))
    def client_estop(self, client_id, engage):
        """Any client engages; only one that may drive releases."""
        was_engaged = self.estop
        effects, reply = self.receive(client_id, EmergencyStop(engage))
        if engage:
            # the first engage publishes zero; one while engaged publishes nothing new
            assert isinstance(reply, Ack)
            assert effects.publish == (None if was_engaged else ZERO)
            self.estop = True
            self.stopped()
        elif client_id not in self.connected:
            self.refused(reply, 'not_connected')
        elif not self.connected[client_id]:
            self.refused(reply, 'unauthorized')
        else:
            assert isinstance(reply, Ack) and effects.publish is None
            self.estop = False

    @rule(engage=st.sampled_from([True, False, False, False]))
    def service_estop(self, engage):
        """Engage or release the e-stop through the ROS service."""
        effects = self.apply(self.core.set_estop(engage, 'service', self.now),
                             must_stop=engage and not self.estop)
        if engage:
            self.stopped()
        else:
            assert effects.publish is None
        self.estop = engage

    @rule(client_id=CLIENTS, t0=FINITE)
    def time_sync(self, client_id, t0):
        """Clock probes never move the car."""
        effects, reply = self.receive(client_id, TimeSync(t0))
        assert effects.publish is None
        if client_id in self.connected:
            assert reply == TimeReply(t0, WALL_TIME, self.request)

    @rule(dt=st.one_of(st.floats(0, 0.2), st.floats(0, 3)))
    def advance(self, dt):
        """Let time pass, ticking at every deadline as the server's timer does."""
        until = self.now + dt
        for _ in range(100_000):
            deadline = self.core.next_deadline()
            if deadline is None or deadline > until:
                break
            self.now = max(self.now, deadline)
            self.tick()
        else:
            raise AssertionError('next_deadline() does not advance')
        self.now = until

    @rule(dt=st.floats(0, 3))
    def late_tick(self, dt):
        """Tick once at an arbitrary time, as a timer firing late (or early) would."""
        self.now += dt
        self.tick()

    def tick(self):
        """Tick once and check the deadman and republish rules."""
        was_zero = self.published.is_zero() and self.target.is_zero()
        expired = (self.last_command is not None and self.now >= self.last_command
                   + self.config.command_timeout - teleop.TIME_TOLERANCE)
        effects = self.apply(self.core.tick(self.now), must_stop=expired and not was_zero)
        if expired and not was_zero:
            assert effects.events == [
                f'deadman: no command from {self.driver} for '
                f'{self.now - self.last_command:.2f} s, stopped']
            self.stopped()
        if was_zero:
            assert effects == Effects()  # zero is published once per stop, not while idle

    @rule(roll=st.integers(0, 49))
    def shutdown(self, roll):
        """Rarely, shut the bridge down: zero, no driver, and nobody may drive again."""
        if roll:
            return
        self.apply(self.core.shutdown(self.now), must_stop=True)
        self.closed, self.driver, self.last_command = True, None, None
        self.stopped()

    # --- invariants after every step ---

    @invariant()
    def state_matches_the_model(self):
        """Driver, e-stop and velocity are what the rules imply."""
        state = self.core.state()
        assert state == ControlState(self.driver, self.estop, self.published)
        status = self.core.status(self.now)
        assert (status.driver_id, status.estop, status.velocity) == (
            self.driver, self.estop, self.published)
        assert status.control_clients == len(self.connected)
        if self.last_command is None:
            assert status.last_command_age == -1.0
        else:
            assert status.last_command_age == pytest.approx(self.now - self.last_command)

    @invariant()
    def the_car_only_moves_when_it_may(self):
        """Check that moving needs a driver, no e-stop, no shutdown and a recent command."""
        if self.published.is_zero():
            return
        assert self.driver is not None and not self.estop and not self.closed
        deadman = self.last_command + self.config.command_timeout
        assert self.now < deadman
        deadline = self.core.next_deadline()
        assert deadline is not None and deadline <= deadman + 1e-9
        if self.config.republish_rate:  # a held velocity is republished at the rate
            assert deadline <= self.published_at + 1 / self.config.republish_rate + 1e-9


TeleopMachine.TestCase.settings = settings(
    max_examples=600, stateful_step_count=30, deadline=None, database=None)
test_teleop_state_machine = TeleopMachine.TestCase


# --- limits changed at run time (ros2 param set) ------------------------------------------------


def test_lowering_max_linear_at_run_time_brings_the_speed_down_at_once():
    core = driving(make_core(max_linear=0.5, max_linear_accel=1.0, command_timeout=5.0))
    send(core, forward(0.5), 0.0)
    tick_through(core, 1.0)
    assert core.state().velocity.linear_x == 0.5
    effects = core.update_limits(TeleopConfig(max_linear=0.2, max_linear_accel=1.0,
                                              command_timeout=5.0), 1.01)
    assert effects.publish == Velocity(linear_x=0.2)  # at once: slowing down is never ramped
    assert any('max_linear 0.5 -> 0.2' in event for event in effects.events)
    # Republishes hold the new limit; the driver's next command is clamped to it.
    assert all(e.publish.linear_x == 0.2 for _, e in tick_through(core, 1.3) if e.publish)
    ack = only_reply(send(core, forward(0.5), 1.35))
    assert ack.clamped and ack.applied.linear_x == 0.2


def test_raising_max_linear_moves_nothing_until_the_driver_asks():
    core = driving(make_core(max_linear=0.2))
    send(core, forward(0.5), 0.0)
    effects = core.update_limits(TeleopConfig(max_linear=0.6), 0.05)
    assert effects.publish is None and core.state().velocity.linear_x == 0.2
    assert only_reply(send(core, forward(0.5), 0.1)).applied.linear_x == 0.5


def test_a_shorter_command_timeout_at_run_time_moves_the_deadman_deadline():
    core = driving(make_core(command_timeout=2.0, republish_rate=0.0))
    send(core, forward(0.3), 0.0)
    assert core.next_deadline() == pytest.approx(2.0)
    assert core.update_limits(TeleopConfig(command_timeout=0.5, republish_rate=0.0),
                              0.1).publish is None
    assert core.next_deadline() == pytest.approx(0.5)
    assert core.tick(0.5).publish == ZERO


def test_update_limits_takes_only_a_validated_config():
    core = make_core()
    with pytest.raises(TypeError):
        core.update_limits({'max_linear': 0.3}, 0.0)
    with pytest.raises(ValueError):
        TeleopConfig(max_linear=-1.0)  # what the node builds first; the core never sees it
