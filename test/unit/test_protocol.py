"""Tests for video_bridge.core.protocol: the wire format, and its agreement with docs/protocol.md.
"""

import json
import math
import os
import re
import struct

from hypothesis import given, settings, strategies as st
import pytest
from video_bridge.core import protocol
from video_bridge.core.protocol import (
    Ack, Acquire, ControlState, EmergencyStop, ErrorReply, FrameHeader, Hello, NamedCommand,
    ProtocolError, Release, Target, TimeReply, TimeSync, Variant, Velocity, VelocityCommand)
from websockets.datastructures import Headers

DOC = os.path.join(os.path.dirname(__file__), '..', '..', 'docs', 'protocol.md')
CONTROL_TYPES = (Acquire, Release, NamedCommand, VelocityCommand, EmergencyStop, TimeSync)


def doc_text():
    with open(DOC, encoding='utf-8') as handle:
        return handle.read()


def error_of(data):
    """Decode ``data`` and return the ProtocolError it must raise."""
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_control(data)
    return caught.value


def strict_json(text):
    """Parse JSON text, refusing NaN and Infinity as a browser's JSON.parse would."""
    def refuse(name):
        raise AssertionError(f'{name} in {text!r}')
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- request targets

@pytest.mark.parametrize('target, kind, stream', [
    ('/video/front', 'video', 'front'),
    ('/mjpeg/front', 'mjpeg', 'front'),
    ('/snapshot/front', 'snapshot', 'front'),
    ('/control', 'control', ''),
    ('/api/streams', 'streams', ''),
    ('/', 'static', ''),
    ('/index.html', 'static', ''),
    ('/js/app.js', 'static', ''),
    ('/video', 'static', ''),
    ('/control/', 'static', ''),
])
def test_parse_target_recognises_every_endpoint(target, kind, stream):
    parsed = protocol.parse_target(target)
    assert (parsed.kind, parsed.stream) == (kind, stream)


@pytest.mark.parametrize('prefix', ['/video/', '/mjpeg/', '/snapshot/'])
def test_parse_target_unescapes_topic_streams(prefix):
    parsed = protocol.parse_target(prefix + '%2Fcam%2Fimage?width=320')
    assert parsed.stream == '/cam/image'
    assert parsed.query == {'width': '320'}


def test_quote_stream_round_trips_through_parse_target():
    for name in ['/camera/depth/image_raw', 'front', 'caméra 1', 'a?b#c&d']:
        assert protocol.parse_target('/video/' + protocol.quote_stream(name)).stream == name


def test_parse_target_keeps_the_last_of_repeated_query_values_and_blank_ones():
    parsed = protocol.parse_target('/control?token=a&token=b&id=')
    assert parsed == Target('control', '', '/control', {'token': 'b', 'id': ''})


@pytest.mark.parametrize('target', [
    '/video/',                       # empty
    '/mjpeg/?width=1',               # empty, with a query
    '/video/front/extra',            # a slash in the segment
    '/snapshot/front/',              # trailing slash
    '/video/a%00b',                  # control characters
    '/video/%0A',
    '/mjpeg/tab%09',
    '/video/%7F',
    '/video/' + 'x' * (protocol.MAX_STREAM_NAME + 1),
    '/video/' + '%2F' * (protocol.MAX_STREAM_NAME + 1),
])
def test_parse_target_refuses_bad_stream_names(target):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_target(target)
    assert caught.value.code == 'bad_stream'


def test_parse_target_accepts_a_stream_name_of_maximum_length():
    name = 'é' * protocol.MAX_STREAM_NAME
    assert protocol.parse_target('/video/' + protocol.quote_stream(name)).stream == name


# ---------------------------------------------------------------- variants

def test_parse_variant_reads_width_height_and_quality():
    assert protocol.parse_variant({'width': '320', 'height': '240', 'quality': '55',
                                   'token': 'x'}) == Variant(320, 240, 55)


def test_parse_variant_treats_absent_and_empty_values_as_zero():
    assert protocol.parse_variant({}) == Variant()
    assert protocol.parse_variant({'width': '', 'height': '', 'quality': ''}) == Variant()


