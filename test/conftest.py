"""Shared test harness: real rclpy nodes, real processes, waits on conditions (never sleeps).

The suite runs through ``scripts/test``, which puts the whole pytest process in a private network
namespace with only loopback and gives it its own ROS_DOMAIN_ID. The guard below refuses to run
ROS tests anywhere else, so no test ever sends DDS discovery onto a real network.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from support.cmd_vel import CmdVelRecorder
from support.waiting import wait_for  # noqa: F401 (the tests import it from here)

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), '..'))

# Test tiers: the folder a module lives in (test/<tier>/test_*.py), so `scripts/test test/unit`
# or `scripts/test test -m unit` runs one tier; a module outside the tier folders fails the
# collection.
#   unit  pure Python and the page's Node tests: no sockets, no ROS node, milliseconds
#   net   the network edge in-process: real sockets, aiohttp, aiortc on both ends; no ROS
#   node  live rclpy nodes: bridge_node / camera_node processes, ROS tools, real clients
#   page  the page in headless Chromium against live nodes
#   lab   network-namespace labs (netlab): NAT, tunnel, nginx, coturn, emulated links
#   lint  flake8, ShellCheck and the page's syntax beyond the package's own linters
TIERS = ('unit', 'net', 'node', 'page', 'lab', 'lint')

# A run started in the background of a non-interactive shell (`scripts/test &`) inherits SIGINT
# ignored, and so would every process a test starts: a bash script cannot even trap it then.
# The tests that stop a launch, the demo or a node with SIGINT (as Ctrl-C does) need it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
PACKAGE_SRC = os.path.join(REPO, 'src', 'video_bridge')
if PACKAGE_SRC not in sys.path:
    sys.path.insert(0, PACKAGE_SRC)
INSTALL_LIB = os.path.join(os.environ.get('VIDEO_BRIDGE_INSTALL', os.path.join(REPO, 'install')),
                           'video_bridge', 'lib', 'video_bridge')  # scripts/test --lowest
OUTPUT_DIR = os.path.join(REPO, 'test-output')


def only_loopback() -> bool:
    """Tell whether this process's network namespace has no interface but loopback.

    /proc/self/net/dev is per namespace (/sys/class/net may still show the host's).
    """
    try:
        with open('/proc/self/net/dev') as devices:
            names = {line.split(':')[0].strip() for line in devices.readlines()[2:]}
    except OSError:
        return False
    return names <= {'lo'}


def require_isolated_ros():
    """Fail loudly unless ROS may safely run here (private namespace, localhost discovery)."""
    if not only_loopback():
        pytest.fail('ROS tests must run in a private network namespace: use scripts/test')
    if os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') != 'LOCALHOST':
        pytest.fail('ROS_AUTOMATIC_DISCOVERY_RANGE must be LOCALHOST: use scripts/test')


_PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """
    Return a TCP port free on every address right now, below the ephemeral range.

    A port the kernel hands out with bind(0) is an ephemeral one: in the second between
    this call and the server's bind, a client socket of the test can be given the same
    port by connect(), and the server then fails with EADDRINUSE. Ports below 32768 are
    never chosen by connect(), so only another server could take them.
    """
    import random
    candidates = random.sample(range(*_PORT_RANGE), 200)
    for port in candidates:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(('0.0.0.0', port))
            except OSError:
                continue
            return port
    raise RuntimeError(f'no free TCP port in {_PORT_RANGE}')


class RosHarness:
    """One rclpy context and node for the test process, spun on a background thread."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('test_harness', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def collect(self, msg_type, topic: str, qos=10) -> list:
        """Subscribe to ``topic`` and return the (growing) list of received messages."""
        received = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5)


# Return codes of a process that died of a fault: never a clean shutdown.
CRASHES = frozenset(-sig for sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS,
                                     signal.SIGFPE, signal.SIGILL))


