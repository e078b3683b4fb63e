"""``mirage_planner_example``: a planner that chooses where to go by imagining it (read me in one sitting).

What it does, every time it plans:
  1. takes the robot's newest camera pose (``pose``, geometry_msgs/PoseStamped: the camera optical
     frame in the world, as mirage_sim_node publishes it);
  2. samples ``k`` candidate paths of ``frames`` poses from it (``planning.fan_paths``: arcs and a
     straight segment of ``length`` m, turns in place; with ``sim_scene`` set it knows the
     simulator's room and shortens or replaces paths that would hit something);
  3. sends them in ONE ``imagine_candidates`` goal to the mirage node (with the goal image, if any);
  4. picks one by ``rule`` (``planning.pick``): ``goal`` = the candidate whose imagined frames look
     most like the goal image (``goal_similarity``); ``explore`` = the one that looks at the most
     space the memory has never seen (``novelty``; scores only, no model run);
  5. publishes the chosen path on ``plan/chosen`` (nav_msgs/Path) and logs why.

When it plans: rule ``goal``, each time a goal image arrives on ``goal/image`` (with its
``goal/camera_info``, optional), or when ``capture_goal`` (std_srvs/Trigger) makes the newest
``image`` the goal ("come back here"), and then every ``period`` s while it has a goal (0: only on a
new goal); rule ``explore``, every ``period`` s. One request at a time; a goal that arrives meanwhile waits.

Parameters: rule (goal | explore), k (8), frames (8), length (1.0 m), max_turn_deg (90),
max_turn_in_place_deg (120), period (5 s), scores_only (false: rule goal ranks the imagined
frames; true: the memory readout only, milliseconds), goal_metric (latent | pixel), sim_scene
('' | room | outdoor) and sim_seed (the simulator's, for collisions), frame_rate (10: stamps of the
published path).
"""
from __future__ import annotations

import math
import sys
import threading

from . import convert as cv

__all__ = ["PlannerExample", "main", "PLANNER_PARAMS"]

PLANNER_PARAMS = {
    "rule": ("goal", "goal (reach the goal view) | explore (most novelty)"),
    "k": (8, "candidate paths per decision"),
    "frames": (8, "poses per candidate"),
    "length": (1.0, "metres of the arcs and the straight segment"),
    "max_turn_deg": (90.0, "largest turn of an arc (degrees)"),
    "max_turn_in_place_deg": (120.0, "largest turn in place (degrees)"),
    "period": (5.0, "seconds between plans (explore; goal: replanning while a goal is set); 0: only on a new goal"),
    "scores_only": (False, "rank by the memory readout alone (no model run)"),
    "goal_metric": ("latent", "latent | pixel: the similarity the goal rule ranks by"),
    "sim_scene": ("", "'' | room | outdoor: the simulator's scene, to keep candidates collision-free"),
    "sim_seed": (0, "the simulator's scene seed"),
    "frame_rate": (10.0, "poses per second of the published path's stamps"),
}


