"""Synthetic scenes with exact metric depth, sky and dynamic labels, and camera trajectories."""
from .scenes import DYNAMIC, SKY, STATIC, Box, Frame, Scene, make_scene, render
from .trajectories import closed_loop, default_camera, forward_walk, orbit, scene_trajectory

__all__ = ["STATIC", "SKY", "DYNAMIC", "Box", "Frame", "Scene", "make_scene", "render",
           "default_camera", "forward_walk", "orbit", "closed_loop", "scene_trajectory"]
