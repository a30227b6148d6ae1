"""WebRTC beside websocket JPEG: encode cost, bits per viewer, bridge CPU, glass-to-glass, a cap.

Why this shape: WebRTC is there to save bandwidth and survive thin links without costing the
robot CPU per viewer. Four parts, each printed as a table (choose with --parts):

* ``encode``: ms per 640x480 frame and bit/s of each encoder the hub runs (JPEG q80, H.264
  layers at 1.2 / 0.6 / 0.3 Mbit/s, VP8 at 1.2 Mbit/s), in this process, on the publisher's
  synthetic scene. Target: <= 2 ms per frame per layer. ``--parts encode`` alone is the
  quick encode-only figure (a few seconds, no bridge, no browser).
* ``viewers``: the installed bridge_node, the camera stand-in (640x480 bgr8 at 30 fps) and K
  aiortc viewers (bench/webrtc_viewers.py, own processes, signalled over /control) for K in
  --viewers; per viewer fps, kbit/s (encoded payload) and latency, bridge CPU; beside it the same
  K as websocket JPEG viewers. Target: each extra WebRTC viewer <= 1 % of a core: the
  least-squares slope of bridge CPU over K, median over --rounds; --old-source DIR measures
  another checkout (say, the commit before a change) in the same run, alternating order.
* ``browser``: headless Chromium showing the page, forced to WebRTC and then to websocket JPEG:
  glass-to-glass latency (camera header.stamp to the frame shown, per frame) and fps, on
  loopback. Target: WebRTC p50 <= 60 ms.
* ``cap``: the same page in a second network namespace behind a veth whose bridge side is
  shaped by ``tc ... tbf`` to --cap (default 2 Mbit/s), RFC 5737 addresses; both transports.
  Target: WebRTC >= 25 fps with p99 < 250 ms.

Run through ``bench/run webrtc`` (private network namespace, own ROS_DOMAIN_ID). aioice never
offers 127.0.0.1 as a candidate, so the bench gives loopback 198.51.100.1/32 in its own
namespace; the cap part creates (and always deletes) namespace vbw-<pid> and its veth pair.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib
from benchlib import fmt, pct, table
import numpy as np

HOST_ADDRESS = '198.51.100.1'
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-quic',
                 '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--allow-loopback-in-peer-connection',
                 '--disable-features=WebRtcHideLocalIpsWithMdns',
                 '--autoplay-policy=no-user-gesture-required']
BRIDGE_SIDE, VIEWER_SIDE = '192.0.2.1', '192.0.2.2'


def sh(*argv, check=True):
    """Run one ip/tc command; its failure stops the part with the command's message."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f'{" ".join(argv)}: {done.stderr.strip()}')
    return done


# -- encode --------------------------------------------------------------------------------------

def part_encode(options) -> list:
    """Encode the publisher's scene with every encoder; ms per frame and bit/s."""
    sys.path.insert(0, os.path.join(benchlib.ROOT, 'src', 'video_bridge'))
    from publisher import scene
    from video_bridge.core import encoders
    frames = scene(640, 480, 60)
    cases = [('JPEG q80', lambda: encoders.JpegEncoder(80))]
    for rate in (1_200_000, 600_000, 300_000):
        cases.append((f'H.264 {rate / 1e6:g} Mbit/s', lambda r=rate: encoders.VideoEncoder(
            encoders.H264, r)))
    cases.append(('VP8 1.2 Mbit/s', lambda: encoders.VideoEncoder(encoders.VP8, 1_200_000)))
    rows = []
    for name, make in cases:
        encoder = make()
        times, cpu, sizes = [], [], []
        for index in range(options.encode_frames):
            picture = frames[index % len(frames)]
            started, started_cpu = time.perf_counter(), time.thread_time()
            unit = encoder.encode(picture, index * 3000, keyframe=False)
            times.append(1000 * (time.perf_counter() - started))
            cpu.append(1000 * (time.thread_time() - started_cpu))
            sizes.append(len(unit.data) if unit else 0)
        steady = times[30:]
        rows.append([name, fmt(statistics.mean(steady), 2), fmt(pct(steady, 95), 2),
                     fmt(statistics.mean(cpu[30:]), 2),
                     fmt(sum(sizes[30:]) * 8 * 30 / len(sizes[30:]) / 1000, 0)])
    print(f'\nEncode, 640x480 BGR, {options.encode_frames} frames (first 30 skipped), '
          'one thread of this process (CPU ms: this thread only, steadier on a busy machine):')
    print(table(['encoder', 'ms/frame mean', 'p95', 'CPU ms mean', 'kbit/s at 30 fps'], rows))
    return rows


