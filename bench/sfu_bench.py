"""The SFU benchmark: what many viewers through Janus cost the robot, Janus, and the picture's age.

Why: the robot's uplink (a car on 2-5 Mbit/s cellular) carries one WebRTC peer per direct
viewer; with an SFU it should carry one stream however many watch, at the same robot CPU, and
the hop through Janus should add little to the picture's age. Goals (issue 20): uplink within
+10 % of one viewer's at 50 viewers, robot CPU flat, the Janus hop <= 10 ms p50 over the direct
path.

The lab is test/support/janus_lab.py's (the SFU tests use it too): this process's private
namespace gets a veth pair (198.51.100.1/24, Janus gathers candidates on no loopback), Janus
1.1 runs with deploy/cloud/'s configs and test secrets. Three parts (``--parts``):

* fanout: the robot is a process of its own (``sfu_bench.py robot``): a stream hub fed 640x480
  at 30 fps with pictures that cost the encoder its bit rate (noise over a gradient), and the
  bridge's Janus publisher (net/sfu_janus.py, H.264, the shared encoder) dialling out to node A.
  Viewers are aiortc subscribers through the Janus API in worker processes (``sfu_bench.py
  viewers``, --per-worker each), counting assembled frames without decoding them (fifty
  decoders do not fit two cores; decoding is not what is measured). For each K in --viewers,
  once every viewer has 30 frames, after --warmup, a window of --duration s: the robot's uplink
  (RTP bytes its sender put on the wire, aiortc's outbound-rtp, in kbit/s, and against the
  first K's; and per frame sent, which the load on the machine does not move: the robot's
  frame rate does, see "sent fps"), the layer it sends, the hub's encoders, keyframes it sent
  / PLIs Janus passed it in the window, the robot process's CPU (encode, packetise, SRTP, its
  asyncio loop; in % of a core, and in ms per frame sent), Janus's CPU, the frames per second
  the robot sent, the slowest and the median viewer's fps, the viewers' and others' CPU
  (others: processes outside the benchmark, of 200 %).
  "Janus per viewer" is (Janus CPU at K - at the first K) / (K - first K).
* h264source: the same as fanout, but the robot's stream is of kind h264 (``--source h264``):
  the hub is fed H.264 units of the same pictures, as a robot whose camera already encodes
  (libx264 made them before the run; two GOPs, looped), and the publisher passes them through
  (no encoder, no decoder). What the robot's CPU is then: taking units and one peer's sending,
  however many watch through Janus.
* twonode: the same with two Janus nodes: node A forwards the robot's feed to node B (Janus
  1.1's remote publishers: publish_remotely on A, add_remote_publisher on B, plain RTP with
  RTCP back for keyframe requests), viewer i on node A for even i, on B for odd i. VP8: Janus
  1.1.2 offers a remote publisher's H.264 without its fmtp line, which browsers cannot match.
  VP8 cannot hold its bit rate on the H.264 part's picture (noise on every other pixel: 5.7
  Mbit/s at qmax 56), so its picture has noise on every 8th pixel (about 1.1 Mbit/s).
* latency: in the robot process, the same shared encoder feeds two peers: the Janus publisher,
  and a direct peer made as the bridge makes a browser's (net/webrtc.py's Peer, the same offer)
  to a local aiortc receiver. A decoding aiortc viewer watches through Janus (and, with the
  second node, one through B). Each picture carries its index in 16 blocks of its top row; a
  viewer reads it from the decoded frame, so glass-to-glass per path is (decoded - published)
  on one clock, and the hop is the per-frame difference (Janus path - direct path) over the
  frames both got. Run for H.264 via one node and for VP8 via one and two nodes.

Every loop is bounded in count and time; every process is stopped by its PID, the veth pair
and Janus's scratch directory are removed however the run ends.

Run through ``bench/run sfu`` (private network namespace, own ROS_DOMAIN_ID; no ROS is used).
--markdown FILE also writes the tables with the date, commit and command.
"""

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import benchlib
from benchlib import fmt, pct, table
import numpy as np

sys.path.insert(0, os.path.join(benchlib.ROOT, 'test'))
from support import janus_lab  # noqa: E402 (test/ on sys.path first)
from video_bridge.core import sfu  # noqa: E402
from video_bridge.core.streams import H264  # noqa: E402

