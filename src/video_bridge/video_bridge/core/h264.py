"""
H.264 access units as a robot publishes them: split, tell keyframes, refuse malformed ones.

Pure (no PyAV, no rclpy): a stream whose topic already carries H.264 (``CompressedImage`` with
format ``h264``, Annex B byte stream, one access unit per message, as Isaac ROS's encoder and
ffmpeg_image_transport publish it) is passed through to WebRTC peers as is. What the hub needs
to know about each unit, and can learn without decoding it, is here:

* its NAL units (Annex B: each after a ``00 00 01`` start code, with or without a leading zero
  byte); a unit that does not start with one (length-prefixed AVCC, or garbage) is refused;
* whether a decoder can start at it: an IDR picture with the sequence and picture parameter
  sets (SPS/PPS) in the unit or remembered from earlier units (:class:`H264Source` prepends the
  remembered ones to an IDR that comes without them, so a peer joining there can decode);
* the picture size, from the SPS (the stream's counters and frame headers report it);
* what is wrong with a malformed unit, by kind (:data:`MALFORMED_KINDS`), so the hub can count
  and log each kind on its own.

What cannot be told without decoding: a unit cut short inside its slice data (the bytes that
are there are well formed). Cuts inside the parameter sets or slice headers, or down to a bare
NAL header or start code, are caught here as ``h264_truncated``; a cut inside slice data shows
as a decode error where the bridge decodes (JPEG viewers, lower layers) and as a damaged
picture in the browser until the next keyframe.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

from video_bridge.core.image_codec import MalformedImage

START_CODE = b'\x00\x00\x01'
NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
VCL_TYPES = frozenset(range(1, 6))          # coded slices (pictures)
RESERVED_TYPES = frozenset({0} | set(range(24, 32)))   # never in a conforming byte stream

EMPTY = 'h264_empty'            # no bytes, or nothing but zero bytes
GARBAGE = 'h264_garbage'        # no Annex B start code first, invalid NAL header, bad fields
TRUNCATED = 'h264_truncated'    # cut inside a NAL header, parameter set or slice header
TOO_LARGE = 'h264_too_large'    # over MAX_UNIT_BYTES, MAX_NAL_UNITS or MAX_PICTURE_PIXELS
NO_PICTURE = 'h264_no_picture'  # no coded slice at all (e.g. only SPS/PPS/SEI)
NO_KEYFRAME = 'h264_no_keyframe'  # units keep coming, but no keyframe for NO_KEYFRAME_AFTER
MALFORMED_KINDS = (EMPTY, GARBAGE, TRUNCATED, TOO_LARGE, NO_PICTURE, NO_KEYFRAME)

MAX_UNIT_BYTES = 8 << 20   # one access unit: a 4K keyframe at a high bitrate stays well below
MAX_NAL_UNITS = 512        # per access unit (slices, SEI, parameter sets)
MAX_PARAMETER_SET_BYTES = 4096
MAX_PICTURE_SIDE = 8192
# Pictures a unit may describe: a few bytes of SPS can ask the decoder (JPEG viewers, lower
# layers) for any size, so the bridge refuses more than 4096x2304 (4K UHD fits).
MAX_PICTURE_PIXELS = 4096 * 2304
NO_KEYFRAME_AFTER = 10.0   # s without a keyframe before a stream is reported (once per period)

# Spellings of CompressedImage.format that mean an H.264 Annex B byte stream.
FORMATS = frozenset({'h264', 'h.264', 'avc', 'x-h264', 'video/h264', 'video/x-h264',
                     'video/avc'})


class MalformedUnit(MalformedImage):
    """An access unit that cannot be passed on; ``kind`` is one of MALFORMED_KINDS."""


class KeyframeOverdue(MalformedUnit):
    """Raised after a unit was passed on, when the source has sent no keyframe for a while."""

    def __init__(self, seconds: float):
        """Say how long the source has gone without a keyframe and what that means."""
        super().__init__(f'no H.264 keyframe for {seconds:.0f} s: peers that join or lose a '
                         'packet wait until the next one (the source should send one every '
                         '1-2 s)', NO_KEYFRAME)


def is_h264_format(image_format: str) -> bool:
    """Tell whether a CompressedImage ``format`` names H.264 ("h264", "H264", "video/h264")."""
    name = str(image_format).strip().lower().split(';')[0].strip()
    return name in FORMATS


def split_nal_units(data) -> List[bytes]:
    """
    Return the NAL units of an Annex B access unit, without start codes or trailing zeros.

    Raises MalformedUnit: ``h264_empty`` (no bytes, or only zeros), ``h264_garbage`` (no start
    code first: also length-prefixed AVCC, which is not Annex B), ``h264_truncated`` (a start
    code with nothing after it), ``h264_too_large``.
    """
    data = bytes(data)
    if len(data) > MAX_UNIT_BYTES:
        raise MalformedUnit(f'access unit of {len(data)} bytes (limit {MAX_UNIT_BYTES})',
                            TOO_LARGE)
    if not data.strip(b'\x00'):
        raise MalformedUnit('empty access unit', EMPTY)
    first = data.find(START_CODE)
    if first < 0 or data[:first].strip(b'\x00'):
        raise MalformedUnit('not an Annex B H.264 access unit (no 00 00 01 start code first; '
                            'length-prefixed AVCC is not supported)', GARBAGE)
    units = []
    start = first + 3
    while True:
        following = data.find(START_CODE, start)
        end = len(data) if following < 0 else following
        nal = data[start:end].rstrip(b'\x00')   # trailing_zero_8bits / a 4-byte start code
        if not nal:
            raise MalformedUnit('a start code with no NAL unit after it', TRUNCATED)
        units.append(nal)
        if len(units) > MAX_NAL_UNITS:
            raise MalformedUnit(f'more than {MAX_NAL_UNITS} NAL units in one access unit',
                                TOO_LARGE)
        if following < 0:
            return units
        start = following + 3


def nal_type(nal: bytes) -> int:
    """Return the nal_unit_type (low five bits of the header byte)."""
    return nal[0] & 0x1F


class _Bits:
    """An RBSP bit reader (emulation prevention removed) that says where it ran out."""

    def __init__(self, nal: bytes):
        self.data = nal[1:].replace(b'\x00\x00\x03', b'\x00\x00')
        self.position = 0
        self.limit = len(self.data) * 8

    def bit(self) -> int:
        if self.position >= self.limit:
            raise EOFError
        byte = self.data[self.position >> 3]
        value = (byte >> (7 - (self.position & 7))) & 1
        self.position += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise ValueError('Exp-Golomb code longer than 32 bits')
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


# Bytes of a slice that hold its first three Exp-Golomb fields (at most 3 x 65 bits), with room
# for emulation prevention bytes.
SLICE_HEADER_PREFIX = 64

HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def sps_size(nal: bytes) -> Tuple[int, int]:
    """
    Return the picture (width, height) a sequence parameter set describes, cropping applied.

    Raises MalformedUnit ``h264_truncated`` when the SPS ends before its size fields, and
    ``h264_garbage`` for values no encoder writes.
    """
    bits = _Bits(nal)
    try:
        profile = bits.bits(8)
        bits.bits(16)                     # constraint flags, level_idc
        if bits.ue() > 31:
            raise ValueError('seq_parameter_set_id > 31')
        chroma_format = 1
        if profile in HIGH_PROFILES:
            chroma_format = bits.ue()
            if chroma_format > 3:
                raise ValueError('chroma_format_idc > 3')
            separate_planes = chroma_format == 3 and bits.bit()
            if separate_planes:
                chroma_format = 0
            bits.ue()
            bits.ue()                     # bit depths
            bits.bit()                    # qpprime_y_zero_transform_bypass_flag
            if bits.bit():                # seq_scaling_matrix_present_flag
                for index in range(12 if chroma_format == 3 else 8):
                    if bits.bit():
                        _skip_scaling_list(bits, 16 if index < 6 else 64)
        if bits.ue() > 12:
            raise ValueError('log2_max_frame_num_minus4 > 12')
        poc_type = bits.ue()
        if poc_type == 0:
            bits.ue()
        elif poc_type == 1:
            bits.bit()
            bits.se()
            bits.se()
            cycle = bits.ue()
            if cycle > 255:
                raise ValueError('num_ref_frames_in_pic_order_cnt_cycle > 255')
            for _ in range(cycle):
                bits.se()
        elif poc_type != 2:
            raise ValueError('pic_order_cnt_type > 2')
        bits.ue()                         # max_num_ref_frames
        bits.bit()                        # gaps_in_frame_num_value_allowed_flag
        width_mbs = bits.ue() + 1
        height_units = bits.ue() + 1
        frame_mbs_only = bits.bit()
        if not frame_mbs_only:
            bits.bit()                    # mb_adaptive_frame_field_flag
        bits.bit()                        # direct_8x8_inference_flag
        crop = (0, 0, 0, 0)
        if bits.bit():
            crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    except EOFError:
        raise MalformedUnit('sequence parameter set cut short', TRUNCATED) from None
    except ValueError as exc:
        raise MalformedUnit(f'invalid sequence parameter set: {exc}', GARBAGE) from None
    field_factor = 2 - frame_mbs_only
    crop_x, crop_y = {0: (1, field_factor), 1: (2, 2 * field_factor), 2: (2, field_factor),
                      3: (1, field_factor)}[chroma_format]
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = field_factor * height_units * 16 - crop_y * (crop[2] + crop[3])
    if not (0 < width <= MAX_PICTURE_SIDE and 0 < height <= MAX_PICTURE_SIDE):
        raise MalformedUnit(f'sequence parameter set says {width}x{height}', GARBAGE)
    if width * height > MAX_PICTURE_PIXELS:
        raise MalformedUnit(f'{width}x{height} pictures (limit {MAX_PICTURE_PIXELS} pixels)',
                            TOO_LARGE)
    return width, height


def _skip_scaling_list(bits: _Bits, size: int):
    last = following = 8
    for _ in range(size):
        if following:
            delta = bits.se()
            if not -128 <= delta <= 127:
                raise ValueError('delta_scale out of range')
            following = (last + delta + 256) % 256
        last = following or last


def check_slice_header(nal: bytes):
    """Read a slice's first header fields; MalformedUnit if it is cut short or nonsense."""
    bits = _Bits(nal[:SLICE_HEADER_PREFIX])   # not a copy of the whole slice
    try:
        bits.ue()                         # first_mb_in_slice
        slice_type = bits.ue()
        pps_id = bits.ue()
    except EOFError:
        raise MalformedUnit('slice header cut short', TRUNCATED) from None
    except ValueError as exc:
        raise MalformedUnit(f'invalid slice header: {exc}', GARBAGE) from None
    if slice_type > 9 or pps_id > 255:
        raise MalformedUnit(f'invalid slice header (slice_type {slice_type}, '
                            f'pic_parameter_set_id {pps_id})', GARBAGE)


