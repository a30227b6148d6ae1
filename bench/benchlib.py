"""Shared machinery of the video_bridge benchmarks: processes, /proc figures, statistics.

Every benchmark here starts real processes (a camera-like publisher, the installed bridge_node,
websocket viewer workers) and measures them from the outside, the way a user would see them.
This module keeps the dull, easy-to-get-wrong parts in one place:

* the loopback-only guard (benchmarks must never touch a real network),
* starting children and ending exactly those children, by PID, with SIGINT (a node killed any
  other way leaks its Fast DDS shared-memory segment in /dev/shm),
* /proc readings (CPU ticks, page faults, RSS, per-thread CPU) of the bridge and the machine,
* one complete video case (publisher + bridge + viewers, warm-up, window, profile),
* the perf + py-spy profile of the bridge and its breakdown by what the code is doing,
* percentiles and plain-text tables.
"""

import collections
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
BENCH = os.path.join(ROOT, 'bench')
BRIDGE_NODE = os.path.join(ROOT, 'install', 'video_bridge', 'lib', 'video_bridge', 'bridge_node')
BRIDGE_PARAMS = os.path.join(ROOT, 'config', 'bridge.yaml')
PYSPY = os.environ.get('PYSPY', '/tmp/pyspy-venv/bin/py-spy')
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
HOST = '127.0.0.1'  # the only address any benchmark ever talks to


# -- guards ------------------------------------------------------------------------------------

def require_loopback_only():
    """Exit unless the only network interface is loopback (run through bench/run or in-netns).

    The benchmarks open many sockets and DDS participants; in a private network namespace they
    cannot reach, or be reached from, anything but this machine.
    """
    # The kernel's answer for *this process's* network namespace. /sys/class/net is the view of
    # the namespace that mounted sysfs: after a bare `unshare --net` (scripts/in-netns) it still
    # lists the host's interfaces, so it is checked too but cannot be the only check.
    own = sorted(name for _, name in socket.if_nameindex())
    if own != ['lo']:
        sys.exit(f'refusing to run: this network namespace has interfaces {own} (expected only '
                 f'lo). Run through bench/run, which uses scripts/in-netns.')
    listed = sorted(os.listdir('/sys/class/net'))
    if listed != ['lo'] and not os.environ.get('VB_BENCH_QUIET_SYSFS'):
        os.environ['VB_BENCH_QUIET_SYSFS'] = '1'  # say it once, not in every child
        print(f'note: /sys/class/net lists {listed}, but that sysfs belongs to another network '
              f'namespace; this process sees only lo (socket.if_nameindex). bench/run remounts '
              f'/sys so that both agree.', file=sys.stderr)
    if not os.environ.get('ROS_DOMAIN_ID'):
        sys.exit('refusing to run: set ROS_DOMAIN_ID to a domain of this run only (bench/run '
                 'picks one); /dev/shm discovery crosses network namespaces.')


def shm_segments() -> set:
    """Fast DDS files in /dev/shm (segments, port and lock files)."""
    try:
        names = os.listdir('/dev/shm')
    except FileNotFoundError:
        return set()
    return {name for name in names if name.startswith(('fastdds', 'fastrtps'))}


def shm_in_use() -> set:
    """Names of /dev/shm files some live process has mapped or open (any namespace)."""
    used = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/maps') as handle:
                for line in handle:
                    if '/dev/shm/' in line:
                        used.add(line.rsplit('/dev/shm/', 1)[1].split()[0])
            for fd in os.listdir(f'/proc/{pid}/fd'):
                target = os.readlink(f'/proc/{pid}/fd/{fd}')
                if target.startswith('/dev/shm/'):
                    used.add(target[len('/dev/shm/'):])
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
    return used


