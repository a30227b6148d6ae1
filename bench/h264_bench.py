"""A raw camera against the same picture already H.264: bridge and camera CPU at K WebRTC viewers.

Why: the bridge encodes a raw sensor_msgs/Image source itself (one libx264 encoder per layer
in use), while an H.264 source (a CompressedImage with format h264, here from camera_node's
``h264:=true``) is passed to every WebRTC peer undecoded. The goal for an H.264 source is at
most 3 % of a core of bridge CPU at one viewer, and flat as viewers are added; the encode
moves to the camera, so camera + bridge together is reported beside it.

For each K in --viewers and each source kind (alternating which kind runs first, so load from
other work falls on both alike) everything is started fresh, in this process's private network
namespace:

* camera_node (test pattern, 640x480 at 30 fps; ``h264:=true`` for the H.264 kind, which
  also keeps publishing ``image_raw``: nothing subscribes to it),
* the installed bridge_node with config/bridge.yaml, stream ``camera`` on
  ``/camera/image_raw`` (type raw) or ``/camera/image_raw/h264`` (type h264), and
  ``webrtc_layers:=1`` for both kinds: aiortc's receiver-side estimator can report congestion
  on this busy machine, and a peer moved to a lower layer would get an encoder of its own
  (and, for H.264, a decoder) by design; one layer keeps the encoder count what the source
  kind costs,
* K aiortc viewers (bench/webrtc_viewers.py, up to 5 per worker process) asking for H.264.

Once the bridge has K peers, after --warmup, a window of --duration seconds is measured:

* bridge / camera CPU: utime + stime from /proc/<pid>/stat over the window, in % of one core,
* encoders / decoders: ``video_encoders`` / ``video_decoders`` of the stream in /api/streams
  (the larger of the readings just before and just after the window: no request lands
  inside it), and ``encodes``, the pictures given to encoders during the window,
* viewer fps (the slowest viewer's) and glass-to-glass p50/p99 of the aiortc viewer: its
  arrival time of a decoded frame minus the frame's header.stamp (camera_node's capture time,
  one machine clock), including aiortc's jitter buffer and decoder. Not Chromium's.
* viewers CPU (all worker processes) and others: what processes outside the benchmark used,
  of 100 % per core on this machine.

Run through ``bench/run h264`` (private network namespace, own ROS_DOMAIN_ID). aioice never
offers 127.0.0.1 as a candidate, so, as webrtc_bench.py does, loopback gets 198.51.100.1/32 in
this namespace for the run. --markdown FILE also writes the table with date, commit and command.
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
import urllib.request

import benchlib
from benchlib import fmt, pct, table
import numpy as np
from webrtc_bench import HOST_ADDRESS, sh, viewer_stats

CAMERA_NODE = os.path.join(os.path.dirname(benchlib.BRIDGE_NODE), 'camera_node')
TOPICS = {'raw': '/camera/image_raw', 'h264': '/camera/image_raw/h264',
          'h264-before': '/camera/image_raw/h264', 'h264-floor': '/camera/image_raw/h264'}
LABELS = {'raw': 'raw bgr8', 'h264': 'H.264', 'h264-before': 'H.264, --before',
          'h264-floor': 'H.264, floor (bench/floor_bridge.py)'}
PER_WORKER = 5   # aiortc peers per worker process (each decodes what it receives)


def api_streams(port: int) -> dict:
    """Fetch the bridge's /api/streams document."""
    with urllib.request.urlopen(f'http://{benchlib.HOST}:{port}/api/streams',
                                timeout=5) as response:
        return json.loads(response.read())


def camera_entry(document: dict) -> dict:
    """Pick the ``camera`` stream out of an /api/streams document."""
    return next(s for s in document['streams'] if s['name'] == 'camera')


def wait_for_peers(port: int, count: int, children: list, timeout: float) -> dict:
    """Poll /api/streams until the bridge has ``count`` WebRTC peers and frames come in.

    RuntimeError if a child ends or the deadline passes first (bounded: ``timeout`` seconds).
    """
    deadline = time.monotonic() + timeout
    document, frames = {}, None
    while time.monotonic() < deadline:
        for child in children:
            if child.poll() is not None:
                raise RuntimeError(f'{child.name} exited with {child.poll()}:\n'
                                   f'{child.log_tail()}')
        try:
            document = api_streams(port)
        except OSError:
            document = {}
        if document:
            peers = document.get('webrtc', {}).get('peers', 0)
            now = camera_entry(document)['frames_in']
            if peers >= count and frames is not None and now > frames:
                return document
            frames = now if peers >= count else None
        time.sleep(0.5)
    raise RuntimeError(f'the bridge did not reach {count} WebRTC peers with frames coming in '
                       f'within {timeout:g} s (last: {document.get("webrtc")})')


