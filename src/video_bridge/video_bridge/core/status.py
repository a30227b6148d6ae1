"""
The bridge's periodic status: one report per period, from the hub, the monitor and teleop.

Pure (no rclpy): the ROS side calls :func:`bridge_report` every ``status_period`` with the
time and the teleop figures it fetched from the loop, and copies the result field by field into
``video_bridge_msgs/BridgeStatus`` and ``diagnostic_msgs/DiagnosticArray``. What a stream's
entry says and what its diagnostic judges is decided here, testable without a node.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

from video_bridge.core import health
from video_bridge.core.teleop import TeleopStatus


@dataclass(frozen=True)
class StreamEntry:
    """One stream of the report: the fields of ``video_bridge_msgs/StreamStatus``."""

    name: str
    topic: str
    message_type: str           # the message's ``type`` field
    subscribed: bool
    viewers: int
    variants: int
    frames_in: int
    frames_sent: int
    frames_dropped: int
    frames_skipped: int
    frames_encoded: int
    frames_malformed: int
    frames_bad_width: int
    frames_bad_height: int
    frames_bad_step: int
    frames_short_data: int
    frames_undecodable: int
    frames_unsupported_encoding: int
    encode_ms: float
    bytes_per_second: float
    input_fps: float


@dataclass(frozen=True)
class BridgeReport:
    """A status period's report: streams, teleop (None: the loop did not answer), diagnostics."""

    streams: Tuple[StreamEntry, ...]
    teleop: Optional[TeleopStatus]
    diagnostics: Tuple[health.Diagnostic, ...]


def bridge_report(streams: Iterable, monitor: health.StreamMonitor, now: float,
                  subscribed: Iterable[str], message_types: Mapping[str, str],
                  teleop: Optional[TeleopStatus], command_timeout: float,
                  runtime_values: Dict[str, object], parameter_change: Optional[tuple],
                  prefix: str = '', resolve: Callable[[str], str] = str) -> BridgeReport:
    """
    Report ``streams`` (the hub's) at ``now`` (monotonic s), updating ``monitor``'s rates.

    ``resolve`` names a topic as the graph does; ``prefix`` starts every diagnostic's name
    (the node's name); ``runtime_values`` and ``parameter_change`` are shown as
    :func:`health.parameters_diagnostic` says.
    """
    subscribed = set(subscribed)
    entries, diagnostics = [], []
    for stream in streams:
        counters = stream.counters()
        topic = resolve(stream.settings.topic)
        watched = stream.name in subscribed
        report = monitor.update(now, stream.name, topic, watched, counters, prefix)
        diagnostics.append(report.diagnostic)
        bad = counters.malformed
        entries.append(StreamEntry(
            name=stream.name, topic=topic, message_type=message_types.get(stream.name, ''),
            subscribed=watched, viewers=counters.viewers, variants=counters.variants,
            frames_in=counters.frames_in, frames_sent=counters.frames_sent,
            frames_dropped=counters.frames_dropped, frames_skipped=counters.frames_skipped,
            frames_encoded=counters.encode_count, frames_malformed=counters.frames_malformed,
            frames_bad_width=bad.get('width', 0), frames_bad_height=bad.get('height', 0),
            frames_bad_step=bad.get('step', 0), frames_short_data=bad.get('data', 0),
            frames_undecodable=bad.get('undecodable', 0),
            frames_unsupported_encoding=bad.get('encoding', 0),
            encode_ms=float(report.encode_ms), bytes_per_second=float(report.bytes_per_second),
            input_fps=float(report.input_fps)))
    diagnostics.append(health.teleop_diagnostic(teleop, command_timeout, prefix))
    diagnostics.append(health.parameters_diagnostic(runtime_values, parameter_change, now,
                                                    prefix))
    return BridgeReport(tuple(entries), teleop, tuple(diagnostics))