def test_parse_variant_accepts_the_bounds_of_each_range():
    top = str(protocol.MAX_DIMENSION)
    assert protocol.parse_variant({'width': top, 'height': top, 'quality': '100'}) == \
        Variant(protocol.MAX_DIMENSION, protocol.MAX_DIMENSION, 100)
    assert protocol.parse_variant({'width': '0', 'height': '0', 'quality': '1'}) == \
        Variant(0, 0, 1)


@pytest.mark.parametrize('query', [
    {'width': '-1'}, {'height': '-5'}, {'width': str(protocol.MAX_DIMENSION + 1)},
    {'height': str(protocol.MAX_DIMENSION + 1)}, {'quality': '101'}, {'quality': '-1'},
    {'width': 'abc'}, {'height': '1.5'}, {'quality': 'high'}, {'width': '0x10'},
])
def test_parse_variant_refuses_out_of_range_and_non_integer_values(query):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_variant(query)
    assert caught.value.code == 'bad_variant'


def test_parse_variant_refuses_quality_zero_as_the_docs_say():
    with pytest.raises(ProtocolError):
        protocol.parse_variant({'quality': '0'})


def test_variant_resolved_fills_in_only_a_missing_quality():
    assert Variant(10, 20).resolved(70) == Variant(10, 20, 70)
    assert Variant(10, 20, 30).resolved(70) == Variant(10, 20, 30)


# ---------------------------------------------------------------- tokens

def test_presented_token_reads_a_bearer_header():
    assert protocol.presented_token({}, Headers({'Authorization': 'Bearer s3cret'})) == 's3cret'


def test_presented_token_prefers_the_header_to_the_query():
    headers = Headers({'authorization': 'bearer from-header'})
    assert protocol.presented_token({'token': 'from-query'}, headers) == 'from-header'


def test_presented_token_falls_back_to_the_query():
    assert protocol.presented_token({'token': 'q'}, Headers()) == 'q'
    assert protocol.presented_token({'token': 'q'}, None) == 'q'
    assert protocol.presented_token({'token': 'q'}, Headers({'Authorization': 'Basic eA=='})) \
        == 'q'


def test_presented_token_is_none_when_nothing_is_presented():
    assert protocol.presented_token({}, Headers()) is None
    assert protocol.presented_token({'token': ''}, None) is None


# ---------------------------------------------------------------- frame header

HEADER = FrameHeader(seq=7, width=640, height=480, stamp_sec=1712345678,
                     stamp_nanosec=123456789, received_time=1712345678.5, flags=5)


def test_frame_header_round_trips():
    header, jpeg = protocol.unpack_frame(protocol.pack_frame_header(HEADER) + b'\xff\xd8jpeg')
    assert header == HEADER
    assert bytes(jpeg) == b'\xff\xd8jpeg'


def test_frame_header_has_known_bytes_at_known_offsets():
    data = protocol.pack_frame_header(HEADER)
    assert len(data) == 32
    assert data[0:4] == b'VBF1'
    assert struct.unpack_from('<H', data, 4) == (32,)
    assert struct.unpack_from('<H', data, 6) == (5,)
    assert struct.unpack_from('<I', data, 8) == (7,)
    assert struct.unpack_from('<HH', data, 12) == (640, 480)
    assert struct.unpack_from('<i', data, 16) == (1712345678,)
    assert struct.unpack_from('<I', data, 20) == (123456789,)
    assert struct.unpack_from('<d', data, 24) == (1712345678.5,)


def test_frame_header_stamp_may_be_negative_and_seq_wraps_at_32_bits():
    header = FrameHeader(2 ** 32 + 3, 1, 1, -5, 0, 0.0)
    unpacked, _ = protocol.unpack_frame(protocol.pack_frame_header(header))
    assert (unpacked.seq, unpacked.stamp_sec) == (3, -5)


def test_frame_header_stamp_is_in_seconds():
    assert HEADER.stamp == pytest.approx(1712345678.123456789)


