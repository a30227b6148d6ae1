"""Stream.reconfigure: stream settings changed at run time (``ros2 param set``), pure core."""

import dataclasses

import numpy as np
import pytest
from video_bridge.core.protocol import Variant
from video_bridge.core.streams import SourceImage, StreamHub, StreamSettings


def frame(index: int, width: int = 64, height: int = 48) -> SourceImage:
    rng = np.random.default_rng(index)
    picture = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return SourceImage(100 + index, 0, picture.tobytes(), 'bgr8', width, height,
                       picture.strides[0])


def test_a_new_default_quality_applies_to_viewers_that_join_after_it():
    stream = StreamHub().add(StreamSettings('front', '/front/image_raw', quality=90))
    before = stream.attach(Variant())
    stream.reconfigure(dataclasses.replace(stream.settings, quality=10))
    after = stream.attach(Variant())
    assert (before.variant.quality, after.variant.quality) == (90, 10)
    stream.publish(frame(1))
    assert len(after.take().data) < 0.6 * len(before.take().data)


def test_a_new_bitrate_restarts_the_video_encoders_with_a_keyframe():
    pytest.importorskip('av')
    stream = StreamHub().add(StreamSettings('front', '/front/image_raw',
                                            video_bitrates=(800_000, 400_000)))
    viewer = stream.attach(Variant(codec='vp8', layer=1))
    for index in range(3):
        stream.publish(frame(index))
    assert [f.keyframe for f in viewer.take_all()] == [True, False, False]
    stream.reconfigure(dataclasses.replace(stream.settings, video_bitrates=(2_000_000,
                                                                            1_000_000)))
    slot_encoder = stream._slots[viewer.variant].encoder
    assert slot_encoder.bitrate == 1_000_000
    stream.publish(frame(3))
    assert [f.keyframe for f in viewer.take_all()] == [True]


@pytest.mark.parametrize('change', [{'name': 'rear'}, {'topic': '/rear/image_raw'},
                                    {'kind': 'compressed'}, {'video_bitrates': (800_000,)}])
def test_name_topic_kind_and_layer_count_are_fixed(change):
    stream = StreamHub().add(StreamSettings('front', '/front/image_raw'))
    with pytest.raises(ValueError):
        stream.reconfigure(dataclasses.replace(stream.settings, **change))
    assert stream.settings.name == 'front' and len(stream.settings.video_bitrates) == 3
