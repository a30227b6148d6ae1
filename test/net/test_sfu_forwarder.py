"""video_bridge/sfu_forwarder.py against Janus nodes that misbehave (aiohttp websocket servers
standing in for them): one that never answers, one that answers with a message past the
client's bound, one that answers the API with hostile lists. Every round ends within its
deadlines, a failed node is retried after a backoff (not every round), and nothing odd is
forwarded. The real Janus nodes are test/lab/test_sfu_janus.py's."""

import asyncio
import time

from conftest import free_port
import pytest
from video_bridge.net.janus_api import MAX_MESSAGE

pytest.importorskip('aiohttp')


class FakeJanus:
    """A websocket server speaking as much of the Janus API as ``mode`` says."""

    def __init__(self, mode: str):
        self.mode = mode
        self.port = free_port()
        self.url = f'ws://127.0.0.1:{self.port}'
        self.connections = 0
        self.requests = []

    async def start(self):
        from aiohttp import web
        app = web.Application()
        app.router.add_get('/', self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, '127.0.0.1', self.port).start()

    async def stop(self):
        await self.runner.cleanup()

    async def handle(self, request):
        from aiohttp import web
        ws = web.WebSocketResponse(protocols=('janus-protocol',))
        await ws.prepare(request)
        self.connections += 1
        async for frame in ws:
            message = frame.json()
            self.requests.append(message)
            if self.mode == 'silent':
                continue
            reply = self.answer(message)
            if reply is not None:
                await ws.send_json(reply) if isinstance(reply, dict) else \
                    await ws.send_str(reply)
        return ws

    def answer(self, message):
        kind, transaction = message.get('janus'), message.get('transaction')
        if kind in ('create', 'attach', 'destroy', 'detach'):
            return {'janus': 'success', 'transaction': transaction, 'data': {'id': 7}}
        if self.mode == 'huge':
            return 'x' * (MAX_MESSAGE + 1)
        if kind != 'message':
            return {'janus': 'ack', 'transaction': transaction}
        body = message['body']
        data = {'videoroom': 'participants', 'room': body.get('room'), 'participants': [
            {'id': 11, 'publisher': True}, {'id': 'x', 'publisher': True},
            {'id': -5, 'publisher': True}, 'junk',
            {'id': 2 ** 62, 'publisher': True}, {'id': 3, 'publisher': 'yes'}]}
        if body.get('request') == 'listremotes':   # not even plugin data
            return {'janus': 'success', 'transaction': transaction, 'plugindata': 'x'}
        elif body.get('request') == 'join':
            data = {'videoroom': 'attached', 'streams': [{'type': 'video', 'codec': 'evil',
                                                          'feed_mid': '0'}]}
        return {'janus': 'success', 'transaction': transaction, 'sender': 7,
                'plugindata': {'plugin': 'janus.plugin.videoroom', 'data': data}}


async def close_all(forwarder, *fakes):
    """Close the forwarder's sessions to its nodes, then stop the fake nodes."""
    for node in (forwarder.origin, *forwarder.edges.values()):
        await node.close()
    for fake in fakes:
        await fake.stop()


def forwarder_for(origin, edge, tmp_path):
    from video_bridge.sfu_forwarder import Forwarder, load_config
    files = {}
    for name in ('admin', 'room'):
        files[name] = tmp_path / name
        files[name].write_text('secret\n')
        files[name].chmod(0o600)
    return Forwarder(load_config({
        'origin': {'url': origin.url},
        'edges': [{'name': 'node-b', 'url': edge.url, 'address': '127.0.0.1'}],
        'rooms': [{'room': 4242, 'secret_file': str(files['room'])}],
        'admin_key_file': str(files['admin']), 'poll_interval': 0.2,
        'request_timeout': 1.0, 'backoff_max': 2.0}))


@pytest.mark.parametrize('mode', ['silent', 'huge'])
def test_a_node_that_fails_holds_no_round_and_is_retried_after_a_backoff(tmp_path, mode):
    async def scenario():
        origin, edge = FakeJanus(mode), FakeJanus(mode)
        for node in (origin, edge):
            await node.start()
        forwarder = forwarder_for(origin, edge, tmp_path)
        try:
            rounds = []
            started = time.monotonic()
            while time.monotonic() - started < 3.0:   # rounds over 3 s, each timed
                begun = time.monotonic()
                await forwarder.one_round()
                rounds.append(time.monotonic() - begun)
                await asyncio.sleep(0.2)   # the forwarder's poll period
            assert not forwarder.origin.alive() and not forwarder.edges['node-b'].alive()
            # a round waits for a connecting node at most a poll interval (0.2 s), not for
            # its connect's deadline (1 s)
            assert max(rounds) < 0.6, rounds
            # retried after 1 s, 2 s, ...: a few connections in 3 s, not one per round
            assert 1 <= origin.connections <= 3 and 1 <= edge.connections <= 3, (
                origin.connections, edge.connections, len(rounds))
            assert len(rounds) >= 8
        finally:
            await close_all(forwarder, origin, edge)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_hostile_answers_are_not_forwarded(tmp_path):
    """Participants with odd ids, a listremotes answer without plugin data, a probe naming an
    unknown codec: nothing is linked, the forwarder asks again next round and stays connected."""
    async def scenario():
        origin, edge = FakeJanus('hostile'), FakeJanus('hostile')
        for node in (origin, edge):
            await node.start()
        forwarder = forwarder_for(origin, edge, tmp_path)
        try:
            for _ in range(3):
                await forwarder.one_round()
            assert forwarder.origin.alive() and forwarder.edges['node-b'].alive()
            asked = [m['body']['request'] for node in (origin, edge) for m in node.requests
                     if m.get('janus') == 'message']
            assert asked.count('join') == 3       # feed 11 probed each round, never learnt
            assert 'add_remote_publisher' not in asked and 'publish_remotely' not in asked
            assert 'remove_remote_publisher' not in asked, asked   # no remote ones listed
            assert forwarder.streams[4242] == {}     # the evil codec was not learnt
        finally:
            await close_all(forwarder, origin, edge)

    asyncio.run(asyncio.wait_for(scenario(), 30))
