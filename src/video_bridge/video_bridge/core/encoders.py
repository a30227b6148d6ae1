"""
Encoders behind one seam: a picture in, one encoded unit out, once per stream variant.

The stream hub (:mod:`video_bridge.core.streams`) keeps one encoder per variant it has viewers
for and calls it from the ROS thread (off the network loop; OpenCV and PyAV release the GIL).
JPEG units are self-contained pictures; H.264 and VP8 units are one frame of a continuous
stream, so their encoder keeps state and can be asked for a keyframe (a join, a PLI/FIR, a
layer switch). Every peer watching the same variant shares its units: no encoder per viewer.

H.264 is constrained baseline from libx264 at ``ultrafast`` + ``zerolatency`` (no B-frames, no
lookahead: one unit per input frame, ~1.4 ms at 640x480), with SPS/PPS repeated on every
keyframe so a peer can start at any of them. VP8 is libvpx in realtime mode at a fixed speed
(12) with CBR rate control. PyAV (``av``) is imported only when a video encoder is made, so
JPEG-only bridges do not need it.
"""

from dataclasses import dataclass
import fractions
from typing import Dict, Optional

import cv2
from video_bridge.core import image_codec

JPEG = 'jpeg'
H264 = 'h264'
VP8 = 'vp8'
VIDEO_CODECS = (H264, VP8)
CODECS = (JPEG,) + VIDEO_CODECS
CLOCK_RATE = 90000  # RTP video clock (RFC 3551): timestamps in 1/90000 s
TIME_BASE = fractions.Fraction(1, CLOCK_RATE)
MIN_BITRATE = 50_000
MAX_BITRATE = 20_000_000
KEYFRAME_INTERVAL = 300  # frames between keyframes the encoder makes by itself (10 s at 30 fps)


@dataclass(frozen=True)
class EncodedUnit:
    """One encoded picture: its bytes, whether a decoder can start at it, and its timestamp."""

    data: bytes
    keyframe: bool = True
    pts: int = 0            # in TIME_BASE units (video codecs); 0 for JPEG


class VideoPicture:
    """A picture converted once to I420 for every video encoder (layer) of a frame."""

    __slots__ = ('width', 'height', '_picture', '_i420')

    def __init__(self, picture):
        height, width = picture.shape[:2]
        self.width, self.height = width & ~1, height & ~1   # 4:2:0 needs even sizes
        if self.width < 16 or self.height < 16:
            raise image_codec.MalformedImage(f'{width}x{height} is too small to encode as video')
        self._picture = picture[:self.height, :self.width]
        self._i420 = None

    @property
    def i420(self):
        """Return the planar YUV 4:2:0 array (height * 3/2 rows), converted on first use."""
        if self._i420 is None:
            picture = self._picture
            if picture.ndim == 2:
                picture = cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR)
            elif picture.shape[2] == 4:
                picture = cv2.cvtColor(picture, cv2.COLOR_BGRA2BGR)
            self._i420 = cv2.cvtColor(picture, cv2.COLOR_BGR2YUV_I420)
        return self._i420


class Encoder:
    """The seam: ``encode(picture, keyframe)`` -> EncodedUnit or None (nothing came out)."""

    codec = ''
    encodes = 0  # how many pictures this encoder was given (tests count them)

    def encode(self, picture, pts: int = 0, keyframe: bool = False) -> Optional[EncodedUnit]:
        """Encode one uint8 picture (BGR, or single-channel grey)."""
        raise NotImplementedError

    def close(self):
        """Free the codec's resources (idempotent)."""


class JpegEncoder(Encoder):
    """A stateless JPEG encoder at one quality and size bound (what protocol v1 sends)."""

    codec = JPEG

    def __init__(self, quality: int, max_width: int = 0, max_height: int = 0):
        self.quality = quality
        self.max_width = max_width
        self.max_height = max_height

    def encode(self, picture, pts: int = 0, keyframe: bool = False) -> EncodedUnit:
        """Encode (and downscale to the bounds) one picture."""
        self.encodes += 1
        return EncodedUnit(image_codec.encode_jpeg(picture, self.quality, self.max_width,
                                                   self.max_height))


