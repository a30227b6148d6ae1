"""
WebRTC signalling (protocol version 2): ``webrtc_*`` JSON objects on ``/control``.

See docs/protocol.md. The page asks with ``webrtc_start``, the bridge offers, the page
answers; ICE candidates trickle. Every field is bounded here, before the WebRTC edge (and
aiortc) sees it.
"""

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple, Union

from video_bridge.core.protocol.control import _request_id, RequestId
from video_bridge.core.protocol.errors import ErrorCode, ProtocolError
from video_bridge.core.protocol.routes import MAX_STREAM_NAME

WEBRTC_PREFIX = 'webrtc_'
WEBRTC_REQUESTS = frozenset({'webrtc_config', 'webrtc_start', 'webrtc_answer', 'webrtc_ice',
                             'webrtc_stop'})            # client -> bridge
WEBRTC_REPLIES = frozenset({'webrtc_config', 'webrtc_offer', 'webrtc_error',
                            'webrtc_stopped'})          # bridge -> client
DATA_CHANNEL_LABEL = 'control'   # created by the bridge: unordered, no retransmits
DATA_CHANNEL_COMMANDS = frozenset({'command', 'velocity', 'acquire', 'release', 'estop'})


def is_signalling(obj) -> bool:
    """Tell whether a decoded control message is WebRTC signalling (``type`` webrtc_*)."""
    return isinstance(obj, dict) and isinstance(obj.get('type'), str) and \
        obj['type'].startswith(WEBRTC_PREFIX)


# Bounds of the requests' fields. The WebRTC edge keeps to them as well.
MAX_SDP = 16384                  # characters of an SDP answer
MAX_CANDIDATE = 512              # characters of one trickled candidate line
# A browser trickles a few dozen at most (host, server-reflexive and relay, per interface);
# each one costs a check pair per local candidate, kept for the peer's life.
MAX_TRICKLED_CANDIDATES = 64     # distinct candidates per WebRTC session, answer included
# candidate lines of an answer: it may repeat each candidate under every bundled section
# (the bridge offers two: video and the data channel)
MAX_ANSWER_CANDIDATE_LINES = 2 * MAX_TRICKLED_CANDIDATES
MAX_CODECS = 8                   # names in a webrtc_start's ``codecs``
MAX_CODEC_NAME = 16
CANDIDATE_FIELDS = 8             # foundation component transport priority address port typ type


@dataclass(frozen=True)
class WebRtcConfigRequest:
    """Ask for the codecs offered and the ICE servers (with TURN credentials if granted)."""

    kind: ClassVar[str] = 'webrtc_config'


@dataclass(frozen=True)
class WebRtcStart:
    """Ask for a peer showing ``stream``; ``codecs``: what the page decodes (None: any)."""

    stream: str
    codecs: Optional[Tuple[str, ...]] = None
    kind: ClassVar[str] = 'webrtc_start'


@dataclass(frozen=True)
class WebRtcAnswer:
    """The page's SDP answer to the bridge's offer."""

    sdp: str
    kind: ClassVar[str] = 'webrtc_answer'


@dataclass(frozen=True)
class WebRtcCandidate:
    """One trickled ICE candidate line (``candidate:...``); None: the page has no more."""

    candidate: Optional[str]
    kind: ClassVar[str] = 'webrtc_ice'


@dataclass(frozen=True)
class WebRtcStop:
    """Close the session's peer (and any start still under way)."""

    kind: ClassVar[str] = 'webrtc_stop'


SignallingMessage = Union[WebRtcConfigRequest, WebRtcStart, WebRtcAnswer, WebRtcCandidate,
                          WebRtcStop]


def signalling_request_id(obj: dict) -> RequestId:
    """
    Read a signalling message's ``id`` to echo: as for control messages, else None.

    Lenient on purpose: a signalling request with an id the page cannot have meant is still
    answered (without the id), as it always was.
    """
    try:
        return _request_id(obj)
    except ProtocolError:
        return None


def decode_signalling(obj: dict) -> Tuple[RequestId, SignallingMessage]:
    """
    Check a ``webrtc_*`` object and return ``(request_id, SignallingMessage)``.

    Raises ProtocolError (with ``request_id`` attached) naming what is wrong; fields the page
    may add (``sdpMid``, ``usernameFragment`` ...) are ignored, they are bounded by the
    message's size.
    """
    request_id = signalling_request_id(obj)
    try:
        return request_id, _signalling_body(obj)
    except ProtocolError as exc:
        exc.request_id = request_id
        raise