STATUS = 'STATUS '          # a child's status line: this prefix, then JSON
STATUS_PERIOD = 0.5
BLOCKS = 16                 # bits of the frame index painted in the picture's top row
BLOCK = 32                  # px (of 640) per bit block
ROOM_SECRET = 'test-room-secret'   # janus_lab.Janus's test secrets
TOKEN_SECRET = 'test-token-secret'
PIN = 'test-pin'
# janus_lab.busy_picture's noise grid per codec: each codec near the 1.2 Mbit/s top layer
NOISE_STEP = {'h264': 2, 'vp8': 8}


# -- the pictures ------------------------------------------------------------------------------

def stamped_picture(published_at: dict, step: int, width=640, height=480):
    """janus_lab.busy_picture with the frame index painted in; note when each is made."""
    busy = janus_lab.busy_picture(width, height, step=step)

    def make(index):
        image = busy(index)
        frame = np.frombuffer(image.data, np.uint8).reshape(height, width, 3).copy()
        for bit in range(BLOCKS):
            frame[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if index >> bit & 1 else 0
        image = dataclasses.replace(image, data=frame.tobytes(), received_time=time.time())
        published_at[index & 0xFFFF] = time.monotonic()
        if len(published_at) > 4096:         # bounded: the oldest go
            for old in sorted(published_at)[:1024]:
                published_at.pop(old, None)
        return image
    return make


def read_index(frame) -> int:
    """The index painted in a decoded av.VideoFrame (any size the layer has)."""
    luma = frame.to_ndarray(format='gray')
    scale = frame.width / 640
    row = int(BLOCK / 2 * scale)
    index = 0
    for bit in range(BLOCKS):
        if luma[row, int((bit + 0.5) * BLOCK * scale)] > 128:
            index |= 1 << bit
    return index


# -- children: the robot and the viewers -------------------------------------------------------

def status(**fields):
    print(STATUS + json.dumps(fields), flush=True)


def last_status(child) -> dict:
    """The newest status line of a child (its log file), or {}."""
    try:
        with open(child.log_path, 'rb') as log:
            log.seek(max(0, os.path.getsize(child.log_path) - 65536))
            lines = log.read().decode(errors='replace').splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        if line.startswith(STATUS):
            try:
                return json.loads(line[len(STATUS):])
            except ValueError:
                continue
    return {}


class Node:
    """What janus_lab.publisher needs of a Janus node, in a child process."""

    def __init__(self, url):
        self.url = url
        self.token_secret = TOKEN_SECRET
        self.room_secret = ROOM_SECRET
        self.pin = PIN


def stop_on_sigint() -> asyncio.Event:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    return stop


async def robot(options):
    """The robot: publish the fed stream to Janus; status every STATUS_PERIOD s."""
    published_at = {}
    step = options.noise_step or NOISE_STEP[options.codec]
    if options.source == H264:     # the camera encoded: units passed through
        feeder = janus_lab.Feeder(janus_lab.busy_h264(step=step), kind=H264)
    else:
        feeder = janus_lab.Feeder(stamped_picture(published_at, step))
    try:
        stop = stop_on_sigint()
        published = janus_lab.publisher(Node(options.url), feeder, codec=options.codec)
        published.start()
        published.set_wanted({'cam'})
        deadline = time.monotonic() + options.seconds
        try:
            if options.latency:
                await latency(options, published, feeder, published_at, stop)
                return
            while not stop.is_set() and time.monotonic() < deadline:
                feed = published.feeds['cam']
                sent = await janus_lab.bytes_sent(feed) if feed.published else 0
                status(t=time.monotonic(), published=feed.published, feed=feed.feed_id,
                       bytes=sent, layer=feed.peer.chooser.current if feed.peer else None,
                       encoders=feeder.stream.counters().video_encoders,
                       decoders=feeder.stream.counters().video_decoders,
                       publishes=feed.publishes,
                       keyframes=feed.peer.media['keyframes'] if feed.peer else 0,
                       pli=feed.peer.media['pli'] if feed.peer else 0,
                       units=feed.peer.sent_units if feed.peer else 0)
                try:
                    await asyncio.wait_for(stop.wait(), STATUS_PERIOD)
                except asyncio.TimeoutError:
                    pass
        finally:
            await published.stop()
    finally:
        feeder.close()


async def read_stamped(viewer, track):
    """Decode ``track``; note on ``viewer`` its frames and (index -> decoded at)."""
    from aiortc.mediastreams import MediaStreamError
    try:
        while True:
            frame = await track.recv()
            viewer.frames += 1
            viewer.arrivals[read_index(frame)] = time.monotonic()
            if len(viewer.arrivals) > 4096:      # bounded: the window is cleared before use
                viewer.arrivals.clear()
    except MediaStreamError:
        pass


class StampedViewer(janus_lab.JanusViewer):
    """A decoding viewer through Janus that notes (index -> decoded at) per frame."""

    def __init__(self, url):
        super().__init__(url)
        self.arrivals = {}

    async def _read(self, track):
        await read_stamped(self, track)


class DirectReceiver:
    """The browser's end of a direct peer, in aiortc: decodes, notes frames as above."""

    def __init__(self):
        from aiortc import RTCPeerConnection
        self.pc = RTCPeerConnection()
        self.frames = 0
        self.arrivals = {}
        self.pc.on('track', lambda track: asyncio.ensure_future(read_stamped(self, track)))

    async def close(self):
        await self.pc.close()


async def latency(options, published, feeder, published_at, stop):
    """Direct peer vs Janus (and A -> B): per frame, decoded - published, on one clock."""
    from aiortc import RTCSessionDescription
    from video_bridge.net import webrtc
    await wait_until(lambda: published.feeds['cam'].published, 30, 'published')
    feed = published.feeds['cam']
    loop = asyncio.get_running_loop()
    peer = webrtc.Peer(published._host, 'direct', feeder.hub.get('cam'), options.codec)
    feeder.listeners.append(lambda name: loop.call_soon_threadsafe(peer.wake.set))
    sender_pc = await published._offer(peer)
    direct = DirectReceiver()
    receiver_pc = direct.pc
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    await sender_pc.setRemoteDescription(RTCSessionDescription(
        receiver_pc.localDescription.sdp, 'answer'))
    paths = {'direct': direct}
    access = published.viewer_access('cam', 'latency-a')
    paths['janus A'] = StampedViewer(options.url)
    await paths['janus A'].watch(access)
    if options.second_url:
        await janus_lab.forward_feed(Node(options.url), Node(options.second_url), feed.feed_id,
                                     options.codec)
        paths['A -> B'] = StampedViewer(options.second_url)
        await paths['A -> B'].watch(published.viewer_access('cam', 'latency-b'))
    try:
        await wait_until(lambda: all(v.frames >= 30 for v in paths.values()), 40,
                         'every path gets frames')
        try:   # the measured window
            await asyncio.wait_for(stop.wait(), options.warmup)
        except asyncio.TimeoutError:
            pass
        for viewer in paths.values():
            viewer.arrivals.clear()
        try:
            await asyncio.wait_for(stop.wait(), options.latency)
        except asyncio.TimeoutError:
            pass
        arrivals = {name: dict(v.arrivals) for name, v in paths.items()}
        sent = dict(published_at)
        result = {'codec': options.codec, 'layer': feed.peer.chooser.current,
                  'direct_layer': peer.chooser.current, 'paths': {}}
        for name, seen in arrivals.items():
            ages = [(at - sent[i]) * 1000 for i, at in seen.items() if i in sent]
            hops = [(at - arrivals['direct'][i]) * 1000 for i, at in seen.items()
                    if i in arrivals['direct']]
            if len(ages) > 2000:      # a status line of bounded size
                ages, hops = ages[::len(ages) // 1000 + 1], hops[::len(hops) // 1000 + 1]
            result['paths'][name] = {'frames': len(seen), 'ages': ages, 'hops': hops}
        status(latency=result)
    finally:
        for viewer in paths.values():
            await viewer.close()
        peer.close()


async def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout} s waiting for {what}')
        await asyncio.sleep(0.05)   # a poll interval


async def viewers(options):
    """``--count`` undecoded subscribers of ``--feed``; status every STATUS_PERIOD s."""
    stop = stop_on_sigint()
    grant = sfu.room_grant(TOKEN_SECRET, janus_lab.ROOM, time.time())
    access = {'room': janus_lab.ROOM, 'feed': options.feed, 'pin': PIN,
              'room_token': grant.room_token,
              'token': lambda: sfu.session_token(TOKEN_SECRET, time.time())}
    watching = []
    deadline = time.monotonic() + options.seconds
    try:
        for index in range(options.count):
            viewer = janus_lab.JanusViewer(options.url)
            watching.append(viewer)
            await viewer.watch(access, decode=False)
        while not stop.is_set() and time.monotonic() < deadline:
            status(t=time.monotonic(), frames=[v.frames for v in watching])
            try:
                await asyncio.wait_for(stop.wait(), STATUS_PERIOD)
            except asyncio.TimeoutError:
                pass
    finally:
        for viewer in watching:
            try:
                await asyncio.wait_for(viewer.close(), 5)
            except asyncio.TimeoutError:
                pass


# -- the parent --------------------------------------------------------------------------------

def wait_status(child, predicate, timeout, what) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        if child.poll() is not None:
            raise RuntimeError(f'{child.name} exited ({child.poll()}):\n{child.log_tail(30)}')
        current = last_status(child)
        if current and predicate(current):
            return current
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout} s waiting for {what}:\n'
                               f'{child.log_tail(30)}')
        time.sleep(0.1)   # a poll interval


