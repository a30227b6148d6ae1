"""
Who may watch and who may drive: token and browser Origin checks.

Pure. The token is compared in constant time and never appears in a log line or a message;
callers log only the outcome and the client's address.
"""

from dataclasses import dataclass
import hmac
import os
from typing import Optional, Tuple
from urllib.parse import urlsplit

TOKEN_ENV = 'VIDEO_BRIDGE_TOKEN'


def load_token(value: str = '', file: str = '', env: Optional[dict] = None) -> str:
    """
    Resolve the control token: parameter, else the file's first line, else $VIDEO_BRIDGE_TOKEN.

    An empty result means no token is required. A named file that cannot be read is an error,
    not a silent "no token".
    """
    if value.strip():
        return value.strip()
    if file:
        try:
            with open(file) as handle:
                token = handle.readline().strip()
        except OSError as exc:
            raise ValueError(f'cannot read token_file {file!r}: {exc.strerror}') from None
        if not token:
            raise ValueError(f'token_file {file!r} is empty')
        return token
    environ = os.environ if env is None else env
    return environ.get(TOKEN_ENV, '').strip()


@dataclass(frozen=True)
class AccessPolicy:
    """The bridge's access rules."""

    token: str = ''
    view_requires_token: bool = False
    allowed_origins: Tuple[str, ...] = ()  # empty: only the bridge's own origin; '*': any

    def __repr__(self) -> str:
        """Describe the policy without the token."""
        return (f'AccessPolicy(token={"set" if self.token else "none"}, '
                f'view_requires_token={self.view_requires_token}, '
                f'allowed_origins={self.allowed_origins})')

    @property
    def token_required(self) -> bool:
        """Tell whether driving needs a token."""
        return bool(self.token)

    def token_problem(self, presented: Optional[str]) -> Optional[str]:
        """Return why ``presented`` is refused ('token required', 'invalid token'), or None."""
        if not self.token:
            return None
        if not presented:
            return 'token required'
        if not hmac.compare_digest(presented.encode(), self.token.encode()):
            return 'invalid token'
        return None

    def view_problem(self, presented: Optional[str]) -> Optional[str]:
        """
        Return why this client may not watch, or None.

        A wrong token is refused even where watching needs none, so a typo is noticed.
        """
        problem = self.token_problem(presented)
        if problem == 'invalid token' or (problem and self.view_requires_token):
            return problem
        return None

    def may_drive(self, presented: Optional[str]) -> bool:
        """Tell whether this client may take the driver lock."""
        return self.token_problem(presented) is None

    def origin_allowed(self, origin: Optional[str], host: Optional[str]) -> bool:
        """
        Check a browser's Origin against the allow-list (default: the bridge's own origin).

        Programs that send no Origin header (curl, ffmpeg, rclpy tools) are not browsers and
        are not subject to this check; the token still applies to them.
        """
        if origin is None:
            return True
        if '*' in self.allowed_origins:
            return True
        origin = origin.strip().rstrip('/').lower()
        if self.allowed_origins:
            return origin in {allowed.rstrip('/').lower() for allowed in self.allowed_origins}
        if not host:
            return False
        return urlsplit(origin).netloc == host.strip().lower()
