"""
The hostile soak's driver, in a process of its own: holds the driver lock, sends a velocity every
50 ms, says when it sent each.

``test/node/test_hostile_soak.py`` measures each command from its send to its arrival on
``/cmd_vel``. Sent from a thread of the test process, a command waited for that process's
interpreter lock behind the viewer's thread between being stamped and being written (the span
from the stamp to the end of the send: p99 2.8 ms, up to 5.5 ms, in a soak where the goal is a
p99 of 5 ms): the test's own lock, not the bridge. Here it is the one thread that runs (the
websockets library's asyncio client: its sync client reads in a second thread, which a Python
TLS socket does not survive; see ``hostile_clients.Viewer``).

    python soak_driver.py --url wss://... --seconds 90

stdout, a line each: ``ready`` once the lock is held; ``sent MONOTONIC WALL X`` per command
(stamped just before its send; CLOCK_MONOTONIC is the machine's, so the test compares it with its
own); ``error REPR`` if it failed. It stops after --seconds, or when stdin closes.
"""

import argparse
import asyncio
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support.hostile_clients import insecure_client_context  # noqa: E402 (test/ on the path)

COMMAND_PERIOD = 0.05      # a driver's 20 Hz


def say(line: str):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


async def drive(url: str, seconds: float, halt: threading.Event):
    from websockets.asyncio.client import connect
    async with connect(url, ssl=insecure_client_context(), open_timeout=10) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))['type'] == 'hello'
        await ws.send(json.dumps({'type': 'acquire', 'id': 1}))
        reply = {}
        while reply.get('id') != 1:   # state broadcasts may come first
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply['type'] == 'ack', reply
        say('ready')
        deadline = time.monotonic() + seconds
        index = 0
        next_send = time.monotonic()
        while not halt.is_set() and time.monotonic() < deadline:
            index += 1
            x = round(0.1 + 0.001 * (index % 300), 3)   # distinct for 15 s
            stamp = (time.monotonic(), time.time())
            await ws.send(json.dumps({'type': 'velocity', 'id': index + 1, 'linear': {'x': x}}))
            say(f'sent {stamp[0]!r} {stamp[1]!r} {x!r}')
            next_send += COMMAND_PERIOD
            while next_send - time.monotonic() > 0:   # read acks until the next send
                try:
                    await asyncio.wait_for(ws.recv(), next_send - time.monotonic())
                except TimeoutError:
                    break


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--url', required=True)
    parser.add_argument('--seconds', type=float, required=True)
    args = parser.parse_args()
    halt = threading.Event()
    # stdin closing (the test is done, or gone) stops the driver
    threading.Thread(target=lambda: (sys.stdin.read(), halt.set()), daemon=True).start()
    try:
        asyncio.run(drive(args.url, args.seconds, halt))
    except BaseException as exc:  # reported by the test
        say(f'error {exc!r}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
