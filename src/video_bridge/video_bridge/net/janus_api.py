"""
The Janus API over its websocket transport: one session, requests by transaction, events.

Shared by the robot's publisher (:mod:`.sfu_janus`) and the cloud's forwarder
(:mod:`video_bridge.sfu_forwarder`), so it needs aiohttp only (no aiortc, no encoders): the
forwarder runs on a cloud host without the robot's stack.

Bounded: one pending request per transaction, each with a deadline; websocket messages up to
``MAX_MESSAGE``; unsolicited events kept only as the newest ``MAX_EVENTS``.
"""

import asyncio
import collections
import itertools
import logging
from typing import Callable, Dict, Optional, Union

MAX_MESSAGE = 256 * 1024     # bytes of one Janus API message (an SDP is a few kB)
MAX_EVENTS = 16              # unsolicited events kept per session (newest)
CLOSE_TIMEOUT = 2.0


class JanusError(RuntimeError):
    """Janus (core or plugin) refused a request; ``code`` is its error code."""

    def __init__(self, code, reason: str):
        super().__init__(f'janus error {code}: {reason}')
        self.code = code
        self.reason = reason


class JanusSession:
    """One Janus API session over a websocket: requests by transaction, events, keepalives."""

    def __init__(self, settings, token: Union[None, str, Callable[[], str]],
                 log: logging.Logger):
        """
        Hold the session's state; nothing is sent before :meth:`connect`.

        ``settings``: anything with ``url``, ``request_timeout`` and ``keepalive`` (s).
        ``token``: a Janus token, or a callable minting a fresh one for each request.
        """
        self.settings = settings
        self.token = token
        self.log = log
        self.http = None
        self.ws = None
        self.session_id = None
        self.closed = asyncio.Event()
        self.events = collections.deque(maxlen=MAX_EVENTS)
        self.event = asyncio.Event()    # set on each unsolicited event
        self._pending: Dict[str, tuple] = {}   # transaction -> (future, wants ack)
        self._ids = itertools.count(1)
        self._tasks = []

    async def connect(self):
        """Connect, create the Janus session, start reading and keeping it alive."""
        import aiohttp
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, connect=self.settings.request_timeout))
        self.ws = await asyncio.wait_for(self.http.ws_connect(
            self.settings.url, protocols=('janus-protocol',), max_msg_size=MAX_MESSAGE,
            autoping=True, heartbeat=self.settings.keepalive),
            self.settings.request_timeout)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._read()))
        reply = await self.request({'janus': 'create'})
        self.session_id = reply['data']['id']
        self._tasks.append(loop.create_task(self._keepalive()))

    async def close(self):
        """Destroy the session if Janus is still there; close the socket (bounded)."""
        if self.ws is not None and not self.ws.closed and self.session_id is not None:
            try:
                await self.request({'janus': 'destroy'}, timeout=CLOSE_TIMEOUT)
            except (JanusError, ConnectionError, asyncio.TimeoutError, OSError):
                pass
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, OSError):
                pass
        if self.http is not None:
            await self.http.close()
        self._fail_pending(ConnectionError('janus session closed'))
        self.closed.set()

    async def request(self, body: dict, ack: bool = False, timeout: Optional[float] = None):
        """Send one request; return Janus's reply (``ack``: the ack is the reply)."""
        if self.ws is None or self.ws.closed:
            raise ConnectionError('janus websocket closed')
        transaction = f't{next(self._ids)}'
        message = dict(body, transaction=transaction)
        if self.session_id is not None and body.get('janus') != 'create':
            message.setdefault('session_id', self.session_id)
        token = self.token() if callable(self.token) else self.token
        if token:
            message['token'] = token
        future = asyncio.get_running_loop().create_future()
        self._pending[transaction] = (future, ack)
        try:
            await asyncio.wait_for(self.ws.send_json(message),
                                   timeout or self.settings.request_timeout)
            return await asyncio.wait_for(future, timeout or self.settings.request_timeout)
        finally:
            self._pending.pop(transaction, None)

    async def attach(self, plugin: str) -> int:
        """Attach a plugin; return the handle id."""
        reply = await self.request({'janus': 'attach', 'plugin': plugin})
        return reply['data']['id']

    async def detach(self, handle: int):
        """Detach a plugin handle (its subscription or publication ends with it)."""
        await self.request({'janus': 'detach', 'handle_id': handle})

    async def message(self, handle: int, body: dict, jsep: Optional[dict] = None):
        """Send a plugin request; return (plugin data, jsep) of its answer or event."""
        request = {'janus': 'message', 'handle_id': handle, 'body': body}
        if jsep is not None:
            request['jsep'] = jsep
        reply = await self.request(request)
        plugindata = reply.get('plugindata', {})
        data = plugindata.get('data', {}) if isinstance(plugindata, dict) else None
        if not isinstance(data, dict):
            raise JanusError(None, 'malformed answer: no plugin data object')
        if 'error_code' in data or 'error' in data:
            raise JanusError(data.get('error_code'), str(data.get('error'))[:200])
        return data, reply.get('jsep')

    async def _read(self):
        import aiohttp
        try:
            async for frame in self.ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    message = frame.json()
                except ValueError:
                    continue
                if isinstance(message, dict):
                    self._dispatch(message)
        finally:
            self._fail_pending(ConnectionError('janus websocket closed'))
            self.closed.set()

    def _dispatch(self, message: dict):
        kind = message.get('janus')
        entry = self._pending.get(message.get('transaction'))
        if entry is not None:
            future, wants_ack = entry
            if kind == 'ack' and not wants_ack:
                return          # an async plugin request: its event follows
            if future.done():
                return
            if kind == 'error':
                error = message.get('error') or {}
                future.set_exception(JanusError(error.get('code'),
                                                str(error.get('reason'))[:200]))
            else:
                future.set_result(message)
            return
        if kind in ('hangup', 'detached', 'timeout', 'webrtcup', 'media', 'slowlink', 'event'):
            self.events.append(message)
            self.event.set()

    def _fail_pending(self, exc: Exception):
        for future, _ in list(self._pending.values()):
            if not future.done():
                future.set_exception(exc)

    async def _keepalive(self):
        try:
            while True:
                await asyncio.sleep(self.settings.keepalive)   # the keepalive's period
                await self.request({'janus': 'keepalive'}, ack=True)
        except (JanusError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
            self.log.warning('sfu: janus keepalive failed (%s); closing the session', exc)
            if self.ws is not None:
                await self.ws.close()
