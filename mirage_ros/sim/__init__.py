"""Synthetic scenes with exact metric depth, sky and dynamic labels, and camera trajectories.

``make_scene`` builds a seeded box world, ``render`` ray-casts it from a ``geometry.Camera``
(RGB, z-depth, labels), and the trajectories give world_to_camera poses inside its free area.
"""
from .oracle import SceneOracle
from .render import GROUND_ID, MOVING_ID, SKY_ID, Frame, render, render_depth_only
from .scenes import CHECKER, DYNAMIC, PLAIN, SKY, STATIC, STRIPES_A, STRIPES_B, Box, Material, Scene, make_scene
from .trajectories import (
    TRAJECTORY_KINDS,
    closed_loop,
    default_camera,
    forward_walk,
    orbit,
    random_trajectory,
    scene_trajectory,
)

__all__ = [
    "STATIC", "SKY", "DYNAMIC", "GROUND_ID", "SKY_ID", "MOVING_ID",
    "CHECKER", "STRIPES_A", "STRIPES_B", "PLAIN",
    "Material", "Box", "Scene", "Frame", "make_scene", "render", "render_depth_only", "SceneOracle",
    "default_camera", "forward_walk", "orbit", "closed_loop", "scene_trajectory", "random_trajectory",
    "TRAJECTORY_KINDS",
]
