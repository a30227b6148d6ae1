"""
The network adapter: one aiohttp application on one port.

It serves the page, the stream list, video, MJPEG, snapshots and control.

Thin by design: it authenticates, routes and moves bytes. Which frame a viewer gets is the stream
hub's decision (:mod:`video_bridge.core.streams`); what a command does is the teleop core's
(:mod:`video_bridge.core.teleop`, through :mod:`video_bridge.net.control`). Runs on one asyncio
loop; the ROS side reaches it only through :meth:`BridgeServer.notify_frame` (thread-safe).

Pieces: :mod:`app` (routes, middleware, headers), :mod:`listener` (accepting within the
connection caps), :mod:`auth` (the Grant), :mod:`static`, :mod:`mjpeg`, :mod:`video_ws`,
:mod:`control_ws`, :mod:`websocket` (keepalive, closing).
"""

import asyncio
from dataclasses import dataclass
import gc
import logging
import re
import ssl
import time
from typing import Callable, Iterable, Optional, Tuple

import aiohttp
from aiohttp import web
from video_bridge.core import protocol
from video_bridge.core.access import AccessPolicy
from video_bridge.core.log_budget import LogBudget
from video_bridge.core.protocol import ErrorCode
from video_bridge.core.streams import (CapacityError, NotPermitted, StreamHub, UnknownStream,
                                       Viewer)
from video_bridge.net import websocket
from video_bridge.net.app import build_app, quiet_aiohttp_logs
from video_bridge.net.listener import (bound_tls_read_buffers, FD_RESERVE, Listener,
                                       raise_file_limit)

AIOHTTP_VERSION = tuple(int(part) for part in re.findall(r'\d+', aiohttp.__version__)[:2])
KEEPALIVE_TIMEOUT = 15.0   # s an idle keep-alive HTTP connection stays open
TRANSPORT_CHECK = 1.0      # s between checks that a waiting HTTP client is still there


@dataclass(frozen=True)
class ServerConfig:
    """Network settings of the bridge (ROS parameters of bridge_node)."""

    host: str = '127.0.0.1'
    port: int = 8080
    web_root: str = ''
    tls_cert: str = ''
    tls_key: str = ''
    handshake_timeout: float = 10.0
    snapshot_timeout: float = 5.0
    send_timeout: float = 5.0
    ping_interval: float = 2.0
    ping_timeout: float = 6.0
    frames_in_flight: int = 2
    max_message_size: int = protocol.MAX_CONTROL_MESSAGE
    max_connections: int = 1000
    max_connections_per_client: int = 256
    trusted_proxies: Tuple[str, ...] = ()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Make a server TLS context: TLS 1.2 or newer."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


# allocations between two collections of the youngest generation (CPython's default: 700)
YOUNG_COLLECTION_THRESHOLD = 7000


def freeze_start_up_objects():
    """
    Leave the objects made at start-up out of every later garbage collection (gc.freeze).

    bridge_node calls it once the bridge listens (a choice for the whole process, so not the
    server's own: tests run servers inside pytest). rclpy, aiortc, av, numpy and the bridge
    itself leave about 88,000 tracked objects that live as long as the process, and every full
    collection walked them again while it held the loop (and every thread): the longest stalls
    the bridge made itself under the hostile soak, long enough to delay a driver's commands.
    Afterwards a full collection walks only what clients made since. A start-up object that
    dies later is not collected if it sits in a cycle: a one-off cost, bounded by what
    start-up made.
    """
    gc.collect()
    gc.freeze()