def _video_options(codec: str, bitrate: int, fps: int) -> Dict[str, str]:
    if codec == H264:
        kbit = max(1, bitrate // 1000)
        return {'preset': 'ultrafast', 'tune': 'zerolatency', 'profile': 'baseline',
                'level': '31',
                # no scene-cut keyframes (they come on request), a VBV cap so a keyframe never
                # bursts far beyond the link, and headers in-band on every keyframe.
                'x264-params': (f'keyint={KEYFRAME_INTERVAL}:min-keyint={KEYFRAME_INTERVAL}:'
                                f'scenecut=0:vbv-maxrate={kbit}:vbv-bufsize={max(1, kbit // 2)}'
                                f':repeat-headers=1:sliced-threads=0:threads=1')}
    # cpu-used: in realtime mode a positive value is a time budget, not a speed (libvpx spends
    # up to (16 - n) / 16 of the frame interval and picks its speed from wall-clock time: 8 took
    # ~3.5 ms per 640x480 frame and varied with machine load); a negative value fixes the speed.
    # Speed 12 measured 1.3-1.9 ms CPU per frame at 0.3-1.2 Mbit/s within 1.5 % of the target
    # rate and 0.4-1 dB PSNR below cpu-used 8 at 1 Mbit/s; speed 14-16 were not faster on
    # textured scenes, lost 3-12 dB there and overshot a 300 kbit/s target 2.7-3x (qmax reached).
    return {'deadline': 'realtime', 'cpu-used': '-12', 'lag-in-frames': '0',
            'minrate': str(bitrate), 'maxrate': str(bitrate), 'bufsize': str(bitrate),
            'static-thresh': '1', 'undershoot-pct': '100', 'overshoot-pct': '15',
            'noise-sensitivity': '0', 'error-resilient': '1'}


def _video_frame(av, i420, width: int, height: int):
    """
    Wrap the I420 array as a frame without copying it in Python.

    FFmpeg copies a frame it does not own when it is sent to the encoder, so the array is never
    referenced after ``encode``; measured ~0.1 ms less per frame and layer than ``from_ndarray``.
    """
    try:
        frame = av.VideoFrame.from_numpy_buffer(i420, format='yuv420p')
    except (AttributeError, ValueError):   # a PyAV without yuv420p buffer frames
        frame = None
    # PyAV 18 derives the height as rows // 6 * 4, which is 2 short when height % 4 == 2.
    if frame is None or (frame.width, frame.height) != (width, height):
        frame = av.VideoFrame.from_ndarray(i420, format='yuv420p')
    return frame


class VideoEncoder(Encoder):
    """An H.264 or VP8 encoder for one layer (one target bitrate) of one stream."""

    def __init__(self, codec: str, bitrate: int, fps: int = 30):
        if codec not in VIDEO_CODECS:
            raise ValueError(f'unknown video codec {codec!r} (known: {", ".join(VIDEO_CODECS)})')
        if not MIN_BITRATE <= bitrate <= MAX_BITRATE:
            raise ValueError(f'bitrate must be within {MIN_BITRATE}..{MAX_BITRATE} bit/s')
        import av  # noqa: F401  (PyAV: only needed once someone watches over WebRTC)
        self._av = av
        self.codec = codec
        self.bitrate = bitrate
        self.fps = fps
        self._context = None
        self._size = (0, 0)
        self.keyframes = 0

    def _open(self, width: int, height: int):
        av = self._av
        context = av.CodecContext.create('libx264' if self.codec == H264 else 'libvpx', 'w')
        context.width, context.height = width, height
        context.pix_fmt = 'yuv420p'
        context.time_base = TIME_BASE
        context.framerate = fractions.Fraction(self.fps, 1)
        context.bit_rate = self.bitrate
        context.gop_size = KEYFRAME_INTERVAL
        if self.codec == VP8:
            context.qmin, context.qmax = 4, 56
            context.thread_count = 1
        context.options = _video_options(self.codec, self.bitrate, self.fps)
        self._context = context
        self._size = (width, height)

    def encode(self, picture, pts: int = 0, keyframe: bool = False) -> Optional[EncodedUnit]:
        """Encode one picture (array or VideoPicture) at ``pts``; a keyframe when asked."""
        av = self._av
        if not isinstance(picture, VideoPicture):
            picture = VideoPicture(picture)
        width, height = picture.width, picture.height
        if (width, height) != self._size:
            self.close()
            self._open(width, height)
            keyframe = True
        frame = _video_frame(av, picture.i420, width, height)
        frame.pts = pts
        frame.time_base = TIME_BASE
        frame.pict_type = av.video.frame.PictureType.I if keyframe \
            else av.video.frame.PictureType.NONE
        self.encodes += 1
        packets = self._context.encode(frame)
        if not packets:
            return None
        data = b''.join(bytes(packet) for packet in packets)
        is_key = any(packet.is_keyframe for packet in packets)
        if is_key:
            self.keyframes += 1
        return EncodedUnit(data, is_key, pts)

    def close(self):
        """Drop the codec context (the next frame opens a fresh one with a keyframe)."""
        self._context = None
        self._size = (0, 0)


def video_available(codec: str) -> Optional[str]:
    """Return why ``codec`` cannot be encoded here (PyAV or its encoder missing), or None."""
    try:
        import av
    except ImportError:
        return 'PyAV (python3-av / pip av) is not installed'
    name = 'libx264' if codec == H264 else 'libvpx'
    try:
        av.codec.Codec(name, 'w')
    except Exception as exc:  # PyAV raises its own error types for unknown codecs
        return f'{name} is not available in this PyAV build: {exc}'
    return None
