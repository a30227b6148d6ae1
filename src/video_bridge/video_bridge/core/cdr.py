"""
The few fields the bridge needs, read straight from a serialised (CDR) image message.

Why: rclpy turns every message into Python objects before a callback sees it (a header, a
Time, strings, an ``array.array`` copy of the data, each through generated setters). The bridge
only reads the data (it converts, encodes or passes it on), so it subscribes with ``raw=True``
(rclpy hands over the CDR bytes) and reads here only the fields it uses and a view of the
data, without copying the data.

This module is the one place that knows the CDR layout of those messages (ROS 2's rmw
implementations write plain CDR: XCDR version 1, little or big endian as the 4-byte
encapsulation header says; each primitive aligned to its size, counted from after that header;
a string as a uint32 length including its NUL, then the bytes and the NUL; ``uint8[]`` as a
uint32 count, then the bytes; a ``uint8`` as one byte). Pure: no rclpy, no sockets.

Strictly bounded: every length is checked against the bytes that are there before anything is
read; a message that does not fit (truncated, a length beyond the buffer, a string longer than
:data:`MAX_STRING_BYTES`, an unknown encapsulation) raises :class:`MalformedMessage` (kind
``message``) and nothing else, so the caller counts and drops it.
"""

from dataclasses import dataclass
import struct

from video_bridge.core.image_codec import MalformedImage

MESSAGE = 'message'          # the malformed kind: the CDR bytes do not make the message
MAX_STRING_BYTES = 4096      # frame_id / format: a few characters in practice

# Encapsulation identifiers (first two bytes, big endian) of plain CDR and their byte order.
_BYTE_ORDER = {b'\x00\x00': '>', b'\x00\x01': '<'}    # CDR_BE, CDR_LE
HEADER_BYTES = 4             # identifier + options

INT32, UINT32, UINT8, STRING, BYTES = 'int32', 'uint32', 'uint8', 'string', 'bytes'
_ALIGNMENT = {INT32: 4, UINT32: 4, UINT8: 1, STRING: 4, BYTES: 4}   # a length is a uint32

# Field layouts, in wire order: (name, type). A nested message is flattened into its fields.
COMPRESSED_IMAGE = (       # sensor_msgs/msg/CompressedImage
    ('sec', INT32), ('nanosec', UINT32), ('frame_id', STRING),     # std_msgs/Header
    ('format', STRING), ('data', BYTES))
COMPRESSED_VIDEO = (       # foxglove_msgs/msg/CompressedVideo
    ('sec', INT32), ('nanosec', UINT32),                           # builtin_interfaces/Time
    ('frame_id', STRING), ('data', BYTES), ('format', STRING))
IMAGE = (                  # sensor_msgs/msg/Image
    ('sec', INT32), ('nanosec', UINT32), ('frame_id', STRING),     # std_msgs/Header
    ('height', UINT32), ('width', UINT32), ('encoding', STRING), ('is_bigendian', UINT8),
    ('step', UINT32), ('data', BYTES))


class MalformedMessage(MalformedImage):
    """The bytes are not a well-formed message of the expected type (kind ``message``)."""

    def __init__(self, message: str):
        """Say what does not fit; the kind is always MESSAGE."""
        super().__init__(f'malformed serialised message: {message}', MESSAGE)


@dataclass(frozen=True)
class CompressedFrame:
    """What the bridge uses of a CompressedImage or CompressedVideo."""

    stamp_sec: int
    stamp_nanosec: int
    frame_id: str
    image_format: str
    data: memoryview     # a view into the serialised bytes: valid while they are kept


@dataclass(frozen=True)
class RawFrame:
    """What the bridge uses of a sensor_msgs Image (the data checked by image_codec later)."""

    stamp_sec: int
    stamp_nanosec: int
    frame_id: str
    height: int
    width: int
    encoding: str
    is_bigendian: bool
    step: int
    data: memoryview     # a view into the serialised bytes: valid while they are kept


def read(buffer, layout) -> dict:
    """
    Read the fields of ``layout`` from one serialised message; MalformedMessage if they do not fit.

    ``BYTES`` fields come back as memoryviews into ``buffer`` (no copy); strings as str
    (invalid UTF-8 replaced, as a viewer only shows them).
    """
    view = memoryview(buffer)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast('B')
    size = len(view)
    if size < HEADER_BYTES:
        raise MalformedMessage(f'{size} bytes, shorter than the encapsulation header')
    order = _BYTE_ORDER.get(bytes(view[:2]))
    if order is None:
        raise MalformedMessage(f'encapsulation {bytes(view[:2]).hex()} is not plain CDR')
    u32 = struct.Struct(order + 'I')
    i32 = struct.Struct(order + 'i')
    offset = HEADER_BYTES
    fields = {}
    for name, kind in layout:
        alignment = _ALIGNMENT[kind]
        offset += -(offset - HEADER_BYTES) % alignment
        if offset + alignment > size:
            raise MalformedMessage(f'cut short before {name} (at byte {offset} of {size})')
        if kind == UINT8:
            fields[name] = view[offset]
            offset += 1
            continue
        if kind in (INT32, UINT32):
            fields[name] = (i32 if kind == INT32 else u32).unpack_from(view, offset)[0]
            offset += 4
            continue
        length = u32.unpack_from(view, offset)[0]
        offset += 4
        if length > size - offset:
            raise MalformedMessage(f'{name} says {length} bytes, {size - offset} are left')
        if kind == BYTES:
            fields[name] = view[offset:offset + length]
        else:
            if length > MAX_STRING_BYTES:
                raise MalformedMessage(f'{name} of {length} bytes (limit {MAX_STRING_BYTES})')
            if length and view[offset + length - 1] != 0:
                raise MalformedMessage(f'{name} does not end with NUL')
            fields[name] = bytes(view[offset:offset + max(length - 1, 0)]).decode(
                'utf-8', 'replace')
        offset += length
    return fields


def compressed_frame(buffer, layout=COMPRESSED_IMAGE) -> CompressedFrame:
    """Read a serialised CompressedImage (or, with COMPRESSED_VIDEO, a CompressedVideo)."""
    fields = read(buffer, layout)
    return CompressedFrame(fields['sec'], fields['nanosec'], fields['frame_id'],
                           fields['format'], fields['data'])


def raw_frame(buffer) -> RawFrame:
    """Read a serialised sensor_msgs Image."""
    fields = read(buffer, IMAGE)
    return RawFrame(fields['sec'], fields['nanosec'], fields['frame_id'], fields['height'],
                    fields['width'], fields['encoding'], bool(fields['is_bigendian']),
                    fields['step'], fields['data'])
