"""The edge's routes in-process: aiohttp's own routes with a ``{stream}`` path variable, the name
read from ``match_info`` (a topic stream's ``%2F`` decoded), a path under a stream prefix that is
not one stream segment answered 400 (before a websocket endpoint's 426, on every method), the
query decoded once with the last of a repeated value counting, and web_video_server's URLs."""

import asyncio
import threading

import aiohttp
from support.pictures import raw
from video_bridge.core import protocol
from video_bridge.core.access import AccessPolicy
from video_bridge.core.streams import StreamHub, StreamSettings
from video_bridge.net import wvs_compat
from video_bridge.net.server import BridgeServer, ServerConfig

TOKEN = 'routes-token'


class Edge:
    """A bridge edge without ROS or control: one stream, fed at 30 fps while a test needs it."""

    def __init__(self):
        self.hub = StreamHub(8)
        self.stream = self.hub.add(StreamSettings(name='camera', topic='/camera/image_raw'))
        self.server = BridgeServer(self.hub, AccessPolicy(TOKEN, True),
                                   ServerConfig(host='127.0.0.1', port=0, web_root=''),
                                   extra_routes=[wvs_compat.add_routes])
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True)

    def _feed(self):
        index = 0
        while not self._stop.wait(1 / 30):
            self.stream.publish(raw(index))
            index += 1

    def url(self, target: str) -> str:
        return f'http://127.0.0.1:{self.server.port}{target}'

    async def request(self, method: str, target: str, **kwargs):
        """``(status, text)`` of one request; ``target`` is sent as written (encoded)."""
        url = aiohttp.client.URL(self.url(target), encoded=True)
        async with self.session.request(method, url, **kwargs) as response:
            return response.status, await response.text(errors='replace')

    async def __aenter__(self):
        await self.server.start()
        self._feeder.start()
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        self._stop.set()
        await self.session.close()
        await self.server.stop()
        self._feeder.join(5)


def run(scenario):
    async def main():
        async with Edge() as edge:
            return await asyncio.wait_for(scenario(edge), 20)
    return asyncio.run(main())


def test_stream_routes_are_aiohttp_routes_with_a_path_variable():
    async def scenario(edge):
        return {resource.canonical for resource in edge.server.app.router.resources()}
    canonical = run(scenario)
    for prefix in (protocol.VIDEO_PREFIX, protocol.MJPEG_PREFIX, protocol.SNAPSHOT_PREFIX):
        assert prefix + '{stream}' in canonical, canonical
    assert {protocol.CONTROL_PATH, protocol.STREAMS_PATH, '/stream', '/snapshot'} <= canonical


def test_a_topic_stream_name_arrives_decoded_from_the_path_variable():
    async def scenario(edge):
        snapshot = await edge.request('GET', f'/snapshot/%2Fcam%2Fx?token={TOKEN}')
        mjpeg = await edge.request('GET', f'/mjpeg/%2Fcam%2Fx?token={TOKEN}')
        async with edge.session.ws_connect(
                edge.url(f'/video/%2Fcam%2Fx?token={TOKEN}').replace('http', 'ws', 1)) as ws:
            message = await ws.receive()
        return snapshot, mjpeg, message
    snapshot, mjpeg, message = run(scenario)
    for status, text in (snapshot, mjpeg):
        assert status == 404 and "unknown stream '/cam/x'" in text, (status, text)
    assert message.data == protocol.CLOSE_UNKNOWN_STREAM and "'/cam/x'" in message.extra


def test_a_path_that_is_not_one_stream_segment_is_400_on_every_method():
    bad = ['/video/a/b', '/video/', '/mjpeg/a/b', '/mjpeg/', '/snapshot/a/b', '/snapshot/',
           '/snapshot/a%00b', '/video/a%07b', '/mjpeg/' + 'x' * (protocol.MAX_STREAM_NAME + 1)]

    async def scenario(edge):
        answers = {}
        for target in bad:
            answers[target] = await edge.request('GET', target)
        answers['HEAD /snapshot/a/b'] = await edge.request('HEAD', '/snapshot/a/b')
        answers['OPTIONS /snapshot/a/b'] = await edge.request('OPTIONS', '/snapshot/a/b')
        return answers
    answers = run(scenario)
    for target, (status, text) in answers.items():
        assert status == 400, (target, status, text)
        assert text.startswith('invalid stream name in ') or target.startswith('HEAD'), text
    assert answers['/video/a/b'][1] == "invalid stream name in '/video/a/b'\n"


def test_good_stream_routes_reach_their_handlers():
    async def scenario(edge):
        return {
            'snapshot': await edge.request('GET', f'/snapshot/camera?token={TOKEN}&width=64'),
            'preflight': await edge.request('OPTIONS', '/snapshot/camera'),
            'plain video': await edge.request('GET', f'/video/camera?token={TOKEN}'),
            'bad variant': await edge.request('GET', f'/snapshot/camera?token={TOKEN}&width=x'),
            'no token': await edge.request('GET', '/snapshot/camera'),
            'elsewhere': await edge.request('GET', '/videos/camera'),
        }
    answers = run(scenario)
    assert answers['snapshot'][0] == 200
    assert answers['preflight'][0] == 204
    assert answers['plain video'][0] == 426, 'a websocket endpoint, asked over plain HTTP'
    assert answers['bad variant'][0] == 400 and 'width' in answers['bad variant'][1]
    assert answers['no token'][0] == 401
    assert answers['elsewhere'][0] == 404


def test_the_query_is_decoded_once_and_the_last_repeated_value_counts():
    async def scenario(edge):
        return (await edge.request('GET', f'/api/streams?token=wrong&token={TOKEN}'),
                await edge.request('GET', f'/api/streams?token={TOKEN}&token=wrong'),
                await edge.request('GET', f'/snapshot?topic=%2Fcamera%2Fimage_raw&token={TOKEN}'),
                await edge.request('GET', f'/stream?topic=camera&token={TOKEN}'))
    last_right, last_wrong, wvs_snapshot, wvs_relative = run(scenario)
    assert last_right[0] == 200 and last_wrong[0] == 401
    assert wvs_snapshot[0] == 200, wvs_snapshot
    assert wvs_relative[0] == 400 and 'absolute topic' in wvs_relative[1]