def camera_argv(kind: str) -> list:
    """Argv of camera_node: test pattern 640x480 at 30 fps in /camera; H.264 too for that kind."""
    argv = [sys.executable, CAMERA_NODE, '--ros-args', '-r', '__ns:=/camera',
            '-p', 'source:=pattern', '-p', 'width:=640', '-p', 'height:=480',
            '-p', 'fps:=30.0']
    if kind.startswith('h264'):
        argv += ['-p', 'h264:=true']
    return argv


def bridge_params(kind: str) -> list:
    """Parameters of the bridge for one source kind (one WebRTC layer, see the docstring)."""
    params = [f'webrtc_host_addresses:=["{HOST_ADDRESS}"]', 'webrtc_layers:=1']
    if kind.startswith('h264'):
        params.append('streams.camera.type:=h264')
    return params


def start_case(rig, kind: str, options):
    """Start camera_node and the bridge of one kind (--before's bridge for h264-before)."""
    camera = rig.start('camera', camera_argv(kind))
    if kind == 'h264-floor':   # the plain pass-through in place of bridge_node
        port = benchlib.free_port()
        bridge = rig.start('bridge', benchlib.python_argv('floor_bridge.py', '--port', port,
                                                          '--topic', TOPICS[kind]))
        benchlib.wait_for_port(port, bridge)
        return camera, bridge, port
    source = options.before if kind == 'h264-before' else ''
    bridge, port = benchlib.start_bridge(rig, TOPICS[kind], bridge_params(kind), source=source)
    return camera, bridge, port


def run_case(kind: str, count: int, options) -> dict:
    """Run camera, bridge and ``count`` viewers of one source kind; return the figures."""
    # The viewers write their records when they end, at a deadline fixed when they start: long
    # enough for the slowest allowed connection, the warm-up and the window.
    run_for = options.connect_timeout + options.warmup + options.duration + 3
    if count in options.profile_at:
        run_for += options.profile_seconds + 5
    with benchlib.Rig(options.keep_logs) as rig:
        camera, bridge, port = start_case(rig, kind, options)
        workers, outputs = [], []
        for first in range(0, count, PER_WORKER):
            out = rig.path(f'webrtc-{first}.json')
            workers.append(rig.start(f'viewers-{first}', benchlib.python_argv(
                'webrtc_viewers.py', '--port', port, '--count', min(PER_WORKER, count - first),
                '--codec', 'h264', '--duration', run_for, '--out', out)))
            outputs.append(out)
        wait_for_peers(port, count, [camera, bridge], options.connect_timeout)
        time.sleep(options.warmup)
        before = camera_entry(api_streams(port))
        window = benchlib.Window({child.name: child.pid for child in rig.children})
        window.begin()
        window.sleep(options.duration)
        window.end()
        document = api_streams(port)
        after = camera_entry(document)
        profiled = None
        if count in options.profile_at:   # after the window: the profilers never disturb it
            profiled = benchlib.Profile(bridge.pid, rig.log_dir)
            profiled.run(options.profile_seconds)
            profiled.frames = (camera_entry(api_streams(port))['frames_in']
                               - after['frames_in'])
        for worker in workers:   # they end at their --duration; bounded wait, then SIGINT
            worker.wait(run_for + 30)
        records, errors = [], []
        for out in outputs:
            if os.path.exists(out):
                with open(out) as handle:
                    data = json.load(handle)
                records += data['records']
                errors += data['errors']
        for problem in errors[:5]:
            print(f'{kind} K={count}: webrtc viewer problem: {problem}')
    stats = viewer_stats(records, window.t0, window.t1, count)
    fps = sorted(len([r for r in peer if window.t0 <= r[0] <= window.t1])
                 / (window.t1 - window.t0) for peer in records)
    stats.update({
        'fps_median': float(np.median(fps)) if fps else math.nan,
        'bridge': window.cpu_percent('bridge'), 'camera': window.cpu_percent('camera'),
        'viewers_cpu': sum(window.cpu_percent(w.name) for w in workers),
        'others': window.others_percent(),
        'encoders': max(before['video_encoders'], after['video_encoders']),
        'decoders': max(before['video_decoders'], after['video_decoders']),
        'encodes': after['video_encodes'] - before['video_encodes'],
        'frames_in': (after['frames_in'] - before['frames_in']) / window.seconds,
        'layers': sorted(set(document.get('webrtc', {}).get('layers', {}).values())),
        'problems': len(errors)})
    if profiled is not None:
        stats['profile'] = profiled
    return stats


