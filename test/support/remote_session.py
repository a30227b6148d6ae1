"""An operator on the far side of an emulated link: /control, an aiortc viewer, a driver.

Shared by test/lab/test_links.py and bench/links_bench.py. The operator's asyncio loop runs on a
thread that has joined the operator's network namespace (netlab.enter_namespace), so every socket
aiortc and websockets open is that namespace's, while this process's other threads (rclpy on
/cmd_vel, the test) stay where they are and time everything with the same clocks.

What it records:

* frames: per decoded frame its arrival (time.time()) and, through the bridge's RTP-to-stamp
  messages on the data channel, its header.stamp (the camera's realtime clock on this machine):
  arrival - stamp is glass-to-glass up to the decoder;
* the peer connection's states with their times (a reconnect or a failure shows there);
* commands: every velocity sent on the data channel with its time.monotonic() and a distinct
  linear.x, so /cmd_vel arrivals can be matched to it.
"""

import asyncio
import collections
import json
import math
import struct
import threading
import time

from support import netlab

STEP = 1e-4     # linear.x of command i is 0.1 + i * STEP: distinct, and never zero


def run_in_namespace(ns: str, coroutine_factory, timeout: float):
    """Run ``coroutine_factory()`` on a new event loop in a thread inside namespace ``ns``.

    Returns its result or raises what it raised; a TimeoutError if it takes longer than
    ``timeout`` s (its loop is then left to finish on its own daemon thread).
    """
    outcome = {}

    def main():
        try:
            netlab.enter_namespace(ns)
            outcome['value'] = asyncio.run(asyncio.wait_for(coroutine_factory(), timeout))
        except BaseException as error:   # handed to the caller
            outcome['error'] = error

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    thread.join(timeout + 10)
    if thread.is_alive():
        raise TimeoutError(f'the operator in {ns} did not finish within {timeout} s')
    if 'error' in outcome:
        raise outcome['error']
    return outcome.get('value')


async def until(predicate, timeout: float, what: str):
    """Wait on the loop for ``predicate()``; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout} s waiting for {what}')
        await asyncio.sleep(0.005)   # a poll on the loop, not a synchronisation


class Control:
    """One /control websocket; a reader task keeps every message, newest last."""

    def __init__(self, socket):
        self.socket = socket
        self.messages = []
        self.closed_at = None
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str, token: str = ''):
        import websockets
        socket = await websockets.connect(f'{url}/control' + (f'?token={token}' if token else ''),
                                          max_size=2 ** 20, open_timeout=10)
        return cls(socket)

    async def _read(self):
        try:
            async for text in self.socket:
                self.messages.append(json.loads(text))
        except Exception:   # the socket went away: noted, the scenario decides
            pass
        self.closed_at = time.monotonic()

    async def send(self, **message):
        await self.socket.send(json.dumps(message))

    async def wait(self, kind: str, request_id=None, timeout: float = 15.0) -> dict:
        def found():
            return next((m for m in self.messages if m.get('type') == kind and (
                request_id is None or m.get('id') == request_id)), None)
        await until(found, timeout, f'a {kind} message')
        return found()

    async def close(self):
        await self.socket.close()
        self._reader.cancel()


class Viewer:
    """aiortc's half of a WebRTC session: frames with their stamps, states, the data channel."""

    def __init__(self):
        from aiortc import RTCPeerConnection
        self.pc = RTCPeerConnection()
        self.records = []        # (arrival time.time(), header.stamp or nan)
        self.states = [(time.monotonic(), 'new')]
        self.channel = None
        self.channel_open = asyncio.Event()
        self._stamps = {}
        self._newest = None      # (rtp, stamp) of the newest stamp message
        self._offsets = collections.Counter()
        self._offset = None

        @self.pc.on('connectionstatechange')
        def on_state():
            self.states.append((time.monotonic(), self.pc.connectionState))

        @self.pc.on('datachannel')
        def on_channel(channel):
            self.channel = channel
            channel.on('message', self._on_message)
            if channel.readyState == 'open':
                self.channel_open.set()
            channel.on('open', self.channel_open.set)

        @self.pc.on('track')
        def on_track(track):
            asyncio.ensure_future(self._read(track))

    def _on_message(self, text):
        if not isinstance(text, str):
            return
        message = json.loads(text)
        if message.get('type') == 'frame':
            # RTP timestamps are header.stamp on the 90 kHz clock; sent on keyframes and ~5/s
            self._stamps[message['rtp']] = message['stamp']
            self._newest = (message['rtp'], message['stamp'])
            if len(self._stamps) > 600:
                self._stamps.pop(next(iter(self._stamps)))

    async def _read(self, track):
        from aiortc.mediastreams import MediaStreamError
        try:
            while True:
                frame = await track.recv()
                self.records.append((time.time(), self._stamp(frame.pts)))
        except MediaStreamError:
            pass

    def _stamp(self, pts) -> float:
        # aiortc rebases RTP timestamps to its first one (pts = rtp - first): learn the offset,
        # the one value rtp - pts takes for every frame with a stamp message.
        if self._offset is None:
            self._offsets.update({(rtp - pts) & 0xFFFFFFFF for rtp in self._stamps})
            best, count = (self._offsets.most_common(1) or [(None, 0)])[0]
            if count >= 15 and list(self._offsets.values()).count(count) == 1:
                self._offset = best
            else:
                return math.nan
        rtp = (pts + self._offset) & 0xFFFFFFFF
        stamp = self._stamps.get(rtp)
        if stamp is None and self._newest is not None:
            delta = ((rtp - self._newest[0] + 2 ** 31) % 2 ** 32 - 2 ** 31) / 90000
            stamp = self._newest[1] + delta if abs(delta) <= 10 else math.nan
        return math.nan if stamp is None else stamp

    def frames_after(self, wall: float) -> int:
        return sum(1 for arrival, _ in self.records if arrival >= wall)

    def reconnected(self) -> list:
        """States after the first 'connected' that were not 'connected' (a drop or failure)."""
        seen = [state for _, state in self.states]
        if 'connected' not in seen:
            return seen
        return [state for state in seen[seen.index('connected'):] if state != 'connected']

    async def close(self):
        await self.pc.close()


