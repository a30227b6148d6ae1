"""
WebRTC edge: one aiortc RTCPeerConnection per peer, fed pre-encoded units from the stream hub.

A thin adapter over aiortc (ICE, DTLS, SRTP, RTP, SCTP are its job). What is ours:

* **Signalling** rides the authenticated ``/control`` session (``webrtc_*`` messages, see
  ``docs/protocol.md``): the page asks with ``webrtc_start``, the bridge offers (so it picks the
  codec and creates the data channel), the page answers, ICE candidates may trickle either way.
  A peer lives only while its control session does, and must be connected within
  ``connect_timeout`` of its offer. The page's candidates are checked
  (:mod:`video_bridge.core.ice`) before aioice may send to them; the library's error texts
  stay in the log, throttled, and exceptions of aiortc's own tasks are caught through the
  loop's exception handler.
* **Video**: the peer's track hands aiortc units that the hub encoded once per stream, codec
  and layer (:mod:`video_bridge.core.streams`), already cut into RTP payloads once for all
  peers (:mod:`video_bridge.net.rtp_packing`). A 2nd or 10th peer adds no encoder. The pure
  :class:`~video_bridge.core.layers.LayerChooser` moves each peer between layers by its REMB /
  receiver-report figures; PLI/FIR become rate-limited keyframe requests on the shared encoder.
* **Teleop** over the peer's data channel (unordered, no retransmits: a stale command is
  worthless) goes into the same control session as the websocket: same teleop core, same
  limits, deadman, driver lock and e-stop. A closed channel stops the car at once; a silent one
  through the deadman.
* **Latency**: for every video unit sent the data channel carries ``{rtp, stamp, received}``,
  so the page maps a displayed frame's RTP timestamp (requestVideoFrameCallback) to the
  frame's ``header.stamp``.

Some aiortc and aioice internals are used on purpose, each guarded and all through
:mod:`.internals` (which says why each is needed): the sender's RTCP and keyframe hooks (PLI/FIR
and REMB, which aiortc otherwise hands only to its own encoders), its last RTP timestamp
(aiortc keeps the random RTP timestamp origin private), its encoder slot (a pass-through for
the shared payloads; without it aiortc packs av.Packets), its header-extension map and round
trip (the playout-delay extension, which aiortc does not know), its SCTP receive window (to bound
what a peer's unfinished messages hold), ICE's local candidates and sockets (to offer only
allowed host addresses), and the selected ICE pair's transport (to skip video while the
uplink is behind: :mod:`.send_backlog`).
"""

import asyncio
from dataclasses import dataclass, field
import fractions
import itertools
import json
import logging
import os
import time
import traceback
from typing import Callable, Dict, Optional, Tuple

from video_bridge.core import encoders, ice, protocol
from video_bridge.core.codec_registry import mime_types, sdp_preferences, WEBRTC_CODECS
from video_bridge.core.layers import LayerChooser, LayerPolicy, LossWindow, RateMeter
from video_bridge.core.log_budget import LIFECYCLE_BURST, LIFECYCLE_PERIOD, LogBudget
from video_bridge.core.protocol import ErrorCode
from video_bridge.core.streams import CapacityError, NotPermitted, StreamHub, UnknownStream
from video_bridge.net import internals, rtp_packing
from video_bridge.net.send_backlog import SendBacklog

MAX_QUEUE = 12            # units waiting for aiortc before the peer restarts at a keyframe
MAX_SDP = protocol.MAX_SDP            # the signalling messages' bounds (core.protocol.signalling)
MAX_CANDIDATE = protocol.MAX_CANDIDATE
MAX_TRICKLED_CANDIDATES = protocol.MAX_TRICKLED_CANDIDATES
CHANNEL_LABEL = protocol.DATA_CHANNEL_LABEL
CHANNEL_TYPES = protocol.DATA_CHANNEL_COMMANDS
CHANNEL_STOP = json.dumps({'type': 'command', 'name': 'stop'})
GATHER_TIMEOUT = 10.0
# s from the offer to connected (ICE and DTLS done) before a peer is closed and its slot freed:
# an offer never answered, or a peer that finishes ICE and never starts DTLS, holds nothing
# longer. Through two TURN relays a browser connects in 1-3 s.
CONNECT_TIMEOUT = 15.0
MIN_START_INTERVAL = 1.0  # s between webrtc_start of one session: each one costs a peer and ICE
CLOSE_TIMEOUT = 2.0
# s between `frame` messages on a peer's data channel (plus one on every keyframe): the page
# extrapolates the frames in between (RTP timestamps are header.stamp on the 90 kHz clock).
# One message per frame cost each peer ~0.4 % of a core in aiortc's Python SCTP.
STAMP_PERIOD = 0.2
# bytes of unfinished data-channel messages aiortc may hold for one peer (it sets no limit)
MAX_CHANNEL_BUFFER = 64 * 1024
# bytes of a peer's media unsent in the bridge (asyncio's buffers) before it skips to a
# keyframe, and what they must drain to first: about 0.25 s of the top layer
SEND_BACKLOG_HIGH = 32 * 1024
SEND_BACKLOG_LOW = 8 * 1024


