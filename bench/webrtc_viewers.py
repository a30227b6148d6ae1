"""WebRTC viewer worker for bench/webrtc_bench.py: N aiortc peers signalled over /control.

Each peer opens its own /control websocket (as a page does), asks for a WebRTC session
(``webrtc_start``), answers the bridge's offer and then receives video until --duration is over.
For every decoded frame it records the arrival time and, through the RTP-to-stamp messages on
the data channel, the frame's header.stamp and encoded size. At exit it writes
``[[arrival, stamp or nan, bytes or nan, wire or nan], ...]`` per peer to --out (JSON).

``wire`` is when the frame's last RTP packet came in. aiortc's receiver hands a frame on only
when the first packet of the *next* frame arrives (its JitterBuffer finds a frame's end by the
timestamp change), so ``arrival`` is a frame interval (33 ms at 30 fps) later than a browser
could show it; ``wire`` is what the bridge's side costs. It is taken by wrapping the receiver's
``_handle_rtp_packet`` (aiortc 1.16; on another version the column is nan).

aiortc decodes what it receives (a browser would too), so these workers cost CPU; they run as
separate processes and the benchmark reports their CPU next to the bridge's.
"""

import argparse
import asyncio
import collections
import json
import math
import time

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from benchlib import HOST, require_loopback_only
import websockets


async def peer(port: int, codec: str, deadline: float, records: list, errors: list):
    """One viewer: /control session, signalling, then frames until the deadline."""
    stamps = {}
    newest = [None, math.nan, math.nan]   # rtp, stamp, bytes sent so far of the newest message
    pc = RTCPeerConnection()
    done = asyncio.Event()

    @pc.on('datachannel')
    def on_channel(channel):
        @channel.on('message')
        def on_message(text):
            message = json.loads(text)
            if message.get('type') == 'frame':
                # one on every keyframe and ~5 a second: frames between are placed from the
                # newest (RTP timestamps are header.stamp on the 90 kHz clock)
                stamps[message['rtp']] = message['stamp']
                newest[:] = [message['rtp'], message['stamp'], message.get('sent', math.nan)]
                if len(stamps) > 600:
                    stamps.pop(next(iter(stamps)))

    # aiortc rebases received timestamps to its first one (frame.pts = rtp - first), so the
    # offset is learnt: the one value rtp - pts takes for every frame (camera stamps jitter, so
    # neighbouring frames' offsets differ).
    offsets = collections.Counter()
    found = []
    wire = {}    # RTP timestamp -> when its frame's last packet (the marker) came in

    def watch_wire(receiver):
        handle = getattr(receiver, '_handle_rtp_packet', None)
        if handle is None:
            return

        async def handle_rtp_packet(packet, *args, **kwargs):
            if packet.marker:
                wire[packet.timestamp] = time.time()
                if len(wire) > 600:
                    wire.pop(next(iter(wire)))
            return await handle(packet, *args, **kwargs)

        receiver._handle_rtp_packet = handle_rtp_packet

    @pc.on('track')
    def on_track(track):
        async def read():
            try:
                while True:
                    frame = await track.recv()
                    arrived = time.time()
                    if not found:
                        offsets.update({(rtp - frame.pts) & 0xFFFFFFFF for rtp in stamps})
                        best, count = (offsets.most_common(1) or [(None, 0)])[0]
                        if count >= 15 and list(offsets.values()).count(count) == 1:
                            found.append(best)
                    rtp = (frame.pts + found[0]) & 0xFFFFFFFF if found else None
                    stamp = stamps.get(rtp, math.nan)
                    if rtp is not None and math.isnan(stamp) and newest[0] is not None:
                        delta = ((rtp - newest[0] + 2 ** 31) % 2 ** 32 - 2 ** 31) / 90000
                        stamp = newest[1] + delta if abs(delta) <= 10 else math.nan
                    records.append((arrived, stamp, newest[2],
                                    wire.get(rtp, math.nan) if rtp is not None else math.nan))
            except MediaStreamError:
                done.set()
        asyncio.ensure_future(read())

    try:
        async with websockets.connect(f'ws://{HOST}:{port}/control', max_size=2 ** 20) as ws:
            await ws.send(json.dumps({'type': 'webrtc_start', 'id': 1, 'stream': 'camera',
                                      'codecs': [codec]}))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if message.get('type') in ('webrtc_offer', 'webrtc_error', 'error') \
                        and message.get('id') == 1:
                    break
            if message['type'] != 'webrtc_offer':
                errors.append(message)
                return
            await pc.setRemoteDescription(RTCSessionDescription(message['sdp'], 'offer'))
            for receiver in pc.getReceivers():
                watch_wire(receiver)
            await pc.setLocalDescription(await pc.createAnswer())
            await ws.send(json.dumps({'type': 'webrtc_answer', 'id': 2,
                                      'sdp': pc.localDescription.sdp}))
            while time.time() < deadline:
                try:
                    await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.time()))
                except asyncio.TimeoutError:
                    pass
    except Exception as exc:  # reported by the benchmark, which decides whether the run counts
        errors.append(repr(exc))
    finally:
        await pc.close()


async def main(options):
    deadline = time.time() + options.duration
    records = [[] for _ in range(options.count)]
    errors = []
    await asyncio.gather(*(peer(options.port, options.codec, deadline, records[i], errors)
                           for i in range(options.count)))
    with open(options.out, 'w') as handle:
        json.dump({'records': records, 'errors': errors}, handle)


if __name__ == '__main__':
    require_loopback_only()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--count', type=int, default=1)
    parser.add_argument('--codec', default='h264')
    parser.add_argument('--duration', type=float, default=30)
    parser.add_argument('--out', required=True)
    asyncio.run(main(parser.parse_args()))