def _signalling_body(obj: dict) -> SignallingMessage:
    kind = obj.get('type')
    if kind == 'webrtc_config':
        return WebRtcConfigRequest()
    if kind == 'webrtc_start':
        return WebRtcStart(_stream(obj.get('stream')), _codecs(obj.get('codecs')))
    if kind == 'webrtc_answer':
        return WebRtcAnswer(_sdp(obj.get('sdp')))
    if kind == 'webrtc_ice':
        return WebRtcCandidate(_candidate(obj.get('candidate')))
    if kind == 'webrtc_stop':
        return WebRtcStop()
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f'unknown message type {str(kind)[:64]!r}')


def _stream(name) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_STREAM_NAME \
            or not name.isprintable():
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'stream' must be a stream name")
    return name


def _codecs(codecs) -> Optional[Tuple[str, ...]]:
    if codecs is None:
        return None
    if not isinstance(codecs, list) or len(codecs) > MAX_CODECS or \
            not all(isinstance(c, str) and 0 < len(c) <= MAX_CODEC_NAME for c in codecs):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'codecs' must be a list of codec names")
    return tuple(c.lower() for c in codecs)


def _sdp(sdp) -> str:
    if not isinstance(sdp, str) or not 0 < len(sdp) <= MAX_SDP or not sdp.startswith('v=') \
            or '\x00' in sdp:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'sdp' must be an SDP answer")
    if sdp.count('a=candidate:') > MAX_ANSWER_CANDIDATE_LINES:
        raise ProtocolError(ErrorCode.TOO_MANY_CANDIDATES,
                            f'at most {MAX_TRICKLED_CANDIDATES} ICE candidates per WebRTC session')
    return sdp


def _candidate(line) -> Optional[str]:
    if line is None or line == '':
        return None               # end of candidates
    if not isinstance(line, str) or len(line) > MAX_CANDIDATE:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'candidate' must be an ICE candidate line")
    body = line[len('candidate:'):] if line.startswith('candidate:') else line
    fields = body.split()
    if len(fields) < CANDIDATE_FIELDS or fields[6] != 'typ' or not line.isprintable() or \
            not (fields[1].isascii() and fields[1].isdigit()) or \
            not (fields[5].isascii() and fields[5].isdigit()):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, 'not an ICE candidate')
    return line


# --- replies (bridge -> client) ----------------------------------------------------------------

@dataclass(frozen=True)
class WebRtcConfigReply:
    """What the page needs to start: whether WebRTC is on, its codecs, ICE servers to use.

    ``mime_types`` pairs each codec with its MIME type (the codec registry's), so the page
    matches them against the browser's decoders without a codec list of its own.
    """

    enabled: bool
    codecs: Tuple[str, ...]
    ice_servers: Tuple[dict, ...]       # RTCIceServer dicts (urls, username, credential)
    mime_types: Tuple[Tuple[str, str], ...] = ()    # (codec, MIME type) each
    kind: ClassVar[str] = 'webrtc_config'


@dataclass(frozen=True)
class WebRtcOffer:
    """The bridge's SDP offer (all its candidates in it), with the codec, stream and layers."""

    sdp: str
    codec: str
    stream: str
    layers: Tuple[int, ...]             # bits/s of each layer, top first
    kind: ClassVar[str] = 'webrtc_offer'


@dataclass(frozen=True)
class WebRtcError:
    """A signalling request was refused (``code``: an ErrorCode), or the data channel misused."""

    code: str
    message: str
    kind: ClassVar[str] = 'webrtc_error'


@dataclass(frozen=True)
class WebRtcStopped:
    """The session's peer is closed: asked for (no reason), or by the bridge (reason, code)."""

    reason: Optional[str] = None
    code: Optional[str] = None
    kind: ClassVar[str] = 'webrtc_stopped'


SignallingReply = Union[WebRtcConfigReply, WebRtcOffer, WebRtcError, WebRtcStopped]


def encode_signalling(reply: SignallingReply, request_id: RequestId = None) -> dict:
    """Return the JSON object of a reply (``id``: the request's, None when unprompted)."""
    if isinstance(reply, WebRtcConfigReply):
        obj = {'enabled': reply.enabled, 'codecs': list(reply.codecs),
               'mime_types': dict(reply.mime_types), 'ice_servers': list(reply.ice_servers)}
    elif isinstance(reply, WebRtcOffer):
        obj = {'sdp': reply.sdp, 'codec': reply.codec, 'stream': reply.stream,
               'layers': list(reply.layers)}
    elif isinstance(reply, WebRtcError):
        obj = {'code': reply.code, 'message': reply.message}
    elif isinstance(reply, WebRtcStopped):
        obj = {} if reply.reason is None else {'reason': reply.reason}
        if reply.code is not None:
            obj['code'] = reply.code
    else:
        raise TypeError(f'not a signalling reply: {reply!r}')
    return {'type': reply.kind, 'id': request_id, **obj}
