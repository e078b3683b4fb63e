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
from .align import AlignResult, align_to_memory

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

    def __call__(self, frames, cameras, memory=None) -> torch.Tensor:
        """Depth only. One frame (H, W, 3) with one ``Camera`` gives (H, W) (or (h, w)); a batch
        gives (T, ., .) as ``estimate`` does (for callers that handle frames one at a time)."""
        single = isinstance(cameras, Camera)
        if single:
            frames, cameras = (frames[None] if np.ndim(frames) == 3 else frames), [cameras]
        depth, _ = self.estimate(frames, cameras, memory=memory)
        return depth[0] if single else depth

    @staticmethod
    def _check(frames, cameras):
        a = np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"frames: expected (T, H, W, 3) RGB, got shape {tuple(a.shape)}")
        if len(cameras) != a.shape[0]:
            raise ValueError(f"cameras: {len(cameras)} cameras for {a.shape[0]} frames")
        for c in cameras:
            if (c.height, c.width) != tuple(a.shape[1:3]):
                raise ValueError(f"cameras: camera size {c.height}x{c.width} does not match frames "
                                 f"{tuple(a.shape[1:3])}")


class SimulatorDepth(DepthProvider):
    """Depth from the simulation stack: ``source(camera, index) -> (image, encoding)`` or a float
    (H, W) array in metres. Exact where the simulator is; confidence 1 on valid pixels."""

    name = "simulator"

    def __init__(self, source: Callable, encoding: str = "32FC1", device="cpu"):
        # device: accepted like every provider's (config sets it for all); no model, output on CPU
        self.source, self.encoding, self.device = source, encoding, torch.device(device)

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

    def __init__(self, device="cpu"):
        self.device = torch.device(device)  # the memory reads on its own device; output on CPU

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


def normalize_extrinsics(E: torch.Tensor):
    """(N, 4, 4) world->camera -> the frame Depth Anything 3 was trained on, and its unit.

    As ``depth_anything_3.api``: the first camera becomes the identity and translations are
    divided by the median camera distance from it (at least 0.1). Returns ``(E_norm, unit)``;
    the net's depth is in units of ``unit`` metres when it follows the given poses.
    """
    E = E.double()
    En = E @ torch.linalg.inv(E[:1])
    centres = torch.linalg.inv(En)[:, :3, 3]
    unit = float(centres.norm(dim=-1).median().clamp(min=0.1))
    En[:, :3, 3] = En[:, :3, 3] / unit
    return En, unit


def umeyama_scale(src: torch.Tensor, dst: torch.Tensor) -> float:
    """Scale s of the similarity dst ~ s R src + t between (N, 3) point sets (Umeyama 1991)."""
    src, dst = src.double(), dst.double()
    x, y = src - src.mean(0), dst - dst.mean(0)
    var = (x ** 2).sum(1).mean()
    U, D, Vt = torch.linalg.svd(y.T @ x / len(src))
    S = torch.ones(3, dtype=D.dtype)
    if torch.det(U) * torch.det(Vt) < 0:
        S[-1] = -1.0
    return float((D * S).sum() / var)


