"""The RGB point-cloud cache Mirage is measured against (Gen3C / Spatia style).

Stores one coloured point per valid pixel at full resolution (float32 xyz + uint8 RGB). To
condition a view it rasterises the cloud at full resolution with a z-buffer and encodes the
image with the VAE: the pixel-space round trip the paper removes.

It is kept honest: it shares the latent memory's machinery (the same exact z-buffer by
(z, index) keys, the same block index with frustum and occlusion culling, the same
de-duplication policy), so the measured gap is the round trip itself, not a weaker rasteriser.

Two rasterisers:
- ``splat="pixel"`` (default, the timing benchmarks): 1-pixel splats, the cheapest there is. Up
  close, its surfaces break into points with holes, and far points show through them;
- ``splat="footprint"`` (the quality comparisons): hole-aware. Each point remembers its footprint
  (the pixel pitch z/f of the frame it came from) and is drawn as a square of that world size in
  the target view (up to ``max_splat`` pixels) through the same exact z-buffer, so near surfaces
  stay closed and occlude what is behind them; the remaining pinholes are filled from their
  frontmost neighbour (depth test, ``fill_iterations``); a latent cell counts as visible when at
  least ``coverage_threshold`` of its pixels are covered.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Camera
from ..memory import LatentSpatialMemory, Readout
from ..memory.downsample import downsample_mask

__all__ = ["RGBPointCloudMemory"]

_INT64_MAX = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


def _fill_holes(rgb, z, cover, winner, iterations: int):
    """Fill uncovered pixels from their frontmost covered 3x3 neighbour, ``iterations`` times."""
    H, W = cover.shape
    for _ in range(iterations):
        if bool(cover.all()):
            break
        zz = torch.where(cover, z, torch.full_like(z, float("inf")))
        pad = F.pad(zz[None, None], (1, 1, 1, 1), value=float("inf"))
        cols = F.unfold(pad, 3)[0]  # (9, H*W) neighbour depths
        zmin, arg = cols.min(0)
        take = (~cover.view(-1)) & torch.isfinite(zmin)
        if not bool(take.any()):
            break
        dy, dx = arg // 3 - 1, arg % 3 - 1
        src = ((torch.arange(H * W, device=z.device) // W + dy).clamp(0, H - 1) * W
               + (torch.arange(H * W, device=z.device) % W + dx).clamp(0, W - 1))
        flat_rgb, flat_z, flat_w = rgb.view(-1, 3).clone(), z.reshape(-1).clone(), winner.reshape(-1).clone()
        flat_rgb[take] = rgb.view(-1, 3)[src[take]]
        flat_z[take] = z.reshape(-1)[src[take]]
        flat_w[take] = winner.reshape(-1)[src[take]]
        rgb, z, winner = flat_rgb.view(H, W, 3), flat_z.view(H, W), flat_w.view(H, W)
        cover = cover | take.view(H, W)
    return rgb, z, cover, winner


class RGBPointCloudMemory:
    """Full-resolution RGB point cache; ``read`` = rasterise + encode with ``encoder``.

    ``encoder`` is a codec (``encode`` (T,3,H,W) [0,1] -> (T,C,h,w), ``stride``); the Wan2.2 VAE in
    the benchmark. ``insert`` / ``read`` mirror ``LatentSpatialMemory``.
    """

    stores_pixels = True  # the rollout inserts decoded pixels, not latents

    def __init__(self, encoder, device="cpu", dedup: bool = True, dedup_tolerance: float = 0.05,
                 block_size: float = 1.0,
                 splat: str = "pixel", max_splat: int = 8, fill_iterations: int = 2, coverage_threshold: float = 0.5,
                 max_points=None, sky: bool = False, sky_fraction: float = 0.25):
        if splat not in ("pixel", "footprint"):
            raise ValueError(f"splat: expected 'pixel' or 'footprint', got {splat!r}")
        self.encoder = encoder
        self.stride = encoder.stride
        self.channels = encoder.channels
        self.splat, self.max_splat = splat, int(max_splat)
        self.fill_iterations, self.coverage_threshold = int(fill_iterations), float(coverage_threshold)
        self.cloud = LatentSpatialMemory(channels=3, stride=1, device=device, feature_dtype=torch.uint8,
                                         dedup=dedup, dedup_tolerance=dedup_tolerance, block_size=block_size,
                                         max_points=max_points, sky=sky, sky_fraction=sky_fraction)
        self.pitch = torch.empty(0, dtype=torch.float32, device=self.cloud.device)  # world metres per pixel, per point

    @property
    def device(self):
        return self.cloud.device

    @property
    def sky(self):
        """The cloud's per-pixel sky dome (``LatentSpatialMemory(sky=True)`` at stride 1), or None:
        the RGB cache gets the same sky memory as the latent one, so the comparison stays fair."""
        return self.cloud.sky

    def fork(self) -> "RGBPointCloudMemory":
        """A cache that reads as this one and takes inserts of its own, sharing the points, colours
        and pitches held now (``LatentSpatialMemory.fork``: nothing copied; what it inserts stays
        in it). For candidate trajectories, like the latent memory's fork."""
        import copy

        other = copy.copy(self)
        other.cloud = self.cloud.fork()
        return other  # ``pitch`` is shared: insert replaces it (torch.cat), never writes into it

    # -- what a backend's memory offers the node (the Spatia backend keeps its points here) ------------
    @property
    def colors(self) -> torch.Tensor:
        """(N, 3) uint8 RGB of the points."""
        return self.cloud.features

    def clear(self) -> None:
        self.cloud.clear()
        self.pitch = torch.empty(0, dtype=torch.float32, device=self.cloud.device)

    def save(self, path) -> None:
        """Points and colours (the cloud's safetensors file); the footprint pitches are not stored."""
        self.cloud.save(path)

    def load(self, path) -> None:
        """Replace the cache by a file ``save`` wrote (unchanged on any error); loaded points get no
        footprint (they render as 1-pixel splats with ``splat="footprint"``)."""
        self.cloud.load(path)
        self.pitch = torch.zeros(self.cloud.num_points, dtype=torch.float32, device=self.cloud.device)

    def stats(self) -> dict:
        return self.cloud.stats()

    @property
    def points(self) -> torch.Tensor:
        return self.cloud.points

    @property
    def num_points(self) -> int:
        return self.cloud.num_points

    @property
    def nbytes(self) -> int:
        return self.cloud.nbytes

    def insert(self, image, depth, camera: Camera, exclude=None, sky: bool = True) -> int:
        """image (H, W, 3) uint8 RGB; depth (H, W) metres (or (h, w) per latent cell, spread over its
        pixels); exclude (H, W) or (h, w) bool. Returns points added."""
        img = torch.as_tensor(np.asarray(image))
        if img.dtype != torch.uint8 or tuple(img.shape) != (camera.height, camera.width, 3):
            raise ValueError(f"image: expected ({camera.height}, {camera.width}, 3) uint8, got {tuple(img.shape)} "
                             f"{img.dtype}")
        d = torch.as_tensor(np.asarray(depth) if not isinstance(depth, torch.Tensor) else depth)
        s = self.stride
        if tuple(d.shape) == (camera.height // s, camera.width // s):  # latent-resolution depth (e.g. the memory's own)
            depth = d.repeat_interleave(s, 0).repeat_interleave(s, 1)
        if exclude is not None:
            ex = torch.as_tensor(np.asarray(exclude) if not isinstance(exclude, torch.Tensor) else exclude)
            if tuple(ex.shape) == (camera.height // s, camera.width // s):
                exclude = ex.repeat_interleave(s, 0).repeat_interleave(s, 1)
        n0 = self.cloud.num_points
        added = self.cloud.insert(img.permute(2, 0, 1).float(), depth, camera, exclude=exclude, sky=sky)
        new = self.cloud.points[n0:]
        E = camera.world_to_camera.to(new.device, torch.float32)
        z = new @ E[2, :3] + E[2, 3]  # depth in the source camera
        f = 0.5 * float(camera.K[0, 0] + camera.K[1, 1])
        self.pitch = torch.cat([self.pitch, (z / f).float()])
        return added

    def render(self, camera: Camera):
        """Rasterise at full resolution: rgb (H, W, 3) uint8, coverage (H, W) bool, depth (H, W)."""
        if self.splat == "footprint":
            return self._render_footprint(camera)
        r = self.cloud.read(camera, dtype=None)
        return r.latent.permute(1, 2, 0), r.mask, r.depth

    def read(self, camera: Camera, dtype=None) -> Readout:
        """The conditioning an RGB-cache pipeline gets: encode(render) as a ``Readout`` (latent (C, h, w),
        mask (h, w), depth (h, w) the nearest rendered depth per cell, index (H, W) the winning cloud
        point of every pixel). ``dtype`` is accepted for interface parity with the latent memory; the
        latent is the encoder's float32."""
        rgb, coverage, depth, index = self._render(camera)
        latent = self.encoder.encode(rgb.permute(2, 0, 1)[None].float().div(255.0))[0]
        if self.splat == "footprint":
            frac = F.avg_pool2d(coverage[None, None].float(), self.stride)[0, 0]
            mask = frac >= self.coverage_threshold
        else:
            mask = downsample_mask(coverage, self.stride)
        zcell = -F.max_pool2d(-depth[None, None].float(), self.stride)[0, 0]
        return Readout(latent * mask, mask, zcell, index)

    def _render(self, camera: Camera):
        if self.splat == "footprint":
            return self._render_footprint(camera, with_index=True)
        r = self.cloud.read(camera, dtype=None)
        return r.latent.permute(1, 2, 0), r.mask, r.depth, r.index

    def _candidates(self, P: torch.Tensor, H: int, W: int):
        """Storage indices of the points that may splat into the image (None: all): index blocks in
        the frustum widened by ``max_splat`` pixels on every side, plus the unindexed tail."""
        ix, n = self.cloud.index, self.cloud.num_points
        if ix.num_blocks == 0:
            return None
        m = float(self.max_splat)
        # pixel (u, v) -> (u+m, v+m)
        shift = torch.tensor([[1.0, 0.0, m], [0.0, 1.0, m], [0.0, 0.0, 1.0]], device=P.device)
        vis, _, _ = ix.frustum(shift @ P, H + 2 * self.max_splat, W + 2 * self.max_splat)
        ids = ix.gather(vis.nonzero().squeeze(1))
        if ix.n_indexed < n:
            ids = torch.cat([ids, torch.arange(ix.n_indexed, n, device=ids.device)])
        return ids

    def _render_footprint(self, camera: Camera, with_index: bool = False):
        """Hole-aware rasterisation (see module docstring)."""
        H, W = camera.height, camera.width
        pts, dev = self.cloud.points, self.cloud.device
        best = torch.full((H * W + 1,), _INT64_MAX, dtype=torch.int64, device=dev)
        if pts.shape[0]:
            P = (camera.K @ camera.world_to_camera[:3]).to(dev, torch.float32)
            cand = self._candidates(P, H, W)
            q = (pts if cand is None else pts[cand]) @ P[:, :3].T + P[:, 3]
            z = q[:, 2]
            ok = z > 1e-6
            sel = ok.nonzero().squeeze(1)
            z = z[sel]
            u, v = q[sel, 0] / z, q[sel, 1] / z
            idx = sel if cand is None else cand[sel]
            f = 0.5 * float(camera.K[0, 0] + camera.K[1, 1])
            size = torch.ceil(self.pitch[idx] * f / z).clamp_(1, self.max_splat).long()
            inside = (u > -self.max_splat) & (u < W + self.max_splat) & (v > -self.max_splat) & (v < H + self.max_splat)
            idx, z, u, v, size = idx[inside], z[inside], u[inside], v[inside], size[inside]
            keys = (z.contiguous().view(torch.int32).long() << 32) | idx
            for s in torch.unique(size).tolist():
                sel = size == s
                left = torch.floor(u[sel] - (s - 1) / 2).long()
                top = torch.floor(v[sel] - (s - 1) / 2).long()
                k = keys[sel]
                off = torch.arange(s, device=dev)
                px = (left[:, None, None] + off[None, None, :]).expand(-1, s, s).reshape(-1)
                py = (top[:, None, None] + off[None, :, None]).expand(-1, s, s).reshape(-1)
                kk = k[:, None].expand(-1, s * s).reshape(-1)
                good = (px >= 0) & (px < W) & (py >= 0) & (py < H)
                cell = torch.where(good, py * W + px, torch.full_like(px, H * W))
                best.scatter_reduce_(0, cell, kk, reduce="amin")
        best = best[: H * W]
        filled = best != _INT64_MAX
        winner = torch.where(filled, best & _LOW32, torch.full_like(best, -1))
        zbest = torch.where(filled, (best >> 32).to(torch.int32).view(torch.float32),
                            torch.full_like(best, float("inf"), dtype=torch.float32))
        rgb = torch.zeros(H * W, 3, dtype=torch.uint8, device=dev)
        rgb[filled] = self.cloud.features[winner[filled]]
        rgb, zimg, cover = rgb.view(H, W, 3), zbest.view(H, W), filled.view(H, W)
        dome = self.cloud.sky
        if dome is not None and len(dome) and not bool(cover.all()):
            # behind every point; before the pinhole fill, so that a silhouette against the sky is not
            # dilated by the fill (its z stays +inf, so the fill never copies from it either)
            j = dome.lookup(camera, 1).view(H, W)
            fill = ~cover & (j >= 0)
            rgb[fill] = dome.features[j[fill]]
            cover = cover | fill
        rgb, zimg, cover, winner = _fill_holes(rgb, zimg, cover, winner.view(H, W), self.fill_iterations)
        if with_index:
            return rgb, cover, zimg, winner
        return rgb, cover, zimg
