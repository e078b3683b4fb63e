"""`mirage demo`: imagine a closed loop on the built-in synthetic scene, no downloads, no GPU.

Default (``--backend shipped``): the small Mirage world model trained by this project and shipped
in the package. Only the first frame is observed (its simulator depth and labels initialise the
latent memory, Eq. 4); the model then imagines the whole loop chunk by chunk (Algorithm 1), each
chunk conditioned on the memory readout at its poses (Eq. 5) and written back into the memory
(depth and dynamic/sky masks of the generated frames from the simulator: oracle perception).
Per frame the demo shows ground truth | memory readout | imagined | visibility.

``--backend readout`` is the memory alone (no generative model): every view is the memory's
readout decoded by the analytic thumbnail codec, and the memory is updated from the observed
frames of each chunk.

``--backend spatia`` runs Spatia's released world model (``--weights`` Wan2.2-TI2V-5B, ``--side-branch``
Spatia's files; random toy weights without them) the same way, conditioned on renders of an RGB
point-cloud memory; the "memory readout" panel shows those renders.

Both write strips (PNG), a side-by-side H.264 MP4 (PNG frames where no H.264 encoder is
installed), visibility masks, the memory as a coloured PLY, strict-JSON stats, a memory-growth plot
and an MCAP rosbag2 of the run.

One clock, one numbering: frame i of the loop (0 = the first observation, 1..N = the imagined
views) is stamped ``start + i / fps`` and is frame i in the MP4 labels, in stats.json and in the
bag's ``ImaginedChunk.frame_indices``. ``--start-time`` defaults to a fixed, realistic epoch
(2025-01-01T00:00:00Z) so that two runs write identical bags; ``--start-time now`` uses the wall
clock. The bag has, per imagined frame, /tf (world -> imagined optical frame, and the observed
camera), imagined/camera_info and imagined/image, one imagined/chunk per chunk, and the memory
cloud and stats after the first observation and after every chunk. The output writing takes the
``ImaginedChunk``s of any backend.
"""
from __future__ import annotations

import argparse
import copy
import time
from datetime import datetime, timezone
from pathlib import Path

from .util import parse_resolution, psnr, write_json

DEFAULT_START = "2025-01-01T00:00:00Z"
WORLD_FRAME = "map"
IMAGINED_FRAME = "mirage_imagined_optical_frame"
OBSERVED_FRAME = "camera_optical_frame"
GROUND_TRUTH_NS = "/ground_truth"


def parse_start_time(text: str) -> int:
    """``now``, an ISO 8601 time (UTC unless it says otherwise) or epoch seconds -> epoch ns."""
    if text.strip().lower() == "now":
        return time.time_ns()
    try:
        ns = int(round(float(text) * 1e9))
    except ValueError:
        try:
            t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"start-time: expected 'now', an ISO 8601 time like {DEFAULT_START} or epoch seconds, got "
                f"{text!r}") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        ns = int(round(t.timestamp() * 1e6)) * 1000
    if not 0 <= ns < 2**31 * 10**9:  # builtin_interfaces/Time.sec is int32
        raise argparse.ArgumentTypeError(f"start-time: {text!r} is outside 1970-01-01 .. 2038-01-19")
    return ns


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fps: expected a number, got {text!r}") from None
    if not 0 < v <= 1000:
        raise argparse.ArgumentTypeError(f"fps: expected 0 < fps <= 1000, got {text!r}")
    return v


