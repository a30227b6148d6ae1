"""scripts/demo as a new user meets it, and the URLs the bridge prints.

The demo runs for real inside the test's own network namespace (scripts/test): it makes its own
namespace and veth pair there (RFC 5737 addresses), so "this machine" is the test namespace and
the URL it prints must open from here. Each test removes what the demo made, even on failure.
"""

import os
import re
import signal
import subprocess
import urllib.request

from conftest import (bridge_ros_args, ChildProcess, INSTALL_LIB, REPO, require_isolated_ros,
                      wait_for)
import pytest

DEMO = os.path.join(REPO, 'scripts', 'demo')
TOKEN_URL = re.compile(r'https?://\S+\?token=\S+')


def namespaces() -> set:
    listed = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def test_demo_help_prints_help_before_doing_anything():
    before = namespaces()
    done = subprocess.run([DEMO, '--help'], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'scripts/demo' in done.stdout and 'kill -INT' in done.stdout
    assert 'camera_source:=' in done.stdout   # the launch arguments, from the runner
    assert '[bootstrap]' not in done.stdout + done.stderr
    assert namespaces() == before


@pytest.fixture
def demo():
    require_isolated_ros()
    if os.geteuid() != 0:
        pytest.skip('scripts/demo needs root (it makes a network namespace)')
    started = []

    def start(*args, env=None):
        started.append(ChildProcess([DEMO, *args], 'demo', env=env, own_group=True))
        return started[-1]
    yield start
    for process in started:
        if process.proc.poll() is None:
            process.stop(signal.SIGTERM, timeout=30)
        leftover = f'vbdemo-{process.proc.pid}'
        if leftover in namespaces():   # the demo failed to clean up: do it, then fail
            subprocess.run(['ip', 'netns', 'del', leftover], check=False)
            pytest.fail(f'scripts/demo left namespace {leftover} behind')


@pytest.mark.parametrize('stop', [signal.SIGINT, signal.SIGTERM], ids=['INT', 'TERM'])
def test_demo_prints_one_url_that_opens_here_and_a_signal_cleans_up(demo, stop):
    process = demo(env={'VIDEO_BRIDGE_TOKEN': ''})
    process.wait_output('http://203.0.113.2:8080/?token=', timeout=240)
    wait_for(lambda: 'video_bridge is up' in process.output(), 60, 'the runner to say it is up')
    output = process.output()
    urls = TOKEN_URL.findall(output)
    assert len(urls) == 1 and urls[0].startswith('http://203.0.113.2:8080/?token='), output
    assert 'http://127.0.0.1' not in output and 'http://203.0.113.2:8080/ ' not in output
    with urllib.request.urlopen(urls[0], timeout=10) as page:
        assert page.status == 200 and b'<html' in page.read().lower()
    namespace = f'vbdemo-{process.proc.pid}'
    assert namespace in namespaces()

    os.kill(process.proc.pid, stop)   # kill -INT/-TERM <demo pid>, not Ctrl-C's whole group
    assert process.proc.wait(timeout=30) == 0, process.output()[-3000:]
    assert namespace not in namespaces()
    links = subprocess.run(['ip', '-o', 'link'], capture_output=True, text=True).stdout
    assert f'vbd{process.proc.pid}h' not in links
    assert 'stopping the car' in process.output()


@pytest.fixture
def named_namespace():
    """A network namespace made with ``ip netns add`` (loopback up), deleted afterwards."""
    require_isolated_ros()
    if os.geteuid() != 0:
        pytest.skip('making a network namespace needs root')
    name = f'vbtest-{os.getpid()}'
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    try:
        subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'], check=True)
        yield name
    finally:
        subprocess.run(['ip', 'netns', 'del', name], check=False)


def test_the_bridge_says_where_its_token_urls_open(named_namespace, start_bridge):
    """Inside a network namespace its own names open only there; an outside URL replaces them."""
    inside = ChildProcess(['ip', 'netns', 'exec', named_namespace,
                           os.path.join(INSTALL_LIB, 'bridge_node'), '--ros-args',
                           *bridge_ros_args({'host': '0.0.0.0', 'port': 8080})],
                          'bridge_node-netns', env={'VIDEO_BRIDGE_TOKEN': ''})
    try:
        said = inside.wait_output('?token=', timeout=30)
    finally:
        assert inside.stop() == 0, inside.output()[-2000:]
    assert f'inside network namespace {named_namespace}, valid only there' in said
    assert 'http://127.0.0.1:8080/?token=' in said

    outside = start_bridge(host='0.0.0.0',
                           env={'VIDEO_BRIDGE_PAGE_URL': 'http://198.51.100.7:9000/'})
    said = outside.process.wait_output('?token=')
    urls = TOKEN_URL.findall(said)
    assert len(urls) == 1 and urls[0].startswith('http://198.51.100.7:9000/?token='), said
    assert 'valid only there' not in said
