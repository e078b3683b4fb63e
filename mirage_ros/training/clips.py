"""One clip -> dataset records: latents, per-frame geometry, and per-window memory readouts.

Shared by ``mirage data sim`` and ``mirage data bag``: whatever the source, the memory is built the
way Algorithm 1 builds it -- the first latent frame initialises it (Eq. 4), each later frame
updates it -- and every window (a chunk of ``chunk_latents`` latents starting at ``a``) records what
the rollout would read at that moment (Eq. 5): the readouts of its targets and its preceding frames
from the memory holding latents 0..a, and the reference frames chosen by voxel IoU as the rollout
chooses them (``world_model.references``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..geometry import Camera
from ..memory import LatentSpatialMemory
from ..world_model.codec import Codec, images_to_tensor
from ..world_model.references import ReferenceSelector, visible_points
from ..world_model.rollout import RolloutConfig

__all__ = ["ClipSpec", "build_clip", "MEMORY_KINDS"]

MEMORY_KINDS = ("latent", "rgb")


_R = RolloutConfig()  # the samples mirror what the rollout reads: one set of defaults


@dataclass(frozen=True)
class ClipSpec:
    """Frame roles of the samples (the rollout's, ``RolloutConfig``) and the memory they read."""

    chunk_latents: int = _R.chunk_latents
    preceding_latents: int = _R.preceding_latents
    max_references: int = _R.max_references
    ref_iou_threshold: float = _R.ref_iou_threshold
    ref_voxel_size: float = _R.ref_voxel_size
    memory: str = "latent"
    window_stride: int = 1

    def __post_init__(self):
        if self.memory not in MEMORY_KINDS:
            raise ValueError(f"memory: expected one of {MEMORY_KINDS}, got {self.memory!r}")
        if self.chunk_latents < 2 or self.window_stride < 1:
            raise ValueError("chunk_latents >= 2 and window_stride >= 1 required")


def _make_memory(spec: ClipSpec, codec: Codec):
    if spec.memory == "latent":
        return LatentSpatialMemory(channels=codec.channels, stride=codec.stride)
    from ..baselines.rgb_memory import RGBPointCloudMemory

    return RGBPointCloudMemory(codec, splat="footprint")  # hole-aware: the baseline at its best


def build_clip(
    rgb: np.ndarray,
    depth: np.ndarray,
    cameras: Sequence[Camera],
    codec: Codec,
    exclude: Optional[np.ndarray] = None,
    spec: ClipSpec = ClipSpec(),
) -> Tuple[List[Dict[str, torch.Tensor]], List[Dict], Dict]:
    """Records of one clip.

    rgb (F, H, W, 3) uint8; depth (F, H, W) metres (z-depth; non-finite / <= 0 = unknown);
    cameras: F ``Camera``s; exclude (F, H, W) bool (dynamic / sky; never enters the memory).
    Returns (frames, windows, meta): per latent frame a dict of tensors, per window a dict
    (``a``, ``frames``, ``readouts``, ``masks``, ``references``), and meta (K, poses, counts).
    """
    F_, H, W = rgb.shape[:3]
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb: expected (F, H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if depth.shape != (F_, H, W):
        raise ValueError(f"depth: expected {(F_, H, W)}, got {depth.shape}")
    if len(cameras) != F_:
        raise ValueError(f"cameras: expected {F_}, got {len(cameras)}")
    if exclude is not None and exclude.shape != (F_, H, W):
        raise ValueError(f"exclude: expected {(F_, H, W)}, got {exclude.shape}")
    ts = int(codec.temporal_stride)
    L = (F_ - 1) // ts + 1
    T, P_max = spec.chunk_latents, spec.preceding_latents
    if L < T:
        raise ValueError(f"frames: {F_} frames give {L} latents, fewer than one chunk of {T}")
    used = 1 + ts * (L - 1)
    key_frames = list(range(0, used, ts))  # latent j <-> RGB frame ts * j
    images = images_to_tensor(rgb[:used])
    latents = codec.encode_video(images).float().cpu()
    feats = latents if ts == 1 else codec.encode(images[key_frames]).float().cpu()
    cams = [cameras[f] for f in key_frames]

    memory = _make_memory(spec, codec)
    selector = ReferenceSelector(spec.max_references, spec.ref_iou_threshold, spec.ref_voxel_size)
    frames: List[Dict[str, torch.Tensor]] = []
    windows: List[Dict] = []
    for j, f in enumerate(key_frames):
        ex = None if exclude is None else torch.from_numpy(np.ascontiguousarray(exclude[f]))
        d = torch.from_numpy(np.ascontiguousarray(depth[f], dtype=np.float32))
        memory.insert(feats[j] if spec.memory == "latent" else rgb[f], d, cams[j], exclude=ex)
        selector.remember(j, visible_points(memory, [memory.read(cams[j])]))
        frames.append({
            "latent": latents[j].half(),
            "depth": d.half(),
            "exclude": (torch.zeros(H, W, dtype=torch.uint8) if ex is None else ex.to(torch.uint8)),
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb[f])),
        })
        a = j
        if a + T > L or a % spec.window_stride:
            continue
        prec = list(range(max(0, a - P_max), a))
        cond = list(range(a, a + T)) + prec
        reads = [memory.read(cams[i]) for i in cond]
        lat = torch.stack([r.latent for r in reads]).float()
        msk = torch.stack([r.mask for r in reads])
        refs = [i for i, _ in selector.select(visible_points(memory, reads[:T]), exclude=prec + [a])]
        windows.append({
            "a": a,
            "frames": torch.tensor(cond, dtype=torch.int32),
            "readouts": (lat * msk[:, None]).half(),
            "masks": msk.to(torch.uint8),
            "references": torch.tensor(refs, dtype=torch.int32),
        })
    meta = {
        "temporal_stride": ts,
        "rgb_frames": used,
        "K": [c.K.tolist() for c in cams],
        "world_to_camera": [c.world_to_camera.tolist() for c in cams],
        "image_size": [H, W],
        "memory_points": int(memory.num_points),
    }
    return frames, windows, meta