def start_robot(rig, url, codec, options, *extra, source='raw'):
    return rig.start(f'robot-{codec}-{source}', benchlib.python_argv(
        'sfu_bench.py', 'robot', '--url', url, '--codec', codec, '--source', source,
        '--seconds', options.max_seconds, *extra))


def fanout(rig, options, nodes, codec, source='raw') -> list:
    """One robot, then viewers added to each K; a window per K. Returns the rows."""
    robot_child = start_robot(rig, nodes[0].url, codec, options, source=source)
    state = wait_status(robot_child, lambda s: s.get('published'), 40, 'the robot publishes')
    if len(nodes) > 1:     # the feed gets the same id on node B
        asyncio.run(janus_lab.forward_feed(nodes[0], nodes[1], state['feed'], codec))
    workers = []     # (child, node index, count)
    rows = []
    for target in options.viewers:
        placed = sum(count for _, _, count in workers)
        wanted = [0] * len(nodes)
        for index in range(placed, target):
            wanted[index % len(nodes)] += 1
        for node, count in enumerate(wanted):
            while count > 0:
                batch = min(count, options.per_worker)
                child = rig.start(f'viewers-{len(workers)}', benchlib.python_argv(
                    'sfu_bench.py', 'viewers', '--url', nodes[node].url, '--feed', state['feed'],
                    '--count', batch, '--seconds', options.max_seconds))
                workers.append((child, node, batch))
                count -= batch
        for child, _, count in workers:
            wait_status(child, lambda s, n=count: len(s.get('frames', ())) == n and
                        min(s['frames']) >= 30, 90, f'{target} viewers get frames')
        time.sleep(options.warmup)   # the warm-up, then the window
        pids = {'robot': robot_child.pid}
        pids.update({f'janus{i}': node.process.proc.pid for i, node in enumerate(nodes)})
        pids.update({child.name: child.pid for child, _, _ in workers})
        window = benchlib.Window(pids)
        before = ([last_status(c) for c, _, _ in workers], last_status(robot_child))
        window.begin()
        window.sleep(options.duration)
        window.end()
        after = ([last_status(c) for c, _, _ in workers], last_status(robot_child))
        if after[1]['publishes'] != before[1]['publishes']:
            print(f'WARNING: the robot published again during the {target}-viewer window: its '
                  "uplink figure is not one publication's", flush=True)
        fps = []
        for b, a in zip(before[0], after[0]):
            seconds = a['t'] - b['t']
            fps += [(x - y) / seconds for x, y in zip(a['frames'], b['frames'])]
        uplink = (after[1]['bytes'] - before[1]['bytes']) * 8 / (after[1]['t'] - before[1]['t'])
        row = {'viewers': target, 'uplink': uplink / 1000, 'layer': after[1]['layer'],
               'encoders': after[1]['encoders'], 'decoders': after[1].get('decoders', 0),
               'publishes': after[1]['publishes'],
               'keyframes': after[1]['keyframes'] - before[1]['keyframes'],
               'pli': after[1]['pli'] - before[1]['pli'],
               'sent_fps': (after[1]['units'] - before[1]['units']) /
               (after[1]['t'] - before[1]['t']),
               'robot_cpu': window.cpu_percent('robot'),
               'janus_cpu': [window.cpu_percent(f'janus{i}') for i in range(len(nodes))],
               'slowest_fps': min(fps), 'median_fps': pct(fps, 50),
               'viewers_cpu': sum(window.cpu_percent(c.name) for c, _, _ in workers),
               'others_cpu': window.others_percent(), 'nodes': len(nodes)}
        rows.append(row)
        print(f'  {len(nodes)} node(s), {target} viewers: uplink {row["uplink"]:.0f} kbit/s, '
              f'robot {row["robot_cpu"]:.0f} %, Janus '
              f'{"+".join(f"{c:.0f}" for c in row["janus_cpu"])} %, slowest viewer '
              f'{row["slowest_fps"]:.1f} fps', flush=True)
    for child, _, _ in reversed(workers):
        rig.stop(child)
    rig.stop(robot_child)
    return rows


