"""Links benchmark: video and teleop from the robot to an operator over emulated links.

Why: every other figure of the project is from a perfect link. Here the operator sits behind a
link emulator (test/support/link_emulator.py, profiles in test/support/link_profiles.yaml):
this process's private namespace is the robot (bench/publisher.py as the camera, the installed
bridge_node, an rclpy subscriber on /cmd_vel), and a lab splices a router carrying the profile
between it and an operator namespace, where an asyncio loop (test/support/remote_session.py)
watches and drives:

* webrtc: /control signalling, an aiortc viewer (decoded frames, stamped through the bridge's
  RTP-to-stamp messages), a held key on the data channel (a velocity every 50 ms);
* websocket: the JPEG fallback on /video/camera, the held key on the /control websocket;
* chromium: the bridge's own page in headless Chromium (Playwright, launched through
  ``ip netns exec`` into the operator namespace) on ?transport=webrtc, the held key an ArrowUp
  kept down: frames shown are requestVideoFrameCallback calls, glass-to-glass the page's own
  per-frame age (camera stamp -> shown, through its clock sync with the bridge). The page
  sends one constant velocity, so commands cannot be matched to arrivals: no command figures.
  A second table gives Chromium's getStats (inbound-rtp) and the bridge's per-peer media
  counters (/api/streams) for the window: where frames go on the way.

Per profile and path, over --duration s after --warmup s: frames shown per second, freezes
(> 200 ms without a new frame, per minute), glass-to-glass (arrival - header.stamp, same machine
clock) p50/p95/p99 in excess of the profile's one-way delay, commands (send -> /cmd_vel)
p50/p99 in excess of that delay, and false deadman stops (zero Twists on /cmd_vel while the key
was held). --markdown FILE also writes the table with the date, commit and command.

Profiles with a schedule (blackouts, rate steps: handover, congestion) also get event-aligned
figures in a second table: the measured window starts --lead s before the schedule's next
period (so a 60 s window holds each event of a 60 s schedule once), and per event:

* a blackout: ms from its end to the first frame shown after it and to the first frame captured
  after it (fresh), whether the session reconnected (aiortc: a peer connection state other than
  connected, or /control closed; the page: a new WebRTC generation or a /control status change),
  for a gap shorter than command_timeout whether a zero Twist reached /cmd_vel while the key was
  held (a false stop), for a longer one ms from its start to the first zero Twist (the deadman)
  and, after a reconnect, whether the car moved again with no new key press;
* a rate step down: ms until a 1 s sliding window's glass-to-glass p95 is back <= +150 ms for
  good (a window without frames counts as not back), and its peak p95;
* a rate step up: ms until the bridge has the peer back on layer 0 (the top one), from
  /api/streams ``webrtc.media`` polled every 0.2 s (layer, switches and their reasons).

Run through bench/run (private network namespace, own ROS_DOMAIN_ID): bench/run links
[--profiles lan,lte,lte-poor] [--paths webrtc,websocket,chromium] [--duration 20].
"""

import argparse
import asyncio
import datetime
import json
import math
import os
import subprocess
import sys
import threading
import time

import benchlib
from benchlib import fmt, pct, table

sys.path.insert(0, os.path.join(benchlib.ROOT, 'test'))
from support import link_emulator  # noqa: E402 (test/ on sys.path first)
from support.page_probes import RECEIVER_STATS, sender_media  # noqa: E402
from support.remote_session import (Control, Driver, run_in_namespace, start_session,  # noqa
                                    until, WebsocketSender, WebsocketViewer)

TOKEN = 'links-bench-token'
EDGE_IP = link_emulator.EDGE_ADDRESS.split('/')[0]
COMMAND_PERIOD = 0.05
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-quic',
                 '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--disable-features=WebRtcHideLocalIpsWithMdns',
                 '--autoplay-policy=no-user-gesture-required']
