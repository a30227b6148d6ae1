"""Small moving pictures for encoder and WebRTC tests, as the hub receives them (SourceImage).

160x120 so that real x264/libvpx encodes stay cheap; a bar moves 3 px a frame over a gradient,
so inter frames carry real motion. Stamps advance 1/30 s a frame.
"""

import numpy as np
from video_bridge.core.streams import SourceImage

WIDTH, HEIGHT = 160, 120


def picture(index):
    """A moving bar on a gradient, so inter frames carry real motion."""
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    frame[:, :, 1] = np.linspace(0, 255, WIDTH, dtype=np.uint8)
    frame[:, (index * 3) % WIDTH:(index * 3) % WIDTH + 8] = (255, 255, 255)
    return frame


def raw(index):
    """Frame ``index`` as the bridge would receive it from a bgr8 camera."""
    image = picture(index)
    return SourceImage(stamp_sec=1000, stamp_nanosec=index * 33_333_333, data=image.tobytes(),
                       encoding='bgr8', width=WIDTH, height=HEIGHT, step=WIDTH * 3,
                       received_time=2000.0 + index / 30)
