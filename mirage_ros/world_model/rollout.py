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
from .aligned_decode import deseam_cells, redraw_aligned
from .codec import images_to_tensor, tensor_to_images
from .providers import as_depth_fn, as_mask_fn
from .references import ReferenceSelector, visible_points

__all__ = ["RolloutConfig", "ChunkResult", "RolloutResult", "latent_chunks", "iter_rollout", "iter_rollout_batch",
           "rollout",
           "STAGES"]

STAGES = ("readout", "denoise", "decode", "depth", "masks", "encode", "update")


@dataclass
class RolloutConfig:
    """Rollout settings (paper values; the official code's in brackets where they differ).

    chunk_latents: latents per chunk incl. the 1-latent overlap (9 = 33 RGB frames).
    preceding_latents: clean preceding latents before the overlap frame (2 = the official 8 RGB frames).
    max_references / ref_iou_threshold / ref_voxel_size: reference selection by voxel IoU.
    update_source: ``reencode`` (paper: E(D(z))) | ``denoised`` (official: z itself).
    earliest_within: the observed-first readout rule for the conditioning reads
        (``LatentSpatialMemory.read``): among points within this fraction of a cell's nearest
        depth the earliest inserted wins, so a revisited view reads what was observed rather than
        a generated copy a hair nearer; 0 = plain frontmost-wins; None = the memory's own setting.
        0.3 chosen on validation loops (800000-800007): generated points on slanted floors sit up
        to ~25 % nearer than the observed ones at a loop closure; 0.05 let them win (blotchy floor).
        (The RGB point-cloud cache has no such rule and ignores it.)
    seed: the sampler noise. None (default) derives it from the encoded first frame, so the same
        observation gives the same video bit for bit while different scenes get different noise
        (one fixed seed for every scene made unseen space of different scenes correlate: r = 0.38
        over validation loops, 0.11 with per-scene noise, ground truth 0.04); an integer fixes it.
        Candidate trajectories from one observation share it (common random numbers for ranking).
    generated_sky: whether generated frames also write into a memory's sky dome
        (``LatentSpatialMemory(sky=True)``). Off by default: a generated frame's "sky" cells are
        where the depth provider says nothing is, whatever the model painted there, and the dome,
        lying behind everything, would pin that paint at every later pose (measured on validation
        loops: purple "sky" carried from chunk to chunk). Observed frames always write it.
    pin_generated / paste_generated: whether memory pinning (the sampler's ``pin_until``) and the
        paste (``pin_paste``) also hold cells that the rollout's own generated points fill. False
        keeps them to what the memory held when the rollout began (the observations) and the sky
        dome; the side branch still sees every readout cell. (Latent memory only: the RGB cache's
        readout does not say which point won; with the memory's ``on_revisit="refresh"`` an
        observed point refreshed by a generated frame still counts as observed.) Paste off for
        generated cells by default: on validation loops (800000-800007) it cut blockiness 5.90x ->
        5.42x (never-seen 7.54x -> 6.76x: a generated cell reprojected whole and pasted is a
        hard-edged block), every region's PSNR equal or +0.01, final frame -0.03 dB; pinning them
        too off: blockiness 5.09x but final frame -0.96 dB.
    decode_imagined: whether a codec with an imagination decoder (``RefinedBlockCodec.imagined``)
        decodes the cells the observations did not supply with it (the memory's observed cells and
        the sky dome stay with the clean decoder; with a memory that cannot tell observed from
        generated points, the RGB cache, every readout cell does). Other codecs ignore it. On
        validation loops with the shipped codec: never-seen +1.15 dB, blockiness 5.42x -> 3.90x,
        cross-loop r 0.04 -> 0.15, revisited +0.02, final frame -0.18; 0.15 s more per chunk.
    decode_aligned: whether the cells the observations supplied are drawn where their points
        project rather than on the latent grid (``aligned_decode``: each cell's block decoded alone
        and composited at its continuous projection). Needs a codec whose cells decode alone
        (``cell_patches``: the block-PCA codecs), one latent per frame and the latent memory;
        otherwise it does nothing. On by default: on validation loops (800000-800007), with the
        codec's seam filter (also over the grid-drawn sky cells, ``deseam_cells``) against neither,
        revisited regions 20.70 -> 23.35 dB, final frame -0.02, never-seen +0.03, blockiness 3.91x
        -> 1.88x (revisited 3.70x -> 2.34x); 0.17 s more per chunk. Drawing generated points
        aligned too was worse (final -0.95, blockiness 2.04x). ``aligned_overlap`` /
        ``aligned_depth_tol``: the window overlap (share of the stride) and the same-surface depth
        band (``aligned_decode.aligned_frame``).
    """

    chunk_latents: int = 9
    preceding_latents: int = 2
    max_references: int = 4
    ref_iou_threshold: float = 0.04
    ref_voxel_size: float = 0.1
    update_source: str = "reencode"
    earliest_within: Optional[float] = 0.3
    seed: Optional[int] = None
    progress: bool = True
    negative_prompt: Optional[str] = None
    generated_sky: bool = False
    pin_generated: bool = True
    paste_generated: bool = False
    decode_imagined: bool = True
    decode_aligned: bool = True
    aligned_overlap: float = 0.25
    aligned_depth_tol: float = 0.4

    def __post_init__(self):
        if self.chunk_latents < 2:
            raise ValueError(f"chunk_latents: expected >= 2 (one overlap + one new), got {self.chunk_latents}")
        if self.earliest_within is not None and not 0.0 <= float(self.earliest_within) <= 1.0:
            raise ValueError(f"earliest_within: expected None or a relative tolerance in [0, 1], got "
                             f"{self.earliest_within}")
        if not 0.0 <= float(self.aligned_overlap) <= 1.0:
            raise ValueError(f"aligned_overlap: expected a share of the stride in [0, 1], got {self.aligned_overlap}")
        if not 0.0 < float(self.aligned_depth_tol) <= 10.0:
            raise ValueError(f"aligned_depth_tol: expected a relative depth band in (0, 10], got "
                             f"{self.aligned_depth_tol}")
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
    memory_cells: Optional[torch.Tensor] = None  # (L, h, w): the cells decoded as memory (decode_imagined)


