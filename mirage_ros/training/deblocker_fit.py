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
from typing import Dict, Optional

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


def _rollout_validation(folder, frames_per_seed: int = 10):
    """(rgb, latent, memory or None) of a validation rollout-pairs folder: evenly spaced generated
    frames per scene."""
    import torch

    from .rollout_pairs import iter_rollout_pairs
    from .seeds import VALIDATION_BASE, VALIDATION_COUNT

    rgb, lat, mem = [], [], []
    for seed, r, z, m in iter_rollout_pairs(folder):
        if not VALIDATION_BASE <= seed < VALIDATION_BASE + VALIDATION_COUNT:
            raise ValueError(f"validation_rollouts: seed {seed} is not in the validation block "
                             f"[{VALIDATION_BASE}, {VALIDATION_BASE + VALIDATION_COUNT})")
        k = np.linspace(0, len(r) - 1, frames_per_seed).astype(int)
        rgb.append(r[k])
        lat.append(z[k])
        mem.append(None if m is None else m[k])
    if not rgb:
        raise ValueError(f"validation_rollouts: {folder} holds no scene")
    return np.concatenate(rgb), torch.cat(lat), (None if any(m is None for m in mem) else torch.cat(mem))


def fit_deblocker(data: Optional[str], out: str, steps: int = 3000, batch: int = 8, lr: float = 1e-3, seed: int = 0,
                  validate_every: int = 250, validation_seeds: int = 8, perturb_prob: float = 0.5,
                  progress: bool = True, init: Optional[str] = None, rollouts: Optional[str] = None,
                  rollout_prob: float = 0.5, validation_rollouts: Optional[str] = None, warmup: int = 0,
                  imagined_of: Optional[str] = None, imagined_loss: bool = False,
                  **deblocker_config) -> Dict:
    """Fit (or, from ``init``, fine-tune) the deblocker; write the best step's codec, ``fit.json``, ``fit.png``.

    ``data``: a dataset whose codec is linear-block (its frames and latents); ``rollouts``: a
    ``mirage data rollout-pairs`` folder (a world model's generated latents with the true frames at
    their poses): a ``rollout_prob`` share of batches comes from it, the rest from ``data`` or, without
    one, from those true frames encoded (clean, perturbed with ``perturb_prob``). ``init``: a refined
    codec folder whose encoder must be the data's and whose deblocker is the starting point.
    ``validation_rollouts`` (validation seeds only): the best step is the one whose decode of those
    generated latents is nearest the truth (PSNR); without it, the best clean-frame PSNR.
    ``imagined_of``: a refined codec folder; ``out`` is then that codec with the fitted deblocker as
    its imagination decoder (``RefinedBlockCodec.imagined``), the fit's record ``imagined_fit.json``/
    ``.png`` beside the codec's own ``fit.json``; validation then scores the blend a rollout shows (the
    host's clean decoder in the pairs' memory cells). ``imagined_loss``: rollout batches count only the
    pixels outside their memory cells (what an imagination decoder draws)."""
    import torch

    from ..bench.evaluation import blockiness
    from ..util import psnr, write_json
    from ..viz import write_png
    from ..world_model.codec import LinearBlockCodec, images_to_tensor, load_codec, tensor_to_images
    from ..world_model.refined_codec import RefinedBlockCodec
    from .dataset import MirageDataset
    from .rollout_pairs import iter_rollout_pairs

    if data is None and rollouts is None:
        raise ValueError("data: give a dataset folder, a rollout-pairs folder (rollouts), or both")
    if not 0.0 <= rollout_prob <= 1.0:
        raise ValueError(f"rollout_prob: expected a share in [0, 1], got {rollout_prob}")
    ds = MirageDataset(data) if data is not None else None
    start = load_codec(init) if init is not None else None
    if start is not None and not isinstance(start, RefinedBlockCodec):
        raise ValueError(f"init: {init} holds a {start.config()['codec']!r} codec, not a refined block codec")
    host = load_codec(imagined_of) if imagined_of is not None else None
    base = load_codec(Path(data) / "codec") if ds is not None else (start or host)
    if base is None:
        raise ValueError("init: without a dataset the codec comes from init or imagined_of (a refined codec folder)")
    if not isinstance(base, LinearBlockCodec):
        raise ValueError(f"data: the dataset's codec is {base.config()['codec']!r}; a deblocker "
                         f"refines a linear-block codec")
    if start is not None:
        if not (torch.equal(start.basis, base.basis) and torch.equal(start.mean, base.mean)):
            raise ValueError(f"init: {init}'s encoder is not the dataset's (different block-PCA basis)")
        codec = start
        if deblocker_config and any(start.deblocker.config.get(k) != v for k, v in deblocker_config.items()):
            raise ValueError(f"init: its deblocker is {start.deblocker.config}; drop the size options or init")
    else:
        codec = RefinedBlockCodec.from_linear(base, **deblocker_config)
    if host is not None:
        if not isinstance(host, RefinedBlockCodec):
            raise ValueError(f"imagined_of: {imagined_of} holds a {host.config()['codec']!r} codec, not a refined one")
        host.with_imagined(codec)  # the same encoder, or a clear error before hours of fitting
    net = codec.deblocker.train().requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    pairs = list(iter_rollout_pairs(rollouts)) if rollouts is not None else []
    if rollouts is not None and not pairs:
        raise ValueError(f"rollouts: {rollouts} holds no scene")
    gen = _rollout_validation(validation_rollouts) if validation_rollouts is not None else None
    if ds is not None:
        clips = list(ds.iter_clips())
        n_frames = {c: int(ds.meta(c)["rgb_frames"]) for c in clips}

    def sample_clean(k):
        rgb, lat = [], []
        for _ in range(k):
            if ds is not None:
                c = clips[int(rng.integers(len(clips)))]
                fr = ds.frame(c, int(rng.integers(n_frames[c])))
                rgb.append(fr["rgb"].numpy())
                lat.append(fr["latent"].float())
            else:
                r = pairs[int(rng.integers(len(pairs)))][1]
                rgb.append(r[int(rng.integers(len(r)))])
        x = images_to_tensor(np.stack(rgb))
        return x, (torch.stack(lat) if lat else base.encode(x))

    def sample_rollout(k):
        rgb, lat, mem = [], [], []
        for _ in range(k):
            _, r, z, m = pairs[int(rng.integers(len(pairs)))]
            i = int(rng.integers(len(r)))
            rgb.append(r[i])
            lat.append(z[i])
            mem.append(None if m is None else m[i])
        cells = torch.stack(mem) if all(m is not None for m in mem) else None
        return images_to_tensor(np.stack(rgb)), torch.stack(lat), cells

    _, probe_z = sample_clean(64)
    std = probe_z.permute(1, 0, 2, 3).flatten(1).std(1)
    resolution = ds.header["resolution"] if ds is not None else list(pairs[0][1].shape[1:3])
    val_rgb = _validation_frames(validation_seeds, resolution)
    val_x = images_to_tensor(val_rgb)
    val_z = base.encode(val_x)
    lin_val = tensor_to_images(base.decode(val_z))

    def ratios(rec, ref):
        return {"blockiness16": blockiness(rec, 16) / blockiness(ref, 16),
                "blockiness32": blockiness(rec, 32) / blockiness(ref, 32)}

    blend = host is not None and gen is not None and gen[2] is not None
    if blend:  # validate what a rollout shows: memory cells through the host's clean decoder, the rest through the fit
        with torch.no_grad():
            gen_host = host.decode(gen[1])
            gen_w = host.memory_weight(gen[2], gen_host.shape[-2:])

    def evaluate():
        net.eval()
        with torch.no_grad():
            rec = tensor_to_images(codec.decode(val_z))
            m = {"psnr_db": psnr(val_rgb, rec), **ratios(rec, val_rgb)}
            if gen is not None:
                dec = codec.decode(gen[1])
                grec = tensor_to_images(gen_w * gen_host + (1 - gen_w) * dec if blend else dec)
                m.update({"rollout_psnr_db": psnr(gen[0], grec),
                          **{f"rollout_{k}": v for k, v in ratios(grec, gen[0]).items()}})
        net.train()
        return m, rec

    def score(m):
        return m["rollout_psnr_db"] if gen is not None else m["psnr_db"]

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    def lr_at(s):  # linear warm-up (a fine-tune's first Adam steps would otherwise undo the start), cosine to 0.1
        return min(1.0, (s + 1) / warmup) if s < warmup else \
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    out = Path(out)
    start_metrics, _ = evaluate()
    start_metrics.update(step=0, loss=float("nan"), seconds=0.0)
    history, best, best_rec = [start_metrics], None, None
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc="fit deblocker", unit="step", disable=not progress)
    for step in bar:
        cells = None
        if pairs and torch.rand((), generator=g) < rollout_prob:
            x, z, cells = sample_rollout(batch)
        else:
            x, z = sample_clean(batch)
            if torch.rand((), generator=g) < perturb_prob:
                z = _perturb(z, std, g, torch)
        if imagined_loss and cells is not None:  # only what this decoder will draw: outside the memory cells
            keep = 1 - codec.memory_weight(cells, x.shape[-2:])
            loss = ((codec.decode_train(z) - x) ** 2 * keep).sum() / (3 * keep.sum()).clamp_min(1.0)
        else:
            loss = torch.nn.functional.mse_loss(codec.decode_train(z), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.5f}")
        if step % validate_every == 0 or step == steps:
            m, rec = evaluate()
            m.update(step=step, loss=loss.item(), seconds=time.perf_counter() - t0)
            history.append(m)
            if best is None or score(m) > score(best):
                best, best_rec = m, rec
                net.eval()
                (host.with_imagined(codec) if host is not None else codec).save_pretrained(out)
                net.train().requires_grad_(True)  # composing a codec freezes its deblockers
    net.eval().requires_grad_(False)
    result = {
        "codec": codec.config(), "data": None if data is None else str(data), "steps": steps, "batch": batch,
        "lr": lr, "warmup": warmup, "perturb_prob": perturb_prob, "init": None if init is None else str(init),
        "rollouts": None if rollouts is None else str(rollouts), "rollout_scenes": len(pairs),
        "rollout_prob": rollout_prob if pairs else 0.0, "imagined_of": None if host is None else str(imagined_of),
        "imagined_loss": imagined_loss, "validation_blend": blend,
        "validation": "validation seed block, 6 frames per seed", "validation_seeds": validation_seeds,
        "validation_rollouts": None if validation_rollouts is None else str(validation_rollouts),
        "selection": "rollout_psnr_db" if gen is not None else "psnr_db",
        "linear": {"psnr_db": psnr(val_rgb, lin_val), **ratios(lin_val, val_rgb)},
        "start": start_metrics, "refined_best": best, "history": history,
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    stem = "imagined_fit" if host is not None else "fit"
    if host is not None:
        import shutil

        for f in ("fit.json", "fit.png"):
            if (Path(imagined_of) / f).is_file():
                shutil.copy(Path(imagined_of) / f, out / f)
    write_json(out / f"{stem}.json", result)
    rows = [np.concatenate([val_rgb[0], lin_val[0], best_rec[0]], axis=1)]
    if gen is not None:  # a generated frame: truth | linear decode | refined decode
        i = len(gen[0]) - 1
        with torch.no_grad():
            dec = [tensor_to_images(c.decode(gen[1][i:i + 1]))[0] for c in (base, codec)]
        rows.append(np.concatenate([gen[0][i], *dec], axis=1))
    write_png(out / f"{stem}.png", np.concatenate(rows, axis=0))
    return result
