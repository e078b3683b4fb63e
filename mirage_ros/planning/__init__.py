"""Planning with imagined views: candidate camera paths and goal-conditioned scores (no ROS).

- ``paths``: motion primitives (straight, arc, turn in place) from the robot's current camera pose,
  the documented ``fan`` sampler, paths to a pose (``goto``) and the simulator's free-space test;
- ``goal``: ``GoalView`` (a goal image warped to the imagined camera and encoded once) scoring frames
  in the codec's latent space and in pixels, ``CandidateGoalScores`` per candidate and frame, and
  ``pick``, the planner's rule (reach the goal view, or explore).

The node (``imagine_candidates`` with a goal image), the example planner and ``mirage bench plan``
all use these, so what the benchmark measures is what a planner gets.
"""
from .goal import (
    DEFAULT_METRIC,
    GOAL_IMAGINED,
    GOAL_NONE,
    GOAL_READOUT,
    METRICS,
    CandidateGoalScores,
    GoalView,
    pick,
    warp_intrinsics,
)
from .paths import (
    Primitive,
    camera_pose,
    fan,
    fan_paths,
    goto,
    heading_pitch,
    path_is_free,
    primitive_path,
    scene_free_space,
    view_angle,
)

__all__ = ["GoalView", "CandidateGoalScores", "pick", "warp_intrinsics", "METRICS", "DEFAULT_METRIC", "GOAL_NONE",
           "GOAL_READOUT", "GOAL_IMAGINED", "Primitive", "camera_pose", "fan", "fan_paths", "goto", "heading_pitch",
           "path_is_free", "primitive_path", "scene_free_space", "view_angle"]
