"""
Encoders behind one seam: a picture in, one encoded unit out, once per stream variant.

The stream hub (:mod:`video_bridge.core.streams`) keeps one encoder per variant it has viewers
for and calls it from the ROS thread (off the network loop; OpenCV and PyAV release the GIL).
JPEG units are self-contained pictures; H.264 and VP8 units are one frame of a continuous
stream, so their encoder keeps state and can be asked for a keyframe (a join, a PLI/FIR, a
layer switch). Every peer watching the same variant shares its units: no encoder per viewer.

Which FFmpeg encoders a codec has, and their options, come from the codec registry
(:mod:`video_bridge.core.codec_registry`); this module holds no codec's settings of its own.
H.264 is constrained baseline from libx264 at ``ultrafast`` + ``zerolatency`` (no B-frames, no
lookahead: one unit per input frame, ~1.4 ms at 640x480), with SPS/PPS repeated on every
keyframe so a peer can start at any of them. VP8 is libvpx in realtime mode at a fixed speed
(12) with CBR rate control. PyAV (``av``) is imported only when a video encoder is made, so
JPEG-only bridges do not need it.

Two more kinds of entry sit behind the same seam:

* **Hardware H.264 encoders** that the PyPI ``av`` wheel carries next to libx264
  (``h264_v4l2m2m``: Raspberry Pi 4 and other V4L2 mem2mem boards, ``h264_nvenc``: NVIDIA,
  ``h264_qsv``: Intel Quick Sync). Which one is used is chosen once at start
  (:func:`choose_h264_encoder`): ``auto`` tries each with a tiny test encode and falls back to
  libx264. Their units go through :class:`~video_bridge.core.h264.H264Source`, so every
  keyframe carries SPS/PPS whatever the encoder does with headers.
* **Pass-through** (:class:`PassthroughH264`): a stream whose source already is H.264 hands
  each access unit to its top WebRTC layer unchanged: no decode, no encode. Pictures for JPEG
  viewers and the lower layers come from one :class:`H264Decoder` per stream.
"""

from dataclasses import dataclass
import fractions
import logging
import threading
from typing import Callable, List, Optional, Tuple

import cv2
from video_bridge.core import codec_registry, h264 as h264_units, image_codec

JPEG, H264, VP8 = codec_registry.JPEG, codec_registry.H264, codec_registry.VP8
VIDEO_CODECS = codec_registry.VIDEO_CODECS
CODECS = codec_registry.CODECS
CLOCK_RATE = codec_registry.RTP_VIDEO_CLOCK  # RTP video clock (RFC 3551): timestamps in 1/90000 s
TIME_BASE = fractions.Fraction(1, CLOCK_RATE)
MIN_BITRATE = 50_000
MAX_BITRATE = 20_000_000
KEYFRAME_INTERVAL = codec_registry.KEYFRAME_INTERVAL

