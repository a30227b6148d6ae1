"""Secrets come from files, never from ROS parameters: the pure reader behind token_file,
turn_secret_file and turn_password_file, and the real bridge_node with a static TURN password
from turn_password_file (it reaches the page's ICE config; no parameter shows it; the old
turn_password parameter makes the bridge refuse to start)."""

import asyncio
import json
import shutil
import subprocess

from conftest import BRIDGE_PARAMS, free_port, wait_for
import pytest
from video_bridge.core import access, ice
from video_bridge.core.secret_file import exposure_warning, read_secret_file
from video_bridge.ros.parameters import BRIDGE_PARAMETERS
import websockets

PASSWORD = 'pw-7c1e9a-static'
TURN_URL = 'turn:192.0.2.1:3478?transport=udp'


# ---------------------------------------------------------------- the pure reader

@pytest.mark.parametrize('content, expected', [
    ('s3cret\n', 's3cret'),
    ('s3cret', 's3cret'),                       # no newline at the end
    ('  s3cret \t\r\n', 's3cret'),              # surrounding blanks, a Windows line end
    ('s3cret\nsecond line is ignored\n', 's3cret'),
    ('in ner spa ces\n', 'in ner spa ces'),     # inner blanks are part of the secret
    ('pässwörd\n', 'pässwörd'),
])
def test_the_secret_is_the_first_line_stripped(tmp_path, content, expected):
    path = tmp_path / 'secret'
    path.write_text(content, encoding='utf-8')
    assert read_secret_file(str(path), 'turn_password_file') == expected


@pytest.mark.parametrize('content', ['', '\n', '  \t\n', '\nsecret on line two\n'])
def test_an_empty_first_line_is_refused_naming_the_parameter(tmp_path, content):
    path = tmp_path / 'secret'
    path.write_text(content)
    with pytest.raises(ValueError, match=r"^turn_password_file '.*secret' is empty$"):
        read_secret_file(str(path), 'turn_password_file')


def test_a_missing_file_or_a_directory_is_refused_naming_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"^cannot read turn_secret_file '.*missing': No such"):
        read_secret_file(str(tmp_path / 'missing'), 'turn_secret_file')
    with pytest.raises(ValueError, match=r'^cannot read token_file '):
        read_secret_file(str(tmp_path), 'token_file')


def test_an_endless_first_line_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / 'secret'
    path.write_text('x' * 100_000)
    with pytest.raises(ValueError, match='longer than 4096 characters') as error:
        read_secret_file(str(path), 'token_file')
    assert 'xxxx' not in str(error.value)
    with pytest.raises(ValueError, match='longer than'):
        read_secret_file('/dev/zero', 'turn_secret_file')


def test_binary_garbage_is_refused_without_echoing_it(tmp_path):
    path = tmp_path / 'secret'
    path.write_bytes(b'\xff\xfe\x00secret-bytes\n')
    with pytest.raises(ValueError, match='not UTF-8 text') as error:
        read_secret_file(str(path), 'turn_password_file')
    assert 'secret-bytes' not in str(error.value)


def test_a_file_every_user_may_read_is_read_but_warned_about(tmp_path):
    path = tmp_path / 'secret'
    path.write_text('s3cret\n')
    path.chmod(0o644)
    warning = exposure_warning(str(path), 'turn_password_file')
    assert warning and 'turn_password_file' in warning and 'every user' in warning
    assert 's3cret' not in warning
    assert read_secret_file(str(path), 'turn_password_file') == 's3cret'
    for private in (0o600, 0o640, 0o400):
        path.chmod(private)
        assert exposure_warning(str(path), 'turn_password_file') is None
    assert exposure_warning(str(tmp_path / 'missing'), 'x') is None


def test_token_file_and_turn_secret_file_share_the_reader(tmp_path):
    path = tmp_path / 'token'
    path.write_text(' tok \n')
    assert access.load_token(str(path), {}) == 'tok'
    (tmp_path / 'empty').write_text('\n')
    with pytest.raises(ValueError, match="^token_file '.*empty' is empty$"):
        access.load_token(str(tmp_path / 'empty'), {access.TOKEN_ENV: 'from-env'})
    assert not hasattr(ice, 'load_secret'), 'one reader for every secret file'


