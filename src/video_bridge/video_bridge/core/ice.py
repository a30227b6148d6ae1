"""
ICE configuration: which STUN/TURN servers a browser and the bridge use, with what credentials.

Pure (no sockets, no clock reads): the edge passes ``now``. Two ways to authenticate to TURN:

* static credentials (``turn_username`` + the password from ``turn_password_file``), the same
  for every client;
* the TURN REST API convention that coturn implements with ``use-auth-secret``: the bridge and
  the TURN server share a secret, and each client gets a short-lived credential minted from it,
  ``username = "<expiry unix time>:<name>"`` and
  ``credential = base64(HMAC-SHA1(secret, username))``. A leaked credential expires by itself and
  the secret never leaves the robot.

URLs follow RFC 7064 / 7065: ``stun:host[:port]``, ``turn:host[:port][?transport=udp|tcp]`` and
``turns:host[:port][?transport=tcp]`` (TURN over TLS, e.g. on 443 for networks that only let
HTTPS out).
"""

import base64
from dataclasses import dataclass
import hashlib
import hmac
import ipaddress
import re
from typing import Iterable, List, Tuple

URL_PATTERN = re.compile(
    r'^(?P<scheme>stun|stuns|turn|turns):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)'
    r'(?::(?P<port>\d{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?$')
MAX_TTL = 7 * 24 * 3600
MAX_NAME = 64
NAME_PATTERN = re.compile(r'^[A-Za-z0-9_.@-]{1,64}$')


@dataclass(frozen=True)
class IceServer:
    """One entry of RTCConfiguration.iceServers."""

    urls: Tuple[str, ...]
    username: str = ''
    credential: str = ''

    def as_dict(self) -> dict:
        """Return the browser's RTCIceServer dictionary (credentials only where there are some)."""
        entry = {'urls': list(self.urls)}
        if self.username or self.credential:
            entry['username'] = self.username
            entry['credential'] = self.credential
        return entry


def check_url(url: str) -> str:
    """Return ``url`` if it is a STUN/TURN URL this bridge hands out; ValueError otherwise."""
    match = URL_PATTERN.match(url.strip())
    if not match:
        raise ValueError(f'not a STUN/TURN URL (stun:host[:port], turn:host[:port]'
                         f'[?transport=udp|tcp], turns:host[:port]): {url!r}')
    port = match.group('port')
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f'port out of range in {url!r}')
    if match.group('scheme') in ('stun', 'stuns') and match.group('transport'):
        raise ValueError(f'a STUN URL takes no transport: {url!r}')
    if match.group('scheme') == 'turns' and match.group('transport') == 'udp':
        raise ValueError(f'TURN over TLS runs on TCP: {url!r}')
    return url.strip()


def is_turn(url: str) -> bool:
    """Tell whether ``url`` names a TURN (relay) server rather than STUN."""
    return url.startswith(('turn:', 'turns:'))


def rest_credential(secret: str, name: str, now: float, ttl: float) -> Tuple[str, str]:
    """
    Mint a TURN REST API credential valid until ``now + ttl``: ``(username, credential)``.

    coturn with ``use-auth-secret`` and ``static-auth-secret=<secret>`` accepts it until then.
    """
    if not secret:
        raise ValueError('the TURN shared secret is empty')
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f'turn_credential_ttl must be within 1..{MAX_TTL} s, got {ttl!r}')
    if not NAME_PATTERN.match(name):
        raise ValueError(f'TURN user name must be 1..{MAX_NAME} of A-Z a-z 0-9 _ . @ -: {name!r}')
    username = f'{int(now + ttl)}:{name}'
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode('ascii')


def rest_credential_valid(secret: str, username: str, credential: str, now: float) -> bool:
    """Check a REST API credential as coturn does: right HMAC and not yet expired."""
    expiry, _, _ = username.partition(':')
    if not expiry.isdigit() or int(expiry) < now:
        return False
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(base64.b64encode(digest).decode('ascii'), credential)