# -- viewers ---------------------------------------------------------------------------------

def part_viewers(options):
    """K aiortc viewers vs K websocket viewers of the real bridge: CPU, fps, kbit/s, latency."""
    sides = [('new', '')] + ([('old', options.old_source)] if options.old_source else [])
    results, slopes = [], {side: [] for side, _ in sides}
    for round_ in range(options.rounds):
        # alternate the order, so neither side always runs on the warmer (or busier) machine
        for side, source in sides if round_ % 2 == 0 else sides[::-1]:
            cpu = {}
            for count in options.viewers:
                stats = webrtc_case(count, options, source)
                cpu[count] = stats['cpu']
                label = 'WebRTC H.264' + (f' {side}' if options.old_source else '')
                results.append((label, count, stats))
            if len(cpu) > 1:
                slopes[side].append(float(np.polyfit(list(cpu), list(cpu.values()), 1)[0]))
    for count in options.viewers:
        results.append(('websocket JPEG', count, websocket_case(count, options)))
    rows = []
    for kind, count, s in results:
        rows.append([kind, count, fmt(s['fps_min']), fmt(s['kbps_per_viewer'], 0),
                     fmt(s['p50']), fmt(s['p99']), fmt(s.get('wire_p50')),
                     fmt(s.get('wire_p99')), fmt(s['cpu']), fmt(s['viewers_cpu'])])
    print(f'\nViewers: 640x480 bgr8 at 30 fps, {options.duration:g} s window after '
          f'{options.warmup:g} s warm-up; kbit/s = encoded video per viewer (WebRTC: payload '
          'before RTP/SRTP/UDP headers; websocket: JPEG + 32-byte header)')
    print(table(['transport', 'K', 'fps min', 'kbit/s/viewer', 'latency p50 ms', 'p99',
                 'last packet p50 ms', 'p99', 'bridge CPU %', 'viewers CPU %'], rows))
    for side, values in slopes.items():
        if values:
            name = f'{side} bridge ({options.old_source})' if side == 'old' else 'this bridge'
            print(f'each extra WebRTC viewer, {name}: {statistics.median(values):.2f} % of a '
                  f'core (median over {len(values)} round(s): '
                  f'{", ".join(f"{v:.2f}" for v in values)}; least-squares slope over K = '
                  f'{",".join(map(str, options.viewers))}; target <= 1 %)')
    return results


def webrtc_case(count: int, options, source: str = '') -> dict:
    run_for = options.warmup + options.duration
    with benchlib.Rig(options.keep_logs) as rig:
        bridge, port = benchlib.start_bridge(
            rig, benchlib.VIDEO_TOPIC, [f'webrtc_host_addresses:=["{HOST_ADDRESS}"]'],
            source=source)
        benchlib.start_publisher(rig, benchlib.VIDEO_TOPIC, run_for + 60)
        outputs, workers = [], []
        per = max(1, options.per_worker)
        for first in range(0, count, per):
            out = rig.path(f'webrtc-{first}.json')
            n = min(per, count - first)
            workers.append(rig.start(f'webrtc-viewers-{first}', benchlib.python_argv(
                'webrtc_viewers.py', '--port', port, '--count', n, '--duration', run_for + 5,
                '--out', out)))
            outputs.append(out)
        time.sleep(options.warmup)
        window = benchlib.Window({child.name: child.pid for child in rig.children})
        window.begin()
        window.sleep(options.duration)
        window.end()
        for worker in workers:
            worker.wait(run_for + 30)
        records, errors = [], []
        for out in outputs:
            if os.path.exists(out):
                with open(out) as handle:
                    data = json.load(handle)
                records += data['records']
                errors += data['errors']
        for problem in errors[:5]:
            print(f'webrtc viewer problem: {problem}')
        stats = viewer_stats(records, window.t0, window.t1, count)
        stats['cpu'] = window.cpu_percent('bridge')
        stats['viewers_cpu'] = sum(window.cpu_percent(w.name) for w in workers)
    return stats


