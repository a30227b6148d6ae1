"""Private network labs for tests: named namespaces, veth links, NAT routers, processes in them.

A :class:`Lab` owns everything it makes: the namespaces (``ip netns add`` with names unique to
this test process), the veth pairs between them (created inside those namespaces, never in the
machine's own) and the processes it starts in them. :meth:`Lab.close` ends the processes by PID
and deletes the namespaces (which takes their veths with them); it runs from ``finally`` and from
``atexit``, so a failing or interrupted test leaves nothing behind. :func:`leftovers` tells
whether anything with this process's prefix survived.

Addresses are only from the RFC 5737 documentation ranges, checked on every call, and the
namespaces are joined only to each other: nothing here can reach the machine's real network.
"""

import atexit
import ctypes
import fcntl
import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

DOCUMENTATION_NETS = tuple(ipaddress.ip_network(net) for net in
                           ('192.0.2.0/24', '198.51.100.0/24', '203.0.113.0/24'))
PREFIX = f'vbl{os.getpid()}'   # every namespace of this test process starts with it
# veth numbers, unique in this process: a namespace that outlives a lab (one named by
# Lab.adopt) may still hold a veth of the last lab for a moment (the kernel tears a deleted
# namespace down in the background), so names are never reused
_VETH_NUMBERS = itertools.count(1)


def _documentation(address: str) -> str:
    """Refuse any address outside the RFC 5737 ranges (an interface address 'a.b.c.d/len')."""
    interface = ipaddress.ip_interface(address)
    if not any(interface.ip in net for net in DOCUMENTATION_NETS):
        raise ValueError(f'{address} is not in an RFC 5737 documentation range')
    return address


def missing_tools(*tools: str) -> list:
    """Name the executables (from ``tools``) that are not installed."""
    return [tool for tool in tools
            if not (shutil.which(tool) or shutil.which(tool, path='/usr/sbin:/sbin'))]


