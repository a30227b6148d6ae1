"""Tests for video_bridge.core.rate_limit with a fake clock: bursts, refill, strikes, closes."""

from hypothesis import given, settings, strategies as st
import pytest
from video_bridge.core.rate_limit import RateLimiter, Verdict

ACCEPT, REJECT, DISCONNECT = Verdict.ACCEPT, Verdict.REJECT, Verdict.DISCONNECT


def admit_many(limiter, count, now):
    """Offer ``count`` messages at the same instant; return the verdicts."""
    return [limiter.admit(now) for _ in range(count)]


def test_a_full_burst_is_accepted_at_once_and_the_next_message_rejected():
    """A new connection may send ``burst`` messages at once, not one more."""
    limiter = RateLimiter(rate=10, burst=5)
    assert admit_many(limiter, 5, 100.0) == [ACCEPT] * 5
    assert limiter.admit(100.0) is REJECT


def test_tokens_refill_at_the_rate():
    """One token comes back every 1/rate s; half a token is not enough."""
    limiter = RateLimiter(rate=10, burst=2)
    assert admit_many(limiter, 3, 0.0) == [ACCEPT, ACCEPT, REJECT]
    assert limiter.admit(0.05) is REJECT
    assert limiter.admit(0.1) is ACCEPT
    assert limiter.admit(0.1) is REJECT
    assert admit_many(limiter, 3, 0.3) == [ACCEPT, ACCEPT, REJECT]


def test_refill_is_capped_at_the_burst():
    """An idle hour buys no more than one burst."""
    limiter = RateLimiter(rate=10, burst=3)
    assert limiter.admit(0.0) is ACCEPT
    assert admit_many(limiter, 4, 3600.0) == [ACCEPT, ACCEPT, ACCEPT, REJECT]


def test_a_client_sending_exactly_at_the_rate_is_never_rejected():
    """Float noise in the refill must not turn a whole token into 0.999... and reject."""
    limiter = RateLimiter(rate=50, burst=1)
    assert all(limiter.admit(1000.0 + i * 0.02) is ACCEPT for i in range(5000))


def test_a_clock_stepping_back_neither_refills_nor_breaks():
    """A decreasing ``now`` adds no tokens."""
    limiter = RateLimiter(rate=10, burst=1)
    assert limiter.admit(10.0) is ACCEPT
    assert limiter.admit(5.0) is REJECT
    assert limiter.admit(10.05) is REJECT
    assert limiter.admit(10.1) is ACCEPT


def test_persistent_rejections_lead_to_disconnect_and_it_is_final():
    """The Nth rejection within the window disconnects; later calls keep saying so."""
    limiter = RateLimiter(rate=1, burst=1, strikes_to_disconnect=3, strike_window=5.0)
    assert limiter.admit(0.0) is ACCEPT
    assert limiter.admit(0.1) is REJECT
    assert limiter.admit(0.2) is REJECT
    assert limiter.admit(0.3) is DISCONNECT
    assert limiter.admit(100.0) is DISCONNECT


def test_strikes_expire_after_the_window():
    """Occasional rejections spread wider than the window never add up to a disconnect."""
    limiter = RateLimiter(rate=1, burst=1, strikes_to_disconnect=3, strike_window=5.0)
    now = 0.0
    for _ in range(50):
        assert limiter.admit(now) is ACCEPT
        assert limiter.admit(now) is REJECT  # one strike each round
        now += 2.6  # two strikes are never within 5 s of a third
    assert limiter.admit(now) is ACCEPT


def test_strikes_exactly_one_window_old_no_longer_count():
    """A strike ``strike_window`` seconds old has expired."""
    limiter = RateLimiter(rate=0.01, burst=1, strikes_to_disconnect=2, strike_window=5.0)
    assert limiter.admit(0.0) is ACCEPT
    assert limiter.admit(1.0) is REJECT
    assert limiter.admit(6.0) is REJECT  # the strike at 1.0 expired at 6.0
    assert limiter.admit(6.5) is DISCONNECT


def test_default_strikes_to_disconnect_is_twenty_within_five_seconds():
    """With the defaults, a flood is cut off at the 20th rejection."""
    limiter = RateLimiter(rate=50, burst=20)
    verdicts = admit_many(limiter, 40, 0.0)
    assert verdicts[:20] == [ACCEPT] * 20
    assert verdicts[20:39] == [REJECT] * 19
    assert verdicts[39] is DISCONNECT


