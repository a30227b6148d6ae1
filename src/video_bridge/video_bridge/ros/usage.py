"""
``--help`` for the node executables: print what the node does and its parameters, then exit.

rclpy ignores unknown command-line arguments, so without this ``camera_node --help`` would just
start publishing. Arguments after ``--ros-args`` belong to ROS and are not looked at.
"""

import argparse
import sys
from typing import Dict, Optional, Sequence


def _user_arguments(argv: Sequence[str]) -> list:
    """Arguments before ``--ros-args`` (the program's own), without the program name."""
    args = list(argv[1:])
    return args[:args.index('--ros-args')] if '--ros-args' in args else args


def handle_help(prog: str, doc: str, parameters: Dict[str, tuple],
                argv: Optional[Sequence[str]] = None) -> Optional[int]:
    """
    Answer ``-h``/``--help`` (exit code 0) or a stray argument (exit code 2) like argparse.

    Returns None when the node should start. ``parameters`` maps a name to a tuple that
    starts with ``(default, description, ...)``.
    """
    argv = sys.argv if argv is None else argv
    lines = [f'  {name} (default {default!r}): {description}'
             for name, (default, description, *_) in parameters.items()]
    parser = argparse.ArgumentParser(
        prog=prog, description=doc.strip().split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(f'usage with ROS arguments:\n  {prog} --ros-args -p name:=value '
                '--params-file file.yaml -r __ns:=/robot1\n\nparameters:\n'
                + '\n'.join(lines)))
    try:
        parser.parse_args(_user_arguments(argv))
    except SystemExit as done:
        return int(done.code or 0)
    return None
