"""
Message rate limiting for the control socket: per connection, and per client.

Pure: the caller passes a monotonic ``now`` (seconds). A token bucket lets a connection send
``burst`` messages at once and ``rate`` per second sustained; a message over the budget is
rejected, and a connection that keeps being rejected is disconnected so it cannot keep the
server busy answering it. All connections of one client (an address, or a forwarded client
behind a proxy) also share one bucket of ``CLIENT_SHARE`` times that size
(:class:`ClientBuckets`): opening more connections buys a client no more messages.
"""

import enum
import math
from typing import Dict, Optional

_EPSILON = 1e-9  # refill arithmetic in floats must not turn 1 token into 0.9999999
# A client's connections together may send this many times one connection's rate and burst:
# a few pages behind one NAT each probe the clock every 2 s, one of them drives.
CLIENT_SHARE = 4


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

    # One per connection: slots, not a __dict__ each (most connections are idle watchers).
    __slots__ = ('rate', 'burst', 'strikes_to_disconnect', 'strike_window', 'own', 'shared',
                 '_strikes', '_disconnected')

    def __init__(self, rate: float, burst: int, strikes_to_disconnect: int = 20,
                 strike_window: float = 5.0, shared: Optional['Bucket'] = None):
        """Start with a full bucket and no strikes; ``shared``: the client's bucket too."""
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
        self.own = Bucket(rate, burst)
        self.shared = shared
        self._strikes = []        # times of recent rejections, at most strikes_to_disconnect
        self._disconnected = False

    def admit(self, now: float, shared: bool = True) -> Verdict:
        """
        Take one token (and one of the client's) for a message at ``now``, or strike.

        ``shared=False``: charge only this connection (the driver's session: a flood from the
        same address must not slow the car's commands).
        """
        if self._disconnected:
            return Verdict.DISCONNECT
        client = self.shared if shared else None
        if self.own.available(now) and (client is None or client.available(now)):
            self.own.take()
            if client is not None:
                client.take()
            return Verdict.ACCEPT
        # A list, not a deque: it holds at most strikes_to_disconnect times, and an empty
        # deque costs 760 bytes, which every idle connection's limiter would hold.
        self._strikes = [t for t in self._strikes if now - t < self.strike_window]
        self._strikes.append(now)
        if len(self._strikes) >= self.strikes_to_disconnect:
            self._disconnected = True
            return Verdict.DISCONNECT
        return Verdict.REJECT


class Bucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst``, full at the start."""

    __slots__ = ('rate', 'burst', '_tokens', '_last')   # one per connection and per client

    def __init__(self, rate: float, burst: int):
        self.rate = float(rate)
        self.burst = burst
        self._tokens = float(burst)
        self._last = None

    def available(self, now: float) -> bool:
        """Refill up to ``now``; tell whether a whole token is there."""
        self._refill(now)
        return self._tokens >= 1.0 - _EPSILON

    def take(self):
        """Take the token :meth:`available` found."""
        self._tokens -= 1.0

    def full(self, now: float) -> bool:
        """Tell whether the bucket is full again (its client may be forgotten)."""
        self._refill(now)
        return self._tokens >= self.burst - _EPSILON

    def _refill(self, now: float):
        if self._last is not None and now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now  # a clock that steps back neither refills nor drains


class ClientBuckets:
    """
    One shared :class:`Bucket` per client, held while the client has connections.

    ``acquire(key)`` on connect, ``release(key)`` on disconnect; a client's bucket outlives its
    last connection until it is full again, so reconnecting does not refill it.
    """

    def __init__(self, rate: float, burst: int, share: int = CLIENT_SHARE):
        self.rate = rate * share
        self.burst = burst * share
        self._buckets: Dict[str, Bucket] = {}
        self._users: Dict[str, int] = {}

    def acquire(self, key: str, now: float) -> Bucket:
        """Return the bucket of client ``key`` (one more connection of it)."""
        self._forget_full(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(self.rate, self.burst)
        self._users[key] = self._users.get(key, 0) + 1
        return bucket

    def release(self, key: str):
        """One connection of client ``key`` closed."""
        users = self._users.get(key, 0) - 1
        if users > 0:
            self._users[key] = users
        else:
            self._users.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now: float):
        if len(self._buckets) <= 2 * len(self._users) + 64:
            return  # bounded: at most twice the clients connected, plus a few
        for key in [k for k, b in self._buckets.items()
                    if k not in self._users and b.full(now)]:
            del self._buckets[key]
