"""
The bridge's aiohttp application: every route in one place, one middleware, one headers hook.

Routes (aiohttp's own, declared in :func:`build_app`): the page's files (:mod:`static`),
``/api/streams``, ``/snapshot/{stream}`` and ``/mjpeg/{stream}`` (:mod:`mjpeg`),
``/video/{stream}`` (:mod:`video_ws`) and ``/control`` (:mod:`control_ws`), plus whatever
``extra_routes`` add (web_video_server's ``/stream?topic=`` ...). A stream route's handler
gets the checked name from ``request.match_info`` in ``request['video_bridge.target']``; a
path under a stream prefix that is not one stream segment (``/video/a/b``) is answered 400,
not 404. The middleware decodes the query once (``request['video_bridge.query']``, standard
decoding), refuses a bad Host or Origin, and notes that the connection sent a request. Every
response gets the security headers (and CORS headers where configured) just before it is sent.
"""

import json
import logging
import time

from aiohttp import hdrs, web
from video_bridge.core import protocol
from video_bridge.net import auth, control_ws, listener, mjpeg, static, video_ws

SERVER_KEY = 'video_bridge.server'
TARGET_KEY = 'video_bridge.target'  # a stream route's protocol.Target (kind, stream, query)
QUERY_KEY = 'video_bridge.query'    # every request's single-valued query
PATH_KEY = 'video_bridge.path'      # its decoded path, for messages and logs
CLIENT_KEY = 'video_bridge.client'   # who the request counts for (see client_key)
SECURITY_HEADERS = {
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'Content-Security-Policy': "frame-ancestors 'self'; object-src 'none'; base-uri 'self'",
}
CORS_PREFIXES = (protocol.STREAMS_PATH, protocol.SNAPSHOT_PREFIX)
ERROR_LOG_PERIOD = 5.0  # s between logged handler errors


def client_key(request: web.BaseRequest) -> str:
    """
    Name the client of a request for per-client counts.

    That is its address (IPv6: its /64), or the forwarded one (X-Forwarded-For's last entry)
    when a trusted proxy sent it.
    """
    peer = auth.peer_host(request)
    if peer in request.app.get(auth.TRUSTED_KEY, ()):
        forwarded = request.headers.get('X-Forwarded-For', '').split(',')[-1].strip()
        if forwarded:
            return listener.client_key(auth.normalise_address(forwarded[:64]))
        return peer
    return listener.client_key(peer)


def _text(status: int, text: str, headers=None) -> web.Response:
    return web.Response(status=status, text=text + '\n', headers=headers)


@web.middleware
async def edge_middleware(request: web.Request, handler):
    """Parse the target, check Host and Origin, then run the route; no traceback escapes."""
    server = request.app[SERVER_KEY]
    server.listener.mark_request(request.transport)
    try:
        path, request[QUERY_KEY] = protocol.split_target(request.raw_path)
    except protocol.ProtocolError as exc:
        return _text(400, exc.message)
    request[PATH_KEY] = path
    problem = auth.host_origin_problem(request)
    if problem is not None:
        status, reason = problem
        server.log_throttled(f'refused_{status}', 'refused %s from %s: %s', path[:80],
                             auth.client_name(request), reason, level=logging.WARNING)
        return _text(status, reason)
    key = client_key(request)
    request[CLIENT_KEY] = key
    grant = auth.authenticate(request)
    refused = server.listener.admit(request.transport, key,
                                    grant.problem is None and grant.drive)
    if refused:
        server.log_throttled('refused_full', 'refused %s from %s: %s', path[:80],
                             grant.client, refused, level=logging.WARNING)
        response = _text(503, refused, {'Retry-After': '5'})
        response.force_close()  # the connection's slot is what it was refused
        return response
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (ConnectionError, OSError):
        raise web.HTTPBadRequest() from None
    except Exception:
        server.log_error_once('error serving %s', path[:80])
        return _text(500, 'internal error')