class ChildProcess:
    """
    A process a test started, its output in a log file, stopped cleanly (Ctrl-C) at the end.

    ``own_group``: the process leads its own process group (``ros2 launch`` and its nodes), so
    a hang is ended by killing that group: only processes this test started.
    """

    def __init__(self, command, name: str, env=None, own_group: bool = False):
        self.name = name
        self.own_group = own_group
        os.makedirs(OUTPUT_DIR, exist_ok=True)
        self.log_path = os.path.join(OUTPUT_DIR, f'{self.name}-{os.getpid()}-{id(self)}.log')
        self._log = open(self.log_path, 'w+')
        self.proc = subprocess.Popen(list(command), stdout=self._log, stderr=subprocess.STDOUT,
                                     # a crash prints each thread's Python stack
                                     env={**os.environ, 'PYTHONFAULTHANDLER': '1',
                                          **(env or {})},
                                     start_new_session=own_group)

    def output(self) -> str:
        with open(self.log_path) as log:
            return log.read()

    def wait_output(self, text: str, timeout: float = 15.0) -> str:
        """Wait until the process has printed ``text``; fail if it exits first."""
        def seen():
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                pytest.fail(f'{self.name} exited ({self.proc.returncode}) before printing '
                            f'{text!r}:\n{self.output()[-3000:]}')
            return False
        wait_for(seen, timeout, f'{self.name} to print {text!r}')
        return self.output()

    def wait_port(self, port: int, timeout: float = 40.0):
        """Wait until 127.0.0.1:port accepts connections; fail if the process exits first."""
        def up():
            if self.proc.poll() is not None:
                pytest.fail(f'{self.name} exited ({self.proc.returncode}):\n'
                            f'{self.output()[-3000:]}')
            return port_open(port)
        wait_for(up, timeout, f'{self.name} to serve port {port}')

    def stop(self, sig=signal.SIGINT, timeout: float = 10.0) -> int:
        """Ask the process to shut down cleanly; kill it (or its own group) only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.own_group:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.kill()
                self.proc.wait()
                pytest.fail(f'{self.name} did not exit within {timeout} s of {sig!r}:\n'
                            f'{self.output()[-3000:]}')
        self._log.close()
        if self.proc.returncode in CRASHES:   # also leaves its Fast DDS segment behind
            pytest.fail(f'{self.name} crashed ({signal.Signals(-self.proc.returncode).name}):'
                        f'\n{self.output()[-3000:]}')
        return self.proc.returncode


class NodeProcess(ChildProcess):
    """A package executable run as its own process, as ``ros2 run`` would run it."""

    def __init__(self, executable: str, ros_args=(), args=(), name: str = '', env=None):
        command = [os.path.join(INSTALL_LIB, executable), *args]
        if ros_args:
            command += ['--ros-args', *ros_args]
        super().__init__(command, name or executable, env)


@pytest.fixture(scope='session')
def ros():
    """The test process's own rclpy node (session-wide)."""
    require_isolated_ros()
    harness = RosHarness()
    yield harness
    harness.close()


@pytest.fixture(scope='module')
def cmd_vel(ros):
    """The module's /cmd_vel recorder (support.cmd_vel): read with mark() and since()."""
    recorder = CmdVelRecorder(ros.node)
    yield recorder
    recorder.close()


@pytest.fixture
def coturn():
    """A real coturn on 127.0.0.1 for one test, stopped however the test ends."""
    from support.webrtc_support import Coturn
    server = Coturn()   # set up before a bridge fixture, so it is stopped after it
    yield server
    server.stop()


