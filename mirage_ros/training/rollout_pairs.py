"""``mirage data rollout-pairs``: what a world model really feeds its decoder, beside the truth.

A decoder trained only on clean (or synthetically perturbed) latents has never seen the latents a
rollout produces: tile-coherent errors of the transformer's 32-px tokens, drift over chunks, pinned
memory cells beside redrawn ones. This module runs the model's own rollout (default sampler and
memory settings, simulator depth and masks for generated frames, as ``mirage bench imagine`` does)
on simulator scenes and stores each generated latent with the ground-truth frame at its pose, so a
decoder can be trained the way it is used (``fit_deblocker(rollouts=...)``).

One safetensors file per scene: ``latent`` (N-1, C, h, w) float16, the rollout's latents of frames
1..N-1 (frame 0 is the observation), ``rgb`` (N-1, H, W, 3) uint8, the true frames there, and
``memory`` (N-1, h, w) uint8, the cells the rollout decoded as memory (observed) rather than imagined;
``pairs.json`` records the model, its weights' digest, the settings and the seeds.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Iterator, Sequence, Tuple

import numpy as np

__all__ = ["collect_rollout_pairs", "iter_rollout_pairs", "load_rollout_pairs"]

PAIRS_META = "pairs.json"


def _weights_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.rglob("*.safetensors")):
        h.update(f.relative_to(model_dir).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def collect_rollout_pairs(model_dir, out, seeds: Sequence[int], frames: int = 41, trajectory: str = "source",
                          device: str = "cpu",
                          progress: bool = True) -> Dict:
    """Roll the model out on each seed's scene and write ``<seed>.safetensors`` + ``pairs.json`` in ``out``.

    ``trajectory``: ``"source"`` keeps the scene generator's own camera path (loops and straight
    walks, as in training clips), ``"loop"`` forces closed loops (as the benchmark)."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from ..bench.imagine import oracle_providers
    from ..memory import LatentSpatialMemory
    from ..sim import STATIC
    from ..world_model.model import MirageWorldModel
    from ..world_model.rollout import RolloutConfig, rollout
    from .sim_data import render_clip, sim_clip_source

    if trajectory not in ("source", "loop"):
        raise ValueError(f"trajectory: expected 'source' or 'loop', got {trajectory!r}")
    model_dir, out = Path(model_dir), Path(out)
    model = MirageWorldModel.from_pretrained(model_dir, device=device)
    model.transformer.eval()
    index = json.loads((model_dir / "model_index.json").read_text())
    H, W = (int(x) for x in index.get("resolution") or (model.stride * 8, model.stride * 14))
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(model_dir), "weights_sha256_16": _weights_digest(model_dir), "frames": frames,
            "resolution": [H, W], "trajectory": trajectory, "depth": "simulator (oracle)",
            "memory": "LatentSpatialMemory defaults + sky dome",
            "settings": "RolloutConfig() defaults, the model folder's sampler",
            "seeds": [int(s) for s in seeds]}
    for seed in tqdm(list(seeds), desc="rollout pairs", unit="scene", disable=not progress):
        src = sim_clip_source(int(seed), "mixed", frames)
        if trajectory == "loop":
            src["trajectory"] = "loop"
        gt, depth, labels, cams, _ = render_clip(src, H, W)
        depth_fn, mask_fn = oracle_providers(cams, depth, labels, exclude_dynamic=True)
        memory = LatentSpatialMemory(channels=model.channels, stride=model.stride, sky=True)  # as the bench
        res = rollout(model, gt[0], cams, memory, first_depth=torch.from_numpy(depth[0]),
                      first_exclude=torch.from_numpy(labels[0] != STATIC), depth_provider=depth_fn,
                      mask_provider=mask_fn, config=RolloutConfig(progress=False))
        if res.latents.shape[0] != len(gt):
            raise ValueError(f"model: rollout pairs need one latent per frame (temporal stride 1), got "
                             f"{res.latents.shape[0]} latents for {len(gt)} frames")
        save_file({"latent": res.latents[1:].to(torch.float16).contiguous(),
                   "rgb": torch.from_numpy(np.ascontiguousarray(gt[1:])),
                   "memory": res.memory_cells[1:].to(torch.uint8).contiguous()},
                  str(out / f"{int(seed)}.safetensors"))
    (out / PAIRS_META).write_text(json.dumps(meta, indent=1))
    return meta


def load_rollout_pairs(path) -> Tuple[np.ndarray, "object", "object"]:
    """(rgb (n, H, W, 3) uint8, latent (n, C, h, w) float32, memory (n, h, w) bool or None) of one
    scene file; ``memory``: the cells the rollout decoded as memory (observed), not imagination."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    keys = set(t)
    ok = keys in ({"latent", "rgb"}, {"latent", "rgb", "memory"}) and t["latent"].ndim == 4 and \
        t["rgb"].ndim == 4 and t["latent"].shape[0] == t["rgb"].shape[0]
    if ok and "memory" in t:
        ok = tuple(t["memory"].shape) == (t["latent"].shape[0], *t["latent"].shape[2:])
    if not ok:
        raise ValueError(f"rollouts: {path} is not a rollout-pairs file (latent (n, C, h, w) + rgb (n, H, W, 3) "
                         f"[+ memory (n, h, w)])")
    return t["rgb"].numpy(), t["latent"].float(), (t["memory"].bool() if "memory" in t else None)


def iter_rollout_pairs(folder) -> Iterator[Tuple[int, np.ndarray, "object", "object"]]:
    """(seed, rgb, latent, memory) per scene file of a ``collect_rollout_pairs`` folder, in seed order."""
    folder = Path(folder)
    if not (folder / PAIRS_META).is_file():
        raise ValueError(f"rollouts: {folder} has no {PAIRS_META} (not a rollout-pairs folder)")
    for f in sorted(folder.glob("*.safetensors"), key=lambda p: int(p.stem)):
        yield (int(f.stem), *load_rollout_pairs(f))
