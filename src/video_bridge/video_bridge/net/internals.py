"""
Every reach into a library's private names, in one place.

The bridge needs a few things aiortc, aioice, aiohttp and asyncio do not offer publicly (each
function below says which and why). Everything else in the package uses only these functions,
so an upgrade that removes or renames one of those names breaks here and nowhere else:
test/net/test_internals.py uses each function on a real object of the installed library and
fails loudly, and also checks that no other module names them.

Checked against (``CHECKED``): aiortc 1.16.0, aioice 0.13.0 (the locked versions, also used by
the lowest-versions pass), aiohttp 3.14.5 and 3.8.6 (locked and lowest), CPython 3.11 to 3.13's
asyncio. Every function is guarded: when the name is missing it returns None or False (the
feature it serves is off and the caller says so), it never raises AttributeError.
"""

import sys
from typing import Any, Callable, Iterable, List, Optional

CHECKED = {
    'aiortc': ('1.16.0',),
    'aioice': ('0.13.0',),
    'aiohttp': ('3.8.6', '3.14.5'),
    'python': ((3, 11), (3, 12), (3, 13)),
}

# Private names reached, for the test that no other module names them. Name-mangled ones are
# spelt as Python stores them (``_Class__name``).
REACHED = (
    '_RTCRtpSender__encoder', '_RTCRtpSender__rtp_timestamp', '_RTCRtpSender__rtp_history',
    '_handle_rtcp_packet', '_send_keyframe', '_ssrc',
    '_receive_data_chunk', '_advertised_rwnd',
    '_connection', '_local_candidates', '_protocols', '_nominated',
    '_TurnTransport__inner_protocol',
    '_ssl_protocol', 'sslproto',
    '_reader',
)

_MISSING = object()


# --- asyncio ----------------------------------------------------------------------------------

def bound_tls_read_buffer(size: int) -> bool:
    """
    Make asyncio's TLS connections preallocate ``size`` bytes for reads (process-wide).

    ``asyncio.sslproto.SSLProtocol.max_size`` is a class attribute its ``__init__`` sizes every
    TLS connection's read buffer with (256 KB, idle or not; ``get_buffer`` and the plaintext
    reads are bounded by it too); asyncio has no setting for it. Only on the Pythons in
    ``CHECKED['python']`` (whose sslproto.py was read for this): elsewhere False, nothing changed.
    """
    from asyncio import sslproto
    protocol = getattr(sslproto, 'SSLProtocol', None)
    if sys.version_info[:2] not in CHECKED['python'] or \
            not isinstance(getattr(protocol, 'max_size', None), int):
        return False
    protocol.max_size = size
    return True


def tls_inner_transport(transport) -> Optional[Any]:
    """
    Return the TCP transport under an asyncio TLS transport (None: not a TLS one).

    asyncio's TLS transport reports only its own write buffer; bytes OpenSSL already encrypted
    wait in the TCP transport under it (``_SSLProtocolTransport._ssl_protocol._transport``),
    which is not exposed. The send backlog of a TURN-over-TLS peer needs both.
    """
    return getattr(getattr(transport, '_ssl_protocol', None), '_transport', None)


# --- aiohttp ------------------------------------------------------------------------------------

def websocket_reader(ws) -> Optional[Any]:
    """
    Return a prepared aiohttp WebSocketResponse's message queue (its ``read()``), or None.

    To read on to the client's close frame after our close (aiohttp 3.8's ``close()`` gives
    up after one message; see net/websocket.py) there is no public way on 3.8: ``receive()``
    refuses once closing. ``WebSocketResponse._reader`` on 3.8.6 and 3.14.5.
    """
    reader = getattr(ws, '_reader', None)
    return reader if callable(getattr(reader, 'read', None)) else None


# --- aiortc: the RTP sender ------------------------------------------------------------------

