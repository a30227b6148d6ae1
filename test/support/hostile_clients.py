"""Hostile and measuring clients for test_edge_attacks.py: raw sockets, raw websockets, a viewer.

The hostile clients speak just enough HTTP/websocket by hand to misbehave on purpose (empty
continuation frames, pings without reading, sockets that never send a byte, duplicate headers);
the well-behaved viewer and control clients use the ``websockets`` library, a client nobody here
wrote. Every loop here is bounded in count and time, and every socket is closed by its owner.
"""

import asyncio
import base64
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
from typing import List, Optional, Tuple

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


# -- the bridge process -------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS)."""
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f'no VmRSS for {pid}')


def rss_parts_mb(pid: int) -> dict:
    """Resident memory of a process in MB by kind: anon (heap, Python), file (code), shmem."""
    parts = {}
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            name, _, value = line.partition(':')
            if name in ('RssAnon', 'RssFile', 'RssShmem'):
                parts[name[3:].lower()] = int(value.split()[0]) / 1024.0
    return parts


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in s."""
    with open(f'/proc/{pid}/stat') as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def open_fds(pid: int) -> int:
    """Number of file descriptors a process has open."""
    return len(os.listdir(f'/proc/{pid}/fd'))


def private_network_namespace() -> bool:
    """
    Tell whether this process runs in a network namespace of its own (as scripts/test makes).

    True when only loopback exists here and an ancestor process (the shell that ran
    ``unshare``) is in a different network namespace.
    """
    try:
        with open('/proc/self/net/dev') as devices:
            if {line.split(':')[0].strip() for line in devices.readlines()[2:]} - {'lo'}:
                return False
        mine = os.readlink('/proc/self/ns/net')
        pid = os.getppid()
        for _ in range(64):
            if pid <= 1:
                return False
            try:
                if os.readlink(f'/proc/{pid}/ns/net') != mine:
                    return True
            except OSError:
                return False
            with open(f'/proc/{pid}/stat') as stat:
                pid = int(stat.read().rsplit(')', 1)[1].split()[1])
    except OSError:
        return False
    return False


class LoopbackAddress:
    """An RFC 5737 address added to ``lo`` of this (private) namespace, removed on exit."""

    def __init__(self, address: str):
        self.address = address

    def __enter__(self):
        if not private_network_namespace():
            raise RuntimeError('refusing to add an address outside a private network namespace')
        subprocess.run(['ip', 'addr', 'add', f'{self.address}/32', 'dev', 'lo'], check=True,
                       capture_output=True, timeout=10)
        return self

    def __exit__(self, *exc):
        subprocess.run(['ip', 'addr', 'del', f'{self.address}/32', 'dev', 'lo'],
                       capture_output=True, timeout=10)


KEY_TYPES = {'rsa': ['-newkey', 'rsa:2048'],
             'ec': ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']}


def self_signed_cert(directory: str, name: str = '127.0.0.1',
                     key_type: str = 'rsa') -> Tuple[str, str]:
    """
    Make a self-signed certificate and key with the openssl command; return their paths.

    ``key_type``: 'rsa' (RSA-2048) or 'ec' (ECDSA P-256).
    """
    cert = os.path.join(directory, 'cert.pem')
    key = os.path.join(directory, 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', *KEY_TYPES[key_type], '-nodes', '-days', '2',
                    '-subj', f'/CN={name}', '-addext', f'subjectAltName=IP:{name}',
                    '-keyout', key, '-out', cert], check=True, capture_output=True, timeout=60)
    return cert, key


def insecure_client_context(maximum=None, minimum=None) -> ssl.SSLContext:
    """A TLS client context that accepts the test's self-signed certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if minimum is not None or maximum is not None:
        context.set_ciphers('DEFAULT:@SECLEVEL=0')
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
    return context


# -- raw TCP / HTTP -----------------------------------------------------------------------------