def report_shm(before: set) -> bool:
    """Print whether this run left Fast DDS files behind in /dev/shm; True if it left none.

    Other runs on this machine (other domains) create and remove such files concurrently, so a
    file counts as left behind only if it appeared during this run and no live process has it
    mapped or open any more (what an uncleanly killed node leaves).
    """
    new = shm_segments() - before
    leaked = sorted(new - shm_in_use())
    if leaked:
        print(f'WARNING: {len(leaked)} Fast DDS file(s) appeared in /dev/shm during the run and '
              f'are held by no process: {", ".join(leaked[:6])}'
              f'{" ..." if len(leaked) > 6 else ""}')
        return False
    others = f' ({len(new)} new file(s) belong to other live processes)' if new else ''
    print(f'/dev/shm: no Fast DDS files left behind by this run{others}')
    return True


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, child: 'Child', timeout: float = 20.0):
    """Wait until 127.0.0.1:port accepts connections; RuntimeError if the child died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f'{child.name} exited with {child.poll()} before listening; '
                               f'see {child.log_path}')
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f'{child.name} did not listen on {port} within {timeout:g} s')


# -- children ----------------------------------------------------------------------------------

class Child:
    """One process this benchmark started; stopped by its PID only, with SIGINT first."""

    def __init__(self, name: str, argv: list, log_dir: str, env=None):
        self.name = name
        self.log_path = os.path.join(log_dir, f'{name}.log')
        self._log = open(self.log_path, 'wb')
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=ROOT,
                                        env=dict(os.environ, **env) if env else None)
        self.pid = self.process.pid
        self.interrupted = False

    def poll(self):
        """Exit status, or None while running."""
        return self.process.poll()

    def wait(self, timeout: float):
        """Wait for the child to end by itself; True if it did within ``timeout``."""
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def interrupt(self):
        """Send SIGINT once (a second one could interrupt the child's clean shutdown)."""
        if not self.interrupted and self.process.poll() is None:
            self.interrupted = True
            self.process.send_signal(signal.SIGINT)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (clean rclpy shutdown), then SIGTERM, SIGKILL only as a last resort."""
        self.interrupt()
        self.wait(timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            print(f'WARNING: {self.name} (pid {self.pid}) did not stop on SIGINT within '
                  f'{timeout:g} s; sending {sig.name}', file=sys.stderr)
            self.process.send_signal(sig)
            self.wait(3.0)
        self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 15) -> str:
        """Last lines of the child's output (for error messages)."""
        try:
            with open(self.log_path, 'rb') as handle:
                return b'\n'.join(handle.read().splitlines()[-lines:]).decode(errors='replace')
        except OSError:
            return ''


class Rig:
    """The processes of one benchmark case; stops all of them (in reverse order) on exit."""

    def __init__(self, keep_logs: bool = False):
        self.log_dir = tempfile.mkdtemp(prefix='vb-bench-')
        self.children = []
        self.keep_logs = keep_logs

    def start(self, name: str, argv: list, env=None) -> Child:
        """Start a child process (``env``: extra variables) and remember it for :meth:`close`."""
        child = Child(name, argv, self.log_dir, env)
        self.children.append(child)
        return child

    def path(self, name: str) -> str:
        """Return the path of a file in this rig's scratch directory."""
        return os.path.join(self.log_dir, name)

    def stop(self, child: Child):
        """Stop one child now (SIGINT by PID) and forget it."""
        if child in self.children:
            self.children.remove(child)
        code = child.stop()
        if code not in (0, None):
            print(f'WARNING: {child.name} exited with {code}:\n{child.log_tail()}',
                  file=sys.stderr)
        return code

    def close(self):
        """Stop every remaining child, newest first, then drop the scratch directory."""
        while self.children:
            self.stop(self.children[-1])
        if self.keep_logs:
            print(f'logs kept in {self.log_dir}')
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def python_argv(script: str, *args) -> list:
    """Run one of the bench/ helper scripts with this interpreter (same venv and environment)."""
    return [sys.executable, os.path.join(BENCH, script), *map(str, args)]


def start_bridge(rig: Rig, topic: str, extra_params=(), env=None, name: str = 'bridge',
                 source: str = ''):
    """
    Start the installed bridge_node on a free port of 127.0.0.1; return (child, port).

    ``source``: run the bridge_node of another checkout instead (see :func:`add_before_option`:
    its src/video_bridge and its config/bridge.yaml, plus :data:`BEFORE_PARAMS`; messages and
    share/ from this install), for side-by-side comparisons in one run.
    """
    port = free_port()
    params = [f'host:={HOST}', f'port:={port}', f'streams.camera.topic:={topic}']
    if source:
        package = os.path.join(source, 'src', 'video_bridge')
        program = ('import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = "bridge_node"; '
                   'from video_bridge.ros.bridge_node import main; main()')
        params_file = os.path.join(source, 'config', 'bridge.yaml')
        argv = [sys.executable, '-c', program, package, '--ros-args', '--params-file',
                params_file]
        params += before_params(params_file)
    else:
        argv = [sys.executable, BRIDGE_NODE, '--ros-args', '--params-file', BRIDGE_PARAMS]
    for param in [*params, *extra_params]:  # the caller's last: a later -p wins
        argv += ['-p', param]
    child = rig.start(name, argv, env)
    wait_for_port(port, child)
    return child, port


# -- another checkout's bridge (--before) ------------------------------------------------------
#
# The commit before a change runs from an exported copy of its src/ and config/ (no build: its
# Python package goes first on sys.path, the messages come from this install, which must still
# match them). Everything a bridge of another checkout needs to be measured like this one is
# here, for every benchmark that takes --before.

# Parameters given to another checkout's bridge on top of its own config/bridge.yaml, so that
# both bridges serve the benchmark's load alike; each only if that file names it. Every viewer
# of a benchmark comes from 127.0.0.1: older bridges allowed 64 connections per address.
BEFORE_PARAMS = {'max_connections_per_client': '256'}


def before_params(params_file: str) -> list:
    """The :data:`BEFORE_PARAMS` that a checkout's config/bridge.yaml declares, as ``-p`` items.

    A parameter the old bridge does not have is left out rather than passed: it would only be
    logged as unknown, and the figures would then rest on a setting that did nothing.
    """
    with open(params_file) as handle:
        keys = {line.split(':', 1)[0].strip() for line in handle if ':' in line}
    return [f'{name}:={value}' for name, value in BEFORE_PARAMS.items() if name in keys]


def add_before_option(parser):
    """Add --before DIR: measure that checkout's bridge_node too, alternating with this one."""
    parser.add_argument('--before', default='', metavar='DIR',
                        help='a copy of another commit (git archive COMMIT src config | tar -x '
                        '-C DIR) whose bridge_node is measured too, in the same run, '
                        'alternating with this one')


def check_before(parser, options):
    """Make options.before absolute; a parser error unless it holds a bridge to run."""
    if options.before:
        options.before = os.path.abspath(options.before)
        for part in (('src', 'video_bridge', 'video_bridge', 'ros', 'bridge_node.py'),
                     ('config', 'bridge.yaml')):
            if not os.path.isfile(os.path.join(options.before, *part)):
                parser.error(f'--before {options.before}: no {os.path.join(*part)} there')


def alternating(sides: list, index: int) -> list:
    """``sides`` in order for an even ``index``, reversed for an odd one (ABBA ...).

    Cases run one after another on a shared machine; alternating which side goes first spreads
    a change of load over both sides instead of charging it to one. Pass the round plus the
    case's position in it: then every case swaps its order from round to round, also when a
    round has an even number of cases (a running count would give such a case the same order
    in every round).
    """
    return list(sides) if index % 2 == 0 else list(sides)[::-1]


def start_publisher(rig: Rig, topic: str, seconds: float, kind: str = 'raw', fps: float = 30.0,
                    reliable: bool = False, width: int = 640, height: int = 480):
    """Start bench/publisher.py; it writes the stamps it published to the returned path."""
    stamps = rig.path(f'published-{len(rig.children)}.npy')
    argv = python_argv('publisher.py', '--topic', topic, '--kind', kind, '--fps', fps,
                       '--width', width, '--height', height, '--duration', seconds,
                       '--out', stamps)
    if reliable:
        argv.append('--reliable')
    return rig.start('publisher', argv), stamps


def start_viewers(rig: Rig, port: int, paths: list, seconds: float, per_worker: int = 13):
    """Start viewer worker processes (``per_worker`` websocket clients each) for ``paths``.

    One path per viewer, e.g. ``['/video/camera'] * 50``. Returns (workers, result files).
    """
    workers, outputs = [], []
    for first in range(0, len(paths), per_worker):
        out = rig.path(f'viewers-{port}-{first}.npy')
        chunk = paths[first:first + per_worker]
        argv = python_argv('viewers.py', '--port', port, '--duration', seconds,
                           '--first-id', first, '--out', out, '--ready', out + '.ready', *chunk)
        workers.append(rig.start(f'viewers-{first}', argv))
        outputs.append(out)
    return workers, outputs


def report_viewer_problems(workers: list, lines: int = 5):
    """Print what viewer workers complained about (sockets closed or refused by the bridge)."""
    for worker in workers:
        tail = worker.log_tail(lines).strip()
        if tail:
            print(f'{worker.name}: {tail}')


def wait_streaming(workers: list, outputs: list, timeout: float = 30.0) -> float:
    """Wait until every viewer has received a frame; return how long that took.

    RuntimeError if a worker died or the stream did not start within ``timeout``.
    """
    started = time.monotonic()
    while not all(os.path.exists(out + '.ready') for out in outputs):
        for worker in workers:
            if worker.poll() is not None:
                raise RuntimeError(f'{worker.name} exited early:\n{worker.log_tail()}')
        if time.monotonic() - started > timeout:
            raise RuntimeError(f'viewers got no frames within {timeout:g} s')
        time.sleep(0.1)
    return time.monotonic() - started


def stop_workers(rig: Rig, workers: list):
    """SIGINT every worker at once (they close their sockets and save), then reap each."""
    for worker in workers:
        worker.interrupt()
    for worker in workers:
        rig.stop(worker)


# -- viewer records ----------------------------------------------------------------------------

# Columns of a viewer record (one row per received frame), as written by bench/viewers.py.
V_ID, V_RECV, V_STAMP_US, V_SEQ, V_FLAGS, V_SIZE, V_BRIDGE_RECV, V_WIDTH = range(8)


def load_records(paths: list) -> np.ndarray:
    """Concatenate viewer worker outputs into one (frames x 8) float64 array."""
    arrays = [np.load(path) for path in paths if os.path.exists(path)]
    arrays = [array for array in arrays if array.size]
    return np.concatenate(arrays) if arrays else np.zeros((0, 8))


def load_stamps(path: str) -> np.ndarray:
    """Stamps the publisher sent, in order, as int64 microseconds (as in viewer records)."""
    return np.load(path) // 1000 if os.path.exists(path) else np.zeros(0, np.int64)


# -- /proc -------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of a whole process (all threads) so far."""
    with open(f'/proc/{pid}/stat') as handle:
        fields = handle.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def minor_faults(pid: int) -> int:
    """Return the minor page faults of a process so far: each is a fresh page touched.

    A process that frees and re-allocates big buffers every frame (and whose allocator gives
    the pages back to the kernel in between) pays one fault per 4 KiB page per frame.
    """
    with open(f'/proc/{pid}/stat') as handle:
        return int(handle.read().rsplit(')', 1)[1].split()[7])


def memory_kb(pid: int) -> dict:
    """Return VmRSS and VmHWM (peak RSS) of a process, in kB."""
    values = {}
    with open(f'/proc/{pid}/status') as handle:
        for line in handle:
            key, _, rest = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                values[key] = int(rest.split()[0])
    return values


def thread_cpu(pid: int) -> dict:
    """CPU seconds per thread: {tid: (name, seconds)}."""
    threads = {}
    for tid in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{tid}/stat') as handle:
                text = handle.read()
        except OSError:
            continue
        name = text[text.index('(') + 1:text.rindex(')')]
        fields = text.rsplit(')', 1)[1].split()
        threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return threads


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy so far (from /proc/stat)."""
    with open('/proc/stat') as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


class Window:
    """CPU and memory of some processes between :meth:`begin` and :meth:`end`.

    CPU is taken from /proc/<pid>/stat (utime + stime, every thread) so it counts everything
    the process does, including native DDS threads and OpenCV, not only Python. The machine's
    total busy time is read too: this machine has 2 cores shared with whatever else runs, and
    CPU used by processes outside the benchmark ("others") explains noisy latencies.
    """

    def __init__(self, pids: dict):
        self.pids = dict(pids, bench=os.getpid())  # name -> pid
        self.rss_samples = collections.defaultdict(list)

    def begin(self):
        """Start the window."""
        self.t0 = time.time()
        self.busy0 = machine_busy_seconds()
        self.faults0 = {name: minor_faults(pid) for name, pid in self.pids.items()}
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.mem0 = {name: memory_kb(pid) for name, pid in self.pids.items()}

    def sleep(self, seconds: float, sample_every: float = 1.0):
        """Sleep through the window, sampling RSS so a slow leak shows."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(sample_every, left))
            for name, pid in self.pids.items():
                self.rss_samples[name].append(memory_kb(pid)['VmRSS'])

    def end(self):
        """Close the window."""
        self.t1 = time.time()
        self.busy1 = machine_busy_seconds()
        self.faults1 = {name: minor_faults(pid) for name, pid in self.pids.items()}
        self.cpu1 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.mem1 = {name: memory_kb(pid) for name, pid in self.pids.items()}

    def others_percent(self) -> float:
        """CPU used by processes outside this benchmark, in % of one core (0-200 here)."""
        ours = sum(self.cpu_used(name) for name in self.pids)
        return 100.0 * max(0.0, self.busy1 - self.busy0 - ours) / self.seconds

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return self.t1 - self.t0

    def cpu_percent(self, name: str) -> float:
        """CPU of one process over the window, in % of one core."""
        return 100.0 * (self.cpu1[name] - self.cpu0[name]) / self.seconds

    def cpu_used(self, name: str) -> float:
        """CPU seconds one process used in the window."""
        return self.cpu1[name] - self.cpu0[name]


# -- statistics --------------------------------------------------------------------------------

def pct(values, q: float) -> float:
    """Percentile (nan for no values)."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def fmt(value, digits: int = 1, unit: str = '') -> str:
    """Format a number for a table ('-' for nan/None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return f'{value:.{digits}f}{unit}'


def table(headers: list, rows: list) -> str:
    """Format a plain-text table, columns right-aligned (the first one left-aligned)."""
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return '  '.join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                         for i, cell in enumerate(row))
    rule = '  '.join('-' * width for width in widths)
    return '\n'.join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def frame_stats(records: np.ndarray, stamps: np.ndarray, t0: float, t1: float,
                viewers: int, in_flight: float = 0.5) -> dict:
    """Delivery, rate and latency figures of viewer records over the window [t0, t1].

    * fps: frames a viewer received in the window / window length.
    * delivered: of the frames published in [t0, t1 - in_flight] (the tail is excluded so that
      frames still in flight are not counted as lost), the fraction a viewer received, matched
      by exact header.stamp.
    * latency: receive wall clock - header.stamp of every frame received in the window, split
      into the DDS hop (bridge received_time - stamp) and the bridge + websocket hop.
    * growth: median latency of the first fifth of the window vs the last fifth.
    * intake: frames the bridge received (its seq numbers) / frames published, over the same
      span; below 1 means frames were lost before the bridge (DDS), not by the bridge.
    """
    seconds = t1 - t0
    inside = records[(records[:, V_RECV] >= t0) & (records[:, V_RECV] <= t1)]
    published = stamps[(stamps >= t0 * 1e6) & (stamps <= (t1 - in_flight) * 1e6)]
    published_set = set(published.tolist())
    fps, delivered = [], []
    for viewer in range(viewers):
        mine = records[records[:, V_ID] == viewer]
        fps.append(np.count_nonzero(inside[:, V_ID] == viewer) / seconds)
        got = set(mine[:, V_STAMP_US].astype(np.int64).tolist()) & published_set
        delivered.append(len(got) / len(published) if len(published) else math.nan)
    latency = (inside[:, V_RECV] - inside[:, V_STAMP_US] * 1e-6) * 1000.0
    dds = (inside[:, V_BRIDGE_RECV] - inside[:, V_STAMP_US] * 1e-6) * 1000.0
    hop = (inside[:, V_RECV] - inside[:, V_BRIDGE_RECV]) * 1000.0
    fifth = seconds / 5
    first = latency[inside[:, V_RECV] < t0 + fifth]
    last = latency[inside[:, V_RECV] > t1 - fifth]
    intake = math.nan
    if len(published) and len(records):
        seen = records[np.isin(records[:, V_STAMP_US].astype(np.int64), published)]
        if len(seen) > 1:
            lo, hi = seen[:, V_STAMP_US].min(), seen[:, V_STAMP_US].max()
            span = np.count_nonzero((published >= lo) & (published <= hi))
            intake = (seen[:, V_SEQ].max() - seen[:, V_SEQ].min() + 1) / span
    return {
        'viewers': viewers,
        'published_fps': np.count_nonzero((stamps >= t0 * 1e6) & (stamps <= t1 * 1e6)) / seconds,
        'fps_min': min(fps) if fps else math.nan, 'fps_median': pct(fps, 50),
        'delivered_min': min(delivered) if delivered else math.nan,
        'delivered_median': pct(delivered, 50), 'intake': intake,
        'p50': pct(latency, 50), 'p95': pct(latency, 95), 'p99': pct(latency, 99),
        'max': float(latency.max()) if len(latency) else math.nan,
        'dds_p50': pct(dds, 50), 'hop_p50': pct(hop, 50), 'hop_p99': pct(hop, 99),
        'growth_first': pct(first, 50), 'growth_last': pct(last, 50),
        'frames': len(inside),
    }


def frames_in(records: np.ndarray, t0: float, t1: float) -> int:
    """Frames the bridge received during [t0, t1], from the highest seq seen by then."""
    inside = records[(records[:, V_RECV] > t0) & (records[:, V_RECV] <= t1)]
    if not len(inside):
        return 0
    before = records[records[:, V_RECV] <= t0]
    first = before[:, V_SEQ].max() if len(before) else inside[:, V_SEQ].min() - 1
    return int(inside[:, V_SEQ].max() - first)


# -- one video case ----------------------------------------------------------------------------

VIDEO_TOPIC = '/bench/image'


def add_rig_options(parser):
    """Options every video benchmark shares."""
    parser.add_argument('--per-worker', type=int, default=13,
                        help='viewers per worker process (default 13: 50 viewers = 4 workers)')
    parser.add_argument('--reliable', action='store_true',
                        help='reliable publisher QoS (default: best effort, depth 1)')
    parser.add_argument('--bridge-env', action='append', default=[], metavar='NAME=VALUE',
                        help='extra environment for the bridge process only, e.g. '
                             'GLIBC_TUNABLES=... to try an allocator setting (repeatable)')
    parser.add_argument('--keep-logs', action='store_true', help='keep process logs and data')


def video_case(paths: list, options, kind: str = 'raw', params=(),
               profile_seconds: float = 0, source: str = '') -> dict:
    """Run publisher, bridge and one viewer per path: warm up, measure a window, profile.

    Everything is started fresh for the case and stopped (SIGINT, by PID) before returning.
    Returns frame_stats() of the window plus the bridge's CPU and memory, the CPU of the other
    processes, and (with ``profile_seconds``) a Profile taken after the window, so the
    profilers never disturb the measured figures. ``source``: another checkout's bridge
    (:func:`start_bridge`).
    """
    run_for = options.warmup + options.duration + profile_seconds
    params = list(params) + ([f'streams.camera.type:={kind}'] if kind != 'raw' else [])
    env = dict(item.split('=', 1) for item in options.bridge_env)
    with Rig(options.keep_logs) as rig:
        bridge, port = start_bridge(rig, VIDEO_TOPIC, params, env=env,
                                    source=source or getattr(options, 'bridge_source', ''))
        publisher, stamps_path = start_publisher(rig, VIDEO_TOPIC, run_for + 60, kind=kind,
                                                 reliable=options.reliable)
        workers, outputs = start_viewers(rig, port, paths, run_for + 60, options.per_worker)
        wait_streaming(workers, outputs)
        time.sleep(options.warmup)
        window = Window({child.name: child.pid for child in rig.children})
        window.begin()
        window.sleep(options.duration)
        window.end()
        profiled = None
        if profile_seconds:
            profiled = Profile(bridge.pid, rig.log_dir)
            profiled.run(profile_seconds)
        stop_workers(rig, workers)
        report_viewer_problems(workers)
        rig.stop(publisher)
        rig.stop(bridge)
        records = load_records(outputs)
        stamps = load_stamps(stamps_path)
    stats = frame_stats(records, stamps, window.t0, window.t1, len(paths))
    frames = frames_in(records, window.t0, window.t1)
    rss = window.rss_samples['bridge']
    stats.update({
        'records': records, 't0': window.t0, 't1': window.t1,
        'cpu': window.cpu_percent('bridge'), 'frames_in': frames,
        'cpu_ms_per_frame': 1000 * window.cpu_used('bridge') / max(frames, 1),
        'faults_per_frame': (window.faults1['bridge'] - window.faults0['bridge'])
        / max(frames, 1),
        'hwm_mb': window.mem1['bridge']['VmHWM'] / 1024,
        'rss_start_mb': window.mem0['bridge']['VmRSS'] / 1024,
        'rss_end_mb': window.mem1['bridge']['VmRSS'] / 1024,
        'rss_max_mb': max(rss) / 1024 if rss else math.nan,
        'publisher_cpu': window.cpu_percent('publisher'),
        'viewers_cpu': sum(window.cpu_percent(w.name) for w in workers),
        'others_cpu': window.others_percent(),
    })
    if profiled is not None:
        stats['profile'] = (profiled, frames_in(records, profiled.t0, profiled.t1))
    return stats


def print_versions(before: str = ''):
    """Say which bridge was measured: the tables are only meaningful with the code they ran.

    ``before``: the other checkout of a side-by-side run (--before), named by its commit when it
    is a git checkout; an exported copy carries none, so the command line must say it.
    """
    def git(*args, where=ROOT):
        try:
            return subprocess.run(['git', '-C', where, *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return '?'
    dirty = git('status', '--porcelain', '--', 'src/video_bridge')
    print(f'bridge: {git("rev-parse", "--short", "HEAD")}'
          f'{" + uncommitted changes in src/video_bridge" if dirty else ""}; '
          f'machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; '
          f'ROS_DOMAIN_ID={os.environ.get("ROS_DOMAIN_ID")}')
    if before:
        inside = git('rev-parse', '--show-toplevel', where=before) == before
        commit = git('rev-parse', '--short', 'HEAD', where=before) if inside else ''
        print(f'before: the bridge in {before}'
              f'{f" (commit {commit})" if commit else " (not a git checkout)"}')


# -- profiling ---------------------------------------------------------------------------------
#
# Two views of the bridge, taken together over the same few seconds:
# * perf (cpu-clock sampling with DWARF call chains, every thread, native and kernel code): the
#   complete CPU picture, including what Python cannot see (rclpy's C conversion, Fast DDS
#   threads, page faults, kernel TCP). It cannot name Python functions (CPython 3.11 has no
#   perf trampoline), so interpreter time is grouped by thread.
# * py-spy (Python stacks, --nonblocking so the bridge is never paused): which Python code the
#   interpreter time belongs to. Time spent in C is charged to the calling Python line, and its
#   idle detection is a heuristic, so its shares are indicative only.

PERF_CATEGORIES = (
    # (headline group, detail, words any of which in the call chain selects it); first match wins
    ('DDS/rclpy intake', 'rclpy msg -> Python: data copied twice (bytes, then array.array)',
     ('convert_to_py',)),
    ('DDS/rclpy intake', 'rcl_take: CDR -> C message (data copied once)',
     ('cdr_deserialize', 'deserializeROSmessage')),
    ('DDS/rclpy intake', 'malloc giving freed frames back to the kernel (madvise/munmap)',
     ('heap_trim', 'shrink_heap', '__x64_sys_madvise', '__x64_sys_munmap')),
    ('DDS/rclpy intake', 'rcl/rmw wait and take (native)', ('rcl_wait', 'rmw_wait', 'rcl_take')),
    ('JPEG encode', 'OpenCV (imencode; resize/imdecode where used)', ('cv2.abi3.so', 'libjpeg')),
    ('websocket send', 'kernel TCP send (sendto, loopback delivery)',
     ('__sys_sendto', 'tcp_sendmsg', 'sock_send')),
    ('other', 'socket receive and epoll', ('sock_recv', 'epoll', 'select_epoll')),
    ('other', 'futex waits/wakes (GIL and lock hand-offs)', ('futex',)),
)


def perf_available() -> bool:
    """Tell whether perf is installed (it samples the bridge's native and kernel code)."""
    return shutil.which('perf') is not None


def perf_record(pid: int, seconds: float, out: str):
    """Start ``perf record`` on every thread of ``pid`` for ``seconds``; return the Popen."""
    argv = ['perf', 'record', '--quiet', '-e', 'cpu-clock', '-F', '499',
            '--call-graph', 'dwarf,16384', '-p', str(pid), '-o', out, '--', 'sleep',
            f'{seconds:.1f}']
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def perf_categorise(data: str, threads: dict) -> dict:
    """Count samples per (headline, detail) in a perf recording, via ``perf script``.

    ``threads`` maps tid -> kind (see :func:`thread_kind`). A sample is first matched on its
    call chain against PERF_CATEGORIES; what is left is interpreter or other native time of
    its thread.
    """
    text = subprocess.run(['perf', 'script', '-i', data, '-F', 'tid,ip,sym,dso'],
                          capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for block in text.split('\n\n'):
        lines = block.strip().splitlines()
        if not lines:
            continue
        tid = int(lines[0].split()[0])
        chain = ' '.join(lines[1:])
        kind = threads.get(tid, 'native: other')
        for headline, detail, words in PERF_CATEGORIES:
            if any(word in chain for word in words):
                break
        else:
            if kind.startswith('native'):
                headline, detail = ('DDS/rclpy intake', f'{kind} (Fast DDS transport)') \
                    if 'dds' in kind else ('other', kind)
            elif 'page_fault' in chain:
                headline, detail = 'other', f'page faults ({kind})'
            elif kind.startswith('main'):
                headline, detail = 'websocket send', \
                    'Python on the network loop (pump, framing, asyncio)'
            else:
                headline, detail = 'DDS/rclpy intake', \
                    'Python on the ROS threads (image intake, hub, encoding; executor)'
        counts[(headline, detail)] += 1
    return counts


def thread_kind(pid: int, tid: int, name: str) -> str:
    """Name the role of a bridge thread.

    The main thread runs the asyncio network loop; the other Python-named threads are the image
    intake (take, conversion, encoding) and the rclpy executor (services, timers), which the OS
    does not tell apart; Fast DDS names its own threads (dds.shm.*, dds.udp.*, dds.ev.*).
    """
    if tid == pid:
        return 'main thread (asyncio network loop)'
    if name.startswith('python') or name == 'bridge_node':
        return 'ROS threads (image intake: conversion, encoding; executor)'
    return f'native: {".".join(name.split(".")[:2])}'


def pyspy_record(pid: int, seconds: float, out: str, rate: int = 200):
    """Start py-spy on the bridge; return (Popen or None, reason it could not run)."""
    if not os.access(PYSPY, os.X_OK):
        return None, (f'py-spy not found at {PYSPY} (python3 -m venv /tmp/pyspy-venv && '
                      f'/tmp/pyspy-venv/bin/pip install py-spy)')
    argv = [PYSPY, 'record', '--pid', str(pid), '--duration', str(int(math.ceil(seconds))),
            '--rate', str(rate), '--format', 'raw', '--nonblocking', '--output', out]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), None


# Python-level activities, decided from a py-spy stack (first rule whose words appear wins).
PYSPY_CATEGORIES = (
    ('JPEG encode (encode_jpeg)', ('encode_jpeg',)),
    ('JPEG decode (decode_compressed)', ('decode_compressed',)),
    ('conversion (image_to_array, to_display)', ('image_to_array', 'to_display')),
    ('websocket send (_pump, send_frame, write)', ('_pump', 'send_frame', 'binary_frame',
                                                   '_write_ready', 'mjpeg_part')),
    ('websocket receive (pongs, control)', ('_read_frames', 'control.py', 'teleop.py')),
    ('rclpy take + callback (intake)', ('rclpy', 'on_image', 'on_compressed', '_feed')),
    ('asyncio loop (select, scheduling)', ('base_events.py', 'selectors.py', 'events.py')),
)


def pyspy_categorise(raw_path: str) -> collections.Counter:
    """py-spy samples per Python-level activity."""
    counts = collections.Counter()
    with open(raw_path) as handle:
        for line in handle:
            stack, _, count = line.rstrip('\n').rpartition(' ')
            if not stack:
                continue
            for name, words in PYSPY_CATEGORIES:
                if any(word in stack for word in words):
                    counts[name] += int(count)
                    break
            else:
                counts['other Python'] += int(count)
    return counts


class Profile:
    """perf + py-spy + /proc per-thread CPU of one process over one window."""

    def __init__(self, pid: int, scratch: str):
        self.pid = pid
        self.scratch = scratch
        self.errors = []
        self.perf_counts = collections.Counter()
        self.pyspy_counts = collections.Counter()

    def run(self, seconds: float):
        """Profile for ``seconds`` (blocks)."""
        perf_out = os.path.join(self.scratch, f'perf-{self.pid}.data')
        spy_out = os.path.join(self.scratch, f'pyspy-{self.pid}.txt')
        before, self.t0 = thread_cpu(self.pid), time.time()
        perf = perf_record(self.pid, seconds, perf_out) if perf_available() else None
        if perf is None:
            self.errors.append('perf not installed: no native breakdown')
        spy, error = pyspy_record(self.pid, seconds, spy_out)
        if error:
            self.errors.append(error)
        time.sleep(seconds)
        after, self.t1 = thread_cpu(self.pid), time.time()
        self.kinds = {tid: thread_kind(self.pid, tid, name) for tid, (name, _) in after.items()}
        self.thread_seconds = collections.Counter()
        for tid, (name, used) in after.items():
            self.thread_seconds[self.kinds[tid]] += used - before.get(tid, (name, 0.0))[1]
        for tool, process, out, parse in (('perf', perf, perf_out, self._parse_perf),
                                          ('py-spy', spy, spy_out, self._parse_pyspy)):
            if process is None:
                continue
            try:
                _, stderr = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()  # a profiler is our own child and holds no ROS resources
                _, stderr = process.communicate()
            if process.returncode != 0:
                self.errors.append(f'{tool} failed ({process.returncode}): '
                                   f'{stderr.decode(errors="replace").strip()[-300:]}')
                continue
            try:
                parse(out)
            except (OSError, subprocess.CalledProcessError) as exc:
                self.errors.append(f'{tool}: cannot read its output: {exc}')

    def _parse_perf(self, out):
        self.perf_counts = perf_categorise(out, self.kinds)

    def _parse_pyspy(self, out):
        self.pyspy_counts = pyspy_categorise(out)

    def report(self, label: str, frames: int):
        """Print per-thread CPU, the perf breakdown and py-spy's Python-level split."""
        seconds = self.t1 - self.t0
        total = sum(self.thread_seconds.values())
        per_frame = 1000.0 / max(frames, 1)
        print(f'\n{label}: where the bridge CPU goes ({seconds:.0f} s, {frames} input frames, '
              f'{100 * total / seconds:.1f} % of one core, {total * per_frame:.2f} ms/frame)')
        rows, rest = [], 0.0
        for kind, used in self.thread_seconds.most_common():
            if used / seconds >= 0.002:
                rows.append([kind, fmt(100 * used / seconds), fmt(used * per_frame, 2)])
            else:
                rest += used
        rows.append(['other threads', fmt(100 * rest / seconds), fmt(rest * per_frame, 2)])
        print(table(['thread (/proc/<pid>/task)', 'CPU %', 'ms/frame'], rows))
        for error in self.errors:
            print(f'  ({error})')
        samples = sum(self.perf_counts.values())
        if samples:
            groups = collections.Counter()
            for (headline, _), count in self.perf_counts.items():
                groups[headline] += count
            rows = []
            for headline, group_count in groups.most_common():
                rows.append([headline.upper(), fmt(100 * group_count / samples),
                             fmt(100 * total / seconds * group_count / samples),
                             fmt(total * per_frame * group_count / samples, 2)])
                for (head, detail), count in self.perf_counts.most_common():
                    if head == headline:
                        rows.append([f'  {detail}', fmt(100 * count / samples),
                                     fmt(100 * total / seconds * count / samples),
                                     fmt(total * per_frame * count / samples, 2)])
            print(f'perf: {samples} samples, shares scaled to the measured CPU')
            print(table(['activity (perf call chains)', 'share %', 'CPU %', 'ms/frame'], rows))
        spied = sum(self.pyspy_counts.values())
        if spied:
            split = ', '.join(f'{name} {100 * count / spied:.0f}%'
                              for name, count in self.pyspy_counts.most_common(6))
            print(f'py-spy ({spied} Python samples, indicative): {split}')
            # perf cannot see numpy views; py-spy can: charge conversion its share of the
            # Python threads' CPU (it is part of "Python on the ROS threads" above).
            python_seconds = sum(used for kind, used in self.thread_seconds.items()
                                 if not kind.startswith('native'))
            share = self.pyspy_counts[PYSPY_CATEGORIES[2][0]] / spied
            print(f'conversion (image_to_array, to_display): {100 * share:.1f}% of Python '
                  f'samples, about {python_seconds * share * per_frame:.2f} ms/frame')
