"""
One client connection: websockets' sans-I/O protocol driven over asyncio streams.

python-websockets keeps the WebSocket protocol in a state machine that knows nothing of sockets
(``websockets.server.ServerProtocol``); this module is our own thin asyncio layer around it, the
way the library's ``asyncio`` package is. Owning that layer lets one port serve plain HTTP
(pages, snapshots, a streaming MJPEG response) and websockets, and lets the server write one
pre-serialised video frame to every viewer instead of re-framing it per viewer.

Incoming messages wait in a small bounded queue: a client that sends faster than the bridge
reads stops being read (TCP pushes back), it never grows memory.

Video is flow-controlled end to end: each frame is followed by a ping carrying its sequence
number, and the server keeps at most ``window`` frames unacknowledged by the matching pong
(websocket clients, browsers included, answer pings by themselves). Without that, the kernel's
socket buffers on both ends would hold seconds of old frames for a client that stalls, and it
would see them when it recovers.
"""

import asyncio
import collections
import os
import socket
import struct
from typing import Optional, Union

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

READ_CHUNK = 65536
FRAME_MARK = struct.Struct('!cQ')  # b'f' + frame sequence number, the payload of frame pings


class ConnectionClosed(Exception):
    """The websocket is closed (or closing); ``code`` and ``reason`` as received or sent."""

    def __init__(self, code: Optional[int], reason: str = ''):
        super().__init__(f'connection closed ({code} {reason})'.strip())
        self.code = code
        self.reason = reason


def binary_frame(payload: bytes, seq: int) -> bytes:
    """
    Serialise a binary message and its flow-control ping once, for many clients.

    The bytes are written unchanged to every viewer of the frame, in one write each.
    """
    message = Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])
    ping = Frame(Opcode.PING, FRAME_MARK.pack(b'f', seq)).serialize(mask=False, extensions=[])
    return message + ping


