"""Edge comparison: the old hand-written network edge against the aiohttp one, in one run.

Why: moving the edge onto aiohttp must not cost the video fan-out anything that matters. Both
bridges run the same camera (640x480 bgr8, 30 fps), the same viewer workers and the same
window, one after the other and alternating (old, new, new, old, ...) so that load from other
work on the machine falls on both sides alike. The old edge runs from another checkout (build
it in a temporary git worktree: ``git worktree add /tmp/edge-old 2814850``) through
``--old-source``; the new one is this install.

Targets (issue 8): at each K, new bridge CPU <= old + 10 %, latency p99 <= old + 2 ms, frames
delivered >= 99.9 % (min over viewers).

Run through bench/run (private network namespace, own ROS_DOMAIN_ID):
    bench/run edge --old-source /tmp/edge-old --viewers 50,100 --rounds 2
"""

import argparse
import os
import statistics
from types import SimpleNamespace

import benchlib
from benchlib import fmt, table

# The new edge caps connections per address; all bench viewers come from 127.0.0.1.
NEW_PARAMS = ['max_connections_per_client:=10000', 'max_connections:=10000']


def run_case(side: str, viewers: int, options) -> dict:
    """One side at one K."""
    case = SimpleNamespace(**vars(options))
    case.bridge_source = options.old_source if side == 'old' else ''
    params = [] if side == 'old' else NEW_PARAMS
    return benchlib.video_case(['/video/camera'] * viewers, case, params=params)


def main():
    """Alternate old and new at every K for --rounds rounds; print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--old-source', required=True,
                        help='checkout of the old edge (e.g. a git worktree of 2814850)')
    parser.add_argument('--viewers', default='50,100', help='comma-separated K values')
    parser.add_argument('--rounds', type=int, default=2, help='old/new pairs per K')
    parser.add_argument('--duration', type=float, default=15.0, help='measured window (s)')
    parser.add_argument('--warmup', type=float, default=5.0, help='warm-up before it (s)')
    benchlib.add_rig_options(parser)
    options = parser.parse_args()
    if not os.path.isdir(os.path.join(options.old_source, 'src', 'video_bridge')):
        parser.error(f'{options.old_source} is not a video_bridge checkout')
    benchlib.require_loopback_only()
    benchlib.print_versions()
    shm_before = benchlib.shm_segments()
    results = {}
    for k in [int(k) for k in options.viewers.split(',')]:
        for round_index in range(options.rounds):
            order = ('old', 'new') if round_index % 2 == 0 else ('new', 'old')
            for side in order:
                print(f'K={k} round {round_index + 1}: {side} edge ...', flush=True)
                results.setdefault((k, side), []).append(run_case(side, k, options))
    print(f'\nEdge comparison: 640x480 bgr8 at 30 fps, {options.warmup:g} s warm-up, '
          f'{options.duration:g} s window, {options.rounds} run(s) per side and K '
          '(median of runs; CPU in % of one core; others: CPU of processes outside the '
          'benchmark, of 200 %)')
    rows = []
    verdicts = []
    for k in sorted({k for k, _ in results}):
        medians = {}
        for side in ('old', 'new'):
            runs = results[(k, side)]
            pick = {name: statistics.median(run[name] for run in runs)
                    for name in ('cpu', 'p50', 'p99', 'max', 'delivered_min', 'fps_min',
                                 'rss_end_mb', 'others_cpu')}
            medians[side] = pick
            rows.append([k, side, fmt(pick['cpu']),
                         ' / '.join(fmt(run['cpu']) for run in runs),
                         fmt(pick['p50']), fmt(pick['p99']), fmt(pick['max']),
                         fmt(100 * pick['delivered_min'], 2, '%'), fmt(pick['fps_min']),
                         fmt(pick['rss_end_mb']), fmt(pick['others_cpu'])])
        old, new = medians['old'], medians['new']
        verdicts.append(
            f'K={k}: CPU {new["cpu"]:.1f} vs {old["cpu"]:.1f} % '
            f'({"ok" if new["cpu"] <= old["cpu"] * 1.10 else "OVER"} +10 %), '
            f'p99 {new["p99"]:.1f} vs {old["p99"]:.1f} ms '
            f'({"ok" if new["p99"] <= old["p99"] + 2.0 else "OVER"} +2 ms), '
            f'delivered {100 * new["delivered_min"]:.2f} % '
            f'({"ok" if new["delivered_min"] >= 0.999 else "UNDER"} 99.9 %)')
    print(table(['K', 'edge', 'bridge CPU %', 'runs', 'p50 ms', 'p99 ms', 'max ms',
                 'deliv min', 'fps min', 'RSS MB', 'others %'], rows))
    print('\n' + '\n'.join(verdicts))
    benchlib.report_shm(shm_before)


if __name__ == '__main__':
    main()
