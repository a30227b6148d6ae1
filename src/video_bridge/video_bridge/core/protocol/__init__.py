"""
The wire format between the bridge and its clients, in one place, split by concern.

Mirrored by ``web/js/protocol.js`` and documented in ``docs/protocol.md``; the three change
together. Pure: no sockets, no ROS. The server feeds it bytes and strings and gets typed values
back; the teleop core consumes the typed control messages and produces the typed replies.

* :mod:`.errors`: ``ProtocolError``, the one list of error codes, close codes per transport;
* :mod:`.routes`: request targets (endpoint, stream, variant, fps) and the presented token;
* :mod:`.frames`: the binary header of a video frame on a websocket;
* :mod:`.control`: teleop requests and replies on ``/control`` and the data channel;
* :mod:`.signalling`: the typed, bounded WebRTC signalling requests (``webrtc_*``).

Everything is importable from here (``from video_bridge.core import protocol``).
"""

from video_bridge.core.protocol.control import (Ack, Acquire, ControlMessage, ControlState,
                                                decode_control, decode_control_object,
                                                EmergencyStop, encode_control, ErrorReply, Hello,
                                                MAX_CONTROL_MESSAGE, MAX_NAME, MAX_REQUEST_ID,
                                                MAX_SAFE_INTEGER, NamedCommand,
                                                parse_control_object, PROTOCOL_VERSION, Release,
                                                RequestId, TimeReply, TimeSync, Velocity,
                                                VelocityCommand, ZERO)
from video_bridge.core.protocol.errors import (CLOSE_BAD_REQUEST, CLOSE_CAPACITY, CLOSE_GOING_AWAY,
                                               CLOSE_NORMAL, CLOSE_POLICY, CLOSE_RATE_LIMITED,
                                               CLOSE_TOO_BIG, CLOSE_UNAUTHORIZED,
                                               CLOSE_UNKNOWN_STREAM, CLOSE_UNSUPPORTED_DATA,
                                               ErrorCode, HTTP_STATUSES, ProtocolError,
                                               VIDEO_CLOSE_CODES)
from video_bridge.core.protocol.frames import (FLAG_COLORMAPPED, FLAG_PASSTHROUGH, FLAG_SCALED,
                                               FRAME_HEADER, FRAME_MAGIC, FrameHeader,
                                               pack_frame_header, unpack_frame)
from video_bridge.core.protocol.routes import (CONTROL_PATH, MAX_DIMENSION, MAX_FPS,
                                               MAX_STREAM_NAME, MJPEG_PREFIX, parse_fps,
                                               parse_target, parse_variant, presented_token,
                                               quote_stream, SNAPSHOT_PREFIX, split_target,
                                               stream_name, STREAM_ROUTES, STREAMS_PATH, Target,
                                               Variant, VIDEO_PREFIX)
from video_bridge.core.protocol.signalling import (CANDIDATE_FIELDS, DATA_CHANNEL_COMMANDS,
                                                   DATA_CHANNEL_LABEL, decode_signalling,
                                                   encode_signalling, is_signalling,
                                                   MAX_ANSWER_CANDIDATE_LINES, MAX_CANDIDATE,
                                                   MAX_CODEC_NAME, MAX_CODECS, MAX_SDP,
                                                   MAX_TRICKLED_CANDIDATES, signalling_request_id,
                                                   SignallingMessage, SignallingReply,
                                                   WEBRTC_PREFIX, WEBRTC_REPLIES, WEBRTC_REQUESTS,
                                                   WebRtcAnswer, WebRtcCandidate,
                                                   WebRtcConfigReply, WebRtcConfigRequest,
                                                   WebRtcError, WebRtcOffer, WebRtcStart,
                                                   WebRtcStop, WebRtcStopped)

__all__ = [
    'Ack', 'Acquire', 'CANDIDATE_FIELDS', 'CLOSE_BAD_REQUEST', 'CLOSE_CAPACITY',
    'CLOSE_GOING_AWAY', 'CLOSE_NORMAL', 'CLOSE_POLICY', 'CLOSE_RATE_LIMITED', 'CLOSE_TOO_BIG',
    'CLOSE_UNAUTHORIZED', 'CLOSE_UNKNOWN_STREAM', 'CLOSE_UNSUPPORTED_DATA', 'CONTROL_PATH',
    'ControlMessage', 'ControlState', 'DATA_CHANNEL_COMMANDS', 'DATA_CHANNEL_LABEL',
    'decode_control', 'decode_control_object', 'decode_signalling', 'EmergencyStop',
    'encode_control', 'encode_signalling', 'ErrorCode', 'ErrorReply', 'FLAG_COLORMAPPED',
    'FLAG_PASSTHROUGH', 'FLAG_SCALED', 'FRAME_HEADER', 'FRAME_MAGIC', 'FrameHeader', 'Hello',
    'HTTP_STATUSES', 'is_signalling', 'MAX_ANSWER_CANDIDATE_LINES', 'MAX_CANDIDATE',
    'MAX_CODEC_NAME', 'MAX_CODECS', 'MAX_CONTROL_MESSAGE', 'MAX_DIMENSION', 'MAX_FPS', 'MAX_NAME',
    'MAX_REQUEST_ID', 'MAX_SAFE_INTEGER', 'MAX_SDP', 'MAX_STREAM_NAME', 'MAX_TRICKLED_CANDIDATES',
    'MJPEG_PREFIX', 'NamedCommand', 'pack_frame_header', 'parse_control_object', 'parse_fps',
    'parse_target', 'parse_variant', 'presented_token', 'PROTOCOL_VERSION', 'ProtocolError',
    'quote_stream', 'Release', 'RequestId', 'signalling_request_id', 'SignallingMessage',
    'SignallingReply', 'SNAPSHOT_PREFIX', 'split_target', 'stream_name', 'STREAM_ROUTES',
    'STREAMS_PATH', 'Target', 'TimeReply', 'TimeSync', 'unpack_frame', 'Variant', 'Velocity',
    'VelocityCommand', 'VIDEO_CLOSE_CODES', 'VIDEO_PREFIX', 'WEBRTC_PREFIX', 'WEBRTC_REPLIES',
    'WEBRTC_REQUESTS', 'WebRtcAnswer', 'WebRtcCandidate', 'WebRtcConfigReply',
    'WebRtcConfigRequest', 'WebRtcError', 'WebRtcOffer', 'WebRtcStart', 'WebRtcStop',
    'WebRtcStopped', 'ZERO',
]
