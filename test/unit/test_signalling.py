"""The typed WebRTC signalling requests of core.protocol: what each decodes to, and every field
bound and rejection, with the code the page is told (pure: no aiortc, no sockets)."""

import json

import pytest
from video_bridge.core import protocol
from video_bridge.core.protocol import (decode_signalling, ErrorCode, MAX_CANDIDATE,
                                        MAX_CODEC_NAME, MAX_CODECS, MAX_SDP, MAX_STREAM_NAME,
                                        MAX_TRICKLED_CANDIDATES, ProtocolError, WebRtcAnswer,
                                        WebRtcCandidate, WebRtcConfigRequest, WebRtcStart,
                                        WebRtcStop)

CANDIDATE = 'candidate:842163049 1 udp 1677729535 203.0.113.5 54321 typ srflx raddr 0.0.0.0 ' \
    'rport 0 generation 0 ufrag abcd network-cost 999'
SDP = 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n'


def refused(obj) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode_signalling(obj)
    return caught.value


@pytest.mark.parametrize('obj,expected', [
    ({'type': 'webrtc_config'}, WebRtcConfigRequest()),
    ({'type': 'webrtc_start', 'stream': 'front'}, WebRtcStart('front')),
    ({'type': 'webrtc_start', 'stream': '/camera/image_raw', 'codecs': ['H264', 'vp8']},
     WebRtcStart('/camera/image_raw', ('h264', 'vp8'))),
    ({'type': 'webrtc_start', 'stream': 'front', 'codecs': []}, WebRtcStart('front', ())),
    ({'type': 'webrtc_answer', 'sdp': SDP}, WebRtcAnswer(SDP)),
    ({'type': 'webrtc_ice', 'candidate': CANDIDATE, 'sdpMid': '0', 'sdpMLineIndex': 0},
     WebRtcCandidate(CANDIDATE)),
    ({'type': 'webrtc_ice', 'candidate': CANDIDATE[len('candidate:'):]},
     WebRtcCandidate(CANDIDATE[len('candidate:'):])),
    ({'type': 'webrtc_ice', 'candidate': ''}, WebRtcCandidate(None)),
    ({'type': 'webrtc_ice', 'candidate': None}, WebRtcCandidate(None)),
    ({'type': 'webrtc_ice'}, WebRtcCandidate(None)),
    ({'type': 'webrtc_stop'}, WebRtcStop()),
])
def test_each_request_decodes_to_its_type(obj, expected):
    request_id, request = decode_signalling({**obj, 'id': 'a1'})
    assert request_id == 'a1' and request == expected
    assert request.kind == obj['type'] and request.kind in protocol.WEBRTC_REQUESTS


def test_every_request_type_has_its_class():
    kinds = {cls.kind for cls in (WebRtcConfigRequest, WebRtcStart, WebRtcAnswer,
                                  WebRtcCandidate, WebRtcStop)}
    assert kinds == protocol.WEBRTC_REQUESTS


@pytest.mark.parametrize('obj,code', [
    # the type
    ({'type': 'webrtc_bogus'}, ErrorCode.UNKNOWN_TYPE),
    ({'type': 'webrtc_' + 'x' * 500}, ErrorCode.UNKNOWN_TYPE),
    ({'type': 'webrtc_offer'}, ErrorCode.UNKNOWN_TYPE),      # the bridge's, not the page's
    # webrtc_start: stream
    ({'type': 'webrtc_start'}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_start', 'stream': 7}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_start', 'stream': ''}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_start', 'stream': 'x' * (MAX_STREAM_NAME + 1)}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_start', 'stream': 'front\n'}, ErrorCode.BAD_MESSAGE),
    # webrtc_start: codecs
    ({'type': 'webrtc_start', 'stream': 'cam', 'codecs': 'h264'}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_start', 'stream': 'cam', 'codecs': [7]}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_start', 'stream': 'cam', 'codecs': ['']}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_start', 'stream': 'cam', 'codecs': ['h' * (MAX_CODEC_NAME + 1)]},
     ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_start', 'stream': 'cam', 'codecs': ['vp8'] * (MAX_CODECS + 1)},
     ErrorCode.BAD_MESSAGE),
    # webrtc_answer
    ({'type': 'webrtc_answer'}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_answer', 'sdp': ''}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_answer', 'sdp': {'sdp': SDP}}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_answer', 'sdp': 'hello'}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_answer', 'sdp': SDP + '\x00'}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_answer', 'sdp': SDP + 'a=x\r\n' * (MAX_SDP // 5)}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_answer', 'sdp': SDP + ''.join(
        f'a=candidate:1 1 udp 1 203.0.113.5 {1000 + n} typ host\r\n'
        for n in range(2 * MAX_TRICKLED_CANDIDATES + 1))}, ErrorCode.TOO_MANY_CANDIDATES),
    # webrtc_ice
    ({'type': 'webrtc_ice', 'candidate': 5}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_ice', 'candidate': CANDIDATE + ' x' * MAX_CANDIDATE},
     ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_ice', 'candidate': 'candidate:1 1 udp'}, ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_ice', 'candidate': 'candidate:1 x udp 1 203.0.113.5 9 typ host'},
     ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_ice', 'candidate': 'candidate:1 1 udp 1 203.0.113.5 port typ host'},
     ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_ice', 'candidate': 'candidate:1 1 udp 1 203.0.113.5 9 type host'},
     ErrorCode.BAD_MESSAGE),
    ({'type': 'webrtc_ice', 'candidate': 'candidate:1 1 udp 1 203.0.113.5 9 typ host\x07'},
     ErrorCode.BAD_MESSAGE),
])
def test_each_rejection_names_its_code_and_keeps_the_request_id(obj, code):
    error = refused({**obj, 'id': 9})
    assert error.code == code and error.code in set(ErrorCode)
    assert error.request_id == 9
    assert 0 < len(error.message) <= 200


