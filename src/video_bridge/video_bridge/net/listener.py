"""
The listening socket: connection caps decided before a connection costs anything.

aiohttp serves each connection; this module only decides which connections it gets. It accepts
sockets itself (``loop.sock_accept``) so that a connection over ``max_connections`` in total or
``max_connections_per_client`` from one client (an address, an IPv6 /64) is refused *before*
asyncio allocates a transport, a 256 KB TLS buffer or an aiohttp request handler: a plain one
gets a canned ``503`` and is closed, a TLS one is closed. Before refusing, a connection that
sent no request yet, else one idle for ``IDLE_EVICTABLE`` s, makes room (oldest first). Accepted
sockets are handed to asyncio with ``loop.connect_accepted_socket`` (TLS handshake bounded by
``handshake_timeout``, at most ``MAX_HANDSHAKES`` under way at once; a TLS one only once its
first record, the ClientHello, is whole).

A connection from a client the access policy shuts out (its wrong-token budget is empty) is held
unread for ``SHUT_OUT_HOLD`` s (evictable, within the caps) and then refused, never given a TLS
handshake: its token would be refused unchecked anyway, the handshake is most of what a guess
costs the bridge, and a guesser that retries at once is slowed to a try a second instead of
looping on instant refusals. Behind a trusted proxy the policy counts forwarded clients, so the
proxy's own connections are never shut out.

Per request, :meth:`Listener.admit` counts a connection behind a trusted proxy for its forwarded
client, and keeps ``RESERVED_SHARE`` of the connections for clients holding the token.

Also here: a connection that has not completed a request head within ``handshake_timeout`` is
dropped (slowloris, idle sockets); running out of file descriptors is logged at most once per
5 s (``core/log_budget.py``) instead of once per failed accept.
"""

import asyncio
import collections
import ctypes
import errno
import functools
import gc
import ipaddress
import logging
import resource
import socket
import ssl
import time
import traceback
from typing import Callable, Dict, Optional, Set

from video_bridge.core.log_budget import LogBudget
from video_bridge.net import internals
from video_bridge.net.auth import normalise_address

FD_RESERVE = 128           # descriptors kept for DDS, files and logs beyond connections
EMFILE_RETRY = 0.1         # s before accepting again after EMFILE
# TLS handshakes under way at once: each holds asyncio's TLS layer and OpenSSL's handshake
# state (about 50 KB with TLS_READ_BUFFER), so 64 of them are about 3 MB. Full: the newcomer
# takes the slot of the oldest handshake of the client that has the most (a client with more
# than its share takes its own oldest's). Not fewer: a handshake that never completes holds
# its slot for HANDSHAKE_GRACE, so the slots are what everybody else's handshakes get per second
# under a flood of cut ClientHellos (with 32, the soak's idle control sockets got 1.5 a second).
MAX_HANDSHAKES = 64
MAX_HANDSHAKES_PER_CLIENT = 16
HANDSHAKE_GRACE = 1.0      # s a handshake may take before a waiting connection may evict it
# s a shut-out client's connection is held before it is refused: one token's refill (the
# access policy's WRONG_TOKENS_PER_SECOND)
SHUT_OUT_HOLD = 1.0
# A TLS connection gets its TLS layer and a handshake slot once its first record is whole.
TLS_RECORD_HEADER = 5      # content type, version, length
TLS_HANDSHAKE_RECORD = 0x16
TLS_MAX_RECORD = 16384 + 2048   # RFC 8446 5.2: a longer record is not TLS; OpenSSL says so
FIRST_RECORD_RECHECK = 0.01     # s before looking again at a record not whole yet, doubling
FIRST_RECORD_RECHECK_MAX = 2.0
# A connection that did nothing useful for this long (no request, no control message, no frame
# taken) is idle: when the bridge, or its client's share, is full, the newcomer takes the slot
# of the connection idle the longest. A page's control socket sends a clock probe every 2 s.
IDLE_EVICTABLE = 10.0
RESERVED_SHARE = 0.1       # of max_connections, kept for clients holding the token
HOLDER_MEMORY = 300.0      # s a client that showed the token counts as holding it
IPV6_CLIENT_PREFIX = 64    # one IPv6 client is its /64: a host gets a whole one to pick from
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
REFUSAL = ('HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n'
           'Content-Length: {length}\r\nConnection: close\r\nRetry-After: 5\r\n'
           'X-Content-Type-Options: nosniff\r\n\r\n{body}')


