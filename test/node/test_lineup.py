"""Tests for video_bridge.ros.lineup, the launch files, the YAML files and what setup.py installs.

The launch files are also read with ``ast`` here (so these tests run without ``launch``); the
``--ros-args`` a lineup produces are handed to a real rclpy node. test_ros2_cli.py runs them
with the real ``ros2 launch``.
"""

import ast
import filecmp
import os

from conftest import ChildProcess, INSTALL_LIB, REPO, require_isolated_ros
import pytest
from video_bridge.ros import camera_node, lineup, runner
from video_bridge.ros.lineup import LAUNCH_ARGUMENTS, LINEUPS, NodeSpec, ros_arguments
from video_bridge.ros.parameters import (BRIDGE_PARAMETERS, RUNTIME_PARAMETERS,
                                         RUNTIME_STREAM_FIELDS, STREAM_PARAMETERS)
import yaml

PACKAGE_SRC = os.path.join(REPO, 'src', 'video_bridge')
INSTALL_SHARE = os.path.join(REPO, 'install', 'video_bridge', 'share', 'video_bridge')
SHARES = {'repo': REPO, 'installed': INSTALL_SHARE}
NODE_PARAMETERS = {'bridge_node': BRIDGE_PARAMETERS, 'camera_node': camera_node.PARAMETERS}
CUSTOM = {'camera_source': 'device', 'device': '/dev/video2', 'host': '127.0.0.1',
          'port': '9090', 'token_file': '/run/secrets/bridge_token',
          'camera_params': '/etc/robot/camera.yaml', 'bridge_params': '/etc/robot/bridge.yaml',
          'namespace': 'robot1'}
ARGUMENT_SETS = {'default': {}, 'custom': CUSTOM,
                 'file': {'camera_source': 'file', 'video_file': '/data/drive.mp4'}}
CASES = [(name, arguments) for name in sorted(LINEUPS) for arguments in sorted(ARGUMENT_SETS)]


def specs(name, arguments, share=REPO):
    return LINEUPS[name](share, ARGUMENT_SETS[arguments])


def all_specs():
    """Every NodeSpec of every lineup and argument set, with a readable id."""
    return [pytest.param(spec, id=f'{name}-{arguments}-{spec.name}')
            for name, arguments in CASES for spec in specs(name, arguments)]


def read_yaml(path):
    with open(path, encoding='utf-8') as handle:
        return yaml.safe_load(handle)


def parse_python(path):
    with open(path, encoding='utf-8') as handle:
        return ast.parse(handle.read(), path)


def flatten(parameters, prefix=''):
    """Name nested parameters as ROS does: ``{'a': {'b': 1}}`` -> ``{'a.b': 1}``."""
    flat = {}
    for key, value in parameters.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f'{prefix}{key}.'))
        else:
            flat[prefix + key] = value
    return flat


def fully_qualified(spec):
    namespace = spec.namespace.strip('/')
    return f'/{namespace}/{spec.name}' if namespace else f'/{spec.name}'


def console_scripts():
    """``{script: 'module:function'}`` from the entry_points of setup.py (read, not run)."""
    tree = parse_python(os.path.join(PACKAGE_SRC, 'setup.py'))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'entry_points':
            scripts = ast.literal_eval(node.value)['console_scripts']
            return dict(entry.replace(' ', '').split('=') for entry in scripts)
    raise AssertionError('setup.py declares no entry_points')


def same_type(value, default):
    """Tell whether a YAML or override value has the ROS parameter type of ``default``."""
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return type(value) is type(default)


def within(value, limits):
    if limits is None or isinstance(value, (bool, list)):
        return True
    if isinstance(limits[0], str):
        return value in limits
    return limits[0] <= value <= limits[1]


# ---------------------------------------------------------------- launch arguments

def test_every_launch_argument_has_a_text_default_and_a_description():
    for name, (default, description) in LAUNCH_ARGUMENTS.items():
        assert isinstance(default, str), name
        assert description.strip(), name


