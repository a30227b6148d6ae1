"""
Log cost: what one log line costs the thread that writes it, through the bridge's rclpy logger.

Why: the bridge logs from its event loop, the thread that also carries the driver's commands,
and ``core/log_budget.py`` keeps what a client can provoke to a few lines per kind for that
reason. This times --lines lines of each case in one process with a real rclpy node:

* ``rclpy``: the bridge's own path (``ros.bridge_node.RosLog`` over the node's logger), a line
  said: rclpy looks up the caller's source line for each (``inspect``), then rcutils writes it;
* ``rcutils``: rcutils' own call alone, what a line costs without rclpy's lookup;
* ``held back``: a line a ``LogBudget`` holds back (its kind over budget): what a flood costs.

Lines go to the node's log (stderr is sent to /dev/null while timing, as to a file).
Run through bench/run (private network namespace, own ROS_DOMAIN_ID):

    bench/run log_cost [--lines 2000] [--rounds 3]
"""

import argparse
import os
import sys
import time

import benchlib
from benchlib import fmt, table


def time_lines(say, lines: int) -> float:
    """Microseconds per call of ``say(n)``, over ``lines`` calls after a warm-up."""
    for n in range(50):
        say(n)
    started = time.perf_counter()
    for n in range(lines):
        say(n)
    return (time.perf_counter() - started) / lines * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--lines', type=int, default=2000, help='lines per case and round')
    parser.add_argument('--rounds', type=int, default=3)
    options = parser.parse_args()
    benchlib.print_versions()
    import rclpy
    from rclpy.impl.implementation_singleton import rclpy_implementation
    from rclpy.logging import LoggingSeverity
    from video_bridge.core.log_budget import LogBudget
    from video_bridge.ros.bridge_node import RosLog
    rclpy.init()
    node = rclpy.create_node('log_cost_bench')
    log = RosLog(node.get_logger())
    budget = LogBudget(log, period=3600.0, burst=1)
    budget.info('connected', 'control client c%d connected from 192.0.2.1 (view only)', 0)
    name = node.get_logger().name
    cases = {
        'rclpy': lambda n: log.info('control client c%d connected from 192.0.2.1 (view only)',
                                    n),
        'rcutils': lambda n: rclpy_implementation.rclpy_logging_rcutils_log(
            LoggingSeverity.INFO, name, f'control client c{n} connected', 'main', __file__, 1),
        'held back': lambda n: budget.info(
            'connected', 'control client c%d connected from 192.0.2.1 (view only)', n),
    }
    results = {case: [] for case in cases}
    saved = os.dup(2)
    try:
        for _ in range(options.rounds):
            for case, say in cases.items():
                with open(os.devnull, 'w') as devnull:
                    os.dup2(devnull.fileno(), 2)
                    try:
                        results[case].append(time_lines(say, options.lines))
                    finally:
                        os.dup2(saved, 2)
    finally:
        os.close(saved)
        node.destroy_node()
        rclpy.try_shutdown()
    print(table(['case', 'us per line (each round)', 'best us'],
                [[case, ', '.join(fmt(value) for value in values), fmt(min(values))]
                 for case, values in results.items()]))
    sys.stdout.flush()


if __name__ == '__main__':
    main()
