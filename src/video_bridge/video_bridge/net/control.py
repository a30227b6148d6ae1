"""
The control service: browser commands to the teleop core, its decisions back out.

Transport-independent. A transport (the ``/control`` websocket in :mod:`control_ws`, a WebRTC
data channel) opens a *session* per client with a *sender*, delivers each text message, and
closes the session when the client goes:

    client_id = service.open_session(grant, sender)
    service.deliver(client_id, text)
    service.close_session(client_id)

``sender`` has ``async send(text)`` (or ``send_nowait(text)``), ``close(code, reason)`` and
optionally ``buffered_amount()``. Each session has one writer task and a bounded outbox: replies
in order, and the ``state`` broadcast coalesced (a client only ever gets the newest state, never
a backlog). Every send has a deadline; a client that misses it, or whose unsent data passes
``MAX_UNSENT_BYTES``, is closed. Nothing one client does makes another client wait: the core
runs synchronously on ``deliver``, and publishing cmd_vel never waits on any socket.

Messages whose ``type`` starts with ``webrtc_`` go to a pluggable ``signalling`` object
(``handle(client_id, grant, message)``, ``disconnect(client_id)``), after the same size and
rate checks; ``sfu_`` messages likewise to ``sfu`` (:mod:`video_bridge.net.sfu`).
"""

import asyncio
import collections
import inspect
import itertools
import json
import logging
import time
from typing import Callable, Dict, Optional

from video_bridge.core import protocol
from video_bridge.core.access import AccessPolicy
from video_bridge.core.log_budget import LIFECYCLE_BURST, LIFECYCLE_PERIOD, LogBudget
from video_bridge.core.protocol import ErrorCode
from video_bridge.core.rate_limit import ClientBuckets, RateLimiter, Verdict
from video_bridge.core.teleop import Effects, TeleopCore

MAX_UNSENT_BYTES = 256 * 1024
SIGNALLING_PREFIX = 'webrtc_'
SFU_PREFIX = 'sfu_'
CLOSE_SLOW = protocol.CLOSE_POLICY
STATE_PERIOD = 0.2  # s: velocity-only state broadcasts at most this often
# Sessions handed the new state per loop iteration. Each one costs a websocket frame and a TLS
# record in the next iteration (40-80 us each on a busy 2-core machine): 8 keep an iteration
# under a millisecond, so a driver's command, read between two batches, never waits behind the
# whole fan-out (300 watchers in 64s: 5 ms stretches, the soak's command p99 7 ms).
BROADCAST_BATCH = 8


class _Session:
    """
    One control client: its grant, sender, rate limiter and outbox.

    Most sessions of a busy bridge are idle watchers, so an idle one holds as little as it can:
    the replies' deque lives only while replies wait, and the writer's wait and :meth:`drained`
    are plain futures made when they are awaited (an ``asyncio.Event`` holds an empty deque of
    760 bytes from the start), and it has slots, not a ``__dict__``.
    """

    __slots__ = ('client_id', 'grant', 'sender', 'limiter', 'client_key', 'replies',
                 'queued_bytes', 'state', 'pending', 'closed', 'closing', 'writer', '_work',
                 '_drained')

    def __init__(self, client_id: str, grant, sender, limiter: RateLimiter):
        self.client_id = client_id
        self.grant = grant
        self.sender = sender
        self.limiter = limiter
        self.client_key = None   # who it counts for in the per-client rate limit
        self.replies: Optional[collections.deque] = None   # made with a reply, dropped once sent
        self.queued_bytes = 0
        self.state: Optional[str] = None  # newest state text not yet sent
        self.pending = False  # the writer has something to do (or, closed, to stop)
        self.closed = False
        self.closing = None  # (code, reason) to close with once the queued replies are out
        self.writer: Optional[asyncio.Task] = None
        self._work: Optional[asyncio.Future] = None      # the writer waits on it for work
        self._drained: Optional[asyncio.Future] = None   # flush() waits on it

    def unsent(self) -> int:
        buffered = getattr(self.sender, 'buffered_amount', None)
        return self.queued_bytes + (buffered() if buffered is not None else 0)

    def reply(self, text: str):
        """Queue a reply after the ones before it."""
        if self.replies is None:
            self.replies = collections.deque()
        self.replies.append(text)
        self.queued_bytes += len(text)
        self.wake()

    def wake(self):
        """Give the writer something to do: a reply, a state, or a close."""
        self.pending = True
        if self._work is not None and not self._work.done():
            self._work.set_result(None)

    async def work(self):
        """Wait until :meth:`wake` was called, at once if it was already (the writer's wait)."""
        while not self.pending:
            self._work = asyncio.get_running_loop().create_future()
            try:
                await self._work
            finally:
                self._work = None

    def idle(self):
        """Note that the writer has sent everything; wake whoever waits in :meth:`drained`."""
        self.pending = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def drained(self) -> Optional[asyncio.Future]:
        """Return a future done once the writer has sent everything; None if it has already."""
        if not self.pending:
            return None
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()
        return self._drained