def viewer_stats(records, t0, t1, count) -> dict:
    fps, kbps, latency, wire = [], [], [], []
    for peer in records:
        inside = [r for r in peer if t0 <= r[0] <= t1]
        fps.append(len(inside) / (t1 - t0))
        # r[2]: bytes the bridge had sent this peer by its newest `frame` message (cumulative)
        sent = [(r[0], r[2]) for r in inside if not math.isnan(r[2])]
        if len(sent) >= 2 and sent[-1][0] > sent[0][0]:
            kbps.append((sent[-1][1] - sent[0][1]) * 8 / (sent[-1][0] - sent[0][0]) / 1000)
        latency += [(r[0] - r[1]) * 1000 for r in inside if not math.isnan(r[1])]
        wire += [(r[3] - r[1]) * 1000 for r in inside
                 if len(r) > 3 and not math.isnan(r[1]) and not math.isnan(r[3])]
    fps += [0.0] * (count - len(records))
    return {'fps_min': min(fps) if fps else math.nan, 'kbps_per_viewer': pct(kbps, 50),
            'p50': pct(latency, 50), 'p99': pct(latency, 99), 'wire_p50': pct(wire, 50),
            'wire_p99': pct(wire, 99)}


def websocket_case(count: int, options) -> dict:
    stats = benchlib.video_case(['/video/camera'] * count, options)
    records = stats['records']
    inside = records[(records[:, benchlib.V_RECV] >= stats['t0'])
                     & (records[:, benchlib.V_RECV] <= stats['t1'])]
    seconds = stats['t1'] - stats['t0']
    stats['kbps_per_viewer'] = inside[:, benchlib.V_SIZE].sum() * 8 / seconds / 1000 / count
    return stats


# -- browser ---------------------------------------------------------------------------------

# Every frame the page shows over WebRTC, with requestVideoFrameCallback's metadata, all in the
# bridge's clock (s): camera stamp, bridge received, Chromium's receive time (last packet of the
# frame), presentation (submitted for composition), and the callback. The page's own callback
# gives only the total; this one says where it goes.
FRAME_TIMES_START = """() => { const w = window.videoBridge.webrtc; const rows = [];
    window.benchFrames = rows;
    const onFrame = (now, m) => {
      if (window.benchFrames !== rows) return;
      const at = performance.now();
      const e = m.rtpTimestamp !== undefined ? w.stamps.lookup(m.rtpTimestamp) : null;
      const t = (ms) => (ms === undefined ? NaN : w.clock.bridgeTime(performance.timeOrigin + ms));
      if (e && w.clock.offset !== null && rows.length < 20000) {
        rows.push([e.stamp, e.received ?? NaN, t(m.receiveTime), t(m.presentationTime), t(at),
                   m.processingDuration === undefined ? NaN : m.processingDuration]);
      }
      w.video.requestVideoFrameCallback(onFrame);
    };
    w.video.requestVideoFrameCallback(onFrame); }"""

# Chromium's own counters of the video receiver (inbound-rtp): where a frame waits inside it
RECEIVER_COUNTERS = """async () => { const pc = window.videoBridge.webrtc.pc; if (!pc) return null;
    let found = null;
    (await pc.getStats()).forEach((e) => {
      if (e.type === 'inbound-rtp' && e.kind === 'video') found = e; });
    if (!found) return null;
    const keys = ['jitterBufferDelay', 'jitterBufferTargetDelay', 'jitterBufferMinimumDelay',
                  'jitterBufferEmittedCount', 'totalDecodeTime', 'totalProcessingDelay',
                  'totalAssemblyTime', 'framesAssembledFromMultiplePackets', 'framesDecoded',
                  'framesDropped', 'framesReceived', 'framesRendered', 'freezeCount'];
    return Object.fromEntries(keys.map((k) => [k, found[k] ?? null])); }"""


