"""
What every websocket of the bridge shares: keepalive pings, answering pings, closing.

All sockets use aiohttp's ``WebSocketResponse`` with ``autoping=False``, so pings and pongs reach
the handlers: video needs its pongs for flow control, and answering a client's ping here lets a
client that pings but never reads be closed (its pongs would otherwise pile up in the bridge).
"""

import asyncio
import random
import socket
import time
from typing import Optional

from aiohttp import hdrs, web, WSMsgType

from video_bridge.net import internals

MAX_UNSENT_BYTES = 256 * 1024  # per connection: written, not yet taken by the kernel
CLOSE_TIMEOUT = 2.0            # s to wait for the client's close frame after ours
MAX_CLOSE_REASON = 123         # bytes (RFC 6455 5.5: control payloads <= 125 incl. the code)
KEEPALIVE_PING = b'k'
TCP_NOTSENT_LOWAT = getattr(socket, 'TCP_NOTSENT_LOWAT', 25)   # Linux's value


def upgrade_required(request: web.BaseRequest) -> Optional[web.Response]:
    """
    Return the 426 a websocket endpoint answers a plain HTTP request with (None: an upgrade).

    Called first in each websocket handler rather than from a wrapper around it: a wrapper's
    coroutine frame would stay suspended for the socket's whole life (about 0.4 KB each).
    """
    if request.headers.get(hdrs.UPGRADE, '').lower() == 'websocket':
        return None
    return web.Response(status=426, text=f'{request.path} is a websocket endpoint\n',
                        headers={'Upgrade': 'websocket', 'Connection': 'Upgrade'})


def response(max_msg_size: int) -> web.WebSocketResponse:
    """Make a websocket response as the bridge uses them (uncompressed: JPEGs do not shrink)."""
    return web.WebSocketResponse(autoping=False, compress=False, max_msg_size=max_msg_size,
                                 timeout=CLOSE_TIMEOUT)


def close_reason(text: str) -> bytes:
    """Encode a close reason, cut to 123 bytes on a character boundary."""
    data = text.encode('utf-8')
    if len(data) <= MAX_CLOSE_REASON:
        return data
    return data[:MAX_CLOSE_REASON].decode('utf-8', 'ignore').encode('utf-8')


def unsent_bytes(request: web.BaseRequest) -> int:
    """Bytes written to this connection and not yet accepted by the kernel."""
    transport = request.transport
    return transport.get_write_buffer_size() if transport is not None else 0


def limit_send_buffer(request: web.BaseRequest, size: int, unsent: int = 0):
    """
    Cap the kernel's send buffer of this connection (it autotunes to megabytes otherwise).

    ``unsent``: also keep at most about that many bytes unsent in the kernel
    (``TCP_NOTSENT_LOWAT``): the socket takes more only once they are on the wire.
    """
    transport = request.transport
    sock = transport.get_extra_info('socket') if transport is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            if unsent and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, unsent)
        except OSError:
            pass


