"""
The least a ROS-to-WebRTC H.264 pass-through can do with the bridge's engines: a floor to
measure bridge_node against (bench/h264_bench.py, kind ``h264-floor``).

Why: the goal for an H.264 source is at most 3 % of a core at one WebRTC viewer. This process
does only what any pass-through must, written the plain way with the same libraries and none of
the bridge's checks, limits, fan-out, data channel, diagnostics or parameters:

* rclpy: one subscription to the CompressedImage topic (best effort, depth 1) on a
  SingleThreadedExecutor thread; the callback hands ``bytes(msg.data)`` to the loop,
* aiortc: one RTCPeerConnection per viewer, H.264 only, a track that returns each unit as an
  ``av.Packet`` (aiortc packs it into RTP: no decode, no encode),
* aiohttp: ``/control`` (the bridge's ``webrtc_start`` / ``webrtc_offer`` / ``webrtc_answer``,
  as bench/webrtc_viewers.py speaks them) and ``/api/streams`` (peers, units in).

What it costs at K viewers is what these engines cost; bridge_node's CPU beside it, in the same
run, is what the bridge adds. Bench only: never installed, loopback only, no authentication.
"""

import argparse
import asyncio
import fractions
import json
import threading

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
import av
from benchlib import HOST, require_loopback_only
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage

TIME_BASE = fractions.Fraction(1, 90000)


class UnitTrack(MediaStreamTrack):
    """One viewer's track: the newest H.264 unit each time aiortc asks (older ones dropped)."""

    kind = 'video'

    def __init__(self):
        super().__init__()
        self.wake = asyncio.Event()
        self.unit = None

    def offer(self, unit):
        self.unit = unit
        self.wake.set()

    async def recv(self):
        await self.wake.wait()
        self.wake.clear()
        data, pts = self.unit
        packet = av.Packet(data)
        packet.pts, packet.time_base = pts, TIME_BASE
        return packet


class Floor:
    """The aiohttp app, the peers and the units' hand-over from the ROS thread."""

    def __init__(self):
        self.loop = None
        self.tracks = set()
        self.peers = set()
        self.units_in = 0

    def from_ros(self, message):
        """ROS executor thread: hand the unit to the loop."""
        stamp = message.header.stamp
        pts = (stamp.sec * 90000 + stamp.nanosec * 9 // 100000) & 0xFFFFFFFF
        self.loop.call_soon_threadsafe(self._deliver, bytes(message.data), pts)

    def _deliver(self, data, pts):
        self.units_in += 1
        for track in self.tracks:
            track.offer((data, pts))

    async def streams(self, request):
        return web.json_response({
            'streams': [{'name': 'camera', 'frames_in': self.units_in, 'video_encoders': 0,
                         'video_decoders': 0, 'video_encodes': 0}],
            'webrtc': {'peers': sum(pc.connectionState == 'connected' for pc in self.peers),
                       'layers': {}}})

    async def control(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        pc, track = None, None
        try:
            async for message in ws:
                body = json.loads(message.data)
                if body.get('type') == 'webrtc_start' and pc is None:
                    pc, track = RTCPeerConnection(), UnitTrack()
                    self.peers.add(pc)
                    transceiver = pc.addTransceiver(track, direction='sendonly')
                    transceiver.setCodecPreferences(
                        [codec for codec in RTCRtpSender.getCapabilities('video').codecs
                         if codec.mimeType == 'video/H264'])
                    await pc.setLocalDescription(await pc.createOffer())
                    self.tracks.add(track)
                    await ws.send_json({'type': 'webrtc_offer', 'id': body.get('id'),
                                        'sdp': pc.localDescription.sdp})
                elif body.get('type') == 'webrtc_answer' and pc is not None:
                    await pc.setRemoteDescription(RTCSessionDescription(body['sdp'], 'answer'))
        finally:
            if pc is not None:
                self.tracks.discard(track)
                self.peers.discard(pc)
                await pc.close()
        return ws


def spin(executor):
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


async def main(options):
    floor = Floor()
    floor.loop = asyncio.get_running_loop()
    # Ctrl-C is Python's KeyboardInterrupt: the node is destroyed before rclpy shuts down
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('floor_bridge')
    qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.BEST_EFFORT)   # as the bridge's default
    node.create_subscription(CompressedImage, options.topic, floor.from_ros, qos)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=spin, args=(executor,), daemon=True).start()
    app = web.Application()
    app.router.add_get('/api/streams', floor.streams)
    app.router.add_get('/control', floor.control)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, options.port).start()
    try:
        await asyncio.Event().wait()   # until SIGINT (the bench's Rig stops it by PID)
    finally:
        await runner.cleanup()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    require_loopback_only()
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--topic', default='/camera/image_raw/h264')
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
