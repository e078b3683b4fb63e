"""Exact ray casting of :class:`~mirage_ros.sim.scenes.Scene` boxes: RGB, z-depth, labels, normals.

Rays go through pixel centres: D = R K^-1 [u+1/2, v+1/2, 1] with R the camera-to-world rotation.
Their camera z is 1, so the ray parameter of a hit *is* its z-depth (distance along the optical
axis, not the ray length). Boxes are intersected with the slab method; each box is tested only
against the pixels of its projected bounding rectangle, which keeps a frame cheap on a CPU.

Colours are a function of the world point on a face and the face's material (view independent).
With ``antialias=False`` a pixel shows the texture at its ray's hit point, so a world point has
exactly the same colour from every viewpoint. With ``antialias=True`` (the default) a pixel
shows the texture averaged over its footprint on the surface (box-filtered checker / stripes,
noise octaves faded once finer than about two pixels), as a real camera would: no moire on far
or grazing surfaces, and views from similar distances agree to a few grey levels.

On a shared machine, prefer ``torch.set_num_threads(1)``: rendering is a few hundred small
element-wise kernels, and with more threads than free cores each of them waits for a descheduled
thread (a 256 x 448 frame then takes seconds instead of tens of milliseconds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..geometry import Camera, project_pixels
from .scenes import CHECKER, NOISE_SIZE, SKY, STATIC, STRIPES_A, STRIPES_B, Box, Scene

__all__ = ["Frame", "render", "render_depth_only", "GROUND_ID", "SKY_ID", "MOVING_ID"]

# object_id values that are not indices into scene.boxes
GROUND_ID, SKY_ID, MOVING_ID = -1, -2, -3

_EPS = 1e-6  # hits closer than this (metres along z) are ignored
_NOISE_PERIODS = (1.9, 0.47, 0.12, 0.035)  # value-noise octaves (metres): large patches, mid, fine, grain
_LIGHT = (0.35, 0.55, 0.76)  # a fixed light direction (world), for per-face shading
_SKY_ZENITH, _SKY_HORIZON = (0.28, 0.48, 0.86), (0.78, 0.86, 0.95)


@dataclass
class Frame:
    """A rendered view. Layouts: rgb (H, W, 3) uint8; depth (H, W) float32 z-depth in metres
    (+inf for sky); labels (H, W) uint8 (STATIC / SKY / DYNAMIC); object_id (H, W) int16: index
    into ``scene.boxes``, GROUND_ID (-1), SKY_ID (-2) or MOVING_ID (-3); normals (H, W, 3) float32
    world-frame unit normals facing the camera (zeros for sky)."""

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    object_id: np.ndarray
    normals: Optional[np.ndarray] = None


# -- rays and intersection -------------------------------------------------------------------------

def _rays(camera: Camera) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """World ray directions as three (H, W) float32 tensors (camera z = 1), and the origin (3,) float64."""
    H, W = camera.height, camera.width
    K = camera.K
    fx, fy, cx, cy, sk = (K[0, 0].item(), K[1, 1].item(), K[0, 2].item(), K[1, 2].item(), K[0, 1].item())
    yn = ((torch.arange(H, dtype=torch.float64) + 0.5 - cy) / fy)[:, None]  # (H, 1)
    xn = (torch.arange(W, dtype=torch.float64)[None, :] + 0.5 - cx - sk * yn) / fx  # (1 or H, W)
    C2W = camera.camera_to_world
    R = C2W[:3, :3]
    D = [(R[k, 0] * xn + R[k, 1] * yn + R[k, 2]).expand(H, W).float().contiguous() for k in range(3)]
    return D, C2W[:3, 3].clone()


def _safe_inverse(d: torch.Tensor) -> torch.Tensor:
    """1 / d with |d| >= 1e-12 keeping the sign (no 0 * inf NaNs in the slab test)."""
    tiny = torch.where(d < 0, torch.full_like(d, -1e-12), torch.full_like(d, 1e-12))
    return 1.0 / torch.where(d.abs() < 1e-12, tiny, d)


def _pixel_rect(box: Box, camera: Camera, E: torch.Tensor) -> Optional[Tuple[int, int, int, int]]:
    """Pixel rows/cols (v0, v1, u0, u1) that may see ``box``; None when it is wholly behind."""
    H, W = camera.height, camera.width
    lo, hi = box.lo, box.hi
    corners = torch.stack(torch.meshgrid(*[torch.stack([lo[k], hi[k]]) for k in range(3)], indexing="ij"),
                          -1).reshape(8, 3)
    u, v, z = project_pixels(corners, camera.K, E)
    if (z <= _EPS).all():
        return None
    if (z <= 1e-3).any():  # straddles the image plane: its projection is unbounded
        return 0, H, 0, W
    # pixel j (centre j + 1/2) lies in [min, max] when min - 1/2 <= j <= max - 1/2; one pixel margin
    u0, u1 = int(np.floor(u.min().item() - 0.5)) - 1, int(np.ceil(u.max().item() - 0.5)) + 2
    v0, v1 = int(np.floor(v.min().item() - 0.5)) - 1, int(np.ceil(v.max().item() - 0.5)) + 2
    u0, u1, v0, v1 = max(u0, 0), min(u1, W), max(v0, 0), min(v1, H)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


def _slab(inv: List[torch.Tensor], O: torch.Tensor, box: Box) -> Tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit ray parameters of ``box`` for rays with inverse directions ``inv`` (3 x (..))."""
    tn = tf = None
    for k in range(3):
        a = float(box.lo[k] - O[k])
        b = float(box.hi[k] - O[k])
        t1, t2 = inv[k] * a, inv[k] * b
        n, f = torch.minimum(t1, t2), torch.maximum(t1, t2)
        tn = n if tn is None else torch.maximum(tn, n)
        tf = f if tf is None else torch.minimum(tf, f)
    return tn, tf


