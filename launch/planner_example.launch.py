"""Planning by imagination against the simulator: mirage_sim_node + mirage_node + mirage_planner_example.

    ros2 launch mirage_ros planner_example.launch.py [rule:=goal|explore] [k:=8] [frames:=8] [period:=5.0]
        [scene:=room|outdoor] [seed:=0] [config:=FILE] [namespace:=NS] [backend:=shipped|readout|mirage]
        [device:=cpu|cuda] [weights_dir:=DIR] [use_sim_time:=false] [rviz:=false]

The planner plans from the simulated camera's newest pose. Rule goal: give it a goal view, either
an image on goal/image (+ goal/camera_info), or `ros2 service call capture_goal std_srvs/srv/Trigger`
to make the current view the goal; it publishes the chosen candidate on plan/chosen, and plans
again every `period` s (from wherever the robot is then). Rule explore: every `period` s, the
candidate that sees the most unseen space. It knows the simulator's scene (scene, seed),
so its candidates are collision-free. Only exercised on a ROS 2 install (launch / launch_ros are not
on PyPI); the test suite checks it statically and runs it against stand-in launch classes.
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
        DeclareLaunchArgument("rule", default_value="goal", description="goal (reach a goal view) | explore (most "
                                                                        "novelty)"),
        DeclareLaunchArgument("k", default_value="8", description="candidate paths per decision"),
        DeclareLaunchArgument("frames", default_value="8", description="poses per candidate"),
        DeclareLaunchArgument("period", default_value="5.0", description="seconds between plans (0: only on a new "
                                                                         "goal)"),
        DeclareLaunchArgument("scene", default_value="room", description="synthetic scene: room | outdoor"),
        DeclareLaunchArgument("seed", default_value="0", description="scene seed"),
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "mirage.yaml"),
                              description="ROS 2 parameter file for mirage_node"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of every node"),
        DeclareLaunchArgument("backend", default_value="", description="shipped | readout | mirage (empty: as in "
                                                                       "config)"),
        DeclareLaunchArgument("device", default_value="", description="torch device (empty: as in config)"),
        DeclareLaunchArgument("weights_dir", default_value="", description="folder with model weights (empty: as in "
                                                                           "config)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with config/mirage.rviz"),
    ]
    sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
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
        package="mirage_ros", executable="mirage_sim_node", name="mirage_sim",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[{"scene": LaunchConfiguration("scene"),
                     "seed": ParameterValue(LaunchConfiguration("seed"), value_type=int),
                     "use_sim_time": sim_time}],
    )
    planner = Node(
        package="mirage_ros", executable="mirage_planner_example", name="mirage_planner",
        namespace=LaunchConfiguration("namespace"), output="screen",
        parameters=[{
            "rule": LaunchConfiguration("rule"),
            "k": ParameterValue(LaunchConfiguration("k"), value_type=int),
            "frames": ParameterValue(LaunchConfiguration("frames"), value_type=int),
            "period": ParameterValue(LaunchConfiguration("period"), value_type=float),
            "sim_scene": LaunchConfiguration("scene"),
            "sim_seed": ParameterValue(LaunchConfiguration("seed"), value_type=int),
            "use_sim_time": sim_time,
        }],
    )
    rviz = Node(
        package="rviz2", executable="rviz2", name="rviz2",
        arguments=["-d", os.path.join(share, "config", "mirage.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")), parameters=[{"use_sim_time": sim_time}],
    )
    return LaunchDescription(args + [sim, mirage, planner, rviz])