def connect(port: int, host: str = '127.0.0.1', source: Optional[str] = None,
            timeout: float = 5.0, rcvbuf: Optional[int] = None) -> socket.socket:
    """A TCP connection to the bridge, optionally from a chosen source address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Response:
    """One parsed HTTP response."""

    def __init__(self, status: int, reason: str, headers: dict, body: bytes, raw_head: bytes):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body
        self.raw_head = raw_head

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def __repr__(self):
        return f'<Response {self.status} {self.reason} {self.headers} {self.body[:80]!r}>'


class HttpReader:
    """Reads responses off a raw socket (for pipelining, HEAD and keep-alive checks)."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline = deadline
        self.buffer = b''
        self.eof = False

    def _fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ConnectionError, ssl.SSLError):
            return False
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def response(self, head_request: bool = False) -> Optional[Response]:
        """The next response, or None if the connection closed or the deadline passed first."""
        while b'\r\n\r\n' not in self.buffer:
            if not self._fill():
                return None
        raw_head, _, self.buffer = self.buffer.partition(b'\r\n\r\n')
        lines = raw_head.decode('latin-1').split('\r\n')
        match = re.match(r'HTTP/1\.[01] (\d{3}) ?(.*)', lines[0])
        if not match:
            return Response(0, lines[0], {}, b'', raw_head)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(':')
            headers[name.strip().lower()] = value.strip()
        status = int(match.group(1))
        body = b''
        if not head_request and status not in (101, 204, 304):
            if 'content-length' in headers:
                length = int(headers['content-length'])
                while len(self.buffer) < length:
                    if not self._fill():
                        break
                body, self.buffer = self.buffer[:length], self.buffer[length:]
            elif headers.get('transfer-encoding', '').lower() == 'chunked':
                body = self._chunked()
            elif headers.get('connection', '').lower() == 'close' or status >= 400:
                while self._fill():
                    pass
                body, self.buffer = self.buffer, b''
        return Response(status, match.group(2), headers, body, raw_head)

    def _chunked(self) -> bytes:
        body = b''
        while True:
            while b'\r\n' not in self.buffer:
                if not self._fill():
                    return body
            size_line, _, self.buffer = self.buffer.partition(b'\r\n')
            size = int(size_line.split(b';')[0], 16)
            while len(self.buffer) < size + 2:
                if not self._fill():
                    return body
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2:]
            if size == 0:
                return body


def http_exchange(port: int, raw_request: bytes, responses: int = 1, timeout: float = 5.0,
                  head_request: bool = False, source: Optional[str] = None) -> List[Response]:
    """Send raw bytes, read up to ``responses`` responses (none if it cannot even connect)."""
    try:
        sock = connect(port, source=source, timeout=timeout)
    except OSError:
        return []
    with sock:
        sock.sendall(raw_request)
        reader = HttpReader(sock, time.monotonic() + timeout)
        found = []
        for _ in range(responses):
            response = reader.response(head_request)
            if response is None:
                break
            found.append(response)
        return found


def get(port: int, path: str, headers: Optional[dict] = None, timeout: float = 5.0,
        source: Optional[str] = None) -> Optional[Response]:
    """One GET over a fresh connection; None if no response came."""
    lines = [f'GET {path} HTTP/1.1', f'Host: 127.0.0.1:{port}']
    lines += [f'{name}: {value}' for name, value in (headers or {}).items()]
    request = ('\r\n'.join(lines) + '\r\nConnection: close\r\n\r\n').encode()
    found = http_exchange(port, request, 1, timeout, source=source)
    return found[0] if found else None


class IdleSockets:
    """Many TCP connections that never send a byte (slowloris-style squatters), closed on exit."""

    def __init__(self, port: int, count: int, sources=('127.0.0.2',), host: str = '127.0.0.1',
                 time_limit: float = 20.0, payload: bytes = b''):
        self.port, self.count, self.sources, self.host = port, count, sources, host
        self.time_limit, self.payload = time_limit, payload
        self.sockets: List[socket.socket] = []
        self.failed = 0

    def __enter__(self):
        deadline = time.monotonic() + self.time_limit
        for index in range(self.count):
            if time.monotonic() > deadline:
                break
            sock = socket.socket()
            try:
                sock.bind((self.sources[index % len(self.sources)], 0))
                sock.settimeout(0.5)
                sock.connect((self.host, self.port))
                if self.payload:
                    sock.sendall(self.payload)
                sock.setblocking(False)
            except OSError:
                sock.close()
                self.failed += 1
                continue
            self.sockets.append(sock)
        return self

    def established(self) -> int:
        """How many of them the kernel reports connected (ESTABLISHED) right now."""
        alive = 0
        for sock in self.sockets:
            try:
                sock.getpeername()
                alive += 1
            except OSError:
                pass
        return alive

    def closed_by_peer(self) -> int:
        """How many the bridge has closed (EOF or reset seen)."""
        closed = 0
        for sock in self.sockets:
            try:
                data = sock.recv(1, socket.MSG_PEEK)
                if data == b'' or data.startswith(b'H'):  # EOF, or an HTTP refusal
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        return closed

    def __exit__(self, *exc):
        for sock in self.sockets:
            sock.close()
        self.sockets = []


# -- raw websocket ------------------------------------------------------------------------------

