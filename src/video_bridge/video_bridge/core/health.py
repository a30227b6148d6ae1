"""
Health of the bridge as diagnostics: levels and messages a robot operator can act on.

Pure (no rclpy): the ROS adapter feeds cumulative stream counters and teleop figures with the
time, and turns the :class:`Diagnostic` results into ``diagnostic_msgs/DiagnosticArray``. All
judgement (what is OK, WARN or ERROR and what the message says) lives here, so it is tested
with a fake clock.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# diagnostic_msgs/DiagnosticStatus levels
OK, WARN, ERROR, STALE = 0, 1, 2, 3

MALFORMED_TEXT = {
    'width': 'bad width', 'height': 'bad height', 'step': 'step too small',
    'data': 'data too short', 'undecodable': 'undecodable', 'encoding': 'unsupported encoding',
}


@dataclass(frozen=True)
class Diagnostic:
    """One component's status: level, a one-line message and key/value figures."""

    name: str
    level: int
    message: str
    values: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StreamReport:
    """Per-period figures of one stream, and its diagnostic."""

    input_fps: float
    output_fps: float       # frames handed to viewers per second, all viewers together
    encode_ms: float        # mean per encode over the period (0 when none)
    bytes_per_second: float
    diagnostic: Diagnostic


def _plural(count, word):
    return f'{count} {word}' if count == 1 else f'{count} {word}s'


class StreamMonitor:
    """
    Turn cumulative counters of streams into rates, frame ages and a diagnostic per stream.

    ``stale_after``: a watched stream whose last frame is older than this is WARN ("no frames
    for 2.1 s"); a watched stream that never got a frame is WARN as well once subscribed that
    long, and ERROR when every frame of the period was malformed.
    """

    def __init__(self, stale_after: float = 2.0):
        """Remember nothing yet; the first update of a stream only sets its baseline."""
        self.stale_after = stale_after
        self._last: Dict[str, tuple] = {}          # name -> (time, counters)
        self._last_frame: Dict[str, float] = {}    # name -> time frames_in last grew
        self._watched_since: Dict[str, float] = {}

    def update(self, now: float, name: str, topic: str, subscribed: bool,
               counters, prefix: str = '') -> StreamReport:
        """Report one stream; ``counters`` is a streams.StreamCounters snapshot."""
        then, last = self._last.get(name, (None, None))
        self._last[name] = (now, counters)
        if last is None or now <= then:
            last, period = counters, 0.0
        else:
            period = now - then
        frames_in = counters.frames_in - last.frames_in
        encodes = counters.encode_count - last.encode_count
        malformed = {kind: counters.malformed.get(kind, 0) - last.malformed.get(kind, 0)
                     for kind in counters.malformed}
        bad = sum(malformed.values())
        if frames_in > bad or (last is counters and counters.frames_in > 0):
            self._last_frame[name] = now
        if subscribed:
            self._watched_since.setdefault(name, now)
        else:
            self._watched_since.pop(name, None)
        rate = (lambda delta: delta / period) if period else (lambda delta: 0.0)
        report = {
            'input_fps': rate(frames_in),
            'output_fps': rate(counters.frames_sent - last.frames_sent),
            'encode_ms': 1000.0 * (counters.encode_seconds - last.encode_seconds) / encodes
            if encodes else 0.0,
            'bytes_per_second': rate(counters.bytes_sent - last.bytes_sent)}
        dropped = counters.frames_dropped - last.frames_dropped
        sent = counters.frames_sent - last.frames_sent
        level, message = self._judge(now, name, topic, subscribed, counters.viewers, report,
                                     bad, malformed, frames_in, dropped, sent)
        values = (
            ('topic', topic), ('subscribed', str(subscribed).lower()),
            ('viewers', str(counters.viewers)),
            ('input fps', f'{report["input_fps"]:.1f}'),
            ('output fps (all viewers)', f'{report["output_fps"]:.1f}'),
            ('encode ms', f'{report["encode_ms"]:.2f}'),
            ('frames in', str(counters.frames_in)), ('frames sent', str(counters.frames_sent)),
            ('frames dropped (replaced by a newer one)', str(counters.frames_dropped)),
            ('frames malformed', str(counters.frames_malformed)),
            ('last frame age s', self._age_text(now, name)),
        )
        return StreamReport(diagnostic=Diagnostic(f'{prefix}stream {name}', level, message,
                                                  values), **report)

    def _age_text(self, now, name):
        last = self._last_frame.get(name)
        return 'never' if last is None else f'{now - last:.1f}'

    def _judge(self, now, name, topic, subscribed, viewers, report, bad, malformed, frames_in,
               dropped, sent):
        if bad:
            kinds = ', '.join(f'{count} {MALFORMED_TEXT.get(kind, kind)}'
                              for kind, count in sorted(malformed.items()) if count)
            if bad >= frames_in:
                return ERROR, f'frames on {topic} cannot be shown: {kinds}'
            return WARN, f'some frames on {topic} cannot be shown: {kinds}'
        if not subscribed:
            return OK, 'idle: nobody watching (subscribed on demand)'
        last = self._last_frame.get(name)
        since = self._watched_since.get(name, now)
        if last is None or last < since:
            waited = now - since
            if waited >= self.stale_after:
                return WARN, f'no frames for {waited:.1f} s since subscribing {topic}'
            return OK, f'waiting for the first frame on {topic}'
        age = now - last
        if age >= self.stale_after:
            return WARN, f'no frames for {age:.1f} s on {topic}'
        if viewers and dropped > sent:
            return WARN, (f'viewers cannot keep up: {dropped} frames replaced before sending, '
                          f'{sent} sent')
        return OK, (f'{report["input_fps"]:.1f} fps in, {report["output_fps"]:.1f} fps out to '
                    f'{_plural(viewers, "viewer")}')


