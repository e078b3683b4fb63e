"""`mirage bench imagine`: the paper's closed-loop ablation in miniature, on held-out scenes.

Each seed (``training.seeds.held_out_seeds``: never in any training set) is a procedural scene with
the moving post and a closed loop that ends where it starts. Only the first frame is observed
(with its simulator depth and labels); every arm then rolls out Algorithm 1 along the loop, each
generated chunk written back into its memory. Arms, all with the same sampler steps and seeds:

- ``latent``: the shipped model with the latent memory (ours);
- ``rgb``: the same architecture trained the same way on the RGB point-cloud cache's readout
  (hole-aware footprint splats rendered at full resolution, then encoded), rolled out with that
  cache (``--rgb-model``);
- ``none``: the shipped model with the readout zeroed (a shortcut for a model trained without memory
  input; it was trained with 15 % readout dropout, so an empty readout is in its distribution);
- ``readout``: no model: the first frame's memory read at every pose and decoded, black where unseen;
- ``latent_nomask``: the latent arm with dynamic objects left in the memory (no exclusion masks).

Depth of generated frames: the simulator's (oracle; ``arms``) and, as a second row, the memory's own
depth (``arms_memory_depth``: the path a robot without Depth Anything 3 weights has).

Metrics per seed (``bench.evaluation``), then mean over seeds with paired bootstrap 95 % intervals
against ``latent``: PSNR and SSIM of the final frame (the first frame's pose), PSNR over the
revisited region (cells the first observation covers, read at every generated frame's pose) and the
never-seen region (the rest), blockiness per region relative to the ground truth (1.0 = as smooth
across 16 / 32-px borders as reality), and over all seeds the cross-loop correlation of never-seen
content (different scenes at the same frame index; ~0 for real frames, high when the sampler's
noise rather than the scene decides what is drawn). Seconds per chunk per arm.

Sampler and readout settings are the model folder's and the rollout's defaults unless overridden
(``--pin-until``, ``--pin-paste``, ``--earliest-within``, ``--steps``). Seeds: ``--seeds 20`` (the
first 20 held-out), ``--seeds 900700-900719`` or a comma list; choose checkpoints on the validation
block (``training.seeds.VALIDATION_BASE``), never on the held-out seeds reported here. An arm whose
model folder is missing is skipped with one line.
Every frame is written as 8-bit PNG (``DIR/gt/<seed>/<frame>.png``, ``DIR/<arm>/<seed>/<frame>.png``;
the memory-depth row under ``DIR/memory_depth/``), and the final-frame PSNR is computed from those
PNGs, so anyone can recompute it.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..util import psnr, ssim, write_json
from .evaluation import bootstrap_ci, cross_loop_correlation, parse_seeds, region_metrics, region_pixels

ARMS = ("latent", "rgb", "none", "readout", "latent_nomask")
DEPTHS = ("oracle", "memory")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/bench_imagine.json", help="output JSON (PNG table/plot beside it)")
    p.add_argument("--out", default="mirage_out/bench_imagine", help="folder for every frame (PNG)")
    p.add_argument("--seeds", default="20", help="a count of held-out seeds from 900000 (default 20), a range "
                   "900700-900719 or a comma list")
    p.add_argument("--frames", type=int, default=41, help="RGB frames per loop (default 41: 5 chunks)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--rgb-model", default=None, help="the RGB-cache arm's model folder (default: shipped beside it)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--depths", default=",".join(DEPTHS), help="oracle,memory (depth of generated frames)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's own)")
    p.add_argument("--pin-until", type=float, default=None,
                   help="memory pinning: fraction of sampler steps with visible cells pinned "
                        "(default: the model's own; 0 = off)")
    p.add_argument("--pin-paste", default=None, choices=["on", "off"], help="paste the readout "
                                                                            "into visible cells after sampling")
    p.add_argument("--context-sigma", type=float, default=None,
                   help="noise level of generated context frames (default: the model's own; 0 = clean)")
    p.add_argument("--pin-generated", default=None, choices=["on", "off"],
                   help="pin also the cells the rollout's own generated points fill (default: the rollout's)")
    p.add_argument("--paste-generated", default=None, choices=["on", "off"],
                   help="paste also the cells the rollout's own generated points fill (default: the rollout's)")
    p.add_argument("--decode-imagined", default=None, choices=["on", "off"],
                   help="decode cells the observations did not supply with the codec's imagination decoder "
                        "(RolloutConfig.decode_imagined; default: on)")
    p.add_argument("--decode-aligned", default=None, choices=["on", "off"],
                   help="draw remembered cells where their points project, not on the latent grid "
                        "(RolloutConfig.decode_aligned; also the readout arm's decode)")
    p.add_argument("--seam-filter", default=None,
                   help="the imagination decoder's deblocking filter: 'BAND,SIGMA' in px or 'off' "
                        "(default: the codec's own setting)")
    p.add_argument("--aligned-overlap", type=float, default=None,
                   help="aligned decode: window overlap as a share of the stride (default: the rollout's)")
    p.add_argument("--aligned-depth-tol", type=float, default=None,
                   help="aligned decode: relative depth band of blocks that blend (default: the rollout's)")
    p.add_argument("--earliest-within", type=float, default=None,
                   help="observed-first readout tolerance (default: the rollout's, 0.3; 0 = plain frontmost-wins)")
    p.add_argument("--sky", default="on", choices=["on", "off"],
                   help="the memories (latent and RGB cache) keep a sky dome (directions at infinity read by "
                        "rotation; the revisited region then includes the seen sky); default on")
    p.add_argument("--sky-fraction", type=float, default=0.25,
                   help="share of +inf pixels that sends a cell with no point to the dome (default 0.25)")
    p.add_argument("--sky-exclude-fraction", type=float, default=None,
                   help="let cells whose excluded pixels are sky (+inf) stay points up to this share excluded "
                        "(default: none, sky counts like dynamic pixels)")
    p.add_argument("--exclude-fraction", type=float, default=0.375,
                   help="the latent memory excludes a cell when more than this share of its pixels is dynamic "
                        "(default 0.375; 0: any pixel); partly covered cells keep their static part, placed by the "
                        "static pixels' depth")
    p.add_argument("--tag", default="", help="a label stored in the JSON (e.g. the sweep point)")
    p.add_argument("--noise-seed", type=int, default=None,
                   help="one sampler seed for every loop (default: derived from each loop's "
                        "observation, as the node does)")
    p.add_argument("--bootstrap", type=int, default=10000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--figures-only", action="store_true",
                   help="no rollouts: redraw the PNGs of an existing --json from its --out frames")


def _scene_loop(seed: int, frames: int, H: int, W: int):
    """GT frames, depths, labels and cameras of a held-out seed's closed loop."""
    from ..training.sim_data import render_clip, sim_clip_source

    src = sim_clip_source(seed, "mixed", frames)
    src["trajectory"] = "loop"
    rgb, depth, labels, cams, params = render_clip(src, H, W)
    return src, rgb, depth, labels, cams