def _cast(scene: Scene, camera: Camera, t: float):
    """Nearest hit of every pixel: z-depth (H, W) float32 (inf = miss), object slot (H, W) int64,
    ray directions, the origin and the objects. Slots index ``objects`` = boxes + [moving];
    slot len(objects) is the ground; -1 is sky."""
    H, W = camera.height, camera.width
    D, O = _rays(camera)
    inv = [_safe_inverse(d) for d in D]
    E = camera.world_to_camera
    best = torch.full((H, W), float("inf"))
    slot = torch.full((H, W), -1, dtype=torch.int64)
    mov = scene.moving_at(t)
    objects = list(scene.boxes) + ([mov] if mov is not None else [])
    for i, box in enumerate(objects):
        if box.inside:
            tn, tf = _slab(inv, O, box)
            th = torch.where(tf > _EPS, tf, torch.full_like(tf, float("inf")))
            closer = th < best
            best = torch.where(closer, th, best)
            slot.masked_fill_(closer, i)
            continue
        rect = _pixel_rect(box, camera, E)
        if rect is None:
            continue
        v0, v1, u0, u1 = rect
        tn, tf = _slab([x[v0:v1, u0:u1] for x in inv], O, box)
        b = best[v0:v1, u0:u1]
        closer = (tn <= tf) & (tn > _EPS) & (tn < b)
        b.copy_(torch.where(closer, tn, b))
        slot[v0:v1, u0:u1].masked_fill_(closer, i)
    if scene.ground is not None and O[2].item() > 0:
        dz = D[2]
        tg = float(-O[2]) / torch.where(dz < -1e-12, dz, torch.full_like(dz, -1e-12))
        e = scene.ground_extent
        inside = ((O[0].item() + tg * D[0]).abs() <= e) & ((O[1].item() + tg * D[1]).abs() <= e) & (dz < -1e-12)
        closer = inside & (tg < best)
        best = torch.where(closer, tg, best)
        slot.masked_fill_(closer, len(objects))
    return best, slot, D, O, objects


# -- texture ----------------------------------------------------------------------------------------

def _material_table(scene: Scene, objects: List[Box]):
    """Per (slot, face) rows: colour A (.., 3), colour B, scale, pattern, contrast, light, label,
    and normal sign. Face f = 2 * axis + (hit on the hi plane)."""
    Lx, Ly, Lz = _LIGHT
    n = (Lx * Lx + Ly * Ly + Lz * Lz) ** 0.5
    light_dir = (Lx / n, Ly / n, Lz / n)
    rows = []
    for obj in objects:
        for f in range(6):
            axis, hi_plane = divmod(f, 2)
            outward = 1.0 if hi_plane else -1.0
            normal = -outward if obj.inside else outward  # the side rays come from
            m = obj.materials[f]
            rows.append((m, 0.72 + 0.28 * max(0.0, normal * light_dir[axis]), obj.label))
    g = scene.ground
    for _ in range(6):  # the ground: only its top face (z = 0 seen from above) is ever hit
        rows.append((g if g is not None else objects[0].materials[0], 0.72 + 0.28 * light_dir[2], STATIC))
    colA = torch.stack([r[0].color.float() for r in rows])
    colB = torch.stack([r[0].color2.float() for r in rows])
    scale = torch.tensor([r[0].scale for r in rows], dtype=torch.float32)
    pattern = torch.tensor([r[0].pattern for r in rows], dtype=torch.int64)
    contrast = torch.tensor([r[0].contrast for r in rows], dtype=torch.float32)
    light = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    label = torch.tensor([r[2] for r in rows], dtype=torch.uint8)
    return colA, colB, scale, pattern, contrast, light, label


