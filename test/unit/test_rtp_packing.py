"""net/rtp_packing.py: a unit's RTP payloads are made once for all peers and are byte for byte
what aiortc's own pack() makes (real x264/libvpx units, real aiortc packetisers); VP8 picture
ids still count up per peer."""

import asyncio
import fractions

import numpy as np
import pytest
from video_bridge.core import encoders
from video_bridge.core.protocol import FrameHeader
from video_bridge.core.streams import EncodedFrame

av = pytest.importorskip('av')
pytest.importorskip('aiortc')
from video_bridge.net import rtp_packing  # noqa: E402  (needs aiortc)


def picture(index):
    """Noise: big units, so keyframes span several RTP packets."""
    return np.random.default_rng(index).integers(0, 256, (120, 160, 3), dtype=np.uint8)


def units(codec, count=12, bitrate=2_000_000):
    """Real encoded units wrapped as the hub wraps them (keyframe first)."""
    if encoders.video_available(codec):
        pytest.skip(encoders.video_available(codec))
    encoder = encoders.VideoEncoder(codec, bitrate)
    frames = []
    for index in range(count):
        unit = encoder.encode(picture(index), pts=index * 3000 + 2 ** 32 - 6000,
                              keyframe=index == 0)
        header = FrameHeader(index + 1, 160, 120, 1000, index, 2000.0)
        frames.append(EncodedFrame(header, unit.data, codec=codec, keyframe=unit.keyframe,
                                   pts=unit.pts))
    return frames


def av_packet(frame):
    packet = av.Packet(frame.data)
    packet.pts = frame.pts
    packet.time_base = fractions.Fraction(1, encoders.CLOCK_RATE)
    return packet


def test_h264_payloads_are_aiortcs_and_are_made_once_per_unit(monkeypatch):
    from aiortc.codecs.h264 import H264Encoder
    made = []
    packetize = rtp_packing._packetize
    monkeypatch.setattr(rtp_packing, '_packetize', lambda f: made.append(f) or packetize(f))
    frames = units(encoders.H264)
    assert len(frames[0].data) > 1300, 'the keyframe needs FU-A fragments: a real test'
    peers = [rtp_packing.PeerPacker(encoders.H264) for _ in range(3)]
    for frame in frames:
        expected, timestamp = H264Encoder().pack(av_packet(frame))
        for peer in peers:
            unit = peer.unit(frame)
            assert unit.payloads == expected
            assert unit.timestamp == timestamp & 0xFFFFFFFF
            payloads, stamp = rtp_packing.PrepackedEncoder().pack(unit)
            assert (payloads, stamp) == (unit.payloads, unit.timestamp)
    assert made == frames, 'one packetisation per unit, whatever the number of peers'


def test_vp8_each_peer_numbers_its_own_pictures_across_the_wrap():
    from aiortc.codecs.vpx import Vp8Encoder
    frames = units(encoders.VP8)
    assert len(frames[0].data) > 1300, 'the keyframe spans packets: a real test'
    first = rtp_packing.PeerPacker(encoders.VP8, picture_id=0x7FFE)
    second = rtp_packing.PeerPacker(encoders.VP8, picture_id=5)
    late = rtp_packing.PeerPacker(encoders.VP8, picture_id=100)
    for index, frame in enumerate(frames):
        assert first.unit(frame).payloads == Vp8Encoder._packetize(frame.data,
                                                                   (0x7FFE + index) & 0x7FFF)
        assert second.unit(frame).payloads == Vp8Encoder._packetize(frame.data, 5 + index)
        if index % 3 == 0:    # a peer that takes every third unit still counts without gaps
            assert late.unit(frame).payloads == Vp8Encoder._packetize(frame.data,
                                                                      100 + index // 3)
    assert first.picture_id == (0x7FFE + len(frames)) & 0x7FFF
    # the shared copy is never changed by a peer
    assert rtp_packing.shared_payloads(frames[0]) == tuple(Vp8Encoder._packetize(frames[0].data,
                                                                                 0))


def test_a_jpeg_unit_has_no_rtp_form():
    frame = EncodedFrame(FrameHeader(1, 8, 8, 0, 0, 0.0), b'\xff\xd8jpeg')
    with pytest.raises(ValueError, match='no RTP packetisation'):
        rtp_packing.PeerPacker(encoders.H264).unit(frame)


def test_install_takes_aiortcs_encoder_slot_or_says_it_cannot():
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import VideoStreamTrack

    async def scenario():
        pc = RTCPeerConnection()
        try:
            sender = pc.addTransceiver(VideoStreamTrack(), direction='sendonly').sender
            assert rtp_packing.install(sender)
            assert isinstance(sender._RTCRtpSender__encoder, rtp_packing.PrepackedEncoder)
        finally:
            await pc.close()
    asyncio.run(scenario())
    assert not rtp_packing.install(object()), 'another aiortc: the av.Packet path is kept'