@dataclass(frozen=True)
class IceSettings:
    """The bridge's ICE parameters, validated once at startup."""

    stun_urls: Tuple[str, ...] = ()
    turn_urls: Tuple[str, ...] = ()
    turn_username: str = ''        # static credentials ...
    turn_password: str = ''        # read from turn_password_file, never a parameter
    turn_secret: str = ''          # ... or a REST API shared secret (wins when set)
    turn_credential_ttl: float = 3600.0
    host_addresses: Tuple[str, ...] = ()  # allowed local addresses/networks; empty: all

    def __post_init__(self):
        """Refuse URLs a browser would reject, and TURN without any way to authenticate."""
        for url in self.stun_urls:
            if is_turn(check_url(url)):
                raise ValueError(f'ice_servers lists STUN servers; put {url!r} in turn_urls')
        for url in self.turn_urls:
            if not is_turn(check_url(url)):
                raise ValueError(f'turn_urls lists TURN servers; {url!r} is STUN')
        if self.turn_urls and not self.turn_secret and not (
                self.turn_username and self.turn_password):
            raise ValueError('turn_urls needs turn_secret_file, or turn_username and '
                             'turn_password_file')
        if not 0 < self.turn_credential_ttl <= MAX_TTL:
            raise ValueError(f'turn_credential_ttl must be within 1..{MAX_TTL} s')
        for entry in self.host_addresses:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry

    def __repr__(self) -> str:
        """Describe the settings without secrets."""
        auth = 'secret' if self.turn_secret else 'static' if self.turn_username else 'none'
        return (f'IceSettings(stun={list(self.stun_urls)}, turn={list(self.turn_urls)}, '
                f'auth={auth}, host_addresses={list(self.host_addresses)})')

    def servers(self, name: str, now: float) -> List[IceServer]:
        """Return the ICE servers for one client; REST credentials are minted per call."""
        servers = []
        if self.stun_urls:
            servers.append(IceServer(tuple(self.stun_urls)))
        if self.turn_urls:
            if self.turn_secret:
                username, credential = rest_credential(self.turn_secret, name, now,
                                                       self.turn_credential_ttl)
            else:
                username, credential = self.turn_username, self.turn_password
            servers.append(IceServer(tuple(self.turn_urls), username, credential))
        return servers

    def host_address_allowed(self, address: str) -> bool:
        """Tell whether the bridge may offer a host candidate on ``address``."""
        if not self.host_addresses:
            return True
        try:
            ip = ipaddress.ip_address(address.split('%')[0])
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(entry, strict=False)
                   for entry in self.host_addresses)