def oracle_providers(cams, depth, labels, exclude_dynamic: bool):
    """Simulator depth / label providers for generated frames: the scene's exact values at the
    frame's camera and time (looked up by camera)."""
    from ..sim import SKY, STATIC

    index = {id(c): i for i, c in enumerate(cams)}

    def depth_fn(frames, cameras, memory):
        return np.stack([depth[index[id(c)]] for c in cameras])

    def mask_fn(frames, cameras):
        import torch

        lab = np.stack([labels[index[id(c)]] for c in cameras])
        return torch.from_numpy(lab != STATIC if exclude_dynamic else lab == SKY)

    return depth_fn, mask_fn


def _rollout(model, arm: str, depth_mode: str, rgb0, cams, depth, labels, steps, earliest_within=None,
             pin_generated=None, paste_generated=None, decode_imagined=None, decode_aligned=None,
             aligned=None, with_timings: bool = False, noise_seed=None, sky: bool = False, sky_fraction: float = 0.25,
             exclude_fraction: float = 0.375, sky_exclude_fraction=None):
    """One arm's frames (N, H, W, 3) uint8 (frame 0 = the observed frame); with ``with_timings`` also
    the mean seconds per chunk."""
    import torch

    from ..baselines.rgb_memory import RGBPointCloudMemory
    from ..memory import LatentSpatialMemory
    from ..sim import SKY, STATIC
    from ..world_model.rollout import RolloutConfig, rollout

    nomask = arm == "latent_nomask"
    first_ex = torch.from_numpy(labels[0] == SKY if nomask else labels[0] != STATIC)
    depth_fn, mask_fn = oracle_providers(cams, depth, labels, exclude_dynamic=not nomask)
    if arm == "rgb":
        memory = RGBPointCloudMemory(model.codec, splat="footprint", sky=sky, sky_fraction=sky_fraction)
    else:
        memory = LatentSpatialMemory(channels=model.channels, stride=model.stride, sky=sky, sky_fraction=sky_fraction,
                                     exclude_fraction=exclude_fraction, sky_exclude_fraction=sky_exclude_fraction)
    rcfg = RolloutConfig(progress=False, seed=noise_seed)
    if earliest_within is not None:
        rcfg.earliest_within = float(earliest_within)
    if pin_generated is not None:
        rcfg.pin_generated = bool(pin_generated)
    if paste_generated is not None:
        rcfg.paste_generated = bool(paste_generated)
    if decode_imagined is not None:
        rcfg.decode_imagined = bool(decode_imagined)
    if decode_aligned is not None:
        rcfg.decode_aligned = bool(decode_aligned)
    for k, v in (aligned or {}).items():
        if v is not None:
            setattr(rcfg, k, float(v))
    res = rollout(model, rgb0, cams, memory, first_depth=torch.from_numpy(depth[0]), first_exclude=first_ex,
                  depth_provider=depth_fn if depth_mode == "oracle" else None, mask_provider=mask_fn,
                  readout_scale=0.0 if arm == "none" else 1.0, config=rcfg)
    if with_timings:
        return res.frames, float(np.mean([t["total"] for t in res.timings]))
    return res.frames


