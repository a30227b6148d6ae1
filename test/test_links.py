"""Video and teleop over emulated links: the robust properties, with loose bounds, not timings.

    this namespace (the robot)        wire (support.link_emulator)        operator namespace
    camera_node, bridge_node,   --  delay, jitter, loss, blackouts,  --  /control websocket +
    /cmd_vel recorder (rclpy)       rate (profile from YAML)             aiortc viewer, driver

The bridge and the ROS side run in the test's own private namespace (scripts/test), as in the
other bridge tests; the lab names it (netlab Lab.adopt) and splices a router carrying the
profile between it and an operator namespace. The operator's asyncio loop runs on a thread
inside the operator namespace (support.remote_session), so both ends share this process's
clocks: blackout windows, /cmd_vel arrivals and frame arrivals are compared directly.

Checked: a WebRTC session rides out a 400 ms blackout without a reconnect and its video moves
again; the car stops within command_timeout of a longer blackout's start; on lte-poor the lag
of the picture does not grow over 20 s. Figures print with a 'links figure' prefix (-s).
"""

import asyncio
import json
import math
import os
import statistics
import time

from conftest import OUTPUT_DIR, camera_node, only_loopback
import netlab
import pytest
from support.link_emulator import EDGE_ADDRESS, emulated_path, why_unavailable
from support.remote_session import Driver, run_in_namespace, start_session, until
from test_web_page import CmdVel

pytest.importorskip('aiortc')
pytest.importorskip('websockets')

TOKEN = 'links-test-token'
COMMAND_TIMEOUT = 0.5          # config/bridge.yaml
EDGE_IP = EDGE_ADDRESS.split('/')[0]
LOGS = os.path.join(OUTPUT_DIR, 'links')


pytestmark = pytest.mark.skipif(why_unavailable() is not None,
                                reason=str(why_unavailable()))


def figure(text):
    print(f'links figure: {text}', flush=True)


@pytest.fixture(scope='module')
def camera():
    with camera_node() as process:
        yield process


@pytest.fixture(scope='module')
def cmd_vel(ros):
    recorder = CmdVel(ros)
    yield recorder
    recorder.ros.node.destroy_subscription(recorder.subscription)


class Remote:
    """The lab (this namespace as the robot's end) and a bridge reachable across it."""

    def __init__(self, path, bridge):
        self.path, self.bridge = path, bridge
        self.url = f'ws://{EDGE_IP}:{bridge.port}'

    def operate(self, scenario, timeout: float):
        """Run ``scenario(self)`` (a coroutine function) as the operator, across the link."""
        return run_in_namespace(self.path.far, lambda: scenario(self), timeout)

    async def blackout(self, seconds: float) -> tuple:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.path.link.blackout, seconds)


@pytest.fixture
def remote(camera, cmd_vel, start_bridge):
    """Open a profile's lab and start a bridge in this namespace, reachable from the operator."""
    opened = []

    def open_profile(profile):
        context = emulated_path(profile, LOGS, edge='self')
        path = context.__enter__()
        opened.append(context)
        bridge = start_bridge(host='0.0.0.0', token=TOKEN, webrtc_host_addresses=[EDGE_IP])
        cmd_vel.wait_publisher()
        return Remote(path, bridge)

    yield open_profile
    for context in reversed(opened):
        context.__exit__(None, None, None)
    assert netlab.leftovers() == []
    assert only_loopback(), 'the link into this namespace is gone (later tests need only lo)'


async def watching_and_driving(remote, cmd_vel):
    """A session with video flowing and a held key moving the car; (control, viewer, driver)."""
    control, viewer = await start_session(remote.url, TOKEN)
    await until(lambda: len(viewer.records) >= 30, 30, '30 decoded frames')
    await asyncio.wait_for(viewer.channel_open.wait(), 10)
    viewer.channel.send(json.dumps({'type': 'acquire', 'id': 'a'}))
    await control.wait('ack', 'a')
    driver = Driver(viewer.channel, period=0.05)
    mark = cmd_vel.mark()
    driver.start()
    await until(lambda: CmdVel.moving(cmd_vel.since(mark)), 10, 'the car to move')
    return control, viewer, driver


def wall(monotonic_time: float) -> float:
    """A time.monotonic() instant on the time.time() clock the frame records use."""
    return time.time() - (time.monotonic() - monotonic_time)


