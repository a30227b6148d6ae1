"""
``/video/<stream>`` over a websocket: the newest frame, flow-controlled by pongs.

After each frame the bridge sends a ping whose payload is ``b'f'`` + the frame's sequence number
(big-endian uint64), and keeps at most ``frames_in_flight`` frames unacknowledged by the
matching pong (every websocket client answers pings by itself). So the kernel's socket buffers
never hold a stale backlog for a client that stalls; when it is ready it gets the newest frame.
Every send has a deadline (``send_timeout``): a client that acknowledges nothing for that long
is dropped and its viewer slot freed. ``?fps`` below ``MIN_FPS`` is served at ``MIN_FPS``, so a
viewer slot is only ever held by a client that takes frames at a real rate.
"""

import asyncio
import collections
import struct
import time

from aiohttp import web, WSMsgType
from video_bridge.core import protocol
from video_bridge.net import websocket
from video_bridge.net.auth import authenticate
from video_bridge.net.mjpeg import effective_fps

FRAME_MARK = struct.Struct('!cQ')  # b'f' + frame sequence number, the payload of frame pings
VIDEO_MAX_MESSAGE = 1024  # a receive-only socket: anything larger is a mistake or an attack


class _Window:
    """Frames sent and not yet acknowledged by their pong."""

    def __init__(self):
        self.unacked = collections.deque()
        self.changed = asyncio.Event()

    def sent(self, seq: int):
        self.unacked.append(seq)

    def pong(self, data: bytes) -> bool:
        """Take a pong: it acknowledges its frame and every earlier one (RFC 6455 5.5.3)."""
        if len(data) != FRAME_MARK.size or data[:1] != b'f':
            return False
        acked = FRAME_MARK.unpack(data)[1]
        while self.unacked and self.unacked[0] <= acked:
            self.unacked.popleft()
        self.changed.set()
        return True

    def full(self, window: int) -> bool:
        return len(self.unacked) >= window

    async def room(self, window: int):
        while len(self.unacked) >= window:
            self.changed.clear()
            await self.changed.wait()


async def handle(request: web.Request) -> web.StreamResponse:
    """Serve one video websocket until the client goes, stalls or sends data."""
    refusal = websocket.upgrade_required(request)
    if refusal is not None:
        return refusal
    server = request.app['video_bridge.server']
    config = server.config
    target = request['video_bridge.target']
    ws = websocket.response(VIDEO_MAX_MESSAGE)
    await ws.prepare(request)
    try:
        grant = authenticate(request)
        fps = effective_fps(protocol.parse_fps(target.query))
        viewer = server.attach(grant, target, request)
    except protocol.ProtocolError as exc:
        code = protocol.VIDEO_CLOSE_CODES.get(exc.code, protocol.CLOSE_BAD_REQUEST)
        await websocket.close(request, ws, code, exc.message)
        return ws
    window = _Window()
    server.track(request, ws)
    keepalive = websocket.Keepalive(request, ws, config.ping_interval, config.ping_timeout)
    pump = asyncio.get_running_loop().create_task(_pump(request, ws, server, viewer, window, fps))
    keepalive.start()
    try:
        async for message in ws:
            keepalive.heard()
            if message.type is WSMsgType.PONG:
                window.pong(message.data)
            elif message.type is WSMsgType.PING:
                if not await websocket.answer_ping(request, ws, message.data,
                                                   config.send_timeout):
                    break
            elif websocket.is_data(message):
                # Anything a viewer sends on a video socket is a mistake: say so and close.
                await websocket.close(request, ws, protocol.CLOSE_UNSUPPORTED_DATA,
                                      'video sockets are receive-only')
                break
            else:
                break
    finally:
        server.untrack(request, ws)
        pump.cancel()
        keepalive.stop()
        viewer.detach()
        await asyncio.gather(pump, return_exceptions=True)
    return ws


async def _pump(request, ws, server, viewer, window: _Window, fps: float):
    """Send the newest frame whenever the client is ready for one, until it goes away."""
    config = server.config
    interval = 1.0 / fps if fps else 0.0
    next_time = 0.0
    try:
        while True:
            try:
                if window.full(config.frames_in_flight):  # wait_for costs a task: only if needed
                    await asyncio.wait_for(window.room(config.frames_in_flight),
                                           config.send_timeout)
            except asyncio.TimeoutError:
                server.log_throttled('video_stalled', 'video viewer %s acknowledged no frame for '
                                     '%g s; dropping it', request.remote, config.send_timeout)
                break
            if interval:
                delay = next_time - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            frame = await server.next_frame(viewer)
            if interval:
                next_time = max(next_time + interval, time.monotonic())
            window.sent(frame.seq)
            _send(request, ws, frame)
            server.listener.active(request.transport)  # takes frames: not idle
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        pass
    websocket.abort(request)


def frame_header(opcode: int, length: int) -> bytes:
    """RFC 6455 5.2 header of an unmasked (server) frame with FIN set."""
    if length < 126:
        return struct.pack('!BB', 0x80 | opcode, length)
    if length < 1 << 16:
        return struct.pack('!BBH', 0x80 | opcode, 126, length)
    return struct.pack('!BBQ', 0x80 | opcode, 127, length)


def serialise(frame) -> bytes:
    """
    Serialise a frame as a binary websocket message plus its flow-control ping, once per frame.

    The one piece of websocket framing the bridge does itself, for a measured reason: every
    viewer of a frame then gets the same bytes in one write, instead of aiohttp framing the
    message and the ping again per viewer (bench/edge_bench.py; README "Network edge").
    """
    mark = FRAME_MARK.pack(b'f', frame.seq)
    return (frame_header(0x2, len(frame.payload)) + frame.payload
            + frame_header(0x9, len(mark)) + mark)


def _send(request, ws, frame):
    transport = request.transport
    if ws.closed or transport is None or transport.is_closing():
        raise ConnectionResetError('viewer went away')
    transport.write(frame.wire('ws', serialise))  # bounded by the frames_in_flight window
