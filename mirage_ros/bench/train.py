"""`mirage bench train`: training throughput of `mirage train` (steps/s, samples/s, peak memory).

Runs the real trainer (``training.Trainer``: data loading from the LMDB, flow-matching inputs,
forward, backward, AdamW) for ``--steps`` steps on ``--data`` or, without it, on a small dataset
it renders first (the thumbnail codec: throughput does not depend on what the latents show). The
first ``--warmup`` steps are left out of the rates. Writes JSON and a PNG of the per-step times.
Target for the shipped ``small`` model: >= 5,000 steps per hour at batch 4 on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

from ..util import parse_resolution, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", choices=["tiny", "small", "full"], default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=40, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--data", default=None, help="dataset folder (default: render a small one)")
    p.add_argument("--resolution", type=parse_resolution, default=None,
                   help="frames of the rendered dataset (default 128x224; 704x1280 for full)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--json", default="mirage_out/bench_train.json", help="output JSON (a PNG is written beside it)")


def run(args) -> int:
    import numpy as np
    import torch

    from ..training.sim_data import generate
    from ..training.trainer import TrainConfig, Trainer, read_metrics

    if args.threads:
        torch.set_num_threads(args.threads)
    res = args.resolution or ((704, 1280) if args.config == "full" else (128, 224))
    with tempfile.TemporaryDirectory(prefix="mirage_bench_train_") as tmp:
        data = args.data
        if data is None:
            data = str(Path(tmp) / "data")
            print(f"bench train: rendering a small {res[0]}x{res[1]} dataset (thumbnail codec) ...")
            generate(data, scenes=2, frames=12, resolution=res, seed=0, progress=False)
        cfg = TrainConfig(config=args.config, data=data, out=str(Path(tmp) / "run"), steps=args.warmup + args.steps,
                          batch=args.batch, warmup=1, checkpoint_every=10**9, keep_checkpoints=1,
                          gradient_checkpointing=args.gradient_checkpointing)
        trainer = Trainer(cfg, progress=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - t0
        recs = read_metrics(Path(cfg.out) / "metrics.jsonl")
        params = trainer._parameter_counts()
        header = dict(trainer.data.header)
    timed = recs[args.warmup:]
    step_s = [cfg.batch * trainer.world / r["samples_per_s"] for r in timed]
    med = float(np.median(step_s))
    result = {
        "config": args.config, "batch": args.batch, "world_size": trainer.world, "resolution": list(res),
        "latent_grid": header.get("latent_grid"), "device": str(trainer.acc.device),
        "threads": torch.get_num_threads(), "mixed_precision": trainer.acc.mixed_precision,
        "parameters": params, "steps_timed": len(timed),
        "seconds_per_step_median": med, "seconds_per_step_min": float(min(step_s)),
        "steps_per_hour": 3600.0 / med, "samples_per_s": cfg.batch * trainer.world / med,
        "target_steps_per_hour": 5000 if args.config == "small" else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "wall_s": wall, "machine": {"cpu": platform.processor() or platform.machine(), "cores": _cores(),
                                    "python": platform.python_version(), "torch": torch.__version__},
        "per_step_s": step_s, "buckets": [r.get("bucket") for r in timed],
    }
    path = write_json(args.json, result)
    _plot(path.with_suffix(".png"), step_s, result)
    print(f"bench train: {args.config} batch {args.batch}: {med:.3f} s/step median = {3600 / med:.0f} steps/hour, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB -> {path}")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def _plot(png: Path, step_s, result) -> None:
    from ..viz import plt

    p = plt()
    fig, ax = p.subplots(figsize=(6, 3))
    ax.plot(range(1, len(step_s) + 1), step_s, marker=".")
    ax.axhline(result["seconds_per_step_median"], color="grey", ls="--",
               label=f"median {result['seconds_per_step_median']:.3f} s")
    if result["target_steps_per_hour"]:
        ax.axhline(3600 / result["target_steps_per_hour"], color="red", ls=":", label="target (5,000 steps/h)")
    ax.set(xlabel="timed step", ylabel="seconds", title=f"mirage train {result['config']}, batch {result['batch']}, "
                                                        f"{result['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    p.close(fig)
