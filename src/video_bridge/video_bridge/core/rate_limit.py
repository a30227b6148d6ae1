"""
Per-connection message rate limiting for the control socket.

Pure: the caller passes a monotonic ``now`` (seconds). A token bucket lets a client send
``burst`` messages at once and ``rate`` per second sustained; a message over the budget is
rejected, and a client that keeps being rejected is disconnected so it cannot keep the server
busy answering it.
"""

from collections import deque
import enum
import math

_EPSILON = 1e-9  # refill arithmetic in floats must not turn 1 token into 0.9999999


class Verdict(enum.Enum):
    """What to do with one incoming message."""

    ACCEPT = 'accept'          # handle it
    REJECT = 'reject'          # answer with an error and drop it
    DISCONNECT = 'disconnect'  # close the connection (rate limited)


class RateLimiter:
    """
    Token bucket per connection: `rate` messages/s sustained, `burst` at once.

    Persistent abuse (``strikes_to_disconnect`` rejections within ``strike_window`` seconds)
    gets the client disconnected; that verdict is final for this limiter.
    """

    def __init__(self, rate: float, burst: int, strikes_to_disconnect: int = 20,
                 strike_window: float = 5.0):
        """Start with a full bucket and no strikes."""
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise ValueError(f'rate must be a positive finite number, got {rate!r}')
        for name, value in (('burst', burst), ('strikes_to_disconnect', strikes_to_disconnect)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
        if not (isinstance(strike_window, (int, float)) and math.isfinite(strike_window)
                and strike_window > 0):
            raise ValueError(f'strike_window must be a positive finite number, '
                             f'got {strike_window!r}')
        self.rate = float(rate)
        self.burst = burst
        self.strikes_to_disconnect = strikes_to_disconnect
        self.strike_window = float(strike_window)
        self._tokens = float(burst)
        self._last = None
        self._strikes = deque()
        self._disconnected = False

    def admit(self, now: float) -> Verdict:
        """Take one token for a message arriving at ``now``, or count a strike."""
        if self._disconnected:
            return Verdict.DISCONNECT
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens -= 1.0
            return Verdict.ACCEPT
        while self._strikes and now - self._strikes[0] >= self.strike_window:
            self._strikes.popleft()
        self._strikes.append(now)
        if len(self._strikes) >= self.strikes_to_disconnect:
            self._disconnected = True
            return Verdict.DISCONNECT
        return Verdict.REJECT

    def _refill(self, now: float):
        if self._last is not None and now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now  # a clock that steps back neither refills nor drains
