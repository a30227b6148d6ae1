"""A link emulator for the namespace labs of test/support/netlab.py: delay, jitter, loss, outages,
rate.

This kernel has no netem and no NFQUEUE, so a profile (test/support/link_profiles.yaml) is split
between what the kernel does and a small userspace delay line:

* kernel: a fixed rate with a bounded queue (``tbf`` on the wire's egress device of that
  direction) and plain random loss (nftables ``numgen random`` in the wire's forward hook);
* delay line (test/support/delay_line.py, one child process in the wire's namespace, ended by
  PID): delay, jitter (order kept), Gilbert-Elliott bursty loss, blackouts on a schedule or on
  demand, and rates that step on a schedule. Policy routing sends what comes in from the edge
  into one TUN device and what comes in from the far side into another; the line writes each
  packet, later, into the matching out-device, from which the main table routes it on.

It sits on a :class:`netlab.Wire` (``Lab.wire``): any link of a lab made that way, e.g. the
robot's uplink or the operator's link. ``up`` is the direction from the edge (the robot: its
uplink carries the video), ``down`` towards it. Everything it adds lives in the wire's namespace
and goes with it; :meth:`LinkEmulator.stop` also removes it when the lab stays (another profile
on the same wire).

    lab = netlab.Lab(log_dir)
    try:
        robot, rnat = lab.namespace('robot'), lab.namespace('rnat')
        wire = lab.wire(robot, '192.0.2.2/25', rnat, '192.0.2.1/25')   # instead of lab.link
        with LinkEmulator(lab, wire, 'lte') as link:
            link.blackout(0.4)          # (start, end) on CLOCK_MONOTONIC
    finally:
        lab.close()

:func:`emulated_path` is the short form for two namespaces over one emulated link; with
``edge='self'`` the caller's own namespace is the edge (a bridge and rclpy run there as usual).
"""

import contextlib
import copy
import json
import os
import subprocess
import sys
import threading
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
PROFILES = os.path.join(HERE, 'link_profiles.yaml')
DELAY_LINE = os.path.join(HERE, 'delay_line.py')
DIRECTIONS = ('up', 'down')
TABLES = {'up': 101, 'down': 102}       # policy-routing tables in the wire's namespace
TUNS = {'up': ('lkui', 'lkuo'), 'down': ('lkdi', 'lkdo')}
DIRECTION_KEYS = ('delay_ms', 'jitter_ms', 'jitter_interval_ms', 'reorder', 'loss',
                  'rate_mbit', 'rate_steps_mbit', 'step_s', 'queue_ms')


def why_unavailable():
    """Why this machine cannot run the emulator (root, tools, TUN), or None when it can."""
    from support import netlab
    if os.geteuid() != 0:
        return 'needs root (network namespaces, TUN, nftables, tc)'
    missing = netlab.missing_tools('ip', 'nft', 'tc')
    if missing:
        return f'missing tools: {", ".join(missing)}'
    if not os.path.exists('/dev/net/tun'):
        return 'no /dev/net/tun'
    return None


def load_profiles(path: str = PROFILES) -> dict:
    """Every profile of the YAML file, with ``like:`` resolved."""
    with open(path) as handle:
        raw = yaml.safe_load(handle) or {}

    def resolve(name, seen=()):
        if name in seen:
            raise ValueError(f'profile {name!r} is its own ancestor')
        entry = dict(raw[name] or {})
        base = entry.pop('like', None)
        merged = resolve(base, (*seen, name)) if base else {}
        merged.update(copy.deepcopy(entry))
        return merged
    return {name: resolve(name) for name in raw}


def profile(name: str) -> dict:
    profiles = load_profiles()
    if name not in profiles:
        raise KeyError(f'no link profile {name!r}: {", ".join(profiles)}')
    return profiles[name]


def direction_settings(spec: dict, direction: str) -> dict:
    """The settings of one direction: the profile's own, then the direction's overrides."""
    settings = {key: spec[key] for key in DIRECTION_KEYS if key in spec}
    settings.update(spec.get(direction) or {})
    return settings


def gilbert_elliott(percent: float, burst_packets: float) -> dict:
    """Transition and loss shares of a two-state chain losing ``percent`` in bursts.

    The bad state loses everything and lasts ``burst_packets`` on average (r = 1 / burst);
    the good state loses nothing; p is chosen so the share of time in bad is ``percent``.
    """
    share = percent / 100
    r = 1.0 / max(1.0, burst_packets)
    return {'p': share * r / (1 - share), 'r': r, 'loss_good': 0.0, 'loss_bad': 1.0}


