"""A sort-then-assign readout in the manner the official code describes (for benchmarks only).

World -> camera -> pinhole, cells by *rounding*, keep in-bounds and z > 0, argsort every point
by depth far-to-near, then one indexed assignment where the last write should win. PyTorch
documents indexed assignment with repeated indices as undefined, so "frontmost wins" is not
guaranteed; ``LatentSpatialMemory.read`` is the exact, sort-free replacement. Written from a
description of microsoft/LatentSpatialMemory's ``LatentPointCloud.project`` (round, argsort far
first, indexed assignment), not from its source.
"""
from __future__ import annotations

import torch

from ..geometry import Camera, project_pixels

__all__ = ["sort_assign_readout"]


def sort_assign_readout(points: torch.Tensor, features: torch.Tensor, camera: Camera, stride: int = 16):
    """points (N, 3), features (N, C) -> (latent (C, h, w), mask (h, w))."""
    h, w = camera.latent_size(stride)
    uc, vc, z = project_pixels(points, camera.latent_K(stride), camera.world_to_camera)
    u, v = torch.round(uc).long(), torch.round(vc).long()  # the official rounding, not the paper's floor
    keep = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    u, v, z, f = u[keep], v[keep], z[keep], features[keep]
    order = torch.argsort(z, descending=True)  # far first, so nearer points are written later
    latent = torch.zeros((h * w, features.shape[1]), dtype=features.dtype, device=points.device)
    latent[(v * w + u)[order]] = f[order]
    mask = torch.zeros(h * w, dtype=torch.bool, device=points.device)
    mask[v * w + u] = True
    return latent.T.reshape(-1, h, w), mask.view(h, w)
