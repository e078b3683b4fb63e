"""The rollout's perception hook: where depth and exclusion masks of generated frames come from.

A **depth provider** is either an object with ``estimate(frames, cameras, memory=None) ->
(depth, confidence)`` (``mirage_ros.perception.depth.make_depth_provider(name, **cfg)``) or a
callable ``(frames, cameras, memory) -> depth``. A **mask provider** is an object with
``masks(frames, cameras, labels=None) -> exclude`` (``mirage_ros.perception.masks.make_mask_provider``)
or a callable ``(frames, cameras) -> exclude``; ``None`` excludes nothing.

Layouts: frames (T, H, W, 3) uint8 RGB; cameras a list of T ``Camera``; depth (T, H, W) or
(T, h, w) metres (z-depth; non-finite or <= 0 = invalid, never lifted); exclude (T, H, W) or
(T, h, w) bool (True = dynamic / sky: never enters the memory).

The default depth is the memory's own readout depth (``perception.depth.MemoryDepth``, NaN where
the memory holds nothing): the depth of the surface the memory already holds at each cell. It
keeps the update consistent with the memory but cannot add surfaces the memory has never seen
(with de-duplication nothing new enters); a real depth provider (Depth Anything 3, simulator
depth) is what makes the memory grow from generated frames. The first frame's depth comes from
the caller (simulator or sensor depth, or a provider).

``make_provider(kind, spec, device)`` is the one factory (the node, the backends and the CLI use
it): a name or ``{"name": ..., **cfg}`` -> a ``mirage_ros.perception`` provider.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

__all__ = ["as_depth_fn", "as_mask_fn", "make_provider", "DepthFn", "MaskFn"]

DepthFn = Callable[[np.ndarray, Sequence, object], torch.Tensor]
MaskFn = Callable[[np.ndarray, Sequence], Optional[torch.Tensor]]


def make_provider(kind: str, spec, device="cpu"):
    """A depth (``kind="depth"``) or mask (``kind="masks"``) provider from a name or ``{"name": ...,
    **cfg}`` (``mirage_ros.perception``); objects, callables and None pass through. The plain names
    ``"none"`` (masks) and ``"memory"`` (depth) are None (the rollout's defaults); as a config
    (``{"name": "memory"}``) they build the provider object (an observation-time memory depth)."""
    if kind not in ("depth", "masks"):
        raise ValueError(f"kind: expected 'depth' or 'masks', got {kind!r}")
    if isinstance(spec, str) and (kind, spec) in (("depth", "memory"), ("masks", "none")):
        return None
    cfg = {}
    if isinstance(spec, dict):
        cfg = dict(spec)
        if "name" not in cfg:
            raise ValueError(f"{kind}: a provider config needs a 'name', got keys {sorted(cfg)}")
        spec = cfg.pop("name")
    if spec is None or not isinstance(spec, str):
        return spec
    try:
        if kind == "depth":
            from ..perception.depth import make_depth_provider as make
        else:
            from ..perception.masks import make_mask_provider as make
    except ImportError as exc:
        raise ValueError(f"{kind}: provider {spec!r} needs mirage_ros.perception ({exc})") from None
    return make(spec, **{"device": device, **cfg})


def _to_tensor(x, name: str, n: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected an array or tensor, got {type(x).__name__}")
    if x.ndim == 2 and n == 1:
        x = x[None]
    if x.ndim != 3 or x.shape[0] != n:
        raise ValueError(f"{name}: expected ({n}, H, W) or ({n}, h, w), got {tuple(x.shape)}")
    return x


def as_depth_fn(provider) -> DepthFn:
    """Normalise a depth provider (None = the memory's own depth) to ``fn(frames, cameras, memory) -> (T, ., .)``."""
    if provider is None:
        from ..perception.depth import MemoryDepth

        provider = MemoryDepth()
        name = "memory"
    else:
        name = getattr(provider, "name", type(provider).__name__)
    if hasattr(provider, "estimate"):
        def base(frames, cameras, memory):
            out = provider.estimate(frames, cameras, memory=memory)
            return out[0] if isinstance(out, (tuple, list)) else out
    elif callable(provider):
        base = provider
    else:
        raise TypeError(f"depth provider: expected None, an object with .estimate or a callable, got "
                        f"{type(provider).__name__}")

    def fn(frames, cameras, memory):
        return _to_tensor(base(frames, cameras, memory), "depth", len(cameras)).float()

    fn.name = name
    return fn


def as_mask_fn(provider) -> MaskFn:
    """Normalise a mask provider (None = exclude nothing) to ``fn(frames, cameras) -> (T, ., .) bool | None``."""
    if provider is None:
        def fn(frames, cameras):
            return None
        fn.name = "none"
        return fn
    if hasattr(provider, "masks"):
        def base(frames, cameras):
            return provider.masks(frames, cameras)
    elif callable(provider):
        base = provider
    else:
        raise TypeError(f"mask provider: expected None, an object with .masks or a callable, got "
                        f"{type(provider).__name__}")

    def fn(frames, cameras):
        out = base(frames, cameras)
        if out is None:
            return None
        out = _to_tensor(out, "exclude", len(cameras))
        if out.dtype != torch.bool:
            raise TypeError(f"exclude: expected a bool mask, got {out.dtype}")
        return out

    fn.name = getattr(provider, "name", type(provider).__name__)
    return fn
