"""
The SFU seam: what the bridge asks of a media server that fans its video out, and ``sfu_*``.

The robot's uplink carries each watched stream once, to a media server in the cloud (an SFU),
and the viewers watch there. :class:`SfuPublisher` is all the rest of the bridge knows of that
server; :mod:`video_bridge.net.sfu_janus` is the Janus implementation, and another server
(LiveKit, mediamtx) would be one more module behind the same protocol.

:class:`SfuService` is the ``/control`` plug-in for ``sfu_*`` messages (docs/protocol.md): a
page that passed the view check says ``sfu_watch`` (and repeats it as a heartbeat), gets back
``sfu_access`` (the server's URL, the room, the feed, a short-lived token), and the robot
publishes that stream while anyone watches it (:class:`video_bridge.core.sfu.SfuWatchers`).
Commands never go through the SFU: this plug-in only decides what is published.
"""

import asyncio
import logging
import time
from typing import Callable, Optional, Protocol, Set

from video_bridge.core import protocol
from video_bridge.core.sfu import SfuWatchers
from video_bridge.core.streams import StreamHub, UnknownStream

SFU_PREFIX = 'sfu_'


class SfuPublisher(Protocol):
    """A media server the bridge publishes streams to (one implementation per server)."""

    def start(self) -> None:
        """Bind to the running loop (nothing is published until :meth:`set_wanted`)."""

    async def stop(self) -> None:
        """Stop publishing everything; close every connection to the server."""

    def set_wanted(self, streams: Set[str]) -> None:
        """Publish exactly these streams from now on (start, keep, or stop each)."""

    def notify_frame(self, stream_name: str) -> None:
        """Wake the stream's feed: a new frame is in the hub (called from the ROS thread)."""

    def viewer_access(self, stream_name: str, client_id: str) -> dict:
        """Return what a page needs to watch ``stream_name`` there (minted for this client)."""

    def counters(self) -> dict:
        """Return figures for /api/streams and the tests."""


def _error(request_id, code: str, message: str) -> dict:
    return {'type': 'sfu_error', 'id': request_id, 'code': code, 'message': message}


class SfuService:
    """``sfu_watch`` / ``sfu_leave`` of control sessions; tells the publisher what to publish."""

    def __init__(self, publisher: SfuPublisher, hub: StreamHub,
                 send: Callable[[str, dict], None],
                 watchers: Optional[SfuWatchers] = None,
                 logger: Optional[logging.Logger] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.publisher = publisher
        self.hub = hub
        self.send = send
        self.watchers = watchers or SfuWatchers()
        self.log = logger or logging.getLogger('video_bridge.net.sfu')
        self.clock = clock
        self._timer: Optional[asyncio.TimerHandle] = None
        self._wanted: Set[str] = set()
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    def start(self):
        """Bind to the running loop and start the publisher."""
        self.loop = asyncio.get_running_loop()
        self.publisher.start()

    async def stop(self):
        """Stop the publisher (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.publisher.stop()

    def handle(self, client_id: str, grant, message: dict):
        """One ``sfu_*`` message of a live control session (already size- and rate-checked)."""
        kind = message.get('type')
        request_id = message.get('id')
        if isinstance(request_id, str) and len(request_id) > protocol.MAX_REQUEST_ID:
            request_id = None
        now = self.clock()
        if not getattr(grant, 'view', True):
            reply = _error(request_id, 'unauthorized', 'watching needs a token')
        elif kind == 'sfu_watch':
            reply = self._watch(client_id, message, now)
        elif kind == 'sfu_leave':
            self.watchers.leave(client_id, now)
            reply = {'type': 'sfu_left', 'id': request_id}
        else:
            reply = _error(request_id, 'unknown_type',
                           f'unknown message type {str(kind)[:64]!r}')
        reply['id'] = request_id
        self.send(client_id, reply)
        self._update()
        return None

    def _watch(self, client_id: str, message: dict, now: float) -> dict:
        name = message.get('stream')
        if not isinstance(name, str) or not 0 < len(name) <= protocol.MAX_STREAM_NAME:
            return _error(None, 'bad_message', "'stream' must be a stream name")
        try:
            stream = self.hub.get(name)
        except UnknownStream:
            stream = None
        if stream is None or stream.settings.topic_stream:
            return _error(None, 'unknown_stream', f'no configured stream {name[:100]!r}')
        if not self.watchers.watch(client_id, name, now):
            return _error(None, 'capacity', 'too many SFU viewers')
        try:
            access = self.publisher.viewer_access(name, client_id)
        except ValueError as exc:
            return _error(None, 'sfu_unavailable', str(exc)[:200])
        return {'type': 'sfu_access', 'stream': name, 'renew': self.watchers.ttl / 2,
                **access}

    def disconnect(self, client_id: str):
        """Forget a control session that ended: it watches nothing any more."""
        self.watchers.leave(client_id, self.clock())
        self._update()

    def _update(self):
        """Hand the publisher what is wanted now; look again when that may change."""
        now = self.clock()
        wanted = self.watchers.wanted(now)
        if wanted != self._wanted:
            self._wanted = wanted
            self.log.info('sfu: publishing %s', ', '.join(sorted(wanted)) or 'nothing')
            self.publisher.set_wanted(set(wanted))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.watchers.next_change(now)
        if when is not None and self.loop is not None:
            self._timer = self.loop.call_later(max(0.05, when - now + 0.01), self._update)

    def counters(self) -> dict:
        """Watchers per stream and the publisher's figures."""
        return {'wanted': sorted(self._wanted), **self.publisher.counters()}
