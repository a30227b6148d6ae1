"""Tests for video_bridge.core.layers: layer choice per peer and keyframe rate limits."""

import pytest
from video_bridge.core.layers import KeyframeGate, layer_bitrates, LayerChooser, LayerPolicy

RATES = layer_bitrates(1_200_000, 3)


def test_layer_bitrates():
    assert RATES == (1_200_000, 600_000, 300_000)
    with pytest.raises(ValueError):
        layer_bitrates(0, 3)
    with pytest.raises(ValueError):
        LayerChooser((1, 2), now=0)   # lowest first is a mistake


def test_goes_down_at_once_when_the_estimate_drops_and_switches_on_a_keyframe():
    chooser = LayerChooser(RATES, now=0.0)
    assert chooser.update(2.0, estimate=2_000_000) is None
    assert chooser.update(3.0, estimate=500_000) == 2     # 0.85 * 500k fits only 300k
    assert chooser.layers_in_use() == (0, 2)
    assert chooser.accept(0, keyframe=False, now=3.01)    # old layer until the new one starts
    assert not chooser.accept(2, keyframe=False, now=3.02)  # a delta frame cannot start it
    assert chooser.accept(2, keyframe=True, now=3.05)
    assert chooser.current == 2 and chooser.pending is None and chooser.switches == 1
    assert not chooser.accept(0, keyframe=True, now=3.06)


def test_goes_up_only_after_the_estimate_held_for_up_hold():
    policy = LayerPolicy(up_hold=4.0)
    chooser = LayerChooser(RATES, now=0.0, policy=policy, start=2)
    assert chooser.update(1.0, estimate=2_000_000) is None
    assert chooser.update(4.9, estimate=2_000_000) is None
    assert chooser.update(5.0, estimate=2_000_000) == 0
    chooser.accept(0, True, 5.1)
    assert chooser.current == 0


def test_a_dip_restarts_the_wait_to_go_up():
    chooser = LayerChooser(RATES, now=0.0, start=2)
    chooser.update(1.0, estimate=2_000_000)
    chooser.update(3.0, estimate=360_000)    # only layer 2 fits: the wait starts over
    assert chooser.update(5.5, estimate=2_000_000) is None
    assert chooser.update(9.5, estimate=2_000_000) == 0


def test_does_not_flap_down_again_within_min_dwell():
    chooser = LayerChooser(RATES, now=0.0, policy=LayerPolicy(min_dwell=1.0))
    assert chooser.update(0.5, estimate=400_000) is None   # too soon after joining
    assert chooser.update(1.0, estimate=400_000) == 2


def test_high_loss_steps_down_one_layer():
    chooser = LayerChooser(RATES, now=0.0)
    assert chooser.update(2.0, loss=0.02) is None
    assert chooser.update(2.0, loss=0.25) == 1
    chooser.accept(1, True, 2.1)
    assert chooser.update(2.5, loss=0.5) is None            # min dwell
    assert chooser.update(3.2, loss=0.5) == 2
    chooser.accept(2, True, 3.3)
    assert chooser.update(5.0, loss=0.9) is None            # already the lowest


def test_a_pending_switch_that_becomes_moot_is_dropped():
    chooser = LayerChooser(RATES, now=0.0)
    assert chooser.update(2.0, estimate=500_000) == 2
    assert chooser.update(2.1, estimate=5_000_000) is None  # up needs up_hold ...
    assert chooser.pending == 2
    assert chooser.update(6.2, estimate=5_000_000) is None  # ... then cancels the switch
    assert chooser.pending is None and chooser.current == 0


def test_switch_overdue_asks_again():
    chooser = LayerChooser(RATES, now=0.0, policy=LayerPolicy(switch_timeout=2.0))
    chooser.update(2.0, estimate=100_000)
    assert not chooser.switch_overdue(3.0)
    assert chooser.switch_overdue(4.0)
    assert not chooser.switch_overdue(4.5)


def test_keyframe_gate_merges_requests_and_never_forgets_one():
    gate = KeyframeGate(min_interval=0.5)
    assert not gate.take(0.0)
    gate.request()
    gate.request()
    assert gate.take(0.0)
    assert not gate.take(0.03)
    for t in (0.1, 0.2, 0.3):   # a PLI flood
        gate.request()
        assert not gate.take(t)
    assert gate.take(0.5)       # granted once the interval is over
    assert not gate.take(0.6)
    assert (gate.requests, gate.granted) == (5, 2)
    gate.produced(1.0)
    gate.request()
    assert not gate.take(1.2)
    assert gate.take(1.5)
