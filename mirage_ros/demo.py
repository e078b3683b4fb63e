"""`mirage demo`: the memory loop on the built-in synthetic scene, no weights, no GPU.

Initialise the latent memory from the first frame (Eq. 4), walk a closed-loop trajectory in
chunks, read the memory at every pose (Eq. 5), decode the readouts with the analytic thumbnail
codec, and update the memory from the observed frames of each chunk with dynamic and sky
pixels excluded. Writes readout strips (PNG), a side-by-side MP4, visibility masks, the memory as
a coloured PLY, stats JSON, a memory-growth plot and, where the bag writer is available, an MCAP
rosbag2 of the run. NO generative model is loaded: the frames show what the memory holds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP_RES = "image size HxW, both divisible by 16 (default 256x448)"


def parse_resolution(text: str):
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution: expected HxW like 256x448, got {text!r}") from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise argparse.ArgumentTypeError(f"resolution: {h}x{w} must be positive multiples of 16")
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="mirage_out/demo", help="output folder (default mirage_out/demo)")
    p.add_argument("--scene", choices=["room", "outdoor"], default="room")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=parse_resolution, default=(256, 448), help=HELP_RES)
    p.add_argument("--chunks", type=int, default=6, help="chunks along the loop (default 6)")
    p.add_argument("--chunk-size", type=int, default=9, help="views per chunk (default 9, one Wan2.2 latent chunk)")
    p.add_argument("--no-moving-object", action="store_true", help="leave the dynamic object out of the scene")
    p.add_argument("--no-update", action="store_true", help="keep only the first frame in memory")
    p.add_argument("--no-bag", action="store_true", help="do not write the run as an MCAP rosbag2")


def psnr(a, b, mask=None) -> float:
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    err = (a - b) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = float(err.mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(args) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from . import sim, viz
    from .geometry import Camera
    from .memory import LatentSpatialMemory
    from .world_model.backend import ReadoutBackend
    from .world_model.codec import ThumbnailCodec, images_to_tensor, tensor_to_images

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    H, W = args.resolution
    scene = sim.make_scene(args.scene, seed=args.seed, moving_object=not args.no_moving_object)
    n_frames = args.chunks * args.chunk_size + 1
    poses = sim.scene_trajectory(scene, "loop", n_frames)
    base = sim.default_camera(H, W)
    cameras = [base.with_pose(E) for E in poses]
    codec = ThumbnailCodec()
    backend = ReadoutBackend(LatentSpatialMemory(), codec, chunk_size=args.chunk_size)
    print(f"mirage demo: {backend.description}")
    print(f"scene={args.scene} seed={args.seed} {H}x{W}, {args.chunks} chunks x {args.chunk_size} views on a closed loop -> {out}")

    def observe(i):
        f = sim.render(scene, cameras[i], t=i / args.chunk_size)
        exclude = f.labels != sim.STATIC
        return f, exclude

    f0, ex0 = observe(0)
    backend.observe(f0.rgb, f0.depth, cameras[0], exclude=ex0)
    stats = {"description": backend.description, "scene": args.scene, "seed": args.seed, "resolution": [H, W],
             "latent_hw": list(base.latent_size(16)), "chunks": []}
    growth = [(0, backend.memory.num_points, backend.memory.nbytes)]
    strip_rows, video = [], []
    mask_tiles = []
    writer = None
    if not args.no_bag:
        try:
            from .ros.bag import BagWriter  # optional: written by the ROS layer, needs rosbags only

            writer = BagWriter(out / "demo_bag")
        except Exception as exc:  # noqa: BLE001 - the bag is a bonus, never a failure of the demo
            print(f"(no MCAP bag: {exc})")
    bar = tqdm(total=n_frames - 1, desc="demo", unit="view")
    for c in range(args.chunks):
        idx = list(range(1 + c * args.chunk_size, 1 + (c + 1) * args.chunk_size))
        chunk = next(backend.imagine([cameras[i] for i in idx]))
        truth = [observe(i) for i in idx]
        rec = {"chunk": c, "frames": idx, "readout_ms_per_view": 1e3 * chunk.timings["readout"] / len(idx),
               "decode_ms_per_view": 1e3 * chunk.timings["decode"] / len(idx), "coverage": [], "psnr_visible": [],
               "psnr_codec_bound": []}
        for k, i in enumerate(idx):
            f, ex = truth[k]
            m = chunk.masks[k]
            pix = np.repeat(np.repeat(m, 16, 0), 16, 1)
            best = tensor_to_images(codec.decode(codec.encode(images_to_tensor(f.rgb))))[0]
            rec["coverage"].append(float(m.mean()))
            rec["psnr_visible"].append(psnr(chunk.frames[k], f.rgb, pix & ~ex))
            rec["psnr_codec_bound"].append(psnr(best, f.rgb, pix & ~ex))
            video.append(np.concatenate([viz.label_image(f.rgb, f"observed {i}"),
                                         viz.label_image(chunk.frames[k], "memory readout"),
                                         viz.label_image(viz.mask_to_rgb(m, (H, W)), "mask m_t")], 1))
            if k == 0:
                strip_rows.append([viz.label_image(f.rgb, f"frame {i}"), viz.label_image(chunk.frames[k], f"readout {i}")])
                mask_tiles.append(viz.mask_to_rgb(m, (H, W)))
            bar.update(1)
        if writer is not None:
            writer.add_chunk(chunk, stamp_s=float(idx[0]))
        added = 0
        if not args.no_update:
            for k, i in enumerate(idx):
                f, ex = truth[k]
                added += backend.observe(f.rgb, f.depth, cameras[i], exclude=ex)
        rec["points_added"] = added
        rec["memory_points"] = backend.memory.num_points
        rec["memory_mib"] = backend.memory.nbytes / 2**20
        stats["chunks"].append(rec)
        growth.append((c + 1, backend.memory.num_points, backend.memory.nbytes))
        bar.set_postfix(points=backend.memory.num_points, cov=f"{np.mean(rec['coverage']):.2f}")
    bar.close()

    mem = backend.memory
    colors = backend.point_colors()
    viz.write_ply(out / "memory.ply", mem.points.cpu().numpy(), colors)
    viz.write_png(out / "readouts.png", viz.image_grid([list(x) for x in zip(*strip_rows)]))
    viz.write_png(out / "masks.png", viz.image_grid([mask_tiles]))
    n_video = viz.write_mp4(out / "readouts.mp4", video, fps=6)
    if writer is not None:
        writer.add_memory(mem.points.cpu().numpy(), colors, stamp_s=float(n_frames))
        writer.close()
    pyplot = viz.plt()
    fig, ax = pyplot.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot([g[0] for g in growth], [g[1] for g in growth], "o-")
    ax[0].set(xlabel="chunk (0 = first frame)", ylabel="points in memory", title="memory size per chunk")
    ax[1].plot([g[0] for g in growth], [g[2] / 2**20 for g in growth], "o-", color="C1")
    ax[1].set(xlabel="chunk", ylabel="MiB", title="memory footprint")
    fig.tight_layout()
    fig.savefig(out / "memory_growth.png", dpi=110)
    pyplot.close(fig)
    stats.update({
        "memory_points": mem.num_points, "memory_mib": mem.nbytes / 2**20,
        "mean_coverage": float(np.mean([c for r in stats["chunks"] for c in r["coverage"]])),
        "video_frames": n_video, "seconds": time.perf_counter() - t_start,
        "files": sorted(p.name for p in out.iterdir()),
    })
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    print(f"memory: {mem.num_points} points, {mem.nbytes / 2**20:.2f} MiB; mean coverage {stats['mean_coverage']:.2f}; "
          f"{stats['seconds']:.1f} s. NO generative model was loaded: frames are memory readouts.")
    print(f"wrote {', '.join(stats['files'])} to {out}")
    return 0
