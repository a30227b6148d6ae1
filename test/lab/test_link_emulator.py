"""The link emulator (test/support/link_emulator.py) measured from the outside with UDP probes.

Two namespaces joined through a wire that carries a profile; this process sends and receives in
both (sockets made in each namespace, netlab.socket_in), stamps each probe when it sends it and
takes the kernel's receive stamp (SO_TIMESTAMPNS, the same realtime clock), so one-way delays
are measured without a second clock. Probes go both ways at once. Tolerances (stated per check
below) leave room for a loaded 2-core machine: the delay line is a Python process.
"""

import os
import socket
import struct
import threading
import time

from conftest import OUTPUT_DIR
import pytest
from support import link_emulator, netlab
from support.link_emulator import emulated_path, LinkEmulator, why_unavailable

SO_TIMESTAMPNS = getattr(socket, 'SO_TIMESTAMPNS', 35)
PORT = 9000
HEADER = struct.Struct('!Iqd')   # sequence, send time (realtime ns), send time (monotonic s)


pytestmark = pytest.mark.skipif(why_unavailable() is not None,
                                reason=str(why_unavailable()))
LOGS = os.path.join(OUTPUT_DIR, 'link-emulator')


class Probe:
    """``count`` UDP probes of ``size`` bytes at ``rate_hz`` from one namespace to another."""

    def __init__(self, source_ns, target_ns, target_ip, count, rate_hz, size=64, port=PORT):
        self.count, self.rate_hz, self.size = count, rate_hz, max(size, HEADER.size)
        self.sender = netlab.socket_in(source_ns)
        self.receiver = netlab.socket_in(target_ns)
        self.receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.receiver.bind((target_ip, port))
        self.receiver.settimeout(0.2)
        self.target = (target_ip, port)
        self.sent = {}       # sequence -> (realtime ns, monotonic s)
        self.arrived = {}    # sequence -> one-way delay (s)
        self.arrival_times = {}   # sequence -> receive time (monotonic s, derived)
        self._done_sending = threading.Event()

    def _send(self):
        padding = bytes(self.size - HEADER.size)
        start = time.monotonic()
        for sequence in range(self.count):
            due = start + sequence / self.rate_hz
            pause = due - time.monotonic()
            if pause > 0:
                self._done_sending.wait(pause)   # pacing, not a synchronisation
            real, mono = time.time_ns(), time.monotonic()
            self.sent[sequence] = (real, mono)
            try:
                self.sender.sendto(HEADER.pack(sequence, real, mono) + padding, self.target)
            except OSError:   # a full queue on the way counts as a lost probe
                pass
        self._done_sending.set()

    def _receive(self, linger: float):
        offset = time.time() - time.monotonic()
        quiet_since = None
        while True:
            try:
                data, ancillary, _, _ = self.receiver.recvmsg(2048, 64)
            except socket.timeout:
                if self._done_sending.is_set():
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > linger:
                        return
                continue
            quiet_since = None
            sequence, real, _ = HEADER.unpack_from(data)
            stamp = next((struct.unpack('@qq', payload[:16]) for level, kind, payload
                          in ancillary if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS),
                         None)
            received = stamp[0] * 1_000_000_000 + stamp[1] if stamp else time.time_ns()
            self.arrived[sequence] = (received - real) / 1e9
            self.arrival_times[sequence] = received / 1e9 - offset

    def run(self, linger: float = 0.6):
        """Send all, receive until ``linger`` s after the last send brought nothing more."""
        receiver = threading.Thread(target=self._receive, args=(linger,))
        sender = threading.Thread(target=self._send)
        receiver.start(), sender.start()
        sender.join(self.count / self.rate_hz + 30)
        receiver.join(linger + 30)
        self.sender.close(), self.receiver.close()
        return self

    # --- figures ---------------------------------------------------------------------------------

    def delays_ms(self) -> list:
        return sorted(delay * 1000 for delay in self.arrived.values())

    def percentile_ms(self, share: float) -> float:
        delays = self.delays_ms()
        return delays[min(len(delays) - 1, int(share * (len(delays) - 1)))]

    def lost(self) -> list:
        return [sequence for sequence in self.sent if sequence not in self.arrived]

    def loss_percent(self) -> float:
        return 100.0 * len(self.lost()) / len(self.sent)

    def mean_burst(self) -> float:
        """Mean length of runs of consecutive lost probes."""
        lost = self.lost()
        if not lost:
            return 0.0
        bursts = 1 + sum(1 for a, b in zip(lost, lost[1:]) if b != a + 1)
        return len(lost) / bursts

    def received_mbit(self, start: float, end: float) -> float:
        """Goodput (IP and UDP headers included) of probes received in [start, end) monotonic."""
        inside = sum(1 for t in self.arrival_times.values() if start <= t < end)
        return inside * (self.size + 28) * 8 / (end - start) / 1e6


