"""
The codec registry: one entry per codec, read by everything that needs to know about codecs.

The encoders (:mod:`video_bridge.core.encoders`: which FFmpeg encoders, with which options),
the RTP packing (:mod:`video_bridge.net.rtp_packing`: aiortc's packetiser found by MIME type,
the per-peer picture id), the SDP codec choice (:mod:`video_bridge.net.webrtc` and the SFU
publisher: :func:`sdp_preferences`), the parameter checks (:mod:`video_bridge.ros.parameters`)
and the page (``mime_types`` in ``webrtc_config``) all read it, so no other module names a
MIME type or an FFmpeg encoder. Adding a codec (VP9, AV1) is its encoder's options and one
:class:`Codec` entry here, plus an RTP packetiser when aiortc has none for its MIME type.

Pure data and string functions: no rclpy, no sockets, no PyAV or aiortc import.
"""

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

JPEG = 'jpeg'
H264 = 'h264'
VP8 = 'vp8'
RTP_VIDEO_CLOCK = 90000   # Hz, RFC 3551: every video payload format uses it
RTX_MIME_TYPE = 'video/rtx'   # retransmissions (RFC 4588), offered beside every video codec
KEYFRAME_INTERVAL = 300  # frames between keyframes an encoder makes by itself (10 s at 30 fps)


