"""Shared pieces of the WebRTC tests: a host-candidate address, coturn, an aiortc viewer, a
/control client.

aioice (aiortc's ICE) never offers 127.0.0.1 as a host candidate, and the test namespace has
nothing but loopback; so the tests give loopback one RFC 5737 address of their own namespace
(198.51.100.1/32), which both ends then use, and remove it afterwards.
"""

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time

from conftest import free_port, only_loopback, OUTPUT_DIR, wait_for
import pytest
import websockets

HOST_ADDRESS = '198.51.100.1'
TURNSERVER = shutil.which('turnserver')


@contextlib.contextmanager
def host_address():
    """Add HOST_ADDRESS to this private namespace's loopback for the duration."""
    if not only_loopback():
        pytest.fail('WebRTC tests change the network namespace: run them with scripts/test')
    added = subprocess.run(['ip', 'addr', 'add', f'{HOST_ADDRESS}/32', 'dev', 'lo'],
                           capture_output=True, text=True)
    if added.returncode != 0 and 'File exists' not in added.stderr:
        pytest.fail(f'cannot add {HOST_ADDRESS} to lo: {added.stderr}')
    try:
        yield HOST_ADDRESS
    finally:
        if added.returncode == 0:
            subprocess.run(['ip', 'addr', 'del', f'{HOST_ADDRESS}/32', 'dev', 'lo'],
                           capture_output=True)


class Coturn:
    """
    A real coturn (Debian's turnserver) on 127.0.0.1 with a REST API shared secret.

    ``tls``: also TURN over TLS (``turns:``, for networks that let only TLS out) on
    ``tls_port`` (default: a free one), with a self-signed certificate for 127.0.0.1 at
    ``cert`` (the client must trust it, e.g. through ``SSL_CERT_FILE``).
    """

    def __init__(self, tls: bool = False, tls_port: int = 0):
        if TURNSERVER is None:
            pytest.skip('turnserver (Debian coturn) is not installed: '
                        'scripts/bootstrap installs it')
        self.dir = tempfile.mkdtemp(prefix='coturn-')
        self.port = free_port()
        self.tls_port = (tls_port or free_port()) if tls else None
        tls_lines = ['no-tls']
        if tls:
            from support.hostile_clients import self_signed_cert
            self.cert, key = self_signed_cert(self.dir)
            tls_lines = [f'tls-listening-port={self.tls_port}', f'cert={self.cert}',
                         f'pkey={key}']
        self.secret = secrets.token_hex(16)
        self.secret_file = os.path.join(self.dir, 'secret')
        with open(self.secret_file, 'w') as handle:
            handle.write(self.secret + '\n')
        low = 40000 + (self.port % 200) * 100
        config = os.path.join(self.dir, 'turnserver.conf')
        with open(config, 'w') as handle:
            handle.write('\n'.join([
                'listening-ip=127.0.0.1', f'listening-port={self.port}', 'relay-ip=127.0.0.1',
                f'min-port={low}', f'max-port={low + 99}', 'use-auth-secret',
                f'static-auth-secret={self.secret}', 'realm=video-bridge.test',
                'fingerprint', 'allow-loopback-peers', 'no-cli', *tls_lines, 'no-dtls',
                'no-tcp-relay', 'simple-log', f'pidfile={self.dir}/turnserver.pid',
                'log-file=stdout', 'verbose', '']))
        os.makedirs(OUTPUT_DIR, exist_ok=True)
        self.log_path = os.path.join(OUTPUT_DIR, f'coturn-{os.getpid()}-{self.port}.log')
        self._log = open(self.log_path, 'w')
        self.proc = subprocess.Popen([TURNSERVER, '-c', config], stdout=self._log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_for(self._listening, 10, 'coturn to listen')
        except BaseException:   # the fixture never gets it: stop it here, not leave it running
            self.stop()
            raise

    def _listening(self):
        if self.proc.poll() is not None:
            pytest.fail(f'turnserver exited ({self.proc.returncode}): {self.output()[-2000:]}')
        with open('/proc/net/udp') as table:
            if f':{self.port:04X} ' not in table.read():
                return False
        if self.tls_port is None:
            return True
        with open('/proc/net/tcp') as table:     # local address, remote, state 0A = LISTEN
            return any(f':{self.tls_port:04X} ' in line and line.split()[3] == '0A'
                       for line in table)

    @property
    def url(self) -> str:
        return f'turn:127.0.0.1:{self.port}?transport=udp'

    @property
    def tls_url(self) -> str:
        return f'turns:127.0.0.1:{self.tls_port}?transport=tcp'

    def output(self) -> str:
        with open(self.log_path) as log:
            return log.read()

    def allocations(self) -> int:
        """Relay allocations coturn logged as created (a relay was used)."""
        return self.output().count('ALLOCATE processed, success')

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class SlowUplink:
    """
    A TCP relay to ``target_port`` on 127.0.0.1 that passes the client's bytes on at ``rate``
    bytes/s and the server's at once: a robot's slow uplink to its TURN server, in userspace.

    It reads only as fast as the link would carry, into small buffers (its socket's receive
    buffer and a 1 KiB stream limit), so TCP's window closes and the client's own socket backs
    up, as behind a real slow link. Runs on the test's event loop. ``slow_connections``: only
    that many connections (the first ones) are slowed; later ones pass at once.
    """

    def __init__(self, target_port: int, rate: int, slow_connections: int = 1 << 30):
        self.target_port = target_port
        self.rate = rate
        self.slow_connections = slow_connections
        self.connections = 0
        self.carried = 0      # bytes the slowed connections carried up
        self._server = None
        self._tasks = set()

    async def start(self) -> int:
        import socket
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)   # the accepted inherit
        listener.bind(('127.0.0.1', 0))
        self._server = await asyncio.start_server(self._relay, sock=listener, limit=1024)
        return listener.getsockname()[1]

    async def _relay(self, client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection('127.0.0.1',
                                                                     self.target_port)
        self.connections += 1
        rate = self.rate if self.connections <= self.slow_connections else None
        up = asyncio.ensure_future(self._pipe(client_reader, server_writer, rate))
        down = asyncio.ensure_future(self._pipe(server_reader, client_writer, None))
        self._tasks.update((up, down))
        await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()

    async def _pipe(self, reader, writer, rate):
        tick = 0.02
        while True:
            data = await reader.read(int(rate * tick) if rate else 65536)
            if not data:
                return
            writer.write(data)
            await writer.drain()
            if rate:
                self.carried += len(data)
                await asyncio.sleep(len(data) / rate)   # the link's pace, not a synchronisation

    async def close(self):
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class AiortcViewer:
    """The browser's half of the protocol in aiortc: answers the bridge's offer, counts frames."""

    def __init__(self, ice_servers=None, relay=False):
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
        from aiortc.rtcconfiguration import RTCIceTransportPolicy
        servers = [RTCIceServer(urls=s['urls'], username=s.get('username'),
                                credential=s.get('credential')) for s in ice_servers or []]
        self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=servers or None, iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay
            else RTCIceTransportPolicy.ALL))
        self.frames = []
        self.arrivals = []      # time.monotonic() when each of ``frames`` was decoded
        self.messages = []
        self.channel = None
        self.channel_open = asyncio.Event()

        @self.pc.on('track')
        def on_track(track):
            asyncio.ensure_future(self._read(track))

        @self.pc.on('datachannel')
        def on_channel(channel):
            self.channel = channel
            channel.on('message', self.messages.append)
            if channel.readyState == 'open':
                self.channel_open.set()
            channel.on('open', self.channel_open.set)

    async def _read(self, track):
        from aiortc.mediastreams import MediaStreamError
        try:
            while True:
                self.frames.append(await track.recv())
                self.arrivals.append(time.monotonic())
        except MediaStreamError:
            pass

    async def answer(self, offer_sdp: str) -> str:
        from aiortc import RTCSessionDescription
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, 'offer'))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def close(self):
        await self.pc.close()