# Every frame the page's WebRTC <video> shows: its page time (ms), for frame gaps; and
# benchTimed: [wall ms (the page's own clock, pageNow), age s or null] per frame, the age as the
# page computes it (its stamp table and clock sync), for the event-aligned figures; and
# benchStates: [wall ms, control status, WebRTC generation, WebRTC status, you drive] on change.
WATCH_FRAMES = """() => { const w = window.videoBridge.webrtc; const v = w.video;
    window.benchShown = []; window.benchTimed = []; window.benchStates = [];
    const f = (now, meta) => { window.benchShown.push(performance.now());
      if (window.benchShown.length > 100000) window.benchShown.shift();
      const at = w.now(); const entry = meta?.rtpTimestamp !== undefined
        ? w.stamps.lookup(meta.rtpTimestamp) : null;
      window.benchTimed.push([at, entry ? w.clock.age(entry.stamp, at) : null]);
      if (window.benchTimed.length > 100000) window.benchTimed.shift();
      v.requestVideoFrameCallback(f); };
    v.requestVideoFrameCallback(f);
    let last = '';
    window.benchWatch = setInterval(() => { const b = window.videoBridge;
      const state = [b.control.status, w.generation, w.status, b.drive.youDrive];
      const key = JSON.stringify(state);
      if (key !== last && window.benchStates.length < 10000) {
        last = key; window.benchStates.push([w.now(), ...state]); } }, 20); }"""
TAKE_FRAMES = """() => { const v = window.videoBridge.webrtc; const s = v.latencySamples.slice();
    v.latencySamples.length = 0; const shown = window.benchShown.slice();
    window.benchShown.length = 0; const timed = window.benchTimed.slice();
    window.benchTimed.length = 0;
    return {ages: s, shown, timed, states: window.benchStates.slice(), now: performance.now(),
            wall: v.now()}; }"""


