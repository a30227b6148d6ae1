"""Video frames on a websocket: a fixed binary header, then the JPEG, in one message."""

from dataclasses import dataclass
import struct

from video_bridge.core.protocol.errors import ErrorCode, ProtocolError


FRAME_MAGIC = b'VBF1'
# magic, header_length, flags, seq, width, height, stamp_sec, stamp_nanosec, received_time
FRAME_HEADER = struct.Struct('<4sHHIHHiId')
FLAG_PASSTHROUGH = 1  # JPEG bytes exactly as the source published them
FLAG_SCALED = 2       # downscaled to the viewer's width/height bounds
FLAG_COLORMAPPED = 4  # depth or 16-bit data drawn through a colour map


@dataclass(frozen=True)
class FrameHeader:
    """Metadata sent ahead of each JPEG on a video socket."""

    seq: int
    width: int
    height: int
    stamp_sec: int
    stamp_nanosec: int
    received_time: float  # bridge wall clock (s since the epoch) when the frame arrived
    flags: int = 0

    @property
    def stamp(self) -> float:
        """Source ``header.stamp`` in seconds."""
        return self.stamp_sec + self.stamp_nanosec * 1e-9


def pack_frame_header(header: FrameHeader) -> bytes:
    """Serialize a frame header; the JPEG follows it in the same message."""
    return FRAME_HEADER.pack(FRAME_MAGIC, FRAME_HEADER.size, header.flags,
                             header.seq & 0xFFFFFFFF, header.width, header.height,
                             header.stamp_sec, header.stamp_nanosec, header.received_time)


def unpack_frame(message: bytes) -> tuple:
    """Split a video message into ``(FrameHeader, jpeg memoryview)``; ProtocolError if bad."""
    if len(message) < FRAME_HEADER.size:
        raise ProtocolError(ErrorCode.BAD_FRAME, f'frame message too short ({len(message)} bytes)')
    (magic, header_length, flags, seq, width, height, sec, nsec,
     received) = FRAME_HEADER.unpack_from(message)
    if magic != FRAME_MAGIC or not FRAME_HEADER.size <= header_length <= len(message):
        raise ProtocolError(ErrorCode.BAD_FRAME, 'not a video_bridge frame')
    header = FrameHeader(seq, width, height, sec, nsec, received, flags)
    return header, memoryview(message)[header_length:]
