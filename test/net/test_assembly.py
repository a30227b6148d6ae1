"""The whole bridge in-process from its ROS-free assembly, with a recording object for ROS.

:class:`video_bridge.assembly.Bridge` builds hub, access, teleop, control, server, WebRTC and
the SFU publisher from a config and one object of ROS callbacks. Here that object records what
the bridge asks of ROS (a velocity, the e-stop lock, subscribe, unsubscribe) instead of
publishing it, and the clients are aiohttp's own, over a real socket on 127.0.0.1. What
bridge_node adds on top (parameters, publishers, QoS) is covered by the live-node tests.
"""

import asyncio
import json
import logging
import os
import subprocess
import sys
import time

import aiohttp
from conftest import PACKAGE_SRC, REPO
from support.pictures import raw
from support.ws_client import receive_json
from video_bridge.assembly import (Bridge, BridgeConfig, COMPRESSED_VIDEO_TYPE, IMAGE_TYPE,
                                   StreamConfig)
from video_bridge.core import protocol
from video_bridge.core.teleop import TeleopConfig, TeleopCore

TOKEN = 'assembly-token'
WEB_ROOT = os.path.join(REPO, 'web')


class RecordingRos:
    """The ROS callbacks as lists: what the bridge asked of ROS, in order."""

    def __init__(self, topics=()):
        self.log = logging.getLogger('test_assembly')
        self.velocities = []        # (time.monotonic(), protocol.Velocity)
        self.estops = []            # the e-stop lock states latched
        self.subscriptions = []     # ('subscribe', stream, message type) / ('unsubscribe', ...)
        self.topics = list(topics)
        self.flushed = 0
        self.bridge = None
        self.feed = True            # publish a picture into a stream when it is subscribed
        self._changed = asyncio.Event()

    def _record(self):
        self._changed.set()

    def publish_velocity(self, velocity):
        self.velocities.append((time.monotonic(), velocity))
        self._record()

    def publish_estop(self, engaged):
        self.estops.append(engaged)
        self._record()

    def subscribe(self, stream, message_type):
        self.subscriptions.append(('subscribe', stream.name, message_type))
        if self.feed:
            stream.publish(raw(0))   # as a camera's first frame after the subscription
        self._record()

    def unsubscribe(self, stream):
        self.subscriptions.append(('unsubscribe', stream.name, None))
        self._record()

    def request_reconcile(self):
        # The node triggers a guard condition; here the loop runs it, just as soon.
        asyncio.get_running_loop().call_soon(self.bridge.reconcile)

    def image_topics(self):
        return self.topics

    def flush_velocity(self, timeout):
        self.flushed += 1

    async def until(self, predicate, what, timeout=5.0):
        """Wait until ``predicate()`` holds, woken by each recorded call (no polling)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f'timed out after {timeout} s waiting for {what}') from None


def config(tmp_path, **values) -> BridgeConfig:
    """A loopback bridge on a free port with a token file, one raw stream and no WebRTC."""
    token_file = tmp_path / 'token'
    token_file.write_text(TOKEN + '\n')
    token_file.chmod(0o600)
    values.setdefault('streams', {'camera': StreamConfig(topic='/camera/image_raw')})
    values.setdefault('webrtc_enabled', False)
    return BridgeConfig(**{'host': '127.0.0.1', 'port': 0, 'web_root': WEB_ROOT,
                           'token_file': str(token_file), 'command_timeout': 0.3, **values})


def run(scenario, bridge_config, topics=()):
    """Build the bridge, start it, run ``scenario(bridge, ros, session, base)``; within 20 s."""
    async def main():
        ros = RecordingRos(topics)
        bridge = ros.bridge = Bridge(bridge_config, ros)
        await bridge.start()
        session = aiohttp.ClientSession()
        try:
            base = f'127.0.0.1:{bridge.server.port}'
            return await asyncio.wait_for(scenario(bridge, ros, session, base), 20)
        finally:
            await session.close()
            await bridge.stop()
    return asyncio.run(main())


async def first_frame(socket, timeout=5.0):
    """The first binary (video frame) message of a /video socket."""
    async with asyncio.timeout(timeout):
        while True:
            message = await socket.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                return message.data
            if message.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f'socket ended before a frame: {message}')


async def drive(socket, request_id, **velocity):
    await socket.send_str(json.dumps({'type': 'velocity', 'id': request_id, **velocity}))


def test_a_command_reaches_the_twist_callback_within_limits_and_the_deadman_stops_it(tmp_path):
    async def scenario(bridge, ros, session, base):
        async with session.ws_connect(f'ws://{base}/control?token={TOKEN}') as socket:
            await receive_json(socket, 'hello')
            await socket.send_str(json.dumps({'type': 'acquire', 'id': 1}))
            await receive_json(socket, 'ack')
            sent = time.monotonic()
            await drive(socket, 2, linear={'x': 9.0}, angular={'z': -9.0})
            await ros.until(lambda: any(v.linear_x for _, v in ros.velocities), 'the command')
            await ros.until(lambda: ros.velocities[-1][1].is_zero()
                            and ros.velocities[-1][0] > sent, 'the deadman stop')
            return sent, list(ros.velocities)
    sent, velocities = run(scenario, config(tmp_path, max_linear=0.5, max_angular=1.0))
    moving = [(t, v) for t, v in velocities if not v.is_zero()]
    assert (moving[0][1].linear_x, moving[0][1].angular_z) == (0.5, -1.0), 'clamped to limits'
    stop = next(t for t, v in velocities if t > moving[-1][0] and v.is_zero())
    assert 0.25 <= stop - sent <= 1.0, f'the deadman stopped it {stop - sent:.3f} s after'


def test_watching_subscribes_and_leaving_unsubscribes(tmp_path):
    async def scenario(bridge, ros, session, base):
        before = list(ros.subscriptions)
        async with session.ws_connect(f'ws://{base}/video/camera?token={TOKEN}') as socket:
            await ros.until(lambda: ros.subscriptions, 'the subscription')
            frame = await first_frame(socket)
            watching = set(bridge.subscribed)
        await ros.until(lambda: len(ros.subscriptions) == 2, 'the unsubscription')
        return before, frame, watching, list(ros.subscriptions), set(bridge.subscribed)
    before, frame, watching, calls, after = run(scenario,
                                                config(tmp_path, unsubscribe_delay=0.0))
    assert before == [], 'nobody watches at start: nothing subscribed (subscribe on demand)'
    assert calls == [('subscribe', 'camera', IMAGE_TYPE), ('unsubscribe', 'camera', None)]
    assert frame, 'the frame fed on subscription reached the viewer'
    assert watching == {'camera'} and after == set()


def test_a_viewer_leaving_keeps_the_subscription_for_unsubscribe_delay(tmp_path):
    async def scenario(bridge, ros, session, base):
        async with session.ws_connect(f'ws://{base}/video/camera?token={TOKEN}'):
            await ros.until(lambda: ros.subscriptions, 'the subscription')
        await ros.until(lambda: bridge.hub.viewer_count() == 0, 'the viewer gone')
        bridge.reconcile()   # what the node's timer does every 0.5 s
        return list(ros.subscriptions)
    calls = run(scenario, config(tmp_path, unsubscribe_delay=60.0))
    assert calls == [('subscribe', 'camera', IMAGE_TYPE)]


def test_without_subscribe_on_demand_every_stream_is_subscribed_from_the_start(tmp_path):
    async def scenario(bridge, ros, session, base):
        bridge.reconcile()   # what the node does once at start
        return list(ros.subscriptions)
    calls = run(scenario, config(tmp_path, subscribe_on_demand=False))
    assert calls == [('subscribe', 'camera', IMAGE_TYPE)]


def test_a_topic_stream_is_subscribed_with_the_type_the_graph_offers(tmp_path):
    topics = [{'topic': '/front/image_raw', 'type': IMAGE_TYPE, 'kind': 'raw'},
              {'topic': '/front/video', 'type': COMPRESSED_VIDEO_TYPE, 'kind': 'h264'}]

    async def scenario(bridge, ros, session, base):
        ros.feed = False
        async with session.get(f'http://{base}{protocol.STREAMS_PATH}?token={TOKEN}') as reply:
            listed = [entry['topic'] for entry in (await reply.json())['topics']]
        for topic in ('/front/image_raw', '/front/video'):
            quoted = protocol.quote_stream(topic)
            async with session.ws_connect(f'ws://{base}/video/{quoted}?token={TOKEN}'):
                await ros.until(lambda: any(call[1] == topic for call in ros.subscriptions),
                                f'the subscription of {topic}')
        return listed, list(ros.subscriptions)
    listed, calls = run(scenario, config(tmp_path, unsubscribe_delay=60.0), topics)
    assert listed == ['/front/image_raw', '/front/video']
    assert calls == [('subscribe', '/front/image_raw', IMAGE_TYPE),
                     ('subscribe', '/front/video', COMPRESSED_VIDEO_TYPE)]


def test_the_estop_reaches_the_lock_callback(tmp_path):
    async def scenario(bridge, ros, session, base):
        started = list(ros.estops)
        async with session.ws_connect(f'ws://{base}/control') as socket:   # no token
            await receive_json(socket, 'hello')
            await socket.send_str(json.dumps({'type': 'estop', 'id': 1, 'engage': True}))
            await receive_json(socket, 'ack')
            await socket.send_str(json.dumps({'type': 'estop', 'id': 2, 'engage': True}))
            await receive_json(socket, 'ack')
            engaged = list(ros.estops)
        state = bridge.control.set_estop(False, 'ROS service')
        return started, engaged, state.estop, list(ros.estops)
    started, engaged, estop, estops = run(scenario, config(tmp_path, view_requires_token=False))
    assert started == [False], 'latched released at start'
    assert engaged == [False, True], 'anyone may engage; engaging twice latches once'
    assert estop is False and estops == [False, True, False]


def test_the_core_says_when_the_estop_lock_changes():
    core = TeleopCore(TeleopConfig())
    assert core.set_estop(True, 'test', 0.0).estop is True
    assert core.set_estop(True, 'test', 0.1).estop is None, 'no change: nothing to latch'
    assert core.set_estop(False, 'test', 0.2).estop is False
    assert core.set_estop(False, 'test', 0.3).estop is None


def test_a_run_time_change_takes_new_limits_and_keeps_each_streams_message_type(tmp_path):
    streams = {'camera': StreamConfig(topic='/camera/image_raw'),
               'video': StreamConfig(topic='/camera/video', stream_type='compressed_video')}
    start = config(tmp_path, streams=streams, subscribe_on_demand=False)

    async def scenario(bridge, ros, session, base):
        ros.feed = False
        changed = BridgeConfig.from_values(start, max_linear=0.2, default_quality=50)
        bridge.apply_teleop_limits(bridge.reconfigure(changed))
        bridge.reconcile()
        async with session.ws_connect(f'ws://{base}/control?token={TOKEN}') as socket:
            await receive_json(socket, 'hello')
            await socket.send_str(json.dumps({'type': 'acquire', 'id': 1}))
            await receive_json(socket, 'ack')
            await drive(socket, 2, linear={'x': 1.0})
            reply = await receive_json(socket, 'ack')
        report = bridge.report(time.monotonic(), bridge.control.status(), {})
        return reply, list(ros.subscriptions), bridge.hub.streams()[0].settings, report
    reply, calls, camera, report = run(scenario, start)
    assert reply['applied']['linear']['x'] == 0.2 and reply['clamped']
    assert camera.quality == 50
    assert calls == [('subscribe', 'camera', IMAGE_TYPE),
                     ('subscribe', 'video', COMPRESSED_VIDEO_TYPE)]
    assert [(s.name, s.message_type, s.subscribed) for s in report.streams] == [
        ('camera', IMAGE_TYPE, True), ('video', COMPRESSED_VIDEO_TYPE, True)]
    assert [d.name for d in report.diagnostics] == [
        'stream camera', 'stream video', 'teleop', 'parameters']


def test_the_whole_bridge_builds_with_webrtc_and_the_sfu_publisher(tmp_path):
    async def scenario(bridge, ros, session, base):
        async with session.get(f'http://{base}{protocol.STREAMS_PATH}?token={TOKEN}') as reply:
            document = await reply.json()
        return bridge.control.signalling, bridge.control.sfu, document
    bridge_config = config(tmp_path, webrtc_enabled=True, h264_encoder='libx264',
                           sfu_janus_url='ws://127.0.0.1:9/janus', sfu_room=1)
    signalling, sfu, document = run(scenario, bridge_config)
    assert signalling is not None and sfu is not None
    assert 'webrtc' in document


def test_the_assembly_core_and_net_import_no_ros():
    """The layers below ros/ run without rclpy: importing them loads no ROS module."""
    probe = (
        'import importlib, pkgutil, sys\n'
        'import video_bridge.assembly, video_bridge.core, video_bridge.net\n'
        'for package in (video_bridge.core, video_bridge.net):\n'
        '    for module in pkgutil.iter_modules(package.__path__):\n'
        '        importlib.import_module(package.__name__ + "." + module.name)\n'
        'ros = ("rclpy", "rcl_interfaces", "rosidl_runtime_py", "ament_index_python",\n'
        '       "video_bridge.ros", "video_bridge_msgs")\n'
        'print(sorted(m for m in sys.modules if m.startswith(ros) or m.endswith("_msgs")))\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [PACKAGE_SRC] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]', f'ROS modules imported: {result.stdout}'


def test_the_config_defaults_are_the_parameters_defaults():
    from video_bridge.ros.parameters import BRIDGE_PARAMETERS
    node_only = {'cmd_vel_stamped', 'cmd_vel_frame_id', 'image_reliable', 'status_period',
                 'stream_names', 'video_thread_nice'}
    resolved_by_the_node = {'web_root', 'commands_file'}
    defaults = BridgeConfig()
    fields = set(vars(defaults)) - {'streams'}
    assert fields == set(BRIDGE_PARAMETERS) - node_only
    for name in fields - resolved_by_the_node:
        default = BRIDGE_PARAMETERS[name][0]
        if isinstance(default, list):
            default = tuple(value for value in default if value)
        assert getattr(defaults, name) == default, name
