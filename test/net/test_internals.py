"""net/internals.py, the one module that reaches into aiortc, aioice, aiohttp and asyncio
internals: each function used on a real object of the installed library, so an upgrade that
renames or removes what it reaches fails here, loudly and by name; the versions it was read
for are the installed ones; and no other module of the package names those private names."""

import ast
import asyncio
import importlib.metadata
import os
import re
import socket
import ssl
import sys
from types import SimpleNamespace

from conftest import REPO
import pytest
from support.webrtc_support import host_address, wait_until
from video_bridge.net import internals

PACKAGE = os.path.join(REPO, 'src', 'video_bridge', 'video_bridge')
INTERNALS = os.path.join(PACKAGE, 'net', 'internals.py')
LIBRARIES = ('aiortc', 'aioice', 'aiohttp', 'asyncio')


def run(coroutine, timeout=20):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


@pytest.mark.parametrize('library', ['aiortc', 'aioice', 'aiohttp'])
def test_the_installed_library_is_a_version_internals_was_read_for(library):
    version = importlib.metadata.version(library)
    assert version in internals.CHECKED[library], (
        f'{library} {version} is installed; net/internals.py was read for '
        f'{internals.CHECKED[library]}: read what each function there reaches in {library} '
        f'{version}, then add the version to CHECKED')


def test_this_python_is_one_whose_asyncio_internals_were_read():
    assert sys.version_info[:2] in internals.CHECKED['python'], (
        f'Python {sys.version_info[0]}.{sys.version_info[1]}: read asyncio/sslproto.py for '
        'bound_tls_read_buffer and tls_inner_transport, then add it to CHECKED')


def test_asyncio_tls_internals_on_a_real_tls_connection():
    from asyncio import sslproto

    async def scenario():
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        try:
            plain, _ = await loop.create_connection(asyncio.Protocol, sock=left)
            context = ssl.create_default_context()
            tls = sslproto.SSLProtocol(loop, asyncio.Protocol(), context, loop.create_future(),
                                       server_hostname='example.org')
            plain.set_protocol(tls)
            tls.connection_made(plain)       # sends its ClientHello on the real socket
            wrapped = tls._app_transport     # what asyncio hands the application
            assert internals.tls_inner_transport(wrapped) is plain, \
                'asyncio TLS transport: _ssl_protocol._transport is gone'
            assert internals.tls_inner_transport(plain) is None
            plain.abort()
        finally:
            right.close()

    before = sslproto.SSLProtocol.max_size
    try:
        assert internals.bound_tls_read_buffer(4096), \
            'asyncio.sslproto.SSLProtocol.max_size is gone (or this Python was not read)'
        assert sslproto.SSLProtocol.max_size == 4096
        run(scenario())
    finally:
        sslproto.SSLProtocol.max_size = before


def test_aiohttp_websocket_reader_of_a_real_websocket():
    from aiohttp import ClientSession, web
    from aiohttp.test_utils import TestServer

    readers = []

    async def handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        readers.append(internals.websocket_reader(ws))
        await ws.close()
        return ws

    async def scenario():
        app = web.Application()
        app.router.add_get('/ws', handler)
        server = TestServer(app, host='127.0.0.1')
        await server.start_server()
        try:
            async with ClientSession() as session:
                async with session.ws_connect(server.make_url('/ws')) as ws:
                    await ws.receive()
        finally:
            await server.close()

    run(scenario())
    assert readers and readers[0] is not None, 'aiohttp WebSocketResponse._reader is gone'
    assert internals.websocket_reader(object()) is None


