"""bridge_node end to end: real rclpy publisher, real bridge process, real websocket viewers."""

import asyncio
import os
import time

from conftest import FramePublisher, wait_for
import cv2
import numpy as np
import pytest
from video_bridge.core.protocol import FLAG_COLORMAPPED, unpack_frame
from video_bridge_msgs.msg import BridgeStatus
import websockets


async def watch(url: str, count: int, timeout: float = 15.0, **connect):
    """Receive ``count`` frames from a video socket; return (header, jpeg, receive time) each."""
    frames = []
    async with websockets.connect(url, **connect) as ws:
        async with asyncio.timeout(timeout):
            while len(frames) < count:
                message = await ws.recv()
                header, jpeg = unpack_frame(message)
                frames.append((header, bytes(jpeg), time.time()))
    return frames


async def close_of(url: str, send=None):
    """Connect, optionally send one message, and return the close (code, reason) we get."""
    async with websockets.connect(url) as ws:
        if send is not None:
            await ws.send(send)
        try:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code, closed.rcvd.reason


def test_frames_arrive_decodable_in_order_with_source_stamps(ros, start_bridge):
    bridge = start_bridge(**{'streams.camera.topic': '/t1/image'})
    with FramePublisher(ros.node, '/t1/image') as publisher:
        frames = asyncio.run(watch(f'{bridge.ws}/video/camera', 40))
    published = set(publisher.stamps)
    seqs = [header.seq for header, _, _ in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    for header, jpeg, _ in frames:
        picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (480, 640, 3)
        assert (header.width, header.height) == (640, 480)
        assert (header.stamp_sec, header.stamp_nanosec) in published
    # live, not replayed: the newest frame is at most a few frame periods old when it arrives
    latencies = sorted(received - header.stamp for header, _, received in frames)
    assert latencies[len(latencies) // 2] < 0.1, latencies


def thread_stats(pid: int) -> dict:
    """Thread id -> (nice, CPU ticks so far) of each thread of a process, from /proc."""
    stats = {}
    for tid in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{tid}/stat') as stat:
                fields = stat.read().rpartition(')')[2].split()   # after the name: field 3 on
        except FileNotFoundError:       # the thread ended meanwhile
            continue
        stats[int(tid)] = (int(fields[16]), int(fields[11]) + int(fields[12]))
    return stats


def test_video_is_encoded_on_one_thread_of_lower_priority(ros, start_bridge):
    """
    The work a viewer costs (taking, converting, encoding each frame) runs on one thread whose
    niceness is video_thread_nice above the rest of the bridge (network loop, executor).
    """
    bridge = start_bridge(**{'streams.camera.topic': '/tn/image', 'video_thread_nice': 7})
    pid = bridge.process.proc.pid
    with FramePublisher(ros.node, '/tn/image'):
        asyncio.run(watch(f'{bridge.ws}/video/camera', 5))
        before = thread_stats(pid)
        asyncio.run(watch(f'{bridge.ws}/video/camera?quality=95', 90))
        after = thread_stats(pid)
    used = {tid: after[tid][1] - before[tid][1] for tid in after if tid in before}
    busiest = max(used, key=used.get)
    niced = [tid for tid, (nice, _) in after.items() if nice != 0]
    assert niced == [busiest], (after, used)
    assert after[busiest][0] == 7 and after[pid][0] == 0, after

    """
    A viewer that stops reading for 3 s is sent the newest frame when it reads again, not a
    backlog, and a fast viewer meanwhile gets every frame.

    Freshness is judged by the frames' own camera stamps (the publisher stamps with this
    machine's clock), not by counting published messages: the bridge subscribes on demand,
    so its sequence numbers start when discovery completes, a varying time after the
    publisher started counting.
    """
    bridge = start_bridge(**{'streams.camera.topic': '/t2/image'})

    async def slow_viewer(seconds, stalled):
        # max_queue=1 and no reads: the client stops reading, TCP fills up, the server's
        # socket to it blocks. It must not queue frames for it, nor hold up anyone else.
        async with websockets.connect(f'{bridge.ws}/video/camera', max_queue=1) as ws:
            await ws.recv()
            stalled.set()
            await asyncio.sleep(seconds)  # deliberately slow client, not synchronisation
            received = []
            for _ in range(40):
                header, _ = unpack_frame(await ws.recv())
                received.append((header, time.time()))
            return received

    async def both():
        stalled = asyncio.Event()
        slow = asyncio.create_task(slow_viewer(3.0, stalled))
        await stalled.wait()
        fast = await watch(f'{bridge.ws}/video/camera', 60)
        return fast, await slow

    with FramePublisher(ros.node, '/t2/image', rate=30):
        fast, slow = asyncio.run(both())
    fast_seqs = [header.seq for header, _, _ in fast]
    assert fast_seqs[-1] - fast_seqs[0] + 1 - len(fast_seqs) <= 3, 'fast viewer lost frames'
    slow_seqs = [header.seq for header, _ in slow]
    gaps = [b - a for a, b in zip(slow_seqs, slow_seqs[1:])]
    jump = next((index for index, gap in enumerate(gaps) if gap > 10), None)
    assert jump is not None, f'the stalled viewer was sent a backlog, not the newest frame: {gaps}'
    # What was still in flight when it stalled: the window (frames_in_flight, 2) plus what
    # the client library had parsed from its socket already. Never a stall's worth (90).
    assert jump + 1 <= 6, f'{jump + 1} stale frames before the newest: {slow_seqs}'
    # After the jump it is live: each frame at most a few frame periods old on arrival.
    ages = [arrival - header.stamp for header, arrival in slow[jump + 1:]]
    assert max(ages) < 0.5, f'frames after the stall arrived up to {max(ages):.2f} s old'


def test_unknown_stream_and_bad_variant_are_refused_clearly(ros, start_bridge):
    bridge = start_bridge()
    code, reason = asyncio.run(close_of(f'{bridge.ws}/video/nosuch'))
    assert code == 4404 and 'nosuch' in reason and 'camera' in reason
    code, reason = asyncio.run(close_of(f'{bridge.ws}/video/camera?width=wide'))
    assert code == 4400 and 'width' in reason


def test_viewer_cap_refuses_the_next_viewer(ros, start_bridge):
    bridge = start_bridge(max_viewers=2, **{'streams.camera.topic': '/t3/image'})

    async def scenario():
        async with websockets.connect(f'{bridge.ws}/video/camera'), \
                websockets.connect(f'{bridge.ws}/video/camera'):
            return await close_of(f'{bridge.ws}/video/camera')

    code, reason = asyncio.run(scenario())
    assert code == 4503 and 'viewer limit reached (2)' in reason


def test_sending_on_a_video_socket_closes_it_cleanly(ros, start_bridge):
    bridge = start_bridge()
    code, reason = asyncio.run(close_of(f'{bridge.ws}/video/camera', send='hello'))
    assert code == 1003 and 'receive-only' in reason


def test_bridge_status_counts_match_what_clients_saw(ros, start_bridge):
    bridge = start_bridge(status_period=0.2, **{'streams.camera.topic': '/t4/image'})
    statuses = ros.collect(BridgeStatus, '/bridge_node/status')
    with FramePublisher(ros.node, '/t4/image'):
        frames_a = asyncio.run(watch(f'{bridge.ws}/video/camera', 30))
        frames_b = asyncio.run(watch(f'{bridge.ws}/video/camera?width=320', 20))
        wait_for(lambda: statuses and statuses[-1].streams[0].viewers == 0, 5, 'viewers gone')
        first_status = len(statuses)
        wait_for(lambda: len(statuses) > first_status + 1, 5, 'a status after the viewers left')
    stream = statuses[-1].streams[0]
    assert stream.name == 'camera' and stream.topic == '/t4/image'
    # A viewer that closes after its last frame may have a frame or two already on the way (sent
    # by the bridge, in the socket buffers, never read).
    read = len(frames_a) + len(frames_b)
    assert read <= stream.frames_sent <= read + 4, (stream.frames_sent, read)
    assert stream.bytes_per_second >= 0 and stream.frames_in >= 50
    assert stream.frames_encoded >= read
    assert stream.frames_skipped + stream.frames_encoded >= stream.frames_in - 2
    assert {s.streams[0].viewers for s in statuses} >= {0, 1}


def test_subscribes_only_while_watched_and_unsubscribes_after_the_delay(ros, start_bridge):
    topic = '/t5/image'
    bridge = start_bridge(unsubscribe_delay=0.5, **{'streams.camera.topic': topic})
    with FramePublisher(ros.node, topic):
        assert ros.node.count_subscribers(topic) == 0

        async def one_frame_then_check():
            async with websockets.connect(f'{bridge.ws}/video/camera') as ws:
                await ws.recv()
                return ros.node.count_subscribers(topic)

        assert asyncio.run(one_frame_then_check()) == 1
        wait_for(lambda: ros.node.count_subscribers(topic) == 0, 5,
                 'the bridge to unsubscribe after the last viewer left')


def test_a_topic_that_appears_later_can_be_watched_by_name(ros, start_bridge):
    bridge = start_bridge()
    topic = '/late/depth'

    def depth(index):
        picture = np.full((120, 160), 1000 + index, np.uint16)
        picture[:, :40] = 0  # invalid pixels
        return picture

    with FramePublisher(ros.node, topic, encoding='16UC1', make=depth):
        import json
        import urllib.request

        def listed():
            with urllib.request.urlopen(f'{bridge.http}/api/streams', timeout=5) as response:
                document = json.load(response)
            return any(t['topic'] == topic for t in document['topics'])
        wait_for(listed, 10, f'{topic} to be listed in /api/streams')
        frames = asyncio.run(watch(f'{bridge.ws}/video/%2Flate%2Fdepth', 3))
    header, jpeg, _ = frames[-1]
    assert header.flags & FLAG_COLORMAPPED and (header.width, header.height) == (160, 120)
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture[60, 10].max() < 30  # invalid (0) pixels drawn black, distinct from the map


def test_unsupported_encoding_is_named_in_a_warning_and_the_bridge_keeps_serving(
        ros, start_bridge):
    bridge = start_bridge(**{'streams.camera.topic': '/t6/image'})
    with FramePublisher(ros.node, '/t6/image', encoding='nv21',
                        make=lambda i: np.zeros((48, 64, 3), np.uint8)):
        async def try_watch():
            async with websockets.connect(f'{bridge.ws}/video/camera') as ws:
                bridge.process.wait_output("unsupported image encoding 'nv21'")
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await ws.recv()
        asyncio.run(try_watch())
    assert bridge.process.output().count("'nv21'") == 1, 'the warning must be rate-limited'
    assert bridge.process.proc.poll() is None
