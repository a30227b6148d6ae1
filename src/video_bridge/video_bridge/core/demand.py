"""
When the bridge subscribes an image topic: only while someone watches it (subscribe on demand).

A camera driver that sees no subscriber may stop encoding or streaming, and DDS carries nothing
for nobody; so the node subscribes a stream's topic when its first viewer arrives and drops the
subscription ``unsubscribe_delay`` seconds after the last one left (a page that reloads, or
switches streams and back, does not re-subscribe each time). With ``subscribe_on_demand`` false
every stream is subscribed all the time.

Pure and clock-driven: the hub reports viewer counts, the node asks :meth:`Demand.plan` with the
current time and what it has subscribed, and carries out the answer.
"""

from typing import Dict, Iterable, List, Set, Tuple


class Demand:
    """Viewer counts per stream, and since when each subscribed stream has had none."""

    def __init__(self):
        self._viewers: Dict[str, int] = {}
        self._idle_since: Dict[str, float] = {}

    def viewers(self, name: str, count: int):
        """Take the hub's report: stream ``name`` has ``count`` viewers now."""
        self._viewers[name] = count

    def plan(self, streams: Iterable[str], subscribed: Set[str], now: float,
             on_demand: bool = True, unsubscribe_delay: float = 5.0
             ) -> Tuple[List[str], List[str]]:
        """Return ``(subscribe, unsubscribe)``: the streams to subscribe and to drop now."""
        subscribe, unsubscribe = [], []
        for name in streams:
            if self._viewers.get(name, 0) > 0 or not on_demand:
                self._idle_since.pop(name, None)
                if name not in subscribed:
                    subscribe.append(name)
            elif name in subscribed:
                idle = self._idle_since.setdefault(name, now)
                if now - idle >= unsubscribe_delay:
                    unsubscribe.append(name)
                    del self._idle_since[name]
        return subscribe, unsubscribe
