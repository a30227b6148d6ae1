"""HTTP-side helpers shared by the bridge tests: a plain GET, ffmpeg as an outside client, and a
camera that publishes its own JPEGs (sensor_msgs/CompressedImage)."""

import subprocess
import time
import urllib.error
import urllib.request

from conftest import FramePublisher
import cv2
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage


def get(url, headers=None, timeout=10):
    """Return (status, headers, body) of a GET, including HTTP errors."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def ffmpeg_frames(url, count, tmp_path, name):
    """Let ffmpeg (a client nobody here wrote) read ``count`` frames from ``url`` into PNGs."""
    pattern = str(tmp_path / f'{name}-%02d.png')
    subprocess.run(['ffmpeg', '-hide_banner', '-loglevel', 'error', '-rw_timeout', '10000000',
                    '-i', url, '-frames:v', str(count), '-y', pattern],
                   check=True, timeout=60, capture_output=True)
    return [cv2.imread(pattern % (i + 1)) for i in range(count)]


class JpegPublisher(FramePublisher):
    """Publishes sensor_msgs/CompressedImage JPEGs (a camera that compresses by itself)."""

    def __init__(self, node, topic, rate=30.0):
        super().__init__(node, topic + '_unused', rate=rate)
        self.compressed = node.create_publisher(CompressedImage, topic, qos_profile_sensor_data)
        self.sent = {}

    def _run(self):
        next_time = time.monotonic()
        while not self._stop.is_set():
            ok, jpeg = cv2.imencode('.jpg', self._pattern(self.count)[:240, :320])
            msg = CompressedImage(format='jpeg', data=jpeg.tobytes())
            msg.header.stamp = self.node.get_clock().now().to_msg()
            self.compressed.publish(msg)
            self.sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = jpeg.tobytes()
            self.count += 1
            next_time += self.period
            self._stop.wait(max(0.0, next_time - time.monotonic()))
