"""A viewer worker: many websocket video clients in one asyncio process, recording every frame.

The benchmarks start several of these processes so that the viewers' own CPU is spread over
processes (and cores) instead of one event loop becoming the bottleneck being measured. Each
client connects to ws://127.0.0.1:<port><path>, reads binary frames as a browser would, and
records per frame: receive wall clock, header.stamp, seq, flags, size, the bridge's
received_time and the JPEG width (header layout: docs/protocol.md, parsed here independently of
the bridge's code, as any client would).

Records are written to --out as a (frames x 8) float64 array (columns: benchlib.V_*), with the
stamp in whole microseconds so it stays exact in a float64. Runs at most --duration seconds,
then closes its sockets cleanly; SIGINT/SIGTERM end it early (still writing what it has).
"""

import argparse
import asyncio
import signal
import struct
import sys
import time

from benchlib import HOST, require_loopback_only
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

# magic, header_length, flags, seq, width, height, stamp_sec, stamp_nanosec, received_time
HEADER = struct.Struct('<4sHHIHHiId')


async def viewer(viewer_id: int, url: str, rows: list, problems: list, first: asyncio.Event):
    """Receive frames until cancelled; append one row per frame to ``rows``."""
    try:
        async with connect(url, compression=None, proxy=None, max_size=None,
                           ping_interval=None, open_timeout=10, close_timeout=2) as socket:
            async for message in socket:
                now = time.time()
                (_, _, flags, seq, width, _, sec, nsec, received) = HEADER.unpack_from(message)
                rows.append((viewer_id, now, sec * 1_000_000 + nsec // 1000, seq, flags,
                             len(message), received, width))
                first.set()
        problems.append(f'viewer {viewer_id}: the bridge closed the socket '
                        f'({socket.close_code} {socket.close_reason})')
    except ConnectionClosed as exc:
        problems.append(f'viewer {viewer_id}: connection lost: {exc}')
    except (OSError, asyncio.TimeoutError) as exc:
        problems.append(f'viewer {viewer_id}: {type(exc).__name__}: {exc}')


async def run(options) -> list:
    """Run all clients of this worker for at most --duration seconds, then close them."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rows, problems = [], []
    firsts = [asyncio.Event() for _ in options.paths]
    tasks = [asyncio.create_task(viewer(options.first_id + i, f'ws://{HOST}:{options.port}{path}',
                                        rows, problems, firsts[i]))
             for i, path in enumerate(options.paths)]
    if options.ready:
        asyncio.create_task(announce_ready(firsts, options.ready))
    try:
        await asyncio.wait_for(stop.wait(), options.duration)
    except asyncio.TimeoutError:
        pass
    for task in tasks:  # leaving ``async with`` sends a close frame: a clean goodbye
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for sig in (signal.SIGINT, signal.SIGTERM):  # nothing may interrupt saving the records
        signal.signal(sig, signal.SIG_IGN)
    np.save(options.out, np.array(rows, np.float64).reshape(-1, 8))
    return problems


async def announce_ready(firsts: list, path: str):
    """Create ``path`` once every client has its first frame: the parent's warm-up starts then.

    (DDS discovery and the bridge's on-demand subscription take a variable second or three, so
    a fixed sleep would sometimes measure a stream that has not started yet.)
    """
    for event in firsts:
        await event.wait()
    with open(path, 'w'):
        pass


def main():
    """Parse the arguments, run the clients, report connection problems on stderr."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--duration', type=float, required=True, help='stop after (s)')
    parser.add_argument('--first-id', type=int, default=0, help='id of the first viewer')
    parser.add_argument('--out', required=True)
    parser.add_argument('--ready', help='file to create once every client got a frame')
    parser.add_argument('paths', nargs='+', help='one /video/... path per viewer')
    options = parser.parse_args()
    require_loopback_only()
    problems = asyncio.run(run(options))
    for problem in problems:
        print(problem, file=sys.stderr)


if __name__ == '__main__':
    main()
