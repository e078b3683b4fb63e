"""Candidate camera paths from a robot's current camera pose, for ``imagine_candidates``.

Poses are camera OPTICAL frames in the world (camera_to_world, (4, 4) float64 NumPy; x right, y
down, z forward) in a REP 103 world (z up), as the node's goals take them. The robot is planar: a
path keeps the camera's height and pitch and changes its position on the floor and its heading
(yaw, the direction of the optical axis projected on the floor, counter-clockwise from world +x).

Motion primitives, each from the start pose, sampled at ``n`` poses u = 1/n, 2/n, .., 1 (the start
pose itself is not in the path: the robot is already there):

- ``straight``: ``length`` metres along the heading;
- ``arc``: constant curvature, the heading turning by ``turn`` radians over ``length`` metres
  (positive = left / counter-clockwise); position p0 + (L / turn) (sin(h0 + turn u) - sin h0,
  cos h0 - cos(h0 + turn u));
- ``turn``: turn in place by ``turn`` radians (length 0).

``fan`` is the documented sampler: ceil(K / 2) arcs of ``length`` whose turns spread evenly over
[-max_turn, +max_turn] (the middle one straight when that count is odd), then floor(K / 2) turns in
place: pairs +-max_turn_in_place * j / m (j = 1..m, m = floor(K / 4)), and a turn-around (180
degrees) when floor(K / 2) is odd.
With ``is_free`` (a function of (M, 3) world points -> (M,) bool, e.g. ``scene_free_space`` in the
simulator) a primitive whose path leaves free space is shortened to half its length, twice, and
then replaced by the turn in place with the same turn, which is free whenever the start is.

``goto`` is a path to a given pose: positions linear, rotations by slerp (``geometry.interpolate_poses``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Primitive", "heading_pitch", "camera_pose", "primitive_path", "fan", "fan_paths", "goto",
           "scene_free_space", "path_is_free", "view_angle"]

FreeFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Primitive:
    """A motion primitive: ``kind`` straight | arc | turn, ``length`` metres, ``turn`` radians (left +)."""

    kind: str
    length: float
    turn: float

    def __post_init__(self):
        if self.kind not in ("straight", "arc", "turn"):
            raise ValueError(f"kind: expected straight, arc or turn, got {self.kind!r}")
        if not (math.isfinite(self.length) and math.isfinite(self.turn)) or self.length < 0:
            raise ValueError(f"length / turn: expected a finite length >= 0 and a finite turn, got {self.length}, "
                             f"{self.turn}")

    def describe(self) -> str:
        if self.kind == "turn":
            return f"turn in place {math.degrees(self.turn):+.0f} deg"
        if self.kind == "straight":
            return f"straight {self.length:.2f} m"
        return f"arc {self.length:.2f} m turning {math.degrees(self.turn):+.0f} deg"


def _check_pose(T, name: str = "start") -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"{name}: expected a finite (4, 4) camera_to_world, got shape {T.shape}")
    return T


def heading_pitch(camera_to_world) -> Tuple[float, float]:
    """(heading, pitch) in radians of an optical frame: the optical axis (column 2 of R) as
    heading = atan2(z_y, z_x) and pitch = asin(z_z) (up positive)."""
    T = _check_pose(camera_to_world, "camera_to_world")
    z = T[:3, 2]
    if math.hypot(z[0], z[1]) < 1e-9:
        raise ValueError("camera_to_world: the camera looks straight up or down; a heading is undefined")
    return math.atan2(z[1], z[0]), math.asin(max(-1.0, min(1.0, z[2])))


def camera_pose(position: Sequence[float], heading: float, pitch: float = 0.0) -> np.ndarray:
    """camera_to_world of an upright optical frame at ``position`` looking along ``heading`` (rad
    from +x, counter-clockwise) pitched by ``pitch`` (rad, up positive); no roll (world z is image up)."""
    from ..geometry import invert_rigid, look_at

    p = np.asarray(position, dtype=np.float64)
    d = np.array([math.cos(heading) * math.cos(pitch), math.sin(heading) * math.cos(pitch), math.sin(pitch)])
    return invert_rigid(look_at(p, p + d).numpy())


def primitive_path(start, prim: Primitive, n: int) -> np.ndarray:
    """(n, 4, 4) camera_to_world poses of ``prim`` from ``start`` at u = 1/n .. 1 (see the module)."""
    T0 = _check_pose(start)
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    h0, pitch = heading_pitch(T0)
    p0 = T0[:3, 3]
    out = np.zeros((n, 4, 4))
    L = 0.0 if prim.kind == "turn" else prim.length
    turn = 0.0 if prim.kind == "straight" else prim.turn
    for i in range(n):
        u = (i + 1) / n
        h = h0 + turn * u
        if L == 0.0:
            p = p0
        elif abs(turn) < 1e-9:
            p = p0 + L * u * np.array([math.cos(h0), math.sin(h0), 0.0])
        else:
            r = L / turn
            p = p0 + r * np.array([math.sin(h) - math.sin(h0), math.cos(h0) - math.cos(h), 0.0])
        out[i] = camera_pose(p, h, pitch)
    return out


def fan(k: int, length: float = 1.0, max_turn: float = math.radians(90), max_turn_in_place: float = math.radians(120)
        ) -> List[Primitive]:
    """The documented fan of ``k`` primitives (module docstring)."""
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    n_arc, n_turn = (k + 1) // 2, k // 2
    prims = []
    for t in (np.linspace(-max_turn, max_turn, n_arc) if n_arc > 1 else [0.0]):
        prims.append(Primitive("straight" if abs(t) < 1e-9 else "arc", float(length), float(t)))
    pairs = n_turn // 2
    turns = [s * max_turn_in_place * j / pairs for j in range(1, pairs + 1) for s in (-1.0, 1.0)]
    if n_turn % 2:
        turns.append(math.pi)  # an odd count adds the turn-around
    prims += [Primitive("turn", 0.0, float(t)) for t in turns]
    return prims


def path_is_free(path: np.ndarray, is_free: Optional[FreeFn]) -> bool:
    """Every position of ``path`` (n, 4, 4) is free (always True without ``is_free``)."""
    return True if is_free is None else bool(np.all(is_free(np.asarray(path)[:, :3, 3])))


def fan_paths(start, k: int, n: int, length: float = 1.0, max_turn: float = math.radians(90),
              max_turn_in_place: float = math.radians(120), is_free: Optional[FreeFn] = None
              ) -> Tuple[List[np.ndarray], List[Primitive]]:
    """``k`` candidate paths of ``n`` poses from ``start``: the ``fan``, each made collision-free as
    the module says when ``is_free`` is given. Returns (paths, the primitives actually used)."""
    paths, used = [], []
    for prim in fan(k, length, max_turn, max_turn_in_place):
        p, path = prim, primitive_path(start, prim, n)
        for _ in range(2):
            if path_is_free(path, is_free) or p.kind == "turn":
                break
            p = Primitive(p.kind, p.length / 2, p.turn)
            path = primitive_path(start, p, n)
        if not path_is_free(path, is_free) and p.kind != "turn":
            p = Primitive("turn", 0.0, p.turn if abs(p.turn) > 1e-9 else math.pi)
            path = primitive_path(start, p, n)
        paths.append(path)
        used.append(p)
    return paths, used


def goto(start, goal, n: int) -> np.ndarray:
    """(n, 4, 4): ``n`` poses from ``start`` (excluded) to ``goal`` (the last pose, exactly):
    positions linear, rotations by slerp."""
    from ..geometry import interpolate_poses

    T = np.stack([_check_pose(start), _check_pose(goal, "goal")])
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    out = interpolate_poses(T, np.arange(1, n + 1) / n)
    out[-1] = T[1]
    return out


def view_angle(a, b) -> float:
    """Angle in radians between the optical axes of two camera_to_world poses."""
    za, zb = _check_pose(a, "a")[:3, 2], _check_pose(b, "b")[:3, 2]
    return float(math.acos(max(-1.0, min(1.0, float(za @ zb)))))


def scene_free_space(scene, margin: float = 0.3) -> FreeFn:
    """Free-space test of a simulator scene (``mirage_ros.sim.Scene``) for a robot whose body
    reaches up to the camera: a point is free when it lies inside the room (the inside box
    shrunk by ``margin`` horizontally; outdoor: within the ground square) and outside every other
    box that starts below it, grown by ``margin`` horizontally."""
    rooms = [(b.lo.numpy(), b.hi.numpy()) for b in scene.boxes if b.inside]
    solids = [(b.lo.numpy(), b.hi.numpy()) for b in scene.boxes if not b.inside]
    extent = float(getattr(scene, "ground_extent", 200.0)) if getattr(scene, "ground", None) is not None else None

    def is_free(points: np.ndarray) -> np.ndarray:
        P = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        ok = np.ones(len(P), bool)
        for lo, hi in rooms:
            ok &= np.all((P[:, :2] > lo[:2] + margin) & (P[:, :2] < hi[:2] - margin), axis=1)
        if extent is not None:
            ok &= np.all(np.abs(P[:, :2]) < extent - margin, axis=1)
        for lo, hi in solids:
            inside = np.all((P[:, :2] > lo[:2] - margin) & (P[:, :2] < hi[:2] + margin), axis=1) & (lo[2] < P[:, 2])
            ok &= ~inside
        return ok

    return is_free