def run(*command, check=True, timeout=20, **kwargs) -> subprocess.CompletedProcess:
    """Run a short command, capturing its output; raise with that output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f'{" ".join(map(str, command))} failed ({result.returncode}):\n'
                           f'{result.stdout}{result.stderr}')
    return result


def namespaces() -> list:
    """Names of the named network namespaces on this machine."""
    return [line.split()[0] for line in run('ip', 'netns', 'list').stdout.splitlines() if line]


def leftovers() -> list:
    """Namespaces this test process made that still exist (should be none after close)."""
    return [name for name in namespaces() if name.startswith(PREFIX)]


class Process:
    """A program started inside a namespace, with its output in a log file."""

    def __init__(self, command, log_path: str, env=None, stdout=None, stdin=None):
        self.command = list(map(str, command))
        self.log_path = log_path
        self._log = open(log_path, 'w+')
        self.proc = subprocess.Popen(self.command, stdout=stdout or self._log,
                                     stderr=self._log, env=env, start_new_session=True,
                                     text=True, bufsize=1, stdin=stdin)
        self.pid = self.proc.pid

    def output(self) -> str:
        with open(self.log_path, errors='replace') as log:
            return log.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process (by PID) and wait; SIGKILL it if it does not go in time."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


class Wire:
    """A router namespace spliced into the link between an edge and the far side (see
    :meth:`Lab.wire`): what a link emulator needs to know to sit on it."""

    def __init__(self, ns, edge_if, far_if, edge_address, far_address, edge_peer, far_peer):
        self.ns = ns                       # the wire's own namespace
        self.edge_if, self.far_if = edge_if, far_if          # its interfaces, in ``ns``
        self.edge_address, self.far_address = edge_address, far_address   # 'a.b.c.d/len'
        self.edge_peer, self.far_peer = edge_peer, far_peer  # (namespace, interface) outside

    @property
    def edge_ip(self) -> str:
        return str(ipaddress.ip_interface(self.edge_address).ip)

    @property
    def far_ip(self) -> str:
        return str(ipaddress.ip_interface(self.far_address).ip)


class Lab:
    """Namespaces, links and processes of one test; everything goes away in :meth:`close`."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.names = []      # namespaces we made, in creation order
        self.adopted = []    # names we gave to namespaces we did not make (only the name goes)
        self.adopted_links = []   # (namespace, interface): our veth ends in adopted namespaces
        self.processes = []  # processes we started, in start order
        self.started = []    # every process ever started (for the "nothing left" check)
        self._veths = 0
        self._lock = threading.Lock()
        atexit.register(self.close)

    # --- namespaces and links --------------------------------------------------------------

    def namespace(self, role: str) -> str:
        """Create a namespace for ``role`` (e.g. 'robot') with loopback up; return its name."""
        name = f'{PREFIX}-{role}'
        run('ip', 'netns', 'add', name)
        self.names.append(name)
        self.ns_run(name, 'ip', 'link', 'set', 'lo', 'up')
        return name

    def adopt(self, role: str, pid: int = None) -> str:
        """Name the namespace of process ``pid`` (default: this one) so the lab can link to it.

        For a test that runs its own servers (rclpy, bridge_node) in the private namespace that
        scripts/test gave it. :meth:`close` removes only the name: nothing in that namespace is
        ended, and its end of a veth goes when the other end's namespace is deleted.
        """
        name = f'{PREFIX}-{role}'
        run('ip', 'netns', 'attach', name, str(pid or os.getpid()))
        self.adopted.append(name)
        return name

    def ns_run(self, ns: str, *command, **kwargs) -> subprocess.CompletedProcess:
        """Run a short command inside namespace ``ns``."""
        return run('ip', 'netns', 'exec', ns, *command, **kwargs)

    def link(self, ns_a: str, address_a: str, ns_b: str, address_b: str):
        """Join two namespaces with a veth pair; return the (interface in a, interface in b).

        The pair is created inside ``ns_a`` and one end moved to ``ns_b``: it never exists in
        the machine's own namespace.
        """
        _documentation(address_a), _documentation(address_b)
        if_a, if_b = self._veth(ns_a, ns_b)
        for ns, interface, address in ((ns_a, if_a, address_a), (ns_b, if_b, address_b)):
            self.ns_run(ns, 'ip', 'addr', 'add', address, 'dev', interface)
            self.ns_run(ns, 'ip', 'link', 'set', interface, 'up')
        return if_a, if_b

    def _veth(self, ns_a: str, ns_b: str):
        """A veth pair made inside ``ns_a`` with one end moved to ``ns_b``; no addresses."""
        self._veths += 1
        number = next(_VETH_NUMBERS)
        if_a, if_b = f'va{number}', f'vb{number}'
        self.ns_run(ns_a, 'ip', 'link', 'add', if_a, 'type', 'veth', 'peer', 'name', if_b)
        for ns, interface in ((ns_a, if_a), (ns_b, if_b)):
            if ns in self.adopted:
                self.adopted_links.append((ns, interface))
        self.ns_run(ns_a, 'ip', 'link', 'set', if_b, 'netns', ns_b)
        # No IPv6 link-local address (the lab is IPv4 only): one appears a second or two after
        # the link comes up, when its duplicate detection ends, and Chromium then aborts a page
        # load under way with ERR_NETWORK_CHANGED (1 bench run in 9 did).
        for ns, interface in ((ns_a, if_a), (ns_b, if_b)):
            self.ns_run(ns, 'ip', 'link', 'set', 'dev', interface, 'addrgenmode', 'none')
        return if_a, if_b

    def mac(self, ns: str, interface: str) -> str:
        shown = json.loads(self.ns_run(ns, 'ip', '-j', 'link', 'show', 'dev', interface).stdout)
        return shown[0]['address']

    def wire(self, edge_ns: str, edge_address: str, far_ns: str, far_address: str,
             role: str = 'wire') -> Wire:
        """Join ``edge_ns`` and ``far_ns`` as :meth:`link` would, through a router in between.

        The two ends see one subnet and each other's address as next hop, exactly as with
        :meth:`link` (so NAT rules, routes and gateways stay as they are); the router namespace
        in the middle forwards everything, with the edge's address routed to the edge and all
        else to the far side. Neighbour entries are static (no ARP through the splice). A link
        emulator (support.link_emulator) then sits in that middle namespace.
        """
        _documentation(edge_address), _documentation(far_address)
        middle = self.namespace(f'{role}{self._veths + 1}')
        edge_peer, edge_if = self._veth(edge_ns, middle)
        far_if, far_peer = self._veth(middle, far_ns)
        for key in ('ip_forward', 'conf.all.rp_filter', 'conf.default.rp_filter'):
            self.ns_run(middle, 'sysctl', '-q', '-w',
                        f'net.ipv4.{key}={1 if key == "ip_forward" else 0}')
        for ns, interface, address in ((edge_ns, edge_peer, edge_address),
                                       (far_ns, far_peer, far_address)):
            self.ns_run(ns, 'ip', 'addr', 'add', address, 'dev', interface)
        for ns, interface in ((edge_ns, edge_peer), (middle, edge_if), (middle, far_if),
                              (far_ns, far_peer)):
            self.ns_run(ns, 'ip', 'link', 'set', interface, 'up')
        edge_ip = str(ipaddress.ip_interface(edge_address).ip)
        far_ip = str(ipaddress.ip_interface(far_address).ip)
        for ns, interface, neighbour, mac in (
                (middle, edge_if, edge_ip, self.mac(edge_ns, edge_peer)),
                (middle, far_if, far_ip, self.mac(far_ns, far_peer)),
                (edge_ns, edge_peer, far_ip, self.mac(middle, edge_if)),
                (far_ns, far_peer, edge_ip, self.mac(middle, far_if))):
            self.ns_run(ns, 'ip', 'neigh', 'replace', neighbour, 'lladdr', mac, 'dev',
                        interface, 'nud', 'permanent')
        self.ns_run(middle, 'ip', 'route', 'add', f'{edge_ip}/32', 'dev', edge_if)
        self.ns_run(middle, 'ip', 'route', 'add', 'default', 'via', far_ip, 'dev', far_if,
                    'onlink')
        return Wire(middle, edge_if, far_if, edge_address, far_address,
                    (edge_ns, edge_peer), (far_ns, far_peer))

    def address(self, ns: str, address: str, device: str = 'lo'):
        """Add one more (documentation-range) address to a device, e.g. a public /32 on lo."""
        self.ns_run(ns, 'ip', 'addr', 'add', _documentation(address), 'dev', device)

    def route(self, ns: str, destination: str, via: str):
        """Add a route (destination 'default' or a documentation-range prefix)."""
        if destination != 'default':
            _documentation(destination)
        self.ns_run(ns, 'ip', 'route', 'add', destination, 'via',
                    str(ipaddress.ip_interface(_documentation(via)).ip))

    def nat_router(self, ns: str, lan: str, wan: str):
        """Make ``ns`` a home/cellular router: masquerade out of ``wan``, nothing new inbound."""
        self.ns_run(ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1')
        ruleset = f"""
table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" masquerade
    }}
}}
table inet filter {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{lan}" oifname "{wan}" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{wan}" ct state new drop
    }}
}}
"""
        self.ns_run(ns, 'nft', '-f', '-', input=ruleset)

    def port_forward(self, ns: str, wan: str, port: int, to: str):
        """On a :meth:`nat_router`, pass new TCP connections to ``port`` on ``wan`` to ``to``
        (the LAN host's address): a router's port forward, e.g. standing in for a tunnel."""
        ruleset = f"""
table ip nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{wan}" tcp dport {int(port)} dnat to {_documentation(to)}
    }}
}}
table inet filter {{
    chain forward {{
        ct status dnat accept
    }}
}}
"""
        self.ns_run(ns, 'nft', '-f', '-', input=ruleset)

    def shape(self, ns: str, device: str, rate: str, burst: str = '32kbit',
              latency: str = '100ms'):
        """Cap ``device``'s egress with a token bucket (tbf), e.g. rate='2mbit'."""
        self.ns_run(ns, 'tc', 'qdisc', 'replace', 'dev', device, 'root', 'tbf', 'rate', rate,
                    'burst', burst, 'latency', latency)

    def unshape(self, ns: str, device: str):
        self.ns_run(ns, 'tc', 'qdisc', 'del', 'dev', device, 'root', check=False)

    # --- processes ---------------------------------------------------------------------------

    def start(self, ns: str, name: str, *command, env=None, stdout=None, stdin=None) -> Process:
        """Start ``command`` inside ``ns`` (``ip netns exec`` execs it: the PID is its own)."""
        log = os.path.join(self.log_dir, f'{name}.log')
        process = Process(['ip', 'netns', 'exec', ns, *command], log,
                          env={**os.environ, **(env or {})}, stdout=stdout, stdin=stdin)
        with self._lock:
            self.processes.append(process)
            self.started.append(process)
        return process

    def still_running(self) -> list:
        """Processes we started that are still alive (should be none after close)."""
        return [process.command for process in self.started if process.alive()]

    def close(self):
        """End every process we started (by PID, newest first) and delete our namespaces."""
        with self._lock:
            processes, self.processes = self.processes, []
            names, self.names = self.names, []
        for process in reversed(processes):
            process.stop(signal.SIGTERM, timeout=10)
        with self._lock:
            adopted_links, self.adopted_links = self.adopted_links, []
        for ns, interface in adopted_links:   # at once, not when the kernel gets round to it
            run('ip', 'netns', 'exec', ns, 'ip', 'link', 'del', interface, check=False)
        for name in reversed(names):
            # A process we did not start could pin nothing here: `ip netns pids` kills stragglers
            # that belong to our namespaces only (children of what we started, e.g. ssh).
            pids = run('ip', 'netns', 'pids', name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            deadline = time.monotonic() + 5
            while run('ip', 'netns', 'pids', name, check=False).stdout.split() \
                    and time.monotonic() < deadline:
                threading.Event().wait(0.05)   # a poll while the kernel reaps them
            run('ip', 'netns', 'del', name, check=False)
        with self._lock:
            adopted, self.adopted = self.adopted, []
        for name in adopted:
            run('ip', 'netns', 'del', name, check=False)   # only the name: see adopt()


# --- sockets in a lab namespace ----------------------------------------------------------------

_CLONE_NEWNET = 0x40000000


def socket_in(ns: str, family=socket.AF_INET, kind=socket.SOCK_DGRAM) -> socket.socket:
    """A socket of namespace ``ns``, made by a short-lived thread that joins it (setns).

    A socket belongs to the namespace it was made in, so this process can send and receive in
    several namespaces and time both ends with one clock.
    """
    return in_namespace(ns, lambda: socket.socket(family, kind))


def in_namespace(ns: str, make):
    """Call ``make()`` on a thread that has joined network namespace ``ns``; return its result.

    Everything ``make`` creates there (sockets, an event loop's sockets) stays in ``ns``; the
    calling thread's namespace is not changed.
    """
    outcome = {}

    def enter_and_make():
        try:
            enter_namespace(ns)
            outcome['value'] = make()
        except BaseException as error:   # handed to the caller
            outcome['error'] = error

    thread = threading.Thread(target=enter_and_make)
    thread.start()
    thread.join()
    if 'error' in outcome:
        raise outcome['error']
    return outcome['value']


def enter_namespace(ns: str):
    """Move the calling thread (only) into network namespace ``ns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f'/run/netns/{ns}', os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f'setns({ns}): {os.strerror(error)}')
    finally:
        os.close(fd)


# --- a ROS domain of our own -------------------------------------------------------------------


def take_ros_domain() -> tuple:
    """Pick a ROS_DOMAIN_ID no other run uses (as scripts/ros-domain.sh does); return (id, lock).

    Keep the returned lock file open for as long as the domain is in use.
    """
    used = set()
    for entry in os.listdir('/dev/shm'):
        if entry.startswith('fastdds_port'):
            digits = ''.join(c for c in entry[len('fastdds_port'):] if c.isdigit())
            if digits and int(digits) >= 7400:
                used.add((int(digits) - 7400) // 250)
    mine = os.environ.get('ROS_DOMAIN_ID')
    for candidate in list(range(101, 200)):
        if candidate in used or str(candidate) == mine:
            continue
        lock = open(f'/tmp/video_bridge-ros-domain-{candidate}.lock', 'w')
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        return candidate, lock
    raise RuntimeError('no free ROS_DOMAIN_ID')
