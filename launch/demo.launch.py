"""The whole chain without a simulator: mirage_sim_node + mirage_node + RViz.

    ros2 launch mirage_ros demo.launch.py [config:=FILE] [namespace:=NS] [backend:=shipped|readout|mirage]
        [device:=cpu|cuda] [weights_dir:=DIR] [use_sim_time:=false] [scene:=room|outdoor]
        [moving_object:=false] [rate:=10.0] [rviz:=true]

Only exercised on a ROS 2 install (launch / launch_ros are not on PyPI); the test suite checks
it statically.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription


def generate_launch_description():
    share = get_package_share_directory("mirage_ros")
    args = [
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "mirage.yaml"),
                              description="ROS 2 parameter file for mirage_node"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes"),
        DeclareLaunchArgument("backend", default_value="", description="shipped | readout | mirage (empty: as in "
                                                                       "config)"),
        DeclareLaunchArgument("device", default_value="", description="torch device (empty: as in config)"),
        DeclareLaunchArgument("weights_dir", default_value="", description="folder with model weights (empty: as in "
                                                                           "config)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        DeclareLaunchArgument("scene", default_value="room", description="synthetic scene: room | outdoor"),
        DeclareLaunchArgument("moving_object", default_value="false", description="add a dynamic object"),
        DeclareLaunchArgument("rate", default_value="10.0", description="simulated camera rate (Hz)"),
        DeclareLaunchArgument("rviz", default_value="true", description="start RViz with config/mirage.rviz"),
    ]
    mirage = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "mirage.launch.py")),
        launch_arguments={
            "config": LaunchConfiguration("config"),
            "namespace": LaunchConfiguration("namespace"),
            "backend": LaunchConfiguration("backend"),
            "device": LaunchConfiguration("device"),
            "weights_dir": LaunchConfiguration("weights_dir"),
            "use_sim_time": LaunchConfiguration("use_sim_time"),
        }.items(),
    )
    sim = Node(
        package="mirage_ros",
        executable="mirage_sim_node",
        name="mirage_sim",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[{
            "scene": LaunchConfiguration("scene"),
            "moving_object": ParameterValue(LaunchConfiguration("moving_object"), value_type=bool),
            "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
            "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
        }],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", os.path.join(share, "config", "mirage.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
        parameters=[{"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
    )
    return LaunchDescription(args + [sim, mirage, rviz])