def _value_noise(noise: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Smooth 2-D value noise in [0, 1] at lattice coordinates (x, y) (same shapes)."""
    fx, fy = torch.floor(x), torch.floor(y)
    ix, iy = fx.long(), fy.long()
    sx, sy = x - fx, y - fy
    sx = sx * sx * (3 - 2 * sx)
    sy = sy * sy * (3 - 2 * sy)
    m = NOISE_SIZE - 1
    r0, r1 = (ix & m) * NOISE_SIZE, ((ix + 1) & m) * NOISE_SIZE
    c0, c1 = iy & m, (iy + 1) & m
    flat = noise.reshape(-1)
    top = torch.lerp(flat[r0 + c0], flat[r0 + c1], sy)
    bot = torch.lerp(flat[r1 + c0], flat[r1 + c1], sy)
    return torch.lerp(top, bot, sx)


def _square_wave(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A +-1 square wave of period 2 (+1 on [0, 1)) box-filtered over width ``w`` (same units)."""
    def tri(x):  # 1/2 - (integral of the square wave from 0): a triangle wave
        h = x * 0.5
        return (h - torch.floor(h)).sub_(0.5).abs_()

    return 2 * (tri(p - 0.5 * w) - tri(p + 0.5 * w)) / w


def _shade(scene: Scene, camera: Camera, best, slot, D, O, objects, antialias: bool):
    """Colours (N, 3) float32, face normals (N, 3), labels (N,) of the N hit pixels."""
    hit = slot >= 0
    t = best[hit]
    s = slot[hit]
    d = [x[hit] for x in D]
    nobj = len(objects)
    # which face was hit: the entry plane (outside boxes) or the exit plane (inside boxes)
    lo = torch.stack([b.lo for b in objects] + [torch.zeros(3, dtype=torch.float64)]).float()
    hi = torch.stack([b.hi for b in objects] + [torch.zeros(3, dtype=torch.float64)]).float()
    inside = torch.tensor([b.inside for b in objects] + [False])
    ins = inside[s]
    Of = O.float()
    keys = []
    for k in range(3):
        pos = d[k] > 0
        plane = torch.where(pos ^ ins, lo[s, k], hi[s, k])
        tk = (plane - Of[k]) * _safe_inverse(d[k])
        keys.append(torch.where(ins, -tk, tk))
    axis = torch.stack(keys, 1).argmax(1)
    axis = torch.where(s == nobj, torch.full_like(axis, 2), axis)  # the ground: z = 0, from above
    dax = torch.stack(d, 1).gather(1, axis[:, None])[:, 0]
    hi_plane = (dax < 0) ^ ins
    row = s * 6 + 2 * axis + hi_plane.long()
    colA, colB, scale, pattern, contrast, light, label = _material_table(scene, objects)

    # in-plane coordinates (a, b): x-faces (y, z), y-faces (x, z), z-faces (x, y)
    P = [Of[k] + t * d[k] for k in range(3)]
    a = torch.where(axis == 0, P[1], P[0])
    b = torch.where(axis == 2, P[1], P[2])
    # footprint of a pixel on the surface (metres): z-depth / (f |cos|), since camera z of D is 1
    f = (camera.K[0, 0] * camera.K[1, 1]).sqrt().item()
    w = t / (f * dax.abs().clamp(min=0.03)) if antialias else torch.zeros_like(t)

    noise = scene.noise
    offs = (row.float() * 17.31) % NOISE_SIZE  # a different noise patch per face
    octaves = []
    for j, L in enumerate(_NOISE_PERIODS):
        n = _value_noise(noise, a / L + offs + 31.7 * j, b / L + offs * 0.61 + 57.3 * j)
        if antialias:
            n = 0.5 + (n - 0.5) * (2 - 4 * w / L).clamp(0, 1)
        octaves.append(n)
    sc = scale[row]
    ws = (w / sc).clamp(min=0.02)
    wa = _square_wave(a / sc, ws)
    wb = _square_wave(b / sc, ws)
    pat = pattern[row]
    pv = torch.where(pat == CHECKER, 0.5 + 0.5 * wa * wb,
                     torch.where(pat == STRIPES_A, 0.5 + 0.5 * wa,
                                 torch.where(pat == STRIPES_B, 0.5 + 0.5 * wb, torch.full_like(wa, 0.5))))
    base = torch.lerp(colA[row], colB[row], octaves[0][:, None])
    grain = 1 + 0.3 * (octaves[1] - 0.5) + 0.22 * (octaves[2] - 0.5) + 0.16 * (octaves[3] - 0.5)
    gain = (1 + contrast[row] * (pv - 0.5)) * grain * light[row]
    rgb = (base * gain[:, None]).clamp_(0, 1)
    normal = torch.zeros(t.shape[0], 3)
    normal.scatter_(1, axis[:, None], -torch.sign(dax)[:, None])
    return hit, rgb, normal, label[row]


def _sky(scene: Scene, D: List[torch.Tensor], miss: torch.Tensor) -> torch.Tensor:
    """Sky colours (M, 3) of the missed rays: horizon-to-zenith gradient and soft clouds; a
    function of the direction only (the sky is at infinity)."""
    dx, dy, dz = (x[miss] for x in D)
    elev = dz / torch.sqrt(dx * dx + dy * dy + dz * dz)
    g = elev.clamp(min=0).pow(0.6)[:, None]
    col = torch.lerp(torch.tensor(_SKY_HORIZON), torch.tensor(_SKY_ZENITH), g)
    h = 1.0 / (elev.clamp(min=0) + 0.25)  # clouds on a dome: denser towards the horizon
    norm = torch.sqrt(dx * dx + dy * dy).clamp(min=1e-9)
    cx, cy = dx / norm * (1 - elev.clamp(min=0)) * h * 3.0, dy / norm * (1 - elev.clamp(min=0)) * h * 3.0
    c = (_value_noise(scene.noise, cx + 11.0, cy + 23.0) * 0.65
         + _value_noise(scene.noise, 2.7 * cx + 5.0, 2.7 * cy) * 0.35)
    cover = ((c - 0.55) * 3.0).clamp(0, 1)[:, None] * (elev > 0)[:, None]
    return torch.lerp(col, torch.tensor([0.96, 0.96, 0.97]), cover * 0.8)


# -- public API ---------------------------------------------------------------------------------------

def render(scene: Scene, camera: Camera, t: float = 0.0, antialias: bool = True) -> Frame:
    """Ray-cast ``scene`` from ``camera`` at time ``t`` (seconds): exact z-depth, RGB, labels,
    object ids and normals (see :class:`Frame`)."""
    H, W = camera.height, camera.width
    best, slot, D, O, objects = _cast(scene, camera, t)
    hit, rgb_hit, normal_hit, label_hit = _shade(scene, camera, best, slot, D, O, objects, antialias)
    rgb = torch.zeros(H, W, 3)
    normals = torch.zeros(H, W, 3)
    labels = torch.full((H, W), SKY, dtype=torch.uint8)
    rgb[hit] = rgb_hit
    normals[hit] = normal_hit
    labels[hit] = label_hit
    miss = ~hit
    if miss.any():
        rgb[miss] = _sky(scene, D, miss)
    nobj = len(scene.boxes)
    oid = slot.clone()
    oid[slot == -1] = SKY_ID
    oid[slot == len(objects)] = GROUND_ID
    if len(objects) > nobj:
        oid[slot == nobj] = MOVING_ID
    return Frame(
        rgb=(rgb * 255 + 0.5).clamp_(0, 255).to(torch.uint8).numpy(),
        depth=best.numpy(),
        labels=labels.numpy(),
        object_id=oid.to(torch.int16).numpy(),
        normals=normals.numpy(),
    )


def render_depth_only(scene: Scene, camera: Camera, t: float = 0.0) -> np.ndarray:
    """Only the (H, W) float32 z-depth (+inf for sky): skips all shading."""
    return _cast(scene, camera, t)[0].numpy()
