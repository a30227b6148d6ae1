"""A userspace delay line between TUN devices: what this kernel has no qdisc for.

Run by :mod:`support.link_emulator` as a child process inside a router namespace (``ip netns
exec``), one process per emulated link. For each direction it owns two TUN devices: packets
that policy routing sends into the ``in`` device are read here, held, and written into the
``out`` device, from which the kernel routes them on. It does, per direction:

* one-way delay with jitter: the delay follows a random piecewise-linear curve within
  ``delay ± jitter`` (a new point every ``jitter_interval_ms``); packets leave in the order they
  came unless ``reorder`` is set (then every packet draws its own delay);
* Gilbert-Elliott loss: a good and a bad state, each with its own loss probability, switched per
  packet (``p`` good to bad, ``r`` bad to good; mean burst length 1 / r);
* a rate with a bounded queue (serialisation at the rate, tail drop beyond ``queue_ms``) whose
  rate may step on a schedule; used only for scheduled rates, a fixed rate is the kernel's tbf;
* blackouts (every packet dropped, both directions) on a schedule, or now on a command.

Bounded: at most ``max_packets`` packets held per direction (more are dropped and counted).
Control: one JSON object per line on stdin (``{"blackout": 0.4}``, ``{"rate_mbit": {"up": 1}}``,
``{"stats": true}``); replies and events are JSON lines on stdout. The first line,
``{"ready": ..., "t0": ...}``, comes once every TUN device exists; times are CLOCK_MONOTONIC
seconds, the clock every process on the machine shares. SIGTERM ends it (the TUN devices go
with their file descriptors).
"""

import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
READ_BATCH = 64          # packets read from one device before looking at the others
MTU_READ = 65536