def ws_frame(opcode: int, payload: bytes = b'', fin: bool = True, mask: bool = True) -> bytes:
    """One websocket frame as a client sends it (masked)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack('!H', length)
    else:
        head += bytes([bit | 127]) + struct.pack('!Q', length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class RawWebSocket:
    """A websocket client written by hand so it can misbehave (never read, never pong, ...)."""

    def __init__(self, port: int, path: str, headers: Optional[dict] = None,
                 source: Optional[str] = None, timeout: float = 5.0,
                 rcvbuf: Optional[int] = None, host_header: Optional[str] = None,
                 tls: Optional[ssl.SSLContext] = None):
        self.sock = connect(port, source=source, timeout=timeout, rcvbuf=rcvbuf)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=None)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f'GET {path} HTTP/1.1', f'Host: {host_header or f"127.0.0.1:{port}"}',
                 'Upgrade: websocket', 'Connection: Upgrade', f'Sec-WebSocket-Key: {key}',
                 'Sec-WebSocket-Version: 13']
        lines += [f'{name}: {value}' for name, value in (headers or {}).items()]
        self.sock.sendall(('\r\n'.join(lines) + '\r\n\r\n').encode())
        reader = HttpReader(self.sock, time.monotonic() + timeout)
        self.response = reader.response()
        self.buffer = reader.buffer
        self.accepted = self.response is not None and self.response.status == 101
        self.eof = False   # the bridge closed the connection (seen by a read)

    def send(self, data: bytes, timeout: float = 5.0) -> bool:
        """Send raw bytes; False if the bridge closed the connection or did not take them."""
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            return False

    def send_text(self, text: str) -> bool:
        return self.send(ws_frame(OP_TEXT, text.encode()))

    def recv_frame(self, timeout: float = 5.0) -> Optional[Tuple[int, bytes]]:
        """The next frame the bridge sent (opcode, payload), or None on timeout/EOF."""
        deadline = time.monotonic() + timeout

        def need(count):
            while len(self.buffer) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    return False
                except OSError:
                    self.eof = True
                    return False
                if not data:
                    self.eof = True
                    return False
                self.buffer += data
            return True
        if not need(2):
            return None
        opcode = self.buffer[0] & 0x0F
        length = self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if not need(4):
                return None
            length = struct.unpack('!H', self.buffer[2:4])[0]
            offset = 4
        elif length == 127:
            if not need(10):
                return None
            length = struct.unpack('!Q', self.buffer[2:10])[0]
            offset = 10
        if not need(offset + length):
            return None
        payload = self.buffer[offset:offset + length]
        self.buffer = self.buffer[offset + length:]
        return opcode, payload

    def recv_json(self, timeout: float = 5.0, answer_pings: bool = True) -> Optional[dict]:
        """The next text message as JSON (answering pings meanwhile), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.recv_frame(deadline - time.monotonic())
            if frame is None:
                return None
            opcode, payload = frame
            if opcode == OP_PING and answer_pings:
                self.send(ws_frame(OP_PONG, payload))
            elif opcode == OP_TEXT:
                return json.loads(payload)
            elif opcode == OP_CLOSE:
                return None
        return None

    def wait_closed(self, timeout: float) -> Optional[float]:
        """Read and discard until the bridge closes (EOF/RST); the time that took, or None."""
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return time.monotonic() - start
            except socket.timeout:
                return None
            except OSError:
                return time.monotonic() - start
        return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class TrickleReader:
    """An HTTP GET whose response this client reads at ``rate`` bytes/s (a thread of its own)."""

    def __init__(self, port: int, path: str, rate: float, source: Optional[str] = None,
                 duration: float = 60.0, tls: Optional[ssl.SSLContext] = None):
        self.sock = connect(port, source=source, timeout=5.0)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=None)
        self.sock.sendall(f'GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n'.encode())
        self.rate, self.duration = rate, duration
        self.received = 0
        self.closed_by_peer = False
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        chunk = max(1, int(self.rate / 10))
        deadline = time.monotonic() + self.duration
        while not self._halt.is_set() and time.monotonic() < deadline:
            try:
                self.sock.settimeout(0.1)
                data = self.sock.recv(chunk)
            except socket.timeout:
                data = None
            except OSError:
                data = b''
            if data == b'':
                self.closed_by_peer = True
                return
            self.received += len(data or b'')
            self._halt.wait(0.1)  # the pace of this slow client, not synchronisation

    def close(self):
        self._halt.set()
        self._thread.join(5)
        self.sock.close()


# -- well-behaved measuring clients (the websockets library) ------------------------------------

