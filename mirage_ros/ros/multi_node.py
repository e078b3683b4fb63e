"""``mirage_multi_node``: several robots on one GPU host, in one process, sharing one loaded model.

Run: ``ros2 run mirage_ros mirage_multi_node --ros-args -p robots:="[robot1, robot2]"
--params-file config/mirage.yaml`` (colcon) or ``mirage_multi_node ...`` (pip).

For each namespace in ``robots`` it starts a ``MirageNode`` named ``mirage`` in that namespace
(``/robot1/mirage``: topics ``/robot1/image``, ``/robot1/imagined/image``, action
``/robot1/imagine``, services ``/robot1/reset`` ...), exactly the interfaces of ``mirage_node``.
Each robot has its own memory, input pairing, goal queue and outputs; with ``share_model`` (default)
robots whose backend parameters agree share the first robot's loaded model (``fleet``), so the
weights are in memory once and the robots take turns on it one chunk at a time.

Robots keep apart where ROS shares things: each robot's default save folder is its own
(``memories/robot1``; ``{namespace}`` in ``memory.save_dir`` does the same for an explicit folder,
and two robots configured with one folder get a warning), and, as robot_state_publisher's
``frame_prefix`` does, a robot whose ``tf.frame_prefix`` is empty prefixes its tf frames with
``robot1/`` (the camera frame it looks up on the shared /tf, image frame ids that lack the prefix,
and the imagined frame it publishes: ``robot1/mirage_imagined_optical_frame``).

Parameters of this process's own node ``mirage_multi``: ``robots`` (string array, required),
``share_model`` (bool) and ``frame_prefix`` (bool, default true). Node parameters come from the
parameter file as usual: a ``/**`` section applies to every robot, a ``/robot1/mirage`` section
to one. Do not remap ``__ns`` (it would
move every robot into one namespace); the namespaces are the ``robots`` entries.
"""
from __future__ import annotations

import sys

from .fleet import parse_robots
from .node import MirageNode

__all__ = ["main", "make_robots"]


def make_robots(robots, share_model: bool = True, frame_prefix: bool = True, **node_kwargs):
    """One MirageNode per namespace (validated by ``fleet.parse_robots``); later robots share the
    first robot's model when ``share_model``. With ``frame_prefix`` a robot whose ``tf.frame_prefix``
    is empty prefixes its tf frames with ``<robot>/`` (all robots subscribe the same /tf, as
    robot_state_publisher's ``frame_prefix`` expects). ``node_kwargs`` go to every node
    (``context``, ``parameter_overrides``). Returns the nodes (each configured and active unless its
    ``autostart`` parameter is false)."""
    nodes = []
    for ns in parse_robots(robots):
        leader = nodes[0] if share_model and nodes else None
        nodes.append(MirageNode("mirage", share_with=leader, namespace=ns,
                                frame_prefix=ns.strip("/") + "/" if frame_prefix else "", **node_kwargs))
    folders = {}
    for n in nodes:  # robots sharing one save folder could load or replace each other's maps
        if n.core is not None:
            from . import paths

            d = str(paths.memory_dir(n.core.p["memory.save_dir"], create=False, namespace=n.core.namespace))
            if d in folders:
                n.get_logger().warning(f"memory.save_dir: {d} is also {folders[d]}'s save folder: the robots can load "
                                       f"and "
                                       "replace each other's memory files (use {namespace} in it, or leave it empty)")
            folders.setdefault(d, n.get_namespace())
    return nodes


def shutdown_robots(nodes, executor=None) -> None:
    """Stop goal work and threads of every robot first, then their entities, the executor and the
    nodes (what ``runtime.spin_until_signal`` does on the way out of ``main``)."""
    for n in nodes:
        try:
            n.stop_work()
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - best effort on the way out
            print(f"mirage_multi_node: {n.get_namespace()}: {type(exc).__name__}: {exc}", file=sys.stderr)
    for n in nodes:
        try:
            n.destroy_entities()
        except (Exception, KeyboardInterrupt):  # noqa: BLE001 - best effort on the way out
            pass
    if executor is not None:
        try:
            executor.shutdown(timeout_sec=1.0)
        except (Exception, KeyboardInterrupt):  # noqa: BLE001 - best effort on the way out
            pass
    for n in nodes:
        try:
            n.destroy_node()
        except (Exception, KeyboardInterrupt):  # noqa: BLE001 - best effort on the way out
            pass


def make_host():
    """This process's own node ``mirage_multi`` and its parameters: (node, robots, share_model,
    frame_prefix)."""
    import rclpy
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.parameter import Parameter

    host = rclpy.create_node("mirage_multi")
    host.declare_parameter("robots", Parameter.Type.STRING_ARRAY,
                           ParameterDescriptor(description="robot namespaces served by this process, e.g. [robot1, "
                                                           "robot2]"))
    host.declare_parameter("share_model", True, ParameterDescriptor(
        description="robots with the same backend parameters share the first robot's loaded model"))
    host.declare_parameter("frame_prefix", True, ParameterDescriptor(
        description="a robot whose tf.frame_prefix is empty prefixes its tf frames (camera, imagined) with '<robot>/'"))
    g = host.get_parameter
    return host, list(g("robots").value or []), bool(g("share_model").value), bool(g("frame_prefix").value)


def main(argv=None) -> int:
    """Spin the host node and every robot until SIGINT / SIGTERM (``runtime.spin_until_signal``)."""
    from .runtime import spin_until_signal

    def make_nodes():
        host, robots, share, prefix = make_host()
        try:
            nodes = make_robots(robots, share, prefix)
        except Exception:
            host.destroy_node()
            raise
        host.get_logger().info(f"serving {len(nodes)} robots: {', '.join(n.get_namespace() for n in nodes)}"
                               + (" (one shared model)" if share else " (a model each)"))
        return [host, *nodes]

    return spin_until_signal(make_nodes, "mirage_multi_node", argv)


if __name__ == "__main__":
    sys.exit(main())
