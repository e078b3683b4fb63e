"""`mirage bench gpu`: the full-size world models on one GPU, random weights in bfloat16, one command.

For each layout it builds Wan2.2-TI2V-5B (+ the 704.7M-parameter Wan2.2 VAE) with random weights and
times one chunk the way the backend runs it, at the layout's resolution:

- ``mirage`` at 704 x 1280 (44 x 80 latents): a 9-latent chunk (1 clean + 8 new = 32 frames) with 2
  preceding and 4 reference latents, the paper side branch, 40 UniPC steps, CFG off. Readout = the
  latent memory read at the 11 conditioned poses; update = re-encode the 8 new latent frames + insert.
- ``spatia`` at 704 x 1248: one later round of 81 frames (3 history + 18 new latents = 72 new frames)
  with 7 references, the Spatia branch and a rank-32 LoRA, 40 steps with CFG 3.5 (2 passes a step).
  Readout = voxelise + render the RGB cache at 81 poses (CUDA, this package's renderer) + VAE(render) ++
  VAE(hole); references = front-most sets + Hungarian; update = 12 new frames lifted at 294 x 518.

The denoiser is timed over ``--steps`` steps after one warm-up step and extrapolated to 40 (the
per-step cost is the same every step); seconds per frame = the chunk's total / its new frames. Peak
memory = ``torch.cuda.max_memory_allocated`` over the layout's build and chunk. No text encoder is
built (zero prompt embeddings): UMT5-XXL adds about 11 GiB in bf16 unless offloaded. Writes JSON (and a
PNG beside it). Without a CUDA device it prints why and exits 0 (``--dry-run``: the same code at toy
size on the CPU, to check it before a GPU session).
"""
from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from ..util import write_json

FULL_STEPS = 40


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/bench_gpu.json", help="output JSON path (a PNG is written beside it)")
    p.add_argument("--layouts", default="mirage,spatia", help="comma-separated: mirage, spatia")
    p.add_argument("--steps", type=int, default=2, help="denoising steps timed (after one warm-up), extrapolated to 40")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (checks the script, measures nothing "
                                                          "real)")


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class _Clock:
    def __init__(self, dev):
        self.dev, self.t = dev, {}

    def __call__(self, name):
        clock = self

        class _C:
            def __enter__(self):
                _sync(clock.dev)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                _sync(clock.dev)
                clock.t[name] = clock.t.get(name, 0.0) + time.perf_counter() - self.t0

        return _C()


def _memory(dev):
    import torch

    if dev.type != "cuda":
        return None
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated(dev) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(dev) / 2**30}


def _wall(H, W, n):
    """The rollout benchmark's scene: a camera sliding along a textured wall, exact depth."""
    from .rollout import scene

    return scene(H, W, n)


def bench_mirage(dev, dtype, H, W, steps, config):
    """One 9-latent Mirage chunk (see module docstring)."""
    import torch

    from ..memory import LatentSpatialMemory
    from ..world_model.codec import images_to_tensor
    from ..world_model.model import MirageWorldModel
    from ..world_model.sampler import FlowUniPCSampler

    clock = _Clock(dev)
    with clock("build"):
        model = MirageWorldModel.build(config, layout="paper", device=dev, dtype=dtype, side_branch_init="random",
                                       sampler=FlowUniPCSampler(steps=1))
    mem_weights = _memory(dev)
    ts = model.temporal_stride
    cams, image, depth_of = _wall(H, W, 1 + ts * 10)
    memory = LatentSpatialMemory(model.channels, model.stride, device=dev)
    z0 = model.encode_images(images_to_tensor(image))[0]
    for j in range(3):  # a memory that has seen the first frames
        memory.insert(z0.to(dev), depth_of(cams[ts * j]), cams[ts * j])
    T, P, R = 9, 2, 4
    cond = [cams[min(ts * j, len(cams) - 1)] for j in list(range(2, 2 + T)) + [0, 1]]
    with clock("readout"):
        reads = [memory.read(c) for c in cond]
    h, w = z0.shape[-2:]
    channels = model.channels

    def lat(n):
        return torch.randn(n, channels, h, w)

    req = dict(clean_targets=lat(1), num_targets=T, readouts=torch.stack([r.latent.float().cpu() for r in reads]),
               masks=torch.stack([r.mask.cpu() for r in reads]), image_size=(H, W),
               prompt_embeds=model.text.empty(), preceding=lat(P), references=lat(R))
    model.sampler = FlowUniPCSampler(steps=1)
    with clock("warmup_step"):
        model.denoise(**req, generator=torch.Generator().manual_seed(0))
    model.sampler = FlowUniPCSampler(steps=steps)
    with clock("denoise_timed"):
        z = model.denoise(**req, generator=torch.Generator().manual_seed(0))
    with clock("decode"):
        video = model.decode_video(z)
    new = video[1::ts][: T - 1]  # the new latent-aligned frames
    with clock("update"):
        feats = model.encode_images(new)
        for k in range(feats.shape[0]):
            c = cams[min(ts * (k + 3), len(cams) - 1)]
            memory.insert(feats[k].to(dev), depth_of(c), c)
    frames = ts * (T - 1)
    out = _summary("mirage", clock.t, steps, frames, H, W, dtype, model, _memory(dev), mem_weights,
                   {"targets": T, "preceding": P, "references": R, "cfg": False, "memory_points": memory.num_points,
                    "memory_mib": memory.nbytes / 2**20})
    del model, memory, video, z
    return out


