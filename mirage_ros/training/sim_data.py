"""``mirage data sim``: training clips from the procedural scenes (``mirage_ros.sim``).

Each clip: a seeded scene (room or outdoor, with the moving post), a seeded random trajectory
(closed loop or forward walk: random radius, direction, look angle, tilt, height; a field of view of
60-80 degrees), rendered with exact depth and labels; dynamic and sky pixels are excluded from the
memory (the masks the paper builds with SAM3, here exact). ``clips.build_clip`` turns it into
records. Clips are rendered in worker processes (one torch thread each) and written in order.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from .clips import ClipSpec, build_clip
from .seeds import check_train_seeds

__all__ = ["FRAME_PERIOD", "sim_clip_source", "render_clip", "generate"]

FRAME_PERIOD = 0.1  # seconds between RGB frames (the moving post's clock)
SCENE_KINDS = ("room", "outdoor", "mixed")


def sim_clip_source(seed: int, scene: str = "mixed", frames: int = 41, loop_fraction: float = 0.65,
                    fov_range: Tuple[float, float] = (60.0, 80.0)) -> Dict:
    """The seeded choices of one clip (scene kind, trajectory kind and parameters, field of view)."""
    if scene not in SCENE_KINDS:
        raise ValueError(f"scene: expected one of {SCENE_KINDS}, got {scene!r}")
    rng = np.random.default_rng([int(seed), 7])
    kind = scene if scene != "mixed" else ("room" if rng.random() < 0.5 else "outdoor")
    traj = "loop" if rng.random() < loop_fraction else "forward"
    fov = float(rng.uniform(*fov_range))
    return {"source": "sim", "seed": int(seed), "scene": kind, "trajectory": traj, "fov_x_deg": fov,
            "frames": int(frames), "frame_period": FRAME_PERIOD, "traj_rng": [int(seed), 11]}


def render_clip(src: Dict, height: int, width: int, moving_object: bool = True):
    """Render a clip source: rgb (F, H, W, 3), depth (F, H, W), labels (F, H, W), cameras, params."""
    from .. import sim
    from ..geometry import Camera

    scene = sim.make_scene(src["scene"], seed=src["seed"], moving_object=moving_object)
    poses, params = sim.random_trajectory(scene, np.random.default_rng(src["traj_rng"]), src["frames"],
                                          src["trajectory"])
    base = Camera.from_fov(height, width, src["fov_x_deg"])
    cams = [base.with_pose(E) for E in poses]
    shots = [sim.render(scene, c, t=src["frame_period"] * i) for i, c in enumerate(cams)]
    rgb = np.stack([s.rgb for s in shots])
    depth = np.stack([s.depth for s in shots])
    labels = np.stack([s.labels for s in shots])
    return rgb, depth, labels, cams, params


def _worker_init():
    import torch

    torch.set_num_threads(1)


def _one(job):
    """Worker: one clip's records (frames, windows, meta)."""
    from .. import sim
    from ..world_model.codec import load_codec, make_codec

    src, (H, W), codec_spec, spec_kw, mask_dynamic = job
    codec = load_codec(codec_spec[1]) if codec_spec[1] else make_codec(codec_spec[0])
    rgb, depth, labels, cams, params = render_clip(src, H, W)
    exclude = labels != sim.STATIC if mask_dynamic else labels == sim.SKY
    frames, windows, meta = build_clip(rgb, depth, cams, codec, exclude=exclude, spec=ClipSpec(**spec_kw))
    meta.update(src, trajectory_params=params, masked=("dynamic+sky" if mask_dynamic else "sky"))
    return meta, frames, windows


def generate(out, scenes: int, frames: int, resolution: Tuple[int, int], seed: int = 0, scene: str = "mixed",
             codec_name: str = "thumbnail", codec_folder: Optional[str] = None, spec: ClipSpec = ClipSpec(),
             workers: int = 1, overwrite: bool = False, progress: bool = True, command: str = "") -> Dict:
    """Write ``scenes`` clips of ``frames`` RGB frames to the dataset folder ``out``; returns its header."""
    import multiprocessing as mp
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..world_model.codec import load_codec, make_codec
    from .dataset import DatasetWriter
    from .seeds import seed_record

    H, W = resolution
    if scenes < 1:
        raise ValueError(f"scenes: expected >= 1, got {scenes}")
    seeds = list(range(seed, seed + scenes))
    check_train_seeds(seeds)
    codec = load_codec(codec_folder) if codec_folder else make_codec(codec_name)
    if H % codec.stride or W % codec.stride:
        raise ValueError(f"resolution: {H}x{W} is not divisible by the codec stride {codec.stride}")
    L = (frames - 1) // codec.temporal_stride + 1
    if L < spec.chunk_latents:
        raise ValueError(f"frames: {frames} frames give {L} latents; a window needs {spec.chunk_latents}")
    header = {
        "source": "sim", "command": command, "codec": codec.config(), "resolution": [H, W],
        "latent_grid": [H // codec.stride, W // codec.stride], "channels": codec.channels,
        "temporal_stride": codec.temporal_stride, "chunk_latents": spec.chunk_latents,
        "preceding_latents": spec.preceding_latents, "max_references": spec.max_references,
        "frame_roles": "targets (first clean) | preceding | references", "memory": spec.memory,
        "window_stride": spec.window_stride, "scene": scene, "frames_per_clip": frames,
        "seeds": seed_record(seed, scenes), "frame_period": FRAME_PERIOD,
        "masks": "dynamic and sky pixels excluded from the memory (simulator labels)",
    }
    writer = DatasetWriter(out, header, overwrite=overwrite)
    codec.save_pretrained(Path(out) / "codec")
    spec_kw = dict(spec.__dict__)
    jobs = [(sim_clip_source(s, scene, frames), (H, W), (codec_name, codec_folder), spec_kw, True) for s in seeds]
    bar = tqdm(total=len(jobs), desc="mirage data sim", unit="clip", disable=not progress)
    kinds: Dict[str, int] = {}
    try:
        if workers > 1:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_worker_init) as pool:
                for meta, fr, win in pool.imap(_one, jobs, chunksize=1):
                    writer.add_clip(meta, fr, win)
                    kind = f"{meta['scene']}/{meta['trajectory']}"
                    kinds[kind] = kinds.get(kind, 0) + 1
                    bar.update(1)
        else:
            for job in jobs:
                meta, fr, win = _one(job)
                writer.add_clip(meta, fr, win)
                kind = f"{meta['scene']}/{meta['trajectory']}"
                kinds[kind] = kinds.get(kind, 0) + 1
                bar.update(1)
    finally:
        bar.close()
    return writer.close(clip_kinds=kinds)


