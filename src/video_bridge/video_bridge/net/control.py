"""
Control sockets: carry browser commands to the teleop core and its decisions back out.

A thin adapter on the network loop. It authenticates a connection, rate-limits it, decodes each
message with :mod:`video_bridge.core.protocol`, hands it to
:class:`video_bridge.core.teleop.TeleopCore` and carries out the returned effects: publish a
velocity (synchronously, through the callback the ROS adapter gave), answer, broadcast the new
state, log events. The core's clock (deadman and republishing) runs here as one task that sleeps
until the core's next deadline.

Nothing here waits on a slow client: replies are written without awaiting the socket, and a
client whose unsent replies pile up is disconnected.
"""

import asyncio
import itertools
import logging
import time
from typing import Callable, Dict, Optional

from video_bridge.core import protocol
from video_bridge.core.access import AccessPolicy
from video_bridge.core.rate_limit import RateLimiter, Verdict
from video_bridge.core.teleop import Effects, TeleopCore
from video_bridge.net.connection import Connection, ConnectionClosed

MAX_UNSENT_BYTES = 256 * 1024


class ControlService:
    """All control connections of one bridge, around one teleop core."""

    def __init__(self, core: TeleopCore, access: AccessPolicy,
                 publish: Callable[[protocol.Velocity], None],
                 commands_per_second: float = 50.0, command_burst: int = 20,
                 max_message_size: int = protocol.MAX_CONTROL_MESSAGE,
                 logger: Optional[logging.Logger] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.core = core
        self.access = access
        self.publish = publish
        self.commands_per_second = commands_per_second
        self.command_burst = command_burst
        self.max_message_size = max_message_size
        self.log = logger or logging.getLogger('video_bridge.net.control')
        self.clock = clock
        self._clients: Dict[str, Connection] = {}
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._clock_task: Optional[asyncio.Task] = None

    def start(self):
        """Start the core's clock on the running loop."""
        self._clock_task = asyncio.get_running_loop().create_task(self._run_clock())

    async def stop(self):
        """Publish zero (shutdown) and stop the clock; connections are closed by the server."""
        self.apply(self.core.shutdown(self.clock()))
        if self._clock_task is not None:
            self._clock_task.cancel()

    def set_estop(self, engage: bool, source: str) -> protocol.ControlState:
        """Engage or release the e-stop (from the ROS service); runs on the loop."""
        self.apply(self.core.set_estop(engage, source, self.clock()))
        return self.core.state()

    def status(self):
        """Teleop figures for BridgeStatus; runs on the loop."""
        return self.core.status(self.clock())

    async def serve(self, conn: Connection, target: protocol.Target):
        """Serve one control websocket until it closes; the driver's car stops when it does."""
        token = protocol.presented_token(target.query, conn.request.headers)
        problem = self.access.view_problem(token)
        if not conn.accept_websocket():
            return
        if problem:
            self.log.warning('refused control connection from %s: %s', conn.peer, problem)
            await conn.close(protocol.CLOSE_UNAUTHORIZED, problem)
            return
        client_id = f'c{next(self._ids)}'
        self._clients[client_id] = conn
        can_drive = self.access.may_drive(token)
        self.log.info('control client %s connected from %s (%s)', client_id, conn.peer,
                      'may drive' if can_drive else 'view only')
        limiter = RateLimiter(self.commands_per_second, self.command_burst)
        try:
            self.apply(self.core.connect(client_id, can_drive, self.access.token_required,
                                         self.clock()))
            while True:
                message = await conn.recv()
                now = self.clock()
                try:
                    request_id, decoded = protocol.decode_control(message, self.max_message_size)
                except protocol.ProtocolError as exc:
                    request_id, decoded = getattr(exc, 'request_id', None), exc
                # Stopping the car is never rate-limited: a flood must not drop an e-stop.
                stop = isinstance(decoded, protocol.EmergencyStop) and decoded.engage
                verdict = Verdict.ACCEPT if stop else limiter.admit(now)
                if verdict is Verdict.DISCONNECT:
                    self.log.warning('control client %s kept exceeding %g commands/s; '
                                     'disconnecting it', client_id, self.commands_per_second)
                    await conn.close(protocol.CLOSE_RATE_LIMITED, 'too many messages')
                    break
                if verdict is Verdict.REJECT:
                    self.apply(self.core.refuse(
                        client_id, request_id, 'rate_limited',
                        f'more than {self.commands_per_second:g} messages per second'))
                elif isinstance(decoded, protocol.ProtocolError):
                    self.apply(self.core.refuse(client_id, request_id, decoded.code,
                                                decoded.message))
                else:
                    self.apply(self.core.receive(client_id, request_id, decoded, now))
        except ConnectionClosed:
            pass
        finally:
            self._clients.pop(client_id, None)
            self.apply(self.core.disconnect(client_id, self.clock()))
            self.log.info('control client %s disconnected', client_id)

    def apply(self, effects: Effects):
        """Carry out the core's decisions: publish first, then tell the clients, then log."""
        if effects.publish is not None:
            self.publish(effects.publish)
        for client_id, message in effects.replies:
            self._send(client_id, protocol.encode_control(message, client_id))
        if effects.state_changed:
            state = self.core.state()
            for client_id in list(self._clients):
                self._send(client_id, protocol.encode_control(state, client_id))
        for event in effects.events:
            self.log.info('%s', event)
        for client_id, code, reason in effects.disconnect:
            conn = self._clients.get(client_id)
            if conn is not None:
                asyncio.get_running_loop().create_task(conn.close(code, reason))
        self._wake.set()

    def _send(self, client_id: str, text: str):
        conn = self._clients.get(client_id)
        if conn is None or not conn.is_open:
            return
        conn.send_text_nowait(text)
        if conn.unsent_bytes() > MAX_UNSENT_BYTES:
            self.log.warning('control client %s is not reading its replies; dropping it',
                             client_id)
            asyncio.get_running_loop().create_task(conn.abort())

    async def _run_clock(self):
        """Tick the core at its deadlines (deadman, republish, ramps), and after each event."""
        while True:
            deadline = self.core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            effects = self.core.tick(self.clock())
            if effects.publish is not None or effects.replies or effects.events or \
                    effects.state_changed:
                self.apply(effects)
                self._wake.clear()