class PlayoutDelayChoice:
    """
    The playout delay a peer's video packets ask of the browser, by the peer's round trip.

    None at all (min = max = 0, the RTP playout-delay extension, docs/webrtc.md): Chromium then
    shows each frame once it is decoded instead of holding it for its jitter buffer target and
    a smoothed render time, some 25 ms less on a clean link. But a lost packet is repaired one
    round trip later (NACK, resend), and with nothing buffered the picture stands still for
    all of it: on `lte-poor` (2 % loss, ~120 ms round trip) that was 6-18 freezes (> 200 ms
    without a new frame) a minute, against 0-9 without the extension; on `lte` (0.5 %, ~60 ms)
    0-3 either way. So a peer whose smoothed round trip (aiortc's) reaches ``relax`` gets the
    browser's own delay back (min 0, max 10 s, Chromium's default; a maximum over 500 ms
    leaves its low-latency mode): 2-10 freezes a minute there, its buffer holding 31-59 ms;
    and no delay again once the round trip is below ``tighten``.
    """

    ZERO = (0, 0)
    BROWSER = (0, 10000)

    def __init__(self, relax: float = 0.1, tighten: float = 0.08):
        self.relax = relax
        self.tighten = tighten
        self.current = self.ZERO
        self.changes = 0

    def update(self, round_trip: Optional[float]) -> Optional[Tuple[int, int]]:
        """Take the latest smoothed round trip (s); the new (min, max) ms when it changes."""
        if round_trip is None:
            return None
        wanted = self.current
        if self.current == self.ZERO and round_trip >= self.relax:
            wanted = self.BROWSER
        elif self.current == self.BROWSER and round_trip < self.tighten:
            wanted = self.ZERO
        if wanted == self.current:
            return None
        self.current = wanted
        self.changes += 1
        return wanted


@dataclass(frozen=True)
class WebRtcConfig:
    """WebRTC settings of the bridge (ROS parameters of bridge_node)."""

    codecs: Tuple[str, ...] = WEBRTC_CODECS   # preferred first (core.codec_registry names)
    max_peers: int = 20
    max_message_size: int = protocol.MAX_CONTROL_MESSAGE
    policy: LayerPolicy = field(default_factory=LayerPolicy)
    connect_timeout: float = CONNECT_TIMEOUT


class _SessionSignalling:
    """
    The WebRTC side of one control session; it exists exactly while the session does.

    Made when the session sends its first ``webrtc_*`` message (the control service only hands
    over messages of live sessions) and dropped by :meth:`WebRtcService.disconnect`. A start
    that awaits (rate limit, the old peer's close, ICE gathering) looks at it again after each
    await: a session that is ``gone``, or a newer start or stop (``turn``), ends it.
    """

    def __init__(self, client_id: str):
        self.client_id = client_id
        self.gone = False
        self.turn = 0                       # bumped by every start and stop
        self.last_start: Optional[float] = None


# What a page is told when the library refuses its message (the library's words stay in the log)
FAILED_MESSAGES = {
    'webrtc_start': 'the bridge could not make a WebRTC offer',
    'webrtc_answer': 'the bridge could not use this SDP answer; the peer is closed',
    'webrtc_ice': 'the bridge could not use this ICE candidate; the peer is closed',
}


def _signal_error(code: str, message: str) -> protocol.ProtocolError:
    return protocol.ProtocolError(code, message)


