"""``mirage train``: flow matching exactly as inference samples it, on accelerate (DDP / FSDP).

One training sample is one window of the dataset, laid out as the rollout lays out a chunk
(``world_model.frame_roles``): ``[targets | preceding | references]``; the first target is clean
(the overlap frame), the rest are noised to ``x_t = (1 - sigma) x_0 + sigma * eps`` with one sigma per
sample drawn from the inference schedule's shifted distribution; clean frames carry timestep 0
per token; the side branch gets the readout and visibility mask of the conditioned frames. The
model predicts the flow ``eps - x_0`` (UniPC / flow-matching convention); the loss is its mean
squared error on the noisy targets.

So the model survives its own generated frames: readout dropout (the whole readout and mask
zeroed for a fraction of samples), Gaussian noise of random strength on the clean context frames
and on the readout's covered cells, and text dropout.

Trained the way it samples (``pin_prob`` > 0): the sampler pins readout-visible cells to the noised
readout (``sampler``, memory pinning), so for that fraction of samples the noisy input at visible
target cells is ``(1 - sigma) z_hat + sigma eps`` instead of the noised truth, and the loss there is
the x0 error of the implied prediction ``x_t - sigma v`` (bounded at every sigma: the model learns to
correct the readout, not to redraw it). ``visible_weight`` weights the visible cells' loss.
``context_readout_prob``: generated context frames (the overlap frame and the preceding frames) are,
at visible cells, what the memory gave them; with that probability a context frame's visible cells
are replaced by its readout. ``ema_decay`` keeps an exponential moving average of the weights, which
is what the run exports (and checkpoints beside the raw weights).

Recipes (paper, "Implementation Details"):
- ``stage1``: side branch only, backbone frozen, lr 1e-5;
- ``stage2``: + LoRA rank 64 on self-attention q, k, v, o (dropout 0.05), lr 1e-4;
- ``scratch``: backbone and side branch together (a small model has no pretrained backbone to
  freeze), lr 3e-4 with momentum (betas 0.9, 0.99): the paper's beta1 = 0 is for fine-tuning.
AdamW, weight decay 1e-3, linear warm-up then cosine decay to 10 %, gradient clipping 1.0.

Determinism: every random draw of step s comes from generators seeded by (seed, s, global sample
index), and the batch of step s is a pure function of (seed, s): a run resumed from a checkpoint
draws exactly what the uninterrupted run draws, and two processes with batch B draw exactly what one
process with batch 2B draws (the data position *is* the step).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..util import dumps_json
from ..world_model.frame_roles import FrameRoles
from ..world_model.sampler import sigma_shift
from .checkpoint import TrainCheckpointError, latest_checkpoint, load_checkpoint, load_extra, save_checkpoint
from .dataset import MirageDataset

__all__ = ["RECIPES", "TrainConfig", "Trainer", "TrainError", "sample_batch", "flow_matching_inputs"]

RECIPES = {
    "scratch": dict(lr=3e-4, betas=(0.9, 0.99), trains="all"),
    "stage1": dict(lr=1e-5, betas=(0.0, 0.999), trains="side_branch"),
    "stage2": dict(lr=1e-4, betas=(0.0, 0.999), trains="side_branch+lora"),
}


class TrainError(ValueError):
    """A training run cannot start or continue; the message says why and what to do."""


@dataclass
class TrainConfig:
    """Everything a run depends on (saved as ``RUN/run.json``; a resume must match it)."""

    config: str = "small"
    recipe: str = "scratch"
    data: str = ""
    out: str = ""
    steps: int = 1000
    batch: int = 4
    lr: Optional[float] = None
    warmup: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 1e-3
    betas: Optional[Tuple[float, float]] = None
    grad_clip: float = 1.0
    seed: int = 0
    shift: float = 3.0
    readout_dropout: float = 0.15
    context_noise: float = 0.1
    readout_noise: float = 0.1
    text_dropout: float = 0.2
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    layout: str = "paper"
    rope_layout: str = "official"
    lora_rank: int = 64
    lora_dropout: float = 0.05
    weights: Optional[str] = None  # Wan2.2-TI2V-5B folder (stage1 / stage2 on the full config)
    init: Optional[str] = None  # a model folder written by save_pretrained (e.g. an earlier run's RUN/model)
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    distributed: str = "ddp"  # ddp | fsdp (multi-process only)
    sampler_steps: int = 10  # what the exported model samples with by default
    memory_arm: str = ""  # informational: the dataset's memory kind, copied from its header
    pin_prob: float = 0.0  # fraction of samples whose visible target cells carry the noised readout
    pin_until: float = 0.0  # the exported sampler's pinning schedule (``FlowUniPCSampler.pin_until``)
    visible_weight: float = 1.0  # loss weight of readout-visible target cells
    context_readout_prob: float = 0.0  # per context frame: visible cells replaced by its readout
    ema_decay: float = 0.0  # 0 = off; else the exported weights are this EMA of the trained ones
    context_sigma_max: float = 0.0  # context frames noised to sigma ~ U(0, max) (a third clean) with that timestep
    context_sigma: float = 0.0  # the exported sampler's context noise level (``FlowUniPCSampler.context_sigma``)
    refiner_channels: int = 0  # >0: a LatentRefiner of this width after the output head (scratch runs)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise TrainError(f"recipe: expected one of {sorted(RECIPES)}, got {self.recipe!r}")
        if self.betas is not None:
            self.betas = tuple(float(b) for b in self.betas)
        if self.steps < 1 or self.batch < 1:
            raise TrainError("steps and batch must be >= 1")
        for name in ("pin_prob", "pin_until", "context_readout_prob", "readout_dropout", "text_dropout",
                     "context_sigma_max", "context_sigma"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise TrainError(f"{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise TrainError(f"ema_decay: expected 0 (off) or a decay in (0, 1), got {self.ema_decay}")
        if not 0.0 < float(self.visible_weight) <= 100.0:
            raise TrainError(f"visible_weight: expected a weight in (0, 100], got {self.visible_weight}")
        if self.layout != "paper":
            raise TrainError("layout: mirage train trains the paper layout (48-channel readout + mask embedding); "
                             "the official layout is for loading the official weights")

    @property
    def resolved_lr(self) -> float:
        return float(self.lr if self.lr is not None else RECIPES[self.recipe]["lr"])

    @property
    def resolved_betas(self) -> Tuple[float, float]:
        return tuple(self.betas) if self.betas is not None else RECIPES[self.recipe]["betas"]

    def fingerprint(self) -> Dict:
        """Fields a resumed run must share with the original (not steps, out, checkpoint cadence).
        Fields added since a run started are left out while they hold their old default, so older
        runs still resume."""
        d = asdict(self)
        for k in ("steps", "out", "checkpoint_every", "keep_checkpoints", "data", "mixed_precision"):
            d.pop(k)
        for k, v in _ADDED_DEFAULTS.items():
            if d.get(k) == v:
                d.pop(k)
        d["betas"] = list(self.resolved_betas)
        d["lr"] = self.resolved_lr
        return d


_ADDED_DEFAULTS = {"pin_prob": 0.0, "pin_until": 0.0, "visible_weight": 1.0, "context_readout_prob": 0.0,
                   "ema_decay": 0.0, "refiner_channels": 0, "context_sigma_max": 0.0, "context_sigma": 0.0}


# -- sampling ------------------------------------------------------------------------------------------

def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def sample_batch(buckets: Dict[Tuple[int, int], List[int]], seed: int, step: int, size: int) -> List[int]:
    """The global batch of ``step``: ``size`` windows of one (P, R) bucket (chosen with probability
    proportional to its size), a pure function of (seed, step)."""
    rng = np.random.default_rng(_seed(seed, step, 1))
    keys = list(buckets)
    sizes = np.array([len(buckets[k]) for k in keys], dtype=np.float64)
    k = keys[int(rng.choice(len(keys), p=sizes / sizes.sum()))]
    pool = buckets[k]
    picks = rng.choice(len(pool), size=size, replace=len(pool) < size)
    return [pool[int(i)] for i in picks]


def flow_matching_inputs(samples: Sequence[Dict[str, torch.Tensor]], cfg: TrainConfig, step: int, first_index: int,
                         text_dim: int, text_tokens: int) -> Dict:
    """Batch tensors for one forward pass, each sample's randomness from (seed, step, its global index).

    Returns latents (B, C, F, h, w), frame_timesteps (B, F), control (B, C, T+P, h, w), control_mask
    (B, 1, T+P, h, w), prompt (B, L, text_dim), target flow (B, C, T-1, h, w), x0 (B, C, T-1, h, w),
    pinned (B, 1, T-1, h, w) bool (cells whose input is the noised readout: x0 loss there), weight
    (B, 1, T-1, h, w) per-cell loss weight, roles, sigmas (B,).
    """
    lat, ft, ctrl, cmask, flows, sigmas, prompts, x0s, pins, weights = [], [], [], [], [], [], [], [], [], []
    roles = None
    for b, s in enumerate(samples):
        g = torch.Generator().manual_seed(_seed(cfg.seed, step, first_index + b, 2))
        targets, prec, refs = s["targets"], s["preceding"], s["references"]
        T, P, R = targets.shape[0], prec.shape[0], refs.shape[0]
        r = FrameRoles(T, P, R, 1)
        if roles is None:
            roles = r
        elif r != roles:
            raise TrainError("batch: samples with different frame roles cannot share a batch")
        u = torch.rand((), generator=g)
        sigma = sigma_shift(u, cfg.shift).clamp(1e-3, 1.0)
        eps = torch.randn(targets[1:].shape, generator=g)
        x0 = targets[1:]
        noisy = (1 - sigma) * x0 + sigma * eps
        masks = s["masks"].float()
        ro = s["readouts"].float()
        ro_sd = torch.rand((), generator=g) * cfg.readout_noise
        ro = (ro + ro_sd * torch.randn(ro.shape, generator=g)) * masks[:, None]
        dropped = bool(torch.rand((), generator=g) < cfg.readout_dropout)
        if dropped:
            ro, masks = torch.zeros_like(ro), torch.zeros_like(masks)
        vis = masks[1:T].bool()[:, None]  # (T-1, 1, h, w) visible target cells
        pinned = torch.zeros_like(vis)
        if cfg.pin_prob > 0 and torch.rand((), generator=g) < cfg.pin_prob:
            pinned = vis
            noisy = torch.where(vis, (1 - sigma) * ro[1:T] + sigma * eps, noisy)
        ctx_sd = torch.rand((), generator=g) * cfg.context_noise
        clean = torch.cat([targets[:1], prec, refs])
        if cfg.context_readout_prob > 0:  # frames 0 and the preceding ones have readouts (indices 0, T..T+P-1)
            rows = [0] + list(range(T, T + P))
            for k, row in enumerate(rows):
                if torch.rand((), generator=g) < cfg.context_readout_prob:
                    m = masks[row].bool()[None]
                    clean[k] = torch.where(m, ro[row], clean[k])
        clean = clean + ctx_sd * torch.randn(clean.shape, generator=g)
        t = torch.zeros(roles.num_frames)
        t[1:T] = sigma * 1000.0
        if cfg.context_sigma_max > 0:  # noise augmentation with its level as the frames' timestep (a third clean)
            cs = torch.rand(clean.shape[0], generator=g) * cfg.context_sigma_max
            cs = torch.where(torch.rand(clean.shape[0], generator=g) < 1 / 3, torch.zeros_like(cs), cs)
            ce = torch.randn(clean.shape, generator=g)
            clean = (1 - cs.view(-1, 1, 1, 1)) * clean + cs.view(-1, 1, 1, 1) * ce
            t[0] = cs[0] * 1000.0
            t[T:] = cs[1:] * 1000.0
        seq = torch.cat([clean[:1], noisy, clean[1:]])  # [targets | preceding | references]
        lat.append(seq.permute(1, 0, 2, 3))
        ft.append(t)
        ctrl.append(ro.permute(1, 0, 2, 3))
        cmask.append(masks[None])
        flows.append((eps - x0).permute(1, 0, 2, 3))
        x0s.append(x0.permute(1, 0, 2, 3))
        pins.append(pinned.permute(1, 0, 2, 3))
        weights.append(torch.where(vis, cfg.visible_weight, 1.0).float().permute(1, 0, 2, 3))
        sigmas.append(sigma)
        prompt = s.get("prompt")
        if prompt is None or torch.rand((), generator=g) < cfg.text_dropout:
            prompt = torch.zeros(text_tokens, text_dim)
        prompts.append(prompt)
    return {
        "latents": torch.stack(lat), "frame_timesteps": torch.stack(ft), "control": torch.stack(ctrl),
        "control_mask": torch.stack(cmask), "prompt": torch.stack(prompts), "target": torch.stack(flows),
        "x0": torch.stack(x0s), "pinned": torch.stack(pins), "weight": torch.stack(weights),
        "roles": roles, "sigmas": torch.stack(sigmas),
    }


def flow_matching_loss(pred: torch.Tensor, batch: Dict) -> torch.Tensor:
    """Weighted mean of the flow error (the x0 error ``x_t - sigma v - x0`` at pinned cells)."""
    target, w = batch["target"].to(pred.device), batch["weight"].to(pred.device)
    err = (pred - target) ** 2
    pinned = batch["pinned"].to(pred.device)
    if bool(pinned.any()):
        sig = batch["sigmas"].to(pred.device).view(-1, 1, 1, 1, 1)
        T = pred.shape[2]
        x_t = batch["latents"][:, :, 1:T + 1].to(pred.device)
        x0_err = (x_t - sig * pred - batch["x0"].to(pred.device)) ** 2
        err = torch.where(pinned, x0_err, err)
    w = w.expand_as(err)
    return (err * w).sum() / w.sum()


# -- the trainer ---------------------------------------------------------------------------------------

@dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    samples_per_s: float
    grad_norm: float
    sigma: float
    bucket: List[int] = field(default_factory=list)


class Trainer:
    """Builds the model and optimiser for a ``TrainConfig`` and runs it (see module docstring)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True):
        from accelerate import Accelerator

        self.cfg, self.progress = cfg, progress
        self.run = Path(cfg.out)
        self.data = MirageDataset(cfg.data)
        self.cfg.memory_arm = self.data.header.get("memory", "")
        self._check_run_folder(resume)
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        kwargs = {}
        if cfg.distributed == "fsdp":
            from accelerate import FullyShardedDataParallelPlugin

            kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin()
        elif cfg.distributed != "ddp":
            raise TrainError(f"distributed: expected 'ddp' or 'fsdp', got {cfg.distributed!r}")
        self.acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available(), **kwargs)
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        torch.manual_seed(cfg.seed)
        self.model, self.codec_folder, self.text = self._build_model()
        self.trainable_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise TrainError(f"recipe {cfg.recipe!r}: nothing to train")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.resolved_lr, betas=cfg.resolved_betas,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.fingerprint = {"train": cfg.fingerprint(), "data": self.data.fingerprint(),
                            "world_batch": cfg.batch * self.world}
        self.step = 0
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        if resume:
            ck = latest_checkpoint(self.run)
            if ck is None:
                raise TrainError(f"resume: {self.run} has no checkpoint to resume from")
            self.step = load_checkpoint(ck, self.model, self.optimizer, self.scheduler, self.fingerprint)
            if self.ema is not None:
                self.ema.load(load_extra(ck, "ema"), ck)
        self.ddp_model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        self.buckets = self.data.buckets()
        self._stop = False

    # -- setup ---------------------------------------------------------------------------------------
    def _check_run_folder(self, resume: bool) -> None:
        run_json = self.run / "run.json"
        if resume:
            if not run_json.is_file():
                raise TrainError(f"resume: {run_json} is missing (not a mirage train run folder)")
            try:
                theirs = json.loads(run_json.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise TrainError(f"resume: {run_json} is corrupt ({exc})") from None
            if not isinstance(theirs, dict) or not isinstance(theirs.get("fingerprint", {}), dict):
                raise TrainError(f"resume: {run_json} is corrupt (a JSON {type(theirs).__name__}, not a run's record)")
            mine = self.cfg.fingerprint()
            diff = sorted(k for k in set(mine) | set(theirs.get("fingerprint", {}))
                          if theirs.get("fingerprint", {}).get(k) != mine.get(k))
            if diff:
                raise TrainError(f"resume: {self.run} was started with different settings ({', '.join(diff)}); "
                                 "use the original settings or a new --out")
        elif self.run.exists() and any(self.run.iterdir()):
            raise TrainError(f"out: {self.run} already holds a run (pass --resume to continue it, "
                             f"or choose a new --out)")

    def _build_model(self):
        """-> (MirageTransformer with requires_grad set by the recipe, codec folder, text settings)."""
        from ..world_model.codec import load_codec
        from ..world_model.configs import text_tokens
        from ..world_model.lora import add_lora
        from ..world_model.model import MirageWorldModel
        from ..world_model.side_branch import MirageSideBranch

        cfg, data = self.cfg, self.data
        codec_folder = Path(cfg.data) / "codec"
        codec = load_codec(codec_folder)
        if codec.channels != data.channels:
            raise TrainError(f"data: the dataset's codec has {codec.channels} channels, "
                             f"its header says {data.channels}")
        if cfg.init:
            init = MirageWorldModel.from_pretrained(cfg.init, device="cpu", dtype=torch.float32)
            if not _same_codec(init.codec, codec):
                raise TrainError(f"init: {cfg.init} was trained with codec {init.codec.config()}, the dataset uses "
                                 f"{codec.config()}: regenerate the data with that codec (--codec-weights "
                                 f"{cfg.init}/codec)")
            tr = init.transformer
            text = {"text_dim": init.text.text_dim, "max_length": init.text.max_length}
        elif cfg.weights:
            if cfg.config != "full":
                raise TrainError("weights: a Wan2.2 folder is the full configuration's backbone; use --config full")
            wm = MirageWorldModel.from_pretrained(cfg.weights, layout=cfg.layout, device="cpu", dtype=torch.float32,
                                                  text_encoder=False, rope_layout=cfg.rope_layout)
            tr = wm.transformer
            text = {"text_dim": tr.backbone.config.text_dim, "max_length": text_tokens(cfg.config)}
        else:
            if cfg.recipe != "scratch":
                raise TrainError(f"recipe {cfg.recipe!r} freezes a pretrained backbone: "
                                 f"pass --weights (a Wan2.2-TI2V-5B "
                                 "folder) or --init (a model folder), or use --recipe scratch")
            wm = MirageWorldModel.build(cfg.config, layout=cfg.layout, dtype=torch.float32, seed=cfg.seed,
                                        rope_layout=cfg.rope_layout, codec=codec, refiner_channels=cfg.refiner_channels)
            tr = wm.transformer
            text = {"text_dim": wm.text.text_dim, "max_length": wm.text.max_length}
        if tr.backbone.config.in_channels != data.channels:
            raise TrainError(f"data: {data.channels}-channel latents, the {cfg.config} backbone takes "
                             f"{tr.backbone.config.in_channels}")
        p_h, p_w = tr.backbone.config.patch_size[1:]
        h, w = data.latent_grid
        if h % p_h or w % p_w:
            raise TrainError(f"data: latent grid {h}x{w} is not divisible by the patch {p_h}x{p_w}")
        if tr.side_branch is None:
            tr.side_branch = MirageSideBranch.from_backbone(tr.backbone, cfg.layout)
        if cfg.refiner_channels and tr.refiner is None:
            # its last layer is zero-initialised: the started-from model's output is unchanged at step 0
            from ..world_model.refiner import LatentRefiner

            torch.manual_seed(cfg.seed)
            tr.refiner = LatentRefiner(channels=tr.backbone.config.out_channels, hidden=cfg.refiner_channels)
        trains = RECIPES[cfg.recipe]["trains"]
        tr.requires_grad_(trains == "all")
        if trains != "all":
            tr.side_branch.requires_grad_(True)
        if trains == "side_branch+lora":
            add_lora(tr.backbone, rank=cfg.lora_rank, dropout=cfg.lora_dropout)
            for n, p in tr.backbone.named_parameters():
                p.requires_grad_("lora_" in n)
        if cfg.gradient_checkpointing:
            tr.backbone.enable_gradient_checkpointing()
            tr.side_branch.enable_gradient_checkpointing()
        return tr.float().train(), codec_folder, text

    def _lr_factor(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    # -- the loop ------------------------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        self._stop = True

    def _stop_all(self) -> bool:
        """Stop when any process was asked to (SIGINT / SIGTERM), at the same step everywhere."""
        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.acc.device)
        if self.world > 1:
            flag = self.acc.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def train_step(self) -> StepLog:
        cfg = self.cfg
        t0 = time.perf_counter()
        global_batch = sample_batch(self.buckets, cfg.seed, self.step, cfg.batch * self.world)
        mine = global_batch[self.rank * cfg.batch:(self.rank + 1) * cfg.batch]
        samples = [self.data.window(i) for i in mine]
        torch.manual_seed(_seed(cfg.seed, self.step, self.rank, 3))  # LoRA dropout and anything else global
        batch = flow_matching_inputs(samples, cfg, self.step, self.rank * cfg.batch, self.text["text_dim"],
                                     self.text["max_length"])
        dev = self.acc.device
        T = batch["roles"].num_targets
        self.ddp_model.train()
        with self.acc.autocast():
            out = self.ddp_model(batch["latents"].to(dev), batch["frame_timesteps"].to(dev), batch["prompt"].to(dev),
                                 batch["roles"], batch["control"].to(dev), batch["control_mask"].to(dev))
            pred = out[:, :, 1:T].float()
            loss = flow_matching_loss(pred, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        gn = self.acc.clip_grad_norm_([p for p in self.ddp_model.parameters() if p.requires_grad], cfg.grad_clip)
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        mean_loss = self.acc.reduce(loss.detach().float(),
                                    reduction="mean") if self.world > 1 else loss.detach().float()
        dt = time.perf_counter() - t0
        roles = batch["roles"]
        return StepLog(self.step, float(mean_loss), float(lr), cfg.batch * self.world / dt,
                       float(gn) if gn is not None else float("nan"), float(batch["sigmas"].mean()),
                       [roles.num_preceding, roles.num_references])

    def save(self) -> Optional[Path]:
        path = None
        if self.acc.is_main_process:
            path = save_checkpoint(self.run, self.step, self.model,
                                   self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
                                   self.scheduler, self.fingerprint, keep=self.cfg.keep_checkpoints,
                                   extra={"ema": self.ema.state} if self.ema is not None else None)
            self._plot()
        self.acc.wait_for_everyone()
        return path

    def fit(self) -> Dict:
        """Train to ``cfg.steps`` (from the resumed step), checkpointing; returns a summary."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        main = self.acc.is_main_process
        def write_run_json():  # temp file + rename: a crash or a full disk never leaves half a run.json
            tmp = self.run / f".run.json.{os.getpid()}.tmp"
            tmp.write_text(dumps_json({"fingerprint": cfg.fingerprint(), "config": asdict(cfg),
                                       "data_header": self.data.header,
                                       "world_size": self.world, "parameters": self._parameter_counts()}) + "\n")
            os.replace(tmp, self.run / "run.json")

        pending = main and self.step > 0  # a resumed run rewrites run.json only once a step has worked
        if main:
            self.run.mkdir(parents=True, exist_ok=True)
            if not pending:
                write_run_json()
        old = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        tb = _tensorboard(self.run) if main else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"mirage train {cfg.config}/{cfg.recipe}", unit="step",
                   disable=not (main and self.progress))
        interrupted = False
        try:
            with open(self.run / "metrics.jsonl", "a") if main else _Null() as log:
                while self.step < cfg.steps:
                    rec = self.train_step()
                    if pending:
                        write_run_json()
                        pending = False
                    if main:
                        log.write(dumps_json(asdict(rec), indent=None) + "\n")
                        log.flush()
                        if tb is not None:
                            tb.add_scalar("loss", rec.loss, rec.step)
                            tb.add_scalar("lr", rec.lr, rec.step)
                        bar.set_postfix(loss=f"{rec.loss:.4f}", lr=f"{rec.lr:.2e}")
                        bar.update(1)
                    if self._stop_all():
                        interrupted = True
                        break
                    if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        self.save()
            ck = self.save()
            if not interrupted and main:
                self.export(self.run / "model")
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
            if tb is not None:
                tb.close()
        return {"step": self.step, "interrupted": interrupted, "checkpoint": str(ck) if ck else None,
                "model": str(self.run / "model") if not interrupted else None}

    # -- outputs -------------------------------------------------------------------------------------
    def _parameter_counts(self) -> Dict:
        return {"total": sum(p.numel() for p in self.model.parameters()),
                "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad)}

    def export(self, folder: Path) -> Path:
        """The trained model in the layout every loader reads (``MirageWorldModel.from_pretrained``)."""
        from ..world_model.codec import load_codec
        from ..world_model.model import MirageWorldModel
        from ..world_model.sampler import FlowUniPCSampler
        from ..world_model.text import PromptEncoder

        cfg = self.cfg
        tr = self.model
        wm = MirageWorldModel(tr, load_codec(self.codec_folder),
                              PromptEncoder(text_dim=self.text["text_dim"], max_length=self.text["max_length"]),
                              FlowUniPCSampler(steps=cfg.sampler_steps, shift=cfg.shift, pin_until=cfg.pin_until,
                                               context_sigma=cfg.context_sigma))
        extra = {"name": f"mirage {cfg.config} ({cfg.recipe}, {self.step} steps)", "config": cfg.config,
                 "trained_steps": self.step, "memory": self.data.header.get("memory"),
                 "resolution": self.data.header.get("resolution"),
                 "weights": f"EMA (decay {cfg.ema_decay})" if self.ema is not None else "raw"}
        was = tr.training
        tr.eval()
        with (self.ema.swapped(tr) if self.ema is not None else _nullcontext()):
            folder = wm.save_pretrained(folder, save_backbone=RECIPES[cfg.recipe]["trains"] == "all", extra=extra)
        tr.train(was)
        (folder / "data_recipe.json").write_text(json.dumps(self.data.header, indent=1) + "\n")
        return folder

    def _plot(self) -> None:
        plot_losses(self.run / "metrics.jsonl", self.run / "loss.png",
                    title=f"mirage train {self.cfg.config}/{self.cfg.recipe}")


class EMA:
    """Exponential moving average of the trainable parameters (``decay``, warmed up as
    min(decay, (1 + step) / (10 + step)) so early averages are not dominated by the random init)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.state = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for n, p in model.named_parameters():
            if n in self.state:
                self.state[n].mul_(d).add_(p.detach().float(), alpha=1 - d)

    def load(self, tensors: Optional[Dict[str, torch.Tensor]], source) -> None:
        """Restore from a checkpoint (None: the checkpoint has none; keep the current weights as start)."""
        if tensors is None:
            return
        if set(tensors) != set(self.state) or any(tensors[n].shape != v.shape for n, v in self.state.items()):
            raise TrainCheckpointError(f"checkpoint: {source}: its EMA weights do not match this model")
        self.state = {n: t.float() for n, t in tensors.items()}

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module):
        """The EMA weights in ``model`` for the duration (e.g. export), the trained ones after."""
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.state}
        with torch.no_grad():
            for n, v in self.state.items():
                params[n].copy_(v)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, v in saved.items():
                    params[n].copy_(v)


