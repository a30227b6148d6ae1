"""What ROS tools see of the bridge: /diagnostics, the latched e-stop lock, malformed frames.

The judgement (levels and messages) is pure (core/health.py) and tested with a fake clock; the
live tests run a real bridge_node process, a real rclpy publisher and real websocket clients.
"""

import asyncio
import json

from conftest import FramePublisher, wait_for
from diagnostic_msgs.msg import DiagnosticArray
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Bool
from video_bridge.core import health
from video_bridge.core.image_codec import MALFORMED_KINDS
from video_bridge.core.protocol import Variant, Velocity
from video_bridge.core.streams import RAW, SourceImage, StreamHub, StreamSettings
from video_bridge.core.teleop import TeleopStatus
from video_bridge_msgs.msg import BridgeStatus
from video_bridge_msgs.srv import SetEmergencyStop
import websockets

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


# ---------------------------------------------------------------- pure: streams and health

def image(width=4, height=2, step=None, data=None, encoding='bgr8'):
    step = width * 3 if step is None else step
    data = bytes(max(step * height, 0)) if data is None else data
    return SourceImage(0, 0, data, encoding, width, height, step)


MALFORMED = {  # kind: an image with that defect
    'width': image(width=0),
    'height': image(height=0),
    'step': image(width=4, step=5),
    'data': image(width=60000, height=60000, data=bytes(100)),
    'encoding': image(encoding='nv21'),
}


def watched_stream():
    hub = StreamHub()
    stream = hub.add(StreamSettings(name='camera', topic='camera/image_raw', kind=RAW))
    viewer = stream.attach(Variant(0, 0, 80))
    return stream, viewer


@pytest.mark.parametrize('kind', sorted(MALFORMED))
def test_each_malformed_kind_is_counted_on_its_own_and_never_as_dropped(kind):
    stream, viewer = watched_stream()
    assert stream.publish(image()) == 1
    assert viewer.take() is not None
    for _ in range(3):
        with pytest.raises(ValueError):
            stream.publish(MALFORMED[kind])
    assert stream.publish(image()) == 1
    assert viewer.take() is not None
    counters = stream.counters()
    assert counters.malformed[kind] == 3
    assert counters.frames_malformed == 3
    assert counters.frames_dropped == 0  # the good frames around them were all delivered
    assert counters.frames_in == 5
    assert set(counters.malformed) == set(MALFORMED_KINDS)


def test_malformed_log_lines_are_once_per_kind_then_rate_limited():
    stream, _ = watched_stream()
    for _ in range(5):
        with pytest.raises(ValueError):
            stream.publish(MALFORMED['step'])
    assert stream.malformed_log_due('step', now=100.0) == 5  # first time: log, with the count
    assert stream.malformed_log_due('step', now=101.0) is None
    assert stream.malformed_log_due('data', now=101.0) == 0  # nothing of that kind yet
    with pytest.raises(ValueError):
        stream.publish(MALFORMED['step'])
    assert stream.malformed_log_due('step', now=120.0) is None  # within 30 s
    assert stream.malformed_log_due('step', now=131.0) == 1     # one more since the last line
    assert stream.malformed_log_due('step', now=200.0) is None  # none since: nothing to say


def counters_after(stream, frames):
    for frame in frames:
        try:
            stream.publish(frame)
        except ValueError:
            pass
    return stream.counters()


def test_health_of_a_stream_over_time():
    stream, viewer = watched_stream()
    monitor = health.StreamMonitor(stale_after=2.0)
    update = monitor.update
    first = update(10.0, 'camera', '/camera/image_raw', True, stream.counters())
    assert first.diagnostic.level == health.OK
    assert 'waiting for the first frame' in first.diagnostic.message
    waiting = update(12.5, 'camera', '/camera/image_raw', True, stream.counters())
    assert waiting.diagnostic.level == health.WARN
    assert waiting.diagnostic.message == \
        'no frames for 2.5 s since subscribing /camera/image_raw'
    flowing = update(13.5, 'camera', '/camera/image_raw', True,
                     counters_after(stream, [image()] * 30))
    viewer.take()
    assert flowing.diagnostic.level == health.OK
    assert flowing.input_fps == pytest.approx(30.0)
    assert flowing.diagnostic.message.startswith('30.0 fps in')
    stalled = update(16.0, 'camera', '/camera/image_raw', True, stream.counters())
    assert stalled.diagnostic.level == health.WARN
    assert stalled.diagnostic.message == 'no frames for 2.5 s on /camera/image_raw'
    broken = update(17.0, 'camera', '/camera/image_raw', True,
                    counters_after(stream, [MALFORMED['step']] * 4))
    assert broken.diagnostic.level == health.ERROR
    assert broken.diagnostic.message == \
        'frames on /camera/image_raw cannot be shown: 4 step too small'
    mixed = update(18.0, 'camera', '/camera/image_raw', True,
                   counters_after(stream, [MALFORMED['data'], image(), image()]))
    assert mixed.diagnostic.level == health.WARN and '1 data too short' in mixed.diagnostic.message
    idle = update(19.0, 'camera', '/camera/image_raw', False, stream.counters())
    assert idle.diagnostic.level == health.OK and idle.diagnostic.message.startswith('idle')
    values = dict(idle.diagnostic.values)
    assert values['frames malformed'] == '5' and values['viewers'] == '1'


