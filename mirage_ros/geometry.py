"""Camera geometry of Mirage (paper, "Geometric Foundations"). Stateless.

Conventions (the paper's, followed exactly):
- ``world_to_camera`` E in SE(3) maps a world point into the camera frame; E^-1 maps back.
- Cameras are OpenCV-style pinholes: x right, y down, z forward (points in front have z > 0).
- ``K`` is in pixels of the full-resolution image (H, W). The VAE stride ``s`` gives the latent
  grid h x w = H/s x W/s, and the latent intrinsics K_l scale K's first row by w/W and its
  second row by h/H.
- Latent cell (u, v) (u = column, v = row) is the homogeneous pixel centre [u+1/2, v+1/2, 1].
- Projection pi_l applies K_l, divides by z and *floors* to integer cells; only z > 0 counts.

The official code (microsoft/LatentSpatialMemory) uses integer cell coordinates without the
+1/2 centre and rounds instead of flooring; we follow the paper, which makes back-projection
followed by projection return every cell to itself.

Layouts: depth (h, w); points (..., 3); K (3, 3); E (4, 4). All maths in float32 or float64
torch tensors on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

__all__ = [
    "Camera",
    "GeometryError",
    "MAX_TRANSLATION",
    "FOV_RANGE_DEG",
    "focal_range",
    "intrinsics_problem",
    "latent_intrinsics",
    "backproject",
    "project",
    "project_pixels",
    "check_rigid",
    "check_intrinsics",
    "invert_rigid",
    "compose_rigid",
    "look_at",
    "QUAT_TOL",
    "quaternions_to_matrices",
    "matrices_to_quaternions",
    "poses_to_matrices",
    "slerp",
    "interpolate_poses",
    "frustum_corners",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "pose_to_matrix",
]

RIGID_TOL = 1e-4
# The ranges of a sensible camera, defined here only (the ROS conversions, the tf buffer and the
# memory check against them). Finite but absurd values beyond them (a pose 1e300 m away,
# fx = 1e-38) would lift depth to inf/NaN world points and poison the memory.
# Distance from the origin (Euclidean) of any rigid transform's translation: a camera or pose
# position, a tf edge. Memory points are float32, which at 1e5 m still resolve about 1 cm.
MAX_TRANSLATION = 1e5  # metres
FOV_RANGE_DEG = (0.01, 179.0)  # a pinhole's field of view along each image axis
PRINCIPAL_RANGE = 1e3  # |cx - W/2| <= 1e3 (fx + W) (an optical axis up to 89.94 deg off a crop), same for cy


class GeometryError(ValueError):
    """Raised for invalid geometric input; the message names the offending argument."""


def _as_tensor(x, name: str, shape: Tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
            raise GeometryError(f"{name}: cannot convert {type(x).__name__} to a tensor ({exc})") from None
    if tuple(x.shape) != shape:
        raise GeometryError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise GeometryError(f"{name}: expected a real-valued tensor, got dtype {x.dtype}")
    return x.to(dtype)


def check_rigid(E, name: str = "world_to_camera", tol: float = RIGID_TOL) -> torch.Tensor:
    """Validate a 4x4 rigid transform (finite, orthonormal R, det 1, last row 0 0 0 1)."""
    E = _as_tensor(E, name, (4, 4))
    if not torch.isfinite(E).all():
        raise GeometryError(f"{name}: contains NaN or inf")
    R = E[:3, :3]
    err = (R.T @ R - torch.eye(3, dtype=E.dtype)).abs().max().item()
    if err > tol:
        raise GeometryError(f"{name}: rotation is not orthonormal (max |R^T R - I| = {err:.3g} > {tol})")
    det = torch.linalg.det(R).item()
    if abs(det - 1.0) > tol:
        raise GeometryError(f"{name}: rotation determinant is {det:.6f}, expected 1 (a reflection or a scale)")
    if (E[3] - torch.tensor([0, 0, 0, 1], dtype=E.dtype)).abs().max().item() > tol:
        raise GeometryError(f"{name}: last row must be [0, 0, 0, 1], got {E[3].tolist()}")
    _check_translation(E[:3, 3], f"{name}: translation")
    return E


def _check_translation(t: torch.Tensor, what: str) -> None:
    n = float(torch.linalg.vector_norm(t))
    if not n <= MAX_TRANSLATION:
        raise GeometryError(f"{what}: {[float(x) for x in t]} is {n:.6g} m from the origin, beyond MAX_TRANSLATION = "
                            f"{MAX_TRANSLATION:.0e} m (memory points are float32: use a local world frame)")


def focal_range(size: int) -> Tuple[float, float]:
    """(lowest, highest) focal length in pixels along an image axis of ``size`` pixels: the
    fields of view ``FOV_RANGE_DEG``."""
    widest, narrowest = FOV_RANGE_DEG[1], FOV_RANGE_DEG[0]
    return (size / (2 * float(np.tan(np.radians(widest) / 2))), size / (2 * float(np.tan(np.radians(narrowest) / 2))))


def intrinsics_problem(fx: float, fy: float, s: float, cx: float, cy: float, height: int, width: int):
    """The first value of a pinhole matrix outside the ranges of a sensible camera, as (field,
    what is wrong) with field one of fx, fy, cx, cy, skew; None when all are inside. Focal lengths
    by ``focal_range``, |c - size/2| <= ``PRINCIPAL_RANGE`` (f + size), |s| <= max(fx, fy)."""
    for field, f, size in (("fx", fx, width), ("fy", fy, height)):
        lo, hi = focal_range(size)
        if not lo <= f <= hi:
            return field, (f"{f:.6g} px is outside {lo:.3g} .. {hi:.3g} px, a field of view of {FOV_RANGE_DEG[1]:g} .. "
                           f"{FOV_RANGE_DEG[0]:g} degrees over {size} px")
    for field, c, f, size in (("cx", cx, fx, width), ("cy", cy, fy, height)):
        if not abs(c - size / 2) <= PRINCIPAL_RANGE * (f + size):
            return field, f"{c:.6g} px is more than {PRINCIPAL_RANGE:g} x (f + size) from the image centre {size / 2:g}"
    if not abs(s) <= max(fx, fy):
        return "skew", f"{s:.6g} exceeds max(fx, fy) = {max(fx, fy):.6g} (a shear over 45 deg)"
    return None


def check_intrinsics(K, name: str = "K", height: int = None, width: int = None) -> torch.Tensor:
    """Validate a pinhole matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]]: finite, positive focal lengths.

    With the image size, also the ranges of a sensible camera (``intrinsics_problem``: fields of
    view within ``FOV_RANGE_DEG``, the principal point and skew bounded). The message names the field.
    """
    K = _as_tensor(K, name, (3, 3))
    if not torch.isfinite(K).all():
        raise GeometryError(f"{name}: contains NaN or inf")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise GeometryError(f"{name}: focal lengths must be positive, got fx={K[0, 0].item()}, fy={K[1, 1].item()}")
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise GeometryError(f"{name}: expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")
    if height is not None and width is not None:
        bad = intrinsics_problem(*(float(K[i, j]) for i, j in ((0, 0), (1, 1), (0, 1), (0, 2), (1, 2))), height, width)
        if bad is not None:
            raise GeometryError(f"{name}: {bad[0]}: {bad[1]} ({height}x{width} image)")
    return K


def invert_rigid(E):
    """Inverse of rigid (..., 4, 4) transforms (R^T, -R^T t), exact up to rounding.

    Torch in: same dtype and device out. NumPy in: float64 NumPy out.
    """
    if isinstance(E, np.ndarray):
        return invert_rigid(torch.from_numpy(np.asarray(E, dtype=np.float64))).numpy()
    R, t = E[..., :3, :3], E[..., :3, 3:]
    out = torch.zeros_like(E)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1
    return out


def compose_rigid(A, B):
    """A B for rigid (..., 4, 4) transforms (frame chaining: parent_from_child = A, child_from_x = B).
    NumPy in: NumPy out."""
    if isinstance(A, np.ndarray) or isinstance(B, np.ndarray):
        return np.asarray(A, dtype=np.float64) @ np.asarray(B, dtype=np.float64)
    return A @ B


def latent_intrinsics(K: torch.Tensor, height: int, width: int, h: int, w: int) -> torch.Tensor:
    """K_l: K with row x scaled by w/W and row y by h/H (paper, latent-resolution intrinsics)."""
    S = torch.diag(torch.tensor([w / width, h / height, 1.0], dtype=K.dtype, device=K.device))
    return S @ K


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera: ``K`` (3,3) in pixels, ``world_to_camera`` E (4,4), image ``height`` x ``width``.

    Construction validates everything (rigid E within ``MAX_TRANSLATION`` of the origin, focal
    lengths, principal point and skew within the ranges of ``check_intrinsics``, positive size)
    and stores float64 CPU tensors; methods move results to the device and dtype asked for.
    """

    K: torch.Tensor
    world_to_camera: torch.Tensor
    height: int
    width: int

    def __post_init__(self):
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise GeometryError(f"{name}: expected a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        object.__setattr__(self, "K", check_intrinsics(self.K, "K", self.height, self.width))
        object.__setattr__(self, "world_to_camera", check_rigid(self.world_to_camera, "world_to_camera"))

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_fov(cls, height: int, width: int, fov_x_deg: float, world_to_camera=None) -> "Camera":
        """A centred pinhole with square pixels and horizontal field of view ``fov_x_deg``."""
        f = 0.5 * width / np.tan(np.deg2rad(fov_x_deg) / 2)
        K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64)
        E = torch.eye(4, dtype=torch.float64) if world_to_camera is None else world_to_camera
        return cls(K, E, height, width)

    def with_pose(self, world_to_camera) -> "Camera":
        return Camera(self.K, world_to_camera, self.height, self.width)

    def resized(self, height: int, width: int) -> "Camera":
        """The same camera for the image resized to ``height`` x ``width``: K's x row scales by
        width / W and its y row by height / H (as ``latent_intrinsics`` does for the latent grid)."""
        return Camera(latent_intrinsics(self.K, self.height, self.width, height, width), self.world_to_camera, height,
                      width)

    # -- derived quantities -------------------------------------------------------------------
    @property
    def camera_to_world(self) -> torch.Tensor:
        return invert_rigid(self.world_to_camera)

    @property
    def center(self) -> torch.Tensor:
        """Camera centre in world coordinates (3,)."""
        return self.camera_to_world[:3, 3]

    def latent_size(self, stride: int) -> Tuple[int, int]:
        """(h, w) = (H/s, W/s); H and W must be divisible by the stride."""
        if stride <= 0:
            raise GeometryError(f"stride: expected a positive integer, got {stride}")
        if self.height % stride or self.width % stride:
            raise GeometryError(
                f"height/width: image {self.height}x{self.width} is not divisible by the VAE stride {stride}"
            )
        return self.height // stride, self.width // stride

    def latent_K(self, stride: int) -> torch.Tensor:
        h, w = self.latent_size(stride)
        return latent_intrinsics(self.K, self.height, self.width, h, w)

    def __repr__(self) -> str:
        c = self.center.tolist()
        return (f"Camera({self.height}x{self.width}, f=({self.K[0, 0]:.1f},{self.K[1, 1]:.1f}), "
                f"centre=({c[0]:.2f},{c[1]:.2f},{c[2]:.2f}))")


