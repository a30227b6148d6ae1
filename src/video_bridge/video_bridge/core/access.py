"""
Who may watch and who may drive: the token, and which Host and Origin a browser may use.

Pure. The token is compared in constant time and never appears in a log line or a message;
callers log only the outcome and the client's address.

Host and Origin defend against DNS rebinding and cross-site pages: a browser tricked into
talking to the bridge from ``evil.example`` sends ``Host: evil.example:8080``, which is not an
IP literal, not ``localhost`` and not one of this machine's names, so it is refused; a page on
another origin opening a websocket sends its own ``Origin``, which must be the bridge's own
(scheme, host and port) or one listed in ``allowed_origins``.
"""

from dataclasses import dataclass
import hmac
import ipaddress
import os
import secrets
from typing import Iterable, Optional, Tuple
from urllib.parse import urlsplit

from video_bridge.core.secret_file import read_secret_file

TOKEN_ENV = 'VIDEO_BRIDGE_TOKEN'
ANY = '*'
DEFAULT_PORTS = {'http': 80, 'https': 443, 'ws': 80, 'wss': 443}
LOOPBACK_NAMES = frozenset({'localhost', 'localhost.localdomain', 'ip6-localhost'})


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
    view_requires_token: bool = False
    allowed_origins: Tuple[str, ...] = ()  # added to the bridge's own origin; '*': any
    allowed_hosts: Tuple[str, ...] = ()    # names accepted in Host besides IPs and localhost
    cors_origins: Tuple[str, ...] = ()     # may read /api/streams and /snapshot cross-origin

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

    def token_problem(self, presented: Optional[str]) -> Optional[str]:
        """Return why ``presented`` is refused ('token required', 'invalid token'), or None."""
        if not self.token:
            return None
        if not presented:
            return 'token required'
        if not hmac.compare_digest(presented.encode(), self.token.encode()):
            return 'invalid token'
        return None

    def view_problem(self, presented: Optional[str]) -> Optional[str]:
        """
        Return why this client may not watch, or None.

        A wrong token is refused even where watching needs none, so a typo is noticed.
        """
        problem = self.token_problem(presented)
        if problem == 'invalid token' or (problem and self.view_requires_token):
            return problem
        return None

    def may_drive(self, presented: Optional[str]) -> bool:
        """Tell whether this client may take the driver lock."""
        return self.token_problem(presented) is None

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