class DA3Depth(DepthProvider):
    """Depth Anything 3 (``depth_anything_3.model.da3.DepthAnything3Net``).

    Build with ``DA3Depth.from_pretrained(folder)`` (a folder holding ``config.json`` with the
    preset name, e.g. ``{"preset": "da3-base"}``, or a ``preset`` argument, and
    ``model.safetensors``) or ``DA3Depth.random(preset)`` for tests and benchmarks. Frames are
    ImageNet-normalised, resized so both sides are multiples of 14 (``process_res`` sets the
    longer side), run as one multi-view batch and the depth is resized back.

    Metric output, as the reference API does it:
    - any-view presets (small/base/large/giant) take the known cameras, normalised like
      ``depth_anything_3.api`` (first camera = identity, median distance = 1); the depth is then
      brought to metres by the Umeyama scale between the predicted and the given camera centres.
      A batch without baseline (one view, a static camera) has no scale: ``last_metric`` says
      False for it and it needs ``align="scale"``;
    - ``da3metric-*`` has no camera encoder; its output is multiplied by focal / 300 (focal in
      pixels at the processed size); ``da3nested-*`` is metric by itself;
    - pixels the model calls sky (``sky`` head >= ``sky_threshold``) are invalid (NaN), not
      "far": sky must never be lifted into the memory.
    """

    name = "da3"

    def __init__(self, net=None, preset: str = "da3-small", device="cpu", dtype=torch.float32, process_res: int = 504,
                 use_cameras: bool = True, batch_views: int = 9, loader: Optional[Callable] = None,
                 sky_threshold: float = 0.3, min_baseline: float = 1e-3):
        if net is None and loader is None:
            raise ValueError("net: pass a DepthAnything3Net or a loader that builds one")
        self._net, self._loader = net, loader
        self.preset, self.device, self.dtype = preset, torch.device(device), dtype
        self.process_res, self.use_cameras, self.batch_views = process_res, use_cameras, batch_views
        self.sky_threshold, self.min_baseline = sky_threshold, min_baseline
        self.metric = "metric" in preset or "nested" in preset or use_cameras
        self.last_metric: List[bool] = []  # per frame of the last call: was its depth in metres?

    def load(self):
        """Build and load the network now (``net`` does it on first use); returns it in eval mode on the
        provider's device and dtype."""
        if self._net is None:
            self._net = self._loader()
        if next(self._net.parameters()).device != self.device or next(self._net.parameters()).dtype != self.dtype:
            self._net = self._net.to(device=self.device, dtype=self.dtype)
        return self._net.eval()

    @property
    def net(self):
        """The network, built on first use (providers load lazily)."""
        return self.load()

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
                raise FileNotFoundError(f"weights folder: {folder} has no config.json naming the preset (or pass "
                                        f"preset=)")
            cfg = json.loads(cfg_file.read_text())
            preset = cfg.get("preset") or cfg.get("model_name")
            if not preset:
                raise ValueError(f"weights folder: {cfg_file} names no 'preset'")
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"weights folder: {folder} has no model.safetensors")
        provider = cls(preset=preset, loader=lambda: cls._load(preset, weights), **kw)
        if not lazy:
            provider.load()
        return provider

    @classmethod
    def _load(cls, preset: str, weights: Path):
        from safetensors.torch import load_file

        net = cls.build_net(preset)
        try:
            state = load_file(str(weights))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types; one error names the file
            raise ValueError(f"weights: {weights} is not a readable safetensors file ({exc})") from None
        state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing:
            raise KeyError(f"weights: {weights} lacks {len(missing)} keys of {preset}, e.g. {missing[:5]}")
        if unexpected:
            warnings.warn(f"weights: {weights} has {len(unexpected)} keys the {preset} net does not use, e.g. "
                          f"{unexpected[:3]}", stacklevel=2)
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
        K14 = torch.stack([torch.diag(torch.tensor([w14 / W, h14 / H, 1.0], dtype=torch.float64)) @ c.K.double()
                           for c in cameras])
        E = torch.stack([c.world_to_camera.double() for c in cameras])
        net = self.net
        takes_cameras = getattr(net, "cam_enc", None) is not None
        depths, confs, self.last_metric = [], [], []
        for s in range(0, T, self.batch_views):
            xs, Ks, Es = x[s : s + self.batch_views][None], K14[s : s + self.batch_views], E[s : s + self.batch_views]
            kw = {}
            if self.use_cameras and takes_cameras:
                En, _ = normalize_extrinsics(Es)
                kw["intrinsics"] = Ks[None].to(self.device, torch.float32)
                kw["extrinsics"] = En[None].to(self.device, torch.float32)
            out = net(xs, **kw)
            d = out["depth"][0].float()
            metric = False
            if "nested" in self.preset:
                metric = True
            elif not takes_cameras and "metric" in self.preset:
                focal = 0.5 * (Ks[:, 0, 0] + Ks[:, 1, 1]).to(d)
                d = d * (focal / 300.0)[:, None, None]
                metric = True
            elif kw and "extrinsics" in out:
                given = torch.linalg.inv(Es)[:, :3, 3]
                if len(Es) > 1 and float((given - given.mean(0)).norm(dim=-1).max()) > self.min_baseline:
                    Ep = torch.eye(4, dtype=torch.float64).repeat(len(Es), 1, 1)
                    Ep[:, :3, :] = out["extrinsics"][0].double().cpu()
                    pred = torch.linalg.inv(Ep)[:, :3, 3]
                    d = d / umeyama_scale(given, pred)  # as depth_anything_3.api: depth /= scale
                    metric = True
            if "sky" in out:
                d = torch.where(out["sky"][0].float() >= self.sky_threshold, torch.full_like(d, float("nan")), d)
            depths.append(d)
            confs.append(out["depth_conf"][0].float() if "depth_conf" in out else torch.ones_like(d))
            self.last_metric += [metric] * len(Es)
        depth = F.interpolate(torch.cat(depths)[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0].cpu()
        conf = F.interpolate(torch.cat(confs)[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0].cpu()
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.full_like(depth, float("nan")))
        return depth, conf


class AlignedDepth(DepthProvider):
    """Wraps a provider; aligns each predicted depth map to the memory's readout depth at the same
    camera on the cells both cover (``mode`` "scale" or "scale_shift"). ``last_alignment`` holds
    one ``AlignResult`` per frame (scale, shift, residual, cells used).

    A frame that cannot be aligned (memory empty there, too few shared cells) keeps its depth only
    if the inner provider says it is metric (``last_metric`` per frame, else ``metric``); depth of
    unknown scale is made invalid (NaN) with a warning: it would corrupt the memory.
    """

    def __init__(self, inner: DepthProvider, mode: str = "scale", stride: int = 16, min_cells: int = 16, **align_kw):
        self.inner, self.mode, self.stride, self.min_cells, self.align_kw = inner, mode, stride, min_cells, align_kw
        self.name = f"{inner.name}+align({mode})"
        self.device = getattr(inner, "device", torch.device("cpu"))
        self.last_alignment: List[Optional[AlignResult]] = []

    def _metric(self, n: int) -> List[bool]:
        flags = getattr(self.inner, "last_metric", None)
        if flags is not None and len(flags) == n:
            return list(flags)
        return [bool(getattr(self.inner, "metric", True))] * n

    def estimate(self, frames, cameras, memory=None):
        depth, conf = self.inner.estimate(frames, cameras, memory=memory)
        metric = self._metric(len(cameras))
        self.last_alignment = []
        out = []
        for i, (d, cam) in enumerate(zip(depth, cameras)):
            res = None
            if memory is not None and memory.num_points > 0:
                d, res = align_to_memory(d, memory, cam, mode=self.mode, min_cells=self.min_cells, **self.align_kw)
            self.last_alignment.append(res)
            if (res is None or not res.ok) and not metric[i]:
                warnings.warn(f"depth: frame {i} of {self.inner.name} has no metric scale and could not be aligned "
                              f"to the memory ({0 if res is None else res.cells} shared cells); marked invalid",
                              stacklevel=2)
                d = torch.full_like(d, float("nan"))
            out.append(d)
        return torch.stack(out), conf


DEPTH_PROVIDERS = ("da3", "simulator", "memory")


def make_depth_provider(name: str, align: Optional[str] = None, **cfg) -> DepthProvider:
    """Build a depth provider by name (``da3`` | ``simulator`` | ``memory``), optionally aligned.

    da3: ``weights`` (a local folder) or ``random_weights=True`` (tests, benchmarks) with
    ``preset``, plus ``device``, ``dtype``, ``process_res``, ``use_cameras``, ``batch_views``;
    simulator: ``source``, ``encoding``; every provider takes ``device``.
    """
    if name == "da3":
        weights, random_weights = cfg.pop("weights", None), cfg.pop("random_weights", False)
        if weights:
            p = DA3Depth.from_pretrained(weights, preset=cfg.pop("preset", None), **cfg)
        elif random_weights:
            p = DA3Depth.random(cfg.pop("preset", "da3-small"), **cfg)
        else:
            raise ValueError("weights: depth provider 'da3' needs weights= (a local folder with model.safetensors "
                             "and config.json naming the preset), or random_weights=True for tests and benchmarks")
    elif name == "simulator":
        p = SimulatorDepth(**cfg)
    elif name == "memory":
        p = MemoryDepth(**cfg)
    else:
        raise ValueError(f"depth: unknown provider {name!r} (expected one of {DEPTH_PROVIDERS})")
    return AlignedDepth(p, align) if align else p
