"""Driving through the bridge: real websocket clients, a real rclpy subscriber on cmd_vel."""

import asyncio
import json
import signal
import subprocess
import sys
import time

from conftest import CmdVelRecorder, wait_for
from geometry_msgs.msg import Twist, TwistStamped
import pytest
from video_bridge_msgs.msg import BridgeStatus
from video_bridge_msgs.srv import SetEmergencyStop
import websockets


class Client:
    """A control websocket with request/reply helpers."""

    def __init__(self, ws):
        self.ws = ws
        self.states = []
        self.hello = None
        self._next = 0

    @classmethod
    async def connect(cls, url, **kw):
        client = cls(await websockets.connect(url, **kw))
        client.hello = json.loads(await client.ws.recv())
        client.states.append(json.loads(await client.ws.recv()))
        return client

    async def request(self, **message):
        self._next += 1
        message['id'] = self._next
        await self.ws.send(json.dumps(message))
        async with asyncio.timeout(5):
            while True:
                reply = json.loads(await self.ws.recv())
                if reply['type'] == 'state':
                    self.states.append(reply)
                elif reply.get('id') == self._next:
                    return reply


@pytest.fixture
def recorder(ros):
    """Make cmd_vel recorders; their subscriptions go away after the test."""
    made = []

    def make(topic='/cmd_vel', msg_type=Twist):
        made.append(CmdVelRecorder(ros.node, topic, stamped=msg_type is TwistStamped))
        return made[-1]
    yield make
    for item in made:
        item.close()


def control_url(bridge, token=None):
    return f'{bridge.ws}/control' + (f'?token={token}' if token else '')


async def driver(bridge, cmd_vel):
    """Connect, take the driver lock and wait until cmd_vel is matched: ready to drive."""
    client = await Client.connect(control_url(bridge))
    assert (await client.request(type='acquire'))['type'] == 'ack'
    cmd_vel.wait_publisher()
    cmd_vel.wait_matched()
    return client


def test_text_command_maps_per_vocabulary_and_velocity_is_clamped(ros, start_bridge, recorder):
    bridge = start_bridge()
    cmd_vel = recorder()

    async def scenario():
        client = await driver(bridge, cmd_vel)
        assert 'forward' in client.hello['commands'] and client.hello['can_drive']
        reply = await client.request(type='command', name='forward_left', speed=0.5)
        assert reply['type'] == 'ack' and not reply['clamped']
        cmd_vel.wait_value(0.25, 0.25)  # config/teleop_commands.yaml: forward_left 0.5, 0.5
        reply = await client.request(type='velocity', linear={'x': 5.0}, angular={'z': -0.2})
        assert reply['clamped'] and reply['applied']['linear']['x'] == 0.5
        assert 'linear.x' in reply['message']
        cmd_vel.wait_value(0.5, -0.2)
        reply = await client.request(type='command', name='warp')
        assert reply['type'] == 'error' and reply['code'] == 'unknown_command'
        reply = await client.request(type='velocity', linear={'x': 'fast'})
        assert reply['type'] == 'error' and reply['code'] == 'bad_message'
        await client.ws.send('{"type": "velocity", "linear": {"x": NaN}}')
        assert json.loads(await client.ws.recv())['code'] == 'bad_number'
        await client.ws.close()
    asyncio.run(scenario())
    assert all(abs(sample.linear_x) <= 0.5 for sample in cmd_vel.messages)


def test_deadman_stops_after_silence_and_at_once_when_the_socket_drops(
        ros, start_bridge, recorder):
    bridge = start_bridge(command_timeout=0.5)
    cmd_vel = recorder()

    async def scenario():
        client = await driver(bridge, cmd_vel)
        # silence: the last command is followed by zero within timeout + 50 ms
        await client.request(type='velocity', linear={'x': 0.3})
        sent = time.monotonic()
        before = len(cmd_vel.messages)
        stopped = cmd_vel.wait_value(0.0, 0.0, after=before, timeout=3)
        assert 0.5 - 0.01 <= stopped - sent <= 0.5 + 0.05, stopped - sent
        # held commands are republished in between, so controllers with a timeout keep moving
        republished = [s.at for s in cmd_vel.messages[before:] if s.linear_x == 0.3]
        assert len(republished) >= 3
        # socket drop: zero within 50 ms of the close
        await client.request(type='velocity', linear={'x': 0.2})
        cmd_vel.wait_value(0.2, 0.0)
        count = len(cmd_vel.messages)
        closed = time.monotonic()
        client.ws.transport.abort()  # no close handshake: the browser vanished
        await asyncio.sleep(0)  # let the loop actually close the socket before we block
        stopped = cmd_vel.wait_value(0.0, 0.0, after=count, timeout=3)
        assert stopped - closed <= 0.05, stopped - closed
    asyncio.run(scenario())


