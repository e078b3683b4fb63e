"""Depth and mask downsampling from pixel (H, W) to latent (h, w) resolution.

Invalid depth (NaN, inf, <= 0) must never turn into a plausible number, so every method here
propagates invalidity explicitly (invalid pixels become NaN before pooling):

- ``bilinear`` (default, the paper's choice): the bilinear sample at the cell centre
  (pixel coordinate s*u + s/2), i.e. the mean of the 2x2 pixels around it; invalid if one is.
- ``nearest``: the pixel just below-right of the cell centre, (s*v + s/2, s*u + s/2).
- ``area``: the mean of the s x s block; invalid if any pixel of the block is.
- ``median``: the median of the block's valid pixels; invalid if fewer than half are valid.

``hole_rate`` measures what each method loses (paper, appendix: bilinear has the lowest).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

__all__ = ["DEPTH_DOWNSAMPLE_METHODS", "downsample_depth", "downsample_mask", "hole_rate", "masked_median_depth",
           "valid_depth"]

DEPTH_DOWNSAMPLE_METHODS = ("bilinear", "nearest", "area", "median")


def valid_depth(depth: torch.Tensor) -> torch.Tensor:
    """Boolean mask of usable depth: finite and strictly positive."""
    return torch.isfinite(depth) & (depth > 0)


def downsample_depth(depth: torch.Tensor, stride: int, method: str = "bilinear") -> torch.Tensor:
    """(H, W) metres -> (H/s, W/s) metres, NaN where the cell has no valid depth."""
    if method not in DEPTH_DOWNSAMPLE_METHODS:
        raise ValueError(f"depth_downsample: unknown method {method!r} (expected one of {DEPTH_DOWNSAMPLE_METHODS})")
    H, W = depth.shape
    h, w = H // stride, W // stride
    d = torch.where(valid_depth(depth), depth.float(), torch.full_like(depth, float("nan"), dtype=torch.float32))
    if stride == 1:
        return d
    half = stride // 2
    if method == "nearest":
        return d[half::stride, half::stride][:h, :w].contiguous()
    if method == "bilinear":
        # The cell centre lies between pixels half-1 and half: average that 2x2 neighbourhood
        # (identical to F.interpolate(mode="bilinear", align_corners=False) at scale 1/s).
        quad = d[half - 1 :: stride, :][:h] + d[half::stride, :][:h]
        return 0.25 * (quad[:, half - 1 :: stride][:, :w] + quad[:, half::stride][:, :w])
    if method == "area":
        return F.avg_pool2d(d[None, None], stride)[0, 0]
    # median of valid pixels per block
    blocks = d.reshape(h, stride, w, stride).permute(0, 2, 1, 3).reshape(h, w, stride * stride)
    med = torch.nanmedian(blocks, dim=-1).values
    enough = torch.isfinite(blocks).sum(-1) * 2 >= stride * stride
    return torch.where(enough, med, torch.full_like(med, float("nan")))


def masked_median_depth(depth: torch.Tensor, drop: torch.Tensor, stride: int) -> torch.Tensor:
    """(H, W) depth and (H, W) bool ``drop`` -> (h, w): per block, the median of the valid depths of
    the pixels not dropped (NaN if there are none): a cell's depth without a dynamic object in it."""
    H, W = depth.shape
    h, w = H // stride, W // stride
    d = torch.where(valid_depth(depth) & ~drop, depth, torch.full_like(depth, float("nan")))
    blocks = d.reshape(h, stride, w, stride).permute(0, 2, 1, 3).reshape(h, w, stride * stride)
    return torch.nanmedian(blocks, dim=-1).values


def downsample_mask(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """(H, W) bool -> (h, w) bool: a cell is set if ANY of its pixels is (conservative exclusion)."""
    H, W = mask.shape
    return mask.reshape(H // stride, stride, W // stride, stride).any(dim=3).any(dim=1)


def hole_rate(depth: torch.Tensor, stride: int) -> Dict[str, Dict[str, float]]:
    """Per method: fraction of cells whose block is mostly valid but that come out invalid
    ("holes"), and the total invalid-cell fraction."""
    H, W = depth.shape
    ok = valid_depth(depth).float()
    mostly_valid = F.avg_pool2d(ok[None, None], stride)[0, 0] >= 0.5
    out = {}
    for m in DEPTH_DOWNSAMPLE_METHODS:
        dd = downsample_depth(depth, stride, m)
        bad = ~torch.isfinite(dd)
        out[m] = {
            "hole_rate": float((bad & mostly_valid).sum()) / max(1, int(mostly_valid.sum())),
            "invalid_fraction": float(bad.float().mean()),
        }
    return out