def teleop(driver='', age=-1.0, estop=False, clients=0):
    return TeleopStatus(driver or None, clients, age, estop, Velocity())


@pytest.mark.parametrize('status, level, message', [
    (None, health.ERROR, 'network loop not answering: teleop state unknown'),
    (teleop(estop=True, clients=1), health.WARN,
     'emergency stop engaged: publishing zero velocity'),
    (teleop(clients=2), health.OK, 'no driver (2 clients connected)'),
    (teleop('c1', clients=1), health.OK, 'driver c1: no command yet'),
    (teleop('c1', 0.1, clients=1), health.OK, 'driver c1 driving'),
    (teleop('c1', 3.0, clients=1), health.OK, 'driver c1: idle 3.0 s, car stopped by the deadman'),
])
def test_health_of_teleop(status, level, message):
    diagnostic = health.teleop_diagnostic(status, command_timeout=0.5, prefix='bridge_node: ')
    assert (diagnostic.name, diagnostic.level, diagnostic.message) == \
        ('bridge_node: teleop', level, message)


def test_health_of_parameters_shows_values_and_the_last_run_time_change():
    values = {'max_linear': 0.3, 'allow_takeover': False}
    started = health.parameters_diagnostic(values, None, 5.0, 'bridge_node: ')
    assert (started.name, started.level, started.message) == \
        ('bridge_node: parameters', health.OK, 'run-time parameters as started')
    assert dict(started.values) == {'max_linear': '0.3', 'allow_takeover': 'false'}
    changed = health.parameters_diagnostic(values, (2.0, 'max_linear 0.5 -> 0.3'), 14.0)
    assert changed.message == 'changed at run time 12 s ago: max_linear 0.5 -> 0.3'
    assert dict(changed.values)['last change'] == 'max_linear 0.5 -> 0.3'


# ---------------------------------------------------------------- live

def by_name(arrays, name):
    """The newest DiagnosticStatus called ``name`` in the received arrays (or None)."""
    for array in reversed(list(arrays)):
        for status in array.status:
            if status.name == name:
                return status
    return None


def test_diagnostics_follow_the_stream_and_teleop(ros, start_bridge):
    bridge = start_bridge(status_period=0.2, **{'streams.camera.topic': '/d1/image'})
    arrays = ros.collect(DiagnosticArray, '/diagnostics')
    name = 'bridge_node: stream camera'
    wait_for(lambda: by_name(arrays, name), 10, 'a stream diagnostic')
    assert by_name(arrays, name).message.startswith('idle')
    assert by_name(arrays, 'bridge_node: teleop').message == 'no driver (0 clients connected)'

    async def watching(until):
        async with websockets.connect(f'{bridge.ws}/video/camera') as ws:
            async with asyncio.timeout(10):
                await ws.recv()
            await asyncio.to_thread(until)

    with FramePublisher(ros.node, '/d1/image', width=160, height=120):
        asyncio.run(watching(lambda: wait_for(
            lambda: (by_name(arrays, name).level == bytes([health.OK])
                     and 'fps in' in by_name(arrays, name).message), 10, 'an OK stream')))
    status = by_name(arrays, name)
    values = {kv.key: kv.value for kv in status.values}
    assert status.hardware_id == '/bridge_node'
    assert float(values['input fps']) > 5 and values['topic'] == '/d1/image'

    async def watch_without_frames():
        async with websockets.connect(f'{bridge.ws}/video/camera'):
            await asyncio.to_thread(lambda: wait_for(
                lambda: 'no frames for' in by_name(arrays, name).message, 10, 'a stale stream'))
    asyncio.run(watch_without_frames())
    assert by_name(arrays, name).level == bytes([health.WARN])