def test_emergency_stop_latches_from_message_and_service(ros, start_bridge, recorder):
    bridge = start_bridge()
    cmd_vel = recorder()
    statuses = ros.collect(BridgeStatus, '/bridge_node/status')
    service = ros.node.create_client(SetEmergencyStop, '/bridge_node/set_emergency_stop')

    def call(engage):
        assert service.wait_for_service(timeout_sec=10)
        future = service.call_async(SetEmergencyStop.Request(engage=engage))
        wait_for(future.done, 5, 'e-stop service reply')
        return future.result()

    async def scenario():
        driving = await driver(bridge, cmd_vel)
        viewer = await Client.connect(control_url(bridge))
        await driving.request(type='velocity', linear={'x': 0.4})
        cmd_vel.wait_value(0.4, 0.0)
        # any control client may stop the car
        assert (await viewer.request(type='estop', engage=True))['type'] == 'ack'
        cmd_vel.wait_value(0.0, 0.0)
        reply = await driving.request(type='velocity', linear={'x': 0.4})
        assert reply['type'] == 'error' and reply['code'] == 'estop_engaged'
        wait_for(lambda: statuses and statuses[-1].teleop.estop_engaged, 5, 'status e-stop')
        await driving.request(type='estop', engage=False)
        assert (await driving.request(type='velocity', linear={'x': 0.1}))['type'] == 'ack'
        cmd_vel.wait_value(0.1, 0.0)
        # the ROS service latches too, and releases
        response = await asyncio.to_thread(call, True)
        assert response.success and 'engaged' in response.message
        cmd_vel.wait_value(0.0, 0.0, after=len(cmd_vel.messages) - 1)
        assert (await driving.request(type='command', name='forward'))['code'] == 'estop_engaged'
        assert (await asyncio.to_thread(call, False)).success
        assert (await driving.request(type='command', name='forward'))['type'] == 'ack'
        await driving.ws.close()
        await viewer.ws.close()
    asyncio.run(scenario())


def test_one_driver_at_a_time_and_status_names_it(ros, start_bridge):
    bridge = start_bridge(status_period=0.2)
    statuses = ros.collect(BridgeStatus, '/bridge_node/status')

    async def scenario():
        first = await Client.connect(control_url(bridge))
        second = await Client.connect(control_url(bridge))
        await first.request(type='acquire')
        reply = await second.request(type='acquire')
        assert reply['type'] == 'error' and reply['code'] == 'driver_busy'
        assert first.hello['client_id'] in reply['message']
        reply = await second.request(type='command', name='forward')
        assert reply['code'] == 'not_driver'
        wait_for(lambda: statuses and statuses[-1].teleop.driver_id == first.hello['client_id'],
                 5, 'status naming the driver')
        await first.ws.close()
        # released on disconnect: the second may now drive
        async with asyncio.timeout(5):
            while (await second.request(type='acquire'))['type'] != 'ack':
                pass
        await second.ws.close()
    asyncio.run(scenario())


def test_token_guards_driving_and_is_never_logged(ros, start_bridge):
    secret = 'correct-horse-battery'
    bridge = start_bridge(token=secret, view_requires_token=False)   # anonymous may watch

    async def scenario():
        anonymous = await Client.connect(control_url(bridge))
        assert anonymous.hello['token_required'] and not anonymous.hello['can_drive']
        reply = await anonymous.request(type='acquire')
        assert reply['code'] == 'unauthorized'
        with pytest.raises(websockets.ConnectionClosed) as closed:
            wrong = await Client.connect(control_url(bridge, 'guess'))
            await wrong.ws.recv()
        assert closed.value.rcvd.code == 4401 and closed.value.rcvd.reason == 'invalid token'
        allowed = await Client.connect(control_url(bridge, secret))
        assert (await allowed.request(type='acquire'))['type'] == 'ack'
        await allowed.ws.close()
        await anonymous.ws.close()
    asyncio.run(scenario())
    log = bridge.process.wait_output('invalid token')
    assert secret not in log and 'guess' not in log


def test_twist_stamped_when_configured(ros, start_bridge, recorder):
    bridge = start_bridge(cmd_vel_stamped=True, cmd_vel_frame_id='chassis')
    cmd_vel = recorder(msg_type=TwistStamped)

    async def scenario():
        client = await driver(bridge, cmd_vel)
        await client.request(type='command', name='left')
        cmd_vel.wait_value(0.0, 1.0)
        await client.ws.close()
    asyncio.run(scenario())
    stamped = [s.msg for s in cmd_vel.messages if s.angular_z == 1.0][0]
    assert stamped.header.frame_id == 'chassis' and stamped.header.stamp.sec > 0


