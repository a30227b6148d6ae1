"""
RTP payloads of an encoded unit, made once and shared by every WebRTC peer that sends it.

aiortc packetises a pre-encoded ``av.Packet`` anew for each peer (its encoders' ``pack()``: a
copy into the packet, a copy out, the NAL split, the FU-A or VP8 descriptors). With one unit
shared by N peers that is N times the same work on the network loop, about a third of what an
extra peer cost the bridge in Python (py-spy at 10 peers). Here the payloads are made once per
unit and kept with the unit (``EncodedFrame.wire``); each peer's sender gets a
:class:`PrepackedEncoder` whose ``pack()`` only hands them back.

VP8 payloads carry a picture id that counts up per peer (a gap reads as a lost frame, and a
peer skips units when it changes layer), so each peer writes its own id into its copy. The
packetising itself is aiortc's, so the payloads are byte for byte what ``pack()`` would make.
"""

import random
import struct
from typing import List, Optional, Tuple

from video_bridge.core import encoders
from video_bridge.net import internals

VP8_PICTURE_ID = slice(2, 4)  # aiortc's VP8 descriptor: X|S|PID, I, M + 15-bit picture id


class PackedUnit:
    """What one peer's sender sends for one unit: RTP payloads and the 90 kHz timestamp."""

    __slots__ = ('payloads', 'timestamp')

    def __init__(self, payloads: List[bytes], timestamp: int):
        self.payloads = payloads
        self.timestamp = timestamp


class PrepackedEncoder:
    """Stands in for aiortc's encoder of one sender: the units arrive already packetised."""

    def pack(self, unit: PackedUnit) -> Tuple[List[bytes], int]:
        """Hand back the unit's payloads and 90 kHz timestamp, as aiortc's encoders do."""
        return unit.payloads, unit.timestamp


def shared_payloads(frame) -> Tuple[bytes, ...]:
    """Return the unit's RTP payloads (VP8: picture id 0), packetising on first use only."""
    return frame.wire('rtp', _packetize)


def _packetize(frame) -> Tuple[bytes, ...]:
    if frame.codec == encoders.H264:
        return tuple(internals.h264_payloads(frame.data))
    if frame.codec == encoders.VP8:
        return tuple(internals.vp8_payloads(frame.data, 0))
    raise ValueError(f'no RTP packetisation for {frame.codec!r}')


class PeerPacker:
    """One peer's view of the shared payloads (its own VP8 picture ids)."""

    def __init__(self, codec: str, picture_id: Optional[int] = None):
        self.codec = codec
        self.picture_id = random.randrange(1 << 15) if picture_id is None else picture_id

    def unit(self, frame) -> PackedUnit:
        """Return what the peer's sender sends for ``frame``."""
        payloads = shared_payloads(frame)
        if self.codec == encoders.VP8:
            picture_id = struct.pack('!H', 0x8000 | self.picture_id)
            self.picture_id = (self.picture_id + 1) & 0x7FFF
            payloads = [p[:VP8_PICTURE_ID.start] + picture_id + p[VP8_PICTURE_ID.stop:]
                        for p in payloads]
        else:
            payloads = list(payloads)
        return PackedUnit(payloads, frame.pts & 0xFFFFFFFF)


def install(sender) -> bool:
    """Give an aiortc sender the pass-through encoder; False if this aiortc has no such slot."""
    return internals.install_sender_encoder(sender, PrepackedEncoder())
