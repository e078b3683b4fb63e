"""Backends: what the node, the demo and `mirage replay` drive. One interface, chosen by name.

- ``readout``: no generative model. Each requested view is the memory's readout (Eq. 5) decoded
  by the codec; cells the memory cannot see stay black. Honest about what it is
  (``description``), and fast enough to answer a planner in milliseconds.
- ``mirage``: a Mirage world model (``model.MirageWorldModel``: Wan2.2-TI2V-5B + side branch, or a
  folder written by ``save_pretrained``) rolling out Algorithm 1 (``rollout``);
- ``shipped``: ``mirage`` with the small model trained by this project (``SHIPPED_MODEL``), the
  default of the demo and the node.

Every backend owns a ``LatentSpatialMemory`` and a codec; ``observe`` lifts a real frame into
the memory (Algorithm 1, lines 1-4, and updates from observed frames), ``imagine`` yields
``ImaginedChunk``s along a camera trajectory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..geometry import Camera
from ..memory import LatentSpatialMemory
from .codec import Codec, WanVAECodec, images_to_tensor, make_codec, pca_colors, tensor_to_images  # noqa: F401
from .providers import as_depth_fn, as_mask_fn, make_provider
from .rollout import RolloutConfig, iter_rollout_batch

__all__ = ["ImaginedChunk", "Backend", "ReadoutBackend", "MirageBackend", "make_backend", "register_backend",
           "BACKENDS",
           "SHIPPED_MODEL"]

MAX_FRAMES_PER_REQUEST = 4096
MAX_CANDIDATES = 64
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "mirage_small"
# Wan2.2 / the paper: 40 UniPC steps on Wan's sigma grid, shift 5, CFG off. Plus memory pinning at
# every step and the readout pasted into visible cells: training-free and model-agnostic, chosen on the
# validation loops with the 12,000-step model (trained without pinning, as the paper's model is): final
# frame 17.4 -> 21.7 dB, revisited 19.4 -> 21.9 (docs/NOTES.md, "Imagination"). Not measured on the real
# Wan2.2 weights (no GPU here); sampler.pin_until 0 turns it off.
PAPER_SAMPLER = {"steps": 40, "shift": 5.0, "guidance_scale": 1.0, "sigma_grid": "wan", "pin_until": 1.0,
                 "pin_paste": True}


@dataclass
class ImaginedChunk:
    """One chunk of imagined video along the requested trajectory.

    frames (T, H, W, 3) uint8 RGB; masks (T, h, w) bool visibility m_t; readouts (T, C, h, w) the
    latent readouts z_hat_t; latents (T_lat, C, h, w) generated latents or None; frame_indices:
    for each frame, its index in the requested camera list; timings: seconds per stage.
    Pixel-space memories (the Spatia backend) add renders (T, H, W, 3) uint8, the images the model
    was conditioned on, and references: the request indices of the reference frames (-1 = the
    observed frame).
    """

    index: int
    cameras: List[Camera]
    frame_indices: List[int]
    frames: np.ndarray
    masks: np.ndarray
    readouts: torch.Tensor
    latents: Optional[torch.Tensor] = None
    timings: Dict[str, float] = field(default_factory=dict)
    renders: Optional[np.ndarray] = None
    references: Optional[List[int]] = None


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
        """Encode a real RGB frame (H, W, 3) uint8 and lift its admissible cells into the memory (a
        pixel memory, the RGB point-cloud cache, takes the frame itself)."""
        if tuple(np.shape(image)[:2]) != (camera.height, camera.width):
            raise ValueError(f"image: shape {np.shape(image)} does not match the camera's "
                             f"{camera.height}x{camera.width}")
        if getattr(self.memory, "stores_pixels", False):
            return self.memory.insert(np.asarray(image, dtype=np.uint8), depth, camera, exclude=exclude)
        latent = self.codec.encode(images_to_tensor(image, self.memory.device))[0]
        return self.memory.insert(latent, depth, camera, exclude=exclude)

    def reset(self) -> None:
        self.memory.clear()

    def imagine(
        self, cameras: Sequence[Camera], prompt: Optional[str] = None, cancel: Optional[Callable[[], bool]] = None
    ) -> Iterator[ImaginedChunk]:  # pragma: no cover - interface
        raise NotImplementedError

    def imagine_candidates(
        self, trajectories: Sequence[Sequence[Camera]], prompt: Optional[str] = None,
        cancel: Optional[Callable[[], bool]] = None,
    ) -> Iterator[Tuple[int, ImaginedChunk]]:
        """Imagine several candidate trajectories from the same memory snapshot, none written into the
        memory: yields (candidate index, chunk). Generative backends batch them through the model."""
        self._check_candidates(trajectories)
        for k, cams in enumerate(trajectories):
            for chunk in self.imagine(cams, prompt=prompt, cancel=cancel):
                yield k, chunk

    def candidate_scores(self, trajectories: Sequence[Sequence[Camera]], goal=None,
                         goal_metric: str = "latent") -> List[Dict]:
        """Cheap scores a planner can rank on, from the memory as it is (no model): per frame the
        fraction of the view the memory already knows (``visibility``), their mean (``known``), and
        ``novelty`` = 1 - known (how much of the path looks at space never seen).

        With ``goal`` (a ``planning.GoalView`` at ``native_camera``'s size) each candidate also gets
        ``goal``: the similarity of the readout at each pose to the goal image
        (``planning.CandidateGoalScores.result``): latent from the readout itself (zero where unseen),
        pixel only when ``goal_metric`` is pixel (the readout decoded, black where unseen, as the
        readout backend shows it: a decode per pose)."""
        from ..planning.goal import GOAL_READOUT, CandidateGoalScores

        gs = None if goal is None else CandidateGoalScores(goal, [len(t) for t in trajectories], GOAL_READOUT)
        out = []
        for k, cams in enumerate(trajectories):
            reads = [self.memory.read(self._native(c), dtype=None) for c in cams]
            vis = [float(r.coverage) for r in reads]
            known = float(np.mean(vis)) if vis else 0.0
            d = {"visibility": vis, "known": known, "novelty": 1.0 - known}
            if gs is not None:
                lat = torch.stack([r.latent for r in reads]).float()
                frames = decode_readout(self.codec, lat,
                                        torch.stack([r.mask for r in reads])) if goal_metric == "pixel" else None
                gs.add(k, range(len(cams)), frames, lat)
                d["goal"] = gs.result(k, goal_metric)
            out.append(d)
        return out

    def native_camera(self, camera: Camera) -> Camera:
        """The camera the memory is read and frames are made at for a request at ``camera`` (the
        model's own resolution; ``camera`` itself for the readout backend)."""
        return self._native(camera)

    def _native(self, camera: Camera) -> Camera:
        """The camera the memory is read at (a model's own resolution; identity here)."""
        return camera

    def _check_candidates(self, trajectories) -> None:
        if len(trajectories) == 0:
            raise ValueError("trajectories: no candidates")
        if len(trajectories) > MAX_CANDIDATES:
            raise ValueError(f"trajectories: {len(trajectories)} candidates, at most {MAX_CANDIDATES} per request")
        total = sum(len(t) for t in trajectories)
        if total > MAX_FRAMES_PER_REQUEST:
            raise ValueError(f"trajectories: {total} poses in all, at most {MAX_FRAMES_PER_REQUEST} per request")
        for t in trajectories:
            self._check_request(t)

    def point_colors(self) -> np.ndarray:
        """(N, 3) uint8 colours for the memory's points (``Codec.point_colors``)."""
        feats = self.memory.features
        if feats.shape[0] == 0:
            return np.zeros((0, 3), np.uint8)
        return (self.codec.point_colors(feats) * 255 + 0.5).to(torch.uint8).cpu().numpy()

    @staticmethod
    def _check_request(cameras: Sequence[Camera]) -> None:
        if len(cameras) == 0:
            raise ValueError("cameras: the trajectory is empty")
        if len(cameras) > MAX_FRAMES_PER_REQUEST:
            raise ValueError(f"cameras: {len(cameras)} poses requested, at most {MAX_FRAMES_PER_REQUEST} per request")


def decode_readout(codec: Codec, latents: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Readouts (T, C, h, w) and their masks (T, h, w) -> (T, H, W, 3) uint8 frames, black where unseen."""
    images = codec.decode(latents.float())
    images = images * masks.repeat_interleave(codec.stride, 1).repeat_interleave(codec.stride, 2)[:, None]
    return tensor_to_images(images)


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
            frames = decode_readout(self.codec, latents, masks)
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
                  chunk_size: int = 9, memory: Optional[dict] = None) -> ReadoutBackend:
    cod = make_codec(codec, weights=weights, device=device)
    mem = LatentSpatialMemory(channels=cod.channels, stride=cod.stride, device=device, **(memory or {}))
    return ReadoutBackend(mem, cod, chunk_size=chunk_size)


register_backend("readout", _make_readout)


# -- the backend ------------------------------------------------------------------------------------

class MirageBackend(Backend):
    """Generative backend: a Mirage world model (the shipped small model, or Wan2.2-TI2V-5B + side
    branch), rolling out Algorithm 1 from the last observed frame.

    ``imagine(cameras)`` rolls out from the last ``observe``d image along ``cameras`` (the poses of
    the frames to imagine, after the observed one). With ``keep_imagined=False`` (default) the
    memory is restored afterwards, so imagined content never mixes with observations.

    A model trained at one resolution (``model.resolution``, e.g. the shipped 128x224) observes and
    imagines at it: observed frames, depth, masks and cameras are resized to it before they enter
    the memory (so a memory cell always covers the area the model's latents describe), and imagined
    frames are resized back to the requested cameras' size.
    """

    name = "mirage"
    generative = True

    def __init__(self, memory: LatentSpatialMemory, model, config: Optional[RolloutConfig] = None,
                 depth_provider=None, mask_provider=None, prompt: Optional[str] = None,
                 prompt_embeds: Optional[torch.Tensor] = None, keep_imagined: bool = False):
        super().__init__(memory, model.codec)
        self.model, self.config = model, config or RolloutConfig(progress=False)
        self.depth_provider, self.mask_provider = depth_provider, mask_provider
        self.prompt, self.prompt_embeds, self.keep_imagined = prompt, prompt_embeds, keep_imagined
        self._last: Optional[Tuple[np.ndarray, Camera]] = None
        self.readout_scale = 1.0  # what the side branch sees of the readout (0: the model without memory, an ablation)
        self.description = (f"generative backend ({model.description}; side-branch layout {model.layout}); depth of "
                            f"generated frames from "
                            f"{getattr(as_depth_fn(depth_provider), 'name', 'memory')}, masks from "
                            f"{getattr(as_mask_fn(mask_provider), 'name', 'none')}")

    @property
    def resolution(self) -> Optional[Tuple[int, int]]:
        res = getattr(self.model, "resolution", None)
        return None if res is None else (int(res[0]), int(res[1]))

    def _native(self, camera: Camera) -> Camera:
        res = self.resolution
        if res is None or (camera.height, camera.width) == res:
            return camera
        return camera.resized(*res)

    def observe(self, image, depth, camera, exclude=None) -> int:
        res = self.resolution
        if res is not None and (camera.height, camera.width) != res:
            image, depth, exclude = _resize_observation(image, depth, exclude, camera, res, self.memory.stride)
            camera = camera.resized(*res)
        n = super().observe(image, depth, camera, exclude=exclude)
        self._last = (np.array(image, dtype=np.uint8, copy=True), camera)
        return n

    def reset(self) -> None:
        super().reset()
        self._last = None

    def imagine(self, cameras, prompt=None, cancel=None):
        self._check_request(cameras)
        for _, chunk in self._rollouts([cameras], prompt, cancel, keep=self.keep_imagined):
            yield chunk

    def imagine_candidates(self, trajectories, prompt=None, cancel=None):
        """All candidates in one batched rollout (lockstep chunks; one denoising batch per chunk
        round), each in its own fork of the memory: nothing is written into the memory."""
        self._check_candidates(trajectories)
        yield from self._rollouts(trajectories, prompt, cancel, keep=False)

    def _rollouts(self, trajectories, prompt, cancel, keep: bool):
        if self._last is None:
            raise RuntimeError("imagine: no frame observed yet; the world model starts from the last observed image")
        image, cam0 = self._last
        natives = [[self._native(c) for c in cams] for cams in trajectories]
        memories = [self.memory] if keep else [self.memory.fork() for _ in trajectories]
        it = iter_rollout_batch(self.model, image, [[cam0] + n for n in natives], memories,
                                prompt=prompt if prompt is not None else self.prompt,
                                prompt_embeds=None if prompt is not None else self.prompt_embeds,
                                depth_provider=self.depth_provider, mask_provider=self.mask_provider,
                                config=self.config,
                                readout_scale=self.readout_scale)
        for k, chunk in it:
            if cancel is not None and cancel():
                return
            cameras, native = trajectories[k], natives[k]
            keep_ids = [i for i, f in enumerate(chunk.frame_indices) if f >= 1]
            idx = [chunk.frame_indices[i] - 1 for i in keep_ids]
            lat_pos = {j: i for i, j in enumerate(chunk.latent_indices)}
            per_frame = [lat_pos[-(-(i + 1) // self.model.temporal_stride)] for i in idx]
            frames = chunk.frames[keep_ids]
            if native[0] is not cameras[0]:
                frames = _resize_frames(frames, cameras[0].height, cameras[0].width)
            yield k, ImaginedChunk(
                index=chunk.index, cameras=[cameras[i] for i in idx], frame_indices=idx,
                frames=frames, masks=chunk.masks[per_frame].cpu().numpy(),
                readouts=chunk.readouts[per_frame], latents=chunk.latents, timings=dict(chunk.timings),
            )


def _resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames])


def _resize_observation(image, depth, exclude, camera: Camera, res: Tuple[int, int], stride: int):
    """An observation at ``camera``'s size -> the model's resolution ``res``: the image by area, depth by
    nearest pixel (never mixing foreground and background), an exclusion mask by any-overlap."""
    import cv2

    H, W = res
    img = cv2.resize(np.asarray(image, dtype=np.uint8), (W, H), interpolation=cv2.INTER_AREA)
    d = depth.detach().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth)
    if d.shape == (camera.height, camera.width):
        d = cv2.resize(d.astype(np.float32), (W, H), interpolation=cv2.INTER_NEAREST)
    elif d.shape == (camera.height // stride, camera.width // stride):
        d = cv2.resize(d.astype(np.float32), (W // stride, H // stride), interpolation=cv2.INTER_NEAREST)
    ex = exclude
    if ex is not None:
        e = ex.detach().cpu().numpy() if isinstance(ex, torch.Tensor) else np.asarray(ex)
        ex = cv2.resize(e.astype(np.uint8) * 255, (W, H), interpolation=cv2.INTER_AREA) > 0
    return img, d, ex


def _make_mirage(config: str = "tiny", weights: Optional[str] = None, side_branch: Optional[str] = None,
                 lora: Optional[str] = None, layout: str = "paper", device: str = "cpu", dtype=None,
                 steps: Optional[int] = None, shift: Optional[float] = None, guidance_scale: Optional[float] = None,
                 pin_until: Optional[float] = None, pin_paste: Optional[bool] = None,
                 context_sigma: Optional[float] = None, seed: int = 0,
                 noise_seed: Optional[int] = None,
                 side_branch_init: str = "zero", offload: bool = False, vae_tiling: bool = False,
                 memory: Optional[dict] = None, depth=None, masks=None, prompt: Optional[str] = None,
                 keep_imagined: bool = False, rollout: Optional[dict] = None) -> MirageBackend:
    """Factory for ``make_backend("mirage", ...)``: ``weights`` = a model folder written by
    ``save_pretrained`` (e.g. the shipped model) or a Wan2.2-TI2V-5B folder (else random weights of
    ``config`` tiny | small | full), ``side_branch`` / ``lora`` checkpoint files.

    Sampler: a model folder's own settings (``model_index.json``), else the paper's (40 UniPC steps,
    shift 5, no CFG, no pinning); each of ``steps``, ``shift``, ``guidance_scale``, ``pin_until``,
    ``pin_paste``, ``context_sigma`` that is not None replaces that one setting and nothing else. ``seed``: random
    weights (no ``weights``); ``noise_seed``: the sampler noise (None: derived from the observation,
    ``RolloutConfig.seed``)."""
    from .model import MirageWorldModel, is_mirage_folder
    from .sampler import FlowUniPCSampler

    if layout == "spatia":
        raise ValueError("layout: 'spatia' is Spatia's conditioning (a rendered point cloud), not a Mirage readout: "
                         "use backend spatia")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    overrides = dict(steps=steps, shift=shift, guidance_scale=guidance_scale, pin_until=pin_until, pin_paste=pin_paste,
                     context_sigma=context_sigma)
    if weights and is_mirage_folder(weights):
        model = MirageWorldModel.from_pretrained(weights, side_branch=side_branch, lora=lora, device=device,
                                                 dtype=dtype)
        model.sampler = FlowUniPCSampler.from_config(model.sampler.config(), **overrides)
    else:
        sampler = FlowUniPCSampler.from_config(PAPER_SAMPLER, **overrides)
        if weights:
            model = MirageWorldModel.from_pretrained(weights, side_branch=side_branch, lora=lora, layout=layout,
                                                     device=device, dtype=dtype, offload=offload, vae_tiling=vae_tiling,
                                                     sampler=sampler)
        else:
            model = MirageWorldModel.build(config, layout=layout, device=device, dtype=dtype, seed=seed,
                                           side_branch_init=side_branch_init, sampler=sampler, offload=offload)
    _refuse_spatia_branch(model, side_branch)
    mem = LatentSpatialMemory(channels=model.channels, stride=model.stride, device=device, **(memory or {}))
    cfg = RolloutConfig(**{"progress": False, "seed": noise_seed, **(rollout or {})})
    return MirageBackend(mem, model, cfg, depth_provider=make_provider("depth", depth, device),
                         mask_provider=make_provider("masks", masks, device), prompt=prompt,
                         keep_imagined=keep_imagined)


def _make_shipped(weights: Optional[str] = None, **kwargs) -> MirageBackend:
    """``make_backend("shipped")``: the small world model trained by this project and shipped in the
    package (``SHIPPED_MODEL``), or ``weights`` if given. Refuses to start without it (no silent
    fallback to the readout backend)."""
    folder = Path(weights) if weights else SHIPPED_MODEL
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"weights: the shipped model is not at {folder} (model_index.json missing); "
                                "use --backend readout for the memory readout alone")
    backend = _make_mirage(weights=str(folder), **kwargs)
    backend.name = "shipped"
    return backend


_make_shipped.options_of = _make_mirage  # its options are the mirage backend's


def _refuse_spatia_branch(model, side_branch) -> None:
    """A Spatia VACE file (a block every 4th layer, 96 channels) would be fed Mirage readouts: refused."""
    from .spatia import classify_side_branch

    sb = model.transformer.side_branch
    if side_branch is not None and sb is not None and classify_side_branch(sb) == "spatia":
        raise ValueError(f"side_branch: {side_branch} is Spatia's VACE branch (blocks after layers "
                         f"{list(sb.config.layers)}, "
                         "96 channels of rendered point cloud + hole mask): use backend spatia")


def _make_spatia(**kwargs):
    """``make_backend("spatia", ...)``: ``spatia_backend.make_spatia_backend`` (imported when used)."""
    from .spatia_backend import make_spatia_backend

    _check_options("spatia", make_spatia_backend, kwargs)
    return make_spatia_backend(**kwargs)


register_backend("mirage", _make_mirage)
register_backend("shipped", _make_shipped)
register_backend("spatia", _make_spatia)


def make_backend(name: str = "readout", **config) -> Backend:
    """Build a backend by name with its config (codec, weights, device, chunk_size, memory={...})."""
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown name {name!r} (available: {', '.join(sorted(BACKENDS))})")
    factory = BACKENDS[name]
    _check_options(name, getattr(factory, "options_of", factory), config)
    return factory(**config)


def _check_options(name: str, fn: Callable, config: dict) -> None:
    """An option ``fn`` does not take is an error naming it (never silently ignored)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise ValueError(f"backend {name!r}: unknown option(s) {', '.join(unknown)} (known: {', '.join(params)})")
