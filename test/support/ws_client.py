"""Reading an aiohttp websocket in the in-process edge tests (test/net/)."""

import asyncio
import json

import aiohttp


async def receive_json(socket, kind, timeout=5.0):
    """The next message of type ``kind`` on a websocket (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await socket.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f'socket ended while waiting for {kind}: {message}')
            data = json.loads(message.data)
            if data.get('type') == kind:
                return data
