"""Build video_bridge; installs the repo-level launch/, config/ and web/ into share/."""

import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'video_bridge'
HERE = os.path.dirname(os.path.abspath(__file__))
# launch/, config/ and web/ live at the repository root (fixed layout) and must end up in
# share/video_bridge/ so get_package_share_directory() finds them in an installed workspace.
REPO = os.path.normpath(os.path.join(HERE, '..', '..'))


def share_tree(folder):
    """Map every file below REPO/folder to its place under share/<package>/folder."""
    entries = {}
    for path in sorted(glob.glob(os.path.join(REPO, folder, '**', '*'), recursive=True)):
        if os.path.isfile(path) and '__pycache__' not in path:
            rel_dir = os.path.relpath(os.path.dirname(path), REPO)
            target = os.path.join('share', PACKAGE, rel_dir)
            entries.setdefault(target, []).append(os.path.relpath(path, HERE))
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        *share_tree('launch'),
        *share_tree('config'),
        *share_tree('web'),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='video_bridge maintainers',
    maintainer_email='maintainers@video-bridge.invalid',
    description='Robot cameras in a web browser and browser teleop for ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'camera_node = video_bridge.ros.camera_node:main',
            'bridge_node = video_bridge.ros.bridge_node:main',
            'runner = video_bridge.ros.runner:main',
            'sfu_forwarder = video_bridge.sfu_forwarder:main',
        ],
    },
)
