"""The package as a ROS user meets it: the real ``ros2`` command line against real nodes.

``ros2 launch`` of both launch files, ``--show-args``, a user params file, a remap and a
namespace from a user's own launch file, ``ros2 param describe`` of every parameter,
``ros2 topic echo --once``, ``ros2 service call``, ``ros2 topic info -v``. CI installs the CLI
(../shared/ros2-cli/install .venv); where ``ros2`` is missing every test here skips, saying so.
Every ``ros2`` call but launch runs with ``--no-daemon``, so no daemon outlives a test.
"""

import asyncio
import json
import math
import re
import shutil
import subprocess
import textwrap
import urllib.request

from conftest import (ChildProcess, FramePublisher, free_port, require_isolated_ros,
                      wait_for)
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from video_bridge.core.protocol import unpack_frame
from video_bridge.ros import camera_node
from video_bridge.ros.parameters import BRIDGE_PARAMETERS, RUNTIME_PARAMETERS
import websockets

try:
    import ros2cli  # noqa: F401  (only to know whether the CLI is installed)
    ROS2 = shutil.which('ros2')
except ImportError:
    ROS2 = None

pytestmark = pytest.mark.skipif(
    ROS2 is None, reason='the ros2 command line is not installed (CI installs it with '
    '../shared/ros2-cli/install .venv)')
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def ros2(*args, timeout=60, check=True):
    """Run one ``ros2`` command to completion and return its stdout."""
    done = subprocess.run([ROS2, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f'ros2 {" ".join(args)} exited {done.returncode}:\n{done.stdout}\n'
                    f'{done.stderr}')
    return done.stdout


@pytest.fixture
def launch():
    require_isolated_ros()
    started = []

    def start(*args):
        """``ros2 launch`` as its own process group, stopped with SIGINT like Ctrl-C."""
        started.append(ChildProcess([ROS2, 'launch', *args], 'ros2-launch', own_group=True))
        return started[-1]
    yield start
    for item in started:
        item.stop(timeout=20)


async def frames(url, count=3, timeout=20):
    async with websockets.connect(url) as ws:
        async with asyncio.timeout(timeout):
            return [unpack_frame(await ws.recv())[0] for _ in range(count)]


async def drive(url, linear_x, seen):
    """Take the driver lock and command ``linear_x`` until ``seen()``; return the socket."""
    ws = await websockets.connect(url)
    async with asyncio.timeout(15):
        await ws.recv()  # hello
        await ws.send(json.dumps({'type': 'acquire', 'id': 1}))
        while not seen():  # repeat: the first command may beat cmd_vel discovery
            await ws.send(json.dumps({'type': 'velocity', 'linear': {'x': linear_x}, 'id': 2}))
            await asyncio.sleep(0.1)  # command pacing, not synchronisation
    return ws


def streams(port):
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/streams', timeout=5) as reply:
        return json.load(reply)


def test_show_args_lists_every_launch_argument():
    from video_bridge.ros.lineup import LAUNCH_ARGUMENTS
    for name in ('car', 'bridge'):
        shown = ros2('launch', 'video_bridge', f'{name}.launch.py', '--show-args')
        for argument, (default, description) in LAUNCH_ARGUMENTS.items():
            assert f"'{argument}':" in shown, argument
            assert ' '.join(description.split()[:4]) in ' '.join(shown.split()), argument


def test_car_launch_serves_frames_drives_and_ctrl_c_publishes_zero(ros, launch):
    port = free_port()
    twists = ros.collect(Twist, '/cmd_vel', RELIABLE)
    car = launch('video_bridge', 'car.launch.py', f'port:={port}', 'host:=127.0.0.1')
    car.wait_port(port)
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=5) as page:
        assert page.status == 200 and b'<html' in page.read().lower()
    assert [s['name'] for s in streams(port)['streams']] == ['camera']
    headers = asyncio.run(frames(f'ws://127.0.0.1:{port}/video/camera'))
    assert (headers[-1].width, headers[-1].height) == (640, 480)

    async def drive_then_ctrl_c():
        ws = await drive(f'ws://127.0.0.1:{port}/control', 0.2,
                         lambda: any(math.isclose(t.linear.x, 0.2) for t in twists))
        moving = len(twists)
        code = await asyncio.to_thread(car.stop)
        await ws.close()
        return moving, code
    moving, code = asyncio.run(drive_then_ctrl_c())
    assert code == 0, car.output()[-2000:]
    wait_for(lambda: any(t.linear.x == 0.0 for t in twists[moving:]), 5,
             'zero on cmd_vel after Ctrl-C')