class LinkEmulator:
    """One profile on one wire of a lab; a context manager that always removes what it added."""

    def __init__(self, lab, wire, spec, seed=None, name: str = 'delay-line'):
        self.lab = lab
        self.wire = wire
        self.spec = profile(spec) if isinstance(spec, str) else copy.deepcopy(spec)
        self.profile_name = spec if isinstance(spec, str) else 'custom'
        self.seed = seed
        self.log_name = name
        self.line = None          # the delay line's netlab.Process
        self.t0 = None            # its start (CLOCK_MONOTONIC s): the schedules count from it
        self.events = []          # JSON lines it printed
        self._events_changed = threading.Condition()
        self._added = []          # commands that undo what was added, newest last
        self.final_stats = None

    # --- what goes where -----------------------------------------------------------------------

    def settings(self, direction: str) -> dict:
        return direction_settings(self.spec, direction)

    def _line_config(self) -> dict:
        """The delay line's configuration, or None if the kernel does it all."""
        directions = {}
        for direction in DIRECTIONS:
            settings = self.settings(direction)
            loss = settings.get('loss') or {}
            entry = {key: settings[key] for key in ('delay_ms', 'jitter_ms', 'jitter_interval_ms',
                                                    'reorder', 'queue_ms') if key in settings}
            if loss.get('model') == 'gilbert-elliott':
                entry['gilbert_elliott'] = gilbert_elliott(loss['percent'],
                                                           loss.get('burst_packets', 1))
            if settings.get('rate_steps_mbit'):
                entry['rate_steps_mbit'] = settings['rate_steps_mbit']
                entry['step_s'] = settings.get('step_s', 20)
            directions[direction] = entry
        needed = self.spec.get('blackouts') or self.spec.get('always_line') or any(
            entry.get('delay_ms') or entry.get('jitter_ms') or entry.get('gilbert_elliott')
            or entry.get('rate_steps_mbit') for entry in directions.values())
        if not needed:
            return None
        for direction, entry in directions.items():
            entry['in'], entry['out'] = TUNS[direction]
        return {'directions': directions, 'blackouts': self.spec.get('blackouts') or [],
                'seed': self.seed}

    def _device(self, direction: str) -> str:
        """The wire's device that packets of ``direction`` leave by."""
        return self.wire.far_if if direction == 'up' else self.wire.edge_if

    def _entry(self, direction: str) -> str:
        """The wire's device that packets of ``direction`` come in by."""
        return self.wire.edge_if if direction == 'up' else self.wire.far_if

    # --- start and stop --------------------------------------------------------------------------

    def start(self):
        try:
            config = self._line_config()
            if config is not None:
                self._start_line(config)
            self._kernel_loss()
            self._kernel_rate()
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self, *command, undo=None):
        self.lab.ns_run(self.wire.ns, *command)
        if undo:
            self._added.append(undo)

    def _start_line(self, config: dict):
        self.line = self.lab.start(self.wire.ns, self.log_name, sys.executable, DELAY_LINE,
                                   json.dumps(config), stdout=subprocess.PIPE,
                                   stdin=subprocess.PIPE)
        threading.Thread(target=self._read_events, daemon=True).start()
        ready = self.wait_event(lambda e: 'ready' in e, 10, 'the delay line to be ready')
        self.t0 = ready['t0']
        for direction in DIRECTIONS:
            tun_in, tun_out = TUNS[direction]
            for device in (tun_in, tun_out):
                self._run('ip', 'link', 'set', device, 'up')
            table = str(TABLES[direction])
            self._run('ip', 'route', 'add', 'default', 'dev', tun_in, 'table', table)
            self._run('ip', 'rule', 'add', 'iif', self._entry(direction), 'lookup', table,
                      'pref', table, undo=('ip', 'rule', 'del', 'pref', table))

    def _kernel_loss(self):
        rules = []
        for direction in DIRECTIONS:
            loss = self.settings(direction).get('loss') or {}
            if loss.get('model', 'random') == 'random' and loss.get('percent'):
                threshold = int(round(loss['percent'] * 10000))   # of a million
                rules.append(f'iifname "{self._entry(direction)}" '
                             f'numgen random mod 1000000 < {threshold} drop')
        if rules:
            body = '\n'.join(f'        {rule}' for rule in rules)
            ruleset = (f'table ip linkemu {{\n    chain forward {{\n        type filter hook '
                       f'forward priority -10; policy accept;\n{body}\n    }}\n}}\n')
            self.lab.ns_run(self.wire.ns, 'nft', '-f', '-', input=ruleset)
            self._added.append(('nft', 'delete', 'table', 'ip', 'linkemu'))

    def _kernel_rate(self):
        for direction in DIRECTIONS:
            settings = self.settings(direction)
            rate = settings.get('rate_mbit')
            if not rate or settings.get('rate_steps_mbit'):
                continue
            device = self._device(direction)
            burst = max(3200, int(rate * 1e6 / 8 * 0.004))   # 4 ms at the rate, >= 2 packets
            self._run('tc', 'qdisc', 'replace', 'dev', device, 'root', 'tbf', 'rate',
                      f'{rate}mbit', 'burst', str(burst),
                      'latency', f'{settings.get("queue_ms", 100)}ms',
                      undo=('tc', 'qdisc', 'del', 'dev', device, 'root'))

    def stop(self):
        """End the delay line (by PID) and remove rules, qdiscs and tables; safe to repeat."""
        if self.line is not None:
            if self.line.alive():
                try:
                    count = len(self.events)
                    self.line.proc.stdin.write('{"stats": true}\n')
                    self.line.proc.stdin.flush()
                    self.wait_event(lambda e: 'stats' in e, 2, 'stats', fail=False, after=count)
                except (OSError, ValueError):
                    pass
            self.line.stop()
            stats = [e['stats'] for e in self.events if 'stats' in e]
            self.final_stats = stats[-1] if stats else None
            self.line = None
        while self._added:
            self.lab.ns_run(self.wire.ns, *self._added.pop(), check=False)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- events and commands ---------------------------------------------------------------------

    def _read_events(self):
        line = self.line
        for text in line.proc.stdout:
            try:
                event = json.loads(text)
            except ValueError:
                continue
            with self._events_changed:
                self.events.append(event)
                self._events_changed.notify_all()

    def wait_event(self, predicate, timeout: float, what: str, fail: bool = True,
                   after: int = 0):
        """The first event (a dict the line printed; from index ``after``) matching
        ``predicate``, waited for."""
        deadline = time.monotonic() + timeout
        with self._events_changed:
            while True:
                found = next((e for e in self.events[after:] if predicate(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.line is not None and not self.line.alive()):
                    if fail:
                        output = self.line.output()[-2000:] if self.line else ''
                        raise TimeoutError(f'link emulator: no {what} within {timeout} s '
                                           f'{output}')
                    return None
                self._events_changed.wait(min(left, 0.1))

    def _command(self, **message):
        if self.line is None:
            raise RuntimeError('this profile runs no delay line: give it blackouts or a delay')
        count = len(self.events)
        self.line.proc.stdin.write(json.dumps(message) + '\n')
        self.line.proc.stdin.flush()
        key = next(iter(message))
        return self.wait_event(lambda e: key in e, 5, f'a reply to {key}', after=count)

    def blackout(self, seconds: float) -> tuple:
        """Drop everything, both ways, from now for ``seconds``; return (start, end) monotonic."""
        start, end = self._command(blackout=seconds)['blackout']
        return start, end

    def set_rate(self, direction: str, mbit):
        """Set (None: clear) the delay line's rate of ``direction`` at once."""
        return self._command(rate_mbit={direction: mbit})

    def stats(self) -> dict:
        """Packets per direction: received, sent, and dropped by blackout, loss, queue."""
        return self._command(stats=True)['stats']

    def scheduled_blackouts(self, until: float) -> list:
        """The (start, end) monotonic windows of the profile's schedule that begin before
        ``until``."""
        windows = []
        for entry in self.spec.get('blackouts') or []:
            start = self.t0 + entry['first_s']
            while start < until:
                windows.append((start, start + entry['duration_s']))
                if not entry.get('every_s'):
                    break
                start += entry['every_s']
        return sorted(windows)


# --- a two-namespace path with a profile on it -------------------------------------------------

EDGE_ADDRESS, FAR_ADDRESS = '192.0.2.2/24', '192.0.2.1/24'


class Path:
    """Two namespaces (``edge``, ``far``) joined through a wire that carries a profile."""

    def __init__(self, lab, edge, far, wire, link):
        self.lab, self.edge, self.far, self.wire, self.link = lab, edge, far, wire, link


@contextlib.contextmanager
def emulated_path(spec, log_dir: str, seed=None, edge: str = None):
    """A lab of two namespaces over one emulated link, removed whatever happens.

    ``edge``: an existing namespace name to use as the edge (e.g. one ``Lab.adopt`` would
    give); by default a new one. The far side is always new.
    """
    from support import netlab   # test/ is on sys.path for tests and benchmarks
    lab = netlab.Lab(log_dir)
    try:
        edge_ns = lab.adopt('edge') if edge == 'self' else (edge or lab.namespace('edge'))
        far_ns = lab.namespace('far')
        wire = lab.wire(edge_ns, EDGE_ADDRESS, far_ns, FAR_ADDRESS)
        with LinkEmulator(lab, wire, spec, seed) as link:
            yield Path(lab, edge_ns, far_ns, wire, link)
    finally:
        lab.close()