@pytest.mark.parametrize('name', sorted(LINEUPS))
def test_unknown_launch_arguments_are_refused(name):
    with pytest.raises(ValueError, match='camera_sorce'):
        LINEUPS[name](REPO, {'camera_sorce': 'device'})


@pytest.mark.parametrize('make', [lineup.bridge_spec, lineup.camera_spec])
def test_each_node_spec_refuses_unknown_launch_arguments(make):
    with pytest.raises(ValueError):
        make(REPO, {'prot': '1'})


def test_the_lineups_start_the_expected_nodes():
    assert [spec.name for spec in specs('car', 'default')] == ['camera_node', 'bridge_node']
    assert [spec.name for spec in specs('bridge', 'default')] == ['bridge_node']


def test_default_arguments_give_the_default_nodes_with_no_overrides():
    camera, bridge = specs('car', 'default')
    assert camera == NodeSpec('camera_node', 'camera_node', 'camera',
                              (os.path.join(REPO, 'config', 'camera.yaml'),), {})
    assert bridge == NodeSpec('bridge_node', 'bridge_node', '',
                              (os.path.join(REPO, 'config', 'bridge.yaml'),), {})


def test_custom_arguments_reach_the_nodes_and_the_users_file_goes_over_the_shipped_one():
    camera, bridge = specs('car', 'custom')
    assert camera.params_files == (os.path.join(REPO, 'config', 'camera.yaml'),
                                   '/etc/robot/camera.yaml')
    assert camera.parameters == {'source': 'device', 'device': '/dev/video2'}
    assert camera.namespace == 'robot1/camera'
    assert bridge.params_files == (os.path.join(REPO, 'config', 'bridge.yaml'),
                                   '/etc/robot/bridge.yaml')
    assert bridge.parameters == {'host': '127.0.0.1', 'port': 9090,
                                 'token_file': '/run/secrets/bridge_token'}
    assert bridge.namespace == 'robot1'
    assert specs('bridge', 'custom') == [bridge]


def test_only_the_launch_arguments_given_become_overrides():
    (bridge,) = LINEUPS['bridge'](REPO, {'bridge_params': '/my.yaml'})
    assert bridge.parameters == {}  # port, host: from the files, so /my.yaml's port wins
    (bridge,) = LINEUPS['bridge'](REPO, {'port': '9011'})
    assert bridge.parameters == {'port': 9011}
    with pytest.raises(ValueError, match='port must be a number'):
        LINEUPS['bridge'](REPO, {'port': 'http'})


def test_a_file_source_names_the_file():
    camera, _ = specs('car', 'file')
    assert camera.parameters == {'source': 'file', 'file': '/data/drive.mp4'}


def test_the_camera_publishes_the_topic_the_bridge_streams_relative_to_the_namespace():
    for arguments in ({}, {'namespace': '/robot7/'}):
        camera, bridge = LINEUPS['car'](REPO, arguments)
        streams = read_yaml(os.path.join(REPO, 'config', 'bridge.yaml'))['/**']
        topics = {stream['topic'] for stream in streams['ros__parameters']['streams'].values()}
        assert all(not topic.startswith('/') for topic in topics)
        # camera_node publishes <its namespace>/image_raw; the bridge reads <its ns>/<topic>
        camera_topic = f'/{camera.namespace}/image_raw'
        bridge_topics = {'/' + '/'.join(filter(None, [bridge.namespace, topic]))
                         for topic in topics}
        assert camera_topic in bridge_topics


def test_parameter_value_reads_overrides_then_the_last_params_file(tmp_path):
    user = tmp_path / 'mine.yaml'
    user.write_text('/**:\n  ros__parameters:\n    port: 9011\n')
    (bridge,) = LINEUPS['bridge'](REPO, {'bridge_params': str(user)})
    assert lineup.parameter_value(bridge, 'port') == 9011
    assert lineup.parameter_value(bridge, 'host') == '0.0.0.0'  # from config/bridge.yaml
    (bridge,) = LINEUPS['bridge'](REPO, {'bridge_params': str(user), 'port': '9012'})
    assert lineup.parameter_value(bridge, 'port') == 9012


