"""The SFU's namespace lab: the robot behind NAT on an emulated cellular uplink, the cloud with
nginx, coturn and Janus from deploy/cloud/, the viewers behind another NAT.

    robot: this namespace   uplink wire     rnat               internet    cloud: 203.0.113.10
    camera_node,         -- lte, up at  --  NAT, nothing  --  router  --  nginx, coturn,
    bridge_node,            2 Mbit/s        new inbound         |         Janus
    /cmd_vel recorder                                         onat: NAT -- viewers: driver,
    192.0.2.2                                                              observers

The robot's namespace is the test's own (scripts/test gives it one; netlab ``Lab.adopt`` names
it), so bridge_node, camera_node and the /cmd_vel recorder run there as in the other node tests;
everything else is a lab namespace. The robot dials out only: to Janus through nginx (the
publisher), to coturn, to its viewers' addresses as ICE finds them. The pages' way to the bridge
is nginx too, as deployed; the deployment's ssh tunnel from the robot is stood in for by a port
forward on the robot's router, which only nginx uses. The internet router forwards between the
NAT routers and the cloud host, which has one interface with its public address: Janus gathers
its candidates there, coturn listens and relays there.

What the robot sends up is counted on its router (nftables counters in ``rnat``): everything
from its LAN, and what goes to Janus's media ports.
"""

import json
import os
import shutil
import time

from conftest import wait_for
from support import netlab
from support.janus_lab import DEPLOY, Janus, JanusEdge
from support.link_emulator import LinkEmulator, profile, why_unavailable

CLOUD = '203.0.113.10'
ROBOT = '192.0.2.2'
VIEWERS = '192.0.2.130'
JANUS_MEDIA = '40000-40999'     # janus_lab.Janus's rtp_port_range
UPLINK_MBIT = 2.0


def uplink_profile() -> dict:
    """The ``lte`` profile with the robot's uplink capped at 2 Mbit/s (lte allows 4), its
    delay and jitter kept, without its random loss.

    The lab's receivers are aiortc's: its jitter buffer holds every frame after a lost packet
    until the retransmission comes or 128 more packets arrived, which at these rates is
    seconds of nothing and then a burst (measured here: a driver at 0 fps for a window, 37 fps
    the next). Frame rates would then measure aiortc, not the SFU. Loss on a live link is
    test_links.py's, with Chromium.
    """
    spec = profile('lte')
    spec.pop('loss', None)
    spec['up'] = dict(spec.get('up') or {}, rate_mbit=UPLINK_MBIT)
    return spec


def why_skip():
    why = why_unavailable()
    if why:
        return why
    missing = netlab.missing_tools('nginx', 'turnserver', 'janus', 'ss')
    if missing:
        return f'missing tools: {", ".join(missing)} (scripts/bootstrap installs them)'
    return None


def rewrite(text: str, replacements: dict) -> str:
    """Apply lab rewrites to a deploy/ file; each old text must be there (the sample moved?)."""
    for old, new in replacements.items():
        assert old in text, f'{old!r} is no longer in the deploy file: update the test'
        text = text.replace(old, new)
    return text


