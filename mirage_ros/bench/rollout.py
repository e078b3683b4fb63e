"""`mirage bench rollout`: world-model rollout timings per chunk and per stage (Algorithm 1).

Runs Algorithm 1 on a synthetic scene (a textured wall, a camera sliding along it; depth of the
generated frames from the scene's exact geometry, as a simulator would give, or from the memory)
and writes, per chunk, the seconds of each stage (readout, denoise, decode, depth, masks, encode,
update), seconds per output frame, peak memory, and a PNG of the stage split beside the JSON.

``--config tiny`` is the tiny twin (milliseconds per step on a CPU); ``--config full`` builds the
real Wan2.2-TI2V-5B transformer and Wan2.2 VAE with random weights (bf16 on GPU; on a CPU only at
toy resolutions). ``--weights DIR`` loads real weights instead. Random weights generate noise-like
video: the timings are real, the pictures are not.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from ..util import parse_resolution, write_json

STAGES = ("readout", "denoise", "decode", "depth", "masks", "encode", "update")
WALL_X = 6.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", choices=["tiny", "small", "full"], default="tiny", help="model size (random weights "
                                                                                       "unless --weights)")
    p.add_argument("--backend", choices=["random", "shipped"], default="random",
                   help="shipped: the trained small model shipped in the package (its own resolution and sampler "
                        "steps)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--json", default="mirage_out/bench_rollout.json", help="output JSON path (a PNG is written beside "
                                                                           "it)")
    p.add_argument("--resolution", type=parse_resolution, default=None,
                   help="image size HxW (default: 128x224 tiny, 704x1280 full)")
    p.add_argument("--chunks", type=int, default=3, help="chunks of 9 latents (33 frames, 1-latent overlap)")
    p.add_argument("--steps", type=int, default=None, help="UniPC steps (default 40 as the paper; the official code "
                                                           "20; "
                                                              "the shipped model: its own)")
    p.add_argument("--layout", choices=["paper", "official"], default="paper", help="side-branch layout")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto = bf16 on GPU, fp32 on CPU (bf16 for --config full on CPU)")
    p.add_argument("--depth", choices=["sim", "memory"], default="sim", help="depth of generated frames")
    p.add_argument("--offload", action="store_true", help="keep components on the CPU until their stage runs")
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("--weights", default=None, help="Wan2.2-TI2V-5B folder (diffusers or original layout)")
    p.add_argument("--side-branch", default=None, help="side-branch checkpoint (ours or official)")
    p.add_argument("--lora", default=None, help="LoRA checkpoint (ours or official)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show tqdm bars")


def scene(H: int, W: int, n: int):
    """Cameras sliding along a wall at x = WALL_X, I_0 (H, W, 3) uint8 and the wall's z-depth."""
    import numpy as np
    import torch

    from ..geometry import Camera, look_at

    cams = [Camera.from_fov(H, W, 70.0, look_at((0.0, 0.02 * i, 1.2), (WALL_X, 0.02 * i + 0.3, 1.2))) for i in range(n)]
    yy, xx = np.mgrid[0:H, 0:W]
    checker = ((yy // max(1, H // 8) + xx // max(1, W // 12)) % 2).astype(np.float32)
    img = np.stack([0.3 + 0.5 * checker, 0.2 + 0.6 * xx / W, 0.2 + 0.6 * yy / H], -1)
    image = (np.clip(img, 0, 1) * 255).astype(np.uint8)

    def depth_of(cam):
        # z-depth of the plane x = WALL_X: z = (WALL_X - c_x) / (ray_x / ray_z) per pixel
        K = cam.K
        v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                              indexing="ij")
        rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)
        R = cam.camera_to_world[:3, :3]
        dx = (rays @ R.T)[..., 0]
        z = (WALL_X - float(cam.center[0])) / dx
        return torch.where(dx > 1e-6, z, torch.full_like(z, float("inf"))).float()

    return cams, image, depth_of


def _peak_memory_mib(device) -> tuple:
    import resource

    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_process_max_rss"