_H264 = codec_registry.get(H264)
LIBX264 = _H264.software_encoder.name
# H.264 encoders of the PyPI av wheel besides libx264, in the order ``auto`` tries them.
HARDWARE_H264 = tuple(e.name for e in _H264.encoders if e.hardware)
H264_ENCODERS = ('auto', LIBX264) + HARDWARE_H264
PROBE_SIZE = 64           # pixels, the side of the test picture an encoder must encode
PROBE_TIMEOUT = 5.0       # s one probe may take (a driver that hangs is given up on)


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
    """
    A stateless JPEG encoder at one quality and size bound (what protocol v1 sends).

    Stateless and cheap to make (the hub makes one per JPEG variant and frame); every unit is
    a keyframe.
    """

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

    def __init__(self, codec: str, bitrate: int, fps: int = 30, encoder_name: str = '',
                 fall_back: bool = True):
        if codec not in VIDEO_CODECS:
            raise ValueError(f'unknown video codec {codec!r} (known: {", ".join(VIDEO_CODECS)})')
        self._codec = codec_registry.get(codec)
        self._spec = self._codec.encoder(encoder_name)   # ValueError for an unknown name
        self.fall_back = fall_back     # hardware failing later: go on with the software one
        self._headers = None
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
        spec = self._spec
        context = av.CodecContext.create(spec.name, 'w')
        context.width, context.height = width, height
        context.pix_fmt = spec.pixel_format
        context.time_base = TIME_BASE
        context.framerate = fractions.Fraction(self.fps, 1)
        context.bit_rate = self.bitrate
        context.gop_size = KEYFRAME_INTERVAL
        for attribute, value in spec.settings.items():
            setattr(context, attribute, value)
        context.options = spec.options(self.bitrate)
        if spec.hardware:   # (H.264 only) keyframes with SPS/PPS, whatever the encoder does
            self._headers = h264_units.H264Source()
        context.open()     # here, so a missing device fails now, not at the first encode
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
            self._open_or_fall_back(width, height)
            keyframe = True
        frame = _video_frame(av, picture.i420, width, height)
        if self._context.pix_fmt != 'yuv420p':
            frame = frame.reformat(format=self._context.pix_fmt)
        frame.pts = pts
        frame.time_base = TIME_BASE
        frame.pict_type = av.video.frame.PictureType.I if keyframe \
            else av.video.frame.PictureType.NONE
        self.encodes += 1
        try:
            packets = self._context.encode(frame)
        except av.error.FFmpegError as exc:
            if not self._spec.hardware or not self.fall_back:
                raise
            self._fall_back(exc)      # the next picture opens libx264 with a keyframe
            return None
        if not packets:
            return None
        data = b''.join(bytes(packet) for packet in packets)
        is_key = any(packet.is_keyframe for packet in packets)
        if self._headers is not None:
            try:
                unit = self._headers.feed(data, 0.0)
            except h264_units.MalformedUnit:   # e.g. headers only, while it warms up
                return None
            data, is_key = unit.data, unit.keyframe
        if is_key:
            self.keyframes += 1
        return EncodedUnit(data, is_key, pts)

    @property
    def encoder_name(self) -> str:
        """Return the FFmpeg encoder in use (the software one after a hardware failure)."""
        return self._spec.name

    def _open_or_fall_back(self, width: int, height: int):
        try:
            self._open(width, height)
        except self._av.error.FFmpegError as exc:
            if not self._spec.hardware or not self.fall_back:
                raise
            self._fall_back(exc)
            self._open(width, height)

    def _fall_back(self, exc):
        """Go on with the software encoder after a hardware one that passed its probe failed."""
        software = self._codec.software_encoder
        logging.getLogger(__name__).warning('%s encoder %s failed (%s): using %s for this '
                                            'layer', self._codec.label, self.encoder_name, exc,
                                            software.name)
        self._spec = software
        self.close()

    def close(self):
        """Drop the codec context (the next frame opens a fresh one with a keyframe)."""
        self._context = None
        self._size = (0, 0)
        self._headers = None


class PassthroughH264(Encoder):
    """
    The top layer of a stream whose source is H.264: the source's own access unit, unchanged.

    ``encode`` takes an :class:`~video_bridge.core.h264.AccessUnit` (already checked and with
    its keyframe flag), not a picture. A keyframe cannot be asked for: the request would have
    to reach the robot's encoder, which this bridge does not control; a joining or recovering
    peer waits for the source's next keyframe.
    """

    codec = H264
    passthrough = True

    def encode(self, unit, pts: int = 0, keyframe: bool = False) -> EncodedUnit:
        """Hand the unit on (``keyframe`` requests are ignored: see the class docstring)."""
        self.encodes += 1
        return EncodedUnit(unit.data, unit.keyframe, pts)


class H264Decoder:
    """
    One stream's H.264 decoder (FFmpeg's, through PyAV) for its JPEG viewers and lower layers.

    Starts at a keyframe (units before the first one give no picture) and starts over at the
    next keyframe after a decode error. One thread, no frame threading: a picture comes out
    for the unit that went in, not a few units later.
    """

    def __init__(self):
        import av  # noqa: F401  (only a stream with JPEG viewers or lower layers needs it)
        self._av = av
        self._context = None
        self.decodes = 0

    def decode(self, unit) -> Optional[object]:
        """Decode one AccessUnit to a BGR array; None until a keyframe has come."""
        if self._context is None:
            if not unit.keyframe:
                return None
            self._context = self._av.CodecContext.create(_H264.decoder, 'r')
            self._context.thread_count = 1
        self.decodes += 1
        try:
            frames = self._context.decode(self._av.Packet(unit.data))
        except self._av.error.FFmpegError as exc:
            self.close()
            raise image_codec.MalformedImage(f'H.264 decoder refused the unit: {exc}',
                                             'undecodable') from None
        if not frames:
            return None
        return frames[-1].to_ndarray(format='bgr24')

    def close(self):
        """Drop the decoder state (the next keyframe starts a new one)."""
        self._context = None


