"""core/cdr.py against the CDR that rclpy itself writes, and against hostile bytes.

What the bridge relies on: for every message rclpy's serialize_message makes (any stamp,
frame_id, format and data, including empty ones and every alignment), the parser returns the
same fields, the data as a view of the bytes (no copy); for bytes that are not such a message
(cut at any point, lengths beyond the buffer, strings without NUL or huge, another
encapsulation) it raises MalformedMessage and nothing else.
"""

import json
import random
import struct
import subprocess
import sys

from hypothesis import given, HealthCheck, settings, strategies as st
import pytest
from sensor_msgs.msg import CompressedImage, Image
from video_bridge.core import cdr

serialization = pytest.importorskip('rclpy.serialization')

TEXT = st.text(alphabet=st.characters(blacklist_characters='\x00',
                                      blacklist_categories=('Cs',)), max_size=40)


def compressed_image(sec, nanosec, frame_id, image_format, data) -> bytes:
    msg = CompressedImage()
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.header.frame_id, msg.format, msg.data = frame_id, image_format, data
    return serialization.serialize_message(msg)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sec=st.integers(-2**31, 2**31 - 1), nanosec=st.integers(0, 2**32 - 1),
       frame_id=TEXT, image_format=TEXT, data=st.binary(max_size=300))
def test_compressed_image_fields_are_what_rclpy_serialised(sec, nanosec, frame_id,
                                                           image_format, data):
    buffer = compressed_image(sec, nanosec, frame_id, image_format, data)
    frame = cdr.compressed_frame(buffer)
    assert (frame.stamp_sec, frame.stamp_nanosec, frame.frame_id, frame.image_format) == \
        (sec, nanosec, frame_id, image_format)
    assert bytes(frame.data) == data
    assert isinstance(frame.data, memoryview) and frame.data.obj is buffer, 'a view, not a copy'


def image(sec, nanosec, frame_id, height, width, encoding, is_bigendian, step, data) -> bytes:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.header.frame_id, msg.height, msg.width, msg.encoding = frame_id, height, width, encoding
    msg.is_bigendian, msg.step, msg.data = is_bigendian, step, data
    return serialization.serialize_message(msg)


U32 = st.integers(0, 2**32 - 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sec=st.integers(-2**31, 2**31 - 1), nanosec=U32, frame_id=TEXT, height=U32, width=U32,
       encoding=TEXT, is_bigendian=st.integers(0, 255), step=U32,
       data=st.binary(max_size=300))
def test_image_fields_are_what_rclpy_serialised(sec, nanosec, frame_id, height, width, encoding,
                                                is_bigendian, step, data):
    # every length of frame_id and encoding puts is_bigendian (one byte) and step (4-aligned)
    # at another offset
    buffer = image(sec, nanosec, frame_id, height, width, encoding, is_bigendian, step, data)
    frame = cdr.raw_frame(buffer)
    assert (frame.stamp_sec, frame.stamp_nanosec, frame.frame_id, frame.height, frame.width,
            frame.encoding, frame.is_bigendian, frame.step) == \
        (sec, nanosec, frame_id, height, width, encoding, bool(is_bigendian), step)
    assert bytes(frame.data) == data
    assert isinstance(frame.data, memoryview) and frame.data.obj is buffer, 'a view, not a copy'


def test_an_image_cut_anywhere_is_refused():
    buffer = image(1, 2, 'cam', 2, 3, 'rgb8', 1, 9, bytes(range(18)))
    assert cdr.raw_frame(buffer).is_bigendian
    for cut in range(len(buffer)):
        with pytest.raises(cdr.MalformedMessage):
            cdr.raw_frame(buffer[:cut])


def test_a_large_unit_is_read_without_copying_it():
    data = bytes(range(256)) * 4096      # 1 MB
    buffer = compressed_image(1, 2, 'camera', 'h264', data)
    frame = cdr.compressed_frame(buffer)
    assert frame.data.obj is buffer and frame.data == data


def test_big_endian_cdr_is_read_too():
    # rclpy writes the machine's order (little endian here); a big-endian writer is legal CDR.
    def string(text):
        raw = text.encode() + b'\x00'
        return struct.pack('>I', len(raw)) + raw + b'\x00' * (-len(raw) % 4)
    body = struct.pack('>iI', -5, 7) + string('cam') + string('h264') + \
        struct.pack('>I', 3) + b'\x01\x02\x03'
    frame = cdr.compressed_frame(b'\x00\x00\x00\x00' + body)
    assert (frame.stamp_sec, frame.stamp_nanosec, frame.frame_id, frame.image_format,
            bytes(frame.data)) == (-5, 7, 'cam', 'h264', b'\x01\x02\x03')


def data_end(frame_id: str, image_format: str, data: bytes) -> int:
    """Where a CompressedImage's data ends, by the CDR rules (independent of the parser)."""
    offset = 4 + 8                              # encapsulation, stamp
    for text in (frame_id, image_format):
        offset += 4 + len(text.encode()) + 1
        offset += -(offset - 4) % 4
    return offset + 4 + len(data)


