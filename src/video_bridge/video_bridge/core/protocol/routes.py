"""
Request targets: which endpoint and stream a URL names, a viewer's variant and rate, the token.

A stream is one path segment (a configured name, or an image topic with its slashes escaped).
"""

from dataclasses import dataclass, field
import math
from typing import Optional, Tuple
from urllib.parse import parse_qs, quote, unquote

from video_bridge.core.protocol.errors import ErrorCode, ProtocolError

VIDEO_PREFIX = '/video/'
MJPEG_PREFIX = '/mjpeg/'
SNAPSHOT_PREFIX = '/snapshot/'
CONTROL_PATH = '/control'
STREAMS_PATH = '/api/streams'

MAX_STREAM_NAME = 128
MAX_DIMENSION = 8192
MAX_FPS = 120


@dataclass(frozen=True)
class Variant:
    """
    How a viewer wants a stream: size bounds (0 = source size) and JPEG quality (0 = default).

    Each distinct variant of a stream is encoded once per frame and shared by its viewers.
    """

    max_width: int = 0
    max_height: int = 0
    quality: int = 0
    codec: str = ''   # '' = JPEG (websocket, MJPEG, snapshot); 'h264' or 'vp8' (WebRTC)
    layer: int = 0    # video only: 0 = full bitrate, 1 = half, 2 = quarter ...

    def resolved(self, default_quality: int) -> 'Variant':
        """Return the variant with the stream's default quality filled in."""
        if self.quality or self.codec:
            return self
        return Variant(self.max_width, self.max_height, default_quality)


@dataclass(frozen=True)
class Target:
    """A parsed request target: which endpoint, which stream, and the query."""

    kind: str  # 'video', 'mjpeg', 'snapshot', 'control', 'streams' or 'static'
    stream: str = ''
    path: str = '/'
    query: dict = field(default_factory=dict)


def quote_stream(name: str) -> str:
    """Escape a stream name for a URL path segment (topic-named streams contain '/')."""
    return quote(name, safe='')


STREAM_ROUTES = ((VIDEO_PREFIX, 'video'), (MJPEG_PREFIX, 'mjpeg'), (SNAPSHOT_PREFIX, 'snapshot'))


def split_target(target: str) -> Tuple[str, dict]:
    """
    Split a request target into its decoded path and its single-valued query.

    Standard query decoding; of a repeated name the last value counts, blank values are kept.
    """
    # Not urlsplit: a target like '//[' is a path here, not a network location.
    raw_path, _, raw_query = target.partition('#')[0].partition('?')
    try:
        query = {k: v[-1] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_TARGET, 'malformed query string') from None
    return unquote(raw_path or '/'), query


def stream_name(segment: Optional[str], path: str) -> str:
    """
    Check a stream name, the decoded path segment after ``/video/`` (and the like).

    ``segment`` is None when the path has no single segment there (``/video/a/b``,
    ``/video/``). A stream is one path segment: a configured name (``front``) or an image
    topic with its slashes escaped (``%2Fcamera%2Fimage_raw``).
    """
    if not segment or len(segment) > MAX_STREAM_NAME or not segment.isprintable():
        raise ProtocolError(ErrorCode.BAD_STREAM, f'invalid stream name in {path!r}')
    return segment


def parse_target(target: str) -> Target:
    """
    Split a request target into endpoint kind, stream name and single-valued query.

    The bridge's server routes with aiohttp (path variables) and uses :func:`split_target`
    and :func:`stream_name` itself; this is the same reading of the URL space in one call.
    """
    path, query = split_target(target)
    raw_path = target.partition('#')[0].partition('?')[0]
    for prefix, kind in STREAM_ROUTES:
        if raw_path.startswith(prefix):
            segment = raw_path[len(prefix):]
            return Target(kind, stream_name(unquote(segment) if '/' not in segment else None,
                                            path), path, query)
    if path == CONTROL_PATH:
        return Target('control', '', path, query)
    if path == STREAMS_PATH:
        return Target('streams', '', path, query)
    return Target('static', '', path, query)


def _query_int(query: dict, name: str, low: int, high: int) -> int:
    raw = query.get(name, '')
    if raw == '':
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise ProtocolError(ErrorCode.BAD_VARIANT, f'{name} must be an integer, got {raw[:20]!r}')
    value = int(raw)
    if not low <= value <= high:
        raise ProtocolError(ErrorCode.BAD_VARIANT,
                            f'{name} must be within {low}..{high}, got {value}')
    return value


def parse_variant(query: dict) -> Variant:
    """Read ``width``, ``height`` and ``quality`` (web_video_server's names) from a query."""
    return Variant(
        max_width=_query_int(query, 'width', 0, MAX_DIMENSION),
        max_height=_query_int(query, 'height', 0, MAX_DIMENSION),
        quality=_query_int(query, 'quality', 1, 100),
    )


def parse_fps(query: dict) -> float:
    """Read ``fps``, the most frames per second this client wants (0 or absent: every frame)."""
    raw = query.get('fps', '')
    if raw == '':
        return 0.0
    try:
        value = float(raw) if raw.isascii() and len(raw) <= 16 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_FPS):
        raise ProtocolError(ErrorCode.BAD_VARIANT, f'fps must be a number within 0..{MAX_FPS}, '
                            f'got {raw[:20]!r}')
    return value


def presented_token(query: dict, headers) -> Optional[str]:
    """Token a client presented: ``Authorization: Bearer`` header, else ``token`` query value."""
    auth = headers.get('Authorization') if headers is not None else None
    if auth and auth.lower().startswith('bearer ') and auth[7:].strip():
        return auth[7:].strip()
    token = query.get('token')
    return token if token else None