def browser_case(kind: str, options) -> dict:
    """Camera + bridge of one kind and headless Chromium on the page over WebRTC.

    Glass-to-glass per frame as the page measures it (camera header.stamp to the frame shown,
    requestVideoFrameCallback; bench/webrtc_bench.py reads the same samples), over --duration
    after --warmup, with the bridge's and the browser's CPU over the same window.
    """
    from playwright.sync_api import sync_playwright
    from webrtc_bench import CHROMIUM, CHROMIUM_ARGS
    with benchlib.Rig(options.keep_logs) as rig:
        camera, bridge, port = start_case(rig, kind, options)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={'width': 1280, 'height': 800})
                page.goto(f'http://{benchlib.HOST}:{port}/?transport=webrtc')
                page.wait_for_function(
                    "document.getElementById('stat-transport').dataset.value === 'webrtc' && "
                    "Number(document.getElementById('stat-fps').dataset.value) > 5",
                    timeout=options.connect_timeout * 2000)
                time.sleep(options.warmup)
                page.evaluate('window.videoBridge.webrtc.latencySamples.length = 0')
                start = page.evaluate('window.videoBridge.webrtc.displayed')
                window = benchlib.Window({child.name: child.pid for child in rig.children})
                window.begin()
                window.sleep(options.duration)
                window.end()
                entry = camera_entry(api_streams(port))   # while the page still watches
                figures = page.evaluate("""() => { const s = window.videoBridge.webrtc;
                    return { samples: s.latencySamples.slice(), frames: s.displayed,
                             codec: s.stats().codec ?? null }; }""")
            finally:
                browser.close()
    latency = [x * 1000 for x in figures['samples']]
    return {'fps': (figures['frames'] - start) / window.seconds, 'p50': pct(latency, 50),
            'p95': pct(latency, 95), 'samples': len(latency), 'codec': figures['codec'],
            'bridge': window.cpu_percent('bridge'), 'camera': window.cpu_percent('camera'),
            'encoders': entry['video_encoders'], 'others': window.others_percent()}


BROWSER_HEADERS = ['source', 'codec', 'fps shown', 'g2g p50 ms', 'p95 ms', 'frames',
                   'bridge CPU %', 'camera CPU %', 'encoders', 'others CPU %']


def browser_row(kind: str, s: dict) -> list:
    """Format one row of the Chromium table."""
    return [LABELS[kind], s['codec'], fmt(s['fps']), fmt(s['p50']), fmt(s['p95']),
            s['samples'], fmt(s['bridge']), fmt(s['camera']), s['encoders'], fmt(s['others'])]


HEADERS = ['source', 'K', 'bridge CPU %', 'camera CPU %', 'camera + bridge %', 'encoders',
           'decoders', 'encodes', 'bridge fps in', 'viewer fps min', 'median',
           'g2g p50 ms', 'p99 ms', 'viewers CPU %', 'others CPU %']


def row(kind: str, count: int, s: dict) -> list:
    """Format one table row."""
    return [LABELS[kind], count, fmt(s['bridge']),
            fmt(s['camera']), fmt(s['bridge'] + s['camera']), s['encoders'], s['decoders'],
            s['encodes'], fmt(s['frames_in']), fmt(s['fps_min']), fmt(s['fps_median']),
            fmt(s['p50']), fmt(s['p99']), fmt(s['viewers_cpu']), fmt(s['others'])]


def write_markdown(path: str, rows: list, browser_rows: list):
    """Write the table as markdown, with the date, commit, machine and command."""
    commit = subprocess.run(['git', '-C', benchlib.ROOT, 'rev-parse', '--short', 'HEAD'],
                            capture_output=True, text=True).stdout.strip()
    command = 'bench/run h264 ' + ' '.join(sys.argv[1:])
    with open(path, 'w') as out:
        out.write(f'Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC '
                  f'at {commit}, {os.cpu_count()} cores, load average '
                  f'{os.getloadavg()[0]:.2f}:\n\n    {command}\n\n')
        out.write('| ' + ' | '.join(HEADERS) + ' |\n')
        out.write('|' + '---|' * len(HEADERS) + '\n')
        for line in rows:
            out.write('| ' + ' | '.join(map(str, line)) + ' |\n')
        if browser_rows:
            out.write('\nHeadless Chromium, one viewer (the page over WebRTC):\n\n')
            out.write('| ' + ' | '.join(BROWSER_HEADERS) + ' |\n')
            out.write('|' + '---|' * len(BROWSER_HEADERS) + '\n')
            for line in browser_rows:
                out.write('| ' + ' | '.join(map(str, line)) + ' |\n')
    print(f'wrote {path}')