class Connection:
    """A TCP client: read its HTTP request, then answer over HTTP or upgrade to a websocket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_message_size: int = 4096, queue_size: int = 16):
        self.reader = reader
        self.writer = writer
        self.protocol = ServerProtocol(max_size=max_message_size)
        peer = writer.get_extra_info('peername')
        self.peer = f'{peer[0]}:{peer[1]}' if isinstance(peer, tuple) else str(peer)
        self.request: Optional[Request] = None
        self._messages: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self._fragments: list = []
        self._reader_task: Optional[asyncio.Task] = None
        self._closed = asyncio.Event()
        self._pong_waiter: Optional[asyncio.Future] = None
        self._unacked = collections.deque()  # sequence numbers of frames sent, not yet ponged
        self._acked = asyncio.Event()

    # -- HTTP -----------------------------------------------------------------------------

    async def read_request(self, timeout: float) -> Optional[Request]:
        """Read and parse the request head; None if the client sent no valid request in time."""
        try:
            async with asyncio.timeout(timeout):
                while self.request is None:
                    received = await self._receive()
                    for event in self.protocol.events_received():
                        if isinstance(event, Request):
                            self.request = event
                    if self.request is None and (not received or
                                                 self.protocol.close_expected()):
                        return None
        except (TimeoutError, ConnectionError):
            return None
        return self.request

    def header(self, name: str) -> Optional[str]:
        """Return one request header by name, any case; None if absent."""
        return self.request.headers.get(name) if self.request is not None else None

    def is_websocket_request(self) -> bool:
        """Tell whether the client asked for a websocket upgrade."""
        upgrade = self.header('Upgrade') or ''
        return upgrade.lower() == 'websocket'

    def respond(self, status: int, body: Union[bytes, str], content_type: str,
                headers: Optional[dict] = None):
        """Send a complete HTTP response and end the connection."""
        response = self.protocol.reject(status, '')
        if isinstance(body, str):
            body = body.encode()
        response.body = body
        del response.headers['Content-Length']
        response.headers['Content-Length'] = str(len(body))
        del response.headers['Content-Type']
        response.headers['Content-Type'] = content_type
        for name, value in (headers or {}).items():
            response.headers[name] = value
        self.protocol.send_response(response)
        self._flush()

    def start_stream(self, status: int, content_type: str, headers: Optional[dict] = None):
        """Send a response head with no length; the body follows through :meth:`write`."""
        response = self.protocol.reject(status, '')
        del response.headers['Content-Length']
        del response.headers['Content-Type']
        response.headers['Content-Type'] = content_type
        for name, value in (headers or {}).items():
            response.headers[name] = value
        self.writer.write(response.serialize())

    def limit_send_buffer(self, size: int):
        """Cap the kernel's send buffer for this socket (it autotunes to megabytes otherwise)."""
        sock = self.writer.get_extra_info('socket')
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    async def write(self, data: bytes):
        """Write raw bytes and wait until the socket buffer has room (backpressure)."""
        self.writer.write(data)
        await self.writer.drain()

    # -- websocket ------------------------------------------------------------------------

    def accept_websocket(self) -> bool:
        """Complete the upgrade; False (a 4xx has been sent) if the handshake is invalid."""
        response = self.protocol.accept(self.request)
        self.protocol.send_response(response)
        self._flush()
        if self.protocol.state is not State.OPEN:
            return False
        self._reader_task = asyncio.get_running_loop().create_task(self._read_frames())
        return True

    @property
    def is_open(self) -> bool:
        """Tell whether messages can still be sent."""
        return self.protocol.state is State.OPEN

    async def recv(self) -> Union[str, bytes]:
        """Return the next message; ConnectionClosed once the socket is closed."""
        item = await self._messages.get()
        if isinstance(item, ConnectionClosed):
            self._messages.put_nowait(item)  # later calls see it too
            raise item
        return item

    async def send_text(self, text: str):
        """Send one text message."""
        if not self.is_open:
            raise ConnectionClosed(self.protocol.close_code, self.protocol.close_reason or '')
        self.protocol.send_text(text.encode())
        self._flush()
        await self.writer.drain()

    def send_text_nowait(self, text: str):
        """Queue one text message without waiting for the socket (see :meth:`unsent_bytes`)."""
        if self.is_open:
            self.protocol.send_text(text.encode())
            self._flush()

    def unsent_bytes(self) -> int:
        """Bytes written but not yet accepted by the kernel: how far behind the client is."""
        transport = self.writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def send_frame(self, serialised: bytes, seq: int, window: int = 2,
                         timeout: float = 20.0):
        """
        Send frame ``seq`` pre-serialised by :func:`binary_frame` (shared by many clients).

        Waits while ``window`` earlier frames are unacknowledged; ConnectionClosed if the
        client acknowledges nothing for ``timeout`` seconds (it is gone or stuck).
        """
        try:
            async with asyncio.timeout(timeout):
                while len(self._unacked) >= window and self.is_open:
                    self._acked.clear()
                    await self._acked.wait()
        except TimeoutError:
            await self.abort()
            raise ConnectionClosed(None, f'no frame acknowledged for {timeout:g} s') from None
        if not self.is_open:
            raise ConnectionClosed(self.protocol.close_code, self.protocol.close_reason or '')
        self.writer.write(serialised)
        self._unacked.append(seq)
        await self.writer.drain()

    async def ping(self, timeout: float) -> bool:
        """Send a ping and wait for its pong; False if none came within ``timeout``."""
        if not self.is_open:
            return False
        self._pong_waiter = asyncio.get_running_loop().create_future()
        self.protocol.send_ping(os.urandom(4))
        self._flush()
        try:
            async with asyncio.timeout(timeout):
                await self._pong_waiter
            return True
        except TimeoutError:
            return False

    async def close(self, code: int = 1000, reason: str = '', timeout: float = 2.0):
        """Close cleanly: send a close frame, wait briefly for the client's, then drop TCP."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason[:120])
            self._flush()
        if self._reader_task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._closed.wait()
            except TimeoutError:
                pass
        await self.abort()

    async def abort(self):
        """Drop the TCP connection now."""
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    # -- internals ------------------------------------------------------------------------

    def _flush(self):
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.writer.write(chunk)
            elif self.writer.can_write_eof() and not self.writer.is_closing():
                try:
                    self.writer.write_eof()
                except OSError:
                    pass

    async def _receive(self) -> bool:
        """Feed one chunk from the socket to the protocol (False at end of stream)."""
        try:
            data = await self.reader.read(READ_CHUNK)
        except (ConnectionError, OSError):
            data = b''
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        self._flush()
        return bool(data)

    async def _read_frames(self):
        try:
            while True:
                received = await self._receive()
                for event in self.protocol.events_received():
                    await self._on_frame(event)
                if not received or self.protocol.state is State.CLOSED:
                    break
        finally:
            self._closed.set()
            self._acked.set()
            closed = ConnectionClosed(self.protocol.close_code, self.protocol.close_reason or '')
            while True:
                try:
                    self._messages.put_nowait(closed)
                    break
                except asyncio.QueueFull:
                    self._messages.get_nowait()

    async def _on_frame(self, frame: Frame):
        if frame.opcode is Opcode.PONG:
            if len(frame.data) == FRAME_MARK.size and frame.data[:1] == b'f':
                # A pong answers its ping and every earlier one (RFC 6455 5.5.3).
                acked = FRAME_MARK.unpack(frame.data)[1]
                while self._unacked and self._unacked[0] <= acked:
                    self._unacked.popleft()
                    self._acked.set()
            elif self._pong_waiter is not None and not self._pong_waiter.done():
                self._pong_waiter.set_result(None)
            return
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            self._fragments.append(frame)
            if not frame.fin:
                return
            first, data = self._fragments[0], b''.join(f.data for f in self._fragments)
            self._fragments = []
            if first.opcode is Opcode.TEXT:
                try:
                    message = data.decode()
                except UnicodeDecodeError:
                    self.protocol.fail(1007, 'invalid UTF-8')
                    self._flush()
                    return
            else:
                message = bytes(data)
            await self._messages.put(message)
