"""
Stream hub: encode each frame once per variant, keep only the newest, count everything.

Pure (no rclpy, no asyncio). The ROS adapter calls :meth:`Stream.publish` from its executor
thread with the fields of an incoming image; the hub converts and JPEG-encodes the frame there
(off the network loop; OpenCV releases the GIL), once per *active* variant, and replaces that
variant's newest-frame slot. Viewers never queue: each one takes the newest frame when it is ready
for one, and a frame it never took is counted as dropped for it. Memory is bounded by one frame
per variant, whatever the viewers do.

A variant may name a video codec and layer (WebRTC): its encoder (:mod:`encoders`) then keeps
state across frames, the slot keeps the last few units (a decoder needs every one since its
last keyframe: a peer that falls behind further waits for the next keyframe), and keyframes are
asked for through the slot's :class:`layers.KeyframeGate` (joins, PLI/FIR, layer switches).

The network adapter learns about new frames through one ``on_frame(stream_name)`` callback per
frame (it schedules a wake-up on its loop), and about viewers coming and going through
``on_viewers(stream_name, count)`` (the ROS adapter subscribes on demand).

Bounded work per frame: a configured stream's *page variants* (its default JPEG variant and its
video layers, what the bridge's own page uses) are always admitted, so other viewers' sizes and
qualities can never lock the page out. Every other JPEG variant (another size or quality, or
any variant of a topic stream) counts against the stream's ``max_variants`` (of which one place
stays kept for the default variant) and against the hub's ``max_total_variants`` across all
streams. Video variants are bounded by construction: one per codec and layer of a stream, and
a topic stream's only by WebRTC peers (each holds one layer, two while switching).

A stream of kind ``h264`` (its topic already carries H.264 access units) feeds its top H.264
layer the source's own units through a pass-through entry of the codec registry
(:func:`encoders.make_video_encoder`): no decode, no encode, one unit shared by every peer.
JPEG variants and the other video layers need pictures: while any of them is watched the
stream keeps one :class:`encoders.H264Decoder` and encodes from its pictures as for any source.
Units are checked first (:mod:`h264`); malformed ones are counted by kind like bad images.
"""

import collections
from dataclasses import dataclass, field
import threading
import time
from typing import Callable, Dict, Optional

from video_bridge.core import codec_registry, encoders, h264, image_codec
from video_bridge.core.layers import KeyframeGate
from video_bridge.core.protocol import (
    FLAG_COLORMAPPED, FLAG_PASSTHROUGH, FLAG_SCALED, FrameHeader, pack_frame_header, Variant)

RAW = 'raw'
COMPRESSED = 'compressed'
H264 = 'h264'            # CompressedImage carrying H.264 access units (Annex B)
KINDS = (RAW, COMPRESSED, H264)
COLORMAPPED_ENCODINGS = frozenset({'16UC1', '32FC1', 'mono16'})
VIDEO_HISTORY = 8        # units kept per video variant for peers a frame or two behind
KEYFRAME_MIN_INTERVAL = 0.5  # s between requested keyframes of one video variant


class CapacityError(RuntimeError):
    """A viewer or variant limit was reached; the message says which."""


class UnknownStream(KeyError):
    """No stream has that name (and none could be created for it)."""


class NotPermitted(PermissionError):
    """The client may not watch topic streams (they need the token); the message says so."""


@dataclass(frozen=True)
class SourceImage:
    """One incoming image, as plain fields (a sensor_msgs Image or CompressedImage)."""

    stamp_sec: int
    stamp_nanosec: int
    data: object                # buffer: bytes, array.array, memoryview
    encoding: str = ''          # Image only
    width: int = 0
    height: int = 0
    step: int = 0
    is_bigendian: bool = False
    image_format: str = ''      # CompressedImage only, e.g. 'jpeg' or 'png'
    received_time: float = 0.0  # wall clock when the bridge got it


