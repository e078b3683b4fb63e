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

import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..util import dumps_json
from ..world_model.frame_roles import FrameRoles
from .checkpoint import TrainCheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
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

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise TrainError(f"recipe: expected one of {sorted(RECIPES)}, got {self.recipe!r}")
        if self.betas is not None:
            self.betas = tuple(float(b) for b in self.betas)
        if self.steps < 1 or self.batch < 1:
            raise TrainError("steps and batch must be >= 1")
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
        """Fields a resumed run must share with the original (not steps, out, checkpoint cadence)."""
        d = asdict(self)
        for k in ("steps", "out", "checkpoint_every", "keep_checkpoints", "data", "mixed_precision"):
            d.pop(k)
        d["betas"] = list(self.resolved_betas)
        d["lr"] = self.resolved_lr
        return d


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


def _shifted_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching sigma of the UniPC flow schedule with ``shift`` (sigma' = s u / (1 + (s-1) u))."""
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_inputs(samples: Sequence[Dict[str, torch.Tensor]], cfg: TrainConfig, step: int, first_index: int,
                         text_dim: int, text_tokens: int) -> Dict:
    """Batch tensors for one forward pass, each sample's randomness from (seed, step, its global index).

    Returns latents (B, C, F, h, w), frame_timesteps (B, F), control (B, C, T+P, h, w), control_mask
    (B, 1, T+P, h, w), prompt (B, L, text_dim), target flow (B, C, T-1, h, w), roles, sigmas (B,).
    """
    lat, ft, ctrl, cmask, flows, sigmas, prompts = [], [], [], [], [], [], []
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
        sigma = _shifted_sigma(u, cfg.shift).clamp(1e-3, 1.0)
        eps = torch.randn(targets[1:].shape, generator=g)
        x0 = targets[1:]
        noisy = (1 - sigma) * x0 + sigma * eps
        ctx_sd = torch.rand((), generator=g) * cfg.context_noise
        clean = torch.cat([targets[:1], prec, refs])
        clean = clean + ctx_sd * torch.randn(clean.shape, generator=g)
        seq = torch.cat([clean[:1], noisy, clean[1:]])  # [targets | preceding | references]
        lat.append(seq.permute(1, 0, 2, 3))
        t = torch.zeros(roles.num_frames)
        t[1:T] = sigma * 1000.0
        ft.append(t)
        masks = s["masks"].float()
        ro = s["readouts"].float()
        ro_sd = torch.rand((), generator=g) * cfg.readout_noise
        ro = (ro + ro_sd * torch.randn(ro.shape, generator=g)) * masks[:, None]
        if torch.rand((), generator=g) < cfg.readout_dropout:
            ro, masks = torch.zeros_like(ro), torch.zeros_like(masks)
        ctrl.append(ro.permute(1, 0, 2, 3))
        cmask.append(masks[None])
        flows.append((eps - x0).permute(1, 0, 2, 3))
        sigmas.append(sigma)
        prompt = s.get("prompt")
        if prompt is None or torch.rand((), generator=g) < cfg.text_dropout:
            prompt = torch.zeros(text_tokens, text_dim)
        prompts.append(prompt)
    return {
        "latents": torch.stack(lat), "frame_timesteps": torch.stack(ft), "control": torch.stack(ctrl),
        "control_mask": torch.stack(cmask), "prompt": torch.stack(prompts), "target": torch.stack(flows),
        "roles": roles, "sigmas": torch.stack(sigmas),
    }


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
        self.fingerprint = {"train": cfg.fingerprint(), "data": self.data.fingerprint(), "world_batch": cfg.batch * self.world}
        self.step = 0
        if resume:
            ck = latest_checkpoint(self.run)
            if ck is None:
                raise TrainError(f"resume: {self.run} has no checkpoint to resume from")
            self.step = load_checkpoint(ck, self.model, self.optimizer, self.scheduler, self.fingerprint)
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
            mine = self.cfg.fingerprint()
            diff = sorted(k for k in set(mine) | set(theirs.get("fingerprint", {}))
                          if theirs.get("fingerprint", {}).get(k) != mine.get(k))
            if diff:
                raise TrainError(f"resume: {self.run} was started with different settings ({', '.join(diff)}); "
                                 "use the original settings or a new --out")
        elif self.run.exists() and any(self.run.iterdir()):
            raise TrainError(f"out: {self.run} already holds a run (pass --resume to continue it, or choose a new --out)")

    def _build_model(self):
        """-> (MirageTransformer with requires_grad set by the recipe, codec folder, text settings)."""
        from diffusers import WanTransformer3DModel

        from ..world_model.codec import load_codec
        from ..world_model.configs import text_tokens, transformer_config
        from ..world_model.dtypes import build_random
        from ..world_model.lora import add_lora
        from ..world_model.model import MirageWorldModel
        from ..world_model.side_branch import MirageSideBranch
        from ..world_model.transformer import MirageTransformer

        cfg, data = self.cfg, self.data
        codec_folder = Path(cfg.data) / "codec"
        codec = load_codec(codec_folder)
        if codec.channels != data.channels:
            raise TrainError(f"data: the dataset's codec has {codec.channels} channels, its header says {data.channels}")
        if cfg.init:
            init = MirageWorldModel.from_pretrained(cfg.init, device="cpu", dtype=torch.float32)
            if init.codec.config() != codec.config() or not _same_codec(init.codec, codec):
                raise TrainError(f"init: {cfg.init} was trained with codec {init.codec.config()}, the dataset uses "
                                 f"{codec.config()}: regenerate the data with that codec (--codec-weights {cfg.init}/codec)")
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
                raise TrainError(f"recipe {cfg.recipe!r} freezes a pretrained backbone: pass --weights (a Wan2.2-TI2V-5B "
                                 "folder) or --init (a model folder), or use --recipe scratch")
            bb = build_random(WanTransformer3DModel, transformer_config(cfg.config), dtype=torch.float32, seed=cfg.seed)
            tr = MirageTransformer(bb, MirageSideBranch.from_backbone(bb, cfg.layout), cfg.rope_layout)
            text = {"text_dim": bb.config.text_dim, "max_length": text_tokens(cfg.config)}
        if tr.backbone.config.in_channels != data.channels:
            raise TrainError(f"data: {data.channels}-channel latents, the {cfg.config} backbone takes {tr.backbone.config.in_channels}")
        p_h, p_w = tr.backbone.config.patch_size[1:]
        h, w = data.latent_grid
        if h % p_h or w % p_w:
            raise TrainError(f"data: latent grid {h}x{w} is not divisible by the patch {p_h}x{p_w}")
        if tr.side_branch is None:
            tr.side_branch = MirageSideBranch.from_backbone(tr.backbone, cfg.layout)
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
    def _request_stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
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
            loss = torch.nn.functional.mse_loss(pred, batch["target"].to(dev))
        self.optimizer.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        gn = self.acc.clip_grad_norm_([p for p in self.ddp_model.parameters() if p.requires_grad], cfg.grad_clip)
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        mean_loss = self.acc.reduce(loss.detach().float(), reduction="mean") if self.world > 1 else loss.detach().float()
        dt = time.perf_counter() - t0
        roles = batch["roles"]
        return StepLog(self.step, float(mean_loss), float(lr), cfg.batch * self.world / dt,
                       float(gn) if gn is not None else float("nan"), float(batch["sigmas"].mean()),
                       [roles.num_preceding, roles.num_references])

    def save(self) -> Optional[Path]:
        path = None
        if self.acc.is_main_process:
            path = save_checkpoint(self.run, self.step, self.model, self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
                                   self.scheduler, self.fingerprint, keep=self.cfg.keep_checkpoints)
            self._plot()
        self.acc.wait_for_everyone()
        return path

    def fit(self) -> Dict:
        """Train to ``cfg.steps`` (from the resumed step), checkpointing; returns a summary."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        main = self.acc.is_main_process
        if main:
            self.run.mkdir(parents=True, exist_ok=True)
            (self.run / "run.json").write_text(dumps_json(
                {"fingerprint": cfg.fingerprint(), "config": asdict(cfg), "data_header": self.data.header,
                 "world_size": self.world, "parameters": self._parameter_counts()}) + "\n")
        old = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        tb = _tensorboard(self.run) if main else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"mirage train {cfg.config}/{cfg.recipe}", unit="step",
                   disable=not (main and self.progress))
        interrupted = False
        try:
            with open(self.run / "metrics.jsonl", "a") if main else _Null() as log:
                while self.step < cfg.steps:
                    rec = self.train_step()
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
                              FlowUniPCSampler(steps=cfg.sampler_steps, shift=cfg.shift))
        extra = {"name": f"mirage {cfg.config} ({cfg.recipe}, {self.step} steps)", "config": cfg.config,
                 "trained_steps": self.step, "memory": self.data.header.get("memory"),
                 "resolution": self.data.header.get("resolution")}
        was = tr.training
        tr.eval()
        folder = wm.save_pretrained(folder, save_backbone=RECIPES[cfg.recipe]["trains"] == "all", extra=extra)
        tr.train(was)
        (folder / "data_recipe.json").write_text(json.dumps(self.data.header, indent=1) + "\n")
        return folder

    def _plot(self) -> None:
        plot_losses(self.run / "metrics.jsonl", self.run / "loss.png", title=f"mirage train {self.cfg.config}/{self.cfg.recipe}")


def _same_codec(a, b) -> bool:
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
