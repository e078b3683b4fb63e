"""Depth providers: frames + cameras -> metric z-depth and a confidence, one interface.

``provider.estimate(frames (T, H, W, 3) uint8 RGB, cameras [Camera] * T, memory=None)``
returns ``(depth, confidence)``, both float32 tensors (T, H, W) or (T, h, w); invalid depth is NaN
and never lifted into the memory.

- ``da3``: Depth Anything 3 (``DepthAnything3Net``) from a local weights folder (or random
  weights for tests / benchmarks), any preset; known intrinsics and extrinsics are passed to the
  model; frames are resized to multiples of 14 and the depth resized back.
- ``simulator``: depth images from the simulation stack (32FC1 metres or 16UC1 millimetres)
  through a callable ``source(camera, index) -> depth image``; 0 / NaN / inf are invalid.
- ``memory``: the per-cell depth of the memory's own readout (latent resolution); cells without a
  point are invalid. Needs no model, so generated frames can update the memory anyway.

``make_depth_provider(name, align=None|"scale"|"scale_shift", **cfg)`` wraps a provider in
``AlignedDepth`` when asked, which aligns each prediction to the memory's readout depth before it
is returned (see ``align.py``).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Camera
from .align import AlignResult, align_depth

__all__ = [
    "DepthProvider", "DA3Depth", "SimulatorDepth", "MemoryDepth", "AlignedDepth",
    "decode_depth_image", "make_depth_provider", "DEPTH_PROVIDERS",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_depth_image(data: np.ndarray, encoding: str) -> np.ndarray:
    """A simulator depth image -> (H, W) float32 metres with NaN where invalid.

    ``32FC1``: metres; ``16UC1``: millimetres (0 = no return). 0, negative, NaN and inf are invalid.
    """
    a = np.asarray(data)
    if a.ndim != 2:
        raise ValueError(f"depth: expected a single-channel (H, W) image, got shape {a.shape}")
    if encoding == "32FC1":
        if a.dtype != np.float32:
            raise ValueError(f"depth: encoding 32FC1 needs float32 data, got {a.dtype}")
        d = a.astype(np.float32, copy=True)
    elif encoding == "16UC1":
        if a.dtype != np.uint16:
            raise ValueError(f"depth: encoding 16UC1 needs uint16 data, got {a.dtype}")
        d = a.astype(np.float32) * 1e-3
    else:
        raise ValueError(f"encoding: unsupported depth encoding {encoding!r} (expected 32FC1 or 16UC1)")
    d[~np.isfinite(d) | (d <= 0)] = np.nan
    return d


class DepthProvider:
    """Interface; ``name`` and ``device`` identify it in benchmarks and logs."""

    name = "depth"
    metric = True

    def estimate(self, frames, cameras: Sequence[Camera], memory=None):  # pragma: no cover - interface
        raise NotImplementedError

    @staticmethod
    def _check(frames, cameras):
        a = np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"frames: expected (T, H, W, 3) RGB, got shape {tuple(a.shape)}")
        if len(cameras) != a.shape[0]:
            raise ValueError(f"cameras: {len(cameras)} cameras for {a.shape[0]} frames")
        for c in cameras:
            if (c.height, c.width) != tuple(a.shape[1:3]):
                raise ValueError(f"cameras: camera size {c.height}x{c.width} does not match frames {tuple(a.shape[1:3])}")


class SimulatorDepth(DepthProvider):
    """Depth from the simulation stack: ``source(camera, index) -> (image, encoding)`` or a float
    (H, W) array in metres. Exact where the simulator is; confidence 1 on valid pixels."""

    name = "simulator"

    def __init__(self, source: Callable, encoding: str = "32FC1"):
        self.source, self.encoding = source, encoding

    def estimate(self, frames, cameras, memory=None):
        self._check(frames, cameras)
        out = []
        for i, cam in enumerate(cameras):
            got = self.source(cam, i)
            img, enc = got if isinstance(got, tuple) else (got, self.encoding)
            out.append(torch.from_numpy(decode_depth_image(np.asarray(img), enc)))
        depth = torch.stack(out)
        return depth, torch.isfinite(depth).float()


class MemoryDepth(DepthProvider):
    """The memory's own readout depth at each camera, at latent resolution (T, h, w)."""

    name = "memory"

    def estimate(self, frames, cameras, memory=None):
        if memory is None:
            raise ValueError("memory: the 'memory' depth provider needs the LatentSpatialMemory to read from")
        self._check(frames, cameras)
        depths = []
        for cam in cameras:
            d = memory.read(cam, dtype=None).depth.float().cpu()
            depths.append(torch.where(torch.isfinite(d), d, torch.full_like(d, float("nan"))))
        depth = torch.stack(depths)
        return depth, torch.isfinite(depth).float()


