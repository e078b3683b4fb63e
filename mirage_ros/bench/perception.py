"""`mirage bench perception`: milliseconds per frame of each depth and mask provider, and the
scale-alignment check (a depth map scaled by a known factor, recovered against the memory).

On a CPU the learned providers run with random weights: Depth Anything 3 at a real preset
(da3-small by default) and tiny SAM3 / Qwen3-VL configurations of the real classes; on a GPU pass
``--device cuda`` and real presets. Writes JSON and a PNG bar chart beside it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..util import median_seconds, parse_resolution, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/bench_perception.json")
    p.add_argument("--resolution", type=parse_resolution, default=(256, 448), help="frame size HxW (default 256x448)")
    p.add_argument("--frames", type=int, default=9, help="frames per batch (one chunk)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--da3-preset", default="da3-small", help="Depth Anything 3 preset (random weights here)")
    p.add_argument("--da3-res", type=int, default=504, help="DA3 processing size of the longer side (multiple of 14)")
    p.add_argument("--true-scale", type=float, default=2.5, help="scale error injected for the alignment check")


def _time(fn, repeats):
    return median_seconds(fn, repeats)


def run(args) -> int:
    import numpy as np

    from .. import sim, viz
    from ..memory import LatentSpatialMemory
    from ..perception import AlignedDepth, SimulatorDepth, make_depth_provider
    from ..world_model.codec import ThumbnailCodec, images_to_tensor

    H, W = args.resolution
    scene = sim.make_scene("outdoor", seed=0, moving_object=True)
    poses = sim.scene_trajectory(scene, "loop", max(46, args.frames + 1))  # ~8 degrees apart: views overlap
    cams = [sim.default_camera(H, W, world_to_camera=E) for E in poses[: args.frames]]
    rendered = [sim.render(scene, c, t=float(i)) for i, c in enumerate(cams)]
    frames = np.stack([f.rgb for f in rendered])
    labels = np.stack([f.labels for f in rendered])
    codec, mem = ThumbnailCodec(), LatentSpatialMemory(device=args.device)
    mem.insert(codec.encode(images_to_tensor(frames[0]))[0], rendered[0].depth, cams[0],
               exclude=labels[0] != sim.STATIC)
    T = len(cams)
    rows = []

    def add(name, kind, config, fn):
        try:
            sec = _time(fn, args.repeats)
        except Exception as exc:  # noqa: BLE001 - report, keep benchmarking the rest
            print(f"{name}: skipped ({type(exc).__name__}: {exc})")
            rows.append({"name": name, "kind": kind, "config": config, "device": args.device, "ms_per_frame": None,
                         "error": f"{type(exc).__name__}: {exc}"})
            return
        rows.append({"name": name, "kind": kind, "config": config, "device": args.device,
                     "ms_per_frame": 1e3 * sec / T})
        print(f"{name:>22}: {1e3 * sec / T:8.2f} ms/frame ({config})")

    sim_depth = SimulatorDepth(lambda c, i: rendered[i].depth)
    add("simulator", "depth", "32FC1 metres", lambda: sim_depth.estimate(frames, cams))
    mem_depth = make_depth_provider("memory")
    add("memory", "depth", "readout depth, latent grid", lambda: mem_depth.estimate(frames, cams, memory=mem))
    da3 = make_depth_provider("da3", preset=args.da3_preset, random_weights=True, device=args.device,
                              process_res=args.da3_res)
    add("da3", "depth", f"{args.da3_preset}, random weights, longer side "
                        f"{args.da3_res}", lambda: da3.estimate(frames, cams))
    try:
        from ..perception.masks import make_mask_provider

        lab = make_mask_provider("labels")
        add("labels", "mask", "simulator labels", lambda: lab.masks(frames, cams, labels=labels))
        fixed = make_mask_provider("sam3", tiny=True, device=args.device)
        add("sam3 (fixed entities)", "mask", "tiny random Sam3Model, 7 entities + "
                                             "sky", lambda: fixed.masks(frames, cams))
        qwen = make_mask_provider("sam3", entities="qwen", tiny=True, device=args.device)
        add("qwen3-vl -> sam3", "mask", "tiny random Qwen3-VL + Sam3Model", lambda: qwen.masks(frames, cams))
    except ImportError as exc:
        print(f"mask providers: skipped ({exc})")

    # scale alignment: frame k's true depth divided by a known factor, recovered against the memory
    aligned = AlignedDepth(SimulatorDepth(lambda c, i: rendered[1 + i].depth / args.true_scale), mode="scale")
    aligned.estimate(frames[1:3], cams[1:3], memory=mem)
    res = aligned.last_alignment[0]
    result = {
        "resolution": [H, W], "frames_per_batch": T, "device": args.device, "providers": rows,
        "scale_alignment": {"true_scale": args.true_scale, "recovered_scale": res.scale if res else None,
                            "residual": res.residual if res else None,
                            "residual_before": res.residual_before if res else None,
                            "cells": res.cells if res else 0},
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    pyplot = viz.plt()
    ok = [r for r in rows if r["ms_per_frame"] is not None]
    fig, ax = pyplot.subplots(figsize=(7, 3.5))
    ax.barh([r["name"] for r in ok], [r["ms_per_frame"] for r in ok],
            color=["C0" if r["kind"] == "depth" else "C1" for r in ok])
    ax.set_xscale("log")
    ax.set(xlabel=f"ms per frame ({args.device}, {H}x{W}, log)", title="perception providers (blue depth, orange "
                                                                       "masks)")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    pyplot.close(fig)
    print(f"scale alignment: true {args.true_scale}, recovered {result['scale_alignment']['recovered_scale']}")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
