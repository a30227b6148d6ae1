"""Who may watch, drive, relay and list topics, against the live bridge (issue 16, rows 6-8, 10).

Row 7: beyond loopback, watching needs the token by default, like driving; view_requires_token
false opens watching on purpose and the log says so. Row 6: TURN credentials only for token
holders (a real coturn). Row 8: topic streams only for token holders, a configured topic asked
for by its escaped name is the configured stream, the variants across all streams are bounded
and the page's own variant is never crowded out. Row 10: wrong tokens are throttled per client;
the runner never echoes a refused argument's value.
"""

import asyncio
import json
import re
import time
from urllib.parse import quote

from conftest import FramePublisher, wait_for
import pytest
from support.http_support import get
from video_bridge.core.access import TOO_MANY_ATTEMPTS, WRONG_TOKEN_BURST, \
    WRONG_TOKENS_PER_SECOND
from video_bridge.core.protocol import unpack_frame
from video_bridge_msgs.msg import BridgeStatus
import websockets

TOKEN = 'sesame-7f3a'


async def ws_outcome(url, frames=1, timeout=10):
    """``('frames', n)`` if ``url`` delivered frames, else ``('closed', code, reason)``."""
    try:
        async with websockets.connect(url, max_size=2 ** 22) as ws:
            async with asyncio.timeout(timeout):
                for _ in range(frames):
                    unpack_frame(await ws.recv())
            return ('frames', frames)
    except websockets.ConnectionClosed as exc:
        return ('closed', exc.rcvd.code if exc.rcvd else None,
                exc.rcvd.reason if exc.rcvd else '')


async def control_hello(url):
    """The hello of a /control session, or ``('closed', code, reason)``."""
    try:
        async with websockets.connect(url) as ws:
            async with asyncio.timeout(10):
                return json.loads(await ws.recv())
    except websockets.ConnectionClosed as exc:
        return ('closed', exc.rcvd.code if exc.rcvd else None,
                exc.rcvd.reason if exc.rcvd else '')


def refused_everything(bridge, token=None):
    """Every way to watch or list: its HTTP status, or the websocket close code."""
    suffix = f'?token={quote(token)}' if token else ''
    results = {path: get(f'{bridge.http}{path}{suffix}')[0]
               for path in ('/api/streams', '/snapshot/camera', '/stream_list')}
    for path in ('/snapshot?topic=/r7/image', '/stream_viewer?topic=/r7/image'):
        results[path] = get(f'{bridge.http}{path}{suffix.replace("?", "&")}')[0]
    video = asyncio.run(ws_outcome(f'{bridge.ws}/video/camera{suffix}'))
    results['/video/camera'] = video[1] if video[0] == 'closed' else 200
    control = asyncio.run(control_hello(f'{bridge.ws}/control{suffix}'))
    results['/control'] = control[1] if isinstance(control, tuple) else 200
    return results


# ---------------------------------------------------------------- row 7: privacy by default

def test_beyond_loopback_watching_needs_the_printed_token(ros, start_bridge):
    """The shipped config beyond loopback (no token file: a random token): nothing of the
    cameras without the token, all of it with the printed URL's token."""
    bridge = start_bridge(host='0.0.0.0', **{'streams.camera.topic': '/r7/image'})
    output = bridge.process.wait_output('?token=')
    token = re.search(r'http://127\.0\.0\.1:\d+/\?token=([A-Za-z0-9_-]+)', output).group(1)
    assert 'To watch and drive, open' in output
    with FramePublisher(ros.node, '/r7/image', width=160, height=120):
        anonymous = refused_everything(bridge)
        holder = refused_everything(bridge, token)
    assert anonymous == {'/api/streams': 401, '/snapshot/camera': 401, '/stream_list': 401,
                         '/snapshot?topic=/r7/image': 401, '/stream_viewer?topic=/r7/image': 401,
                         '/video/camera': 4401, '/control': 4401}, anonymous
    assert set(holder.values()) == {200}, holder
    log = bridge.process.wait_output('who may do what')
    assert 'need the token' in log


def test_view_requires_token_false_opens_watching_and_says_so(ros, start_bridge):
    bridge = start_bridge(token=TOKEN, view_requires_token=False,
                          **{'streams.camera.topic': '/r7/image'})
    log = bridge.process.wait_output('who may do what')
    assert re.search(r'WARN.*view_requires_token is false: anyone who reaches the port may '
                     r'watch', log), log[-2000:]
    with FramePublisher(ros.node, '/r7/image', width=160, height=120):
        anonymous = refused_everything(bridge)
    assert anonymous == {'/api/streams': 200, '/snapshot/camera': 200, '/stream_list': 200,
                         '/snapshot?topic=/r7/image': 200, '/stream_viewer?topic=/r7/image': 200,
                         '/video/camera': 200, '/control': 200}, anonymous
    hello = asyncio.run(control_hello(f'{bridge.ws}/control'))
    assert not hello['can_drive']


