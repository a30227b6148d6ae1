"""Waiting on a condition, the one way the tests synchronise (never a bare sleep)."""

import threading
import time


def wait_for(predicate, timeout: float = 10.0, what: str = 'condition', interval: float = 0.005):
    """Poll ``predicate`` until it returns a truthy value and return it; fail after ``timeout`` s.

    Raises AssertionError (a test failure, not an error) naming ``what``.
    """
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:.1f} s waiting for {what}')
        threading.Event().wait(interval)  # a poll interval, not a synchronisation sleep
