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

__all__ = ["default_camera", "forward_walk", "orbit", "closed_loop", "scene_trajectory", "random_trajectory",
           "TRAJECTORY_KINDS"]

TRAJECTORY_KINDS = ("loop", "forward")


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
                outward: float = 50.0, pitch_deg: float = -5.0, start_deg: float = 0.0,
                clockwise: bool = False) -> List[torch.Tensor]:
    """n poses around a circle (counter-clockwise unless ``clockwise``) that end exactly where they
    start (pose n-1 == pose 0, bit for bit), starting at angle ``start_deg`` on the circle.

    The camera looks ``outward`` degrees from the direction of travel towards the outside, pitched
    by ``pitch_deg``; its yaw turns at a constant rate, so it sweeps the walls and, near the end,
    looks again at what the start saw (a revisit).
    """
    _check_n(n, 2)
    c = torch.tensor(center, dtype=torch.float64)
    sign = -1.0 if clockwise else 1.0
    poses = []
    for i in range(n):
        a = math.radians(start_deg) + sign * 2 * math.pi * i / (n - 1)
        eye = c + torch.tensor([radius * math.cos(a), radius * math.sin(a), height], dtype=torch.float64)
        heading = a + sign * (math.pi / 2 - math.radians(outward))  # tangent, turned towards the outside
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


def random_trajectory(scene, rng, n: int, kind: str = "loop") -> tuple:
    """A seeded random trajectory inside ``scene``'s free area: (poses, params).

    ``loop``: a closed loop of random radius (0.35-0.9 of the free radius), start angle, direction,
    outward look (20-80 degrees), pitch (-15..+5 degrees) and eye height (+-0.25 m) -- it returns to
    its first pose, so its last frames revisit what the first saw. ``forward``: a straight walk of
    random heading through the free area with a random pitch and a slow yaw drift (up to 30 degrees).
    ``rng`` is a ``numpy.random.Generator``; ``params`` records every draw (JSON-serialisable).
    """
    _check_n(n, 2)
    c = scene.center.tolist()
    R = float(scene.free_radius)
    height = float(scene.eye_height + rng.uniform(-0.25, 0.25))
    pitch = float(rng.uniform(-15.0, 5.0))
    if kind == "loop":
        p = dict(kind=kind, radius=float(rng.uniform(0.35, 0.9) * R), start_deg=float(rng.uniform(0, 360)),
                 clockwise=bool(rng.integers(0, 2)), outward=float(rng.uniform(20, 80)), pitch_deg=pitch, height=height)
        poses = closed_loop(n, c, p["radius"], height, p["outward"], pitch, p["start_deg"], p["clockwise"])
        return poses, p
    if kind == "forward":
        heading = float(rng.uniform(0, 2 * math.pi))
        half = float(rng.uniform(0.6, 1.0) * R)
        drift = math.radians(float(rng.uniform(-30, 30)))
        p = dict(kind=kind, heading_deg=math.degrees(heading), half_length=half, yaw_drift_deg=math.degrees(drift),
                 pitch_deg=pitch, height=height)
        d = torch.tensor([math.cos(heading), math.sin(heading), 0.0], dtype=torch.float64)
        start = torch.tensor([c[0], c[1], height], dtype=torch.float64) - half * d
        poses = []
        for i in range(n):
            f = i / (n - 1)
            eye = start + 2 * half * f * d
            yaw = heading + drift * f
            look = torch.tensor([math.cos(yaw), math.sin(yaw), math.tan(math.radians(pitch))], dtype=torch.float64)
            poses.append(look_at(eye, eye + look))
        return poses, p
    raise ValueError(f"kind: expected one of {TRAJECTORY_KINDS}, got {kind!r}")
