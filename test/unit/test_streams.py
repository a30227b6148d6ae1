"""Tests for video_bridge.core.streams, the stream hub, with real images and real JPEG encodes."""

import threading

import cv2
import numpy as np
import pytest
from video_bridge.core import protocol
from video_bridge.core.image_codec import MalformedImage, UnsupportedEncoding
from video_bridge.core.protocol import FLAG_COLORMAPPED, FLAG_PASSTHROUGH, FLAG_SCALED, Variant
from video_bridge.core.streams import (
    CapacityError, COMPRESSED, EncodedFrame, NotPermitted, SourceImage, StreamHub, StreamSettings,
    UnknownStream)

WIDTH, HEIGHT = 64, 48


def bgr_picture(index=0):
    """Draw a 64x48 BGR picture: blue left half, red right half, a bright moving column."""
    picture = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    picture[:, :WIDTH // 2] = (200, 40, 40)
    picture[:, WIDTH // 2:] = (40, 40, 200)
    picture[:, index % WIDTH] = 255
    return picture


def raw_image(picture, encoding, index=0, received_time=0.0):
    height, width = picture.shape[:2]
    return SourceImage(stamp_sec=100 + index, stamp_nanosec=5000 + index,
                       data=picture.tobytes(), encoding=encoding, width=width, height=height,
                       step=picture.strides[0], received_time=received_time)


def bgr8(index=0, received_time=0.0):
    return raw_image(bgr_picture(index), 'bgr8', index, received_time)


def mono8(index=0):
    return raw_image(np.full((HEIGHT, WIDTH), 90 + index % 100, np.uint8), 'mono8', index)


def depth16(index=0):
    depth = np.tile(np.linspace(300, 4000, WIDTH, dtype=np.uint16), (HEIGHT, 1))
    return raw_image(depth, '16UC1', index)


def compressed(index=0, extension='.jpg', picture=None, image_format='jpeg'):
    ok, data = cv2.imencode(extension, bgr_picture(index) if picture is None else picture)
    assert ok
    return SourceImage(stamp_sec=100 + index, stamp_nanosec=0, data=data.tobytes(),
                       image_format=image_format)


def decode(jpeg):
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)


class Recorder:
    """The hub's two callbacks, recorded."""

    def __init__(self):
        self.frames = []
        self.viewers = []

    def hub(self, **kwargs):
        return StreamHub(on_frame=self.frames.append,
                         on_viewers=lambda name, count: self.viewers.append((name, count)),
                         **kwargs)


@pytest.fixture
def hub():
    return StreamHub()


@pytest.fixture
def stream(hub):
    return hub.add(StreamSettings('front', '/front/image_raw'))


@pytest.fixture
def jpeg_stream(hub):
    return hub.add(StreamSettings('jpeg', '/cam/image_raw/compressed', kind=COMPRESSED))


# ---------------------------------------------------------------- the hub

def test_hub_add_returns_the_existing_stream_of_a_name(hub):
    first = hub.add(StreamSettings('front', '/a'))
    assert hub.add(StreamSettings('front', '/b')) is first
    assert hub.get('front') is first
    assert hub.streams() == [first]


def test_hub_get_of_an_unknown_name_raises_unknown_stream(hub):
    with pytest.raises(UnknownStream):
        hub.get('nope')


# ---------------------------------------------------------------- newest frame

def test_publish_without_viewers_encodes_nothing(stream):
    assert stream.publish(bgr8()) == 0
    assert stream.publish(bgr8(1)) == 0
    counters = stream.counters()
    assert (counters.frames_in, counters.frames_skipped, counters.encode_count) == (2, 2, 0)


def test_a_viewer_takes_nothing_before_the_first_frame(stream):
    assert stream.attach(Variant()).take() is None


def test_a_viewer_takes_the_newest_frame_once(stream):
    viewer = stream.attach(Variant())
    stream.publish(bgr8(0))
    frame = viewer.take()
    assert frame.seq == 1
    assert viewer.take() is None
    stream.publish(bgr8(1))
    stream.publish(bgr8(2))
    assert viewer.take().seq == 3
    assert viewer.take() is None


def test_frames_carry_the_source_stamp_size_and_received_time(stream):
    viewer = stream.attach(Variant())
    stream.publish(bgr8(4, received_time=1712345678.25))
    frame = viewer.take()
    assert frame.header == protocol.FrameHeader(1, WIDTH, HEIGHT, 104, 5004, 1712345678.25, 0)
    header, jpeg = protocol.unpack_frame(frame.payload)
    assert header == frame.header
    assert bytes(jpeg) == frame.data


def test_a_bgr8_frame_is_a_jpeg_of_the_picture(stream):
    viewer = stream.attach(Variant(quality=95))
    stream.publish(bgr8())
    picture = decode(viewer.take().data)
    assert picture.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(picture[10, 5].astype(int) - (200, 40, 40)).max() < 20
    assert np.abs(picture[10, 50].astype(int) - (40, 40, 200)).max() < 20


def test_a_mono8_frame_is_a_grey_jpeg(stream):
    viewer = stream.attach(Variant(quality=95))
    stream.publish(mono8())
    frame = viewer.take()
    picture = decode(frame.data)
    assert picture.shape == (HEIGHT, WIDTH)
    assert abs(int(picture.mean()) - 90) <= 2
    assert frame.header.flags == 0


def test_a_16uc1_frame_is_colour_mapped(stream):
    viewer = stream.attach(Variant())
    stream.publish(depth16())
    frame = viewer.take()
    assert frame.header.flags == FLAG_COLORMAPPED
    picture = decode(frame.data)
    assert picture.shape == (HEIGHT, WIDTH, 3)
    assert not np.array_equal(picture[:, 2], picture[:, -3])  # near and far differ


def test_a_viewer_that_takes_every_third_frame_counts_the_gaps_as_dropped(stream):
    viewer = stream.attach(Variant())
    stream.publish(bgr8(0))
    taken = [viewer.take().seq]
    for index in range(1, 10):
        stream.publish(bgr8(index))
        if index % 3 == 0:
            taken.append(viewer.take().seq)
    assert taken == [1, 4, 7, 10]
    counters = stream.counters()
    assert (counters.frames_sent, counters.frames_dropped) == (4, 6)


def test_frames_replaced_before_a_viewers_first_take_count_as_dropped(stream):
    viewer = stream.attach(Variant())
    for index in range(3):
        stream.publish(bgr8(index))
    assert viewer.take().seq == 3
    assert stream.counters().frames_dropped == 2


# ---------------------------------------------------------------- encode once per variant

def test_viewers_of_one_variant_share_one_encoded_frame(stream):
    first, second = stream.attach(Variant()), stream.attach(Variant())
    for index in range(3):
        assert stream.publish(bgr8(index)) == 1
        assert stream.counters().encode_count == index + 1
        frame = first.take()
        assert second.take() is frame


def test_the_default_quality_named_explicitly_is_the_default_variant(stream):
    implicit = stream.attach(Variant())
    explicit = stream.attach(Variant(quality=stream.settings.quality))
    stream.publish(bgr8())
    assert implicit.take() is explicit.take()
    assert stream.counters().variants == 1


def test_each_variant_is_encoded_separately(stream):
    viewers = [stream.attach(Variant()), stream.attach(Variant()),
               stream.attach(Variant(quality=30)), stream.attach(Variant(max_width=32))]
    assert stream.publish(bgr8()) == 3
    frames = [viewer.take() for viewer in viewers]
    assert frames[0] is frames[1]
    assert len({id(frame) for frame in frames}) == 3
    assert frames[2].data != frames[0].data
    counters = stream.counters()
    assert (counters.variants, counters.encode_count) == (3, 3)
    assert stream.publish(bgr8(1)) == 3
    assert stream.counters().encode_count == 6


@pytest.mark.parametrize('variant, size', [
    (Variant(max_width=32), (32, 24)),
    (Variant(max_height=12), (16, 12)),
    (Variant(max_width=32, max_height=8), (11, 8)),
])
def test_a_scaled_variant_is_smaller_and_flagged(stream, variant, size):
    viewer = stream.attach(variant)
    stream.publish(bgr8())
    frame = viewer.take()
    assert (frame.header.width, frame.header.height) == size
    assert frame.header.flags == FLAG_SCALED
    assert decode(frame.data).shape[1::-1] == size


def test_a_variant_larger_than_the_source_is_not_scaled_up(stream):
    viewer = stream.attach(Variant(max_width=640, max_height=480))
    stream.publish(bgr8())
    frame = viewer.take()
    assert (frame.header.width, frame.header.height, frame.header.flags) == (WIDTH, HEIGHT, 0)


def test_a_scaled_depth_frame_has_both_flags(stream):
    viewer = stream.attach(Variant(max_width=16))
    stream.publish(depth16())
    assert viewer.take().header.flags == FLAG_SCALED | FLAG_COLORMAPPED


# ---------------------------------------------------------------- compressed sources

def test_a_source_jpeg_at_the_default_quality_passes_through_untouched(jpeg_stream):
    viewer = jpeg_stream.attach(Variant())
    source = compressed()
    assert jpeg_stream.publish(source) == 1
    frame = viewer.take()
    assert frame.data == source.data
    assert frame.header.flags == FLAG_PASSTHROUGH
    assert (frame.header.width, frame.header.height) == (WIDTH, HEIGHT)
    counters = jpeg_stream.counters()
    assert (counters.encode_count, counters.width, counters.height) == (0, WIDTH, HEIGHT)


def test_a_quality_variant_of_a_source_jpeg_is_re_encoded(jpeg_stream):
    passthrough = jpeg_stream.attach(Variant())
    requality = jpeg_stream.attach(Variant(quality=20))
    source = compressed()
    assert jpeg_stream.publish(source) == 2
    frame = requality.take()
    assert frame.data != source.data
    assert frame.header.flags == 0
    assert decode(frame.data).shape == (HEIGHT, WIDTH, 3)
    assert passthrough.take().data == source.data
    assert jpeg_stream.counters().encode_count == 1


def test_a_scaled_variant_of_a_source_jpeg_is_re_encoded(jpeg_stream):
    viewer = jpeg_stream.attach(Variant(max_width=32))
    jpeg_stream.publish(compressed())
    frame = viewer.take()
    assert (frame.header.width, frame.header.height, frame.header.flags) == (32, 24, FLAG_SCALED)
    assert jpeg_stream.counters().encode_count == 1


def test_a_png_source_is_encoded_as_jpeg(jpeg_stream):
    viewer = jpeg_stream.attach(Variant())
    jpeg_stream.publish(compressed(extension='.png', image_format='png'))
    frame = viewer.take()
    assert frame.data[:3] == b'\xff\xd8\xff'
    assert frame.header.flags == 0
    assert decode(frame.data).shape == (HEIGHT, WIDTH, 3)


def test_a_16_bit_compressed_depth_png_is_colour_mapped(jpeg_stream):
    viewer = jpeg_stream.attach(Variant())
    depth = np.tile(np.linspace(300, 4000, WIDTH, dtype=np.uint16), (HEIGHT, 1))
    jpeg_stream.publish(compressed(extension='.png', picture=depth,
                                   image_format='16UC1; compressedDepth png'))
    frame = viewer.take()
    assert frame.header.flags == FLAG_COLORMAPPED
    assert decode(frame.data).shape == (HEIGHT, WIDTH, 3)


def test_a_colour_mapped_16_bit_png_is_flagged_whatever_its_format_string(jpeg_stream):
    viewer = jpeg_stream.attach(Variant())
    depth = np.tile(np.linspace(300, 4000, WIDTH, dtype=np.uint16), (HEIGHT, 1))
    jpeg_stream.publish(compressed(extension='.png', picture=depth,
                                   image_format='mono16; png compressed mono16'))
    frame = viewer.take()
    assert decode(frame.data).ndim == 3  # it was colour-mapped...
    assert frame.header.flags & FLAG_COLORMAPPED  # ...so it says so


def test_a_truncated_source_jpeg_is_malformed(jpeg_stream):
    viewer = jpeg_stream.attach(Variant())
    with pytest.raises(MalformedImage):
        jpeg_stream.publish(SourceImage(1, 0, b'\xff\xd8\xff\xe0\x00\x10JFIF',
                                        image_format='jpeg'))
    assert viewer.take() is None


# ---------------------------------------------------------------- limits

def test_the_viewer_limit_is_shared_by_every_stream():
    hub = StreamHub(max_viewers=3)
    front = hub.add(StreamSettings('front', '/front'))
    back = hub.add(StreamSettings('back', '/back'))
    front.attach(Variant())
    leaving = back.attach(Variant())
    back.attach(Variant(quality=10))
    with pytest.raises(CapacityError, match='viewer limit'):
        front.attach(Variant())
    assert hub.viewer_count() == 3
    leaving.detach()
    front.attach(Variant())
    assert hub.viewer_count() == 3


def test_the_variant_limit_is_per_stream(hub):
    front = hub.add(StreamSettings('front', '/front', max_variants=2))
    back = hub.add(StreamSettings('back', '/back', max_variants=2))
    front.attach(Variant())
    front.attach(Variant(max_width=32))
    with pytest.raises(CapacityError, match='variant limit'):
        front.attach(Variant(quality=10))
    front.attach(Variant(max_width=32))  # an existing variant is still fine
    back.attach(Variant(quality=10))
    assert (front.counters().variants, front.counters().viewers) == (2, 3)


def test_odd_sizes_never_crowd_out_the_pages_default_variant(hub):
    """Row 8: viewers with odd widths take the places beyond the default; the page still gets
    its default JPEG variant and its video layers."""
    stream = hub.add(StreamSettings('front', '/front', max_variants=4))
    odd = [stream.attach(Variant(max_width=width)) for width in (101, 203, 305)]
    with pytest.raises(CapacityError, match='variant limit'):
        stream.attach(Variant(max_width=407))
    page = stream.attach(Variant())
    same = stream.attach(Variant(quality=stream.settings.quality))  # the default, by name
    stream.publish(bgr8())
    assert page.take().seq == 1 and same.take().seq == 1
    assert stream.counters().variants == 4
    assert all(viewer.take() is not None for viewer in odd)


def test_a_topic_stream_has_no_kept_place(hub):
    stream = hub.add(StreamSettings('/t/image', '/t/image', max_variants=2, topic_stream=True))
    stream.attach(Variant(max_width=10))
    stream.attach(Variant(max_width=20))
    with pytest.raises(CapacityError, match='variant limit'):
        stream.attach(Variant())
    assert not stream.page_variant(Variant(quality=stream.settings.quality))


def test_the_total_variant_limit_spans_every_stream_but_spares_the_defaults():
    hub = StreamHub(max_total_variants=3)
    streams = [hub.add(StreamSettings(f's{n}', f'/s{n}', max_variants=4)) for n in range(3)]
    topic = hub.add(StreamSettings('/t', '/t', topic_stream=True))
    admitted, refused = [], 0
    for n in range(40):   # 4 streams x 10 sizes and qualities
        target = (streams + [topic])[n % 4]
        try:
            admitted.append(target.attach(Variant(max_width=8 * (n + 1), quality=50 + n)))
        except CapacityError as exc:
            refused += 1
            assert 'variant limit' in str(exc)
    assert len(admitted) == 3 and refused == 37 and hub.variants_in_use() == 3
    defaults = [stream.attach(Variant()) for stream in streams]   # the page's, always
    assert hub.variants_in_use() == 3 and len(defaults) == 3
    admitted[0].detach()
    assert hub.variants_in_use() == 2
    topic.attach(Variant())   # a place freed: a topic stream's default takes it
    assert hub.variants_in_use() == 3


def test_lookup_finds_a_configured_stream_by_its_topic_and_gates_topic_streams(hub):
    camera = hub.add(StreamSettings('camera', '/camera/image_raw'))
    made = []

    def resolve(name):
        if name == '/other/image':
            made.append(hub.add(StreamSettings(name, name, topic_stream=True)))
            return made[-1]
        return None

    assert hub.lookup('camera', resolve, topic_streams=False) is camera
    assert hub.lookup('/camera/image_raw', resolve, topic_streams=False) is camera
    assert made == []   # not a second stream of the same topic
    with pytest.raises(NotPermitted, match='need the token'):
        hub.lookup('/other/image', resolve, topic_streams=False)
    assert made == []
    other = hub.lookup('/other/image', resolve, topic_streams=True)
    assert other.settings.topic_stream and made == [other]
    with pytest.raises(NotPermitted):   # made by a token holder, still not for others
        hub.lookup('/other/image', resolve, topic_streams=False)
    with pytest.raises(UnknownStream):
        hub.lookup('/nobody', resolve, topic_streams=True)


def test_a_refused_viewer_changes_nothing():
    recorder = Recorder()
    hub = recorder.hub(max_viewers=1)
    stream = hub.add(StreamSettings('front', '/front'))
    stream.attach(Variant())
    with pytest.raises(CapacityError):
        stream.attach(Variant())
    assert recorder.viewers == [('front', 1)]
    assert (stream.counters().viewers, hub.viewer_count()) == (1, 1)


def test_detach_is_idempotent_and_frees_the_variant(hub):
    stream = hub.add(StreamSettings('front', '/front', max_variants=2))
    viewer = stream.attach(Variant(max_width=32))
    viewer.detach()
    viewer.detach()
    counters = stream.counters()
    assert (counters.viewers, counters.variants, hub.viewer_count()) == (0, 0, 0)
    other = stream.attach(Variant(quality=10))
    stream.publish(bgr8())
    assert other.take().seq == 1


def test_a_detached_viewers_variant_keeps_serving_the_others(stream):
    staying, leaving = stream.attach(Variant()), stream.attach(Variant())
    leaving.detach()
    stream.publish(bgr8())
    assert staying.take().seq == 1
    assert stream.counters().variants == 1


# ---------------------------------------------------------------- callbacks

def test_on_frame_fires_once_per_published_frame_that_someone_watches():
    recorder = Recorder()
    hub = recorder.hub()
    stream = hub.add(StreamSettings('front', '/front'))
    stream.publish(bgr8())
    assert recorder.frames == []
    stream.attach(Variant())
    stream.attach(Variant(quality=10))
    stream.publish(bgr8(1))
    stream.publish(bgr8(2))
    assert recorder.frames == ['front', 'front']


def test_on_viewers_reports_each_streams_viewer_count():
    recorder = Recorder()
    hub = recorder.hub()
    front = hub.add(StreamSettings('front', '/front'))
    back = hub.add(StreamSettings('back', '/back'))
    first = front.attach(Variant())
    second = front.attach(Variant(max_width=10))
    third = back.attach(Variant())
    first.detach()
    first.detach()
    second.detach()
    third.detach()
    assert recorder.viewers == [('front', 1), ('front', 2), ('back', 1), ('front', 1),
                                ('front', 0), ('back', 0)]


# ---------------------------------------------------------------- bad images

def test_an_unsupported_encoding_propagates_and_replaces_nothing(stream):
    viewer = stream.attach(Variant())
    late = stream.attach(Variant())
    stream.publish(bgr8())
    first = viewer.take()
    with pytest.raises(UnsupportedEncoding):
        stream.publish(raw_image(bgr_picture(), 'hsv8'))
    assert viewer.take() is None
    assert late.take() is first
    assert stream.counters().encode_count == 1


def test_a_malformed_raw_image_propagates(stream):
    stream.attach(Variant())
    short = SourceImage(1, 0, b'\x00' * 10, 'bgr8', WIDTH, HEIGHT, WIDTH * 3)
    with pytest.raises(MalformedImage):
        stream.publish(short)


# ---------------------------------------------------------------- wire forms

def test_encoded_frame_builds_each_wire_form_once(stream):
    first, second = stream.attach(Variant()), stream.attach(Variant())
    stream.publish(bgr8())
    calls = []

    def mjpeg(frame):
        calls.append('mjpeg')
        return b'--boundary\r\n' + frame.data

    def websocket(frame):
        calls.append('ws')
        return b'ws' + frame.payload

    frame = first.take()
    part = frame.wire('mjpeg', mjpeg)
    assert second.take().wire('mjpeg', mjpeg) is part
    assert frame.wire('ws', websocket) == b'ws' + frame.payload
    assert frame.wire('ws', websocket) == b'ws' + frame.payload
    assert calls == ['mjpeg', 'ws']


def test_encoded_frame_payload_is_header_then_jpeg():
    header = protocol.FrameHeader(9, 2, 2, 1, 2, 3.0, FLAG_SCALED)
    frame = EncodedFrame(header, b'\xff\xd8jpeg')
    assert frame.seq == 9
    assert frame.payload == protocol.pack_frame_header(header) + b'\xff\xd8jpeg'


# ---------------------------------------------------------------- counters

def test_counters_add_up(stream):
    stream.publish(bgr8(0))
    slow, fast = stream.attach(Variant()), stream.attach(Variant(max_width=32))
    sent = 0
    for index in range(1, 5):
        stream.publish(bgr8(index))
        sent += len(fast.take().payload)
        if index % 2 == 0:
            sent += len(slow.take().payload)
    counters = stream.counters()
    assert counters.viewers == 2
    assert counters.variants == 2
    assert counters.frames_in == 5
    assert counters.frames_skipped == 1
    assert counters.frames_sent == 6
    assert counters.frames_dropped == 2  # slow joined after 1, took 3 and 5: never 2 or 4
    assert counters.bytes_sent == sent
    assert counters.encode_count == 8
    assert counters.encode_seconds > 0
    assert (counters.width, counters.height) == (WIDTH, HEIGHT)


def test_counters_start_at_zero(stream):
    counters = stream.counters()
    assert (counters.frames_in, counters.frames_sent, counters.bytes_sent, counters.width,
            counters.height, counters.encode_seconds) == (0, 0, 0, 0, 0, 0.0)


def test_warn_once_is_true_only_the_first_time(stream):
    assert stream.warn_once('hsv8') is True
    assert stream.warn_once('hsv8') is False
    assert stream.warn_once('other') is True


# ---------------------------------------------------------------- threads

def test_concurrent_publish_attach_take_and_detach():
    hub = StreamHub(max_viewers=4)
    stream = hub.add(StreamSettings('front', '/front', max_variants=2))
    images = [raw_image(np.full((16, 16, 3), i, np.uint8), 'bgr8', i) for i in range(8)]
    frames_per_publisher = 150
    start = threading.Barrier(3)
    errors = []
    taken = []
    steady = stream.attach(Variant())  # watched throughout, taken from by the watcher thread
    steady_seqs = []

    def publisher():
        try:
            start.wait()
            for index in range(frames_per_publisher):
                stream.publish(images[index % len(images)])
        except Exception as error:  # reported below
            errors.append(error)

    def watcher():
        try:
            start.wait()
            variants = [Variant(), Variant(max_width=8), Variant(quality=10)]
            for round_ in range(300):
                viewers = []
                for variant in variants[round_ % 3:] + variants[:round_ % 3]:
                    try:
                        viewers.append(stream.attach(variant))
                    except CapacityError:
                        pass  # the third variant exceeds max_variants
                steady_seqs.extend(frame.seq for frame in iter(steady.take, None))
                for viewer in viewers:
                    seqs = [frame.seq for frame in iter(viewer.take, None)]
                    seqs += [frame.seq for frame in iter(viewer.take, None)]  # again
                    taken.append(seqs)
                    viewer.detach()
                    viewer.detach()
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=publisher), threading.Thread(target=publisher),
               threading.Thread(target=watcher)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    steady_seqs.extend(frame.seq for frame in iter(steady.take, None))
    assert steady_seqs  # (not necessarily ending at 2N: two publishes' stores may cross)
    taken.append(steady_seqs)
    steady.detach()
    for seqs in taken:
        assert seqs == sorted(set(seqs))
        assert all(1 <= seq <= 2 * frames_per_publisher for seq in seqs)
    counters = stream.counters()
    assert counters.frames_in == 2 * frames_per_publisher
    assert (counters.viewers, counters.variants, hub.viewer_count()) == (0, 0, 0)
    assert counters.frames_sent == sum(map(len, taken))
