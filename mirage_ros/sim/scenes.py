"""Procedural, seeded scenes made of axis-aligned boxes, rendered by exact ray casting.

- ``room``: a closed 8 x 6 x 3 m room (seen from inside) with textured walls, floor, ceiling and
  furniture boxes around a free central area where trajectories run.
- ``outdoor``: a ground plane with buildings and rocks; rays that hit nothing are sky
  (depth +inf, label SKY).
- ``moving_object=True`` adds a box circling the centre (label DYNAMIC) whose position is a
  function of time ``t``.

World frame: REP 103 (x forward, y left, z up), metres. Textures are functions of the world hit
point and the object, so a surface looks the same from every viewpoint (what a memory needs).
Depth is z-depth along the optical axis: rays are K^-1 [u+1/2, v+1/2, 1], whose camera z is 1,
so the ray parameter of a hit *is* its z-depth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from ..geometry import Camera

__all__ = ["STATIC", "SKY", "DYNAMIC", "Box", "Scene", "Frame", "make_scene", "render"]

STATIC, SKY, DYNAMIC = 0, 1, 2


@dataclass
class Box:
    """Axis-aligned box [lo, hi] with a base colour, a texture scale and a label."""

    lo: torch.Tensor  # (3,) metres
    hi: torch.Tensor  # (3,)
    color: torch.Tensor  # (3,) in [0, 1]
    scale: float = 0.5  # texture period in metres
    label: int = STATIC
    inside: bool = False  # True for the room: rays start inside and hit its far side


@dataclass
class Scene:
    kind: str
    seed: int
    boxes: List[Box]
    ground: bool = False  # infinite ground plane z = 0 (outdoor)
    moving: Optional[Box] = None  # the dynamic object at t = 0
    motion_radius: float = 1.35
    motion_period: float = 12.0
    center: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    free_radius: float = 1.1  # trajectories stay inside this radius around ``center``
    eye_height: float = 1.5
    phases: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # texture noise (K, 4)

    def moving_at(self, t: float) -> Optional[Box]:
        """The dynamic box at time t (seconds): circles ``center`` at ``motion_radius``."""
        if self.moving is None:
            return None
        a = 2 * math.pi * t / self.motion_period
        off = torch.tensor([self.motion_radius * math.cos(a), self.motion_radius * math.sin(a), 0.0])
        c0 = (self.moving.lo + self.moving.hi) / 2
        shift = self.center.float() + off - torch.tensor([c0[0], c0[1], 0.0])
        return Box(self.moving.lo + shift, self.moving.hi + shift, self.moving.color, self.moving.scale, DYNAMIC)


@dataclass
class Frame:
    """A rendered view: rgb (H, W, 3) uint8, depth (H, W) float32 z-depth (inf = sky), labels (H, W) uint8."""

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    object_id: np.ndarray  # (H, W) int16: index into scene boxes, -1 ground, -2 sky, -3 moving


def _rand_color(rng: np.random.Generator) -> torch.Tensor:
    hsv = np.array([rng.uniform(0, 1), rng.uniform(0.35, 0.8), rng.uniform(0.55, 0.95)])
    h6 = hsv[0] * 6
    c = hsv[2] * hsv[1]
    x = c * (1 - abs(h6 % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h6) % 6]
    return torch.tensor(rgb, dtype=torch.float32) + float(hsv[2] - c)


def make_scene(kind: str = "room", seed: int = 0, moving_object: bool = False) -> Scene:
    """Build a seeded scene (see the module docstring)."""
    if kind not in ("room", "outdoor"):
        raise ValueError(f"kind: expected 'room' or 'outdoor', got {kind!r}")
    rng = np.random.default_rng(seed)
    T = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    boxes: List[Box] = []
    if kind == "room":
        boxes.append(Box(T(-4.0, -3.0, 0.0), T(4.0, 3.0, 3.0), _rand_color(rng), 0.6, STATIC, inside=True))
        placed = 0
        while placed < 7:
            cx, cy = rng.uniform(-3.4, 3.4), rng.uniform(-2.4, 2.4)
            sx, sy = rng.uniform(0.3, 0.7, size=2)
            if math.hypot(cx, cy) - math.hypot(sx, sy) < 2.0:
                continue  # keep the central area free for trajectories and the moving object
            hgt = rng.uniform(0.4, 1.9)
            lo = T(max(cx - sx, -3.99), max(cy - sy, -2.99), 0.0)
            hi = T(min(cx + sx, 3.99), min(cy + sy, 2.99), hgt)
            boxes.append(Box(lo, hi, _rand_color(rng), float(rng.uniform(0.15, 0.5))))
            placed += 1
        eye, free = 1.5, 1.0
    else:
        for _ in range(10):
            a, r = rng.uniform(0, 2 * math.pi), rng.uniform(5.0, 14.0)
            cx, cy = r * math.cos(a), r * math.sin(a)
            sx, sy = rng.uniform(0.6, 2.0, size=2)
            hgt = rng.uniform(1.0, 7.0)
            boxes.append(Box(T(cx - sx, cy - sy, 0.0), T(cx + sx, cy + sy, hgt), _rand_color(rng), float(rng.uniform(0.3, 1.2))))
        eye, free = 1.5, 1.5
    moving = None
    if moving_object:
        moving = Box(T(-0.25, -0.25, 0.0), T(0.25, 0.25, 0.9), T(0.9, 0.15, 0.1), 0.2, DYNAMIC)
    phases = torch.from_numpy(rng.uniform(-1, 1, size=(6, 4))).float()
    return Scene(kind, seed, boxes, ground=(kind == "outdoor"), moving=moving,
                 motion_radius=1.6 if kind == "room" else 2.6, free_radius=free, eye_height=eye, phases=phases)


def _texture(p: torch.Tensor, color: torch.Tensor, scale: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """View-independent colour (M, 3) of world points p (M, 3): checker x smooth noise x base colour."""
    q = p / scale[:, None]
    checker = (torch.floor(q[:, 0] + 1e-4) + torch.floor(q[:, 1] + 1e-4) + torch.floor(q[:, 2] + 1e-4)) % 2
    noise = torch.zeros_like(checker)
    for k in range(phases.shape[0]):
        freq = 1.3 * (k + 1) * phases[k, :3]
        noise += torch.sin(p @ freq * 3.0 + 6.0 * phases[k, 3]) / (k + 1)
    shade = 0.55 + 0.25 * checker + 0.12 * noise
    fine = 0.06 * torch.sin(40.0 * (p[:, 0] + p[:, 1] + p[:, 2]))  # detail finer than a latent cell
    return (color * (shade + fine)[:, None]).clamp(0, 1)


def _slab(O: torch.Tensor, D: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Ray/AABB intersection: entry and exit parameters (M,), inf where missed."""
    inv = 1.0 / torch.where(D.abs() < 1e-12, torch.full_like(D, 1e-12), D)
    t1 = (lo - O) * inv
    t2 = (hi - O) * inv
    tmin = torch.minimum(t1, t2).amax(1)
    tmax = torch.maximum(t1, t2).amin(1)
    return tmin, tmax