def _nullcontext():
    return contextlib.nullcontext()


def _same_codec(a, b) -> bool:
    """Same latents: the same encoder (a refined block codec encodes like its linear base)."""
    if hasattr(a, "basis") != hasattr(b, "basis"):
        return False
    if not hasattr(a, "basis"):
        return a.config() == b.config()
    if (a.channels, a.stride, a.scale) != (b.channels, b.stride, b.scale):
        return False
    for name in ("basis", "mean"):
        x, y = getattr(a, name, None), getattr(b, name, None)
        if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
            return False
    return True


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def write(self, *_):
        pass

    def flush(self):
        pass


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(run / "tensorboard"))


def read_metrics(path: Path) -> List[Dict]:
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by an interruption
    return out


def plot_losses(metrics: Path, png: Path, title: str = "training loss") -> None:
    """Loss per step (raw and a 100-step moving average) and the learning rate, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics)
    if not recs:
        return
    steps = np.array([r["step"] for r in recs])
    loss = np.array([r["loss"] for r in recs])
    k = min(100, len(loss))
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, loss, lw=0.5, alpha=0.35, label="loss")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"{k}-step mean")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE")
    ax.set_yscale("log")
    ax.set_title(title)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in recs], color="grey", lw=0.8, ls="--")
    ax2.set_ylabel("learning rate", color="grey")
    ax.legend(loc="upper right")
    fig.tight_layout()
    png = Path(png)
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)