class EncodedFrame:
    """
    One frame of one variant, ready to send; wire forms are built once and shared.

    ``data`` is the encoded unit in its codec (a JPEG picture, an H.264 access unit, a VP8
    frame); ``payload`` is what the ``/video`` websocket sends (JPEG: the frame header, then
    the picture).
    """

    __slots__ = ('header', 'payload', '_wire', 'codec', 'data', 'keyframe', 'pts')

    def __init__(self, header: FrameHeader, data: bytes, codec: str = codec_registry.JPEG,
                 keyframe: bool = True, pts: int = 0):
        self.header = header
        self.codec = codec
        self.data = data          # the encoded bytes, whatever the codec
        self.keyframe = keyframe  # video: a decoder can start here (JPEG: always)
        self.pts = pts            # video: presentation time in encoders.TIME_BASE units
        self.payload = pack_frame_header(header) + data if codec == codec_registry.JPEG else data
        self._wire: Dict[str, bytes] = {}

    @property
    def seq(self) -> int:
        """Stream sequence number: 1 for the first frame the stream received."""
        return self.header.seq

    def wire(self, form: str, build: Callable[['EncodedFrame'], bytes]) -> bytes:
        """Return this frame serialised for one transport, building it on first use only."""
        data = self._wire.get(form)
        if data is None:
            data = self._wire[form] = build(self)
        return data


class _VariantSlot:
    __slots__ = ('viewers', 'latest', 'encoder', 'recent', 'keyframes')

    def __init__(self, encoder: Optional[encoders.Encoder] = None):
        self.viewers = 0
        self.latest: Optional[EncodedFrame] = None
        self.encoder = encoder    # video variants only: state across frames
        self.recent = collections.deque(maxlen=VIDEO_HISTORY) if encoder else None
        self.keyframes = KeyframeGate(KEYFRAME_MIN_INTERVAL) if encoder else None


@dataclass(frozen=True)
class StreamSettings:
    """Per-stream configuration."""

    name: str
    topic: str
    kind: str = RAW                   # RAW (sensor_msgs/Image), COMPRESSED or H264
    quality: int = 80                 # default JPEG quality
    max_variants: int = 4             # distinct size/quality combinations encoded at once
    display: image_codec.DisplaySettings = image_codec.DisplaySettings()
    video_bitrates: tuple = (1_200_000, 600_000, 300_000)  # bit/s of video layers 0, 1, 2
    video_fps: int = 30               # nominal rate the video encoders' rate control assumes
    topic_stream: bool = False        # made on request for a graph topic (no page variants)
    h264_encoder: str = encoders.LIBX264   # what encodes H.264 layers (encoders.H264_ENCODERS)


@dataclass(frozen=True)
class StreamCounters:
    """Cumulative counters of a stream (reported in BridgeStatus and /api/streams)."""

    viewers: int
    variants: int
    frames_in: int
    frames_sent: int
    frames_dropped: int
    frames_skipped: int
    bytes_sent: int
    encode_count: int
    encode_seconds: float
    width: int
    height: int
    video_encoders: int = 0    # H.264/VP8 encoders alive (one per codec and layer in use)
    video_encodes: int = 0     # pictures given to them
    # Frames that could not be shown, by kind (image_codec.MALFORMED_KINDS); never counted as
    # dropped (dropped means "a newer frame replaced it").
    malformed: Dict[str, int] = field(default_factory=dict)
    video_decoders: int = 0    # H.264 sources: decoders alive (one while pictures are needed)

    @property
    def frames_malformed(self) -> int:
        """All frames that could not be shown, whatever the defect."""
        return sum(self.malformed.values())


class Viewer:
    """One client's place in a stream: takes the newest frame of its variant, never a backlog."""

    def __init__(self, stream: 'Stream', variant: Variant, joined_seq: int):
        self.stream = stream
        self.variant = variant
        self.last_seq = 0
        self._joined_seq = joined_seq  # frames after this one count as dropped if never taken
        self._attached = True

    def take_all(self) -> list:
        """
        Return every kept frame newer than the last one taken, oldest first (video variants).

        A gap (the first one's seq is more than one past the last taken) means units were lost
        to this viewer; its decoder then needs a keyframe (see :meth:`request_keyframe`).
        """
        frames = self.stream._recent_since(self.variant, self.last_seq)
        if not frames:
            return frames
        self.stream._delivered_all(frames, max(self.last_seq, self._joined_seq))
        self.last_seq = frames[-1].seq
        return frames

    def request_keyframe(self):
        """Ask the variant's encoder for a keyframe soon (rate-limited; video only)."""
        self.stream._request_keyframe(self.variant)

    def take(self) -> Optional[EncodedFrame]:
        """Return the newest frame if it is newer than the last one taken, else None."""
        frame = self.stream._newest(self.variant)
        if frame is None or frame.seq <= self.last_seq:
            return None
        self.stream._delivered(frame, max(self.last_seq, self._joined_seq))
        self.last_seq = frame.seq
        return frame

    def detach(self):
        """Leave the stream (idempotent)."""
        if self._attached:
            self._attached = False
            self.stream._detach(self.variant)