def install_sender_encoder(sender, encoder) -> bool:
    """
    Put ``encoder`` into an RTCRtpSender's encoder slot; False if this aiortc has none.

    aiortc picks its own encoder per codec and has no way to hand it payloads already cut into
    RTP packets; the slot (``RTCRtpSender.__encoder``, used when the track yields frames, asked
    for ``pack(packet)``) takes a pass-through one, so one packetisation serves every peer.
    """
    if not hasattr(sender, '_RTCRtpSender__encoder'):
        return False
    sender._RTCRtpSender__encoder = encoder
    return True


def sender_rtp_timestamp(sender) -> Optional[int]:
    """
    Return the RTP timestamp of the last packet an RTCRtpSender sent (None: not readable).

    aiortc adds a random origin to every timestamp and keeps it private; the bridge learns it
    from the last timestamp sent, to tell the page which frame a displayed RTP timestamp is.
    """
    value = getattr(sender, '_RTCRtpSender__rtp_timestamp', None)
    return value if isinstance(value, int) else None


def sender_ssrc(sender) -> Optional[int]:
    """Return an RTCRtpSender's SSRC (aiortc keeps it in ``_ssrc``; RTCP reports name it)."""
    value = getattr(sender, '_ssrc', None)
    return value if isinstance(value, int) else None


def sender_resent(sender, lost: Iterable[int]) -> int:
    """
    Count the sequence numbers of a NACK that the sender can still retransmit.

    aiortc answers a NACK from its private RTP history (``RTCRtpSender.__rtp_history``, keyed
    by sequence number modulo ``aiortc.rtp.RTP_HISTORY_SIZE``) and counts nothing; the bridge
    reports how many it could resend.
    """
    from aiortc.rtp import RTP_HISTORY_SIZE
    history = getattr(sender, '_RTCRtpSender__rtp_history', None)
    if not isinstance(history, dict):
        return 0
    return sum(1 for seq in lost
               if getattr(history.get(seq % RTP_HISTORY_SIZE), 'sequence_number', None) == seq)


def hook_sender(sender, on_rtcp: Callable[[Any], None],
                request_keyframe: Callable[[], None]) -> bool:
    """
    See every RTCP packet an RTCRtpSender gets, and take its keyframe requests.

    aiortc hands REMB, receiver reports and PLI/FIR only to its own encoders: the sender's
    ``_handle_rtcp_packet`` coroutine (wrapped: ``on_rtcp(packet)`` first, then aiortc's) and
    ``_send_keyframe`` (replaced: a keyframe of the shared encoder instead). False (nothing
    changed) when this aiortc has neither.
    """
    original = getattr(sender, '_handle_rtcp_packet', None)
    if not callable(original) or not callable(getattr(sender, '_send_keyframe', None)):
        return False

    async def handle_rtcp(packet):
        on_rtcp(packet)
        await original(packet)

    sender._handle_rtcp_packet = handle_rtcp
    sender._send_keyframe = request_keyframe
    return True


# --- aiortc: SCTP (the data channel) ---------------------------------------------------------

def watch_sctp_held(pc, on_held: Callable[[int], None]) -> bool:
    """
    Call ``on_held(bytes)`` after every data chunk aiortc's SCTP transport of ``pc`` receives.

    aiortc keeps every chunk until its message is whole, with no limit; what it holds is its
    initial receive window minus ``RTCSctpTransport._advertised_rwnd``. The chunk handler is
    ``_receive_data_chunk`` (wrapped). False when this aiortc has neither.
    """
    transport = getattr(pc, 'sctp', None)
    receive = getattr(transport, '_receive_data_chunk', None)
    window = getattr(transport, '_advertised_rwnd', None)
    if not callable(receive) or not isinstance(window, int):
        return False

    async def receive_data_chunk(chunk):
        await receive(chunk)
        on_held(window - transport._advertised_rwnd)

    transport._receive_data_chunk = receive_data_chunk
    return True