# ---------------------------------------------------------------- executables

@pytest.mark.parametrize('spec', all_specs())
def test_every_executable_is_a_console_script_of_the_package(spec):
    assert spec.package == 'video_bridge'
    assert spec.executable in console_scripts()


@pytest.mark.parametrize('spec', all_specs())
def test_every_executable_is_installed(spec):
    path = os.path.join(INSTALL_LIB, spec.executable)
    assert os.path.isfile(path) and os.access(path, os.X_OK), path


def test_every_console_script_points_at_a_main_function():
    for script, target in console_scripts().items():
        module_name, function = target.split(':')
        module = __import__(module_name, fromlist=[function])
        assert callable(getattr(module, function)), script
        assert os.access(os.path.join(INSTALL_LIB, script), os.X_OK), script


# ---------------------------------------------------------------- parameter files

@pytest.mark.parametrize('share', sorted(SHARES))
@pytest.mark.parametrize('name', sorted(LINEUPS))
def test_every_default_params_file_exists(name, share):
    for spec in LINEUPS[name](SHARES[share], {}):
        for path in spec.params_files:
            assert os.path.isfile(path), path


@pytest.mark.parametrize('spec', all_specs())
def test_params_files_name_ros_parameters_for_some_node(spec):
    for path in spec.params_files:
        if not path.startswith(REPO):
            continue  # a custom file that does not exist here
        document = read_yaml(path)
        assert isinstance(document, dict) and len(document) == 1, path
        (body,) = document.values()
        assert set(body) == {'ros__parameters'}, path


@pytest.mark.parametrize('spec', all_specs())
def test_params_files_are_keyed_for_the_node_as_the_lineup_runs_it(spec):
    fqn = fully_qualified(spec)
    for path in spec.params_files:
        if path.startswith(REPO):
            (key,) = read_yaml(path)
            assert key in ('/**', f'/**/{spec.name}', fqn, fqn.lstrip('/')), \
                f'{path} is keyed {key!r}; the node is {fqn}'


def bridge_yaml():
    return flatten(read_yaml(os.path.join(REPO, 'config', 'bridge.yaml'))['/**'][
        'ros__parameters'])


def camera_yaml():
    (body,) = read_yaml(os.path.join(REPO, 'config', 'camera.yaml')).values()
    return body['ros__parameters']


def declared_bridge_parameters(stream_names):
    declared = {name: (default, limits) for name, (default, _, limits)
                in BRIDGE_PARAMETERS.items()}
    for stream in stream_names:
        for field, (default, _, limits) in STREAM_PARAMETERS.items():
            declared[f'streams.{stream}.{field}'] = ('' if default is None else default, limits)
    return declared


def test_bridge_yaml_holds_exactly_the_declared_bridge_parameters():
    values = bridge_yaml()
    declared = declared_bridge_parameters(values['stream_names'])
    assert sorted(set(values) - set(declared)) == [], 'undeclared parameters in bridge.yaml'
    assert sorted(set(declared) - set(values)) == [], 'parameters missing from bridge.yaml'


def test_bridge_yaml_names_exactly_the_parameters_changeable_at_run_time():
    with open(os.path.join(REPO, 'config', 'bridge.yaml'), encoding='utf-8') as handle:
        text = handle.read()
    header = text[text.index('# Changeable while'):text.index('/**:')]
    header = ' '.join(header.replace('#', ' ').split())
    listed = header[header.index('my.yaml`):') + 10:header.index(' and streams.<name>')]
    assert sorted(n.strip() for n in listed.split(',') if n.strip()) == \
        sorted(RUNTIME_PARAMETERS)
    fields = header[header.index('streams.<name>.'):header.index('. Each change')]
    assert sorted(fields[len('streams.<name>.'):].replace(' ', '').split('/')) == \
        sorted(RUNTIME_STREAM_FIELDS)
    assert set(RUNTIME_PARAMETERS) <= set(BRIDGE_PARAMETERS)