async def wait_until(predicate, timeout, what):
    """Async wait on a condition (the loop keeps running aiortc meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f'timed out after {timeout} s waiting for {what}')
        await asyncio.sleep(0.01)  # a poll interval on the loop, not a synchronisation sleep


class Control:
    """One /control websocket: send JSON, wait for a reply of a type (and id)."""

    def __init__(self, socket):
        self.socket = socket
        self.seen = []

    async def send(self, **message):
        await self.socket.send(json.dumps(message))

    async def wait(self, kind, request_id=None, timeout=15):
        async def find():
            while True:
                message = json.loads(await self.socket.recv())
                self.seen.append(message)
                if message.get('type') == kind and (request_id is None
                                                    or message.get('id') == request_id):
                    return message
        return await asyncio.wait_for(find(), timeout)


async def session(url, token=None):
    path = f'{url}/control' + (f'?token={token}' if token else '')
    return await websockets.connect(path, max_size=2 ** 20)


# Chromium: frames its decoder produced per second over a window, from two getStats reports.
DECODE_RATE = """async (windowMs) => {
    const read = async () => {
        const report = await window.videoBridge.webrtc.pc.getStats();
        for (const entry of report.values()) {
            if (entry.type === 'inbound-rtp' && entry.kind === 'video') return entry;
        }
        return null;
    };
    const first = await read();
    await new Promise((resolve) => setTimeout(resolve, windowMs));
    const last = await read();
    return (last.framesDecoded - first.framesDecoded) * 1000 / (last.timestamp - first.timestamp);
}"""


def decode_rate(page, seconds=4.0) -> float:
    """Frames per second Chromium's decoder produced over ``seconds``, from two getStats reports.

    The decoder's own count over a few seconds, not the page's 2 s display-rate meter: on a busy
    machine the compositor drops some frames from display while every one is still decoded.
    """
    return page.evaluate(DECODE_RATE, int(seconds * 1000))
