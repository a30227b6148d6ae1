"""The aiohttp edge's own features, against the live bridge: page files and headers, Host and
Origin rules, CORS, connection caps, silent sockets, keepalive of /control, the generated
token, fps, send deadlines and malformed requests."""

import asyncio
import base64
import http.client
import json
import os
import re
import socket
import struct
import time

from conftest import FramePublisher, wait_for
import pytest
from video_bridge.core.protocol import unpack_frame
import websockets


def request(port, method='GET', path='/', headers=None, body=None, timeout=5):
    """One HTTP request on a fresh connection: (status, headers dict, body)."""
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw_exchange(port, data: bytes, timeout=5.0, until=b'') -> bytes:
    """Send raw bytes, read until ``until`` appears, the peer closes, or the timeout."""
    received = b''
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (not until or until not in received):
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return received


# ---------------------------------------------------------------- page files and headers

def test_only_the_pages_own_files_are_served_with_headers_caching_and_methods(start_bridge):
    bridge = start_bridge()
    status, headers, body = request(bridge.port, path='/')
    assert status == 200 and headers['Content-Type'].startswith('text/html')
    assert headers['X-Content-Type-Options'] == 'nosniff'
    assert headers['Referrer-Policy'] == 'no-referrer'
    assert "frame-ancestors 'self'" in headers['Content-Security-Policy']
    assert request(bridge.port, path='/js/app.js')[1]['Content-Type'].startswith(
        'text/javascript')
    for path in ('/README.md', '/package.json', '/test/helpers.js', '/test/', '/js/',
                 '/../README.md', '/%2e%2e/README.md'):
        status, headers, _ = request(bridge.port, path=path)
        assert status == 404, path
        assert headers['X-Content-Type-Options'] == 'nosniff'
    status, headers, body = request(bridge.port, 'HEAD', '/js/app.js')
    assert status == 200 and body == b'' and int(headers['Content-Length']) > 0
    assert request(bridge.port, 'POST', '/', body=b'x')[0] == 405
    assert request(bridge.port, 'DELETE', '/js/app.js')[0] == 405
    etag = request(bridge.port, path='/css/app.css')[1]['Etag']
    assert request(bridge.port, path='/css/app.css', headers={'If-None-Match': etag})[0] == 304
    # keep-alive: the page's files over one connection
    connection = http.client.HTTPConnection('127.0.0.1', bridge.port, timeout=5)
    for path in ('/', '/js/app.js', '/css/app.css', '/api/streams'):
        connection.request('GET', path)
        response = connection.getresponse()
        response.read()
        assert response.status == 200 and response.getheader('Connection') != 'close'
    connection.close()


def test_malformed_and_pipelined_requests_are_answered(start_bridge):
    bridge = start_bridge()
    duplicate = raw_exchange(bridge.port, b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                             b'Host: evil.example\r\n\r\n', until=b'\r\n\r\n')
    assert re.match(rb'HTTP/1\.[01] 400', duplicate), duplicate[:80]
    garbage = raw_exchange(bridge.port, b'\x16\x03\x01 not http\r\n\r\n', until=b'\r\n\r\n')
    assert re.match(rb'HTTP/1\.[01] 400', garbage), garbage[:80]
    two = raw_exchange(bridge.port, b'GET /api/streams HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'
                       b'GET /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', until=b'HTTP/1.1 404')
    assert two.count(b'HTTP/1.1 200') == 1 and b'HTTP/1.1 404' in two
    assert b'Traceback' not in bridge.process.output().encode()
    assert bridge.process.proc.poll() is None


# ---------------------------------------------------------------- Host, Origin, CORS

def test_host_must_be_an_ip_localhost_or_an_allowed_name(start_bridge):
    bridge = start_bridge(allowed_hosts=['robot.example'])
    assert request(bridge.port, headers={'Host': f'evil.example:{bridge.port}'})[0] == 403
    assert request(bridge.port, path='/api/streams',
                   headers={'Host': 'evil.example'})[0] == 403
    for host in (f'robot.example:{bridge.port}', f'localhost:{bridge.port}',
                 f'127.0.0.1:{bridge.port}', f'[::1]:{bridge.port}', socket.gethostname()):
        assert request(bridge.port, headers={'Host': host})[0] == 200, host