def abort(request: web.BaseRequest):
    """Drop the TCP connection now (no close handshake: the peer is gone or stuck)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def close(request: web.BaseRequest, ws: web.WebSocketResponse, code: int, reason: str):
    """Close cleanly within CLOSE_TIMEOUT (ours, then the client's close frame), else abort."""
    deadline = time.monotonic() + CLOSE_TIMEOUT + 0.5
    try:
        await asyncio.wait_for(ws.close(code=code, message=close_reason(reason)),
                               CLOSE_TIMEOUT + 0.5)
        await _await_close_frame(ws, deadline)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        abort(request)


async def _await_close_frame(ws: web.WebSocketResponse, deadline: float):
    """
    Read on until the client's close frame, as aiohttp >= 3.9 does inside ``close()``.

    aiohttp 3.8 reads one message after sending our close frame and gives up if it is not the
    client's close. A client still sending (a flooder being closed with 4429) then has unread
    data in the kernel when the connection is closed, the kernel answers with a reset, and the
    client never reads our close frame or its reason.
    """
    reader = internals.websocket_reader(ws)  # aiohttp 3.8's is the only way to read on
    if reader is None or ws.close_code != 1006 or \
            not isinstance(ws.exception(), asyncio.TimeoutError):
        return
    while time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(reader.read(), deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise
        except Exception:  # aiohttp's EofStream: the client closed the connection
            return
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
            return


async def answer_ping(request: web.BaseRequest, ws: web.WebSocketResponse, data: bytes,
                      send_timeout: float) -> bool:
    """Answer a client's ping; False (and the connection dropped) if the client is not reading."""
    if unsent_bytes(request) > MAX_UNSENT_BYTES // 4:
        abort(request)  # it pings and does not read what we send: its pongs would pile up
        return False
    try:
        await asyncio.wait_for(ws.pong(data), send_timeout)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        abort(request)
        return False
    return True


class Keepalive:
    """
    Ping a quiet websocket; drop it if no sign of life follows the ping in time.

    A socket quiet for ``interval`` s is pinged; without a sign of life within ``timeout`` s of
    the ping it is dropped. Anything received counts as a sign of life. A peer that vanished
    without FIN or RST (a Wi-Fi drop) is detected within ``interval`` (quiet) + ``interval``
    (check period) + ``timeout``.

    Timers, not a task: most sockets of a busy bridge are idle, and a task parked in a sleep
    holds its coroutine, a future and a timer for the socket's whole life; here a socket holds
    one timer, and a ping's short task lives only until the ping is written.

    Each socket's checks start at a random point of the first interval: sockets opened
    together (a crowd, or an attacker's hundreds) would otherwise be checked, and pinged, in
    the same turn of the loop every interval, and a driver's command that arrives then waits
    behind hundreds of pings. The detection bound above holds from any starting point.
    """

    __slots__ = ('request', 'ws', 'interval', 'timeout', 'on_dead', 'last_heard',
                 '_check_timer', '_deadline', '_ping', '_stopped')   # one a socket

    def __init__(self, request: web.BaseRequest, ws: web.WebSocketResponse, interval: float,
                 timeout: float, on_dead=None):
        self.request = request
        self.ws = ws
        self.interval = interval
        self.timeout = timeout
        self.on_dead = on_dead
        self.last_heard = time.monotonic()
        self._check_timer: Optional[asyncio.TimerHandle] = None
        self._deadline: Optional[asyncio.TimerHandle] = None   # a ping awaits its answer
        self._ping: Optional[asyncio.Task] = None
        self._stopped = False

    def start(self) -> 'Keepalive':
        """Check every ``interval`` s until :meth:`stop`, the first time at a random point."""
        first = self.interval * (1.0 - random.random())   # in (0, interval]
        self._check_timer = asyncio.get_running_loop().call_later(first, self._check)
        return self

    def stop(self):
        """Stop pinging."""
        self._stopped = True
        for handle in (self._check_timer, self._deadline, self._ping):
            if handle is not None:
                handle.cancel()
        self._check_timer = self._deadline = self._ping = None

    def heard(self):
        """Note a sign of life (any frame from the peer)."""
        self.last_heard = time.monotonic()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _check(self):
        loop = asyncio.get_running_loop()
        self._check_timer = loop.call_later(self.interval, self._check)
        if self._deadline is not None or time.monotonic() - self.last_heard < self.interval:
            return   # a ping is out, or the peer spoke lately
        self._deadline = loop.call_later(self.timeout, self._dead)
        self._ping = loop.create_task(self._send_ping())

    async def _send_ping(self):
        try:
            async with asyncio.timeout(self.timeout):   # the send too has a deadline
                await self.ws.ping(KEEPALIVE_PING)
        except (TimeoutError, ConnectionError, RuntimeError):
            self._dead()
        finally:
            self._ping = None

    def _dead(self):
        if self._stopped:
            return
        self.stop()
        if self.on_dead is not None:
            self.on_dead()
        abort(self.request)


def is_data(message) -> bool:
    """Tell whether a received websocket message is a text or binary data message."""
    return message.type in (WSMsgType.TEXT, WSMsgType.BINARY)