def open_tun(name: str) -> int:
    """Create (non-persistent) TUN device ``name`` and return its non-blocking descriptor."""
    fd = os.open('/dev/net/tun', os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def emit(**event):
    sys.stdout.write(json.dumps(event) + '\n')
    sys.stdout.flush()


class Blackouts:
    """Scheduled windows (first_s, every_s, duration_s from t0) and windows begun by command."""

    def __init__(self, t0: float, schedule: list):
        self.t0 = t0
        self.schedule = schedule
        self.manual = []   # (start, end)

    def add(self, start: float, seconds: float):
        self.manual = [(s, e) for s, e in self.manual if e > start] + [(start, start + seconds)]

    def active(self, now: float) -> bool:
        for start, end in self.manual:
            if start <= now < end:
                return True
        since = now - self.t0
        for entry in self.schedule:
            first, every, duration = entry['first_s'], entry.get('every_s'), entry['duration_s']
            if since < first:
                continue
            offset = (since - first) % every if every else since - first
            if offset < duration:
                return True
        return False


class Direction:
    """One way of the link: its devices, its impairments and its queue."""

    def __init__(self, name: str, spec: dict, t0: float, rng: random.Random):
        self.name = name
        self.rng = rng
        self.t0 = t0
        self.in_fd = open_tun(spec['in'])
        self.out_fd = open_tun(spec['out'])
        self.delay = spec.get('delay_ms', 0) / 1000
        self.jitter = spec.get('jitter_ms', 0) / 1000
        self.interval = spec.get('jitter_interval_ms', 50) / 1000
        self.reorder = bool(spec.get('reorder', False))
        ge = spec.get('gilbert_elliott') or {}
        self.p, self.r = ge.get('p', 0.0), ge.get('r', 1.0)
        self.loss_good, self.loss_bad = ge.get('loss_good', 0.0), ge.get('loss_bad', 0.0)
        self.bad = False
        steps = spec.get('rate_steps_mbit') or []
        self.steps = [float(step) * 1e6 for step in steps]
        self.step_s = spec.get('step_s', 20)
        self.repeat = spec.get('repeat', True)
        self.rate_override = None
        self.queue = spec.get('queue_ms', 100) / 1000
        self.max_packets = int(spec.get('max_packets', 4096))
        self.link_free = 0.0
        self.last_release = 0.0
        self.held = 0
        # The jitter curve: from (t_prev, v_prev) to (t_next, v_next).
        self.t_prev, self.v_prev = t0, self._point()
        self.t_next, self.v_next = t0 + self.interval, self._point()
        self.counts = {'received': 0, 'sent': 0, 'blackout': 0, 'loss': 0, 'queue': 0,
                       'overflow': 0}

    def _point(self) -> float:
        return self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0

    def current_delay(self, now: float) -> float:
        if not self.jitter:
            return self.delay
        if self.reorder:
            return self.delay + self._point()
        while now >= self.t_next:
            self.t_prev, self.v_prev = self.t_next, self.v_next
            self.t_next, self.v_next = self.t_next + self.interval, self._point()
        share = (now - self.t_prev) / self.interval
        return self.delay + self.v_prev + share * (self.v_next - self.v_prev)

    def rate(self, now: float):
        """Bits per second now, or None for no userspace rate limit."""
        if self.rate_override is not None:
            return self.rate_override
        if not self.steps:
            return None
        index = int((now - self.t0) // self.step_s)
        index = index % len(self.steps) if self.repeat else min(index, len(self.steps) - 1)
        return self.steps[index]

    def lost(self) -> bool:
        """One Gilbert-Elliott step: move between states, then lose with the state's share."""
        if self.bad:
            if self.rng.random() < self.r:
                self.bad = False
        elif self.p and self.rng.random() < self.p:
            self.bad = True
        share = self.loss_bad if self.bad else self.loss_good
        return bool(share) and self.rng.random() < share

    def admit(self, packet: bytes, now: float):
        """The time the packet leaves the line, or None if the link drops it."""
        if self.lost():
            self.counts['loss'] += 1
            return None
        ready = now
        rate = self.rate(now)
        if rate:
            start = max(now, self.link_free)
            if start - now > self.queue:
                self.counts['queue'] += 1
                return None
            self.link_free = start + len(packet) * 8 / rate
            ready = self.link_free
        release = ready + self.current_delay(ready)
        if not self.reorder:
            release = max(release, self.last_release)
            self.last_release = release
        return release


def run(config: dict):
    try:   # a line made late by a busy machine adds delay no profile asked for: the lowest
        # real-time priority keeps it ahead of ordinary work; it sleeps whenever nothing is
        # due, and the kernel's real-time throttling bounds it even if it did not
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:   # not permitted: a higher share of the ordinary scheduler, if that
        try:
            os.nice(-10)
        except OSError:
            pass
    rng = random.Random(config.get('seed'))
    t0 = time.monotonic()
    directions = [Direction(name, spec, t0, rng) for name, spec in config['directions'].items()]
    blackouts = Blackouts(t0, config.get('blackouts', []))
    by_fd = {d.in_fd: d for d in directions}
    heap = []          # (release time, sequence, direction, packet)
    sequence = 0
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    pending = b''
    emit(ready=[d.name for d in directions], t0=t0, pid=os.getpid())
    watched = [stdin, *by_fd]
    while not stopping:
        timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else 0.5
        try:
            readable, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                chunk = os.read(stdin, 4096)
                if not chunk:                       # the driver went away: so do we
                    watched.remove(stdin)
                    stopping.append(True)
                    break
                pending += chunk
                if len(pending) > 65536 and b'\n' not in pending:   # no command is this long
                    pending = b''
                while b'\n' in pending:
                    line, pending = pending.split(b'\n', 1)
                    command(json.loads(line), directions, blackouts)
                continue
            direction = by_fd[fd]
            for _ in range(READ_BATCH):
                try:
                    packet = os.read(fd, MTU_READ)
                except BlockingIOError:
                    break
                direction.counts['received'] += 1
                if blackouts.active(now):
                    direction.counts['blackout'] += 1
                    continue
                if direction.held >= direction.max_packets:
                    direction.counts['overflow'] += 1
                    continue
                release = direction.admit(packet, now)
                if release is None:
                    continue
                direction.held += 1
                sequence += 1
                heapq.heappush(heap, (release, sequence, direction, packet))
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, direction, packet = heapq.heappop(heap)
            direction.held -= 1
            try:
                os.write(direction.out_fd, packet)
                direction.counts['sent'] += 1
            except OSError:   # the kernel refused it (e.g. no route): a lost packet
                direction.counts['overflow'] += 1
    emit(stats={d.name: d.counts for d in directions})


def command(message: dict, directions: list, blackouts: Blackouts):
    now = time.monotonic()
    if 'blackout' in message:
        seconds = min(float(message['blackout']), 600.0)
        blackouts.add(now, seconds)
        emit(blackout=[now, now + seconds])
    if 'rate_mbit' in message:
        for direction in directions:
            if direction.name in message['rate_mbit']:
                value = message['rate_mbit'][direction.name]
                direction.rate_override = None if value is None else float(value) * 1e6
        emit(rate_mbit=message['rate_mbit'], at=now)
    if message.get('stats'):
        emit(stats={d.name: d.counts for d in directions}, at=now)


if __name__ == '__main__':
    run(json.loads(sys.argv[1]))