def test_the_parameter_table_has_a_password_file_and_no_password():
    assert 'turn_password_file' in BRIDGE_PARAMETERS
    assert 'turn_password' not in BRIDGE_PARAMETERS
    assert 'never a parameter' in BRIDGE_PARAMETERS['turn_password_file'][1]


# ---------------------------------------------------------------- the real bridge

ROS2 = shutil.which('ros2')


def password_file(tmp_path, mode=0o600):
    path = tmp_path / 'turn_password'
    path.write_text(PASSWORD + '\n')
    path.chmod(mode)
    return str(path)


async def webrtc_config(url):
    async with websockets.connect(f'{url}/control', max_size=2 ** 20) as socket:
        await socket.send(json.dumps({'type': 'webrtc_config', 'id': 'cfg'}))
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), 10))
            if message.get('type') == 'webrtc_config':
                return message


def ros2(*args, wait=('--timeout', '15')):
    done = subprocess.run([ROS2, *args, '--no-daemon', '--spin-time', '3', *wait],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f'ros2 {" ".join(args)}: {done.stdout}\n{done.stderr}'
    return done.stdout


def test_the_password_from_the_file_reaches_the_page_and_no_parameter(start_bridge, tmp_path):
    path = password_file(tmp_path)
    bridge = start_bridge(ice_servers=[TURN_URL], turn_username='car', turn_password_file=path)
    config = asyncio.run(webrtc_config(bridge.ws))
    assert config['ice_servers'] == [{'urls': [TURN_URL], 'username': 'car',
                                      'credential': PASSWORD}]
    assert PASSWORD not in bridge.process.output(), 'the password was logged'
    assert 'readable by every user' not in bridge.process.output()
    if ROS2 is None:
        pytest.skip('the ros2 command line is not installed (CI installs it with '
                    '../shared/ros2-cli/install .venv); the ICE part passed')
    # param list has no --timeout; describe (which has) found the node first.
    described = ros2('param', 'describe', '/bridge_node', 'turn_password_file')
    assert 'never a parameter' in ' '.join(described.split())
    names = ros2('param', 'list', '/bridge_node', wait=()).split()
    assert 'turn_password_file' in names and 'turn_username' in names
    assert 'turn_password' not in names
    dump = ros2('param', 'dump', '/bridge_node')
    assert path in dump and PASSWORD not in dump, 'a parameter shows the password'


def test_a_password_file_others_may_read_is_warned_about(start_bridge, tmp_path):
    path = password_file(tmp_path, mode=0o644)
    bridge = start_bridge(ice_servers=[TURN_URL], turn_username='car', turn_password_file=path)
    wait_for(lambda: 'readable by every user' in bridge.process.output(), 10,
             'the warning about the file mode')
    assert 'turn_password_file' in bridge.process.output()
    assert PASSWORD not in bridge.process.output()


def bridge_exit(launch_node, *parameters):
    ros_args = ['--params-file', BRIDGE_PARAMS, '-p', f'port:={free_port()}',
                '-p', 'host:=127.0.0.1']
    for parameter in parameters:
        ros_args += ['-p', parameter]
    process = launch_node('bridge_node', ros_args=ros_args)
    wait_for(lambda: process.proc.poll() is not None, 20, 'bridge_node to refuse to start')
    return process.proc.returncode, process.output()


def test_the_old_turn_password_parameter_is_refused_at_start(launch_node):
    code, output = bridge_exit(launch_node, f'ice_servers:=["{TURN_URL}"]',
                               'turn_username:=car', f'turn_password:={PASSWORD}')
    assert code == 1, output
    assert 'turn_password is no longer a parameter' in output
    assert 'turn_password_file' in output
    assert PASSWORD not in output


@pytest.mark.parametrize('content', [None, '\n'])
def test_an_unusable_password_file_stops_the_bridge_naming_the_parameter(launch_node, tmp_path,
                                                                         content):
    path = tmp_path / 'turn_password'
    if content is not None:
        path.write_text(content)
    code, output = bridge_exit(launch_node, f'ice_servers:=["{TURN_URL}"]',
                               'turn_username:=car', f'turn_password_file:={path}')
    assert code == 1, output
    assert 'configuration error' in output and 'turn_password_file' in output
    assert ('cannot read' if content is None else 'is empty') in output