@pytest.mark.parametrize('kwargs', [
    {'rate': 0, 'burst': 1}, {'rate': -1, 'burst': 1}, {'rate': float('nan'), 'burst': 1},
    {'rate': float('inf'), 'burst': 1}, {'rate': 1, 'burst': 0}, {'rate': 1, 'burst': 1.5},
    {'rate': 1, 'burst': True}, {'rate': 1, 'burst': 1, 'strikes_to_disconnect': 0},
    {'rate': 1, 'burst': 1, 'strike_window': 0}, {'rate': 1, 'burst': 1, 'strike_window': -1},
])
def test_invalid_parameters_are_refused(kwargs):
    """A misconfigured limiter fails at start-up, not by letting everything through."""
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)


@settings(max_examples=1500, deadline=None, database=None)
@given(rate=st.floats(0.5, 100), burst=st.integers(1, 30),
       gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_accepted_messages_never_exceed_burst_plus_rate_times_time(rate, burst, gaps):
    """In any window [t0, t1] at most burst + rate * (t1 - t0) messages are accepted."""
    limiter = RateLimiter(rate, burst, strikes_to_disconnect=10 ** 6)
    now, accepted = 0.0, []
    for gap in gaps:
        now += gap
        if limiter.admit(now) is ACCEPT:
            accepted.append(now)
    for i, start in enumerate(accepted):
        for j in range(i, len(accepted)):
            assert j - i + 1 <= burst + rate * (accepted[j] - start) + 1e-6


@settings(max_examples=500, deadline=None, database=None)
@given(strikes=st.integers(1, 30), window=st.floats(0.5, 10),
       gaps=st.lists(st.floats(0, 1), min_size=1, max_size=100))
def test_disconnect_only_after_enough_recent_rejections(strikes, window, gaps):
    """DISCONNECT needs ``strikes`` rejections (itself included) within the last window."""
    limiter = RateLimiter(rate=0.5, burst=1, strikes_to_disconnect=strikes, strike_window=window)
    now, rejected = 0.0, []
    for gap in gaps:
        now += gap
        verdict = limiter.admit(now)
        if verdict is DISCONNECT:
            recent = [t for t in rejected if now - t < window]
            assert len(recent) + 1 >= strikes
            return
        if verdict is REJECT:
            rejected.append(now)


def test_connections_of_one_client_share_its_budget_and_the_driver_only_its_own():
    """Ten connections of one client get CLIENT_SHARE bursts together; shared=False is exempt."""
    from video_bridge.core.rate_limit import CLIENT_SHARE, ClientBuckets
    buckets = ClientBuckets(rate=10, burst=5)
    limiters = [RateLimiter(10, 5, shared=buckets.acquire('a', 0.0)) for _ in range(10)]
    accepted = sum(limiter.admit(0.0) is ACCEPT for limiter in limiters for _ in range(5))
    assert accepted == CLIENT_SHARE * 5
    other = RateLimiter(10, 5, shared=buckets.acquire('b', 0.0))
    assert admit_many(other, 5, 0.0) == [ACCEPT] * 5
    driver = RateLimiter(10, 5, shared=buckets.acquire('a', 0.0))
    assert driver.admit(0.0) is REJECT                 # the client's budget is spent ...
    assert driver.admit(0.0, shared=False) is ACCEPT   # ... the driver's session has its own


def test_client_buckets_stay_bounded_and_reconnecting_does_not_refill():
    """A client reconnecting finds its spent bucket; 1000 passing clients leave few behind."""
    from video_bridge.core.rate_limit import ClientBuckets
    buckets = ClientBuckets(rate=10, burst=5, share=1)
    first = RateLimiter(10, 5, shared=buckets.acquire('a', 0.0))
    assert admit_many(first, 5, 0.0) == [ACCEPT] * 5
    buckets.release('a')
    again = RateLimiter(10, 5, shared=buckets.acquire('a', 0.0))
    assert again.admit(0.0) is REJECT
    buckets.release('a')
    for index in range(1000):  # each connects and leaves; their buckets are full again
        buckets.acquire(str(index), 100.0)
        buckets.release(str(index))
    assert len(buckets) <= 64 + 2