class SfuLab:
    """The lab of one test, built by :meth:`build`; :meth:`close` removes all of it."""

    def __init__(self, log_dir: str, tmp_dir: str):
        self.tmp = tmp_dir
        self.lab = netlab.Lab(log_dir)
        self.link = self.janus = self.edge = self.coturn = None
        self.turn_secret = 'test-turn-secret'

    def path(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def build(self, bridge_port: int):
        """The network, then coturn, Janus and nginx (in front of Janus and of the bridge)."""
        lab = self.lab
        self.robot = lab.adopt('robot')
        self.rnat, self.internet = lab.namespace('rnat'), lab.namespace('internet')
        self.cloud, self.onat = lab.namespace('cloud'), lab.namespace('onat')
        self.viewers = lab.namespace('viewers')
        self.wire = lab.wire(self.robot, f'{ROBOT}/25', self.rnat, '192.0.2.1/25', 'uplink')
        rnat_lan = self.wire.far_peer[1]
        rnat_wan, _ = lab.link(self.rnat, '198.51.100.2/30', self.internet, '198.51.100.1/30')
        onat_wan, _ = lab.link(self.onat, '198.51.100.6/30', self.internet, '198.51.100.5/30')
        lab.link(self.cloud, f'{CLOUD}/24', self.internet, '203.0.113.1/24')
        _, onat_lan = lab.link(self.viewers, f'{VIEWERS}/25', self.onat, '192.0.2.129/25')
        lab.ns_run(self.internet, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1')
        lab.route(self.robot, 'default', '192.0.2.1')
        lab.route(self.rnat, 'default', '198.51.100.1')
        lab.route(self.cloud, 'default', '203.0.113.1')
        lab.route(self.onat, 'default', '198.51.100.5')
        lab.route(self.viewers, 'default', '192.0.2.129')
        lab.nat_router(self.rnat, lan=rnat_lan, wan=rnat_wan)
        lab.nat_router(self.onat, lan=onat_lan, wan=onat_wan)
        lab.port_forward(self.rnat, rnat_wan, bridge_port, ROBOT)   # the tunnel's stand-in
        for router in (self.rnat, self.onat):
            # The lab has no DNS; its routers refuse it at once, so a lookup anything in the
            # lab still makes fails now instead of after the resolver's 5 s.
            lab.ns_run(router, 'nft', '-f', '-', input="""
table inet nodns {
    chain forward {
        type filter hook forward priority -10; policy accept;
        meta l4proto { tcp, udp } th dport 53 reject
    }
}
""")
        low, high = JANUS_MEDIA.split('-')
        lab.ns_run(self.rnat, 'nft', '-f', '-', input=f"""
table inet sfulab {{
    counter uplink {{}}
    counter to_janus {{}}
    chain forward {{
        type filter hook forward priority -5; policy accept;
        iifname "{rnat_lan}" ip daddr {CLOUD} udp dport {low}-{high} counter name "to_janus"
        iifname "{rnat_lan}" counter name "uplink"
    }}
}}
""")
        self.link = LinkEmulator(lab, self.wire, uplink_profile(), seed=20).start()
        self.start_coturn()
        self.janus = Janus(rtp_ports=JANUS_MEDIA, namespace=self.cloud, address=CLOUD)
        bridge = (f'        location / {{   # the bridge, through the tunnel in a deployment\n'
                  f'            proxy_pass http://198.51.100.2:{bridge_port};\n'
                  f'            proxy_http_version 1.1;\n'
                  f'            proxy_set_header Upgrade $http_upgrade;\n'
                  f'            proxy_set_header Connection $http_connection;\n'
                  f'        }}')
        self.edge = JanusEdge(self.janus, listen=CLOUD, extra=bridge)
        self.url = f'ws://{CLOUD}:{self.edge.port}'           # the bridge, through nginx
        self.http = f'http://{CLOUD}:{self.edge.port}'

    def start_coturn(self):
        with open(os.path.join(DEPLOY, 'turnserver.conf')) as handle:
            conf = rewrite(handle.read(), {
                'static-auth-secret=CHANGE-ME-openssl-rand-hex-32':
                    f'static-auth-secret={self.turn_secret}',
                'tls-listening-port=5349': 'no-tls',   # UDP only: the lab has no certificate
                'cert=/etc/letsencrypt/live/car.example.org/fullchain.pem': '',
                'pkey=/etc/letsencrypt/live/car.example.org/privkey.pem': '',
                # the lab's LANs stand for the private ranges the file denies (192.168/16 ...)
                'denied-peer-ip=192.168.0.0-192.168.255.255':
                    'denied-peer-ip=192.168.0.0-192.168.255.255\n'
                    'denied-peer-ip=192.0.2.0-192.0.2.255'})
        with open(self.path('turnserver.conf'), 'w') as handle:
            handle.write(conf)
        with open(self.path('turn_secret'), 'w') as handle:
            handle.write(self.turn_secret + '\n')
        os.chmod(self.path('turn_secret'), 0o600)
        self.coturn = self.lab.start(
            self.cloud, 'coturn', shutil.which('turnserver'), '-c', self.path('turnserver.conf'),
            '--log-file=stdout', f'--pidfile={self.path("turnserver.pid")}',
            f'--userdb={self.path("turndb")}')
        wait_for(lambda: self.lab.ns_run(self.cloud, 'ss', '-Hlun', 'sport = :3478').stdout
                 .strip() or not self.coturn.alive(), 10, 'coturn to listen')
        assert self.coturn.alive(), self.coturn.output()[-2000:]

    def counters(self) -> dict:
        """Bytes the robot's router passed up so far: {'uplink': all, 'to_janus': media}, and
        'at', when they were read (time.monotonic(), the middle of the one read)."""
        started = time.monotonic()
        shown = json.loads(self.lab.ns_run(self.rnat, 'nft', '-j', 'list', 'counters', 'table',
                                           'inet', 'sfulab').stdout)
        got = {item['counter']['name']: item['counter']['bytes'] for item in shown['nftables']
               if 'counter' in item}
        got['at'] = (started + time.monotonic()) / 2
        return got

    def uplink_cap_mbit(self):
        """The rate (Mbit/s) the robot's uplink is capped at now (the wire's tbf), or None."""
        shown = json.loads(self.lab.ns_run(self.wire.ns, 'tc', '-j', 'qdisc', 'show', 'dev',
                                           self.wire.far_if).stdout)
        rates = [q['options']['rate'] for q in shown if q.get('kind') == 'tbf']
        return rates[0] * 8 / 1e6 if rates else None

    def close(self):
        """Stop nginx, Janus and the emulator, then the lab: its processes and namespaces (which
        also ends, by PID, whatever of the cloud's is left if a stop above failed)."""
        try:
            if self.edge is not None:
                self.edge.close()
            if self.janus is not None:
                self.janus.close()
            if self.link is not None:
                self.link.stop()
        finally:
            self.lab.close()