def both_ways(path, count, rate_hz, size=64):
    """Probes edge -> far (up) and far -> edge (down) at the same time."""
    up = Probe(path.edge, path.far, path.wire.far_ip, count, rate_hz, size, PORT)
    down = Probe(path.far, path.edge, path.wire.edge_ip, count, rate_hz, size, PORT + 1)
    threads = [threading.Thread(target=probe.run) for probe in (up, down)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(count / rate_hz + 60)
    return up, down


def figure(text):
    print(f'link figure: {text}', flush=True)


# --- the profiles as data ----------------------------------------------------------------------


def test_the_profiles_are_the_issues_table():
    profiles = link_emulator.load_profiles()
    assert {'lan', 'wifi', 'lte', 'lte-poor', 'handover', 'congestion'} <= set(profiles)
    assert profiles['lan'] == {}
    wifi, lte, poor = profiles['wifi'], profiles['lte'], profiles['lte-poor']
    assert (wifi['delay_ms'], wifi['jitter_ms'], wifi['loss']['percent'],
            wifi['up']['rate_mbit']) == (2, 2, 0.2, 30)
    assert (lte['delay_ms'], lte['jitter_ms'], lte['loss'], lte['up'], lte['down']['rate_mbit']) \
        == (30, 10, {'model': 'random', 'percent': 0.5}, {'rate_mbit': 4, 'queue_ms': 100}, 20)
    assert (poor['delay_ms'], poor['jitter_ms'], poor['loss'], poor['up']) == (
        60, 25, {'model': 'gilbert-elliott', 'percent': 2, 'burst_packets': 3},
        {'rate_mbit': 1.5, 'queue_ms': 150})
    handover, congestion = profiles['handover'], profiles['congestion']
    for derived in (handover, congestion):
        assert (derived['delay_ms'], derived['jitter_ms'], derived['loss']) == (
            30, 10, lte['loss'])
    assert handover['blackouts'] == [{'first_s': 10, 'every_s': 20, 'duration_s': 0.4},
                                     {'first_s': 40, 'every_s': 60, 'duration_s': 3}]
    assert congestion['up'] == {'rate_steps_mbit': [4, 0.8, 4], 'step_s': 20, 'queue_ms': 100}
    ge = link_emulator.gilbert_elliott(2, 3)
    assert ge['p'] / (ge['p'] + ge['r']) == pytest.approx(0.02) and ge['r'] == pytest.approx(1 / 3)


# --- delay, jitter and loss per profile ---------------------------------------------------------


@pytest.mark.parametrize('name', ['lan', 'wifi', 'lte', 'lte-poor'])
def test_a_probe_sees_the_profiles_delay_jitter_and_loss(name):
    spec = link_emulator.profile(name)
    delay, jitter = spec.get('delay_ms', 0), spec.get('jitter_ms', 0)
    loss = (spec.get('loss') or {}).get('percent', 0)
    with emulated_path(name, LOGS) as path:
        # 4000 probes of 64 bytes at 1000/s each way (well under every profile's rate); 1000
        # where there is no loss to count.
        probes = both_ways(path, count=4000 if loss else 1000, rate_hz=1000)
    for direction, probe in zip(('up', 'down'), probes):
        delays = probe.delays_ms()
        p5, p50, p95, p99 = (probe.percentile_ms(q) for q in (0.05, 0.5, 0.95, 0.99))
        figure(f'{name} {direction}: one-way p5 {p5:.1f} p50 {p50:.1f} p95 {p95:.1f} '
               f'p99 {p99:.1f} max {delays[-1]:.1f} ms; loss {probe.loss_percent():.2f} % '
               f'(mean burst {probe.mean_burst():.1f})')
        # Delay: never earlier than the curve allows; the median within half the jitter
        # (+ 4 ms for the Python line on a busy machine) of the profile's delay; the tail
        # bounded (+ 25 ms: the line is a process on a shared 2-core machine).
        assert delays[0] >= delay - jitter - 0.5, f'{direction}: a probe beat the delay'
        assert delay - jitter / 2 - 1 <= p50 <= delay + jitter / 2 + 4, direction
        assert p99 <= delay + jitter + 25, f'{direction}: a tail beyond delay + jitter'
        # Jitter: the spread covers most of +- jitter; without jitter it stays small.
        if jitter:
            assert p95 - p5 >= 0.8 * jitter, f'{direction}: spread {p95 - p5:.1f} ms'
        else:
            assert p95 - p5 <= 3, f'{direction}: spread {p95 - p5:.1f} ms without jitter'
        # Loss: 0 on a lossless link; else within [1/4, 2.5] x the profile's share (4000
        # probes: the bounds are > 3 standard deviations away for 0.2 %, the smallest).
        if not loss:
            assert probe.lost() == [], f'{direction}: lost {len(probe.lost())} on {name}'
        else:
            assert loss / 4 <= probe.loss_percent() <= loss * 2.5, direction
        if spec.get('loss', {}).get('model') == 'gilbert-elliott':
            assert probe.mean_burst() >= 1.8, f'{direction}: losses are not in bursts'


# --- rate -------------------------------------------------------------------------------------


def test_the_uplink_rate_is_capped_with_a_bounded_queue():
    spec = link_emulator.profile('lte')   # up: tbf 4 Mbit/s, 100 ms queue
    with emulated_path(spec, LOGS) as path:
        # 1200-byte probes at ~8 Mbit/s, twice the rate, for 2.5 s.
        probe = Probe(path.edge, path.far, path.wire.far_ip, count=2000, rate_hz=800,
                      size=1200).run()
    times = sorted(probe.arrival_times.values())
    start, end = times[0] + 0.5, times[-1] - 0.2
    mbit = probe.received_mbit(start, end)
    p99 = probe.percentile_ms(0.99)
    figure(f'lte up at 2x its rate: {mbit:.2f} Mbit/s received, delay p99 {p99:.0f} ms, '
           f'loss {probe.loss_percent():.0f} %')
    assert 4 * 0.85 <= mbit <= 4 * 1.15
    assert p99 <= 30 + 10 + 100 + 25, 'the queue is bounded (100 ms)'
    assert 35 <= probe.loss_percent() <= 65, 'what does not fit is dropped'


def test_a_rate_steps_on_its_schedule():
    spec = {'delay_ms': 5, 'up': {'rate_steps_mbit': [4, 0.8], 'step_s': 2.0, 'queue_ms': 100}}
    with emulated_path(spec, LOGS) as path:
        t0 = path.link.t0
        probe = Probe(path.edge, path.far, path.wire.far_ip, count=3000, rate_hz=700,
                      size=1200).run()
    # Steps: [t0, t0 + 2) at 4, [t0 + 2, t0 + 4) at 0.8, then 4 again; measured over 1.2 s in
    # each of the first two, clear of the probe's start and of the queue draining (100 ms).
    high = probe.received_mbit(t0 + 0.6, t0 + 1.8)
    low = probe.received_mbit(t0 + 2.4, t0 + 3.6)
    figure(f'rate steps 4 -> 0.8 Mbit/s: {high:.2f}, {low:.2f} Mbit/s')
    assert 4 * 0.85 <= high <= 4 * 1.15
    assert 0.8 * 0.85 <= low <= 0.8 * 1.15


def test_handover_and_congestion_put_their_schedules_on_the_line():
    with emulated_path('handover', LOGS) as path:
        link = path.link
        starts = [(round(start - link.t0, 3), round(end - start, 3))
                  for start, end in link.scheduled_blackouts(link.t0 + 61)]
        assert starts == [(10, 0.4), (30, 0.4), (40, 3), (50, 0.4)]
        assert link.line.alive()
    with emulated_path('congestion', LOGS) as path:
        qdiscs = {device: netlab.run('ip', 'netns', 'exec', path.wire.ns, 'tc', 'qdisc', 'show',
                                     'dev', device).stdout
                  for device in (path.wire.far_if, path.wire.edge_if)}
        assert 'tbf' not in qdiscs[path.wire.far_if], "the stepped uplink rate is the line's"
        assert 'tbf' in qdiscs[path.wire.edge_if] and '20Mbit' in qdiscs[path.wire.edge_if]


# --- blackouts ---------------------------------------------------------------------------------


def test_a_blackout_drops_everything_for_its_duration_and_nothing_else():
    spec = {'delay_ms': 10, 'blackouts': [{'first_s': 1.0, 'duration_s': 0.3}]}
    with emulated_path(spec, LOGS) as path:
        windows = path.link.scheduled_blackouts(path.link.t0 + 10)
        probes = []
        runner = threading.Thread(target=lambda: probes.extend(both_ways(path, 3000, 1000)))
        runner.start()
        # A point in the run after the scheduled one: pacing, not a synchronisation.
        threading.Event().wait(max(0.0, path.link.t0 + 2.0 - time.monotonic()))
        windows.append(path.link.blackout(0.4))     # and one now, on demand
        runner.join(60)
    assert len(windows) == 2 and len(probes) == 2
    margin = 0.003
    for direction, probe in zip(('up', 'down'), probes):
        for start, end in windows:
            inside = [s for s, (_, sent) in probe.sent.items()
                      if start + margin <= sent <= end - margin]
            assert inside, 'the probes covered the blackout'
            assert not [s for s in inside if s in probe.arrived], \
                f'{direction}: a probe sent during a blackout arrived'
            gap = [s for s, (_, sent) in probe.sent.items()
                   if start - 0.05 <= sent <= end + 0.05 and s not in probe.arrived]
            seconds = (probe.sent[gap[-1]][1] - probe.sent[gap[0]][1])
            figure(f'blackout of {end - start:.2f} s: {direction} lost {len(gap)} probes '
                   f'over {seconds:.3f} s')
            # The span of lost probes is the window's, up to the sender's own pauses on a busy
            # machine (it catches up afterwards): 50 ms.
            assert abs(seconds - (end - start)) <= 0.05
        outside = [s for s in probe.lost()
                   if not any(start - 0.02 <= probe.sent[s][1] <= end + 0.02
                              for start, end in windows)]
        assert outside == [], f'{direction}: lost outside the blackouts'


# --- cleanup ------------------------------------------------------------------------------------


def test_everything_goes_even_when_the_test_fails():
    line_pid = None
    with pytest.raises(RuntimeError, match='a failing test'):
        with emulated_path('lte-poor', LOGS) as path:
            line_pid = path.link.line.pid
            wire_ns = path.wire.ns
            assert set(netlab.run('ip', 'netns', 'exec', wire_ns, 'ip', '-o', 'link')
                       .stdout.split()) >= {'lkui:', 'lkuo:', 'lkdi:', 'lkdo:'}
            raise RuntimeError('a failing test')
    assert line_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(line_pid, 0)
    assert netlab.leftovers() == []


def test_stopping_a_profile_leaves_the_wire_as_it_was():
    lab = netlab.Lab(LOGS)
    try:
        edge, far = lab.namespace('edge'), lab.namespace('far')
        wire = lab.wire(edge, '192.0.2.2/24', far, '192.0.2.1/24')

        def state():
            return {what: lab.ns_run(wire.ns, *command).stdout for what, command in (
                ('links', ('ip', '-o', 'link')), ('rules', ('ip', 'rule')),
                ('qdiscs', ('tc', 'qdisc')), ('nft', ('nft', 'list', 'ruleset')))}
        before = state()
        with LinkEmulator(lab, wire, 'lte') as link:
            pid = link.line.pid
            assert state() != before
        assert state() == before
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert lab.still_running() == []
    finally:
        lab.close()
    assert netlab.leftovers() == []


# --- on the lab's real topology --------------------------------------------------------------


def echo(sock, seen_from: list, stop: threading.Event):
    """Send every datagram back to where it came from; remember the senders."""
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            data, source = sock.recvfrom(2048)
        except socket.timeout:
            continue
        seen_from.append(source[0])
        sock.sendto(data, source)


def round_trips_ms(sock, target, count: int, rate_hz: float) -> list:
    """Send ``count`` probes to an echo; the round trips (ms) of those that came back."""
    sock.settimeout(0.5)
    trips = []
    for sequence in range(count):
        started = time.monotonic()
        sock.sendto(HEADER.pack(sequence, 0, started), target)
        try:
            while True:
                data = sock.recv(2048)
                back, _, sent = HEADER.unpack_from(data)
                if back == sequence:
                    trips.append((time.monotonic() - sent) * 1000)
                    break
        except socket.timeout:
            continue
        threading.Event().wait(max(0.0, started + 1 / rate_hz - time.monotonic()))  # pacing
    return trips


def test_profiles_sit_on_the_robots_uplink_and_the_operators_link_behind_nat():
    """The remote-operation lab (robot / NAT / cloud / NAT / operator) with a wire on each end
    link: UDP from either side reaches the cloud through its NAT and sees its profile's delay."""
    lab = netlab.Lab(LOGS)
    stop = threading.Event()
    try:
        robot, rnat, cloud = lab.namespace('robot'), lab.namespace('rnat'), lab.namespace('cloud')
        onat, operator = lab.namespace('onat'), lab.namespace('operator')
        uplink = lab.wire(robot, '192.0.2.2/25', rnat, '192.0.2.1/25', role='uplink')
        rnat_wan, _ = lab.link(rnat, '198.51.100.2/30', cloud, '198.51.100.1/30')
        onat_wan, _ = lab.link(onat, '198.51.100.6/30', cloud, '198.51.100.5/30')
        oplink = lab.wire(operator, '192.0.2.130/25', onat, '192.0.2.129/25', role='oplink')
        lab.address(cloud, '203.0.113.10/32')
        lab.route(robot, 'default', '192.0.2.1')
        lab.route(rnat, 'default', '198.51.100.1')
        lab.route(onat, 'default', '198.51.100.5')
        lab.route(operator, 'default', '192.0.2.129')
        lab.nat_router(rnat, lan=uplink.far_peer[1], wan=rnat_wan)
        lab.nat_router(onat, lan=oplink.far_peer[1], wan=onat_wan)
        with LinkEmulator(lab, uplink, 'lte', name='uplink-line'), \
                LinkEmulator(lab, oplink, 'wifi', name='oplink-line'):
            server = netlab.socket_in(cloud)
            server.bind(('203.0.113.10', PORT))
            seen_from = []
            echoing = threading.Thread(target=echo, args=(server, seen_from, stop), daemon=True)
            echoing.start()
            results = {}

            def measure(name, ns):
                with netlab.socket_in(ns) as client:
                    results[name] = round_trips_ms(client, ('203.0.113.10', PORT), 80, 100)
            threads = [threading.Thread(target=measure, args=pair)
                       for pair in (('robot', robot), ('operator', operator))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            stop.set()
            echoing.join(5)
            server.close()   # a socket would keep its namespace alive after the lab deletes it
    finally:
        stop.set()
        lab.close()
    robot_rtt, operator_rtt = sorted(results['robot']), sorted(results['operator'])
    figure(f'robot -> cloud over lte: round trip p50 {robot_rtt[len(robot_rtt) // 2]:.1f} ms; '
           f'operator -> cloud over wifi: p50 {operator_rtt[len(operator_rtt) // 2]:.1f} ms')
    assert set(seen_from) == {'198.51.100.2', '198.51.100.6'}, 'both came through their NAT'
    assert len(robot_rtt) >= 75 and len(operator_rtt) >= 75
    assert 60 - 15 <= robot_rtt[len(robot_rtt) // 2] <= 60 + 15    # 2 x (30 +- 10) ms
    assert robot_rtt[0] >= 60 - 2 * 10 - 1
    assert 1 <= operator_rtt[len(operator_rtt) // 2] <= 4 + 6       # 2 x (2 +- 2) ms
    assert netlab.leftovers() == []