# Bytes asyncio's TLS layer reads into at once, per connection. asyncio (CPython 3.11 to 3.13,
# checked: TLS_BUFFER_CHECKED) preallocates ``SSLProtocol.max_size`` (256 KB) for every TLS
# connection, idle or not: 300 idle wss control sockets cost 77 MB. The buffer is only where
# one recv() lands before it is copied into OpenSSL, and the most one SSL_read returns. What a
# client sends the bridge is small (HTTP heads, commands, pongs: a few hundred bytes), so a page
# is plenty; a bigger message takes more reads (a 16 KB TLS record: four). Measured with 300
# idle wss control sockets: 75 KB each with 32 KB, 47 KB each with 4 KB.
TLS_READ_BUFFER = 4 * 1024
# A burst is over when the open connections fell by BURST_OVER from their high-water mark and
# to half of it: the freed memory is then given back to the kernel, TRIM_DELAY s later (what
# the closing connections free settles first), at most once per TRIM_PERIOD s.
BURST_OVER = 100
TRIM_DELAY = 2.0
TRIM_PERIOD = 10.0
TLS_BUFFER_CHECKED = internals.CHECKED['python']   # Pythons whose sslproto was read for this


def bound_tls_read_buffers(size: int = TLS_READ_BUFFER) -> bool:
    """
    Make asyncio's TLS connections preallocate ``size`` bytes, not 256 KB (process-wide).

    Through :func:`video_bridge.net.internals.bound_tls_read_buffer` (asyncio has no setting
    for it): only on the Pythons whose sslproto was read for this; elsewhere it returns False
    and changes nothing (the bridge warns), and test/net/test_internals.py fails loudly.
    """
    return internals.bound_tls_read_buffer(size)


@functools.lru_cache(maxsize=1)
def _glibc_malloc_trim():
    try:
        trim = ctypes.CDLL('libc.so.6').malloc_trim
    except (OSError, AttributeError):   # not glibc: its allocator returns memory its own way
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """
    Give the heap's free pages back to the kernel (glibc ``malloc_trim(0)``); False elsewhere.

    The bridge tells glibc to keep freed memory (``bridge_node.keep_frame_memory``: frame
    buffers are reused instead of faulted in again for every frame), so what a burst of
    connections (TLS state, asyncio and aiohttp buffers, WebRTC peers) freed stays in the
    process for good: 10 to 25 MB after the hostile soak. Trimming once the burst is over
    returns it; the frame buffers fault in once and are kept again. Takes milliseconds on a
    large heap and needs no GIL: run it off the loop.
    """
    trim = _glibc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def client_key(address: str) -> str:
    """
    Name the client an address belongs to, for per-client counts.

    That is the address itself, or for IPv6 its /64 (one host can use any address of its /64,
    so counting addresses is moot).
    """
    if ':' not in address:
        return address
    try:
        network = ipaddress.ip_network(f'{address.split("%")[0]}/{IPV6_CLIENT_PREFIX}',
                                       strict=False)
    except ValueError:
        return address
    return f'{network.network_address}/{IPV6_CLIENT_PREFIX}'


def refusal(reason: str) -> bytes:
    """Return the canned response a refused plain-HTTP connection gets."""
    body = reason + '\n'
    return REFUSAL.format(length=len(body.encode()), body=body).encode()


class _Tracked(asyncio.Protocol):
    """Forward everything to aiohttp's protocol; tell the listener when the connection ends."""

    __slots__ = ('inner', 'listener', 'peer', 'transport', 'requested', 'timer', 'paused',
                 'drained', 'active', 'holder')

    def __init__(self, inner, listener: 'Listener', peer: str):
        self.inner = inner
        self.listener = listener
        self.peer = peer
        self.transport = None
        self.requested = False
        self.timer = None
        self.paused = False       # asyncio holds bytes this connection's socket did not take
        self.active = 0.0         # monotonic time it last did something useful
        self.holder = None        # once it sent a request: whether its client holds the token
        self.drained = None       # future: set once it holds none again (or the connection ends)

    def connection_made(self, transport):
        self.transport = transport
        self.listener._opened(self)
        self.inner.connection_made(transport)

    def data_received(self, data):
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self):
        self.paused = True
        self.inner.pause_writing()

    def resume_writing(self):
        self.paused = False
        self._wake()
        self.inner.resume_writing()

    def connection_lost(self, exc):
        self.paused = False
        self._wake()
        try:
            self.inner.connection_lost(exc)
        finally:
            self.listener._closed(self)

    def _wake(self):
        if self.drained is not None:
            if not self.drained.done():
                self.drained.set_result(None)
            self.drained = None


