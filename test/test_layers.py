"""Tests for video_bridge.core.layers: layer choice per peer and keyframe rate limits."""

import pytest
import random

from video_bridge.core.layers import (KeyframeGate, layer_bitrates, LayerChooser, LayerPolicy,
                                      LossMeter, RateMeter)

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
    chooser.update(3.0, estimate=310_000, sent=300_000)   # estimate == sent: no room
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


def test_loss_is_measured_over_a_window_of_enough_packets():
    meter = LossMeter(window=4.0, min_packets=100)
    # Reports every 0.5 s, 30 packets each: no figure until 100 packets were expected.
    assert meter.add(0.0, lost=0, highest=1000) is None
    assert meter.add(0.5, lost=3, highest=1030) is None     # one burst: 10 % of 30 packets
    assert meter.add(1.0, lost=3, highest=1060) is None
    assert meter.add(1.5, lost=3, highest=1090) is None
    assert meter.add(2.0, lost=3, highest=1120) == pytest.approx(3 / 120)
    # The base moves on once a newer report is a window (4 s) and 100 packets back: the
    # burst at 0.5 s has left at 4.5 s (base 0.5 s: nothing lost since).
    for step in range(5, 9):
        meter.add(step * 0.5, lost=3, highest=1000 + 60 * step)
    assert meter.add(4.5, lost=3, highest=1540) == pytest.approx(0.0)
    # Heavy loss shows up; counts never give more than 100 %. Base: the report at 1.0 s.
    assert meter.add(5.0, lost=203, highest=1860) == pytest.approx(200 / 800)
    assert meter.add(5.5, lost=10 ** 6, highest=1900) == 1.0
    # A sequence that goes back is a new stream: no figure until it has enough packets.
    assert meter.add(6.0, lost=0, highest=10) is None
    # At a low rate the span grows to hold enough packets: 10 packets a second, 100 needed.
    slow = LossMeter(window=4.0, min_packets=100)
    for second in range(30):
        figure = slow.add(float(second), lost=second // 10, highest=10 * second)
    assert figure == pytest.approx(1 / 100)
    with pytest.raises(ValueError):
        LossMeter(window=0)


def test_the_loss_meter_keeps_a_bounded_number_of_reports():
    meter = LossMeter(window=1000.0, min_packets=1)
    for index in range(5 * LossMeter.MAX_REPORTS):
        meter.add(index * 0.001, lost=index, highest=10 * index)
    assert len(meter._reports) == LossMeter.MAX_REPORTS


def test_bursty_two_percent_loss_keeps_a_peer_on_its_layer():
    """lte-poor: 2 % loss in bursts of three packets, receiver reports about once a second.

    Read one report at a time (the fraction since the previous report, ~30 packets), a burst
    is 10 % and more: a peer on the lowest-but-one layer stepped down every few seconds. Over
    LossMeter's window it is ~2 %: no loss-driven switch in ten minutes of reports.
    """
    chooser = LayerChooser(RATES, now=0.0, policy=POLICY, start=1)
    meter = LossMeter(POLICY.loss_window, POLICY.loss_packets)
    rng = random.Random(7)
    lost = highest = 0
    single_report_downs = 0
    for second in range(1, 600):
        packets = 30
        burst_lost = 3 if rng.random() < packets * 0.02 / 3 else 0
        lost, highest = lost + burst_lost, highest + packets
        single_report_downs += burst_lost / packets >= POLICY.high_loss
        assert chooser.update(float(second), loss=meter.add(float(second), lost, highest)) \
            is None
    assert chooser.current == 1 and single_report_downs > 50   # what the old reading saw


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