def test_loopback_without_a_token_stays_open(ros, start_bridge):
    bridge = start_bridge(**{'streams.camera.topic': '/r7/image'})
    with FramePublisher(ros.node, '/r7/image', width=160, height=120):
        anonymous = refused_everything(bridge)
    assert set(anonymous.values()) == {200}, anonymous
    assert 'anyone on this machine may watch, drive' in bridge.process.output()


# ---------------------------------------------------------------- row 6: TURN credentials

class Control:
    def __init__(self, socket):
        self.socket = socket

    async def ask(self, kind, request_id):
        await self.socket.send(json.dumps({'type': kind, 'id': request_id}))
        async with asyncio.timeout(10):
            while True:
                message = json.loads(await self.socket.recv())
                if message.get('id') == request_id:
                    return message


def test_turn_credentials_only_for_token_holders(coturn, start_bridge):
    """A viewer without the token (view_requires_token false) gets the STUN servers but no
    TURN server and no credential; the token holder's credential allocates a relay on coturn."""
    from aioice.turn import create_turn_endpoint
    bridge = start_bridge(token=TOKEN, view_requires_token=False,
                          ice_servers=['stun:127.0.0.1:3478', coturn.url],
                          turn_secret_file=coturn.secret_file)

    async def scenario():
        async with websockets.connect(f'{bridge.ws}/control') as socket:
            anonymous = await Control(socket).ask('webrtc_config', 1)
        async with websockets.connect(f'{bridge.ws}/control?token={TOKEN}') as socket:
            holder = await Control(socket).ask('webrtc_config', 1)
        turn = [s for s in holder['ice_servers'] if s['urls'] == [coturn.url]][0]
        transport, _ = await create_turn_endpoint(
            asyncio.DatagramProtocol, ('127.0.0.1', coturn.port), turn['username'],
            turn['credential'])
        relayed = transport.get_extra_info('sockname')
        transport.close()
        return anonymous, holder, relayed

    anonymous, holder, relayed = asyncio.run(scenario())
    assert anonymous['type'] == 'webrtc_config', anonymous
    assert anonymous['ice_servers'] == [{'urls': ['stun:127.0.0.1:3478']}], anonymous
    assert 'credential' not in json.dumps(anonymous) and 'turn:' not in json.dumps(anonymous)
    assert any(s.get('credential') for s in holder['ice_servers']), holder
    assert relayed and coturn.allocations() >= 1


# ---------------------------------------------------------------- row 8: topic streams, variants

def test_topic_streams_only_for_token_holders_and_the_configured_topic_is_its_stream(
        ros, start_bridge):
    bridge = start_bridge(token=TOKEN, view_requires_token=False,
                          **{'streams.camera.topic': '/r8/cam'})
    with FramePublisher(ros.node, '/r8/cam', width=160, height=120), \
            FramePublisher(ros.node, '/r8/other', width=160, height=120):
        wait_for(lambda: b'/r8/other' in get(f'{bridge.http}/api/streams')[2], 15,
                 'the other topic in /api/streams')
        other = f'{bridge.ws}/video/{quote("/r8/other", safe="")}'
        refused = asyncio.run(ws_outcome(other))
        refused_wvs = get(f'{bridge.http}/snapshot?topic=/r8/other')[0]
        configured = asyncio.run(ws_outcome(f'{bridge.ws}/video/{quote("/r8/cam", safe="")}'))
        configured_wvs = get(f'{bridge.http}/snapshot?topic=/r8/cam')[0]
        allowed = asyncio.run(ws_outcome(f'{other}?token={TOKEN}'))
        after = asyncio.run(ws_outcome(other))   # made by a holder: still not for others
        names = [s['name'] for s in json.loads(get(f'{bridge.http}/api/streams')[2])['streams']]
        webrtc = asyncio.run(webrtc_start(bridge, '/r8/other'))
        webrtc_holder = asyncio.run(webrtc_start(bridge, '/r8/other', TOKEN))
    assert refused[:2] == ('closed', 4401) and 'need the token' in refused[2], refused
    assert refused_wvs == 401
    assert configured == ('frames', 1) and configured_wvs == 200
    assert allowed == ('frames', 1)
    assert after[:2] == ('closed', 4401)
    assert names == ['camera', '/r8/other'], names   # no second stream of /r8/cam
    assert (webrtc['type'], webrtc.get('code')) == ('webrtc_error', 'unauthorized'), webrtc
    # the holder's peer gets the stream (an offer, or no candidates on this loopback-only host)
    assert webrtc_holder['type'] == 'webrtc_offer' or \
        webrtc_holder.get('code') == 'webrtc_unavailable', webrtc_holder