def receiver_breakdown(first: dict, last: dict) -> dict:
    """Per-frame ms inside Chromium over a window, from two getStats snapshots."""
    if not first or not last:
        return {}

    def delta(key):
        a, b = first.get(key), last.get(key)
        return math.nan if a is None or b is None else b - a

    emitted, decoded = delta('jitterBufferEmittedCount'), delta('framesDecoded')
    per_emitted = (lambda key: 1000 * delta(key) / emitted if emitted > 0 else math.nan)
    per_decoded = (lambda key: 1000 * delta(key) / decoded if decoded > 0 else math.nan)
    return {'jitter_buffer': per_emitted('jitterBufferDelay'),
            'jitter_target': per_emitted('jitterBufferTargetDelay'),
            'jitter_minimum': per_emitted('jitterBufferMinimumDelay'),
            'decode': per_decoded('totalDecodeTime'),
            'processing': per_decoded('totalProcessingDelay'),
            'assembly': 1000 * delta('totalAssemblyTime')
            / delta('framesAssembledFromMultiplePackets')
            if delta('framesAssembledFromMultiplePackets') > 0 else math.nan,
            'decoded': decoded, 'dropped': delta('framesDropped'),
            'freezes': delta('freezeCount')}


def stage_breakdown(rows: list) -> dict:
    """Median ms of each stage of the frames' way, from FRAME_TIMES_START's rows."""
    if not rows:
        return {}
    times = np.array(rows, dtype=float)
    stamp, received, arrived, presented, called = (times[:, i] for i in range(5))

    def median(values):
        values = values[np.isfinite(values)] * 1000
        return float(np.median(values)) if len(values) else math.nan

    return {'to_bridge': median(received - stamp),
            'bridge_to_chromium': median(arrived - received),
            'in_chromium': median(presented - arrived), 'to_callback': median(called - presented),
            'total': median(called - stamp), 'to_arrival_p99': pct(
                ((arrived - stamp) * 1000)[np.isfinite(arrived - stamp)], 99)}


def page_figures(page, transport: str, seconds: float) -> dict:
    """Collect every frame's glass-to-glass latency the page computes, for ``seconds``."""
    if transport == 'websocket':  # the JPEG client keeps medians only: tap each value
        page.evaluate("""() => { const v = window.videoBridge.video; v.latencySamples = [];
            const add = v.latency.add.bind(v.latency);
            v.latency.add = (x) => { v.latencySamples.push(x); add(x); }; }""")
    source = 'webrtc' if transport == 'webrtc' else 'video'
    page.evaluate(f'window.videoBridge.{source}.latencySamples.length = 0')
    counters = None
    if transport == 'webrtc':
        page.evaluate(FRAME_TIMES_START)
        counters = page.evaluate(RECEIVER_COUNTERS)
    start = page.evaluate(f'window.videoBridge.{source}.'
                          + ('displayed' if transport == 'webrtc' else 'drawn'))
    time.sleep(seconds)
    figures = page.evaluate(f"""() => {{ const s = window.videoBridge.{source};
        return {{ samples: s.latencySamples.slice(), frames: s.{'displayed' if transport ==
                 'webrtc' else 'drawn'}, kbps: s.stats().kbps, codec: s.stats().codec ?? null,
                 layer: s.layer ?? null }}; }}""")
    latency = [x * 1000 for x in figures['samples']]
    result = {'fps': (figures['frames'] - start) / seconds, 'p50': pct(latency, 50),
              'p99': pct(latency, 99), 'kbps': figures['kbps'], 'codec': figures['codec'],
              'layer': figures['layer'], 'samples': len(latency), 'stages': {}, 'receiver': {}}
    if transport == 'webrtc':
        result['stages'] = stage_breakdown(page.evaluate('window.benchFrames'))
        result['receiver'] = receiver_breakdown(counters, page.evaluate(RECEIVER_COUNTERS))
        page.evaluate('window.benchFrames = null')
    return result


