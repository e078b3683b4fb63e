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


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from . import sim, viz
    from .memory import LatentSpatialMemory
    from .world_model.backend import ReadoutBackend
    from .world_model.codec import ThumbnailCodec, images_to_tensor, tensor_to_images

    if args.backend in ("shipped", "spatia"):
        return run_generative(args)
    args.resolution = args.resolution or (256, 448)
    args.chunks = args.chunks or 6
    args.chunk_size = args.chunk_size or 9
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    H, W = args.resolution
    scene = sim.make_scene(args.scene, seed=args.seed, moving_object=not args.no_moving_object)
    n_frames = args.chunks * args.chunk_size + 1
    poses = sim.scene_trajectory(scene, "loop", n_frames)
    base = sim.default_camera(H, W)
    cameras = [base.with_pose(E) for E in poses]
    period_ns = int(round(1e9 / args.fps))
    stamps = [args.start_time + i * period_ns for i in range(n_frames)]
    codec = ThumbnailCodec()
    backend = ReadoutBackend(LatentSpatialMemory(), codec, chunk_size=args.chunk_size)
    print(f"mirage demo: {backend.description}")
    print(f"scene={args.scene} seed={args.seed} {H}x{W}, {args.chunks} chunks x {args.chunk_size} views on a closed "
          f"loop -> {out}")

    def observe(i):
        f = sim.render(scene, cameras[i], t=i / args.chunk_size)
        exclude = f.labels != sim.STATIC
        return f, exclude

    f0, ex0 = observe(0)
    backend.observe(f0.rgb, f0.depth, cameras[0], exclude=ex0)
    observed, imagined = 1, 0
    first_truth = f0
    start_iso = datetime.fromtimestamp(args.start_time / 1e9, timezone.utc).isoformat().replace("+00:00", "Z")
    stats = {"description": backend.description, "scene": args.scene, "seed": args.seed, "resolution": [H, W],
             "latent_hw": list(base.latent_size(16)),
             "clock": {"start_ns": args.start_time, "start": start_iso, "fps": args.fps, "frame_period_ns": period_ns,
                       "frames": "frame i is stamped start_ns + i * frame_period_ns; frame 0 is the first observation"},
             "chunks": []}
    growth = [(0, backend.memory.num_points, backend.memory.nbytes)]
    strip_rows, video = [], []
    mask_tiles = []
    rec = _start_bag(out, cameras, stamps, backend, not args.no_bag)
    if rec is not None:
        rec.ground_truth(0, first_truth)
    bar = tqdm(total=n_frames - 1, desc="demo", unit="view")
    n_chunks = 0
    try:
        for c in range(args.chunks):
            idx = list(range(1 + c * args.chunk_size, 1 + (c + 1) * args.chunk_size))
            frames, masks, timings = {}, {}, {}
            for chunk in backend.imagine([cameras[i] for i in idx]):  # any backend, any chunking
                g = renumber(chunk, n_chunks, [idx[j] for j in chunk.frame_indices])
                n_chunks += 1
                for j, i in enumerate(g.frame_indices):
                    frames[i], masks[i] = g.frames[j], np.asarray(g.masks[j])
                for k, v in g.timings.items():
                    timings[k] = timings.get(k, 0.0) + float(v)
                if rec is not None:
                    rec.chunk(g)
                imagined += len(g.frame_indices)
            truth = {i: observe(i) for i in idx}
            if rec is not None:
                for i in idx:
                    rec.ground_truth(i, truth[i][0])
            r = {"chunk": c, "frames": idx, **{f"{k}_ms_per_view": 1e3 * v / len(idx) for k, v in timings.items()},
                 "coverage": [], "psnr_visible": [], "psnr_codec_bound": []}
            for k, i in enumerate(idx):
                f, ex = truth[i]
                m = masks[i]
                pix = np.repeat(np.repeat(m, 16, 0), 16, 1)
                best = tensor_to_images(codec.decode(codec.encode(images_to_tensor(f.rgb))))[0]
                r["coverage"].append(float(m.mean()))
                r["psnr_visible"].append(psnr(frames[i], f.rgb, pix & ~ex))  # NaN -> null in stats.json
                r["psnr_codec_bound"].append(psnr(best, f.rgb, pix & ~ex))
                video.append(np.concatenate([viz.label_image(f.rgb, f"observed {i}"),
                                             viz.label_image(frames[i], f"memory readout {i}"),
                                             viz.label_image(viz.mask_to_rgb(m, (H, W)), f"mask m_t {i}")], 1))
                if k == 0:
                    strip_rows.append([viz.label_image(f.rgb, f"frame {i}"),
                                       viz.label_image(frames[i], f"readout {i}")])
                    mask_tiles.append(viz.mask_to_rgb(m, (H, W)))
                bar.update(1)
            added = 0
            if not args.no_update:
                for i in idx:
                    f, ex = truth[i]
                    added += backend.observe(f.rgb, f.depth, cameras[i], exclude=ex)
                    observed += 1
            if rec is not None:  # the memory after this chunk, at its last frame's stamp
                rec.memory(stamps[idx[-1]], observed, imagined)
            r["points_added"] = added
            r["memory_points"] = backend.memory.num_points
            r["memory_mib"] = backend.memory.nbytes / 2**20
            stats["chunks"].append(r)
            growth.append((c + 1, backend.memory.num_points, backend.memory.nbytes))
            bar.set_postfix(points=backend.memory.num_points, cov=f"{np.mean(r['coverage']):.2f}")
    except BaseException:
        if rec is not None:
            rec.abort()  # no partial bag
        raise
    bar.close()
    if rec is not None:
        rec.close()

    _write_outputs(out, backend, stats, strip_rows, mask_tiles, video, growth, rec, t_start, args.fps)
    print(f"memory: {backend.memory.num_points} points, {backend.memory.nbytes / 2**20:.2f} MiB; mean coverage "
          f"{stats['mean_coverage']:.2f}; {stats['seconds']:.1f} s. NO generative model was loaded: frames are memory "
          f"readouts.")
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


