"""The ROS 2 side of mirage_ros: the only package that imports rclpy or message packages.

Modules that import rclpy (``node``, ``sim_node``) do so inside functions; everything they call
(``convert``, ``params``, ``qos``, ``sync``, ``core``, ``outputs``, ``bag``, ``replay``) works
without ROS and is tested without it.
"""