def main():
    """Run every (K, kind) case, print the table and the per-viewer slopes."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--viewers', default='1,5,10',
                        type=lambda text: [int(v) for v in text.split(',')],
                        help='viewer counts K (default 1,5,10)')
    parser.add_argument('--kinds', default='raw,h264',
                        type=lambda text: [k for k in text.split(',') if k],
                        help='source kinds: raw, h264 (default both); h264-before is added '
                        'with --before; h264-floor is bench/floor_bridge.py, the plain '
                        'rclpy + aiortc pass-through, in place of bridge_node')
    benchlib.add_before_option(parser)  # its bridge is the kind h264-before
    parser.add_argument('--browser', default='raw,h264',
                        type=lambda text: [k for k in text.split(',') if k],
                        help='kinds measured in headless Chromium too ("" none)')
    parser.add_argument('--duration', type=float, default=10.0, help='measured window, s')
    parser.add_argument('--warmup', type=float, default=4.0,
                        help='s after the bridge has every peer and frames, before the window')
    parser.add_argument('--connect-timeout', type=float, default=15.0,
                        help='s for every viewer to become a peer of the bridge')
    parser.add_argument('--profile-at', default='',
                        type=lambda text: {int(v) for v in text.split(',') if v},
                        help='K values at which to profile the bridge after the window '
                        '(perf + py-spy, bench/benchlib.py Profile; default none)')
    parser.add_argument('--profile-seconds', type=float, default=8.0)
    parser.add_argument('--markdown', default='', help='also write the table to this file')
    parser.add_argument('--keep-logs', action='store_true', help='keep process logs and data')
    options = parser.parse_args()
    benchlib.check_before(parser, options)
    if options.before:
        options.kinds = options.kinds + ['h264-before']
    if not set(options.kinds) <= set(TOPICS) or not set(options.browser) <= {'raw', 'h264'} \
            or not options.viewers or min(options.viewers) < 1 or max(options.viewers) > 20:
        parser.error('--kinds takes raw,h264,h264-floor; --browser raw,h264; --viewers 1..20 '
                     '(webrtc_max_peers)')
    benchlib.require_loopback_only()
    benchlib.print_versions(options.before)
    shm_before = benchlib.shm_segments()
    added = sh('ip', 'addr', 'add', f'{HOST_ADDRESS}/32', 'dev', 'lo', check=False)
    results, browser_results = [], []
    try:
        for index, count in enumerate(options.viewers):
            kinds = benchlib.alternating(options.kinds, index)
            for kind in kinds:
                try:
                    stats = run_case(kind, count, options)
                except RuntimeError as exc:
                    print(f'{kind} K={count}: no figures: {exc}')
                    continue
                results.append((kind, count, stats))
                print(f'{kind} K={count}: bridge {stats["bridge"]:.1f} %, camera '
                      f'{stats["camera"]:.1f} %, encoders {stats["encoders"]}, decoders '
                      f'{stats["decoders"]}, fps min {fmt(stats["fps_min"])}, g2g p50 '
                      f'{fmt(stats["p50"])} ms, layers {stats["layers"]}', flush=True)
        for kind in options.browser:
            try:
                browser_results.append((kind, browser_case(kind, options)))
            except Exception as exc:   # noqa: B902  a page that did not play: say so, go on
                print(f'{kind} in Chromium: no figures: {exc}')
    finally:
        if added.returncode == 0:
            sh('ip', 'addr', 'del', f'{HOST_ADDRESS}/32', 'dev', 'lo', check=False)
    results.sort(key=lambda item: (options.kinds.index(item[0]), item[1]))
    rows = [row(kind, count, stats) for kind, count, stats in results]
    print(f'\n640x480 at 30 fps from camera_node (test pattern), WebRTC H.264 to K aiortc '
          f'viewers, webrtc_layers:=1; {options.duration:g} s window after {options.warmup:g} s '
          f'warm-up; CPU in % of one core; g2g: aiortc viewer (not Chromium)')
    print(table(HEADERS, rows))
    for kind in options.kinds:
        cpu = {count: s['bridge'] for k, count, s in results if k == kind}
        if len(cpu) > 1:
            slope = float(np.polyfit(list(cpu), list(cpu.values()), 1)[0])
            print(f'{kind}: each extra viewer {slope:.2f} % of a core (least-squares slope of '
                  f'bridge CPU over K)')
    for kind, count, stats in results:
        if 'profile' in stats:
            stats['profile'].report(f'{kind} K={count}', stats['profile'].frames)
    browser_rows = [browser_row(kind, s) for kind, s in browser_results]
    if browser_rows:
        print('\nHeadless Chromium, one viewer (page over WebRTC): glass-to-glass = camera '
              'header.stamp to the frame shown (requestVideoFrameCallback)')
        print(table(BROWSER_HEADERS, browser_rows))
    benchlib.report_shm(shm_before)
    if options.markdown:
        write_markdown(options.markdown, rows, browser_rows)


if __name__ == '__main__':
    np.seterr(all='ignore')
    main()
