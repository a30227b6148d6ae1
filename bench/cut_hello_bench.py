"""
Cut ClientHellos: what a TLS connection that sent 3 bytes of one costs the bridge's listener.

Why: issue 16's soak keeps up to 1000 such sockets open (its row 9), each waiting in the
listener (``net/listener.py``, ``_FirstRecord``) until its first TLS record is whole or
``handshake_timeout`` passes. This measures the Python objects one waiting socket holds, with
tracemalloc, in one process: a ``Listener`` with a TLS context on 127.0.0.1 and --sockets client
sockets (from a thread) that each send a TLS record header's first 3 bytes and nothing
more. No ROS.

Run through bench/run (private network namespace):

    bench/run cut_hello [--sockets 1000] [--source DIR]

--source DIR measures another checkout's listener (``git archive COMMIT | tar -x -C DIR``).
"""

import argparse
import asyncio
import gc
import os
import resource
import socket
import ssl
import sys
import tempfile
import tracemalloc

import benchlib

# --source DIR: another checkout's listener (an older commit's, for before and after)
SOURCE = sys.argv[sys.argv.index('--source') + 1] if '--source' in sys.argv[:-1] \
    else benchlib.ROOT
sys.path.insert(0, os.path.join(benchlib.ROOT, 'test'))
sys.path.insert(0, os.path.join(os.path.abspath(SOURCE), 'src', 'video_bridge'))
from support.hostile_clients import self_signed_cert  # noqa: E402 (test/ on sys.path first)
from video_bridge.net.listener import Listener  # noqa: E402

CUT_HELLO = b'\x16\x03\x01'
DEADLINE = 120.0   # s for the listener to take every socket


async def measure(count: int, context: ssl.SSLContext) -> dict:
    listener = Listener(asyncio.Protocol, ssl_context=context, max_connections=count + 100,
                        max_per_client=count + 100, handshake_timeout=DEADLINE)
    port = listener.bind(benchlib.HOST, 0)
    listener.start()
    clients = []

    def connect(n):
        for _ in range(n):
            sock = socket.create_connection((benchlib.HOST, port), timeout=10)
            sock.sendall(CUT_HELLO)
            clients.append(sock)

    async def taken(n):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while listener.total < n:
            if loop.time() > deadline:
                raise RuntimeError(f'the listener took {listener.total} of {n} sockets')
            await asyncio.sleep(0.05)   # polling a condition, with a deadline
    try:
        await asyncio.to_thread(connect, 20)   # warm-up: every code path used once
        await taken(20)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await asyncio.to_thread(connect, count)
        await taken(count + 20)
        held = tracemalloc.take_snapshot()
        tracemalloc.stop()
        tasks = len(asyncio.all_tasks())
    finally:
        for sock in clients:
            sock.close()
        await listener.stop()
    grown = sum(stat.size_diff for stat in held.compare_to(before, 'filename'))
    return {'sockets': count, 'bytes_each': grown / count, 'tasks': tasks}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sockets', type=int, default=1000, help='cut ClientHellos (<= 5000)')
    parser.add_argument('--source', default=benchlib.ROOT, metavar='DIR',
                        help='the checkout whose listener is measured (default: this one)')
    options = parser.parse_args()
    if not 0 < options.sockets <= 5000:
        parser.error('--sockets 1..5000')
    benchlib.require_loopback_only()
    benchlib.print_versions()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * options.sockets + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * options.sockets + 200), hard))
    with tempfile.TemporaryDirectory() as scratch:
        cert, key = self_signed_cert(scratch)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        figures = asyncio.run(measure(options.sockets, context))
    print(f'listener: {os.path.abspath(SOURCE)}')
    print(f"{figures['sockets']} sockets waiting for their ClientHello: "
          f"{figures['bytes_each'] / 1024:.1f} KB of Python objects each "
          f"(tracemalloc); tasks on the loop meanwhile: {figures['tasks']}")


if __name__ == '__main__':
    main()