class _EstimatorOnFirstUse:
    """Stands in for aiortc's RemoteBitrateEstimator until a receiver first uses it."""

    __slots__ = ('_estimator',)
    make: Optional[Callable[[], Any]] = None   # the real class, set by lazy_receive_estimators

    def __init__(self):
        self._estimator = None

    def __getattr__(self, name):
        if self._estimator is None:
            self._estimator = type(self).make()
        return getattr(self._estimator, name)


def lazy_receive_estimators() -> bool:
    """
    Have aiortc's video receivers build their bandwidth estimator when they first use it.

    ``RTCRtpReceiver.__init__`` builds a ``RemoteBitrateEstimator`` for every video
    transceiver, send-only ones too: a rate counter of 1000 one-millisecond buckets, about 1000
    of the 1300 objects the garbage collector tracks per peer, and 0.3 ms of the loop. The
    bridge only sends video, so its receivers never get a packet; under a flood of WebRTC
    starts those objects were what drove full collections (tens of ms each, every other thread
    stopped). The module name ``aiortc.rtcrtpreceiver.RemoteBitrateEstimator`` (what
    ``__init__`` calls) is replaced, process-wide, by a stand-in that builds the real one on
    first use. Only on the aiortc versions in ``CHECKED``: elsewhere False, nothing changed.
    """
    try:
        from aiortc import rtcrtpreceiver
    except ImportError:
        return False
    current = getattr(rtcrtpreceiver, 'RemoteBitrateEstimator', None)
    if current is _EstimatorOnFirstUse:
        return True
    if not _aiortc_checked() or not isinstance(current, type):
        return False
    _EstimatorOnFirstUse.make = current
    rtcrtpreceiver.RemoteBitrateEstimator = _EstimatorOnFirstUse
    return True


# --- aiortc / aioice: ICE ----------------------------------------------------------------------

def ice_connection(ice_object) -> Optional[Any]:
    """
    Return the aioice Connection of an RTCIceGatherer or RTCIceTransport (None: not found).

    aiortc wraps aioice and shows neither its sockets nor its nominated pair; both need the
    Connection (``_connection`` on the gatherer and on the transport).
    """
    return getattr(ice_object, '_connection', None)


def local_candidates(connection) -> Optional[List[Any]]:
    """
    Return the aioice Connection's own list of local candidates (edit it in place), or None.

    aioice offers and pairs every candidate it gathered; the bridge drops host candidates of
    addresses it must not offer (``Connection._local_candidates``).
    """
    value = getattr(connection, '_local_candidates', None)
    return value if isinstance(value, list) else None


def stun_protocols(connection) -> Optional[List[Any]]:
    """
    Return the aioice Connection's own list of its sockets' protocols (edit it in place).

    aioice checks connectivity from every socket it gathered on, offered or not; the bridge
    removes (and closes) the ones of addresses it must not use (``Connection._protocols``).
    """
    value = getattr(connection, '_protocols', None)
    return value if isinstance(value, list) else None


def nominated_pair(connection, component: int = 1) -> Optional[Any]:
    """Return the aioice Connection's nominated candidate pair (``_nominated``), or None."""
    nominated = getattr(connection, '_nominated', None)
    return nominated.get(component) if isinstance(nominated, dict) else None


def turn_server_transport(transport) -> Optional[Any]:
    """
    Return the asyncio transport to the TURN server under an aioice relay transport, or None.

    A relayed pair's transport is aioice's TurnTransport; what the uplink holds back waits in
    its link to the server (``TurnTransport.__inner_protocol.transport``), not exposed.
    """
    inner = getattr(transport, '_TurnTransport__inner_protocol', None)
    return None if inner is None else getattr(inner, 'transport', None)


