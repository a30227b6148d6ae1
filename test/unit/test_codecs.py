"""The codec registry (core.codec_registry) is the one source of what the bridge knows of codecs.

Every entry works end to end where it is used: its encoders encode (and its decoder reads the
result), its MIME type is one aiortc offers and packs, the offer made from it carries that codec
alone, and the parameters and the page's webrtc_config take their names from it. A scan of the
package's source (the Python parser) and of the page's scripts finds no other module naming a
codec MIME type or an FFmpeg encoder, so a codec is added in one place.
"""

import ast
import os
import re

from conftest import REPO
import cv2
import numpy as np
import pytest
from video_bridge.core import codec_registry as registry, encoders
from video_bridge.core.protocol import FrameHeader
from video_bridge.core.streams import EncodedFrame

PACKAGE = os.path.join(REPO, 'src', 'video_bridge', 'video_bridge')
WEB_JS = os.path.join(REPO, 'web', 'js')
# Strings that may look like a codec's but are not about encoding or SDP: file -> why.
NOT_CODEC_CHOICES = {
    'core/h264.py': 'the spellings of sensor_msgs/CompressedImage format for H.264 sources',
}


def picture(index=0):
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)


def registry_strings():
    """The names only the registry may spell: MIME types and FFmpeg encoders."""
    mimes = {c.mime_type.lower() for c in registry.REGISTRY.values() if c.mime_type}
    mimes.add(registry.RTX_MIME_TYPE)
    names = {e.name for c in registry.REGISTRY.values() for e in c.encoders}
    return mimes, names


