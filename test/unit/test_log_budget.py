"""Tests for video_bridge.core.log_budget: what a client provokes at will is never a flood."""

import logging

from support.clocks import ManualClock
from video_bridge.core.log_budget import LogBudget


class Lines:
    """A log that keeps what it is told, as (level, text)."""

    def __init__(self):
        self.lines = []

    def info(self, message, *args):
        self.lines.append((logging.INFO, message % args))

    def warning(self, message, *args):
        self.lines.append((logging.WARNING, message % args))


def test_a_burst_is_said_then_the_rest_of_the_period_is_counted_into_the_next_line():
    log, clock = Lines(), ManualClock()
    budget = LogBudget(log, clock, period=10.0, burst=3)
    said = [budget.info('connected', 'client %d connected', n) for n in range(50)]
    assert said == [True] * 3 + [False] * 47
    assert log.lines == [(logging.INFO, f'client {n} connected') for n in range(3)]
    clock.now += 9.9
    assert not budget.info('connected', 'client %d connected', 50)
    clock.now += 0.1                 # a new period: a new burst, the first says what was held
    assert budget.info('connected', 'client %d connected', 51)
    assert budget.info('connected', 'client %d connected', 52)
    assert log.lines[3:] == [(logging.INFO, 'client 51 connected (48 more like it since the '
                                            'last line)'),
                             (logging.INFO, 'client 52 connected')]


def test_kinds_have_budgets_of_their_own_and_levels_are_kept():
    log, clock = Lines(), ManualClock()
    budget = LogBudget(log, clock, period=5.0, burst=1)
    assert budget.warning('refused', 'refused %s', 'a')
    assert not budget.warning('refused', 'refused %s', 'b')
    assert budget.info('dropped', 'dropped %s', 'c')
    assert budget.say(logging.ERROR, 'failed', 'failed %s', 'd')
    assert log.lines == [(logging.WARNING, 'refused a'), (logging.INFO, 'dropped c'),
                         (logging.WARNING, 'failed d')]


def test_kinds_made_from_client_input_cannot_grow_the_table_without_end():
    log, clock = Lines(), ManualClock()
    budget = LogBudget(log, clock)
    for n in range(10 * LogBudget.MAX_KINDS):
        budget.warning(f'kind {n}', 'line %d', n)
        assert len(budget._kinds) <= LogBudget.MAX_KINDS
    assert len(log.lines) == 10 * LogBudget.MAX_KINDS


def test_an_exempt_line_is_always_said_and_takes_nothing_from_the_budget():
    log = Lines()
    budget = LogBudget(log, ManualClock(), period=10.0, burst=1)
    assert budget.info('connected', 'watcher %d', 1)
    assert all(budget.info('connected', 'holder %d', n, exempt=True) for n in range(3))
    assert not budget.info('connected', 'watcher %d', 2)
    assert log.lines == [(logging.INFO, 'watcher 1')] + [
        (logging.INFO, f'holder {n}') for n in range(3)]