def run(args) -> int:
    import torch

    from ..memory import LatentSpatialMemory
    from ..world_model.model import MirageWorldModel
    from ..world_model.rollout import RolloutConfig, iter_rollout
    from ..world_model.sampler import FlowUniPCSampler

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("mirage bench rollout: --device cuda but no CUDA device is available")
        return 2
    H, W = args.resolution or ((704, 1280) if args.config == "full" and args.backend != "shipped" else (128, 224))
    if args.dtype == "auto":
        dtype = torch.bfloat16 if (dev.type == "cuda" or args.config == "full") else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sampler = FlowUniPCSampler(steps=args.steps or 40)
    t0 = time.perf_counter()
    if args.backend == "shipped":
        from ..world_model.backend import SHIPPED_MODEL

        model = MirageWorldModel.from_pretrained(args.weights or SHIPPED_MODEL, device=dev, dtype=dtype)
        if args.steps:
            model.sampler.steps = int(args.steps)
        args.config = "shipped"
    elif args.weights:
        model = MirageWorldModel.from_pretrained(args.weights, side_branch=args.side_branch, lora=args.lora,
                                                 layout=args.layout,
                                                 device=dev, dtype=dtype, offload=args.offload,
                                                 vae_tiling=args.vae_tiling,
                                                 sampler=sampler, text_encoder=False)
    else:
        model = MirageWorldModel.build(args.config, layout=args.layout, device=dev, dtype=dtype, seed=args.seed,
                                       side_branch_init="random", sampler=sampler, offload=args.offload)
        if args.vae_tiling:
            model.codec.vae.enable_tiling()
    build_s = time.perf_counter() - t0
    print(model.description)

    n = 1 + model.temporal_stride * 8 * args.chunks  # chunks of 9 latents overlapping by one
    cams, image, depth_of = scene(H, W, n)
    memory = LatentSpatialMemory(model.channels, model.stride, device=dev)

    def sim_depth(frames, cameras, mem):
        return torch.stack([depth_of(c) for c in cameras])

    cfg = RolloutConfig(seed=args.seed, progress=args.progress)
    chunks, frames_out = [], 0
    for ch in iter_rollout(model, image, cams, memory, first_depth=depth_of(cams[0]),
                           depth_provider=sim_depth if args.depth == "sim" else None, config=cfg):
        new_frames = len([f for f in ch.frame_indices if f > 0])
        frames_out += new_frames
        chunks.append({"chunk": ch.index, "seconds": ch.timings["total"], "frames": new_frames,
                       "seconds_per_frame": ch.timings["total"] / max(1, new_frames),
                       "stages": {s: ch.timings[s] for s in STAGES}, "references": ch.references,
                       "points_added": ch.points_added, "memory_points": memory.num_points})
        print(f"chunk {ch.index}: {ch.timings['total']:.2f} s for {new_frames} frames "
              + " ".join(f"{s}={ch.timings[s]:.3f}" for s in STAGES))
    total = sum(c["seconds"] for c in chunks)
    peak, peak_kind = _peak_memory_mib(dev)
    stage_totals = {s: sum(c["stages"][s] for c in chunks) for s in STAGES}
    result = {
        "config": args.config,
        "device": str(dev),
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else platform.processor() or platform.machine()),
        "dtype": str(dtype).replace("torch.", ""),
        "resolution": [H, W],
        "latent_hw": [H // model.stride, W // model.stride],
        "steps": model.sampler.steps,
        "seconds_per_chunk": total / max(1, len(chunks)),
        "layout": args.layout,
        "weights": args.weights or ("shipped" if args.backend == "shipped" else "random"),
        "depth": args.depth,
        "build_seconds": build_s,
        "chunks": chunks,
        "frames": frames_out,
        "seconds_per_frame": total / max(1, frames_out),
        "readout_seconds_per_frame": stage_totals["readout"] / max(1, frames_out),
        "stage_share": {s: v / total if total else 0.0 for s, v in stage_totals.items()},
        "peak_memory_mib": peak,
        "peak_memory_kind": peak_kind,
        "memory_points": memory.num_points,
        "memory_mib": memory.nbytes / 2**20,
        "model": model.summary(),
        "torch_threads": torch.get_num_threads(),
        "note": "random weights: timings are real, the generated pictures are noise"
        if not args.weights and args.backend != "shipped" else "",
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    _plot(result, out.with_suffix(".png"))
    print(f"{frames_out} frames in {total:.2f} s = {result['seconds_per_frame']:.3f} s/frame; "
          f"peak memory {peak:.0f} MiB ({peak_kind}); wrote {out} and {out.with_suffix('.png')}")
    return 0


def _plot(result: dict, path: Path) -> None:
    from ..viz import plt

    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4))
    chunks = result["chunks"]
    xs = [c["chunk"] for c in chunks]
    bottom = [0.0] * len(chunks)
    for s in STAGES:
        vals = [c["stages"][s] for c in chunks]
        ax.bar(xs, vals, bottom=bottom, label=s)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for x, c in zip(xs, chunks):
        ax.text(x, c["seconds"], f"{c['seconds_per_frame']:.3g} s/frame", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("chunk")
    ax.set_ylabel("seconds")
    ax.set_xticks(xs)
    ax.set_title(f"rollout stages: {result['config']} on {result['device']} ({result['dtype']}), "
                 f"{result['resolution'][0]}x{result['resolution'][1]}, {result['steps']} steps", fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
