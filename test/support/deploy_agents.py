"""Small programs the deploy topology test runs inside its namespaces (``ip netns exec``).

    python test/support/deploy_agents.py cmd_vel
        An rclpy subscriber of /cmd_vel on the robot: one JSON line per Twist on stdout,
        {"t": wall-clock receive time, "x": linear.x, "z": angular.z}; "ready" once subscribed.
    python test/support/deploy_agents.py probe URL [--origin O] [--token T] [--cafile F]
                                     [--resolve NAME:ADDRESS] [--unix SOCKET]
        One HTTP request or websocket handshake (ws/wss URL) as a hostile or mistaken client
        would make it; prints {"status": HTTP status, "body": ..., "close": close code}.

Both print and exit; the test reads their output. Timestamps are wall clock (time.time()), the
same clock in every namespace of this machine.
"""

import argparse
import asyncio
import http.client
import json
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request


def cmd_vel():
    import rclpy
    from geometry_msgs.msg import Twist
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions

    # Our own handlers, so the node is destroyed before the context ends (destroying it after
    # rclpy's handler ended the context can crash Fast DDS).
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('deploy_cmd_vel_listener')

    def received(msg):
        print(json.dumps({'t': time.time(), 'x': msg.linear.x, 'z': msg.angular.z}), flush=True)

    node.create_subscription(Twist, '/cmd_vel', received,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    print('ready', flush=True)
    try:
        while not stop:
            rclpy.spin_once(node, timeout_sec=0.2)
            if node.count_publishers('/cmd_vel') and not getattr(node, 'told', False):
                node.told = True
                print('publisher', flush=True)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def pin_name(resolve):
    """Resolve NAME to ADDRESS in this process only (as curl --resolve): the lab has no DNS."""
    name, address = resolve.rsplit(':', 1)
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real(address if host == name else host, *args, **kwargs)
    socket.getaddrinfo = getaddrinfo


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the tunnel's mouth on the cloud host)."""

    def __init__(self, path):
        super().__init__('localhost', timeout=5)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


async def websocket_probe(url, origin, context, unix, result):
    """
    Open a websocket, read until the server closes it (a refusal) or 3 s pass; note what came.

    The websockets library's asyncio client: its sync client reads in a thread of its own while
    the caller writes, which a Python TLS socket does not survive (see
    ``hostile_clients.Viewer``).
    """
    from websockets.asyncio.client import connect, unix_connect
    from websockets.exceptions import ConnectionClosed
    if unix:
        opener = unix_connect(unix, url, open_timeout=5, origin=origin)
    else:
        opener = connect(url, open_timeout=5, origin=origin,
                         **({'ssl': context} if context is not None else {}))
    async with opener as socket:
        result['status'] = 101
        try:
            while True:
                await asyncio.wait_for(socket.recv(), 3)
        except TimeoutError:
            result['close'] = None
        except ConnectionClosed as closed:
            result['close'] = closed.rcvd.code if closed.rcvd else 1006
            result['reason'] = closed.rcvd.reason if closed.rcvd else ''


def probe(url, origin=None, token=None, cafile=None, unix=None):
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    headers = {}
    if origin:
        headers['Origin'] = origin
    if token:
        url += ('&' if '?' in url else '?') + 'token=' + token
    result = {'url': url.split('?')[0]}
    if url.startswith(('ws://', 'wss://')):
        from websockets.exceptions import InvalidStatus
        try:
            asyncio.run(websocket_probe(url, origin, context, unix, result))
        except InvalidStatus as refused:
            result['status'] = refused.response.status_code
            result['body'] = refused.response.body.decode(errors='replace')
    elif unix:
        connection = UnixHTTPConnection(unix)
        target = '/' + url.split('//', 1)[1].split('/', 1)[1]   # path and query
        connection.request('GET', target, headers={'Host': 'localhost', **headers})
        response = connection.getresponse()
        result['status'] = response.status
        result['body'] = response.read(2000).decode(errors='replace')
    else:
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                result['status'] = response.status
                result['body'] = response.read(2000).decode(errors='replace')
        except urllib.error.HTTPError as refused:
            result['status'] = refused.code
            result['body'] = refused.read(2000).decode(errors='replace')
    print(json.dumps(result), flush=True)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='what', required=True)
    sub.add_parser('cmd_vel')
    one = sub.add_parser('probe')
    one.add_argument('url')
    one.add_argument('--origin')
    one.add_argument('--token')
    one.add_argument('--cafile')
    one.add_argument('--resolve')
    one.add_argument('--unix')
    args = parser.parse_args(argv)
    if args.what == 'cmd_vel':
        cmd_vel()
    else:
        if args.resolve:
            pin_name(args.resolve)
        probe(args.url, args.origin, args.token, args.cafile, args.unix)


if __name__ == '__main__':
    main(sys.argv[1:])