@dataclass(frozen=True)
class UnitInfo:
    """What one access unit holds, read from its NAL headers and parameter sets."""

    nal_types: Tuple[int, ...]
    size: Optional[Tuple[int, int]] = None   # from an SPS in this unit
    sps: Optional[bytes] = None              # the last SPS / PPS NAL units in this unit
    pps: Optional[bytes] = None

    @property
    def idr(self) -> bool:
        """Return True if the unit holds an IDR picture (no reference to earlier ones)."""
        return NAL_IDR in self.nal_types

    @property
    def self_contained(self) -> bool:
        """Return True if a decoder can start here with nothing else: SPS + PPS + IDR."""
        return self.idr and self.sps is not None and self.pps is not None


def inspect(data) -> UnitInfo:
    """
    Check one Annex B access unit and say what it holds; MalformedUnit (by kind) if it is bad.

    Stateless: whether a unit without parameter sets is a keyframe depends on earlier units
    (:class:`H264Source`).
    """
    nals = split_nal_units(data)
    types, size, sps, pps = [], None, None, None
    for nal in nals:
        if nal[0] & 0x80:
            raise MalformedUnit('NAL unit with forbidden_zero_bit set', GARBAGE)
        kind = nal_type(nal)
        if kind in RESERVED_TYPES:
            raise MalformedUnit(f'NAL unit of reserved type {kind}', GARBAGE)
        if len(nal) < 2 and kind not in (10, 11):   # end of sequence / stream: header only
            raise MalformedUnit(f'NAL unit of type {kind} cut to its header', TRUNCATED)
        if kind == NAL_SPS:
            if len(nal) > MAX_PARAMETER_SET_BYTES:
                raise MalformedUnit('sequence parameter set too long', GARBAGE)
            size, sps = sps_size(nal), nal
        elif kind == NAL_PPS:
            if len(nal) > MAX_PARAMETER_SET_BYTES:
                raise MalformedUnit('picture parameter set too long', GARBAGE)
            pps = nal
        elif kind in VCL_TYPES:
            check_slice_header(nal)
        types.append(kind)
    if not VCL_TYPES.intersection(types):
        raise MalformedUnit('access unit without a picture (no coded slice: cut after its '
                            'parameter sets?)', NO_PICTURE)
    return UnitInfo(tuple(types), size, sps, pps)


