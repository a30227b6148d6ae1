"""
web_video_server's URLs on the bridge, so its users' links, dashboards and scripts keep working.

    /stream?topic=/camera/image_raw&type=mjpeg&width=320&height=240&quality=60
    /stream?topic=/camera/image_raw&type=ros_compressed    (the topic's /compressed JPEG)
    /snapshot?topic=/camera/image_raw&width=320
    /stream_viewer?topic=/camera/image_raw                 (a page with the stream in it)
    /stream_list                                           (the image topics, with links)

A topic a configured stream reads is served by that stream (shared encodes); any other image
topic in the graph becomes a topic stream (``allow_topic_streams``; token holders only when
there is a token). Every URL needs the right to watch (listing topics too). ``width`` and
``height`` are upper bounds that keep the aspect ratio (web_video_server stretches to exactly
that size when both are given). ``type`` other than mjpeg and ros_compressed (vp8, vp9, h264,
png) is refused with 400 naming what is supported. Streaming, snapshots, authentication and
limits are the MJPEG edge's (:mod:`video_bridge.net.mjpeg`); this module only translates the URLs.

Registered with ``BridgeServer(..., extra_routes=[wvs_compat.add_routes])``.
"""

import html
from urllib.parse import quote

from aiohttp import web
from video_bridge.core import protocol
from video_bridge.net import mjpeg
from video_bridge.net.auth import authenticate

STREAM_PATH = '/stream'
SNAPSHOT_PATH = '/snapshot'
VIEWER_PATH = '/stream_viewer'
LIST_PATH = '/stream_list'
TYPES = ('mjpeg', 'ros_compressed')
COMPRESSED_SUFFIX = '/compressed'


class WvsError(Exception):
    """A request web_video_server would also refuse: status and a plain reason."""

    def __init__(self, status: int, reason: str):
        """Keep the HTTP status with the reason."""
        super().__init__(reason)
        self.status = status


def _server(request):
    return request.app['video_bridge.server']


def graph_topics(server) -> list:
    """``[(topic, kind)]`` of the image topics the bridge has seen in the graph."""
    return [(entry['topic'], entry.get('kind', '')) for entry in server.list_topics()]


def stream_name_for(server, topic: str) -> str:
    """Name the configured stream reading ``topic``, else the topic itself (a topic stream)."""
    for stream in server.hub.streams():
        if stream.settings.topic == topic:
            return stream.name
    return topic


def requested(server, query) -> tuple:
    """Read ``topic`` and ``type`` and the variant: ``(stream name, Variant)``."""
    topic = query.get('topic', '')
    if not topic.startswith('/') or len(topic) > 512:
        raise WvsError(400, 'topic must be an absolute topic name, e.g. '
                       '?topic=/camera/image_raw')
    kind = query.get('type', 'mjpeg')
    if kind not in TYPES:
        raise WvsError(400, f'type {kind[:20]!r} is not supported here; supported: '
                       f'{", ".join(TYPES)}')
    if kind == 'ros_compressed' and not topic.endswith(COMPRESSED_SUFFIX):
        compressed = topic + COMPRESSED_SUFFIX
        known = {name for name, _ in graph_topics(server)}
        if compressed in known or stream_name_for(server, compressed) != compressed:
            topic = compressed  # the camera's own JPEGs, passed through untouched
    try:
        variant = protocol.parse_variant(query)
    except protocol.ProtocolError as exc:
        raise WvsError(400, exc.message) from None
    return stream_name_for(server, topic), variant


def _refusal(exc: WvsError) -> web.Response:
    return web.Response(status=exc.status, text=str(exc) + '\n')


async def handle_stream(request: web.Request) -> web.StreamResponse:
    """``GET /stream?topic=...``: MJPEG, like web_video_server's default."""
    query = request['video_bridge.query']
    try:
        name, variant = requested(_server(request), query)
        fps = protocol.parse_fps(query)
    except WvsError as exc:
        return _refusal(exc)
    except protocol.ProtocolError as exc:
        return web.Response(status=400, text=exc.message + '\n')
    return await mjpeg.serve_mjpeg(request, name, variant, fps)


async def handle_snapshot(request: web.Request) -> web.StreamResponse:
    """``GET /snapshot?topic=...``: one JPEG."""
    try:
        name, variant = requested(_server(request), request['video_bridge.query'])
    except WvsError as exc:
        return _refusal(exc)
    return await mjpeg.serve_snapshot(request, name, variant)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} img{{max-width:100%}}</style></head>
<body>{body}</body></html>
"""


def _page(title: str, body: str) -> web.Response:
    return web.Response(text=PAGE.format(title=html.escape(title), body=body),
                        content_type='text/html', headers={'Cache-Control': 'no-cache'})


def _carry(query, *names) -> str:
    """Pass the viewer page's own parameters on to the stream URL (quoted)."""
    return ''.join(f'&{name}={quote(query[name], safe="")}' for name in names if name in query)


async def handle_viewer(request: web.Request) -> web.Response:
    """``GET /stream_viewer?topic=...``: a page showing the stream (for those who may watch)."""
    grant = authenticate(request)
    if grant.problem:   # the page would tell which topics have a /compressed sibling
        return web.Response(status=401, text=grant.problem + '\n')
    query = request['video_bridge.query']
    try:
        requested(_server(request), query)  # refuse what /stream would refuse
    except WvsError as exc:
        return _refusal(exc)
    topic = query['topic']
    source = (f'{STREAM_PATH}?topic={quote(topic, safe="/")}'
              + _carry(query, 'type', 'width', 'height', 'quality', 'fps', 'token'))
    return _page(topic, f'<h1>{html.escape(topic)}</h1>\n'
                 f'<img src="{html.escape(source)}" alt="{html.escape(topic)}">')


async def handle_list(request: web.Request) -> web.Response:
    """``GET /stream_list``: the image topics, each with its viewer, stream and snapshot."""
    grant = authenticate(request)
    if grant.problem:
        return web.Response(status=401, text=grant.problem + '\n')
    server = _server(request)
    topics = sorted(set(graph_topics(server))
                    | {(stream.settings.topic, stream.settings.kind)
                       for stream in server.hub.streams()})
    items = []
    for topic, _kind in topics:
        quoted = html.escape(quote(topic, safe='/'))
        items.append(f'<li>{html.escape(topic)} '
                     f'(<a href="{VIEWER_PATH}?topic={quoted}">view</a>, '
                     f'<a href="{STREAM_PATH}?topic={quoted}">stream</a>, '
                     f'<a href="{SNAPSHOT_PATH}?topic={quoted}">snapshot</a>)</li>')
    body = ('<h1>Available ROS image topics</h1>\n<ul>\n' + '\n'.join(items) + '\n</ul>'
            if items else '<h1>No image topics yet</h1>')
    return _page('Image topics', body)


def add_routes(app: web.Application, server) -> None:
    """Register the web_video_server URLs (an ``extra_routes`` entry of BridgeServer)."""
    router = app.router
    router.add_get(STREAM_PATH, handle_stream)
    router.add_get(SNAPSHOT_PATH, handle_snapshot)
    router.add_get(VIEWER_PATH, handle_viewer)
    router.add_get(LIST_PATH, handle_list)
