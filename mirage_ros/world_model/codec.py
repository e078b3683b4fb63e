"""Codecs: images <-> latents with the Wan2.2 latent geometry (48 channels, spatial stride 16).

The codecs share one interface (and a registry by name, ``load_codec``) so that the memory, the
demo and the node never care which one is loaded:

- ``WanVAECodec``: the real Wan2.2 ``AutoencoderKLWan`` (diffusers) with the TI2V-5B config,
  from a local weights folder or with random weights for benchmarks; latents are normalised with
  the VAE's ``latents_mean`` / ``latents_std`` as the Wan pipelines do.
- ``ThumbnailCodec``: an analytic stand-in with the same geometry: each 16x16 cell becomes a
  4x4 RGB thumbnail (4*4*3 = 48 channels) by area-downsampling; decoding upsamples. It needs no
  weights and loses only detail finer than 4 pixels, so demos and tests can check readouts
  against ground truth.
- ``LinearBlockCodec``: block PCA. Each 16x16x3 pixel block is projected on the 48 principal
  components fitted to training frames (an orthonormal basis, one global scale), so latent-space
  squared error is pixel-space squared error over the scale squared. The small shipped world model
  uses it: it is the best linear 48-channel code of its training distribution.
- ``RefinedBlockCodec`` (``refined_codec``): the same encoder with a learned decoder that removes
  the block seams (the shipped model's codec).

Layouts: images (T, 3, H, W) float in [0, 1]; latents (T, C, h, w); one latent per image
("image mode"). Video mode (``encode_video`` / ``decode_video``, what the world model generates
in): the Wan2.2 VAE compresses time by ``temporal_stride`` = 4 (first frame alone); image codecs
have ``temporal_stride`` = 1 and code each frame alone (the stride-1 wrapper in ``Codec``).

Every codec saves and loads itself (``save_pretrained`` / ``load_codec``): a folder with a
``config.json`` naming the codec, plus its tensors in safetensors.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Codec", "ThumbnailCodec", "LinearBlockCodec", "WanVAECodec", "WAN22_VAE_CONFIG", "CodecError", "make_codec",
           "load_codec", "images_to_tensor", "tensor_to_images"]

CODEC_CONFIG = "config.json"


MEAN_RGB_ROWS = 65536  # feature rows converted to float32 at a time by ``mean_rgb``


def pca_colors(features: torch.Tensor, max_fit: int = 20000) -> torch.Tensor:
    """Colour (N, 3) in [0, 1] from the top three principal components of (N, C) features.

    Fitted on a deterministic subsample; each component is mapped through its 2-98 % range.
    """
    step = max(1, features.shape[0] // max_fit)
    sample = features[::step].float()
    mean = sample.mean(0, keepdim=True)
    _, _, V = torch.linalg.svd(sample - mean, full_matrices=False)
    comps = V[:3].T
    signs = torch.sign(comps.sum(0, keepdim=True)).clamp(min=0) * 2 - 1  # deterministic sign
    ps = (sample - mean) @ (comps * signs)
    lo = torch.quantile(ps, 0.02, dim=0)
    hi = torch.quantile(ps, 0.98, dim=0)
    out = torch.empty((features.shape[0], 3), dtype=torch.float32, device=features.device)
    for a in range(0, features.shape[0], MEAN_RGB_ROWS):  # no N x C float32 copy of the memory
        proj = (features[a:a + MEAN_RGB_ROWS].float() - mean) @ (comps * signs)
        out[a:a + proj.shape[0]] = ((proj - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
    return out


class CodecError(ValueError):
    """A codec folder or file is missing, corrupt or does not fit: names the file."""

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
    """Interface: ``encode`` (T,3,H,W) [0,1] -> (T,C,h,w); ``decode`` back; ``stride``, ``channels``,
    ``temporal_stride``; video mode ``encode_video`` / ``decode_video``; ``mean_rgb`` of features.

    The base class is the temporal stride-1 wrapper: an image codec gives one latent per frame in
    video mode, so a world model generates one latent per RGB frame.
    """

    name: str = "codec"
    stride: int = 16
    channels: int = 48
    temporal_stride: int = 1
    generative: bool = False

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, 3, H, W) -> (F, C, h, w): one latent per frame (temporal stride 1)."""
        return self.encode(frames)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """(T, C, h, w) -> (T, 3, H, W): one frame per latent (temporal stride 1)."""
        return self.decode(latents)

    def video_frames(self, num_latents: int) -> int:
        """RGB frames that ``num_latents`` latents stand for in video mode."""
        return 1 + self.temporal_stride * (num_latents - 1)

    def mean_rgb(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) latent feature vectors -> (N, 3) mean colour in [0, 1] of the cells they decode to
        (decoded ``MEAN_RGB_ROWS`` at a time: a 3M-point memory never becomes one N x 3 x s x s array)."""
        out = torch.empty((features.shape[0], 3), dtype=torch.float32, device=features.device)
        for a in range(0, features.shape[0], MEAN_RGB_ROWS):
            f = features[a:a + MEAN_RGB_ROWS].float()
            out[a:a + f.shape[0]] = self.decode(f.view(f.shape[0], self.channels, 1, 1)).mean(dim=(2, 3))
        return out

    def point_colors(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) memory features -> (N, 3) display colours in [0, 1] for point clouds: the mean
        colour a cell decodes to (``mean_rgb``); codecs whose cells do not decode alone override it."""
        return self.mean_rgb(features)

    def config(self) -> dict:
        """What ``make_codec`` / ``load_codec`` need to rebuild this codec (JSON-serialisable)."""
        return {"codec": self.name, "stride": self.stride, "channels": self.channels}

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path]) -> "Codec":  # pragma: no cover - interface
        raise NotImplementedError

    def save_pretrained(self, folder: Union[str, Path]) -> Path:
        """Write ``config.json`` (and tensors, where the codec has any) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CODEC_CONFIG).write_text(json.dumps(self.config(), indent=2) + "\n")
        return folder

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

    def mean_rgb(self, features: torch.Tensor) -> torch.Tensor:
        """Mean colour (N, 3) in [0, 1] of latent feature vectors (N, 48) (for point clouds), in row
        blocks (no N x 48 float32 copy of a bfloat16 memory)."""
        out = torch.empty((features.shape[0], 3), dtype=torch.float32, device=features.device)
        for a in range(0, features.shape[0], MEAN_RGB_ROWS):
            f = features[a:a + MEAN_RGB_ROWS].float().view(-1, 3, self.thumb * self.thumb)
            out[a:a + f.shape[0]] = f.mean(-1).add_(1.0).mul_(0.5)
        return out.clamp_(0, 1)

    def config(self) -> dict:
        return {"codec": self.name, "stride": self.stride, "thumb": self.thumb, "upsample": self.upsample}

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path]) -> "ThumbnailCodec":
        """What ``save_pretrained`` wrote (a ``config.json``; the codec has no tensors)."""
        cfg = _read_codec_config(Path(folder))
        try:
            return cls(**{k: cfg[k] for k in ("stride", "thumb", "upsample") if k in cfg})
        except (TypeError, ValueError) as exc:
            raise CodecError(f"codec: {Path(folder) / CODEC_CONFIG}: {exc}") from None


class LinearBlockCodec(Codec):
    """Block PCA codec: z = B (x - mu) / scale per s x s x 3 block; decode x = B^T z scale + mu.

    ``basis`` (C, 3*s*s) has orthonormal rows (principal directions, largest variance first);
    ``mean`` (3*s*s,) is the mean block; ``scale`` one scalar that gives the latents unit mean
    variance. A block's pixel index is colour * s*s + dy * s + dx (``pixel_unshuffle`` order).
    Encode and decode are one strided convolution each. ``LinearBlockCodec.fit(frames)`` fits it.
    """

    name = "linear-block"

    def __init__(self, basis: torch.Tensor, mean: torch.Tensor, scale: float, stride: int = 16):
        basis, mean = torch.as_tensor(basis, dtype=torch.float32), torch.as_tensor(mean, dtype=torch.float32)
        d = 3 * stride * stride
        if basis.ndim != 2 or basis.shape[1] != d or basis.shape[0] > d or basis.shape[0] < 1:
            raise CodecError(f"basis: expected (C, {d}) with 1 <= C <= {d} for stride {stride}, got "
                             f"{tuple(basis.shape)}")
        if tuple(mean.shape) != (d,):
            raise CodecError(f"mean: expected ({d},), got {tuple(mean.shape)}")
        if not (torch.isfinite(basis).all() and torch.isfinite(mean).all()):
            raise CodecError("basis / mean: contain NaN or inf")
        gram = basis @ basis.T
        if not torch.allclose(gram, torch.eye(basis.shape[0]), atol=1e-3):
            raise CodecError("basis: rows are not orthonormal")
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise CodecError(f"scale: expected a positive finite number, got {scale!r}")
        self.stride, self.channels, self.scale = int(stride), int(basis.shape[0]), float(scale)
        self.basis, self.mean = basis.contiguous(), mean.contiguous()
        s = self.stride
        self._kernel = self.basis.view(self.channels, 3, s, s) / self.scale  # encode: conv; decode: its transpose
        self._bias = (self.basis @ self.mean) / self.scale
        self._mean_img = self.mean.view(1, 3 * s * s, 1, 1)

    @classmethod
    def fit(cls, images: torch.Tensor, channels: int = 48, stride: int = 16, max_blocks: int = 200_000,
            seed: int = 0) -> "LinearBlockCodec":
        """Fit to (N, 3, H, W) frames in [0, 1]: PCA of their s x s blocks (SVD, float64)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise CodecError(f"images: expected (N, 3, H, W), got {tuple(images.shape)}")
        blocks = F.pixel_unshuffle(images.float(), stride).permute(0, 2, 3, 1).reshape(-1, 3 * stride * stride)
        if blocks.shape[0] > max_blocks:
            g = torch.Generator().manual_seed(seed)
            blocks = blocks[torch.randperm(blocks.shape[0], generator=g)[:max_blocks]]
        if blocks.shape[0] < channels:
            raise CodecError(f"images: {blocks.shape[0]} blocks cannot fit {channels} components")
        x = blocks.double()
        mean = x.mean(0)
        _, S, V = torch.linalg.svd(x - mean, full_matrices=False)
        basis = V[:channels]
        basis = basis * torch.sign(basis.sum(1, keepdim=True) + 1e-12)  # deterministic signs
        var = S[:channels] ** 2 / max(1, x.shape[0] - 1)
        scale = float(var.mean().sqrt())
        return cls(basis.float(), mean.float(), scale, stride)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        k = self._kernel.to(images.device)
        return F.conv2d(images.float(), k, stride=self.stride) - self._bias.to(images.device).view(1, -1, 1, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        z = latents.float()
        blocks = torch.einsum("tchw,cd->tdhw", z, self.basis.to(z.device)) * self.scale + self._mean_img.to(z.device)
        return F.pixel_shuffle(blocks, self.stride).clamp_(0, 1)

    def cell_patches(self, features: torch.Tensor) -> torch.Tensor:
        """(K, C) cell latents -> (K, 3, s, s): each cell's block decoded alone (the linear decode;
        a block codec's cell needs no neighbours), unclamped. For the aligned decode."""
        z = features.float()
        blocks = z @ self.basis.to(z.device) * self.scale + self._mean_img.to(z.device).reshape(1, -1)
        return blocks.view(-1, 3, self.stride, self.stride)

    def mean_rgb(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, 3): the block mean of the (unclamped) decode, then clamped. The decode is
        linear in the latent, so its mean per colour is too: f @ (basis's per-block mean per
        channel) * scale + the mean block's mean, (C, 3) once. Never N x 3 s^2 (a 1M-point memory
        made a 6.2 GiB N x 768 array of it and held the memory lock 20 s)."""
        s2 = self.stride * self.stride
        dev = features.device
        basis_mean = self.basis.view(self.channels, 3, s2).mean(-1).to(dev)  # (C, 3)
        offset = self.mean.view(3, s2).mean(-1).to(dev)  # (3,)
        out = torch.empty((features.shape[0], 3), dtype=torch.float32, device=dev)
        for a in range(0, features.shape[0], MEAN_RGB_ROWS):
            f = features[a:a + MEAN_RGB_ROWS].float()
            out[a:a + f.shape[0]] = torch.addmm(offset, f, basis_mean, alpha=self.scale)
        return out.clamp_(0, 1)

    def config(self) -> dict:
        return {"codec": self.name, "stride": self.stride, "channels": self.channels, "scale": self.scale}

    def save_pretrained(self, folder: Union[str, Path]) -> Path:
        from safetensors.torch import save_file

        folder = super().save_pretrained(folder)
        save_file({"basis": self.basis, "mean": self.mean}, str(folder / "codec.safetensors"),
                  metadata={"format": "pt", "codec": self.name})
        return folder

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path]) -> "LinearBlockCodec":
        folder = Path(folder)
        cfg = _read_codec_config(folder)
        path = folder / "codec.safetensors"
        sd = read_safetensors(path)
        missing = {"basis", "mean"} - set(sd)
        if missing:
            raise CodecError(f"codec: {path} lacks tensors {sorted(missing)}")
        try:
            codec = cls(sd["basis"], sd["mean"], float(cfg["scale"]), int(cfg.get("stride", 16)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"codec: {folder}: {exc}") from None
        if "channels" in cfg and int(cfg["channels"]) != codec.channels:
            raise CodecError(f"codec: {folder}: config says {cfg['channels']} channels, the basis has {codec.channels}")
        return codec


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
    def from_pretrained(cls, folder: Union[str, Path], device=None, dtype=torch.float32,
                        tiling: bool = False) -> "WanVAECodec":
        from diffusers import AutoencoderKLWan

        folder = Path(folder)
        if (folder / "vae").is_dir():
            folder = folder / "vae"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"weights folder: {folder} has no config.json (expected a diffusers-layout Wan2.2 "
                                    f"VAE folder)")
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

    @property
    def home(self) -> torch.device:
        """Where the VAE is now (offloading moves it; ``device`` is where it is asked to run)."""
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(1 + 4(T-1), 3, H, W) RGB in [0, 1] -> (T, C, h, w) normalised latents (posterior mean)."""
        self._check_images(frames)
        x = frames.to(self.home, self.dtype).mul(2.0).sub(1.0).permute(1, 0, 2, 3)[None]
        mu = self.vae.encode(x).latent_dist.mean[0].permute(1, 0, 2, 3)  # (T, C, h, w)
        return self.normalize(mu)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """(T, C, h, w) normalised latents -> (1 + 4(T-1), 3, H, W) float RGB in [0, 1]."""
        self._check_latents(latents)
        z = self.denormalize(latents.to(self.home)).permute(1, 0, 2, 3)[None]  # (1, C, T, h, w)
        x = self.vae.decode(z.to(self.dtype)).sample[0]  # (3, F, H, W) in [-1, 1]
        return x.float().permute(1, 0, 2, 3).add(1.0).mul(0.5).clamp(0, 1)

    def point_colors(self, features: torch.Tensor) -> torch.Tensor:
        """A VAE cell does not decode alone: colours from the features' top three principal components."""
        return pca_colors(features)

    def config(self) -> dict:
        return {"codec": self.name, "stride": self.stride, "channels": self.channels,
                "temporal_stride": self.temporal_stride}

    def save_pretrained(self, folder: Union[str, Path]) -> Path:
        """A diffusers-layout VAE folder (``AutoencoderKLWan.save_pretrained``)."""
        folder = Path(folder)
        self.vae.save_pretrained(str(folder), safe_serialization=True)
        return folder


