"""``backend: spatia``: Spatia's released world model served like the other backends, its memory the
package's RGB point-cloud cache.

Per ``imagine`` request (cameras after the last observed frame; trajectory frame 0 = that frame), round by
round as Spatia's ``inference.py`` (``spatia.spatia_rounds``: 121 frames, then 81 with 9 of history):

1. render the cache at every camera of the round (voxelised at 1 cm + 0.5 cm per round, disks of radius
   0.01 NDC, 5 per pixel, alpha-composited: ``baselines.point_render``) -> VAE(render) ++ VAE(hole);
2. rounds >= 1: references = earlier frames (every 4th before the round) matched to the round's cameras
   (every 12th) by front-most visible memory points, Hungarian, up to 7;
3. denoise (40 UniPC steps on Wan's grid, CFG 3.5, Spatia's prompt suffix and negative prompt, seed
   20917 every round; LoRA off in round 0, on after), decode;
4. lift the new frames that fall on Spatia's 4 fps grid (every 6th) into the cache at MapAnything's
   point density (518 pixels wide), depth from a provider (simulator, Depth Anything 3, or the cache's
   own rendered depth), exclusion masks from a mask provider.

Differences from Spatia, by design: Spatia rebuilds its cloud from MapAnything depth of all frames every
round; here depth comes from the package's providers and frames are added incrementally (with the
cache's de-duplication), the observed frames with the robot's own depth. The history frames are each
round's own decode (Spatia re-decodes all latents once more for its saved video). Frames are emitted as
each round finishes. Imagined content leaves the cache unchanged unless ``keep_imagined``.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..baselines.point_render import PointRender, voxel_downsample
from ..baselines.rgb_memory import RGBPointCloudMemory
from ..geometry import Camera
from .backend import Backend, ImaginedChunk, _resize_frames
from .codec import tensor_to_images
from .providers import as_depth_fn, as_mask_fn, make_provider
from .spatia import (
    SpatiaSampler,
    SpatiaSettings,
    SpatiaWorldModel,
    frontmost_visible,
    latent_count,
    match_references,
    read_negative_prompt,
    spatia_rounds,
)

__all__ = ["SpatiaBackend", "make_spatia_backend"]


class SpatiaBackend(Backend):
    """Generative backend in the Spatia layout (see module docstring)."""

    name = "spatia"
    generative = True

    def __init__(self, model: SpatiaWorldModel, settings: Optional[SpatiaSettings] = None, device="cpu",
                 memory: Optional[dict] = None, depth_provider=None, mask_provider=None, prompt: Optional[str] = None,
                 negative_prompt: str = "", keep_imagined: bool = False, renderer: Optional[PointRender] = None):
        self.settings = settings or SpatiaSettings()
        # the latent memory's options that mean the same for a point cloud (the rest concern latent features)
        mem_opts = {k: v for k,
                    v in (memory or {}).items() if k in ("dedup", "dedup_tolerance", "block_size", "max_points")}
        super().__init__(RGBPointCloudMemory(model.codec, device=device, **mem_opts), model.codec)
        self.model = model
        s = self.settings
        self.renderer = renderer or PointRender(radius=s.render_radius, points_per_pixel=s.points_per_pixel,
                                                convention=s.render_convention)
        self.depth_provider, self.mask_provider = depth_provider, mask_provider
        self.prompt, self.negative_prompt, self.keep_imagined = prompt, negative_prompt, keep_imagined
        self._last: Optional[Tuple[np.ndarray, Camera]] = None
        self._embeds: Dict[str, torch.Tensor] = {}
        text = "UMT5 prompts with Spatia's suffix" if model.text.has_model else "no text encoder (zero prompt, CFG off)"
        self.description = (f"spatia backend ({model.description}); {s.height}x{s.width}, rounds of "
                            f"{s.first_round_frames} "
                            f"then {s.round_frames} frames ({s.history_frames} history), up to {s.references} "
                            f"references, "
                            f"{model.sampler.steps} steps, CFG {model.sampler.guidance_scale}, {text}; memory: RGB "
                            f"point "
                            f"cloud, depth of generated frames from "
                            f"{getattr(as_depth_fn(depth_provider), 'name', 'memory')}")

    @property
    def resolution(self) -> Tuple[int, int]:
        return self.settings.height, self.settings.width

    def _native(self, camera: Camera) -> Camera:
        H, W = self.resolution
        return camera if (camera.height, camera.width) == (H, W) else camera.resized(H, W)

    # -- memory --------------------------------------------------------------------------------------
    def _lift(self, memory, image: np.ndarray, depth, camera: Camera, exclude=None) -> int:
        """Insert a frame at the point density of Spatia's memory (MapAnything's input size)."""
        import cv2

        h, w = self.settings.point_resolution
        small = camera.resized(h, w)
        img = cv2.resize(np.asarray(image, dtype=np.uint8), (w, h), interpolation=cv2.INTER_AREA)
        d = depth.detach().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth)
        d = _full_res(d.astype(np.float32), camera, self.memory.stride)
        d = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
        ex = None
        if exclude is not None:
            e = exclude.detach().cpu().numpy() if isinstance(exclude, torch.Tensor) else np.asarray(exclude)
            e = _full_res(e.astype(np.uint8), camera, self.memory.stride)
            ex = cv2.resize(e * 255, (w, h), interpolation=cv2.INTER_AREA) > 0
        return memory.insert(img, d, small, exclude=ex)

    def observe(self, image, depth, camera, exclude=None) -> int:
        """A real frame: kept (at the model's resolution) as the next rollout's first frame, and lifted into
        the cache with its depth."""
        import cv2

        if tuple(np.shape(image)[:2]) != (camera.height, camera.width):
            raise ValueError(f"image: shape {np.shape(image)} does not match the camera's "
                             f"{camera.height}x{camera.width}")
        n = self._lift(self.memory, image, depth, camera, exclude)
        H, W = self.resolution
        img = np.asarray(image, dtype=np.uint8)
        if img.shape[:2] != (H, W):
            img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
        self._last = (np.array(img, copy=True), self._native(camera))
        return n

    def reset(self) -> None:
        super().reset()
        self._last = None

    def point_colors(self) -> np.ndarray:
        return self.memory.colors.cpu().numpy()

    def candidate_scores(self, trajectories):
        """As ``Backend.candidate_scores``, the visibility read from the points at the latent grid."""
        out = []
        for cams in trajectories:
            vis = []
            for c in cams:
                n = self._native(c)
                h, w = n.latent_size(self.memory.stride)
                vis.append(float(self.memory.cloud.read(n.resized(h, w), dtype=None).coverage))
            known = float(np.mean(vis)) if vis else 0.0
            out.append({"visibility": vis, "known": known, "novelty": 1.0 - known})
        return out

    # -- generation ------------------------------------------------------------------------------------
    def _prompt_embeds(self, prompt: Optional[str]):
        """(prompt, negative) embeddings: the prompt with Spatia's suffix; (zeros, None) without a text encoder."""
        text = self.model.text
        prompt = prompt if prompt is not None else (self.prompt or "")
        if not text.has_model:
            if prompt:
                raise ValueError("prompt: this Spatia model has no text encoder (weights folder without UMT5); "
                                 "give no prompt")
            return text.empty(), None
        key = prompt + self.settings.prompt_suffix
        if key not in self._embeds:
            self._embeds[key] = text.encode(key).cpu()
        neg = None
        if self.model.sampler.cfg:
            if ("\0neg", self.negative_prompt) not in self._embeds:
                self._embeds[("\0neg", self.negative_prompt)] = text.encode(self.negative_prompt).cpu()
            neg = self._embeds[("\0neg", self.negative_prompt)]
        return self._embeds[key], neg

    def imagine(self, cameras, prompt=None, cancel=None):
        self._check_request(cameras)
        memory = self.memory if self.keep_imagined else self.memory.fork()
        yield from self._rollout(list(cameras), memory, prompt, cancel)

    def imagine_candidates(self, trajectories, prompt=None, cancel=None):
        """One candidate after the other (Spatia's rounds do not batch: each has its own references),
        each in its own fork of the cache."""
        self._check_candidates(trajectories)
        for k, cams in enumerate(trajectories):
            for chunk in self._rollout(list(cams), self.memory.fork(), prompt, cancel):
                yield k, chunk

    def round_plan(self, num_cameras: int) -> List[Dict]:
        """Per round: frames [start, end) of the trajectory (0 = the observed frame), its length, the
        history length, whether the LoRA is on, the voxel size of its render."""
        s = self.settings
        out = []
        for r, (start, end, frames) in enumerate(spatia_rounds(num_cameras + 1, s.first_round_frames, s.round_frames,
                                                               s.history_frames)):
            out.append({"round": r, "start": start, "end": end, "frames": frames, "latents": latent_count(frames),
                        "history": 1 if r == 0 else s.history_frames, "lora": r > 0, "voxel": s.render_voxel_at(r)})
        return out

    @torch.no_grad()
    def _rollout(self, cameras: List[Camera], memory, prompt, cancel):
        if self._last is None:
            raise RuntimeError("imagine: no frame observed yet; the world model starts from the last observed image")
        s, model = self.settings, self.model
        image0, cam0 = self._last
        natives = [self._native(c) for c in cameras]
        cams = [cam0] + natives
        pos, neg = self._prompt_embeds(prompt)
        depth_fn, mask_fn = as_depth_fn(self.depth_provider), as_mask_fn(self.mask_provider)
        frames: List[np.ndarray] = [image0]  # every frame so far, at the model's resolution
        H, W = self.resolution
        for plan in self.round_plan(len(cameras)):
            if cancel is not None and cancel():
                return
            r, start, end, F, n_hist = plan["round"], plan["start"], plan["end"], plan["frames"], plan["history"]
            t: Dict[str, float] = {}
            tick = time.perf_counter()
            round_cams = cams[start:end] + [cams[end - 1]] * (F - (end - start))
            pts, cols = memory.points, memory.colors.float() / 255.0
            if pts.shape[0]:
                pts, cols = voxel_downsample(pts, cols, plan["voxel"])
            renders, holes = zip(*(self.renderer(pts, cols, c) for c in round_cams))
            renders, holes = torch.stack(renders).cpu(), torch.stack(holes).cpu()
            control = model.control_latents(renders.numpy(), holes)
            tick = _lap(t, "readout", tick)
            refs: List[np.ndarray] = []
            ref_ids: List[int] = []
            if r > 0 and s.references > 0 and memory.num_points:
                cand = list(range(0, start, s.ref_history_stride))
                new_cams = round_cams[::s.ref_stride]
                ref_pts = voxel_downsample(memory.points, None, s.ref_voxel)[0]
                K = cams[0].K
                intr = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
                hm = frontmost_visible(ref_pts, torch.stack([cams[i].world_to_camera for i in cand]), intr, H, W)
                nm = frontmost_visible(ref_pts, torch.stack([c.world_to_camera for c in new_cams]), intr, H, W)
                ref_ids = [cand[i] for i, _ in match_references(hm, nm, s.references)]
                refs = [frames[i] for i in ref_ids]
            tick = _lap(t, "references", tick)
            kw = dict(first_image=frames[0]) if r == 0 else dict(history=np.stack(frames[-s.history_frames:]))
            z, _ = model.generate_round(None, None, pos, control=control, references=refs, negative_embeds=neg,
                                        seed=s.seed,
                                        lora=plan["lora"], decode=False, **kw)
            tick = _lap(t, "denoise", tick)
            video = tensor_to_images(model.decode_video(z))  # (F, H, W, 3)
            tick = _lap(t, "decode", tick)
            new_ids = list(range(start + n_hist, end))
            new = video[n_hist:n_hist + len(new_ids)]
            frames.extend(new)
            upd = [i for i in new_ids if i % s.map_stride == 0]
            if upd:
                ph, pw = s.point_resolution
                import cv2

                small = np.stack([cv2.resize(frames[i], (pw, ph), interpolation=cv2.INTER_AREA) for i in upd])
                small_cams = [cams[i].resized(ph, pw) for i in upd]
                depth = depth_fn(small, small_cams, memory.cloud)
                tick = _lap(t, "depth", tick)
                exclude = mask_fn(small, small_cams)
                tick = _lap(t, "masks", tick)
                for j in range(len(upd)):
                    memory.insert(small[j], depth[j], small_cams[j], exclude=None if exclude is None else exclude[j])
            _lap(t, "update", tick)
            t["total"] = sum(t.values())
            yield self._chunk(r, cameras, new_ids, new, renders[n_hist:n_hist + len(new_ids)].numpy(),
                              holes[n_hist:n_hist + len(new_ids)], control, z, n_hist, t, ref_ids)

    def _chunk(self, r, cameras, new_ids, frames, renders, holes, control, z, n_hist, timings, ref_ids):
        """The round's new frames as an ImaginedChunk at the requested size."""
        import torch.nn.functional as F_

        s = self.memory.stride
        masks = (F_.avg_pool2d((1.0 - holes)[:, None], s)[:, 0] >= 0.5).numpy()
        local = [n_hist + k for k in range(len(new_ids))]  # round frame index -> its latent: (f + 3) // 4
        per_frame = [(f + 3) // 4 for f in local]
        readouts = control[per_frame, : self.codec.channels].float()
        out_h, out_w = cameras[0].height, cameras[0].width
        if frames.shape[1:3] != (out_h, out_w):
            frames = _resize_frames(frames, out_h, out_w)
            renders = _resize_frames(renders, out_h, out_w)
        idx = [g - 1 for g in new_ids]
        return ImaginedChunk(index=r, cameras=[cameras[i] for i in idx], frame_indices=idx,
                             frames=np.ascontiguousarray(frames),
                             masks=masks, readouts=readouts, latents=z[latent_count(n_hist) if r else 1:].clone(),
                             timings=dict(timings), renders=np.ascontiguousarray(renders),
                             references=[i - 1 for i in ref_ids])


def _full_res(a: np.ndarray, camera: Camera, stride: int) -> np.ndarray:
    """A (h, w) per-latent-cell map spread over its pixels; (H, W) maps pass through."""
    if a.shape == (camera.height, camera.width):
        return a
    if a.shape == (camera.height // stride, camera.width // stride):
        return np.repeat(np.repeat(a, stride, 0), stride, 1)
    raise ValueError(f"depth / exclude: shape {a.shape} fits neither {camera.height}x{camera.width} nor the latent "
                     f"grid")


def _lap(t: Dict[str, float], stage: str, tick: float) -> float:
    now = time.perf_counter()
    t[stage] = t.get(stage, 0.0) + now - tick
    return now


def make_spatia_backend(weights: Optional[str] = None, side_branch: Optional[str] = None, lora: Optional[str] = None,
                        config: str = "tiny", device: str = "cpu", dtype=None, steps: Optional[int] = None,
                        guidance_scale: Optional[float] = None, seed: int = 0, offload: bool = False,
                        vae_tiling: bool = False, memory: Optional[dict] = None, depth=None, masks=None,
                        prompt: Optional[str] = None, negative_prompt: Optional[str] = None,
                        negative_prompt_file: Optional[str] = None, keep_imagined: bool = False,
                        resolution: Optional[Tuple[int, int]] = None, rounds: Optional[Tuple[int, int, int]] = None,
                        references: Optional[int] = None, render_convention: Optional[str] = None,
                        layout: str = "spatia") -> SpatiaBackend:
    """``make_backend("spatia", ...)``: ``weights`` = Wan2.2-TI2V-5B (diffusers or original layout) with
    ``side_branch`` = Spatia's VACE file, or a folder holding it and its LoRA (``lora`` names the LoRA file
    otherwise); without ``weights``, random weights of ``config`` (tiny | full) in the Spatia layout.
    ``resolution`` (H, W) default 704 x 1248, ``rounds`` (first, later, history) default (121, 81, 9):
    Spatia's; ``steps`` / ``guidance_scale`` replace Spatia's 40 / 3.5. The negative prompt: text, or
    ``negative_prompt_file`` (a text file, or Spatia's ``inference.py``, whose constant is read)."""
    import logging

    if layout != "spatia":
        raise ValueError(f"layout: the spatia backend runs the Spatia layout only, got {layout!r} (use backend mirage)")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    settings = SpatiaSettings()
    over = {}
    if resolution is not None:
        over.update(height=int(resolution[0]), width=int(resolution[1]))
    if rounds is not None:
        over.update(first_round_frames=int(rounds[0]), round_frames=int(rounds[1]), history_frames=int(rounds[2]))
    if references is not None:
        over["references"] = int(references)
    if render_convention is not None:
        over["render_convention"] = render_convention
    settings = replace(settings, **over)
    sampler = SpatiaSampler(steps=steps or settings.steps, shift=settings.shift,
                            guidance_scale=settings.guidance_scale if guidance_scale is None else guidance_scale)
    if weights:
        model = SpatiaWorldModel.from_pretrained(weights, side_branch=side_branch, lora=lora, device=device,
                                                 dtype=dtype,
                                                 offload=offload, vae_tiling=vae_tiling, sampler=sampler)
    else:
        if side_branch or lora:
            raise ValueError("side_branch / lora: give weights (the Wan2.2-TI2V-5B folder) too")
        model = SpatiaWorldModel.build(config, device=device, dtype=dtype, seed=seed, sampler=sampler, lora_rank=4)
    if not model.text.has_model and model.sampler.cfg:
        # zero prompts: CFG is a no-op
        model.sampler = SpatiaSampler.from_config(model.sampler.config(), guidance_scale=1.0)
    neg = negative_prompt or ""
    if negative_prompt_file:
        neg = read_negative_prompt(negative_prompt_file)
    if model.text.has_model and model.sampler.cfg and not neg:
        logging.getLogger("mirage_ros.spatia").warning(
            "spatia: no negative prompt given; Spatia's is in its inference.py (negative_prompt_file)")
    be = SpatiaBackend(model, settings, device=device, memory=memory,
                       depth_provider=make_provider("depth", depth, device),
                       mask_provider=make_provider("masks", masks, device), prompt=prompt, negative_prompt=neg,
                       keep_imagined=keep_imagined)
    logging.getLogger("mirage_ros.spatia").info("backend spatia, layout spatia: %s", be.description)
    return be
