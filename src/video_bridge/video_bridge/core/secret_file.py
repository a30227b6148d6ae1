"""
Secrets the bridge reads from files, never from ROS parameters.

Any node on the DDS graph can read parameters (``ros2 param get``), so the control token, the
TURN shared secret and the static TURN password each come from a file a parameter names
(``token_file``, ``turn_secret_file``, ``turn_password_file``). Pure: errors name the parameter
and the path, never the secret.

The secret is the file's first line with surrounding whitespace (spaces, tabs, CR/LF) stripped,
so ``echo secret > file`` and files written on Windows both work; a secret cannot begin or end
with whitespace. Further lines are ignored (room for a comment). A file that other users of the
machine may read is not refused (deployments differ), but :func:`exposure_warning` says so, so the
bridge can warn.
"""

import os
import stat
from typing import Optional

MAX_SECRET = 4096  # characters: a token or TURN secret is tens; /dev/zero must not be read forever


def read_secret_file(path: str, parameter: str) -> str:
    """Return the first line of ``path``, stripped; ValueError naming ``parameter`` if unusable."""
    try:
        with open(path, encoding='utf-8') as handle:
            line = handle.readline(MAX_SECRET + 1)
    except OSError as exc:
        raise ValueError(f'cannot read {parameter} {path!r}: {exc.strerror}') from None
    except UnicodeDecodeError:
        raise ValueError(f'{parameter} {path!r} is not UTF-8 text') from None
    if len(line) > MAX_SECRET:
        raise ValueError(f'{parameter} {path!r}: the first line is longer than {MAX_SECRET} '
                         'characters')
    secret = line.strip()
    if not secret:
        raise ValueError(f'{parameter} {path!r} is empty')
    return secret


def exposure_warning(path: str, parameter: str) -> Optional[str]:
    """Return a warning if users other than the owner and its group may read ``path``, or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # read_secret_file reports unreadable files
    if mode & stat.S_IROTH:
        return (f'{parameter} {path!r} is readable by every user of this machine '
                f'(chmod 600 or 640 it)')
    return None
