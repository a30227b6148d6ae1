"""Tests for video_bridge.core.layers: layer choice per peer and keyframe rate limits."""

import pytest
from video_bridge.core.layers import (KeyframeGate, layer_bitrates, LayerChooser, LayerPolicy,
                                      LossWindow, RateMeter)

RATES = layer_bitrates(1_200_000, 3)
POLICY = LayerPolicy(startup=0.0)


def test_layer_bitrates_and_bad_settings():
    assert RATES == (1_200_000, 600_000, 300_000)
    with pytest.raises(ValueError):
        layer_bitrates(0, 3)
    with pytest.raises(ValueError):
        LayerChooser((1, 2), now=0)   # lowest first is a mistake
    with pytest.raises(ValueError):
        LayerPolicy(congested=1.5)


def test_congestion_goes_down_at_once_and_switches_on_a_keyframe():
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY)
    assert chooser.update(2.0, estimate=1_300_000, sent=1_100_000) is None
    # The estimate drops below what is sent: down to the best layer it carries.
    assert chooser.update(3.0, estimate=400_000, sent=1_100_000) == 2
    assert chooser.layers_in_use() == (0, 2)
    assert chooser.accept(0, keyframe=False, now=3.01)    # old layer until the new one starts
    assert not chooser.accept(2, keyframe=False, now=3.02)  # a delta frame cannot start it
    assert chooser.accept(2, keyframe=True, now=3.05)
    assert chooser.current == 2 and chooser.pending is None and chooser.switches == 1
    assert not chooser.accept(0, keyframe=True, now=3.06)


def test_a_simple_picture_below_its_nominal_rate_is_not_congestion():
    # 150 kbit/s sent on the 1.2 Mbit/s layer; REMB follows the incoming rate: stay.
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY)
    for t in range(1, 30):
        assert chooser.update(float(t), estimate=200_000, sent=150_000) is None
    assert chooser.current == 0


def test_a_mild_drop_steps_down_one_layer():
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY)
    assert chooser.update(2.0, estimate=900_000, sent=1_200_000) == 1


def test_low_estimates_are_not_believed_right_after_joining():
    chooser = LayerChooser(RATES, now=0.0)   # default startup 3 s
    assert chooser.update(1.5, estimate=300_000, sent=1_200_000) is None
    assert chooser.update(3.5, estimate=300_000, sent=1_200_000) == 2


def test_goes_up_one_step_after_room_for_up_hold():
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY, start=2)
    assert chooser.update(1.0, estimate=450_000, sent=300_000) is None   # room starts
    assert chooser.update(4.9, estimate=450_000, sent=300_000) is None
    assert chooser.update(5.0, estimate=450_000, sent=300_000) == 1
    chooser.accept(1, True, 5.1)
    assert chooser.update(6.0, estimate=800_000, sent=600_000) is None
    assert chooser.update(10.0, estimate=800_000, sent=600_000) == 0


def test_no_room_restarts_the_wait():
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY, start=2)
    chooser.update(1.0, estimate=450_000, sent=300_000)
    chooser.update(3.0, estimate=290_000, sent=300_000)   # estimate below sent: no room
    assert chooser.update(5.5, estimate=450_000, sent=300_000) is None
    assert chooser.update(9.5, estimate=450_000, sent=300_000) == 1


def test_a_failed_step_up_doubles_the_wait_for_that_layer():
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY, start=1)
    chooser.update(1.0, estimate=900_000, sent=600_000)
    assert chooser.update(5.0, estimate=900_000, sent=600_000) == 0
    chooser.accept(0, True, 5.1)
    assert chooser.update(7.0, estimate=800_000, sent=1_200_000) == 1   # it did not fit
    chooser.accept(1, True, 7.1)
    chooser.update(8.5, estimate=900_000, sent=600_000)
    assert chooser.update(12.5, estimate=900_000, sent=600_000) is None  # 4 s is not enough
    assert chooser.update(16.5, estimate=900_000, sent=600_000) == 0     # 8 s is


def test_does_not_flap_down_again_within_min_dwell():
    chooser = LayerChooser(RATES, now=0.0, policy=LayerPolicy(min_dwell=1.0, startup=0.0))
    assert chooser.update(0.5, estimate=400_000, sent=1_200_000) is None
    assert chooser.update(1.0, estimate=400_000, sent=1_200_000) == 2


