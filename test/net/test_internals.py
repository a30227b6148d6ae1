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
import struct
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


def test_receive_estimators_are_built_on_first_use_and_estimate_as_aiortc_does(monkeypatch):
    """A send-only peer no longer carries aiortc's 1000-bucket estimator; one that receives
    gets the real one, with the same answers."""
    import gc
    from aiortc import RTCPeerConnection, rate, rtcrtpreceiver
    real = rate.RemoteBitrateEstimator   # aiortc's own, whatever an earlier test installed
    monkeypatch.setattr(rtcrtpreceiver, 'RemoteBitrateEstimator', real)   # restored after

    async def tracked_objects_per_peer() -> float:
        peers = []
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(5):
            peers.append(RTCPeerConnection())
            peers[-1].addTransceiver('video', direction='sendonly')
        gc.collect()
        grown = (len(gc.get_objects()) - before) / 5
        for peer in peers:
            await peer.close()
        return grown

    eager = run(tracked_objects_per_peer())
    assert internals.lazy_receive_estimators(), \
        'aiortc.rtcrtpreceiver.RemoteBitrateEstimator is gone'
    assert rtcrtpreceiver.RemoteBitrateEstimator is not real
    lazy = run(tracked_objects_per_peer())
    assert eager - lazy > 900, (eager, lazy)

    stand_in, estimator = rtcrtpreceiver.RemoteBitrateEstimator(), rate.RemoteBitrateEstimator()
    assert stand_in._estimator is None
    answers = [(stand_in.add(t, (t * 262) & 0xFFFFFF, 1200, 7),
                estimator.add(t, (t * 262) & 0xFFFFFF, 1200, 7)) for t in range(0, 3000, 5)]
    assert all(a == b for a, b in answers), answers
    assert stand_in.incoming_bitrate.rate(3000) == estimator.incoming_bitrate.rate(3000) > 0


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


# --- the playout-delay RTP header extension ---------------------------------------------------

PLAYOUT_DELAY = 'http://www.webrtc.org/experiments/rtp-hdrext/playout-delay'


def rtp_extensions(data: bytes) -> dict:
    """An RTP packet's one-byte header extensions by id (RFC 3550, 8285), parsed here: the test
    does not read the wire through the library it checks."""
    if not data[0] & 0x10:
        return {}
    start = 12 + 4 * (data[0] & 0x0F)
    profile, words = struct.unpack_from('!HH', data, start)
    assert profile == 0xBEDE, f'header extension profile {profile:#x}, not the one-byte form'
    block, found, at = data[start + 4:start + 4 + 4 * words], {}, 0
    while at < len(block):
        if block[at] == 0:          # padding
            at += 1
            continue
        length = (block[at] & 0x0F) + 1
        found[block[at] >> 4] = block[at + 1:at + 1 + length]
        at += 1 + length
    return found


def test_playout_delay_value_is_12_bit_min_and_max_in_10_ms_units():
    assert internals.playout_delay_value(0, 0) == b'\x00\x00\x00'
    assert internals.playout_delay_value(100, 200) == bytes((0x00, 0xA0, 0x14))
    assert internals.playout_delay_value(40950, 40950) == b'\xff\xff\xff'
    with pytest.raises(ValueError):
        internals.playout_delay_value(200, 100)