def test_aiortc_and_aioice_internals_on_a_real_connection():
    from aioice import Connection
    from aioice.turn import TurnTransport
    from aiortc import RTCPeerConnection
    from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

    async def scenario():
        offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
        try:
            transceiver = offerer.addTransceiver('video', direction='sendonly')
            sender = transceiver.sender
            channel = offerer.createDataChannel('control')
            await offerer.setLocalDescription(await offerer.createOffer())
            await answerer.setRemoteDescription(offerer.localDescription)
            await answerer.setLocalDescription(await answerer.createAnswer())
            await offerer.setRemoteDescription(answerer.localDescription)

            gatherer = sender.transport.transport.iceGatherer
            connection = internals.ice_connection(gatherer)
            assert isinstance(connection, Connection), 'RTCIceGatherer._connection is gone'
            assert internals.ice_connection(sender.transport.transport) is connection
            assert internals.local_candidates(connection), 'Connection._local_candidates'
            assert internals.stun_protocols(connection), 'Connection._protocols'

            assert isinstance(internals.sender_ssrc(sender), int), 'RTCRtpSender._ssrc'
            assert isinstance(internals.sender_rtp_timestamp(sender), int), \
                'RTCRtpSender.__rtp_timestamp is gone'
            assert hasattr(sender, '_RTCRtpSender__rtp_history'), 'RTCRtpSender.__rtp_history'
            assert internals.sender_resent(sender, [1, 2]) == 0
            assert internals.install_sender_encoder(sender, object()), 'RTCRtpSender.__encoder'

            seen, keyframes = [], []
            assert internals.hook_sender(sender, seen.append, lambda: keyframes.append(1)), \
                'RTCRtpSender._handle_rtcp_packet or _send_keyframe is gone'
            pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1,
                                 media_ssrc=internals.sender_ssrc(sender))
            await sender._handle_rtcp_packet(pli)
            assert seen == [pli] and keyframes == [1], \
                "aiortc no longer answers a PLI through the sender's _send_keyframe"

            held = []
            assert internals.watch_sctp_held(answerer, held.append), \
                'RTCSctpTransport._receive_data_chunk or _advertised_rwnd is gone'
            await wait_until(lambda: offerer.connectionState == 'connected', 10, 'connected')
            pair = internals.nominated_pair(connection)
            assert pair is not None, 'Connection._nominated is gone'
            assert hasattr(pair.protocol.transport, 'get_write_buffer_size')
            assert internals.turn_server_transport(pair.protocol.transport) is None
            await wait_until(lambda: channel.readyState == 'open', 10, 'the channel open')
            channel.send('x' * 100)
            await wait_until(lambda: held, 10, 'the SCTP hook to see the message')
            assert held[-1] == 0, 'a whole message leaves nothing held'

            link = SimpleNamespace(transport=object())
            assert internals.turn_server_transport(TurnTransport(link)) is link.transport, \
                'aioice TurnTransport.__inner_protocol is gone'
        finally:
            await offerer.close()
            await answerer.close()

    with host_address():
        run(scenario())


def _names_in(path):
    """Private names of REACHED (or any name-mangled one) a module reaches on other objects."""
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and not (
                isinstance(node.value, ast.Name) and node.value.id in ('self', 'cls')):
            name = node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ''
            hits = [a.name for a in node.names if a.name.startswith('_')
                    or a.name in internals.REACHED]
            if module.split('.')[0] in LIBRARIES and (hits or any(
                    part.startswith('_') or part in internals.REACHED
                    for part in module.split('.')[1:])):
                found.append((node.lineno, f'from {module} import {hits}'))
            continue
        if name is not None and (name in internals.REACHED
                                 or re.fullmatch(r'_[A-Za-z]\w*__\w+', name)):
            found.append((node.lineno, name))
    return found


def test_no_module_but_internals_names_a_private_name_of_those_libraries():
    offenders = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith('.py') and path != INTERNALS:
                found = _names_in(path)
                if found:
                    offenders[os.path.relpath(path, REPO)] = found
    assert not offenders, ('private names of aiortc/aioice/aiohttp/asyncio outside '
                           f'net/internals.py (add a function there): {offenders}')


def test_every_reached_name_is_used_in_internals_and_the_scan_sees_them():
    with open(INTERNALS) as handle:
        text = handle.read()
    assert all(name in text for name in internals.REACHED)
    names = {name for _, name in _names_in(INTERNALS)}
    assert {'_connection', '_RTCRtpSender__encoder', '_reader'} <= names
