"""
RTP payloads of an encoded unit, made once and shared by every WebRTC peer that sends it.

aiortc packetises a pre-encoded ``av.Packet`` anew for each peer (its encoders' ``pack()``: a
copy into the packet, a copy out, the NAL split, the FU-A or VP8 descriptors). With one unit
shared by N peers that is N times the same work on the network loop, about a third of what an
extra peer cost the bridge in Python (py-spy at 10 peers). Here the payloads are made once per
unit and kept with the unit (``EncodedFrame.wire``); each peer's sender gets a
:class:`PrepackedEncoder` whose ``pack()`` only hands them back.

Which packetiser a codec gets is aiortc's for the codec's MIME type in the registry
(:mod:`video_bridge.core.codec_registry`), through aiortc's public ``get_encoder(...).pack()``,
so the payloads are byte for byte what aiortc would make. A codec whose payloads carry a picture id
that counts up per peer (VP8: a gap reads as a lost frame, and a peer skips units when it
changes layer) names those bytes in its entry (``rtp_picture_id``); each peer writes its own
id into its copy.
"""

import random
import struct
from typing import Dict, List, Optional, Tuple

from video_bridge.core import codec_registry, encoders
from video_bridge.net import internals

_PACKERS: Dict[str, object] = {}   # codec name -> aiortc's encoder, used only for pack()


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
    """Cut one unit into RTP payloads with aiortc's packetiser for the codec's MIME type."""
    codec = codec_registry.get(frame.codec)
    if not codec.video:
        raise ValueError(f'no RTP packetisation for {frame.codec!r}')
    packer = _PACKERS.get(codec.name)
    if packer is None:
        from aiortc import RTCRtpCodecParameters
        from aiortc.codecs import get_encoder
        packer = _PACKERS[codec.name] = get_encoder(RTCRtpCodecParameters(
            mimeType=codec.mime_type, clockRate=codec.clock_rate))
    import av
    packet = av.Packet(frame.data)
    packet.pts, packet.time_base = 0, encoders.TIME_BASE   # the timestamp is not used
    if codec.rtp_picture_id is not None:
        packer.picture_id = 0        # each peer writes its own (PeerPacker)
    payloads, _ = packer.pack(packet)
    return tuple(payloads)


class PeerPacker:
    """One peer's view of the shared payloads (its own VP8 picture ids)."""

    def __init__(self, codec: str, picture_id: Optional[int] = None):
        self.codec = codec
        self._picture_id_at = codec_registry.get(codec).rtp_picture_id
        self.picture_id = random.randrange(1 << 15) if picture_id is None else picture_id

    def unit(self, frame) -> PackedUnit:
        """Return what the peer's sender sends for ``frame``."""
        payloads = shared_payloads(frame)
        if self._picture_id_at is not None:
            start, stop = self._picture_id_at
            picture_id = struct.pack('!H', 0x8000 | self.picture_id)
            self.picture_id = (self.picture_id + 1) & 0x7FFF
            payloads = [p[:start] + picture_id + p[stop:] for p in payloads]
        else:
            payloads = list(payloads)
        return PackedUnit(payloads, frame.pts & 0xFFFFFFFF)


def install(sender) -> bool:
    """Give an aiortc sender the pass-through encoder; False if this aiortc has no such slot."""
    return internals.install_sender_encoder(sender, PrepackedEncoder())