# --- aiortc: the playout-delay RTP header extension (video) ---------------------------------
#
# Chromium holds every received video frame for a playout delay (its jitter buffer target and
# a render time it smooths towards) unless the sender says otherwise with this extension; at
# min = max = 0 it decodes and shows each frame as soon as it is complete (its low-latency
# renderer). aiortc 1.16 neither offers the extension nor writes it. Two reaches, both only
# on the aiortc versions in CHECKED (read for this): the offer's SDP text gets the extension in
# its video sections (aiortc builds its offer's extensions from a process-wide table, and the
# bridge changes no library state other peers share), and each video sender's
# header-extension map (``RTCRtpSender.__rtp_header_extensions_map``, which aiortc asks for
# every packet's extensions when serialising it, retransmissions included) is replaced by one
# that adds the extension once the answer took it.

PLAYOUT_DELAY_URI = 'http://www.webrtc.org/experiments/rtp-hdrext/playout-delay'
PLAYOUT_DELAY_REACHED = ('_RTCRtpSender__rtp_header_extensions_map', '_RTCRtpSender__rtt')
REACHED = REACHED + PLAYOUT_DELAY_REACHED
_EXTMAP = 'a=extmap:'
_ONE_BYTE_IDS = range(1, 15)        # RFC 8285 one-byte header ids (aiortc writes that form)
_playout_map_class = None


def playout_delay_value(min_ms: int, max_ms: int) -> bytes:
    """Return the extension's 3 bytes: 12-bit minimum and maximum delay, in units of 10 ms."""
    low, high = min_ms // 10, max_ms // 10
    if not 0 <= low <= high <= 0xFFF:
        raise ValueError(f'playout delay {min_ms}..{max_ms} ms is outside 0..40950 ms')
    return bytes(((low >> 4) & 0xFF, ((low & 0xF) << 4) | (high >> 8), high & 0xFF))