class Listener:
    """Accept connections on the bound sockets, within the caps, and hand them to aiohttp."""

    def __init__(self, protocol_factory: Callable[[], asyncio.Protocol], *,
                 ssl_context: Optional[ssl.SSLContext] = None,
                 max_connections: int = 1000, max_per_client: int = 64,
                 exempt: Set[str] = frozenset(), handshake_timeout: float = 10.0,
                 shut_out: Callable[[str], str] = lambda key: '',
                 logger: Optional[logging.Logger] = None):
        self.protocol_factory = protocol_factory
        # client key -> why its connections are refused at once ('' if they are not)
        self.shut_out = shut_out
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        # the connections only clients holding the token may take
        self.reserved = max(1, int(max_connections * RESERVED_SHARE))
        self.anonymous = 0         # connections that sent a request without holding the token
        self._holders: Dict[str, float] = {}   # client key -> until when it counts as holder
        self.evicted_idle = 0
        self.exempt = {normalise_address(address) for address in exempt}
        self.handshake_timeout = handshake_timeout
        self.log = logger or logging.getLogger('video_bridge.net.listener')
        self.sockets: list = []
        self.total = 0
        self.per_client: Dict[str, int] = {}
        self.refused = 0
        self._by_transport: Dict[object, _Tracked] = {}
        # connections that have not sent a request head yet, oldest first: key -> abort()
        self._silent: collections.OrderedDict = collections.OrderedDict()
        self._silent_peers: Dict[socket.socket, str] = {}   # of those not opened yet
        self._tasks: Set[asyncio.Task] = set()
        self._first_records: Set['_FirstRecord'] = set()   # TLS ones before their ClientHello
        self._accepting: list = []
        self._quiet = LogBudget(self.log)   # refusals, EMFILE, dropped: a line per kind per 5 s
        self.dropped = 0           # connections closed for sending no request (or handshake)
        # TLS handshakes under way, per client key, oldest first: socket -> when it began
        self._handshakes: Dict[str, collections.OrderedDict] = {}
        self._evicted: Set[socket.socket] = set()   # shut down, not yet ended
        self._waiting: collections.OrderedDict = collections.OrderedDict()  # key -> deque
        self.handshaking = 0       # granted slots: under way or evicted and not yet ended
        self.evicting = 0
        self.waiting = 0
        self._evict_timer = None
        self.peak_handshaking = 0
        self._high = 0             # open connections' high-water mark since the last trim
        self._trim_timer = None
        self._trimmed_at: Optional[float] = None
        self.memory_trims = 0      # times freed memory was given back after a burst

    # -- lifecycle -------------------------------------------------------------------------

    def bind(self, host: str, port: int) -> int:
        """Bind every address of ``host`` on ``port`` (0: one free port for all); return it."""
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        seen, error = set(), None
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            if self.sockets:  # port 0: every address gets the port the first one got
                address = (address[0], self.sockets[0].getsockname()[1], *address[2:])
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(1024)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    for bound in self.sockets:
                        bound.close()
                    self.sockets = []
                    raise
                error = exc
                continue
            self.sockets.append(sock)
        if not self.sockets:
            raise error or OSError(f'cannot listen on {host}:{port}')
        return self.sockets[0].getsockname()[1]

    def start(self):
        """Start accepting on every bound socket (call on the loop)."""
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self.sockets]

    async def stop(self):
        """Stop accepting and close the listening sockets (open connections stay)."""
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self.sockets:
            sock.close()
        if self._evict_timer is not None:
            self._evict_timer.cancel()
            self._evict_timer = None
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None
        for task in list(self._tasks):
            task.cancel()
        for waiting in list(self._first_records):
            waiting.evict()

    def transports(self) -> list:
        """Every open connection's transport."""
        return list(self._by_transport)

    def active(self, transport):
        """Note that this connection did something useful (a control message, a frame taken)."""
        tracked = self._by_transport.get(transport)
        if tracked is not None:
            tracked.active = time.monotonic()

    def admit(self, transport, key: str, holder: bool) -> str:
        """
        Count a request of client ``key`` on this connection; return why it is refused, or ''.

        ``key`` is the forwarded client behind a trusted proxy (the connection is then counted
        for it from now on, under ``max_per_client``). A connection whose client does not hold
        the token may not take the last ``reserved`` connections: when they are all that is
        left, an idle connection of such a client makes room, else the request is refused.
        """
        tracked = self._by_transport.get(transport)
        if tracked is None:
            return ''
        now = time.monotonic()
        tracked.active = now
        if holder:
            if len(self._holders) >= self.max_connections:
                self._holders = {k: t for k, t in self._holders.items() if t > now}
            self._holders[key] = now + HOLDER_MEMORY
        else:
            holder = self._holders.get(key, 0.0) > now
        if key != tracked.peer and tracked.peer in self.exempt and key not in self.exempt:
            if self.per_client.get(key, 0) >= self.max_per_client and \
                    not self._evict_idle(lambda other: other.peer == key, tracked):
                return f'too many connections from your address ({self.max_per_client})'
            self._move(tracked, key)
        if holder and tracked.holder is False:
            self.anonymous -= 1
        elif not holder and not tracked.holder:
            if tracked.holder is None:
                limit = self.max_connections - self.reserved
                if self.anonymous >= limit and not self._evict_idle(
                        lambda other: other.holder is False, tracked):
                    return (f'this bridge is full ({limit} connections for clients without '
                            f'the token; the rest is kept for those with it)')
                self.anonymous += 1
            holder = False
        tracked.holder = holder
        return ''

    def _move(self, tracked: _Tracked, key: str):
        self._count(tracked.peer, -1)
        self._count(key, +1)
        tracked.peer = key

    def _evict_idle(self, which, keep=None) -> bool:
        """Abort the connection idle the longest (at least IDLE_EVICTABLE) among ``which``."""
        cutoff = time.monotonic() - IDLE_EVICTABLE
        oldest = None
        for tracked in self._by_transport.values():
            if tracked.active <= cutoff and tracked is not keep and tracked.requested and \
                    which(tracked) and (oldest is None or tracked.active < oldest.active):
                oldest = tracked
        if oldest is None:
            return False
        self.evicted_idle += 1
        self._closed(oldest)       # its slot is free now, whenever asyncio reports the end
        oldest.transport.abort()
        self._dropped(oldest.peer, f'evicted: idle for {IDLE_EVICTABLE:g} s while the bridge '
                      'was full')
        return True

    def mark_request(self, transport):
        """Note that a request head arrived on this connection: it is no longer silent."""
        tracked = self._by_transport.get(transport)
        if tracked is not None and not tracked.requested:
            tracked.requested = True
            self._silent.pop(transport, None)
            if tracked.timer is not None:
                tracked.timer.cancel()
                tracked.timer = None

    async def drained(self, transport):
        """Wait until asyncio holds nothing unsent for this connection (or it closed)."""
        tracked = self._by_transport.get(transport)
        if tracked is None or not tracked.paused:
            return
        if tracked.drained is None:
            tracked.drained = asyncio.get_running_loop().create_future()
        await asyncio.shield(tracked.drained)

    # -- accepting -------------------------------------------------------------------------

    async def _accept(self, sock: socket.socket):
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in RESOURCE_ERRORS:
                    self._out_of_descriptors(exc)
                    await asyncio.sleep(EMFILE_RETRY)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EAGAIN, errno.EPROTO):
                    continue
                raise
            peer = normalise_address(address[0]) if isinstance(address, tuple) else '?'
            peer = peer if peer in self.exempt else client_key(peer)
            reason = self._refusal_reason(peer)
            if reason:
                self._refuse(conn, peer, reason)
                continue
            self._count(peer, +1)
            # Evictable until it sent a request: the accept loop can drain a whole backlog
            # before any of these tasks runs.
            self._silent[conn] = conn.close
            self._silent_peers[conn] = peer
            if self.ssl_context is not None and (peer in self.exempt
                                                 or not self.shut_out(peer)):
                _FirstRecord(self, loop, conn, peer)   # a task only once it is whole
            else:
                self._spawn(conn, peer)

    def _spawn(self, conn: socket.socket, peer: str, started: Optional[float] = None):
        """Hand a connection to :meth:`_open` (a task of its own)."""
        task = asyncio.get_running_loop().create_task(self._open(conn, peer, started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _waited_in_vain(self, conn: socket.socket, peer: str, why: str = ''):
        """Close a connection that never reached :meth:`_open`; ``why``: log it as dropped."""
        self._silent.pop(conn, None)
        self._silent_peers.pop(conn, None)
        conn.close()
        self._count(peer, -1)
        if why:
            self._dropped(peer, why)

    def _refusal_reason(self, peer: str) -> str:
        if peer not in self.exempt and self.per_client.get(peer, 0) >= self.max_per_client:
            # Its own share is full: its own silent or idle connection makes room, if any. That
            # room is the newcomer's in the total too: evicting a second connection for it
            # would, over a backlog of one client's sockets, empty the evictable set while the
            # evicted ones are still counted (they are uncounted when their tasks run).
            if self._evict_silent(peer) or \
                    self._evict_idle(lambda tracked: tracked.peer == peer):
                return ''
            return f'too many connections from your address ({self.max_per_client})'
        if self.total >= self.max_connections:
            # Full: a socket that never sent a request (a squatter, e.g. a slowloris spread over
            # many addresses), else the connection idle the longest, makes room for the
            # newcomer; only working connections refuse it.
            if not self._evict_silent() and not self._evict_idle(lambda tracked: True):
                return f'too many connections to this bridge ({self.max_connections})'
        return ''

    def _evict_silent(self, peer: Optional[str] = None) -> bool:
        """Close the oldest connection that sent no request yet (of ``peer``, if given)."""
        if peer is None:
            if not self._silent:
                return False
            _, evict = self._silent.popitem(last=False)
        else:
            found = next((key for key in self._silent
                          if self._silent_peer(key) == peer), None)
            if found is None:
                return False
            evict = self._silent.pop(found)
        evict()
        self._dropped('?' if peer is None else peer, 'evicted: the connection cap was reached')
        return True

    def _silent_peer(self, key) -> Optional[str]:
        tracked = self._by_transport.get(key)
        if tracked is not None:
            return tracked.peer
        return self._silent_peers.get(key)

    def _refuse(self, conn: socket.socket, peer: str, reason: str):
        self.refused += 1
        try:
            conn.setblocking(False)
            if self.ssl_context is None:
                try:
                    conn.recv(65536)  # what the client already sent, so close sends no RST
                except OSError:
                    pass
                conn.send(refusal(reason))
        except OSError:
            pass
        finally:
            conn.close()
        self._quiet.warning('refused', 'refusing connections from %s: %s (%d refused so far)',
                            peer, reason, self.refused)

    def _out_of_descriptors(self, exc: OSError):
        self._quiet.warning('emfile', 'cannot accept connections: %s; lower max_connections '
                            'or raise the file limit', exc.strerror)

    async def _open(self, conn: socket.socket, peer: str, started: Optional[float] = None):
        """
        Give a connection its protocol (and TLS layer), or refuse a shut-out client's.

        A TLS connection comes here once its first record is whole (:class:`_FirstRecord`,
        ``started``: when it was accepted), and waits for a handshake slot first.
        """
        loop = asyncio.get_running_loop()
        tracked = _Tracked(None, self, peer)
        task = asyncio.current_task()
        try:
            if conn.fileno() < 0:
                raise ConnectionAbortedError('evicted before it was opened')
            kwargs = {}
            # Evictable while asyncio makes its transport too (an await: the accept loop may
            # take a newcomer meanwhile): shut down, not closed, so asyncio ends it itself.
            # Its transport takes its place once made (_opened; this entry goes in finally).
            self._silent[conn] = functools.partial(_shut_down, conn)
            shut_out = '' if peer in self.exempt else self.shut_out(peer)
            if shut_out:
                # Held unread (evictable), then refused: a client that would retry at once
                # retries about once a SHUT_OUT_HOLD, with no TLS handshake on the bridge.
                self._silent[conn] = task.cancel
                await asyncio.sleep(SHUT_OUT_HOLD)
                self._refuse(conn, peer, shut_out)
                self._count(peer, -1)
                return
            if self.ssl_context is not None:
                # A TLS layer (buffers in asyncio and OpenSSL) and a handshake slot only for a
                # client that sent its whole first TLS record (the ClientHello), within the
                # deadline: a socket that sends 3 bytes of one holds neither (nor this task).
                started = loop.time() if started is None else started
                # Evictable at the connection cap (see _refusal_reason) until its request.
                self._silent[conn] = task.cancel
                await asyncio.wait_for(self._handshake_slot(peer, conn),
                                       max(0.1, self.handshake_timeout
                                           - (loop.time() - started)))
                self._silent[conn] = functools.partial(_shut_down, conn)
                remaining = max(0.1, self.handshake_timeout - (loop.time() - started))
                kwargs = {'ssl': self.ssl_context, 'ssl_handshake_timeout': remaining}
            tracked.inner = self.protocol_factory()
            await loop.connect_accepted_socket(lambda: tracked, conn, **kwargs)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, EOFError) as exc:
            conn.close()
            _release_frames(exc)
            if tracked.transport is None:
                self._count(peer, -1)
            if isinstance(exc, asyncio.TimeoutError):
                self._dropped(peer, f'no TLS handshake within {self.handshake_timeout:g} s')
        except asyncio.CancelledError:
            conn.close()
            if tracked.transport is None:
                self._count(peer, -1)
        finally:
            self._silent.pop(conn, None)
            self._silent_peers.pop(conn, None)
            self._handshake_ends(peer, conn)

    async def _handshake_slot(self, peer: str, conn: socket.socket):
        """
        Take a TLS handshake slot; when they are all taken, evict one and wait for a free one.

        An evicted handshake's socket is shut down: asyncio sees the connection end and frees
        its TLS buffers. A slot is handed on only once that happened, so at most
        ``MAX_HANDSHAKES`` TLS layers exist at any moment, however many sockets arrive at once.
        Each waiting connection has one handshake evicted for it (the oldest of the client with
        the most, or its own client's oldest if that client has more than its share), and
        waiting clients are served round robin: a client with one connection is not stuck
        behind another client's hundreds.
        """
        mine = self._handshakes.get(peer)
        crowded = mine is not None and len(mine) >= MAX_HANDSHAKES_PER_CLIENT
        if not crowded and self.handshaking < MAX_HANDSHAKES and not self.waiting:
            self._handshake_granted(peer, conn)
            return
        entry = (conn, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(peer, collections.deque()).append(entry)
        self.waiting += 1
        if crowded:
            self._evict_handshake(peer)
        if self._evict_timer is None:
            self._evict_for_waiters()
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self._handshake_ends(peer, conn)  # granted, and then the deadline passed
            else:
                queue = self._waiting.get(peer)
                if queue is not None and entry in queue:
                    queue.remove(entry)
                    self.waiting -= 1
                    if not queue:
                        del self._waiting[peer]
            raise

    def _evict_for_waiters(self):
        """Evict one handshake per waiting connection, among those under way long enough."""
        self._evict_timer = None
        now = time.monotonic()
        while self.evicting < self.waiting:
            eligible = [key for key, mine in self._handshakes.items()
                        if now - next(iter(mine.values())) >= HANDSHAKE_GRACE]
            if not eligible:
                break
            self._evict_handshake(max(eligible, key=lambda key: len(self._handshakes[key])))
        if self.evicting < self.waiting and self._handshakes and self._evict_timer is None:
            oldest = min(next(iter(mine.values())) for mine in self._handshakes.values())
            self._evict_timer = asyncio.get_running_loop().call_later(
                max(0.01, oldest + HANDSHAKE_GRACE - now), self._evict_for_waiters)

    def _evict_handshake(self, peer: str):
        """Shut down the oldest handshake under way of ``peer``."""
        mine = self._handshakes[peer]
        oldest = next(iter(mine))
        del mine[oldest]
        if not mine:
            del self._handshakes[peer]
        self._evicted.add(oldest)
        self.evicting += 1
        _shut_down(oldest)
        self._dropped(peer, 'evicted: too many TLS handshakes at once')

    def _handshake_granted(self, peer: str, conn: socket.socket):
        self._handshakes.setdefault(peer, collections.OrderedDict())[conn] = time.monotonic()
        self.handshaking += 1
        self.peak_handshaking = max(self.peak_handshaking, self.handshaking)

    def _handshake_ends(self, peer: str, conn: socket.socket):
        mine = self._handshakes.get(peer)
        if mine is not None and conn in mine:
            del mine[conn]
            if not mine:
                del self._handshakes[peer]
        elif conn in self._evicted:
            self._evicted.discard(conn)
            self.evicting -= 1
        else:
            return
        self.handshaking -= 1
        while self._waiting and self.handshaking < MAX_HANDSHAKES:
            waiter_peer, queue = next(iter(self._waiting.items()))
            waiter, granted = queue.popleft()
            self.waiting -= 1
            del self._waiting[waiter_peer]
            if queue:  # round robin: this client's next waiter goes to the back
                self._waiting[waiter_peer] = queue
            if not granted.done():
                self._handshake_granted(waiter_peer, waiter)
                granted.set_result(None)
        if self._evict_timer is None:
            self._evict_for_waiters()

    def _count(self, peer: str, delta: int):
        self.total += delta
        count = self.per_client.get(peer, 0) + delta
        if count > 0:
            self.per_client[peer] = count
        else:
            self.per_client.pop(peer, None)
        self._high = max(self._high, self.total)
        if delta < 0 and self._trim_timer is None and self._high - self.total >= BURST_OVER \
                and self.total <= self._high // 2:
            now = time.monotonic()
            wait = TRIM_DELAY if self._trimmed_at is None else \
                max(TRIM_DELAY, self._trimmed_at + TRIM_PERIOD - now)
            self._trim_timer = asyncio.get_running_loop().call_later(wait, self._trim)

    def _trim(self):
        """Give back what a burst of connections freed, now that it is over (off the loop)."""
        self._trim_timer = None
        self._trimmed_at = time.monotonic()
        self.log.info('a burst of %d connections is over (%d open): giving the memory it '
                      'freed back', self._high, self.total)
        self._high = self.total
        self.memory_trims += 1
        gc.collect()   # the closed connections' reference cycles, before their pages go back
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(release_free_memory))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _opened(self, tracked: _Tracked):
        self._by_transport[tracked.transport] = tracked
        self._silent[tracked.transport] = tracked.transport.abort
        tracked.timer = asyncio.get_running_loop().call_later(
            self.handshake_timeout, self._no_request_in_time, tracked)

    def _no_request_in_time(self, tracked: _Tracked):
        tracked.timer = None
        if not tracked.requested and tracked.transport is not None:
            tracked.transport.abort()
            self._dropped(tracked.peer, f'no request within {self.handshake_timeout:g} s')

    def _dropped(self, peer: str, why: str):
        # Said at most once per 5 s: a slowloris must not flood the log, but a
        # user whose client is cut off can see why.
        self.dropped += 1
        self._quiet.info('dropped', 'closed a connection that sent no request in time (from '
                         '%s: %s)', peer, why)

    def _closed(self, tracked: _Tracked):
        self._silent.pop(tracked.transport, None)
        if tracked.timer is not None:
            tracked.timer.cancel()
            tracked.timer = None
        if self._by_transport.pop(tracked.transport, None) is not None:
            self._count(tracked.peer, -1)
            if tracked.holder is False:
                self.anonymous -= 1


def _shut_down(conn: socket.socket):
    """End a connection asyncio may be using: it sees EOF and closes it itself."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _release_frames(exc: BaseException):
    """
    Clear the finished frames a failed handshake's exceptions hold.

    asyncio's TLS layer raises from frames whose locals hold the connection (and its 256 KB
    buffer); exception, traceback and frame form a cycle that only the full garbage collection
    frees, minutes later. 1000 failed handshakes then hold 250 MB.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__context__ or exc.__cause__


