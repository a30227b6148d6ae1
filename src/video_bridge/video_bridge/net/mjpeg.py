"""
MJPEG (``multipart/x-mixed-replace``) and snapshots over plain HTTP.

Reusable by other route modules (web_video_server-compatible routes):
``await serve_mjpeg(request, stream_name, variant, fps)`` and
``await serve_snapshot(request, stream_name, variant)``; both authenticate the request
themselves and return the response.

What a slow MJPEG reader gets: plain HTTP has no acknowledgements, so the bridge writes the
newest frame whenever the socket accepts more, and the rest waits in the socket buffers: the
bridge's send buffer (capped at ``MJPEG_SEND_BUFFER``) and the *client's* receive buffer, which
the client's operating system sizes (often megabytes). A reader slower than the stream therefore
sees frames as old as those buffers hold at its reading rate (seconds, for a reader of a few
parts per second). Such a client should ask for the rate it can read (``?fps=2``) or use the
``/video`` websocket, which is flow-controlled. A client that accepts nothing for
``send_timeout`` seconds once those buffers are full is dropped and its viewer slot freed.
"""

import asyncio
import time

from aiohttp import web
from video_bridge.core import protocol
from video_bridge.net import websocket
from video_bridge.net.auth import authenticate

MJPEG_BOUNDARY = 'videobridgeframe'
MJPEG_SEND_BUFFER = 128 * 1024
HTTP_STATUS = {'unauthorized': 401, 'unknown_stream': 404, 'capacity': 503}
NO_CACHE = {'Cache-Control': 'no-cache, no-store', 'Pragma': 'no-cache'}


def mjpeg_part(frame) -> bytes:
    """One part of a multipart/x-mixed-replace MJPEG response."""
    header = frame.header
    head = (f'--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\n'
            f'Content-Length: {len(frame.jpeg)}\r\n'
            f'X-Timestamp: {header.stamp_sec}.{header.stamp_nanosec:09d}\r\n\r\n')
    return head.encode() + frame.jpeg + b'\r\n'


def error_response(exc: protocol.ProtocolError) -> web.Response:
    """Return the plain-text HTTP answer to a refused request."""
    return web.Response(status=HTTP_STATUS.get(exc.code, 400), text=exc.message + '\n')


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
    try:
        response = web.StreamResponse(headers={
            'Content-Type': f'multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}',
            **NO_CACHE})
        # the kernel autotunes to megabytes otherwise: seconds of stale frames
        websocket.limit_send_buffer(request, MJPEG_SEND_BUFFER)
        await response.prepare(request)
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
            async with asyncio.timeout(config.send_timeout):  # no task per frame (wait_for)
                await response.write(frame.wire('mjpeg', mjpeg_part))
    except asyncio.TimeoutError:
        server.log.info('MJPEG viewer %s accepted nothing for %g s; dropping it',
                        request.remote, config.send_timeout)
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionError, RuntimeError):
        pass
    finally:
        viewer.detach()
    return response


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
    return web.Response(body=frame.jpeg, content_type='image/jpeg', headers={
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
