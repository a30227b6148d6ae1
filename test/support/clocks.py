"""A clock a test moves by hand, for the pure core's time-based rules (budgets, throttles)."""


class ManualClock:
    """Callable like ``time.monotonic``; reads ``now``, which the test sets or advances."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
