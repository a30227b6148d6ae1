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

from conftest import ChildProcess, REPO, require_isolated_ros, wait_for
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


def test_demo_prints_one_url_that_opens_here_and_kill_int_cleans_up(demo):
    process = demo(env={'VIDEO_BRIDGE_TOKEN': ''})
    output = process.wait_output('?token=', timeout=240)
    wait_for(lambda: 'video_bridge is up' in process.output(), 60, 'the runner to say it is up')
    output = process.output()
    urls = TOKEN_URL.findall(output)
    assert len(urls) == 1 and urls[0].startswith('http://203.0.113.2:8080/?token='), output
    assert 'http://127.0.0.1' not in output and 'http://203.0.113.2:8080/ ' not in output
    with urllib.request.urlopen(urls[0], timeout=10) as page:
        assert page.status == 200 and b'<html' in page.read().lower()
    namespace = f'vbdemo-{process.proc.pid}'
    assert namespace in namespaces()

    os.kill(process.proc.pid, signal.SIGINT)   # kill -INT <demo pid>, not Ctrl-C's group
    assert process.proc.wait(timeout=30) == 0, process.output()[-3000:]
    assert namespace not in namespaces()
    links = subprocess.run(['ip', '-o', 'link'], capture_output=True, text=True).stdout
    assert f'vbd{process.proc.pid}h' not in links
    assert 'stopping the car' in process.output()
