"""The simulator as a perception oracle for generated frames: exact depth and labels at their poses.

In Algorithm 1 the depth and the dynamic/sky masks of each generated frame come from perception
models (Depth Anything 3, SAM3). In the procedural scenes the truth is available: ``SceneOracle``
renders the scene's exact z-depth and labels at the camera a generated frame was imagined from,
at that frame's time (looked up by pose along a known trajectory, so the moving object is where it
was), which isolates the world model from depth errors (the "oracle depth" row of the ablation).
Both are providers in the rollout's callable form (``world_model.providers``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .render import render
from .scenes import SKY, STATIC, Scene

__all__ = ["SceneOracle"]


class SceneOracle:
    """``depth(frames, cameras, memory)`` -> (T, H, W) metres and ``masks(frames, cameras)`` ->
    (T, H, W) bool (True = dynamic or sky; sky only with ``exclude_dynamic=False``).

    ``poses`` (world_to_camera per trajectory frame) and ``frame_period`` give each camera its time;
    a camera whose pose is not on the trajectory is rendered at ``t = 0``.
    """

    name = "simulator-oracle"

    def __init__(self, scene: Scene, poses: Optional[Sequence[torch.Tensor]] = None, frame_period: float = 0.1,
                 exclude_dynamic: bool = True):
        self.scene, self.frame_period, self.exclude_dynamic = scene, float(frame_period), bool(exclude_dynamic)
        self._time: Dict[bytes, float] = {}
        for i, E in enumerate(poses or []):
            self._time.setdefault(self._key(E), i * self.frame_period)
        self._cache: Dict[tuple, tuple] = {}

    @staticmethod
    def _key(E) -> bytes:
        return torch.as_tensor(E, dtype=torch.float64).contiguous().numpy().round(9).tobytes()

    def _frame(self, camera):
        key = (self._key(camera.world_to_camera), camera.height, camera.width, camera.K.numpy().round(6).tobytes())
        if key not in self._cache:
            t = self._time.get(self._key(camera.world_to_camera), 0.0)
            f = render(self.scene, camera, t=t)
            self._cache[key] = (f.depth, f.labels)
            if len(self._cache) > 256:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def depth(self, frames, cameras, memory=None) -> np.ndarray:
        return np.stack([self._frame(c)[0] for c in cameras])

    def masks(self, frames, cameras, labels=None) -> torch.Tensor:
        lab = np.stack([self._frame(c)[1] for c in cameras])
        return torch.from_numpy(lab != STATIC if self.exclude_dynamic else lab == SKY)

    def depth_provider(self):
        """The depth half as a rollout provider callable."""
        return _Named(self.depth, self.name)

    def mask_provider(self):
        """The mask half as a rollout provider callable."""
        return _Named(self.masks, self.name)


class _Named:
    """A callable with a ``name`` (what the rollout's descriptions print)."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)
