"""
MJPEG (``multipart/x-mixed-replace``) and snapshots over plain HTTP.

Reusable by other route modules (web_video_server-compatible routes):
``await serve_mjpeg(request, stream_name, variant, fps)`` and
``await serve_snapshot(request, stream_name, variant)``; both authenticate the request
themselves and return the response.

What a slow MJPEG reader gets: plain HTTP has no acknowledgements, so the bridge sends the next
part only once the last one has left its own buffers (nothing in asyncio's, whose write-buffer
limit is 0; at most ``MJPEG_UNSENT`` bytes unsent in the kernel, ``TCP_NOTSENT_LOWAT``) *and*
the client has read it (:class:`ClientBacklog`, from the window its TCP advertises), and then it
sends the newest frame: frames that came in meanwhile are skipped. A part is therefore at most
one frame interval plus (``MJPEG_UNSENT`` + two parts) at the reader's rate, plus up to
``KEEPALIVE_IDLE`` s, old when read (docs/notes-slots.md).

A viewer slot is held only by a client that takes frames at a real rate: a part that does not
leave the bridge's buffers within ``send_timeout`` (while frames exist) gets the client dropped
and its slot freed. ``?fps`` below ``MIN_FPS`` is served at ``MIN_FPS``.
"""

import asyncio
import socket
import struct
import time
from typing import Optional

from aiohttp import web
from video_bridge.core import protocol
from video_bridge.net import websocket
from video_bridge.net.auth import authenticate

MJPEG_BOUNDARY = 'videobridgeframe'
MJPEG_SEND_BUFFER = 64 * 1024   # SO_SNDBUF (the kernel doubles it for its bookkeeping)
MJPEG_UNSENT = 16 * 1024        # TCP_NOTSENT_LOWAT: unsent bytes the kernel may hold
KEEPALIVE_IDLE = 1             # s: TCP keepalive probes refresh a waiting client's window
CLIENT_POLL = 0.05             # s between looks at the window of a client that is behind
TCP_INFO_LENGTH = 232          # struct tcp_info up to tcpi_snd_wnd (Linux >= 5.4)
TCP_INFO_SND_WND = 228         # offset of tcpi_snd_wnd: the client's advertised window
MIN_FPS = 1.0                   # a viewer asking fewer frames per second gets this many
NO_CACHE = {'Cache-Control': 'no-cache, no-store', 'Pragma': 'no-cache'}


def mjpeg_part(frame) -> bytes:
    """One part of a multipart/x-mixed-replace MJPEG response."""
    header = frame.header
    head = (f'--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\n'
            f'Content-Length: {len(frame.data)}\r\n'
            f'X-Timestamp: {header.stamp_sec}.{header.stamp_nanosec:09d}\r\n\r\n')
    return head.encode() + frame.data + b'\r\n'


def error_response(exc: protocol.ProtocolError) -> web.Response:
    """Return the plain-text HTTP answer to a refused request."""
    return web.Response(status=protocol.HTTP_STATUSES.get(exc.code, 400), text=exc.message + '\n')


def _attach(request: web.Request, stream_name: str, variant: protocol.Variant):
    """Return ``(server, viewer)``, or ``(server, the refusal)`` when it may not watch."""
    server = request.app['video_bridge.server']
    try:
        return server, server.attach_variant(authenticate(request), stream_name, variant,
                                             request)
    except protocol.ProtocolError as exc:
        return server, error_response(exc)


