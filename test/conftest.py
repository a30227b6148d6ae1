"""Shared test harness: real rclpy nodes, real processes, waits on conditions (never sleeps).

The suite runs through ``scripts/test``, which puts the whole pytest process in a private network
namespace with only loopback and gives it its own ROS_DOMAIN_ID. The guard below refuses to run
ROS tests anywhere else, so no test ever sends DDS discovery onto a real network.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), '..'))
PACKAGE_SRC = os.path.join(REPO, 'src', 'video_bridge')
if PACKAGE_SRC not in sys.path:
    sys.path.insert(0, PACKAGE_SRC)
INSTALL_LIB = os.path.join(REPO, 'install', 'video_bridge', 'lib', 'video_bridge')
OUTPUT_DIR = os.path.join(REPO, 'test-output')


def only_loopback() -> bool:
    """Tell whether this process sees no network interface but loopback."""
    try:
        return set(os.listdir('/sys/class/net')) <= {'lo'}
    except OSError:
        return False


def require_isolated_ros():
    """Fail loudly unless ROS may safely run here (private namespace, localhost discovery)."""
    if not only_loopback():
        pytest.fail('ROS tests must run in a private network namespace: use scripts/test')
    if os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') != 'LOCALHOST':
        pytest.fail('ROS_AUTOMATIC_DISCOVERY_RANGE must be LOCALHOST: use scripts/test')


def wait_for(predicate, timeout: float = 10.0, what: str = 'condition', interval: float = 0.005):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f'timed out after {timeout:.1f} s waiting for {what}')
        threading.Event().wait(interval)  # a poll interval, not a synchronisation sleep


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


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


class NodeProcess:
    """A package executable run as its own process, as ``ros2 run`` would run it."""

    def __init__(self, executable: str, ros_args=(), args=(), name: str = '', env=None):
        self.name = name or executable
        os.makedirs(OUTPUT_DIR, exist_ok=True)
        self.log_path = os.path.join(OUTPUT_DIR, f'{self.name}-{os.getpid()}-{id(self)}.log')
        self._log = open(self.log_path, 'w+')
        command = [os.path.join(INSTALL_LIB, executable), *args]
        if ros_args:
            command += ['--ros-args', *ros_args]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

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

    def stop(self, sig=signal.SIGINT, timeout: float = 10.0) -> int:
        """Ask the process to shut down cleanly; kill it only if it does not."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f'{self.name} did not exit within {timeout} s of {sig!r}')
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope='session')
def ros():
    """The test process's own rclpy node (session-wide)."""
    require_isolated_ros()
    harness = RosHarness()
    yield harness
    harness.close()


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