def _readout_frames(codec, rgb0, cams, depth, labels, sky: bool = False, sky_fraction: float = 0.25,
                    exclude_fraction: float = 0.375, sky_exclude_fraction=None, aligned: bool = False,
                    aligned_args=None):
    """No model: the first observation's memory read at every pose and decoded (black where unseen),
    and the visibility of that memory (the revisited region)."""
    import torch

    from ..memory import LatentSpatialMemory
    from ..sim import STATIC
    from ..world_model.codec import images_to_tensor, tensor_to_images

    mem = LatentSpatialMemory(channels=codec.channels, stride=codec.stride, sky=sky, sky_fraction=sky_fraction,
                              exclude_fraction=exclude_fraction, sky_exclude_fraction=sky_exclude_fraction)
    mem.insert(codec.encode(images_to_tensor(rgb0))[0], torch.from_numpy(depth[0]), cams[0],
               exclude=torch.from_numpy(labels[0] != STATIC))
    reads = [mem.read(c) for c in cams]
    lat = torch.stack([r.latent for r in reads])
    vis = torch.stack([r.mask for r in reads])
    img = codec.decode(lat)
    if aligned and hasattr(codec, "cell_patches"):  # the memory decoded as the rollout's aligned decode draws it
        from ..world_model.aligned_decode import redraw_aligned

        d = _default_rollout()
        kw = {k: v for k, v in (aligned_args or {}).items() if v is not None}
        kw = dict(overlap=kw.get("aligned_overlap", d.aligned_overlap),
                  depth_tol=kw.get("aligned_depth_tol", d.aligned_depth_tol))
        img = torch.stack([redraw_aligned(codec, mem, r, cams[i], lat[i], img[i], **kw) for i, r in enumerate(reads)])
    img = img * vis.repeat_interleave(codec.stride, 1).repeat_interleave(codec.stride, 2)[:, None]
    frames = tensor_to_images(img)
    frames[0] = rgb0
    return frames, vis.numpy()