@pytest.fixture
def launch_node():
    """Start package executables for one test and stop them (cleanly) afterwards."""
    require_isolated_ros()
    started = []

    def start(executable, ros_args=(), args=(), name='', env=None):
        process = NodeProcess(executable, ros_args, args, name, env)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def port_open(port: int) -> bool:
    """Tell whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=0.2):
            return True
    except OSError:
        return False


BRIDGE_PARAMS = os.path.join(REPO, 'config', 'bridge.yaml')


class Bridge:
    """A running bridge_node process and where to reach it."""

    def __init__(self, process: NodeProcess, port: int):
        self.process = process
        self.port = port
        self.http = f'http://127.0.0.1:{port}'
        self.ws = f'ws://127.0.0.1:{port}'


def bridge_ros_args(overrides: dict) -> list:
    """--ros-args for bridge_node: the shipped YAML, then ``-p`` overrides (as a user layers)."""
    ros_args = ['--params-file', BRIDGE_PARAMS]
    for name, value in overrides.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (list, tuple)):
            value = '[' + ','.join(f'"{v}"' if isinstance(v, str) else str(v)
                                   for v in value) + ']'
        ros_args += ['-p', f'{name}:={value}']
    return ros_args


@pytest.fixture
def start_bridge(launch_node):
    """Start bridge_node with config/bridge.yaml plus overrides; wait until it listens."""
    def start(port=None, env=None, **parameters):
        # The token is never a ROS parameter: token='x' goes in as $VIDEO_BRIDGE_TOKEN.
        env = {'VIDEO_BRIDGE_TOKEN': parameters.pop('token', '') or '', **(env or {})}
        port = port or free_port()
        ros_args = bridge_ros_args({'host': '127.0.0.1', 'port': port, **parameters})
        process = launch_node('bridge_node', ros_args=ros_args, name='bridge_node', env=env)
        process.wait_port(port, 20)
        return Bridge(process, port)
    return start


class FramePublisher:
    """Publishes bgr8 test frames at a steady rate from a thread and remembers their stamps."""

    def __init__(self, node, topic: str, width: int = 640, height: int = 480,
                 rate: float = 30.0, qos=None, encoding: str = 'bgr8', make=None):
        import numpy as np
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        self._np = np
        self._image = Image
        self.node = node
        self.width, self.height, self.encoding = width, height, encoding
        self.publisher = node.create_publisher(Image, topic, qos or qos_profile_sensor_data)
        self.period = 1.0 / rate
        self.make = make or self._pattern
        self.stamps = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pattern(self, index):
        frame = self._np.zeros((self.height, self.width, 3), self._np.uint8)
        frame[:, (index * 7) % self.width] = 255
        return frame

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.node.destroy_publisher(self.publisher)

    def _run(self):
        next_time = time.monotonic()
        while not self._stop.is_set():
            array = self.make(self.count)
            msg = self._image()
            msg.header.stamp = self.node.get_clock().now().to_msg()
            msg.header.frame_id = 'camera'
            msg.height, msg.width = array.shape[:2]
            msg.encoding = self.encoding
            msg.step = array.strides[0]
            msg.data = array.tobytes()
            self.publisher.publish(msg)
            self.stamps.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
            self.count += 1
            next_time += self.period
            self._stop.wait(max(0.0, next_time - time.monotonic()))  # pacing, not sync


CAMERA_PARAMS = os.path.join(REPO, 'config', 'camera.yaml')
CHROMIUM = '/usr/bin/chromium'
# As root, headless, with nothing of its own reaching out to the network.
CHROMIUM_ARGS = ('--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update',
                 '--disable-sync')
# WebRTC between Chromium and a bridge on this machine (loopback peers, no mDNS candidates).
WEBRTC_CHROMIUM_ARGS = ('--allow-loopback-in-peer-connection',
                        '--disable-features=WebRtcHideLocalIpsWithMdns',
                        '--autoplay-policy=no-user-gesture-required')


@contextlib.contextmanager
def camera_node():
    """The real camera node (test pattern, config/camera.yaml) in /camera, stopped cleanly."""
    require_isolated_ros()
    process = NodeProcess('camera_node', ros_args=['-r', '__ns:=/camera',
                                                   '--params-file', CAMERA_PARAMS],
                          name='camera_node')
    try:
        process.wait_output('publishing')
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def chromium(extra_args=(), namespace=None):
    """Debian's headless Chromium driven by Playwright (skips the test if either is missing).

    ``namespace``: a network namespace (a netlab Lab's) the browser runs in, through a wrapper
    that execs ``ip netns exec NS chromium``; Playwright talks to it over pipes, not the network.
    """
    playwright_api = pytest.importorskip('playwright.sync_api')
    if not os.path.exists(CHROMIUM):
        pytest.skip('chromium is not installed')
    with contextlib.ExitStack() as stack:
        executable = CHROMIUM
        if namespace is not None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix='chromium-netns-'))
            executable = os.path.join(folder, 'chromium')
            with open(executable, 'w') as wrapper:
                wrapper.write(f'#!/bin/sh\nexec ip netns exec {namespace} {CHROMIUM} "$@"\n')
            os.chmod(executable, 0o700)
        playwright = stack.enter_context(playwright_api.sync_playwright())
        browser = playwright.chromium.launch(executable_path=executable,
                                             args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope='module')
def many_file_descriptors():
    """Raise this process's RLIMIT_NOFILE (and its children's): thousands of client sockets."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 16384) if hard != resource.RLIM_INFINITY else 16384
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def pytest_collection_modifyitems(config, items):
    """Mark every test of test/ with its tier (its folder); refuse a module outside them."""
    test_dir = os.path.join(REPO, 'test')
    stray = set()
    for item in items:
        path = str(item.path)
        if not path.startswith(test_dir + os.sep):
            continue          # the package's linters (src/video_bridge/test) carry 'linter'
        tier = os.path.basename(os.path.dirname(path))
        if os.path.dirname(os.path.dirname(path)) == test_dir and tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        else:
            stray.add(os.path.relpath(path, REPO))
    if stray:
        raise pytest.UsageError(f'test modules outside the tier folders: {sorted(stray)}; move '
                                f'each into test/<tier>/ (one of {", ".join(TIERS)})')


