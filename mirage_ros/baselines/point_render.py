"""Soft point-cloud rendering as Spatia conditions on it: disks in NDC, K nearest per pixel, alpha compositing.

Spatia (github ZhaoJingjing713/Spatia, ``utils/render_point_torch3d.py``) renders its point memory with
PyTorch3D: ``PointsRasterizer`` (radius 0.01 in NDC units, 5 points per pixel) and ``AlphaCompositor``
on a black background, and renders a second "score" image of the same points with every colour 1; the
world model is conditioned on the colour render and on 1 - score (the hole mask). This module is the
same algorithm in plain torch (CPU, and CUDA with the same code), written from PyTorch3D's documented
semantics and its reference rasteriser:

- a point is a disk of radius ``r`` in NDC (PyTorch3D's: the shorter image side spans [-1, 1], +x left,
  +y up); it covers a pixel when the squared NDC distance from the point to the pixel centre is < r^2,
  and points behind the camera (z < 0) are skipped;
- each pixel keeps its ``K`` nearest covering points by view-space z (ties: lower point index);
- weight alpha_k = 1 - d_k^2 / r^2; colour = sum_k alpha_k prod_{j<k} (1 - alpha_j) c_k; a pixel no point
  covers is the background (black); the score image is the same sum with c = 1, i.e. 1 - prod (1 - alpha).

Cameras: ``convention="spatia"`` maps K to NDC exactly as Spatia does (focal 2 f / (s - 1), principal
point 2 (c - (S - 1) / 2) / (s - 1), s the shorter side, S the side of that axis); that puts the
principal point at S - 1 - c instead of c and scales the focal length by s / (s - 1) (at 704 x 1248 and
c = S / 2: the render sits about one pixel up-left of the true projection and is 0.14 % larger). The
weights were trained on such renders, so it is the default for the Spatia layout. ``"pinhole"`` is the
exact projection in this package's convention (pixel (u, v) centred at u + 1/2, v + 1/2).

``voxel_downsample`` is Open3D's ``voxel_down_sample``: voxels of edge v anchored at the cloud's
minimum minus v / 2, each replaced by the mean position and mean colour of its points.

Not reproduced: Spatia writes both renders to MP4 (H.264, lossy) and reads them back before encoding;
here the renders go to the VAE directly (``quantize`` keeps its uint8 truncation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..geometry import Camera

__all__ = ["CONVENTIONS", "voxel_downsample", "ndc_points", "rasterize", "composite", "render_points", "PointRender"]

CONVENTIONS = ("spatia", "pinhole")


def voxel_downsample(points: torch.Tensor, colors: Optional[torch.Tensor], voxel_size: float):
    """(N, 3) points [+ (N, C) colours] -> one point per occupied voxel (mean position, mean colour), as
    Open3D's ``voxel_down_sample``. Output is ordered by voxel key (Open3D's order is a hash map's)."""
    if voxel_size <= 0:
        raise ValueError(f"voxel_size: expected > 0, got {voxel_size}")
    if points.shape[0] == 0:
        return points, colors
    p = points.double()
    origin = p.min(0).values - 0.5 * voxel_size
    idx = torch.floor((p - origin) / voxel_size).long()
    span = idx.max(0).values + 1
    key = (idx[:, 0] * span[1] + idx[:, 1]) * span[2] + idx[:, 2]
    uniq, inv = torch.unique(key, return_inverse=True)
    n = torch.zeros(uniq.shape[0], dtype=torch.float64, device=p.device).index_add_(0, inv, torch.ones_like(p[:, 0]))
    mean_p = torch.zeros(uniq.shape[0], 3, dtype=torch.float64, device=p.device).index_add_(0, inv, p) / n[:, None]
    out_c = None
    if colors is not None:
        c = colors.double()
        out_c = (torch.zeros(uniq.shape[0], c.shape[1], dtype=torch.float64, device=p.device).index_add_(0, inv, c)
                 / n[:, None]).to(colors.dtype if colors.is_floating_point() else torch.float32)
    return mean_p.to(points.dtype), out_c


def _pix_to_ndc(i: torch.Tensor, S1: int, S2: int) -> torch.Tensor:
    """NDC of pixel index ``i`` along an axis of ``S1`` pixels (the other has ``S2``), PyTorch3D's formula in
    float32."""
    rng = 2.0 if S1 <= S2 else 2.0 * S1 / S2
    off = rng / 2.0
    return -off + (rng * i.float() + off) / S1