def _write_frames(folder: Path, frames) -> None:
    from ..viz import write_png

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        write_png(folder / f"{i:04d}.png", f)


def _load_png(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _metrics(gt: np.ndarray, out: np.ndarray, vis: np.ndarray, stride: int, final_png: Path,
             final_gt_png: Path) -> Dict:
    """Per-seed metrics (``evaluation.region_metrics``); the final-frame PSNR/SSIM are recomputed
    from the written PNGs."""
    m = region_metrics(gt, out, vis, stride)
    gfin, ofin = _load_png(final_gt_png), _load_png(final_png)
    m.update(final_frame_psnr=psnr(gfin, ofin), final_frame_ssim=ssim(gfin, ofin))
    return m


SUMMARY_KEYS = ("final_frame_psnr", "final_frame_ssim", "revisited_psnr", "never_seen_psnr", "all_frames_psnr",
                "ssim_all_frames", "blockiness16_all", "blockiness32_all", "blockiness16_revisited",
                "blockiness32_revisited", "blockiness16_never_seen", "blockiness32_never_seen")


def summarise(per_seed: Dict[str, List[Dict]], n_boot: int) -> Dict:
    """Mean per arm and metric (NaNs, e.g. an empty region, left out), with the paired bootstrap 95 %
    interval of (arm - latent)."""
    out = {}
    base = per_seed.get("latent")
    for arm, rows in per_seed.items():
        d = {}
        for k in SUMMARY_KEYS:
            v = np.array([r.get(k, np.nan) for r in rows], dtype=np.float64)
            d[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            if base is not None and arm != "latent" and len(base) == len(rows):
                b = np.array([r.get(k, np.nan) for r in base], dtype=np.float64)
                diff = v - b
                d[f"{k}_minus_latent"] = float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan")
                d[f"{k}_minus_latent_ci95"] = bootstrap_ci(diff, n_boot)
        out[arm] = d
    return out


def _parse_seam(text):
    """'--seam-filter' -> None (codec default), {} (off) or {"band": int, "sigma": float}."""
    from ..world_model.refined_codec import _check_seam_filter

    if text is None:
        return None
    if text == "off":
        return {}
    try:
        band, sigma = text.split(",")
        return _check_seam_filter({"band": int(band), "sigma": float(sigma)})
    except Exception as exc:  # noqa: BLE001 - any malformed value is a usage error
        raise SystemExit(f"bench imagine: --seam-filter: expected 'BAND,SIGMA' or 'off', got {text!r} "
                         f"({exc})") from None


def _load_arm_models(arms, model_dir: Path, rgb_dir: Path, device: str, overrides: Dict, seam=None):
    """{arm: model} for the arms whose folders exist; a missing folder skips its arm with one line."""
    from ..world_model.model import MirageWorldModel
    from ..world_model.sampler import FlowUniPCSampler

    folders = {"latent": model_dir, "none": model_dir, "latent_nomask": model_dir, "rgb": rgb_dir}
    loaded, models = {}, {}
    for arm in arms:
        if arm == "readout":
            continue
        folder = folders[arm]
        if not (folder / "model_index.json").is_file():
            print(f"bench imagine: arm {arm!r} skipped: no model at {folder}")
            continue
        key = str(folder)
        if key not in loaded:
            m = MirageWorldModel.from_pretrained(folder, device=device)
            m.transformer.eval()
            m.sampler = FlowUniPCSampler.from_config(m.sampler.config(), **overrides)
            if seam is not None and hasattr(m.codec, "seam_filter"):
                m.codec.seam_filter = seam or None
            loaded[key] = m
        models[arm] = loaded[key]
    return models


def run(args) -> int:
    import torch

    from ..training.seeds import HELD_OUT_BASE
    from ..world_model.backend import SHIPPED_MODEL
    from ..world_model.codec import load_codec

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.figures_only:
        return _figures_from(Path(args.json), Path(args.out))
    arms = [a for a in args.arms.split(",") if a]
    depths = [d for d in args.depths.split(",") if d]
    bad = [a for a in arms if a not in ARMS] + [d for d in depths if d not in DEPTHS]
    if bad:
        raise SystemExit(f"bench imagine: unknown arms/depths {bad}")
    try:
        seeds = parse_seeds(args.seeds, HELD_OUT_BASE)
    except ValueError as exc:
        raise SystemExit(f"bench imagine: {exc}") from None
    model_dir = Path(args.model) if args.model else SHIPPED_MODEL
    rgb_dir = Path(args.rgb_model) if args.rgb_model else model_dir.parent / (model_dir.name + "_rgb")
    if not (model_dir / "model_index.json").is_file():
        raise SystemExit(f"bench imagine: no model at {model_dir} (model_index.json missing)")
    overrides = {"steps": args.steps, "pin_until": args.pin_until, "context_sigma": args.context_sigma,
                 "pin_paste": None if args.pin_paste is None else args.pin_paste == "on"}
    models = _load_arm_models(arms, model_dir, rgb_dir, args.device, overrides, _parse_seam(args.seam_filter))
    arms = [a for a in arms if a == "readout" or a in models]
    index = json.loads((model_dir / "model_index.json").read_text())
    codec = models["latent"].codec if "latent" in models else load_codec(model_dir / index.get("codec", "codec"))
    H, W = (int(x) for x in index.get("resolution") or (codec.stride * 8, codec.stride * 14))
    out = Path(args.out)
    per_seed = {d: {a: [] for a in arms} for d in depths}
    seconds = {d: {a: [] for a in arms} for d in depths}
    frames_of = {d: {a: [] for a in arms} for d in depths}  # for the cross-loop correlation
    gts, unseen = [], []
    for k, seed in enumerate(seeds):
        src, gt, depth, labels, cams = _scene_loop(seed, args.frames, H, W)
        _write_frames(out / "gt" / str(seed), gt)
        ro_frames, vis = _readout_frames(codec, gt[0], cams, depth, labels, sky=args.sky == "on",
                                         sky_fraction=args.sky_fraction, exclude_fraction=args.exclude_fraction,
                                         sky_exclude_fraction=args.sky_exclude_fraction,
                                         aligned=_on_off(args.decode_aligned, _default_rollout().decode_aligned),
                                         aligned_args=_aligned_args(args))
        gts.append(gt)
        unseen.append(~region_pixels(vis, codec.stride))
        for d in depths:
            for arm in arms:
                if arm == "readout":
                    frames, sec = ro_frames, float("nan")
                else:
                    frames, sec = _rollout(models[arm], arm, d, gt[0], cams, depth, labels, args.steps,
                                           earliest_within=args.earliest_within, with_timings=True,
                                           pin_generated=_on_off(args.pin_generated),
                                           paste_generated=_on_off(args.paste_generated),
                                           decode_imagined=_on_off(args.decode_imagined),
                                           decode_aligned=_on_off(args.decode_aligned),
                                           aligned=_aligned_args(args),
                                           noise_seed=args.noise_seed, sky=args.sky == "on",
                                           sky_fraction=args.sky_fraction,
                                           exclude_fraction=args.exclude_fraction,
                                           sky_exclude_fraction=args.sky_exclude_fraction)
                seconds[d][arm].append(sec)
                frames_of[d][arm].append(frames)
                folder = out / (arm if d == "oracle" else f"memory_depth/{arm}") / str(seed)
                _write_frames(folder, frames)
                n = len(frames) - 1
                row = _metrics(gt, frames, vis, codec.stride, folder / f"{n:04d}.png",
                               out / "gt" / str(seed) / f"{n:04d}.png")
                row.update(seed=seed, scene=src["scene"], seconds_per_chunk=sec)
                per_seed[d][arm].append(row)
        print(f"bench imagine: seed {seed} ({src['scene']}) done [{k + 1}/{len(seeds)}]: " + ", ".join(
            f"{a} {per_seed[depths[0]][a][-1]['final_frame_psnr']:.1f}" for a in arms))

    def summary(d):
        res = summarise(per_seed[d], args.bootstrap)
        for arm in arms:
            res[arm]["cross_loop_correlation_never_seen"] = cross_loop_correlation(frames_of[d][arm], unseen)
            sec = [x for x in seconds[d][arm] if np.isfinite(x)]
            res[arm]["seconds_per_chunk"] = float(np.mean(sec)) if sec else None
        return res

    some = next(iter(models.values()), None)
    result = {
        "model": str(model_dir), "rgb_model": str(rgb_dir) if "rgb" in models else None, "tag": args.tag,
        "model_description": some.description if some is not None else None,
        "sampler": some.sampler.config() if some is not None else None,
        "earliest_within": args.earliest_within if args.earliest_within is not None else _default_earliest(),
        "pin_generated": _on_off(args.pin_generated, _default_rollout().pin_generated),
        "paste_generated": _on_off(args.paste_generated, _default_rollout().paste_generated),
        "decode_imagined": _on_off(args.decode_imagined, _default_rollout().decode_imagined),
        "decode_aligned": _on_off(args.decode_aligned, _default_rollout().decode_aligned),
        "aligned_decode": {k: (v if v is not None else getattr(_default_rollout(), k))
                           for k, v in _aligned_args(args).items()},
        "imagination_decoder": getattr(codec, "imagined", None) is not None,
        "seam_filter": getattr(codec, "seam_filter", None),
        "noise_seed": args.noise_seed if args.noise_seed is not None else "derived from each loop's observation",
        "resolution": [H, W], "frames_per_loop": args.frames, "seeds": seeds, "device": args.device,
        "none_arm": "shortcut: the latent arm's model with the readout zeroed (trained with readout dropout), "
                    "not a separately trained model",
        "sky_dome": {"sky_fraction": args.sky_fraction, "generated_frames_write_it": False} if args.sky == "on"
        else None,
        "exclude_fraction": args.exclude_fraction, "sky_exclude_fraction": args.sky_exclude_fraction,
        "revisited_region": "cells of the first frame's memory visible at each generated frame's pose" + (
            " (points and the sky dome)" if args.sky == "on" else " (points)"),
        "blockiness": "gradient energy across 16/32-px borders relative to inside, divided by the ground truth's "
                      "over the same pixels (1.0 = as smooth as reality)",
        "ground_truth": {"cross_loop_correlation_never_seen": cross_loop_correlation(gts, unseen)},
        "arms": summary("oracle") if "oracle" in depths else {},
        "arms_memory_depth": summary("memory") if "memory" in depths else {},
        "per_seed": per_seed,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    path = write_json(args.json, result)
    _plot(path.with_suffix(".png"), result, out, seeds[0], args.frames - 1, arms)
    _frames_figure(path.with_name(path.stem + "_frames.png"), result, out, arms)
    print(f"bench imagine: -> {path}")
    return 0


def _figures_from(path: Path, out: Path) -> int:
    """Redraw both PNGs of a finished run from its JSON and frame folder (``--figures-only``)."""
    if not path.is_file():
        raise SystemExit(f"bench imagine: --figures-only: no results at {path}")
    result = json.loads(path.read_text())
    arms = list(result["arms"] or result["arms_memory_depth"])
    if not (out / "gt").is_dir():
        raise SystemExit(f"bench imagine: --figures-only: no frames under {out} (expected {out / 'gt'})")
    _plot(path.with_suffix(".png"), result, out, result["seeds"][0], result["frames_per_loop"] - 1, arms)
    _frames_figure(path.with_name(path.stem + "_frames.png"), result, out, arms)
    print(f"bench imagine: redrew {path.with_suffix('.png')} and {path.stem}_frames.png")
    return 0


def _frames_figure(png: Path, result: Dict, out: Path, arms, chunk: int = 8) -> None:
    """What each arm draws: for the first loop of each scene kind, the last frame of every chunk
    (columns) for the ground truth and every arm but ``latent_nomask`` (rows); oracle-depth frames."""
    from ..viz import image_grid, label_image, write_png

    rows_of = result["per_seed"].get("oracle") or next(iter(result["per_seed"].values()))
    first = next(iter(rows_of.values()))
    picked, kinds = [], set()
    for r in first:
        if r["scene"] not in kinds:
            kinds.add(r["scene"])
            picked.append(r["seed"])
    last = result["frames_per_loop"] - 1
    cols = list(range(chunk, last + 1, chunk)) or [last]
    rows = []
    for seed in picked:
        for name in ["gt"] + [a for a in arms if a != "latent_nomask" and (out / a / str(seed)).is_dir()]:
            label = "truth" if name == "gt" else name
            rows.append([label_image(_load_png(out / name / str(seed) / f"{i:04d}.png"), f"{seed} {label} {i}")
                         for i in cols])
    write_png(png, image_grid(rows))


def _on_off(flag, default=None):
    """'on' / 'off' / None -> True / False / ``default``."""
    return default if flag is None else flag == "on"


def _aligned_args(args) -> Dict:
    """The aligned decode's settings given on the command line (None = the rollout's default)."""
    return {"aligned_overlap": args.aligned_overlap, "aligned_depth_tol": args.aligned_depth_tol}


def _default_rollout():
    from ..world_model.rollout import RolloutConfig

    return RolloutConfig()


def _default_earliest() -> float:
    return _default_rollout().earliest_within


def _plot(png: Path, result: Dict, out: Path, seed: int, last: int, arms) -> None:
    """Bars with 95 % intervals per metric and arm (oracle depth), and the final frames of one seed."""
    from ..viz import image_grid, label_image, plt

    p = plt()
    arms_res = result["arms"] or result["arms_memory_depth"]
    metrics = ("final_frame_psnr", "revisited_psnr", "never_seen_psnr", "final_frame_ssim", "blockiness16_all",
               "cross_loop_correlation_never_seen")
    fig, axes = p.subplots(1, len(metrics) + 1, figsize=(4 * (len(metrics) + 1), 3.6),
                           gridspec_kw={"width_ratios": [1] * len(metrics) + [2.2]})
    for ax, m in zip(axes, metrics):
        names = [a for a in arms if a in arms_res and arms_res[a].get(m) is not None and np.isfinite(arms_res[a][m])]
        vals = [arms_res[a][m] for a in names]
        ax.bar(names, vals, color=["C0" if a == "latent" else "C7" for a in names])
        if "latent" in arms_res:  # the paired 95 % interval of (arm - latent), drawn around the arm's mean
            for i, a in enumerate(names):
                if a != "latent" and f"{m}_minus_latent_ci95" in arms_res[a]:
                    d, (lo, hi) = arms_res[a][f"{m}_minus_latent"], arms_res[a][f"{m}_minus_latent_ci95"]
                    ax.errorbar(i, vals[i], yerr=[[d - lo], [hi - d]], color="k", capsize=3)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.1f}" if "psnr" in m else f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        title = {"blockiness16_all": "blockiness (x ground truth)", "cross_loop_correlation_never_seen":
                 "never-seen cross-loop r"}.get(m, m.replace("_", " "))
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        if "psnr" in m or "ssim" in m:
            lo_v = min(vals) if vals else 0
            ax.set_ylim(max(0, lo_v - (0.1 if "ssim" in m else 3)), None)
        elif m == "blockiness16_all":
            ax.axhline(1.3, color="C3", lw=0.8, ls="--")  # the target
            ax.set_yscale("log")
        else:
            gt_r = result.get("ground_truth", {}).get(m)
            if gt_r is not None:
                ax.axhline(gt_r, color="C2", lw=0.8, ls="--")
    tiles = [[label_image(_load_png(out / "gt" / str(seed) / f"{last:04d}.png"), "ground truth")]]
    for a in arms:
        f = out / a / str(seed) / f"{last:04d}.png"
        if f.is_file():
            tiles[0].append(label_image(_load_png(f), a))
    grid = image_grid([tiles[0][i:i + 3] for i in range(0, len(tiles[0]), 3)])
    axes[-1].imshow(grid)
    axes[-1].axis("off")
    axes[-1].set_title(f"final frame, seed {seed} (same pose as the first)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    p.close(fig)
