"""Video and teleop over emulated links: the robust properties, with loose bounds, not timings.

    this namespace (the robot)        wire (support.link_emulator)        operator namespace
    camera_node, bridge_node,   --  delay, jitter, loss, blackouts,  --  /control websocket +
    /cmd_vel recorder (rclpy)       rate (profile from YAML)             aiortc viewer and
                                                                         driver, or Chromium

The bridge and the ROS side run in the test's own private namespace (scripts/test), as in the
other bridge tests; the lab names it (netlab Lab.adopt) and splices a router carrying the
profile between it and an operator namespace. The aiortc operator's asyncio loop runs on a
thread inside the operator namespace (support.remote_session); Chromium runs there through
``ip netns exec``. Both ends share this machine's clocks: blackout windows, /cmd_vel arrivals
and frame ages are compared directly.

Checked: a WebRTC session rides out a 400 ms blackout without a reconnect and its video moves
again; the car stops within command_timeout of a longer blackout's start; on lte-poor the page
keeps its session for 30 s, the picture's age does not grow and a held key keeps the car
going. Figures print with a 'links figure' prefix (-s).

The lte-poor check uses Chromium, the viewer users have: aiortc's receiver waits for a lost
packet until 128 more arrive (its jitter buffer counts packets, not time), which on a test
pattern of a few packets a frame is seconds of frozen picture: a property of aiortc, not of
the bridge.
"""

import asyncio
import json
import math
import os
import statistics
import time

from conftest import camera_node, chromium, only_loopback, OUTPUT_DIR, WEBRTC_CHROMIUM_ARGS
import pytest
from support import netlab
from support.link_emulator import EDGE_ADDRESS, emulated_path, why_unavailable
from support.page_probes import RECEIVER_STATS, sender_media
from support.remote_session import Driver, run_in_namespace, start_session, until

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
    await until(lambda: cmd_vel.moving(cmd_vel.since(mark)), 10, 'the car to move')
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
            stops = [m for m in cmd_vel.since(mark) if start <= m[0] and not m.moving]
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
            await until(lambda: any(not m.moving and m[0] >= start
                                    for m in cmd_vel.since(mark)), 5, 'a zero Twist')
            await until(lambda: time.monotonic() > end + 0.3, 5, 'the blackout to end')
            return start, end, cmd_vel.since(mark)
        finally:
            await driver.stop()
            await viewer.close()
            await control.close()

    start, end, twists = lab.operate(scenario, 60)
    stop = next(m for m in twists if m[0] >= start and not m.moving)
    figure(f'lte, 1.5 s blackout: the car stopped {(stop[0] - start) * 1000:.0f} ms after its '
           f'start (command_timeout {COMMAND_TIMEOUT * 1000:.0f} ms)')
    # The last command before the blackout reached the bridge at most one way (<= 40 ms) after
    # its start; the deadman then needs command_timeout; loose: + 300 ms for a busy machine
    # (498 ms measured on a quiet one, 643 ms at load average 6 on 2 cores).
    assert stop[0] - start <= COMMAND_TIMEOUT + 0.3
    assert not [m for m in twists if stop[0] < m[0] < end and m.moving], \
        'the car moved again during the blackout'


# What the page exposes for a test (window.videoBridge): the control socket's client id (a new
# one after every reconnect), the WebRTC attempt counter and stall count, and every shown
# frame's age (camera stamp -> drawn, through the page's clock sync with the bridge).
PAGE_STATE = """() => { const b = window.videoBridge;
    return {client: b.control.clientId, generation: b.webrtc.generation,
            stalls: b.webrtc.stalls, status: b.webrtc.status, displayed: b.webrtc.displayed,
            transport: document.getElementById('stat-transport').dataset.value}; }"""
TAKE_AGES = """() => { const v = window.videoBridge.webrtc;
    const ages = v.latencySamples.slice(); v.latencySamples.length = 0; return ages; }"""


# 10 s windows the lte-poor page test watches: a minute without a reconnect or a growing lag.
WINDOWS = 6