class _FirstRecord:
    """
    A TLS connection waiting until its first record (the ClientHello) is whole: no task yet.

    A reader callback and a deadline timer, not a task: a flood of sockets that send 3 bytes of a
    ClientHello and stop (issue 16's row 9: 1000 of them) costs 1.2 KB of Python objects a socket
    this way, 4.1 KB with a task waiting in ``asyncio.wait_for`` (two tasks, their coroutines,
    futures and timers; ``bench/run cut_hello``). The record is peeked, not read: asyncio's TLS
    layer reads it once :meth:`Listener._open` has a handshake slot for it. While a record is
    incomplete the socket stays readable, so the rest is looked for again after
    FIRST_RECORD_RECHECK, doubling up to FIRST_RECORD_RECHECK_MAX (a ClientHello split over two
    segments costs its client a few milliseconds; a socket that stopped mid-record a look every
    2 s). Evictable at the connection cap like any connection that sent no request yet.
    """

    __slots__ = ('listener', 'loop', 'conn', 'fd', 'peer', 'started', 'deadline', 'recheck',
                 'again')

    def __init__(self, listener: Listener, loop: asyncio.AbstractEventLoop,
                 conn: socket.socket, peer: str):
        self.listener, self.loop, self.conn, self.peer = listener, loop, conn, peer
        self.fd = conn.fileno()
        self.started = loop.time()
        self.deadline = loop.call_later(listener.handshake_timeout, self.expire)
        self.recheck = FIRST_RECORD_RECHECK
        self.again: Optional[asyncio.TimerHandle] = None   # the next look at a partial record
        listener._silent[conn] = self.evict
        listener._first_records.add(self)
        loop.add_reader(self.fd, self.look)

    def look(self):
        """Hand the connection on once its first record is whole (or it is not TLS)."""
        self.again = None
        head = _peek(self.conn, TLS_RECORD_HEADER)
        if head is None:   # nothing to read yet: a spurious wake-up
            if self.fd < 0:
                self._look_later()
            return
        if not head:   # EOF or reset: the client is gone (a port probe); nothing to hand on
            self._stop_reading()
            self._end()
            self.listener._waited_in_vain(self.conn, self.peer)
            return
        whole = head[0] != TLS_HANDSHAKE_RECORD   # not TLS: asyncio's TLS layer says so
        if not whole and len(head) == TLS_RECORD_HEADER:
            length = TLS_RECORD_HEADER + int.from_bytes(head[3:5], 'big')
            whole = length > TLS_RECORD_HEADER + TLS_MAX_RECORD or \
                len(_peek(self.conn, length) or b'') >= length
        self._stop_reading()
        if whole:
            self._end()
            self.listener._silent[self.conn] = self.conn.close   # _open sees it was evicted
            self.listener._spawn(self.conn, self.peer, self.started)
        else:
            self._look_later()

    def _look_later(self):
        self.again = self.loop.call_later(self.recheck, self.look)
        self.recheck = min(self.recheck * 2, FIRST_RECORD_RECHECK_MAX)

    def expire(self):
        """Close the connection: the deadline passed with no whole first record."""
        self.deadline = None
        self._stop_reading()
        self._end()
        timeout = self.listener.handshake_timeout
        self.listener._waited_in_vain(self.conn, self.peer,
                                      f'no TLS handshake within {timeout:g} s')

    def evict(self):
        """Make room at the connection cap (the listener took this out of its silent ones)."""
        self._stop_reading()
        self._end()
        self.listener._waited_in_vain(self.conn, self.peer)

    def _stop_reading(self):
        if self.fd >= 0:   # still waiting to be readable (not only to look again)
            self.loop.remove_reader(self.fd)
            self.fd = -1

    def _end(self):
        for handle in (self.deadline, self.again):
            if handle is not None:
                handle.cancel()
        self.deadline = self.again = None
        self.listener._first_records.discard(self)


def _peek(sock: socket.socket, size: int) -> Optional[bytes]:
    """Up to ``size`` bytes waiting in ``sock``, left there (b'': EOF or reset; None: none yet)."""
    try:
        return sock.recv(size, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:   # reset by the client: as good as gone
        return b''
