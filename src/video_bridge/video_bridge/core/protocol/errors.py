"""
How the bridge refuses: ``ProtocolError``, the one list of error codes, websocket close codes.

Each code has one meaning; one table per transport says how a refusal reads there (a close code
on ``/video``, an HTTP status), and docs/protocol.md lists them all.
"""

import enum


class ProtocolError(ValueError):
    """A client sent something the protocol does not allow; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003  # something was sent on a receive-only video socket
CLOSE_POLICY = 1008            # the client did not keep up (send deadline, unread data)
CLOSE_TOO_BIG = 1009           # a message over max_message_size
CLOSE_BAD_REQUEST = 4400       # bad variant parameters
CLOSE_UNAUTHORIZED = 4401      # token missing or wrong
CLOSE_UNKNOWN_STREAM = 4404
CLOSE_RATE_LIMITED = 4429      # kept exceeding the per-connection command rate
CLOSE_CAPACITY = 4503          # viewer or variant limit reached


class ErrorCode(enum.StrEnum):
    """
    Every machine-readable ``code`` a client can get, in one list.

    They reach clients in ``error`` and ``webrtc_error`` replies, as websocket close reasons'
    meanings and as HTTP statuses; the tables below map them per transport, and
    docs/protocol.md lists them all (a test keeps the three in step). A StrEnum: each member
    is its string, on the wire and in comparisons.
    """

    # the message itself
    BAD_JSON = 'bad_json'
    BAD_MESSAGE = 'bad_message'
    BAD_NUMBER = 'bad_number'
    TOO_LARGE = 'too_large'
    UNKNOWN_TYPE = 'unknown_type'
    UNKNOWN_COMMAND = 'unknown_command'
    # the URL and the frame header
    BAD_TARGET = 'bad_target'
    BAD_STREAM = 'bad_stream'
    BAD_VARIANT = 'bad_variant'
    BAD_FRAME = 'bad_frame'
    UNKNOWN_STREAM = 'unknown_stream'
    # rights, limits and state
    UNAUTHORIZED = 'unauthorized'
    CAPACITY = 'capacity'
    RATE_LIMITED = 'rate_limited'
    NOT_CONNECTED = 'not_connected'
    NOT_DRIVER = 'not_driver'
    DRIVER_BUSY = 'driver_busy'
    ESTOP_ENGAGED = 'estop_engaged'
    SHUTTING_DOWN = 'shutting_down'
    # WebRTC signalling (webrtc_error)
    WEBRTC_UNAVAILABLE = 'webrtc_unavailable'
    NO_COMMON_CODEC = 'no_common_codec'
    SUPERSEDED = 'superseded'
    BAD_STATE = 'bad_state'
    BAD_ANSWER = 'bad_answer'
    TOO_MANY_CANDIDATES = 'too_many_candidates'
    CANDIDATE_REFUSED = 'candidate_refused'
    CONNECT_TIMEOUT = 'connect_timeout'
    WEBRTC_FAILED = 'webrtc_failed'
    BAD_CHANNEL_MESSAGE = 'bad_channel_message'


# One table per transport: how a refusal of a request reads there (others: 4400 / 400).
VIDEO_CLOSE_CODES = {ErrorCode.UNAUTHORIZED: CLOSE_UNAUTHORIZED,
                     ErrorCode.UNKNOWN_STREAM: CLOSE_UNKNOWN_STREAM,
                     ErrorCode.CAPACITY: CLOSE_CAPACITY}
HTTP_STATUSES = {ErrorCode.UNAUTHORIZED: 401, ErrorCode.UNKNOWN_STREAM: 404,
                 ErrorCode.CAPACITY: 503}
