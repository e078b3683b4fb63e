"""Camera trajectories (lists of world_to_camera (4, 4) float64 tensors) and the default camera.

All keep the camera upright in the REP 103 world (z up) via ``geometry.look_at``. Positions are
world metres; ``scene_trajectory`` fits one to a scene's free area (``scene.free_radius``).
"""
from __future__ import annotations

import math
import numbers
from typing import List, Sequence

import torch

from ..geometry import Camera, look_at

__all__ = ["default_camera", "forward_walk", "orbit", "closed_loop", "scene_trajectory"]


def default_camera(height: int = 256, width: int = 448, fov_x_deg: float = 70.0, world_to_camera=None) -> Camera:
    """A centred pinhole with square pixels (the demo's and benchmarks' camera)."""
    return Camera.from_fov(height, width, fov_x_deg, world_to_camera)


def forward_walk(n: int, start: Sequence[float] = (0.0, 0.0, 1.5), direction: Sequence[float] = (1.0, 0.0, 0.0),
                 step: float = 0.05) -> List[torch.Tensor]:
    """n poses stepping ``step`` metres along ``direction``, looking along it."""
    _check_n(n, 1)
    s = torch.tensor(start, dtype=torch.float64)
    d = torch.tensor(direction, dtype=torch.float64)
    d = d / d.norm()
    return [look_at(s + i * step * d, s + (i * step + 1.0) * d) for i in range(n)]


def orbit(n: int, center: Sequence[float] = (0.0, 0.0, 0.0), radius: float = 1.0, height: float = 1.5,
          target_height: float = 1.2) -> List[torch.Tensor]:
    """n poses on a horizontal circle of ``radius`` around ``center`` at ``height``, looking at the
    point ``target_height`` above ``center`` (counter-clockwise; the last pose is not the first)."""
    _check_n(n, 1)
    c = torch.tensor(center, dtype=torch.float64)
    poses = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = c + torch.tensor([radius * math.cos(a), radius * math.sin(a), height], dtype=torch.float64)
        poses.append(look_at(eye, c + torch.tensor([0.0, 0.0, target_height], dtype=torch.float64)))
    return poses


def closed_loop(n: int, center: Sequence[float] = (0.0, 0.0, 0.0), radius: float = 0.8, height: float = 1.5,
                outward: float = 50.0, pitch_deg: float = -5.0) -> List[torch.Tensor]:
    """n poses counter-clockwise around a circle that end exactly where they start (pose n-1 ==
    pose 0, bit for bit).

    The camera looks ``outward`` degrees from the direction of travel towards the outside, pitched
    by ``pitch_deg``; its yaw turns at a constant rate, so it sweeps the walls and, near the end,
    looks again at what the start saw (a revisit).
    """
    _check_n(n, 2)
    c = torch.tensor(center, dtype=torch.float64)
    poses = []
    for i in range(n):
        a = 2 * math.pi * i / (n - 1)
        eye = c + torch.tensor([radius * math.cos(a), radius * math.sin(a), height], dtype=torch.float64)
        heading = a + math.pi / 2 - math.radians(outward)  # tangent, turned towards the outside
        d = torch.tensor([math.cos(heading), math.sin(heading), math.tan(math.radians(pitch_deg))], dtype=torch.float64)
        poses.append(look_at(eye, eye + d))
    poses[-1] = poses[0].clone()
    return poses


def _check_n(n, least: int) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < least:
        raise ValueError(f"n: expected an integer >= {least}, got {n!r}")


def scene_trajectory(scene, kind: str = "loop", n: int = 46) -> List[torch.Tensor]:
    """A trajectory inside ``scene``'s free area (radius 0.8 * ``scene.free_radius`` around
    ``scene.center`` at ``scene.eye_height``): ``loop`` (closed_loop: pose n-1 == pose 0) |
    ``orbit`` (looking at the centre) | ``forward`` (a straight walk along +x through the centre)."""
    c = scene.center.tolist()
    r = 0.8 * scene.free_radius
    if kind == "loop":
        return closed_loop(n, c, r, scene.eye_height)
    if kind == "orbit":
        return orbit(n, c, r, scene.eye_height)
    if kind == "forward":
        return forward_walk(n, (c[0] - r, c[1], scene.eye_height), (1.0, 0.0, 0.0), step=2 * r / max(1, n - 1))
    raise ValueError(f"kind: expected 'loop', 'orbit' or 'forward', got {kind!r}")
