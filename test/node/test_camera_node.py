"""
camera_node as a real process: topics, parameters, remapping, exit codes, device recovery.

Every test runs its node in its own namespace so a late message from an earlier test's node
can never satisfy a later test. There is no V4L2 device on the test machines: a "device" is a
path that is not under /dev/, which DeviceSource opens with OpenCV's CAP_ANY, so a small MJPG
.avi copied into place plays the part of a camera being plugged in.
"""

import os
import signal

from conftest import wait_for
import cv2
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
import yaml

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..'))
CAMERA_YAML = os.path.join(REPO, 'config', 'camera.yaml')
CALIBRATION = os.path.join(REPO, 'config', 'calibration_example.yaml')
SENSOR_QOS = qos_profile_sensor_data  # best effort: matches (and tolerates) the node's QoS


def write_avi(path, frames=30, size=(160, 120)):
    """Write a small MJPG video (frame i has grey level 8*i) and return its path."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 30.0, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (8 * i) % 256, np.uint8))
    writer.release()
    return str(path)


def jpeg_packets(path):
    """Return the JPEG bytes stored in an MJPG video, read without decoding."""
    capture = cv2.VideoCapture(path, cv2.CAP_ANY, [cv2.CAP_PROP_FORMAT, -1])
    packets = set()
    while True:
        ok, packet = capture.read()
        if not ok:
            break
        packets.add(packet.tobytes())
    capture.release()
    return packets


def stamp_ns(msg):
    """Return a message's header stamp in nanoseconds."""
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def camera(launch_node, namespace, *ros_args, name=''):
    """Start camera_node in ``namespace`` with extra ``--ros-args``."""
    return launch_node('camera_node', name=name or namespace.strip('/'),
                       ros_args=['-r', f'__ns:={namespace}', *ros_args])


def test_publishes_images_and_calibrated_camera_info(ros, launch_node):
    images = ros.collect(Image, '/basic/image_raw', SENSOR_QOS)
    infos = ros.collect(CameraInfo, '/basic/camera_info', SENSOR_QOS)
    node = camera(launch_node, '/basic', '--params-file', CAMERA_YAML,
                  '-p', f'calibration_file:={CALIBRATION}', '-p', 'frame_id:=front_camera')
    node.wait_output('publishing test pattern 640x480 as /basic/image_raw at 640x480 30.0 fps')
    wait_for(lambda: len(images) >= 5, 20, '5 images')
    batch = list(images)
    for msg in batch:
        assert (msg.width, msg.height, msg.encoding, msg.step) == (640, 480, 'bgr8', 640 * 3)
        assert len(msg.data) == 640 * 480 * 3
        assert msg.header.frame_id == 'front_camera'
    stamps = [stamp_ns(msg) for msg in batch]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), 'stamps increase'

    def info_matching_an_image():
        image_stamps = {stamp_ns(msg) for msg in images}
        return next((info for info in list(infos) if stamp_ns(info) in image_stamps), None)
    info = wait_for(info_matching_an_image, 10, 'a CameraInfo with an Image stamp')
    with open(CALIBRATION) as stream:
        expected = yaml.safe_load(stream)
    assert info.header.frame_id == 'front_camera'
    assert (info.width, info.height) == (640, 480)
    assert info.distortion_model == 'plumb_bob'
    assert list(info.k) == pytest.approx(expected['camera_matrix']['data'])
    assert list(info.d) == pytest.approx(expected['distortion_coefficients']['data'])
    assert list(info.p) == pytest.approx(expected['projection_matrix']['data'])
    assert node.stop() == 0


def test_shipped_params_file_lists_every_parameter_with_its_default():
    from video_bridge.ros.camera_node import PARAMETERS
    with open(CAMERA_YAML) as stream:
        content = yaml.safe_load(stream)
    values = content['/**/camera_node']['ros__parameters']
    assert values == {name: spec[0] for name, spec in PARAMETERS.items()}
    assert all(type(values[name]) is type(spec[0]) for name, spec in PARAMETERS.items())


def test_remapping_image_raw(ros, launch_node):
    images = ros.collect(Image, '/cam/front', SENSOR_QOS)
    infos = ros.collect(CameraInfo, '/remap/camera_info', SENSOR_QOS)
    node = camera(launch_node, '/remap', '-r', 'image_raw:=/cam/front')
    node.wait_output('as /cam/front at')
    wait_for(lambda: images and infos, 20, 'an image on /cam/front and camera_info')