@dataclass
class RolloutResult:
    """frames (N, H, W, 3) uint8 with frames[0] = I_0; latents / readouts (L, C, h, w); masks
    (L, h, w) bool; ``memory_cells`` (L, h, w) bool: the cells decoded as memory (observed) rather
    than imagination (``RolloutConfig.decode_imagined``); ``timings``: one dict per chunk;
    ``chunks``: per-chunk metadata."""

    frames: np.ndarray
    latents: torch.Tensor
    readouts: torch.Tensor
    masks: torch.Tensor
    timings: List[Dict[str, float]]
    chunks: List[Dict] = field(default_factory=list)
    memory_cells: Optional[torch.Tensor] = None  # (L, h, w) bool, or None when decode_imagined is off


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


def observation_seed(z0: torch.Tensor) -> int:
    """A 63-bit noise seed from the bytes of the encoded first frame (``RolloutConfig.seed`` None)."""
    import hashlib

    data = z0.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1


def _tqdm(**kw):
    from tqdm.auto import tqdm

    return tqdm(**kw)


class _Track:
    """One trajectory's Algorithm 1 state: cameras, memory, latents, readouts, reference selector."""

    def __init__(self, model, cameras, memory, z0, cfg: RolloutConfig, readout_scale: float, depth_fn, mask_fn):
        cams = list(cameras)
        N, H, W = len(cams), cams[0].height, cams[0].width
        if any((c.height, c.width) != (H, W) for c in cams):
            raise ValueError("cameras: all cameras of a rollout must share one image size")
        if memory.channels != model.channels or memory.stride != model.stride:
            raise ValueError(f"memory: {memory.channels} channels / stride {memory.stride}, the model has "
                             f"{model.channels} / {model.stride}")
        self.model, self.cams, self.memory, self.cfg = model, cams, memory, cfg
        self.N, self.H, self.W, self.ts = N, H, W, model.temporal_stride
        self.readout_scale, self.depth_fn, self.mask_fn = readout_scale, depth_fn, mask_fn
        self.gen = torch.Generator().manual_seed(observation_seed(z0) if cfg.seed is None else int(cfg.seed))
        self.selector = ReferenceSelector(cfg.max_references, cfg.ref_iou_threshold, cfg.ref_voxel_size)
        self.latents, self.readouts, self.masks = {0: z0}, {}, {}
        # storage indices below this are the observations (the memory grows by appending)
        self.n_observed = memory.num_points if isinstance(memory, LatentSpatialMemory) else None
        self.selector.remember(0, visible_points(memory, [memory.read(cams[0])]))
        self.schedule = latent_chunks(N, cfg.chunk_latents, self.ts)

    def _aligns(self) -> bool:
        """Whether ``decode_aligned`` applies: a block codec, one latent per frame, the latent memory."""
        return (self.cfg.decode_aligned and self.ts == 1 and isinstance(self.memory, LatentSpatialMemory)
                and hasattr(getattr(self.model, "codec", None), "cell_patches"))

    def _read(self, camera: Camera):
        """Eq. 5 at ``camera`` with the rollout's readout rule (``RolloutConfig.earliest_within``)."""
        if isinstance(self.memory, LatentSpatialMemory):
            return self.memory.read(camera, earliest_within=self.cfg.earliest_within)
        return self.memory.read(camera)

    def cam_of(self, j: int) -> Camera:
        """Camera of latent j (the last camera past the end)."""
        return self.cams[min(self.ts * j, self.N - 1)]

    def plan(self, c: int) -> Dict:
        """Lines 8-10 for chunk c: read the memory at every target pose and the preceding frames'
        poses (Eq. 5), as it is now; choose context frames. Returns the chunk's denoise request."""
        tick = time.perf_counter()
        a, b = self.schedule[c]
        T = b - a + 1
        prec = list(range(max(0, a - self.cfg.preceding_latents), a))
        cond_ids = list(range(a, b + 1)) + prec
        reads = [self._read(self.cam_of(j)) for j in cond_ids]
        cond_read = [r.latent.float().cpu() for r in reads]
        cond_mask = [r.mask.cpu() for r in reads]
        for j, lat, m in zip(cond_ids, cond_read, cond_mask):
            if a <= j:
                self.readouts[j], self.masks[j] = lat, m
        refs = [i for i, _ in self.selector.select(visible_points(self.memory, reads[:T]), exclude=prec + [a])]
        self._chunk = dict(c=c, a=a, b=b, prec=prec, refs=refs, t={"readout": time.perf_counter() - tick})
        lat = self.latents
        extra = {}
        vis = torch.stack(cond_mask[:T]) & (self.readout_scale != 0)
        obs = vis.clone()  # a memory that cannot say which point won (the RGB cache): every readout cell
        if self.n_observed is not None:
            obs &= torch.stack([(r.sky | ((r.index >= 0) & (r.index < self.n_observed))).cpu() for r in reads[:T]])
            if not (self.cfg.pin_generated and self.cfg.paste_generated):
                extra = dict(pin_masks=vis if self.cfg.pin_generated else obs,
                             paste_masks=vis if self.cfg.paste_generated else obs)
        if c == 0:
            obs[0] = True  # latent 0 is E(I_0), the observation itself
        self._chunk["memory_cells"] = obs if self.cfg.decode_imagined else None
        if self._aligns():
            self._chunk["aligned"] = reads[:T]
        return dict(
            clean_targets=lat[a][None], num_targets=T,
            readouts=torch.stack(cond_read) * self.readout_scale,
            masks=torch.stack(cond_mask) & (self.readout_scale != 0),
            **extra,
            preceding=torch.stack([lat[j] for j in prec]) if prec else None,
            references=torch.stack([lat[j] for j in refs]) if refs else None,
            context_observed=[j == 0 for j in [a] + prec + refs],  # latent 0 = E(I_0); the rest were generated
            generator=self.gen,
        )

    def finish(self, z: torch.Tensor, first_frame: np.ndarray, denoise_s: float) -> ChunkResult:
        """Lines 12-17 for the planned chunk: decode, perceive, re-encode, insert."""
        ch, model, memory, ts, N = self._chunk, self.model, self.memory, self.ts, self.N
        c, a, b = ch["c"], ch["a"], ch["b"]
        t = dict(ch["t"], denoise=denoise_s)
        new = list(range(a + 1, b + 1))
        for j in new:
            self.latents[j] = z[j - a]
        tick = time.perf_counter()
        # Lines 12-13: decode once per chunk; emit frames past the overlap frame.
        video = model.decode_video(z, memory_cells=ch.get("memory_cells"))  # (1 + ts(T-1), 3, H, W)
        for i, r in enumerate(ch.get("aligned", ())):
            if c == 0 and i == 0:
                continue  # the observation itself
            video[i] = redraw_aligned(model.codec, memory, r, self.cam_of(a + i), z[i], video[i], self.n_observed,
                                      overlap=self.cfg.aligned_overlap, depth_tol=self.cfg.aligned_depth_tol)
            video[i] = deseam_cells(video[i], r.sky, model.codec.stride, getattr(model.codec, "seam_filter", None))
        first_out = 0 if c == 0 else 1
        frame_ids = [ts * a + i for i in range(first_out, video.shape[0]) if ts * a + i < N]
        rgb = tensor_to_images(video[[f - ts * a for f in frame_ids]])
        if c == 0:
            rgb[0] = np.asarray(first_frame)  # O <- {I_0}: the input frame itself
        tick = _lap(t, "decode", tick)

        # Lines 14-17: depth, masks, encode and insert the new latent-aligned frames.
        upd = [j for j in new if ts * j < N]
        empty = np.zeros((0, self.H, self.W, 3), np.uint8)
        upd_frames = tensor_to_images(video[[ts * (j - a) for j in upd]]) if upd else empty
        upd_cams = [self.cam_of(j) for j in upd]
        depth = self.depth_fn(upd_frames, upd_cams, memory) if upd else None
        tick = _lap(t, "depth", tick)
        exclude = self.mask_fn(upd_frames, upd_cams) if upd else None
        tick = _lap(t, "masks", tick)
        pixels = getattr(memory, "stores_pixels", False)  # the RGB point-cloud cache keeps the decoded pixels
        if not upd or pixels:
            feats = None
        elif self.cfg.update_source == "reencode":
            feats = model.encode_images(images_to_tensor(upd_frames)).cpu()
        else:
            feats = torch.stack([self.latents[j] for j in upd])
        tick = _lap(t, "encode", tick)
        added = 0
        dome = {"sky": False} if getattr(memory, "sky", None) is not None and not self.cfg.generated_sky else {}
        for i in range(len(upd)):
            item = upd_frames[i] if pixels else feats[i].to(memory.device)
            added += memory.insert(item, depth[i], upd_cams[i], exclude=None if exclude is None else exclude[i],
                                   **dome)
        for j in upd:
            self.selector.remember(j, visible_points(memory, [memory.read(self.cam_of(j))]))
        _lap(t, "update", tick)
        t["total"] = sum(t[s] for s in STAGES)
        lat_ids = ([0] if c == 0 else []) + new
        return ChunkResult(
            index=c, frame_indices=frame_ids, frames=rgb, latent_indices=lat_ids,
            latents=torch.stack([self.latents[j] for j in lat_ids]),
            readouts=torch.stack([self.readouts[j] for j in lat_ids]),
            masks=torch.stack([self.masks[j] for j in lat_ids]),
            references=ch["refs"], preceding=ch["prec"], points_added=added, timings=t,
            memory_cells=None if ch.get("memory_cells") is None else ch["memory_cells"][[j - a for j in lat_ids]],
        )