def test_unpack_frame_skips_to_a_longer_header_length():
    data = bytearray(protocol.pack_frame_header(HEADER) + b'new-fieldJPEG')
    struct.pack_into('<H', data, 4, 41)
    header, jpeg = protocol.unpack_frame(bytes(data))
    assert bytes(jpeg) == b'JPEG'
    assert header.seq == HEADER.seq


@pytest.mark.parametrize('message', [
    b'',
    b'VBF1',
    protocol.pack_frame_header(HEADER)[:31],
    b'XXXX' + protocol.pack_frame_header(HEADER)[4:],
    b'\x00' * 64,
    b'\xff\xd8\xff' * 20,
    protocol.pack_frame_header(HEADER)[:4] + struct.pack('<H', 31)
    + protocol.pack_frame_header(HEADER)[6:],
])
def test_unpack_frame_refuses_short_or_foreign_messages(message):
    with pytest.raises(ProtocolError) as caught:
        protocol.unpack_frame(message)
    assert caught.value.code == 'bad_frame'


def test_unpack_frame_refuses_a_header_length_beyond_the_message():
    data = bytearray(protocol.pack_frame_header(HEADER) + b'JPEG')
    struct.pack_into('<H', data, 4, 1000)
    with pytest.raises(ProtocolError):
        protocol.unpack_frame(bytes(data))


def test_frame_header_layout_matches_the_documented_table():
    rows = re.findall(r'^\| (\d+) \| ([^|]+?) \| (.+?) \|$', doc_text(), re.MULTILINE)
    documented = [(int(offset), kind.strip()) for offset, kind, _ in rows
                  if kind.strip() in ('4 bytes', 'uint16', 'uint32', 'int32', 'float64')]
    codes = {'4 bytes': '4s', 'uint16': 'H', 'uint32': 'I', 'int32': 'i', 'float64': 'd'}
    layout = re.findall(r'\d*[a-zA-Z?]', protocol.FRAME_HEADER.format[1:])
    assert protocol.FRAME_HEADER.format[0] == '<'  # little-endian, as documented
    offsets = [struct.calcsize('<' + ''.join(layout[:i])) for i in range(len(layout))]
    assert [(offset, codes[kind]) for offset, kind in documented] == list(zip(offsets, layout))
    assert re.search(r'^\| 32 \| \.\.\. \| JPEG bytes \|$', doc_text(), re.MULTILINE)


def test_frame_flags_match_the_documented_bits():
    text = doc_text()
    assert 'bit 0 passthrough' in text and protocol.FLAG_PASSTHROUGH == 1 << 0
    assert 'bit 1 scaled down' in text and protocol.FLAG_SCALED == 1 << 1
    assert 'bit 2 colour-mapped' in text and protocol.FLAG_COLORMAPPED == 1 << 2


@pytest.mark.parametrize('raw, fps', [('', 0.0), ('0', 0.0), ('5', 5.0), ('2.5', 2.5),
                                      ('120', 120.0)])
def test_parse_fps_reads_a_rate(raw, fps):
    assert protocol.parse_fps({'fps': raw} if raw else {}) == fps


@pytest.mark.parametrize('raw', ['-1', '121', 'nan', 'inf', 'fast', '1e400', '５', '1' * 17])
def test_parse_fps_refuses_anything_else(raw):
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse_fps({'fps': raw})
    assert refused.value.code == 'bad_variant'


