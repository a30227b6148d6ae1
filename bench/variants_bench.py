"""Variants benchmark: what extra picture sizes cost, and what passing JPEG through saves.

Why: the bridge encodes every frame once per distinct variant (width, height, quality) in use,
whatever the number of viewers of each, and forwards a camera's own JPEG untouched when a viewer
asks for the stream as it is. Both promises are about CPU per input frame, so this measures the
bridge's CPU (% of one core, /proc/<pid>/stat over the window) and CPU ms per input frame in:

* raw 640x480 bgr8 @30 fps, 3 variants x 10 viewers (full size q80, width=320 q70,
  width=160 q50) vs 1 variant x 30 viewers (full size q80): the price of two extra variants;
  1 variant x 10 viewers is the reference that separates encoding from sending,
* sensor_msgs/CompressedImage JPEG (640x480, q80) @30 fps with the stream configured
  ``type: compressed``, 10 viewers of the stream as published (passthrough: no decode, no
  encode; checked from the frame flags) vs 10 viewers asking ``?quality=60`` (decode +
  re-encode).

Each case also reports delivery and latency, so a cheaper case that drops frames shows.
Run through bench/run (private network namespace, own ROS_DOMAIN_ID).
"""

import argparse

import benchlib
from benchlib import fmt, table
import numpy as np

FULL = '/video/camera'
CASES = (
    # (label, input kind, viewer paths)
    ('raw: 1 variant x 10 viewers (reference)', 'raw', [FULL] * 10),
    ('raw: 3 variants x 10 viewers', 'raw',
     [FULL] * 10 + ['/video/camera?width=320&quality=70'] * 10
     + ['/video/camera?width=160&quality=50'] * 10),
    ('raw: 1 variant x 30 viewers', 'raw', [FULL] * 30),
    ('jpeg: passthrough x 10 viewers', 'compressed', [FULL] * 10),
    ('jpeg: re-encode q60 x 10 viewers', 'compressed', ['/video/camera?quality=60'] * 10),
)


def describe_frames(stats: dict) -> str:
    """Summarise what the viewers got: JPEG widths, mean size, share of passthrough frames."""
    records = stats['records']
    inside = records[(records[:, benchlib.V_RECV] >= stats['t0'])
                     & (records[:, benchlib.V_RECV] <= stats['t1'])]
    if not len(inside):
        return 'no frames'
    parts = []
    for width in sorted(set(inside[:, benchlib.V_WIDTH].astype(int)), reverse=True):
        sizes = inside[inside[:, benchlib.V_WIDTH] == width][:, benchlib.V_SIZE]
        parts.append(f'{width} px {np.mean(sizes) / 1024:.0f} KB')
    passthrough = np.mean(inside[:, benchlib.V_FLAGS].astype(int) & 1)
    return f'{", ".join(parts)}; passthrough {100 * passthrough:.0f}%'


def main():
    """Run the cases, then print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--duration', type=float, default=15.0, help='measured window (s)')
    parser.add_argument('--warmup', type=float, default=4.0, help='warm-up before it (s)')
    parser.add_argument('--cases', default='1,2,3,4,5', help='which cases to run (1-5)')
    benchlib.add_rig_options(parser)
    options = parser.parse_args()
    benchlib.require_loopback_only()
    benchlib.print_versions()
    shm_before = benchlib.shm_segments()
    rows = []
    for number in [int(n) for n in options.cases.split(',')]:
        label, kind, paths = CASES[number - 1]
        print(f'{label}: measuring ...', flush=True)
        s = benchlib.video_case(paths, options, kind=kind)
        rows.append([label, fmt(s['cpu']), fmt(s['cpu_ms_per_frame'], 2),
                     f'{fmt(s["fps_min"])}/{fmt(s["fps_median"])}',
                     fmt(100 * s['delivered_min'], 1, '%'),
                     f'{fmt(s["p50"])}/{fmt(s["p99"])}', describe_frames(s),
                     fmt(s['others_cpu'])])
    print(f'\nVariants and passthrough: 640x480 @30 fps, {options.warmup:g} s warm-up, '
          f'{options.duration:g} s window per case')
    print(table(['case', 'bridge CPU %', 'ms/frame', 'fps min/med', 'deliv min',
                 'lat p50/p99 ms', 'frames received', 'others CPU %'], rows))
    benchlib.report_shm(shm_before)


if __name__ == '__main__':
    main()
