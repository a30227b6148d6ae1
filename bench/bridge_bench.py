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

With --before DIR the bridge_node of another checkout (say, the commit before a change; see
bench/README.md) is measured too, in the same run: at each K both bridges run one after the
other, which one goes first alternating from K to K and from round to round (--rounds), so that
a change in the machine's load falls on both alike. The tables then get a ``bridge`` column
(now / before, and the round), and a last table sets the two side by side: medians over the
rounds, and the change from before to now. Profiles (--profile-at) are taken of both, in the
first round.

Run through bench/run (private network namespace, own ROS_DOMAIN_ID).
"""

import argparse
import statistics

import benchlib
from benchlib import fmt, table


def measure(viewers: int, options, source: str = '', profile: bool = True) -> dict:
    """One K: the shared video case with K viewers of the full-size stream."""
    seconds = options.profile_seconds if profile and viewers in options.profile_at else 0
    return benchlib.video_case(['/video/camera'] * viewers, options, profile_seconds=seconds,
                               source=source)


def run_cases(options) -> list:
    """Every (round, K, side) case, alternating the sides; a list of (K, bridge, stats).

    ``bridge`` names the side and, with more than one, the round: '' for one round without
    --before.
    """
    sides = ['now', 'before'] if options.before else ['']
    results = []
    for round_index in range(options.rounds):
        for position, k in enumerate(options.viewers):
            for side in benchlib.alternating(sides, round_index + position):
                name = ' '.join(filter(None, (side, f'round {round_index + 1}'
                                              if options.rounds > 1 else '')))
                print(f'K={k}{f" ({name})" if name else ""}: measuring ...', flush=True)
                stats = measure(k, options, options.before if side == 'before' else '',
                                profile=round_index == 0)
                stats['side'] = side
                results.append((k, name, stats))
    return results


def report(results: list, options):
    """Print the delivery/latency table, the resources table, targets and profiles."""
    print(f'\nVideo fan-out: 640x480 bgr8 at 30 fps, publisher '
          f'{"reliable" if options.reliable else "best effort"} depth 1, '
          f'{options.warmup:g} s warm-up, {options.duration:g} s window per K')
    results = sorted(results, key=lambda item: (item[0], item[1]))
    named = any(name for _, name, _ in results)
    first = ['K', 'bridge'] if named else ['K']

    def lead(k, name):
        return [k, name] if named else [k]
    rows = []
    for k, name, s in results:
        rows.append(lead(k, name) + [
            f'{fmt(s["fps_min"])}/{fmt(s["fps_median"])}',
            fmt(100 * s['delivered_min'], 1, '%'), fmt(100 * s['intake'], 1, '%'),
            fmt(s['p50']), fmt(s['p95']), fmt(s['p99']), fmt(s['max']),
            f'{fmt(s["growth_first"])} -> {fmt(s["growth_last"])}',
            fmt(s['dds_p50']), f'{fmt(s["hop_p50"])}/{fmt(s["hop_p99"])}'])
    print(table(first + ['fps min/med', 'deliv min', 'intake', 'p50 ms', 'p95', 'p99', 'max',
                         'growth p50 ms', 'DDS p50', 'bridge+ws p50/p99'], rows))
    rows = []
    for k, name, s in results:
        rows.append(lead(k, name) + [
            fmt(s['cpu']), fmt(s['cpu_ms_per_frame'], 2), fmt(s['faults_per_frame'], 0),
            fmt(s['hwm_mb']), f'{fmt(s["rss_start_mb"])} -> {fmt(s["rss_end_mb"])}',
            fmt(s['rss_max_mb']), fmt(s['published_fps']), fmt(s['publisher_cpu']),
            fmt(s['viewers_cpu']), fmt(s['others_cpu'])])
    print()
    print(table(first + ['bridge CPU %', 'ms/frame', 'faults/frame', 'peak RSS MB',
                         'RSS start -> end MB', 'RSS max MB', 'pub fps', 'pub CPU %',
                         'viewers CPU %', 'others CPU %'], rows))
    print('(CPU in % of one core; "others": processes outside this benchmark, of 200 %; '
          'faults: minor page faults of the bridge per input frame)')
    if options.before:
        report_comparison(results)
    top = max(k for k, _, _ in results)
    if top >= 50:
        for k, name, s in results:
            if k == top:
                print(f'\nTargets at K={k}{f" ({name})" if name else ""} (this machine): '
                      f'delivered min {100 * s["delivered_min"]:.1f}% (target >= 99%), '
                      f'p50 {s["p50"]:.1f} ms (<= 10), p99 {s["p99"]:.1f} ms (<= 25), '
                      f'growth {s["growth_first"]:.1f} -> {s["growth_last"]:.1f} ms (none), '
                      f'RSS {s["rss_start_mb"]:.1f} -> {s["rss_end_mb"]:.1f} MB (flat), '
                      f'bridge CPU {s["cpu"]:.1f}% (<= 30%)')
    for k, name, s in results:
        if 'profile' in s:
            profiled, frames = s['profile']
            profiled.report(f'K={k}{f" {name}" if name else ""}', frames)


# (heading, key in the stats, digits, scale) of the before/now table
COMPARED = (('bridge CPU %', 'cpu', 1, 1), ('ms/frame', 'cpu_ms_per_frame', 2, 1),
            ('p50 ms', 'p50', 1, 1), ('p99 ms', 'p99', 1, 1), ('fps min', 'fps_min', 1, 1),
            ('deliv min %', 'delivered_min', 1, 100), ('peak RSS MB', 'hwm_mb', 0, 1),
            ('others CPU %', 'others_cpu', 0, 1))


def report_comparison(results: list):
    """Per K and figure: before -> now (medians over the rounds) and the change in %."""
    rows = []
    for k in sorted({k for k, _, _ in results}):
        row = [k]
        for _, key, digits, scale in COMPARED:
            side = {}
            for want in ('before', 'now'):
                values = [scale * s[key] for kk, _, s in results if kk == k and s['side'] == want]
                side[want] = statistics.median(values) if values else float('nan')
            change = 100 * (side['now'] / side['before'] - 1) if side['before'] else float('nan')
            row.append(f'{fmt(side["before"], digits)} -> {fmt(side["now"], digits)} '
                       f'({change:+.0f}%)')
        rows.append(row)
    print('\nBefore -> now, median of the rounds (change in % of before):')
    print(table(['K'] + [heading for heading, *_ in COMPARED], rows))


def main():
    """Run every K (both bridges with --before), then print the tables and profiles."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--viewers', default='1,5,20,50', help='comma-separated K values')
    parser.add_argument('--duration', type=float, default=15.0, help='measured window (s)')
    parser.add_argument('--warmup', type=float, default=5.0, help='warm-up before it (s)')
    parser.add_argument('--profile-at', default='1,50', help='K values to profile ("" none)')
    parser.add_argument('--profile-seconds', type=float, default=8.0)
    parser.add_argument('--rounds', type=int, default=1,
                        help='times every case runs (with --before: before/now pairs per K)')
    benchlib.add_before_option(parser)
    benchlib.add_rig_options(parser)
    options = parser.parse_args()
    benchlib.check_before(parser, options)
    options.viewers = [int(k) for k in options.viewers.split(',')]
    options.profile_at = {int(k) for k in options.profile_at.split(',') if k}
    if options.rounds < 1:
        parser.error('--rounds must be at least 1')
    benchlib.require_loopback_only()
    benchlib.print_versions(options.before)
    shm_before = benchlib.shm_segments()
    report(run_cases(options), options)
    benchlib.report_shm(shm_before)


if __name__ == '__main__':
    main()
