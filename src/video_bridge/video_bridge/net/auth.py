"""
The one authentication seam of the edge: ``authenticate(request) -> Grant``.

Every route calls :func:`authenticate`; the rules themselves are pure and live in
:mod:`video_bridge.core.access`. Host and Origin are checked once per request by
:func:`host_origin_problem` (the app's middleware), so a DNS-rebound or cross-site request is
refused before any handler runs.
"""

from dataclasses import dataclass
import ipaddress
import socket
from typing import Optional, Tuple

from aiohttp import hdrs, web
from video_bridge.core import protocol
from video_bridge.core.access import AccessPolicy

POLICY_KEY = 'video_bridge.access'
TRUSTED_KEY = 'video_bridge.trusted_proxies'
SCHEME_KEY = 'video_bridge.scheme'
GRANT_KEY = 'video_bridge.grant'   # a request's Grant, once decided


@dataclass(frozen=True, slots=True)   # one per websocket for its whole life: no __dict__
class Grant:
    """What one request may do; ``problem`` set means it may do nothing (the reason)."""

    client: str           # who, for logs: peer address (or the forwarded one via a proxy)
    view: bool            # watch the configured streams, list image topics
    drive: bool
    token_required: bool
    problem: Optional[str] = None
    relay: bool = False          # may get TURN credentials
    topic_streams: bool = False  # may watch graph image topics as streams of their own


def machine_names() -> Tuple[str, ...]:
    """Return this machine's own names, accepted in Host by default (no DNS lookup)."""
    name = socket.gethostname().lower().rstrip('.')
    if not name:
        return ()
    short = name.split('.')[0]
    return tuple(dict.fromkeys((name, short, f'{short}.local')))


def peer_host(request: web.BaseRequest) -> str:
    """Return the TCP peer's address (IPv4-mapped IPv6 shown as IPv4)."""
    transport = request.transport
    peer = transport.get_extra_info('peername') if transport is not None else None
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer or '?')
    return normalise_address(host)


def normalise_address(host: str) -> str:
    """Return an address in one spelling, so per-client counts cannot be dodged."""
    try:
        address = ipaddress.ip_address(host.split('%')[0])
    except ValueError:
        return host
    mapped = getattr(address, 'ipv4_mapped', None)
    return str(mapped or address)


def _forwarded(request: web.BaseRequest, peer: str) -> str:
    """Return the client address a trusted proxy forwarded ('' when none or not trusted)."""
    if peer in request.app.get(TRUSTED_KEY, ()):
        return request.headers.get('X-Forwarded-For', '').split(',')[-1].strip()[:64]
    return ''


def client_name(request: web.BaseRequest) -> str:
    """Name the client for logs: the forwarded address when a trusted proxy sent it."""
    peer = peer_host(request)
    forwarded = _forwarded(request, peer)
    return f'{forwarded} via {peer}' if forwarded else peer


def client_address(request: web.BaseRequest) -> str:
    """Return the client's address as wrong tokens count it: the forwarded one via a proxy."""
    peer = peer_host(request)
    return normalise_address(_forwarded(request, peer) or peer)


def _single(request: web.BaseRequest, name: str) -> Tuple[Optional[str], bool]:
    values = request.headers.getall(name, [])
    return (values[0] if values else None), len(values) <= 1


def request_scheme(request: web.BaseRequest) -> str:
    """Scheme the browser used: ours, or X-Forwarded-Proto from a trusted proxy."""
    scheme = request.app.get(SCHEME_KEY, 'http')
    if peer_host(request) in request.app.get(TRUSTED_KEY, ()):
        forwarded = request.headers.get('X-Forwarded-Proto', '').strip().lower()
        if forwarded in ('http', 'https'):
            scheme = forwarded
    return scheme


def host_origin_problem(request: web.BaseRequest) -> Optional[Tuple[int, str]]:
    """Return ``(status, reason)`` if Host or Origin rule this request out, else None."""
    policy: AccessPolicy = request.app[POLICY_KEY]
    host, single_host = _single(request, hdrs.HOST)
    origin, single_origin = _single(request, hdrs.ORIGIN)
    if not (single_host and single_origin):
        return 400, 'duplicate Host or Origin header'
    if not policy.host_allowed(host):
        return 403, 'host not allowed (set allowed_hosts)'
    upgrade = request.headers.get(hdrs.UPGRADE, '').lower() == 'websocket'
    if upgrade and not policy.origin_allowed(origin, host, request_scheme(request)):
        return 403, 'origin not allowed (set allowed_origins)'
    return None


def presented_token(request: web.BaseRequest) -> Optional[str]:
    """Token of a request: ``Authorization: Bearer``, else the ``token`` query value."""
    return protocol.presented_token(request.get('video_bridge.query') or request.query,
                                    request.headers)


def authenticate(request: web.BaseRequest) -> Grant:
    """
    Decide what this request may do (watch, drive, relay, topic streams) from its token.

    Wrong tokens count against the client (the forwarded one behind a trusted proxy); past
    its budget its tokens are refused unchecked (:class:`~video_bridge.core.access.TokenAttempts`).
    Decided once per request (the middleware and the handler both ask): a wrong token is one
    wrong token.
    """
    decided = request.get(GRANT_KEY)
    if decided is not None:
        return decided
    policy: AccessPolicy = request.app[POLICY_KEY]
    rights = policy.rights(presented_token(request), client_address(request))
    grant = Grant(client=client_name(request), view=rights.view, drive=rights.drive,
                  token_required=policy.token_required, problem=rights.problem,
                  relay=rights.relay, topic_streams=rights.topic_streams)
    request[GRANT_KEY] = grant
    return grant