def ndc_points(points: torch.Tensor, camera: Camera, convention: str = "spatia") -> torch.Tensor:
    """(N, 3) world points -> (N, 3) float32: NDC x (+ left), NDC y (+ up), view-space z.

    The float32 steps follow Spatia's OpenCV -> PyTorch3D conversion (x and y flipped, the camera pose
    inverted twice) and PyTorch3D's transform chain (homogeneous world -> view, then the projection
    matrix and the division by w): points on a plane seen head-on tie in z to the last bit, and only the
    same rounding orders them the same way (checked against PyTorch3D's reference rasteriser)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    H, W, dev = camera.height, camera.width, points.device
    s = float(min(H, W))
    K = camera.K.double()
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    if convention == "spatia":
        fxn, fyn = fx * 2.0 / (s - 1), fy * 2.0 / (s - 1)
        pxn, pyn = (cx - (W - 1) / 2) * 2.0 / (s - 1), (cy - (H - 1) / 2) * 2.0 / (s - 1)
    else:  # the pixel centred at u + 1/2 is index u; its NDC is (S - 1 - 2 u) / s
        fxn, fyn = 2.0 * fx / s, 2.0 * fy / s
        pxn, pyn = (W - 2.0 * cx) / s, (H - 2.0 * cy) / s
    flip = torch.tensor([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]], device=dev)
    c2w = torch.inverse(camera.world_to_camera.to(dev, torch.float32))
    R = flip @ c2w[:3, :3] @ flip.T
    c2w_p3d = torch.eye(4, device=dev)
    c2w_p3d[:3, :3], c2w_p3d[:3, 3] = R, flip @ c2w[:3, 3]
    M = torch.eye(4, device=dev)  # row-vector world -> view: [x y z 1] @ [[R, 0], [T, 1]]
    M[:3, :3], M[3, :3] = R, torch.inverse(c2w_p3d)[:3, 3]
    hom = torch.cat([points.float() @ flip.T, torch.ones(points.shape[0], 1, device=dev)], 1)
    view = hom @ M
    P = torch.tensor([[fxn, 0.0, pxn, 0.0], [0.0, fyn, pyn, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]],
                     device=dev)
    proj = view @ P.T
    return torch.stack([proj[:, 0] / proj[:, 3], proj[:, 1] / proj[:, 3], view[:, 2]], 1)


def rasterize(ndc: torch.Tensor, height: int, width: int, radius: float = 0.01, points_per_pixel: int = 5,
              chunk: int = 1 << 18) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K nearest covering points per pixel: idx (H, W, K) int64 (-1 empty), z (H, W, K), dist2 (H, W, K),
    sorted front to back. ``ndc`` from ``ndc_points``. Points are processed ``chunk`` at a time, the
    running K best per pixel merged with each chunk's fragments (memory bounded by the chunk)."""
    H, W, K, dev = height, width, int(points_per_pixel), ndc.device
    if K < 1:
        raise ValueError(f"points_per_pixel: expected >= 1, got {points_per_pixel}")
    s = min(H, W)
    r2 = float(radius) * float(radius)
    half = float(radius) * s / 2.0  # disk radius in pixels
    span = int(2 * half) + 2  # candidate pixels per axis
    off = torch.arange(span, device=dev)
    best_pix = torch.empty(0, dtype=torch.int64, device=dev)
    best_z = torch.empty(0, dtype=torch.float32, device=dev)
    best_d = torch.empty(0, dtype=torch.float32, device=dev)
    best_i = torch.empty(0, dtype=torch.int64, device=dev)
    for start in range(0, ndc.shape[0], chunk):
        q = ndc[start:start + chunk]
        ids = torch.arange(start, start + q.shape[0], device=dev)
        keep = q[:, 2] >= 0
        q, ids = q[keep], ids[keep]
        # continuous pixel indices (column from the left, row from the top) of the disk centres
        xi = (W - 1 - s * q[:, 0].double()) / 2.0
        yi = (H - 1 - s * q[:, 1].double()) / 2.0
        inside = (xi > -half - 1) & (xi < W + half) & (yi > -half - 1) & (yi < H + half)
        q, ids, xi, yi = q[inside], ids[inside], xi[inside], yi[inside]
        if q.shape[0] == 0:
            continue
        x0 = torch.ceil(xi - half).long()
        y0 = torch.ceil(yi - half).long()
        cx = (x0[:, None] + off[None, :])  # (n, span)
        cy = (y0[:, None] + off[None, :])
        okx = (cx >= 0) & (cx < W)
        oky = (cy >= 0) & (cy < H)
        # PyTorch3D indexes pixels from the other side (+x left, +y up) when it computes their NDC
        xf = _pix_to_ndc((W - 1 - cx).clamp(0, W - 1), W, H)
        yf = _pix_to_ndc((H - 1 - cy).clamp(0, H - 1), H, W)
        dx = q[:, 0:1] - xf  # (n, span)
        dy = q[:, 1:2] - yf
        d2 = dy[:, :, None] * dy[:, :, None] + dx[:, None, :] * dx[:, None, :]  # (n, span_y, span_x)
        ok = (d2 < r2) & oky[:, :, None] & okx[:, None, :]
        n_i, a_i, b_i = ok.nonzero(as_tuple=True)
        pix = cy[n_i, a_i] * W + cx[n_i, b_i]
        best_pix = torch.cat([best_pix, pix])
        best_z = torch.cat([best_z, q[n_i, 2]])
        best_d = torch.cat([best_d, d2[n_i, a_i, b_i]])
        best_i = torch.cat([best_i, ids[n_i]])
        best_pix, best_z, best_d, best_i = _top_k(best_pix, best_z, best_d, best_i, K)
    idx = torch.full((H * W, K), -1, dtype=torch.int64, device=dev)
    zb = torch.full((H * W, K), -1.0, dtype=torch.float32, device=dev)
    db = torch.full((H * W, K), -1.0, dtype=torch.float32, device=dev)
    if best_pix.numel():
        rank = _rank_in_pixel(best_pix)
        idx[best_pix, rank], zb[best_pix, rank], db[best_pix, rank] = best_i, best_z, best_d
    return idx.view(H, W, K), zb.view(H, W, K), db.view(H, W, K)