def run_generative(args) -> int:
    """The shipped world model imagines the loop from the first frame only (see module docstring)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from . import sim, viz
    from .world_model.backend import make_backend
    from .world_model.codec import tensor_to_images

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = sim.make_scene(args.scene, seed=args.seed, moving_object=not args.no_moving_object)
    chunks, size = args.chunks or 5, args.chunk_size or 8
    n_frames = chunks * size + 1
    poses = sim.scene_trajectory(scene, "loop", n_frames)
    oracle = sim.SceneOracle(scene, poses, frame_period=1.0 / args.fps)
    try:
        if args.backend == "spatia":
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            backend = make_backend("spatia", weights=args.weights, side_branch=args.side_branch, lora=args.lora,
                                   device=device,
                                   steps=args.steps, keep_imagined=True, depth=oracle.depth_provider(),
                                   masks=oracle.mask_provider(), resolution=args.resolution, rounds=args.rounds,
                                   prompt=args.prompt, negative_prompt_file=args.negative_prompt_file)
        else:
            backend = make_backend("shipped", weights=args.weights, steps=args.steps, keep_imagined=True,
                                   depth=oracle.depth_provider(), masks=oracle.mask_provider())
    except (FileNotFoundError, ValueError) as exc:
        print(f"mirage demo: {exc}")
        return 2
    H, W = args.resolution or backend.resolution or (128, 224)
    base = sim.default_camera(H, W)
    cameras = [base.with_pose(E) for E in poses]
    period_ns = int(round(1e9 / args.fps))
    stamps = [args.start_time + i * period_ns for i in range(n_frames)]
    codec = backend.codec
    print(f"mirage demo: {backend.description}")
    print(f"the model imagines {n_frames - 1} views of a closed loop from the first frame only "
          f"(scene={args.scene} seed={args.seed}, {H}x{W}); depth and masks of generated frames from the simulator -> "
          f"{out}")

    def truth(i):
        f = sim.render(scene, cameras[i], t=i / args.fps)
        return f, f.labels != sim.STATIC

    f0, ex0 = truth(0)
    backend.observe(f0.rgb, f0.depth, cameras[0], exclude=ex0)
    start_iso = datetime.fromtimestamp(args.start_time / 1e9, timezone.utc).isoformat().replace("+00:00", "Z")
    stats = {"description": backend.description, "backend": args.backend, "model": str(backend.model.description),
             "scene": args.scene, "seed": args.seed, "resolution": [H, W],
             "model_resolution": list(backend.resolution) if backend.resolution else None,
             "sampler": {"steps": backend.model.sampler.steps, "shift": backend.model.sampler.shift},
             "perception_of_generated_frames": "simulator depth and labels (oracle)",
             "clock": {"start_ns": args.start_time, "start": start_iso, "fps": args.fps, "frame_period_ns": period_ns,
                       "frames": "frame i is stamped start_ns + i * frame_period_ns; frame 0 is the only observation"},
             "chunks": []}
    growth = [(0, backend.memory.num_points, backend.memory.nbytes)]
    strip_rows, video, mask_tiles = [], [], []
    rec = _start_bag(out, cameras, stamps, backend, not args.no_bag)
    if rec is not None:
        rec.ground_truth(0, f0)
    bar = tqdm(total=n_frames - 1, desc="demo (imagining)", unit="view")
    try:
        for n, chunk in enumerate(backend.imagine(cameras[1:])):
            g = renumber(chunk, n, [1 + i for i in chunk.frame_indices])
            if rec is not None:
                rec.chunk(g)
            if g.renders is not None:  # a pixel-space memory (spatia): the render the model was conditioned on
                ro = g.renders
            else:
                ro = codec.decode(g.readouts.float())
                seen = torch.as_tensor(np.asarray(g.masks))
                seen = seen.repeat_interleave(codec.stride, 1).repeat_interleave(codec.stride, 2)
                ro = ro * seen[:, None]
                ro = tensor_to_images(ro)
            r = {"chunk": n, "frames": g.frame_indices, **{f"{k}_s": float(v) for k, v in g.timings.items()},
                 "coverage": [], "psnr_imagined": [], "psnr_imagined_visible": [], "psnr_readout_visible": []}
            for j, i in enumerate(g.frame_indices):
                f, ex = truth(i)
                if rec is not None:
                    rec.ground_truth(i, f)
                m = np.asarray(g.masks[j])
                readout = _fit(ro[j], H, W)
                pix = _fit(np.repeat(np.repeat(m.astype(np.uint8), codec.stride, 0), codec.stride, 1), H, W) > 0
                r["coverage"].append(float(m.mean()))
                r["psnr_imagined"].append(psnr(g.frames[j], f.rgb))
                r["psnr_imagined_visible"].append(psnr(g.frames[j], f.rgb, pix & ~ex))
                r["psnr_readout_visible"].append(psnr(readout, f.rgb, pix & ~ex))
                vis = viz.mask_to_rgb(m, (H, W))
                video.append(np.concatenate([viz.label_image(f.rgb, f"ground truth {i}"),
                                             viz.label_image(readout, f"memory readout {i}"),
                                             viz.label_image(g.frames[j], f"imagined {i}"),
                                             viz.label_image(vis, f"visibility m_t {i}")], 1))
                if j == len(g.frame_indices) - 1:
                    strip_rows.append([viz.label_image(f.rgb, f"truth {i}"), viz.label_image(readout, f"readout {i}"),
                                       viz.label_image(g.frames[j], f"imagined {i}")])
                    mask_tiles.append(vis)
                bar.update(1)
            if rec is not None:
                rec.memory(stamps[g.frame_indices[-1]], 1, g.frame_indices[-1])
            r["memory_points"] = backend.memory.num_points
            r["memory_mib"] = backend.memory.nbytes / 2**20
            stats["chunks"].append(r)
            growth.append((n + 1, backend.memory.num_points, backend.memory.nbytes))
    except BaseException:
        if rec is not None:
            rec.abort()
        raise
    bar.close()
    if rec is not None:
        rec.close()
    stats["final_frame_psnr"] = stats["chunks"][-1]["psnr_imagined"][-1]
    _write_outputs(out, backend, stats, strip_rows, mask_tiles, video, growth, rec, t_start, args.fps)
    print(f"{n_frames - 1} views imagined in {stats['seconds']:.1f} s; final frame (the first frame's pose) PSNR "
          f"{stats['final_frame_psnr']:.1f} dB; memory {backend.memory.num_points} points.")
    print(f"wrote {', '.join(stats['files'])} to {out}")
    return 0


def _fit(img, H: int, W: int):
    """``img`` at H x W (the model's frames are resized to the demo's size)."""
    import cv2
    import numpy as np

    if img.shape[:2] == (H, W):
        return img
    return np.asarray(cv2.resize(img, (W, H), interpolation=cv2.INTER_NEAREST if img.ndim == 2 else cv2.INTER_LINEAR))