def _rounds(text: str):
    try:
        v = tuple(int(x) for x in text.split(","))
    except ValueError:
        v = ()
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"rounds: expected FIRST,LATER,HISTORY frame counts (e.g. 121,81,9), got "
                                         f"{text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="mirage_out/demo", help="output folder (default mirage_out/demo)")
    p.add_argument("--backend", choices=["shipped", "readout", "spatia"], default="shipped",
                   help="shipped: the small trained world model imagines the loop from the first frame (default); "
                        "readout: the memory alone, updated from observed frames, no generative model; "
                        "spatia: Spatia's released world model (--weights Wan2.2-TI2V-5B, --side-branch Spatia's "
                        "files) "
                        "conditioned on the RGB point-cloud memory")
    p.add_argument("--sky", choices=["on", "off"], default="on",
                   help="shipped / readout: keep the sky in a sky dome (the simulator's +inf depth is sky); on by "
                        "default (held-out loops: docs/results/bench_imagine.json)")
    p.add_argument("--weights", default=None, help="a model folder for --backend shipped (default: the shipped model); "
                   "for --backend spatia the Wan2.2-TI2V-5B folder (default: random toy weights)")
    p.add_argument("--side-branch", default=None, help="--backend spatia: Spatia's VACE file, or the folder with it "
                                                       "and its LoRA")
    p.add_argument("--lora", default=None, help="--backend spatia: Spatia's LoRA file (default: the one in "
                                                "--side-branch's folder)")
    p.add_argument("--negative-prompt-file", default=None,
                   help="--backend spatia: the negative prompt, a text file or Spatia's inference.py (its "
                        "NEGATIVE_PROMPT)")
    p.add_argument("--prompt", default=None, help="--backend spatia: text prompt (needs the UMT5 text encoder)")
    p.add_argument("--device", default=None, help="--backend spatia: torch device (default cuda when available, else "
                                                  "cpu)")
    p.add_argument("--rounds", type=_rounds, default=None, metavar="FIRST,LATER,HISTORY",
                   help="--backend spatia: frames of the first round, of later rounds and of history (default Spatia's "
                        "121,81,9)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's own)")
    p.add_argument("--scene", choices=["room", "outdoor"], default="room")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=parse_resolution, default=None,
                   help="image size HxW, both divisible by 16 (default: the model's own 128x224; 256x448 for readout)")
    p.add_argument("--chunks", type=int, default=None, help="chunks along the loop (default 5 shipped, 6 readout)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="views per chunk (default 8 shipped: a 9-latent chunk minus its overlap; 9 readout)")
    p.add_argument("--no-moving-object", action="store_true", help="leave the dynamic object out of the scene")
    p.add_argument("--no-update", action="store_true", help="keep only the first frame in memory")
    p.add_argument("--no-bag", action="store_true", help="do not write the run as an MCAP rosbag2")
    p.add_argument("--fps", type=_positive_float, default=6.0,
                   help="frames per second of the video and of the bag's clock (default 6)")
    p.add_argument("--start-time", type=parse_start_time, default=DEFAULT_START, metavar="TIME",
                   help=f"stamp of frame 0: 'now', ISO 8601 or epoch seconds (default {DEFAULT_START}, "
                        "so runs are reproducible)")


class BagRecorder:
    """Writes a demo run as an MCAP rosbag2, from the ``ImaginedChunk``s of any backend.

    ``cameras`` is the whole trajectory and ``stamps_ns`` its clock; chunks are passed with their
    frame indices already global (into ``cameras``). Fails soft: the bag is a bonus of the demo.
    """

    def __init__(self, path: Path, cameras, stamps_ns, backend):
        import numpy as np

        from .ros.bag import BagWriter  # needs rosbags only

        self.writer = BagWriter(path, overwrite=True)  # replaces only a bag this tool wrote
        self.path = self.writer.path
        self.T = np.stack([c.camera_to_world.numpy() for c in cameras]).astype(np.float64)
        self.stamps = [int(t) for t in stamps_ns]
        self.K = cameras[0].K.numpy()
        self.H, self.W = cameras[0].height, cameras[0].width
        self.backend = backend
        self.writer.add_path(self.T, self.stamps, WORLD_FRAME)

    def observed(self, i: int) -> None:
        """The observed camera of frame i on /tf at its stamp (frames without an imagined one)."""
        self.writer.add_transform(self.T[i], self.stamps[i], WORLD_FRAME, OBSERVED_FRAME)

    def ground_truth(self, i: int, frame) -> None:
        """What the camera sees at frame i (the simulator's truth), as a robot would record it, under
        ``/ground_truth``: image, camera_info, pose, depth (32FC1) and labels (mono8). ``mirage replay``
        and ``mirage data bag --namespace /ground_truth`` read these."""
        w, t, ns = self.writer, self.stamps[i], GROUND_TRUTH_NS
        w.add_image(f"{ns}/image", frame.rgb, t, OBSERVED_FRAME)
        w.add_camera_info(f"{ns}/camera_info", self.K, self.H, self.W, t, OBSERVED_FRAME)
        w.add_pose(f"{ns}/pose", self.T[i], t, WORLD_FRAME)
        w.add_depth(f"{ns}/depth", frame.depth, t, OBSERVED_FRAME)
        w.add_image(f"{ns}/labels", frame.labels, t, OBSERVED_FRAME, "mono8")

    def chunk(self, chunk) -> None:
        b = self.backend
        self.writer.add_imagined_chunk(chunk, self.T, self.stamps, self.K, self.H, self.W, WORLD_FRAME, IMAGINED_FRAME,
                                       len(self.stamps), b.name, bool(b.generative),
                                       extra_transforms={OBSERVED_FRAME: self.T})

    def memory(self, stamp_ns: int, frames_observed: int, frames_imagined: int) -> None:
        b, mem = self.backend, self.backend.memory
        self.writer.add_memory(mem.points.cpu().numpy(), b.point_colors(), stamp_ns, WORLD_FRAME)
        self.writer.add_stats({"backend": b.name, "generative": bool(b.generative), "description": b.description,
                               "num_points": mem.num_points, "nbytes": mem.nbytes, "channels": mem.channels,
                               "stride": mem.stride, "frames_observed": frames_observed,
                               "frames_imagined": frames_imagined}, stamp_ns, WORLD_FRAME)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def renumber(chunk, index: int, frame_indices):
    """A shallow copy of a backend chunk with its chunk index and frame indices made global."""
    g = copy.copy(chunk)
    g.index = int(index)
    g.frame_indices = [int(i) for i in frame_indices]
    return g


def _make_backend(args, scene, poses, chunk_size: int):
    """The demo's backend: the memory alone (``readout``, analytic thumbnail codec), or a world
    model whose generated frames get the simulator's depth and labels (``shipped``, ``spatia``)."""
    from . import sim
    from .world_model.backend import make_backend

    if args.backend == "readout":
        from .memory import LatentSpatialMemory
        from .world_model.backend import ReadoutBackend
        from .world_model.codec import ThumbnailCodec

        return ReadoutBackend(LatentSpatialMemory(sky=args.sky == "on"), ThumbnailCodec(), chunk_size=chunk_size)
    oracle = sim.SceneOracle(scene, poses, frame_period=1.0 / args.fps)
    perception = {"keep_imagined": True, "depth": oracle.depth_provider(), "masks": oracle.mask_provider()}
    if args.backend == "spatia":
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return make_backend("spatia", weights=args.weights, side_branch=args.side_branch, lora=args.lora,
                            device=device, steps=args.steps, resolution=args.resolution, rounds=args.rounds,
                            prompt=args.prompt, negative_prompt_file=args.negative_prompt_file, **perception)
    return make_backend("shipped", weights=args.weights, steps=args.steps, memory={"sky": args.sky == "on"},
                        **perception)


def _requests(backend, cameras, chunks: int, size: int):
    """(row, chunks of the backend renumbered to the loop's frame indices): one row per demo chunk
    for a memory that is updated from observations between chunks (each chunk one request), one row
    per backend chunk for a world model that imagines the whole loop in one request."""
    if not backend.generative:
        n = 0
        for c in range(chunks):
            idx = list(range(1 + c * size, 1 + (c + 1) * size))
            got = []
            for chunk in backend.imagine([cameras[i] for i in idx]):  # any backend, any chunking
                got.append(renumber(chunk, n, [idx[j] for j in chunk.frame_indices]))
                n += 1
            yield c, got
        return
    for n, chunk in enumerate(backend.imagine(cameras[1:])):
        yield n, [renumber(chunk, n, [1 + i for i in chunk.frame_indices])]


def run(args) -> int:
    """The loop (see module docstring): observe frame 0, then per chunk imagine, compare with the
    ground truth, record, and (memory alone) observe the chunk's frames."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from . import sim, viz
    from .world_model.codec import images_to_tensor, tensor_to_images

    generative = args.backend != "readout"
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = sim.make_scene(args.scene, seed=args.seed, moving_object=not args.no_moving_object)
    chunks, size = args.chunks or (5 if generative else 6), args.chunk_size or (8 if generative else 9)
    n_frames = chunks * size + 1
    poses = sim.scene_trajectory(scene, "loop", n_frames)
    try:
        backend = _make_backend(args, scene, poses, size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mirage demo: {exc}")
        return 2
    H, W = args.resolution or (getattr(backend, "resolution", None) or (128, 224) if generative else (256, 448))
    base = sim.default_camera(H, W)
    cameras = [base.with_pose(E) for E in poses]
    period_ns = int(round(1e9 / args.fps))
    stamps = [args.start_time + i * period_ns for i in range(n_frames)]
    codec = backend.codec
    print(f"mirage demo: {backend.description}")
    if generative:
        print(f"the model imagines {n_frames - 1} views of a closed loop from the first frame only "
              f"(scene={args.scene} seed={args.seed}, {H}x{W}); depth and masks of generated frames from the "
              f"simulator -> {out}")
    else:
        print(f"scene={args.scene} seed={args.seed} {H}x{W}, {chunks} chunks x {size} views on a closed "
              f"loop -> {out}")
    clock_t = (lambda i: i / args.fps) if generative else (lambda i: i / size)  # the moving object's time

    def truth(i):
        f = sim.render(scene, cameras[i], t=clock_t(i))
        return f, f.labels != sim.STATIC

    f0, ex0 = truth(0)
    backend.observe(f0.rgb, f0.depth, cameras[0], exclude=ex0)
    start_iso = datetime.fromtimestamp(args.start_time / 1e9, timezone.utc).isoformat().replace("+00:00", "Z")
    clock = {"start_ns": args.start_time, "start": start_iso, "fps": args.fps, "frame_period_ns": period_ns,
             "frames": "frame i is stamped start_ns + i * frame_period_ns; frame 0 is the "
                       + ("only observation" if generative else "first observation")}
    if generative:
        stats = {"description": backend.description, "backend": args.backend,
                 "model": str(backend.model.description), "scene": args.scene, "seed": args.seed,
                 "resolution": [H, W],
                 "model_resolution": list(backend.resolution) if backend.resolution else None,
                 "sampler": {"steps": backend.model.sampler.steps, "shift": backend.model.sampler.shift},
                 "perception_of_generated_frames": "simulator depth and labels (oracle)", "clock": clock,
                 "chunks": []}
    else:
        stats = {"description": backend.description, "scene": args.scene, "seed": args.seed, "resolution": [H, W],
                 "latent_hw": list(base.latent_size(16)), "clock": clock, "chunks": []}
    growth = [(0, backend.memory.num_points, backend.memory.nbytes)]
    strip_rows, video, mask_tiles = [], [], []
    observed, imagined = 1, 0
    rec = _start_bag(out, cameras, stamps, backend, not args.no_bag)
    if rec is not None:
        rec.ground_truth(0, f0)
    bar = tqdm(total=n_frames - 1, desc="demo (imagining)" if generative else "demo", unit="view")
    try:
        for row, got in _requests(backend, cameras, chunks, size):
            idx = [i for g in got for i in g.frame_indices]
            frames, masks, readouts, timings = {}, {}, {}, {}
            for g in got:
                if rec is not None:
                    rec.chunk(g)
                for k, v in g.timings.items():
                    timings[k] = timings.get(k, 0.0) + float(v)
                if g.renders is not None:  # a pixel-space memory (spatia): the render the model was conditioned on
                    ro = g.renders
                elif generative:
                    seen = torch.as_tensor(np.asarray(g.masks))
                    seen = seen.repeat_interleave(codec.stride, 1).repeat_interleave(codec.stride, 2)
                    ro = tensor_to_images(codec.decode(g.readouts.float()) * seen[:, None])
                else:  # the memory alone: its frame is the readout
                    ro = g.frames
                for j, i in enumerate(g.frame_indices):
                    frames[i], masks[i], readouts[i] = g.frames[j], np.asarray(g.masks[j]), _fit(ro[j], H, W)
            imagined += len(idx)
            gt = {i: truth(i) for i in idx}
            if rec is not None:
                for i in idx:
                    rec.ground_truth(i, gt[i][0])
            if generative:
                r = {"chunk": row, "frames": idx, **{f"{k}_s": v for k, v in timings.items()},
                     "coverage": [], "psnr_imagined": [], "psnr_imagined_visible": [], "psnr_readout_visible": []}
            else:
                per_view = {f"{k}_ms_per_view": 1e3 * v / len(idx) for k, v in timings.items()}
                r = {"chunk": row, "frames": idx, **per_view, "coverage": [], "psnr_visible": [],
                     "psnr_codec_bound": []}
            for k, i in enumerate(idx):
                f, ex = gt[i]
                m = masks[i]
                pix = _fit(np.repeat(np.repeat(m.astype(np.uint8), codec.stride, 0), codec.stride, 1), H, W) > 0
                r["coverage"].append(float(m.mean()))
                vis = viz.mask_to_rgb(m, (H, W))
                if generative:
                    r["psnr_imagined"].append(psnr(frames[i], f.rgb))
                    r["psnr_imagined_visible"].append(psnr(frames[i], f.rgb, pix & ~ex))
                    r["psnr_readout_visible"].append(psnr(readouts[i], f.rgb, pix & ~ex))
                    video.append(np.concatenate([viz.label_image(f.rgb, f"ground truth {i}"),
                                                 viz.label_image(readouts[i], f"memory readout {i}"),
                                                 viz.label_image(frames[i], f"imagined {i}"),
                                                 viz.label_image(vis, f"visibility m_t {i}")], 1))
                    if k == len(idx) - 1:
                        strip_rows.append([viz.label_image(f.rgb, f"truth {i}"),
                                           viz.label_image(readouts[i], f"readout {i}"),
                                           viz.label_image(frames[i], f"imagined {i}")])
                        mask_tiles.append(vis)
                else:
                    best = tensor_to_images(codec.decode(codec.encode(images_to_tensor(f.rgb))))[0]
                    r["psnr_visible"].append(psnr(frames[i], f.rgb, pix & ~ex))  # NaN -> null in stats.json
                    r["psnr_codec_bound"].append(psnr(best, f.rgb, pix & ~ex))
                    video.append(np.concatenate([viz.label_image(f.rgb, f"observed {i}"),
                                                 viz.label_image(frames[i], f"memory readout {i}"),
                                                 viz.label_image(vis, f"mask m_t {i}")], 1))
                    if k == 0:
                        strip_rows.append([viz.label_image(f.rgb, f"frame {i}"),
                                           viz.label_image(frames[i], f"readout {i}")])
                        mask_tiles.append(vis)
                bar.update(1)
            if not generative:
                added = 0
                if not args.no_update:
                    for i in idx:
                        f, ex = gt[i]
                        added += backend.observe(f.rgb, f.depth, cameras[i], exclude=ex)
                        observed += 1
                r["points_added"] = added
            if rec is not None:  # the memory after this chunk, at its last frame's stamp
                rec.memory(stamps[idx[-1]], observed, imagined if not generative else idx[-1])
            r["memory_points"] = backend.memory.num_points
            r["memory_mib"] = backend.memory.nbytes / 2**20
            stats["chunks"].append(r)
            growth.append((row + 1, backend.memory.num_points, backend.memory.nbytes))
            bar.set_postfix(points=backend.memory.num_points, cov=f"{np.mean(r['coverage']):.2f}")
    except BaseException:
        if rec is not None:
            rec.abort()  # no partial bag
        raise
    bar.close()
    if rec is not None:
        rec.close()
    if generative:
        stats["final_frame_psnr"] = stats["chunks"][-1]["psnr_imagined"][-1]
    _write_outputs(out, backend, stats, strip_rows, mask_tiles, video, growth, rec, t_start, args.fps)
    if generative:
        print(f"{n_frames - 1} views imagined in {stats['seconds']:.1f} s; final frame (the first frame's pose) PSNR "
              f"{stats['final_frame_psnr']:.1f} dB; memory {backend.memory.num_points} points.")
    else:
        print(f"memory: {backend.memory.num_points} points, {backend.memory.nbytes / 2**20:.2f} MiB; mean coverage "
              f"{stats['mean_coverage']:.2f}; {stats['seconds']:.1f} s. NO generative model was loaded: frames are "
              f"memory readouts.")
    print(f"wrote {', '.join(stats['files'])} to {out}")
    return 0


def _write_outputs(out: Path, backend, stats, strip_rows, mask_tiles, video, growth, rec, t_start, fps) -> None:
    """PLY, strips, masks, MP4, growth plot and stats.json (the same for every backend)."""
    import numpy as np

    from . import viz

    mem = backend.memory
    colors = backend.point_colors()
    viz.write_ply(out / "memory.ply", mem.points.cpu().numpy(), colors)
    viz.write_png(out / "readouts.png", viz.image_grid([list(x) for x in zip(*strip_rows)]))
    viz.write_png(out / "masks.png", viz.image_grid([mask_tiles]))
    video_path, n_video, note = viz.write_video(out / "readouts.mp4", video, fps=fps)
    if note:
        print(f"(no H.264 video: {note})")
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
        "video": {"path": video_path.name, "frames": n_video, "fps": fps,
                  "format": "H.264 yuv420p MP4 (faststart)" if not note else "PNG frames", "note": note},
        "video_frames": n_video,
        "bag": ({"path": rec.path.name, "mib": sum(f.stat().st_size for f in rec.path.iterdir()) / 2**20}
                if rec is not None else None),
        "seconds": time.perf_counter() - t_start,
        "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) + ["stats.json"],
    })
    stats["files"] = sorted(set(stats["files"]))
    write_json(out / "stats.json", stats)  # strict JSON: undefined PSNR (no visible pixel) is null


def _start_bag(out: Path, cameras, stamps, backend, enabled: bool):
    if not enabled:
        return None
    rec = None
    try:
        rec = BagRecorder(out / "demo_bag", cameras, stamps, backend)
        rec.observed(0)
        rec.memory(stamps[0], 1, 0)
    except Exception as exc:  # noqa: BLE001 - the bag is a bonus, never a failure of the demo
        print(f"(no MCAP bag: {exc})")
        if rec is not None:
            rec.abort()
        rec = None
    return rec


def _fit(img, H: int, W: int):
    """``img`` at H x W (the model's frames are resized to the demo's size)."""
    import cv2
    import numpy as np

    if img.shape[:2] == (H, W):
        return img
    return np.asarray(cv2.resize(img, (W, H), interpolation=cv2.INTER_NEAREST if img.ndim == 2 else cv2.INTER_LINEAR))