def test_parameters_from_a_params_file(ros, launch_node, tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({'/**/camera_node': {'ros__parameters': {
        'width': 320, 'height': 240, 'fps': 15.0, 'frame_id': 'from_file'}}}))
    images = ros.collect(Image, '/pfile/image_raw', SENSOR_QOS)
    infos = ros.collect(CameraInfo, '/pfile/camera_info', SENSOR_QOS)
    node = camera(launch_node, '/pfile', '--params-file', str(params))
    node.wait_output('at 320x240 15.0 fps')
    wait_for(lambda: images and infos, 20, 'an image and camera_info')
    assert (images[0].width, images[0].height, images[0].header.frame_id) == \
        (320, 240, 'from_file')
    info = infos[0]
    assert (info.width, info.height, info.header.frame_id) == (320, 240, 'from_file')
    assert not any(info.k), 'no calibration_file: an uncalibrated CameraInfo'


def test_publish_compressed_encodes_the_pattern_as_jpeg(ros, launch_node):
    jpegs = ros.collect(CompressedImage, '/jpeg/image_raw/compressed', SENSOR_QOS)
    images = ros.collect(Image, '/jpeg/image_raw', SENSOR_QOS)
    camera(launch_node, '/jpeg', '-p', 'publish_compressed:=true', '-p', 'width:=320',
           '-p', 'height:=240', '-p', 'jpeg_quality:=90')
    wait_for(lambda: len(jpegs) >= 3 and images, 20, 'compressed images')
    msg = jpegs[-1]
    assert msg.format == 'jpeg' and msg.header.frame_id == 'camera'
    picture = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape == (240, 320, 3)
    wait_for(lambda: {stamp_ns(m) for m in jpegs} & {stamp_ns(m) for m in images}, 10,
             'a compressed and a raw image with the same stamp')


def test_mjpg_device_jpeg_is_passed_through_unchanged(ros, launch_node, tmp_path):
    clip = write_avi(tmp_path / 'mjpg_camera.avi')
    jpegs = ros.collect(CompressedImage, '/pass/image_raw/compressed', SENSOR_QOS)
    images = ros.collect(Image, '/pass/image_raw', SENSOR_QOS)
    node = camera(launch_node, '/pass', '-p', 'source:=device', '-p', f'device:={clip}',
                  '-p', 'pixel_format:=MJPG', '-p', 'publish_compressed:=true')
    wait_for(lambda: len(jpegs) >= 3 and images, 20, 'passed-through JPEGs and raw images')
    packets = jpeg_packets(clip)
    assert all(bytes(msg.data) in packets for msg in list(jpegs)), 'bytes arrive unchanged'
    assert (images[-1].width, images[-1].height) == (160, 120)
    assert 'no raw JPEG' not in node.output()


def test_device_recovers_when_it_appears(ros, launch_node, tmp_path):
    device = tmp_path / 'video0'
    images = ros.collect(Image, '/plug/image_raw', SENSOR_QOS)
    node = camera(launch_node, '/plug', '-p', 'source:=device', '-p', f'device:={device}',
                  '-p', 'retry_initial:=0.05', '-p', 'retry_max:=0.2',
                  '--log-level', 'plug.camera_node:=debug')  # the logger carries the ns
    node.wait_output(f"device '{device}': no such device")
    node.wait_output('retry 3 failed')  # it keeps trying ...
    errors = [line for line in node.output().splitlines() if '[ERROR]' in line]
    assert len(errors) == 1, f'one error per outage, not per retry: {errors}'
    assert not images

    os.replace(write_avi(tmp_path / 'staging.avi'), device)  # plug the "camera" in
    wait_for(lambda: len(images) >= 3, 20, 'images after the device appeared')
    assert (images[0].width, images[0].height) == (160, 120)
    output = node.wait_output('recovered')
    assert f"device '{device}' recovered after" in output
    # the clip ends after 1 s, which an emulated device reports as an unplug: a second outage
    # is logged once more and recovers again (the file is still there)
    wait_for(lambda: node.output().count('recovered after') >= 2, 20, 'a second recovery')
    assert node.stop(signal.SIGTERM) == 0


def test_missing_file_exits_with_code_1(launch_node, tmp_path):
    missing = tmp_path / 'missing.avi'
    node = camera(launch_node, '/nofile', '-p', 'source:=file', '-p', f'file:={missing}')
    wait_for(lambda: node.proc.poll() is not None, 20, 'camera_node to exit')
    assert node.proc.returncode == 1
    assert f"video file '{missing}' does not exist" in node.output()
    assert 'Traceback' not in node.output()


