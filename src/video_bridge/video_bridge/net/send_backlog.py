"""
What a WebRTC peer's media path holds in the bridge's own memory, waiting for its uplink.

asyncio's transports queue whatever the socket will not take at once, without any limit, and
tell their protocol through ``pause_writing``, which aioice (aiortc's ICE) ignores. So on an
uplink slower than even the lowest video layer, RTP would pile up in the bridge: memory grows,
and every frame waits behind all the older ones. The peer asks :class:`SendBacklog` before it
hands aiortc a unit, and skips to a keyframe while the backlog is over its bound.

The selected ICE pair is found through aiortc and aioice internals (:mod:`.internals`: the DTLS
transport's ICE connection, its nominated pair, a TURN allocation's inner transport); when one is
missing the backlog reads 0 and nothing is skipped. For TURN over TCP or TLS the socket also gets
``TCP_NOTSENT_LOWAT``: the kernel then keeps only that much unsent data beyond what is in
flight, instead of a send buffer that grows to megabytes, so the backlog shows up here where
the bound applies.
"""

import socket
from typing import Optional

from video_bridge.net import internals

# bytes the kernel may hold unsent on a TURN TCP/TLS socket beyond what is in flight
TCP_NOTSENT_LOWAT = 16 * 1024
_NOTSENT_LOWAT_OPTION = getattr(socket, 'TCP_NOTSENT_LOWAT', 25)   # Linux's value


def _selected_transport(sender) -> Optional[object]:
    """Find the asyncio transport under the selected ICE pair (None: not yet, or gone)."""
    dtls = getattr(sender, 'transport', None)
    pair = internals.nominated_pair(internals.ice_connection(getattr(dtls, 'transport', None)))
    if pair is None:
        return None
    transport = getattr(getattr(pair, 'protocol', None), 'transport', None)
    relay = internals.turn_server_transport(transport)
    if relay is not None:           # a TURN allocation: what counts is its link to the server
        transport = relay
    return transport


def _buffered(transport) -> int:
    """Bytes an asyncio transport holds unsent (for TLS: both the TLS and the TCP layer)."""
    size = transport.get_write_buffer_size()
    inner = internals.tls_inner_transport(transport)
    if inner is not None:
        size += inner.get_write_buffer_size()
    return size


class SendBacklog:
    """One peer's unsent media bytes, and whether it is backing off (with hysteresis)."""

    def __init__(self, sender, high: int, low: int):
        self.sender = sender
        self.high = high              # back off above this ...
        self.low = low                # ... until it drains to this
        self.backing_off = False
        self.peak = 0                 # the most seen, for the counters
        self._tuned = None            # the transport whose socket was looked at

    def size(self) -> int:
        """Bytes waiting in the selected pair's transport now (0 when it cannot be read)."""
        transport = _selected_transport(self.sender)
        if transport is None:
            return 0
        try:
            self._tune(transport)
            size = _buffered(transport)
        except (AttributeError, OSError, TypeError):
            return 0
        self.peak = max(self.peak, size)
        return size

    def congested(self) -> bool:
        """Tell whether to hold video back: from above ``high`` until drained to ``low``."""
        size = self.size()
        if size > self.high:
            self.backing_off = True
        elif size <= self.low:
            self.backing_off = False
        return self.backing_off

    def _tune(self, transport):
        if transport is self._tuned:  # once per transport, not on every unit
            return
        self._tuned = transport
        raw = transport.get_extra_info('socket')
        if raw is not None and raw.type == socket.SOCK_STREAM:
            raw.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT_OPTION, TCP_NOTSENT_LOWAT)
