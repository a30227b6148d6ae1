"""
Pure parts of the SFU path: Janus signed tokens, and who watches a stream through the SFU.

**Tokens.** Janus's core, with ``token_auth = true`` and a ``token_auth_secret``, accepts a
request only with a token it can verify itself (no call to anyone): ``EXPIRY,REALM,D1,D2,...``
followed by ``:`` and the standard base64 of HMAC-SHA1(secret, that text). ``EXPIRY`` is a
Unix time in seconds. Two tokens are made from the one secret: the *session token* (realm
``janus``, descriptors: the plugin packages the holder may attach, here only the VideoRoom)
goes with every Janus API request; the *room token* (realm ``janus.plugin.videoroom``,
descriptor ``room=<id>``) goes in the ``join`` of a room with ``signed_tokens``. The bridge
mints them as it mints the TURN REST credentials: short-lived, only for a client that passed
the view check.

**Watchers.** A page that watches through the SFU says so on ``/control`` (``sfu_watch``)
and repeats it within :data:`WATCH_TTL`; the robot publishes a stream only while someone
watches it, and stops :data:`LINGER` after the last one left (so a page that reloads does
not make the robot renegotiate with the SFU).
"""

import base64
from dataclasses import dataclass
import hashlib
import hmac
from typing import Dict, Iterable, Optional, Sequence, Set, Tuple

REALM = 'janus'
VIDEOROOM = 'janus.plugin.videoroom'
TOKEN_TTL = 300           # s a viewer's token is good for (the page asks again before)
MAX_TOKEN_TTL = 24 * 3600
WATCH_TTL = 30.0          # s a sfu_watch holds without a repeat
LINGER = 10.0             # s the robot keeps publishing after the last watcher left
MAX_WATCHERS = 256        # sessions watching through the SFU at once (each is a control session)


class TokenError(ValueError):
    """A token could not be made or read: the message says why."""


def room_descriptor(room: int) -> str:
    """Return the descriptor a ``signed_tokens`` VideoRoom wants for ``room``."""
    return f'room={int(room)}'