async def start_session(url: str, token: str = '', codec: str = 'h264'):
    """Open /control, start WebRTC for the camera, answer; return (control, viewer)."""
    control = await Control.connect(url, token)
    await control.wait('hello')
    await control.send(type='webrtc_start', id=1, stream='camera', codecs=[codec])
    offer = await control.wait('webrtc_offer', 1, timeout=20)
    viewer = Viewer()
    from aiortc import RTCSessionDescription
    await viewer.pc.setRemoteDescription(RTCSessionDescription(offer['sdp'], 'offer'))
    await viewer.pc.setLocalDescription(await viewer.pc.createAnswer())
    await control.send(type='webrtc_answer', id=2, sdp=viewer.pc.localDescription.sdp)
    return control, viewer


class WebsocketViewer:
    """The JPEG fallback: frames on a /video websocket, with the header's stamp."""

    # magic, header_length, flags, seq, width, height, stamp_sec, stamp_nanosec, received_time
    HEADER = struct.Struct('<4sHHIHHiId')   # docs/protocol.md

    def __init__(self):
        self.records = []        # (arrival time.time(), header.stamp)
        self.closed_at = None
        self._task = None

    async def start(self, url: str, stream: str = 'camera', token: str = ''):
        import websockets
        query = f'?token={token}' if token else ''   # watching needs it unless configured off
        socket = await websockets.connect(f'{url}/video/{stream}{query}', max_size=None,
                                          compression=None, open_timeout=10)
        self._task = asyncio.ensure_future(self._read(socket))

    async def _read(self, socket):
        try:
            async with socket:
                async for message in socket:
                    now = time.time()
                    fields = self.HEADER.unpack_from(message)
                    self.records.append((now, fields[6] + fields[7] * 1e-9))
        except Exception:   # the socket went away: noted, the scenario decides
            pass
        self.closed_at = time.monotonic()

    async def close(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Driver:
    """Holds a key: a velocity every ``period`` s, each one distinct, through ``channel.send``
    (the data channel, or anything with a send(text) such as :class:`WebsocketSender`)."""

    def __init__(self, channel, period: float = 0.05):
        self.channel = channel
        self.period = period
        self.sent = []          # (time.monotonic(), linear.x)
        self._task = None

    def start(self):
        self._task = asyncio.ensure_future(self._run())

    async def _run(self):
        index = 0
        next_time = time.monotonic()
        while True:
            value = round(0.1 + index * STEP, 6)
            self.sent.append((time.monotonic(), value))
            try:
                self.channel.send(json.dumps({'type': 'velocity', 'linear': {'x': value}}))
            except Exception:   # the channel is gone: the scenario sees it in the states
                pass
            index += 1
            next_time += self.period
            await asyncio.sleep(max(0.0, next_time - time.monotonic()))   # a key's repeat rate

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def held(self, after: float, before: float) -> list:
        """Send times of the commands sent in [after, before)."""
        return [sent for sent, _ in self.sent if after <= sent < before]

    def latencies(self, arrivals) -> list:
        """Seconds from each command's send to its first /cmd_vel arrival (matched by value);
        ``arrivals``: (time.monotonic(), linear.x) of /cmd_vel."""
        first = {}
        for stamp, x in arrivals:
            first.setdefault(round(x, 6), stamp)
        return [first[value] - sent for sent, value in self.sent if value in first]


class WebsocketSender:
    """A /control websocket as a command channel: send(text) without waiting (as a page does)."""

    def __init__(self, control: Control):
        self.control = control
        self._pending = set()

    def send(self, text: str):
        task = asyncio.ensure_future(self.control.socket.send(text))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
