"""
Every attack of issue 16 at once, from a process of its own, for a bounded time.

``test/node/test_hostile_soak.py`` runs this while its own well-behaved viewer and driver measure
the bridge: the attackers live in another process so their threads never hold the measuring
clients' interpreter lock. Each attack is one :class:`Stopwatch` thread (a bounded loop: it ends
when the soak's time is up) of hostile clients from ``hostile_clients``; every socket is closed by
its owner. At the end one JSON line on stdout says what each attack did and what the bridge
answered.

    python soak_attacks.py --port P --seconds 60 [--token-free]

Rows (issue 16): 1 a ``webrtc_start`` and a clean close in one packet; 2 viewers asking
``fps=0.0001``; 3 offers never answered; 4 idle control sockets from 25 addresses that answer
pings; 8 odd-width variants and topic streams without the token; 9 TLS ClientHellos cut after 3
bytes; 10 wrong tokens tried as fast as the bridge lets them.
"""

import argparse
import collections
import json
import os
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import hostile_clients as hc  # noqa: E402  (test/ is this script's package root)

TLS = hc.insecure_client_context()
START = json.dumps({'type': 'webrtc_start', 'id': 1, 'stream': 'camera', 'codecs': ['h264']})
RESTART = json.dumps({'type': 'webrtc_start', 'id': 2, 'stream': 'camera', 'codecs': ['h264']})
CLOSE = hc.ws_frame(hc.OP_CLOSE, (1000).to_bytes(2, 'big'))
CLIENT_HELLO_START = b'\x16\x03\x01'   # a TLS record header and nothing more


class Tally:
    """Counts of what each attack did and what came back (thread-safe enough: one writer each)."""

    def __init__(self):
        self.counts = collections.defaultdict(collections.Counter)

    def add(self, attack, what, n=1):
        self.counts[attack][what] += n


def control(port, source, token=None, timeout=5.0):
    """A /control websocket over TLS that has read its hello, or None when refused."""
    path = '/control' + (f'?token={token}' if token else '')
    try:
        ws = hc.RawWebSocket(port, path, source=source, timeout=timeout, tls=TLS)
    except (OSError, ssl.SSLError):
        return None
    if not ws.accepted:
        ws.close()
        return None
    hello = ws.recv_json(timeout)
    if not hello or hello.get('type') != 'hello':
        ws.close()
        return None
    return ws


def next_of(ws, kinds, timeout):
    """The next message whose type is in ``kinds`` (others skipped), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = ws.recv_json(max(0.01, deadline - time.monotonic()))
        if message is None:
            return None
        if message.get('type') in kinds:
            return message
    return None


class StartAndClose:
    """Row 1: start a peer, then a second start and a clean close in the same TCP segment."""

    def __init__(self, port, tally):
        self.port, self.tally = port, tally

    def step(self, stop):
        ws = control(self.port, '127.0.0.2')
        if ws is None:
            self.tally.add('row1', 'refused')
            stop.wait(0.2)   # reconnect pacing, not synchronisation
            return
        try:
            ws.send_text(START)
            offer = next_of(ws, ('webrtc_offer', 'webrtc_error'), 20)
            self.tally.add('row1', (offer or {}).get('code') or (offer or {}).get('type'))
            stop.wait(1.05)  # past one start per second, so the restart replaces the peer at once
            ws.send(hc.ws_frame(hc.OP_TEXT, RESTART.encode()) + CLOSE)
            ws.wait_closed(5)
            self.tally.add('row1', 'rounds')
        finally:
            ws.close()

    def close(self):
        pass


class NeverAnswer:
    """Row 3: ask for an offer and never answer it; ask again once the bridge gives up."""

    def __init__(self, port, tally, source):
        self.port, self.tally, self.source = port, tally, source
        self.ws = None

    def step(self, stop):
        if self.ws is None:
            self.ws = control(self.port, self.source)
            if self.ws is None:
                self.tally.add('row3', 'refused')
                stop.wait(0.2)   # reconnect pacing, not synchronisation
                return
        self.ws.send_text(START)
        reply = next_of(self.ws, ('webrtc_offer', 'webrtc_error'), 20)
        self.tally.add('row3', (reply or {}).get('code') or (reply or {}).get('type'))
        if reply and reply['type'] == 'webrtc_offer':
            stopped = next_of(self.ws, ('webrtc_stopped',), 40)
            self.tally.add('row3', (stopped or {}).get('code') or 'no stop')
        else:
            stop.wait(1.0)   # the attack's pace after a refusal, not synchronisation

    def close(self):
        if self.ws is not None:
            self.ws.close()


class SlowFps:
    """Row 2: MJPEG and websocket viewers asking fps=0.0001, reading everything."""

    def __init__(self, port, tally, count=12):
        self.port, self.tally, self.count = port, tally, count
        self.readers = []

    def step(self, stop):
        self.readers = [r for r in self.readers if not r.closed_by_peer]
        while len(self.readers) < self.count:
            try:
                reader = hc.TrickleReader(self.port, '/mjpeg/camera?fps=0.0001', 1e6,
                                          source='127.0.0.3', duration=120, tls=TLS)
            except (OSError, ssl.SSLError):
                self.tally.add('row2', 'refused')
                break
            self.readers.append(reader)
            self.tally.add('row2', 'opened')
        stop.wait(0.5)   # the attack's pace, not synchronisation

    def close(self):
        for reader in self.readers:
            self.tally.add('row2', 'bytes', reader.received)
            reader.close()


class IdleControls:
    """Row 4: control sockets from 25 addresses that answer pings and say nothing."""

    def __init__(self, port, tally, count=300):
        self.port, self.tally, self.count = port, tally, count
        self.sockets = []
        self.opened = 0

    def step(self, stop):
        for ws in self.sockets[:50]:
            ws.recv_json(0.001)   # answers pings; notices a close
        self.sockets = self.sockets[50:] + self.sockets[:50]   # the next 50 next time
        gone = [ws for ws in self.sockets if ws.eof]
        for ws in gone:
            ws.close()
        self.tally.add('row4', 'closed by the bridge', len(gone))
        self.sockets = [ws for ws in self.sockets if not ws.eof]
        if len(self.sockets) < self.count:
            source = f'127.0.0.{10 + self.opened % 25}'
            self.opened += 1
            ws = control(self.port, source, timeout=2)
            if ws is None:
                self.tally.add('row4', 'refused')
                stop.wait(0.05)   # reconnect pacing, not synchronisation
            else:
                self.sockets.append(ws)
                self.tally.add('row4', 'opened')
        else:
            stop.wait(0.2)   # the attack's pace, not synchronisation
        self.tally.counts['row4']['held'] = len(self.sockets)

    def close(self):
        for ws in self.sockets:
            ws.close()


class Variants:
    """Row 8: odd widths on the configured stream, and other topics, without the token."""

    WIDTHS = (321, 323, 325, 327, 329, 331)

    def __init__(self, port, tally):
        self.port, self.tally = port, tally
        self.viewers = []
        self.round = 0

    def step(self, stop):
        self.round += 1
        width = self.WIDTHS[self.round % len(self.WIDTHS)]
        quality = 20 + self.round % 70
        for path in (f'/video/camera?width={width}&quality={quality}',
                     f'/mjpeg/%2Fother%2Fimage_raw?width={width}',
                     '/video/%2Fcamera%2Fimage_raw'):
            try:
                ws = hc.RawWebSocket(self.port, path, source='127.0.0.4', timeout=3, tls=TLS)
            except (OSError, ssl.SSLError):
                self.tally.add('row8', 'refused')
                continue
            status = ws.response.status if ws.response else 0
            self.tally.add('row8', f'{path.split("?")[0]} {status}')
            if ws.accepted:
                self.viewers.append(ws)
            else:
                ws.close()
        while len(self.viewers) > 8:
            self.viewers.pop(0).close()
        stop.wait(0.5)   # the attack's pace, not synchronisation

    def close(self):
        for ws in self.viewers:
            ws.close()


def closed(sock) -> bool:
    """Tell (without blocking) whether the bridge closed a socket we only ever wrote to."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b''
    except BlockingIOError:
        return False
    except OSError:
        return True


