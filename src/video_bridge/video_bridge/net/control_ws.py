"""
``/control`` over a websocket: one transport of :class:`video_bridge.net.control.ControlService`.

Authenticates, opens a session with a sender over the socket, delivers every text message,
answers pings, keeps the socket alive with its own pings (a driver whose link went silent loses
the lock within a few seconds and every client is told) and closes the session when the socket
goes.
"""

import asyncio
import logging
from typing import Optional

from aiohttp import web, WSMsgType
from video_bridge.core import protocol
from video_bridge.net import websocket
from video_bridge.net.auth import authenticate

# The kernel autotunes a send buffer to megabytes: a client that stops reading would get
# seconds of stale states from it. Small, so the outbox (newest state only) does the waiting.
CONTROL_SEND_BUFFER = 32 * 1024


class WebSocketSender:
    """
    The control service's sender over one aiohttp websocket.

    ``close`` only asks: the handler, which is the one reading the socket, does the close
    handshake. (Closing from another task while the handler reads lets aiohttp drop the TCP
    connection right after our close frame; with the client's messages still unread the kernel
    then resets the connection and the client never sees why it was closed.) The handler reads
    in its own task, with no helper task per message or per socket: a driver's command is
    handled one loop iteration after it arrives, not three (a task's result, then a wait's),
    however much else the loop has queued. To stop that read, ``close`` cancels the handler
    while it is parked in it, and the handler tells that cancel from any other.
    """

    __slots__ = ('request', 'ws', 'close_request', 'reader', 'interrupted')   # one a socket

    def __init__(self, request: web.BaseRequest, ws: web.WebSocketResponse):
        self.request = request
        self.ws = ws
        self.close_request = None
        self.reader: Optional[asyncio.Task] = None   # the handler, while it awaits a message
        self.interrupted = False                     # close() cancelled that await

    async def send(self, text: str):
        """Send one text message (the service applies the deadline)."""
        await self.ws.send_str(text)

    def buffered_amount(self) -> int:
        """Bytes the kernel has not taken yet."""
        return websocket.unsent_bytes(self.request)

    def close(self, code: int, reason: str):
        """Close soon; a client that is not reading is dropped at once."""
        if websocket.unsent_bytes(self.request) > websocket.MAX_UNSENT_BYTES // 4:
            websocket.abort(self.request)
        if self.close_request is None:
            self.close_request = (code, reason)
        if self.reader is not None and not self.interrupted:
            self.interrupted = True
            self.reader.cancel()

    async def receive(self):
        """
        Return the next message, or None once ``close`` asked to stop reading.

        Raises CancelledError when the handler itself is cancelled (its client went).
        """
        self.reader = asyncio.current_task()
        try:
            return await self.ws.receive()
        except asyncio.CancelledError:
            if self.interrupted and self.reader.uncancel() == 0:
                return None   # only our own cancel: stop reading, then close
            raise
        finally:
            self.reader = None


async def handle(request: web.Request) -> web.StreamResponse:
    """Serve one control websocket until it closes; the driver's car stops when it does."""
    refusal = websocket.upgrade_required(request)
    if refusal is not None:
        return refusal
    server = request.app['video_bridge.server']
    service = server.control
    config = server.config
    grant = authenticate(request)
    # aiohttp refuses a message of exactly max_msg_size bytes; the protocol allows it
    ws = websocket.response(config.max_message_size + 1)
    await ws.prepare(request)
    websocket.limit_send_buffer(request, CONTROL_SEND_BUFFER)
    if grant.problem:
        server.log_throttled('refused_control', 'refused control connection from %s: %s',
                             grant.client, grant.problem, level=logging.WARNING)
        await websocket.close(request, ws, protocol.CLOSE_UNAUTHORIZED, grant.problem)
        return ws
    keepalive = websocket.Keepalive(request, ws, config.ping_interval, config.ping_timeout)
    sender = WebSocketSender(request, ws)
    server.track(request, ws, sender.close)
    client_id = service.open_session(grant, sender,
                                     client_key=request.get('video_bridge.client'))
    keepalive.on_dead = lambda: service.lifecycle_log.info(
        'unanswered', 'control client %s did not answer a ping within %g s; dropping it',
        client_id, config.ping_timeout, exempt=grant.drive)
    keepalive.start()
    try:
        while sender.close_request is None:
            message = await sender.receive()
            if message is None:
                break
            keepalive.heard()
            if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
                server.listener.active(request.transport)  # not idle: not evictable
                service.deliver(client_id, message.data)
            elif message.type is WSMsgType.PING:
                if not await websocket.answer_ping(request, ws, message.data,
                                                   config.send_timeout):
                    break
            elif message.type is not WSMsgType.PONG:
                break  # CLOSE (answered by aiohttp), CLOSING, CLOSED, ERROR (1009 sent)
    finally:
        server.untrack(request, ws)
        keepalive.stop()
        service.close_session(client_id)
        if sender.close_request is not None and not ws.closed:
            await websocket.close(request, ws, *sender.close_request)
    return ws