def bench_spatia(dev, dtype, H, W, steps, config, rounds=(121, 81, 9)):
    """One later Spatia round of 81 frames (see module docstring)."""
    import numpy as np
    import torch

    from ..baselines.point_render import PointRender, voxel_downsample
    from ..baselines.rgb_memory import RGBPointCloudMemory
    from ..world_model.codec import tensor_to_images
    from ..world_model.spatia import (
        SpatiaSampler,
        SpatiaSettings,
        SpatiaWorldModel,
        frontmost_visible,
        match_references,
    )

    s = SpatiaSettings(height=H, width=W, first_round_frames=rounds[0], round_frames=rounds[1],
                       history_frames=rounds[2])
    clock = _Clock(dev)
    with clock("build"):
        model = SpatiaWorldModel.build(config, device=dev, dtype=dtype, sampler=SpatiaSampler(steps=1), lora_rank=32)
    mem_weights = _memory(dev)
    F, n_hist, R = s.round_frames, s.history_frames, s.references
    a = s.first_round_frames - n_hist  # Spatia's round 1: frames 112 .. 192
    cams, image, depth_of = _wall(H, W, a + F)
    memory = RGBPointCloudMemory(model.codec, device=dev)
    ph, pw = s.point_resolution
    import cv2

    small_img = cv2.resize(image, (pw, ph), interpolation=cv2.INTER_AREA)
    for i in range(0, a, s.map_stride * 2):  # every 12th earlier frame lifted (about 10 frames)
        c = cams[i].resized(ph, pw)
        memory.insert(small_img, depth_of(c), c)
    round_cams = cams[a:a + F]
    render = PointRender(radius=s.render_radius, points_per_pixel=s.points_per_pixel)
    with clock("readout_render"):
        pts, cols = voxel_downsample(memory.points, memory.colors.float() / 255.0, s.render_voxel_at(1))
        rh = [render(pts, cols, c) for c in round_cams]
        renders = torch.stack([a for a, _ in rh]).cpu().numpy()
        holes = torch.stack([b for _, b in rh]).cpu()
    with clock("readout_encode"):
        control = model.control_latents(renders, holes)
    with clock("references"):
        cand = list(range(0, a, s.ref_history_stride))
        ref_pts = voxel_downsample(memory.points, None, s.ref_voxel)[0]
        K = cams[0].K
        intr = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        hm = frontmost_visible(ref_pts, torch.stack([cams[i].world_to_camera for i in cand]), intr, H, W)
        nm = frontmost_visible(ref_pts, torch.stack([c.world_to_camera for c in round_cams[::s.ref_stride]]), intr, H,
                               W)
        picks = match_references(hm, nm, R)
    refs = [image] * R  # the timing needs R reference images; the picks above are timed, not used
    hist = np.stack([image] * n_hist)
    pos = model.text.empty()
    kw = dict(control=control, history=hist, references=refs, negative_embeds=torch.zeros_like(pos), seed=s.seed,
              lora=True,
              decode=False)
    model.sampler = SpatiaSampler(steps=1)
    with clock("warmup_step"):
        model.generate_round(None, None, pos, **kw)
    model.sampler = SpatiaSampler(steps=steps)
    with clock("denoise_timed"):
        z, _ = model.generate_round(None, None, pos, **kw)
    with clock("decode"):
        video = tensor_to_images(model.decode_video(z))
    new_ids = [i for i in range(a + n_hist, a + F) if i % s.map_stride == 0]
    with clock("update"):
        for i in new_ids:
            c = cams[i].resized(ph, pw)
            memory.insert(cv2.resize(video[i - a], (pw, ph), interpolation=cv2.INTER_AREA), depth_of(c), c)
    frames = F - n_hist
    out = _summary("spatia", clock.t, steps, frames, H, W, dtype, model, _memory(dev), mem_weights,
                   {"frames": F, "history_latents": (n_hist - 1) // 4 + 1, "references": R,
                    "references_matched": len(picks), "cfg": 3.5,
                    "lora_rank": 32, "memory_points": memory.num_points, "memory_mib": memory.nbytes / 2**20,
                    "rendered_points": int(pts.shape[0])})
    del model, memory, video, z, control
    return out