def test_the_page_holds_a_slow_live_link_on_lte_poor_without_a_growing_lag(remote, cmd_vel):
    """Headless Chromium behind lte-poor: a minute of WebRTC video and a held key.

    The page's timers (stall watch, probe deadline, reconnect backoff) must not give up a slow
    but live connection: the same control client, the same WebRTC attempt, no stall, all the
    time. The picture's age must not grow (the bridge keeps no backlog; Chromium's jitter
    buffer drops what it cannot show in time), and the held key keeps the car going. Where the
    frames go: the link loses none for good (NACKs answered from the sender's history, frames
    decoded as sent). Loose bounds: the figures themselves are benchmark results (bench/run
    links).
    """
    lab = remote('lte-poor')
    url = f'http://{EDGE_IP}:{lab.bridge.port}/?token={TOKEN}'
    with chromium(WEBRTC_CHROMIUM_ARGS, namespace=lab.path.far) as browser:
        context = browser.new_context(viewport={'width': 1280, 'height': 800})
        page = context.new_page()
        errors = []
        page.on('pageerror', lambda error: errors.append(str(error)))
        page.goto(url)
        page.wait_for_function("document.getElementById('stat-transport').dataset.value"
                               " === 'webrtc' && window.videoBridge.webrtc.displayed > 30",
                               timeout=30000)
        before = page.evaluate(PAGE_STATE)
        mark = cmd_vel.mark()
        page.keyboard.down('ArrowUp')
        cmd_vel.wait_last(mark, 0.25, 0.0, 'forward at 50 % speed', timeout=10)
        held = cmd_vel.mark()
        page.evaluate(TAKE_AGES)
        receiver = [page.evaluate(RECEIVER_STATS)]
        sender = [sender_media(lab.bridge.http, TOKEN)]
        ages = []
        for _ in range(WINDOWS):                # watched in 10 s windows
            page.wait_for_timeout(10000)
            ages.append(page.evaluate(TAKE_AGES))
            assert page.evaluate(PAGE_STATE)['status'] == 'playing'
        receiver.append(page.evaluate(RECEIVER_STATS))
        sender.append(sender_media(lab.bridge.http, TOKEN))
        twists = cmd_vel.since(held)
        page.keyboard.up('ArrowUp')
        after = page.evaluate(PAGE_STATE)
        context.close()
    medians = [statistics.median(window) if window else math.nan for window in ages]
    shown = (after['displayed'] - before['displayed'])
    false_stops = sum(1 for m in twists if not m.moving)
    got = {k: receiver[1][k] - receiver[0].get(k, 0) for k in receiver[1] if k != 'rtt'}
    sent = {k: v - sender[0].get(k, 0) for k, v in sender[1].items()
            if isinstance(v, (int, float)) and k not in ('estimate', 'keyframe_max', 'layer')}
    why = sender[1].get('why', {})
    seconds = WINDOWS * 10
    figure(f'Chromium on lte-poor, {seconds} s: {shown / seconds:.1f} frames/s shown, age median '
           f'per 10 s window {[round(m * 1000) for m in medians]} ms, {len(twists)} commands on '
           f'/cmd_vel, false stops {false_stops}')
    figure(f'lte-poor, {seconds} s, bridge: {sent} switches wanted since the start {why}; '
           f'Chromium: {got}, rtt {receiver[1].get("rtt")}')
    assert (after['client'], after['generation'], after['stalls']) == \
        (before['client'], before['generation'], before['stalls']), \
        f'the page gave up a slow but live link: {before} -> {after}'
    assert not errors, errors
    # Frame rate and false stops are benchmark figures (bench/run links, with goals there);
    # here only: never frozen for a window, and the held key not dropped again and again.
    assert all(len(window) >= 20 for window in ages), f'frozen: {[len(w) for w in ages]} frames'
    # A backlog grows without bound: the last window would be seconds behind the first.
    assert medians[-1] - min(medians[:2]) <= 0.25, f'the age of the picture grew: {medians}'
    assert false_stops <= 3, f'the held key kept the car going: {false_stops} false stops'
    # Loss is repaired, not passed on: every NACKed packet still in the sender's history
    # (aiortc keeps 128), and Chromium decodes (nearly) every unit the bridge sent.
    assert sent['retransmitted'] >= 0.9 * sent['nacked'], f'NACKs not answered: {sent}'
    assert got['framesDecoded'] >= 0.8 * sent['units'], f'frames lost on the way: {got} {sent}'
