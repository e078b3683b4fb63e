"""Reference frames: earlier output that saw the same part of the scene (voxel IoU of memory points).

As the official code does: remember, for every generated latent frame, the set of memory points
visible from its camera, voxelised at 0.1 m; for a new chunk, voxelise the points visible from its
target cameras and pick up to 4 earlier frames whose voxel IoU with it is at least 0.04, best first.
"Visible" here is the readout's winner per cell (frontmost, occlusion-aware); the official code
counts every point that projects inside the frame, occluded or not.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

import torch

__all__ = ["voxel_keys", "voxel_iou", "ReferenceSelector"]

_BITS = 21
_OFF = 1 << (_BITS - 1)


def voxel_keys(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Sorted unique int64 keys of the voxels (edge ``voxel_size``) holding (N, 3) points."""
    if points.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    v = torch.floor(points.float().cpu() / voxel_size).long().clamp(-_OFF, _OFF - 1) + _OFF
    keys = (v[:, 0] << (2 * _BITS)) | (v[:, 1] << _BITS) | v[:, 2]
    return torch.unique(keys)


def voxel_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two sorted unique key sets."""
    if a.numel() == 0 or b.numel() == 0:
        return 0.0
    inter = int(torch.isin(a, b, assume_unique=True).sum())
    return inter / (a.numel() + b.numel() - inter)


def visible_points(memory, readouts: Iterable) -> torch.Tensor:
    """(N, 3) memory points that win at least one cell of the given ``Readout``s."""
    idx = [r.index[r.index >= 0].reshape(-1) for r in readouts]
    if not idx:
        return torch.empty(0, 3)
    idx = torch.unique(torch.cat(idx))
    return memory.points[idx.to(memory.points.device)]


class ReferenceSelector:
    """Keeps per-frame voxel sets and picks references for a chunk."""

    def __init__(self, max_references: int = 4, iou_threshold: float = 0.04, voxel_size: float = 0.1):
        self.max_references, self.iou_threshold = int(max_references), float(iou_threshold)
        self.voxel_size = float(voxel_size)
        self.frames: Dict[int, torch.Tensor] = {}

    def remember(self, frame: int, points: torch.Tensor) -> None:
        self.frames[int(frame)] = voxel_keys(points, self.voxel_size)

    def select(self, target_points: torch.Tensor, exclude: Sequence[int] = ()) -> List[Tuple[int, float]]:
        """Up to ``max_references`` (frame, IoU) with IoU >= threshold, best first (ties: earlier frame)."""
        if self.max_references <= 0 or not self.frames:
            return []
        target = voxel_keys(target_points, self.voxel_size)
        skip = set(int(i) for i in exclude)
        scored = [(i, voxel_iou(target, keys)) for i, keys in self.frames.items() if i not in skip]
        scored = [s for s in scored if s[1] >= self.iou_threshold]
        scored.sort(key=lambda s: (-s[1], s[0]))
        return scored[: self.max_references]