@settings(max_examples=100, deadline=None)
@given(frame_id=TEXT, image_format=TEXT, data=st.binary(max_size=64), cut=st.data())
def test_every_cut_before_the_end_of_the_data_is_refused(frame_id, image_format, data, cut):
    buffer = compressed_image(3, 4, frame_id, image_format, data)
    end = data_end(frame_id, image_format, data)
    assert len(buffer) >= end
    at = cut.draw(st.integers(0, end - 1))
    with pytest.raises(cdr.MalformedMessage):
        cdr.compressed_frame(buffer[:at])
    assert bytes(cdr.compressed_frame(buffer[:end]).data) == data


@pytest.mark.parametrize('field_offset, value, what', [
    (0, 0xFFFFFFFF, 'frame_id length far beyond the buffer'),
    (0, 2**31, 'frame_id length beyond the buffer'),
    (0, 5000, 'frame_id over the string limit'),
])
def test_hostile_string_lengths_are_refused(field_offset, value, what):
    buffer = bytearray(compressed_image(1, 2, 'cam', 'h264', b'\x00\x00\x01\x65'))
    struct.pack_into('<I', buffer, 4 + 8 + field_offset, value)
    with pytest.raises(cdr.MalformedMessage):
        cdr.compressed_frame(bytes(buffer))


def test_hostile_data_length_is_refused():
    buffer = compressed_image(1, 2, 'cam', 'h264', b'\x00\x00\x01\x65')
    frame = cdr.compressed_frame(buffer)
    count_at = len(buffer) - len(frame.data) - 4
    while struct.unpack_from('<I', buffer, count_at)[0] != len(frame.data):
        count_at -= 1           # padding after the data moves the count back
    for value in (len(frame.data) + 1, 0x7FFFFFFF, 0xFFFFFFFF):
        bad = bytearray(buffer)
        struct.pack_into('<I', bad, count_at, value)
        with pytest.raises(cdr.MalformedMessage):
            cdr.compressed_frame(bytes(bad))


def test_a_string_without_its_nul_is_refused():
    buffer = bytearray(compressed_image(1, 2, 'cam', 'h264', b'x'))
    buffer[4 + 8 + 4 + 3] = ord('!')     # frame_id 'cam\0' -> 'cam!'
    with pytest.raises(cdr.MalformedMessage, match='NUL'):
        cdr.compressed_frame(bytes(buffer))


@pytest.mark.parametrize('buffer', [
    b'', b'\x00', b'\x00\x01\x00',                      # shorter than the header
    b'\x00\x01\x00\x00',                                # a header and nothing else
    b'\x00\x06\x00\x00' + bytes(32),                    # XCDR2, not plain CDR
    b'\xff\xff\x00\x00' + bytes(32),                    # no such encapsulation
    b'\x00\x01\x00\x00' + b'\x01\x00\x00\x00' * 3,      # stops after the stamp
])
def test_short_and_foreign_buffers_are_refused(buffer):
    with pytest.raises(cdr.MalformedMessage):
        cdr.compressed_frame(buffer)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_else(data):
    for layout in (cdr.COMPRESSED_IMAGE, cdr.COMPRESSED_VIDEO, cdr.IMAGE):
        for buffer in (data, b'\x00\x01\x00\x00' + data):
            try:
                fields = cdr.read(buffer, layout)
            except cdr.MalformedMessage as exc:
                assert exc.kind == cdr.MESSAGE
            else:
                assert len(fields['data']) <= len(buffer)


SERIALISE_VIDEO = r"""
import json, sys
from foxglove_msgs.msg import CompressedVideo
from rclpy.serialization import serialize_message
out = []
for sec, nanosec, frame_id, fmt, data in json.load(sys.stdin):
    msg = CompressedVideo()
    msg.timestamp.sec, msg.timestamp.nanosec = sec, nanosec
    msg.frame_id, msg.format, msg.data = frame_id, fmt, bytes.fromhex(data)
    out.append(serialize_message(msg).hex())
print(json.dumps(out))
"""


def test_compressed_video_fields_are_what_rclpy_serialised(foxglove_env):  # noqa: F811
    import os
    chooser = random.Random(21)
    cases = [(chooser.randint(-2**31, 2**31 - 1), chooser.randint(0, 2**32 - 1),
              'x' * chooser.randint(0, 9), chooser.choice(['', 'h264', 'h265', 'av1']),
              bytes(chooser.randrange(256) for _ in range(chooser.randint(0, 40))).hex())
             for _ in range(200)]
    done = subprocess.run([sys.executable, '-c', SERIALISE_VIDEO], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **foxglove_env})
    assert done.returncode == 0, done.stderr[-2000:]
    for case, serialised in zip(cases, json.loads(done.stdout)):
        buffer = bytes.fromhex(serialised)
        frame = cdr.compressed_frame(buffer, cdr.COMPRESSED_VIDEO)
        assert (frame.stamp_sec, frame.stamp_nanosec, frame.frame_id, frame.image_format,
                frame.data.hex()) == case
        assert frame.data.obj is buffer