class DA3Depth(DepthProvider):
    """Depth Anything 3 (``depth_anything_3.model.da3.DepthAnything3Net``).

    Build with ``DA3Depth.from_pretrained(folder)`` (a folder holding ``config.json`` with the
    preset name, e.g. ``{"preset": "da3-base"}``, or a ``preset`` argument, and
    ``model.safetensors``) or ``DA3Depth.random(preset)`` for tests and benchmarks. Frames are
    ImageNet-normalised, resized so both sides are multiples of 14 (``process_res`` sets the
    longer side), run as one multi-view batch with the known cameras, and the depth is resized
    back. Non-metric presets predict depth up to scale: pair them with ``align="scale"``.
    """

    name = "da3"

    def __init__(self, net=None, preset: str = "da3-small", device="cpu", dtype=torch.float32, process_res: int = 504,
                 use_cameras: bool = True, batch_views: int = 9, loader: Optional[Callable] = None):
        if net is None and loader is None:
            raise ValueError("net: pass a DepthAnything3Net or a loader that builds one")
        self._net, self._loader = net, loader
        self.preset, self.device, self.dtype = preset, torch.device(device), dtype
        self.process_res, self.use_cameras, self.batch_views = process_res, use_cameras, batch_views
        self.metric = "metric" in preset or "nested" in preset

    @property
    def net(self):
        """The network, built on first use (providers load lazily)."""
        if self._net is None:
            self._net = self._loader()
        if next(self._net.parameters()).device != self.device or next(self._net.parameters()).dtype != self.dtype:
            self._net = self._net.to(device=self.device, dtype=self.dtype)
        return self._net.eval()

    @staticmethod
    def build_net(preset: str):
        from depth_anything_3.cfg import create_object, load_config
        from depth_anything_3.registry import MODEL_REGISTRY

        if preset not in MODEL_REGISTRY:
            raise ValueError(f"preset: unknown Depth Anything 3 preset {preset!r} (known: {sorted(MODEL_REGISTRY)})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return create_object(load_config(MODEL_REGISTRY[preset]))

    @classmethod
    def random(cls, preset: str = "da3-small", seed: int = 0, **kw) -> "DA3Depth":
        """Random weights (tests, benchmarks), built lazily."""
        def load():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return cls.build_net(preset)

        return cls(preset=preset, loader=load, **kw)

    @classmethod
    def from_pretrained(cls, folder, preset: Optional[str] = None, lazy: bool = True, **kw) -> "DA3Depth":
        """Weights from a local folder; the folder is checked now, the net built on first use."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"weights folder: {folder} does not exist")
        cfg_file = folder / "config.json"
        if preset is None:
            if not cfg_file.is_file():
                raise FileNotFoundError(f"weights folder: {folder} has no config.json naming the preset (or pass preset=)")
            cfg = json.loads(cfg_file.read_text())
            preset = cfg.get("preset") or cfg.get("model_name")
            if not preset:
                raise ValueError(f"weights folder: {cfg_file} names no 'preset'")
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"weights folder: {folder} has no model.safetensors")
        provider = cls(preset=preset, loader=lambda: cls._load(preset, weights), **kw)
        if not lazy:
            provider.net  # noqa: B018 - build and load now
        return provider

    @classmethod
    def _load(cls, preset: str, weights: Path):
        from safetensors.torch import load_file

        net = cls.build_net(preset)
        try:
            state = load_file(str(weights))
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"weights: {weights} is not a readable safetensors file ({exc})") from None
        state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing:
            raise KeyError(f"weights: {weights} lacks {len(missing)} keys of {preset}, e.g. {missing[:5]}")
        if unexpected:
            warnings.warn(f"weights: {weights} has {len(unexpected)} keys the {preset} net does not use, e.g. {unexpected[:3]}")
        return net

    def _size(self, H: int, W: int):
        s = self.process_res / max(H, W)
        return max(14, int(round(H * s / 14)) * 14), max(14, int(round(W * s / 14)) * 14)

    @torch.no_grad()
    def estimate(self, frames, cameras, memory=None):
        self._check(frames, cameras)
        x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float().div(255.0)
        T, _, H, W = x.shape
        h14, w14 = self._size(H, W)
        x = F.interpolate(x, size=(h14, w14), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.device, self.dtype)
        depths, confs = [], []
        for s in range(0, T, self.batch_views):
            xs = x[s : s + self.batch_views][None]
            kw = {}
            if self.use_cameras:
                cams = cameras[s : s + self.batch_views]
                scale = torch.diag(torch.tensor([w14 / W, h14 / H, 1.0], dtype=torch.float64))
                kw["intrinsics"] = torch.stack([scale @ c.K for c in cams])[None].to(self.device, torch.float32)
                kw["extrinsics"] = torch.stack([c.world_to_camera for c in cams])[None].to(self.device, torch.float32)
            out = self.net(xs, **kw)
            depths.append(out["depth"][0].float())
            confs.append(out["depth_conf"][0].float() if "depth_conf" in out else torch.ones_like(out["depth"][0]).float())
        depth = F.interpolate(torch.cat(depths)[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0].cpu()
        conf = F.interpolate(torch.cat(confs)[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0].cpu()
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.full_like(depth, float("nan")))
        return depth, conf


class AlignedDepth(DepthProvider):
    """Wraps a provider; aligns each predicted depth map to the memory's readout depth at the same
    camera on the cells both cover (``mode`` "scale" or "scale_shift"). ``last_alignment`` holds
    one ``AlignResult`` per frame (scale, shift, residual, cells used)."""

    def __init__(self, inner: DepthProvider, mode: str = "scale", stride: int = 16, min_cells: int = 16, **align_kw):
        self.inner, self.mode, self.stride, self.min_cells, self.align_kw = inner, mode, stride, min_cells, align_kw
        self.name = f"{inner.name}+align({mode})"
        self.last_alignment: List[Optional[AlignResult]] = []

    def estimate(self, frames, cameras, memory=None):
        depth, conf = self.inner.estimate(frames, cameras, memory=memory)
        self.last_alignment = []
        if memory is None or memory.num_points == 0:
            self.last_alignment = [None] * len(cameras)
            return depth, conf
        out = []
        for d, cam in zip(depth, cameras):
            ref = memory.read(cam, dtype=None).depth.float().cpu()
            aligned, res = align_depth(d, ref, mode=self.mode, stride=self.stride, min_cells=self.min_cells, **self.align_kw)
            self.last_alignment.append(res)
            out.append(aligned)
        return torch.stack(out), conf


DEPTH_PROVIDERS = ("da3", "simulator", "memory")


def make_depth_provider(name: str, align: Optional[str] = None, **cfg) -> DepthProvider:
    """Build a depth provider by name (``da3`` | ``simulator`` | ``memory``), optionally aligned.

    da3: ``weights`` (folder) or ``preset`` for random weights, plus ``device``, ``dtype``,
    ``process_res``; simulator: ``source``, ``encoding``.
    """
    if name == "da3":
        weights = cfg.pop("weights", None)
        if weights:
            p = DA3Depth.from_pretrained(weights, preset=cfg.pop("preset", None), **cfg)
        else:
            p = DA3Depth.random(cfg.pop("preset", "da3-small"), **cfg)
    elif name == "simulator":
        p = SimulatorDepth(**cfg)
    elif name == "memory":
        p = MemoryDepth()
    else:
        raise ValueError(f"depth: unknown provider {name!r} (expected one of {DEPTH_PROVIDERS})")
    return AlignedDepth(p, align) if align else p