def teleop_diagnostic(status, command_timeout: float, prefix: str = '') -> Diagnostic:
    """Diagnose the teleop side from a teleop.TeleopStatus (None: the loop did not answer)."""
    name = f'{prefix}teleop'
    if status is None:
        return Diagnostic(name, ERROR, 'network loop not answering: teleop state unknown')
    velocity = status.velocity
    age = status.last_command_age
    values = (
        ('driver', status.driver_id or 'none'),
        ('control clients', str(status.control_clients)),
        ('emergency stop', 'engaged' if status.estop else 'released'),
        ('last command age s', 'none' if age < 0 else f'{age:.2f}'),
        ('linear.x', f'{velocity.linear_x:.3f}'), ('linear.y', f'{velocity.linear_y:.3f}'),
        ('angular.z', f'{velocity.angular_z:.3f}'),
    )
    if status.estop:
        return Diagnostic(name, WARN, 'emergency stop engaged: publishing zero velocity', values)
    if not status.driver_id:
        return Diagnostic(name, OK, f'no driver ({_plural(status.control_clients, "client")} '
                          'connected)', values)
    if age < 0:
        return Diagnostic(name, OK, f'driver {status.driver_id}: no command yet', values)
    if age > command_timeout:
        return Diagnostic(name, OK, f'driver {status.driver_id}: idle {age:.1f} s, car stopped '
                          'by the deadman', values)
    return Diagnostic(name, OK, f'driver {status.driver_id} driving', values)


def overall(diagnostics) -> Optional[int]:
    """Return the worst level among ``diagnostics`` (None for none)."""
    levels = [d.level for d in diagnostics]
    return max(levels) if levels else None


def parameters_diagnostic(values: dict, last_change: Optional[tuple], now: float,
                          prefix: str = '') -> Diagnostic:
    """
    Show the parameters a running bridge takes, and its last change at run time.

    ``values``: run-time parameter name -> current value; ``last_change``: ``(monotonic time,
    'name old -> new, ...')`` of the last accepted ``ros2 param set``/``load``, or None.
    """
    if last_change is None:
        message = 'run-time parameters as started'
        extra = ()
    else:
        when, text = last_change
        message = f'changed at run time {max(now - when, 0.0):.0f} s ago: {text}'
        extra = (('last change', text),)
    shown = tuple((name, str(value).lower() if isinstance(value, bool) else str(value))
                  for name, value in values.items())
    return Diagnostic(f'{prefix}parameters', OK, message, extra + shown)
