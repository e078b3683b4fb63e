"""Spatial index for the latent memory: world-space blocks with frustum culling.

Points are never moved (storage order is insertion order, which is what ties break on). The
index keeps a permutation ``order`` of the first ``n_indexed`` points grouped by block, each
block's range and tight AABB. Points inserted since the last rebuild form an unindexed tail
that every readout scans; the index is rebuilt at *insert* time once the tail outgrows a fraction
of the indexed part, so the readout path never sorts and rebuild cost is amortised
(O(log N) per inserted point, like an LSM tree).

``frustum`` culls blocks against the view of the 3x4 projection ``P = K_l [R | t]`` and gives
each block's nearest possible depth and cell footprint; the memory's readout then visits blocks
near to far in a few rounds and skips every block whose footprint is already filled by points
strictly in front of it (occlusion culling with ``rect_max``). Both tests are conservative: a
point that could win a cell is never skipped, so the result equals the brute-force readout.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["BlockIndex", "rect_max"]

_CORNERS = torch.tensor(
    [[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.float32
)  # (8, 3) selectors of min/max per axis


class BlockIndex:
    """Block-grouped permutation of the stored points, with per-block AABBs."""

    def __init__(self, block_size: float = 1.0, rebuild_fraction: float = 0.25, min_tail: int = 8192):
        if not block_size > 0:
            raise ValueError(f"block_size: expected > 0 metres, got {block_size}")
        self.block_size = float(block_size)
        self.rebuild_fraction = rebuild_fraction
        self.min_tail = min_tail
        self.clear()

    def clear(self) -> None:
        self.n_indexed = 0
        self.order: Optional[torch.Tensor] = None  # (n_indexed,) int32 storage indices, grouped by block
        self.starts = self.counts = self.bmin = self.bmax = None

    @property
    def nbytes(self) -> int:
        if self.order is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.order, self.starts, self.counts, self.bmin, self.bmax))

    @property
    def num_blocks(self) -> int:
        return 0 if self.starts is None else int(self.starts.numel())

    def needs_rebuild(self, n: int) -> bool:
        tail = n - self.n_indexed
        return tail > max(self.min_tail, self.rebuild_fraction * self.n_indexed)

    def rebuild(self, xyz: torch.Tensor) -> None:
        """Group all points (N, 3) by block. Called at insert time only."""
        n = xyz.shape[0]
        if n == 0:
            self.clear()
            return
        # float -> int64 of NaN, inf or |x| >= 2^63 is undefined: clamp first (such points only
        # share edge blocks, whose AABBs then turn non-finite and are never culled, see frustum)
        # (temporaries are built in place and dropped early: this runs on every load, and a
        # 3M-point memory is 36 MB of xyz but 72 MB per int64 column set)
        cellf = xyz / self.block_size
        cellf.floor_().nan_to_num_(nan=0.0).clamp_(-(2.0**40), 2.0**40)
        cell = cellf.to(torch.int64)
        del cellf
        cell -= cell.min(0).values  # non-negative, then pack three 21-bit coordinates
        cell.clamp_(max=(1 << 21) - 1)
        key = cell[:, 0] << 42
        key |= cell[:, 1] << 21
        key |= cell[:, 2]
        del cell
        key, order = torch.sort(key, stable=True)
        _, counts = torch.unique_consecutive(key, return_counts=True)
        del key
        order = order.to(torch.int32)
        starts = torch.cumsum(counts, 0) - counts
        nb = counts.numel()
        block_of = torch.repeat_interleave(torch.arange(nb, device=xyz.device), counts)[:, None].expand(-1, 3)
        pts = xyz[order]
        bmin = torch.full((nb, 3), float("inf"), device=xyz.device).scatter_reduce_(0, block_of, pts, "amin")
        bmax = torch.full((nb, 3), float("-inf"), device=xyz.device).scatter_reduce_(0, block_of, pts, "amax")
        del pts, block_of
        self.order = order
        self.starts, self.counts, self.bmin, self.bmax = starts, counts, bmin, bmax
        self.n_indexed = n

    def frustum(self, P: torch.Tensor, h: int, w: int):
        """Per block: visible (bool), nearest possible z (zmin), and cell footprint (u0, u1, v0, v1).

        A block is culled when all 8 corners of its AABB violate the same one of the constraints
        z > 0, p_u >= 0, p_u < w z, p_v >= 0, p_v < h z. zmin is the smallest corner z, a lower
        bound on the z of every point inside (z is linear, the AABB convex). The footprint is the
        bounding rectangle of the projected corners, or the whole grid if a corner is behind.
        """
        # (nb, 8, 3)
        corners = torch.where(_CORNERS.to(self.bmin.device).bool()[None], self.bmax[:, None], self.bmin[:, None])
        pix = corners @ P[:, :3].T + P[:, 3]  # (nb, 8, 3): p_u, p_v, z
        pu, pv, z = pix.unbind(-1)
        # a block holding a non-finite point (never admitted, but a corrupt state must not crash
        # the readout) has NaN/inf corners: keep it, nearest depth -inf, footprint the whole grid
        finite = torch.isfinite(pix).all(2).all(1)
        outside = finite & ((z <= 0).all(1) | (pu < 0).all(1) | (pu >= w * z).all(1) | (pv < 0).all(1)
                            | (pv >= h * z).all(1))
        zmin = torch.where(finite, z.min(1).values, torch.full_like(z[:, 0], float("-inf")))
        front = zmin > 0
        zs = torch.where(front[:, None], z, torch.ones_like(z))
        cu, cv = pu / zs, pv / zs
        u0 = torch.where(front, torch.floor(cu.min(1).values).clamp(0, w - 1), torch.zeros_like(zmin)).long()
        u1 = torch.where(front, torch.floor(cu.max(1).values).clamp(0, w - 1), torch.full_like(zmin, w - 1)).long()
        v0 = torch.where(front, torch.floor(cv.min(1).values).clamp(0, h - 1), torch.zeros_like(zmin)).long()
        v1 = torch.where(front, torch.floor(cv.max(1).values).clamp(0, h - 1), torch.full_like(zmin, h - 1)).long()
        return ~outside, zmin, (u0, u1, v0, v1)

    def gather(self, blocks: torch.Tensor) -> torch.Tensor:
        """Storage indices (M,) int64 of the points of the given blocks (a bool mask or indices)."""
        counts = self.counts[blocks]
        starts = self.starts[blocks]
        total = int(counts.sum())
        if total == 0:
            return torch.empty(0, dtype=torch.int64, device=self.order.device)
        seg_start = torch.cumsum(counts, 0) - counts
        offsets = torch.repeat_interleave(starts - seg_start, counts, output_size=total)
        pos = torch.arange(total, device=self.order.device) + offsets
        return self.order[pos].to(torch.int64)


def rect_max(grid: torch.Tensor, u0, u1, v0, v1) -> torch.Tensor:
    """Max of ``grid`` (h, w) over each inclusive rectangle [v0..v1] x [u0..u1] (vectorised).

    A sparse table along u gives each row's range max in O(1); rows outside [v0, v1] are masked.
    """
    h, w = grid.shape
    levels = [grid]
    k = 1
    while 2 * k <= w:
        prev = levels[-1]
        nxt = prev.clone()
        nxt[:, : w - k] = torch.maximum(prev[:, : w - k], prev[:, k:])
        levels.append(nxt)
        k *= 2
    table = torch.stack(levels)  # (L, h, w): table[j, r, c] = max grid[r, c : c + 2^j]
    length = (u1 - u0 + 1).clamp(min=1)
    j = torch.floor(torch.log2(length.float())).long().clamp(max=len(levels) - 1)
    right = (u1 - (1 << j) + 1).clamp(min=0)
    rows = torch.arange(h, device=grid.device)
    a = table[j[:, None], rows[None], u0[:, None]]  # (nb, h)
    b = table[j[:, None], rows[None], right[:, None]]
    row_max = torch.maximum(a, b)
    in_rows = (rows[None] >= v0[:, None]) & (rows[None] <= v1[:, None])
    return torch.where(in_rows, row_max, torch.full_like(row_max, float("-inf"))).max(1).values
