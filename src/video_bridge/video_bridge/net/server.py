"""
The network adapter: one port for the page, the stream list, video, MJPEG, snapshots, control.

Thin by design: it authenticates, routes and moves bytes. Which frame a viewer gets is the stream
hub's decision (:mod:`video_bridge.core.streams`); what a command does is the teleop
core's (:mod:`video_bridge.core.teleop`, through :mod:`video_bridge.net.control`). Runs on one
asyncio loop; the ROS side reaches it only through :meth:`BridgeServer.notify_frame` (thread-safe).
"""

import asyncio
from dataclasses import dataclass
import json
import logging
import mimetypes
import os
import ssl
from typing import Callable, Optional

from video_bridge.core import protocol
from video_bridge.core.access import AccessPolicy
from video_bridge.core.streams import CapacityError, StreamHub, UnknownStream, Viewer
from video_bridge.net.connection import binary_frame, Connection, ConnectionClosed

MJPEG_BOUNDARY = 'videobridgeframe'
MJPEG_SEND_BUFFER = 256 * 1024
STATIC_TYPES = {'.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
                '.html': 'text/html', '.svg': 'image/svg+xml', '.json': 'application/json',
                '.webmanifest': 'application/manifest+json', '.png': 'image/png',
                '.ico': 'image/x-icon'}


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
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    frames_in_flight: int = 2
    max_message_size: int = protocol.MAX_CONTROL_MESSAGE


def mjpeg_part(frame) -> bytes:
    """One part of a multipart/x-mixed-replace MJPEG response."""
    header = frame.header
    head = (f'--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\n'
            f'Content-Length: {len(frame.jpeg)}\r\n'
            f'X-Timestamp: {header.stamp_sec}.{header.stamp_nanosec:09d}\r\n\r\n')
    return head.encode() + frame.jpeg + b'\r\n'


def websocket_message(frame) -> bytes:
    """Serialise the frame once as a binary websocket message and its flow-control ping."""
    return binary_frame(frame.payload, frame.seq)


