"""The page over WebRTC when the only way through is TURN over TLS on port 443, in headless
Chromium against the real nodes and a real coturn.

Networks that block UDP often let only TLS on 443 out, on the robot's side and the viewer's.
Here both ends may use nothing but the relay: the bridge offers no host candidate and reaches
coturn over turns:, and the page is forced to relay candidates through the same turns: URL that
the bridge hands it. Chromium checks a TURN server's certificate (with the test's self-signed
one it drops the TLS connection at once and the page falls back), so this browser is started
with --ignore-certificate-errors, as the bridge trusts it through SSL_CERT_FILE.
"""

import os
import re

from conftest import CHROMIUM, chromium, WEBRTC_CHROMIUM_ARGS
import pytest
from test_webrtc_page import (address, camera, cmd_vel, drive_through_relay,  # noqa: F401
                              pages, wait_webrtc)
from webrtc_support import Coturn

pytest.importorskip('playwright.sync_api')
pytest.importorskip('aiortc')
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason='chromium is not installed')


@pytest.fixture(scope='module')
def browser():
    with chromium(list(WEBRTC_CHROMIUM_ARGS) + ['--ignore-certificate-errors']) as launched:
        yield launched


@pytest.fixture
def coturn_443():
    server = Coturn(tls=True, tls_port=443)   # before the bridge, so it is stopped after it
    yield server
    server.stop()


def test_plays_and_drives_when_both_ends_have_only_turn_over_tls(
        coturn_443, start_bridge, camera, cmd_vel, pages):  # noqa: F811 (imported fixtures)
    url = coturn_443.tls_url
    assert url.startswith('turns:127.0.0.1:443?')
    bridge = start_bridge(webrtc_host_addresses=['203.0.113.77'], ice_servers=[url],
                          turn_secret_file=coturn_443.secret_file,
                          env={'SSL_CERT_FILE': coturn_443.cert})
    cmd_vel.wait_publisher()
    page = pages(bridge, '?relay=1')
    try:
        wait_webrtc(page, timeout=40000)
    except Exception as exc:
        state = page.evaluate('(() => { const w = window.videoBridge.webrtc; return '
                              '{status: w.status, problem: w.problem || null}; })()')
        raise AssertionError(f'no WebRTC through turns: ({state}); bridge log:\n'
                             f'{bridge.process.output()[-3000:]}\ncoturn log:\n'
                             f'{coturn_443.output()[-4000:]}') from exc
    page.wait_for_function('window.videoBridge.webrtc.candidateType === "relay"',
                           timeout=10000)
    log = coturn_443.output()
    for user in ('bridge-c1', 'c1'):   # the robot's allocation and the page's, both over TLS
        assert re.search(rf'username=<\d+:{user}>.*method=TLSv1\.[23]', log), log[-3000:]
    drive_through_relay(page, cmd_vel)
    assert not page.errors, page.errors
