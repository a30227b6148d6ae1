"""What camera_node's reliable QoS (REP 2003, the default) costs against best effort.

Starts the real camera_node (test pattern) as its own process, once per case, and receives
its frames in this process like the bridge does (best effort, depth 1), optionally with a
reliable subscriber next to it (what rviz2's Image display uses). Prints received frames per
second and latency (receive time - header.stamp, same machine clock) at each subscriber, and
the camera's CPU use.

    bench/run qos                      # 640x480 and 1280x720 at 30 fps, 8 s per case
    bench/run qos --sizes 640x480 --duration 5
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from benchlib import cpu_seconds, pct, require_loopback_only, table
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), '..'))
CAMERA = os.path.join(REPO, 'install', 'video_bridge', 'lib', 'video_bridge', 'camera_node')


class Receiver:
    """Latency and count of the frames one subscription receives (after a warm-up)."""

    def __init__(self, node, topic, reliability):
        self.latencies = []
        self.started = None
        node.create_subscription(Image, topic, self._on_image,
                                 QoSProfile(depth=1, reliability=reliability))

    def _on_image(self, msg):
        if self.started is None:
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.latencies.append((time.time() - stamp) * 1000.0)


def run_case(node, executor_lock, width, height, fps, reliability, with_reliable, seconds,
             namespace):
    topic = f'/{namespace}/image_raw'
    receivers = {'best effort (bridge)': Receiver(node, topic, ReliabilityPolicy.BEST_EFFORT)}
    if with_reliable:
        receivers['reliable (rviz2)'] = Receiver(node, topic, ReliabilityPolicy.RELIABLE)
    camera = subprocess.Popen(
        [CAMERA, '--ros-args', '-r', f'__ns:=/{namespace}', '-p', f'width:={width}',
         '-p', f'height:={height}', '-p', f'fps:={float(fps)}',
         '-p', f'reliability:={reliability}'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while node.count_publishers(topic) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # discovery poll, bounded
        time.sleep(2.0)  # warm-up: discovery and the first frames are not measured
        cpu0, t0 = cpu_seconds(camera.pid), time.monotonic()
        for receiver in receivers.values():
            receiver.started = t0
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(camera.pid), time.monotonic()
        for receiver in receivers.values():
            receiver.started = None
    finally:
        camera.send_signal(signal.SIGINT)
        try:
            camera.wait(10)
        except subprocess.TimeoutExpired:
            camera.kill()
            camera.wait()
    rows = []
    for name, receiver in receivers.items():
        values = sorted(receiver.latencies)
        rows.append([f'{width}x{height}', reliability, name,
                     f'{len(values) / (t1 - t0):.1f}',
                     f'{pct(values, 50):.2f}' if values else '-',
                     f'{pct(values, 99):.2f}' if values else '-',
                     f'{100.0 * (cpu1 - cpu0) / (t1 - t0):.0f}%'])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    parser.add_argument('--sizes', default='640x480,1280x720')
    parser.add_argument('--fps', type=float, default=30.0)
    parser.add_argument('--duration', type=float, default=8.0)
    options = parser.parse_args()
    require_loopback_only()
    # Ctrl-C is Python's KeyboardInterrupt: the node is destroyed before rclpy shuts down
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('qos_bench')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    rows = []
    try:
        case = 0
        for size in options.sizes.split(','):
            width, height = (int(v) for v in size.split('x'))
            for reliability, with_reliable in (('best_effort', False), ('reliable', False),
                                               ('reliable', True)):
                case += 1
                rows += run_case(node, None, width, height, options.fps, reliability,
                                 with_reliable, options.duration, f'qos{case}')
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    print(f'camera_node at {options.fps:g} fps, {options.duration:g} s per case '
          '(latency = receive time - header.stamp)')
    print(table(['size', 'camera QoS', 'subscriber', 'fps', 'p50 ms', 'p99 ms', 'camera CPU'],
                rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