def test_close_codes_match_the_documented_table():
    table = dict(re.findall(r'^\| (\d{4}) \| (.+?) \|$', doc_text(), re.MULTILINE))
    assert {int(code) for code in table} == {
        protocol.CLOSE_GOING_AWAY, protocol.CLOSE_UNSUPPORTED_DATA, protocol.CLOSE_BAD_REQUEST,
        protocol.CLOSE_UNAUTHORIZED, protocol.CLOSE_UNKNOWN_STREAM, protocol.CLOSE_CAPACITY,
        protocol.CLOSE_POLICY, protocol.CLOSE_TOO_BIG}
    assert 'send_timeout' in table[str(protocol.CLOSE_POLICY)]
    assert 'size limit' in table[str(protocol.CLOSE_TOO_BIG)]
    assert 'shutting down' in table[str(protocol.CLOSE_GOING_AWAY)]
    assert 'sent data' in table[str(protocol.CLOSE_UNSUPPORTED_DATA)]
    assert 'bad request' in table[str(protocol.CLOSE_BAD_REQUEST)]
    assert 'token' in table[str(protocol.CLOSE_UNAUTHORIZED)]
    assert 'unknown stream' in table[str(protocol.CLOSE_UNKNOWN_STREAM)]
    assert 'limit' in table[str(protocol.CLOSE_CAPACITY)]
    assert f'closed with {protocol.CLOSE_RATE_LIMITED}' in doc_text()


# ---------------------------------------------------------------- control messages in

@pytest.mark.parametrize('text, expected', [
    ('{"type": "acquire"}', Acquire(False)),
    ('{"type": "acquire", "takeover": true}', Acquire(True)),
    ('{"type": "release"}', Release()),
    ('{"type": "command", "name": "forward"}', NamedCommand('forward', None)),
    ('{"type": "command", "name": "left", "speed": 0.5}', NamedCommand('left', 0.5)),
    ('{"type": "command", "name": "x", "speed": 1}', NamedCommand('x', 1.0)),
    ('{"type": "command", "name": "x", "speed": 0}', NamedCommand('x', 0.0)),
    ('{"type": "velocity"}', VelocityCommand(Velocity())),
    ('{"type": "velocity", "linear": {"x": 0.2}, "angular": {"z": -0.4}}',
     VelocityCommand(Velocity(linear_x=0.2, angular_z=-0.4))),
    ('{"type": "velocity", "linear": {"x": 1, "y": 2, "z": 3}, '
     '"angular": {"x": 4, "y": 5, "z": 6}}', VelocityCommand(Velocity(1, 2, 3, 4, 5, 6))),
    ('{"type": "estop", "engage": true}', EmergencyStop(True)),
    ('{"type": "estop", "engage": false}', EmergencyStop(False)),
    ('{"type": "time", "t0": 1712345678901.2}', TimeSync(1712345678901.2)),
    ('{"type": "time"}', TimeSync(0.0)),
])
def test_decode_control_reads_every_message_type(text, expected):
    assert protocol.decode_control(text) == (None, expected)


def test_decode_control_gives_floats_for_integer_json_numbers():
    _, message = protocol.decode_control('{"type": "velocity", "linear": {"x": 1}}')
    assert isinstance(message.velocity.linear_x, float)


@pytest.mark.parametrize('request_id', ['abc', 'x' * protocol.MAX_REQUEST_ID, 7, 0, -3, 1.5])
def test_decode_control_returns_the_request_id(request_id):
    text = json.dumps({'type': 'release', 'id': request_id})
    assert protocol.decode_control(text) == (request_id, Release())


def test_decode_control_treats_a_null_id_as_none():
    assert protocol.decode_control('{"type": "release", "id": null}') == (None, Release())


@pytest.mark.parametrize('text, code', [
    ('{"type": "command", "id": "r1"}', 'bad_message'),
    ('{"type": "fly", "id": "r1"}', 'unknown_type'),
    ('{"id": "r1", "type": "velocity", "linear": {"x": 1e999}}', 'bad_number'),
    ('{"type": "estop", "id": "r1"}', 'bad_message'),
    ('{"type": "command", "name": "forward", "speed": true, "id": "r1"}', 'bad_message'),
])
def test_decode_control_attaches_a_readable_id_to_errors(text, code):
    error = error_of(text)
    assert (error.code, error.request_id) == (code, 'r1')


@pytest.mark.parametrize('text', [
    '{"type": "release", "id": "' + 'x' * (protocol.MAX_REQUEST_ID + 1) + '"}',
    '{"type": "release", "id": true}',
    '{"type": "release", "id": [1]}',
    '{"type": "release", "id": {"a": 1}}',
])
def test_decode_control_refuses_unreadable_ids_without_echoing_them(text):
    error = error_of(text)
    assert error.code == 'bad_message'
    assert getattr(error, 'request_id', None) is None