def measure_latency(rig, options, nodes, codec) -> dict:
    extra = ['--latency', options.latency_duration, '--warmup', options.warmup]
    if len(nodes) > 1:
        extra += ['--second-url', nodes[1].url]
    child = start_robot(rig, nodes[0].url, codec, options, *extra)
    state = wait_status(child, lambda s: 'latency' in s,
                        options.latency_duration + options.warmup + 120, 'the latency run')
    child.wait(30)    # it ends by itself once it has said
    rig.stop(child)
    return state['latency']


def fanout_table(rows) -> str:
    first = rows[0]

    def per_frame(row):
        return row['uplink'] / row['sent_fps'] if row['sent_fps'] else math.nan

    out = []
    for row in rows:
        extra = row['viewers'] - first['viewers']
        per_viewer = [(c - c0) / extra if extra else math.nan
                      for c, c0 in zip(row['janus_cpu'], first['janus_cpu'])]
        out.append([row['viewers'], fmt(row['uplink'], 0),
                    fmt(100 * (row['uplink'] / first['uplink'] - 1), 1, ' %'),
                    fmt(per_frame(row), 1),
                    fmt(100 * (per_frame(row) / per_frame(first) - 1), 1, ' %'),
                    row['layer'], f"{row['encoders']}/{row['decoders']}",
                    f"{row['keyframes']}/{row['pli']}",
                    fmt(row['robot_cpu'], 1),
                    fmt(row['robot_cpu'] * 10 / row['sent_fps'] if row['sent_fps'] else None,
                        2),
                    ' + '.join(fmt(c, 1) for c in row['janus_cpu']),
                    ' + '.join(fmt(c, 2) for c in per_viewer),
                    fmt(row['sent_fps'], 1), fmt(row['slowest_fps'], 1),
                    fmt(row['median_fps'], 1),
                    fmt(row['viewers_cpu'], 0), fmt(row['others_cpu'], 0)])
    return (['viewers', 'uplink kbit/s', 'vs first', 'kbit/frame', 'vs first', 'layer',
             'encoders/decoders', 'keyframes/PLI', 'robot CPU %', 'robot CPU ms/frame',
             'Janus CPU %', 'Janus %/viewer', 'sent fps', 'slowest fps', 'median fps',
             'viewers CPU %', 'others CPU %'], out)


