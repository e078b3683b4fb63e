"""Mask providers: which pixels of a frame must never enter the latent memory (dynamic things, sky).

``make_mask_provider(name, **cfg)`` with name

- ``"none"``: nothing excluded.
- ``"labels"``: simulator labels (``mirage_ros.sim``: STATIC=0, SKY=1, DYNAMIC=2); excludes every
  non-static pixel.
- ``"sam3"``: an entity source (Qwen3-VL or a fixed list) names the movable things of each frame,
  SAM3 segments each by text prompt, plus ``"sky"``; kept masks are united.

Every provider has ``masks(frames (T,H,W,3) uint8 RGB, cameras=None, labels=None) -> (T,H,W) bool``
(the ``exclude`` argument of ``LatentSpatialMemory.insert``) and, after each call, ``last_labels``:
per frame, the entity strings used. Models load lazily on the first call, in batches of frames,
on their own ``device`` / ``dtype``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from .entities import DEFAULT_ENTITIES, FixedEntities, QwenEntityLister
from .sam3 import Sam3Segmenter

__all__ = ["MaskProvider", "NoMasks", "LabelMasks", "Sam3MaskProvider", "make_mask_provider", "MASK_PROVIDERS"]

STATIC, SKY, DYNAMIC = 0, 1, 2  # mirage_ros.sim.scenes labels
_LABEL_NAMES = {SKY: "sky", DYNAMIC: "dynamic"}


def _frames(frames) -> np.ndarray:
    if torch.is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T,H,W,3) uint8 RGB, got shape {frames.shape}")
    return frames


class MaskProvider:
    """Base: ``masks(frames, cameras=None, labels=None) -> (T,H,W) bool``; ``last_labels`` after each call."""

    name = "base"

    def __init__(self):
        self.last_labels: List[List[str]] = []

    def masks(self, frames, cameras=None, labels=None) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, frames, cameras=None, labels=None) -> np.ndarray:
        """``masks``; one frame (H, W, 3) (with one camera or none) gives one (H, W) mask."""
        single = np.ndim(frames) == 3
        out = self.masks(frames, [cameras] if single and cameras is not None else cameras, labels=labels)
        return out[0] if single else out

    def config(self) -> dict:
        return {"name": self.name}


class NoMasks(MaskProvider):
    """Excludes nothing."""

    name = "none"

    def masks(self, frames, cameras=None, labels=None) -> np.ndarray:
        f = _frames(frames)
        self.last_labels = [[] for _ in range(len(f))]
        return np.zeros(f.shape[:3], dtype=bool)


class LabelMasks(MaskProvider):
    """Excludes every pixel whose simulator label is not STATIC (sky and dynamic objects)."""

    name = "labels"

    def masks(self, frames, cameras=None, labels=None) -> np.ndarray:
        if labels is None:
            raise ValueError("mask provider 'labels' needs `labels` ((T,H,W) simulator labels: STATIC=0, SKY=1, "
                             "DYNAMIC=2); this frame source gave labels=None — use mask provider 'sam3' or 'none'")
        lab = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
        if lab.ndim == 2:
            lab = lab[None]
        if frames is not None:
            f = _frames(frames)
            if lab.shape != f.shape[:3]:
                raise ValueError(f"`labels` shape {lab.shape} does not match frames {f.shape[:3]}")
        self.last_labels = [[_LABEL_NAMES.get(int(v), f"label{int(v)}") for v in np.unique(l) if int(v) != STATIC]
                            for l in lab]
        return lab != STATIC


class Sam3MaskProvider(MaskProvider):
    """Entities per frame (Qwen3-VL or a fixed list) -> SAM3 text prompts (+ "sky") -> united masks."""

    name = "sam3"

    def __init__(self, entities: Union[QwenEntityLister, FixedEntities, Sequence[str], None] = None,
                 segmenter: Optional[Sam3Segmenter] = None, sky: bool = True, score_threshold: float = 0.5,
                 mask_threshold: float = 0.5, batch_size: int = 4):
        super().__init__()
        if segmenter is None:
            raise ValueError("Sam3MaskProvider needs segmenter= (Sam3Segmenter.from_pretrained(folder) or .tiny())")
        if entities is None:
            entities = FixedEntities(DEFAULT_ENTITIES)
        elif not callable(entities):
            entities = FixedEntities(entities)
        self.entities, self.segmenter, self.sky = entities, segmenter, bool(sky)
        self.score_threshold, self.mask_threshold = float(score_threshold), float(mask_threshold)
        self.batch_size = int(batch_size)

    def prompts(self, frames) -> List[List[str]]:
        f = _frames(frames)
        out = [list(e) for e in self.entities(f)]  # the lister batches on its own
        if len(out) != len(f):
            raise RuntimeError(f"entity source {self.entities!r} gave {len(out)} lists for {len(f)} frames")
        if self.sky:
            out = [e + ["sky"] if "sky" not in e else e for e in out]
        return out

    def masks(self, frames, cameras=None, labels=None) -> np.ndarray:
        f = _frames(frames)
        if f.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB, got {f.dtype}")
        prompts = self.prompts(f)
        self.segmenter.batch_size = self.batch_size
        exclude = self.segmenter.segment(f, prompts, score_threshold=self.score_threshold,
                                         mask_threshold=self.mask_threshold)
        self.last_labels = prompts
        return exclude

    def config(self) -> dict:
        return {"name": self.name, "entities": repr(self.entities), "segmenter": repr(self.segmenter),
                "sky": self.sky, "score_threshold": self.score_threshold, "mask_threshold": self.mask_threshold,
                "batch_size": self.batch_size}


MASK_PROVIDERS = ("sam3", "labels", "none")


def make_mask_provider(name: str = "none", **cfg) -> MaskProvider:
    """Build a mask provider from config.

    ``"sam3"`` options: ``segmenter`` (a :class:`Sam3Segmenter`) or ``sam3_dir`` (local folder) or
    ``tiny=True``; ``entities``: a list of strings, ``"qwen"`` (needs ``qwen_dir`` or ``tiny=True``),
    or an entity source object (default: a fixed list of common movable things); ``sky``,
    ``score_threshold``, ``mask_threshold``, ``batch_size``, ``device``, ``dtype``, and for Qwen
    ``max_new_tokens``, ``prompt``, ``max_pixels``. Nothing is loaded before the first call.
    """
    key = (name or "none").lower()
    if key == "none":
        _no_extra(key, cfg, ("device", "dtype", "batch_size"))
        return NoMasks()
    if key == "labels":
        _no_extra(key, cfg, ("device", "dtype", "batch_size"))
        return LabelMasks()
    if key != "sam3":
        raise ValueError(f"unknown mask provider {name!r}; choose one of {', '.join(MASK_PROVIDERS)}")
    cfg = dict(cfg)
    device, dtype = cfg.pop("device", "cpu"), cfg.pop("dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tiny = bool(cfg.pop("tiny", False))
    batch_size = int(cfg.pop("batch_size", 4))
    st, mt = float(cfg.pop("score_threshold", 0.5)), float(cfg.pop("mask_threshold", 0.5))
    seg = cfg.pop("segmenter", None)
    sam3_dir = cfg.pop("sam3_dir", None)
    if seg is None:
        if sam3_dir is not None:
            seg = Sam3Segmenter.from_pretrained(sam3_dir, device=device, dtype=dtype, batch_size=batch_size)
        elif tiny:
            seg = Sam3Segmenter.tiny(device=device, dtype=dtype, batch_size=batch_size)
        else:
            raise ValueError("mask provider 'sam3' needs sam3_dir= (a local SAM3 weights folder), segmenter=, "
                             "or tiny=True")
    ent = cfg.pop("entities", None)
    qwen_dir = cfg.pop("qwen_dir", None)
    qkw = {k: cfg.pop(k) for k in ("max_new_tokens", "prompt", "max_pixels", "min_pixels") if k in cfg}
    if ent == "qwen" or (ent is None and qwen_dir is not None):
        if qwen_dir is not None:
            ent = QwenEntityLister(weights_dir=qwen_dir, device=device, dtype=dtype, batch_size=batch_size, **qkw)
        elif tiny:
            ent = QwenEntityLister.tiny(device=device, dtype=dtype, batch_size=batch_size, **qkw)
        else:
            raise ValueError("entities='qwen' needs qwen_dir= (a local Qwen3-VL weights folder) or tiny=True")
    sky = bool(cfg.pop("sky", True))
    if cfg:
        raise ValueError(f"unknown options for mask provider 'sam3': {sorted(cfg)}")
    return Sam3MaskProvider(entities=ent, segmenter=seg, sky=sky, score_threshold=st, mask_threshold=mt,
                            batch_size=batch_size)


def _no_extra(name: str, cfg: dict, allowed: Sequence[str]) -> None:
    extra = sorted(set(cfg) - set(allowed))
    if extra:
        raise ValueError(f"unknown options for mask provider {name!r}: {extra}")
