"""
What the cloud's forwarder does between Janus nodes: the decisions, pure.

Robots publish to one Janus node, the origin; viewers are spread over it and the edge nodes.
Each edge gets each robot's feed from the origin as a VideoRoom *remote publisher*
(``add_remote_publisher`` on the edge with the feed's own id, then ``publish_remotely`` on
the origin to the ports the edge answered). A robot that publishes again (Janus restart,
link loss, bridge restart) gets a new feed id; an edge that restarts forgets its remote
publishers; an origin that restarts forgets its forwards. So the forwarder does not remember
what it made: every round it reads what the nodes have and :func:`plan` says what to change.

* :func:`origin_feeds` and :func:`edge_remotes` read ``listparticipants`` answers,
  :func:`remote_ids` a ``listremotes`` answer and :func:`feed_streams` the ``streams`` of a
  subscriber's ``attached`` event (how the forwarder learns a feed's codec and mids): every
  field checked, every list bounded, anything odd left out (never forwarded) rather than
  trusted.
* :func:`plan` turns one round's readings into :class:`Link`, :class:`Unforward`,
  :class:`RemoveRemote` and :class:`Probe` actions. Only remotizations named by this
  forwarder (``remote_id`` = :data:`REMOTE_PREFIX` + the edge's name) and remote publishers
  on the edges are touched; robots and other tools' forwards are left alone. A node that could
  not be read this round gets no action that depends on it.
"""

from dataclasses import dataclass
import re
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

REMOTE_PREFIX = 'vbf-'           # remote_id of this forwarder's remotizations: vbf-<edge name>
MAX_PARTICIPANTS = 64            # of a room read per round (a room has publishers = 6)
MAX_REMOTES = 16                 # remotizations of one feed read per round
MAX_STREAMS = 8                  # streams of one feed
MAX_FEED_ID = 2 ** 53 - 1        # Janus's numeric ids (JSON integers a browser keeps exact)
CODECS = frozenset({'vp8', 'vp9', 'h264', 'av1', 'h265', 'opus', 'pcmu', 'pcma', 'g722'})
NAME_PATTERN = re.compile(r'^[a-z0-9][a-z0-9-]{0,31}$')
MID_PATTERN = re.compile(r'^[A-Za-z0-9_-]{1,16}$')


@dataclass(frozen=True)
class Stream:
    """One medium of a feed as a remote publisher declares it (type, mid, mindex, codec)."""

    kind: str           # 'video' or 'audio'
    mid: str
    mindex: int
    codec: str

    def request(self) -> dict:
        """Give the entry of add_remote_publisher's ``streams`` list."""
        return {'type': self.kind, 'mid': self.mid, 'mindex': self.mindex,
                'codec': self.codec}


@dataclass(frozen=True)
class Probe:
    """Learn a feed's streams (a subscription on the origin, left before any media)."""

    room: int
    feed: int


@dataclass(frozen=True)
class Link:
    """Give ``edge`` the feed: add_remote_publisher there, publish_remotely on the origin."""

    room: int
    feed: int
    edge: str
    streams: Tuple[Stream, ...]


@dataclass(frozen=True)
class Unforward:
    """Stop the origin's remotization of ``feed`` to ``edge`` (unpublish_remotely)."""

    room: int
    feed: int
    edge: str


@dataclass(frozen=True)
class RemoveRemote:
    """Remove the remote publisher ``feed`` from ``edge`` (remove_remote_publisher)."""

    room: int
    feed: int
    edge: str


def valid_name(name) -> bool:
    """Tell whether ``name`` may name an edge (it goes into a remote_id)."""
    return isinstance(name, str) and bool(NAME_PATTERN.match(name))


def remote_id(edge: str) -> str:
    """Name this forwarder's remotization to ``edge`` (its remote_id)."""
    return REMOTE_PREFIX + edge


def _feed_id(value) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= MAX_FEED_ID else None


def _participants(answer) -> List[dict]:
    if not isinstance(answer, dict):
        return []
    participants = answer.get('participants')
    if not isinstance(participants, list):
        return []
    return [p for p in participants[:MAX_PARTICIPANTS] if isinstance(p, dict)]


def origin_feeds(answer) -> FrozenSet[int]:
    """
    Read the feeds to forward from the origin's listparticipants answer.

    A participant that publishes (``publisher`` true), is not itself a remote publisher and not
    a dummy; ids that are not positive integers are left out.
    """
    feeds = set()
    for participant in _participants(answer):
        if participant.get('publisher') is not True or participant.get('remote') is True \
                or participant.get('dummy') is True:
            continue
        feed = _feed_id(participant.get('id'))
        if feed is not None:
            feeds.add(feed)
    return frozenset(feeds)