class Stream:
    """A named video stream fed by one ROS topic."""

    def __init__(self, settings: StreamSettings, hub: 'StreamHub'):
        self.settings = settings
        self._hub = hub
        self._lock = threading.Lock()
        self._slots: Dict[Variant, _VariantSlot] = {}
        self._viewers = 0
        self._seq = 0
        self._frames_skipped = 0
        self._frames_sent = 0
        self._frames_dropped = 0
        self._bytes_sent = 0
        self._encode_count = 0
        self._encode_seconds = 0.0
        self._size = (0, 0)
        self._warned = set()
        self._frames_in = 0
        self._malformed = dict.fromkeys(image_codec.MALFORMED_KINDS, 0)
        self._h264 = None       # H264 kind: the source's parameter sets, keyframe timing
        self._decoder = None    # H264 kind: kept while JPEG variants or encoded layers watch
        self._decode_error = None  # a decode error of the unit being published
        if settings.kind == H264:
            self._h264 = h264.H264Source()
            self._malformed.update(dict.fromkeys(h264.MALFORMED_KINDS, 0))
        self._malformed_logged = {}  # kind -> (time of the last log line, count then)
        self._video_encodes = 0
        self._pts = 0

    @property
    def name(self) -> str:
        """Stream name, as in /video/<name>."""
        return self.settings.name

    def reconfigure(self, settings: StreamSettings):
        """
        Take new settings at run time (``ros2 param set``): frames from now on use them.

        Viewers that join later resolve their quality with the new default; viewers already
        watching keep the variant they joined with. Video layers whose bitrate changed get a
        fresh encoder (it starts with a keyframe). Name, topic, kind and the number of layers
        are fixed for a stream's life: ValueError.
        """
        old = self.settings
        fixed = ('name', 'topic', 'kind')
        if any(getattr(settings, f) != getattr(old, f) for f in fixed) or \
                len(settings.video_bitrates) != len(old.video_bitrates):
            raise ValueError(f'stream {self.name!r}: name, topic, kind and layer count are '
                             'fixed at start')
        with self._lock:
            self.settings = settings
            if settings.video_bitrates != old.video_bitrates:
                for variant, slot in self._slots.items():
                    if slot.encoder is not None:
                        slot.encoder = self._video_encoder(variant)
                        slot.keyframes.request()

    # -- viewers (network side) -----------------------------------------------------------

    def attach(self, variant: Variant) -> Viewer:
        """Add a viewer of ``variant``; CapacityError past the viewer or variant limit."""
        variant = variant.resolved(self.settings.quality)
        with self._lock:
            if self._hub.viewer_count() >= self._hub.max_viewers:
                raise CapacityError(f'viewer limit reached ({self._hub.max_viewers})')
            slot = self._slots.get(variant)
            if slot is None:
                if variant.codec:
                    slot = self._slots[variant] = _VariantSlot(self._video_encoder(variant))
                elif self.page_variant(variant):
                    slot = self._slots[variant] = _VariantSlot()
                else:
                    self._admit_extra_variant()
                    slot = self._slots[variant] = _VariantSlot()
            slot.viewers += 1
            if slot.keyframes is not None:
                slot.keyframes.request()  # a joining decoder starts at a keyframe
            self._viewers += 1
            count = self._viewers
            joined_seq = self._seq
        self._hub._viewers_changed(self.name, count)
        return Viewer(self, variant, joined_seq)

    def page_variant(self, variant: Variant) -> bool:
        """
        Tell whether ``variant`` (resolved) is one the page itself uses: always admitted.

        A configured stream's default JPEG variant and its video layers; a topic stream has
        none (the page watches it only for a token holder, within the limits).
        """
        if self.settings.topic_stream:
            return False
        return bool(variant.codec) or variant == Variant(quality=self.settings.quality)

    def _extra_variants(self) -> int:
        return sum(1 for v in self._slots if not v.codec and not self.page_variant(v))

    def _admit_extra_variant(self):
        """Take a place for a new JPEG variant beyond the page's, or raise CapacityError."""
        kept = 0 if self.settings.topic_stream else 1   # the default variant's place
        if self._extra_variants() >= self.settings.max_variants - kept:
            raise CapacityError(
                f'variant limit reached for stream {self.name!r} '
                f'({self.settings.max_variants} size/quality combinations, the default one '
                f'included)' if kept else
                f'variant limit reached for stream {self.name!r} '
                f'({self.settings.max_variants} size/quality combinations in use)')
        if not self._hub._take_variant():
            raise CapacityError(
                f'variant limit reached across all streams ({self._hub.max_total_variants} '
                "size/quality combinations besides the streams' own defaults)")

    def _detach(self, variant: Variant):
        with self._lock:
            slot = self._slots[variant]
            slot.viewers -= 1
            if slot.viewers == 0:
                del self._slots[variant]
                if not variant.codec and not self.page_variant(variant):
                    self._hub._release_variant()
            self._viewers -= 1
            count = self._viewers
        self._hub._viewers_changed(self.name, count)

    def _video_encoder(self, variant: Variant) -> encoders.Encoder:
        bitrates = self.settings.video_bitrates
        if variant.codec not in encoders.VIDEO_CODECS:
            raise CapacityError(f'unknown video codec {variant.codec!r}')
        if not 0 <= variant.layer < len(bitrates):
            raise CapacityError(f'stream {self.name!r} has layers 0..{len(bitrates) - 1}')
        return encoders.make_video_encoder(
            variant.codec, variant.layer, bitrates[variant.layer], self.settings.video_fps,
            source=H264 if self.settings.kind == H264 else '',
            h264_encoder=self.settings.h264_encoder)

    def _newest(self, variant: Variant) -> Optional[EncodedFrame]:
        slot = self._slots.get(variant)
        return slot.latest if slot is not None else None

    def _recent_since(self, variant: Variant, seq: int) -> list:
        with self._lock:
            slot = self._slots.get(variant)
            if slot is None or slot.recent is None:
                frame = slot.latest if slot is not None else None
                return [frame] if frame is not None and frame.seq > seq else []
            return [frame for frame in slot.recent if frame.seq > seq]

    def _delivered_all(self, frames: list, baseline_seq: int):
        for frame in frames:
            self._delivered(frame, baseline_seq)
            baseline_seq = frame.seq

    def _request_keyframe(self, variant: Variant):
        with self._lock:
            slot = self._slots.get(variant)
            if slot is not None and slot.keyframes is not None:
                slot.keyframes.request()

    def _delivered(self, frame: EncodedFrame, baseline_seq: int):
        self._frames_sent += 1
        self._bytes_sent += len(frame.payload)
        self._frames_dropped += max(0, frame.seq - baseline_seq - 1)

    # -- frames (ROS side) ----------------------------------------------------------------

    def publish(self, image: SourceImage) -> int:
        """
        Encode ``image`` once for every variant someone watches; return how many were made.

        Raises image_codec.UnsupportedEncoding or MalformedImage for images it cannot show
        (the caller logs them, see :meth:`malformed_log_due`); nothing is replaced then and
        the frame is counted by kind in ``counters().malformed``, not as dropped. An H.264
        source that has sent no keyframe for a long time gets its units passed on, and then
        h264.KeyframeOverdue raised (counted and logged the same way).
        """
        unit = None
        try:
            if self._h264 is not None:
                unit = self._h264_unit(image)
        except image_codec.MalformedImage as exc:
            with self._lock:
                self._frames_in += 1
            self._count_malformed(exc.kind)
            raise
        with self._lock:
            self._frames_in += 1
            variants = list(self._slots)
            now = self._hub.clock()
            video = {variant: (slot.encoder, slot.keyframes.take(now))
                     for variant, slot in self._slots.items() if slot.encoder is not None}
            decode = any(not v.codec for v in variants) or any(
                not getattr(encoder, 'passthrough', False) for encoder, _ in video.values())
            if not variants:
                self._seq += 1
                self._frames_skipped += 1
            seq = self._seq + 1  # taken only once the frame turned out showable
        if unit is not None:
            self._keep_decoder(decode)
        if not variants:
            return 0
        started = time.perf_counter()
        try:
            frames, encodes = self._encode(image, seq, [v for v in variants if not v.codec],
                                           video, unit)
        except image_codec.UnsupportedEncoding:
            self._count_malformed('encoding')
            raise
        except image_codec.MalformedImage as exc:
            self._count_malformed(exc.kind)
            raise
        elapsed = time.perf_counter() - started
        with self._lock:
            self._seq = seq
            for variant, frame in frames.items():
                slot = self._slots.get(variant)
                if slot is not None:
                    slot.latest = frame
                    if slot.recent is not None:
                        slot.recent.append(frame)
                        if frame.keyframe:
                            slot.keyframes.produced(now)
            self._encode_count += encodes
            self._encode_seconds += elapsed
        self._hub._frame_ready(self.name)
        if self._decode_error is not None:
            error, self._decode_error = self._decode_error, None
            self._count_malformed(error.kind)
            raise error
        if self._h264 is not None:
            overdue = self._h264.keyframe_overdue(now)
            if overdue is not None:
                self._count_malformed(h264.NO_KEYFRAME)
                raise h264.KeyframeOverdue(overdue)
        return len(frames)

    def _h264_unit(self, image: SourceImage) -> h264.AccessUnit:
        """Check an H.264 source's unit (format, structure) and learn its parameter sets."""
        if image.image_format and not h264.is_h264_format(image.image_format):
            raise image_codec.MalformedImage(
                f'format {image.image_format[:40]!r} on a stream of type h264', 'encoding')
        return self._h264.feed(image.data, self._hub.clock())

    def _keep_decoder(self, wanted: bool):
        """Hold the stream's decoder while pictures are wanted; drop it when they are not."""
        if wanted and self._decoder is None:
            self._decoder = encoders.H264Decoder()
        elif not wanted and self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    def _encode(self, image: SourceImage, seq: int, variants, video=None, unit=None) -> tuple:
        """
        Convert the image once, then make one JPEG per variant (or pass the source's JPEG).

        ``video`` maps video variants to ``(encoder, keyframe wanted)``; each gets one unit.
        ``unit``: an H.264 source's checked access unit (decoded once if pictures are needed,
        and passed through to the pass-through layer). Returns the frames by variant and how
        many encodes that took.
        """
        picture_cache = []

        def picture():
            if not picture_cache:
                picture_cache.extend(self._picture(image, unit))
            return picture_cache[0]

        if unit is not None and self._decoder is not None:
            try:               # every unit reaches the decoder, whoever takes a picture now
                picture()
            except image_codec.MalformedImage as exc:
                # the pass-through layer still gets the unit (a browser's decoder may cope);
                # the error is counted and raised once the frames are in place
                picture_cache[:] = [None, False]
                self._decode_error = exc

        passthrough = None
        if self.settings.kind == COMPRESSED and image_codec.is_jpeg(image.data):
            passthrough = bytes(image.data)
            size = image_codec.jpeg_size(passthrough)
            if size is None:
                raise image_codec.MalformedImage('JPEG without a frame header', 'undecodable')
        source_size = size if passthrough is not None else None
        frames, encodes = {}, 0
        for variant in variants:
            native = not variant.max_width and not variant.max_height
            if passthrough is not None and native and variant.quality == self.settings.quality:
                jpeg, flags, (width, height) = passthrough, FLAG_PASSTHROUGH, size
            else:
                shown = picture()
                if shown is None:      # an H.264 decoder still waiting for its keyframe
                    continue
                source_height, source_width = shown.shape[:2]
                source_size = (source_width, source_height)
                width, height = image_codec.scaled_size(source_width, source_height,
                                                        variant.max_width, variant.max_height)
                jpeg = encoders.JpegEncoder(variant.quality, variant.max_width,
                                            variant.max_height).encode(shown).data
                encodes += 1
                flags = FLAG_COLORMAPPED if picture_cache[1] else 0
                if (width, height) != (source_width, source_height):
                    flags |= FLAG_SCALED
            header = FrameHeader(seq, width, height, image.stamp_sec, image.stamp_nanosec,
                                 image.received_time, flags)
            frames[variant] = EncodedFrame(header, jpeg)
        if video:
            pts = self._video_pts(image)
            passed = {v: e for v, (e, _) in video.items() if getattr(e, 'passthrough', False)}
            if passed:
                source_size = unit.size or source_size or (0, 0)
                header = FrameHeader(seq, source_size[0], source_size[1], image.stamp_sec,
                                     image.stamp_nanosec, image.received_time, 0)
                for variant, encoder in passed.items():
                    out = encoder.encode(unit, pts)
                    frames[variant] = EncodedFrame(header, out.data, variant.codec,
                                                   out.keyframe, out.pts)
            encoded = {v: job for v, job in video.items() if v not in passed}
            shown = picture() if encoded else None
            if shown is not None:
                source_height, source_width = shown.shape[:2]
                source_size = (source_width, source_height)
                flags = FLAG_COLORMAPPED if picture_cache[1] else 0
                header = FrameHeader(seq, source_width & ~1, source_height & ~1,
                                     image.stamp_sec, image.stamp_nanosec, image.received_time,
                                     flags)
                prepared = encoders.VideoPicture(shown)   # one I420 conversion for every layer
                for variant, (encoder, keyframe) in encoded.items():
                    out = encoder.encode(prepared, pts, keyframe)
                    encodes += 1
                    self._video_encodes += 1
                    if out is not None:
                        frames[variant] = EncodedFrame(header, out.data, variant.codec,
                                                       out.keyframe, out.pts)
        if source_size is None and unit is not None:
            source_size = unit.size
        if source_size is not None:
            self._size = source_size
        return frames, encodes

    def _video_pts(self, image: SourceImage) -> int:
        """Video timestamp from header.stamp (else arrival time), strictly increasing."""
        stamp = image.stamp_sec + image.stamp_nanosec * 1e-9 or image.received_time
        pts = int(round(stamp * encoders.CLOCK_RATE))
        self._pts = pts if pts > self._pts else self._pts + 1
        return self._pts

    def _picture(self, image: SourceImage, unit=None) -> tuple:
        """Decode or convert the source image once: ``(uint8 picture, colour-mapped?)``."""
        if unit is not None:      # H.264: None until the decoder has had a keyframe
            return (self._decoder.decode(unit) if self._decoder is not None else None), False
        if self.settings.kind == COMPRESSED:
            if h264.is_h264_format(image.image_format):
                raise image_codec.MalformedImage(
                    f'format {image.image_format!r} on a stream of type compressed (JPEG/PNG): '
                    'give the stream type h264', 'encoding')
            decoded = image_codec.decode_compressed(image.data)
            if decoded.dtype != 'uint8':  # 16-bit PNG: depth in millimetres
                return image_codec.to_display('16UC1', decoded, self.settings.display), True
            return decoded, False
        array = image_codec.image_to_array(image.encoding, image.width, image.height,
                                           image.step, image.is_bigendian, image.data)
        return (image_codec.to_display(image.encoding, array, self.settings.display),
                image.encoding in COLORMAPPED_ENCODINGS)

    # -- figures ------------------------------------------------------------------------

    def counters(self) -> StreamCounters:
        """Cumulative counters; safe to call from any thread."""
        with self._lock:
            width, height = self._size
            video_encoders = sum(1 for slot in self._slots.values() if slot.encoder and
                                 not getattr(slot.encoder, 'passthrough', False))
            return StreamCounters(self._viewers, len(self._slots), self._frames_in,
                                  self._frames_sent, self._frames_dropped, self._frames_skipped,
                                  self._bytes_sent, self._encode_count, self._encode_seconds,
                                  width, height, video_encoders, self._video_encodes,
                                  dict(self._malformed),
                                  video_decoders=int(self._decoder is not None))

    def count_malformed(self, kind: str):
        """Count a message the adapter could not even read as an image (by kind)."""
        self._count_malformed(kind)

    def _count_malformed(self, kind: str):
        with self._lock:
            self._malformed[kind] = self._malformed.get(kind, 0) + 1

    def malformed_log_due(self, kind: str, now: float, interval: float = 30.0) -> Optional[int]:
        """
        Rate-limit log lines about one kind of malformed frame on this stream.

        Returns None when nothing should be logged; otherwise how many frames of ``kind``
        arrived since the last line (1 for the first one). The first frame of each kind is
        logged at once, then at most one line per ``interval`` seconds while they keep coming.
        """
        with self._lock:
            count = self._malformed.get(kind, 0)
            last = self._malformed_logged.get(kind)
            if last is not None and (now - last[0] < interval or count == last[1]):
                return None
            self._malformed_logged[kind] = (now, count)
            return count - (last[1] if last else 0)

    def warn_once(self, key: str) -> bool:
        """Return True the first time ``key`` is seen, so the adapter logs a problem once."""
        with self._lock:
            if key in self._warned:
                return False
            self._warned.add(key)
            return True