def split_urls(values: Iterable[str]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """Split one list of URLs into (STUN, TURN), dropping blanks (a YAML list of '')."""
    stun, turn = [], []
    for value in values:
        value = value.strip()
        if value:
            (turn if is_turn(value) else stun).append(value)
    return tuple(stun), tuple(turn)


def filter_candidates(sdp: str, settings: IceSettings) -> str:
    """Drop ``a=candidate`` host lines of ``sdp`` whose address the settings do not allow."""
    if not settings.host_addresses:
        return sdp
    kept = []
    for line in sdp.split('\r\n'):
        if line.startswith('a=candidate:'):
            fields = line.split()
            if len(fields) > 7 and fields[7] == 'host' \
                    and not settings.host_address_allowed(fields[4]):
                continue
        kept.append(line)
    return '\r\n'.join(kept)


def share_bundle_candidates(sdp: str) -> str:
    """
    Repeat the candidates of an SDP's first BUNDLE section in its other bundled sections.

    A bundle has one transport, and browsers list its candidates once, under the first section
    (JSEP: under the BUNDLE-tag). aiortc with ``max-bundle`` takes the shared transport's remote
    candidates from the last bundled section instead, so an answer that carries its candidates
    (rather than trickling them) would connect through none of them. Sections that already
    list candidates are left as they are.
    """
    newline = '\r\n' if '\r\n' in sdp else '\n'
    lines = sdp.split(newline)
    group = next((line.split()[1:] for line in lines if line.startswith('a=group:BUNDLE ')), [])
    starts = [i for i, line in enumerate(lines) if line.startswith('m=')]
    if len(group) < 2 or not starts:
        return sdp
    sections = [lines[start:end] for start, end in zip(starts, starts[1:] + [len(lines)])]
    if sections[-1] and sections[-1][-1] == '':   # the terminating newline stays at the end
        sections[-1] = sections[-1][:-1]
        tail = ['']
    else:
        tail = []

    def mid(section):
        return next((line[len('a=mid:'):] for line in section if line.startswith('a=mid:')),
                    None)

    by_mid = {mid(section): section for section in sections}
    first = by_mid.get(group[0])
    if first is None:
        return sdp
    shared = [line for line in first
              if line.startswith('a=candidate:') or line == 'a=end-of-candidates']
    for section in sections:
        if section is not first and mid(section) in group[1:] and \
                not any(line.startswith('a=candidate:') for line in section):
            section[:] = [line for line in section if line != 'a=end-of-candidates'] + shared
    return newline.join(lines[:starts[0]] + [line for s in sections for line in s] + tail)


# -- what a page may make the bridge do --------------------------------------------------------

# The digests aiortc checks a DTLS certificate against (RFC 8122 names)
FINGERPRINT_ALGORITHMS = ('sha-256', 'sha-384', 'sha-512')


def answer_problem(sdp: str):
    """
    Say what an SDP answer lacks for the bridge to connect it, or None if it is complete.

    Every media section needs ICE credentials and a DTLS fingerprint the bridge can check (in
    the section or at session level). aiortc takes an answer without them and fails later in
    a task of its own, where nobody hears of it; the page gets told now instead.
    """
    lines = sdp.replace('\r\n', '\n').split('\n')
    starts = [i for i, line in enumerate(lines) if line.startswith('m=')]
    if not starts:
        return 'it has no media section'
    session = lines[:starts[0]]
    sections = [lines[start:end] for start, end in zip(starts, starts[1:] + [len(lines)])]
    needs = (('a=ice-ufrag:', 'an ICE user fragment (a=ice-ufrag)'),
             ('a=ice-pwd:', 'an ICE password (a=ice-pwd)'))
    for section in sections:
        if section[0].split(' ', 2)[1:2] == ['0']:
            continue   # a rejected section (port 0) carries nothing
        for prefix, what in needs:
            if not any(line.startswith(prefix) for line in session + section):
                return f'a media section has no {what}'
        fingerprints = [line[len('a=fingerprint:'):].split(' ', 1)[0].lower()
                        for line in session + section if line.startswith('a=fingerprint:')]
        if not any(name in FINGERPRINT_ALGORITHMS for name in fingerprints):
            return ('a media section has no DTLS fingerprint (a=fingerprint: with '
                    f'{", ".join(FINGERPRINT_ALGORITHMS)})')
    return None


def offered_addresses(sdp: str) -> Tuple[str, ...]:
    """Return the addresses of the ``a=candidate`` lines of an SDP (the bridge's offer)."""
    addresses = []
    for line in sdp.replace('\r\n', '\n').split('\n'):
        fields = line.split()
        if line.startswith('a=candidate:') and len(fields) > 5 and fields[4] not in addresses:
            addresses.append(fields[4])
    return tuple(addresses)


def remote_candidate_problem(host: str, port: int, transport: str,
                             offered: Iterable[str]):
    """
    Say why the bridge will not send to a page's candidate, or None if it may.

    A remote candidate makes the bridge send STUN checks to its address. Only addresses a
    peer can really have on the other end of the bridge's own candidates (``offered``) are
    taken: a unicast IP address (never a name: aioice would resolve it, ``.local`` through
    mDNS), of a family the bridge offered, on loopback or link-local only if the bridge
    offered such an address itself, over UDP (all aioice checks).
    """
    if transport.lower() != 'udp':
        return 'only UDP candidates are used'
    if not 0 < port < 65536:
        return f'port {port} is not a port to send to'
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host.lower().rstrip('.').endswith('.local'):
            return 'mDNS names (.local) are not resolved; the page is found by its checks'
        return 'names are not resolved; a candidate needs an IP address'
    mine = []
    for address in offered:
        try:
            mine.append(ipaddress.ip_address(address.split('%')[0]))
        except ValueError:
            continue
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return 'IPv4-mapped IPv6 addresses are not used'
    if ip.is_loopback:
        if not any(m.is_loopback for m in mine):
            return 'loopback: the bridge offered no loopback address'
    elif ip.is_link_local:
        if not any(m.is_link_local and m.version == ip.version for m in mine):
            return 'link-local: the bridge offered no link-local address'
    elif ip.is_unspecified or ip.is_multicast or ip.is_reserved or \
            ip == ipaddress.IPv4Address('255.255.255.255'):
        return 'not a unicast address'
    if not any(m.version == ip.version for m in mine):
        return f'the bridge offered no IPv{ip.version} candidate'
    return None


def filter_remote_candidates(sdp: str, offered: Iterable[str]) -> Tuple[str, List[str], int]:
    """
    Drop the candidates of a page's SDP the bridge will not send to.

    Return the SDP, why each dropped line was dropped, and how many distinct transport
    addresses the kept lines name (a browser may list one under every bundled section).
    """
    offered = tuple(offered)
    newline = '\r\n' if '\r\n' in sdp else '\n'
    kept, refused, addresses = [], [], set()
    for line in sdp.split(newline):
        if line.startswith('a=candidate:'):
            fields = line.split()
            try:
                host, port, transport = fields[4], int(fields[5]), fields[2]
            except (IndexError, ValueError):
                refused.append('not an ICE candidate')
                continue
            problem = remote_candidate_problem(host, port, transport, offered)
            if problem is not None:
                refused.append(f'{host}: {problem}')
                continue
            addresses.add((host, port))
        kept.append(line)
    return newline.join(kept), refused, len(addresses)