class Peer:
    """One browser's peer connection: its layer viewers, its track's queue, its data channel."""

    def __init__(self, service: 'WebRtcService', client_id: str, stream, codec: str,
                 media_on_answer: bool = False):
        self.service = service
        self.client_id = client_id
        self.stream = stream
        self.codec = codec
        self.pc = None
        self.channel = None
        self.sender = None
        self.backlog: Optional[SendBacklog] = None   # with the sender
        self.congestion_skips = 0           # units not sent because the uplink was behind
        now = service.clock()
        self.chooser = LayerChooser(stream.settings.video_bitrates, now, service.config.policy)
        self.losses = LossWindow(service.config.policy.loss_packets)   # receiver reports' loss
        self.viewers: Dict[int, object] = {}
        self.trickled = 0                   # remote candidates taken (answer and webrtc_ice)
        self.offered: Tuple[str, ...] = ()  # addresses of the bridge's own candidates
        self.deadline: Optional[asyncio.TimerHandle] = None   # offer to connected
        self.connected = False
        self.queue = []
        self.need_keyframe = True
        self.wake = asyncio.Event()
        self.closed = False
        self.rtp_origin: Optional[int] = None
        self._last_pts: Optional[int] = None
        self.sent_units = 0
        self.sent_bytes = 0
        self._stamp_sent_at: Optional[float] = None
        self.sent = RateMeter(2.0)          # what this peer actually got lately
        self.packer: Optional[rtp_packing.PeerPacker] = None   # None: aiortc packs av.Packets
        self.playout_delay = False          # its packets carry the playout-delay extension
        self.playout = PlayoutDelayChoice()  # which delay they ask for
        self.round_trip: Optional[float] = None
        self.estimate: Optional[int] = None
        # what happened on this peer's media path (counters(): where frames go on a lossy link)
        self.media = {'nacked': 0, 'retransmitted': 0, 'pli': 0, 'fir': 0, 'keyframes': 0,
                      'keyframe_bytes': 0, 'keyframe_max': 0, 'gap_restarts': 0,
                      'queue_restarts': 0}
        self.media_started = False          # holds a viewer slot and its layer's encoder
        if not media_on_answer:             # else WebRtcService starts it with the answer
            self.start_media()

    def start_media(self):
        """
        Join the stream (a viewer slot, the layer's encoder) once the page has answered.

        Not at the offer: an offer nobody answers then costs no viewer slot, no encoder and no
        encoding, only aiortc's side of the peer until its deadline. The encoder still starts
        while ICE and DTLS run, so the first keyframe is there when the peer connects.
        Raises CapacityError when the hub has no viewer slot left.
        """
        if not self.media_started and not self.closed:
            self.media_started = True
            self._attach(self.chooser.current)

    def _attach(self, layer: int):
        if self.media_started and layer not in self.viewers:
            self.viewers[layer] = self.stream.attach(protocol.Variant(codec=self.codec,
                                                                      layer=layer))

    def _detach_unused(self):
        for layer in list(self.viewers):
            if layer not in self.chooser.layers_in_use():
                self.viewers.pop(layer).detach()

    # -- frames in (hub), units out (aiortc) ------------------------------------------------

    def pull(self):
        """Move new units of the layers in use into the queue (one layer reaches the peer)."""
        now = self.service.clock()
        for layer, viewer in list(self.viewers.items()):
            last = viewer.last_seq
            frames = viewer.take_all()
            if not frames:
                continue
            if layer == self.chooser.current and last and frames[0].seq > last + 1:
                self.media['gap_restarts'] += 1
                self.need_keyframe = True   # units lost to this peer: restart at a keyframe
                viewer.request_keyframe()
            for frame in frames:
                switching = self.chooser.pending == layer
                if not self.chooser.accept(layer, frame.keyframe, now):
                    continue
                if switching:               # the new layer starts here; the old one is done
                    self.queue.clear()
                    self.need_keyframe = False
                if self.need_keyframe and not frame.keyframe:
                    continue
                self.need_keyframe = False
                self.queue.append(frame)
        if self.need_keyframe:
            # Waiting for a keyframe that is not coming: the one made when this peer joined has
            # left the hub's short history while ICE and DTLS took their time (a second or more
            # through relays). Ask now (rate-limited), not at the encoder's own interval (10 s).
            self.request_keyframe()
        self._detach_unused()
        if self.chooser.switch_overdue(now) and self.chooser.pending in self.viewers:
            self.viewers[self.chooser.pending].request_keyframe()
        if len(self.queue) > MAX_QUEUE:     # aiortc is not taking them: skip to a keyframe
            self.media['queue_restarts'] += 1
            self.queue.clear()
            self.need_keyframe = True
            self.request_keyframe()

    def skip_congested(self):
        """Drop what waits (new units too) while the uplink is behind; restart at a keyframe."""
        skipped = len(self.queue)
        self.queue.clear()
        for viewer in self.viewers.values():
            skipped += len(viewer.take_all())
        if skipped and not self.congestion_skips:
            self.service.quiet.warning(
                'congested', 'webrtc peer %s: its uplink is slower than its video (%d bytes '
                'unsent); skipping to keyframes', self.client_id, self.backlog.peak)
        self.congestion_skips += skipped
        self.need_keyframe = True

    def request_keyframe(self):
        """PLI/FIR from the browser, a gap, or a stall: ask the current layer's encoder."""
        viewer = self.viewers.get(self.chooser.current)
        if viewer is not None:
            viewer.request_keyframe()

    async def next_packet(self):
        """Wait for the next unit: its shared RTP payloads, or an av.Packet aiortc packs."""
        while not self.closed:
            congested = self.backlog is not None and self.backlog.congested()
            if congested:
                self.wake.clear()           # look again when the next unit comes
                self.skip_congested()
            elif not self.queue:
                self.wake.clear()
                self.pull()
            if self.queue:
                frame = self.queue.pop(0)
                self._note_timestamp(frame)
                self.sent.add(self.service.clock(), len(frame.data))
                self.sent_units += 1
                if frame.keyframe:
                    media = self.media
                    media['keyframes'] += 1
                    media['keyframe_bytes'] += len(frame.data)
                    media['keyframe_max'] = max(media['keyframe_max'], len(frame.data))
                if self.packer is not None:
                    return self.packer.unit(frame)
                return _av_packet(frame)
            await self.wake.wait()
        raise _media_error()

    def _note_timestamp(self, frame):
        """Learn aiortc's RTP timestamp origin, then tell the page which frame is which."""
        rtp = internals.sender_rtp_timestamp(self.sender)
        if self.rtp_origin is None and rtp and self._last_pts is not None:
            self.rtp_origin = (rtp - self._last_pts) & 0xFFFFFFFF
        self._last_pts = frame.pts
        self.sent_bytes += len(frame.data)
        if self.rtp_origin is None or self.channel is None or \
                self.channel.readyState != 'open':
            return
        now = self.service.clock()
        if not frame.keyframe and self._stamp_sent_at is not None and \
                now - self._stamp_sent_at < STAMP_PERIOD:
            return
        self._stamp_sent_at = now
        header = frame.header
        message = {'type': 'frame', 'rtp': (self.rtp_origin + frame.pts) & 0xFFFFFFFF,
                   'seq': header.seq, 'stamp': header.stamp, 'received': header.received_time,
                   'layer': self.chooser.current, 'bytes': len(frame.data),
                   'sent': self.sent_bytes, 'key': frame.keyframe}
        try:
            self.channel.send(json.dumps(message, separators=(',', ':')))
        except Exception:  # a channel closing under us: the next frame finds it closed
            pass

    # -- feedback (RTCP) --------------------------------------------------------------------

    def feedback(self, estimate: Optional[int] = None, loss: Optional[float] = None):
        """Take a REMB estimate (bit/s) or a receiver report's loss fraction for this peer."""
        if estimate is not None:
            self.estimate = estimate
        now = self.service.clock()
        wanted = self.chooser.update(now, estimate, loss, self.sent.rate(now))
        if wanted is not None:
            self._attach(wanted)            # joining requests the keyframe it needs
            self.wake.set()

    def round_trip_known(self, round_trip: Optional[float]):
        """Take aiortc's smoothed round trip (after a receiver report): choose the delay."""
        self.round_trip = round_trip
        wanted = self.playout.update(round_trip)
        if wanted is not None and self.playout_delay:
            internals.change_playout_delay(self.pc, internals.playout_delay_value(*wanted))
            self.service.quiet.info('playout_delay',
                                    'webrtc peer %s: round trip %.0f ms: playout delay %s',
                                    self.client_id, 1000 * round_trip,
                                    'none' if wanted == PlayoutDelayChoice.ZERO
                                    else "the browser's own")

    def close(self):
        """Leave every layer; the track's recv() ends."""
        self.closed = True
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        for viewer in self.viewers.values():
            viewer.detach()
        self.viewers.clear()
        self.queue.clear()
        self.wake.set()


def _av_packet(frame):
    import av
    packet = av.Packet(frame.data)
    packet.pts = frame.pts
    packet.time_base = fractions.Fraction(1, encoders.CLOCK_RATE)
    return packet


def _media_error():
    from aiortc.mediastreams import MediaStreamError
    return MediaStreamError()