@pytest.mark.parametrize('arguments, message', [
    (['-p', 'source:=webcam'], "invalid parameter source='webcam'"),
    (['-p', 'width:=5'], 'expected an integer in 16..7680'),
    (['-p', 'fps:=30'], 'expected a double (write 30.0, not 30)'),
    (['-p', 'pixel_format:=H264'], 'invalid parameter pixel_format'),
    (['-p', 'calibration_file:=/nonexistent/calibration.yaml'], 'cannot read calibration file'),
    (['-p', 'source:=device', '-p', 'retry_max:=0.1'], 'invalid retry_initial/retry_max'),
    (['-p', 'width'], 'invalid arguments'),
])
def test_invalid_parameter_exits_with_code_1(launch_node, arguments, message):
    node = camera(launch_node, '/badparam', *arguments)
    wait_for(lambda: node.proc.poll() is not None, 20, 'camera_node to exit')
    assert node.proc.returncode == 1
    assert message in node.output()
    assert 'Traceback' not in node.output()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_node_cleanly(ros, launch_node, sig):
    images = ros.collect(Image, f'/sig{int(sig)}/image_raw', SENSOR_QOS)
    node = camera(launch_node, f'/sig{int(sig)}')
    wait_for(lambda: images, 20, 'an image')
    assert node.stop(sig, timeout=5) == 0
    assert 'Traceback' not in node.output()


RELIABLE_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


def test_reliable_by_default_so_a_reliable_subscriber_like_rviz_sees_frames(ros, launch_node):
    """REP 2003: drivers publish reliable; rviz2, image_proc and the bridge all match."""
    reliable = ros.collect(Image, '/qos1/image_raw', RELIABLE_QOS)
    best_effort = ros.collect(Image, '/qos1/image_raw', SENSOR_QOS)
    node = camera(launch_node, '/qos1', '-p', 'width:=160', '-p', 'height:=120')
    node.wait_output('reliable QoS')
    wait_for(lambda: len(reliable) >= 3 and len(best_effort) >= 3, 20,
             'frames at a reliable and a best-effort subscriber')
    (info,) = ros.node.get_publishers_info_by_topic('/qos1/image_raw')
    assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE


def test_best_effort_when_asked_reaches_only_best_effort_subscribers(ros, launch_node):
    reliable = ros.collect(Image, '/qos2/image_raw', RELIABLE_QOS)
    best_effort = ros.collect(Image, '/qos2/image_raw', SENSOR_QOS)
    node = camera(launch_node, '/qos2', '-p', 'width:=160', '-p', 'height:=120',
                  '-p', 'reliability:=best_effort')
    node.wait_output('best_effort QoS')
    wait_for(lambda: len(best_effort) >= 10, 20, 'frames at the best-effort subscriber')
    assert reliable == []  # incompatible QoS: why reliable is the default
    (info,) = ros.node.get_publishers_info_by_topic('/qos2/image_raw')
    assert info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT


def test_unknown_parameter_is_named_at_start(ros, launch_node, tmp_path):
    params = tmp_path / 'old.yaml'
    params.write_text('/**:\n  ros__parameters:\n    resolution: 640x480\n    width: 160\n')
    node = camera(launch_node, '/unknown', '--params-file', str(params))
    node.wait_output("parameter 'resolution' is not a camera_node parameter and is ignored")


def test_h264_is_published_as_compressed_image_with_a_keyframe_every_interval(ros, launch_node):
    from video_bridge.core import h264
    av = pytest.importorskip('av')
    # reliable (as the node publishes by default): a decoder needs every unit
    units = ros.collect(CompressedImage, '/h264cam/image_raw/h264',
                        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node = camera(launch_node, '/h264cam', '-p', 'h264:=true', '-p', 'width:=320',
                  '-p', 'height:=240', '-p', 'h264_keyframe_interval:=0.5',
                  '-p', 'h264_encoder:=auto')
    output = node.wait_output('H.264 by')
    assert 'H.264 encoder: libx264' in output or 'H.264 encoder: h264_' in output
    wait_for(lambda: len(units) >= 40, 20, '40 H.264 units')
    messages = list(units)
    assert all(m.format == 'h264' and m.header.frame_id == 'camera' for m in messages)
    source = h264.H264Source()
    fed = [source.feed(bytes(m.data), 0.0) for m in messages]
    assert fed[0].keyframe, 'a new subscriber starts at a keyframe'
    assert h264.inspect(bytes(messages[0].data)).self_contained
    keys = [i for i, unit in enumerate(fed) if unit.keyframe]
    assert 2 <= len(keys) and all(b - a == 15 for a, b in zip(keys, keys[1:])), keys
    decoder = av.CodecContext.create('h264', 'r')
    frames = [f for m in messages for f in decoder.decode(av.Packet(bytes(m.data)))]
    assert len(frames) == len(messages) and (frames[-1].width, frames[-1].height) == (320, 240)
    stamps = [stamp_ns(m) for m in messages]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
