"""
Camera + bridge: a moving test picture (or a real camera) in the browser, and teleop.

    ros2 launch video_bridge car.launch.py
    ros2 launch video_bridge car.launch.py camera_source:=device device:=/dev/video0 port:=8080

Nodes and arguments are defined in video_bridge.ros.lineup (shared with the pip-environment
runner).
"""

from video_bridge.ros.launch_support import launch_description


def generate_launch_description():
    """Start camera_node (namespace /camera) and bridge_node."""
    return launch_description('car')