async def webrtc_start(bridge, stream, token=None):
    """The reply to one webrtc_start on a fresh /control session."""
    suffix = f'?token={token}' if token else ''
    async with websockets.connect(f'{bridge.ws}/control{suffix}') as socket:
        await socket.send(json.dumps({'type': 'webrtc_start', 'id': 7, 'stream': stream}))
        async with asyncio.timeout(20):
            while True:
                message = json.loads(await socket.recv())
                if message.get('id') == 7:
                    return message


def test_odd_widths_do_not_lock_the_pages_variant_out(ros, start_bridge):
    bridge = start_bridge(**{'streams.camera.topic': '/r8/odd'})

    async def scenario():
        odd = []
        for width in (101, 203, 305, 407):
            try:
                ws = await websockets.connect(f'{bridge.ws}/video/camera?width={width}')
                async with asyncio.timeout(10):
                    unpack_frame(await ws.recv())
                odd.append(ws)
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd.code == 4503, exc.rcvd
        try:
            page = await ws_outcome(f'{bridge.ws}/video/camera', frames=3)
            mjpeg = get(f'{bridge.http}/snapshot/camera')[0]
        finally:
            for ws in odd:
                await ws.close()
        return len(odd), page, mjpeg

    with FramePublisher(ros.node, '/r8/odd', width=640, height=480):
        admitted, page, snapshot = asyncio.run(scenario())
    assert admitted == 3, "max_variants 4: three odd widths, the fourth place is the page's"
    assert page == ('frames', 3), page
    assert snapshot == 200


def test_forty_requests_across_topics_and_qualities_keep_the_total_bounded(
        ros, start_bridge):
    """4 image topics x the escaped and the plain (web_video_server) URL x 5 qualities, all
    held at once: at most max_total_variants (16) besides the configured stream's default,
    and no second stream for the configured topic."""
    import aiohttp
    topics = ['/r8b/cam', '/r8b/t1', '/r8b/t2', '/r8b/t3']
    bridge = start_bridge(**{'streams.camera.topic': topics[0]})
    statuses = ros.collect(BridgeStatus, '/bridge_node/status')

    async def scenario():
        held, outcomes = [], []
        async with aiohttp.ClientSession() as http:
            try:
                for topic in topics:
                    for quality in (31, 47, 63, 79, 95):
                        escaped = f'{bridge.ws}/video/{quote(topic, safe="")}?quality={quality}'
                        try:
                            ws = await websockets.connect(escaped)
                            async with asyncio.timeout(10):
                                unpack_frame(await ws.recv())
                            held.append(ws)
                            outcomes.append(200)
                        except websockets.ConnectionClosed as exc:
                            outcomes.append(exc.rcvd.code)
                        plain = (f'{bridge.http}/stream?topic={topic}&quality={quality}'
                                 '&width=120')
                        response = await http.get(plain)
                        if response.status == 200:
                            await response.content.readuntil(b'\xff\xd9')   # one JPEG
                            held.append(response)
                        else:
                            response.release()
                        outcomes.append(response.status)

                def settled():
                    if not statuses:
                        return None
                    last = statuses[-1]
                    viewers = sum(s.viewers for s in last.streams)
                    return last if viewers == len(held) else None
                status = await asyncio.to_thread(wait_for, settled, 10, 'the status')
                return outcomes, status
            finally:
                for item in held:
                    if isinstance(item, aiohttp.ClientResponse):
                        item.close()
                    else:
                        await item.close()

    publishers = [FramePublisher(ros.node, topic, width=160, height=120, rate=15)
                  for topic in topics]
    for publisher in publishers:
        publisher.__enter__()
    try:
        wait_for(lambda: all(t.encode() in get(f'{bridge.http}/api/streams')[2]
                             for t in topics[1:]), 15, 'the topics in /api/streams')
        outcomes, status = asyncio.run(scenario())
    finally:
        for publisher in publishers:
            publisher.__exit__(None, None, None)
    variants = {s.name: s.variants for s in status.streams}
    assert len(outcomes) == 40
    assert '/r8b/cam' not in variants, variants           # the configured stream served it
    assert sum(variants.values()) <= 16 + 1, variants      # max_total_variants + the default
    assert outcomes.count(200) == sum(s.viewers for s in status.streams)
    assert set(outcomes) <= {200, 503, 4503}, outcomes