def test_an_answer_with_the_most_candidate_lines_is_taken_one_more_is_not():
    def answer(lines):
        return {'type': 'webrtc_answer', 'sdp': SDP + ''.join(
            f'a=candidate:1 1 udp 1 203.0.113.5 {1000 + n} typ host\r\n' for n in range(lines))}
    most = answer(2 * MAX_TRICKLED_CANDIDATES)
    assert len(most['sdp']) <= MAX_SDP, 'the case must fail on the count, not on the length'
    assert isinstance(decode_signalling(most)[1], WebRtcAnswer)
    assert refused(answer(2 * MAX_TRICKLED_CANDIDATES + 1)).code == ErrorCode.TOO_MANY_CANDIDATES


@pytest.mark.parametrize('request_id,echoed', [
    (None, None), ('a' * 64, 'a' * 64), ('a' * 65, None), (7, 7), (2 ** 60, None),
    (True, None), ({'x': 1}, None), ([1], None), (1.5, 1.5),
])
def test_an_id_that_cannot_be_echoed_is_dropped_not_refused(request_id, echoed):
    got, request = decode_signalling({'type': 'webrtc_stop', 'id': request_id})
    assert got == echoed and request == WebRtcStop()
    assert protocol.signalling_request_id({'type': 'webrtc_stop', 'id': request_id}) == echoed


def test_the_messages_are_frozen():
    start = WebRtcStart('cam', ('h264',))
    with pytest.raises(AttributeError):
        start.stream = 'other'


def test_each_reply_encodes_to_its_json_object():
    from video_bridge.core.protocol import (encode_signalling, WebRtcConfigReply, WebRtcError,
                                            WebRtcOffer, WebRtcStopped)
    servers = ({'urls': ['stun:stun.example.org']},)
    cases = [
        (WebRtcConfigReply(True, ('h264', 'vp8'), servers,
                           (('h264', 'video/H264'), ('vp8', 'video/VP8'))), 1,
         {'type': 'webrtc_config', 'id': 1, 'enabled': True, 'codecs': ['h264', 'vp8'],
          'mime_types': {'h264': 'video/H264', 'vp8': 'video/VP8'},
          'ice_servers': [{'urls': ['stun:stun.example.org']}]}),
        (WebRtcOffer('v=0', 'h264', 'cam', (1200000, 600000)), 'a',
         {'type': 'webrtc_offer', 'id': 'a', 'sdp': 'v=0', 'codec': 'h264', 'stream': 'cam',
          'layers': [1200000, 600000]}),
        (WebRtcError(ErrorCode.BAD_STATE, 'no offer'), 2,
         {'type': 'webrtc_error', 'id': 2, 'code': 'bad_state', 'message': 'no offer'}),
        (WebRtcStopped(), 3, {'type': 'webrtc_stopped', 'id': 3}),
        (WebRtcStopped('gone', ErrorCode.CONNECT_TIMEOUT), None,
         {'type': 'webrtc_stopped', 'id': None, 'reason': 'gone', 'code': 'connect_timeout'}),
    ]
    for reply, request_id, expected in cases:
        obj = encode_signalling(reply, request_id)
        assert obj == expected and json.loads(json.dumps(obj)) == expected
        assert obj['type'] in protocol.WEBRTC_REPLIES
    with pytest.raises(TypeError):
        encode_signalling(WebRtcStop())
