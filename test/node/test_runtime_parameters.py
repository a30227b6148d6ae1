"""A set_parameters_atomically call on a live bridge_node: all of it or none of it.

``ros2 param set``/``load`` (test_ros2_cli.py) send one parameter per result; a node's
SetParametersAtomically service hands bridge_node the whole list at once, and one bad value
must leave every other value of the call unchanged.
"""

from conftest import wait_for
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient


def call(future, what):
    wait_for(future.done, 15, what)
    return future.result()


def value_of(client, name):
    reply = call(client.get_parameters([name]), f'get {name}')
    value = reply.values[0]
    return value.double_value if value.type == ParameterType.PARAMETER_DOUBLE \
        else value.integer_value


def test_an_atomic_change_is_applied_whole_or_refused_whole(ros, start_bridge):
    start_bridge()
    client = AsyncParameterClient(ros.node, '/bridge_node')
    assert client.wait_for_services(timeout_sec=15)
    refused = call(client.set_parameters_atomically([
        Parameter('max_linear', Parameter.Type.DOUBLE, 0.25),
        Parameter('streams.camera.depth_min', Parameter.Type.DOUBLE, 9.0)]), 'a refused set')
    assert not refused.result.successful and 'depth_min' in refused.result.reason
    assert value_of(client, 'max_linear') == 0.5   # untouched: none of the call applied
    taken = call(client.set_parameters_atomically([
        Parameter('max_linear', Parameter.Type.DOUBLE, 0.25),
        Parameter('default_quality', Parameter.Type.INTEGER, 40)]), 'an accepted set')
    assert taken.result.successful, taken.result.reason
    assert (value_of(client, 'max_linear'), value_of(client, 'default_quality')) == (0.25, 40)


def test_a_compressed_video_stream_keeps_its_message_type_after_a_change(ros, start_bridge,
                                                                         foxglove_env):
    """Checking a change builds every stream's settings; that must not retype a stream."""
    from video_bridge_msgs.msg import BridgeStatus
    video = 'foxglove_msgs/msg/CompressedVideo'
    start_bridge(env=foxglove_env, status_period=0.2, subscribe_on_demand=False, **{
        'streams.camera.type': 'compressed_video', 'streams.camera.topic': '/rt/video'})
    statuses = ros.collect(BridgeStatus, '/bridge_node/status')
    wait_for(lambda: statuses, 15, 'a status')
    assert [stream.type for stream in statuses[-1].streams] == [video]
    client = AsyncParameterClient(ros.node, '/bridge_node')
    assert client.wait_for_services(timeout_sec=15)
    taken = call(client.set_parameters_atomically([
        Parameter('max_linear', Parameter.Type.DOUBLE, 0.25)]), 'a change')
    assert taken.result.successful, taken.result.reason
    seen = len(statuses)
    wait_for(lambda: len(statuses) >= seen + 2, 15, 'a status after the change')
    assert [stream.type for stream in statuses[-1].streams] == [video]
