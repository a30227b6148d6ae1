"""
Who may watch, drive, relay and list topics (the token), and which Host and Origin browsers use.

Pure. The token is compared in constant time and never appears in a log line or a message;
callers log only the outcome and the client's address. Wrong tokens are throttled per client
(:class:`TokenAttempts`): past a small burst, a client's further tokens are refused unchecked
until its budget refills, so guessing runs at about one try per second per client.

Rights (:class:`Rights`), when a token exists: watching (and listing image topics) needs it
unless ``view_requires_token`` is false; driving, TURN credentials (relaying through the
operator's TURN server) and topic streams (any image topic of the graph, each a stream of its
own with encoders of its own) always need it. Without a token (loopback, or
``allow_anonymous_driving``) everybody who reaches the port has every right.

Host and Origin defend against DNS rebinding and cross-site pages: a browser tricked into
talking to the bridge from ``evil.example`` sends ``Host: evil.example:8080``, which is not an
IP literal, not ``localhost`` and not one of this machine's names, so it is refused; a page on
another origin opening a websocket sends its own ``Origin``, which must be the bridge's own
(scheme, host and port) or one listed in ``allowed_origins``.
"""

import collections
from dataclasses import dataclass, field
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from typing import Callable, Iterable, Optional, Tuple
from urllib.parse import urlsplit

from video_bridge.core.secret_file import read_secret_file

TOKEN_ENV = 'VIDEO_BRIDGE_TOKEN'
ANY = '*'
DEFAULT_PORTS = {'http': 80, 'https': 443, 'ws': 80, 'wss': 443}
LOOPBACK_NAMES = frozenset({'localhost', 'localhost.localdomain', 'ip6-localhost'})
TOO_MANY_ATTEMPTS = 'too many invalid tokens from this client; wait and retry'
WRONG_TOKEN_BURST = 10        # wrong tokens a client may present at once ...
WRONG_TOKENS_PER_SECOND = 1.0  # ... and then this many a second; beyond, refused unchecked
TRACKED_CLIENTS = 4096        # clients whose wrong tokens are remembered (oldest forgotten)


def load_token(file: str = '', env: Optional[dict] = None) -> str:
    """
    Resolve the control token: the file's first line, else $VIDEO_BRIDGE_TOKEN.

    Never a ROS parameter: any node on the DDS graph can read parameters. An empty result means
    no token is configured. A named file that cannot be read is an error, not a silent "none".
    """
    if file:
        return read_secret_file(file, 'token_file')
    environ = os.environ if env is None else env
    return environ.get(TOKEN_ENV, '').strip()


def generate_token() -> str:
    """Return a fresh random token (URL-safe, 128 bits), made when none is configured."""
    return secrets.token_urlsafe(16)


