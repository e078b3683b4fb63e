"""Procedural, seeded scenes made of axis-aligned boxes (rendered by :mod:`mirage_ros.sim.render`).

- ``room``: a closed 8 x 6 x 3 m room seen from inside (floor, ceiling and four walls each with
  their own material), furniture, shelves and wall pictures placed by the seed around a free
  central area where trajectories run.
- ``outdoor``: a ground square (200 m half-size) with buildings, rocks and trees; no walls, no
  ceiling: rays that hit nothing are sky (depth +inf, label SKY).
- ``moving_object=True`` adds a person-sized post (0.4 x 0.4 x 1.6 m, label DYNAMIC) circling the
  centre clockwise, against the loop trajectories, as a smooth function of time ``t`` (seconds):
  ``Scene.moving_at(t)``.

World frame: REP 103 (x forward, y left, z up), metres; the floor / ground is z = 0. Textures
are functions of the world point on a face and of the face's material only, so a surface has
the same colour from every viewpoint (what a spatial memory needs).

Free space (every scene): trajectories stay within ``free_radius`` of ``center`` (horizontally),
the moving object's ring lies between ``free_radius`` and ``clear_radius``, and every static
object lies outside ``clear_radius``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "STATIC", "SKY", "DYNAMIC",
    "CHECKER", "STRIPES_A", "STRIPES_B", "PLAIN",
    "Material", "Box", "Scene", "make_scene",
]

# Pixel labels (uint8), shared with mirage_ros.perception.masks and the ROS label images.
STATIC, SKY, DYNAMIC = 0, 1, 2

# Texture patterns on a face with in-plane coordinates (a, b): x-faces (y, z), y-faces (x, z),
# z-faces (x, y). On walls, STRIPES_B are horizontal bands and STRIPES_A vertical panels.
CHECKER, STRIPES_A, STRIPES_B, PLAIN = 0, 1, 2, 3

NOISE_SIZE = 128  # side of the value-noise lattice (it repeats every NOISE_SIZE cells)


def _vec(*v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


@dataclass
class Material:
    """How a face looks: ``color`` mixed towards ``color2`` by large-scale noise, a ``pattern``
    of period ``scale`` metres with ``contrast`` in [0, 1], and two finer noise octaves."""

    color: torch.Tensor  # (3,) RGB in [0, 1]
    color2: torch.Tensor  # (3,) RGB in [0, 1]
    scale: float = 0.5
    pattern: int = CHECKER
    contrast: float = 0.3


@dataclass
class Box:
    """Axis-aligned box [lo, hi] (metres, float64). ``materials`` holds one material per face in
    the order (x=lo, x=hi, y=lo, y=hi, z=lo, z=hi); ``inside=True`` means rays start inside it
    and see its far side (the room)."""

    lo: torch.Tensor  # (3,)
    hi: torch.Tensor  # (3,)
    materials: List[Material]
    label: int = STATIC
    inside: bool = False

    def __post_init__(self):
        self.lo = torch.as_tensor(self.lo, dtype=torch.float64)
        self.hi = torch.as_tensor(self.hi, dtype=torch.float64)
        if not (self.hi > self.lo).all():
            raise ValueError(f"hi: every coordinate must exceed lo, got lo={self.lo.tolist()} hi={self.hi.tolist()}")
        if isinstance(self.materials, Material):
            self.materials = [self.materials] * 6
        if len(self.materials) != 6:
            raise ValueError(f"materials: expected 6 (one per face), got {len(self.materials)}")

    @property
    def color(self) -> torch.Tensor:
        """Base colour of the first face (3,) (a summary for plots)."""
        return self.materials[0].color

    @property
    def center(self) -> torch.Tensor:
        return (self.lo + self.hi) / 2

    def shifted(self, offset) -> "Box":
        off = torch.as_tensor(offset, dtype=torch.float64)
        return Box(self.lo + off, self.hi + off, self.materials, self.label, self.inside)


@dataclass
class Scene:
    """A seeded scene: static ``boxes``, an optional ground square, an optional moving box."""

    kind: str
    seed: int
    boxes: List[Box]
    noise: torch.Tensor  # (NOISE_SIZE, NOISE_SIZE) float32 value-noise lattice in [0, 1]
    ground: Optional[Material] = None  # the plane z = 0 within |x|, |y| <= ground_extent (outdoor)
    ground_extent: float = 200.0
    moving: Optional[Box] = None  # the dynamic box, centred on the origin horizontally
    motion_radius: float = 1.7
    motion_period: float = 12.0  # seconds per revolution
    motion_phase_deg: float = 90.0  # angle of the moving box at t = 0 (out of the loop's first views)
    center: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    free_radius: float = 1.0  # trajectories stay inside this horizontal radius around ``center``
    clear_radius: float = 2.0  # no static object inside this radius
    eye_height: float = 1.5

    def moving_at(self, t: float) -> Optional[Box]:
        """The dynamic box at time ``t`` (seconds): it circles ``center`` at ``motion_radius``
        clockwise (against the loop trajectories, so the two meet whatever the frame rate),
        starting at ``motion_phase_deg``."""
        if self.moving is None:
            return None
        a = math.radians(self.motion_phase_deg) - 2 * math.pi * float(t) / self.motion_period
        c = self.center
        off = _vec(c[0].item() + self.motion_radius * math.cos(a), c[1].item() + self.motion_radius * math.sin(a), 0.0)
        return self.moving.shifted(off)

    @property
    def description(self) -> str:
        mov = ", a moving object" if self.moving is not None else ""
        return f"synthetic {self.kind} scene (seed {self.seed}, {len(self.boxes)} boxes{mov})"


# -- seeded materials ------------------------------------------------------------------------------

def _hsv(h: float, s: float, v: float) -> torch.Tensor:
    h6 = (h % 1.0) * 6
    c = v * s
    x = c * (1 - abs(h6 % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h6) % 6]
    return torch.tensor(rgb, dtype=torch.float32) + float(v - c)


def _material(rng: np.random.Generator, hue=None, sat=(0.3, 0.75), val=(0.5, 0.9), scale=(0.15, 0.6),
              patterns: Sequence[int] = (CHECKER, STRIPES_A, STRIPES_B), contrast=(0.25, 0.5)) -> Material:
    h = rng.uniform(0, 1) if hue is None else hue
    s, v = rng.uniform(*sat), rng.uniform(*val)
    c1 = _hsv(h, s, v)
    c2 = _hsv(h + rng.uniform(-0.08, 0.08), min(1.0, s * rng.uniform(0.7, 1.3)), v * rng.uniform(0.55, 0.8))
    return Material(c1, c2, float(rng.uniform(*scale)), int(rng.choice(patterns)), float(rng.uniform(*contrast)))


def _overlaps(lo, hi, others, margin: float) -> bool:
    for b in others:
        overlap_xy = (lo[:2] < b.hi[:2] + margin).all() and (hi[:2] > b.lo[:2] - margin).all()
        if overlap_xy and lo[2] < b.hi[2] and hi[2] > b.lo[2]:
            return True
    return False


def _clear_of_centre(lo, hi, radius: float) -> bool:
    """True when the footprint [lo, hi] (x, y) lies outside the disc of ``radius`` around 0."""
    nx = min(max(0.0, lo[0].item()), hi[0].item())
    ny = min(max(0.0, lo[1].item()), hi[1].item())
    return math.hypot(nx, ny) >= radius


def _room(rng: np.random.Generator) -> List[Box]:
    L, Wd, Hc = 4.0, 3.0, 3.0  # half-length, half-width, height
    wall_hue = rng.uniform(0, 1)
    walls = [_material(rng, hue=wall_hue + k * 0.25 + rng.uniform(-0.05, 0.05), sat=(0.25, 0.55), val=(0.6, 0.9),
                       scale=(0.25, 0.7), patterns=(STRIPES_A, STRIPES_B), contrast=(0.2, 0.4)) for k in range(4)]
    floor = _material(rng, hue=rng.uniform(0.03, 0.12), sat=(0.35, 0.6), val=(0.45, 0.7), scale=(0.4, 0.6),
                      patterns=(CHECKER,), contrast=(0.35, 0.5))
    ceiling = _material(rng, sat=(0.05, 0.15), val=(0.85, 0.95), scale=(1.0, 1.5), patterns=(CHECKER,),
                        contrast=(0.1, 0.15))
    boxes = [Box(_vec(-L, -Wd, 0.0), _vec(L, Wd, Hc), walls + [floor, ceiling], STATIC, inside=True)]
    clear = 2.0
    eps = 1e-3  # furniture does not touch the walls exactly (no coplanar faces)
    furniture: List[Box] = []

    def place(kind: str, tries: int = 200):
        for _ in range(tries):
            if kind == "shelf":  # tall and shallow, against a wall
                w, d, h = rng.uniform(0.8, 1.6), rng.uniform(0.3, 0.45), rng.uniform(1.5, 2.3)
                side = int(rng.integers(4))
                if side < 2:  # walls x = -L / x = +L
                    y = rng.uniform(-Wd + w / 2, Wd - w / 2)
                    x0 = -L + eps if side == 0 else L - eps - d
                    lo, hi = _vec(x0, y - w / 2, 0.0), _vec(x0 + d, y + w / 2, h)
                else:
                    x = rng.uniform(-L + w / 2, L - w / 2)
                    y0 = -Wd + eps if side == 2 else Wd - eps - d
                    lo, hi = _vec(x - w / 2, y0, 0.0), _vec(x + w / 2, y0 + d, h)
            else:  # cabinet / table / crate, free-standing
                sx, sy, h = rng.uniform(0.4, 1.3), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.1)
                cx = rng.uniform(-L + sx / 2 + 0.05, L - sx / 2 - 0.05)
                cy = rng.uniform(-Wd + sy / 2 + 0.05, Wd - sy / 2 - 0.05)
                lo, hi = _vec(cx - sx / 2, cy - sy / 2, 0.0), _vec(cx + sx / 2, cy + sy / 2, h)
            if _clear_of_centre(lo, hi, clear) and not _overlaps(lo, hi, furniture, 0.15):
                furniture.append(Box(lo, hi, _material(rng)))
                return furniture[-1]
        return None

    for _ in range(3):
        place("shelf")
    for _ in range(5):
        base = place("cabinet")
        if base is not None and rng.uniform() < 0.5:  # a crate on top, smaller, set back from the edges
            s = (base.hi - base.lo)[:2]
            f = rng.uniform(0.35, 0.7, size=2)
            c = base.center[:2] + torch.from_numpy((rng.uniform(-1, 1, size=2) * (1 - f) / 2)) * s
            half = torch.from_numpy(f) * s / 2
            h = rng.uniform(0.15, 0.45)
            lo = _vec(c[0] - half[0], c[1] - half[1], base.hi[2].item())
            hi = _vec(c[0] + half[0], c[1] + half[1], base.hi[2].item() + h)
            furniture.append(Box(lo, hi, _material(rng, scale=(0.08, 0.2))))
    # pictures, doors and windows: thin panels on the walls, at eye level, where no shelf stands
    pictures: List[Box] = []
    for _ in range(6):
        for _ in range(50):
            side = int(rng.integers(4))
            w, h = rng.uniform(0.5, 1.4), rng.uniform(0.4, 1.0)
            z0 = rng.uniform(1.0, 2.6 - h)
            t = 0.03
            if side < 2:
                y = rng.uniform(-Wd + w / 2 + 0.1, Wd - w / 2 - 0.1)
                x0 = -L if side == 0 else L - t
                lo, hi = _vec(x0, y - w / 2, z0), _vec(x0 + t, y + w / 2, z0 + h)
            else:
                x = rng.uniform(-L + w / 2 + 0.1, L - w / 2 - 0.1)
                y0 = -Wd if side == 2 else Wd - t
                lo, hi = _vec(x - w / 2, y0, z0), _vec(x + w / 2, y0 + t, z0 + h)
            if not _overlaps(lo, hi, furniture + pictures, 0.1):
                pictures.append(Box(lo, hi, _material(rng, sat=(0.5, 0.9), val=(0.3, 0.95), scale=(0.05, 0.2),
                                                     contrast=(0.4, 0.7))))
                break
    return boxes + furniture + pictures


def _outdoor(rng: np.random.Generator, clear: float) -> List[Box]:
    boxes: List[Box] = []

    def add(lo, hi, mat) -> bool:
        if _clear_of_centre(lo, hi, clear) and not _overlaps(lo, hi, boxes, 0.5):
            boxes.append(Box(lo, hi, mat))
            return True
        return False

    for _ in range(300):  # buildings: big, tall, far
        if sum(b.hi[2].item() > 2.5 for b in boxes) >= 8:
            break
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(7.0, 18.0)
        sx, sy, h = rng.uniform(1.5, 4.5), rng.uniform(1.5, 4.5), rng.uniform(3.0, 9.0)
        cx, cy = r * math.cos(a), r * math.sin(a)
        add(_vec(cx - sx / 2, cy - sy / 2, 0.0), _vec(cx + sx / 2, cy + sy / 2, h),
            _material(rng, sat=(0.15, 0.55), val=(0.5, 0.9), scale=(0.6, 1.5), patterns=(CHECKER, STRIPES_B)))
    for _ in range(300):  # rocks and crates, nearer
        if sum(b.hi[2].item() <= 2.5 for b in boxes) >= 6:
            break
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(clear + 0.5, 8.0)
        sx, sy, h = rng.uniform(0.5, 1.4), rng.uniform(0.5, 1.4), rng.uniform(0.3, 1.2)
        cx, cy = r * math.cos(a), r * math.sin(a)
        add(_vec(cx - sx / 2, cy - sy / 2, 0.0), _vec(cx + sx / 2, cy + sy / 2, h),
            _material(rng, hue=rng.uniform(0.05, 0.15), sat=(0.1, 0.35), val=(0.35, 0.65), scale=(0.1, 0.3)))
    trees = 0
    for _ in range(300):  # trees: a trunk and a crown
        if trees >= 4:
            break
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(clear + 1.0, 12.0)
        cx, cy = r * math.cos(a), r * math.sin(a)
        t, c, h = rng.uniform(0.12, 0.2), rng.uniform(0.6, 1.1), rng.uniform(1.8, 2.6)
        crown_lo, crown_hi = _vec(cx - c, cy - c, h), _vec(cx + c, cy + c, h + rng.uniform(1.0, 2.0))
        if not _clear_of_centre(crown_lo, crown_hi, clear) or _overlaps(crown_lo, crown_hi, boxes, 0.5):
            continue
        trunk = _material(rng, hue=0.07, sat=(0.4, 0.6), val=(0.3, 0.45), scale=(0.1, 0.2), patterns=(STRIPES_A,))
        if add(_vec(cx - t, cy - t, 0.0), _vec(cx + t, cy + t, h), trunk):
            boxes.append(Box(crown_lo, crown_hi, _material(rng, hue=rng.uniform(0.22, 0.38), sat=(0.45, 0.75),
                                                              val=(0.35, 0.6), scale=(0.15, 0.3))))
            trees += 1
    return boxes


def make_scene(kind: str = "room", seed: int = 0, moving_object: bool = False) -> Scene:
    """Build the seeded scene ``kind`` ("room" | "outdoor"); same (kind, seed) -> same scene."""
    if kind not in ("room", "outdoor"):
        raise ValueError(f"kind: expected 'room' or 'outdoor', got {kind!r}")
    rng = np.random.default_rng([int(seed), 0 if kind == "room" else 1])
    noise = torch.from_numpy(rng.uniform(0, 1, size=(NOISE_SIZE, NOISE_SIZE)).astype(np.float32))
    moving = None
    if moving_object:  # a bright striped post, 0.4 x 0.4 x 1.6 m (person-sized: seen at eye level)
        mat = Material(_vec(0.92, 0.18, 0.1).float(), _vec(0.95, 0.8, 0.15).float(), 0.15, STRIPES_B, 0.6)
        moving = Box(_vec(-0.2, -0.2, 0.0), _vec(0.2, 0.2, 1.6), mat, DYNAMIC)
    if kind == "room":
        return Scene(kind, seed, _room(rng), noise, moving=moving, motion_radius=1.7,
                     free_radius=1.0, clear_radius=2.0, eye_height=1.5)
    ground = _material(rng, hue=rng.uniform(0.18, 0.3), sat=(0.3, 0.5), val=(0.45, 0.6), scale=(1.0, 1.0),
                       patterns=(CHECKER,), contrast=(0.15, 0.2))
    ground.color2 = _hsv(rng.uniform(0.06, 0.1), 0.35, 0.55)  # grass and dirt patches
    return Scene(kind, seed, _outdoor(rng, 3.5), noise, ground=ground, moving=moving, motion_radius=2.6,
                 free_radius=1.5, clear_radius=3.5, eye_height=1.5)