class BridgeServer:
    """HTTP + websocket server of one bridge."""

    def __init__(self, hub: StreamHub, access: AccessPolicy, config: ServerConfig,
                 control=None, logger: Optional[logging.Logger] = None,
                 resolve_stream: Optional[Callable[[str], object]] = None,
                 list_topics: Callable[[], list] = list):
        self.hub = hub
        self.access = access
        self.config = config
        self.control = control
        self.log = logger or logging.getLogger('video_bridge.net.server')
        self.resolve_stream = resolve_stream
        self.list_topics = list_topics
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.base_events.Server] = None
        self._frame_events: dict = {}
        self._connections: set = set()
        self._handlers: set = set()
        self.port = config.port

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self):
        """Listen; raises OSError if the port is taken."""
        self.loop = asyncio.get_running_loop()
        context = None
        if self.config.tls_cert or self.config.tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        self._server = await asyncio.start_server(self._on_client, self.config.host,
                                                  self.config.port, ssl=context,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """Return the base URL clients use (the bound host; 0.0.0.0 is every interface)."""
        scheme = 'https' if self.config.tls_cert else 'http'
        return f'{scheme}://{self.config.host}:{self.port}'

    async def stop(self):
        """Stop listening and close every client (going away)."""
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(
            conn.close(protocol.CLOSE_GOING_AWAY, 'bridge shutting down', timeout=0.5)
            if conn.is_open else conn.abort() for conn in list(self._connections)))
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)

    def notify_frame(self, stream_name: str):
        """Wake the viewers of a stream; called from the ROS thread for every new frame."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._frame_ready, stream_name)

    def _frame_ready(self, stream_name: str):
        event = self._frame_events.pop(stream_name, None)
        if event is not None:
            event.set()

    def _frame_event(self, stream_name: str) -> asyncio.Event:
        event = self._frame_events.get(stream_name)
        if event is None:
            event = self._frame_events[stream_name] = asyncio.Event()
        return event

    # -- routing --------------------------------------------------------------------------

    async def _on_client(self, reader, writer):
        conn = Connection(reader, writer, self.config.max_message_size)
        self._connections.add(conn)
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            await self._serve(conn)
        except (ConnectionError, ConnectionClosed, OSError):
            pass
        except Exception:  # one client must never take the server down
            self.log.exception('error serving %s', conn.peer)
        finally:
            self._connections.discard(conn)
            await conn.abort()
            self._handlers.discard(task)

    async def _serve(self, conn: Connection):
        request = await conn.read_request(self.config.handshake_timeout)
        if request is None:
            return
        try:
            target = protocol.parse_target(request.path)
        except protocol.ProtocolError as exc:
            conn.respond(400, exc.message + '\n', 'text/plain; charset=utf-8')
            return
        if conn.is_websocket_request():
            if not self.access.origin_allowed(conn.header('Origin'), conn.header('Host')):
                self.log.warning('refused websocket from %s: origin %r not allowed',
                                 conn.peer, conn.header('Origin'))
                conn.respond(403, 'origin not allowed\n', 'text/plain; charset=utf-8')
            elif target.kind == 'video':
                await self._serve_video(conn, target)
            elif target.kind == 'control' and self.control is not None:
                await self.control.serve(conn, target)
            else:
                conn.respond(404, f'no websocket endpoint at {target.path}\n',
                             'text/plain; charset=utf-8')
            return
        handlers = {'static': self._serve_static, 'streams': self._serve_stream_list,
                    'snapshot': self._serve_snapshot, 'mjpeg': self._serve_mjpeg}
        handler = handlers.get(target.kind)
        if handler is None:
            conn.respond(426, f'{target.path} is a websocket endpoint\n',
                         'text/plain; charset=utf-8', {'Upgrade': 'websocket'})
            return
        await handler(conn, target)

    def _token(self, conn: Connection, target: protocol.Target):
        return protocol.presented_token(target.query, conn.request.headers)

    def _find_stream(self, name: str):
        try:
            return self.hub.get(name)
        except UnknownStream:
            if self.resolve_stream is not None:
                stream = self.resolve_stream(name)
                if stream is not None:
                    return stream
            raise

    def _viewer_for(self, conn: Connection, target: protocol.Target) -> Viewer:
        """Check the token and the variant, find the stream and attach; ProtocolError if not."""
        problem = self.access.view_problem(self._token(conn, target))
        if problem:
            self.log.warning('refused %s to %s: %s', target.path, conn.peer, problem)
            raise protocol.ProtocolError('unauthorized', problem)
        variant = protocol.parse_variant(target.query)
        try:
            stream = self._find_stream(target.stream)
        except UnknownStream:
            names = ', '.join(s.name for s in self.hub.streams()) or 'none'
            raise protocol.ProtocolError(
                'unknown_stream', f'unknown stream {target.stream!r} (streams: {names})') from None
        try:
            return stream.attach(variant)
        except CapacityError as exc:
            raise protocol.ProtocolError('capacity', str(exc)) from None

    # -- video over websocket -------------------------------------------------------------

    async def _serve_video(self, conn: Connection, target: protocol.Target):
        if not conn.accept_websocket():
            return
        close_codes = {'unauthorized': protocol.CLOSE_UNAUTHORIZED,
                       'unknown_stream': protocol.CLOSE_UNKNOWN_STREAM,
                       'capacity': protocol.CLOSE_CAPACITY}
        try:
            viewer = self._viewer_for(conn, target)
        except protocol.ProtocolError as exc:
            await conn.close(close_codes.get(exc.code, protocol.CLOSE_BAD_REQUEST), exc.message)
            return
        pump = asyncio.create_task(self._pump(viewer, lambda frame: conn.send_frame(
            frame.wire('ws', websocket_message), frame.seq, self.config.frames_in_flight,
            self.config.ping_timeout)))
        keepalive = asyncio.create_task(self._keepalive(conn))
        receive = asyncio.ensure_future(conn.recv())
        try:
            await asyncio.wait([pump, receive], return_when=asyncio.FIRST_COMPLETED)
            if receive.done() and not receive.cancelled() and receive.exception() is None:
                # Anything a viewer sends on a video socket is a mistake: say so and close.
                await conn.close(protocol.CLOSE_UNSUPPORTED_DATA, 'video sockets are receive-only')
        finally:
            for task in (pump, keepalive, receive):
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()  # a client that left mid-send: expected, not an error
            viewer.detach()

    async def _pump(self, viewer: Viewer, send):
        """Send the newest frame whenever the client is ready for one, until it goes away."""
        while True:
            frame = viewer.take()
            if frame is None:
                await self._frame_event(viewer.stream.name).wait()
                continue
            await send(frame)

    async def _keepalive(self, conn: Connection):
        """Ping idle-looking peers so a vanished client frees its viewer slot."""
        while conn.is_open:
            await asyncio.sleep(self.config.ping_interval)
            if not await conn.ping(self.config.ping_timeout):
                self.log.info('%s did not answer a ping; dropping it', conn.peer)
                await conn.abort()
                return

    # -- plain HTTP -----------------------------------------------------------------------

    async def _serve_mjpeg(self, conn: Connection, target: protocol.Target):
        viewer = self._http_viewer(conn, target)
        if viewer is None:
            return
        # No pongs in plain HTTP: keep the kernel from buffering seconds of frames instead.
        conn.limit_send_buffer(MJPEG_SEND_BUFFER)
        conn.start_stream(200, f'multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}',
                          {'Cache-Control': 'no-cache, no-store', 'Pragma': 'no-cache'})
        pump = asyncio.create_task(self._pump(viewer, lambda frame: conn.write(
            frame.wire('mjpeg', mjpeg_part))))
        hangup = asyncio.create_task(conn.reader.read(1))  # EOF when the client goes
        try:
            await asyncio.wait([pump, hangup], return_when=asyncio.FIRST_COMPLETED)
            if pump.done() and not pump.cancelled():
                pump.result()
        finally:
            pump.cancel()
            hangup.cancel()
            viewer.detach()

    async def _serve_snapshot(self, conn: Connection, target: protocol.Target):
        viewer = self._http_viewer(conn, target)
        if viewer is None:
            return
        try:
            async with asyncio.timeout(self.config.snapshot_timeout):
                while (frame := viewer.take()) is None:
                    await self._frame_event(viewer.stream.name).wait()
        except TimeoutError:
            conn.respond(503, f'no frame on {viewer.stream.name!r} within '
                         f'{self.config.snapshot_timeout:g} s\n', 'text/plain; charset=utf-8')
            return
        finally:
            viewer.detach()
        header = frame.header
        conn.respond(200, frame.jpeg, 'image/jpeg', {
            'Cache-Control': 'no-cache, no-store',
            'X-Timestamp': f'{header.stamp_sec}.{header.stamp_nanosec:09d}',
            'X-Sequence': str(header.seq)})

    def _http_viewer(self, conn: Connection, target: protocol.Target) -> Optional[Viewer]:
        statuses = {'unauthorized': 401, 'unknown_stream': 404, 'capacity': 503}
        try:
            return self._viewer_for(conn, target)
        except protocol.ProtocolError as exc:
            conn.respond(statuses.get(exc.code, 400), exc.message + '\n',
                         'text/plain; charset=utf-8')
            return None

    async def _serve_stream_list(self, conn: Connection, target: protocol.Target):
        if self.access.view_problem(self._token(conn, target)):
            conn.respond(401, 'token required\n', 'text/plain; charset=utf-8')
            return
        conn.respond(200, json.dumps(self.describe()), 'application/json',
                     {'Cache-Control': 'no-cache'})

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
                'snapshot': protocol.SNAPSHOT_PREFIX + quoted})
        return {'protocol': protocol.PROTOCOL_VERSION, 'streams': streams,
                'topics': self.list_topics(),
                'access': {'token_required': self.access.token_required,
                           'view_requires_token': self.access.view_requires_token}}

    async def _serve_static(self, conn: Connection, target: protocol.Target):
        root = os.path.abspath(self.config.web_root) if self.config.web_root else ''
        relative = 'index.html' if target.path == '/' else target.path.lstrip('/')
        # Judge the path by its name, not by where symlinks lead (colcon --symlink-install
        # links every file of web/ into share/): no '..', nothing outside the root.
        path = os.path.normpath(os.path.join(root, relative)) if root else ''
        if not root or '..' in relative.split('/') or not path.startswith(root + os.sep) \
                or not os.path.isfile(path):
            conn.respond(404, f'not found: {target.path}\n', 'text/plain; charset=utf-8')
            return
        extension = os.path.splitext(path)[1].lower()
        content_type = STATIC_TYPES.get(extension) or mimetypes.guess_type(path)[0] or \
            'application/octet-stream'
        if content_type.startswith('text/') or content_type.endswith(('json', 'xml')):
            content_type += '; charset=utf-8'
        with open(path, 'rb') as handle:
            body = handle.read()
        conn.respond(200, body, content_type, {'Cache-Control': 'no-cache'})
