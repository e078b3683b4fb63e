"""Scale (and shift) alignment of predicted depth to the memory's metric readout depth.

Monocular depth on a generated frame rarely matches the memory's scale. Before inserting, the
prediction is compared with the memory's readout depth on the latent cells both cover and
aligned robustly:

- ``scale``: s = median(ref / pred) (the median ratio ignores outliers up to half the cells);
- ``scale_shift``: ref ~ s * pred + b, starting from the median-ratio scale and refitted
  ``iters`` times by least squares on the ``1 - trim`` fraction of cells with the smallest
  residuals (trimmed least squares).

The residual reported is the median relative error |aligned - ref| / ref on the cells used, the
number to watch: a large residual after alignment means the geometry itself disagrees.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..memory.downsample import downsample_depth

__all__ = ["AlignResult", "align_depth"]


@dataclass
class AlignResult:
    mode: str
    scale: float
    shift: float
    residual: float  # median relative error after alignment on the cells used
    residual_before: float  # the same before alignment
    cells: int  # cells covered by both
    ok: bool  # False when too few cells overlap: the prediction is returned unchanged


def align_depth(pred: torch.Tensor, ref: torch.Tensor, mode: str = "scale", stride: int = 16, trim: float = 0.2,
                iters: int = 3, min_cells: int = 16):
    """Align ``pred`` ((H, W) or (h, w), metres up to scale) to ``ref`` ((h, w) memory readout depth,
    inf/NaN where empty). Returns (aligned pred in pred's shape, AlignResult)."""
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
        raise ValueError(f"pred: shape {tuple(pred.shape)} matches neither the readout grid {(h, w)} nor its x{stride} image")
    both = torch.isfinite(p) & torch.isfinite(ref) & (ref > 0)
    n = int(both.sum())
    x, y = p[both].double(), ref[both].double()
    before = float(((x - y).abs() / y).median()) if n else float("nan")
    if n < min_cells:
        return pred, AlignResult(mode, 1.0, 0.0, before, before, n, False)
    if mode == "scale":
        s, b = float((y / x).median()), 0.0
    else:
        # start from the median-ratio scale (robust), then trimmed least squares on the inliers
        s, b = float((y / x).median()), 0.0
        for _ in range(iters + 1):
            r = (s * x + b - y).abs()
            keep = r <= torch.quantile(r, 1.0 - trim)
            A = torch.stack([x[keep], torch.ones_like(x[keep])], 1)
            sol = torch.linalg.lstsq(A, y[keep][:, None]).solution[:, 0]
            s, b = float(sol[0]), float(sol[1])
    aligned = pred * s + b
    after = float(((s * x + b - y).abs() / y).median())
    return aligned, AlignResult(mode, s, b, after, before, n, True)