def hard_coded(root=PACKAGE) -> dict:
    """String constants outside core/codec_registry.py naming a codec MIME type or an encoder."""
    mimes, names = registry_strings()
    found = {}
    for folder, _, files in os.walk(root):
        for file_name in files:
            path = os.path.join(folder, file_name)
            relative = os.path.relpath(path, root)
            if not file_name.endswith('.py') or relative in ('core/codec_registry.py',
                                                             *NOT_CODEC_CHOICES):
                continue
            with open(path, encoding='utf-8') as handle:
                tree = ast.parse(handle.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value.strip().lower()
                    if text in names or any(mime in text for mime in mimes) or \
                            re.fullmatch(r'video/[\w.-]+', text):
                        found.setdefault(relative, []).append((node.lineno, node.value))
    return found


def test_every_codec_has_a_working_encoder_and_its_units_decode():
    for codec in registry.REGISTRY.values():
        if not codec.video:
            unit = encoders.JpegEncoder(80).encode(picture())
            shown = cv2.imdecode(np.frombuffer(unit.data, np.uint8), cv2.IMREAD_COLOR)
            assert shown.shape == (96, 128, 3) and unit.keyframe, codec.name
            continue
        av = pytest.importorskip('av')
        assert codec.encoders and not codec.software_encoder.hardware, \
            f'{codec.name}: the first encoder is the software fallback'
        assert encoders.video_available(codec.name) is None, codec.name
        encoder = encoders.VideoEncoder(codec.name, 300_000)
        assert encoder.encoder_name == codec.software_encoder.name
        unit = encoder.encode(picture(), 0, keyframe=True)
        assert unit is not None and unit.keyframe, codec.name
        decoder = av.CodecContext.create(codec.decoder, 'r')
        frames = decoder.decode(av.Packet(unit.data))
        assert frames and (frames[0].width, frames[0].height) == (128, 96), codec.name


def test_every_encoder_is_found_by_name_and_the_software_one_comes_first():
    for codec in registry.REGISTRY.values():
        for spec in codec.encoders:
            assert codec.encoder(spec.name) is spec
            options = spec.options(1_000_000)
            assert all(isinstance(v, str) for v in options.values()), (spec.name, options)
        assert not any(spec.hardware for spec in codec.encoders[:1]), codec.name
    assert 'unknown codec' in encoders.video_available('av1')
    assert 'not a video codec' in encoders.video_available(registry.JPEG)
    with pytest.raises(ValueError, match='unknown VP8 encoder'):
        encoders.VideoEncoder(registry.VP8, 300_000, 30,
                              registry.get(registry.H264).software_encoder.name)


def test_every_video_codec_is_one_aiortc_offers_and_packs():
    pytest.importorskip('av')
    aiortc = pytest.importorskip('aiortc')
    from aiortc.codecs import get_encoder
    from video_bridge.net import rtp_packing
    capabilities = aiortc.RTCRtpSender.getCapabilities('video').codecs
    for codec in registry.REGISTRY.values():
        if not codec.video:
            continue
        assert codec.clock_rate == registry.RTP_VIDEO_CLOCK
        preferred = registry.sdp_preferences(codec.name, capabilities)
        chosen = [c for c in preferred if c.mimeType.lower() != registry.RTX_MIME_TYPE]
        assert chosen, f'aiortc offers no {codec.mime_type} with {dict(codec.sdp_parameters)}'
        assert all(codec.matches(c.mimeType, c.parameters) for c in chosen)
        assert preferred[len(chosen):], 'retransmissions are offered with it'
        assert get_encoder(aiortc.RTCRtpCodecParameters(mimeType=codec.mime_type,
                                                        clockRate=codec.clock_rate))
        unit = encoders.VideoEncoder(codec.name, 300_000).encode(picture(), keyframe=True)
        frame = EncodedFrame(FrameHeader(1, 128, 96, 0, 0, 0.0), unit.data, codec.name)
        assert rtp_packing.PeerPacker(codec.name).unit(frame).payloads, codec.name


def test_the_offer_carries_the_chosen_codec_alone():
    aiortc = pytest.importorskip('aiortc')
    capabilities = aiortc.RTCRtpSender.getCapabilities('video').codecs
    h264 = registry.get(registry.H264)
    chosen = [c for c in registry.sdp_preferences(registry.H264, capabilities)
              if c.mimeType.lower() != registry.RTX_MIME_TYPE]
    assert {c.mimeType for c in chosen} == {h264.mime_type}
    assert all(c.parameters['packetization-mode'] == '1' for c in chosen)
    with pytest.raises(ValueError, match='unknown codec'):
        registry.sdp_preferences('av1', capabilities)


def test_the_parameters_accept_exactly_the_registry_names():
    from video_bridge.ros import parameters
    check = parameters.check_codec_parameters
    assert parameters.BRIDGE_PARAMETERS['webrtc_codecs'][0] == list(registry.WEBRTC_CODECS)
    assert registry.WEBRTC_CODECS == tuple(c.name for c in registry.REGISTRY.values()
                                           if c.video and c.browser_decodes)
    for name in registry.WEBRTC_CODECS:
        assert check([name.upper(), ''], name, 'auto')[:2] == ([name], name)
    for name in ('jpeg', 'av1', 'h265', 'video/H264'):
        with pytest.raises(ValueError, match='webrtc_codecs'):
            check([name], registry.H264, 'auto')
        with pytest.raises(ValueError, match='sfu_codec'):
            check([], name, 'auto')
    h264_names = [e.name for e in registry.get(registry.H264).encoders]
    assert parameters.H264_ENCODERS == ('auto', *h264_names) == encoders.H264_ENCODERS
    for name in parameters.H264_ENCODERS:
        assert check([], registry.H264, name)[2] == name
    for name in ('libvpx', 'nvenc', ''):
        with pytest.raises(ValueError, match='h264_encoder'):
            check([], registry.H264, name)


def test_the_sfu_publisher_takes_the_registry_codecs():
    pytest.importorskip('aiortc')
    from video_bridge.net.sfu_janus import JanusSettings
    for name in registry.WEBRTC_CODECS:
        assert JanusSettings('ws://198.51.100.1:8188', 1, codec=name).codec == name
    with pytest.raises(ValueError, match='codec must be one of'):
        JanusSettings('ws://198.51.100.1:8188', 1, codec=registry.JPEG)


def test_webrtc_config_tells_the_page_each_codecs_mime_type():
    pytest.importorskip('aiortc')
    from video_bridge.core import ice
    from video_bridge.core.streams import StreamHub
    from video_bridge.net.webrtc import WebRtcConfig, WebRtcService
    service = WebRtcService(StreamHub(), ice.IceSettings(), WebRtcConfig(),
                            send=lambda *a: None, deliver=lambda *a: None)
    from video_bridge.core.protocol import encode_signalling
    message = encode_signalling(service.config_message('c1'))
    assert message['codecs'] == list(registry.WEBRTC_CODECS)
    assert message['mime_types'] == {c: registry.get(c).mime_type for c in registry.WEBRTC_CODECS}


def test_no_other_module_names_a_codec_mime_type_or_an_encoder():
    found = hard_coded()
    assert not found, f'use core.codec_registry instead of these strings: {found}'


def test_the_scan_sees_what_it_looks_for(tmp_path):
    (tmp_path / 'core').mkdir()
    (tmp_path / 'core' / 'codec_registry.py').write_text("MIME = 'video/H264'\n")
    (tmp_path / 'sneaky.py').write_text("A = 'video/VP8'\nB = 'libx264'\nC = 'VIDEO/AV1'\n"
                                        "D = 'a libx264 in prose is fine'\n")
    assert hard_coded(str(tmp_path)) == {
        'sneaky.py': [(1, 'video/VP8'), (2, 'libx264'), (3, 'VIDEO/AV1')]}


def test_the_page_names_no_codec_of_its_own():
    mimes, names = registry_strings()
    codec_words = set(registry.CODECS) | names
    for file_name in sorted(os.listdir(WEB_JS)):
        with open(os.path.join(WEB_JS, file_name), encoding='utf-8') as handle:
            source = handle.read()
        literals = {m.lower() for m in re.findall(r"""['"`]([^'"`\n]*)['"`]""", source)}
        assert not literals & codec_words, f'{file_name} names a codec: {literals & codec_words}'
        assert not [s for s in literals if re.search(r'video/\w', s)], \
            f'{file_name} spells a MIME type: the page reads them from webrtc_config'
