"""
Which quality layer each WebRTC peer gets, and when a keyframe may be asked for.

Pure and clock-driven: the edge feeds each peer's bandwidth estimate (REMB from the browser,
or a figure derived from its receiver reports) and a monotonic ``now``; these objects answer
with decisions. Nothing here encodes or sends.

A stream encodes a few layers of one codec (layer 0 at the full bitrate, then half, quarter ...),
each once for all its peers. A peer moves down at once when its estimate no longer carries its
layer (congestion: every late frame hurts), and up only after the estimate has carried the
higher layer for ``up_hold`` seconds (so one optimistic report does not cause a flap). A switch
takes effect on the new layer's next keyframe, since a decoder cannot start anywhere else; the
peer keeps getting its old layer until then.
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple


@dataclass(frozen=True)
class LayerPolicy:
    """Tuning of the layer choice; defaults suit 30 fps video over a variable link."""

    headroom: float = 0.85        # a layer fits when its bitrate <= estimate * headroom
    up_hold: float = 4.0          # s the estimate must carry a higher layer before moving up
    min_dwell: float = 1.0        # s on a layer before moving down again
    high_loss: float = 0.10       # fraction lost (receiver reports): step down one layer
    switch_timeout: float = 2.0   # s to wait for the new layer's keyframe before asking again

    def __post_init__(self):
        """Refuse values that would make the choice meaningless."""
        if not 0 < self.headroom <= 1:
            raise ValueError('headroom must be within (0, 1]')
        for name in ('up_hold', 'min_dwell', 'switch_timeout'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0')
        if not 0 < self.high_loss <= 1:
            raise ValueError('high_loss must be within (0, 1]')


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
        self._pending_since = now
        self._since = now                 # when the peer got onto its current layer
        self._fits_since: Optional[float] = None  # when the estimate first carried a higher one
        self._fits_layer: Optional[int] = None
        self.switches = 0

    def wanted(self) -> int:
        """Return the layer the peer is on, or moving to."""
        return self.current if self.pending is None else self.pending

    def layers_in_use(self) -> Tuple[int, ...]:
        """Layers this peer needs encoded right now (two while a switch waits on a keyframe)."""
        if self.pending is None:
            return (self.current,)
        return (self.current, self.pending)

    def _best_fit(self, estimate: float) -> int:
        budget = estimate * self.policy.headroom
        for index, bitrate in enumerate(self.bitrates):
            if bitrate <= budget:
                return index
        return len(self.bitrates) - 1

    def update(self, now: float, estimate: Optional[float] = None,
               loss: Optional[float] = None) -> Optional[int]:
        """
        Take a bandwidth estimate (bit/s) and/or a loss fraction; return a newly wanted layer.

        Returns None when nothing changes. The caller then needs that layer encoded and a
        keyframe on it (see :class:`KeyframeGate`).
        """
        target = self.wanted()
        if estimate is not None and estimate > 0:
            fit = self._best_fit(estimate)
            if fit > target:          # the estimate no longer carries the layer: go down
                if now - self._since >= self.policy.min_dwell or self.pending is not None:
                    target = fit
                self._fits_since = None
            elif fit < target:        # it would carry a better one: wait until it keeps doing so
                if self._fits_layer != fit or self._fits_since is None:
                    self._fits_layer, self._fits_since = fit, now
                elif now - self._fits_since >= self.policy.up_hold:
                    target = fit
            else:
                self._fits_since = None
        if loss is not None and loss >= self.policy.high_loss \
                and target == self.wanted() and now - self._since >= self.policy.min_dwell:
            target = min(target + 1, len(self.bitrates) - 1)
            self._fits_since = None
        if target == self.wanted():
            return None
        if target == self.current:    # a pending switch became moot
            self.pending = None
            return None
        self.pending = target
        self._pending_since = now
        self._fits_since = None
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