def _frozen(mapping: Optional[Mapping] = None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class FFmpegEncoder:
    """
    One FFmpeg encoder of a codec (through PyAV) and how the bridge sets it up.

    ``options(bitrate)`` gives its AVOptions for a target bit rate; ``settings`` are codec
    context attributes set before it opens. ``hardware`` encoders are tried by a test encode
    at start (``auto``) and fall back to the codec's first (software) encoder.
    """

    name: str
    options: Callable[[int], Dict[str, str]] = lambda bitrate: {}
    hardware: bool = False
    pixel_format: str = 'yuv420p'
    settings: Mapping = field(default_factory=_frozen)
    unavailable_hint: str = 'cannot open it'   # said when its test encode fails


@dataclass(frozen=True)
class Codec:
    """
    One codec, as every layer of the bridge sees it.

    ``name`` is the wire name (``webrtc_start``'s ``codecs``, ``webrtc_offer``'s ``codec``,
    parameter values). ``mime_type`` and ``sdp_parameters`` pick the codec among the RTP
    library's (an empty MIME type: not sent over RTP). ``encoders``: the FFmpeg encoders to
    try, the first being the software default. ``rtp_picture_id``: the bytes of each RTP
    payload that hold a picture id every peer counts for itself (None: none).
    ``browser_decodes``: browsers' WebRTC stacks decode it, so it may be offered to the page.
    """

    name: str
    label: str
    mime_type: str = ''
    clock_rate: int = 0
    sdp_parameters: Mapping = field(default_factory=_frozen)
    encoders: Tuple[FFmpegEncoder, ...] = ()
    decoder: str = ''
    rtp_picture_id: Optional[Tuple[int, int]] = None
    browser_decodes: bool = False

    @property
    def video(self) -> bool:
        """Tell whether it is a continuous video stream over RTP (stateful encoder, keyframes)."""
        return bool(self.mime_type)

    @property
    def software_encoder(self) -> FFmpegEncoder:
        """Return the encoder used unless a hardware one was chosen (and when one fails)."""
        return self.encoders[0]

    def encoder(self, name: str = '') -> FFmpegEncoder:
        """Return the encoder called ``name`` (empty: the software one); ValueError if none."""
        for encoder in self.encoders:
            if encoder.name == (name or self.software_encoder.name):
                return encoder
        raise ValueError(f'unknown {self.label} encoder {name!r} (known: '
                         f'{", ".join(e.name for e in self.encoders)})')

    def matches(self, mime_type: str, parameters: Mapping) -> bool:
        """Tell whether an RTP library's codec (MIME type, fmtp parameters) is this one."""
        return mime_type.lower() == self.mime_type.lower() and all(
            str(parameters.get(key)) == value for key, value in self.sdp_parameters.items())


def _x264_options(bitrate: int) -> Dict[str, str]:
    kbit = max(1, bitrate // 1000)
    return {'preset': 'ultrafast', 'tune': 'zerolatency', 'profile': 'baseline',
            'level': '31',
            # no scene-cut keyframes (they come on request), a VBV cap so a keyframe never
            # bursts far beyond the link, and headers in-band on every keyframe.
            'x264-params': (f'keyint={KEYFRAME_INTERVAL}:min-keyint={KEYFRAME_INTERVAL}:'
                            f'scenecut=0:vbv-maxrate={kbit}:vbv-bufsize={max(1, kbit // 2)}'
                            f':repeat-headers=1:sliced-threads=0:threads=1')}


def _vp8_options(bitrate: int) -> Dict[str, str]:
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


def _fixed(options: Dict[str, str]) -> Callable[[int], Dict[str, str]]:
    return lambda bitrate: dict(options)


# Hardware H.264 encoders of the PyPI av wheel, in the order ``auto`` tries them; low-latency
# settings: no B-frames, no lookahead, keyframes on request.
_HARDWARE_H264 = (
    FFmpegEncoder('h264_nvenc', _fixed({
        'preset': 'p1', 'tune': 'ull', 'zerolatency': '1', 'rc': 'cbr', 'delay': '0',
        'forced-idr': '1', 'profile': 'baseline'}), hardware=True,
        settings=_frozen({'max_b_frames': 0}),
        unavailable_hint='no usable NVIDIA GPU and driver'),
    FFmpegEncoder('h264_qsv', _fixed({
        'preset': 'veryfast', 'async_depth': '1', 'look_ahead': '0', 'forced_idr': '1',
        'profile': 'baseline'}), hardware=True, pixel_format='nv12',
        settings=_frozen({'max_b_frames': 0}),
        unavailable_hint='no usable Intel Quick Sync (media driver)'),
    FFmpegEncoder('h264_v4l2m2m', hardware=True, settings=_frozen({'max_b_frames': 0}),
                  unavailable_hint='no V4L2 memory-to-memory H.264 encoder device'),
)

REGISTRY: Mapping[str, Codec] = MappingProxyType({codec.name: codec for codec in (
    # JPEG: self-contained pictures for the websocket, MJPEG and snapshots (OpenCV's encoder)
    Codec(JPEG, 'JPEG'),
    # H.264 constrained baseline, packetization-mode 1 (FU-A), what every browser decodes
    Codec(H264, 'H.264', 'video/H264', RTP_VIDEO_CLOCK,
          _frozen({'packetization-mode': '1'}),
          (FFmpegEncoder('libx264', _x264_options, unavailable_hint='libx264 cannot encode'),)
          + _HARDWARE_H264,
          decoder='h264', browser_decodes=True),
    # VP8 by libvpx in realtime mode; aiortc's payload descriptor carries a 15-bit picture id
    Codec(VP8, 'VP8', 'video/VP8', RTP_VIDEO_CLOCK, _frozen(),
          (FFmpegEncoder('libvpx', _vp8_options,
                         settings=_frozen({'qmin': 4, 'qmax': 56, 'thread_count': 1})),),
          decoder='vp8', rtp_picture_id=(2, 4), browser_decodes=True),
)})

CODECS: Tuple[str, ...] = tuple(REGISTRY)
VIDEO_CODECS: Tuple[str, ...] = tuple(c.name for c in REGISTRY.values() if c.video)
# what the page may be offered over WebRTC (webrtc_codecs, sfu_codec)
WEBRTC_CODECS: Tuple[str, ...] = tuple(c.name for c in REGISTRY.values()
                                       if c.video and c.browser_decodes)


def get(name: str) -> Codec:
    """Return the codec called ``name``; ValueError naming the known ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f'unknown codec {name!r} (known: {", ".join(CODECS)})') from None


def mime_types(names: Iterable[str]) -> Dict[str, str]:
    """Map codec names to their MIME types (what the page matches its decoders against)."""
    return {name: get(name).mime_type for name in names}


def sdp_preferences(name: str, capabilities: Iterable) -> list:
    """
    Order an RTP library's codec capabilities for one codec's offer: it, then RTX.

    ``capabilities`` are objects with ``mimeType`` and ``parameters`` (aiortc's
    ``RTCRtpSender.getCapabilities('video').codecs``); the result goes to
    ``setCodecPreferences``, so the offer carries this codec alone (and its retransmissions).
    """
    codec = get(name)
    capabilities = list(capabilities)
    return ([c for c in capabilities if codec.matches(c.mimeType, c.parameters)] +
            [c for c in capabilities if c.mimeType.lower() == RTX_MIME_TYPE])


def check_names(parameter: str, values: Iterable[str], allowed: Iterable[str]) -> list:
    """Return ``values`` lower-cased, or raise ValueError naming ``parameter`` and the choices."""
    allowed = tuple(allowed)
    names = [str(value).strip().lower() for value in values if str(value).strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f'{parameter}: unknown codec {", ".join(map(repr, unknown))} (one of: '
                         f'{", ".join(allowed)})')
    return names
