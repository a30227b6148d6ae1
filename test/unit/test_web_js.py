"""The teleop page's JavaScript: its Node unit tests, and its protocol mirror against protocol.py.

``web/test/*.test.js`` run under Node's built-in test runner (no npm packages); this file fails
when any of them fails. The other tests here feed bytes and messages across the language border:
frame headers packed by protocol.py are parsed by web/js/protocol.js and the other way round,
and the page's control messages must decode with protocol.decode_control.
"""

import json
import os
import shutil
import subprocess

import pytest
from video_bridge.core import protocol

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..'))
WEB = os.path.join(REPO, 'web')
NODE = shutil.which('node')

assert NODE is not None, 'node is required for the page tests (scripts/bootstrap installs nodejs)'


def run_node(script: str) -> object:
    """Run an ES module snippet in web/ and return what it printed as JSON."""
    result = subprocess.run([NODE, '--input-type=module', '-e', script], cwd=WEB,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_node_unit_tests_pass():
    result = subprocess.run([NODE, '--test', 'test/'], cwd=WEB, capture_output=True, text=True,
                            timeout=120)
    report = result.stdout + result.stderr
    assert result.returncode == 0, f'node --test failed:\n{report[-6000:]}'
    summary = dict(line[2:].split(' ', 1) for line in result.stdout.splitlines()
                   if line.startswith('# ') and len(line[2:].split(' ', 1)) == 2)
    assert summary.get('fail') == '0', report[-3000:]
    assert int(summary.get('pass', '0')) >= 50, f'too few node tests ran:\n{report[-3000:]}'


HEADERS = [
    protocol.FrameHeader(seq=1, width=640, height=480, stamp_sec=1712345678,
                         stamp_nanosec=123456789, received_time=1712345678.987654, flags=0),
    protocol.FrameHeader(seq=0xFFFFFFFF, width=65535, height=1, stamp_sec=-2,
                         stamp_nanosec=999999999, received_time=0.0,
                         flags=protocol.FLAG_PASSTHROUGH | protocol.FLAG_SCALED
                         | protocol.FLAG_COLORMAPPED),
]


def test_js_parses_frames_packed_by_protocol_py():
    jpeg = b'\xff\xd8\xff\xe0JFIF-ish\xff\xd9'
    messages = [(protocol.pack_frame_header(h) + jpeg).hex() for h in HEADERS]
    parsed = run_node(f"""
        import {{ parseFrame }} from './js/protocol.js';
        const out = {json.dumps(messages)}.map((hex) => {{
          const f = parseFrame(new Uint8Array(Buffer.from(hex, 'hex')).buffer);
          return {{ ...f, jpeg: Buffer.from(f.jpeg).toString('hex') }};
        }});
        console.log(JSON.stringify(out));""")
    for header, frame in zip(HEADERS, parsed):
        assert frame['seq'] == header.seq
        assert (frame['width'], frame['height']) == (header.width, header.height)
        assert (frame['stampSec'], frame['stampNanosec']) == (header.stamp_sec,
                                                              header.stamp_nanosec)
        assert frame['receivedTime'] == header.received_time
        assert frame['flags'] == header.flags
        assert frame['stamp'] == pytest.approx(header.stamp, abs=1e-6)
        assert bytes.fromhex(frame['jpeg']) == jpeg


def test_protocol_py_unpacks_headers_packed_by_js():
    packed = run_node("""
        import { packFrameHeader } from './js/protocol.js';
        const b = packFrameHeader({ seq: 77, width: 320, height: 240, stampSec: 1700000000,
                                    stampNanosec: 5, receivedTime: 1700000000.25, flags: 2 });
        console.log(JSON.stringify(Buffer.from(b).toString('hex')));""")
    header, jpeg = protocol.unpack_frame(bytes.fromhex(packed) + b'JPEG')
    assert header == protocol.FrameHeader(77, 320, 240, 1700000000, 5, 1700000000.25, 2)
    assert bytes(jpeg) == b'JPEG'


def test_close_codes_match_protocol_py():
    close = run_node("""
        import { CLOSE } from './js/protocol.js';
        console.log(JSON.stringify(CLOSE));""")
    for name in ('NORMAL', 'GOING_AWAY', 'UNSUPPORTED_DATA', 'BAD_REQUEST', 'UNAUTHORIZED',
                 'UNKNOWN_STREAM', 'RATE_LIMITED', 'CAPACITY'):
        assert close[name] == getattr(protocol, f'CLOSE_{name}'), name


def test_page_messages_decode_with_protocol_py():
    sent = run_node("""
        import { messages } from './js/protocol.js';
        console.log(JSON.stringify([
          messages.acquire(), messages.acquire(true), messages.release(),
          messages.command('forward_left', 0.35), messages.stop(),
          messages.velocity(0.2, -0.4), messages.velocity(0.1, 0, 0.05),
          messages.estop(true), messages.estop(false), messages.time(1712345678901.2),
        ].map((m, i) => JSON.stringify({ ...m, id: i + 1 }))));""")
    decoded = [protocol.decode_control(text) for text in sent]
    assert [request_id for request_id, _ in decoded] == list(range(1, len(sent) + 1))
    bodies = [body for _, body in decoded]
    assert bodies == [
        protocol.Acquire(), protocol.Acquire(takeover=True), protocol.Release(),
        protocol.NamedCommand('forward_left', 0.35), protocol.NamedCommand('stop', None),
        protocol.VelocityCommand(protocol.Velocity(linear_x=0.2, angular_z=-0.4)),
        protocol.VelocityCommand(protocol.Velocity(linear_x=0.1, linear_y=0.05)),
        protocol.EmergencyStop(True), protocol.EmergencyStop(False),
        protocol.TimeSync(1712345678901.2),
    ]
