"""docs/protocol.md against a live bridge: what a client author reads is what the bridge does.

The pure wire-format checks are in test_protocol.py; here a real bridge_node process answers:
the /api/streams example has exactly the live fields, every client message in the doc's tables
gets the reply its "reply" column names, the e-stop release rule holds as stated, and the
ffmpeg recording recipe, run as written with the real ffmpeg, records in real time.
"""

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import urllib.request

from conftest import FramePublisher, REPO
import pytest
import websockets

DOC = os.path.join(REPO, 'docs', 'protocol.md')


def doc() -> str:
    with open(DOC, encoding='utf-8') as handle:
        return handle.read()


def section(title: str) -> str:
    text = doc()
    start = text.index(title)
    end = text.find('\n## ', start + len(title))
    return text[start:end if end >= 0 else len(text)]


def json_blocks(text: str) -> list:
    return [json.loads(block) for block in re.findall(r'```json\n(.*?)```', text, re.S)]


def message_table(header: str) -> list:
    """``[(message object, {reply types})]`` of the markdown table under ``header``."""
    text = doc()
    table = text[text.index(header):].split('\n\n', 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip('|').split(' | ')]
        message = json.loads(cells[0].strip('`'))
        rows.append((message, set(re.findall(r'`([a-z_]+)`', cells[1]))))
    return rows


def keys(value) -> set:
    return set(value) if isinstance(value, dict) else set()


def test_api_streams_example_names_exactly_the_live_fields(start_bridge):
    bridge = start_bridge()
    (example,) = json_blocks(section('## `GET /api/streams`'))
    with urllib.request.urlopen(f'{bridge.http}/api/streams', timeout=5) as reply:
        live = json.load(reply)
    assert keys(example) == keys(live)
    assert keys(example['streams'][0]) == keys(live['streams'][0])
    assert keys(example['topics'][0]) <= {'topic', 'type', 'kind'}
    assert keys(example['access']) == keys(live['access'])
    assert keys(example['webrtc']) == keys(live['webrtc'])


async def replies_to(url: str, rows: list) -> list:
    """Send each documented message (with an id) and return the type of the reply to it."""
    got = []
    async with websockets.connect(url) as ws:
        async with asyncio.timeout(30):
            assert json.loads(await ws.recv())['type'] == 'hello'
            for number, (message, _) in enumerate(rows, 1):
                await ws.send(json.dumps({**message, 'id': number}))
                while True:
                    reply = json.loads(await ws.recv())
                    if reply.get('id') == number:
                        got.append(reply['type'])
                        break
    return got


def test_every_documented_client_message_gets_its_documented_reply(start_bridge):
    bridge = start_bridge()
    for header in ('| message | reply | effect |', '| client → bridge | reply | meaning |'):
        rows = message_table(header)
        assert len(rows) >= 5, header
        got = asyncio.run(replies_to(f'{bridge.ws}/control', rows))
        for (message, documented), reply in zip(rows, got):
            assert reply in documented, (message['type'], reply, documented)


async def estop_release(bridge, token: str) -> dict:
    """A engages while driving; B (token, no lock) and C (no token) try to release."""
    async def connect(with_token: bool):
        ws = await websockets.connect(f'{bridge.ws}/control' +
                                      (f'?token={token}' if with_token else ''))
        await ws.recv()  # hello
        return ws

    async def ask(ws, message) -> dict:
        await ws.send(json.dumps({**message, 'id': 'x'}))
        while True:
            reply = json.loads(await ws.recv())
            if reply.get('id') == 'x':
                return reply
    async with asyncio.timeout(30):
        a, b, c = await connect(True), await connect(True), await connect(False)
        results = {'acquire': await ask(a, {'type': 'acquire'}),
                   'engage': await ask(a, {'type': 'estop', 'engage': True}),
                   'c_release': await ask(c, {'type': 'estop', 'engage': False}),
                   'b_release': await ask(b, {'type': 'estop', 'engage': False})}
        for ws in (a, b, c):
            await ws.close()
    return results


def test_estop_release_rule_as_stated(start_bridge):
    text = ' '.join(section('### Client to server').split())
    assert 'Releasing is open to every client that may drive, whoever engaged it' in text
    # watching open, so the client without the token connects and is refused the release
    bridge = start_bridge(token='doc-token', view_requires_token=False)
    results = asyncio.run(estop_release(bridge, 'doc-token'))
    assert results['acquire']['type'] == results['engage']['type'] == 'ack'
    assert (results['c_release']['type'], results['c_release']['code']) == \
        ('error', 'unauthorized')
    assert results['b_release']['type'] == 'ack'
    assert results['b_release']['message'] == 'emergency stop released'


def recipe() -> list:
    """The ffmpeg command of the doc's recording recipe, as words."""
    text = section('## MJPEG and snapshots')
    block = text[text.index('    ffmpeg -use_wallclock_as_timestamps'):].split('\n\n', 1)[0]
    return shlex.split(block.replace('\\\n', ' '))


@pytest.mark.skipif(shutil.which('ffmpeg') is None or shutil.which('ffprobe') is None,
                    reason='ffmpeg is not installed')
def test_ffmpeg_recording_recipe_records_in_real_time(ros, start_bridge, tmp_path):
    bridge = start_bridge()
    words = recipe()
    assert words[0] == 'ffmpeg' and 'http://127.0.0.1:8080/mjpeg/camera' in words
    words = [bridge.http + '/mjpeg/camera' if w == 'http://127.0.0.1:8080/mjpeg/camera'
             else w for w in words]
    words[words.index('-t') + 1] = '4'
    words[-1] = str(tmp_path / 'drive.mp4')
    with FramePublisher(ros.node, '/camera/image_raw', width=320, height=240, rate=30.0):
        done = subprocess.run([*words, '-loglevel', 'error', '-y'], capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = subprocess.run(
        ['ffprobe', '-v', 'error', '-count_frames', '-select_streams', 'v:0', '-show_entries',
         'stream=nb_read_frames:format=duration', '-of', 'json', words[-1]],
        capture_output=True, text=True, timeout=60)
    figures = json.loads(probe.stdout)
    frames = int(figures['streams'][0]['nb_read_frames'])
    duration = float(figures['format']['duration'])
    assert 3.5 <= duration <= 4.5, figures
    assert 24 <= frames / duration <= 33, f'{frames} frames in {duration} s: not the 30 fps sent'