class Viewer(threading.Thread):
    """
    A normal video viewer on its own thread: records (arrival time, seq, stamp) per frame.

    The websockets library's asyncio client, on a loop of this thread's own: its sync client
    reads the socket in a thread of its own while the caller writes, and a Python TLS socket
    read and written from two threads at once loses data (OpenSSL's SSL objects are not
    thread-safe; python-socketio#1568, cpython#77271): with the bridge's TLS 1.3 session
    tickets arriving as the request went out, about one connection in 300 never got its
    request to the bridge. asyncio's TLS is one thread.
    """

    def __init__(self, url: str, ssl_context=None, duration: float = 60.0, source=None):
        super().__init__(daemon=True)
        self.url, self.ssl_context, self.duration = url, ssl_context, duration
        self.source = source
        self.frames: List[Tuple[float, int, float]] = []
        self.error: Optional[BaseException] = None
        self.started = self.failed = None  # monotonic times, to tell a deadline from a refusal
        self._stop_event = threading.Event()

    def run(self):
        self.started = time.monotonic()
        try:
            asyncio.run(self._watch())
        except BaseException as exc:  # reported by the test, not swallowed
            self.failed = time.monotonic()
            self.error = exc

    async def _watch(self):
        from websockets.asyncio.client import connect
        from video_bridge.core.protocol import unpack_frame
        deadline = time.monotonic() + self.duration
        kwargs = {'open_timeout': 10, 'max_size': 16 * 1024 * 1024}
        if self.ssl_context is not None:
            kwargs['ssl'] = self.ssl_context
        if self.source:
            kwargs['local_addr'] = (self.source, 0)
        async with connect(self.url, **kwargs) as ws:
            while not self._stop_event.is_set() and time.monotonic() < deadline:
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.5)   # cancelling is safe
                except TimeoutError:
                    continue
                header, _ = unpack_frame(message)
                self.frames.append((time.monotonic(), header.seq,
                                    header.stamp_sec + header.stamp_nanosec * 1e-9))

    def stop(self):
        self._stop_event.set()
        self.join(10)

    def fps(self, start: float, end: float) -> float:
        count = sum(1 for t, _, _ in self.frames if start <= t < end)
        return count / max(1e-9, end - start)

    def delivered(self, start: float, end: float) -> float:
        """
        The share of the stream's frames in [start, end) that reached this viewer.

        The bridge numbers every frame it takes in (``seq``): the span of numbers seen in the
        window is what it had to give, whatever rate the camera managed on a loaded machine.
        """
        seqs = [seq for t, seq, _ in self.frames if start <= t < end]
        if not seqs:
            return 0.0
        return len(seqs) / (max(seqs) - min(seqs) + 1)

    def worst_window(self, start: float, end: float, window: float = 5.0) -> float:
        """The lowest frame rate over consecutive windows of ``window`` seconds."""
        rates = []
        t = start
        while t + window <= end + 1e-9:
            rates.append(self.fps(t, t + window))
            t += window
        return min(rates) if rates else 0.0


class Stopwatch(threading.Thread):
    """Runs ``step()`` repeatedly on a thread until stopped or ``duration`` passes (bounded)."""

    def __init__(self, step, duration: float, max_steps: int = 10_000_000):
        super().__init__(daemon=True)
        self.step, self.duration, self.max_steps = step, duration, max_steps
        self.steps = 0
        self.error: Optional[BaseException] = None
        self._stop_event = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.duration
        try:
            while not self._stop_event.is_set() and time.monotonic() < deadline \
                    and self.steps < self.max_steps:
                self.step(self._stop_event)
                self.steps += 1
        except BaseException as exc:
            self.error = exc

    def stop(self):
        self._stop_event.set()
        self.join(15)


class Squatters:
    """
    Keeps up to ``target`` idle TCP connections open (a persistent slowloris): opens them as
    fast as the bridge lets it, then re-opens closed ones at no more than ``rate`` per second.

    Drive it with :class:`Stopwatch` (``Stopwatch(squatters.step, seconds)``).
    """

    def __init__(self, port: int, target: int, sources, rate: float = 100.0,
                 payload: bytes = b''):
        self.port, self.target, self.sources, self.rate = port, target, list(sources), rate
        self.payload = payload
        self.open: List[socket.socket] = []
        self.attempts = 0
        self.refused = 0
        self.peak = 0

    def _prune(self):
        alive = []
        for sock in self.open:
            try:
                if sock.recv(1, socket.MSG_PEEK) == b'':
                    sock.close()
                    continue
                # Any bytes (e.g. a 503) mean the bridge answered: it is refusing this one.
                sock.close()
                self.refused += 1
                continue
            except BlockingIOError:
                alive.append(sock)
            except OSError:
                sock.close()
        self.open = alive

    def step(self, stop):
        if len(self.open) >= self.target or self.attempts >= self.target:
            if self.attempts % 50 == 0:
                self._prune()
            if len(self.open) >= self.target or self.attempts >= self.target:
                stop.wait(1.0 / self.rate)  # the re-open pace of the attack, not sync
        self.attempts += 1
        sock = socket.socket()
        try:
            sock.bind((self.sources[self.attempts % len(self.sources)], 0))
            sock.settimeout(0.5)
            sock.connect(('127.0.0.1', self.port))
            if self.payload:
                sock.sendall(self.payload)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self.open.append(sock)
        self.peak = max(self.peak, len(self.open))

    def close(self):
        for sock in self.open:
            sock.close()
        self.open = []