def test_decode_control_refuses_an_infinite_id():
    error = error_of('{"type": "release", "id": 1e999}')
    assert error.code == 'bad_number'
    assert getattr(error, 'request_id', None) is None


@pytest.mark.parametrize('text', ['', '{', 'not json', '{"type": "release"} x', "{'a': 1}",
                                  '[' * 2048 + ']' * 2048])
def test_decode_control_reports_bad_json(text):
    error = error_of(text)
    assert error.code == 'bad_json'
    assert getattr(error, 'request_id', None) is None


@pytest.mark.parametrize('text', ['[]', '"release"', '3', 'null', '{}', '{"type": 3}',
                                  '{"type": null}'])
def test_decode_control_refuses_non_objects_and_missing_types(text):
    assert error_of(text).code == 'bad_message'


@pytest.mark.parametrize('data', [b'{"type": "release"}', bytearray(b'{}'), memoryview(b'{}')])
def test_decode_control_refuses_binary_messages(data):
    assert error_of(data).code == 'bad_message'


@pytest.mark.parametrize('text', [
    '{"type": "time", "t0": NaN}',
    '{"type": "time", "t0": Infinity}',
    '{"type": "time", "t0": -Infinity}',
    '{"type": "time", "t0": 1e999}',
    '{"type": "time", "t0": -1e999}',
    '{"type": "command", "name": "forward", "speed": NaN}',
    '{"type": "velocity", "angular": {"z": Infinity}}',
    '{"type": "velocity", "linear": {"y": -1e999}}',
    '{"type": "release", "extra": NaN}',
])
def test_decode_control_refuses_non_finite_numbers(text):
    assert error_of(text).code == 'bad_number'


@pytest.mark.parametrize('template', [
    '{{"type": "time", "t0": {}}}',
    '{{"type": "command", "name": "forward", "speed": {}}}',
    '{{"type": "velocity", "linear": {{"x": {}}}}}',
])
def test_decode_control_refuses_integers_too_large_for_a_float(template):
    assert error_of(template.format('1' + '0' * 400)).code == 'bad_number'


@pytest.mark.parametrize('text', [
    '{"type": "time", "t0": true}',
    '{"type": "command", "name": "forward", "speed": false}',
    '{"type": "velocity", "linear": {"x": true}}',
    '{"type": "time", "t0": "1"}',
    '{"type": "velocity", "angular": {"z": null}}',
    '{"type": "command", "name": "forward", "speed": [0.5]}',
])
def test_decode_control_refuses_booleans_and_other_non_numbers_as_numbers(text):
    assert error_of(text).code == 'bad_message'


@pytest.mark.parametrize('text', [
    '{"type": "acquire", "takeover": 1}',
    '{"type": "acquire", "takeover": "yes"}',
    '{"type": "estop", "engage": 0}',
    '{"type": "estop", "engage": null}',
])
def test_decode_control_refuses_non_booleans_where_booleans_are_expected(text):
    assert error_of(text).code == 'bad_message'


@pytest.mark.parametrize('body', [
    {'type': 'command'},
    {'type': 'command', 'name': ''},
    {'type': 'command', 'name': 5},
    {'type': 'command', 'name': 'x' * (protocol.MAX_NAME + 1)},
    {'type': 'command', 'name': 'forward', 'speed': -0.01},
    {'type': 'command', 'name': 'forward', 'speed': 1.01},
    {'type': 'velocity', 'linear': [0.1, 0, 0]},
    {'type': 'velocity', 'linear': {'w': 1}},
    {'type': 'velocity', 'angular': 0.5},
    {'type': 'velocity', 'linear': {}, 'speed': 1},
])
def test_decode_control_refuses_malformed_bodies(body):
    assert error_of(json.dumps(body)).code == 'bad_message'


def test_decode_control_accepts_a_name_of_maximum_length():
    name = 'n' * protocol.MAX_NAME
    assert protocol.decode_control(json.dumps({'type': 'command', 'name': name})) == \
        (None, NamedCommand(name))