INTERFACES = os.path.join(REPO, 'test', 'interfaces')
INTERFACES_BUILD = os.path.join(REPO, 'build', 'test-interfaces')


@pytest.fixture(scope='module')
def foxglove_env():
    """Build the test-only foxglove_msgs (once) and return the environment that finds it."""
    import hashlib
    sources = sorted(os.path.join(d, f) for d, _, files in os.walk(INTERFACES) for f in files)
    digest = hashlib.sha256(b''.join(open(p, 'rb').read() for p in sources)).hexdigest()
    install = os.path.join(INTERFACES_BUILD, 'install')
    stamp = os.path.join(INTERFACES_BUILD, 'stamp')
    if not os.path.exists(stamp) or open(stamp).read() != digest:
        venv = os.path.dirname(os.path.dirname(sys.executable))
        env = {**os.environ, 'AMENT_PREFIX_PATH': venv, 'CMAKE_PREFIX_PATH': venv,
               'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}
        built = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), 'colcon'), '--log-base',
             os.path.join(INTERFACES_BUILD, 'log'), 'build', '--base-paths', INTERFACES,
             '--build-base', INTERFACES_BUILD, '--install-base', install,
             '--event-handlers', 'console_direct-', '--cmake-args', '-DBUILD_TESTING=OFF',
             f'-DPython3_EXECUTABLE={sys.executable}'],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if built.returncode != 0:
            pytest.fail(f'building the test-only foxglove_msgs failed:\n{built.stdout[-3000:]}'
                        f'\n{built.stderr[-3000:]}')
        with open(stamp, 'w') as handle:
            handle.write(digest)
    prefix = os.path.join(install, 'foxglove_msgs')
    site = os.path.join(prefix, 'lib', f'python{sys.version_info[0]}.{sys.version_info[1]}',
                        'site-packages')

    def joined(name, value):
        return value + (os.pathsep + os.environ[name] if os.environ.get(name) else '')
    return {'AMENT_PREFIX_PATH': joined('AMENT_PREFIX_PATH', prefix),
            'LD_LIBRARY_PATH': joined('LD_LIBRARY_PATH', os.path.join(prefix, 'lib')),
            'PYTHONPATH': joined('PYTHONPATH', site)}