# ---------------------------------------------------------------- row 10: brute force, runner

def test_wrong_tokens_are_throttled_to_the_stated_rate(start_bridge):
    """One client trying wrong tokens as fast as it can (~730/s before) gets a burst of
    WRONG_TOKEN_BURST checked, then about WRONG_TOKENS_PER_SECOND; the rest are refused
    unchecked, even the right token, until the client's budget refills."""
    import aiohttp
    bridge = start_bridge(token=TOKEN)

    async def scenario():
        counts = {'invalid token': 0, TOO_MANY_ATTEMPTS: 0}
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            for n in range(600):
                if time.monotonic() - started > 3.0:
                    break
                async with http.get(f'{bridge.http}/api/streams?token=guess{n}') as response:
                    assert response.status == 401
                    counts[(await response.text()).strip()] += 1
            elapsed = time.monotonic() - started
            async with http.get(f'{bridge.http}/api/streams?token={TOKEN}') as response:
                locked = (response.status, (await response.text()).strip())
            # the budget refills: the right token works again within a couple of seconds
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                async with http.get(f'{bridge.http}/api/streams?token={TOKEN}') as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.25)   # a poll interval, not a synchronisation
            return counts, elapsed, locked, response.status

    counts, elapsed, locked, later = asyncio.run(scenario())
    tried = sum(counts.values())
    print(f'wrong tokens: {tried} tried in {elapsed:.1f} s, {counts["invalid token"]} checked')
    assert tried >= 100, 'the client did not get to try fast'
    assert counts['invalid token'] <= WRONG_TOKEN_BURST + elapsed * WRONG_TOKENS_PER_SECOND + 1
    assert locked == (401, TOO_MANY_ATTEMPTS)
    assert later == 200


def test_a_client_past_its_token_budget_gets_no_tls_handshake(start_bridge, tmp_path):
    """Row 10 at the connection: once a client's wrong tokens spent its budget, its next
    connection is held unread for about SHUT_OUT_HOLD s and closed, without a TLS handshake
    (most of what a guess cost the bridge), so a guesser that retries at once tries about once a
    second. Another client is served at once meanwhile."""
    import ssl
    from support import hostile_clients as hc
    from video_bridge.net.listener import SHUT_OUT_HOLD
    cert, key = hc.self_signed_cert(str(tmp_path))
    tls = hc.insecure_client_context()
    bridge = start_bridge(token=TOKEN, tls_cert=cert, tls_key=key)
    guesser, other = '127.0.0.21', '127.0.0.22'

    def control(source, token):
        return hc.RawWebSocket(bridge.port, f'/control?token={token}', source=source,
                               timeout=5, tls=tls)

    answered = 0
    for n in range(WRONG_TOKEN_BURST + 2):   # its budget is spent within the burst
        started = time.monotonic()
        try:
            guess = control(guesser, f'guess{n}')
        except (OSError, ssl.SSLError):
            break
        assert guess.response is not None, 'a guess within the burst is answered'
        answered += 1
        guess.close()
    else:
        pytest.fail(f'{WRONG_TOKEN_BURST + 2} guesses and the guesser was never shut out')
    held = time.monotonic() - started
    # each guess counts once (the middleware and the handler both ask for the grant); one more
    # if the guesses took over a second and the budget refilled one
    assert WRONG_TOKEN_BURST <= answered <= WRONG_TOKEN_BURST + 1, answered
    welcome = control(other, TOKEN)
    assert welcome.accepted, welcome.response
    welcome.close()
    assert 0.5 * SHUT_OUT_HOLD <= held < 5, held
    assert 'too many invalid tokens' in bridge.process.output()


def test_the_runner_never_echoes_a_refused_value(capsys):
    from video_bridge.ros import runner
    with pytest.raises(SystemExit) as exited:
        runner.parse(['bridge', 'token:=hunter2-very-secret'])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "'token':=..." in error
    assert 'hunter2' not in error
    with pytest.raises(SystemExit):
        runner.parse(['bridge', 'token=hunter2-very-secret'])
    error = capsys.readouterr().err
    assert 'argument 1 without :=' in error and 'hunter2' not in error