def malformed_frames(kind):
    """A FramePublisher ``make`` and field patch producing frames with one defect."""
    def patch(msg):
        if kind == 'width':
            msg.width = 0
        elif kind == 'height':
            msg.height = 0
        elif kind == 'step':
            msg.step = msg.width * 3 - 1
        elif kind == 'data':
            msg.width, msg.height, msg.step = 60000, 60000, 180000
            msg.data = bytes(100)
        elif kind == 'encoding':
            msg.encoding = 'nv21'
        return msg
    return patch


def test_each_malformed_kind_is_logged_once_and_counted_in_its_status_field(ros, start_bridge):
    topic = '/d2/image'
    bridge = start_bridge(status_period=0.2, **{'streams.camera.topic': topic})
    statuses = ros.collect(BridgeStatus, '/bridge_node/status')
    publisher = ros.node.create_publisher(Image, topic, 10)
    fields = {'width': 'frames_bad_width', 'height': 'frames_bad_height',
              'step': 'frames_bad_step', 'data': 'frames_short_data',
              'encoding': 'frames_unsupported_encoding'}
    texts = {'width': 'width must be positive', 'height': 'height must be positive',
             'step': 'step 47 is smaller than width 16', 'data': 'data has 100 bytes',
             'encoding': "unsupported image encoding 'nv21'"}

    def good():
        msg = Image(width=16, height=8, encoding='bgr8', step=48)
        msg.data = bytes(48 * 8)
        return msg

    async def next_frame(ws):
        """Publish good frames until one comes through (the first may beat discovery)."""
        async with asyncio.timeout(10):
            while True:
                publisher.publish(good())
                try:
                    async with asyncio.timeout(0.5):
                        return await ws.recv()
                except TimeoutError:
                    continue

    async def scenario():
        async with websockets.connect(f'{bridge.ws}/video/camera') as ws:
            await asyncio.to_thread(wait_for, lambda: publisher.get_subscription_count(), 10,
                                    'the bridge to subscribe')
            await next_frame(ws)
            for kind in sorted(fields):
                for _ in range(3):
                    publisher.publish(malformed_frames(kind)(good()))
                await asyncio.to_thread(bridge.process.wait_output, texts[kind])
            await next_frame(ws)

    asyncio.run(scenario())

    def counted():  # best effort depth 1: of each burst of 3, at least the last one arrives
        stream = statuses[-1].streams[0] if statuses else None
        return stream if stream and all(getattr(stream, name) >= 1
                                        for name in fields.values()) else None
    stream = wait_for(counted, 10, 'every malformed kind counted')
    assert stream.frames_malformed == sum(getattr(stream, name) for name in fields.values())
    assert stream.frames_malformed <= 15 and stream.frames_undecodable == 0
    assert stream.frames_dropped == 0
    output = bridge.process.output()
    for kind, text in texts.items():
        assert output.count(text) == 1, f'{kind}: logged {output.count(text)} times'
    ros.node.destroy_publisher(publisher)


def test_the_latched_estop_lock_follows_the_page_and_the_service(ros, start_bridge):
    bridge = start_bridge()
    locks = []
    ros.node.create_subscription(Bool, '/bridge_node/emergency_stop',
                                 lambda msg: locks.append(msg.data), LATCHED)
    wait_for(lambda: locks == [False], 10, 'the latched initial state (false)')
    client = ros.node.create_client(SetEmergencyStop, '/bridge_node/set_emergency_stop')
    wait_for(client.service_is_ready, 10, 'the e-stop service')

    async def page_engages():
        async with websockets.connect(f'{bridge.ws}/control') as ws:
            async with asyncio.timeout(5):
                await ws.recv()  # hello
            await ws.send(json.dumps({'type': 'estop', 'engage': True, 'id': 1}))
            await asyncio.to_thread(wait_for, lambda: locks[-1] is True, 5, 'lock true')
    asyncio.run(page_engages())
    future = client.call_async(SetEmergencyStop.Request(engage=False))
    wait_for(future.done, 5, 'the service reply')
    assert future.result().success
    wait_for(lambda: locks[-1] is False, 5, 'lock false after the service released it')
    late = []
    ros.node.create_subscription(Bool, '/bridge_node/emergency_stop',
                                 lambda msg: late.append(msg.data), LATCHED)
    wait_for(lambda: late == [False], 5, 'a late subscriber to get the latched state')
    future = client.call_async(SetEmergencyStop.Request(engage=True))
    wait_for(future.done, 5, 'the service reply')
    wait_for(lambda: locks[-1] is True and late[-1] is True, 5, 'lock true from the service')
    assert locks == [False, True, False, True]