def _signature(secret: str, data: str) -> str:
    digest = hmac.new(secret.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode('ascii')


def mint_token(secret: str, expires_at: float, descriptors: Sequence[str],
               realm: str = REALM) -> str:
    """
    Return a Janus signed token of ``realm`` good until ``expires_at`` (Unix s).

    Descriptors may not contain ``,`` or ``:`` (the token's separators): a descriptor that did
    would read as two, or as the signature.
    """
    if not secret:
        raise TokenError('no token secret')
    if not descriptors:
        raise TokenError('a token names at least one plugin')
    for item in descriptors:
        if not item or any(c in item for c in ',:') or not item.isprintable():
            raise TokenError(f'bad descriptor {item!r}')
    data = ','.join([str(int(expires_at)), realm, *descriptors])
    return f'{data}:{_signature(secret, data)}'


def read_token(token: str, secret: str, now: float,
               realm: str = REALM) -> Optional[Tuple[int, Tuple[str, ...]]]:
    """
    Check a token as Janus does: (expiry, descriptors), or None if Janus would refuse it.

    For tests and diagnostics: the bridge never needs to read its own tokens.
    """
    if not isinstance(token, str) or token.count(':') != 1:
        return None
    data, signature = token.split(':')
    fields = data.split(',')
    if len(fields) < 2 or fields[1] != realm:
        return None
    try:
        expiry = int(fields[0])
    except ValueError:
        return None
    if expiry < 0 or now > expiry:
        return None
    if not hmac.compare_digest(signature, _signature(secret, data)):
        return None
    return expiry, tuple(fields[2:])


@dataclass(frozen=True)
class RoomGrant:
    """The two tokens for one robot's room: minted per request, short-lived."""

    token: str              # every Janus API request: may attach the VideoRoom plugin, only
    room_token: str         # the room's join: room=<id>, only
    expires_at: int
    room: int


def _expiry(now: float, ttl: float) -> int:
    return int(now + min(max(1.0, float(ttl)), MAX_TOKEN_TTL))


def session_token(secret: str, now: float, ttl: float = TOKEN_TTL) -> str:
    """
    Mint a session token: it may attach the VideoRoom plugin, and nothing else.

    Janus checks it on every request of a session, keepalives included, so a long-lived
    session sends each request with a fresh one.
    """
    return mint_token(secret, _expiry(now, ttl), (VIDEOROOM,))


def room_grant(secret: str, room: int, now: float, ttl: float = TOKEN_TTL,
               publisher_nonce: str = '') -> RoomGrant:
    """
    Mint the tokens of one robot's room: the VideoRoom plugin and this room, nothing else.

    Viewers subscribe in the room; publishing is refused by the room's ``allowed`` list,
    which only the robot's own room token is on (the robot puts it there with the room
    secret, which viewers never get). The robot's room token names a ``publisher_nonce``
    of its own (random, fresh per Janus session): without it, a viewer's token minted in
    the same second would be the very same string, and on the list.
    """
    expires = _expiry(now, ttl)
    room_descriptors = (room_descriptor(room),)
    if publisher_nonce:
        room_descriptors += (f'publisher={publisher_nonce}',)
    return RoomGrant(session_token(secret, now, ttl),
                     mint_token(secret, expires, room_descriptors, VIDEOROOM),
                     expires, int(room))


class SfuWatchers:
    """
    Which control sessions watch which stream through the SFU, with heartbeats and a linger.

    Bounded: at most ``max_watchers`` sessions, one stream each (a newer ``sfu_watch`` of a
    session replaces its older one).
    """

    def __init__(self, ttl: float = WATCH_TTL, linger: float = LINGER,
                 max_watchers: int = MAX_WATCHERS):
        self.ttl = ttl
        self.linger = linger
        self.max_watchers = max_watchers
        self._watching: Dict[str, Tuple[str, float]] = {}   # client -> (stream, expires)
        self._last_seen: Dict[str, float] = {}               # stream -> last watched until

    def watch(self, client_id: str, stream: str, now: float) -> bool:
        """Note (or renew) that ``client_id`` watches ``stream``; False past the cap."""
        if client_id not in self._watching and len(self._watching) >= self.max_watchers:
            self.expire(now)
            if len(self._watching) >= self.max_watchers:
                return False
        old = self._watching.get(client_id)
        if old is not None and old[0] != stream:
            self._last_seen[old[0]] = now
        self._watching[client_id] = (stream, now + self.ttl)
        return True

    def leave(self, client_id: str, now: float):
        """Forget a session (it stopped watching, or its control session ended)."""
        old = self._watching.pop(client_id, None)
        if old is not None:
            self._last_seen[old[0]] = now

    def expire(self, now: float):
        """Drop sessions whose heartbeat is overdue."""
        for client_id, (stream, expires) in list(self._watching.items()):
            if now > expires:
                del self._watching[client_id]
                self._last_seen[stream] = expires

    def watchers(self, stream: str) -> int:
        """Count the sessions watching ``stream`` now."""
        return sum(1 for s, _ in self._watching.values() if s == stream)

    def wanted(self, now: float) -> Set[str]:
        """Return the streams to publish: watched now, or left less than ``linger`` ago."""
        self.expire(now)
        streams = {stream for stream, _ in self._watching.values()}
        for stream, left in list(self._last_seen.items()):
            if stream in streams:
                continue
            if now - left < self.linger:
                streams.add(stream)
            else:
                del self._last_seen[stream]
        return streams

    def next_change(self, now: float) -> Optional[float]:
        """Return when :meth:`wanted` may change by itself (an expiry or a linger's end)."""
        watched = {stream for stream, _ in self._watching.values()}
        times: Iterable[float] = [expires for _, expires in self._watching.values()]
        times = list(times) + [left + self.linger for stream, left in self._last_seen.items()
                               if stream not in watched]
        return min(times) if times else None
