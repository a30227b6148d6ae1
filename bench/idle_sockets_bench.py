"""
Idle TLS websockets: what one costs the bridge, and what it costs the engines alone.

Why: issue 16's soak holds 300 idle wss ``/control`` sockets from 25 addresses (its row 4), and
its goal is an RSS growth under 20 MB for every attack together. This measures the resident
memory one idle wss socket costs, in the same run, for:

* ``floor``: the plainest aiohttp TLS websocket server (library defaults; a ping every 2 s as
  the bridge sends), nothing of the bridge's,
* ``floor-4k``: the same with asyncio's TLS read buffer bounded to 4 KB, as the bridge bounds it
  (``video_bridge.net.listener.TLS_READ_BUFFER``; asyncio's default preallocates 256 KB),
* ``bridge``: bridge_node over TLS with a token and ``view_requires_token: false`` (the soak's
  setting), anonymous ``/control`` sockets.

Each case: the server starts; a client process opens and closes --warmup sockets (first use of
every code path), then the server's RSS is read; the client opens --sockets idle wss sockets
from 25 addresses (127.0.0.10-34), answering pings; --settle s later the RSS is read again; the
client closes them and, --settle s later, the RSS once more. Per socket = (held - before) / N.

Run through bench/run (private network namespace, own ROS_DOMAIN_ID):

    bench/run idle_sockets [--sockets 300] [--rounds 2] [--cases floor,floor-4k,bridge]
                           [--bridge-env NAME=VALUE ...]
"""

import argparse
import asyncio
import contextlib
import os
import select
import ssl
import subprocess
import sys
import tempfile
import time

import benchlib
from benchlib import fmt, HOST, table

sys.path.insert(0, os.path.join(benchlib.ROOT, 'test'))
from support.hostile_clients import self_signed_cert  # noqa: E402 (test/ on sys.path first)

SOURCES = [f'127.0.0.{10 + index}' for index in range(25)]
TOKEN = 'idle-sockets-token-0123456789'
CASES = ('floor', 'floor-4k', 'bridge')
OPEN_TIMEOUT = 120.0   # s for a client to open its sockets (or the server to let them go)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS)."""
    return benchlib.memory_kb(pid)['VmRSS'] / 1024.0


# -- the floor server (a process of its own) ---------------------------------------------------

async def serve(options):
    """The floor: aiohttp, TLS, one websocket route that reads until the client goes."""
    from aiohttp import web
    if options.read_buffer:
        from asyncio import sslproto
        sslproto.SSLProtocol.max_size = options.read_buffer

    async def websocket(request):
        ws = web.WebSocketResponse(heartbeat=2.0)
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options.cert, options.key)
    app = web.Application()
    app.router.add_get('/control', websocket)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, options.port, ssl_context=context, backlog=1024).start()
    await asyncio.Event().wait()   # until SIGINT


# -- the client (a process of its own) ---------------------------------------------------------

