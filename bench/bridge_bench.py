"""Video fan-out benchmark: one 640x480 bgr8 camera at 30 fps, K websocket viewers.

Why this shape: the bridge's job is to take one raw camera topic and serve it to many browsers
without making anyone wait. For each K (default 1, 5, 20, 50) this starts, as separate
processes, a camera stand-in (bench/publisher.py), the installed bridge_node on a free port of
127.0.0.1, and viewer workers (bench/viewers.py) holding K websocket clients between them. After
a warm-up it measures a window and reports, per K:

* per-viewer delivered fps (min / median) and the fraction of published frames each viewer got
  (min over viewers; frames matched by exact header.stamp); "intake" is the fraction the bridge
  itself received from DDS, so DDS loss and bridge drops can be told apart,
* latency = viewer receive time - header.stamp (p50/p95/p99/max), split into the DDS hop
  (bridge received_time - stamp) and the bridge + websocket hop, and its growth (median of the
  first fifth of the window vs the last fifth: a queue building up shows here),
* bridge CPU (% of one core, from /proc/<pid>/stat over the window, all threads), CPU ms and
  minor page faults per input frame, peak RSS (VmHWM) and RSS at the start vs the end of the
  window, and the CPU used meanwhile by the publisher, the viewers and everything else.

At --profile-at K values it then profiles the bridge for --profile-seconds (after the window,
so the profilers never disturb the figures above): per-thread CPU from /proc/<pid>/task, perf
call chains of every thread (native and kernel included) grouped into DDS/rclpy intake, JPEG
encode, websocket send and other, and py-spy's Python-level split (without pausing the bridge).

Run through bench/run (private network namespace, own ROS_DOMAIN_ID).
"""

import argparse

import benchlib
from benchlib import fmt, table


def measure(viewers: int, options) -> dict:
    """One K: the shared video case with K viewers of the full-size stream."""
    profile = options.profile_seconds if viewers in options.profile_at else 0
    return benchlib.video_case(['/video/camera'] * viewers, options, profile_seconds=profile)


def report(results: dict, options):
    """Print the delivery/latency table, the resources table, targets and profiles."""
    print(f'\nVideo fan-out: 640x480 bgr8 at 30 fps, publisher '
          f'{"reliable" if options.reliable else "best effort"} depth 1, '
          f'{options.warmup:g} s warm-up, {options.duration:g} s window per K')
    rows = []
    for k, s in results.items():
        rows.append([k, f'{fmt(s["fps_min"])}/{fmt(s["fps_median"])}',
                     fmt(100 * s['delivered_min'], 1, '%'), fmt(100 * s['intake'], 1, '%'),
                     fmt(s['p50']), fmt(s['p95']), fmt(s['p99']), fmt(s['max']),
                     f'{fmt(s["growth_first"])} -> {fmt(s["growth_last"])}',
                     fmt(s['dds_p50']), f'{fmt(s["hop_p50"])}/{fmt(s["hop_p99"])}'])
    print(table(['K', 'fps min/med', 'deliv min', 'intake', 'p50 ms', 'p95', 'p99', 'max',
                 'growth p50 ms', 'DDS p50', 'bridge+ws p50/p99'], rows))
    rows = []
    for k, s in results.items():
        rows.append([k, fmt(s['cpu']), fmt(s['cpu_ms_per_frame'], 2),
                     fmt(s['faults_per_frame'], 0), fmt(s['hwm_mb']),
                     f'{fmt(s["rss_start_mb"])} -> {fmt(s["rss_end_mb"])}',
                     fmt(s['rss_max_mb']), fmt(s['published_fps']), fmt(s['publisher_cpu']),
                     fmt(s['viewers_cpu']), fmt(s['others_cpu'])])
    print()
    print(table(['K', 'bridge CPU %', 'ms/frame', 'faults/frame', 'peak RSS MB',
                 'RSS start -> end MB', 'RSS max MB', 'pub fps', 'pub CPU %', 'viewers CPU %',
                 'others CPU %'], rows))
    print('(CPU in % of one core; "others": processes outside this benchmark, of 200 %; '
          'faults: minor page faults of the bridge per input frame)')
    if max(results) >= 50:
        k = max(results)
        s = results[k]
        print(f'\nTargets at K={k} (this machine): '
              f'delivered min {100 * s["delivered_min"]:.1f}% (target >= 99%), '
              f'p50 {s["p50"]:.1f} ms (<= 10), p99 {s["p99"]:.1f} ms (<= 25), '
              f'growth {s["growth_first"]:.1f} -> {s["growth_last"]:.1f} ms (none), '
              f'RSS {s["rss_start_mb"]:.1f} -> {s["rss_end_mb"]:.1f} MB (flat), '
              f'bridge CPU {s["cpu"]:.1f}% (<= 30%)')
    for k, s in results.items():
        if 'profile' in s:
            profiled, frames = s['profile']
            profiled.report(f'K={k}', frames)


def main():
    """Run every K, then print the tables and profiles."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--viewers', default='1,5,20,50', help='comma-separated K values')
    parser.add_argument('--duration', type=float, default=15.0, help='measured window (s)')
    parser.add_argument('--warmup', type=float, default=5.0, help='warm-up before it (s)')
    parser.add_argument('--profile-at', default='1,50', help='K values to profile ("" none)')
    parser.add_argument('--profile-seconds', type=float, default=8.0)
    benchlib.add_rig_options(parser)
    options = parser.parse_args()
    options.profile_at = {int(k) for k in options.profile_at.split(',') if k}
    benchlib.require_loopback_only()
    benchlib.print_versions()
    shm_before = benchlib.shm_segments()
    results = {}
    for k in [int(k) for k in options.viewers.split(',')]:
        print(f'K={k}: measuring ...', flush=True)
        results[k] = measure(k, options)
    report(results, options)
    benchlib.report_shm(shm_before)


if __name__ == '__main__':
    main()