def is_ip_literal(name: str) -> bool:
    """Tell whether ``name`` is an IPv4 or IPv6 address (brackets allowed)."""
    try:
        ipaddress.ip_address(name.strip('[]'))
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Tell whether a bind address or host name only reaches this machine."""
    name = host.strip().strip('[]').lower().rstrip('.')
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> Tuple[str, Optional[int]]:
    """
    Split a Host header (``name``, ``name:port``, ``[v6]:port``) into lower-case name and port.

    Raises ValueError for anything that is not a host.
    """
    value = value.strip()
    if not value or any(c.isspace() or c in '/\\@?#' for c in value):
        raise ValueError('not a host')
    parts = urlsplit('//' + value)
    name, port = parts.hostname, parts.port  # port raises ValueError when not a number
    if not name:
        raise ValueError('not a host')
    return name.rstrip('.'), port


def client_key(address: str) -> str:
    """
    Group a client address as the throttle counts it: IPv4 per address, IPv6 per /64.

    One IPv6 host usually owns a whole /64; counting per address would let it dodge the
    throttle with a fresh address per try.
    """
    try:
        ip = ipaddress.ip_address(address.split('%')[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f'{ip}/64', strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


class TokenAttempts:
    """
    Per-client budget of wrong tokens: a burst, then a steady rate; beyond it, no check at all.

    A token bucket per client key (:func:`client_key`): each wrong token takes one; an empty
    bucket means the client's tokens are refused without being compared until it refills.
    A right token costs nothing. At most ``max_clients`` buckets are kept (the least recently
    used is forgotten), so memory stays bounded whatever the number of addresses. Runs on one
    thread (the network loop).
    """

    def __init__(self, burst: int = WRONG_TOKEN_BURST, per_second: float = WRONG_TOKENS_PER_SECOND,
                 max_clients: int = TRACKED_CLIENTS,
                 clock: Callable[[], float] = time.monotonic):
        self.burst = burst
        self.per_second = per_second
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: 'collections.OrderedDict[str, Tuple[float, float]]' = \
            collections.OrderedDict()  # key -> (tokens left, when counted)
        self.refused = 0   # tokens refused unchecked, for figures

    def _level(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        tokens, then = entry
        return min(float(self.burst), tokens + (now - then) * self.per_second)

    def locked(self, client: str) -> bool:
        """Tell whether this client's next token is to be refused without a check."""
        locked = self.shut_out(client)
        if locked:
            self.refused += 1
        return locked

    def shut_out(self, client: str) -> bool:
        """
        Tell whether this client's budget is empty, without counting a refusal.

        The listener asks before a connection's TLS handshake: a client whose next token would
        be refused unchecked can do nothing with a connection, so it gets none (the handshake
        is most of what a guess costs the bridge).
        """
        return self._level(client_key(client), self.clock()) < 1.0

    def failed(self, client: str):
        """Count a wrong token from this client."""
        key = client_key(client)
        now = self.clock()
        level = self._level(key, now) - 1.0
        self._buckets[key] = (level, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        """Count the clients whose wrong tokens are remembered."""
        return len(self._buckets)


def tokens_equal(presented: str, token: str) -> bool:
    """
    Compare two tokens in constant time, whatever their lengths.

    ``hmac.compare_digest`` returns at once when the lengths differ; comparing digests of both
    takes the same time for every guess.
    """
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(),
                               hashlib.sha256(token.encode()).digest())


@dataclass(frozen=True)
class Rights:
    """What one client may do; ``problem`` set (the reason) means it may do nothing."""

    view: bool            # watch the configured streams, list image topics
    drive: bool           # take the driver lock
    relay: bool           # get TURN credentials (relay through the operator's TURN server)
    topic_streams: bool   # watch any image topic of the graph as a stream of its own
    problem: Optional[str] = None


def _canonical_name(name: str) -> str:
    """``localhost`` and ``127.0.0.1`` (and ``::1``) are the same machine."""
    return '127.0.0.1' if is_loopback(name) else name


def normalise_origin(origin: str) -> Optional[Tuple[str, str, int]]:
    """Turn ``scheme://host[:port]`` into ``(scheme, host, port)``; None if it is not one."""
    try:
        parts = urlsplit(origin.strip().rstrip('/').lower())
        scheme, name, port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not name or parts.path or parts.query:
        return None
    return scheme, _canonical_name(name.rstrip('.')), port or DEFAULT_PORTS[scheme]