@pytest.mark.parametrize('kind', ['fly', '', 'RELEASE', 'x' * 1000])
def test_decode_control_reports_unknown_types(kind):
    error = error_of(json.dumps({'type': kind}))
    assert error.code == 'unknown_type'
    assert len(error.message) < 200


def test_decode_control_size_limit_is_inclusive():
    base = '{"type": "release"}'
    exact = base + ' ' * (protocol.MAX_CONTROL_MESSAGE - len(base))
    assert protocol.decode_control(exact) == (None, Release())
    assert error_of(exact + ' ').code == 'too_large'


def test_decode_control_error_codes_are_documented():
    documented = re.search(r'^Error codes: (.+?)\.$', doc_text(), re.MULTILINE | re.DOTALL)
    codes = set(re.findall(r'`(\w+)`', documented.group(1)))
    assert {'bad_json', 'bad_message', 'bad_number', 'too_large', 'unknown_type'} <= codes


def test_documented_client_messages_decode():
    v1_part = doc_text().split('\n## WebRTC')[0]   # webrtc_* messages: test_webrtc_*.py
    examples = re.findall(r'^\| `(\{"type".*?\})` \|', v1_part, re.MULTILINE)
    assert len(examples) == 6
    decoded = [protocol.decode_control(example)[1] for example in examples]
    assert {type(message) for message in decoded} == set(CONTROL_TYPES)


# ---------------------------------------------------------------- fuzz

def check_decoded(result):
    request_id, message = result
    assert request_id is None or type(request_id) in (str, int, float)
    assert isinstance(message, CONTROL_TYPES)
    if isinstance(message, VelocityCommand):
        assert all(math.isfinite(v) for v in message.velocity.as_dict()['linear'].values())
        assert all(math.isfinite(v) for v in message.velocity.as_dict()['angular'].values())
    if isinstance(message, NamedCommand) and message.speed is not None:
        assert 0.0 <= message.speed <= 1.0
    if isinstance(message, TimeSync):
        assert math.isfinite(message.t0)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_decode_control_raises_only_protocol_errors_for_arbitrary_text(text):
    try:
        check_decoded(protocol.decode_control(text))
    except ProtocolError as error:
        assert error.code in ('bad_json', 'bad_message', 'bad_number', 'too_large',
                              'unknown_type')


# Integers are kept within float range here: larger ones hit the OverflowError bug above.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 1023, 2 ** 1023) | st.floats()
    | st.text(max_size=8) | st.sampled_from(['x', 'y', 'z', 'forward']),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(['x', 'y', 'z', 'w']), inner, max_size=4),
    max_leaves=8)
control_objects = st.builds(
    lambda kind, body: {'type': kind, **body},
    st.sampled_from(['acquire', 'release', 'command', 'velocity', 'estop', 'time', 'x'])
    | json_values,
    st.dictionaries(st.sampled_from(['id', 'name', 'speed', 'linear', 'angular', 'takeover',
                                     'engage', 't0', 'other']), json_values, max_size=5))


@settings(max_examples=1000, deadline=None)
@given(control_objects)
def test_decode_control_raises_only_protocol_errors_for_arbitrary_json_objects(body):
    try:
        check_decoded(protocol.decode_control(json.dumps(body)))
    except ProtocolError as error:
        assert error.code in ('bad_json', 'bad_message', 'bad_number', 'too_large',
                              'unknown_type')


# ---------------------------------------------------------------- control messages out

HELLO = Hello(client_id='c3', can_drive=True, token_required=False,
              commands=('forward', 'stop'), max_linear=0.5, max_angular=1.0,
              command_timeout=0.5, holonomic=False, allow_takeover=True)
OUTGOING = [
    HELLO,
    Ack('r1', Velocity(linear_x=0.5, angular_z=0.25), clamped=True,
        message='linear.x clamped to 0.5'),
    Ack(7),
    ErrorReply(7, 'not_driver', 'c2 is driving'),
    ControlState('c3', False, Velocity(linear_x=0.25)),
    ControlState(None, True, Velocity()),
    TimeReply(1712345678901.2, 1712345679.5),
]


