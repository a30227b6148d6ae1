"""
net/listener.py's wait for a TLS connection's first record, on real sockets, without ROS.

A TLS connection gets asyncio's TLS layer and a handshake slot only once its first record (the
ClientHello) is whole. Until then it is a reader callback and a deadline timer, not a task: a
flood of sockets that send 3 bytes of a ClientHello (issue 16's row 9) must cost the bridge as
little as possible each. These tests hold that wait to what it promises: no task while waiting,
the deadline, a record split over two segments, eviction at the connection cap, a client that
leaves, a port probe, and a stopped listener.
"""

import asyncio
import shutil
import socket
import ssl

import pytest
from support import hostile_clients as hc
from video_bridge.net import listener as listener_module

CUT_HELLO = b'\x16\x03\x01'   # a TLS record header's first 3 bytes, nothing more


def run(coroutine, timeout=30):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


@pytest.fixture
def server_tls(tmp_path):
    if shutil.which('openssl') is None:
        pytest.skip('the openssl command is needed to make a test certificate')
    cert, key = hc.self_signed_cert(str(tmp_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class Recorder(asyncio.Protocol):
    """The application side: remembers that it got a connection."""

    made = []

    def connection_made(self, transport):
        Recorder.made.append(transport)


async def until(condition, timeout=10.0, what='the condition'):
    """Wait (polling the loop, with a deadline) until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f'timed out waiting for {what}'
        await asyncio.sleep(0.01)


async def connect(port, payload=b''):
    """A client socket (non-blocking) that sent ``payload``."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ('127.0.0.1', port))
    if payload:
        await loop.sock_sendall(sock, payload)
    return sock


def closed_by_server(sock) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b''
    except BlockingIOError:
        return False
    except OSError:
        return True


def make_listener(context, **caps):
    Recorder.made = []
    listener = listener_module.Listener(Recorder, ssl_context=context, **caps)
    port = listener.bind('127.0.0.1', 0)
    listener.start()
    return listener, port


def other_tasks():
    return asyncio.all_tasks() - {asyncio.current_task()}


def test_a_cut_client_hello_holds_no_task_and_is_closed_at_the_deadline(server_tls):
    async def scenario():
        listener, port = make_listener(server_tls, handshake_timeout=1.0)
        tasks_before = len(other_tasks())
        clients = [await connect(port, CUT_HELLO) for _ in range(20)]
        try:
            await until(lambda: len(listener._first_records) == 20, what='20 waiting')
            assert listener.total == 20
            assert len(other_tasks()) == tasks_before, 'a waiting connection holds a task'
            await until(lambda: all(map(closed_by_server, clients)), 5, 'the deadline')
            assert listener.total == 0 and not listener._first_records
            assert listener.dropped == 20 and Recorder.made == []
        finally:
            for sock in clients:
                sock.close()
            await listener.stop()
    run(scenario())


def test_a_client_hello_split_in_two_gets_its_handshake(server_tls):
    async def scenario():
        loop = asyncio.get_running_loop()
        listener, port = make_listener(server_tls, handshake_timeout=10.0)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = hc.insecure_client_context().wrap_bio(incoming, outgoing)
        with pytest.raises(ssl.SSLWantReadError):
            client.do_handshake()
        hello = outgoing.read()
        sock = await connect(port, hello[:20])
        try:
            await until(lambda: any(waiting.again is not None
                                    for waiting in listener._first_records),
                        what='the listener to see a partial record')
            await loop.sock_sendall(sock, hello[20:])
            while True:   # the rest of the handshake, over the real socket
                try:
                    client.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await loop.sock_sendall(sock, outgoing.read())
                    data = await loop.sock_recv(sock, 65536)
                    assert data, 'the listener closed the connection'
                    incoming.write(data)
            await loop.sock_sendall(sock, outgoing.read())   # the client's Finished
            await until(lambda: Recorder.made, what='the connection handed to the protocol')
            assert listener.total == 1 and not listener._first_records
        finally:
            sock.close()
            await listener.stop()
    run(scenario())


def test_a_waiting_connection_makes_room_at_the_cap_and_a_leaving_one_is_forgotten(server_tls):
    async def scenario():
        listener, port = make_listener(server_tls, handshake_timeout=30.0, max_connections=3)
        first = [await connect(port, CUT_HELLO) for _ in range(3)]
        try:
            await until(lambda: len(listener._first_records) == 3, what='3 waiting')
            newcomer = await connect(port)   # has not sent a byte yet
            # the oldest waiting one was evicted for it; the total stays at the cap
            await until(lambda: closed_by_server(first[0]), what='the oldest evicted')
            await until(lambda: len(listener._first_records) == 3, what='the newcomer waiting')
            assert listener.total == 3 and listener.refused == 0
            assert not any(map(closed_by_server, first[1:] + [newcomer]))
            newcomer.close()   # a client that leaves before it sends its ClientHello
            await until(lambda: listener.total == 2, what='the leaver forgotten')
            assert len(listener._first_records) == 2
        finally:
            for sock in first + [newcomer]:
                sock.close()
            await listener.stop()
        assert not listener._first_records and listener.total == 0
    run(scenario())


def test_a_port_probe_costs_no_handshake_slot(server_tls):
    async def scenario():
        listener, port = make_listener(server_tls, handshake_timeout=30.0)
        try:
            for _ in range(5):
                (await connect(port)).close()   # connect and leave, as a port check does
            await until(lambda: listener.total == 0, what='the probes forgotten')
            assert listener.peak_handshaking == 0 and listener.dropped == 0
        finally:
            await listener.stop()
    run(scenario())