def read_safetensors(path: Path) -> dict:
    """A codec weight file's tensors; a missing or unreadable file is a ``CodecError`` naming it."""
    from ..util import load_safetensors

    return load_safetensors(path, CodecError, "codec")


def _read_codec_config(folder: Path) -> dict:
    path = Path(folder) / CODEC_CONFIG
    if not path.is_file():
        raise CodecError(f"codec: {path} is missing" + (f" ({folder} is not a "
                                                        f"folder)" if not Path(folder).is_dir() else ""))
    try:
        cfg = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"codec: {path} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise CodecError(f"codec: {path} must hold a JSON object")
    from .checkpoints import CheckpointError
    from .config_check import check_config

    try:
        check_config("codec", cfg, path)  # every field in range, before anything is built
    except CheckpointError as exc:
        raise CodecError(str(exc)) from None
    return cfg


def _codec_classes() -> dict:
    """The codec registry: ``config.json`` "codec" name -> class (each owns ``from_pretrained``)."""
    from .refined_codec import RefinedBlockCodec

    return {c.name: c for c in (ThumbnailCodec, LinearBlockCodec, RefinedBlockCodec, WanVAECodec)}


def load_codec(folder: Union[str, Path], device=None, dtype=torch.float32) -> Codec:
    """Rebuild the codec saved in ``folder`` (``config.json`` names it; a diffusers ``AutoencoderKLWan``
    folder is the Wan2.2 VAE)."""
    folder = Path(folder)
    cfg = _read_codec_config(folder)
    name = cfg.get("codec") or ("wan2.2-vae" if cfg.get("_class_name") == "AutoencoderKLWan" else None)
    classes = _codec_classes()
    if name not in classes:
        raise CodecError(f"codec: {folder / CODEC_CONFIG} names an unknown codec {name!r} "
                         f"(expected one of {', '.join(sorted(classes))})")
    if name == WanVAECodec.name:
        return WanVAECodec.from_pretrained(folder, device=device, dtype=dtype)
    return classes[name].from_pretrained(folder)


def make_codec(name: str = "thumbnail", weights: Optional[str] = None, device=None, **kwargs) -> Codec:
    """Build a codec by name: ``thumbnail`` | ``linear-block`` (needs ``weights``: a codec folder) |
    ``wan`` (needs ``weights``) | ``wan-random`` | ``wan-tiny``; or ``folder`` = any saved codec."""
    if name == "thumbnail":
        return ThumbnailCodec(**kwargs)
    if name in (LinearBlockCodec.name, "folder"):
        if not weights:
            raise ValueError(f"weights: the {name!r} codec needs a codec folder")
        return load_codec(weights, device=device)
    if name == "wan":
        if not weights:
            raise ValueError("weights: the 'wan' codec needs a local Wan2.2 VAE folder")
        return WanVAECodec.from_pretrained(weights, device=device, **kwargs)
    if name == "wan-random":
        return WanVAECodec.random(device=device, **kwargs)
    if name == "wan-tiny":
        return WanVAECodec.random(device=device, base_dim=8, decoder_base_dim=8, num_res_blocks=1, **kwargs)
    raise ValueError(f"codec: unknown name {name!r} (expected thumbnail, wan, wan-random or wan-tiny)")