def iter_rollout_batch(
    model,
    first_frame: np.ndarray,
    trajectories: Sequence[Sequence[Camera]],
    memories: Sequence,
    first_depth=None,
    first_exclude=None,
    prompt: Optional[str] = None,
    readout_scale: float = 1.0,
    prompt_embeds: Optional[torch.Tensor] = None,
    depth_provider=None,
    mask_provider=None,
    config: Optional[RolloutConfig] = None,
) -> Iterator[Tuple[int, ChunkResult]]:
    """Algorithm 1 along several trajectories from one first frame, in lockstep: each chunk round
    denoises every trajectory's chunk in batches of equal frame roles. Yields (trajectory index,
    ``ChunkResult``) in chunk order. Each trajectory has its own memory (``memories``: e.g. forks of
    one snapshot) and its own noise generator seeded with ``config.seed``, so a trajectory rolls out
    the same whether alone or in a batch (up to float rounding). See ``iter_rollout``."""
    cfg = config or RolloutConfig()
    trajs = [list(t) for t in trajectories]
    if not trajs or len(trajs) != len(memories):
        raise ValueError(f"trajectories / memories: expected one memory per trajectory, got "
                         f"{len(trajs)} and {len(memories)}")
    H, W = trajs[0][0].height, trajs[0][0].width
    if tuple(np.shape(first_frame)) != (H, W, 3):
        raise ValueError(f"first_frame: shape {np.shape(first_frame)} does not match the camera's {H}x{W}x3")
    depth_fn, mask_fn = as_depth_fn(depth_provider), as_mask_fn(mask_provider)
    emb = prompt_embeds if prompt_embeds is not None else model.text.encode(prompt)
    neg = model.text.encode(cfg.negative_prompt) if model.sampler.cfg and model.text.has_model else None

    # Lines 1-5: z_0 = E(I_0); M <- Lambda_0 of (z_0, D_0, K_0, E_0).
    z0 = model.encode_images(images_to_tensor(first_frame))[0].cpu()
    if first_depth is not None:
        for memory, cams in zip(memories, trajs):
            first = np.asarray(first_frame) if getattr(memory, "stores_pixels", False) else z0.to(memory.device)
            memory.insert(first, first_depth, cams[0], exclude=first_exclude)
    tracks = [_Track(model, cams, mem, z0, cfg, readout_scale, depth_fn, mask_fn) for cams, mem in zip(trajs, memories)]
    rounds = max(len(tr.schedule) for tr in tracks)
    bar = _tqdm(total=sum(len(tr.schedule) for tr in tracks), desc="mirage rollout", unit="chunk",
                disable=not cfg.progress)
    for c in range(rounds):
        live = [i for i, tr in enumerate(tracks) if c < len(tr.schedule)]
        requests = {i: tracks[i].plan(c) for i in live}
        groups: Dict[tuple, List[int]] = {}
        for i in live:
            r = requests[i]
            key = (r["num_targets"], 0 if r["preceding"] is None else r["preceding"].shape[0],
                   0 if r["references"] is None else r["references"].shape[0])
            groups.setdefault(key, []).append(i)
        out, secs = {}, {}
        for ids in groups.values():
            tick = time.perf_counter()

            def steps(it, c=c, ids=ids):
                return _tqdm(iterable=it, desc=f"chunk {c} denoise x{len(ids)}", leave=False,
                             disable=not cfg.progress)

            zs = model.denoise_batch([requests[i] for i in ids], (H, W), emb, neg, progress=steps)
            dt = time.perf_counter() - tick
            for i, z in zip(ids, zs):
                out[i], secs[i] = z, dt
        for i in live:
            bar.update(1)
            yield i, tracks[i].finish(out[i], first_frame, secs[i])
    bar.close()


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
    if len(cameras) < 2:
        latent_chunks(len(cameras))  # raises the documented error
    for _, chunk in iter_rollout_batch(model, first_frame, [cameras], [memory], first_depth=first_depth,
                                       first_exclude=first_exclude, prompt=prompt, readout_scale=readout_scale,
                                       prompt_embeds=prompt_embeds, depth_provider=depth_provider,
                                       mask_provider=mask_provider, config=config):
        yield chunk


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
        memory_cells=None if any(c.memory_cells is None for c in chunks)
        else torch.cat([c.memory_cells for c in chunks]),
        chunks=[{"chunk": c.index, "frames": c.frame_indices, "latents": c.latent_indices, "references": c.references,
                 "preceding": c.preceding, "points_added": c.points_added} for c in chunks],
    )