def browser_run(url: str, options, chromium=CHROMIUM) -> list:
    from playwright.sync_api import sync_playwright
    rows = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for transport in ('webrtc', 'websocket'):
                page = browser.new_page(viewport={'width': 1280, 'height': 800})
                page.goto(f'{url}/?transport={transport}')
                value = 'webrtc' if transport == 'webrtc' else 'websocket'
                try:
                    page.wait_for_function(
                        f"document.getElementById('stat-transport').dataset.value === "
                        f"'{value}' && Number(document.getElementById('stat-fps')"
                        '.dataset.value) > 5', timeout=30000)
                except Exception:
                    state = page.evaluate("""() => { const b = window.videoBridge;
                        return {conn: document.getElementById('conn').dataset.state,
                                webrtc: b.webrtc.status, problem: b.webrtc.problem,
                                video: b.video.status, fps: b.video.stats().fps}; }""")
                    print(f'{transport} did not play: {state}')
                    rows.append((transport, {'fps': 0.0, 'p50': math.nan, 'p99': math.nan,
                                             'kbps': 0.0, 'codec': None, 'layer': None,
                                             'samples': 0, 'stages': {}, 'receiver': {}}))
                    page.close()
                    continue
                time.sleep(options.warmup)
                rows.append((transport, page_figures(page, transport, options.duration)))
                page.close()
        finally:
            browser.close()
    return rows


def print_browser(title: str, rows: list):
    print(f'\n{title}')
    print(table(['transport', 'fps', 'glass-to-glass p50 ms', 'p99', 'kbit/s', 'codec',
                 'layer', 'frames'],
                [[t, fmt(s['fps']), fmt(s['p50']), fmt(s['p99']), fmt(s['kbps'], 0),
                  s['codec'] or 'jpeg', '-' if s['layer'] is None else s['layer'],
                  s['samples']] for t, s in rows]))
    stages = [(t, s['stages'], s['receiver']) for t, s in rows if s.get('stages')]
    if stages:
        print("\nWhere a WebRTC frame's time goes (median ms per frame; stamps in the bridge's "
              'clock: camera stamp, bridge received, Chromium received (the last packet), '
              "presented, the page's callback; Chromium's getStats per frame over the window):")
        print(table(['row', 'camera->bridge', 'bridge->Chromium', 'in Chromium',
                     'presented->callback', 'total', 'arrival p99', 'jitter buffer',
                     'target', 'decode', 'processing', 'assembly', 'decoded', 'dropped',
                     'freezes'],
                    [[t, fmt(g.get('to_bridge')), fmt(g.get('bridge_to_chromium')),
                      fmt(g.get('in_chromium')), fmt(g.get('to_callback')), fmt(g.get('total')),
                      fmt(g.get('to_arrival_p99')), fmt(r.get('jitter_buffer')),
                      fmt(r.get('jitter_target')), fmt(r.get('decode')),
                      fmt(r.get('processing')), fmt(r.get('assembly')),
                      fmt(r.get('decoded'), 0), fmt(r.get('dropped'), 0),
                      fmt(r.get('freezes'), 0)] for t, g, r in stages]))


def part_browser(options):
    """The page in Chromium, WebRTC then JPEG; with --before, that bridge too, alternating."""
    run_for = options.warmup * 2 + options.duration * 2 + 120
    sides = [('now', '')] + ([('before', options.before)] if options.before else [])
    results = []
    for round_index in range(options.rounds):
        for side, source in benchlib.alternating(sides, round_index):
            with benchlib.Rig(options.keep_logs) as rig:
                _, port = benchlib.start_bridge(rig, benchlib.VIDEO_TOPIC,
                                                [f'webrtc_host_addresses:=["{HOST_ADDRESS}"]'],
                                                source=source)
                benchlib.start_publisher(rig, benchlib.VIDEO_TOPIC, run_for)
                rows = browser_run(f'http://{benchlib.HOST}:{port}', options)
            label = f' {side}' if options.before else ''
            label += f' #{round_index + 1}' if options.rounds > 1 else ''
            results += [(transport + label, stats) for transport, stats in rows]
    print_browser('Glass-to-glass in headless Chromium on loopback (camera header.stamp to the '
                  'frame shown: requestVideoFrameCallback for WebRTC, drawn for JPEG):', results)
    return results