def edge_remotes(answer) -> FrozenSet[int]:
    """
    Read the remote publishers an edge has from its listparticipants answer.

    Only participants marked ``remote`` count: a robot publishing straight to an edge is not
    the forwarder's to remove.
    """
    return frozenset(feed for feed in (_feed_id(p.get('id')) for p in _participants(answer)
                                       if p.get('remote') is True) if feed is not None)


def remote_ids(answer) -> FrozenSet[str]:
    """Read the remote_ids of a feed's remotizations from a listremotes answer (``list``)."""
    if not isinstance(answer, dict) or not isinstance(answer.get('list'), list):
        return frozenset()
    return frozenset(entry['remote_id'] for entry in answer['list'][:MAX_REMOTES]
                     if isinstance(entry, dict) and isinstance(entry.get('remote_id'), str)
                     and len(entry['remote_id']) <= 64)


def feed_streams(streams) -> Optional[Tuple[Stream, ...]]:
    """
    Read a feed's streams from a subscriber's ``attached`` event (its ``streams`` list).

    Each entry names the publisher's mid (``feed_mid``), the medium and its codec; the
    subscription lists the feed's streams in the publisher's order, so the position is the
    publisher's mindex (Janus numbers a remote publisher's SSRCs by it). None when there is
    nothing forwardable or anything is odd (the feed is probed again next round).
    """
    if not isinstance(streams, list) or not 0 < len(streams) <= MAX_STREAMS:
        return None
    found = []
    for mindex, entry in enumerate(streams):
        if not isinstance(entry, dict):
            return None
        kind, mid, codec = entry.get('type'), entry.get('feed_mid'), entry.get('codec')
        if kind not in ('audio', 'video') or not isinstance(mid, str) \
                or not MID_PATTERN.match(mid) or codec not in CODECS:
            return None
        found.append(Stream(kind, mid, mindex, codec))
    if len({s.mid for s in found}) != len(found):
        return None
    return tuple(found)


def plan(room: int, feeds: Optional[Mapping[int, Optional[FrozenSet[str]]]],
         edges: Mapping[str, Optional[FrozenSet[int]]],
         streams: Mapping[int, Tuple[Stream, ...]]) -> List[object]:
    """
    Say what makes every edge carry exactly the origin's feeds of ``room``.

    ``feeds``: the origin's feeds, each with the remote_ids of its remotizations (None: its
    listremotes could not be read); None if the origin could not be read (then nothing is
    done: an empty room and an unreadable one must not look alike). ``edges``: per configured
    edge, the remote publishers it has (None: unreadable this round). ``streams``: what
    probes learnt, per feed.

    Per feed and edge: both halves there, nothing to do; neither, link; only the edge's
    remote publisher (a link half made, or an origin that restarted), remove it and link; only
    the origin's remotization (an edge that restarted), stop it and link. Remote publishers
    of feeds the origin no longer has are removed; this forwarder's remotizations to edges no
    longer configured are stopped.
    """
    if feeds is None:
        return []
    actions: List[object] = []
    for feed in sorted(feeds):
        remotes = feeds[feed]
        known = streams.get(feed)
        if known is None:
            actions.append(Probe(room, feed))
        if remotes is None:
            continue
        for edge in sorted(edges):
            has = edges[edge]
            if has is None:
                continue
            on_edge, forwarded = feed in has, remote_id(edge) in remotes
            if on_edge and forwarded:
                continue
            if known is None:
                continue        # linked once the probe says what the feed carries
            if on_edge:
                actions.append(RemoveRemote(room, feed, edge))
            if forwarded:
                actions.append(Unforward(room, feed, edge))
            actions.append(Link(room, feed, edge, known))
        for stale in sorted(remotes):
            if stale.startswith(REMOTE_PREFIX) and stale[len(REMOTE_PREFIX):] not in edges:
                actions.append(Unforward(room, feed, stale[len(REMOTE_PREFIX):]))
    for edge in sorted(edges):
        for feed in sorted(edges[edge] or ()):
            if feed not in feeds:
                actions.append(RemoveRemote(room, feed, edge))
    return actions


def forget(streams: Dict[int, Tuple[Stream, ...]], feeds: Iterable[int]):
    """Drop what probes learnt about feeds the origin no longer has (bounds the cache)."""
    keep = set(feeds)
    for feed in [f for f in streams if f not in keep]:
        del streams[feed]