async def hold(options):
    """Open --count sockets (one at a time, round robin over SOURCES); say so; hold them."""
    import aiohttp
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        local_addr=(source, 0), ssl=context, limit=0)) for source in SOURCES]
    sockets, readers = [], []

    async def read(ws):
        async for _ in ws:   # answers the server's pings
            pass
    try:
        for index in range(options.count):
            ws = await sessions[index % len(sessions)].ws_connect(
                f'wss://{HOST}:{options.port}/control', autoping=True)
            sockets.append(ws)
            readers.append(asyncio.ensure_future(read(ws)))
        print('open', len(sockets), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    finally:
        for ws in sockets:
            await ws.close()
        for reader in readers:
            reader.cancel()
        for session in sessions:
            await session.close()


@contextlib.contextmanager
def holding(name: str, port: int, count: int, timeout: float):
    """
    A client process holding ``count`` idle sockets for the ``with`` block, then closing them.

    Bounded: the sockets must be open within ``timeout`` s, else RuntimeError; on any way out
    the client is told to close them (stdin closed) and ends, or is killed (our own child).
    """
    client = subprocess.Popen(benchlib.python_argv('idle_sockets_bench.py', 'client', '--port',
                                                   port, '--count', count),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([client.stdout], [], [], timeout)
        line = client.stdout.readline() if ready else ''
        if not line.startswith('open'):
            raise RuntimeError(f'{name}: the client did not open {count} sockets within '
                               f'{timeout:g} s ({line!r})')
        yield client
    finally:
        client.stdin.close()    # the client closes its sockets and ends
        try:
            client.wait(30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait(10)


def open_fds(pid: int) -> int:
    """Descriptors a process has open."""
    return len(os.listdir(f'/proc/{pid}/fd'))


def run_case(case: str, options, cert: str, key: str) -> dict:
    """One server, warm-up, N idle sockets; return the RSS figures."""
    with benchlib.Rig() as rig:
        if case == 'bridge':
            server, port = benchlib.start_bridge(
                rig, '/camera/image_raw', [f'tls_cert:={cert}', f'tls_key:={key}',
                                           'view_requires_token:=false'],
                env={'VIDEO_BRIDGE_TOKEN': TOKEN, **options.bridge_env})
        else:
            port = benchlib.free_port()
            args = ['serve', '--port', port, '--cert', cert, '--key', key]
            if case == 'floor-4k':
                args += ['--read-buffer', 4096]
            server = rig.start(case, benchlib.python_argv('idle_sockets_bench.py', *args))
            benchlib.wait_for_port(port, server)
        idle_fds = open_fds(server.pid)
        with holding(case, port, options.warmup, OPEN_TIMEOUT):
            pass
        deadline = time.monotonic() + OPEN_TIMEOUT   # the server let the warm-up's sockets go
        while open_fds(server.pid) > idle_fds and time.monotonic() < deadline:
            time.sleep(0.1)   # polling a condition, with a deadline
        time.sleep(options.settle)       # the allocator's state settles before the reading
        before = rss_mb(server.pid)
        with holding(case, port, options.sockets, OPEN_TIMEOUT):
            time.sleep(options.settle)   # a few ping rounds on every socket
            held = rss_mb(server.pid)
        time.sleep(options.settle)
        after = rss_mb(server.pid)
    return {'before': before, 'held': held, 'after': after,
            'per_socket_kb': (held - before) * 1024 / options.sockets}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='mode')
    serve_parser = sub.add_parser('serve')
    serve_parser.add_argument('--port', type=int, required=True)
    serve_parser.add_argument('--cert', required=True)
    serve_parser.add_argument('--key', required=True)
    serve_parser.add_argument('--read-buffer', type=int, default=0)
    client_parser = sub.add_parser('client')
    client_parser.add_argument('--port', type=int, required=True)
    client_parser.add_argument('--count', type=int, required=True)
    parser.add_argument('--sockets', type=int, default=300, help='idle sockets held (<= 1000)')
    parser.add_argument('--warmup', type=int, default=20)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--settle', type=float, default=5.0, help='s before each RSS reading')
    parser.add_argument('--bridge-env', action='append', default=[], metavar='NAME=VALUE',
                        help='extra environment for bridge_node (a probe, an allocator setting)')
    parser.add_argument('--cases', default=','.join(CASES),
                        type=lambda text: [c for c in text.split(',') if c])
    options = parser.parse_args()
    options.bridge_env = dict(item.split('=', 1) for item in getattr(options, 'bridge_env', [])
                              if '=' in item)
    benchlib.require_loopback_only()
    if options.mode == 'serve':
        try:
            asyncio.run(serve(options))
        except KeyboardInterrupt:
            pass
        return
    if options.mode == 'client':
        asyncio.run(hold(options))
        return
    if not set(options.cases) <= set(CASES) or not 0 < options.sockets <= 1000:
        parser.error(f'--cases takes {",".join(CASES)}; --sockets 1..1000')
    benchlib.print_versions()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        cert, key = self_signed_cert(scratch)   # RSA-2048 for 127.0.0.1, as the soak's
        for round_index in range(options.rounds):
            for case in benchlib.alternating(options.cases, round_index):
                figures = run_case(case, options, cert, key)
                print(f'{case} round {round_index + 1}: {figures}', flush=True)
                rows.append([case, round_index + 1, fmt(figures['before']),
                             fmt(figures['held']), fmt(figures['after']),
                             fmt(figures['held'] - figures['before']),
                             fmt(figures['per_socket_kb'])])
    rows.sort(key=lambda row: (options.cases.index(row[0]), row[1]))
    print(f'\n{options.sockets} idle wss sockets from {len(SOURCES)} addresses, RSA-2048 '
          f'certificate, after {options.warmup} warm-up sockets; RSS of the server in MB')
    print(table(['server', 'round', 'RSS before', 'held', 'after close', 'growth MB',
                 'KB a socket'], rows))


if __name__ == '__main__':
    main()