def test_bridge_launch_takes_the_port_from_a_user_params_file(ros, launch, tmp_path):
    """Only what the user's file names changes: its port, and the stream topic stays."""
    port = free_port()
    mine = tmp_path / 'my_bridge.yaml'
    mine.write_text(f'/**:\n  ros__parameters:\n    port: {port}\n    host: 127.0.0.1\n'
                    '    token_file: ""\n    address: 10.0.0.1\n')
    bridge = launch('video_bridge', 'bridge.launch.py', f'bridge_params:={mine}')
    bridge.wait_port(port)
    assert streams(port)['streams'][0]['topic'] in ('camera/image_raw', '/camera/image_raw')
    with FramePublisher(ros.node, '/camera/image_raw', width=320, height=240):
        headers = asyncio.run(frames(f'ws://127.0.0.1:{port}/video/camera'))
    assert (headers[-1].width, headers[-1].height) == (320, 240)
    wait_for(lambda: "parameter 'address' is not a bridge_node parameter" in bridge.output(),
             10, 'the unknown key to be named')
    got = ros2('param', 'get', '--no-daemon', '--spin-time', '3', '--timeout', '10',
               '/bridge_node', 'streams.camera.topic')
    assert 'camera/image_raw' in got


def describe(node, names):
    """``{name: description text}`` from one ``ros2 param describe`` of many names."""
    text = ros2('param', 'describe', '--no-daemon', '--spin-time', '3', '--timeout', '15',
                node, *names)
    blocks = re.split(r'^Parameter name: ', text, flags=re.M)[1:]
    return {block.split('\n', 1)[0].strip(): block for block in blocks}


def assert_described(described, table, runtime=frozenset()):
    for name, (default, description, limits, *_) in table.items():
        block = described[name]
        assert ' '.join(description.split()[:5]) in ' '.join(block.split()), name
        if name in runtime:
            assert 'Read only: true' not in block and 'at run time' in block, name
        else:
            assert 'Read only: true' in block, name
        if isinstance(limits, tuple) and isinstance(limits[0], (int, float)) \
                and not isinstance(default, str):
            assert re.search(r'Min value: ' + re.escape(str(limits[0])), block), name
            assert re.search(r'Max value: ' + re.escape(str(limits[1])), block), name


def test_every_parameter_is_described_with_its_range_and_the_status_and_estop_work(
        ros, launch):
    port = free_port()
    car = launch('video_bridge', 'car.launch.py', f'port:={port}', 'host:=127.0.0.1')
    car.wait_port(port)
    assert_described(describe('/bridge_node', list(BRIDGE_PARAMETERS)), BRIDGE_PARAMETERS,
                     RUNTIME_PARAMETERS)
    assert_described(describe('/camera/camera_node', list(camera_node.PARAMETERS)),
                     camera_node.PARAMETERS)
    status = ros2('topic', 'echo', '--once', '--no-daemon', '--spin-time', '3',
                  '/bridge_node/status', 'video_bridge_msgs/msg/BridgeStatus', timeout=60)
    assert f'url: http://127.0.0.1:{port}' in status and 'name: camera' in status
    assert 'frames_malformed: 0' in status
    reply = ros2('service', 'call', '/bridge_node/set_emergency_stop',
                 'video_bridge_msgs/srv/SetEmergencyStop', '{engage: true}')
    assert 'success=True' in reply and 'emergency stop engaged' in reply
    latched = ros2('topic', 'echo', '--once', '--no-daemon', '--spin-time', '3',
                   '/bridge_node/emergency_stop', 'std_msgs/msg/Bool', '--qos-durability',
                   'transient_local', '--qos-reliability', 'reliable')
    assert 'data: true' in latched


