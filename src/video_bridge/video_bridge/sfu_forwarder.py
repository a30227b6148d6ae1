"""
The cloud's SFU forwarder: keeps every robot's feed on every edge Janus node, by itself.

Runs on the cloud side (it holds the VideoRoom ``admin_key``, which robots and pages never
get), next to Janus: ``python3 -m video_bridge.sfu_forwarder --config FILE`` (console script
``sfu_forwarder``). Needs aiohttp and PyYAML only, no ROS: the Janus API client is
:mod:`video_bridge.net.janus_api`, the decisions are :mod:`video_bridge.core.sfu_forwarding`.

Every ``poll_interval`` (1 s) it reads, per configured room, the origin's participants and each
feed's remotizations, and each edge's remote publishers; :func:`sfu_forwarding.plan` says
what to make or remove, and this module makes the requests. A feed new to it is probed once
(a subscription on the origin, left before any media) for its codec and mids, so whatever
the robot publishes is forwarded as it is.

Bounded and robust: one Janus session per node, each request with a deadline
(``request_timeout``); a node that fails (restart, network) is left alone for a backoff
(1 s doubling to ``backoff_max``) and then reconnected, while the other nodes carry on; at
most ``MAX_ACTIONS`` requests of changes per round. Secrets (the token secret, the admin key,
each room's secret and pin) come from files, never the command line or the config itself.
"""

import argparse
import asyncio
from dataclasses import dataclass
import logging
import signal
import time
from typing import Dict, Optional, Tuple

from video_bridge.core import sfu as sfu_core, sfu_forwarding as plan_core
from video_bridge.core.secret_file import exposure_warning, read_secret_file
from video_bridge.net.janus_api import JanusError, JanusSession

MAX_ACTIONS = 64                 # change requests per round (the rest wait for the next)
MAX_ROOMS = 64
MAX_EDGES = 16
WARN_EVERY = 60.0                # s between two warnings of one repeating failure
MAX_WARNED = 1024                # failures remembered for that
KEEPALIVE = 25.0
LOG = logging.getLogger('video_bridge.sfu_forwarder')


@dataclass(frozen=True)
class Edge:
    """An edge node: its name (in remote_ids), Janus API URL, and the address for its RTP."""

    name: str
    url: str
    address: str        # the edge binds its remote publishers' RTP here; the origin sends to it


@dataclass(frozen=True)
class Room:
    """A robot's room and its secrets (read from files)."""

    room: int
    secret: str
    pin: str = ''


@dataclass(frozen=True)
class ForwarderConfig:
    """What the forwarder watches and where it forwards to (deploy/cloud/sfu-forwarder.yaml)."""

    origin_url: str
    edges: Tuple[Edge, ...]
    rooms: Tuple[Room, ...]
    admin_key: str
    token_secret: str = ''
    poll_interval: float = 1.0
    request_timeout: float = 5.0
    backoff_max: float = 10.0
    token_ttl: float = 60.0


def _url(value, what: str) -> str:
    if not isinstance(value, str) or not value.startswith(('ws://', 'wss://')) \
            or len(value) > 500:
        raise ValueError(f'{what} must be a ws:// or wss:// URL (the Janus websocket API)')
    return value