def make_video_encoder(codec: str, layer: int, bitrate: int, fps: int, source: str = '',
                       h264_encoder: str = LIBX264) -> Encoder:
    """
    Return the encoder of one video variant: the codec registry's one decision.

    ``source`` is the stream's own codec when its topic is already encoded (``h264``): the
    top layer in that codec is then the source's units passed through.
    """
    if source == H264 and codec == H264 and layer == 0:
        return PassthroughH264()
    return VideoEncoder(codec, bitrate, fps, h264_encoder if codec == H264 else '')


def probe_h264_encoder(name: str, timeout: float = PROBE_TIMEOUT) -> Optional[str]:
    """
    Encode a tiny picture with H.264 encoder ``name``; return why it cannot be used, or None.

    Runs on its own thread with a deadline, so a driver that hangs costs ``timeout``, not the
    start of the bridge.
    """
    import numpy as np
    outcome: List[Optional[str]] = []

    def attempt():
        try:
            encoder = VideoEncoder(H264, 300_000, 30, name, fall_back=False)
            picture = np.zeros((PROBE_SIZE, PROBE_SIZE, 3), np.uint8)
            for index in range(8):        # hardware may hold a few frames before the first unit
                picture[:, :, 1] = index * 30
                unit = encoder.encode(picture, index * 3000, keyframe=index == 0)
                if unit is not None:
                    outcome.append(None if unit.keyframe else
                                   'its first unit was not a keyframe')
                    return
            outcome.append('no unit came out of 8 pictures')
        except Exception as exc:  # PyAV raises its own error types (no device, no library)
            detail = getattr(exc, 'strerror', None) or str(exc) or type(exc).__name__
            hint = _H264.encoder(name).unavailable_hint if name in H264_ENCODERS[1:] else \
                'cannot open it'
            outcome.append(f'{hint} ({detail[:120]})')
    thread = threading.Thread(target=attempt, name=f'probe-{name}', daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f'the test encode took longer than {timeout:g} s'
    return outcome[0] if outcome else 'the test encode ended without a result'


def choose_h264_encoder(wanted: str, probe: Callable[[str], Optional[str]] = probe_h264_encoder,
                        logger: Optional[logging.Logger] = None) -> Tuple[str, dict]:
    """
    Pick the H.264 encoder to use: ``auto`` (the first hardware one that works), or a name.

    Every candidate is tried with a test encode; a named encoder that fails falls back to
    libx264 too (video with a warning rather than no video). Returns the name and, for each
    candidate that was not used, why. Logs the choice and the reasons.
    """
    log = logger or logging.getLogger('video_bridge.core.encoders')
    if wanted not in H264_ENCODERS:
        raise ValueError(f'unknown H.264 encoder {wanted!r} (one of: {", ".join(H264_ENCODERS)})')
    candidates = HARDWARE_H264 if wanted == 'auto' else (() if wanted == LIBX264 else (wanted,))
    skipped = {}
    for name in candidates:
        reason = probe(name)
        if reason is None:
            log.info('H.264 encoder: %s (%s)%s', name, 'auto: first that encoded a test picture'
                     if wanted == 'auto' else 'as configured', _skipped_text(skipped))
            return name, skipped
        skipped[name] = reason
    reason = probe(LIBX264)
    if reason is not None:
        log.warning('H.264 encoder: libx264 failed its test encode too: %s', reason)
    if wanted not in ('auto', LIBX264):
        log.warning('H.264 encoder %s cannot be used (%s): using libx264', wanted,
                    skipped[wanted])
    else:
        log.info('H.264 encoder: libx264 (%s)%s', 'auto: no hardware encoder works here'
                 if wanted == 'auto' else 'as configured', _skipped_text(skipped))
    return LIBX264, skipped


def _skipped_text(skipped: dict) -> str:
    return ''.join(f'; skipped {name}: {reason}' for name, reason in skipped.items())


def video_available(codec: str) -> Optional[str]:
    """Return why ``codec`` cannot be encoded here (PyAV or its encoder missing), or None."""
    try:
        import av
    except ImportError:
        return 'PyAV (python3-av / pip av) is not installed'
    try:
        entry = codec_registry.get(codec)
    except ValueError as exc:
        return str(exc)
    if not entry.video:
        return f'{codec} is not a video codec'
    name = entry.software_encoder.name
    try:
        av.codec.Codec(name, 'w')
    except Exception as exc:  # PyAV raises its own error types for unknown codecs
        return f'{name} is not available in this PyAV build: {exc}'
    return None
