"""The one /cmd_vel recorder of the tests: what the car would have been told, and when.

A real reliable rclpy subscription (depth 1000: a fuzzer's or a soak's bursts while the test's
executor is busy) on the test's node records every message with its arrival time
(``time.monotonic()``) as a :class:`Sample`; ``Twist`` and ``TwistStamped`` alike
(``stamped=True``), the latter's ``twist`` unpacked. Samples index as
``(at, linear_x, linear_y, angular_z, msg, received, written)``; ``msg`` is the message itself,
for the header of a TwistStamped or a field the sample does not copy. ``received`` is when the
DDS layer took the message in (the rmw's reception timestamp, wall clock, s): a latency measured
to it leaves out the wait of this process's executor for the GIL, which ``at`` includes.
``written`` is when the publisher handed it to DDS (the rmw's source timestamp, wall clock, s):
what the publisher took, without the delivery to this process.
"""

import math
import time
from typing import List, NamedTuple, Optional

from support.waiting import wait_for


class Sample(NamedTuple):
    """One message on /cmd_vel: arrival time (monotonic) and the velocities that matter."""

    at: float
    linear_x: float
    linear_y: float
    angular_z: float
    msg: object
    received: float = 0.0
    written: float = 0.0

    @property
    def moving(self) -> bool:
        return bool(self.linear_x or self.linear_y or self.angular_z)


class CmdVelRecorder:
    """Every Twist (or TwistStamped) published on ``topic``, with the time it arrived."""

    def __init__(self, node, topic: str = '/cmd_vel', stamped: bool = False, depth: int = 1000):
        from geometry_msgs.msg import Twist, TwistStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        self.node, self.topic = node, topic
        self.messages: List[Sample] = []
        self.subscription = node.create_subscription(
            TwistStamped if stamped else Twist, topic, self._record,
            QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE))

    def _record(self, msg, info):
        twist = getattr(msg, 'twist', msg)
        self.messages.append(Sample(time.monotonic(), twist.linear.x, twist.linear.y,
                                    twist.angular.z, msg, info['received_timestamp'] * 1e-9,
                                    info['source_timestamp'] * 1e-9))

    # ------------------------------------------------------------------ reading
    def mark(self) -> int:
        """A position to read from later (``since``, ``after=``): the count so far."""
        return len(self.messages)

    def since(self, mark: int) -> List[Sample]:
        return self.messages[mark:]

    def last(self, mark: int = 0) -> Optional[Sample]:
        got = self.since(mark)
        return got[-1] if got else None

    @staticmethod
    def moving(samples) -> List[Sample]:
        """The samples that would move the car."""
        return [sample for sample in samples if sample.moving]

    def nonzero(self) -> List[Sample]:
        return self.moving(self.messages)

    def first(self, linear_x: float, after: int = 0, angular_z: Optional[float] = None):
        """Arrival time of the first sample at index >= ``after`` with these values, or None."""
        for sample in self.messages[after:]:
            if math.isclose(sample.linear_x, linear_x, abs_tol=1e-9) and (
                    angular_z is None or math.isclose(sample.angular_z, angular_z,
                                                      abs_tol=1e-9)):
                return sample.at
        return None

    # ------------------------------------------------------------------ waiting
    def wait_value(self, linear_x: float, angular_z: Optional[float] = None, after: int = 0,
                   timeout: float = 5.0) -> float:
        """Wait for a sample (from index ``after``) with these values; its arrival time.

        ``angular_z`` None: any turn rate.
        """
        return wait_for(lambda: self.first(linear_x, after, angular_z), timeout,
                        f'{self.topic} linear.x={linear_x}'
                        + ('' if angular_z is None else f' angular.z={angular_z}'))

    def wait_last(self, mark: int, linear_x: float, angular_z: float, what: str,
                  timeout: float = 10.0) -> Sample:
        """Wait until the newest sample since ``mark`` is (linear_x, 0, angular_z)."""
        def matches():
            last = self.last(mark)
            return last is not None and abs(last.linear_x - linear_x) < 1e-6 \
                and last.linear_y == 0 and abs(last.angular_z - angular_z) < 1e-6
        wait_for(matches, timeout, what)
        return self.last(mark)

    def wait_publisher(self, timeout: float = 15.0):
        """Wait until a publisher (the bridge) exists on the topic."""
        wait_for(lambda: self.node.count_publishers(self.topic) > 0, timeout,
                 f'a {self.topic} publisher (the bridge)')

    def wait_matched(self, timeout: float = 10.0):
        """Wait until this subscription is matched with a publisher (messages will arrive)."""
        wait_for(lambda: self.subscription.get_publisher_count() > 0, timeout,
                 f'{self.topic} matched')

    def close(self):
        """Drop the subscription (a later test may want the topic as the other type)."""
        self.node.destroy_subscription(self.subscription)