def test_origin_allow_list_and_message_limits(ros, start_bridge):
    bridge = start_bridge(commands_per_second=5.0, command_burst=5)

    async def scenario():
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(control_url(bridge), origin='http://evil.example')
        assert refused.value.response.status_code == 403
        own = await Client.connect(control_url(bridge),
                                   origin=f'http://127.0.0.1:{bridge.port}')
        # an e-stop gets through even while the limiter refuses everything else
        flooded = await Client.connect(control_url(bridge))
        for _ in range(20):
            await flooded.ws.send('{"type": "release"}')
        reply = await flooded.request(type='estop', engage=True)
        assert reply['type'] == 'ack', reply
        await flooded.ws.close()
        # rate: a burst beyond the limit gets errors, then a persistent flood is disconnected
        codes = []
        try:
            for _ in range(200):
                await own.ws.send('{"type": "release"}')
            async with asyncio.timeout(10):
                while True:
                    codes.append(json.loads(await own.ws.recv()).get('code'))
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd.code == 4429
        assert 'rate_limited' in codes
        # size: a message over max_message_size closes with 1009
        big = await Client.connect(control_url(bridge))
        await big.ws.send(json.dumps({'type': 'time', 'pad': 'x' * 10000}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await big.ws.recv()
        assert closed.value.rcvd.code == 1009
    asyncio.run(scenario())


def test_shutdown_publishes_zero_before_exit(ros, start_bridge, recorder):
    bridge = start_bridge()
    cmd_vel = recorder()

    async def scenario():
        client = await driver(bridge, cmd_vel)
        await client.request(type='velocity', linear={'x': 0.3})
        cmd_vel.wait_value(0.3, 0.0)
        count = len(cmd_vel.messages)
        assert bridge.process.stop(signal.SIGTERM) == 0
        cmd_vel.wait_value(0.0, 0.0, after=count, timeout=3)
    asyncio.run(scenario())


def test_tls_serves_wss_on_the_same_port(ros, start_bridge, tmp_path):
    import ssl
    cert, key = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
                    '-keyout', str(key), '-out', str(cert)], check=True, capture_output=True)
    bridge = start_bridge(tls_cert=str(cert), tls_key=str(key))
    context = ssl.create_default_context(cafile=str(cert))

    async def scenario():
        client = await Client.connect(f'wss://127.0.0.1:{bridge.port}/control', ssl=context)
        assert client.hello['type'] == 'hello'
        await client.ws.close()
    asyncio.run(scenario())


FLOODER = """
import asyncio, json, os, sys
import websockets

# An attacker's CPU is its own machine's, not the robot's. Here it shares the test machine's
# two cores with the bridge, whose video runs video_thread_nice lower than its network loop.
os.nice(19)

async def main(url, seconds):
    codes, sent = [], 0
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        # max_queue=None: it keeps reading what the bridge sends, as a browser does
        ws = await websockets.connect(url, max_queue=None)
        try:
            while True:
                await ws.send('{"type": "time", "t0": 1}')
                sent += 1
                await asyncio.sleep(0)  # let replies and the close come in
        except websockets.ConnectionClosed as closed:
            codes.append(closed.rcvd.code if closed.rcvd else None)
    print(json.dumps({'codes': codes, 'sent': sent}))

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def test_a_flooding_control_client_disturbs_neither_video_nor_the_driver(
        ros, start_bridge, recorder):
    from conftest import FramePublisher
    from video_bridge.core.protocol import unpack_frame
    bridge = start_bridge(commands_per_second=20.0, command_burst=10,
                          **{'streams.camera.topic': '/c9/image'})
    cmd_vel = recorder()

    async def flood(seconds):
        """Flood, get disconnected, come back and flood again: another process, as in life."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, '-c', FLOODER, control_url(bridge), str(seconds),
            stdout=asyncio.subprocess.PIPE)
        output, _ = await process.communicate()
        result = json.loads(output)
        return result['codes'], result['sent']

    async def watch_video(seconds):
        seqs = []
        async with websockets.connect(f'{bridge.ws}/video/camera') as ws:
            async with asyncio.timeout(seconds + 5):
                started = asyncio.get_running_loop().time()
                while asyncio.get_running_loop().time() - started < seconds:
                    seqs.append(unpack_frame(await ws.recv())[0].seq)
        return seqs

    async def scenario():
        client = await driver(bridge, cmd_vel)
        video = asyncio.create_task(watch_video(2.0))
        flooding = asyncio.create_task(flood(2.0))
        replies = []
        while not flooding.done():  # the driver keeps driving through the flood
            replies.append(await client.request(type='velocity', linear={'x': 0.2}))
            await asyncio.sleep(0.1)  # a driver's heartbeat period, not synchronisation
        codes, sent = await flooding
        seqs = await video
        await client.ws.close()
        return codes, sent, replies, seqs

    with FramePublisher(ros.node, '/c9/image') as publisher:
        codes, sent, replies, seqs = asyncio.run(scenario())
        assert publisher.count > 0
    assert codes and set(codes) == {4429}, (codes, sent)  # flooded, and closed for it
    assert len(replies) >= 10 and all(reply['type'] == 'ack' for reply in replies)
    cmd_vel.wait_value(0.2, 0.0)
    span = seqs[-1] - seqs[0] + 1
    assert len(seqs) >= 0.9 * span and len(seqs) >= 40, (len(seqs), span)
