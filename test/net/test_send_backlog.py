"""net/send_backlog.py on real asyncio transports whose peers stop reading.

The media path is found through aiortc's objects (sender -> DTLS -> ICE -> aioice connection ->
nominated pair -> its transport); here that chain ends in transports of our own: a Unix
datagram socket (which, unlike UDP on loopback, pushes back when its peer does not read, as a
full send buffer does behind a slow link), and a real aioice TurnTransport over TCP. The full
path, with aiortc and coturn, is test_webrtc_service.py's slow-uplink test.
"""

import asyncio
import socket
from types import SimpleNamespace

import pytest
from video_bridge.net import send_backlog
from video_bridge.net.send_backlog import SendBacklog

HIGH, LOW = 32 * 1024, 8 * 1024


def sender_over(transport):
    """Stand in for an aiortc sender whose selected ICE pair sends on ``transport``."""
    pair = SimpleNamespace(protocol=SimpleNamespace(transport=transport))
    connection = SimpleNamespace(_nominated={1: pair})
    return SimpleNamespace(transport=SimpleNamespace(transport=SimpleNamespace(
        _connection=connection)))


def run(coroutine):
    asyncio.run(asyncio.wait_for(coroutine, 20))


async def until(predicate, what):
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)   # a poll interval on the loop, not a synchronisation sleep
    pytest.fail(f'timed out waiting for {what}')


def test_a_datagram_socket_that_backs_up_is_congested_until_it_drains(tmp_path):
    async def scenario():
        ours, theirs = (socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2))
        theirs.bind(str(tmp_path / 'theirs'))     # named: asyncio sends to a connected peer
        ours.bind(str(tmp_path / 'ours'))
        ours.connect(str(tmp_path / 'theirs'))
        theirs.setblocking(False)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, sock=ours)
        try:
            backlog = SendBacklog(sender_over(transport), HIGH, LOW)
            assert not backlog.congested() and backlog.size() == 0
            for _ in range(400):      # the peer reads nothing: the kernel, then asyncio, fill
                transport.sendto(b'x' * 1200)
                if transport.get_write_buffer_size() > HIGH:
                    break
            assert backlog.congested()
            assert backlog.peak > HIGH
            drained = 0
            while backlog.congested():  # hysteresis: still congested between LOW and HIGH
                assert drained < 1000, 'never drained'
                try:
                    theirs.recv(2048)
                    drained += 1
                except BlockingIOError:
                    await asyncio.sleep(0.005)   # let asyncio write what the socket now takes
            assert backlog.size() <= LOW
        finally:
            transport.close()
            theirs.close()
    run(scenario())


def test_a_turn_tcp_link_gets_notsent_lowat_and_its_backlog_counts():
    from aioice.turn import TurnTransport

    async def scenario():
        stalled = asyncio.Event()

        async def never_reads(reader, writer):
            await stalled.wait()
            writer.close()

        server = await asyncio.start_server(never_reads, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        tcp, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol,
                                                                    '127.0.0.1', port)
        try:
            relay = TurnTransport(SimpleNamespace(transport=tcp))   # aioice's own class
            backlog = SendBacklog(sender_over(relay), HIGH, LOW)
            assert backlog.size() == 0
            raw = tcp.get_extra_info('socket')
            option = (socket.IPPROTO_TCP, send_backlog._NOTSENT_LOWAT_OPTION)
            assert raw.getsockopt(*option) == send_backlog.TCP_NOTSENT_LOWAT
            for _ in range(2000):     # the server reads nothing: TCP's window closes
                tcp.write(b'x' * 1200)
                if tcp.get_write_buffer_size() > HIGH:
                    break
            await until(lambda: backlog.congested(), 'a TCP backlog over the bound')
            assert backlog.size() == tcp.get_write_buffer_size()
        finally:
            stalled.set()
            tcp.abort()
            server.close()
            await server.wait_closed()
    run(scenario())


def test_no_selected_pair_reads_as_nothing_unsent():
    for sender in (None, SimpleNamespace(transport=None),
                   sender_over(None), SimpleNamespace(transport=SimpleNamespace(
                       transport=SimpleNamespace(_connection=SimpleNamespace(_nominated={}))))):
        backlog = SendBacklog(sender, HIGH, LOW)
        assert backlog.size() == 0 and not backlog.congested()