async def serve_mjpeg(request: web.Request, stream_name: str, variant: protocol.Variant,
                      fps: float = 0.0) -> web.StreamResponse:
    """Stream ``stream_name`` as MJPEG to this request until the client goes or stalls."""
    server, viewer = _attach(request, stream_name, variant)
    if isinstance(viewer, web.Response):
        return viewer
    config = server.config
    fps = effective_fps(fps)
    try:
        response = web.StreamResponse(headers={
            'Content-Type': f'multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}',
            **NO_CACHE})
        # the kernel autotunes to megabytes otherwise: seconds of stale frames
        websocket.limit_send_buffer(request, MJPEG_SEND_BUFFER, MJPEG_UNSENT)
        await response.prepare(request)
        transport = request.transport
        if transport is None:
            return response
        # pause (so drained() waits) as soon as anything waits in asyncio's buffer
        transport.set_write_buffer_limits(high=0, low=0)
        sock = transport.get_extra_info('socket')
        client = ClientBacklog(sock) if sock is not None else None
        interval = 1.0 / fps if fps else 0.0
        next_time = 0.0
        while True:
            if interval:
                delay = next_time - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            frame = await server.next_frame(viewer, request)
            if frame is None:
                break  # the client went away while we waited
            if interval:
                next_time = max(next_time + interval, time.monotonic())
            # One deadline for the part to leave the bridge's buffers: a client that does not
            # take a frame within send_timeout while frames exist is stalled.
            async with asyncio.timeout(config.send_timeout):  # no task per frame (wait_for)
                part = frame.wire('mjpeg', mjpeg_part)
                await response.write(part)
                await server.listener.drained(transport)
                if client is not None:  # the next part only once the client read this one
                    await client.caught_up(max(MJPEG_UNSENT, len(part)))
            server.listener.active(transport)  # takes frames: not idle
    except asyncio.TimeoutError:
        server.log_throttled('mjpeg_stalled', 'MJPEG viewer %s took no frame for %g s; '
                             'dropping it', request.remote, config.send_timeout)
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionError, RuntimeError):
        pass
    finally:
        viewer.detach()
    return response


class ClientBacklog:
    """
    What the client has received and not read yet, from the receive window it advertises.

    The largest window seen is its empty buffer; the current one, what is free now. Linux tells
    a grown window lazily (once it doubled), so the socket gets keepalive probes after
    ``KEEPALIVE_IDLE`` s without traffic: the client's answer carries its window as it is.
    None where the kernel does not report the window (then only the bridge's buffers bound).
    """

    def __init__(self, sock):
        self.sock = sock
        self.largest = 0
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_IDLE)
        except (OSError, AttributeError):
            pass

    def unread(self) -> Optional[int]:
        """Estimate the bytes the client holds unread; None if the kernel cannot say."""
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LENGTH)
        except (OSError, AttributeError):
            return None
        if len(info) < TCP_INFO_LENGTH:
            return None
        window = struct.unpack_from('I', info, TCP_INFO_SND_WND)[0]
        self.largest = max(self.largest, window)
        return self.largest - window

    async def caught_up(self, allowance: int):
        """Wait until the client holds at most ``allowance`` bytes unread."""
        while True:
            unread = self.unread()
            if unread is None or unread <= allowance:
                return
            await asyncio.sleep(CLIENT_POLL)


def effective_fps(fps: float) -> float:
    """Return the rate served for ``?fps``: 0 (every frame), else at least ``MIN_FPS``."""
    return max(fps, MIN_FPS) if fps else 0.0


async def serve_snapshot(request: web.Request, stream_name: str,
                         variant: protocol.Variant) -> web.Response:
    """Answer one JPEG: the next frame of the stream (or the current one of that variant)."""
    server, viewer = _attach(request, stream_name, variant)
    if isinstance(viewer, web.Response):
        return viewer
    config = server.config
    try:
        frame = await asyncio.wait_for(server.next_frame(viewer, request),
                                       config.snapshot_timeout)
    except asyncio.TimeoutError:
        return web.Response(status=503, text=f'no frame on {stream_name!r} within '
                            f'{config.snapshot_timeout:g} s\n')
    finally:
        viewer.detach()
    if frame is None:
        return web.Response(status=503, text='client went away\n')
    header = frame.header
    return web.Response(body=frame.data, content_type='image/jpeg', headers={
        **NO_CACHE, 'X-Timestamp': f'{header.stamp_sec}.{header.stamp_nanosec:09d}',
        'X-Sequence': str(header.seq)})


async def handle_mjpeg(request: web.Request) -> web.StreamResponse:
    """``GET /mjpeg/<stream>``."""
    target = request['video_bridge.target']
    try:
        variant = protocol.parse_variant(target.query)
        fps = protocol.parse_fps(target.query)
    except protocol.ProtocolError as exc:
        return error_response(exc)
    return await serve_mjpeg(request, target.stream, variant, fps)


async def handle_snapshot(request: web.Request) -> web.StreamResponse:
    """``GET /snapshot/<stream>``."""
    target = request['video_bridge.target']
    try:
        variant = protocol.parse_variant(target.query)
    except protocol.ProtocolError as exc:
        return error_response(exc)
    return await serve_snapshot(request, target.stream, variant)