def render(scene: Scene, camera: Camera, t: float = 0.0) -> Frame:
    """Ray-cast ``scene`` from ``camera`` at time ``t``: exact z-depth, RGB and labels."""
    H, W = camera.height, camera.width
    Kinv = torch.linalg.inv(camera.K).float()
    C2W = camera.camera_to_world.float()
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32) + 0.5, torch.arange(W, dtype=torch.float32) + 0.5, indexing="ij")
    pix = torch.stack([u.flatten(), v.flatten(), torch.ones(H * W)], 1)
    D = (pix @ Kinv.T) @ C2W[:3, :3].T  # camera z of every ray direction is 1
    O = C2W[:3, 3][None]
    best = torch.full((H * W,), float("inf"))
    obj = torch.full((H * W,), -2, dtype=torch.int16)
    boxes = list(scene.boxes)
    mov = scene.moving_at(t)
    for i, b in enumerate(boxes + ([mov] if mov is not None else [])):
        tmin, tmax = _slab(O, D, b.lo, b.hi)
        if b.inside:
            th = torch.where(tmax > 1e-6, tmax, torch.full_like(tmax, float("inf")))
        else:
            th = torch.where((tmax >= tmin) & (tmin > 1e-6), tmin, torch.full_like(tmin, float("inf")))
        closer = th < best
        best = torch.where(closer, th, best)
        obj = torch.where(closer, torch.full_like(obj, i if i < len(boxes) else -3), obj)
    if scene.ground:
        tg = torch.where(D[:, 2] < -1e-9, -O[0, 2] / D[:, 2].clamp(max=-1e-9), torch.full_like(best, float("inf")))
        closer = tg < best
        best = torch.where(closer, tg, best)
        obj = torch.where(closer, torch.full_like(obj, -1), obj)
    hit = torch.isfinite(best)
    P = O + D * torch.where(hit, best, torch.zeros_like(best))[:, None]
    rgb = torch.zeros(H * W, 3)
    ids = obj.long()
    palette = torch.stack([b.color for b in boxes] + [torch.tensor([0.45, 0.42, 0.36]), mov.color if mov is not None else torch.zeros(3)])
    scales = torch.tensor([b.scale for b in boxes] + [0.8, mov.scale if mov is not None else 1.0])
    sel = torch.where(ids >= 0, ids, torch.where(ids == -1, torch.full_like(ids, len(boxes)), torch.full_like(ids, len(boxes) + 1)))
    if hit.any():
        rgb[hit] = _texture(P[hit], palette[sel[hit]], scales[sel[hit]], scene.phases)
    sky = ~hit
    if sky.any():
        elev = (D[sky, 2] / D[sky].norm(dim=1)).clamp(-1, 1)
        top, horizon = torch.tensor([0.30, 0.50, 0.85]), torch.tensor([0.78, 0.86, 0.95])
        a = elev.clamp(min=0)[:, None] ** 0.6
        rgb[sky] = horizon * (1 - a) + top * a
    labels = torch.full((H * W,), STATIC, dtype=torch.uint8)
    labels[sky] = SKY
    labels[obj == -3] = DYNAMIC
    return Frame(
        rgb=(rgb * 255 + 0.5).clamp(0, 255).to(torch.uint8).view(H, W, 3).numpy(),
        depth=best.view(H, W).numpy().astype(np.float32),
        labels=labels.view(H, W).numpy(),
        object_id=obj.view(H, W).numpy(),
    )
