"""The sky dome: what a camera saw at infinity, stored as world directions and read by rotation only.

A latent cell with no point whose pixels are largely at depth +inf (REP 118's "nothing within range";
the simulator's sky; ``LatentSpatialMemory.sky_fraction``) cannot be lifted by Eq. 4. Its appearance
is (nearly: a horizon or tree-top cell mixes in something far or thin) a function of the viewing
direction alone, so we keep it as the unit world direction of the cell's centre ray
(u + 1/2, v + 1/2) with the cell's latent feature. A read looks up, for each target cell, the
stored direction nearest to its own centre ray (largest dot product; on an exact tie the earliest
stored) and accepts it within ``reach`` cell pitches (angle <= reach / f, f the target camera's
larger latent focal length). The camera's translation plays no part: the sky stays put while the
robot drives. ``LatentSpatialMemory(sky=True)`` places the dome behind every point: a cell takes a
dome feature only where no point projects into it.

Growth is bounded the way points are: an inserted sky cell whose ray already finds a stored
direction is a re-observation (kept, or refreshed with ``on_revisit="refresh"``), so the dome holds
at most about one direction per cell pitch of the sphere (4 pi f^2; ~3,600 at f = 17, ~25,000 for
Wan2.2's 832 x 480 grid at 60 degrees).

Determinism: the dot products are float32 matrix products, so on one machine the result is the
same bit for bit; across BLAS builds a ray equidistant (within rounding) to two stored directions,
or at the ``reach`` limit, may pick either.
"""
from __future__ import annotations

import torch

from ..geometry import Camera, backproject

__all__ = ["SkyDome"]

_BLOCK = 1 << 22  # elements of one (rays, directions) dot-product block: 16 MiB of float32


class SkyDome:
    """Directions (M, 3) float32 world unit vectors and features (M, C); never written in place
    (inserts and refreshes build new tensors), so a shallow copy is a safe fork."""

    def __init__(self, channels: int, feature_dtype: torch.dtype, device: torch.device, reach: float = 0.75):
        self.channels, self.feature_dtype, self.device = int(channels), feature_dtype, torch.device(device)
        self.reach = float(reach)
        self.clear()

    def clear(self) -> None:
        self.directions = torch.empty((0, 3), dtype=torch.float32, device=self.device)
        self.features = torch.empty((0, self.channels), dtype=self.feature_dtype, device=self.device)

    def __len__(self) -> int:
        return int(self.directions.shape[0])

    @property
    def nbytes(self) -> int:
        return len(self) * (3 * 4 + self.channels * self.features.element_size())

    @staticmethod
    def cell_rays(camera: Camera, stride: int) -> torch.Tensor:
        """(h*w, 3) float32 world unit directions of the latent cells' centre rays (row-major)."""
        h, w = camera.latent_size(stride)
        ones = torch.ones((h, w), dtype=torch.float64)  # Eq. 4 at unit depth: the cell-centre convention
        world = backproject(ones, camera.latent_K(stride), camera.world_to_camera) - camera.center.double()
        return torch.nn.functional.normalize(world.reshape(-1, 3), dim=1).float()

    def lookup(self, camera: Camera, stride: int, rays=None) -> torch.Tensor:
        """(h*w,) int64: per cell the nearest stored direction within ``reach`` pitches, -1 if none.
        ``rays``: the camera's ``cell_rays`` if the caller already has them."""
        h, w = camera.latent_size(stride)
        out = torch.full((h * w,), -1, dtype=torch.int64, device=self.device)
        if len(self) == 0:
            return out
        rays = (self.cell_rays(camera, stride) if rays is None else rays).to(self.device)
        K = camera.latent_K(stride)
        f = float(max(K[0, 0], K[1, 1]))
        cos_limit = float(torch.cos(torch.tensor(self.reach / f, dtype=torch.float64)))
        best = torch.full((h * w,), -2.0, dtype=torch.float32, device=self.device)
        chunk = max(64, _BLOCK // (h * w))
        for a in range(0, len(self), chunk):
            dots = rays @ self.directions[a : a + chunk].T
            val, idx = dots.max(dim=1)  # first maximal index on ties
            better = val > best  # strict: an earlier chunk keeps a tie
            best = torch.where(better, val, best)
            out = torch.where(better, idx + a, out)
        return torch.where(best >= cos_limit, out, torch.full_like(out, -1))

    def insert(self, latent: torch.Tensor, cells: torch.Tensor, camera: Camera, stride: int,
               refresh: bool = False):
        """Store the sky ``cells`` (h, w) bool of ``latent`` (C, h, w) seen from ``camera``.
        Returns (added, revisited)."""
        if not bool(cells.any()):
            return 0, 0
        rays = self.cell_rays(camera, stride).to(self.device)
        hit = self.lookup(camera, stride, rays)
        flat = cells.reshape(-1).to(self.device)
        seen = flat & (hit >= 0)
        new = flat & (hit < 0)
        feats = latent.reshape(self.channels, -1).T.to(self.device, self.feature_dtype)
        if refresh and bool(seen.any()):
            # one writer per stored direction (the first cell in row-major order): no racy write
            cell_ids = torch.arange(flat.numel(), device=self.device)[seen]
            first = torch.full((len(self),), flat.numel(), dtype=torch.int64, device=self.device)
            first.scatter_reduce_(0, hit[seen], cell_ids, "amin")
            rows = (first < flat.numel()).nonzero().squeeze(1)
            f = self.features.clone()
            f[rows] = feats[first[rows]]
            self.features = f
        if bool(new.any()):
            self.directions = torch.cat([self.directions, rays[new]])
            self.features = torch.cat([self.features, feats[new]])
        return int(new.sum()), int(seen.sum())

    def replace(self, directions: torch.Tensor, features: torch.Tensor) -> None:
        self.directions = directions.to(self.device, torch.float32)
        self.features = features.to(self.device, self.feature_dtype)
