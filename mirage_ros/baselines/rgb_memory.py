"""The RGB point-cloud cache Mirage is measured against (Gen3C / Spatia style).

Stores one coloured point per valid pixel at full resolution (float32 xyz + uint8 RGB). To
condition a view it rasterises the cloud at full resolution with a z-buffer and encodes the
image with the VAE: the pixel-space round trip the paper removes.

It is kept honest: it shares the latent memory's machinery (the same exact z-buffer by
(z, index) keys, the same block index with frustum and occlusion culling, the same
de-duplication policy), so the measured gap is the round trip itself, not a weaker rasteriser.
Points are 1-pixel splats (no soft splatting), the cheapest rasteriser there is.
"""
from __future__ import annotations

import numpy as np
import torch

from ..geometry import Camera
from ..memory import LatentSpatialMemory
from ..memory.downsample import downsample_mask

__all__ = ["RGBPointCloudMemory"]


class RGBPointCloudMemory:
    """Full-resolution RGB point cache; ``read`` = rasterise + encode with ``encoder``.

    ``encoder`` is a codec (``encode`` (T,3,H,W) [0,1] -> (T,C,h,w), ``stride``); the Wan2.2 VAE in
    the benchmark. ``insert`` / ``read`` mirror ``LatentSpatialMemory``.
    """

    def __init__(self, encoder, device="cpu", dedup: bool = True, dedup_tolerance: float = 0.05, block_size: float = 1.0):
        self.encoder = encoder
        self.stride = encoder.stride
        self.cloud = LatentSpatialMemory(channels=3, stride=1, device=device, feature_dtype=torch.uint8,
                                         dedup=dedup, dedup_tolerance=dedup_tolerance, block_size=block_size)

    @property
    def num_points(self) -> int:
        return self.cloud.num_points

    @property
    def nbytes(self) -> int:
        return self.cloud.nbytes

    def insert(self, image, depth, camera: Camera, exclude=None) -> int:
        """image (H, W, 3) uint8 RGB; depth (H, W) metres; exclude (H, W) bool. Returns points added."""
        img = torch.as_tensor(np.asarray(image))
        if img.dtype != torch.uint8 or tuple(img.shape) != (camera.height, camera.width, 3):
            raise ValueError(f"image: expected ({camera.height}, {camera.width}, 3) uint8, got {tuple(img.shape)} {img.dtype}")
        return self.cloud.insert(img.permute(2, 0, 1).float(), depth, camera, exclude=exclude)

    def render(self, camera: Camera):
        """Rasterise at full resolution: rgb (H, W, 3) uint8, coverage (H, W) bool, depth (H, W)."""
        r = self.cloud.read(camera, dtype=None)
        return r.latent.permute(1, 2, 0), r.mask, r.depth

    def read(self, camera: Camera):
        """The conditioning an RGB-cache pipeline gets: (latent (C, h, w), mask (h, w)) = encode(render)."""
        rgb, coverage, _ = self.render(camera)
        latent = self.encoder.encode(rgb.permute(2, 0, 1)[None].float().div(255.0))[0]
        return latent, downsample_mask(coverage, self.stride)