def _summary(layout, t, steps, frames, H, W, dtype, model, mem, mem_weights, extra):
    import torch

    per_step = t["denoise_timed"] / steps
    denoise40 = per_step * FULL_STEPS
    readout = sum(v for k, v in t.items() if k.startswith("readout"))
    rest = readout + t.get("references", 0.0) + t["decode"] + t["update"]
    total = denoise40 + rest
    return {
        "layout": layout, "resolution": [H, W], "latent_hw": [H // model.stride, W // model.stride],
        "dtype": str(dtype).replace("torch.", ""), "steps_timed": steps, "seconds_per_step": per_step,
        "denoise_40_steps_s": denoise40, "readout_s": readout, "update_s": t["update"], "decode_s": t["decode"],
        "references_s": t.get("references"), "chunk_s_at_40_steps": total, "new_frames": frames,
        "seconds_per_frame": total / frames, "timings_s": dict(t), "memory_after_build": mem_weights, "memory": mem,
        "parameters": model.transformer.num_parameters(), "torch": torch.__version__, **extra,
    }


def run(args) -> int:
    import torch

    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    bad = sorted(set(layouts) - {"mirage", "spatia"})
    if bad:
        print(f"mirage bench gpu: unknown layout(s) {', '.join(bad)} (mirage, spatia)")
        return 2
    if args.dry_run:
        dev, dtype, config = torch.device("cpu"), torch.float32, "tiny"
        sizes = {"mirage": (64, 128), "spatia": (64, 96)}
        rounds = (21, 17, 9)
    else:
        dev = torch.device(args.device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            print("mirage bench gpu: skipped, no CUDA device here (it measures the full-size models on a GPU; "
                  "--dry-run runs the same code at toy size on the CPU)")
            return 0
        dtype, config = torch.bfloat16, "full"
        sizes = {"mirage": (704, 1280), "spatia": (704, 1248)}
        rounds = (121, 81, 9)
    result = {"device": str(dev),
              "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)",
              "config": config, "weights": "random", "text_encoder": "none (zero prompt embeddings)", "layouts": {},
              "note": "random weights: the timings and memory are real, the pictures are noise; denoise timed over "
                      f"{args.steps} steps after a warm-up and extrapolated to {FULL_STEPS}"}
    t_all = time.perf_counter()
    for name in layouts:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        H, W = sizes[name]
        try:
            if name == "mirage":
                r = bench_mirage(dev, dtype, H, W, args.steps, config)
            else:
                r = bench_spatia(dev, dtype, H, W, args.steps, config, rounds)
        except torch.cuda.OutOfMemoryError as exc:  # reported, the other layout still runs
            r = {"layout": name, "error": f"out of memory: {exc}", "memory": _memory(dev)}
        result["layouts"][name] = r
        gc.collect()
        print(f"{name} {H}x{W}: " + (r.get("error") or f"{r['seconds_per_frame']:.3f} s/frame, "
                                                       f"{r['seconds_per_step']:.3f} s/step, "
                                     f"readout {r['readout_s']:.2f} s, update {r['update_s']:.2f} s, peak "
                                     f"{(r['memory'] or {}).get('peak_allocated_gib', float('nan')):.1f} GiB"))
    result["seconds"] = time.perf_counter() - t_all
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    _plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} ({result['seconds']:.0f} s)")
    return 0


def _plot(result, path: Path) -> None:
    from ..viz import plt

    rows = [r for r in result["layouts"].values() if "error" not in r]
    if not rows:
        return
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6, 3.5))
    parts = ("denoise_40_steps_s", "readout_s", "references_s", "decode_s", "update_s")
    bottom = [0.0] * len(rows)
    for p in parts:
        vals = [(r.get(p) or 0.0) / r["new_frames"] for r in rows]
        ax.bar([r["layout"] for r in rows], vals, bottom=bottom, label=p.replace("_s", "").replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(rows):
        m = (r.get("memory") or {}).get("peak_allocated_gib")
        ax.text(i, bottom[i], f"{r['seconds_per_frame']:.2f} s/frame" + (f"\npeak {m:.0f} GiB" if m else ""),
                ha="center",
                va="bottom", fontsize=8)
    ax.set_ylabel("seconds per generated frame")
    ax.set_title(f"{result['device_name']}: {result['config']} models, random weights", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


def main(argv=None) -> int:
    """``python -m mirage_ros.bench.gpu`` (what scripts/gpu_check.sh runs: no other command's imports)."""
    p = argparse.ArgumentParser(prog="mirage bench gpu", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