def test_bridge_yaml_configures_exactly_the_streams_it_names():
    document = read_yaml(os.path.join(REPO, 'config', 'bridge.yaml'))['/**']['ros__parameters']
    assert sorted(document['streams']) == sorted(document['stream_names'])


def test_bridge_yaml_values_are_the_declared_defaults():
    """One source of truth: a file with one key in it changes that key and nothing else."""
    from video_bridge.ros.parameters import default_topic
    values = bridge_yaml()
    for name, (default, _) in declared_bridge_parameters(values['stream_names']).items():
        if name.endswith('.topic'):
            default = default_topic(name.split('.')[1])
        assert values[name] == default, f'{name}: bridge.yaml {values[name]!r}, ' \
            f'declared {default!r}'


def test_camera_yaml_values_are_the_declared_defaults():
    for name, value in camera_yaml().items():
        assert value == camera_node.PARAMETERS[name][0], name


def test_bridge_yaml_values_have_the_declared_types_and_ranges():
    values = bridge_yaml()
    for name, (default, limits) in declared_bridge_parameters(values['stream_names']).items():
        assert same_type(values[name], default), f'{name}: {values[name]!r} vs {default!r}'
        assert within(values[name], limits), f'{name}: {values[name]!r} outside {limits}'


def test_camera_yaml_holds_exactly_the_declared_camera_parameters():
    values = camera_yaml()
    assert sorted(set(values) - set(camera_node.PARAMETERS)) == []
    assert sorted(set(camera_node.PARAMETERS) - set(values)) == []


def test_camera_yaml_values_have_the_declared_types_and_ranges():
    for name, value in camera_yaml().items():
        default, _, limits = camera_node.PARAMETERS[name]
        assert same_type(value, default), f'{name}: {value!r} vs {default!r}'
        assert within(value, limits), f'{name}: {value!r} outside {limits}'


@pytest.mark.parametrize('spec', all_specs())
def test_lineup_overrides_are_declared_parameters_of_the_right_type(spec):
    declared = NODE_PARAMETERS[spec.executable]
    for name, value in spec.parameters.items():
        assert name in declared, name
        assert same_type(value, declared[name][0]), f'{name}: {value!r}'


# ---------------------------------------------------------------- --ros-args

def test_ros_arguments_name_place_configure_and_remap_a_node():
    spec = NodeSpec('camera_node', 'front_camera', '/robot1/front/',
                    ('/a.yaml', '/b.yaml'), {'fps': 15.0, 'loop': False, 'source': 'file'},
                    (('image_raw', 'image'), ('/tf', 'tf')))
    assert ros_arguments(spec) == [
        '--ros-args', '-r', '__node:=front_camera', '-r', '__ns:=/robot1/front',
        '--params-file', '/a.yaml', '--params-file', '/b.yaml',
        '-p', 'fps:=15.0', '-p', 'loop:=false', '-p', "source:='file'",
        '-r', 'image_raw:=image', '-r', '/tf:=tf']


def test_ros_arguments_leave_out_an_empty_namespace():
    assert ros_arguments(NodeSpec('bridge_node', 'bridge_node')) == \
        ['--ros-args', '-r', '__node:=bridge_node']


@pytest.mark.parametrize('spec', all_specs())
def test_ros_arguments_are_well_formed(spec):
    args = ros_arguments(spec)
    assert args[0] == '--ros-args'
    pairs = list(zip(args[1::2], args[2::2]))
    assert len(args) % 2 == 1
    for flag, value in pairs:
        assert flag in ('-r', '-p', '--params-file'), flag
        if flag != '--params-file':
            assert ':=' in value and not value.startswith(':='), value
    assert ('-r', f'__node:={spec.name}') in pairs
    assert [value for flag, value in pairs if flag == '--params-file'] == \
        list(spec.params_files)


