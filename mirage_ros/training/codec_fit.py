"""``mirage data fit-codec``: fit the block-PCA codec on simulator frames and measure it.

Frames come from training seeds (``sim_data.sim_clip_source``: the same scene / trajectory mix as
the dataset); the comparison uses frames of held-out seeds, so the codec is judged on scenes it
never saw. Writes the codec folder, a JSON (PSNR of decode(encode(x)) per codec, fit time) and a
PNG (one held-out frame: original | thumbnail | linear-block).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["render_frames", "fit_codec"]


def render_frames(seeds, per_clip: int, resolution, frames: int = 41) -> np.ndarray:
    """(N, H, W, 3) uint8: ``per_clip`` evenly spaced frames of each seed's clip."""
    import torch

    from .sim_data import render_clip, sim_clip_source

    torch.set_num_threads(1)
    H, W = resolution
    out = []
    for s in seeds:
        src = sim_clip_source(s, "mixed", frames)
        idx = np.linspace(0, frames - 1, per_clip).round().astype(int)
        rgb, *_ = render_clip(src, H, W)
        out.extend(rgb[idx])
    return np.stack(out)


def _psnr(a, b) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(1.0 / mse))


def fit_codec(args) -> dict:

    from ..util import write_json
    from ..viz import write_png
    from ..world_model.codec import LinearBlockCodec, ThumbnailCodec, images_to_tensor, tensor_to_images
    from .seeds import check_train_seeds, held_out_seeds

    seeds = list(range(args.seed, args.seed + args.scenes))
    check_train_seeds(seeds)
    t0 = time.perf_counter()
    train = images_to_tensor(render_frames(seeds, args.frames_per_scene, args.resolution))
    test = images_to_tensor(render_frames(held_out_seeds(12), 4, args.resolution))
    t1 = time.perf_counter()
    codec = LinearBlockCodec.fit(train, channels=args.channels)
    t2 = time.perf_counter()
    codec.save_pretrained(args.out)
    thumb = ThumbnailCodec()
    rec = {"linear-block": codec.decode(codec.encode(test)), "thumbnail": thumb.decode(thumb.encode(test))}
    result = {
        "codec": codec.config(), "train_frames": int(train.shape[0]), "test_frames": int(test.shape[0]),
        "train_seeds": [seeds[0], seeds[-1]], "test_seeds": "first 12 held-out seeds, 4 frames each",
        "resolution": list(args.resolution), "render_s": t1 - t0, "fit_s": t2 - t1,
        "psnr_db": {k: _psnr(v, test) for k, v in rec.items()},
        "counts": {"train_frames": int(train.shape[0])},
    }
    path = Path(args.json) if args.json else Path(args.out) / "fit.json"
    write_json(path, result)
    strip = np.concatenate([tensor_to_images(test[:1])[0], tensor_to_images(rec["thumbnail"][:1])[0],
                            tensor_to_images(rec["linear-block"][:1])[0]], axis=1)
    write_png(path.with_suffix(".png"), strip)
    return result
