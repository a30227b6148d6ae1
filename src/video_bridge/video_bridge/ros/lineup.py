"""
Which nodes a launch starts, with which YAML files and overrides: one source of truth.

``launch/car.launch.py`` and ``launch/bridge.launch.py`` turn these specs into launch_ros Node
actions; :mod:`video_bridge.ros.runner` turns the same specs into processes where ``ros2 launch``
does not exist. Pure: no rclpy, no launch imports.
"""

from dataclasses import dataclass, field
import os
from typing import Dict, List, Tuple

PACKAGE = 'video_bridge'
FASTDDS_PROFILE = 'fastdds_large_shm.xml'

# launch argument: (default, description)
LAUNCH_ARGUMENTS = {
    'camera_source': ('pattern', 'Camera frames: pattern (moving test picture), device or file.'),
    'device': ('/dev/video0', 'V4L2 device path or index when camera_source is device.'),
    'video_file': ('', 'Video file when camera_source is file.'),
    'host': ('0.0.0.0', 'Address the bridge listens on (0.0.0.0: every interface).'),
    'port': ('8080', 'Port of the page, video, MJPEG and control.'),
    'token_file': ('', 'File holding the control token (recommended beyond localhost).'),
    'camera_params': ('', 'Camera parameters YAML; empty: config/camera.yaml.'),
    'bridge_params': ('', 'Bridge parameters YAML; empty: config/bridge.yaml.'),
}


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: executable, name, namespace, YAML files, overrides, remappings."""

    executable: str
    name: str
    namespace: str = ''
    params_files: Tuple[str, ...] = ()
    parameters: Dict[str, object] = field(default_factory=dict)
    remappings: Tuple[Tuple[str, str], ...] = ()
    package: str = PACKAGE


def _values(arguments: Dict[str, str]) -> Dict[str, str]:
    unknown = set(arguments) - set(LAUNCH_ARGUMENTS)
    if unknown:
        raise ValueError(f'unknown launch arguments: {sorted(unknown)}; '
                         f'known: {sorted(LAUNCH_ARGUMENTS)}')
    values = {name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    values.update({k: str(v) for k, v in arguments.items()})
    return values


def bridge_spec(share: str, arguments: Dict[str, str]) -> NodeSpec:
    """Describe the bridge node: reads /camera/image_raw, publishes /cmd_vel."""
    values = _values(arguments)
    parameters = {'host': values['host'], 'port': int(values['port'])}
    if values['token_file']:
        parameters['token_file'] = values['token_file']
    return NodeSpec(
        executable='bridge_node', name='bridge_node',
        params_files=(values['bridge_params'] or os.path.join(share, 'config', 'bridge.yaml'),),
        parameters=parameters)


def camera_spec(share: str, arguments: Dict[str, str]) -> NodeSpec:
    """Describe the camera node: namespace /camera (/camera/image_raw, /camera/camera_info)."""
    values = _values(arguments)
    parameters = {'source': values['camera_source']}
    if values['camera_source'] == 'device':
        parameters['device'] = values['device']
    if values['camera_source'] == 'file':
        parameters['file'] = values['video_file']
    return NodeSpec(
        executable='camera_node', name='camera_node', namespace='camera',
        params_files=(values['camera_params'] or os.path.join(share, 'config', 'camera.yaml'),),
        parameters=parameters)


def car_lineup(share: str, arguments: Dict[str, str]) -> List[NodeSpec]:
    """car.launch.py: camera + bridge."""
    return [camera_spec(share, arguments), bridge_spec(share, arguments)]


def bridge_lineup(share: str, arguments: Dict[str, str]) -> List[NodeSpec]:
    """bridge.launch.py: the bridge alone, for a robot that has its own camera driver."""
    return [bridge_spec(share, arguments)]


LINEUPS = {'car': car_lineup, 'bridge': bridge_lineup}


def yaml_scalar(value) -> str:
    """Write a parameter value as rcl reads ``-p`` values (YAML): text stays text ('0', '::')."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def ros_arguments(spec: NodeSpec) -> List[str]:
    """Command-line ``--ros-args`` equivalent of a spec, as ``ros2 run`` would take them."""
    args = ['--ros-args', '-r', f'__node:={spec.name}']
    if spec.namespace:
        args += ['-r', f'__ns:=/{spec.namespace.strip("/")}']
    for path in spec.params_files:
        args += ['--params-file', path]
    for name, value in spec.parameters.items():
        args += ['-p', f'{name}:={yaml_scalar(value)}']
    for source, target in spec.remappings:
        args += ['-r', f'{source}:={target}']
    return args