def test_runner_reads_the_same_launch_arguments():
    assert runner.parse(['car', 'port:=9000', 'camera_source:=file']) == \
        ('car', {'port': '9000', 'camera_source': 'file'})
    with pytest.raises(SystemExit):
        runner.parse(['car', 'prot:=9000'])
    with pytest.raises(SystemExit):
        runner.parse(['plane'])


class RosNode:
    """A real rclpy node started with a spec's ``--ros-args``, as the runner starts one."""

    def __init__(self, spec):
        import rclpy
        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=[spec.executable, *ros_arguments(spec)])
        self.node = rclpy.create_node('unnamed', context=self.context,
                                      automatically_declare_parameters_from_overrides=True)

    def parameters(self):
        return {name: parameter.value
                for name, parameter in self.node.get_parameters_by_prefix('').items()
                if name not in ('use_sim_time', 'start_type_description_service')}

    def close(self):
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)


@pytest.fixture
def ros_node():
    require_isolated_ros()
    started = []

    def start(spec):
        started.append(RosNode(spec))
        return started[-1]
    yield start
    for node in started:
        node.close()


def default_specs():
    return [pytest.param(spec, id=f'{name}-{spec.name}')
            for name in sorted(LINEUPS) for spec in specs(name, 'default')]


@pytest.mark.parametrize('spec', default_specs())
def test_a_node_started_with_ros_arguments_has_the_name_namespace_and_overrides(ros_node, spec):
    started = ros_node(spec)
    assert started.node.get_fully_qualified_name() == fully_qualified(spec)
    parameters = started.parameters()
    for name, value in spec.parameters.items():
        assert parameters[name] == value


@pytest.mark.parametrize('spec', default_specs())
def test_a_node_started_with_ros_arguments_gets_its_params_file(ros_node, spec):
    parameters = ros_node(spec).parameters()
    for path in spec.params_files:
        (body,) = read_yaml(path).values()
        for name, value in flatten(body['ros__parameters']).items():
            expected = spec.parameters.get(name, value)
            assert name in parameters, f'{name} of {path} did not reach {fully_qualified(spec)}'
            assert parameters[name] == expected, name


@pytest.mark.parametrize('name, arguments, parameter', [
    ('car', {'camera_source': 'device', 'device': '0'}, 'device'),  # a V4L2 index stays text
    ('bridge', {'host': '::'}, 'host'),  # rcl would refuse an unquoted '::'
    ('bridge', {'host': 'localhost'}, 'host'),
    ('car', {'camera_source': 'device', 'device': '/dev/v4l/by-id/usb-cam'}, 'device'),
])
def test_text_launch_arguments_reach_the_node_as_text(ros_node, name, arguments, parameter):
    spec = next(spec for spec in LINEUPS[name](REPO, arguments)
                if parameter in spec.parameters)
    value = ros_node(spec).parameters()[parameter]
    assert value == spec.parameters[parameter]
    assert isinstance(value, str)


# ---------------------------------------------------------------- launch files (read, not run)

LAUNCH_FILES = {'car': os.path.join(REPO, 'launch', 'car.launch.py'),
                'bridge': os.path.join(REPO, 'launch', 'bridge.launch.py')}


@pytest.mark.parametrize('expected', sorted(LAUNCH_FILES))
def test_launch_file_returns_the_launch_description_of_its_lineup(expected):
    tree = parse_python(LAUNCH_FILES[expected])
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    generate = functions['generate_launch_description']
    assert not generate.args.args
    returned = [node.value for node in ast.walk(generate) if isinstance(node, ast.Return)]
    assert len(returned) == 1
    call = returned[0]
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == 'launch_description'
    (argument,) = call.args
    assert ast.literal_eval(argument) == expected
    assert expected in LINEUPS
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert any(node.module == 'video_bridge.ros.launch_support'
               and 'launch_description' in [alias.name for alias in node.names]
               for node in imports)