class CmdVelLog:
    """(time.monotonic(), linear.x) of every /cmd_vel message, from an rclpy thread."""

    def __init__(self):
        import rclpy
        from geometry_msgs.msg import Twist
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('links_bench', context=self.context)
        self.arrivals = []
        self.node.create_subscription(
            Twist, '/cmd_vel', lambda m: self.arrivals.append((time.monotonic(), m.linear.x,
                                                               m.angular.z)),
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def close(self):
        import rclpy
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(5)


async def operate(url: str, path_kind: str, warmup: float, duration: float, start_at=None):
    """One operator session: watch and drive; return records, sends, window, problems.

    ``start_at(now)``: the monotonic time the measured window starts at (after the warm-up).
    """
    problems = []
    if start_at is not None:          # connect just in time: no outage before the window
        target = start_at(time.monotonic() + warmup + SETUP_S)
        await asyncio.sleep(max(0.0, target - warmup - SETUP_S - time.monotonic()))
    if path_kind == 'webrtc':
        control, viewer = await start_session(url, TOKEN)
        await until(lambda: len(viewer.records) >= 30, 30, '30 decoded frames')
        await asyncio.wait_for(viewer.channel_open.wait(), 10)
        channel = viewer.channel
    else:
        control = await Control.connect(url, TOKEN)
        await control.wait('hello')
        viewer = WebsocketViewer()
        await viewer.start(url, token=TOKEN)
        await until(lambda: len(viewer.records) >= 10, 30, '10 frames')
        channel = WebsocketSender(control)
    await control.send(type='acquire', id='a')
    await control.wait('ack', 'a')
    driver = Driver(channel, COMMAND_PERIOD)
    driver.start()
    await asyncio.sleep(warmup)       # the warm-up before the measured window
    if start_at is not None:          # the schedule's phase (a wait on the clock, by design)
        await asyncio.sleep(max(0.0, start_at(time.monotonic()) - time.monotonic()))
    window = (time.monotonic(), time.time())
    await asyncio.sleep(duration)     # the measured window
    end = (time.monotonic(), time.time())
    await driver.stop()
    if path_kind == 'webrtc' and viewer.reconnected():
        problems.append(f'peer connection states {viewer.states}')
    if control.closed_at is not None:
        problems.append('the /control websocket closed')
    records = list(viewer.records)
    states = list(getattr(viewer, 'states', []))
    closed_at = control.closed_at
    await viewer.close()
    await control.close()
    return {'records': records, 'sent': list(driver.sent), 'window': (window, end),
            'problems': problems, 'states': states, 'control_closed_at': closed_at}


def measure(result: dict, cmd_vel: list, delay_ms: float) -> dict:
    (t0, w0), (t1, w1) = result['window']
    seconds = t1 - t0
    shown = [(arrival, stamp) for arrival, stamp in result['records'] if w0 <= arrival < w1]
    arrivals = [arrival for arrival, _ in shown]
    gaps = [b - a for a, b in zip([w0] + arrivals, arrivals + [w1])]
    lags = [1000 * (arrival - stamp) - delay_ms for arrival, stamp in shown
            if not math.isnan(stamp)]
    sent = [(at, value) for at, value in result['sent'] if t0 <= at < t1]
    first = {}
    for at, x, _ in cmd_vel:
        first.setdefault(round(x, 6), at)
    commands = [1000 * (first[value] - at) - delay_ms for at, value in sent if value in first]
    # False stops: a zero Twist while the key was held (after the first command of the window
    # arrived, before the last one was sent).
    held_from = min((first[v] for _, v in sent if v in first), default=t1)
    stops, moving = 0, True
    for at, x, z in cmd_vel:
        if held_from <= at < t1:
            if moving and x == 0.0 and z == 0.0:
                stops += 1
            moving = x != 0.0 or z != 0.0
    return {
        'fps': len(shown) / seconds,
        'freezes_per_min': sum(1 for gap in gaps if gap > 0.2) * 60 / seconds,
        'lag': (pct(lags, 50), pct(lags, 95), pct(lags, 99)),
        'commands': (pct(commands, 50), pct(commands, 99)),
        'commands_lost': len(sent) - len(commands),
        'false_stops': stops,
        'problems': result['problems'],
    }


def operate_chromium(far: str, url: str, port: int, warmup: float, duration: float,
                     cmd_vel: 'CmdVelLog', jitter_target=None, start_at=None) -> dict:
    """The page in headless Chromium in namespace ``far``: watch and hold ArrowUp."""
    import tempfile
    from playwright.sync_api import sync_playwright
    problems = []
    with tempfile.TemporaryDirectory(prefix='links-chromium-') as folder, \
            sync_playwright() as playwright:
        wrapper = os.path.join(folder, 'chromium')
        with open(wrapper, 'w') as out:
            out.write(f'#!/bin/sh\nexec ip netns exec {far} {CHROMIUM} "$@"\n')
        os.chmod(wrapper, 0o700)
        if start_at is not None:      # connect just in time: no outage before the window
            target = start_at(time.monotonic() + warmup + SETUP_S)
            time.sleep(max(0.0, target - warmup - SETUP_S - time.monotonic()))
        browser = playwright.chromium.launch(executable_path=wrapper, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={'width': 1280, 'height': 800})
            page.goto(f'{url}/?transport=webrtc&token={TOKEN}')
            page.wait_for_function("document.getElementById('stat-transport').dataset.value"
                                   " === 'webrtc' && window.videoBridge.webrtc.displayed > 30",
                                   timeout=30000)
            state = 'window.videoBridge.webrtc.generation'
            generation = page.evaluate(state)
            if jitter_target is not None:   # an experiment: Chromium's jitter buffer minimum
                page.evaluate(f"""() => {{ for (const r of window.videoBridge.webrtc.pc
                    .getReceivers()) if (r.track?.kind === 'video')
                    r.jitterBufferTarget = {jitter_target}; }}""")
            page.evaluate(WATCH_FRAMES)
            page.keyboard.down('ArrowUp')
            page.wait_for_timeout(warmup * 1000)
            if start_at is not None:    # the schedule's phase (a wait on the clock, by design)
                page.wait_for_timeout(1000 * max(0.0, start_at(time.monotonic())
                                                 - time.monotonic()))
            page.evaluate(TAKE_FRAMES)
            bridge = f'http://127.0.0.1:{port}'
            before = (page.evaluate(RECEIVER_STATS), sender_media(bridge, TOKEN))
            mark = len(cmd_vel.arrivals)
            window = (time.monotonic(), time.time())
            page.wait_for_timeout(duration * 1000)
            asked = time.monotonic()
            frames = page.evaluate(TAKE_FRAMES)
            end = (time.monotonic(), time.time())
            # the page's wall clock (ms) -> monotonic s: the reply's midpoint
            frames['offset'] = frames['wall'] / 1000 - (asked + end[0]) / 2
            after = (page.evaluate(RECEIVER_STATS), sender_media(bridge, TOKEN))
            held = cmd_vel.arrivals[mark:]     # before the key goes up (and the car stops)
            page.keyboard.up('ArrowUp')
            if page.evaluate(state) != generation:
                problems.append('the page restarted WebRTC')
        finally:
            browser.close()
    return {'frames': frames, 'window': (window, end), 'before': before, 'after': after,
            'held': held, 'problems': problems}


def measure_chromium(result: dict, delay_ms: float) -> dict:
    (t0, _), (t1, _) = result['window']
    seconds = t1 - t0
    frames = result['frames']
    shown = frames['shown']
    start = frames['now'] - seconds * 1000
    gaps = [b - a for a, b in zip([start] + shown, shown + [frames['now']])]
    lags = [1000 * age - delay_ms for age in frames['ages']]
    stops, moving = 0, True
    for at, x, z in result['held']:
        if moving and x == 0.0 and z == 0.0:
            stops += 1
        moving = x != 0.0 or z != 0.0
    (page0, bridge0), (page1, bridge1) = result['before'], result['after']
    page = {k: page1.get(k, 0) - page0.get(k, 0) for k in page1 if k != 'rtt'}
    bridge = {k: bridge1[k] - bridge0.get(k, 0) for k in bridge1
              if isinstance(bridge1[k], (int, float)) and
              k not in ('estimate', 'keyframe_max', 'layer')}
    per_s = {k: v / seconds for k, v in page.items()}
    return {
        'fps': len(shown) / seconds,
        'freezes_per_min': sum(1 for gap in gaps if gap > 200) * 60 / seconds,
        'lag': (pct(lags, 50), pct(lags, 95), pct(lags, 99)),
        'commands': (math.nan, math.nan),
        'commands_lost': '-',
        'false_stops': stops,
        'problems': result['problems'],
        'receiver': {
            'bridge frames in/s': bridge.get('frames_in', 0) / seconds,
            'units sent/s': bridge.get('units', 0) / seconds,
            'received/s': per_s.get('framesReceived', 0),
            'decoded/s': per_s.get('framesDecoded', 0),
            'Chromium freezes/min': page.get('freezeCount', 0) * 60 / seconds,
            'lost pkts': page.get('packetsLost', 0), 'NACKs': page.get('nackCount', 0),
            'retransmitted': bridge.get('retransmitted', 0), 'PLIs': page.get('pliCount', 0),
            'keyframes': bridge.get('keyframes', 0),
            'layer switches': bridge.get('switches', 0), 'layer': bridge1.get('layer', '-'),
            'wanted since start': ' '.join(f'{k} {v}' for k, v in bridge1.get('why', {}).items())
            or '-',
            'jitter buffer ms': 1000 * page.get('jitterBufferDelay', 0) / max(
                1, page.get('jitterBufferEmittedCount', 0)),
            'playout delay': '-' if bridge1.get('playout_delay') is None
            else '{}..{}'.format(*bridge1['playout_delay']),
            'delay changes': bridge1.get('playout_delay_changes', '-'),
            'kbit/s': page.get('bytesReceived', 0) * 8 / seconds / 1000,
            'rtt ms': 1000 * page1.get('rtt', 0)},
    }


# --- event-aligned figures (profiles with a schedule: handover, congestion) --------------------

RECOVERED_P95_MS = 150.0    # issue 19's congestion goal: p95 back <= +150 ms
SLIDING_S = 1.0             # the sliding window of that p95
GRID_S = 0.05               # where the sliding window is evaluated
LAYER_POLL_S = 0.2
COMMAND_TIMEOUT = 0.5       # the bridge's default command_timeout (s); the bench keeps it
# A session connects about this long (+ the warm-up) before its aligned window, so its start
# sees none of the schedule's outages (the aiortc viewer does not reconnect by itself).
SETUP_S = 8.0


def schedule_period(spec: dict) -> float:
    """The period of a profile's schedule (s), or 0 when it has none."""
    periods = [entry.get('every_s') or 0 for entry in spec.get('blackouts') or []]
    for direction in link_emulator.DIRECTIONS:
        settings = link_emulator.direction_settings(spec, direction)
        if settings.get('rate_steps_mbit'):
            periods.append(settings.get('step_s', 20) * len(settings['rate_steps_mbit']))
    return max(periods, default=0)


def aligned_start(t0: float, period: float, lead: float):
    """A start_at(now) giving the next time ``lead`` s after a period of the schedule began
    (and at least now)."""
    def start_at(now: float) -> float:
        periods = math.ceil((now - t0 - lead) / period)
        return max(now, t0 + lead + max(0, periods) * period)
    return start_at


def schedule_events(link, spec: dict, begin: float, end: float) -> list:
    """The profile's events whose start is in [begin, end): ('blackout', start, stop),
    ('down'|'up', at, rate from, rate to), ordered by time."""
    events = [('blackout', start, stop) for start, stop in link.scheduled_blackouts(end)
              if start >= begin]
    for direction in link_emulator.DIRECTIONS:
        settings = link_emulator.direction_settings(spec, direction)
        steps = settings.get('rate_steps_mbit') or []
        step_s = settings.get('step_s', 20)
        index = 1
        while steps and link.t0 + index * step_s < end:
            at = link.t0 + index * step_s
            before, after = steps[(index - 1) % len(steps)], steps[index % len(steps)]
            if at >= begin and before != after:
                events.append(('down' if after < before else 'up', at, before, after))
            index += 1
    return sorted(events, key=lambda event: event[1])


class LayerLog:
    """Polls the bridge's /api/streams ``webrtc.media`` from a thread: (monotonic, {peer:
    (layer, switches, reasons)}) whenever it changes, for the layer figures."""

    def __init__(self, port: int):
        self.url = f'http://127.0.0.1:{port}/api/streams'
        self.samples = []
        # (monotonic, {peer: [send_backlog_peak, congestion_skips, units sent, bytes sent]})
        self.sending = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import urllib.request
        last = None
        while not self._stop.wait(LAYER_POLL_S):
            request = urllib.request.Request(self.url,
                                             headers={'Authorization': f'Bearer {TOKEN}'})
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    webrtc = json.load(response).get('webrtc', {})
                media = webrtc.get('media', {})
                sending = {peer: [webrtc.get('send_backlog_peak', {}).get(peer),
                                  webrtc.get('congestion_skips', {}).get(peer),
                                  m.get('units'), m.get('bytes')]
                           for peer, m in media.items()}
            except Exception:   # counted; one lost poll only blurs a figure by 0.2 s
                self.errors += 1
                continue
            state = {peer: (m.get('layer'), m.get('switches'), m.get('why'))
                     for peer, m in media.items()}
            if state != last:
                self.samples.append((time.monotonic(), state))
                last = state
            if sending and (not self.sending or self.sending[-1][1] != sending):
                self.sending.append((time.monotonic(), sending))

    def stop(self) -> list:
        self._stop.set()
        self._thread.join(5)
        return self.samples

    @staticmethod
    def layer(state: dict):
        """The layer of the newest peer in a sample (None without a peer)."""
        return list(state.values())[-1][0] if state else None


def first_after(times, at: float):
    return next((t for t in times if t >= at), None)


def ms(value):
    return math.nan if value is None else 1000 * value


def event_figures(events: list, frames: list, cmd_vel: list, sessions: list, layers: list,
                  window: tuple, delay_ms: float, command_timeout: float) -> list:
    """Rows (event, at s into the window, figure, value, goal, met) of one path.

    frames: (shown, captured) monotonic s per frame shown (captured nan when unknown);
    cmd_vel: (monotonic, x, z) while the key was held; sessions: monotonic times of a
    reconnect (or a session lost); layers: LayerLog samples.
    """
    w0, w1 = window
    shown = [at for at, _ in frames]
    rows = []
    for index, event in enumerate(events):
        kind, start = event[0], event[1]
        at = f'{start - w0:.1f}'
        # the next event of the same family (a blackout's or a rate step's), or the window's end
        following = next((e[1] for e in events[index + 1:]
                          if (e[0] == 'blackout') == (kind == 'blackout')), w1)
        if kind == 'blackout':
            stop = event[2]
            length = stop - start
            name = f'blackout {1000 * length:.0f} ms'
            back = first_after(shown, stop)
            fresh = next((t for t, captured in frames if t >= stop and captured >= stop), None)
            back_goal = 500 if length < 1 else 1500
            value = ms(None if back is None or back >= following else back - stop)
            rows.append((name, at, 'first frame after its end ms', fmt(value, 0),
                         f'<= {back_goal}', yes(value <= back_goal)))
            value = ms(None if fresh is None or fresh >= following else fresh - stop)
            rows.append((name, at, 'first frame captured after its end ms', fmt(value, 0),
                         '-', '-'))
            lost = [t for t in sessions if start <= t < min(following, stop + 5)]
            rows.append((name, at, 'reconnected (or session lost)', 'yes' if lost else 'no',
                         'no' if length < 1 else '-', yes(not lost) if length < 1 else '-'))
            zeros = [t for t, x, z in cmd_vel if x == 0.0 and z == 0.0]
            driving = [t for t, x, z in cmd_vel if start - 1 <= t < start and (x or z)]
            rows.append((name, at, 'car moving in the 1 s before it (/cmd_vel)',
                         'yes' if driving else 'no', 'yes', yes(driving)))
            if length < command_timeout:
                stops = [t for t in zeros if start <= t < stop + 1]
                rows.append((name, at, 'false stops (zero Twist, key held)', len(stops), '0',
                             yes(not stops)))
            else:
                stop_at = first_after(zeros, start)
                value = ms(None if stop_at is None else stop_at - start)
                goal = 1000 * command_timeout + 20
                rows.append((name, at, 'deadman: zero Twist after its start ms', fmt(value, 0),
                             f'<= {goal:.0f}', yes(value <= goal)))
                if lost:
                    moving = [t for t, x, z in cmd_vel if t > lost[0] and (x or z)]
                    value = ms(moving[0] - stop) if moving else math.nan
                    rows.append((name, at, 'moved again after the reconnect (key kept down, '
                                 'no new press) ms after its end', fmt(value, 0), 'never',
                                 yes(not moving)))
        elif kind == 'down':
            name = f'rate {event[2]:g} -> {event[3]:g} Mbit/s'
            bad, peak, t = None, -math.inf, start
            while t + GRID_S <= following:
                t += GRID_S
                lags = [1000 * (a - c) - delay_ms for a, c in frames
                        if t - SLIDING_S <= a < t and not math.isnan(c)]
                p95 = pct(lags, 95)
                if not lags or p95 > RECOVERED_P95_MS:
                    bad = t
                peak = max(peak, p95) if lags else peak
            value = 0.0 if bad is None else 1000 * (bad - start)
            settled = bad is None or bad < following - GRID_S / 2
            rows.append((name, at, f'1 s p95 back <= +{RECOVERED_P95_MS:.0f} ms for good, ms',
                         fmt(value, 0) if settled else f'not by +{following - start:.0f} s',
                         '<= 3000', yes(settled and value <= 3000)))
            rows.append((name, at, '1 s p95 peak +ms', fmt(peak if peak > -math.inf
                                                           else math.nan, 0), '-', '-'))
        elif kind == 'up' and not any(state for _, state in layers):
            rows.append((f'rate {event[2]:g} -> {event[3]:g} Mbit/s', at, 'back on layer 0 ms',
                         'no WebRTC peer', '-', '-'))
        elif kind == 'up':
            name = f'rate {event[2]:g} -> {event[3]:g} Mbit/s'
            before = [LayerLog.layer(state) for t, state in layers if t <= start]
            low = [LayerLog.layer(state) for t, state in layers
                   if start - 20 <= t <= start] + before[-1:]
            top = next((t for t, state in layers if t >= start and LayerLog.layer(state) == 0),
                       None)
            if before and before[-1] == 0:
                value = 0.0
            else:
                value = ms(None if top is None or top >= following else top - start)
            rows.append((name, at, 'lowest layer in the 20 s before', max(
                (x for x in low if x is not None), default='-'), '-', '-'))
            rows.append((name, at, 'back on layer 0 ms', fmt(value, 0)
                         if not math.isnan(value) else f'not by +{following - start:.0f} s',
                         '<= 10000', yes(value <= 10000)))
    rows.append(('whole session', '-', 'reconnects or session lost at s (into the window)',
                 ' '.join(f'{t - w0:.1f}' for t in sessions) or 'none', '-', '-'))
    with_peer = [state for _, state in layers if state]
    if with_peer:
        _, switches, reasons = list(with_peer[-1].values())[-1]
        rows.append(('whole session', '-', 'layer switches of the last peer (reasons wanted)',
                     f"{switches} ({' '.join(f'{k} {v}' for k, v in (reasons or {}).items())})",
                     '-', '-'))
    return rows


def yes(flag) -> str:
    return 'yes' if flag else 'NO'


def aiortc_events(result: dict, cmd_vel: list, offset: float) -> tuple:
    """frames, held /cmd_vel and session losses of the aiortc (or websocket) path."""
    (t0, _), (t1, _) = result['window']
    frames = [(arrival - offset, stamp - offset) for arrival, stamp in result['records']]
    sent = [at for at, _ in result['sent'] if t0 <= at < t1]
    held = [(at, x, z) for at, x, z in cmd_vel if sent and sent[0] <= at < t1]
    states = result.get('states') or []
    seen_connected = False
    sessions = []
    for at, state in states:
        if state == 'connected':
            seen_connected = True
        elif seen_connected:
            sessions.append(at)
    if result.get('control_closed_at') is not None and result['control_closed_at'] < t1:
        sessions.append(result['control_closed_at'])
    return frames, held, sorted(sessions)


def chromium_events(result: dict) -> tuple:
    """frames, held /cmd_vel and reconnects of the page (its clock mapped to monotonic)."""
    frames = result['frames']
    offset = frames['offset']
    timed = [(at / 1000 - offset, at / 1000 - offset - age if age is not None else math.nan)
             for at, age in frames['timed']]
    sessions, previous = [], None
    for at, status, generation, webrtc_status, _ in frames['states']:
        if previous is not None and (generation != previous[1] or status != previous[0]):
            sessions.append(at / 1000 - offset)
        previous = (status, generation)
    return timed, result['held'], sessions


def run_profile(name: str, options, port: int, cmd_vel: CmdVelLog) -> list:
    spec = link_emulator.profile(name)
    delay_ms = spec.get('delay_ms', 0)
    period = schedule_period(spec)
    rows = []
    log_dir = os.path.join(benchlib.ROOT, 'bench', 'results', 'links-lab')
    with link_emulator.emulated_path(name, log_dir, edge='self') as path:
        url = f'ws://{EDGE_IP}:{port}'
        start_at = None
        if period and path.link.t0 is not None and options.duration >= period:
            start_at = aligned_start(path.link.t0, period, options.lead)
        for kind in options.paths:
            mark = len(cmd_vel.arrivals)
            layers = LayerLog(port) if start_at else None
            try:
                if kind == 'chromium':
                    result = operate_chromium(path.far, f'http://{EDGE_IP}:{port}', port,
                                              options.warmup, options.duration, cmd_vel,
                                              options.jitter_target, start_at)
                    figures = measure_chromium(result, delay_ms)
                else:
                    result = run_in_namespace(
                        path.far, lambda: operate(url, kind, options.warmup, options.duration,
                                                  start_at),
                        options.warmup + options.duration + period + 90)
                    figures = measure(result, cmd_vel.arrivals[mark:], delay_ms)
                if start_at:
                    if kind == 'chromium':
                        frames, held, sessions = chromium_events(result)
                    else:
                        frames, held, sessions = aiortc_events(
                            result, cmd_vel.arrivals[mark:], time.time() - time.monotonic())
                    (t0, _), (t1, _) = result['window']
                    events = schedule_events(path.link, spec, t0, t1)
                    samples = layers.stop()
                    figures['events'] = event_figures(
                        events, frames, held, sessions, samples, (t0, t1), delay_ms,
                        COMMAND_TIMEOUT)
                    # the raw series behind them (monotonic s), to look into a figure later
                    with open(os.path.join(log_dir, f'events-{name}-{kind}.json'), 'w') as out:
                        json.dump({'window': [t0, t1], 'events': events, 'frames': frames,
                                   'cmd_vel': held, 'sessions': sessions, 'layers': samples,
                                   'sending': layers.sending, 'delay_ms': delay_ms}, out)
                    if layers.errors:
                        figures['problems'].append(f'{layers.errors} /api/streams polls failed')
            except Exception as error:   # one path failing leaves the others their rows
                figures = {'fps': 0.0, 'freezes_per_min': math.nan, 'lag': (math.nan,) * 3,
                           'commands': (math.nan,) * 2, 'commands_lost': '-',
                           'false_stops': '-', 'problems': [f'{type(error).__name__}: '
                                                            f'{str(error)[:120]}']}
            finally:
                if layers is not None:
                    layers.stop()
            rows.append((name, kind, figures))
            print(f'{name} {kind}: {json.dumps(figures)}', flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--profiles', default='lan,lte,lte-poor')
    parser.add_argument('--paths', default='webrtc,websocket,chromium')
    parser.add_argument('--duration', type=float, default=20.0, help='measured window (s)')
    parser.add_argument('--warmup', type=float, default=3.0)
    parser.add_argument('--lead', type=float, default=5.0,
                        help='scheduled profiles: the window starts this long after a period '
                        'of the schedule began (when --duration covers a period)')
    parser.add_argument('--jitter-target', type=float, default=None,
                        help='chromium: set jitterBufferTarget (ms) on the video receiver')
    parser.add_argument('--markdown', help='also write the table (markdown) to this file')
    benchlib.add_before_option(parser)
    options = parser.parse_args()
    benchlib.check_before(parser, options)
    options.paths = options.paths.split(',')
    benchlib.require_loopback_only()
    if os.geteuid() != 0:
        sys.exit('needs root: network namespaces, TUN devices, nftables, tc')
    benchlib.print_versions(options.before)
    before = benchlib.shm_segments()
    rows = []
    sides = [('now', '')] + ([('before', options.before)] if options.before else [])
    with benchlib.Rig() as rig:
        # Started while only loopback is up (the publisher checks); the lab comes after.
        publisher, _ = benchlib.start_publisher(rig, benchlib.VIDEO_TOPIC, 3600)
        cmd_vel = CmdVelLog()
        try:
            for index, name in enumerate(options.profiles.split(',')):
                # with --before, each profile runs both bridges, alternating which goes first
                for side, source in benchlib.alternating(sides, index):
                    bridge, port = benchlib.start_bridge(
                        rig, benchlib.VIDEO_TOPIC,
                        ['host:=0.0.0.0', f'webrtc_host_addresses:=["{EDGE_IP}"]'],
                        env={'VIDEO_BRIDGE_TOKEN': TOKEN}, source=source)
                    try:
                        label = f' {side}' if options.before else ''
                        rows += [(profile, kind + label, figures) for profile, kind, figures
                                 in run_profile(name, options, port, cmd_vel)]
                    finally:
                        rig.stop(bridge)
        finally:
            cmd_vel.close()
            rig.stop(publisher)
    headers = ['profile', 'path', 'fps shown', 'freezes/min', 'g2g p50 +ms', 'p95 +ms',
               'p99 +ms', 'cmd p50 +ms', 'cmd p99 +ms', 'cmds lost', 'false stops', 'problems']
    lines = [[name, kind, fmt(f['fps']), fmt(f['freezes_per_min']), *map(fmt, f['lag']),
              *map(fmt, f['commands']), f['commands_lost'], f['false_stops'],
              '; '.join(f['problems']) or '-'] for name, kind, f in rows]
    print(table(headers, lines))
    receiver = [(f'{name} {kind}', f['receiver']) for name, kind, f in rows if 'receiver' in f]
    receiver_headers, receiver_lines = [], []
    if receiver:
        receiver_headers = ['profile path', *receiver[0][1]]
        receiver_lines = [[name, *(fmt(v) if isinstance(v, float) else v
                                   for v in figures.values())] for name, figures in receiver]
        print(table(receiver_headers, receiver_lines))
    event_headers = ['profile', 'path', 'event', 'at s', 'figure', 'value', 'goal', 'met']
    event_lines = [[name, kind, *row] for name, kind, f in rows for row in f.get('events', [])]
    if event_lines:
        print('Event-aligned (at: s into the window; ms from the event):')
        print(table(event_headers, event_lines))
    benchlib.report_shm(before)
    if options.markdown:
        write_markdown(options, headers, lines, receiver_headers, receiver_lines,
                       event_headers, event_lines)


def write_markdown(options, headers, lines, receiver_headers=(), receiver_lines=(),
                   event_headers=(), event_lines=()):
    commit = subprocess.run(['git', '-C', benchlib.ROOT, 'rev-parse', '--short', 'HEAD'],
                            capture_output=True, text=True).stdout.strip()
    command = 'bench/run links ' + ' '.join(sys.argv[1:])
    with open(options.markdown, 'w') as out:
        out.write(f'# Video and teleop over emulated links\n\n'
                  f'Measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC at {commit}, '
                  f'{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}:\n\n'
                  f'    {command}\n\n')
        out.write('| ' + ' | '.join(headers) + ' |\n')
        out.write('|' + '---|' * len(headers) + '\n')
        for line in lines:
            out.write('| ' + ' | '.join(map(str, line)) + ' |\n')
        if receiver_lines:
            out.write('\nChromium (getStats) and the bridge (/api/streams), same window:\n\n')
            out.write('| ' + ' | '.join(receiver_headers) + ' |\n')
            out.write('|' + '---|' * len(receiver_headers) + '\n')
            for line in receiver_lines:
                out.write('| ' + ' | '.join(map(str, line)) + ' |\n')
        if event_lines:
            out.write('\nEvent-aligned (at: s into the window; ms from the event):\n\n')
            out.write('| ' + ' | '.join(event_headers) + ' |\n')
            out.write('|' + '---|' * len(event_headers) + '\n')
            for line in event_lines:
                out.write('| ' + ' | '.join(map(str, line)) + ' |\n')
    print(f'wrote {options.markdown}')


if __name__ == '__main__':
    main()