class ControlService:
    """All control sessions of one bridge, around one teleop core."""

    def __init__(self, core: TeleopCore, access: AccessPolicy,
                 publish: Callable[[protocol.Velocity], None],
                 commands_per_second: float = 50.0, command_burst: int = 20,
                 max_message_size: int = protocol.MAX_CONTROL_MESSAGE,
                 logger: Optional[logging.Logger] = None,
                 clock: Callable[[], float] = time.monotonic,
                 send_timeout: float = 5.0,
                 on_estop: Optional[Callable[[bool], None]] = None):
        self.core = core
        self.access = access
        self.publish = publish
        self.commands_per_second = commands_per_second
        self.command_burst = command_burst
        self.max_message_size = max_message_size
        self.send_timeout = send_timeout
        self.log = logger or logging.getLogger('video_bridge.net.control')
        self.clock = clock
        # Watchers coming and going: anyone may open sockets at will; token holders are few
        self.lifecycle_log = LogBudget(self.log, clock, LIFECYCLE_PERIOD, LIFECYCLE_BURST)
        self._dropped = LogBudget(self.log, clock)   # clients dropped for misbehaving
        self.signalling = None
        self.on_estop = on_estop      # told the e-stop state at start and on every change
        self.sfu = None           # sfu_* messages: the same interface as signalling
        self._client_buckets = ClientBuckets(commands_per_second, command_burst)
        self._sessions: Dict[str, _Session] = {}
        self._ids = itertools.count(1)
        self._wake: Optional[asyncio.Event] = None
        self._last_key = None
        self._last_broadcast = -STATE_PERIOD
        self._broadcast_handle: Optional[asyncio.TimerHandle] = None
        self._generation = 0
        self._clock_task: Optional[asyncio.Task] = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self):
        """Start the core's clock on the running loop."""
        self._wake = asyncio.Event()
        self._clock_task = asyncio.get_running_loop().create_task(self._run_clock())
        if self.on_estop is not None:   # latched from the start; then the core's estop effects
            self.on_estop(self.core.state().estop)

    async def stop(self):
        """Publish zero (shutdown) and stop the clock; sessions stay open and keep answering."""
        self.apply(self.core.shutdown(self.clock()))
        if self._clock_task is not None:
            self._clock_task.cancel()

    async def flush(self, timeout: float = 1.0):
        """Wait (bounded) until every session's outbox is sent: each message got its reply."""
        waits = [session.drained() for session in self._sessions.values()]
        waits = [wait for wait in waits if wait is not None]
        if waits:
            await asyncio.wait(waits, timeout=timeout)

    def close_all(self, code: int, reason: str):
        """Ask every transport to close (shutdown)."""
        for session in list(self._sessions.values()):
            self._close(session, code, reason)

    def set_estop(self, engage: bool, source: str) -> protocol.ControlState:
        """Engage or release the e-stop (from the ROS service); runs on the loop."""
        self.apply(self.core.set_estop(engage, source, self.clock()))
        return self.core.state()

    def status(self):
        """Teleop figures for BridgeStatus; runs on the loop."""
        return self.core.status(self.clock())

    # -- sessions -------------------------------------------------------------------------

    def open_session(self, grant, sender, client_id: Optional[str] = None,
                     client_key: Optional[str] = None) -> str:
        """
        Register a client (hello and state are queued to it); return its id.

        ``client_key`` names who it counts for in the per-client rate limit (default: the
        grant's client): all sessions of one client share one budget.
        """
        client_id = client_id or f'c{next(self._ids)}'
        key = client_key or grant.client
        shared = self._client_buckets.acquire(key, self.clock())
        session = _Session(client_id, grant, sender,
                           RateLimiter(self.commands_per_second, self.command_burst,
                                       shared=shared))
        session.client_key = key
        self._sessions[client_id] = session
        session.writer = asyncio.get_running_loop().create_task(self._write(session))
        self.lifecycle_log.info('connected', 'control client %s connected from %s (%s)',
                                client_id, grant.client,
                                'may drive' if grant.drive else 'view only', exempt=grant.drive)
        self.apply(self.core.connect(client_id, grant.drive, grant.token_required,
                                     self.clock()))
        return client_id

    def close_session(self, client_id: str):
        """Forget a client whose transport went away; if it drove, the car stops now."""
        session = self._sessions.pop(client_id, None)
        if session is None:
            return
        self._client_buckets.release(session.client_key)
        session.closed = True
        session.wake()
        self.apply(self.core.disconnect(client_id, self.clock()))
        for plugin in (self.signalling, self.sfu):
            if plugin is not None:
                try:
                    plugin.disconnect(client_id)
                except Exception:  # a plug-in must not keep a session alive
                    self.log.exception('%s.disconnect(%s) failed', type(plugin).__name__,
                                       client_id)
        self.lifecycle_log.info('disconnected', 'control client %s disconnected', client_id,
                                exempt=session.grant.drive)

    def deliver(self, client_id: str, data):
        """Handle one message from a client: checks, the core, effects. Never waits."""
        session = self._sessions.get(client_id)
        if session is None or session.closed:
            return
        now = self.clock()
        obj = None
        try:
            obj = protocol.parse_control_object(data, self.max_message_size)
            request_id, decoded = protocol.decode_control_object(obj) \
                if not self._is_signalling(obj) else (obj.get('id'), None)
        except protocol.ProtocolError as exc:
            request_id, decoded = getattr(exc, 'request_id', None), exc
        # Stopping the car is never rate-limited: a flood must not drop an e-stop.
        stop = isinstance(decoded, protocol.EmergencyStop) and decoded.engage
        verdict = Verdict.ACCEPT if stop else self._admit(session, now)
        if verdict is Verdict.DISCONNECT:
            return
        if verdict is Verdict.REJECT:
            self.apply(self.core.refuse(
                client_id, request_id, ErrorCode.RATE_LIMITED,
                f'more than {self.commands_per_second:g} messages per second'))
        elif isinstance(decoded, protocol.ProtocolError):
            self.apply(self.core.refuse(client_id, request_id, decoded.code, decoded.message))
        elif decoded is None:
            self._signal(session, obj)
        else:
            self.apply(self.core.receive(client_id, request_id, decoded, now))

    def charge(self, client_id: str) -> bool:
        """
        Count a message that never reaches the core against its session's rate limit.

        The data channel drops binary, oversized and non-teleop messages itself; a flood of
        those must cost the flooder its session as a flood of commands does. True: answer it.
        """
        session = self._sessions.get(client_id)
        if session is None or session.closed:
            return False
        return self._admit(session, self.clock()) is Verdict.ACCEPT

    def _admit(self, session: _Session, now: float) -> Verdict:
        verdict = session.limiter.admit(
            now, shared=session.client_id != self.core.state().driver)
        if verdict is Verdict.DISCONNECT:
            self._dropped.warning('rate', 'control client %s kept exceeding %g commands/s; '
                                  'disconnecting it', session.client_id,
                                  self.commands_per_second, exempt=session.grant.drive)
            self._close(session, protocol.CLOSE_RATE_LIMITED, 'too many messages')
        return verdict

    def send(self, client_id: str, message):
        """Queue a message (a dict is JSON-encoded) to one client, e.g. a signalling answer."""
        session = self._sessions.get(client_id)
        if session is not None:
            text = message if isinstance(message, str) else json.dumps(
                message, separators=(',', ':'), allow_nan=False)
            self._queue_reply(session, text)

    def _is_signalling(self, obj: dict) -> bool:
        return self._plugin(obj) is not None

    def _plugin(self, obj: dict):
        """Return the plug-in a message goes to (webrtc_*: signalling, sfu_*: sfu), or None."""
        kind = obj.get('type')
        if not isinstance(kind, str):
            return None
        if kind.startswith(SIGNALLING_PREFIX):
            return self.signalling
        return self.sfu if kind.startswith(SFU_PREFIX) else None

    def _signal(self, session: _Session, obj: dict):
        try:
            result = self._plugin(obj).handle(session.client_id, session.grant, obj)
        except Exception:
            self.log.exception('signalling failed for %s', session.client_id)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    # -- the core's decisions ---------------------------------------------------------------

    def apply(self, effects: Effects):
        """Carry out the core's decisions: publish first, then tell the clients, then log."""
        if effects.publish is not None:
            self.publish(effects.publish)
        if effects.estop is not None and self.on_estop is not None:
            self.on_estop(effects.estop)
        for client_id, message in effects.replies:
            session = self._sessions.get(client_id)
            if session is not None:
                self._queue_reply(session, protocol.encode_control(message, client_id))
        if effects.state_changed:
            self._state_changed()
        for event in effects.events:
            self.log.info('%s', event)
        for client_id, code, reason in effects.disconnect:
            session = self._sessions.get(client_id)
            if session is not None:
                self._close(session, code, reason)
        if self._wake is not None:
            self._wake.set()

    def _state_changed(self):
        """
        Broadcast the state: driver or e-stop changes at once, velocity at most every period.

        The driver has its acks; a driver changing speed 40 times a second in front of 2000
        watchers then costs 2000 x 5 sends a second, not 80,000 (STATE_PERIOD).
        """
        state = self.core.state()
        key = (state.driver, state.estop)
        now = self.clock()
        waited = now - self._last_broadcast
        if key == self._last_key and waited < STATE_PERIOD:
            if self._broadcast_handle is None:
                self._broadcast_handle = asyncio.get_running_loop().call_later(
                    STATE_PERIOD - waited, self._broadcast)
            return
        self._broadcast()

    def _broadcast(self):
        if self._broadcast_handle is not None:
            self._broadcast_handle.cancel()
            self._broadcast_handle = None
        state = self.core.state()
        self._last_key = (state.driver, state.estop)
        self._last_broadcast = self.clock()
        others = protocol.encode_control(state, None)  # you_drive: false, shared by all
        sessions = list(self._sessions.values())
        driver = self._sessions.get(state.driver) if state.driver else None
        if driver is not None:  # the driver first
            sessions.remove(driver)
            sessions.insert(0, driver)
        self._generation += 1
        self._wake_with_state(self._generation, sessions, state, others)

    def _wake_with_state(self, generation: int, sessions: list, state, others: str):
        """
        Hand the state to sessions in batches, one batch per loop iteration.

        With thousands of watchers, a driver's next command is read between two batches
        instead of waiting behind the whole fan-out.
        """
        if generation != self._generation:
            return  # a newer state is on its way to every session
        for session in sessions[:BROADCAST_BATCH]:
            if session.closed:
                continue
            session.state = protocol.encode_control(state, session.client_id) \
                if session.client_id == state.driver else others
            session.wake()
        rest = sessions[BROADCAST_BATCH:]
        if rest:
            asyncio.get_running_loop().call_soon(self._wake_with_state, generation, rest, state,
                                                 others)

    def _queue_reply(self, session: _Session, text: str):
        if session.closed:
            return
        session.reply(text)
        if session.unsent() > MAX_UNSENT_BYTES:
            self._dropped.warning('unread', 'control client %s is not reading its replies; '
                                  'dropping it', session.client_id, exempt=session.grant.drive)
            self._close(session, CLOSE_SLOW, 'not reading replies', at_once=True)

    def _close(self, session: _Session, code: int, reason: str, at_once: bool = False):
        """
        Close a session's transport after its queued replies, or ``at_once``.

        A flooder still learns why it is closed; a client that is not reading gets nothing.
        """
        session.closed = True
        session.state = None
        if at_once or session.writer is None or session.writer.done():
            session.replies = None
            session.queued_bytes = 0
            session.closing = None
            self._close_sender(session, code, reason)
        elif session.closing is None:
            session.closing = (code, reason)
        session.wake()

    def _close_sender(self, session: _Session, code: int, reason: str):
        try:
            session.sender.close(code, reason)
        except Exception:
            self.log.exception('closing control client %s failed', session.client_id)

    async def _write(self, session: _Session):
        """Write a session's outbox: replies in order, then the newest state, with deadlines."""
        sender = session.sender
        send = getattr(sender, 'send', None)
        try:
            while True:
                await session.work()
                while session.replies or (session.state is not None and not session.closed):
                    if session.replies:
                        text = session.replies.popleft()
                        session.queued_bytes -= len(text)
                    else:
                        text, session.state = session.state, None
                    if send is None:
                        sender.send_nowait(text)
                    else:
                        async with asyncio.timeout(self.send_timeout):  # no task per send
                            await send(text)
                    if session.unsent() > MAX_UNSENT_BYTES:
                        raise asyncio.TimeoutError
                session.replies = None   # sent: an idle session keeps no empty deque
                session.idle()
                if session.closing is not None:
                    code, reason = session.closing
                    session.closing = None
                    self._close_sender(session, code, reason)
                if session.closed:
                    return
        except asyncio.TimeoutError:
            self._dropped.warning('deadline', 'control client %s missed the %g s send '
                                  'deadline; dropping it', session.client_id,
                                  self.send_timeout, exempt=session.grant.drive)
            self._close(session, CLOSE_SLOW, 'too slow to read', at_once=True)
        except (ConnectionError, RuntimeError):
            pass  # the transport closed; close_session follows from its handler
        finally:
            session.idle()

    async def _run_clock(self):
        """Tick the core at its deadlines (deadman, republish, ramps), and after each event."""
        while True:
            deadline = self.core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            try:
                async with asyncio.timeout(timeout):  # no task per tick, as wait_for makes
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            effects = self.core.tick(self.clock())
            if effects.publish is not None or effects.replies or effects.events or \
                    effects.state_changed:
                self.apply(effects)
                self._wake.clear()