@dataclass(frozen=True)
class AccessUnit:
    """One unit ready to pass on: Annex B bytes, keyframe flag, picture size if known."""

    data: bytes
    keyframe: bool
    size: Optional[Tuple[int, int]]
    nal_types: Tuple[int, ...]


class H264Source:
    """
    One source's units in order: remembers its parameter sets and when its last keyframe came.

    Not thread-safe: one source feeds it from one thread (the ROS executor). ``clock`` values
    are seconds (monotonic).
    """

    def __init__(self, no_keyframe_after: float = NO_KEYFRAME_AFTER):
        self.no_keyframe_after = no_keyframe_after
        self.sps: Optional[bytes] = None
        self.pps: Optional[bytes] = None
        self.size: Optional[Tuple[int, int]] = None
        self.units = 0
        self.keyframes = 0
        self._waiting_since: Optional[float] = None   # last keyframe, or first unit
        self._reported_at: Optional[float] = None

    def feed(self, data, now: float) -> AccessUnit:
        """
        Check one unit and return it ready to pass on; MalformedUnit (by kind) if it is bad.

        An IDR unit that comes without SPS/PPS gets the last ones this source sent in front of
        it, so every keyframe passed on is self-contained (a peer may join at any of them).
        """
        data = bytes(data)      # the one copy (a memoryview into the message, or bytes)
        info = inspect(data)
        if info.sps is not None:
            self.sps, self.size = info.sps, info.size
        if info.pps is not None:
            self.pps = info.pps
        keyframe = info.idr and self.sps is not None and self.pps is not None
        if keyframe and not info.self_contained:
            data = b''.join(b'\x00' + START_CODE + nal for nal in (self.sps, self.pps)) + data
        self.units += 1
        if keyframe:
            self.keyframes += 1
            self._waiting_since = now
            self._reported_at = None
        elif self._waiting_since is None:
            self._waiting_since = now
        return AccessUnit(data, keyframe, self.size, info.nal_types)

    def keyframe_overdue(self, now: float) -> Optional[float]:
        """
        Return how long the source has gone without a keyframe, once per ``no_keyframe_after``.

        None while keyframes come often enough, and between reports of a long wait.
        """
        since = self._waiting_since
        if since is None or now - since < self.no_keyframe_after:
            return None
        if self._reported_at is not None and now - self._reported_at < self.no_keyframe_after:
            return None
        self._reported_at = now
        return now - since