@pytest.mark.parametrize('answered', [True, False], ids=['answer-takes-it', 'answer-leaves-it'])
def test_playout_delay_offered_on_video_only_and_on_the_wire_once_answered(answered):
    """The offer names the extension in its video section (not audio); once the answer takes it
    (as Chromium's does; aiortc's own answer leaves it out) every video packet carries it,
    retransmissions too, beside aiortc's own extensions; without it, no packet does."""
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
    from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket

    class Units(MediaStreamTrack):        # what the bridge's track hands aiortc: packed units
        kind = 'video'

        async def recv(self):
            await asyncio.sleep(1 / 30)  # the camera's frame rate
            return None

    class Packer:                         # the pass-through encoder (net/rtp_packing.py)
        timestamp = 0

        def pack(self, unit):
            self.timestamp += 3000
            return [b'\x10' * 50, b'\x20' * 50], self.timestamp

    async def scenario():
        offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
        try:
            video = offerer.addTransceiver(Units(), direction='sendonly')
            offerer.addTransceiver('audio', direction='sendonly')
            assert internals.install_sender_encoder(video.sender, Packer())
            offer = await offerer.createOffer()
            sdp = internals.offer_playout_delay(offerer, offer.sdp,
                                                internals.playout_delay_value(0, 0))
            assert sdp is not None, ('offer_playout_delay refused: aiortc has no '
                                     'RTCRtpSender.__rtp_header_extensions_map any more')
            await offerer.setLocalDescription(RTCSessionDescription(sdp, 'offer'))
            offered = offerer.localDescription.sdp
            ids = internals.sdp_extension_ids(offered, PLAYOUT_DELAY)
            assert list(ids) == [video.mid], f'playout-delay on video only: {ids}'
            ident = ids[video.mid]
            others = re.findall(r'a=extmap:(\d+) (?!' + re.escape(PLAYOUT_DELAY) + ')', offered)
            assert str(ident) not in others, 'its id is one no other extension has'

            await answerer.setRemoteDescription(offerer.localDescription)
            await answerer.setLocalDescription(await answerer.createAnswer())
            answer = answerer.localDescription.sdp
            assert PLAYOUT_DELAY not in answer
            if answered:            # Chromium's answer keeps the offered extension and its id
                first = answer.index('a=extmap:', answer.index('m=video'))
                answer = f'{answer[:first]}a=extmap:{ident} {PLAYOUT_DELAY}\r\n{answer[first:]}'
            await offerer.setRemoteDescription(RTCSessionDescription(answer, 'answer'))
            assert internals.answer_playout_delay(offerer) is answered

            packets = []

            transport = answerer.getReceivers()[0].transport
            receive = transport._handle_rtp_data

            async def capture(data, *args, **kwargs):   # the wire, after SRTP, before parsing
                packets.append(data)
                await receive(data, *args, **kwargs)   # its receiver reports give a round trip

            transport._handle_rtp_data = capture
            await wait_until(lambda: len(packets) >= 10, 10, '10 RTP packets')
            first_seq = struct.unpack_from('!H', packets[0], 2)[0]
            ssrc = internals.sender_ssrc(video.sender)
            await video.sender._handle_rtcp_packet(RtcpRtpfbPacket(
                fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=ssrc, lost=[first_seq]))
            await wait_until(lambda: any(struct.unpack_from('!L', p, 8)[0] != ssrc
                                         for p in packets), 10, 'the retransmission (RTX)')
            for data in packets:
                extensions = rtp_extensions(data)
                assert extensions.get(1) == video.mid.encode(), "aiortc's mid is kept"
                if answered:
                    assert extensions.get(ident) == b'\x00\x00\x00', \
                        f'packet without playout-delay min = max = 0: {extensions}'
                else:
                    assert ident not in extensions
            if not answered:
                assert not internals.change_playout_delay(offerer, b'\x00\x00\x01')
                return
            # the value changes between packets (the bridge's round-trip rule); aiortc's own
            # round trip, from the answerer's receiver reports, is what that rule reads
            assert internals.change_playout_delay(offerer, internals.playout_delay_value(0, 10))
            seen = len(packets)
            await wait_until(lambda: len(packets) > seen + 4, 10, 'more packets')
            assert rtp_extensions(packets[-1]).get(ident) == b'\x00\x00\x01'
            await wait_until(lambda: internals.sender_round_trip(video.sender) is not None, 10,
                             'a round trip from receiver reports (RTCRtpSender.__rtt)')
            assert 0 <= internals.sender_round_trip(video.sender) < 1
        finally:
            await offerer.close()
            await answerer.close()

    with host_address():
        run(scenario())
