"""Launch mirage_node with a parameter file.

    ros2 launch mirage_ros mirage.launch.py [config:=FILE] [namespace:=NS] [backend:=shipped|readout|mirage]
        [device:=cpu|cuda] [weights_dir:=DIR] [use_sim_time:=false]

backend, device and weights_dir override the parameter file only when given (empty: keep the
file's value). Only exercised on a ROS 2 install (launch / launch_ros are not on PyPI); the test
suite checks it statically and runs it against stand-in launch classes.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

OVERRIDES = ("backend", "device", "weights_dir")


def _mirage_node(context, *args, **kwargs):
    params = {}
    for name in OVERRIDES:
        value = LaunchConfiguration(name).perform(context)
        if value:
            params[name] = value
    params["use_sim_time"] = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1", "yes")
    return [Node(
        package="mirage_ros",
        executable="mirage_node",
        name="mirage",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("config"), params],
    )]


def generate_launch_description():
    share = get_package_share_directory("mirage_ros")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "mirage.yaml"),
                              description="ROS 2 parameter file for mirage_node"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace for every topic, service and "
                                                                         "action"),
        DeclareLaunchArgument("backend", default_value="", description="shipped | readout | mirage (empty: as in "
                                                                       "config)"),
        DeclareLaunchArgument("device", default_value="", description="cpu, cuda, cuda:1 ... (empty: as in config)"),
        DeclareLaunchArgument("weights_dir", default_value="", description="folder with model weights (empty: as in "
                                                                           "config)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        OpaqueFunction(function=_mirage_node),
    ])