def test_topic_info_shows_a_reliable_camera_and_a_best_effort_bridge(ros, launch):
    port = free_port()
    car = launch('video_bridge', 'car.launch.py', f'port:={port}', 'host:=127.0.0.1')
    car.wait_port(port)

    async def while_watching():
        async with websockets.connect(f'ws://127.0.0.1:{port}/video/camera') as ws:
            async with asyncio.timeout(20):
                await ws.recv()

            def both_listed():
                text = ros2('topic', 'info', '-v', '--no-daemon', '--spin-time', '3',
                            '/camera/image_raw', check=False)  # 'Unknown' until discovered
                # either endpoint can be discovered first, and listed before its node's name
                known = ('Publisher count: 1' in text and 'Subscription count: 1' in text
                         and '_NODE_NAME_UNKNOWN_' not in text)
                return text if known else None
            return await asyncio.to_thread(wait_for, both_listed, 60,
                                           'the camera publisher and the bridge subscriber')
    info = asyncio.run(while_watching())
    publisher, subscriber = info.split('Subscription count')
    assert 'Node name: camera_node' in publisher
    assert 'Reliability: RELIABLE' in publisher and 'Durability: VOLATILE' in publisher
    assert 'Node name: bridge_node' in subscriber
    assert 'Reliability: BEST_EFFORT' in subscriber


def test_a_users_launch_file_remaps_cmd_vel_and_pushes_a_namespace(ros, launch, tmp_path):
    port = free_port()
    user_launch = tmp_path / 'robot.launch.py'
    user_launch.write_text(textwrap.dedent(f"""
        import os
        from ament_index_python.packages import get_package_share_directory
        from launch import LaunchDescription
        from launch.actions import GroupAction, IncludeLaunchDescription
        from launch.launch_description_sources import PythonLaunchDescriptionSource
        from launch_ros.actions import PushRosNamespace, SetRemap


        def generate_launch_description():
            car = os.path.join(get_package_share_directory('video_bridge'), 'launch',
                               'car.launch.py')
            return LaunchDescription([GroupAction([
                PushRosNamespace('rover'),
                SetRemap(src='/rover/cmd_vel', dst='/rover/cmd_vel_web'),
                IncludeLaunchDescription(PythonLaunchDescriptionSource(car), launch_arguments={{
                    'port': '{port}', 'host': '127.0.0.1'}}.items()),
            ])])
    """))
    twists = ros.collect(Twist, '/rover/cmd_vel_web', RELIABLE)
    robot = launch(str(user_launch))
    robot.wait_port(port)

    async def watch_and_count():
        async with websockets.connect(f'ws://127.0.0.1:{port}/video/camera') as ws:
            async with asyncio.timeout(20):
                await ws.recv()
            await asyncio.to_thread(  # the bridge reads the pushed namespace
                wait_for, lambda: ros.node.count_subscribers('/rover/camera/image_raw') == 1,
                10, 'the bridge to subscribe /rover/camera/image_raw')
    asyncio.run(watch_and_count())

    async def drive_a_bit():
        ws = await drive(f'ws://127.0.0.1:{port}/control', 0.1,
                         lambda: any(math.isclose(t.linear.x, 0.1) for t in twists))
        await ws.close()
    asyncio.run(drive_a_bit())
    assert ros.node.count_publishers('/cmd_vel') == 0
    assert ros.node.count_publishers('/rover/cmd_vel') == 0


def ros2_param(*args, timeout=60):
    """One ``ros2 param`` verb against /bridge_node: its stdout and stderr together."""
    verb, *rest = args
    done = subprocess.run([ROS2, 'param', verb, '--no-daemon', '--timeout', '10',
                           '/bridge_node', *rest], capture_output=True, text=True,
                          timeout=timeout)
    return done.stdout + done.stderr


