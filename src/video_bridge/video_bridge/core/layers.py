"""
Which quality layer each WebRTC peer gets, and when a keyframe may be asked for.

Pure and clock-driven: the edge feeds each peer's bandwidth estimate (REMB from the browser),
its loss (receiver reports), what it actually sent the peer lately, and a monotonic ``now``;
these objects answer with decisions. Nothing here encodes or sends.

A stream encodes a few layers of one codec (layer 0 at the full bitrate, then half, quarter ...),
each once for all its peers. A receiver's estimate is bounded by what it receives (Chromium's
REMB stays within about 1.5 times the incoming rate), and a simple picture may need far less than
a layer's nominal bitrate, so the rules compare the estimate with the rate *actually sent*:

* **down at once** when the estimate falls clearly below the sent rate (the path is congested:
  every late frame hurts), to the best layer whose nominal bitrate the estimate carries, at least
  one step; or one step on heavy loss, measured over at least ``loss_packets`` packets
  (:class:`LossWindow`; one receiver report's own fraction often covers 3 to 20 packets, and
  Chromium sends one with every NACK: a single lost packet then read 12 to 33 %. That moved
  peers down several times a minute on a link with 0.5 % random loss and kept them off the top
  layer. libwebrtc's loss-based estimate likewise waits for 20 packets, but it only trims the
  rate by half the loss; a layer step halves it, so it needs more evidence);
* **up one step** after the estimate has stayed above the sent rate for ``up_hold`` seconds
  (the path is not congested) and the last loss figure was at most ``low_loss``: between that
  and ``high_loss`` the layer holds, as libwebrtc's loss-based rate does (on a link that loses
  2 % in bursts, each step up adds packets and so freezes). No margin above the sent rate is
  asked for: after a congestion episode Chromium's REMB climbs back by only about 10 kbit/s a
  second (its additive increase near the last congested rate, and REMB has no probing after
  the first seconds), so waiting for 20 % more than a 600 kbit/s layer sends kept a peer off
  the top layer for 20 s after the link had come back. The step itself is the probe: one
  that has to be undone within ``probe_window`` doubles that layer's wait (up to
  ``max_hold``), so a link just below a layer does not flap.

A switch takes effect on the new layer's next keyframe, since a decoder cannot start anywhere
else; the peer keeps getting its old layer until then.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple


@dataclass(frozen=True)
class LayerPolicy:
    """Tuning of the layer choice; defaults suit 30 fps video over a variable link."""

    congested: float = 0.8        # estimate < sent * this: the path is full, go down
    headroom: float = 1.0         # estimate > sent * this for up_hold: room to go up
    up_hold: float = 4.0          # s of room before a step up
    max_hold: float = 64.0        # s, the longest wait after failed steps up
    probe_window: float = 10.0    # s: coming down this soon after going up was a failed step
    min_dwell: float = 1.0        # s on a layer before moving down again
    startup: float = 3.0          # s after joining when a low estimate is not yet believed
    high_loss: float = 0.10       # fraction lost (receiver reports): step down one layer
    low_loss: float = 0.02        # fraction lost above which no step up is made
    loss_packets: int = 50        # packets a loss figure spans at least (reports are summed)
    switch_timeout: float = 2.0   # s to wait for the new layer's keyframe before asking again

    def __post_init__(self):
        """Refuse values that would make the choice meaningless."""
        if not 0 < self.congested < 1 <= self.headroom:
            raise ValueError('need 0 < congested < 1 <= headroom')
        for name in ('up_hold', 'max_hold', 'probe_window', 'min_dwell', 'startup',
                     'switch_timeout'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0')
        if not 0 <= self.low_loss < self.high_loss <= 1:
            raise ValueError('need 0 <= low_loss < high_loss <= 1')
        if self.loss_packets < 1:
            raise ValueError('loss_packets must be >= 1')


def layer_bitrates(full: int, count: int) -> Tuple[int, ...]:
    """Bitrates of ``count`` layers: full, half, quarter, ... (bit/s)."""
    if full <= 0 or not 1 <= count <= 8:
        raise ValueError('a positive bitrate and 1..8 layers')
    return tuple(max(1, full >> index) for index in range(count))


class LayerChooser:
    """One peer's layer: feed it estimates and frames, it says which layer to send."""

    def __init__(self, bitrates: Sequence[int], now: float,
                 policy: LayerPolicy = LayerPolicy(), start: int = 0):
        if not bitrates or list(bitrates) != sorted(bitrates, reverse=True):
            raise ValueError('bitrates must be non-empty, highest (layer 0) first')
        self.bitrates = tuple(bitrates)
        self.policy = policy
        self.current = min(max(start, 0), len(self.bitrates) - 1)
        self.pending: Optional[int] = None
        self._joined = now
        self._pending_since = now
        self._since = now                       # when the peer got onto its current layer
        self._room_since: Optional[float] = None  # since when the estimate has left room
        self._hold: Dict[int, float] = {}        # layer -> wait before stepping up to it
        self._went_up: Optional[Tuple[int, float]] = None  # (layer, when) of the last step up
        self._loss = 0.0                         # the last loss figure
        self.switches = 0
        self.reasons: Dict[str, int] = {}        # why switches were wanted: congested, loss, room

    def wanted(self) -> int:
        """Return the layer the peer is on, or moving to."""
        return self.current if self.pending is None else self.pending

    def layers_in_use(self) -> Tuple[int, ...]:
        """Layers this peer needs encoded right now (two while a switch waits on a keyframe)."""
        if self.pending is None:
            return (self.current,)
        return (self.current, self.pending)

    def _fit(self, estimate: float) -> int:
        for index, bitrate in enumerate(self.bitrates):
            if bitrate <= estimate:
                return index
        return len(self.bitrates) - 1

    def _down(self, target: int, now: float) -> int:
        went_up = self._went_up
        if went_up is not None and went_up[0] == self.wanted() and \
                now - went_up[1] < self.policy.probe_window:   # that step up failed
            layer = went_up[0]
            self._hold[layer] = min(self._hold.get(layer, self.policy.up_hold) * 2,
                                    self.policy.max_hold)
        self._went_up = None
        self._room_since = None
        return target

    def update(self, now: float, estimate: Optional[float] = None,
               loss: Optional[float] = None, sent: Optional[float] = None) -> Optional[int]:
        """
        Take a bandwidth estimate (bit/s), a loss fraction and the rate sent lately (bit/s).

        Returns a newly wanted layer, or None when nothing changes. The caller then needs that
        layer encoded and a keyframe on it (see :class:`KeyframeGate`).
        """
        policy = self.policy
        wanted = self.wanted()
        target = wanted
        reason = ''
        lowest = len(self.bitrates) - 1
        settled = now - self._since >= policy.min_dwell or self.pending is not None
        if loss is not None:
            self._loss = loss
            if loss > policy.low_loss:
                self._room_since = None
        if estimate is not None and estimate > 0 and sent is not None and sent > 0:
            if estimate < sent * policy.congested:
                self._room_since = None
                if settled and now - self._joined >= policy.startup and wanted < lowest:
                    target = self._down(max(wanted + 1, self._fit(estimate)), now)
                    reason = 'congested'
            elif estimate > sent * policy.headroom and wanted > 0 \
                    and self._loss <= policy.low_loss:
                if self._room_since is None:
                    self._room_since = now
                elif now - self._room_since >= self._hold.get(wanted - 1, policy.up_hold):
                    target = wanted - 1
                    reason = 'room'
                    self._went_up = (target, now)
                    self._room_since = None
            else:
                self._room_since = None
        if target == wanted and loss is not None and loss >= policy.high_loss and settled \
                and wanted < lowest:
            target = self._down(wanted + 1, now)
            reason = 'loss'
        if target == wanted:
            return None
        if target == self.current:    # a pending switch became moot
            self.pending = None
            return None
        self.pending = target
        self._pending_since = now
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        return target

    def accept(self, layer: int, keyframe: bool, now: float) -> bool:
        """
        Tell whether a frame of ``layer`` goes to this peer; completes a switch on a keyframe.

        Exactly one layer's frames are sent at any time, so the decoder sees one clean stream.
        """
        if self.pending is not None and layer == self.pending and keyframe:
            self.current, self.pending = layer, None
            self._since = now
            self.switches += 1
            return True
        return layer == self.current

    def switch_overdue(self, now: float) -> bool:
        """Tell whether a pending switch waited too long for its keyframe (ask again)."""
        if self.pending is None or now - self._pending_since < self.policy.switch_timeout:
            return False
        self._pending_since = now
        return True


