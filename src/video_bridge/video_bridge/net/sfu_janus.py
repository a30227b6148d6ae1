"""
Janus as the SFU: the robot publishes each watched stream into its VideoRoom, once.

A thin adapter over two libraries: aiohttp's websocket client speaks the Janus API (the
``janus-protocol`` websocket transport: ``create`` a session, ``attach`` the VideoRoom plugin,
plugin messages, ``keepalive`` within the session timeout), and aiortc makes the
publisher's WebRTC connection, dialling out (the robot may sit behind NAT; Janus in the cloud
answers). What is ours:

* **No extra encode.** The feed is a :class:`video_bridge.net.webrtc.Peer` of the stream, as a
  browser's direct peer is: the same shared encoder per codec and layer, the same pre-packed
  RTP payloads, the same layer choice from the receiver's reports (Janus's, so the robot's
  uplink sets the layer), and PLI/FIR from Janus (a new viewer, a viewer's loss) become the
  same rate-limited keyframe requests on the shared encoder.
* **Access.** With a ``token_auth_secret`` the robot mints its own short-lived token for each
  Janus session (:mod:`video_bridge.core.sfu`), puts it on the room's ``allowed`` list with
  the room secret (only tokens on that list may publish: a viewer's token, good for the same
  room, can subscribe but not publish), and joins with it and the room's pin.
* **Comes back by itself.** Janus gone, the websocket or the media path broken, an error from
  the plugin: the feed is torn down and tried again after a backoff (1 s doubling to 30 s; back
  to 1 s after a publish that lasted). Every request has a deadline; the session is kept
  alive every ``keepalive`` s.

Bounded: one feed per wanted stream (only configured streams, see :mod:`.sfu`); the Janus API
client (:mod:`.janus_api`) holds one pending request per transaction with a deadline, bounds
its messages and keeps only the newest few events.
"""

import asyncio
from dataclasses import dataclass
import logging
import secrets
import time
from typing import Callable, Dict, Optional, Set

from video_bridge.core import codec_registry, encoders, sfu as sfu_core
from video_bridge.core.layers import LayerPolicy
from video_bridge.core.log_budget import LogBudget
from video_bridge.core.streams import StreamHub
from video_bridge.net import rtp_packing, webrtc
# the Janus API client lives in janus_api (the cloud forwarder shares it); named here too
from video_bridge.net.janus_api import CLOSE_TIMEOUT, JanusError, JanusSession  # noqa: F401
from video_bridge.net.send_backlog import SendBacklog

REQUEST_TIMEOUT = 10.0       # s for any Janus API answer
CONNECT_TIMEOUT = 15.0       # s from the publish request to a connected media path
KEEPALIVE = 25.0             # s between keepalives (Janus's session_timeout defaults to 60)
BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0          # s of publishing after which the backoff starts again at its min
STOP_TIMEOUT = 5.0           # s a stopping feed may take to say goodbye to Janus


@dataclass(frozen=True)
class JanusSettings:
    """Where and how the robot publishes (bridge parameters; secrets read from files)."""

    url: str                        # the robot's way in: ws:// or wss://, websocket transport
    room: int
    viewer_url: str = ''            # what pages are told ('' : the same as url)
    token_secret: str = ''          # Janus token_auth_secret ('' : Janus without token_auth)
    room_pin: str = ''
    room_secret: str = ''           # needed to put the robot's token on the allowed list
    codec: str = encoders.H264
    token_ttl: float = sfu_core.TOKEN_TTL
    keepalive: float = KEEPALIVE
    request_timeout: float = REQUEST_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    backoff_min: float = BACKOFF_MIN
    backoff_max: float = BACKOFF_MAX

    def __post_init__(self):
        """Refuse settings that could never publish (a configuration error at start)."""
        for name in ('url', 'viewer_url'):
            value = getattr(self, name)
            if value and not value.startswith(('ws://', 'wss://')):
                raise ValueError(f'sfu: {name} must be a ws:// or wss:// URL (the Janus '
                                 f'websocket transport), not {value[:100]!r}')
        if not 0 < self.room < 2 ** 53:
            raise ValueError('sfu: the Janus room id (sfu_room) must be a positive integer')
        if self.codec not in codec_registry.WEBRTC_CODECS:
            raise ValueError('sfu: the codec must be one of '
                             f'{", ".join(codec_registry.WEBRTC_CODECS)}, not {self.codec!r}')

    def weaknesses(self) -> list:
        """Say what this configuration leaves open (logged at start)."""
        problems = []
        if not self.token_secret:
            problems.append('no token secret (sfu_token_secret_file): the bridge sends Janus '
                            'no tokens, so Janus must have no token_auth, and anyone who '
                            'reaches it may watch and publish')
        elif not self.room_secret:
            problems.append('no room secret (sfu_room_secret_file): the robot cannot keep the '
                            "room's allowed list, so a viewer's token may publish into it")
        if self.url.startswith('ws://') and not self.url.startswith(
                ('ws://127.', 'ws://localhost', 'ws://[::1]')):
            problems.append(f'{self.url} is not TLS: tokens and pins cross the network in '
                            'the clear (use wss://, nginx in front of Janus)')
        return problems


