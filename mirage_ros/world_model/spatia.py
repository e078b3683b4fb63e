"""The Spatia layout: Spatia's released world model (Wan2.2-TI2V-5B + VACE branch + LoRA) run as Spatia runs it.

Spatia (github ZhaoJingjing713/Spatia, weights ``Jinjing713/Spatia``) conditions Wan2.2-TI2V-5B on a
rendered RGB point-cloud memory. Everything here was read off its inference code (``inference.py``,
``wan/wan_video_new.py``, ``wan/wan_video_vace.py``, ``utils/render_point*.py``, ``utils/frustum_culling.py``,
commit 5dd3457) and is checked against that code at toy size (``tests/test_spatia.py``):

- **side branch**: VACE blocks after backbone layers 0, 4, ..., 28 (8 blocks, every 4th layer), a patch
  embedding of its own over 96 channels, no mask embedding; hints go to the history and new frames,
  never to the references. The same module as the official Mirage branch (``MirageSideBranch``, layout
  ``spatia`` in ``configs``); a file is told apart by its block spacing (every 2nd layer = Mirage's).
- **conditioning** (96 channels) = VAE(render video, black background, in [-1, 1]) ++ VAE(hole video
  fed in [0, 1], 1 = nothing rendered), both encoded as videos over all frames of the round.
- **sequence** ``[references | history | new]``; each reference a single image encoded alone, the
  history the last 9 RGB frames re-encoded as one video (3 clean latents); in round 0 the history is
  the input image alone (1 latent). Rotary positions: history and new at t = 0, 1, ...; references at
  t = -R .. -1 and shifted by the latent grid height (this package's ``official`` rope layout with the
  history as clean targets). References and history at timestep 0, reset after every step.
- **sampler**: UniPC, 40 steps, shift 5, CFG 3.5 with a negative prompt, the prompt suffixed with
  ``" 4K, realistic, high quality, HDR."``, one seed (20917) re-used in every round. Its sigma grid is
  Wan's (linspace(1 - 1/1000, 0, 41), shifted) where diffusers' UniPC uses linspace(1, 1/1000, 41):
  ``SpatiaSampler`` (the last timesteps 288, 208, 113 instead of 291, 211, 117).
- **rounds** at 1248 x 704: the first 121 frames, then 81 frames of which the first 9 are history
  (72 new), round r >= 1 starting at 121 + 81 (r - 1) - 9 r; the last round is padded with its last
  camera. ``spatia_rounds``.
- **references**: up to 7 per round from earlier frames (every 4th frame before the round, at 24 fps);
  each sampled new camera (every 12th) is matched to one of them by the Hungarian algorithm on the
  number of memory points both see front-most (``frontmost_visible``: a per-pixel z-buffer at the
  integer pixel), counts rounded to bfloat16 as its GPU matmul does. ``match_references``.
- **LoRA**: off in round 0, on from round 1 (Spatia merges it in bfloat16; here it stays a peft adapter
  switched on and off, equal up to that rounding, and exact over any number of rollouts).
- **memory**: the points of MapAnything depth on the frames (every 6th), voxelised at 1 cm, rebuilt
  each round; rendered after a voxelisation at 1 cm + 0.5 cm per round with PyTorch3D (radius 0.01
  NDC, 5 points per pixel, alpha compositing): ``baselines.point_render`` and the backend
  (``spatia_backend``), which uses this package's RGB point-cloud cache and depth providers instead.

Spatia's negative prompt is its own text: pass it (``read_negative_prompt`` reads it from Spatia's
``inference.py`` or from a text file); the package does not ship it.
"""
from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .model import MirageWorldModel
from .sampler import SAMPLERS, FlowUniPCSampler

__all__ = ["SpatiaSettings", "SpatiaSampler", "SpatiaWorldModel", "spatia_rounds", "latent_count", "frontmost_visible",
           "intersection_counts", "match_references", "classify_side_branch", "spatia_lora_state",
           "read_negative_prompt",
           "PROMPT_SUFFIX", "VACE_STRIDE"]

_LOG = logging.getLogger("mirage_ros.spatia")
PROMPT_SUFFIX = " 4K, realistic, high quality, HDR."
VACE_STRIDE = 4  # a hint block after every 4th backbone layer (0, 4, ..., 28 of 30)


