"""Scale (and shift) alignment of predicted depth to the memory's metric readout depth.

Monocular depth on a generated frame rarely matches the memory's scale. Before inserting, the
prediction is compared with the depth of what the memory already holds at the same camera and
aligned robustly:

- ``scale``: s = median(ref / pred) (the median ratio ignores outliers up to half the pairs);
- ``scale_shift``: ref ~ s * pred + b, starting from the median-ratio scale and refitted
  ``iters`` times by least squares on the ``1 - trim`` fraction of pairs with the smallest
  residuals (trimmed least squares).

Two ways to pair prediction and memory:

- :func:`align_depth` compares on the latent grid: the prediction at each cell centre against the
  readout depth of the cell. The readout depth belongs to the winning point, which lies anywhere
  inside the cell, so on slanted surfaces (a ground plane) this pairing is biased by up to a few
  per cent of scale.
- :func:`align_to_memory` (what ``AlignedDepth`` uses) pairs each winning point's camera depth
  with the full-resolution prediction sampled where that point projects: no quantisation bias
  (a scale of 2.5 comes back as 2.5000 on the synthetic scenes, against 2.49-2.52 on the grid).

The residual reported is the median relative error |aligned - ref| / ref on the pairs used, the
number to watch: a large residual after alignment means the geometry itself disagrees.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..geometry import project_pixels
from ..memory.downsample import downsample_depth

__all__ = ["AlignResult", "align_depth", "align_to_memory", "fit_scale_shift"]


@dataclass
class AlignResult:
    mode: str
    scale: float
    shift: float
    residual: float  # median relative error after alignment on the pairs used
    residual_before: float  # the same before alignment
    cells: int  # pairs used (cells / points covered by both)
    ok: bool  # False when too few pairs: the prediction is returned unchanged
    reference: str = "cells"  # "cells" (latent grid) or "points" (winning points' projections)


def fit_scale_shift(x: torch.Tensor, y: torch.Tensor, mode: str = "scale", trim: float = 0.2, iters: int = 3,
                    min_cells: int = 16, reference: str = "cells") -> AlignResult:
    """Robust fit of y ~ s * x (+ b) on 1-D pairs (x predicted, y reference, both > 0)."""
    if mode not in ("scale", "scale_shift"):
        raise ValueError(f"mode: expected 'scale' or 'scale_shift', got {mode!r}")
    x, y = x.double(), y.double()
    n = int(x.numel())
    before = float(((x - y).abs() / y).median()) if n else float("nan")
    if n < min_cells:
        return AlignResult(mode, 1.0, 0.0, before, before, n, False, reference)
    s, b = float((y / x).median()), 0.0
    if mode == "scale_shift":
        # start from the median-ratio scale (robust), then trimmed least squares on the inliers
        for _ in range(iters + 1):
            r = (s * x + b - y).abs()
            keep = r <= torch.quantile(r, 1.0 - trim)
            A = torch.stack([x[keep], torch.ones_like(x[keep])], 1)
            sol = torch.linalg.lstsq(A, y[keep][:, None]).solution[:, 0]
            s, b = float(sol[0]), float(sol[1])
    after = float(((s * x + b - y).abs() / y).median())
    return AlignResult(mode, s, b, after, before, n, True, reference)


def align_depth(pred: torch.Tensor, ref: torch.Tensor, mode: str = "scale", stride: int = 16, trim: float = 0.2,
                iters: int = 3, min_cells: int = 16):
    """Align ``pred`` ((H, W) or (h, w), metres up to scale) to ``ref`` ((h, w) memory readout depth,
    inf/NaN where empty) on the latent grid. Returns (aligned pred in pred's shape, AlignResult)."""
    if mode not in ("scale", "scale_shift"):
        raise ValueError(f"mode: expected 'scale' or 'scale_shift', got {mode!r}")
    pred = pred.float()
    ref = ref.float().to(pred.device)
    h, w = ref.shape
    if tuple(pred.shape) == (h, w):
        p = torch.where(torch.isfinite(pred) & (pred > 0), pred, torch.full_like(pred, float("nan")))
    elif tuple(pred.shape) == (h * stride, w * stride):
        p = downsample_depth(pred, stride, "bilinear")
    else:
        raise ValueError(f"pred: shape {tuple(pred.shape)} matches neither the readout grid {(h, w)} nor its x{stride} "
                         f"image")
    both = torch.isfinite(p) & torch.isfinite(ref) & (ref > 0)
    res = fit_scale_shift(p[both], ref[both], mode, trim, iters, min_cells, "cells")
    return (pred * res.scale + res.shift if res.ok else pred), res


def align_to_memory(pred: torch.Tensor, memory, camera, mode: str = "scale", trim: float = 0.2, iters: int = 3,
                    min_cells: int = 16):
    """Align ``pred`` to what ``memory`` holds at ``camera``.

    ``pred`` (H, W) full resolution: each winning point of the readout is projected with the
    camera's full-resolution K and paired with the bilinear sample of ``pred`` there (invalid if
    any of the four pixels is); its camera z is the reference. ``pred`` (h, w): the latent-grid
    pairing of :func:`align_depth`. Returns (aligned pred, AlignResult).
    """
    readout = memory.read(camera, dtype=None)
    H, W = camera.height, camera.width
    if tuple(pred.shape) != (H, W):
        return align_depth(pred, readout.depth.float().cpu(), mode=mode, stride=H // readout.depth.shape[0],
                           trim=trim, iters=iters, min_cells=min_cells)
    pred = pred.float()
    idx = readout.index[readout.mask & ~readout.sky].cpu()  # sky cells have no point
    P = memory.points.cpu()[idx].double()
    u, v, z = project_pixels(P, camera.K, camera.world_to_camera)  # centre of pixel i at i + 0.5
    grid = torch.stack([u / W * 2 - 1, v / H * 2 - 1], -1).float()[None, None]
    p = torch.where(torch.isfinite(pred) & (pred > 0), pred, torch.full_like(pred, float("nan")))
    x = F.grid_sample(p[None, None].cpu(), grid, mode="bilinear", padding_mode="border",
                      align_corners=False)[0, 0, 0].double()
    ok = torch.isfinite(x) & (x > 0) & (z > 0)
    res = fit_scale_shift(x[ok], z[ok], mode, trim, iters, min_cells, "points")
    return (pred * res.scale + res.shift if res.ok else pred), res
