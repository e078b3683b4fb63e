"""Algorithm 1: one Mirage rollout, chunk by chunk (the backends in ``backend`` drive it).

Time bookkeeping. The trajectory has N RGB frames (cameras[0] is I_0's). The codec compresses time
by its temporal stride ts (4 for the Wan2.2 VAE, first frame alone; 1 for image codecs), so latent
j stands for RGB frame ts*j; its camera is cameras[ts*j] (the last camera, past the end). Chunks
hold ``chunk_latents`` = 9 latents (33 RGB frames at ts = 4) and overlap by one latent: chunk c
spans latents 8c .. 8c+8, and its first latent is the previous chunk's last one, clean (the
encoded I_0 in chunk 0). Each chunk decodes its latents once and emits the frames after the
overlap frame: the overlap frame is never emitted twice. frames[0] of the result is I_0 itself,
as in Algorithm 1 (O <- {I_0}).

Per chunk (``iter_rollout``): readout at every target pose and at the preceding frames' poses, all
from the memory as it is now (Eq. 5) -> pick preceding and reference frames -> denoise with
backbone + side branch -> decode -> depth and masks of the new latent-aligned frames (pluggable
providers, see ``providers``) -> re-encode them (paper; the official code stores the denoised
latents, ``update_source="denoised"``) -> insert the admissible cells (Eq. 4, Lambda_t). The
training data (``mirage_ros.training``) records exactly these readouts, with true frames inserted.

The memory may also be the RGB point-cloud cache (``baselines.RGBPointCloudMemory``, the paper's
baseline): it reads by rendering + encoding and is updated with the decoded pixels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..geometry import Camera
from ..memory import LatentSpatialMemory
from .codec import images_to_tensor, tensor_to_images
from .providers import as_depth_fn, as_mask_fn
from .references import ReferenceSelector, visible_points

__all__ = ["RolloutConfig", "ChunkResult", "RolloutResult", "latent_chunks", "iter_rollout", "rollout", "STAGES"]

STAGES = ("readout", "denoise", "decode", "depth", "masks", "encode", "update")


@dataclass
class RolloutConfig:
    """Rollout settings (paper values; the official code's in brackets where they differ).

    chunk_latents: latents per chunk incl. the 1-latent overlap (9 = 33 RGB frames).
    preceding_latents: clean preceding latents before the overlap frame (2 = the official 8 RGB frames).
    max_references / ref_iou_threshold / ref_voxel_size: reference selection by voxel IoU.
    update_source: ``reencode`` (paper: E(D(z))) | ``denoised`` (official: z itself).
    """

    chunk_latents: int = 9
    preceding_latents: int = 2
    max_references: int = 4
    ref_iou_threshold: float = 0.04
    ref_voxel_size: float = 0.1
    update_source: str = "reencode"
    seed: int = 0
    progress: bool = True
    negative_prompt: Optional[str] = None

    def __post_init__(self):
        if self.chunk_latents < 2:
            raise ValueError(f"chunk_latents: expected >= 2 (one overlap + one new), got {self.chunk_latents}")
        if self.update_source not in ("reencode", "denoised"):
            raise ValueError(f"update_source: expected 'reencode' or 'denoised', got {self.update_source!r}")


@dataclass
class ChunkResult:
    """One chunk. frames (n, H, W, 3) uint8 for trajectory frames ``frame_indices``; latents,
    readouts (L, C, h, w) and masks (L, h, w) for trajectory latents ``latent_indices`` (the new
    ones; chunk 0 also has latent 0 = E(I_0)); ``references``: latent indices used as references;
    ``timings``: seconds per stage (``STAGES``) and ``total``."""

    index: int
    frame_indices: List[int]
    frames: np.ndarray
    latent_indices: List[int]
    latents: torch.Tensor
    readouts: torch.Tensor
    masks: torch.Tensor
    references: List[int]
    preceding: List[int]
    points_added: int
    timings: Dict[str, float]


@dataclass
class RolloutResult:
    """frames (N, H, W, 3) uint8 with frames[0] = I_0; latents / readouts (L, C, h, w); masks
    (L, h, w) bool; ``timings``: one dict per chunk; ``chunks``: per-chunk metadata."""

    frames: np.ndarray
    latents: torch.Tensor
    readouts: torch.Tensor
    masks: torch.Tensor
    timings: List[Dict[str, float]]
    chunks: List[Dict] = field(default_factory=list)


def latent_chunks(num_frames: int, chunk_latents: int = 9, temporal_stride: int = 4) -> List[Tuple[int, int]]:
    """(first, last) latent index of each chunk, inclusive, overlapping by one latent."""
    if num_frames < 2:
        raise ValueError(f"cameras: a rollout needs I_0's camera and at least one more, got {num_frames}")
    last = -(-(num_frames - 1) // temporal_stride)  # ceil: latents 1..last cover frames 1..N-1
    out, a = [], 0
    while a < last:
        b = min(a + chunk_latents - 1, last)
        out.append((a, b))
        a = b
    return out


def _tqdm(**kw):
    from tqdm.auto import tqdm

    return tqdm(**kw)


def iter_rollout(
    model,
    first_frame: np.ndarray,
    cameras: Sequence[Camera],
    memory: LatentSpatialMemory,
    first_depth=None,
    first_exclude=None,
    prompt: Optional[str] = None,
    readout_scale: float = 1.0,
    prompt_embeds: Optional[torch.Tensor] = None,
    depth_provider=None,
    mask_provider=None,
    config: Optional[RolloutConfig] = None,
) -> Iterator[ChunkResult]:
    """Algorithm 1 as a generator of ``ChunkResult``s.

    first_frame (H, W, 3) uint8 = I_0 at cameras[0]; first_depth (H, W) / (h, w) metres and
    first_exclude (bool) initialise the memory (lines 1-4); with ``first_depth=None`` the memory is
    assumed to hold I_0 already (the backend observed it). Providers: see ``providers``.
    ``readout_scale`` multiplies the readout the side branch sees (0 = the model without memory
    input, an ablation; the memory is still updated and used for references).
    """
    cfg = config or RolloutConfig()
    cams = list(cameras)
    N, H, W = len(cams), cams[0].height, cams[0].width
    if tuple(np.shape(first_frame)) != (H, W, 3):
        raise ValueError(f"first_frame: shape {np.shape(first_frame)} does not match the camera's {H}x{W}x3")
    if any((c.height, c.width) != (H, W) for c in cams):
        raise ValueError("cameras: all cameras of a rollout must share one image size")
    if memory.channels != model.channels or memory.stride != model.stride:
        raise ValueError(f"memory: {memory.channels} channels / stride {memory.stride}, the model has {model.channels} / {model.stride}")
    depth_fn, mask_fn = as_depth_fn(depth_provider), as_mask_fn(mask_provider)
    ts = model.temporal_stride
    cam_of = lambda j: cams[min(ts * j, N - 1)]  # noqa: E731 - camera of latent j
    emb = prompt_embeds if prompt_embeds is not None else model.text.encode(prompt)
    neg = model.text.encode(cfg.negative_prompt) if model.sampler.cfg and model.text.has_model else None
    gen = torch.Generator().manual_seed(cfg.seed)
    selector = ReferenceSelector(cfg.max_references, cfg.ref_iou_threshold, cfg.ref_voxel_size)

    # Lines 1-5: z_0 = E(I_0); M <- Lambda_0 of (z_0, D_0, K_0, E_0).
    z0 = model.encode_images(images_to_tensor(first_frame))[0].cpu()
    if first_depth is not None:
        first = np.asarray(first_frame) if getattr(memory, "stores_pixels", False) else z0.to(memory.device)
        memory.insert(first, first_depth, cams[0], exclude=first_exclude)
    latents, readouts, masks = {0: z0}, {}, {}
    r0 = memory.read(cams[0])
    selector.remember(0, visible_points(memory, [r0]))

    schedule = latent_chunks(N, cfg.chunk_latents, ts)
    bar = _tqdm(total=len(schedule), desc="mirage rollout", unit="chunk", disable=not cfg.progress)
    for c, (a, b) in enumerate(schedule):
        t, tick = {}, time.perf_counter()
        T, new = b - a + 1, list(range(a + 1, b + 1))

        # Lines 8-10: read the memory at every target pose and the preceding frames' poses (Eq. 5),
        # as it is now; choose context frames.
        prec = list(range(max(0, a - cfg.preceding_latents), a))
        cond_ids = list(range(a, b + 1)) + prec
        reads = [memory.read(cam_of(j)) for j in cond_ids]
        cond_read, cond_mask = {}, {}
        for j, r in zip(cond_ids, reads):
            cond_read[j], cond_mask[j] = r.latent.float().cpu(), r.mask.cpu()
            if a <= j:
                readouts[j], masks[j] = cond_read[j], cond_mask[j]
        refs = [i for i, _ in selector.select(visible_points(memory, reads[:T]), exclude=prec + [a])]
        tick = _lap(t, "readout", tick)

        # Line 11: denoise the chunk with the backbone + side branch.
        steps = lambda it: _tqdm(iterable=it, desc=f"chunk {c} denoise", leave=False, disable=not cfg.progress)  # noqa: E731
        z = model.denoise(
            clean_targets=latents[a][None], num_targets=T,
            readouts=torch.stack([cond_read[j] for j in cond_ids]) * readout_scale,
            masks=torch.stack([cond_mask[j] for j in cond_ids]) & (readout_scale != 0),
            image_size=(H, W), prompt_embeds=emb,
            preceding=torch.stack([latents[j] for j in prec]) if prec else None,
            references=torch.stack([latents[j] for j in refs]) if refs else None,
            negative_embeds=neg, generator=gen, progress=steps,
        )
        for j in new:
            latents[j] = z[j - a]
        tick = _lap(t, "denoise", tick)

        # Lines 12-13: decode once per chunk; emit frames past the overlap frame.
        video = model.decode_video(z)  # (1 + ts(T-1), 3, H, W)
        first_out = 0 if c == 0 else 1
        frame_ids = [ts * a + i for i in range(first_out, video.shape[0]) if ts * a + i < N]
        rgb = tensor_to_images(video[[f - ts * a for f in frame_ids]])
        if c == 0:
            rgb[0] = np.asarray(first_frame)  # O <- {I_0}: the input frame itself
        tick = _lap(t, "decode", tick)

        # Lines 14-17: depth, masks, encode and insert the new latent-aligned frames.
        upd = [j for j in new if ts * j < N]
        upd_frames = tensor_to_images(video[[ts * (j - a) for j in upd]]) if upd else np.zeros((0, H, W, 3), np.uint8)
        upd_cams = [cam_of(j) for j in upd]
        depth = depth_fn(upd_frames, upd_cams, memory) if upd else None
        tick = _lap(t, "depth", tick)
        exclude = mask_fn(upd_frames, upd_cams) if upd else None
        tick = _lap(t, "masks", tick)
        pixels = getattr(memory, "stores_pixels", False)  # the RGB point-cloud cache keeps the decoded pixels
        if not upd or pixels:
            feats = None
        elif cfg.update_source == "reencode":
            feats = model.encode_images(images_to_tensor(upd_frames)).cpu()
        else:
            feats = torch.stack([latents[j] for j in upd])
        tick = _lap(t, "encode", tick)
        added = 0
        for i, j in enumerate(upd):
            item = upd_frames[i] if pixels else feats[i].to(memory.device)
            added += memory.insert(item, depth[i], upd_cams[i], exclude=None if exclude is None else exclude[i])
        for j in upd:
            selector.remember(j, visible_points(memory, [memory.read(cam_of(j))]))
        tick = _lap(t, "update", tick)
        t["total"] = sum(t[s] for s in STAGES)

        lat_ids = ([0] if c == 0 else []) + new
        bar.update(1)
        yield ChunkResult(
            index=c, frame_indices=frame_ids, frames=rgb, latent_indices=lat_ids,
            latents=torch.stack([latents[j] for j in lat_ids]),
            readouts=torch.stack([readouts[j] for j in lat_ids]), masks=torch.stack([masks[j] for j in lat_ids]),
            references=refs, preceding=prec, points_added=added, timings=t,
        )
    bar.close()


def _lap(t: Dict[str, float], stage: str, tick: float) -> float:
    now = time.perf_counter()
    t[stage] = t.get(stage, 0.0) + now - tick
    return now


def rollout(model, first_frame, cameras, memory, **kwargs) -> RolloutResult:
    """Run ``iter_rollout`` to the end and gather its chunks (see there for the arguments)."""
    chunks = list(iter_rollout(model, first_frame, cameras, memory, **kwargs))
    return RolloutResult(
        frames=np.concatenate([c.frames for c in chunks]),
        latents=torch.cat([c.latents for c in chunks]),
        readouts=torch.cat([c.readouts for c in chunks]),
        masks=torch.cat([c.masks for c in chunks]),
        timings=[c.timings for c in chunks],
        chunks=[{"chunk": c.index, "frames": c.frame_indices, "latents": c.latent_indices, "references": c.references,
                 "preceding": c.preceding, "points_added": c.points_added} for c in chunks],
    )