@dataclass(frozen=True)
class AccessPolicy:
    """The bridge's access rules (see the module docstring)."""

    token: str = ''
    view_requires_token: bool = True
    allowed_origins: Tuple[str, ...] = ()  # added to the bridge's own origin; '*': any
    allowed_hosts: Tuple[str, ...] = ()    # names accepted in Host besides IPs and localhost
    cors_origins: Tuple[str, ...] = ()     # may read /api/streams and /snapshot cross-origin
    attempts: TokenAttempts = field(default_factory=TokenAttempts, compare=False, repr=False)

    def __repr__(self) -> str:
        """Describe the policy without the token."""
        return (f'AccessPolicy(token={"set" if self.token else "none"}, '
                f'view_requires_token={self.view_requires_token}, '
                f'allowed_origins={self.allowed_origins}, allowed_hosts={self.allowed_hosts}, '
                f'cors_origins={self.cors_origins})')

    @property
    def token_required(self) -> bool:
        """Tell whether driving needs a token."""
        return bool(self.token)

    def token_problem(self, presented: Optional[str],
                      client: Optional[str] = None) -> Optional[str]:
        """
        Return why ``presented`` is refused ('token required', 'invalid token'), or None.

        With ``client`` (its address), wrong tokens are counted against that client, and a
        client past its budget gets TOO_MANY_ATTEMPTS without its token being compared.
        """
        if not self.token:
            return None
        if not presented:
            return 'token required'
        if client is not None and self.attempts.locked(client):
            return TOO_MANY_ATTEMPTS
        if not tokens_equal(presented, self.token):
            if client is not None:
                self.attempts.failed(client)
            return 'invalid token'
        return None

    def connection_refusal(self, client: str) -> str:
        """Why a client's new connections are refused before TLS (its wrong tokens), or ''."""
        return TOO_MANY_ATTEMPTS if self.token and self.attempts.shut_out(client) else ''

    def rights(self, presented: Optional[str], client: Optional[str] = None) -> Rights:
        """
        Decide what a client presenting ``presented`` may do (see the module docstring).

        A wrong token is refused even where watching needs none, so a typo is noticed.
        """
        problem = self.token_problem(presented, client)
        if problem is None:
            return Rights(view=True, drive=True, relay=True, topic_streams=True)
        if problem == 'token required' and not self.view_requires_token:
            return Rights(view=True, drive=False, relay=False, topic_streams=False)
        return Rights(view=False, drive=False, relay=False, topic_streams=False,
                      problem=problem)

    def view_problem(self, presented: Optional[str]) -> Optional[str]:
        """Return why this client may not watch, or None."""
        return self.rights(presented).problem

    def may_drive(self, presented: Optional[str]) -> bool:
        """Tell whether this client may take the driver lock."""
        return self.token_problem(presented) is None

    def summary(self, beyond_loopback: bool) -> str:
        """
        Say in one line who may do what, for the log at start (never the token itself).

        ``beyond_loopback``: the bridge listens on more than this machine's loopback.
        """
        if not self.token:
            who = 'anyone who reaches the port' if beyond_loopback else 'anyone on this machine'
            return f'no token: {who} may watch, drive, relay (TURN) and list topics'
        if self.view_requires_token:
            return ('watching, driving, relaying (TURN), topic streams and listing topics '
                    'need the token')
        return ('view_requires_token is false: anyone who reaches the port may watch every '
                'configured stream and list image topics without the token; driving, relaying '
                '(TURN) and topic streams need the token')

    def host_allowed(self, host: Optional[str]) -> bool:
        """
        Check a request's Host header: an IP literal, ``localhost`` or an allowed name.

        Programs that send no Host (HTTP/1.0 tools) are not browsers and cannot be rebound.
        """
        if host is None:
            return True
        try:
            name, _ = split_host(host)
        except ValueError:
            return False
        if is_ip_literal(name) or is_loopback(name):
            return True
        allowed = {entry.strip().lower().rstrip('.') for entry in self.allowed_hosts}
        return ANY in allowed or name in allowed

    def origin_allowed(self, origin: Optional[str], host: Optional[str],
                       scheme: str = 'http') -> bool:
        """
        Check a browser's Origin: the bridge's own (``scheme://Host``) or an allowed one.

        The scheme counts (``https://`` and ``ftp://`` are not ``http://``) and so does the
        port; ``localhost`` and ``127.0.0.1`` are the same machine. Programs that send no
        Origin (curl, ffmpeg, rclpy tools) are not browsers and are not checked.
        """
        if origin is None:
            return True
        if ANY in self.allowed_origins:
            return True
        presented = normalise_origin(origin)
        if presented is None:
            return False  # 'null' (sandboxed frames, files) and anything malformed
        if host and self.host_allowed(host):
            try:
                name, port = split_host(host)
            except ValueError:
                pass
            else:
                own = (scheme, _canonical_name(name), port or DEFAULT_PORTS.get(scheme, 80))
                if presented == own:
                    return True
        return presented in _origins(self.allowed_origins)

    def cors_origin(self, origin: Optional[str]) -> Optional[str]:
        """Return the value of Access-Control-Allow-Origin for ``origin``, or None."""
        if origin is None or not self.cors_origins:
            return None
        if ANY in self.cors_origins:
            return ANY
        presented = normalise_origin(origin)
        if presented is not None and presented in _origins(self.cors_origins):
            return origin.strip()
        return None


def _origins(entries: Iterable[str]) -> set:
    return {normalised for normalised in map(normalise_origin, entries) if normalised}