def latency_table(results) -> str:
    out = []
    for result in results:
        for name, path in result['paths'].items():
            hops = path['hops'] if name != 'direct' else []
            out.append([f'{result["codec"]} {name}', path['frames'],
                        fmt(pct(path['ages'], 50), 1), fmt(pct(path['ages'], 95), 1),
                        fmt(pct(hops, 50), 1), fmt(pct(hops, 95), 1),
                        result['layer'] if name != 'direct' else result['direct_layer']])
    return (['path', 'frames', 'g2g p50 ms', 'g2g p95 ms', 'hop p50 ms', 'hop p95 ms',
             'layer'], out)


def markdown_table(headers, rows) -> str:
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    return '\n'.join(lines + ['| ' + ' | '.join(map(str, row)) + ' |' for row in rows])


def write_markdown(path, tables, command, commit, started):
    with open(path, 'w') as out:
        out.write(f'Run {started:%Y-%m-%d %H:%M} UTC at {commit}, {os.cpu_count()} cores, '
                  f'load average {os.getloadavg()[0]:.2f} at the end: `{command}`\n\n')
        for title, (headers, rows) in tables:
            out.write(f'{title}:\n\n{markdown_table(headers, rows)}\n\n')


def parent(options):
    benchlib.print_versions()
    command = 'bench/run sfu ' + ' '.join(sys.argv[1:])
    started = datetime.datetime.now(datetime.timezone.utc)
    commit = subprocess.run(['git', '-C', benchlib.ROOT, 'rev-parse', '--short', 'HEAD'],
                            capture_output=True, text=True).stdout.strip()   # the one measured
    tables = []
    with janus_lab.lab_interface(), benchlib.Rig(options.keep_logs) as rig:
        nodes = [janus_lab.Janus()]
        try:
            if 'fanout' in options.parts:
                print('fan-out through one Janus node (H.264):', flush=True)
                tables.append(('One Janus node, H.264',
                               fanout_table(fanout(rig, options, nodes, 'h264'))))
                print(table(*tables[-1][1]), flush=True)
            if 'h264source' in options.parts:
                print('fan-out through one Janus node, the H.264 source passed through:',
                      flush=True)
                tables.append(('One Janus node, H.264 source passed through (no encoder)',
                               fanout_table(fanout(rig, options, nodes, 'h264', H264))))
                print(table(*tables[-1][1]), flush=True)
            if 'twonode' in options.parts or 'latency' in options.parts:
                nodes.append(janus_lab.Janus(rtp_ports='41000-41999'))
            if 'twonode' in options.parts:
                print('fan-out through two Janus nodes (VP8, A forwards to B):', flush=True)
                tables.append(('Two Janus nodes (A forwards to B), VP8; Janus CPU is A + B',
                               fanout_table(fanout(rig, options, nodes, 'vp8'))))
                print(table(*tables[-1][1]), flush=True)
            if 'latency' in options.parts:
                results = [measure_latency(rig, options, nodes[:1], 'h264'),
                           measure_latency(rig, options, nodes, 'vp8')]
                tables.append(('Glass-to-glass, direct peer vs through Janus (decoding '
                               'aiortc viewers)', latency_table(results)))
                print(table(*tables[-1][1]), flush=True)
        finally:
            for node in nodes:
                node.close()
    if options.markdown:
        write_markdown(options.markdown, tables, command, commit, started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('role', nargs='?', default='parent',
                        choices=('parent', 'robot', 'viewers'))
    parser.add_argument('--parts', default='fanout,h264source,twonode,latency')
    parser.add_argument('--viewers', default='1,5,20,50',
                        type=lambda text: [int(k) for k in text.split(',')])
    parser.add_argument('--per-worker', type=int, default=10)
    parser.add_argument('--duration', type=float, default=10.0)
    parser.add_argument('--warmup', type=float, default=3.0)
    parser.add_argument('--latency-duration', type=float, default=20.0)
    parser.add_argument('--max-seconds', type=float, default=1800.0,
                        help='children end by themselves after this long')
    parser.add_argument('--keep-logs', action='store_true')
    parser.add_argument('--markdown', default='')
    # the children's
    parser.add_argument('--url', default='')
    parser.add_argument('--second-url', default='')
    parser.add_argument('--codec', default='h264')
    parser.add_argument('--source', default='raw', choices=('raw', H264),
                        help="the robot stream's kind: raw pictures, or H.264 units")
    parser.add_argument('--seconds', type=float, default=1800.0)
    parser.add_argument('--latency', type=float, default=0.0)
    parser.add_argument('--feed', type=int, default=0)
    parser.add_argument('--count', type=int, default=1)
    parser.add_argument('--noise-step', type=int, default=0,
                        help="the picture's noise grid (default: 2 for H.264, 8 for VP8)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if options.role == 'robot':
        asyncio.run(robot(options))
    elif options.role == 'viewers':
        asyncio.run(viewers(options))
    else:
        parent(options)


if __name__ == '__main__':
    main()
