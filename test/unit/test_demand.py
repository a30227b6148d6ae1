"""core.demand: subscribe a stream's topic while someone watches, drop it a while after."""

from video_bridge.core.demand import Demand

STREAMS = ('camera', 'depth')


def test_the_first_viewer_subscribes_at_once():
    demand = Demand()
    assert demand.plan(STREAMS, set(), 0.0) == ([], [])
    demand.viewers('camera', 1)
    assert demand.plan(STREAMS, set(), 0.1) == (['camera'], [])
    assert demand.plan(STREAMS, {'camera'}, 0.2) == ([], []), 'nothing twice'


def test_the_subscription_goes_unsubscribe_delay_after_the_last_viewer():
    demand = Demand()
    demand.viewers('camera', 1)
    demand.viewers('camera', 0)
    assert demand.plan(STREAMS, {'camera'}, 10.0, unsubscribe_delay=5.0) == ([], [])
    assert demand.plan(STREAMS, {'camera'}, 14.9, unsubscribe_delay=5.0) == ([], [])
    assert demand.plan(STREAMS, {'camera'}, 15.0, unsubscribe_delay=5.0) == ([], ['camera'])
    assert demand.plan(STREAMS, set(), 30.0, unsubscribe_delay=5.0) == ([], [])


def test_a_viewer_back_within_the_delay_keeps_it_and_restarts_the_wait():
    demand = Demand()
    demand.viewers('camera', 0)
    demand.plan(STREAMS, {'camera'}, 0.0, unsubscribe_delay=5.0)     # idle from 0
    demand.viewers('camera', 2)
    assert demand.plan(STREAMS, {'camera'}, 4.0, unsubscribe_delay=5.0) == ([], [])
    demand.viewers('camera', 0)
    assert demand.plan(STREAMS, {'camera'}, 6.0, unsubscribe_delay=5.0) == ([], []), \
        'the wait starts again when the last viewer leaves, not at the first idle moment'
    assert demand.plan(STREAMS, {'camera'}, 11.0, unsubscribe_delay=5.0) == ([], ['camera'])


def test_without_on_demand_everything_is_subscribed_and_stays():
    demand = Demand()
    assert demand.plan(STREAMS, set(), 0.0, on_demand=False) == (list(STREAMS), [])
    assert demand.plan(STREAMS, set(STREAMS), 100.0, on_demand=False) == ([], [])


def test_a_delay_of_zero_drops_at_the_first_plan_and_changes_apply_at_once():
    demand = Demand()
    demand.viewers('depth', 0)
    assert demand.plan(STREAMS, {'depth'}, 1.0, unsubscribe_delay=0.0) == ([], ['depth'])
    demand.viewers('camera', 0)
    assert demand.plan(STREAMS, {'camera'}, 2.0, unsubscribe_delay=60.0) == ([], [])
    assert demand.plan(STREAMS, {'camera'}, 3.0, unsubscribe_delay=1.0) == ([], ['camera']), \
        'a shorter unsubscribe_delay set at run time counts from when the viewers left'
