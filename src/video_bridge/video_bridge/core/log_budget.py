"""
A budget of log lines per kind of event: what a client can provoke at will is never a log flood.

Why: a robot's log goes to a terminal, ``/rosout`` and a file under ``~/.ros/log``, and every line
an rclpy logger writes costs the thread that writes it about 0.35 ms (rclpy looks up the caller's
source line for each; ``bench/run log_cost``). The bridge writes from its event loop, which also
carries the driver's commands. A line per refused request, per connection opened and closed, per
peer made would let anyone on the network fill the disk and slow the car's commands by opening
sockets. So every such line goes through a :class:`LogBudget`: at most ``burst`` lines of one kind
in each ``period``; the next line said after that tells how many were held back.

Plain Python: no asyncio, no rclpy (``log`` is anything with ``info`` and ``warning``).
"""

import logging
import time
from typing import Callable, Dict, List

REFUSAL_PERIOD = 5.0     # s: refusals and failures: one line of a kind per period
# Clients coming and going: a page opens 2-3 sockets, so a few pages at once are all said
LIFECYCLE_PERIOD = 10.0  # s
LIFECYCLE_BURST = 10     # lines of a kind per LIFECYCLE_PERIOD


class LogBudget:
    """
    Say at most ``burst`` lines of each kind per ``period``, then count what is held back.

    A kind is a short string the caller picks (``'connected'``, an exception's type name);
    the table of kinds is bounded (``MAX_KINDS``), so kinds made from client input cannot grow
    it without end.
    """

    MAX_KINDS = 256

    def __init__(self, log, clock: Callable[[], float] = time.monotonic,
                 period: float = REFUSAL_PERIOD, burst: int = 1):
        self.log = log
        self.clock = clock
        self.period = period
        self.burst = burst
        self._kinds: Dict[str, List[float]] = {}   # kind -> [window start, lines in it, held]

    def say(self, level: int, kind: str, message: str, *args, exempt: bool = False) -> bool:
        """
        Log ``message % args`` at ``level`` if the kind's budget allows; tell whether it did.

        ``exempt``: said whatever the budget, and not counted (a client holding the token:
        such clients are few, and what they do is always worth a line).
        """
        say = self.log.warning if level >= logging.WARNING else self.log.info
        if exempt:
            say(message, *args)
            return True
        now = self.clock()
        entry = self._kinds.get(kind)
        if entry is None:
            if len(self._kinds) >= self.MAX_KINDS:
                self._kinds.clear()
            entry = self._kinds[kind] = [now, 0, 0]
        elif now - entry[0] >= self.period:
            entry[0], entry[1] = now, 0
        if entry[1] >= self.burst:
            entry[2] += 1
            return False
        entry[1] += 1
        if entry[2]:
            message += ' (%d more like it since the last line)'
            args += (entry[2],)
            entry[2] = 0
        say(message, *args)
        return True

    def info(self, kind: str, message: str, *args, exempt: bool = False) -> bool:
        """:meth:`say` at INFO."""
        return self.say(logging.INFO, kind, message, *args, exempt=exempt)

    def warning(self, kind: str, message: str, *args, exempt: bool = False) -> bool:
        """:meth:`say` at WARNING."""
        return self.say(logging.WARNING, kind, message, *args, exempt=exempt)