def test_a_session_rides_out_a_400_ms_blackout_without_a_reconnect(remote, cmd_vel):
    lab = remote('lte')

    async def scenario(remote):
        control, viewer, driver = await watching_and_driving(remote, cmd_vel)
        try:
            mark = cmd_vel.mark()
            start, end = await remote.blackout(0.4)
            end_wall = wall(end)
            try:
                await until(lambda: viewer.frames_after(end_wall) >= 30, 10,
                            '30 frames after the blackout')
            except TimeoutError:
                pass   # reported below with what the viewer saw
            after = [arrival - end_wall for arrival, _ in viewer.records if arrival >= end_wall]
            await asyncio.sleep(1.0)   # watch one more second for a late drop or reconnect
            stops = [m for m in cmd_vel.since(mark) if start <= m[0] and not CmdVel.moving([m])]
            return {'back': after[0] if after else None, 'after': len(after),
                    'last_before': end_wall - max(a for a, _ in viewer.records if a < end_wall),
                    'states': list(viewer.states), 'reconnected': viewer.reconnected(),
                    'control_closed': control.closed_at, 'stops': len(stops),
                    'errors': [m for m in control.messages if 'error' in m.get('type', '')]}
        finally:
            await driver.stop()
            await viewer.close()
            await control.close()

    result = lab.operate(scenario, 60)
    figure(f'lte, 400 ms blackout: {result}')
    assert result['reconnected'] == [], 'the peer connection dropped or failed'
    assert result['control_closed'] is None, 'the /control websocket closed'
    # Video moves again (loose bound; the goal, 0.5 s, and the frame rate after it are
    # benchmark figures: see test_no_growing_lag_on_lte_poor on aiortc's receiver).
    assert result['after'] >= 1 and result['back'] <= 2.0, \
        'video moves again after the blackout'


def test_the_car_stops_within_command_timeout_of_a_longer_blackout(remote, cmd_vel):
    lab = remote('lte')

    async def scenario(remote):
        control, viewer, driver = await watching_and_driving(remote, cmd_vel)
        try:
            mark = cmd_vel.mark()
            start, end = await remote.blackout(1.5)
            await until(lambda: any(not CmdVel.moving([m]) and m[0] >= start
                                    for m in cmd_vel.since(mark)), 5, 'a zero Twist')
            await until(lambda: time.monotonic() > end + 0.3, 5, 'the blackout to end')
            return start, end, cmd_vel.since(mark)
        finally:
            await driver.stop()
            await viewer.close()
            await control.close()

    start, end, twists = lab.operate(scenario, 60)
    stop = next(m for m in twists if m[0] >= start and not CmdVel.moving([m]))
    figure(f'lte, 1.5 s blackout: the car stopped {(stop[0] - start) * 1000:.0f} ms after its '
           f'start (command_timeout {COMMAND_TIMEOUT * 1000:.0f} ms)')
    # The last command before the blackout reached the bridge at most one way (<= 40 ms) after
    # its start; the deadman then needs command_timeout; loose: + 300 ms for a busy machine
    # (498 ms measured on a quiet one, 643 ms at load average 6 on 2 cores).
    assert stop[0] - start <= COMMAND_TIMEOUT + 0.3
    assert not [m for m in twists if stop[0] < m[0] < end and CmdVel.moving([m])], \
        'the car moved again during the blackout'


def test_no_growing_lag_on_lte_poor(remote, cmd_vel):
    lab = remote('lte-poor')
    seconds = 20.0

    async def scenario(remote):
        control, viewer = await start_session(remote.url, TOKEN)
        try:
            await until(lambda: any(not math.isnan(s) for _, s in viewer.records), 30,
                        'frames with known stamps')
            begin = time.time()
            await asyncio.sleep(seconds)   # watching for the measured window
            return begin, list(viewer.records), viewer.reconnected(), control.closed_at
        finally:
            await viewer.close()
            await control.close()

    begin, records, reconnected, closed = lab.operate(scenario, seconds + 60)
    window = [(arrival, arrival - stamp) for arrival, stamp in records
              if arrival >= begin and not math.isnan(stamp)]
    early = [lag for arrival, lag in window if arrival < begin + 5]
    late = [lag for arrival, lag in window if arrival >= begin + seconds - 5]
    shown = [arrival for arrival, _ in records if arrival >= begin]
    gaps = [b - a for a, b in zip(shown, shown[1:])]
    figure(f'lte-poor over {seconds:.0f} s: {len(shown) / seconds:.1f} frames/s, '
           f'lag median first 5 s {statistics.median(early) * 1000:.0f} ms, last 5 s '
           f'{statistics.median(late) * 1000:.0f} ms, freezes > 200 ms: '
           f'{sum(1 for g in gaps if g > 0.2)}')
    assert reconnected == [] and closed is None, 'no reconnect on a slow but live link'
    # Not frozen at the end. The frame rate itself is a benchmark figure (bench/run links):
    # aiortc's receiver recovers from bursts of loss more slowly than a browser (one NACK per
    # packet, a PLI only on a decoder error), so a CI bound on it tests aiortc, not the bridge.
    assert len(late) >= 5, 'frames still arrive at the end (>= 1 a second)'
    assert statistics.median(late) - statistics.median(early) <= 0.25, 'the lag grew'