async def _headers(request: web.BaseRequest, response: web.StreamResponse):
    """on_response_prepare: security headers everywhere, CORS for the listed origins."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(CORS_PREFIXES):
        allowed = request.app[auth.POLICY_KEY].cors_origin(request.headers.get(hdrs.ORIGIN))
        if allowed:
            response.headers['Access-Control-Allow-Origin'] = allowed
            response.headers['Access-Control-Expose-Headers'] = 'X-Timestamp, X-Sequence'
        response.headers.add('Vary', 'Origin')


async def _preflight(request: web.Request) -> web.Response:
    """CORS preflight for /api/streams and /snapshot (a token in Authorization needs it)."""
    return web.Response(status=204, headers={
        'Access-Control-Allow-Methods': 'GET, HEAD',
        'Access-Control-Allow-Headers': 'Authorization',
        'Access-Control-Max-Age': '600'})


async def stream_list(request: web.Request) -> web.Response:
    """``GET /api/streams``: streams, image topics seen, access rules."""
    grant = auth.authenticate(request)
    if grant.problem:
        return _text(401, grant.problem)
    return web.Response(text=json.dumps(request.app[SERVER_KEY].describe()),
                        content_type='application/json', headers={'Cache-Control': 'no-cache'})


def _stream_route(kind: str, handler):
    """
    Wrap a stream route's handler: the stream name from ``match_info``, checked, or a 400.

    The check comes before the handler's own (a websocket endpoint's 426), as a malformed
    target is refused before anything else; the fallback route of a prefix has no ``stream``.
    """
    async def route(request: web.Request) -> web.StreamResponse:
        path = request[PATH_KEY]
        try:
            stream = protocol.stream_name(request.match_info.get('stream'), path)
        except protocol.ProtocolError as exc:
            return _text(400, exc.message)
        request[TARGET_KEY] = protocol.Target(kind, stream, path, request[QUERY_KEY])
        return await handler(request)
    return route


def _add_stream_routes(router, prefix: str, kind: str, handlers: dict):
    """
    ``{prefix}{stream}`` (one path segment, %2F allowed) and, after it, a 400 for the rest.

    ``handlers``: method -> handler; GET answers HEAD as well (as ``add_get`` does).
    """
    for pattern in (prefix + '{stream}', prefix + '{tail:.*}'):
        for method, handler in handlers.items():
            route = _stream_route(kind, handler)
            if method == 'GET':
                router.add_get(pattern, route)
            else:
                router.add_route(method, pattern, route)


async def _on_shutdown(app: web.Application):
    """Close every websocket (going away) when the runner cleans up."""
    await app[SERVER_KEY].close_connections()


def build_app(server, extra_routes=()) -> web.Application:
    """Make the application for ``server`` (a BridgeServer)."""
    app = web.Application(middlewares=[edge_middleware], client_max_size=64 * 1024)
    app[SERVER_KEY] = server
    app[auth.POLICY_KEY] = server.access
    app[auth.TRUSTED_KEY] = frozenset(server.config.trusted_proxies)
    app[auth.SCHEME_KEY] = 'https' if server.config.tls_cert else 'http'
    router = app.router
    served = static.add_routes(app, server.config.web_root)
    router.add_get(protocol.STREAMS_PATH, stream_list)
    router.add_route('OPTIONS', protocol.STREAMS_PATH, _preflight)
    _add_stream_routes(router, protocol.SNAPSHOT_PREFIX, 'snapshot',
                       {'GET': mjpeg.handle_snapshot, 'OPTIONS': _preflight})
    _add_stream_routes(router, protocol.MJPEG_PREFIX, 'mjpeg', {'GET': mjpeg.handle_mjpeg})
    _add_stream_routes(router, protocol.VIDEO_PREFIX, 'video',
                       {'GET': video_ws.handle})
    router.add_get(protocol.CONTROL_PATH, control_ws.handle)
    for add in extra_routes:
        add(app, server)
    app.on_response_prepare.append(_headers)
    app.on_shutdown.append(_on_shutdown)
    if not served:
        server.log.warning('no page files under %r: only the API is served',
                           server.config.web_root)
    return app


class QuietAiohttpLog(logging.Filter):
    """
    Keep aiohttp's own error log from flooding: no tracebacks, one line per few seconds.

    Malformed requests are answered 400 by aiohttp; a hostile client sending thousands of them
    must not write thousands of tracebacks.
    """

    def __init__(self, period: float = ERROR_LOG_PERIOD):
        super().__init__()
        self.period = period
        self._last = -period
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 (logging.Filter API)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        if isinstance(record.msg, str) and record.msg.startswith('Error handling request'):
            # aiohttp's words for a request it could not parse (answered 400): say what it is
            record.msg = record.msg.replace('Error handling request',
                                            'answered a malformed request with an error', 1)
            record.levelno, record.levelname = logging.WARNING, 'WARNING'
        now = time.monotonic()
        if now - self._last < self.period:
            self.suppressed += 1
            return False
        self._last = now
        if self.suppressed:
            record.msg = f'{record.getMessage()} ({self.suppressed} similar messages suppressed)'
            record.args = ()
            self.suppressed = 0
        return True


def quiet_aiohttp_logs():
    """Install :class:`QuietAiohttpLog` on aiohttp's server-side loggers (idempotent)."""
    for name in ('aiohttp.server', 'aiohttp.web', 'aiohttp.websocket', 'aiohttp.access'):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietAiohttpLog) for f in logger.filters):
            logger.addFilter(QuietAiohttpLog())
