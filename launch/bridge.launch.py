"""
The bridge alone, for a robot whose camera driver already publishes images.

    ros2 launch video_bridge bridge.launch.py bridge_params:=/path/to/my_bridge.yaml

Nodes and arguments are defined in video_bridge.ros.lineup (shared with the pip-environment
runner).
"""

from video_bridge.ros.launch_support import launch_description


def generate_launch_description():
    """Start bridge_node."""
    return launch_description('bridge')