def new_peer_connection(servers=()):
    """
    Make an RTCPeerConnection with exactly these ICE servers (none: host candidates only).

    aiortc reads ``iceServers=None`` as "use mine" and then asks stun.l.google.com: a robot
    would contact a third party nobody configured (and wait for its DNS where there is none).
    max-bundle: video and the data channel share one ICE transport from the start, so a peer
    gathers once (one TURN allocation, one set of sockets), not once per m-line until the
    answer bundles them and drops the second.
    """
    from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection
    return RTCPeerConnection(RTCConfiguration(iceServers=list(servers),
                                              bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


def _packet_track(peer: Peer):
    """Make an aiortc video track whose frames are the peer's pre-encoded units."""
    from aiortc import MediaStreamTrack

    class PacketTrack(MediaStreamTrack):
        kind = 'video'

        async def recv(self):
            return await peer.next_packet()

    return PacketTrack()


class WebRtcService:
    """Every WebRTC peer of one bridge; the control service's ``signalling`` hook."""

    def __init__(self, hub: StreamHub, ice_settings: ice.IceSettings, config: WebRtcConfig,
                 send: Callable[[str, dict], None], deliver: Callable[[str, str], None],
                 resolve_stream: Optional[Callable[[str], object]] = None,
                 charge: Callable[[str], bool] = lambda client_id: True,
                 logger: Optional[logging.Logger] = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.hub = hub
        self.ice = ice_settings
        self.config = config
        self.send = send          # (client_id, message dict) -> queued on the control session
        self.deliver = deliver    # (client_id, text) -> a control message of that session
        self.resolve_stream = resolve_stream
        self.charge = charge      # (client_id) -> counted against its rate limit; True: answer
        self.log = logger or logging.getLogger('video_bridge.net.webrtc')
        self.clock = clock
        self.wall_clock = wall_clock
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.peers: Dict[str, Peer] = {}
        self.codecs = tuple(c for c in config.codecs if encoders.video_available(c) is None)
        try:
            import aiortc  # noqa: F401  (without it: websocket JPEG only, said in webrtc_config)
        except ImportError:
            self.log.warning('aiortc is not installed: WebRTC is off (pip install aiortc)')
            self.codecs = ()
        self._tasks = set()
        self._ids = itertools.count(1)
        self._sessions: Dict[str, _SessionSignalling] = {}
        self.quiet = LogBudget(self.log, clock)   # failures a client can provoke, per kind
        # peers made, changing state and closed: anyone who may watch makes peers at will
        self.lifecycle_log = LogBudget(self.log, clock, LIFECYCLE_PERIOD, LIFECYCLE_BURST)
        self._library_dirs: Tuple[str, ...] = ()
        self._previous_handler = None
        self.offers = 0
        self.connect_timeouts = 0
        self.library_task_errors = 0     # exceptions of aiortc's own tasks, caught
        self._playout_delay_offered = True   # False once an offer could not carry it

    # -- frames from the ROS thread ------------------------------------------------------

    def start(self):
        """Bind to the running loop (frames are handed over to it); catch aiortc's task errors."""
        self.loop = asyncio.get_running_loop()
        self._catch_library_task_errors()
        if self.codecs and not internals.lazy_receive_estimators():
            self.log.info('webrtc: this aiortc (not one net/internals.py was read for) builds a '
                          'receive estimator for every peer: about 1000 objects more each')

    def _catch_library_task_errors(self):
        """
        Log exceptions of aiortc's and aioice's own tasks once per kind and period.

        aiortc runs parts of a connection in tasks nobody awaits (``__connect`` after the
        answer, transports' loops): what a page provokes there surfaced as an unthrottled
        "Task exception was never retrieved" traceback. Those go through this loop's
        exception handler; everything else goes on to the handler that was there before.
        """
        dirs = []
        for name in ('aiortc', 'aioice'):
            try:
                module = __import__(name)
            except ImportError:
                continue
            dirs.append(os.path.dirname(os.path.abspath(module.__file__)) + os.sep)
        self._library_dirs = tuple(dirs)
        if not dirs:
            return
        previous = self._previous_handler = self.loop.get_exception_handler()

        def handler(loop, context):
            if self._library_task_error(context):
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        self.loop.set_exception_handler(handler)

    def _library_task_error(self, context: dict) -> bool:
        """Log (throttled) an aiortc/aioice task's exception; True if it was one."""
        exc = context.get('exception')
        future = context.get('future') or context.get('task')
        if exc is None or not isinstance(future, asyncio.Future):
            return False
        files = []
        coro = future.get_coro() if isinstance(future, asyncio.Task) else None
        code = getattr(coro, 'cr_code', None)
        if code is not None:
            files.append(code.co_filename)
        frames = traceback.extract_tb(exc.__traceback__)
        files += [frame.filename for frame in frames]
        if not any(f.startswith(self._library_dirs) for f in files):
            return False
        where = getattr(code, 'co_qualname', None) or getattr(coro, '__qualname__', '?')
        raised = f'{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}' if frames \
            else '?'
        self.library_task_errors += 1
        self.quiet.warning(f'task:{where}:{type(exc).__name__}',
                           'webrtc: an aiortc task (%s) failed at %s: %s: %s', where, raised,
                           type(exc).__name__, str(exc)[:200])
        return True

    def notify_frame(self, stream_name: str):
        """Wake a stream's peers on the loop after a new frame (called from the ROS thread)."""
        loop = self.loop
        if loop is not None and not loop.is_closed() and self.peers:
            loop.call_soon_threadsafe(self._wake_stream, stream_name)

    def _wake_stream(self, stream_name: str):
        for peer in self.peers.values():
            if peer.stream.name == stream_name:
                peer.wake.set()

    # -- the signalling hook ---------------------------------------------------------------

    def config_message(self, client_id: str, relay: bool = True) -> protocol.WebRtcConfigReply:
        """
        Build what the page needs to start: codecs offered, ICE servers with credentials.

        TURN servers (and their credentials) only with ``relay`` (the grant's right to relay):
        anyone else would make the operator's TURN server their own relay.
        """
        servers = [server.as_dict() for server in self.ice.servers(client_id, self.wall_clock())
                   if relay or not any(ice.is_turn(url) for url in server.urls)]
        return protocol.WebRtcConfigReply(bool(self.codecs), self.codecs, tuple(servers),
                                          tuple(mime_types(self.codecs).items()))

    def handle(self, client_id: str, grant, message: dict):
        """
        One ``webrtc_*`` message of a control session (already size- and rate-checked).

        Called while the session is alive (the control service delivers nothing else), so the
        session's signalling record is made here, at once; the work is the returned coroutine.
        """
        session = self._sessions.get(client_id)
        if session is None:
            session = self._sessions[client_id] = _SessionSignalling(client_id)
        return self._handle(session, grant, message)

    async def _handle(self, session: _SessionSignalling, grant, message: dict):
        client_id = session.client_id
        kind = str(message.get('type'))[:64]
        request_id = protocol.signalling_request_id(message)
        peer = self.peers.get(client_id)   # the peer an answer or a candidate is about
        try:
            if not getattr(grant, 'view', True):
                raise _signal_error(ErrorCode.UNAUTHORIZED, 'watching needs a token')
            request_id, request = protocol.decode_signalling(message)
            if isinstance(request, protocol.WebRtcConfigRequest):
                reply = self.config_message(client_id, getattr(grant, 'relay', True))
            elif isinstance(request, protocol.WebRtcStart):
                reply = await self._start(session, request,
                                          getattr(grant, 'topic_streams', True))
            elif isinstance(request, protocol.WebRtcAnswer):
                reply = await self._answer(client_id, request)
            elif isinstance(request, protocol.WebRtcCandidate):
                reply = await self._candidate(client_id, request)
            else:                                   # WebRtcStop
                session.turn += 1                   # a start under way ends too
                await self._close(client_id)
                reply = protocol.WebRtcStopped()
        except protocol.ProtocolError as exc:
            reply = protocol.WebRtcError(exc.code, exc.message)
        except Exception as exc:  # aiortc refusing an SDP, say: log it, keep serving
            # The library's words stay in the log (throttled): they describe the bridge's
            # internals, not the page's mistake, and a client could provoke them at will.
            self.quiet.warning(f'{kind}:{type(exc).__name__}',
                               'webrtc: %s from %s failed: %s: %s', kind, client_id,
                               type(exc).__name__, str(exc)[:200])
            if kind in ('webrtc_answer', 'webrtc_ice') and peer is not None:
                await self._close_peer(peer)   # that peer is unusable; a newer one is not
            reply = protocol.WebRtcError(
                ErrorCode.WEBRTC_FAILED, FAILED_MESSAGES.get(kind, 'the bridge could not do that'))
        if reply is not None:
            self.send(client_id, protocol.encode_signalling(reply, request_id))

    def disconnect(self, client_id: str):
        """Close the peer of a control session that ended, and any start still under way."""
        session = self._sessions.pop(client_id, None)
        if session is not None:
            session.gone = True
            session.turn += 1
        peer = self.peers.get(client_id)
        if peer is not None:
            self._spawn(self._close_peer(peer))

    # -- steps ------------------------------------------------------------------------------

    def _find_stream(self, name: str, topic_streams: bool = True):
        try:
            return self.hub.lookup(name, self.resolve_stream, topic_streams)
        except NotPermitted as exc:
            raise _signal_error(ErrorCode.UNAUTHORIZED, str(exc)) from None
        except UnknownStream:
            raise _signal_error(ErrorCode.UNKNOWN_STREAM, f'unknown stream {name!r}') from None

    def _pick_codec(self, wanted: Optional[Tuple[str, ...]], source: str = '') -> str:
        if not self.codecs:
            raise _signal_error(ErrorCode.WEBRTC_UNAVAILABLE, 'this bridge offers no WebRTC video')
        if wanted is None:
            wanted = self.codecs
        # a stream that already is H.264 offers it first: passed through, nothing encoded
        for codec in sorted(self.codecs, key=lambda c: c != source):
            if codec in wanted:
                return codec
        raise _signal_error(ErrorCode.NO_COMMON_CODEC,
                            f'the bridge encodes {", ".join(self.codecs)}; the page decodes '
                            f'{", ".join(wanted)[:100] or "none"}')

    def _still_wanted(self, session: _SessionSignalling, turn: int,
                      peer: Optional[Peer] = None):
        """After an await in a start: go on only if nothing ended or replaced it meanwhile."""
        if session.gone:
            raise _signal_error(ErrorCode.SUPERSEDED, 'the control session ended')
        if session.turn != turn or (peer is not None and
                                    self.peers.get(session.client_id) is not peer):
            raise _signal_error(ErrorCode.SUPERSEDED,
                                'a newer webrtc_start or webrtc_stop replaced this one')

    async def _start(self, session: _SessionSignalling, request: protocol.WebRtcStart,
                     topic_streams: bool = True) -> protocol.WebRtcOffer:
        client_id = session.client_id
        # At most one start per MIN_START_INTERVAL per session; a newer one supersedes a
        # waiting one (the page only cares about its latest), so a flood costs one peer a second.
        turn = session.turn = session.turn + 1
        last = session.last_start
        if last is not None and self.clock() - last < MIN_START_INTERVAL:
            await asyncio.sleep(MIN_START_INTERVAL - (self.clock() - last))
            self._still_wanted(session, turn)
        session.last_start = self.clock()
        stream = self._find_stream(request.stream, topic_streams)
        codec = self._pick_codec(request.codecs, stream.settings.kind)
        await self._close(client_id)   # one peer per control session: a new start replaces it
        self._still_wanted(session, turn)
        if len(self.peers) >= self.config.max_peers:
            raise _signal_error(ErrorCode.CAPACITY,
                                f'WebRTC peer limit reached ({self.config.max_peers})')
        if self.hub.viewer_count() >= self.hub.max_viewers:   # the peer joins on its answer
            raise _signal_error(ErrorCode.CAPACITY,
                                f'viewer limit reached ({self.hub.max_viewers})')
        peer = Peer(self, client_id, stream, codec, media_on_answer=True)
        # Stored before the first await of its own: the session's disconnect (or a stop, or a
        # newer start) finds it and closes it while it is still being made.
        self.peers[client_id] = peer
        try:
            return await self._offer(session, turn, peer)
        except BaseException:
            await asyncio.shield(self._close_peer(peer))
            raise

    async def _offer(self, session: _SessionSignalling, turn: int,
                     peer: Peer) -> protocol.WebRtcOffer:
        """Make a new peer's connection and its offer; the connect deadline starts with it."""
        from aiortc import RTCIceServer, RTCRtpSender, RTCSessionDescription
        client_id, codec, stream = peer.client_id, peer.codec, peer.stream
        servers = [RTCIceServer(urls=list(s.urls), username=s.username or None,
                                credential=s.credential or None)
                   for s in self.ice.servers(f'bridge-{client_id}', self.wall_clock())]
        pc = peer.pc = new_peer_connection(servers)
        transceiver = pc.addTransceiver(_packet_track(peer), direction='sendonly')
        peer.sender = transceiver.sender
        peer.backlog = SendBacklog(peer.sender, SEND_BACKLOG_HIGH, SEND_BACKLOG_LOW)
        if rtp_packing.install(peer.sender):
            peer.packer = rtp_packing.PeerPacker(codec)
        transceiver.setCodecPreferences(sdp_preferences(
            codec, RTCRtpSender.getCapabilities('video').codecs))
        self._hook_sender(peer)
        channel = peer.channel = pc.createDataChannel(CHANNEL_LABEL, ordered=False,
                                                      maxRetransmits=0)
        self._wire_channel(peer, channel)
        self._bound_channel_buffer(peer)
        # Making a peer and its offer takes milliseconds of Python in aiortc with no await in
        # it: a turn of the loop between the parts, so a driver's command is not held behind a
        # whole offer (what is wanted is checked again after the offer, below).
        await asyncio.sleep(0)

        @pc.on('connectionstatechange')
        async def on_state():
            state = pc.connectionState
            self.lifecycle_log.info(f'state:{state}', 'webrtc peer %s: %s', client_id, state)
            if state == 'connected':
                peer.connected = True
                if peer.deadline is not None:
                    peer.deadline.cancel()
                    peer.deadline = None
            if state in ('failed', 'closed') and self.peers.get(client_id) is peer:
                await self._close_peer(peer, f'connection {state}')

        async with asyncio.timeout(GATHER_TIMEOUT):
            offer = await pc.createOffer()
            sdp = internals.offer_playout_delay(
                pc, offer.sdp, internals.playout_delay_value(*peer.playout.current))
            if sdp is None:
                self._no_playout_delay()
            else:
                offer = RTCSessionDescription(sdp=sdp, type='offer')
            await asyncio.sleep(0)
            await pc.setLocalDescription(offer)
        self._still_wanted(session, turn, peer)
        self._restrict_host_candidates(pc)
        sdp = ice.filter_candidates(pc.localDescription.sdp, self.ice)
        relay_failed = bool(self.ice.turn_urls) and ' typ relay' not in sdp
        if relay_failed:   # aioice drops the reason: name what to check
            self.log.warning('webrtc peer %s: no relay candidate from %s (server unreachable, '
                             'credentials refused, or a turns: certificate this machine does '
                             'not trust)', client_id, ', '.join(self.ice.turn_urls))
        if 'a=candidate:' not in sdp:   # nothing the browser could reach: say so at once
            raise _signal_error(ErrorCode.WEBRTC_UNAVAILABLE, 'the bridge has no ICE candidates '
                                '(no address but loopback, or all filtered) and ' + (
                                    'its TURN server gave no relay candidate' if relay_failed
                                    else 'no TURN server'))
        peer.offered = ice.offered_addresses(sdp)
        timeout = self.config.connect_timeout
        peer.deadline = asyncio.get_running_loop().call_later(
            timeout, self._connect_overdue, peer)
        self.offers += 1
        self.lifecycle_log.info('offer', 'webrtc peer %s: offering %s of stream %r', client_id,
                                codec, stream.name)
        return protocol.WebRtcOffer(sdp, codec, stream.name,
                                    tuple(stream.settings.video_bitrates))

    def _no_playout_delay(self):
        """Say once that this aiortc cannot send the playout-delay extension."""
        if self._playout_delay_offered:
            self._playout_delay_offered = False
            self.log.warning('webrtc: this aiortc (not one net/internals.py was read for) cannot '
                             'send the playout-delay extension: browsers hold frames for their '
                             'own playout delay (some 25 ms more glass-to-glass)')

    def _connect_overdue(self, peer: Peer):
        """Close a peer not connected by its deadline: its slot is free again."""
        peer.deadline = None
        if peer.connected or self.peers.get(peer.client_id) is not peer:
            return
        self.connect_timeouts += 1
        pc = peer.pc
        ice_state = getattr(pc, 'iceConnectionState', '?')
        self.quiet.warning('connect_timeout', 'webrtc peer %s: not connected %g s after its '
                           'offer (signalling %s, ICE %s, connection %s); closing it',
                           peer.client_id, self.config.connect_timeout,
                           getattr(pc, 'signalingState', '?'), ice_state,
                           getattr(pc, 'connectionState', '?'))
        self._spawn(self._close_peer(
            peer, f'not connected within {self.config.connect_timeout:g} s of the offer',
            code=ErrorCode.CONNECT_TIMEOUT))

    def _restrict_host_candidates(self, pc):
        """
        Offer host candidates only on allowed addresses, and use no other host socket either.

        aioice pairs the peer's candidates with every socket it gathered on, offered or not: a
        hidden host address would still send connectivity checks (and then media) from that
        interface, and the peer would learn it as a peer-reflexive candidate. So the sockets
        of disallowed addresses are closed too, unless they carry a kept server-reflexive
        candidate (STUN's mapping is found through its host socket).
        """
        if not self.ice.host_addresses:
            return
        for transceiver in pc.getTransceivers():
            gatherer = transceiver.sender.transport.transport.iceGatherer
            connection = internals.ice_connection(gatherer)
            candidates = internals.local_candidates(connection)
            protocols = internals.stun_protocols(connection)
            if candidates is None:
                continue
            candidates[:] = [c for c in candidates if c.type != 'host'
                             or self.ice.host_address_allowed(c.host)]
            if protocols is None:
                continue
            bases = {(c.related_address, c.related_port) for c in candidates
                     if c.type == 'srflx'}
            for stun in list(protocols):
                local = getattr(stun, 'local_candidate', None)
                if local is None or local.type != 'host' or \
                        self.ice.host_address_allowed(local.host) or \
                        (local.host, local.port) in bases:
                    continue
                protocols.remove(stun)
                stun.transport.close()

    async def _answer(self, client_id: str, request: protocol.WebRtcAnswer):
        from aiortc import RTCSessionDescription
        peer = self._peer(client_id)
        sdp = request.sdp
        if peer.pc.signalingState != 'have-local-offer':
            raise _signal_error(ErrorCode.BAD_STATE, 'no offer is waiting for an answer')
        problem = ice.answer_problem(sdp)
        if problem is not None:
            raise _signal_error(ErrorCode.BAD_ANSWER, f'the SDP answer is incomplete: {problem}')
        # Its candidates pass the same checks as trickled ones, and count against the same cap.
        sdp, refused, count = ice.filter_remote_candidates(sdp, peer.offered)
        if count > MAX_TRICKLED_CANDIDATES:
            raise _signal_error(ErrorCode.TOO_MANY_CANDIDATES, f'at most '
                                f'{MAX_TRICKLED_CANDIDATES} ICE candidates per WebRTC session')
        if refused:
            self.lifecycle_log.info(
                'candidates_not_used', 'webrtc peer %s: %d candidates of its answer not used (%s)',
                client_id, len(refused), '; '.join(refused[:3])[:300])
        await peer.pc.setRemoteDescription(RTCSessionDescription(
            sdp=ice.share_bundle_candidates(sdp), type='answer'))
        peer.trickled = count
        if self.peers.get(client_id) is not peer:   # closed while the answer was being set
            return None
        # before aiortc's sender starts (after ICE and DTLS): from its first packet on
        peer.playout_delay = internals.answer_playout_delay(peer.pc)
        if not peer.playout_delay and self._playout_delay_offered:
            self.lifecycle_log.info(
                'no_playout_delay', 'webrtc peer %s: its answer leaves out the playout-delay '
                'extension (the browser holds frames for its own playout delay)', client_id)
        try:
            peer.start_media()
        except CapacityError as exc:
            await self._close_peer(peer)
            raise _signal_error(ErrorCode.CAPACITY, str(exc)) from None
        return None

    async def _candidate(self, client_id: str, request: protocol.WebRtcCandidate):
        from aiortc.sdp import candidate_from_sdp
        peer = self._peer(client_id)
        candidate = request.candidate
        if candidate is None:
            return None               # end of candidates: aiortc needs no marker
        if peer.trickled >= MAX_TRICKLED_CANDIDATES:
            raise _signal_error(ErrorCode.TOO_MANY_CANDIDATES, f'at most '
                                f'{MAX_TRICKLED_CANDIDATES} ICE candidates per WebRTC session')
        try:
            parsed = candidate_from_sdp(candidate.split(':', 1)[1]
                                        if candidate.startswith('candidate:') else candidate)
        except (ValueError, IndexError):
            raise _signal_error(ErrorCode.BAD_MESSAGE, 'not an ICE candidate') from None
        # Nothing the bridge would not reach anyway: no names (aioice resolves them, mDNS
        # too), no broadcast or multicast, no loopback or link-local it did not offer.
        problem = ice.remote_candidate_problem(parsed.ip, parsed.port, parsed.protocol,
                                               peer.offered)
        if problem is not None:
            raise _signal_error(ErrorCode.CANDIDATE_REFUSED,
                                f'candidate not used: {problem}'[:200])
        # max-bundle: every section shares the first one's transport, so that is where any
        # candidate goes, whichever section the page named
        parsed.sdpMid, parsed.sdpMLineIndex = peer.pc.getTransceivers()[0].mid, 0
        await peer.pc.addIceCandidate(parsed)
        peer.trickled += 1
        return None

    def _peer(self, client_id: str) -> Peer:
        peer = self.peers.get(client_id)
        if peer is None:
            raise _signal_error(ErrorCode.BAD_STATE, 'no WebRTC session: send webrtc_start first')
        return peer

    async def _close(self, client_id: str):
        """Close a session's current peer, if it has one."""
        peer = self.peers.get(client_id)
        if peer is not None:
            await self._close_peer(peer)

    async def _close_peer(self, peer: Peer, reason: Optional[str] = None,
                          code: Optional[str] = None):
        """
        Close one peer and give its slot back; ``reason``: tell its session (webrtc_stopped).

        Only this peer: a newer peer of the same session stays. Safe to call again.
        """
        client_id = peer.client_id
        if self.peers.get(client_id) is peer:
            del self.peers[client_id]
            if reason is not None:
                self.send(client_id, protocol.encode_signalling(
                    protocol.WebRtcStopped(reason, code)))
        if peer.closed:
            return
        peer.close()
        if peer.channel is not None:
            self._channel_closed(peer)
        if peer.pc is not None:
            try:   # bounded: closing a TURN allocation waits on a server that may be gone
                await asyncio.wait_for(peer.pc.close(), CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, OSError):
                self.quiet.warning('unclean_close', 'webrtc peer %s did not close cleanly in '
                                   '%g s', client_id, CLOSE_TIMEOUT)
        self.lifecycle_log.info('closed', 'webrtc peer %s closed', client_id)

    # -- aiortc hooks ----------------------------------------------------------------------

    def _hook_sender(self, peer: Peer):
        """Route PLI/FIR to the shared encoder and REMB / loss to the layer choice."""
        from aiortc.rtp import (RTCP_PSFB_APP, RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK,
                                RtcpPsfbPacket, RtcpRrPacket, RtcpRtpfbPacket, RtcpSrPacket,
                                unpack_remb_fci)
        sender = peer.sender
        media = peer.media

        def on_rtcp(packet):
            try:
                if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                    media['nacked'] += len(packet.lost)
                    media['retransmitted'] += internals.sender_resent(sender, packet.lost)
                elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
                    media['pli'] += 1
                elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_FIR:
                    media['fir'] += 1
                elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                    if internals.sender_ssrc(sender) in ssrcs:
                        peer.feedback(estimate=bitrate)
                elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
                    ssrc = internals.sender_ssrc(sender)
                    for report in packet.reports:
                        if report.ssrc == ssrc:
                            loss = peer.losses.add(report.packets_lost, report.highest_sequence)
                            if loss is not None:
                                peer.feedback(loss=loss)
                            # aiortc's figure up to the report before (it reads this one next)
                            peer.round_trip_known(internals.sender_round_trip(sender))
            except ValueError:
                pass

        if not internals.hook_sender(sender, on_rtcp, peer.request_keyframe):
            self.log.warning('webrtc peer %s: this aiortc has no RTCP hooks: no layer '
                             'choice, keyframes only on their own schedule', peer.client_id)

    def _bound_channel_buffer(self, peer: Peer):
        """
        Close a peer that makes aiortc hold more than MAX_CHANNEL_BUFFER of unfinished messages.

        aiortc keeps every received SCTP chunk until its message is complete (and, on an ordered
        stream, until the messages before it came), with no limit of its own: a peer that
        never finishes a message would grow the bridge's memory without end. A browser sends
        small whole commands (max-message-size is tiny next to this bound). aiortc counts the
        bytes it holds in its receive window; the peer is closed once they pass the bound.
        """
        def on_held(held: int):
            if held > MAX_CHANNEL_BUFFER and self.peers.get(peer.client_id) is peer:
                self.quiet.warning('channel_held', 'webrtc peer %s: %d bytes of unfinished '
                                   'data-channel messages; closing it', peer.client_id, held)
                self._spawn(self._close_peer(peer, 'data channel: too much unfinished data'))

        internals.watch_sctp_held(peer.pc, on_held)

    def _wire_channel(self, peer: Peer, channel):
        limit = self.config.max_message_size

        @channel.on('message')
        def on_message(data):
            if self.peers.get(peer.client_id) is not peer:
                return
            # Junk is dropped here, but counted like any message: a flood of it ends the
            # session (4429) as a flood of commands does.
            if not isinstance(data, str) or len(data) > limit:
                self.charge(peer.client_id)
                return      # binary or oversized: not a command, and never worth an answer
            try:
                kind = json.loads(data).get('type')
            except (ValueError, AttributeError, RecursionError):
                kind = None
            if kind not in CHANNEL_TYPES:
                if not self.charge(peer.client_id):
                    return
                self.send(peer.client_id, protocol.encode_signalling(protocol.WebRtcError(
                    ErrorCode.BAD_CHANNEL_MESSAGE,
                    'the data channel carries teleop commands only')))
                return
            self.deliver(peer.client_id, data)

        @channel.on('close')
        def on_close():
            self._channel_closed(peer)

    def _channel_closed(self, peer: Peer):
        """Stop the car when a channel closes: now, not after the deadman."""
        if getattr(peer, '_stopped', False):
            return
        peer._stopped = True
        try:
            self.deliver(peer.client_id, CHANNEL_STOP)
        except Exception:  # the control session is gone as well: it stopped the car itself
            pass

    def _spawn(self, coroutine):
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self):
        """Close every peer (shutdown); give the loop its exception handler back."""
        for session in self._sessions.values():   # no start under way makes a new peer
            session.gone = True
        await asyncio.gather(*(self._close_peer(peer) for peer in list(self.peers.values())),
                             return_exceptions=True)
        if self._library_dirs and self.loop is not None and not self.loop.is_closed():
            self.loop.set_exception_handler(self._previous_handler)
            self._library_dirs = ()

    def counters(self) -> dict:
        """Figures for /api/streams and the tests: peers, offers, layer per peer."""
        return {'peers': len(self.peers), 'offers': self.offers,
                'connect_timeouts': self.connect_timeouts,
                'codecs': list(self.codecs),
                'layers': {cid: p.chooser.current for cid, p in self.peers.items()},
                'congestion_skips': {cid: p.congestion_skips for cid, p in self.peers.items()},
                'send_backlog_peak': {cid: p.backlog.peak if p.backlog else 0
                                      for cid, p in self.peers.items()},
                # aiortc's smoothed round trip (None until a receiver report measured one)
                'round_trip_ms': {cid: None if p.round_trip is None
                                  else round(1000 * p.round_trip, 1)
                                  for cid, p in self.peers.items()},
                'media': {cid: {**p.media, 'units': p.sent_units, 'bytes': p.sent_bytes,
                                'playout_delay': list(p.playout.current) if p.playout_delay
                                else None, 'playout_delay_changes': p.playout.changes,
                                'layer': p.chooser.current, 'switches': p.chooser.switches,
                                'why': dict(p.chooser.reasons),
                                'estimate': p.estimate}
                          for cid, p in self.peers.items()}}