def test_allowed_origins_add_to_the_bridges_own(start_bridge):
    bridge = start_bridge(allowed_origins=['http://ops:8094'])
    url = f'{bridge.ws}/control'

    async def origin_status(origin, host=None):
        if host:  # a DNS-rebound browser: its Host is the attacker's name
            answer = await asyncio.to_thread(raw_exchange, bridge.port, (
                f'GET /control HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n'
                'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n'
                'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n').encode(), 5.0,
                b'\r\n\r\n')
            return int(answer.split()[1])
        try:
            ws = await websockets.connect(url, origin=origin)
        except websockets.InvalidStatus as refused:
            return refused.response.status_code
        await ws.close()
        return 101

    async def scenario():
        port = bridge.port
        return {
            'own': await origin_status(f'http://127.0.0.1:{port}'),
            'localhost': await origin_status(f'http://localhost:{port}'),
            'listed': await origin_status('http://ops:8094'),
            'https': await origin_status(f'https://127.0.0.1:{port}'),
            'ftp': await origin_status(f'ftp://127.0.0.1:{port}'),
            'rebound': await origin_status(f'http://evil.example:{port}',
                                           f'evil.example:{port}'),
            'other': await origin_status('http://evil.example'),
        }
    assert asyncio.run(scenario()) == {'own': 101, 'localhost': 101, 'listed': 101,
                                       'https': 403, 'ftp': 403, 'rebound': 403, 'other': 403}


def test_cors_only_for_listed_origins_on_the_api_and_snapshots(start_bridge):
    bridge = start_bridge(cors_origins=['https://dash.example.org'])
    listed = {'Origin': 'https://dash.example.org'}
    headers = request(bridge.port, path='/api/streams', headers=listed)[1]
    assert headers['Access-Control-Allow-Origin'] == 'https://dash.example.org'
    other = request(bridge.port, path='/api/streams', headers={'Origin': 'https://x.example'})
    assert 'Access-Control-Allow-Origin' not in other[1]
    assert 'Access-Control-Allow-Origin' not in request(bridge.port, path='/', headers=listed)[1]
    status, headers, _ = request(bridge.port, 'OPTIONS', '/api/streams', headers={
        **listed, 'Access-Control-Request-Method': 'GET',
        'Access-Control-Request-Headers': 'authorization'})
    assert status == 204 and 'Authorization' in headers['Access-Control-Allow-Headers']


# ---------------------------------------------------------------- connections