def _sdp_sections(sdp: str) -> List[List[str]]:
    """Cut the SDP's lines into its session part and one part per m= section."""
    sections: List[List[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith('m='):
            sections.append([])
        sections[-1].append(line)
    return sections


def _extmap(line: str) -> Optional[tuple]:
    """``(id, uri)`` of an ``a=extmap:`` line (a direction after the id is dropped), or None."""
    if not line.startswith(_EXTMAP):
        return None
    parts = line[len(_EXTMAP):].split()
    head = parts[0].split('/')[0] if parts else ''
    return (int(head), parts[1]) if len(parts) >= 2 and head.isdigit() else None


def sdp_extension_ids(sdp: str, uri: str) -> dict:
    """Map each m= section's mid to the id the SDP gives ``uri`` there (absent: not in it)."""
    found = {}
    for section in _sdp_sections(sdp)[1:]:
        mid = next((line[6:].strip() for line in section if line.startswith('a=mid:')), None)
        for line in section:
            extension = _extmap(line)
            if extension is not None and extension[1] == uri:
                found[mid] = extension[0]
    return found


def _aiortc_checked() -> bool:
    try:
        import aiortc
    except ImportError:
        return False
    return getattr(aiortc, '__version__', None) in CHECKED['aiortc']


def _playout_map(value: bytes):
    """Make an aiortc HeaderExtensionsMap that adds playout-delay once it has an id."""
    global _playout_map_class
    if _playout_map_class is None:
        from aiortc.rtp import HeaderExtensionsMap, pack_header_extensions, \
            unpack_header_extensions

        class PlayoutDelayMap(HeaderExtensionsMap):
            """aiortc's map for a sender's packets, plus the playout-delay extension."""

            def __init__(self, value: bytes):
                super().__init__()
                self.playout_id: Optional[int] = None      # set once the answer took it
                self.playout_value = value                 # may change between packets

            def set(self, values):  # noqa: A003 (aiortc's HeaderExtensionsMap API)
                profile, data = super().set(values)
                if self.playout_id is None:
                    return profile, data
                return pack_header_extensions(unpack_header_extensions(profile, data)
                                              + [(self.playout_id, self.playout_value)])

        _playout_map_class = PlayoutDelayMap
    return _playout_map_class(value)


def offer_playout_delay(pc, sdp: str, value: bytes) -> Optional[str]:
    """
    Return an offer ``sdp`` of ``pc`` that offers playout-delay on its video, or None.

    The extension goes into every video section of the SDP text (with an id no section of it
    and no extension aiortc knows uses: with BUNDLE the ids are one space), and every video
    sender of ``pc`` gets a header-extension map that writes ``value`` into all its packets
    once :func:`answer_playout_delay` found the extension in the answer. Audio is left alone.
    None (nothing changed) on an aiortc not in ``CHECKED`` or without the map.
    """
    if not _aiortc_checked():
        return None
    from aiortc.codecs import HEADER_EXTENSIONS
    from aiortc.rtp import HeaderExtensionsMap
    senders = [t.sender for t in pc.getTransceivers() if t.kind == 'video']
    if not senders or not all(isinstance(getattr(s, '_RTCRtpSender__rtp_header_extensions_map',
                                                 None), HeaderExtensionsMap) for s in senders):
        return None
    used = {e.id for extensions in HEADER_EXTENSIONS.values() for e in extensions}
    used |= {extension[0] for extension in map(_extmap, sdp.splitlines()) if extension}
    free = [i for i in _ONE_BYTE_IDS if i not in used]
    if not free:
        return None
    line = f'{_EXTMAP}{free[0]} {PLAYOUT_DELAY_URI}'
    sections = _sdp_sections(sdp)
    for section in sections[1:]:
        if section[0].startswith('m=video'):
            at = max((i for i, text in enumerate(section) if text.startswith(_EXTMAP)),
                     default=0)
            section.insert(at + 1, line)
    for sender in senders:
        sender._RTCRtpSender__rtp_header_extensions_map = _playout_map(value)
    return '\r\n'.join(text for section in sections for text in section) + '\r\n'


def answer_playout_delay(pc) -> bool:
    """
    After ``pc`` took its answer: start writing playout-delay where the answer accepted it.

    True when at least one video sender now writes it. The answer's id is used (it must be
    one the answer gives no other extension, as RFC 8285 says); a page whose browser does not
    know the extension leaves it out of its answer, and nothing is written.
    """
    remote = getattr(pc, 'remoteDescription', None)
    if remote is None or not _aiortc_checked():
        return False
    ids = sdp_extension_ids(remote.sdp, PLAYOUT_DELAY_URI)
    # an id the answer also gives another extension would make both unreadable: not used
    uris = {}
    for extension in filter(None, map(_extmap, remote.sdp.splitlines())):
        uris.setdefault(extension[0], set()).add(extension[1])
    writing = False
    for transceiver in pc.getTransceivers():
        ext_map = getattr(transceiver.sender, '_RTCRtpSender__rtp_header_extensions_map', None)
        chosen = ids.get(transceiver.mid)
        if transceiver.kind != 'video' or not hasattr(ext_map, 'playout_id') or \
                chosen not in _ONE_BYTE_IDS or uris[chosen] != {PLAYOUT_DELAY_URI}:
            continue
        ext_map.playout_id = chosen
        writing = True
    return writing


def change_playout_delay(pc, value: bytes) -> bool:
    """Write ``value`` into ``pc``'s video packets from now on; False if none carries it."""
    changed = False
    for transceiver in pc.getTransceivers():
        ext_map = getattr(transceiver.sender, '_RTCRtpSender__rtp_header_extensions_map', None)
        if transceiver.kind == 'video' and hasattr(ext_map, 'playout_value'):
            ext_map.playout_value = value
            changed = changed or ext_map.playout_id is not None
    return changed


def sender_round_trip(sender) -> Optional[float]:
    """
    Return an RTCRtpSender's smoothed round trip time in s (None: none measured yet).

    aiortc measures it from each receiver report on its latest sender report (against when
    that report left, which the bridge cannot see) and keeps it private
    (``RTCRtpSender.__rtt``; public only through the async ``getStats()``).
    """
    value = getattr(sender, '_RTCRtpSender__rtt', None)
    return float(value) if isinstance(value, (int, float)) else None