class _PeerHost:
    """What a :class:`webrtc.Peer` asks of its service: a clock, a layer policy, a log."""

    def __init__(self, log: logging.Logger, clock: Callable[[], float]):
        self.log = log
        self.quiet = LogBudget(log, clock)   # what the link provokes: its congestion, say
        self.clock = clock
        self.config = webrtc.WebRtcConfig(policy=LayerPolicy())


class _Feed:
    """One stream's publishing task and what it has published."""

    def __init__(self, name: str):
        self.name = name
        self.task: Optional[asyncio.Task] = None
        self.feed_id = None          # Janus's publisher id while published
        self.published = False
        self.attempts = 0
        self.publishes = 0
        self.peer: Optional[webrtc.Peer] = None
        self.last_error = ''


class JanusPublisher:
    """The :class:`video_bridge.net.sfu.SfuPublisher` for Janus's VideoRoom plugin."""

    def __init__(self, hub: StreamHub, settings: JanusSettings,
                 logger: Optional[logging.Logger] = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.hub = hub
        self.settings = settings
        self.log = logger or logging.getLogger('video_bridge.net.sfu_janus')
        self.clock = clock
        self.wall_clock = wall_clock
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.feeds: Dict[str, _Feed] = {}
        self._host = _PeerHost(self.log, clock)
        self._quiet = LogBudget(self.log, clock)
        self._stopping = False
        self._stoppers = set()      # tasks stopping feeds no longer wanted

    # -- the SfuPublisher protocol -----------------------------------------------------------

    def start(self):
        """Bind to the running loop; say what the configuration leaves open."""
        self.loop = asyncio.get_running_loop()
        for problem in self.settings.weaknesses():
            self.log.warning('sfu: %s', problem)

    async def stop(self):
        """Stop every feed (shutdown)."""
        self._stopping = True
        await self._stop_feeds(list(self.feeds))

    def set_wanted(self, streams: Set[str]):
        """Start feeds of newly wanted streams, stop the ones no longer wanted."""
        if self._stopping or self.loop is None:
            return
        for name in streams:
            if name not in self.feeds:
                feed = self.feeds[name] = _Feed(name)
                feed.task = self.loop.create_task(self._run(feed))
        gone = [name for name in self.feeds if name not in streams]
        if gone:
            task = self.loop.create_task(self._stop_feeds(gone))
            self._stoppers.add(task)
            task.add_done_callback(self._stoppers.discard)

    def notify_frame(self, stream_name: str):
        """Wake a stream's feed on the loop after a new frame (called from the ROS thread)."""
        loop = self.loop
        if loop is not None and not loop.is_closed() and stream_name in self.feeds:
            loop.call_soon_threadsafe(self._wake, stream_name)

    def viewer_access(self, stream_name: str, client_id: str) -> dict:
        """Mint a viewer's token for the room; name the feed a page subscribes to."""
        settings = self.settings
        access = {'server': 'janus', 'url': settings.viewer_url or settings.url,
                  'room': settings.room, 'feed': None}
        feed = self.feeds.get(stream_name)
        if feed is not None and feed.published:
            access['feed'] = feed.feed_id
        if settings.token_secret:
            grant = sfu_core.room_grant(settings.token_secret, settings.room,
                                        self.wall_clock(), settings.token_ttl)
            access.update(token=grant.token, room_token=grant.room_token,
                          expires=grant.expires_at)
        if settings.room_pin:
            access['pin'] = settings.room_pin
        return access

    def counters(self) -> dict:
        """Per feed: published, Janus's feed id, attempts, bytes the robot sent it."""
        return {'feeds': {name: {'published': f.published, 'feed': f.feed_id,
                                 'attempts': f.attempts, 'publishes': f.publishes,
                                 'sent_bytes': f.peer.sent_bytes if f.peer else 0,
                                 'layer': f.peer.chooser.current if f.peer else None,
                                 'error': f.last_error}
                          for name, f in self.feeds.items()}}

    # -- feeds -------------------------------------------------------------------------------

    def _wake(self, stream_name: str):
        feed = self.feeds.get(stream_name)
        if feed is not None and feed.peer is not None:
            feed.peer.wake.set()

    async def _stop_feeds(self, names):
        tasks = []
        for name in names:
            feed = self.feeds.pop(name, None)
            if feed is not None and feed.task is not None:
                feed.task.cancel()
                tasks.append(feed.task)
        if tasks:   # each closes its connections within bounded waits; this bounds them all
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT)

    async def _run(self, feed: _Feed):
        """Publish ``feed`` until cancelled; after any failure, again after a backoff."""
        delay = self.settings.backoff_min
        while True:
            started = self.clock()
            feed.attempts += 1
            try:
                await self._publish(feed)
                feed.last_error = 'janus ended the publication'
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # Janus gone, refused, media failed: try again later
                feed.last_error = f'{type(exc).__name__}: {exc}'[:200]
            self._quiet.warning(f'sfu:{feed.name}', 'sfu: stream %r not published to %s (%s); '
                                'trying again in %g s', feed.name, self.settings.url,
                                feed.last_error, delay)
            if self.clock() - started > STABLE_AFTER:
                delay = self.settings.backoff_min
            await asyncio.sleep(delay)    # the backoff itself, not a synchronisation
            delay = min(delay * 2, self.settings.backoff_max)

    async def _publish(self, feed: _Feed):
        """One publication: session, room, WebRTC; returns or raises when any part ends."""
        settings = self.settings
        stream = self.hub.get(feed.name)
        grant = None
        if settings.token_secret:
            grant = sfu_core.room_grant(settings.token_secret, settings.room,
                                        self.wall_clock(), settings.token_ttl,
                                        publisher_nonce=secrets.token_hex(12))
        # Janus checks the session token on every request, keepalives included: each one
        # gets a fresh token, or the session would end when the first one expires.
        janus = JanusSession(settings, self._session_token if grant else None, self.log)
        peer = handle = None
        try:
            await janus.connect()
            handle = await janus.attach(sfu_core.VIDEOROOM)
            if grant and settings.room_secret:
                for action in ('add', 'enable'):   # only listed tokens may publish
                    await janus.message(handle, {'request': 'allowed', 'room': settings.room,
                                                 'secret': settings.room_secret,
                                                 'action': action,
                                                 'allowed': [grant.room_token]})
            join = {'request': 'join', 'ptype': 'publisher', 'room': settings.room,
                    'display': f'video_bridge {feed.name}'[:64]}
            if grant:
                join['token'] = grant.room_token
            if settings.room_pin:
                join['pin'] = settings.room_pin
            joined, _ = await janus.message(handle, join)
            peer = feed.peer = webrtc.Peer(self._host, f'sfu-{feed.name}', stream,
                                           settings.codec)
            pc = await self._offer(peer)
            configured, jsep = await janus.message(
                handle, {'request': 'publish', 'display': join['display']},
                jsep={'type': 'offer', 'sdp': pc.localDescription.sdp})
            if not jsep or jsep.get('type') != 'answer':
                raise JanusError(None, 'no SDP answer to the publish request')
            from aiortc import RTCSessionDescription
            await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep['sdp'], type='answer'))
            await self._connected(pc, janus)
            feed.feed_id = joined.get('id')
            feed.published = True
            feed.publishes += 1
            self.log.info('sfu: publishing stream %r to %s room %s as feed %s (%s)', feed.name,
                          settings.url, settings.room, feed.feed_id, settings.codec)
            await self._until_broken(pc, janus)
        finally:
            feed.published = False
            if peer is not None:
                peer.close()
                if peer.pc is not None:
                    try:
                        await asyncio.wait_for(peer.pc.close(), CLOSE_TIMEOUT)
                    except (asyncio.TimeoutError, OSError):
                        pass
            await asyncio.shield(self._end(janus, handle, grant))

    def _session_token(self) -> str:
        return sfu_core.session_token(self.settings.token_secret, self.wall_clock(),
                                      self.settings.token_ttl)

    async def _end(self, janus: JanusSession, handle, grant):
        """Take the robot's token off the allowed list (if Janus is still there); close."""
        if handle is not None and grant is not None and self.settings.room_secret and \
                not janus.closed.is_set():
            try:
                await asyncio.wait_for(janus.message(handle, {
                    'request': 'allowed', 'room': self.settings.room, 'action': 'remove',
                    'secret': self.settings.room_secret, 'allowed': [grant.room_token]}),
                    CLOSE_TIMEOUT)
            except (JanusError, ConnectionError, asyncio.TimeoutError, OSError):
                pass    # a list Janus forgets on restart; a stale entry has expired anyway
        await janus.close()

    async def _offer(self, peer: webrtc.Peer):
        """Make the publisher's connection (a direct peer's track, sendonly) and its offer."""
        from aiortc import RTCRtpSender
        pc = peer.pc = webrtc.new_peer_connection()   # Janus's own candidates: no STUN needed
        transceiver = pc.addTransceiver(webrtc._packet_track(peer), direction='sendonly')
        peer.sender = transceiver.sender
        peer.backlog = SendBacklog(peer.sender, webrtc.SEND_BACKLOG_HIGH,
                                   webrtc.SEND_BACKLOG_LOW)
        if rtp_packing.install(peer.sender):
            peer.packer = rtp_packing.PeerPacker(peer.codec)
        transceiver.setCodecPreferences(codec_registry.sdp_preferences(
            peer.codec, RTCRtpSender.getCapabilities('video').codecs))
        # PLI/FIR from Janus -> the shared encoder's rate-limited keyframe; REMB/RR -> layer
        webrtc.WebRtcService._hook_sender(self, peer)
        async with asyncio.timeout(webrtc.GATHER_TIMEOUT):
            await pc.setLocalDescription(await pc.createOffer())
        return pc

    async def _connected(self, pc, janus: JanusSession):
        deadline = self.clock() + self.settings.connect_timeout
        while pc.connectionState != 'connected':
            if pc.connectionState in ('failed', 'closed') or janus.closed.is_set():
                raise ConnectionError(f'media path {pc.connectionState}')
            if self.clock() > deadline:
                raise ConnectionError(f'not connected within {self.settings.connect_timeout} s')
            await self._state_change(pc, janus, deadline - self.clock())

    async def _until_broken(self, pc, janus: JanusSession):
        """Return when the media path fails, the session ends, or Janus hangs up."""
        while True:
            if pc.connectionState in ('failed', 'closed'):
                raise ConnectionError(f'media path {pc.connectionState}')
            if janus.closed.is_set():
                raise ConnectionError('janus session closed')
            while janus.events:
                event = janus.events.popleft()
                if event.get('janus') in ('hangup', 'detached', 'timeout'):
                    raise ConnectionError(f"janus: {event.get('janus')} "
                                          f"{str(event.get('reason', ''))[:100]}")
            await self._state_change(pc, janus, None)

    async def _state_change(self, pc, janus: JanusSession, timeout: Optional[float]):
        """Wait for the connection's state, the session or its events to change."""
        changed = asyncio.Event()
        pc.on('connectionstatechange', changed.set)
        janus.event.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in (changed, janus.closed, janus.event)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            pc.remove_listener('connectionstatechange', changed.set)