class StreamHub:
    """All streams of one bridge, with a viewer cap shared by all of them."""

    def __init__(self, max_viewers: int = 100,
                 on_frame: Callable[[str], None] = lambda name: None,
                 on_viewers: Callable[[str, int], None] = lambda name, count: None,
                 clock: Callable[[], float] = time.monotonic,
                 max_total_variants: int = 16):
        self.max_viewers = max_viewers
        self.max_total_variants = max_total_variants
        self._variants = 0   # JPEG variants beyond the page's, across all streams
        self.clock = clock
        self.on_frame = on_frame
        self.on_viewers = on_viewers
        self._streams: Dict[str, Stream] = {}
        self._lock = threading.Lock()

    def add(self, settings: StreamSettings) -> Stream:
        """Create a stream (or return the existing one of that name)."""
        with self._lock:
            stream = self._streams.get(settings.name)
            if stream is None:
                stream = self._streams[settings.name] = Stream(settings, self)
            return stream

    def get(self, name: str) -> Stream:
        """Return the stream called ``name``; UnknownStream if there is none."""
        try:
            return self._streams[name]
        except KeyError:
            raise UnknownStream(name) from None

    def lookup(self, name: str, resolve: Optional[Callable[[str], Optional[Stream]]] = None,
               topic_streams: bool = True) -> Stream:
        """
        Find the stream a client asks for: a configured one by its name or by its topic.

        Anything else is a topic stream, made by ``resolve(name)`` (None: no such image
        topic) and only for a client with the ``topic_streams`` right (NotPermitted
        otherwise). Asking for a configured stream's topic (``/video/%2Fcamera%2Fimage_raw``)
        gives that stream: the same encodes, not a second stream of the same topic.
        """
        with self._lock:
            stream = self._streams.get(name)
            if stream is None or stream.settings.topic_stream:
                for candidate in self._streams.values():
                    if not candidate.settings.topic_stream and candidate.settings.topic == name:
                        return candidate
        if stream is not None and not stream.settings.topic_stream:
            return stream
        if not topic_streams:
            raise NotPermitted(f'{name[:100]!r} is not a configured stream, and topic streams '
                               'need the token')
        if stream is None and resolve is not None:
            stream = resolve(name)
        if stream is None:
            raise UnknownStream(name)
        return stream

    def variants_in_use(self) -> int:
        """Count the JPEG variants beyond the page's across all streams (max_total_variants)."""
        with self._lock:
            return self._variants

    def _take_variant(self) -> bool:
        with self._lock:
            if self._variants >= self.max_total_variants:
                return False
            self._variants += 1
            return True

    def _release_variant(self):
        with self._lock:
            self._variants -= 1

    def streams(self) -> list:
        """Return every stream, in creation order."""
        with self._lock:
            return list(self._streams.values())

    def viewer_count(self) -> int:
        """Count viewers across all streams."""
        return sum(stream._viewers for stream in self.streams())

    def _frame_ready(self, name: str):
        self.on_frame(name)

    def _viewers_changed(self, name: str, count: int):
        self.on_viewers(name, count)