class RateMeter:
    """Bits sent over a sliding window (what the peer actually got lately)."""

    def __init__(self, window: float = 2.0):
        self.window = window
        self._events = []

    def add(self, now: float, size: int):
        """Record ``size`` bytes sent at ``now``."""
        self._events.append((now, size))
        self._trim(now)

    def _trim(self, now: float):
        cut = 0
        while cut < len(self._events) and self._events[cut][0] <= now - self.window:
            cut += 1
        del self._events[:cut]

    def rate(self, now: float) -> float:
        """Return bit/s over the window (0 without events)."""
        self._trim(now)
        return sum(size for _, size in self._events) * 8 / self.window


class LossWindow:
    """
    Packet loss over spans of at least ``min_packets`` packets, from receiver reports.

    Fed each report's cumulative figures for one stream (packets lost, extended highest
    sequence number received), it answers lost / expected since the end of the last span once
    ``min_packets`` packets were expected, and None before that: reports come every 0.2 s and
    with every NACK, so one report's own fraction is often a single lost packet among a few.
    Figures that go backwards (a restarted receiver, a report from before a reset) start a new
    span; losses below zero (duplicates) count as none.
    """

    def __init__(self, min_packets: int = 50):
        if min_packets < 1:
            raise ValueError('min_packets must be >= 1')
        self.min_packets = min_packets
        self._start: Optional[Tuple[int, int]] = None   # (lost, highest) where the span began

    def add(self, lost: int, highest: int) -> Optional[float]:
        """Take one report's cumulative loss and highest sequence; a fraction once a span ends."""
        start = self._start
        if start is None or highest < start[1]:
            self._start = (lost, highest)
            return None
        expected = highest - start[1]
        if expected < self.min_packets:
            return None
        self._start = (lost, highest)
        return min(max(lost - start[0], 0), expected) / expected


class KeyframeGate:
    """
    Rate-limits keyframe requests of one encoder (a layer), merging those that come too fast.

    Peers join, lose packets (PLI/FIR) and switch layers at will; each keyframe costs several
    times a normal frame, so a flood of requests must not turn the stream into keyframes only.
    A request inside ``min_interval`` of the last keyframe is remembered and granted when the
    interval is over, so nobody waits forever.
    """

    def __init__(self, min_interval: float = 0.5):
        if min_interval < 0:
            raise ValueError('min_interval must be >= 0')
        self.min_interval = min_interval
        self._last: Optional[float] = None
        self._wanted = False
        self.requests = 0
        self.granted = 0

    def request(self):
        """Someone needs a keyframe (a join, a PLI or FIR, a layer switch)."""
        self.requests += 1
        self._wanted = True

    def take(self, now: float) -> bool:
        """Tell, once per frame about to be encoded, whether it must be a keyframe."""
        if not self._wanted:
            return False
        if self._last is not None and now - self._last < self.min_interval:
            return False
        self._wanted = False
        self._last = now
        self.granted += 1
        return True

    def produced(self, now: float):
        """Record a keyframe the encoder made by itself (first frame, GOP end)."""
        self._last = now
        self._wanted = False