@pytest.mark.parametrize('message', OUTGOING)
def test_encode_control_writes_compact_json_without_nan(message):
    text = protocol.encode_control(message, recipient='c3')
    obj = strict_json(text)
    assert obj['type'] == {Hello: 'hello', Ack: 'ack', ErrorReply: 'error',
                           ControlState: 'state', TimeReply: 'time'}[type(message)]
    assert text == json.dumps(obj, separators=(',', ':'))


def test_encode_control_hello_carries_the_protocol_version_and_limits():
    obj = strict_json(protocol.encode_control(HELLO))
    assert obj == {'type': 'hello', 'protocol': 2, 'client_id': 'c3', 'can_drive': True,
                   'token_required': False, 'commands': ['forward', 'stop'],
                   'limits': {'linear': 0.5, 'angular': 1.0}, 'command_timeout': 0.5,
                   'holonomic': False, 'allow_takeover': True}


def test_encode_control_ack_echoes_the_id_and_the_applied_velocity():
    obj = strict_json(protocol.encode_control(OUTGOING[1]))
    assert obj == {'type': 'ack', 'id': 'r1', 'clamped': True,
                   'message': 'linear.x clamped to 0.5',
                   'applied': {'linear': {'x': 0.5, 'y': 0.0, 'z': 0.0},
                               'angular': {'x': 0.0, 'y': 0.0, 'z': 0.25}}}
    assert strict_json(protocol.encode_control(Ack(7))) == {
        'type': 'ack', 'id': 7, 'clamped': False, 'applied': None}


def test_encode_control_error_echoes_the_id_and_code():
    assert strict_json(protocol.encode_control(OUTGOING[3])) == {
        'type': 'error', 'id': 7, 'code': 'not_driver', 'message': 'c2 is driving'}


def test_encode_control_state_tells_only_the_driver_that_it_drives():
    state = ControlState('c3', False, Velocity())
    assert strict_json(protocol.encode_control(state, recipient='c3'))['you_drive'] is True
    assert strict_json(protocol.encode_control(state, recipient='c4'))['you_drive'] is False
    assert strict_json(protocol.encode_control(state))['you_drive'] is False
    nobody = ControlState(None, False, Velocity())
    assert strict_json(protocol.encode_control(nobody))['you_drive'] is False


def test_encode_control_time_echoes_t0():
    _, probe = protocol.decode_control('{"type": "time", "t0": 1712345678901.2}')
    reply = strict_json(protocol.encode_control(TimeReply(probe.t0, 5.0)))
    assert reply == {'type': 'time', 'id': None, 't0': 1712345678901.2, 'server_time': 5.0}


def test_encode_control_refuses_to_write_nan():
    with pytest.raises(ValueError):
        protocol.encode_control(TimeReply(float('nan'), 1.0))


def test_encode_control_refuses_incoming_messages():
    with pytest.raises(TypeError):
        protocol.encode_control(Release())


def test_encoded_messages_have_the_documented_fields():
    objects, decoder = {}, json.JSONDecoder()
    for block in re.findall(r'```json\n(.*?)```', doc_text().split('\n## WebRTC')[0],
                            re.DOTALL):
        position = 0
        while block[position:].strip():  # a block may hold several objects
            obj, position = decoder.raw_decode(block, len(block) - len(block[position:].lstrip()))
            if 'type' in obj:
                objects[obj['type']] = obj
    assert set(objects) == {'hello', 'state', 'ack', 'error'}
    encoded = {message['type']: message for message in
               map(strict_json, map(protocol.encode_control, OUTGOING[:2] + OUTGOING[3:5]))}
    for kind, documented in objects.items():
        assert set(encoded[kind]) == set(documented), kind
    assert set(encoded['hello']['limits']) == set(objects['hello']['limits'])
    assert encoded['hello']['protocol'] == objects['hello']['protocol'] == \
        protocol.PROTOCOL_VERSION