def _rank_in_pixel(pix: torch.Tensor) -> torch.Tensor:
    """Position of each fragment within its pixel's run (``pix`` sorted)."""
    n = pix.shape[0]
    first = torch.ones(n, dtype=torch.bool, device=pix.device)
    first[1:] = pix[1:] != pix[:-1]
    start = torch.cummax(torch.where(first, torch.arange(n, device=pix.device), torch.zeros_like(pix)), 0).values
    return torch.arange(n, device=pix.device) - start


def _top_k(pix, z, d2, ids, K: int):
    """Keep the K fragments of each pixel with the smallest (z, point index), sorted by pixel then z.

    One stable sort on (pixel << 32 | float32 bits of z): z >= 0, so its bits order as the values; equal
    keys keep the array order, which is point-index order (earlier chunks first, each chunk in index
    order), the tie-break of PyTorch3D's rasteriser."""
    zbits = (z + 0.0).contiguous().view(torch.int32).long()  # + 0.0 turns -0.0 into 0.0
    order = torch.sort((pix << 32) | zbits, stable=True).indices
    pix, z, d2, ids = pix[order], z[order], d2[order], ids[order]
    keep = _rank_in_pixel(pix) < K
    return pix[keep], z[keep], d2[keep], ids[keep]


def composite(idx: torch.Tensor, dist2: torch.Tensor, radius: float, features: Optional[torch.Tensor]):
    """Alpha compositing front to back (PyTorch3D's ``AlphaCompositor``, black background).

    idx / dist2 (H, W, K) from ``rasterize``; features (N, C) in [0, 1] (None: only the score).
    Returns (image (H, W, C) or None, score (H, W) = 1 - prod(1 - alpha) where covered, 0 elsewhere)."""
    valid = idx >= 0
    alpha = torch.where(valid, 1.0 - dist2 / (float(radius) ** 2), torch.zeros_like(dist2))
    keep = torch.cumprod(1.0 - alpha, dim=-1)
    trans = torch.cat([torch.ones_like(keep[..., :1]), keep[..., :-1]], dim=-1)  # prod_{j<k} (1 - alpha_j)
    w = alpha * trans
    score = w.sum(-1)
    bg = ~valid[..., 0]
    score = torch.where(bg, torch.zeros_like(score), score).clamp(0, 1)
    if features is None:
        return None, score
    f = features.to(w.dtype)[idx.clamp(min=0)]  # (H, W, K, C)
    img = (w[..., None] * f).sum(-2)
    img = torch.where(bg[..., None], torch.zeros_like(img), img).clamp(0, 1)
    return img, score


def render_points(points: torch.Tensor, colors: torch.Tensor, camera: Camera, radius: float = 0.01,
                  points_per_pixel: int = 5, convention: str = "spatia", chunk: int = 1 << 18):
    """Colour render (H, W, 3) float in [0, 1] and score (H, W) of (N, 3) points with (N, 3) colours in
    [0, 1] at ``camera``; the hole mask Spatia conditions on is 1 - score."""
    ndc = ndc_points(points, camera, convention)
    idx, _, d2 = rasterize(ndc, camera.height, camera.width, radius, points_per_pixel, chunk)
    return composite(idx, d2, radius, colors)


@dataclass
class PointRender:
    """Renders a coloured point set the way Spatia conditions on it (see module docstring).

    ``quantize``: as Spatia, truncate both renders to uint8 (x * 255 -> uint8) before they are encoded.
    """

    radius: float = 0.01
    points_per_pixel: int = 5
    convention: str = "spatia"
    quantize: bool = True
    chunk: int = 1 << 18

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention: expected one of {CONVENTIONS}, got {self.convention!r}")
        if not self.radius > 0:
            raise ValueError(f"radius: expected > 0, got {self.radius}")

    def __call__(self, points: torch.Tensor, colors: torch.Tensor, camera: Camera):
        """-> render (H, W, 3) uint8 (or float in [0, 1] without ``quantize``), hole (H, W) float in [0, 1]
        (1 = nothing rendered), both on the points' device."""
        if points.shape[0] == 0:
            img = torch.zeros(camera.height, camera.width, 3, device=points.device)
            score = torch.zeros(camera.height, camera.width, device=points.device)
        else:
            img, score = render_points(points, colors, camera, self.radius, self.points_per_pixel, self.convention,
                                       self.chunk)
        if not self.quantize:
            return img, 1.0 - score
        img8 = (img * 255.0).to(torch.uint8)  # numpy's astype(uint8) after * 255: truncation
        score8 = (score * 255.0).to(torch.uint8)
        return img8, (255 - score8).float() / 255.0
