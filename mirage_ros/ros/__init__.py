"""The ROS 2 side of mirage_ros: the only package that imports rclpy or message packages.

``node`` and ``sim_node`` import rclpy when they are imported; ``multi_node``, ``runtime`` (the
``main`` loop they share), ``planner_example``, ``probe`` and ``qos.profile`` import it inside
functions. Everything the node runs (``intake``, ``observer``, ``goal_runner``, ``requests``,
``core``, ``convert``, ``params``, ``qos``, ``sync``, ``outputs``, ``bag``, ``replay``, ...) works
without ROS and is tested without it (``tests/test_ros_core.py`` checks that importing them loads
no rclpy).
"""