def test_high_loss_steps_down_one_layer():
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY)
    assert chooser.update(2.0, loss=0.02) is None
    assert chooser.update(2.0, loss=0.25) == 1
    chooser.accept(1, True, 2.1)
    assert chooser.update(2.5, loss=0.5) is None            # min dwell
    assert chooser.update(3.2, loss=0.5) == 2
    chooser.accept(2, True, 3.3)
    assert chooser.update(5.0, loss=0.9) is None            # already the lowest


def test_loss_between_low_and_high_holds_the_layer():
    # libwebrtc's bands: <= 2 % may go up, 2-10 % holds, >= 10 % goes down.
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY, start=2)
    chooser.update(1.0, estimate=450_000, sent=300_000)   # room starts
    assert chooser.update(3.0, loss=0.06) is None          # a burst: the wait starts over
    assert chooser.update(5.0, estimate=450_000, sent=300_000) is None
    assert chooser.update(9.5, estimate=450_000, sent=300_000) is None  # still 6 % known
    assert chooser.update(9.6, loss=0.02) is None          # 2 % is low enough
    chooser.update(9.7, estimate=450_000, sent=300_000)
    assert chooser.update(13.7, estimate=450_000, sent=300_000) == 1


def test_an_estimate_just_above_what_is_sent_is_room():
    # After congestion Chromium's REMB climbs ~10 kbit/s a second: no margin is waited for.
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY, start=1)
    chooser.update(1.0, estimate=610_000, sent=600_000)
    assert chooser.update(5.0, estimate=615_000, sent=600_000) == 0


def test_loss_window_sums_reports_until_enough_packets():
    window = LossWindow(min_packets=50)
    assert window.add(lost=0, highest=1000) is None       # the first report starts the span
    assert window.add(lost=1, highest=1003) is None       # 1 of 3: one report would say 33 %
    assert window.add(lost=1, highest=1030) is None
    assert window.add(lost=2, highest=1050) == pytest.approx(2 / 50)
    assert window.add(lost=2, highest=1060) is None       # a new span began at 1050
    assert window.add(lost=12, highest=1100) == pytest.approx(10 / 50)


def test_loss_window_survives_odd_reports():
    window = LossWindow(min_packets=10)
    window.add(lost=5, highest=500)
    assert window.add(lost=3, highest=520) == 0.0         # duplicates: lost went down
    assert window.add(lost=50, highest=530) == 1.0        # never above all expected
    assert window.add(lost=0, highest=10) is None         # the receiver restarted
    assert window.add(lost=1, highest=20) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        LossWindow(min_packets=0)
    with pytest.raises(ValueError):
        LayerPolicy(low_loss=0.2, high_loss=0.1)


def test_a_pending_switch_that_becomes_moot_is_dropped():
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY, start=1)
    assert chooser.update(2.0, estimate=300_000, sent=600_000) == 2
    chooser.update(2.1, estimate=900_000, sent=600_000)     # room, while waiting ...
    assert chooser.update(6.2, estimate=900_000, sent=600_000) is None  # ... back to current
    assert chooser.pending is None and chooser.current == 1


def test_switch_overdue_asks_again():
    chooser = LayerChooser(RATES, now=0.0, policy=LayerPolicy(switch_timeout=2.0, startup=0))
    chooser.update(2.0, estimate=100_000, sent=1_000_000)
    assert not chooser.switch_overdue(3.0)
    assert chooser.switch_overdue(4.0)
    assert not chooser.switch_overdue(4.5)


def test_rate_meter():
    meter = RateMeter(window=2.0)
    assert meter.rate(0.0) == 0
    for i in range(60):
        meter.add(i / 30, 1000)
    assert meter.rate(59 / 30) == pytest.approx(60 * 8000 / 2.0, rel=0.05)
    assert meter.rate(10.0) == 0


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


def test_the_chooser_counts_why_switches_were_wanted():
    # /api/streams shows these per peer: how often REMB (congested, room) or loss moved it.
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY)
    assert chooser.update(2.0, estimate=900_000, sent=1_200_000) == 1
    chooser.accept(1, True, 2.1)
    assert chooser.update(3.5, loss=0.5) == 2
    chooser.accept(2, True, 3.6)
    chooser.update(4.0, loss=0.0)
    chooser.update(4.0, estimate=450_000, sent=300_000)
    assert chooser.update(8.0, estimate=450_000, sent=300_000) == 1
    assert chooser.reasons == {'congested': 1, 'loss': 1, 'room': 1}
