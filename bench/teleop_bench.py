"""Teleop benchmark: how fast a browser command reaches cmd_vel, and how fast the car stops.

Why: driving through the bridge only feels direct if a key press reaches /cmd_vel within a few
milliseconds, also while the bridge is busy streaming video, and safety depends on the deadman
and on a dropped connection stopping the car promptly. The websocket client and a real rclpy
subscriber on /cmd_vel (reliable) live in this one process, so one clock (time.monotonic) times
both ends: rclpy spins in a thread, the client runs on asyncio in the main thread.

Phases, each once with no viewers and once while --viewers (default 50) viewers stream
640x480 bgr8 at 30 fps (the publisher and viewer workers of bridge_bench):

* latency: acquire, then send explicit velocities at --rate Hz for --duration s, each with a
  distinct linear.x = i * 1e-4 so every cmd_vel message can be matched to its command; latency is
  subscriber arrival - send time (first arrival of each value; the 10 Hz republishing of held
  commands only adds later copies),
* deadman: send one non-zero velocity, go silent, time last command -> zero Twist, minus the
  bridge's command_timeout (0.5 s in config/bridge.yaml); --deadman-trials times,
* socket drop: a fresh driver connection sends a velocity, then its TCP connection is aborted
  (no close frame); time abort -> zero Twist; --drop-trials times.

With --before DIR the bridge_node of another checkout (say, the commit before a change; see
bench/README.md) is measured too, in the same run: in each condition both bridges run one after
the other, which one goes first alternating from condition to condition and round to round
(--rounds), so a change in the machine's load falls on both alike; the table gets a ``bridge``
column (now / before).

Run through bench/run (private network namespace, own ROS_DOMAIN_ID).
"""

import argparse
import asyncio
import json
import math
import statistics
import threading
import time

import benchlib
from benchlib import fmt, pct, table
from geometry_msgs.msg import Twist
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from websockets.asyncio.client import connect

TOPIC = benchlib.VIDEO_TOPIC
COMMAND_TIMEOUT = 0.5  # config/bridge.yaml command_timeout
STEP = 1e-4            # linear.x of command i is i * STEP


class CmdVelLog:
    """Every /cmd_vel message with its arrival time (monotonic), filled by the rclpy thread.

    Also kept per message, to tell where a slow command lost its time: the DDS source
    timestamp (when the bridge's writer published it), the DDS reception timestamp (when this
    process's reader got it) and the wall clock in the callback (all CLOCK_REALTIME, s).
    """

    def __init__(self, node):
        # (monotonic time, linear.x, angular.z, source, received, callback wall clock);
        # list.append is atomic, so the asyncio side can read while rclpy appends
        self.arrivals = []
        node.create_subscription(Twist, '/cmd_vel', self._on_twist,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def _on_twist(self, msg: Twist, info):
        now, wall = time.monotonic(), time.time()
        self.arrivals.append((now, msg.linear.x, msg.angular.z, info['source_timestamp'] * 1e-9,
                              info['received_timestamp'] * 1e-9, wall))

    async def wait_for(self, predicate, after: float, timeout: float):
        """Arrival time of the first message after ``after`` matching ``predicate``, or None.

        Polls every 2 ms; the arrival time itself was taken in the subscriber callback, so the
        polling interval does not enter the measurement.
        """
        deadline = time.monotonic() + timeout
        start = 0
        while time.monotonic() < deadline:
            arrivals = self.arrivals
            for index in range(start, len(arrivals)):
                stamp, x, z = arrivals[index][:3]
                if stamp >= after and predicate(x, z):
                    return stamp
            start = max(0, len(arrivals) - 1)
            await asyncio.sleep(0.002)
        return None


class Driver:
    """A control websocket client: sends JSON, collects replies in the background."""

    def __init__(self, socket):
        self.socket = socket
        self.replies = {}
        self._ids = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def acquire(cls, port: int) -> 'Driver':
        """Connect to /control and take the driver lock."""
        socket = await connect(f'ws://{benchlib.HOST}:{port}/control', proxy=None,
                               compression=None, open_timeout=10, close_timeout=2)
        driver = cls(socket)
        reply = await driver.request({'type': 'acquire'})
        if reply.get('type') != 'ack':
            raise RuntimeError(f'acquire refused: {reply}')
        return driver

    async def _read(self):
        async for message in self.socket:
            arrived = time.monotonic()
            data = json.loads(message)
            if 'id' in data:
                data['_arrived'] = arrived
                self.replies[data['id']] = data

    async def send(self, body: dict) -> int:
        """Send one message with a fresh id; return the id."""
        self._ids += 1
        await self.socket.send(json.dumps(dict(body, id=self._ids)))
        return self._ids

    async def request(self, body: dict, timeout: float = 5.0) -> dict:
        """Send and wait for the reply."""
        request_id = await self.send(body)
        deadline = time.monotonic() + timeout
        while request_id not in self.replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f'no reply to {body}')
            await asyncio.sleep(0.002)
        return self.replies.pop(request_id)

    async def velocity(self, x: float, z: float = 0.0) -> tuple:
        """Send an explicit velocity; return (monotonic and wall time before sending, its id)."""
        sent, wall = time.monotonic(), time.time()
        request_id = await self.send({'type': 'velocity', 'linear': {'x': x},
                                      'angular': {'z': z}})
        self.sent_wall = wall
        return sent, request_id

    async def close(self):
        """Close cleanly (the bridge stops the car and frees the lock)."""
        self._reader.cancel()
        await self.socket.close()

    def abort(self):
        """Drop the TCP connection without a close frame, as a crashed browser or a cut link."""
        self._reader.cancel()
        self.socket.transport.abort()