def diagnostic(arrays, name):
    """The newest DiagnosticStatus called ``name`` (or None)."""
    for array in reversed(list(arrays)):
        for status in array.status:
            if status.name == name:
                return status
    return None


def test_param_set_and_load_change_a_running_bridge_within_its_ranges(
        ros, start_bridge, tmp_path):
    """max_linear shows on /cmd_vel at once; out of range, inconsistent and read-only refused."""
    twists = ros.collect(Twist, '/cmd_vel', RELIABLE)
    arrays = ros.collect(DiagnosticArray, '/diagnostics')
    bridge = start_bridge(status_period=0.2)

    async def drive_while_setting():
        ws = await drive(f'{bridge.ws}/control', 1.0,
                         lambda: any(math.isclose(t.linear.x, 0.5) for t in twists))

        async def keep_driving():  # within the deadman while the CLI runs
            while True:
                await ws.send(json.dumps({'type': 'velocity', 'linear': {'x': 1.0}}))
                await asyncio.sleep(0.1)  # command pacing, not synchronisation
        driver = asyncio.create_task(keep_driving())
        try:
            said = await asyncio.to_thread(ros2_param, 'set', 'max_linear', '0.3')
            await asyncio.to_thread(wait_for, lambda: math.isclose(twists[-1].linear.x, 0.3),
                                    5, '0.3 on /cmd_vel')
            return said
        finally:
            driver.cancel()
            await ws.close()
    said = asyncio.run(drive_while_setting())
    assert 'Set parameter successful' in said, said
    after = next(i for i, t in enumerate(twists) if math.isclose(t.linear.x, 0.3))
    assert all(t.linear.x <= 0.3 + 1e-9 for t in twists[after:])
    assert 'Double value is: 0.3' in ros2('param', 'get', '--no-daemon', '--timeout', '10',
                                          '/bridge_node', 'max_linear')

    out_of_range = ros2_param('set', 'max_linear', '500.0')
    assert 'Setting parameter failed' in out_of_range and 'max_linear' in out_of_range
    too_low = ros2_param('set', 'webrtc_bitrate', '100000')
    assert 'Setting parameter failed' in too_low and 'below the encoders' in too_low, too_low
    read_only = ros2_param('set', 'port', '9000')
    assert 'Setting parameter failed' in read_only and 'read-only' in read_only, read_only
    described = describe('/bridge_node', ['port', 'max_linear'])
    assert 'a change needs a restart' in ' '.join(described['port'].split())
    assert 'Changeable at run time' in described['max_linear']

    def snapshot_size():
        with urllib.request.urlopen(f'{bridge.http}/snapshot/camera', timeout=10) as reply:
            return len(reply.read())
    mine = tmp_path / 'tune.yaml'
    mine.write_text('/**:\n  ros__parameters:\n    max_angular: 0.7\n'
                    '    default_quality: 10\n    streams.camera.depth_min: 9.0\n')
    with FramePublisher(ros.node, '/camera/image_raw', make=noise):
        before = snapshot_size()
        loaded = ros2_param('load', str(mine))
        after = snapshot_size()
    assert after < before * 0.7, (before, after)  # the new default quality, at once
    assert 'Set parameter max_angular successful' in loaded, loaded
    assert 'Set parameter default_quality successful' in loaded, loaded
    assert 'Set parameter streams.camera.depth_min failed' in loaded, loaded
    assert 'must exceed depth_min (9.0)' in loaded, loaded
    wait_for(lambda: 'default_quality 80 -> 10' in getattr(
        diagnostic(arrays, 'bridge_node: parameters'), 'message', ''), 10,
        'the last change in /diagnostics')
    values = {kv.key: kv.value for kv in diagnostic(arrays, 'bridge_node: parameters').values}
    assert values['max_linear'] == '0.3' and values['max_angular'] == '0.7'


def noise(index):
    """A frame JPEG cannot shrink much at quality 80 and can at 10."""
    import numpy as np
    return np.random.default_rng(index).integers(0, 256, (240, 320, 3), dtype=np.uint8)
