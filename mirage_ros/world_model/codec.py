"""Codecs: images <-> latents with the Wan2.2 latent geometry (48 channels, spatial stride 16).

Two codecs share one interface so that the memory, the demo and the node never care which one
is loaded:

- ``WanVAECodec``: the real Wan2.2 ``AutoencoderKLWan`` (diffusers) with the TI2V-5B config,
  from a local weights folder or with random weights for benchmarks; latents are normalised with
  the VAE's ``latents_mean`` / ``latents_std`` as the Wan pipelines do.
- ``ThumbnailCodec``: an analytic stand-in with the same geometry: each 16x16 cell becomes a
  4x4 RGB thumbnail (4*4*3 = 48 channels) by area-downsampling; decoding upsamples. It needs no
  weights and loses only detail finer than 4 pixels, so demos and tests can check readouts
  against ground truth.

Layouts: images (T, 3, H, W) float in [0, 1]; latents (T, C, h, w); one latent per image
("image mode"). Video-mode encoding (4 frames -> 1 latent) is the world model's business.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Codec", "ThumbnailCodec", "WanVAECodec", "WAN22_VAE_CONFIG", "make_codec", "images_to_tensor", "tensor_to_images"]

WAN22_VAE_CONFIG = Path(__file__).resolve().parent.parent / "data" / "wan22_vae_config.json"


def images_to_tensor(images: np.ndarray, device=None) -> torch.Tensor:
    """(T, H, W, 3) or (H, W, 3) uint8 RGB -> (T, 3, H, W) float32 in [0, 1]."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"images: expected (T, H, W, 3) or (H, W, 3) RGB, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"images: expected uint8, got {a.dtype}")
    return torch.from_numpy(a).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] -> (T, H, W, 3) uint8."""
    return (x.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Codec:
    """Interface: ``encode`` (T,3,H,W) [0,1] -> (T,C,h,w); ``decode`` back; ``stride``, ``channels``."""

    name: str = "codec"
    stride: int = 16
    channels: int = 48
    generative: bool = False

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected (T, 3, H, W), got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(f"images: size {H}x{W} is not divisible by the codec stride {self.stride}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ValueError(f"latents: expected (T, {self.channels}, h, w), got {tuple(latents.shape)}")


class ThumbnailCodec(Codec):
    """Analytic codec: a 4x4 RGB thumbnail per s x s cell (48 channels at s=16).

    encode: area-downsample by s/4, then pixel-unshuffle 4x4 blocks into channels, and map
    [0, 1] to [-1, 1]. Channel c = colour * 16 + dy * 4 + dx. decode: the exact inverse of the
    unshuffle followed by an upsample (``upsample="bilinear"`` or ``"nearest"``).
    """

    name = "thumbnail"

    def __init__(self, stride: int = 16, thumb: int = 4, upsample: str = "bilinear"):
        if stride % thumb:
            raise ValueError(f"thumb: {thumb} must divide the stride {stride}")
        if upsample not in ("bilinear", "nearest"):
            raise ValueError(f"upsample: expected 'bilinear' or 'nearest', got {upsample!r}")
        self.stride, self.thumb, self.upsample = stride, thumb, upsample
        self.channels = 3 * thumb * thumb

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        small = F.avg_pool2d(images.float(), self.stride // self.thumb)
        return F.pixel_unshuffle(small, self.thumb).mul_(2.0).sub_(1.0)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        small = F.pixel_shuffle(latents.float().add(1.0).mul_(0.5), self.thumb)
        scale = self.stride // self.thumb
        if self.upsample == "nearest":
            out = F.interpolate(small, scale_factor=scale, mode="nearest")
        else:
            out = F.interpolate(small, scale_factor=scale, mode="bilinear", align_corners=False)
        return out.clamp_(0, 1)

    def thumbnail_rgb(self, features: torch.Tensor) -> torch.Tensor:
        """Mean colour (N, 3) in [0, 1] of latent feature vectors (N, 48) (for point clouds)."""
        f = features.float().add(1.0).mul_(0.5).view(-1, 3, self.thumb * self.thumb)
        return f.mean(-1).clamp_(0, 1)


class WanVAECodec(Codec):
    """The Wan2.2 VAE (``AutoencoderKLWan``) in image mode, with latent normalisation.

    ``WanVAECodec.from_pretrained(folder)`` loads a diffusers-layout folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``, e.g. ``Wan2.2-TI2V-5B-Diffusers/vae``);
    ``WanVAECodec.random(**overrides)`` builds the same architecture with random weights (use
    ``base_dim=8, decoder_base_dim=8, num_res_blocks=1`` for a tiny twin in tests).
    Normalised latent = (mu - latents_mean) / latents_std; encode returns the posterior mean.
    """

    name = "wan2.2-vae"

    def __init__(self, vae, device=None, dtype: torch.dtype = torch.float32, tiling: bool = False):
        if next(vae.parameters()).dtype != dtype:
            vae = vae.to(dtype=dtype)  # only cast when needed: diffusers warns on every .to(dtype=...)
        self.vae = vae.to(device=device).eval()
        self.device = torch.device(device) if device is not None else next(vae.parameters()).device
        self.dtype = dtype
        cfg = vae.config
        self.stride = int(cfg.scale_factor_spatial)
        self.temporal_stride = int(cfg.scale_factor_temporal)
        self.channels = int(cfg.z_dim)
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1)
        if tiling:
            self.vae.enable_tiling()

    @staticmethod
    def default_config() -> dict:
        return json.loads(WAN22_VAE_CONFIG.read_text())

    @classmethod
    def random(cls, seed: int = 0, device=None, dtype=torch.float32, **overrides) -> "WanVAECodec":
        from diffusers import AutoencoderKLWan

        cfg = cls.default_config()
        cfg.update(overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**cfg)
        return cls(vae, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], device=None, dtype=torch.float32, tiling: bool = False) -> "WanVAECodec":
        from diffusers import AutoencoderKLWan

        folder = Path(folder)
        if (folder / "vae").is_dir():
            folder = folder / "vae"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"weights folder: {folder} has no config.json (expected a diffusers-layout Wan2.2 VAE folder)")
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"weights folder: {folder} has no *.safetensors weights")
        vae = AutoencoderKLWan.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=True)
        return cls(vae, device=device, dtype=dtype, tiling=tiling)

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        return (mu.float() - self._mean.to(mu.device)) / self._std.to(mu.device)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self._std.to(z.device) + self._mean.to(z.device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        x = images.to(self.device, self.dtype).mul(2.0).sub(1.0).unsqueeze(2)  # (T, 3, 1, H, W) in [-1, 1]
        mu = self.vae.encode(x).latent_dist.mean[:, :, 0]  # (T, C, h, w)
        return self.normalize(mu)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        z = self.denormalize(latents.to(self.device)).to(self.dtype).unsqueeze(2)
        x = self.vae.decode(z).sample[:, :, 0]
        return x.float().add(1.0).mul(0.5).clamp(0, 1)


def make_codec(name: str = "thumbnail", weights: Optional[str] = None, device=None, **kwargs) -> Codec:
    """Build a codec by name: ``thumbnail`` | ``wan`` (needs ``weights``) | ``wan-random`` | ``wan-tiny``."""
    if name == "thumbnail":
        return ThumbnailCodec(**kwargs)
    if name == "wan":
        if not weights:
            raise ValueError("weights: the 'wan' codec needs a local Wan2.2 VAE folder")
        return WanVAECodec.from_pretrained(weights, device=device, **kwargs)
    if name == "wan-random":
        return WanVAECodec.random(device=device, **kwargs)
    if name == "wan-tiny":
        return WanVAECodec.random(device=device, base_dim=8, decoder_base_dim=8, num_res_blocks=1, **kwargs)
    raise ValueError(f"codec: unknown name {name!r} (expected thumbnail, wan, wan-random or wan-tiny)")
