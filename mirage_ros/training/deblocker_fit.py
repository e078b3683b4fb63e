"""``mirage data fit-deblocker``: learn ``RefinedBlockCodec``'s decoder on a dataset's frames.

The encoder stays the dataset's block-PCA codec (so its latents, and models trained on them, are
unchanged); the deblocker learns to map latents to the true frames. Half of the samples get their
latents perturbed as a world model's output is wrong (Gaussian noise per cell and per 2x2-cell
token, each channel in proportion to its spread in the data), so the decoder also turns a generated
frame's tile noise into something smooth instead of a mosaic. Validation on the validation seed
block (never the held-out seeds): PSNR and blockiness (``bench.evaluation``) of the linear and the
refined decode, written as JSON + PNG next to the codec; the best validation step is kept.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict

import numpy as np

__all__ = ["fit_deblocker"]


def _validation_frames(n_seeds: int, resolution, frames_per_seed: int = 6):
    from .seeds import validation_seeds
    from .sim_data import render_clip, sim_clip_source

    out = []
    for seed in validation_seeds(n_seeds):
        src = sim_clip_source(seed, "mixed", 41)
        rgb = render_clip(src, *resolution)[0]
        out.append(rgb[np.linspace(0, len(rgb) - 1, frames_per_seed).astype(int)])
    return np.concatenate(out)


def _perturb(z, std, g, torch):
    """Latents as a world model gets them wrong: per cell and per 2x2 token, scaled per channel."""
    B, C, h, w = z.shape
    s_cell = torch.rand(B, 1, 1, 1, generator=g) * 0.4
    s_tok = torch.rand(B, 1, 1, 1, generator=g) * 0.6
    cell = torch.randn(z.shape, generator=g)
    tok = torch.randn(B, C, -(-h // 2), -(-w // 2), generator=g)
    tok = tok.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :h, :w]
    return z + std.view(1, C, 1, 1) * (s_cell * cell + s_tok * tok)


def fit_deblocker(data: str, out: str, steps: int = 3000, batch: int = 8, lr: float = 1e-3, seed: int = 0,
                  validate_every: int = 250, validation_seeds: int = 8, perturb_prob: float = 0.5,
                  progress: bool = True, **deblocker_config) -> Dict:
    import torch

    from ..bench.evaluation import blockiness
    from ..util import psnr, write_json
    from ..viz import write_png
    from ..world_model.codec import LinearBlockCodec, images_to_tensor, load_codec, tensor_to_images
    from ..world_model.refined_codec import RefinedBlockCodec
    from .dataset import MirageDataset

    ds = MirageDataset(data)
    base = load_codec(Path(data) / "codec")
    if type(base) is not LinearBlockCodec:
        raise ValueError(f"data: the dataset's codec is {base.config()['codec']!r}; a deblocker "
                         f"refines a linear-block codec")
    codec = RefinedBlockCodec.from_linear(base, **deblocker_config)
    net = codec.deblocker.train().requires_grad_(True)
    clips = list(ds.iter_clips())
    n_frames = {c: int(ds.meta(c)["rgb_frames"]) for c in clips}
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def sample(k):
        rgb, lat = [], []
        for _ in range(k):
            c = clips[int(rng.integers(len(clips)))]
            fr = ds.frame(c, int(rng.integers(n_frames[c])))
            rgb.append(fr["rgb"].numpy())
            lat.append(fr["latent"].float())
        return images_to_tensor(np.stack(rgb)), torch.stack(lat)

    probe_x, probe_z = sample(64)
    std = probe_z.permute(1, 0, 2, 3).flatten(1).std(1)
    val_rgb = _validation_frames(validation_seeds, ds.header["resolution"])
    val_x = images_to_tensor(val_rgb)
    val_z = base.encode(val_x)
    lin_val = tensor_to_images(base.decode(val_z))

    def evaluate():
        net.eval()
        with torch.no_grad():
            rec = tensor_to_images(codec.decode(val_z))
        net.train()
        return {"psnr_db": psnr(val_rgb, rec), "blockiness16": blockiness(rec, 16) / blockiness(val_rgb, 16),
                "blockiness32": blockiness(rec, 32) / blockiness(val_rgb, 32)}, rec

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt,
                                              lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    history, best, best_rec = [], None, None
    out = Path(out)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc="fit deblocker", unit="step", disable=not progress)
    for step in bar:
        x, z = sample(batch)
        if torch.rand((), generator=g) < perturb_prob:
            z = _perturb(z, std, g, torch)
        loss = torch.nn.functional.mse_loss(codec.decode_train(z), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss):.5f}")
        if step % validate_every == 0 or step == steps:
            m, rec = evaluate()
            m.update(step=step, loss=float(loss), seconds=time.perf_counter() - t0)
            history.append(m)
            if best is None or m["psnr_db"] > best["psnr_db"]:
                best, best_rec = m, rec
                net.eval()
                codec.save_pretrained(out)
                net.train()
    net.eval().requires_grad_(False)
    result = {
        "codec": codec.config(), "data": str(data), "steps": steps, "batch": batch, "lr": lr,
        "perturb_prob": perturb_prob,
        "validation": "validation seed block, 6 frames per seed", "validation_seeds": validation_seeds,
        "linear": {"psnr_db": psnr(val_rgb, lin_val), "blockiness16": blockiness(lin_val, 16) / blockiness(val_rgb, 16),
                   "blockiness32": blockiness(lin_val, 32) / blockiness(val_rgb, 32)},
        "refined_best": best, "history": history,
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    write_json(out / "fit.json", result)
    write_png(out / "fit.png", np.concatenate([val_rgb[0], lin_val[0], best_rec[0]], axis=1))
    return result