def rebuild(src_path, out, memory: str = "rgb", codec_folder: Optional[str] = None, workers: int = 1,
            overwrite: bool = False, progress: bool = True, command: str = "", window_stride: Optional[int] = None,
            clips: Optional[int] = None) -> Dict:
    """A dataset with the same clips (frames, depth, masks, cameras) read through another memory kind
    or codec, without re-rendering: e.g. the RGB point-cloud cache arm of the ablation."""
    import multiprocessing as mp
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..world_model.codec import load_codec
    from .dataset import DatasetWriter, MirageDataset

    src = MirageDataset(src_path)
    if int(src.header.get("temporal_stride", 1)) != 1:
        raise ValueError("rebuild: the source dataset must use an image codec (temporal stride 1)")
    codec_dir = codec_folder or str(Path(src_path) / "codec")
    codec = load_codec(codec_dir)
    header = {k: v for k, v in src.header.items() if k not in ("complete", "counts", "format", "version", "clip_kinds")}
    header.update(memory=memory, codec=codec.config(), channels=codec.channels, command=command,
                  rebuilt_from={"path": str(Path(src_path).resolve()), "memory": src.header.get("memory")})
    spec_kw = {"chunk_latents": src.chunk_latents, "preceding_latents": int(src.header.get("preceding_latents", 2)),
               "max_references": int(src.header.get("max_references", 4)),
               "window_stride": int(window_stride or src.header.get("window_stride", 1)), "memory": memory}
    header["window_stride"] = spec_kw["window_stride"]
    writer = DatasetWriter(out, header, overwrite=overwrite)
    codec.save_pretrained(Path(out) / "codec")
    n_clips = src.num_clips if clips is None else min(int(clips), src.num_clips)
    header["rebuilt_from"]["clips"] = n_clips
    jobs = [(str(src_path), c, codec_dir, spec_kw) for c in range(n_clips)]
    src.close()
    bar = tqdm(total=len(jobs), desc=f"mirage data rebuild ({memory})", unit="clip", disable=not progress)
    try:
        if workers > 1:
            with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
                for meta, fr, win in pool.imap(_rebuild_one, jobs, chunksize=1):
                    writer.add_clip(meta, fr, win)
                    bar.update(1)
        else:
            for job in jobs:
                writer.add_clip(*_rebuild_one(job))
                bar.update(1)
    finally:
        bar.close()
    return writer.close()


_SRC_CACHE: Dict = {}


def _rebuild_one(job):
    import torch

    from ..geometry import Camera
    from ..world_model.codec import load_codec
    from .dataset import MirageDataset

    path, c, codec_dir, spec_kw = job
    if path not in _SRC_CACHE:
        _SRC_CACHE.clear()
        _SRC_CACHE[path] = (MirageDataset(path), load_codec(codec_dir))
    ds, codec = _SRC_CACHE[path]
    meta = ds.meta(c)
    recs = [ds.frame(c, j) for j in range(meta["num_latents"])]
    H, W = meta["image_size"]
    rgb = np.stack([r["rgb"].numpy() for r in recs])
    depth = np.stack([r["depth"].float().numpy() for r in recs])
    exclude = np.stack([r["exclude"].bool().numpy() for r in recs])
    cams = [Camera(torch.tensor(K, dtype=torch.float64), torch.tensor(E, dtype=torch.float64), H, W)
            for K, E in zip(meta["K"], meta["world_to_camera"])]
    frames, windows, new_meta = build_clip(rgb, depth, cams, codec, exclude=exclude, spec=ClipSpec(**spec_kw))
    keep = {k: v for k, v in meta.items() if k not in new_meta and k != "num_latents"}
    new_meta.update(keep)
    return new_meta, frames, windows