@dataclass(frozen=True)
class SpatiaSettings:
    """Spatia's inference settings (its ``inference.py`` defaults) and this package's point density."""

    height: int = 704
    width: int = 1248
    first_round_frames: int = 121
    round_frames: int = 81
    history_frames: int = 9
    fps: float = 24.0  # the frame rate the sampling rates below refer to
    map_fps: float = 4.0  # frames whose points enter the memory
    ref_fps: float = 2.0  # new cameras matched to references
    ref_history_fps: float = 6.0  # earlier frames that may become references
    references: int = 7
    steps: int = 40
    shift: float = 5.0
    guidance_scale: float = 3.5
    seed: int = 20917
    prompt_suffix: str = PROMPT_SUFFIX
    render_voxel: float = 0.01
    render_voxel_step: float = 0.005
    ref_voxel: float = 0.01  # MapAnything's output voxelisation: the point set references are matched on
    point_radius: float = 0.01
    points_per_pixel: int = 5
    render_convention: str = "spatia"
    point_width: int = 518  # MapAnything's input width: the density of the points a frame adds

    def __post_init__(self):
        for name in ("first_round_frames", "round_frames", "history_frames"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or (v - 1) % 4:
                raise ValueError(f"spatia.{name}: expected 4k + 1 frames (the VAE's temporal stride), got {v!r}")
        if self.round_frames <= self.history_frames:
            raise ValueError(f"spatia.round_frames: {self.round_frames} must exceed history_frames "
                             f"{self.history_frames}")
        if self.height % 32 or self.width % 32:
            raise ValueError(f"spatia resolution: {self.height}x{self.width} must be multiples of 32 (VAE stride 16, "
                             f"patch 2)")
        if self.references < 0:
            raise ValueError(f"spatia.references: expected >= 0, got {self.references}")

    def _stride(self, rate: float) -> int:
        return max(1, int(round(self.fps / rate)))

    @property
    def map_stride(self) -> int:
        return self._stride(self.map_fps)

    @property
    def ref_stride(self) -> int:
        return self._stride(self.ref_fps)

    @property
    def ref_history_stride(self) -> int:
        return self._stride(self.ref_history_fps)

    def render_voxel_at(self, round_index: int) -> float:
        return self.render_voxel + round_index * self.render_voxel_step

    @property
    def render_radius(self) -> float:
        """Disk radius in NDC: Spatia's 0.01 at its 704-pixel short side (3.52 pixels), the same pixel
        radius at other resolutions (the look the model was trained on; at 704 exactly Spatia's)."""
        return self.point_radius * 704.0 / min(self.height, self.width)

    @property
    def point_resolution(self) -> Tuple[int, int]:
        """(H, W) of the frames lifted into the memory: MapAnything's input (width 518, height a multiple of
        14, at most 518; 294 x 518 for 704 x 1248 frames); frames narrower than that keep their own size."""
        if self.width <= self.point_width:
            return self.height, self.width
        w = self.point_width
        h = int(round(self.height * (w / self.width) / 14)) * 14
        return min(h, 518), w


def latent_count(frames: int) -> int:
    """Latent frames of a video of ``frames`` RGB frames (the Wan2.2 VAE: first alone, then 4 per latent)."""
    return (int(frames) - 1) // 4 + 1


def spatia_rounds(total: int, first: int = 121, later: int = 81, history: int = 9) -> List[Tuple[int, int, int]]:
    """(start, end, frames) per round for a trajectory of ``total`` frames (frame 0 = the input image):
    round 0 covers [0, first), round r >= 1 starts ``history`` frames before the previous one ended;
    ``frames`` is the round's length (the cameras past ``end`` repeat the last one)."""
    if total < 1:
        raise ValueError(f"total: expected >= 1 frame, got {total}")
    if later <= history:
        raise ValueError(f"later: {later} frames per round must exceed the {history} history frames")
    n = 1 if total <= first else 1 + -(-(total - first) // (later - history))
    out = []
    for r in range(n):
        start, frames = (0, first) if r == 0 else (max(0, first + (r - 1) * later - history * r), later)
        out.append((start, min(start + frames, total), frames))
    return out


class SpatiaSampler(FlowUniPCSampler):
    """``FlowUniPCSampler`` on Wan's sigma grid (``sigma_grid="wan"``, Spatia's ``FlowUniPCMultistepScheduler``;
    the rest of UniPC is diffusers', equal to Spatia's to 1.4e-6 over 40 steps, tested) with Spatia's
    defaults: 40 steps, shift 5, CFG 3.5."""

    def __init__(self, steps: int = 40, shift: float = 5.0, guidance_scale: float = 3.5, sigma_grid: str = "wan",
                 **kwargs):
        super().__init__(steps=steps, shift=shift, guidance_scale=guidance_scale, sigma_grid=sigma_grid, **kwargs)


SAMPLERS["SpatiaSampler"] = SpatiaSampler  # from_config rebuilds it by name


# -- references -----------------------------------------------------------------------------------

def frontmost_visible(points: torch.Tensor, world_to_camera: torch.Tensor, intrinsics: Sequence[float],
                      height: int, width: int) -> torch.Tensor:
    """(T, N) bool: point n is the nearest (smallest z > 0, within 1e-6) of the points that fall in its
    integer pixel of view t (u = fx x / z + cx truncated toward zero, as Spatia's ``.long()``).

    points (N, 3); world_to_camera (T, 4, 4) or (T, 3, 4); intrinsics pixel-space (fx, fy, cx, cy)."""
    dev = points.device
    E = world_to_camera.to(dev, torch.float32)
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    pts = points.float()
    out = torch.zeros(E.shape[0], pts.shape[0], dtype=torch.bool, device=dev)
    eps = torch.finfo(torch.float32).eps
    for t in range(E.shape[0]):
        cam = pts @ E[t, :3, :3].T + E[t, :3, 3]
        Z = cam[:, 2]
        den = Z.clamp(min=eps)
        ui = (fx * (cam[:, 0] / den) + cx).long()
        vi = (fy * (cam[:, 1] / den) + cy).long()
        valid = (Z > 0) & (ui >= 0) & (ui < width) & (vi >= 0) & (vi < height)
        pix = (vi * width + ui).clamp(0, height * width - 1)
        zeff = torch.where(valid, Z, torch.full_like(Z, 1e9))
        buf = torch.full((height * width,), 1e9, device=dev).scatter_reduce(0, pix, zeff, reduce="amin")
        out[t] = valid & (Z <= buf[pix] + 1e-6)
    return out


def intersection_counts(history: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """(N_new, N_hist) points seen front-most by both, rounded to bfloat16 (Spatia multiplies the masks
    in bfloat16: exact float32 accumulation, one rounding of the result)."""
    counts = new.double() @ history.double().T
    return counts.to(torch.bfloat16).float()


def match_references(history_masks: torch.Tensor, new_masks: torch.Tensor, max_refs: int = 7) -> List[Tuple[int, int]]:
    """(history index, shared points) per new camera in camera order, each history frame used once
    (Hungarian matching on the bfloat16 counts, scipy's ``linear_sum_assignment``, as Spatia), at most
    ``max_refs``. A match with no shared point is kept, as Spatia keeps it. With more new cameras than
    history frames the unmatched cameras get none (Spatia refuses that case)."""
    if max_refs <= 0 or history_masks.shape[0] == 0 or new_masks.shape[0] == 0:
        return []
    from scipy.optimize import linear_sum_assignment

    cost = -intersection_counts(history_masks, new_masks).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    exact = (new_masks.double() @ history_masks.double().T).long()
    out = [(int(c), int(exact[r, c])) for r, c in sorted(zip(rows.tolist(), cols.tolist()))]
    return out[:max_refs]


# -- files -----------------------------------------------------------------------------------------

def classify_side_branch(branch) -> str:
    """``spatia`` (96 channels, own patch embedding, no mask, a block every 4th layer), ``official``
    (the same every 2nd layer: microsoft/LatentSpatialMemory), ``paper`` (48 channels + mask embedding)
    or ``other``, from a loaded ``MirageSideBranch``."""
    cfg = branch.config
    layers, n = list(cfg.layers), int(cfg.num_backbone_layers)
    own96 = branch.patch_embedding is not None and int(cfg.in_channels) == 96 and branch.mask_embedding is None
    every2, every4 = list(range(0, n, 2)), list(range(0, n, VACE_STRIDE))
    if own96 and layers == every4 and every4 != every2:
        return "spatia"
    if own96 and layers == every2:
        return "official"
    if branch.mask_embedding is not None and branch.patch_embedding is None:
        return "paper"
    return "other"


def spatia_lora_state(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], int]:
    """The backbone's LoRA tensors of a Spatia LoRA file: Spatia keeps only keys under ``pipe.dit.``
    (DiffSynth's training module prefix) when there are any. Returns (state, keys dropped)."""
    dit = {k[k.index("pipe.dit.") + len("pipe.dit."):]: v for k, v in state.items() if "pipe.dit." in k}
    if not dit:
        return dict(state), 0
    return dit, len(state) - len(dit)


def read_negative_prompt(path: Union[str, Path]) -> str:
    """A negative prompt from a text file, or from a Python file's ``NEGATIVE_PROMPT = "..."`` constant
    (Spatia's ``inference.py``), read with ``ast`` (never executed)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        try:
            tree = ast.parse(text)
        except SyntaxError as exc:
            raise ValueError(f"negative prompt: {path} is not valid Python ({exc})") from None
        for node in tree.body:
            if isinstance(node,
                          ast.Assign) and any(isinstance(t,
                                                         ast.Name) and t.id == "NEGATIVE_PROMPT" for t in node.targets):
                value = ast.literal_eval(node.value)
                if isinstance(value, str):
                    return value
        raise ValueError(f"negative prompt: {path} has no NEGATIVE_PROMPT = '...' string")
    return text.strip()


# -- the model -------------------------------------------------------------------------------------

class SpatiaWorldModel(MirageWorldModel):
    """``MirageWorldModel`` with Spatia's conditioning: the side branch takes the 96-channel control
    latents of a round as they are (``control_latents``), and ``generate_round`` runs one Spatia round.
    Build with ``build`` (random weights) or ``from_pretrained`` (Wan2.2-TI2V-5B + Spatia's files)."""

    @property
    def layout(self) -> Optional[str]:
        return None if self.transformer.side_branch is None else "spatia"

    def control_inputs(self, readouts: torch.Tensor, masks: torch.Tensor, image_size: Tuple[int, int]):
        """readouts: (F, 96, h, w) control latents of the conditioned frames -> (1, 96, F, h, w); no mask."""
        sb = self.transformer.side_branch
        if sb is None:
            return None, None
        if readouts.shape[1] != sb.config.in_channels:
            raise ValueError(f"control: {readouts.shape[1]} channels, the Spatia branch takes {sb.config.in_channels} "
                             "(VAE(render) ++ VAE(hole mask))")
        return readouts.float().permute(1, 0, 2, 3)[None], None

    # -- conditioning ----------------------------------------------------------------------------
    @torch.no_grad()
    def control_latents(self, renders, holes) -> torch.Tensor:
        """(L, 96, h, w): VAE(renders in [-1, 1]) ++ VAE(holes in [0, 1]), each encoded as a video.

        renders (F, H, W, 3) uint8 or (F, 3, H, W) float in [0, 1]; holes (F, H, W) float in [0, 1] or
        uint8 (/ 255), 1 = nothing rendered. The codec maps [0, 1] to [-1, 1]; the hole video is handed
        to it as (hole + 1) / 2 so that the VAE sees the hole values themselves, as Spatia feeds them."""
        r = _video(renders)
        h = torch.as_tensor(holes)
        h = h.float() / 255.0 if h.dtype == torch.uint8 else h.float()
        if h.ndim == 3:
            h = h[:, None].expand(-1, 3, -1, -1)
        elif h.ndim == 4 and h.shape[-1] == 3:
            h = h.permute(0, 3, 1, 2)
        if r.shape[0] != h.shape[0] or (r.shape[0] - 1) % self.temporal_stride:
            raise ValueError(f"renders / holes: {r.shape[0]} and {h.shape[0]} frames; expected equal, 1 + "
                             f"{self.temporal_stride} k")
        z_r = self.encode_video(r)
        z_h = self.encode_video((h + 1.0) / 2.0)
        return torch.cat([z_r, z_h], dim=1)

    def set_lora(self, enabled: bool) -> None:
        """Switch the backbone's LoRA on (rounds >= 1) or off (round 0); no-op without one."""
        from .lora import has_lora

        bb = self.transformer.backbone
        if not has_lora(bb):
            return
        if enabled:
            bb.enable_adapters()
        else:
            bb.disable_adapters()
        self.lora_enabled = bool(enabled)

    @torch.no_grad()
    def generate_round(self, renders, holes, prompt_embeds: torch.Tensor, *, first_image=None, history=None,
                       references: Sequence = (), negative_embeds: Optional[torch.Tensor] = None, seed: int = 20917,
                       lora: Optional[bool] = None, control: Optional[torch.Tensor] = None, progress=None,
                       decode: bool = True):
        """One Spatia round: latents (L, C, h, w) (the history's first) and its video (F, 3, H, W) in [0, 1]
        (None with ``decode=False``).

        renders / holes: the round's F conditioning frames (``control_latents``; or ``control`` given);
        first_image (H, W, 3) uint8 (round 0: one clean latent) or history (F_h, H, W, 3) uint8 (later
        rounds: the last F_h frames, one video, clean); references: (H, W, 3) uint8 images, each encoded
        alone; noise from a fresh generator seeded with ``seed`` (Spatia re-uses one seed every round).
        ``lora``: switch the LoRA first (None: leave it)."""
        from .codec import images_to_tensor

        if (first_image is None) == (history is None):
            raise ValueError("generate_round: give first_image (round 0) or history (later rounds), not both")
        if lora is not None:
            self.set_lora(lora)
        if control is None:
            control = self.control_latents(renders, holes)
        L, _, h, w = control.shape
        H, W = h * self.stride, w * self.stride
        if first_image is not None:
            clean = self.encode_images(images_to_tensor(np.asarray(first_image)))
        else:
            hist = np.asarray(history)
            if (hist.shape[0] - 1) % self.temporal_stride:
                raise ValueError(f"history: {hist.shape[0]} frames; expected 1 + {self.temporal_stride} k")
            clean = self.encode_video(images_to_tensor(hist))
        refs = None
        if len(references):
            refs = self.encode_images(images_to_tensor(np.stack([np.asarray(r) for r in references])))
        if clean.shape[0] >= L:
            raise ValueError(f"generate_round: {clean.shape[0]} clean latents leave nothing to generate in {L}")
        z = self.denoise(clean_targets=clean.cpu(), num_targets=L, readouts=control.cpu(),
                         masks=torch.zeros(L, h, w, dtype=torch.bool), image_size=(H, W), prompt_embeds=prompt_embeds,
                         references=None if refs is None else refs.cpu(), negative_embeds=negative_embeds,
                         generator=torch.Generator().manual_seed(int(seed)), progress=progress)
        return z, (self.decode_video(z) if decode else None)

    # -- builders ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, config: str = "tiny", device="cpu", dtype: Optional[torch.dtype] = None, seed: int = 0,
              sampler: Optional[FlowUniPCSampler] = None, offload: bool = False, codec=None, lora_rank: int = 0,
              **_unused) -> "SpatiaWorldModel":
        """Random weights in Spatia's architecture (``tiny`` toy sizes | ``full`` TI2V-5B + the 704.7M VAE):
        a Spatia branch with non-zero output projections, optionally a LoRA of ``lora_rank`` on q, k, v, o
        and the FFN of every block (the targets Spatia's DiffSynth training uses by default)."""
        model = super().build(config, layout="spatia", device=device, dtype=dtype, seed=seed, side_branch_init="random",
                              sampler=sampler or SpatiaSampler(), offload=offload, codec=codec)
        if lora_rank:
            from .lora import add_lora

            add_lora(model.transformer.backbone, rank=lora_rank, dropout=0.0, targets=SPATIA_LORA_TARGETS)
        model.description = model.description.replace("Mirage world model", "Spatia-layout world model")
        return model

    @classmethod
    def from_pretrained(cls, weights: Union[str, Path], side_branch: Optional[Union[str, Path]] = None,
                        lora: Optional[Union[str, Path]] = None, device="cuda", dtype: Optional[torch.dtype] = None,
                        offload: bool = False, vae_tiling: bool = False, text_encoder: Union[bool, str] = "auto",
                        sampler: Optional[FlowUniPCSampler] = None, **_unused) -> "SpatiaWorldModel":
        """Wan2.2-TI2V-5B from ``weights`` (diffusers or original layout) + Spatia's VACE file
        (``side_branch``) + its LoRA (``lora``; a folder holding both may be given as ``side_branch``).
        A side-branch file of another layout (the official Mirage branch, ours) is refused; the layout
        is logged. ``text_encoder="auto"``: UMT5 when the folder has it, else none (prompts must then be
        empty: the model sees zero embeddings and CFG is switched off)."""
        from .checkpoints import CheckpointError, detect_layout, read_state_dict
        from .lora import load_lora_state

        vace, lora = find_spatia_files(side_branch, lora)
        if vace is None:
            raise FileNotFoundError("side_branch: the Spatia layout needs Spatia's VACE file (e.g. "
                                    "step-8500.safetensors)")
        folder = Path(weights)
        if text_encoder == "auto":
            kind = detect_layout(folder)
            text_encoder = ((folder / "text_encoder").is_dir() if kind == "diffusers"
                            else any(folder.glob("models_t5_umt5-xxl-enc*.pth")))
        model = super().from_pretrained(folder, side_branch=vace, lora=None, layout="spatia", device=device,
                                        dtype=dtype,
                                        offload=offload, vae_tiling=vae_tiling, text_encoder=bool(text_encoder),
                                        sampler=sampler or SpatiaSampler())
        found = classify_side_branch(model.transformer.side_branch)
        if found != "spatia":
            raise CheckpointError(vace, what="Spatia side branch (VACE)",
                                  note=f"its layout is {found!r} (blocks after layers "
                                       f"{list(model.transformer.side_branch.config.layers)}, "
                                       f"{model.transformer.side_branch.config.in_channels} channels), not Spatia's (a "
                                       f"block "
                                       "every 4th layer, 96 channels): use backend mirage with layout official/paper "
                                       "for it")
        lora_note = "none"
        if lora is not None:
            state, dropped = spatia_lora_state(read_state_dict(lora))
            info = load_lora_state(model.transformer.backbone, state, source=str(lora))
            ignored = f", {dropped} non-DiT keys ignored" if dropped else ""
            lora_note = f"{lora} (rank {info['rank']}, {len(info['targets'])} modules{ignored})"
        model.description = (f"Spatia world model: Wan2.2-TI2V-5B from {folder}, Spatia VACE branch {vace} (layout "
                             f"spatia: "
                             f"blocks after layers {list(model.transformer.side_branch.config.layers)}), LoRA "
                             f"{lora_note}")
        _LOG.info("loaded %s", model.description)
        model.set_lora(False)
        return model


SPATIA_LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                       "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")


def find_spatia_files(side_branch, lora) -> Tuple[Optional[Path], Optional[Path]]:
    """(VACE file, LoRA file): ``side_branch`` a file, or a folder whose safetensors files are told apart by
    their keys (``vace_*`` vs ``lora_``); ``lora`` a file (or None: the one found in that folder)."""
    from .checkpoints import CheckpointError

    vace = None if side_branch is None else Path(side_branch)
    found_lora = None
    if vace is not None and vace.is_dir():
        folder, vace = vace, None
        from safetensors import safe_open

        for f in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(f), framework="pt") as fh:
                    keys = list(fh.keys())
            except Exception as exc:  # noqa: BLE001 - named in the error
                raise CheckpointError(f, note=f"not a readable safetensors file ({exc})") from None
            if any(k.split(".")[0] in ("vace_blocks", "vace_patch_embedding") for k in keys):
                if vace is not None:
                    raise CheckpointError(folder, what="Spatia weights", note=f"two VACE files: {vace.name}, {f.name}; "
                                                                              f"name one")
                vace = f
            elif any("lora_" in k for k in keys):
                if found_lora is not None and lora is None:
                    raise CheckpointError(folder, what="Spatia weights", note=f"two LoRA files: {found_lora.name}, "
                                                                              f"{f.name}; name one")
                found_lora = f
        if vace is None:
            raise CheckpointError(folder, what="Spatia weights", note="no safetensors file with vace_blocks.* keys")
    return vace, (Path(lora) if lora is not None else found_lora)


def _video(frames) -> torch.Tensor:
    """(F, H, W, 3) uint8 or (F, 3, H, W) float in [0, 1] -> (F, 3, H, W) float32 in [0, 1]."""
    from .codec import images_to_tensor

    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        return images_to_tensor(frames)
    t = torch.as_tensor(frames)
    if t.dtype == torch.uint8:
        return images_to_tensor(t.cpu().numpy())
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"renders: expected (F, H, W, 3) uint8 or (F, 3, H, W) float, got {tuple(t.shape)} {t.dtype}")
    return t.float()
