"""
Which nodes a launch starts, with which YAML files and overrides: one source of truth.

Layers, lowest first: the node's declared defaults (equal to the shipped YAML), the shipped
``config/*.yaml``, the user's params file (``bridge_params:=``/``camera_params:=``), then only
the launch arguments the user actually gave. An argument left empty changes nothing, so a
``port: 9011`` in the user's file is what the bridge listens on.

``launch/car.launch.py`` and ``launch/bridge.launch.py`` turn these specs into launch_ros Node
actions; :mod:`video_bridge.ros.runner` turns the same specs into processes where ``ros2 launch``
does not exist. Pure: no rclpy, no launch imports.
"""

from dataclasses import dataclass, field
import os
from typing import Dict, List, Tuple

PACKAGE = 'video_bridge'
FASTDDS_PROFILE = 'fastdds_large_shm.xml'

# launch argument: (default, description). Empty: not given, the params files decide.
LAUNCH_ARGUMENTS = {
    'camera_source': ('', 'Camera frames: pattern (moving test picture), device or file '
                      '(empty: the camera params, pattern in config/camera.yaml).'),
    'device': ('', 'V4L2 device path or index for camera_source device (empty: the camera '
               'params, /dev/video0 in config/camera.yaml).'),
    'video_file': ('', 'Video file for camera_source file.'),
    'host': ('', 'Address the bridge listens on (empty: the bridge params, 0.0.0.0 = every '
             'interface in config/bridge.yaml).'),
    'port': ('', 'Port of the page, video, MJPEG and control (empty: the bridge params, 8080 '
             'in config/bridge.yaml).'),
    'token_file': ('', 'File holding the control token (recommended beyond localhost).'),
    'camera_params': ('', 'Your camera parameters YAML, applied over config/camera.yaml.'),
    'bridge_params': ('', 'Your bridge parameters YAML, applied over config/bridge.yaml.'),
    'namespace': ('', 'Namespace of the whole lineup, e.g. robot1: /robot1/camera/image_raw, '
                  '/robot1/cmd_vel, /robot1/bridge_node.'),
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


def _given(values: Dict[str, str], names: Dict[str, str]) -> Dict[str, object]:
    """``{parameter: value}`` for the launch arguments (``{argument: parameter}``) given."""
    return {parameter: values[argument] for argument, parameter in names.items()
            if values[argument] != ''}


def _params_files(share: str, shipped: str, user: str) -> Tuple[str, ...]:
    """List the shipped YAML first, the user's file (if any) over it."""
    path = os.path.join(share, 'config', shipped)
    return (path, user) if user else (path,)


def _namespace(values: Dict[str, str], *inner: str) -> str:
    return '/'.join(part.strip('/') for part in (values['namespace'], *inner) if part.strip('/'))


def bridge_spec(share: str, arguments: Dict[str, str]) -> NodeSpec:
    """Describe the bridge node: reads camera/image_raw, publishes cmd_vel (both relative)."""
    values = _values(arguments)
    parameters = _given(values, {'host': 'host', 'port': 'port', 'token_file': 'token_file'})
    if 'port' in parameters:
        try:
            parameters['port'] = int(parameters['port'])
        except ValueError:
            raise ValueError(f'port must be a number, not {values["port"]!r}') from None
    return NodeSpec(
        executable='bridge_node', name='bridge_node', namespace=_namespace(values),
        params_files=_params_files(share, 'bridge.yaml', values['bridge_params']),
        parameters=parameters)


def camera_spec(share: str, arguments: Dict[str, str]) -> NodeSpec:
    """Describe the camera node: namespace camera (camera/image_raw, camera/camera_info)."""
    values = _values(arguments)
    return NodeSpec(
        executable='camera_node', name='camera_node', namespace=_namespace(values, 'camera'),
        params_files=_params_files(share, 'camera.yaml', values['camera_params']),
        parameters=_given(values, {'camera_source': 'source', 'device': 'device',
                                   'video_file': 'file'}))


def car_lineup(share: str, arguments: Dict[str, str]) -> List[NodeSpec]:
    """car.launch.py: camera + bridge."""
    return [camera_spec(share, arguments), bridge_spec(share, arguments)]


def bridge_lineup(share: str, arguments: Dict[str, str]) -> List[NodeSpec]:
    """bridge.launch.py: the bridge alone, for a robot that has its own camera driver."""
    return [bridge_spec(share, arguments)]


LINEUPS = {'car': car_lineup, 'bridge': bridge_lineup}


def parameter_value(spec: NodeSpec, name: str, default=None):
    """
    Return the value ``name`` will have when ``spec`` starts: override, else last params file.

    Reads the files the way rcl does for plain keys (any ``ros__parameters`` section whose key
    matches every node, ``/**``, or this node's name); for the runner's "is up" message.
    """
    import yaml  # only the runner needs it; keeps lineup importable in a bare interpreter
    if name in spec.parameters:
        return spec.parameters[name]
    value = default
    for path in spec.params_files:
        try:
            with open(path, encoding='utf-8') as handle:
                document = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError):
            continue
        for key, body in document.items():
            if key.rstrip('/').split('/')[-1] in ('**', spec.name) and isinstance(body, dict):
                value = (body.get('ros__parameters') or {}).get(name, value)
    return value


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
