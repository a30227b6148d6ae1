"""A camera stand-in for the benchmarks: publishes images at a fixed rate, stamped with now.

Runs as its own process (like a camera driver would), so the bridge receives frames across
processes through Fast DDS exactly as in a robot. Frames are prepared before the loop (a short
loop of a moving synthetic scene with sensor-like noise, so JPEG sizes are realistic), and each
publish only sets header.stamp to the current wall clock: the viewers compute latency as
receive time - header.stamp, on the same machine clock.

QoS: best effort, depth 1 (sensor-data profile, what camera drivers typically use); --reliable
switches to reliable depth 1. Every published stamp is recorded (int64 ns) and written to --out
at exit, so a benchmark can tell exactly which frames each viewer got.

Stops by itself after --duration seconds, or on SIGINT/SIGTERM, and always shuts rclpy down
cleanly (an unclean exit leaks a Fast DDS segment in /dev/shm).
"""

import argparse
import signal
import sys
import time

from benchlib import require_loopback_only
import cv2
import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image


def scene(width: int, height: int, count: int) -> list:
    """``count`` BGR frames of a moving scene: gradient, shapes, text and fixed sensor noise."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.dstack([x / width * 200, y / height * 200, (x + y) / (width + height) * 255])
    base += rng.normal(0.0, 6.0, base.shape).astype(np.float32)
    base = np.clip(base, 0, 255).astype(np.uint8)
    frames = []
    for i in range(count):
        frame = base.copy()
        phase = 2 * np.pi * i / count
        centre = (int(width / 2 + width / 3 * np.cos(phase)),
                  int(height / 2 + height / 3 * np.sin(phase)))
        cv2.circle(frame, centre, height // 8, (40, 220, 250), -1)
        cv2.rectangle(frame, (i * width // count, height // 10),
                      (i * width // count + width // 6, height // 4), (200, 60, 30), -1)
        cv2.putText(frame, f'bench frame {i:03d}', (width // 20, height - height // 12),
                    cv2.FONT_HERSHEY_SIMPLEX, height / 480, (255, 255, 255), 2)
        frames.append(frame)
    return frames


def messages(kind: str, frames: list, quality: int) -> list:
    """Ready-to-publish messages; only the stamp changes per publish."""
    prepared = []
    for frame in frames:
        if kind == 'raw':
            msg = Image()
            msg.height, msg.width = frame.shape[:2]
            msg.encoding = 'bgr8'
            msg.step = frame.shape[1] * 3
            msg.data = frame.tobytes()
        else:
            msg = CompressedImage()
            msg.format = 'jpeg'
            ok, jpeg = cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            msg.data = jpeg.tobytes()
        msg.header.frame_id = 'bench_camera'
        prepared.append(msg)
    return prepared


def main():
    """Publish until --duration or a signal, then save the stamps and shut down cleanly."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--topic', default='/bench/image')
    parser.add_argument('--kind', choices=('raw', 'compressed'), default='raw')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--fps', type=float, default=30.0)
    parser.add_argument('--quality', type=int, default=80, help='JPEG quality (compressed)')
    parser.add_argument('--duration', type=float, default=60.0, help='stop after (s)')
    parser.add_argument('--reliable', action='store_true')
    parser.add_argument('--out', required=True, help='.npy file for the published stamps')
    options = parser.parse_args()
    require_loopback_only()

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    prepared = messages(options.kind, scene(options.width, options.height, 30), options.quality)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('bench_camera')
    qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE if options.reliable
                     else ReliabilityPolicy.BEST_EFFORT)
    publisher = node.create_publisher(type(prepared[0]), options.topic, qos)
    stamps = []
    period = 1.0 / options.fps
    start = time.monotonic()
    deadline = start + options.duration
    errors = 0
    try:
        i = 0
        while not stop and time.monotonic() < deadline:
            delay = start + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            msg = prepared[i % len(prepared)]
            now = time.time_ns() // 1000 * 1000  # whole microseconds: exact as float64 us
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
            try:
                publisher.publish(msg)
                stamps.append(now)
            except Exception as exc:  # e.g. RCLError under overload: count, keep the rate
                errors += 1
                if errors == 1:
                    print(f'publish failed: {exc}', file=sys.stderr)
            i += 1
    finally:
        np.save(options.out, np.array(stamps, np.int64))
        node.destroy_node()
        rclpy.shutdown()
    size = len(prepared[0].data)
    print(f'published {len(stamps)} {options.kind} frames ({size} bytes each) on '
          f'{options.topic}, {errors} errors')


if __name__ == '__main__':
    main()