def test_connection_caps_refuse_clearly_and_trusted_proxies_are_exempt(start_bridge):
    bridge = start_bridge(max_connections_per_client=3)
    held = [socket.create_connection(('127.0.0.1', bridge.port)) for _ in range(3)]
    try:
        # the address's own silent connection makes room ...
        assert request(bridge.port, path='/api/streams')[0] == 200
    finally:
        for sock in held:
            sock.close()
    # ... working ones do not
    held = []
    try:
        for _ in range(3):
            connection = http.client.HTTPConnection('127.0.0.1', bridge.port, timeout=5)
            connection.request('GET', '/api/streams')
            assert connection.getresponse().read()
            held.append(connection)
        refused = raw_exchange(bridge.port, b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        assert refused.startswith(b'HTTP/1.1 503') and b'too many connections' in refused
        # another address is not affected
        with socket.create_connection(('127.0.0.1', bridge.port),
                                      source_address=('127.0.0.2', 0)) as other:
            other.sendall(b'GET /api/streams HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
            assert other.recv(100).startswith(b'HTTP/1.1 200')
    finally:
        for connection in held:
            connection.close()
    proxied = start_bridge(max_connections_per_client=3, trusted_proxies=['127.0.0.1'])
    held = [socket.create_connection(('127.0.0.1', proxied.port)) for _ in range(5)]
    try:
        assert request(proxied.port, path='/api/streams')[0] == 200
    finally:
        for sock in held:
            sock.close()


def test_at_the_total_cap_a_silent_socket_makes_room_for_a_working_client(start_bridge):
    bridge = start_bridge(max_connections=16, max_connections_per_client=4)
    squatters = [socket.create_connection(('127.0.0.1', bridge.port),
                                          source_address=(f'127.0.0.{2 + i % 8}', 0))
                 for i in range(24)]  # a slowloris spread over 8 addresses, under their cap
    try:
        for path in ('/', '/api/streams', '/js/app.js'):
            assert request(bridge.port, path=path)[0] == 200, path
    finally:
        for sock in squatters:
            sock.close()
    # a cap full of connections that did send a request still refuses, clearly
    working = []
    try:
        for index in range(16):
            connection = http.client.HTTPConnection(
                '127.0.0.1', bridge.port, timeout=5, source_address=(f'127.0.1.{index}', 0))
            connection.request('GET', '/api/streams')
            assert connection.getresponse().read()
            working.append(connection)
        refused = raw_exchange(bridge.port, b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        assert refused.startswith(b'HTTP/1.1 503') and b'too many connections' in refused
    finally:
        for connection in working:
            connection.close()


def test_a_silent_socket_is_closed_after_the_handshake_timeout(start_bridge):
    bridge = start_bridge(handshake_timeout=1.0)
    with socket.create_connection(('127.0.0.1', bridge.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b'GET / HTTP/1.1\r\nHost: 127.0')  # never finishes its request head
        assert sock.recv(100) == b''  # closed by the bridge
        assert 0.9 <= time.monotonic() - started <= 3.0
    # and said (at most every 5 s), so a user whose client is cut off can see why
    bridge.process.wait_output('closed a connection that sent no request in time (from '
                               '127.0.0.1: no request within 1 s)')


# ---------------------------------------------------------------- websockets kept alive

def handshake(port, path):
    """Open a websocket by hand and return the raw socket (this client answers nothing)."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f'GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n'
                  f'Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n'
                  'Sec-WebSocket-Version: 13\r\n\r\n').encode())
    head = b''
    while b'\r\n\r\n' not in head:
        head += sock.recv(1)
    assert head.startswith(b'HTTP/1.1 101'), head
    return sock


def masked_text(text: str) -> bytes:
    """One masked text frame (clients must mask)."""
    payload = text.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack('!BB', 0x81, 0x80 | len(payload)) + mask + body


def test_a_silent_driver_loses_the_lock_and_everyone_is_told(start_bridge):
    bridge = start_bridge(ping_interval=0.5, ping_timeout=0.5)

    async def scenario():
        observer = await websockets.connect(f'{bridge.ws}/control')
        hello = json.loads(await observer.recv())
        json.loads(await observer.recv())
        silent = handshake(bridge.port, '/control')  # answers no ping: its link went quiet
        silent.sendall(masked_text('{"type": "acquire", "id": 1}'))
        driver = None
        async with asyncio.timeout(5):
            while driver is None:
                driver = json.loads(await observer.recv()).get('driver')
        acquired = time.monotonic()
        async with asyncio.timeout(10):
            while True:
                state = json.loads(await observer.recv())
                if state.get('type') == 'state' and state['driver'] is None:
                    break
        released = time.monotonic() - acquired
        await observer.send(json.dumps({'type': 'acquire', 'id': 2}))
        async with asyncio.timeout(5):
            while (reply := json.loads(await observer.recv())).get('id') != 2:
                pass
        silent.close()
        await observer.close()
        return driver, hello['client_id'], released, reply

    driver, observer_id, released, reply = asyncio.run(scenario())
    assert driver != observer_id
    assert released <= 2 * 0.5 + 0.5 + 0.5, released  # 2 x ping_interval + ping_timeout
    assert reply['type'] == 'ack'  # another client can drive now


# ---------------------------------------------------------------- video: fps and deadlines

def test_fps_caps_the_rate_per_client(ros, start_bridge):
    bridge = start_bridge(**{'streams.camera.topic': '/e1/image'})

    async def rate(path, seconds=3.0):
        async with websockets.connect(f'{bridge.ws}{path}') as ws:
            await ws.recv()
            started, count = time.monotonic(), 0
            while time.monotonic() - started < seconds:
                unpack_frame(await ws.recv())
                count += 1
        return count / seconds

    with FramePublisher(ros.node, '/e1/image', width=320, height=240):
        capped = asyncio.run(rate('/video/camera?fps=5'))
        full = asyncio.run(rate('/video/camera'))
        mjpeg = raw_exchange(bridge.port, b'GET /mjpeg/camera?fps=4 HTTP/1.1\r\n'
                             b'Host: 127.0.0.1\r\n\r\n', timeout=2.5)
    assert 4.0 <= capped <= 6.0, capped
    assert full >= 20, full
    assert 6 <= mjpeg.count(b'X-Timestamp') <= 12
    assert request(bridge.port, path='/mjpeg/camera?fps=fast')[0] == 400


def test_a_stalled_mjpeg_viewer_frees_its_slot_within_the_send_timeout(ros, start_bridge):
    bridge = start_bridge(max_viewers=1, send_timeout=1.0,
                          **{'streams.camera.topic': '/e2/image'})
    with FramePublisher(ros.node, '/e2/image'):
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(('127.0.0.1', bridge.port))
        stalled.sendall(b'GET /mjpeg/camera HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        started = time.monotonic()
        wait_for(lambda: request(bridge.port, path='/snapshot/camera')[0] == 200, 10,
                 'the stalled viewer to be dropped')
        freed = time.monotonic() - started
        stalled.close()
    # send_timeout after the socket buffers filled (~300 KB at the stream's rate), plus the
    # snapshot's own wait; generous, as this machine is shared
    assert freed <= 1.0 + 5.0, freed


# ---------------------------------------------------------------- the token

def test_beyond_loopback_without_a_token_a_random_one_is_made_and_printed(start_bridge):
    bridge = start_bridge(host='0.0.0.0')
    output = bridge.process.wait_output('?token=')
    token = re.search(r'http://127\.0\.0\.1:\d+/\?token=([A-Za-z0-9_-]+)', output).group(1)
    assert len(token) >= 22

    async def scenario():
        anonymous = await websockets.connect(f'{bridge.ws}/control')
        with pytest.raises(websockets.ConnectionClosed) as refused:
            await anonymous.recv()   # watching needs the token too (view_requires_token)
        allowed = await websockets.connect(f'{bridge.ws}/control?token={token}')
        allowed_hello = json.loads(await allowed.recv())
        await allowed.close()
        return refused.value.rcvd, allowed_hello
    refused, allowed_hello = asyncio.run(scenario())
    assert (refused.code, refused.reason) == (4401, 'token required')
    assert allowed_hello['can_drive']
    assert token not in output.replace(f'?token={token}', '')  # only in the printed URL


def test_anonymous_driving_beyond_loopback_only_when_asked(start_bridge):
    bridge = start_bridge(host='0.0.0.0', allow_anonymous_driving=True)

    async def hello():
        async with websockets.connect(f'{bridge.ws}/control') as ws:
            return json.loads(await ws.recv())
    assert asyncio.run(hello())['can_drive']
    assert '?token=' not in bridge.process.output()


def test_a_plus_in_the_token_works_url_encoded(start_bridge, tmp_path):
    path = tmp_path / 'token'
    path.write_text('a+b/c=\n')
    bridge = start_bridge(token_file=str(path))
    assert request(bridge.port, path='/api/streams?token=a%2Bb%2Fc%3D')[0] == 200
    assert request(bridge.port, path='/api/streams?token=wrong')[0] == 401

    async def hello():
        async with websockets.connect(f'{bridge.ws}/control?token=a%2Bb%2Fc%3D') as ws:
            return json.loads(await ws.recv())
    assert asyncio.run(hello())['can_drive']


def test_the_old_token_parameter_is_refused_not_ignored(launch_node):
    from conftest import BRIDGE_PARAMS, free_port
    bridge = launch_node('bridge_node', ros_args=['--params-file', BRIDGE_PARAMS, '-p',
                                                  f'port:={free_port()}', '-p', 'token:=s3cret'])
    wait_for(lambda: bridge.proc.poll() is not None, 20, 'bridge_node to refuse to start')
    assert bridge.proc.returncode != 0
    assert "the 'token' parameter was removed" in bridge.output()
    assert 's3cret' not in bridge.output()


@pytest.mark.parametrize('name', ['max_connections', 'ping_interval'])
def test_edge_parameters_are_declared_with_ranges(name):
    from video_bridge.ros.parameters import BRIDGE_PARAMETERS
    default, description, limits = BRIDGE_PARAMETERS[name]
    assert description and limits and limits[0] <= default <= limits[1]