class CutHellos:
    """Row 9: TLS connections that send 3 bytes of a ClientHello, from 20 addresses."""

    def __init__(self, port, tally, keep=1000):
        self.port, self.tally, self.keep = port, tally, keep
        self.open = []
        self.opened = 0

    def step(self, stop):
        self.open = [sock for sock in self.open if not closed(sock)]
        for _ in range(5 if len(self.open) < self.keep else 0):
            try:
                sock = hc.connect(self.port, source=f'127.0.0.{40 + self.opened % 20}',
                                  timeout=1)
                sock.sendall(CLIENT_HELLO_START)
                sock.setblocking(False)   # closed() must not wait for the socket's timeout
                self.open.append(sock)
                self.opened += 1
            except OSError:
                self.tally.add('row9', 'refused')
        self.tally.counts['row9']['opened'] = self.opened
        self.tally.counts['row9']['held'] = len(self.open)
        stop.wait(0.1)   # the attack's pace, not synchronisation

    def close(self):
        for sock in self.open:
            sock.close()


class WrongTokens:
    """Row 10: guess tokens on /control as fast as the bridge takes them."""

    def __init__(self, port, tally):
        self.port, self.tally = port, tally
        self.tries = 0

    def step(self, stop):
        self.tries += 1
        try:
            ws = hc.RawWebSocket(self.port, f'/control?token=guess{self.tries}',
                                 source='127.0.0.5', timeout=3, tls=TLS)
        except (OSError, ssl.SSLError):
            self.tally.add('row10', 'refused')
            return
        status = ws.response.status if ws.response else 0
        hello = ws.recv_json(1) if ws.accepted else None
        self.tally.add('row10', f'{status} {(hello or {}).get("type", "")}'.strip())
        if hello and hello.get('can_drive'):
            self.tally.add('row10', 'GUESSED')
        ws.close()
        stop.wait(0.01)   # at most ~100 guesses a second from here, a bounded attack

    def close(self):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--seconds', type=float, required=True)
    parser.add_argument('--rows', default='1,2,3,4,8,9,10',
                        help='which rows to run (comma-separated; all by default)')
    args = parser.parse_args()
    rows = set(args.rows.split(','))
    tally = Tally()
    make = {'1': lambda: [StartAndClose(args.port, tally)],
            '2': lambda: [SlowFps(args.port, tally)],
            '3': lambda: [NeverAnswer(args.port, tally, f'127.0.0.{6 + i}') for i in range(4)],
            '4': lambda: [IdleControls(args.port, tally)],
            '8': lambda: [Variants(args.port, tally)],
            '9': lambda: [CutHellos(args.port, tally)],
            '10': lambda: [WrongTokens(args.port, tally)]}
    attackers = [attacker for row in sorted(rows & set(make)) for attacker in make[row]()]
    threads = [hc.Stopwatch(a.step, args.seconds) for a in attackers]
    for thread in threads:
        thread.start()
    if not threads:   # no attack: a baseline run still lasts the soak's time
        threading.Event().wait(args.seconds)
    for thread in threads:
        thread.join(args.seconds + 60)
    for attacker in attackers:
        attacker.close()
    errors = [repr(t.error) for t in threads if t.error]
    print(json.dumps({'counts': {k: dict(v) for k, v in tally.counts.items()},
                      'errors': errors}), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
