"""Small moving pictures for encoder and WebRTC tests, as the hub receives them (SourceImage).

160x120 so that real x264/libvpx encodes stay cheap; a bar moves 3 px a frame over a gradient,
so inter frames carry real motion. Stamps advance 1/30 s a frame.
"""

import fractions

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


def h264_loop(picture, count: int, width: int, height: int, gop: int = 30, fps: int = 30,
              bitrate: int = 600_000) -> list:
    """
    ``picture(index)`` (a bgr24 array) for index 0..count-1 as libx264 access units, as a
    robot's own encoder sends them: constrained baseline, SPS/PPS on every keyframe, a keyframe
    every ``gop`` pictures. ``count`` should be a whole number of GOPs, so the loop repeats
    seamlessly (each GOP starts at an IDR). Returns (Annex B unit, keyframe) each.
    """
    import av
    context = av.CodecContext.create('libx264', 'w')
    context.width, context.height, context.pix_fmt = width, height, 'yuv420p'
    context.time_base = fractions.Fraction(1, fps)
    context.bit_rate = bitrate
    context.options = {'preset': 'ultrafast', 'tune': 'zerolatency', 'profile': 'baseline',
                       'x264-params': f'keyint={gop}:min-keyint={gop}:scenecut=0:'
                                      'repeat-headers=1'}
    units = []
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(picture(index), format='bgr24')
        frame.pts = index
        packets = context.encode(frame)
        units.append((b''.join(bytes(p) for p in packets), any(p.is_keyframe for p in packets)))
    return units
