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
import fcntl
import ipaddress
import os
import shutil
import signal
import subprocess
import threading
import time

DOCUMENTATION_NETS = tuple(ipaddress.ip_network(net) for net in
                           ('192.0.2.0/24', '198.51.100.0/24', '203.0.113.0/24'))
PREFIX = f'vbl{os.getpid()}'   # every namespace of this test process starts with it


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

    def __init__(self, command, log_path: str, env=None, stdout=None):
        self.command = list(map(str, command))
        self.log_path = log_path
        self._log = open(log_path, 'w+')
        self.proc = subprocess.Popen(self.command, stdout=stdout or self._log,
                                     stderr=self._log, env=env, start_new_session=True,
                                     text=True, bufsize=1)
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


class Lab:
    """Namespaces, links and processes of one test; everything goes away in :meth:`close`."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.names = []      # namespaces we made, in creation order
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

    def ns_run(self, ns: str, *command, **kwargs) -> subprocess.CompletedProcess:
        """Run a short command inside namespace ``ns``."""
        return run('ip', 'netns', 'exec', ns, *command, **kwargs)

    def link(self, ns_a: str, address_a: str, ns_b: str, address_b: str):
        """Join two namespaces with a veth pair; return the (interface in a, interface in b).

        The pair is created inside ``ns_a`` and one end moved to ``ns_b``: it never exists in
        the machine's own namespace.
        """
        _documentation(address_a), _documentation(address_b)
        self._veths += 1
        if_a, if_b = f'va{self._veths}', f'vb{self._veths}'
        self.ns_run(ns_a, 'ip', 'link', 'add', if_a, 'type', 'veth', 'peer', 'name', if_b)
        self.ns_run(ns_a, 'ip', 'link', 'set', if_b, 'netns', ns_b)
        for ns, interface, address in ((ns_a, if_a, address_a), (ns_b, if_b, address_b)):
            self.ns_run(ns, 'ip', 'addr', 'add', address, 'dev', interface)
            self.ns_run(ns, 'ip', 'link', 'set', interface, 'up')
        return if_a, if_b

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

    def shape(self, ns: str, device: str, rate: str, burst: str = '32kbit',
              latency: str = '100ms'):
        """Cap ``device``'s egress with a token bucket (tbf), e.g. rate='2mbit'."""
        self.ns_run(ns, 'tc', 'qdisc', 'replace', 'dev', device, 'root', 'tbf', 'rate', rate,
                    'burst', burst, 'latency', latency)

    def unshape(self, ns: str, device: str):
        self.ns_run(ns, 'tc', 'qdisc', 'del', 'dev', device, 'root', check=False)

    # --- processes ---------------------------------------------------------------------------

    def start(self, ns: str, name: str, *command, env=None, stdout=None) -> Process:
        """Start ``command`` inside ``ns`` (``ip netns exec`` execs it: the PID is its own)."""
        log = os.path.join(self.log_dir, f'{name}.log')
        process = Process(['ip', 'netns', 'exec', ns, *command], log,
                          env={**os.environ, **(env or {})}, stdout=stdout)
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
