"""QoS choices of mirage_node, as plain data (``SPECS``) plus a lazy rclpy builder.

- Sensors (image, camera_info, pose, depth, labels, odom): BEST_EFFORT, KEEP_LAST depth 1,
  VOLATILE. A slow node then always works on the newest frame instead of a growing backlog
  (the stale-frame latency users of model nodes hit). BEST_EFFORT subscriptions match both
  BEST_EFFORT and RELIABLE publishers.
- Plans (``plan``): RELIABLE depth 1: a plan is a command, and only the newest one matters.
- Results (imagined/*, memory/stats): RELIABLE, KEEP_LAST ``results_depth``, VOLATILE: every
  imagined frame reaches a subscriber that keeps up. They match RELIABLE and BEST_EFFORT readers.
- Memory visualisation (memory/points, memory/frustums): RELIABLE + TRANSIENT_LOCAL depth 1,
  so RViz or Foxglove started later still get the current cloud; a TRANSIENT_LOCAL publisher
  also serves VOLATILE and BEST_EFFORT subscribers (RViz defaults PointCloud2 to Best Effort).
- Transforms (/tf: the imagined camera per frame): tf2's own QoS, RELIABLE depth 100 VOLATILE
  (/tf_static: RELIABLE + TRANSIENT_LOCAL depth 1).
- Action services (``imagine``, ``imagine_candidates``: goal, cancel and result requests and
  replies): RELIABLE depth 1000 on the node AND on a planner's action client. rclpy's default
  depth 10 keeps only the newest 10 replies per service: a planner with the default client lost 3
  of 30 goal replies and 22 of 100 cancel replies in bursts, though the node answered them all.
  ``action_client_qos()`` gives a client's keyword arguments.
"""
from __future__ import annotations

from typing import Dict

__all__ = ["SPECS", "spec", "profile", "rosbags_qos", "action_client_qos", "ACTION_SERVICE_DEPTH"]

ACTION_SERVICE_DEPTH = 1000

SPECS: Dict[str, Dict[str, object]] = {
    "sensor": {"reliability": "best_effort", "durability": "volatile", "history": "keep_last", "depth": 1},
    "plan": {"reliability": "reliable", "durability": "volatile", "history": "keep_last", "depth": 1},
    "results": {"reliability": "reliable", "durability": "volatile", "history": "keep_last", "depth": 10},
    "latched": {"reliability": "reliable", "durability": "transient_local", "history": "keep_last", "depth": 1},
    # what tf2's TransformBroadcaster / StaticTransformBroadcaster use for /tf and /tf_static
    "tf": {"reliability": "reliable", "durability": "volatile", "history": "keep_last", "depth": 100},
    "tf_static": {"reliability": "reliable", "durability": "transient_local", "history": "keep_last", "depth": 1},
    # an action's goal / cancel / result services, on the server and on every client
    "action_services": {"reliability": "reliable", "durability": "volatile", "history": "keep_last",
                        "depth": ACTION_SERVICE_DEPTH},
}


def spec(kind: str, **overrides) -> Dict[str, object]:
    if kind not in SPECS:
        raise ValueError(f"qos: unknown kind {kind!r} (known: {', '.join(SPECS)})")
    s = dict(SPECS[kind])
    s.update({k: v for k, v in overrides.items() if v is not None})
    if s["reliability"] not in ("reliable", "best_effort"):
        raise ValueError(f"qos.reliability: expected reliable or best_effort, got {s['reliability']!r}")
    if int(s["depth"]) < 1:
        raise ValueError(f"qos.depth: expected >= 1, got {s['depth']}")
    return s


def profile(kind: str, **overrides):
    """rclpy ``QoSProfile`` for ``kind`` (imports rclpy)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    s = spec(kind, **overrides)
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE if s["reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if s["durability"] == "transient_local"
                    else DurabilityPolicy.VOLATILE),
        history=HistoryPolicy.KEEP_LAST,
        depth=int(s["depth"]),
    )


def action_client_qos() -> dict:
    """Keyword arguments for ``rclpy.action.ActionClient`` so that a burst of goals or cancels
    loses no reply: ``ActionClient(node, Imagine, "imagine", **qos.action_client_qos())``."""
    q = profile("action_services")
    return {"goal_service_qos_profile": q, "result_service_qos_profile": q, "cancel_service_qos_profile": q}


def rosbags_qos(kind: str):
    """rosbags ``Qos`` for the offered_qos_profiles rosbag2 stores per topic, so ``ros2 bag play``
    offers the same QoS as the node (TRANSIENT_LOCAL topics replay latched)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    s = spec(kind)
    inf = QosTime(sec=2147483647, nsec=4294967295)
    return Qos(
        history=QosHistory.KEEP_LAST, depth=int(s["depth"]),
        reliability=QosReliability.RELIABLE if s["reliability"] == "reliable" else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if s["durability"] == "transient_local" else QosDurability.VOLATILE,
        deadline=inf, lifespan=inf, liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=inf,
        avoid_ros_namespace_conventions=False,
    )