async def latency_phase(driver: Driver, log: CmdVelLog, seconds: float, rate: float) -> dict:
    """Distinct velocities at ``rate`` Hz; latency of each to its first cmd_vel arrival."""
    count = max(1, int(seconds * rate))
    sent, ids, walls = {}, {}, {}
    start = time.monotonic()
    for i in range(1, count + 1):
        delay = start + (i - 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[i], ids[i] = await driver.velocity(i * STEP)
        walls[i] = driver.sent_wall
    await asyncio.sleep(0.5)  # let the last ones arrive
    await driver.request({'type': 'command', 'name': 'stop'})
    acks = [1000 * (driver.replies.pop(ids[i])['_arrived'] - sent[i]) for i in sent
            if ids[i] in driver.replies]
    first, hops = {}, {}
    for stamp, x, _, *hop in list(log.arrivals):
        i = round(x / STEP)
        if stamp >= start and i in sent and i not in first and abs(x - i * STEP) < STEP / 10:
            first[i], hops[i] = stamp, hop
    latencies = [1000 * (first[i] - sent[i]) for i in sent if i in first]
    # Where the time went, per command: until the bridge's DDS writer published it (client,
    # socket, bridge loop, teleop core), the DDS hop, and this process's executor + callback.
    split = {name: [1000 * value for value in values] for name, values in (
        ('to_publish', [hops[i][0] - walls[i] for i in hops]),
        ('dds', [hops[i][1] - hops[i][0] for i in hops]),
        ('callback', [hops[i][2] - hops[i][1] for i in hops]))}
    return {'sent': count, 'matched': len(latencies), 'p50': pct(latencies, 50),
            'p99': pct(latencies, 99), 'max': max(latencies) if latencies else float('nan'),
            'ack_p50': pct(acks, 50), 'ack_p99': pct(acks, 99),
            'ack_max': max(acks) if acks else float('nan'), 'split': split}


async def deadman_phase(driver: Driver, log: CmdVelLog, trials: int) -> list:
    """Last command -> zero Twist, minus command_timeout, in ms; one value per trial."""
    extra = []
    for trial in range(trials):
        await asyncio.sleep(0.2)
        x = 0.3 + trial * 1e-3
        sent, _ = await driver.velocity(x)
        moving = await log.wait_for(lambda vx, _, x=x: abs(vx - x) < 1e-9, sent, 2.0)
        stopped = await log.wait_for(lambda vx, vz: vx == 0.0 and vz == 0.0, sent, 3.0)
        if moving is None or stopped is None:
            print(f'deadman trial {trial}: no {"command" if moving is None else "zero"} seen')
            continue
        extra.append(1000 * (stopped - sent - COMMAND_TIMEOUT))
    return extra


async def drop_phase(port: int, log: CmdVelLog, trials: int) -> list:
    """Abort a driving connection's TCP socket -> zero Twist, in ms; one value per trial."""
    delays = []
    for trial in range(trials):
        driver = await Driver.acquire(port)
        x = 0.2 + trial * 1e-3
        sent, _ = await driver.velocity(x)
        moving = await log.wait_for(lambda vx, _, x=x: abs(vx - x) < 1e-9, sent, 2.0)
        dropped = time.monotonic()
        driver.abort()
        stopped = await log.wait_for(lambda vx, vz: vx == 0.0 and vz == 0.0, dropped, 3.0)
        if moving is None or stopped is None:
            print(f'drop trial {trial}: no {"command" if moving is None else "zero"} seen')
        else:
            delays.append(1000 * (stopped - dropped))
        await asyncio.sleep(0.2)
    return delays


async def wait_matched(driver: Driver, log: CmdVelLog, timeout: float = 20.0):
    """Send `stop` (the bridge publishes a zero Twist) until one reaches our subscriber.

    cmd_vel is reliable but volatile: whatever the bridge publishes before its writer has
    matched our reader is lost, and discovery takes a variable second or two on a busy machine.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = time.monotonic()
        await driver.request({'type': 'command', 'name': 'stop'})
        if await log.wait_for(lambda vx, vz: vx == 0.0 and vz == 0.0, sent, 0.5) is not None:
            return
    raise RuntimeError(f'no cmd_vel from the bridge within {timeout:g} s')


async def run_phases(port: int, log: CmdVelLog, options) -> dict:
    """All three phases against one bridge."""
    driver = await Driver.acquire(port)
    await wait_matched(driver, log)
    result = await latency_phase(driver, log, options.duration, options.rate)
    result['deadman'] = await deadman_phase(driver, log, options.deadman_trials)
    await driver.close()
    result['drop'] = await drop_phase(port, log, options.drop_trials)
    return result


def measure(condition: str, viewers: int, log: CmdVelLog, options, source: str = '') -> dict:
    """Start a bridge (plus camera and viewers under load) and run the phases against it.

    ``source``: another checkout's bridge (benchlib.start_bridge), for --before.
    """
    log.arrivals = []
    with benchlib.Rig(options.keep_logs) as rig:
        env = dict(item.split('=', 1) for item in options.bridge_env)
        bridge, port = benchlib.start_bridge(rig, TOPIC, env=env, source=source)
        workers = []
        if viewers:
            budget = options.duration + options.deadman_trials * 1.0 + \
                options.drop_trials * 0.5 + 60
            benchlib.start_publisher(rig, TOPIC, budget, reliable=options.reliable)
            workers, outputs = benchlib.start_viewers(rig, port, ['/video/camera'] * viewers,
                                                      budget, options.per_worker)
            benchlib.wait_streaming(workers, outputs)
            time.sleep(options.warmup)
        window = benchlib.Window({child.name: child.pid for child in rig.children})
        window.begin()
        result = asyncio.run(asyncio.wait_for(run_phases(port, log, options),
                                              timeout=options.duration + 120))
        window.end()
        benchlib.stop_workers(rig, workers)
        benchlib.report_viewer_problems(workers)
    result['cpu'] = window.cpu_percent('bridge')
    result['others'] = window.others_percent()
    result['condition'] = condition
    return result


def run_cases(log: CmdVelLog, options) -> list:
    """Both conditions, per round, each with both bridges under --before (alternating)."""
    sides = ['now', 'before'] if options.before else ['']
    conditions = (('no viewers', 0), (f'{options.viewers} viewers @30fps', options.viewers))
    results = []
    for round_index in range(options.rounds):
        for position, (condition, viewers) in enumerate(conditions):
            for side in benchlib.alternating(sides, round_index + position):
                name = ' '.join(filter(None, (side, f'round {round_index + 1}'
                                              if options.rounds > 1 else '')))
                print(f'{condition}{f" ({name})" if name else ""}: measuring ...', flush=True)
                result = measure(condition, viewers, log, options,
                                 options.before if side == 'before' else '')
                result.update(bridge=name, side=side, viewers=viewers)
                results.append(result)
    return results


def report(results: list, options):
    """Print the latency / deadman / drop table and the targets."""
    print(f'\nTeleop: velocity commands at {options.rate:g} Hz for {options.duration:g} s; '
          f'deadman x{options.deadman_trials}; socket drop x{options.drop_trials}')
    named = any(r['bridge'] for r in results)
    first = ['condition', 'bridge'] if named else ['condition']

    def lead(r):
        return [r['condition'], r['bridge']] if named else [r['condition']]
    results = sorted(results, key=lambda r: (r['viewers'], r['bridge']))
    rows = []
    for r in results:
        dead, drop = r['deadman'], r['drop']
        rows.append(lead(r) + [
            f'{r["matched"]}/{r["sent"]}', fmt(r['p50'], 2), fmt(r['p99'], 2), fmt(r['max'], 2),
            f'{fmt(r["ack_p50"], 2)}/{fmt(r["ack_p99"], 2)}/{fmt(r["ack_max"], 2)}',
            f'{fmt(pct(dead, 50))}/{fmt(pct(dead, 95))}/'
            f'{fmt(max(dead) if dead else None)} ({len(dead)})',
            f'{fmt(pct(drop, 50))}/{fmt(max(drop) if drop else None)} ({len(drop)})',
            fmt(r['cpu']), fmt(r['others'])])
    print(table(first + ['matched', 'p50 ms', 'p99 ms', 'max ms', 'ack RTT p50/p99/max',
                         'deadman +ms p50/p95/max (n)', 'drop->zero ms p50/max (n)',
                         'bridge CPU %', 'others CPU %'], rows))
    print('Targets: command p99 <= 5 ms in both conditions; deadman zero within '
          f'command_timeout ({COMMAND_TIMEOUT:g} s) + 20 ms.')
    rows = []
    for r in results:
        rows.append(lead(r) + [f'{fmt(pct(r["split"][hop], 50), 2)}/'
                               f'{fmt(pct(r["split"][hop], 99), 2)}'
                               for hop in ('to_publish', 'dds', 'callback')])
    print('\nCommand latency by hop, ms p50/p99 (wall clock; DDS source and reception stamps):')
    print(table(first + ['send -> bridge publishes', 'DDS delivery',
                         'reception -> callback (bench)'], rows))
    if options.before:
        report_comparison(results)


# (heading, figure of one result, digits) of the before/now table
COMPARED = (('p50 ms', lambda r: r['p50'], 2), ('p99 ms', lambda r: r['p99'], 2),
            ('max ms', lambda r: r['max'], 2),
            ('deadman +ms p50', lambda r: pct(r['deadman'], 50), 1),
            ('drop->zero ms p50', lambda r: pct(r['drop'], 50), 1),
            ('bridge CPU %', lambda r: r['cpu'], 1), ('others CPU %', lambda r: r['others'], 0))


def report_comparison(results: list):
    """Per condition and figure: before -> now, medians over the rounds."""
    rows = []
    for condition in dict.fromkeys(r['condition'] for r in results):
        row = [condition]
        for _, figure, digits in COMPARED:
            side = {want: statistics.median([figure(r) for r in results
                                             if r['condition'] == condition
                                             and r['side'] == want] or [math.nan])
                    for want in ('before', 'now')}
            row.append(f'{fmt(side["before"], digits)} -> {fmt(side["now"], digits)}')
        rows.append(row)
    print('\nBefore -> now, median of the rounds:')
    print(table(['condition'] + [heading for heading, *_ in COMPARED], rows))


def main():
    """Run both conditions in this one ROS process, then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--duration', type=float, default=10.0, help='latency phase (s)')
    parser.add_argument('--rate', type=float, default=20.0, help='commands per second')
    parser.add_argument('--deadman-trials', type=int, default=20)
    parser.add_argument('--drop-trials', type=int, default=10)
    parser.add_argument('--viewers', type=int, default=50, help='viewers in the load case')
    parser.add_argument('--warmup', type=float, default=3.0, help='load warm-up (s)')
    parser.add_argument('--rounds', type=int, default=1,
                        help='times every case runs (with --before: before/now pairs)')
    benchlib.add_before_option(parser)
    benchlib.add_rig_options(parser)
    options = parser.parse_args()
    benchlib.check_before(parser, options)
    if options.rounds < 1:
        parser.error('--rounds must be at least 1')
    benchlib.require_loopback_only()
    benchlib.print_versions(options.before)
    shm_before = benchlib.shm_segments()
    # Ctrl-C is Python's KeyboardInterrupt: the node is destroyed before rclpy shuts down
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('teleop_bench')
    log = CmdVelLog(node)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=spin, args=(executor,), daemon=True)
    spinner.start()
    results = []
    try:
        results = run_cases(log, options)
    finally:
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    report(results, options)
    benchlib.report_shm(shm_before)


def spin(executor):
    """Spin rclpy until shutdown (runs in its own thread)."""
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


if __name__ == '__main__':
    main()