class PlannerExample:
    """The planner's rclpy side: subscriptions, the action client, the chosen path."""

    def __init__(self, node_name: str = "mirage_planner"):
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Path
        from rclpy.node import Node
        from sensor_msgs.msg import CameraInfo, Image
        from std_srvs.srv import Trigger

        from mirage_ros.action import ImagineCandidates

        from .probe import action_client  # rclpy's ActionClient, keeping goal answers that arrive early

        self.node = node = Node(node_name)
        for name, (default, _desc) in PLANNER_PARAMS.items():
            node.declare_parameter(name, default)
        self.p = {name: node.get_parameter(name).value for name in PLANNER_PARAMS}
        if self.p["rule"] not in ("goal", "explore"):
            raise ValueError(f"rule: expected goal or explore, got {self.p['rule']!r}")
        self.types, self.Action = cv.RclpyTypes(), ImagineCandidates
        self.is_free = None
        if self.p["sim_scene"]:
            from .. import sim
            from ..planning import scene_free_space

            self.is_free = scene_free_space(sim.make_scene(self.p["sim_scene"], int(self.p["sim_seed"])))
        # newest messages; the goal = (image, its camera_info or None)
        self.pose = self.image = self.info = self.goal_info = self.goal = None
        self.lock = threading.Lock()
        self.busy, self.pending = False, False
        self.client = action_client(node, ImagineCandidates, "imagine_candidates")
        self.pub = node.create_publisher(Path, "plan/chosen", 10)
        node.create_subscription(PoseStamped, "pose", lambda m: setattr(self, "pose", m), 10)
        node.create_subscription(Image, "image", lambda m: setattr(self, "image", m), 1)
        node.create_subscription(CameraInfo, "camera_info", lambda m: setattr(self, "info", m), 1)
        node.create_subscription(Image, "goal/image", self._on_goal_image, 1)
        node.create_subscription(CameraInfo, "goal/camera_info", lambda m: setattr(self, "goal_info", m), 1)
        node.create_service(Trigger, "capture_goal", self._capture_goal)
        if float(self.p["period"]) > 0:
            node.create_timer(float(self.p["period"]), self.plan)
        node.get_logger().info(f"planner ready: rule {self.p['rule']}, {self.p['k']} candidates of {self.p['frames']} "
                               f"poses"
                               + (f", collision-free in the simulator's {self.p['sim_scene']}" if self.is_free else ""))

    # -- goals ------------------------------------------------------------------------------------
    def _on_goal_image(self, msg) -> None:
        info = self.goal_info
        if info is not None and (info.width, info.height) != (msg.width, msg.height):
            info = None  # not this image's camera_info: the goal is taken to show the imagined camera's view
        self.goal = (msg, info)
        self.plan()

    def _capture_goal(self, request, response):
        if self.image is None:
            response.success, response.message = False, "no image received yet"
            return response
        self.goal = (self.image, self.info)
        response.success, response.message = True, "the newest image is the goal; planning"
        self.plan()
        return response

    # -- one decision -----------------------------------------------------------------------------
    def plan(self) -> None:
        """Sample candidates from the newest pose and ask the node (returns at once; the answer
        arrives in ``_on_result``)."""
        from ..planning import fan_paths

        if self.p["rule"] == "goal" and self.goal is None:
            return
        if self.pose is None:
            self.node.get_logger().warning("no pose yet: cannot plan", throttle_duration_sec=10.0)
            return
        with self.lock:
            if self.busy:
                self.pending = True  # plan again when the running request is answered
                return
            self.busy = True
        _stamp, frame, start = cv.pose_stamped_to_matrix(self.pose)
        paths, prims = fan_paths(start, int(self.p["k"]), int(self.p["frames"]), float(self.p["length"]),
                                 math.radians(self.p["max_turn_deg"]), math.radians(self.p["max_turn_in_place_deg"]),
                                 self.is_free)
        now = self.node.get_clock().now().nanoseconds
        stamps = [now + int(round(i * 1e9 / float(self.p["frame_rate"]))) for i in range(1, int(self.p["frames"]) + 1)]
        msgs = [cv.path_msg(self.types, P, stamps, frame or "map") for P in paths]
        goal = self.Action.Goal(candidates=msgs, scores_only=bool(self.p["scores_only"] or self.p["rule"] == "explore"))
        if self.p["rule"] == "goal":
            goal.goal_image, goal.goal_metric = self.goal[0], str(self.p["goal_metric"])
            if self.goal[1] is not None:
                goal.goal_camera_info = self.goal[1]
        if not self.client.wait_for_server(timeout_sec=5.0):
            self.node.get_logger().warning("no imagine_candidates action server (is mirage_node running here?)")
            self._done()
            return
        fut = self.client.send_goal_async(goal)
        fut.add_done_callback(lambda f: self._on_accepted(f, msgs, prims))

    def _on_accepted(self, fut, msgs, prims) -> None:
        handle = fut.result()
        if not handle.accepted:
            self.node.get_logger().warning("imagine_candidates refused the goal (see the mirage node's log)")
            self._done()
            return
        handle.get_result_async().add_done_callback(lambda f: self._on_result(f, msgs, prims))

    def _on_result(self, fut, msgs, prims) -> None:
        from ..planning import pick

        result = fut.result().result
        try:
            if result.status != result.STATUS_SUCCEEDED:
                self.node.get_logger().warning(f"imagine_candidates: {result.message}")
                return
            scores = [{"goal_similarity": c.goal_similarity, "novelty": c.novelty} for c in result.candidates]
            k = pick(scores, self.p["rule"])
            self.pub.publish(msgs[k])
            what = (f"goal similarity {scores[k]['goal_similarity']:.3f}" if self.p["rule"] == "goal"
                    else f"novelty {scores[k]['novelty']:.2f}")
            others = ", ".join(f"{s['goal_similarity']:.3f}" if self.p["rule"] == "goal" else f"{s['novelty']:.2f}"
                               for s in scores)
            self.node.get_logger().info(f"chose candidate {k} of {len(msgs)} ({prims[k].describe()}; {what}; all: "
                                        f"{others}) "
                                        f"with the {result.backend} backend in {result.total_time:.2f} s")
        finally:
            self._done()

    def _done(self) -> None:
        with self.lock:
            self.busy, again = False, self.pending
            self.pending = False
        if again:
            self.plan()


def main(argv=None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=sys.argv if argv is None else argv)
    planner = None
    try:
        planner = PlannerExample()
        rclpy.spin(planner.node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if planner is not None:
            planner.node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