def backproject(depth: torch.Tensor, K_l: torch.Tensor, world_to_camera: torch.Tensor) -> torch.Tensor:
    """Eq. 4, pi^-1: lift every cell of a (h, w) depth map to world points (h, w, 3).

    Cell (u, v) is the pixel centre [u+1/2, v+1/2, 1]; p = E^-1 [d K_l^-1 (u+1/2, v+1/2, 1); 1].
    ``depth`` is the z-depth (distance along the optical axis) in metres. Non-finite or
    non-positive depths give meaningless points: callers select admissible cells (Lambda_t).
    """
    h, w = depth.shape
    dev, dt = depth.device, depth.dtype
    K_l = K_l.to(dev, torch.float64)
    fx, fy, cx, cy, sk = K_l[0, 0], K_l[1, 1], K_l[0, 2], K_l[1, 2], K_l[0, 1]
    v, u = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float64) + 0.5,
        torch.arange(w, device=dev, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    yn = (v - cy) / fy
    xn = (u - cx - sk * yn) / fx
    d = depth.to(torch.float64)
    cam = torch.stack([xn * d, yn * d, d], dim=-1)  # (h, w, 3)
    C2W = invert_rigid(world_to_camera.to(dev, torch.float64))
    world = cam @ C2W[:3, :3].T + C2W[:3, 3]
    return world.to(dt if dt.is_floating_point else torch.float32)


def project_pixels(points: torch.Tensor, K: torch.Tensor, world_to_camera: torch.Tensor):
    """World points (N, 3) -> continuous image coordinates (u, v) and camera z, each (N,).

    Applies E, then K, and divides by z; pixel (or cell) i spans [i, i + 1), its centre at
    i + 1/2. Points with z <= 0 give meaningless (u, v): callers check z.
    """
    E = world_to_camera.to(points.device, points.dtype)
    K = K.to(points.device, points.dtype)
    cam = torch.addmm(E[:3, 3], points, E[:3, :3].T)
    z = cam[:, 2]
    pix = cam @ K.T
    return pix[:, 0] / z, pix[:, 1] / z, z


def project(points: torch.Tensor, K_l: torch.Tensor, world_to_camera: torch.Tensor, h: int, w: int):
    """pi_l: world points (N, 3) -> integer cells (u, v), camera depth z, and validity.

    Applies E, then K_l, divides by z and floors. ``valid`` is z > 0 and the cell inside the
    h x w grid. Returns (u (N,) long, v (N,) long, z (N,) float, valid (N,) bool).
    """
    uc, vc, z = project_pixels(points, K_l, world_to_camera)
    with torch.no_grad():
        uf = torch.floor(uc)
        vf = torch.floor(vc)
    valid = (z > 0) & (uf >= 0) & (uf < w) & (vf >= 0) & (vf < h)
    u = torch.where(valid, uf, torch.zeros_like(uf)).long()
    v = torch.where(valid, vf, torch.zeros_like(vf)).long()
    return u, v, z, valid


# -- poses -------------------------------------------------------------------------------------

def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """world_to_camera for an OpenCV camera (x right, y down, z forward) at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear *up* in the image. The default is the
    ROS world convention (REP 103: z up), which the synthetic scenes use.
    """
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    up = torch.as_tensor(up, dtype=torch.float64)
    z = target - eye
    if z.norm() < 1e-12:
        raise GeometryError("target: must differ from eye")
    z = z / z.norm()
    x = torch.linalg.cross(-up, z)
    if x.norm() < 1e-9:
        raise GeometryError("up: parallel to the viewing direction")
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    E = torch.eye(4, dtype=torch.float64)
    E[:3, :3] = R
    E[:3, 3] = -R @ eye
    return E


QUAT_TOL = 1e-3  # |norm - 1| accepted for a quaternion (it is then normalised)


def _float64(x, name: str):
    """(float64 tensor, back): ``back`` turns a result into NumPy if ``x`` was a NumPy array."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x, dtype=np.float64)), lambda t: t.numpy()
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64), lambda t: t
    try:
        return torch.as_tensor(x, dtype=torch.float64), lambda t: t
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
        raise GeometryError(f"{name}: cannot convert {type(x).__name__} to numbers ({exc})") from None


def _at(name: str, flat_index: int, batch_shape) -> str:
    """``name`` for element ``flat_index`` of a batch: fills a ``{i}`` placeholder, else appends [i]."""
    if "{i}" in name:
        return name.replace("{i}", str(flat_index))
    if len(batch_shape) == 0:
        return name
    idx = np.unravel_index(flat_index, tuple(batch_shape))
    return f"{name}[{', '.join(str(int(k)) for k in idx)}]"


def quaternions_to_matrices(q, name: str = "orientation", tol: float = QUAT_TOL):
    """(..., 4) unit quaternions (x, y, z, w) -> (..., 3, 3) rotations (float64; NumPy in, NumPy out).

    Rejects NaN/inf and norms off 1 by more than ``tol`` (then normalises), naming the first bad
    element: ``name`` may hold an ``{i}`` placeholder for its flat index, else ``[i]`` is appended.
    """
    t, back = _float64(q, name)
    if t.shape[-1:] != (4,):
        raise GeometryError(f"{name}: expected (..., 4) quaternions (x, y, z, w), got shape {tuple(t.shape)}")
    flat = t.reshape(-1, 4)
    fin = torch.isfinite(flat).all(1)
    if not bool(fin.all()):
        i = int((~fin).nonzero()[0])
        raise GeometryError(f"{_at(name, i, t.shape[:-1])}: quaternion contains NaN or inf ({flat[i].tolist()})")
    n = flat.norm(dim=1)
    bad = (n - 1.0).abs() > tol
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise GeometryError(f"{_at(name, i, t.shape[:-1])}: quaternion norm is {float(n[i]):.6g}, expected 1 (within "
                            f"{tol})")
    x, y, z, w = (flat / n[:, None]).unbind(1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=1)
    return back(R.reshape(*t.shape[:-1], 3, 3))


def matrices_to_quaternions(R):
    """(..., 3, 3) rotations -> (..., 4) unit quaternions (x, y, z, w) with w >= 0 (Shepperd's
    method, vectorised: each element uses the branch with the largest pivot). NumPy in, NumPy out."""
    t, back = _float64(R, "R")
    if t.shape[-2:] != (3, 3):
        raise GeometryError(f"R: expected (..., 3, 3) rotations, got shape {tuple(t.shape)}")
    m = t.reshape(-1, 3, 3)
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    d21, d02, d10 = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]
    s01, s02, s12 = m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1]
    tr = m00 + m11 + m22
    s0 = 2.0 * torch.sqrt((tr + 1.0).clamp(min=1e-300))
    s1 = 2.0 * torch.sqrt((1.0 + m00 - m11 - m22).clamp(min=1e-300))
    s2 = 2.0 * torch.sqrt((1.0 + m11 - m00 - m22).clamp(min=1e-300))
    s3 = 2.0 * torch.sqrt((1.0 + m22 - m00 - m11).clamp(min=1e-300))
    cand = torch.stack([
        torch.stack([d21 / s0, d02 / s0, d10 / s0, 0.25 * s0], 1),
        torch.stack([0.25 * s1, s01 / s1, s02 / s1, d21 / s1], 1),
        torch.stack([s01 / s2, 0.25 * s2, s12 / s2, d02 / s2], 1),
        torch.stack([s02 / s3, s12 / s3, 0.25 * s3, d10 / s3], 1),
    ])  # (4 branches, N, 4)
    c0 = tr > 0
    c1 = ~c0 & (m00 > m11) & (m00 > m22)
    c2 = ~c0 & ~c1 & (m11 > m22)
    branch = torch.where(c0, 0, torch.where(c1, 1, torch.where(c2, 2, 3)))
    q = cand[branch, torch.arange(m.shape[0])]
    q = torch.where(q[:, 3:] < 0, -q, q)
    q = q / q.norm(dim=1, keepdim=True)
    return back(q.reshape(*t.shape[:-2], 4))


def poses_to_matrices(position, orientation, name: str = "pose"):
    """Poses (the frame's position (..., 3) and orientation (..., 4) (x, y, z, w) in the parent) ->
    (..., 4, 4) parent_from_frame. Bounds the position by ``MAX_TRANSLATION``, then validates
    the orientation like ``quaternions_to_matrices``; errors name ``{name}.position`` / ``{name}.orientation``
    (``name`` may hold an ``{i}`` placeholder). NumPy in, NumPy out."""
    p, back = _float64(position, f"{name}.position")
    if p.shape[-1:] != (3,):
        raise GeometryError(f"{name}.position: expected shape (..., 3), got {tuple(p.shape)}")
    batch = p.shape[:-1]
    nm = name if ("{i}" in name or not batch) else name + "[{i}]"
    flat = p.reshape(-1, 3)
    fin = torch.isfinite(flat).all(1)
    if not bool(fin.all()):
        i = int((~fin).nonzero()[0])
        raise GeometryError(f"{_at(nm, i, batch)}.position: contains NaN or inf ({flat[i].tolist()})")
    dist = torch.linalg.vector_norm(flat, dim=1)
    far = ~(dist <= MAX_TRANSLATION)
    if bool(far.any()):
        i = int(far.nonzero()[0])
        _check_translation(flat[i], f"{_at(nm, i, batch)}.position")
    R = quaternions_to_matrices(_float64(orientation, f"{name}.orientation")[0], nm + ".orientation")
    if tuple(R.shape[:-2]) != tuple(batch):
        raise GeometryError(f"{name}.orientation: {tuple(R.shape[:-2])} quaternions for {tuple(batch)} positions")
    T = torch.zeros(*batch, 4, 4, dtype=torch.float64)
    T[..., :3, :3] = R
    T[..., :3, 3] = p
    T[..., 3, 3] = 1
    return back(T)


def slerp(q0, q1, a):
    """Spherical linear interpolation of unit quaternions (..., 4) (x, y, z, w) at fractions ``a``
    (broadcast against the batch), along the shorter arc (q and -q are one rotation). NumPy in
    (q0), NumPy out."""
    t0, back = _float64(q0, "q0")
    t1, _ = _float64(q1, "q1")
    a, _ = _float64(a, "a")
    dot = (t0 * t1).sum(-1)
    t1 = torch.where(dot[..., None] < 0, -t1, t1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.arccos(dot)
    s = torch.sin(theta)
    small = s < 1e-6  # (nearly) the same rotation: linear interpolation is exact to 1e-12
    safe = torch.where(small, torch.ones_like(s), s)
    w0 = torch.where(small, 1 - a, torch.sin((1 - a) * theta) / safe)
    w1 = torch.where(small, a, torch.sin(a * theta) / safe)
    q = w0[..., None] * t0 + w1[..., None] * t1
    return back(q / q.norm(dim=-1, keepdim=True))


def interpolate_poses(T, s):
    """Poses (N, 4, 4) sampled at fractional indices ``s`` (n,) in [0, N-1] (clipped): positions
    linear between the two neighbours, rotations by ``slerp``. NumPy in (T), NumPy out."""
    t, back = _float64(T, "T")
    s, _ = _float64(s, "s")
    m = t.shape[0]
    if m == 1:
        return back(t.expand(s.shape[0], 4, 4).clone())
    s = s.clamp(0, m - 1)
    i0 = s.floor().long().clamp(0, m - 2)
    a = s - i0
    q = matrices_to_quaternions(t[:, :3, :3])
    out = torch.zeros(s.shape[0], 4, 4, dtype=torch.float64)
    out[:, :3, :3] = quaternions_to_matrices(slerp(q[i0], q[i0 + 1], a))
    out[:, :3, 3] = (1 - a)[:, None] * t[i0, :3, 3] + a[:, None] * t[i0 + 1, :3, 3]
    out[:, 3, 3] = 1
    return back(out)


def frustum_corners(K, height: int, width: int, depth: float = 1.0):
    """Camera-frame points (4, 3) at z = ``depth`` through the image corners (0, 0), (W, 0), (W, H),
    (0, H): the inverse of the pinhole K (skew included). NumPy in, NumPy out."""
    k, back = _float64(K, "K")
    fx, fy, cx, cy, sk = k[0, 0], k[1, 1], k[0, 2], k[1, 2], k[0, 1]
    u = torch.tensor([0.0, width, width, 0.0], dtype=torch.float64)
    v = torch.tensor([0.0, 0.0, height, height], dtype=torch.float64)
    yn = (v - cy) / fy
    xn = (u - cx - sk * yn) / fx
    return back(torch.stack([xn * depth, yn * depth, torch.full_like(u, float(depth))], 1))


def quaternion_to_matrix(q, name: str = "orientation", tol: float = QUAT_TOL) -> torch.Tensor:
    """(x, y, z, w) unit quaternion -> 3x3 rotation (torch). Rejects NaN and non-unit quaternions."""
    return torch.as_tensor(quaternions_to_matrices(_as_tensor(q, name, (4,)), name, tol))


def matrix_to_quaternion(R) -> torch.Tensor:
    """3x3 rotation -> (x, y, z, w) with w >= 0 (torch)."""
    R = np.asarray(R, dtype=np.float64) if isinstance(R, np.ndarray) else R
    return torch.as_tensor(matrices_to_quaternions(torch.as_tensor(R, dtype=torch.float64)))


def pose_to_matrix(position, orientation_xyzw, name: str = "pose") -> torch.Tensor:
    """A pose (the frame's position and orientation in the parent) -> 4x4 parent_from_frame (torch)."""
    p = _as_tensor(position, f"{name}.position", (3,))
    q = _as_tensor(orientation_xyzw, f"{name}.orientation", (4,))
    return poses_to_matrices(p, q, name)