def _number(raw: dict, key: str, default: float, low: float, high: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= value <= high:
        raise ValueError(f'{key} must be a number from {low} to {high}')
    return float(value)


def load_config(raw) -> ForwarderConfig:
    """Check a parsed config file; read the secrets its ``*_file`` keys name."""
    if not isinstance(raw, dict):
        raise ValueError('the config must be a mapping')
    origin = raw.get('origin')
    if not isinstance(origin, dict):
        raise ValueError('origin: {url: ...} is required')
    edges = raw.get('edges')
    if not isinstance(edges, list) or not 0 < len(edges) <= MAX_EDGES:
        raise ValueError(f'edges: a list of 1 to {MAX_EDGES} nodes is required')
    parsed_edges = []
    for index, edge in enumerate(edges):
        if not isinstance(edge, dict) or not plan_core.valid_name(edge.get('name')):
            raise ValueError(f'edges[{index}].name: 1-32 of a-z, 0-9 and -, is required')
        address = edge.get('address')
        if not isinstance(address, str) or not 0 < len(address) <= 255:
            raise ValueError(f'edges[{index}].address (its RTP address) is required')
        parsed_edges.append(Edge(edge['name'], _url(edge.get('url'), f'edges[{index}].url'),
                                 address))
    if len({e.name for e in parsed_edges}) != len(parsed_edges):
        raise ValueError('edges: names must differ')
    rooms = raw.get('rooms')
    if not isinstance(rooms, list) or not 0 < len(rooms) <= MAX_ROOMS:
        raise ValueError(f'rooms: a list of 1 to {MAX_ROOMS} rooms is required')
    parsed_rooms = []
    for index, room in enumerate(rooms):
        number = room.get('room') if isinstance(room, dict) else None
        if isinstance(number, bool) or not isinstance(number, int) \
                or not 0 < number <= plan_core.MAX_FEED_ID:
            raise ValueError(f'rooms[{index}].room: a positive integer is required')
        if not isinstance(room.get('secret_file'), str):
            raise ValueError(f'rooms[{index}].secret_file is required')
        pin = ''
        if room.get('pin_file'):
            pin = _secret(room['pin_file'], f'rooms[{index}].pin_file')
        parsed_rooms.append(Room(number, _secret(room['secret_file'],
                                                 f'rooms[{index}].secret_file'), pin))
    if len({r.room for r in parsed_rooms}) != len(parsed_rooms):
        raise ValueError('rooms: ids must differ')
    if not isinstance(raw.get('admin_key_file'), str):
        raise ValueError('admin_key_file is required (the VideoRoom admin_key)')
    token_secret = ''
    if raw.get('token_secret_file'):
        token_secret = _secret(raw['token_secret_file'], 'token_secret_file')
    return ForwarderConfig(
        origin_url=_url(origin.get('url'), 'origin.url'), edges=tuple(parsed_edges),
        rooms=tuple(parsed_rooms), admin_key=_secret(raw['admin_key_file'], 'admin_key_file'),
        token_secret=token_secret,
        poll_interval=_number(raw, 'poll_interval', 1.0, 0.1, 60.0),
        request_timeout=_number(raw, 'request_timeout', 5.0, 0.5, 30.0),
        backoff_max=_number(raw, 'backoff_max', 10.0, 1.0, 300.0))


def _secret(path: str, what: str) -> str:
    warning = exposure_warning(path, what)
    if warning:
        LOG.warning('%s', warning)
    return read_secret_file(path, what)


@dataclass(frozen=True)
class _SessionSettings:
    """What :class:`JanusSession` needs to know of a node."""

    url: str
    request_timeout: float
    keepalive: float = KEEPALIVE


class Node:
    """One Janus node: a session with the VideoRoom attached, reconnected after a backoff."""

    def __init__(self, name: str, url: str, config: ForwarderConfig,
                 clock=time.monotonic):
        self.name = name
        self.config = config
        self.settings = _SessionSettings(url, config.request_timeout)
        self.clock = clock
        self.janus: Optional[JanusSession] = None
        self.handle = None
        self.delay = 1.0
        self.retry_at = 0.0
        self.up = False
        self._connecting: Optional[asyncio.Task] = None

    def _token(self) -> Optional[str]:
        if not self.config.token_secret:
            return None
        return sfu_core.session_token(self.config.token_secret, time.time(),
                                      self.config.token_ttl)

    def alive(self) -> bool:
        """Tell whether the node's session is open (requests may go out)."""
        return self.janus is not None and not self.janus.closed.is_set()

    def connecting(self) -> Optional[asyncio.Task]:
        """
        Start connecting if the node has no session and its backoff is over; the task.

        The connection is made in a task of its own, so a node that does not answer (its
        connect waits ``request_timeout``) holds up no round: the round waits for it at most
        a poll interval, and uses it from the round after it is up.
        """
        if self._connecting is None and not self.alive() and self.clock() >= self.retry_at:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        return self._connecting

    async def _connect(self):
        try:
            if self.janus is not None:      # Janus went away under the session
                await self.fail('its session closed')
                if self.clock() < self.retry_at:
                    return
            janus = JanusSession(self.settings, self._token, LOG)
            try:
                await janus.connect()
                handle = await janus.attach(sfu_core.VIDEOROOM)
            except (JanusError, ConnectionError, asyncio.TimeoutError, OSError, KeyError,
                    TypeError) as exc:
                await janus.close()
                self._back_off(f'{type(exc).__name__}: {exc}'[:200])
                return
            self.janus, self.handle = janus, handle
            if not self.up:
                LOG.info('sfu_forwarder: connected to %s (%s)', self.name, self.settings.url)
            self.up = True
            self.delay = 1.0
        finally:
            self._connecting = None

    def _back_off(self, why: str):
        if self.up or self.delay == 1.0:
            LOG.warning('sfu_forwarder: %s (%s) unreachable (%s); trying again in %g s',
                        self.name, self.settings.url, why, self.delay)
        self.up = False
        self.retry_at = self.clock() + self.delay
        self.delay = min(self.delay * 2, self.config.backoff_max)

    async def fail(self, why: str):
        """Drop the session (Janus restarted, the network broke); reconnect after a backoff."""
        janus, self.janus, self.handle = self.janus, None, None
        if janus is not None:
            await janus.close()
        self._back_off(why)

    async def call(self, body: dict) -> dict:
        """One VideoRoom request; JanusError if refused, ConnectionError if the node is gone."""
        if self.janus is None:
            raise ConnectionError(f'{self.name} not connected')
        try:
            data, _ = await self.janus.message(self.handle, body)
        except (ConnectionError, asyncio.TimeoutError, OSError) as exc:
            await self.fail(f'{type(exc).__name__}: {exc}'[:200])
            raise ConnectionError(f'{self.name}: {exc}') from None
        return data

    async def probe(self, room: Room, feed: int):
        """Subscribe to ``feed`` on a handle of its own, read its streams, leave at once."""
        if self.janus is None:
            raise ConnectionError(f'{self.name} not connected')
        join = {'request': 'join', 'ptype': 'subscriber', 'room': room.room,
                'streams': [{'feed': feed}]}
        if self.config.token_secret:
            join['token'] = sfu_core.room_grant(self.config.token_secret, room.room,
                                                time.time(), self.config.token_ttl).room_token
        if room.pin:
            join['pin'] = room.pin
        try:
            handle = await self.janus.attach(sfu_core.VIDEOROOM)
            try:
                data, _ = await self.janus.message(handle, join)
            finally:
                await self.janus.detach(handle)
        except (ConnectionError, asyncio.TimeoutError, OSError) as exc:
            await self.fail(f'{type(exc).__name__}: {exc}'[:200])
            raise ConnectionError(f'{self.name}: {exc}') from None
        return plan_core.feed_streams(data.get('streams'))

    async def close(self):
        """Stop connecting; close the session."""
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.wait([self._connecting])
        if self.janus is not None:
            await self.janus.close()
            self.janus = None


class Forwarder:
    """The rounds: read the nodes, plan, make the changes."""

    def __init__(self, config: ForwarderConfig):
        self.config = config
        self.origin = Node('origin', config.origin_url, config)
        self.edges = {e.name: Node(e.name, e.url, config) for e in config.edges}
        self.edge_config = {e.name: e for e in config.edges}
        self.streams: Dict[int, Dict[int, tuple]] = {r.room: {} for r in config.rooms}
        self.rooms = {r.room: r for r in config.rooms}
        self._warned: Dict[tuple, float] = {}    # what was logged when (bounded below)

    async def run(self, stop: asyncio.Event):
        """Round after round until ``stop`` is set."""
        LOG.info('sfu_forwarder: rooms %s from %s to %s', sorted(self.rooms),
                 self.config.origin_url, ', '.join(f'{e.name} ({e.url})'
                                                   for e in self.config.edges))
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self.one_round()
                except Exception:   # a bug must not end the forwarding: log it, go on
                    LOG.exception('sfu_forwarder: round failed')
                wait = max(0.0, self.config.poll_interval - (time.monotonic() - started))
                try:
                    await asyncio.wait_for(stop.wait(), wait)   # the poll period
                except asyncio.TimeoutError:
                    pass
        finally:
            for node in (self.origin, *self.edges.values()):
                await node.close()

    async def one_round(self):
        """One round over every room; a node that fails is skipped until its backoff ends."""
        nodes = (self.origin, *self.edges.values())
        connecting = [task for task in (node.connecting() for node in nodes) if task]
        if connecting:   # bounded: a slow node is used from a later round
            await asyncio.wait(connecting, timeout=self.config.poll_interval)
        budget = MAX_ACTIONS
        for room in self.config.rooms:
            feeds = await self._origin_feeds(room) if self.origin.alive() else None
            names = list(self.edges)    # the edges are read side by side: a slow one stalls
            remotes = await asyncio.gather(*(   # the round once, not once per edge
                self._edge_remotes(self.edges[name], room) for name in names))
            edges = dict(zip(names, remotes))
            if feeds is not None:
                plan_core.forget(self.streams[room.room], feeds)
            for action in plan_core.plan(room.room, feeds, edges, self.streams[room.room]):
                if budget <= 0:
                    return
                budget -= 1
                await self._do(room, action)

    async def _read(self, node: Node, body: dict) -> Optional[dict]:
        if not node.alive():
            return None
        try:
            return await node.call(body)
        except ConnectionError:
            return None
        except JanusError as exc:
            self._warn((node.name, body.get('request'), body.get('room')),
                       'sfu_forwarder: %s refused %s in room %s: %s', node.name,
                       body.get('request'), body.get('room'), exc.reason)
            return None

    async def _origin_feeds(self, room: Room):
        answer = await self._read(self.origin, {'request': 'listparticipants',
                                                'room': room.room})
        if answer is None:
            return None
        feeds = {}
        for feed in plan_core.origin_feeds(answer):
            remotes = await self._read(self.origin, {
                'request': 'listremotes', 'room': room.room, 'publisher_id': feed,
                'secret': room.secret})
            feeds[feed] = None if remotes is None else plan_core.remote_ids(remotes)
        return feeds

    async def _edge_remotes(self, node: Node, room: Room):
        if not node.alive():
            return None
        answer = await self._read(node, {'request': 'listparticipants', 'room': room.room})
        return None if answer is None else plan_core.edge_remotes(answer)

    async def _do(self, room: Room, action):
        try:
            if isinstance(action, plan_core.Probe):
                streams = await self.origin.probe(room, action.feed)
                if streams is not None:     # learnt once per feed: warned once per feed
                    self.streams[room.room][action.feed] = streams
                    if any(s.codec == 'h264' for s in streams):
                        LOG.warning('sfu_forwarder: feed %s in room %s is H.264: Janus 1.1.2 '
                                    'offers a forwarded H.264 feed without its fmtp line, '
                                    'which browsers refuse; publish VP8 to rooms with edges',
                                    action.feed, room.room)
            elif isinstance(action, plan_core.Link):
                await self._link(room, action)
            elif isinstance(action, plan_core.Unforward):
                await self.origin.call({
                    'request': 'unpublish_remotely', 'room': room.room,
                    'publisher_id': action.feed, 'remote_id': plan_core.remote_id(action.edge),
                    'secret': room.secret, 'admin_key': self.config.admin_key})
                LOG.info('sfu_forwarder: room %s: feed %s no longer forwarded to %s',
                         room.room, action.feed, action.edge)
            elif isinstance(action, plan_core.RemoveRemote):
                await self.edges[action.edge].call({
                    'request': 'remove_remote_publisher', 'room': room.room,
                    'id': action.feed, 'secret': room.secret,
                    'admin_key': self.config.admin_key})
                LOG.info('sfu_forwarder: room %s: remote publisher %s removed from %s',
                         room.room, action.feed, action.edge)
        except (JanusError, ConnectionError) as exc:
            self._warn((room.room, type(action).__name__, getattr(action, 'edge', '')),
                       'sfu_forwarder: room %s: %s failed (%s); next round tries again',
                       room.room, type(action).__name__, exc)

    def _warn(self, key: tuple, message: str, *args):
        """Log a failure that repeats every round at most once a minute per kind."""
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_EVERY) < WARN_EVERY:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned[key] = now
        LOG.warning(message, *args)

    async def _link(self, room: Room, action):
        edge = self.edge_config[action.edge]
        added = await self.edges[action.edge].call({
            'request': 'add_remote_publisher', 'room': room.room, 'id': action.feed,
            'secret': room.secret, 'admin_key': self.config.admin_key,
            'display': f'feed {action.feed} via the origin', 'iface': edge.address,
            'streams': [s.request() for s in action.streams]})
        ports = {}
        for key in ('port', 'rtcp_port'):
            value = added.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
                if key == 'port':
                    raise JanusError(None, f'{action.edge} answered no usable port')
                continue
            ports[key] = value
        await self.origin.call({
            'request': 'publish_remotely', 'room': room.room, 'publisher_id': action.feed,
            'remote_id': plan_core.remote_id(action.edge), 'host': edge.address,
            'secret': room.secret, 'admin_key': self.config.admin_key, **ports})
        LOG.info('sfu_forwarder: room %s: feed %s forwarded to %s (%s)', room.room,
                 action.feed, action.edge, ', '.join(s.codec for s in action.streams))


def main(argv=None):
    """Run the forwarder until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog='sfu_forwarder',
        description="Keep every robot's feed on every edge Janus node (VideoRoom remote "
                    'publishers), from the origin node robots publish to.')
    parser.add_argument('--config', required=True, help='the YAML config '
                        '(deploy/cloud/sfu-forwarder.yaml)')
    parser.add_argument('--log-level', default='INFO')
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format='%(asctime)s %(levelname)s %(message)s')
    import yaml
    try:
        with open(args.config, encoding='utf-8') as handle:
            config = load_config(yaml.safe_load(handle.read(256 * 1024)))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        parser.exit(2, f'sfu_forwarder: {args.config}: {exc}\n')

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Forwarder(config).run(stop)

    asyncio.run(run())
    LOG.info('sfu_forwarder: stopped')


if __name__ == '__main__':
    main()
