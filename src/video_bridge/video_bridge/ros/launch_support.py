"""
Turn a :mod:`video_bridge.ros.lineup` into a launch description (needs ROS 2 ``launch``).

Kept apart from lineup.py so the lineup stays importable where ``launch`` is not installed
(the pip environment's runner and tests).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from video_bridge.ros.lineup import FASTDDS_PROFILE, LAUNCH_ARGUMENTS, LINEUPS, PACKAGE


def typed(parameters: dict) -> dict:
    """Keep text parameters text: launch_ros reads plain strings as YAML ('0' would be 0)."""
    return {name: ParameterValue(value, value_type=str) if isinstance(value, str) else value
            for name, value in parameters.items()}


def launch_description(lineup: str) -> LaunchDescription:
    """Declare the launch arguments, keep large frames lossless over Fast DDS, start nodes."""
    share = get_package_share_directory(PACKAGE)
    make_specs = LINEUPS[lineup]

    def nodes(context):
        arguments = {name: LaunchConfiguration(name).perform(context)
                     for name in LAUNCH_ARGUMENTS}
        return [Node(package=spec.package, executable=spec.executable, name=spec.name,
                     namespace=spec.namespace, output='screen', emulate_tty=True,
                     parameters=[*spec.params_files, typed(spec.parameters)],
                     remappings=list(spec.remappings))
                for spec in make_specs(share, arguments)]

    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description) in LAUNCH_ARGUMENTS.items()],
        # Respect a profile the user set; otherwise use ours (64 MB shared-memory segment).
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', EnvironmentVariable(
            'FASTDDS_DEFAULT_PROFILES_FILE',
            default_value=os.path.join(share, 'config', FASTDDS_PROFILE))),
        OpaqueFunction(function=nodes),
    ])
