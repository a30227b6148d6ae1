"""
Start a launch file's nodes where ``ros2 launch`` is not installed (pip-based ROS 2).

    runner car                                   # like: ros2 launch video_bridge car.launch.py
    runner car camera_source:=file video_file:=drive.mp4 port:=8081
    runner bridge bridge_params:=my_bridge.yaml

Same nodes, same YAML files and the same arguments as launch/*.launch.py (both read
:mod:`video_bridge.ros.lineup`). Each node is its own process, as under ``ros2 launch``; SIGINT or
SIGTERM is passed to every node so the bridge stops the car and all shut down cleanly. If a
node exits on its own (a crash, a bad parameter), the runner stops the others and exits
non-zero, so a supervisor (systemd, docker) sees the failure and can restart the lineup.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from video_bridge.ros.lineup import (FASTDDS_PROFILE, LAUNCH_ARGUMENTS, LINEUPS, PACKAGE,
                                     parameter_value, ros_arguments)


def parse(argv):
    """Read ``lineup [name:=value ...]``; reject unknown argument names."""
    epilog = '\n'.join(f'  {name}:=VALUE  {text} (default: {default!r})'
                       for name, (default, text) in LAUNCH_ARGUMENTS.items())
    parser = argparse.ArgumentParser(
        prog='runner', description=__doc__.strip().split('\n')[0],
        epilog='launch arguments:\n' + epilog, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('lineup', choices=sorted(LINEUPS))
    parser.add_argument('arguments', nargs='*', metavar='name:=value')
    options = parser.parse_args(argv)
    arguments = {}
    for position, item in enumerate(options.arguments, 1):
        name, sep, value = item.partition(':=')
        if not sep or name not in LAUNCH_ARGUMENTS:
            # Only the name: the value may be a secret (token:=..., an old config's habit).
            got = f'{name[:64]!r}:=...' if sep else f'argument {position} without :='
            parser.error(f'expected name:=value with name one of {sorted(LAUNCH_ARGUMENTS)}, '
                         f'got {got}')
        arguments[name] = value
    return options.lineup, arguments


def wait_for_port(port: int, processes, timeout: float = 20.0) -> bool:
    """Return True once something accepts TCP on 127.0.0.1:port (False if a node died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            return False
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def page_hint(spec, port: int, env) -> str:
    """
    Say where the page opens, without a second URL beside the one bridge_node prints.

    ``$VIDEO_BRIDGE_PAGE_URL`` is the page as the user reaches it (scripts/demo sets it: its
    nodes run in a network namespace whose own names do not open from outside).
    """
    token_set = bool(parameter_value(spec, 'token_file', '') or env.get('VIDEO_BRIDGE_TOKEN'))
    page_url = env.get('VIDEO_BRIDGE_PAGE_URL', '').strip()
    scheme = 'https' if parameter_value(spec, 'tls_cert', '') else 'http'
    host = str(parameter_value(spec, 'host', '127.0.0.1'))
    if host == '127.0.0.1':
        return f'open {page_url or f"{scheme}://127.0.0.1:{port}/"} in a browser'
    if not token_set:
        return 'open the page URL with the token that bridge_node prints'
    return f'open {page_url or f"{scheme}://<this host>:{port}/"} with your token'


def main(argv=None):
    """Start the lineup, print the URL, and stop everything on SIGINT/SIGTERM."""
    lineup, arguments = parse(sys.argv[1:] if argv is None else argv)
    share = get_package_share_directory(PACKAGE)
    prefix = get_package_prefix(PACKAGE)
    env = dict(os.environ)
    env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', os.path.join(share, 'config', FASTDDS_PROFILE))
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    try:
        specs = LINEUPS[lineup](share, arguments)
    except ValueError as exc:
        print(f'runner: {exc}', file=sys.stderr)
        return 2
    processes = []
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for spec in specs:
        executable = os.path.join(prefix, 'lib', spec.package, spec.executable)
        processes.append(subprocess.Popen([executable, *ros_arguments(spec)], env=env))
    bridge = [spec for spec in specs if spec.executable == 'bridge_node']
    if bridge:
        port = int(parameter_value(bridge[0], 'port', 8080))
        if port and wait_for_port(port, processes):
            where = page_hint(bridge[0], port, env)
            print(f'\n  video_bridge is up: {where}\n'
                  f'  DDS discovery range: {env["ROS_AUTOMATIC_DISCOVERY_RANGE"]}. '
                  f'Ctrl-C stops the car and the nodes.\n', flush=True)
    status = 0
    while processes:
        for process in list(processes):
            code = process.poll()
            if code is None:
                continue
            processes.remove(process)
            if not stopping:  # nobody asked it to stop: the lineup is broken
                status = status or code or 1
                print(f'runner: {process.args[0]} exited with {code} on its own; stopping the '
                      'rest', file=sys.stderr)
                stop(None, None)
            elif code not in (0, -signal.SIGINT):
                status = status or code
        time.sleep(0.05)
    return status


if __name__ == '__main__':
    sys.exit(main())