def collect_young_objects_less_often(threshold: int = YOUNG_COLLECTION_THRESHOLD):
    """
    Run the garbage collector's youngest generation every ``threshold`` allocations, not 700.

    A server's objects mostly die young (a request, a frame, a message). Collected every 700
    allocations, whatever is alive at that moment is promoted, and those promotions are what
    makes the older generations' collections frequent and long: under the hostile soak, 54
    middle collections a minute (up to 8 ms each) and 4 to 6 full ones (30 to 70 ms), all
    holding the loop and every thread. Collected every 7000, fewer short-lived objects are
    caught alive: command p99 5.7-5.9 ms against 7.0-7.7 ms, at the same CPU and memory
    (bench/run soak, 2026-12-06). A choice for the whole process, like freeze_start_up_objects.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)


def _runner(app: web.Application, args: dict) -> web.AppRunner:
    """Make an AppRunner with what this aiohttp version supports of ``args``."""
    if AIOHTTP_VERSION >= (3, 9):  # cancel a handler when its client goes (3.8 always does)
        return web.AppRunner(app, handler_cancellation=True, **args)
    args = dict(args)
    args.pop('shutdown_timeout', None)  # 3.8: a site option; runner kwargs go to each handler
    return web.AppRunner(app, **args)


class BridgeServer:
    """HTTP + websocket server of one bridge."""

    def __init__(self, hub: StreamHub, access: AccessPolicy, config: ServerConfig,
                 control=None, logger: Optional[logging.Logger] = None,
                 resolve_stream: Optional[Callable[[str], object]] = None,
                 list_topics: Callable[[], list] = list,
                 extra_routes: Iterable[Callable[[web.Application, 'BridgeServer'], None]] = ()):
        self.hub = hub
        self.access = access
        self.config = config
        self.control = control
        self.log = logger or logging.getLogger('video_bridge.net.server')
        self.resolve_stream = resolve_stream
        self.list_topics = list_topics
        self.extra_routes = list(extra_routes)
        self.webrtc = None  # the WebRTC service, if any: its figures join /api/streams
        self.sfu = None     # the SFU service, if any: /api/streams says which streams it offers
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.app: Optional[web.Application] = None
        self.listener: Optional[Listener] = None
        self._runner: Optional[web.AppRunner] = None
        self._frame_events: dict = {}
        self.websockets: dict = {}
        self._error_logged = -60.0
        self._quiet = LogBudget(self.log)
        self.port = config.port

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self):
        """Listen; raises OSError if the port is taken."""
        self.loop = asyncio.get_running_loop()
        quiet_aiohttp_logs()
        config = self.config
        context = tls_context(config.tls_cert, config.tls_key) \
            if config.tls_cert or config.tls_key else None
        if context is not None and not bound_tls_read_buffers():
            self.log.warning('asyncio.sslproto.SSLProtocol.max_size is not bounded on this '
                             'Python (not one checked for it): each TLS connection keeps a '
                             '256 KB read buffer')
        limit = raise_file_limit()
        max_connections = min(config.max_connections, max(limit - FD_RESERVE, 16))
        if max_connections < config.max_connections:
            self.log.warning('max_connections lowered to %d: the file descriptor limit is %d',
                             max_connections, limit)
        self.app = build_app(self, self.extra_routes)
        runner_args = {'handle_signals': False, 'access_log': None, 'shutdown_timeout': 1.0,
                       'keepalive_timeout': KEEPALIVE_TIMEOUT, 'max_line_size': 8190,
                       'max_field_size': 8190}
        self._runner = _runner(self.app, runner_args)
        await self._runner.setup()
        self.listener = Listener(
            self._runner.server, ssl_context=context, max_connections=max_connections,
            max_per_client=config.max_connections_per_client,
            exempt=set(config.trusted_proxies), handshake_timeout=config.handshake_timeout,
            shut_out=self.access.connection_refusal, logger=self.log)
        try:
            self.port = self.listener.bind(config.host, config.port)
        except OSError:
            await self._runner.cleanup()
            raise
        self.listener.start()

    @property
    def url(self) -> str:
        """Return the base URL clients use (the bound host; 0.0.0.0 is every interface)."""
        scheme = 'https' if self.config.tls_cert else 'http'
        host = self.config.host
        if ':' in host:
            host = f'[{host}]'
        return f'{scheme}://{host}:{self.port}'

    async def stop(self):
        """Stop listening, let control clients have their last replies, close every client."""
        if self.listener is not None:
            await self.listener.stop()
        if self.control is not None:
            await self.control.flush(0.5)
        await self.close_connections()
        if self._runner is not None:
            await self._runner.cleanup()

    def track(self, request, ws, close=None):
        """
        Remember an open websocket so shutdown can close it with 1001 (handlers call it).

        ``close(code, reason)`` asks the handler to close; without it, shutdown closes the
        socket itself.
        """
        self.websockets[id(ws)] = (request, ws, close)

    def untrack(self, request, ws):
        """Forget a websocket that closed."""
        self.websockets.pop(id(ws), None)

    async def close_connections(self):
        """Close every websocket with 1001 (going away), then drop every other connection."""
        closing = []
        for request, ws, close in list(self.websockets.values()):
            if close is not None:
                close(protocol.CLOSE_GOING_AWAY, 'bridge shutting down')
            else:
                closing.append(asyncio.ensure_future(websocket.close(
                    request, ws, protocol.CLOSE_GOING_AWAY, 'bridge shutting down')))
        deadline = time.monotonic() + websocket.CLOSE_TIMEOUT + 1.0
        if closing:
            await asyncio.wait(closing, timeout=websocket.CLOSE_TIMEOUT + 1.0)
        while self.websockets and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # handlers finish their close handshakes
        if self.listener is not None:
            for transport in self.listener.transports():
                transport.abort()
        await asyncio.sleep(0)

    def notify_frame(self, stream_name: str):
        """Wake the viewers of a stream; called from the ROS thread for every new frame."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._frame_ready, stream_name)
            except RuntimeError:  # the loop closed in between
                pass

    def _frame_ready(self, stream_name: str):
        event = self._frame_events.pop(stream_name, None)
        if event is not None:
            event.set()

    def _frame_event(self, stream_name: str) -> asyncio.Event:
        event = self._frame_events.get(stream_name)
        if event is None:
            event = self._frame_events[stream_name] = asyncio.Event()
        return event

    def log_error_once(self, message: str, *args):
        """Log a handler error with its traceback, at most once a minute."""
        now = time.monotonic()
        if now - self._error_logged >= 60.0:
            self._error_logged = now
            self.log.exception(message, *args)

    def log_throttled(self, kind: str, message: str, *args, level: int = logging.INFO):
        """
        Log at most one line per ``REFUSAL_PERIOD`` s for each ``kind`` of event, with a count.

        Refusals and dropped clients come in floods when someone attacks; the log must not.
        """
        self._quiet.say(level, kind, message, *args)

    # -- viewers ----------------------------------------------------------------------------

    def attach(self, grant, target: protocol.Target, request=None) -> Viewer:
        """Attach a viewer of ``target`` (stream + variant query); ProtocolError if refused."""
        return self.attach_variant(grant, target.stream, protocol.parse_variant(target.query),
                                   request)

    def attach_variant(self, grant, stream_name: str, variant: protocol.Variant,
                       request=None) -> Viewer:
        """Check the grant, find the stream and attach a viewer; ProtocolError if not."""
        if grant.problem:
            self.log_throttled('refused_viewer', 'refused %s to %s: %s', stream_name,
                               grant.client, grant.problem, level=logging.WARNING)
            raise protocol.ProtocolError(ErrorCode.UNAUTHORIZED, grant.problem)
        try:
            stream = self.hub.lookup(stream_name, self.resolve_stream,
                                     getattr(grant, 'topic_streams', False))
        except NotPermitted as exc:
            raise protocol.ProtocolError(ErrorCode.UNAUTHORIZED, str(exc)) from None
        except UnknownStream:
            names = ', '.join(s.name for s in self.hub.streams()) or 'none'
            raise protocol.ProtocolError(ErrorCode.UNKNOWN_STREAM, f'unknown stream '
                                         f'{stream_name!r} (streams: {names})') from None
        try:
            return stream.attach(variant)
        except CapacityError as exc:
            raise protocol.ProtocolError(ErrorCode.CAPACITY, str(exc)) from None

    async def next_frame(self, viewer: Viewer, request=None):
        """
        Wait for a frame newer than the viewer's last one and return it.

        With ``request`` (plain HTTP), return None once that client's connection closed.
        """
        while True:
            frame = viewer.take()
            if frame is not None:
                return frame
            event = self._frame_event(viewer.stream.name)
            if request is None:
                await event.wait()
                continue
            transport = request.transport
            if transport is None or transport.is_closing():
                return None
            try:
                async with asyncio.timeout(TRANSPORT_CHECK):  # no task per frame, as wait_for
                    await event.wait()
            except TimeoutError:
                pass

    # -- /api/streams -------------------------------------------------------------------------

    def describe(self) -> dict:
        """Build the /api/streams document: streams offered, image topics seen, access rules."""
        streams = []
        for stream in self.hub.streams():
            counters = stream.counters()
            name = stream.name
            quoted = protocol.quote_stream(name)
            streams.append({
                'name': name, 'topic': stream.settings.topic, 'kind': stream.settings.kind,
                'viewers': counters.viewers, 'frames_in': counters.frames_in,
                'width': counters.width, 'height': counters.height,
                'video': protocol.VIDEO_PREFIX + quoted, 'mjpeg': protocol.MJPEG_PREFIX + quoted,
                'snapshot': protocol.SNAPSHOT_PREFIX + quoted,
                'video_encoders': counters.video_encoders,
                'video_encodes': counters.video_encodes,
                'video_decoders': counters.video_decoders,
                'malformed': {k: v for k, v in counters.malformed.items() if v},
                # watchable through the SFU (sfu_watch on /control): configured streams only
                'sfu': self.sfu is not None and not stream.settings.topic_stream})
        document = {'protocol': protocol.PROTOCOL_VERSION, 'streams': streams,
                    'topics': self.list_topics(),
                    'access': {'token_required': self.access.token_required,
                               'view_requires_token': self.access.view_requires_token}}
        if self.webrtc is not None:
            document['webrtc'] = self.webrtc.counters()
        return document