# -- cap ---------------------------------------------------------------------------------------

def part_cap(options):
    namespace = f'vbw-{os.getpid()}'
    wrapper = tempfile.NamedTemporaryFile('w', suffix='-chromium', delete=False)
    wrapper.write(f'#!/bin/sh\nexec ip netns exec {namespace} {CHROMIUM} "$@"\n')
    wrapper.close()
    os.chmod(wrapper.name, 0o755)
    try:
        run_for = options.warmup * 2 + options.duration * 2 + 120
        with benchlib.Rig(options.keep_logs) as rig:
            # The nodes start first: they refuse to run next to an interface but lo.
            _, port = benchlib.start_bridge(
                rig, benchlib.VIDEO_TOPIC,
                ['host:=0.0.0.0', f'webrtc_host_addresses:=["{BRIDGE_SIDE}"]',
                 'allowed_hosts:=["*"]'])
            benchlib.start_publisher(rig, benchlib.VIDEO_TOPIC, run_for)
            time.sleep(2.0)   # the publisher's own loopback check is done by now
            sh('ip', 'netns', 'add', namespace)
            sh('ip', 'link', 'add', 'vbw0', 'type', 'veth', 'peer', 'name', 'vbw1')
            sh('ip', 'link', 'set', 'vbw1', 'netns', namespace)
            sh('ip', 'addr', 'add', f'{BRIDGE_SIDE}/24', 'dev', 'vbw0')
            sh('ip', 'link', 'set', 'vbw0', 'up')
            for command in (['ip', 'addr', 'add', f'{VIEWER_SIDE}/24', 'dev', 'vbw1'],
                            ['ip', 'link', 'set', 'vbw1', 'up'],
                            ['ip', 'link', 'set', 'lo', 'up']):
                sh('ip', 'netns', 'exec', namespace, *command)
            sh('tc', 'qdisc', 'add', 'dev', 'vbw0', 'root', 'tbf', 'rate', options.cap,
               'burst', '16kb', 'latency', '100ms')
            rows = browser_run(f'http://{BRIDGE_SIDE}:{port}', options, wrapper.name)
        print_browser(f'Through a {options.cap} tbf cap (bridge -> viewer, veth between two '
                      'namespaces, 100 ms queue):', rows)
        return rows
    finally:
        sh('ip', 'link', 'del', 'vbw0', check=False)
        sh('ip', 'netns', 'del', namespace, check=False)
        os.unlink(wrapper.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--parts', default='encode,viewers,browser,cap')
    parser.add_argument('--viewers', default='1,5,10',
                        type=lambda text: [int(v) for v in text.split(',')])
    parser.add_argument('--duration', type=float, default=15.0)
    parser.add_argument('--warmup', type=float, default=5.0)
    parser.add_argument('--encode-frames', type=int, default=300)
    parser.add_argument('--cap', default='2mbit')
    parser.add_argument('--rounds', type=int, default=1,
                        help='viewers part: runs of every K (per bridge), median slope reported; '
                        'browser part: runs of each bridge')
    parser.add_argument('--old-source', default='',
                        help='viewers part: also measure this checkout (e.g. a git worktree of '
                        'the commit before a change), alternating with this one')
    benchlib.add_before_option(parser)
    benchlib.add_rig_options(parser)
    options = parser.parse_args()
    benchlib.check_before(parser, options)
    options.per_worker = min(options.per_worker, 5)
    benchlib.require_loopback_only()
    benchlib.print_versions(options.before)
    added = sh('ip', 'addr', 'add', f'{HOST_ADDRESS}/32', 'dev', 'lo', check=False)
    try:
        for part in options.parts.split(','):
            {'encode': part_encode, 'viewers': part_viewers, 'browser': part_browser,
             'cap': part_cap}[part](options)
    finally:
        if added.returncode == 0:
            sh('ip', 'addr', 'del', f'{HOST_ADDRESS}/32', 'dev', 'lo', check=False)


if __name__ == '__main__':
    np.seterr(all='ignore')
    main()