def test_every_lineup_has_a_launch_file():
    assert set(LINEUPS) == set(LAUNCH_FILES)
    assert sorted(os.listdir(os.path.join(REPO, 'launch'))) == \
        sorted(f'{name}.launch.py' for name in LINEUPS)


def launch_support_tree():
    return parse_python(os.path.join(PACKAGE_SRC, 'video_bridge', 'ros', 'launch_support.py'))


def comprehensions_over(tree, name):
    """Comprehensions whose loop reads ``name`` (``name`` or ``name.items()``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.ListComp, ast.DictComp, ast.GeneratorExp, ast.SetComp)):
            if any(name in {n.id for n in ast.walk(gen.iter) if isinstance(n, ast.Name)}
                   for gen in node.generators):
                found.append(node)
    return found


def calls_in(node, function):
    return [call for call in ast.walk(node) if isinstance(call, ast.Call)
            and ast.unparse(call.func) == function]


def test_launch_support_declares_every_launch_argument():
    declaring = [comp for comp in comprehensions_over(launch_support_tree(), 'LAUNCH_ARGUMENTS')
                 if calls_in(comp, 'DeclareLaunchArgument')]
    assert len(declaring) == 1
    (generator,) = declaring[0].generators
    assert ast.unparse(generator.iter) == 'LAUNCH_ARGUMENTS.items()'
    assert not generator.ifs  # every entry, none filtered out
    (call,) = calls_in(declaring[0], 'DeclareLaunchArgument')
    keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in call.keywords}
    assert ast.unparse(call.args[0]) == ast.unparse(generator.target.elts[0])
    assert set(keywords) >= {'default_value', 'description'}


def test_launch_support_reads_every_launch_argument_for_the_lineup():
    reading = [comp for comp in comprehensions_over(launch_support_tree(), 'LAUNCH_ARGUMENTS')
               if calls_in(comp, 'LaunchConfiguration')]
    assert len(reading) == 1
    assert not reading[0].generators[0].ifs


def test_launch_support_passes_each_spec_to_a_node():
    tree = launch_support_tree()
    (node_call,) = calls_in(tree, 'Node')
    keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in node_call.keywords}
    for field in ('package', 'executable', 'name', 'namespace'):
        assert keywords[field] == f'spec.{field}'
    assert 'spec.params_files' in keywords['parameters']
    assert 'spec.parameters' in keywords['parameters']
    assert 'spec.remappings' in keywords['remappings']
    assert any(ast.unparse(node) == 'make_specs = LINEUPS[lineup]' for node in ast.walk(tree)
               if isinstance(node, ast.Assign))


# ---------------------------------------------------------------- what setup.py installs

@pytest.mark.parametrize('folder', ['launch', 'config', 'web'])
def test_setup_installs_every_file_of_the_folder_into_share(folder):
    source = os.path.join(REPO, folder)
    count = 0
    for directory, subdirectories, files in os.walk(source):
        subdirectories[:] = [d for d in subdirectories if d != '__pycache__']
        for name in files:
            relative = os.path.relpath(os.path.join(directory, name), REPO)
            installed = os.path.join(INSTALL_SHARE, relative)
            assert os.path.isfile(installed), f'{relative} is not installed'
            assert filecmp.cmp(os.path.join(REPO, relative), installed, shallow=False), relative
            count += 1
    assert count > 0


def test_setup_registers_the_package_in_the_ament_index():
    prefix = os.path.dirname(os.path.dirname(INSTALL_SHARE))
    assert os.path.isfile(os.path.join(prefix, 'share', 'ament_index', 'resource_index',
                                       'packages', 'video_bridge'))
    assert os.path.isfile(os.path.join(INSTALL_SHARE, 'package.xml'))


# ---------------------------------------------------------------- the lineups running

@pytest.fixture
def run_lineup():
    require_isolated_ros()
    started = []

    def start(*arguments, env=None):
        """``runner <lineup> name:=value ...`` as its own process (what scripts/demo starts)."""
        started.append(ChildProcess([os.path.join(INSTALL_LIB, 'runner'), *arguments],
                                    'runner', env))
        return started[-1]
    yield start
    for item in started:
        item.stop(timeout=20)


def test_two_namespaced_car_lineups_on_one_graph_each_show_and_drive_their_own(ros, run_lineup):
    import asyncio
    import json
    import math
    import urllib.request

    from conftest import free_port, port_open, wait_for
    from geometry_msgs.msg import Twist
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from video_bridge.core.protocol import unpack_frame
    import websockets
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    robots = {'robot1': (free_port(), 320, 240), 'robot2': (free_port(), 160, 120)}
    twists = {name: ros.collect(Twist, f'/{name}/cmd_vel', reliable) for name in robots}
    for name, (port, width, height) in robots.items():
        mine = os.path.join(REPO, 'test-output', f'camera-{name}-{os.getpid()}.yaml')
        os.makedirs(os.path.dirname(mine), exist_ok=True)
        with open(mine, 'w') as handle:  # a different frame size tells the cameras apart
            handle.write(f'/**:\n  ros__parameters:\n    width: {width}\n    height: {height}\n')
        runner_process = run_lineup('car', f'namespace:={name}', f'port:={port}',
                                    'host:=127.0.0.1', f'camera_params:={mine}')
        wait_for(lambda: port_open(port) or runner_process.proc.poll() is not None, 30,
                 f'{name} to serve')
        assert runner_process.proc.poll() is None, runner_process.output()

    async def check(name, port, width, height):
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/streams', timeout=5) as r:
            assert [s['name'] for s in json.load(r)['streams']] == ['camera']
        async with websockets.connect(f'ws://127.0.0.1:{port}/video/camera') as video:
            async with asyncio.timeout(20):
                header, _ = unpack_frame(await video.recv())
        assert (header.width, header.height) == (width, height), name
        async with websockets.connect(f'ws://127.0.0.1:{port}/control') as control:
            speed = 0.1 if name == 'robot1' else 0.3
            async with asyncio.timeout(15):
                await control.recv()
                await control.send(json.dumps({'type': 'acquire', 'id': 1}))
                # repeat until seen: the first command may beat cmd_vel discovery
                while not any(math.isclose(t.linear.x, speed) for t in twists[name]):
                    await control.send(json.dumps({'type': 'velocity', 'linear': {'x': speed},
                                                   'id': 2}))
                    await asyncio.sleep(0.1)  # command pacing, not synchronisation
        return speed

    speeds = {name: asyncio.run(check(name, *figures)) for name, figures in robots.items()}
    for name, speed in speeds.items():
        other = [s for n, s in speeds.items() if n != name][0]
        assert not any(math.isclose(t.linear.x, other) for t in twists[name]), \
            f"{name} got the other page's command"
    assert ros.node.count_publishers('/cmd_vel') == 0


def test_runner_says_where_the_page_is_and_that_beyond_loopback_it_needs_the_token(run_lineup):
    from conftest import free_port, wait_for
    env = {'VIDEO_BRIDGE_TOKEN': ''}
    port = free_port()
    shipped = run_lineup('bridge', f'port:={port}', env=env)  # shipped host 0.0.0.0, no token
    # The runner says so once the port is open; bridge_node prints its URL right after.
    wait_for(lambda: ('video_bridge is up' in shipped.output() and '/?token=' in shipped.output())
             or shipped.proc.poll() is not None, 30, 'the runner and bridge_node to print')
    output = shipped.output()
    assert '/?token=' in output, output  # bridge_node made a token and printed its URL
    assert 'open the page URL with the token that bridge_node prints' in output, output
    up = next(line for line in output.splitlines() if 'video_bridge is up' in line)
    assert 'http' not in up, up  # the runner names no URL beside the one with the token
    loopback_port = free_port()
    loopback = run_lineup('bridge', f'port:={loopback_port}', 'host:=127.0.0.1', env=env)
    wait_for(lambda: 'video_bridge is up' in loopback.output() or loopback.proc.poll() is not None,
             30, 'the runner to say the bridge is up')
    assert f'open http://127.0.0.1:{loopback_port}/ in a browser' in loopback.output()
    assert '?token=' not in loopback.output()


def test_runner_exits_non_zero_when_a_node_it_started_dies(run_lineup, tmp_path):
    from conftest import wait_for
    mine = tmp_path / 'bad.yaml'
    mine.write_text('/**:\n  ros__parameters:\n    port: 99999\n')  # out of range: exits 1
    runner_process = run_lineup('bridge', f'bridge_params:={mine}')
    wait_for(lambda: runner_process.proc.poll() is not None, 30, 'the runner to exit')
    assert runner_process.proc.returncode != 0
    assert 'exited with 1 on its own' in runner_process.output()


@pytest.mark.parametrize('executable', ['camera_node', 'bridge_node', 'runner'])
def test_help_prints_usage_and_exits_zero_without_starting(executable):
    import subprocess
    done = subprocess.run([os.path.join(INSTALL_LIB, executable), '--help'],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f'usage: {executable}')
    if executable != 'runner':
        assert 'parameters:' in done.stdout and 'publishing' not in done.stdout
    bad = subprocess.run([os.path.join(INSTALL_LIB, executable), '--frobnicate'],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and 'error:' in bad.stderr


# ---------------------------------------------------------------- package.xml

# import name -> rosdep key (rosdistro rosdep/python.yaml for the python3-* ones)
ROSDEP_KEYS = {'cv2': 'python3-opencv', 'numpy': 'python3-numpy', 'yaml': 'python3-yaml',
               'websockets': 'python3-websockets', 'aiohttp': 'python3-aiohttp',
               'av': 'python3-av'}
# Imported but without a usable rosdep key: installed with pip, optional (package.xml says why).
PIP_ONLY = {'aiortc'}


def imported_packages():
    """Top-level packages imported by the package and the launch files (stdlib excluded)."""
    import sys
    found = set()
    roots = [os.path.join(PACKAGE_SRC, 'video_bridge'), os.path.join(REPO, 'launch')]
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                if not name.endswith('.py'):
                    continue
                for node in ast.walk(parse_python(os.path.join(directory, name))):
                    if isinstance(node, ast.Import):
                        found |= {alias.name.split('.')[0] for alias in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        found.add(node.module.split('.')[0])
    return {name for name in found if name not in sys.stdlib_module_names} - {'video_bridge'}


def exec_depends():
    import xml.etree.ElementTree as ElementTree
    tree = ElementTree.parse(os.path.join(PACKAGE_SRC, 'package.xml'))
    assert tree.getroot().get('format') == '3'
    return {element.text for element in tree.getroot().iter('exec_depend')}


def test_every_import_is_an_exec_depend_and_every_exec_depend_is_used():
    needed = {ROSDEP_KEYS.get(name, name) for name in imported_packages()} - PIP_ONLY
    declared = exec_depends()
    with open(os.path.join(PACKAGE_SRC, 'package.xml'), encoding='utf-8') as handle:
        manifest = handle.read()
    assert all(name in manifest for name in PIP_ONLY), 'say in package.xml why pip installs it'
    assert sorted(needed - declared) == [], 'imported but not declared in package.xml'
    assert sorted(declared - needed) == [], 'declared in package.xml but never imported'
