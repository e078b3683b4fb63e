"""Backends: what the node, the demo and `mirage replay` drive. One interface, chosen by name.

- ``readout``: no generative model. Each requested view is the memory's readout (Eq. 5) decoded
  by the codec; cells the memory cannot see stay black. Honest about what it is
  (``description``), and fast enough to answer a planner in milliseconds.
- ``mirage``: Wan2.2-TI2V-5B + the Mirage side branch (``mirage_ros.world_model.rollout``),
  registered when that module is importable.

Every backend owns a ``LatentSpatialMemory`` and a codec; ``observe`` lifts a real frame into
the memory (Algorithm 1, lines 1-4, and updates from observed frames), ``imagine`` yields
``ImaginedChunk``s along a camera trajectory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..geometry import Camera
from ..memory import LatentSpatialMemory
from .codec import Codec, ThumbnailCodec, images_to_tensor, make_codec, tensor_to_images

__all__ = ["ImaginedChunk", "Backend", "ReadoutBackend", "make_backend", "register_backend", "BACKENDS"]

MAX_FRAMES_PER_REQUEST = 4096


@dataclass
class ImaginedChunk:
    """One chunk of imagined video along the requested trajectory.

    frames (T, H, W, 3) uint8 RGB; masks (T, h, w) bool visibility m_t; readouts (T, C, h, w) the
    latent readouts z_hat_t; latents (T_lat, C, h, w) generated latents or None; frame_indices:
    for each frame, its index in the requested camera list; timings: seconds per stage.
    """

    index: int
    cameras: List[Camera]
    frame_indices: List[int]
    frames: np.ndarray
    masks: np.ndarray
    readouts: torch.Tensor
    latents: Optional[torch.Tensor] = None
    timings: Dict[str, float] = field(default_factory=dict)


class Backend:
    """Interface shared by all backends (see module docstring)."""

    name = "backend"
    generative = False
    description = ""

    def __init__(self, memory: LatentSpatialMemory, codec: Codec):
        if memory.channels != codec.channels or memory.stride != codec.stride:
            raise ValueError(
                f"codec: {codec.name} has {codec.channels} channels / stride {codec.stride}, "
                f"the memory expects {memory.channels} / {memory.stride}"
            )
        self.memory, self.codec = memory, codec

    # -- observation (Eq. 4) --------------------------------------------------------------------
    def observe(self, image: np.ndarray, depth, camera: Camera, exclude=None) -> int:
        """Encode a real RGB frame (H, W, 3) uint8 and lift its admissible cells into the memory."""
        if tuple(np.shape(image)[:2]) != (camera.height, camera.width):
            raise ValueError(f"image: shape {np.shape(image)} does not match the camera's {camera.height}x{camera.width}")
        latent = self.codec.encode(images_to_tensor(image, self.memory.device))[0]
        return self.memory.insert(latent, depth, camera, exclude=exclude)

    def reset(self) -> None:
        self.memory.clear()

    def imagine(
        self, cameras: Sequence[Camera], prompt: Optional[str] = None, cancel: Optional[Callable[[], bool]] = None
    ) -> Iterator[ImaginedChunk]:  # pragma: no cover - interface
        raise NotImplementedError

    def point_colors(self) -> np.ndarray:
        """(N, 3) uint8 colours for the memory's points: the codec's thumbnail or a PCA of features."""
        feats = self.memory.features
        if feats.shape[0] == 0:
            return np.zeros((0, 3), np.uint8)
        if isinstance(self.codec, ThumbnailCodec):
            rgb = self.codec.thumbnail_rgb(feats)
        else:
            rgb = pca_colors(feats)
        return (rgb * 255 + 0.5).to(torch.uint8).cpu().numpy()

    @staticmethod
    def _check_request(cameras: Sequence[Camera]) -> None:
        if len(cameras) == 0:
            raise ValueError("cameras: the trajectory is empty")
        if len(cameras) > MAX_FRAMES_PER_REQUEST:
            raise ValueError(f"cameras: {len(cameras)} poses requested, at most {MAX_FRAMES_PER_REQUEST} per request")


def pca_colors(features: torch.Tensor, max_fit: int = 20000) -> torch.Tensor:
    """Colour (N, 3) in [0, 1] from the top three principal components of (N, C) features.

    Fitted on a deterministic subsample; each component is mapped through its 2-98 % range.
    """
    f = features.float()
    step = max(1, f.shape[0] // max_fit)
    sample = f[::step]
    mean = sample.mean(0, keepdim=True)
    _, _, V = torch.linalg.svd(sample - mean, full_matrices=False)
    comps = V[:3].T
    signs = torch.sign(comps.sum(0, keepdim=True)).clamp(min=0) * 2 - 1  # deterministic sign
    proj = (f - mean) @ (comps * signs)
    ps = (sample - mean) @ (comps * signs)
    lo = torch.quantile(ps, 0.02, dim=0)
    hi = torch.quantile(ps, 0.98, dim=0)
    return ((proj - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)


class ReadoutBackend(Backend):
    """No generative model: imagined frame t = decode(readout of the memory at camera t).

    Frames come in chunks of ``chunk_size`` views; nothing is written back to the memory,
    because a readout holds nothing the memory does not already have.
    """

    name = "readout"
    generative = False

    def __init__(self, memory: LatentSpatialMemory, codec: Codec, chunk_size: int = 9):
        super().__init__(memory, codec)
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.description = (
            f"readout-only backend: NO generative model is loaded; each frame is the latent memory's "
            f"readout decoded by the {codec.name} codec (unseen cells stay black)"
        )

    def imagine(self, cameras, prompt=None, cancel=None):
        self._check_request(cameras)
        for index, start in enumerate(range(0, len(cameras), self.chunk_size)):
            if cancel is not None and cancel():
                return
            cams = list(cameras[start : start + self.chunk_size])
            t0 = time.perf_counter()
            reads = [self.memory.read(c) for c in cams]
            latents = torch.stack([r.latent for r in reads]).float()
            masks = torch.stack([r.mask for r in reads])
            t1 = time.perf_counter()
            images = self.codec.decode(latents)
            images = images * masks.repeat_interleave(self.codec.stride, 1).repeat_interleave(self.codec.stride, 2)[:, None]
            frames = tensor_to_images(images)
            t2 = time.perf_counter()
            yield ImaginedChunk(
                index=index,
                cameras=cams,
                frame_indices=list(range(start, start + len(cams))),
                frames=frames,
                masks=masks.cpu().numpy(),
                readouts=latents,
                timings={"readout": t1 - t0, "decode": t2 - t1},
            )


BACKENDS: Dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    BACKENDS[name] = factory


def _make_readout(codec: str = "thumbnail", weights: Optional[str] = None, device: str = "cpu",
                  chunk_size: int = 9, memory: Optional[dict] = None, **_ignored) -> ReadoutBackend:
    cod = make_codec(codec, weights=weights, device=device)
    mem = LatentSpatialMemory(channels=cod.channels, stride=cod.stride, device=device, **(memory or {}))
    return ReadoutBackend(mem, cod, chunk_size=chunk_size)


register_backend("readout", _make_readout)


def make_backend(name: str = "readout", **config) -> Backend:
    """Build a backend by name with its config (codec, weights, device, chunk_size, memory={...})."""
    if name == "mirage" and "mirage" not in BACKENDS:
        try:
            from . import rollout  # noqa: F401 - registers the 'mirage' backend
        except ImportError as exc:
            raise ValueError(f"backend: 'mirage' is not available here ({exc})") from exc
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown name {name!r} (available: {', '.join(sorted(BACKENDS))})")
    return BACKENDS[name](**config)
