"""`mirage bench memory`: the paper's Figure 5 on this machine, plus scaling and growth tests.

Parts (all in one run, one JSON + one PNG):
1. Figure 5: over N chunks of 9 views on the closed loop, per-frame cache-read time and cache
   size for the latent memory, the RGB point-cloud cache (rasterise + real Wan2.2 VAE encoder
   architecture, random weights) and a sort-then-assign readout like the official code's.
2. Scaling: readout time vs number of points (up to 1M, all inside the view frustum, 44x80 grid)
   next to the floor of one rigid transform of all xyz, and the sort-then-assign baseline.
3. Out-of-view growth: readout time after adding 9x as many points outside the view.
4. Revisit growth: two laps of the loop; new points per admissible cell and MiB per chunk on the
   second lap, and readout quality (PSNR of decoded readouts on visible cells) on both laps.
5. Depth downsampling: hole rate of bilinear / nearest / area / median on sensor-like dropouts.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from ..util import dumps_json, median_seconds, parse_resolution, psnr, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/bench_memory.json", help="output JSON path (a PNG is written beside "
                                                                          "it)")
    p.add_argument("--resolution", type=parse_resolution, default=(256, 448), help="Figure-5 image size (default "
                                                                                   "256x448)")
    p.add_argument("--revisit-resolution", type=parse_resolution, default=(704, 1280),
                   help="image size of the revisit test (default 704x1280 = the paper's 44x80 latent grid)")
    p.add_argument("--chunks", type=int, default=5)
    p.add_argument("--chunk-size", type=int, default=9)
    p.add_argument("--scene", choices=["room", "outdoor"], default="room")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rgb-encoder", choices=["wan", "wan-tiny", "thumbnail"], default="wan",
                   help="encoder of the RGB cache: the real Wan2.2 VAE architecture with random weights (default)")
    p.add_argument("--rgb-encode-frames", type=int, default=3,
                   help="VAE encodes timed per chunk (0 = all; each takes seconds on a CPU); rasterisation is timed "
                        "for all")
    p.add_argument("--scaling", default="10000,30000,100000,300000,1000000", help="point counts for the scaling curve")
    p.add_argument("--repeats", type=int, default=9, help="timing repeats (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-figure5", action="store_true", help="skip part 1 (the slow RGB-cache encodes)")


def _median_ms(fn, repeats: int, sync=None) -> float:
    return 1e3 * median_seconds(fn, repeats, sync)


def _frustum_points(cam, n, stride, zrange=(1.0, 10.0), seed=0, behind=False):
    """n world points uniformly in (u, v, z) inside the camera's view (or mirrored behind it)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = cam.latent_size(stride)
    Kl = cam.latent_K(stride).float()
    z = torch.rand(n, generator=g) * (zrange[1] - zrange[0]) + zrange[0]
    uv = torch.rand(n, 2, generator=g) * torch.tensor([float(w), float(h)])
    x = (uv[:, 0] - Kl[0, 2]) / Kl[0, 0] * z
    y = (uv[:, 1] - Kl[1, 2]) / Kl[1, 1] * z
    pc = torch.stack([x, y, -z if behind else z], 1)
    C2W = cam.camera_to_world.float()
    return pc @ C2W[:3, :3].T + C2W[:3, 3]


def figure5(args, sim, log):
    from tqdm import tqdm

    from ..baselines import RGBPointCloudMemory
    from ..baselines.sort_readout import sort_assign_readout
    from ..memory import LatentSpatialMemory
    from ..world_model.codec import ThumbnailCodec, images_to_tensor, make_codec

    H, W = args.resolution
    scene = sim.make_scene(args.scene, seed=args.seed, moving_object=True)
    n = args.chunks * args.chunk_size + 1
    cams = [sim.default_camera(H, W).with_pose(E) for E in sim.scene_trajectory(scene, "loop", n)]
    thumb = ThumbnailCodec()
    t0 = time.perf_counter()
    enc = make_codec({"wan": "wan-random", "wan-tiny": "wan-tiny", "thumbnail": "thumbnail"}[args.rgb_encoder],
                     device=args.device)
    log(f"RGB-cache encoder: {args.rgb_encoder} ({type(enc).__name__}) built in {time.perf_counter() - t0:.1f} s")
    latent_mem = LatentSpatialMemory(device=args.device)
    rgb_mem = RGBPointCloudMemory(enc, device=args.device)

    def observe(i):
        f = sim.render(scene, cams[i], t=i / args.chunk_size)
        return f, f.labels != sim.STATIC

    def insert(i, f, ex):
        latent_mem.insert(thumb.encode(images_to_tensor(f.rgb, args.device))[0], f.depth, cams[i], exclude=ex)
        rgb_mem.insert(f.rgb, f.depth, cams[i], exclude=ex)

    f, ex = observe(0)
    insert(0, f, ex)
    chunks = []
    bar = tqdm(total=n - 1, desc="figure 5", unit="view")
    for c in range(args.chunks):
        idx = range(1 + c * args.chunk_size, 1 + (c + 1) * args.chunk_size)
        lat_ms, sort_ms, rast_ms, enc_ms = [], [], [], []
        for k, i in enumerate(idx):
            lat_ms.append(_median_ms(lambda: latent_mem.read(cams[i]), 3))
            pts, feats = latent_mem.points, latent_mem.features
            sort_ms.append(_median_ms(lambda: sort_assign_readout(pts, feats, cams[i]), 3))
            t0 = time.perf_counter()
            rgb, cov, _ = rgb_mem.render(cams[i])
            rast_ms.append(1e3 * (time.perf_counter() - t0))
            if args.rgb_encode_frames <= 0 or k < args.rgb_encode_frames:
                x = rgb.permute(2, 0, 1)[None].float().div(255.0)
                t0 = time.perf_counter()
                enc.encode(x)
                enc_ms.append(1e3 * (time.perf_counter() - t0))
            bar.update(1)
        for i in idx:
            insert(i, *observe(i))
        rec = {
            "chunk": c,
            "latent_read_ms_per_frame": statistics.mean(lat_ms),
            "rgb_read_ms_per_frame": statistics.mean(rast_ms) + statistics.mean(enc_ms),
            "rgb_rasterise_ms_per_frame": statistics.mean(rast_ms),
            "rgb_encode_ms_per_frame": statistics.mean(enc_ms),
            "rgb_encodes_timed": len(enc_ms),
            "sort_read_ms_per_frame": statistics.mean(sort_ms),
            "latent_cache_mib": latent_mem.nbytes / 2**20,
            "rgb_cache_mib": rgb_mem.nbytes / 2**20,
            "latent_points": latent_mem.num_points,
            "rgb_points": rgb_mem.num_points,
        }
        chunks.append(rec)
        log(f"chunk {c}: latent {rec['latent_read_ms_per_frame']:.2f} ms, rgb {rec['rgb_read_ms_per_frame']:.0f} ms, "
            f"sort {rec['sort_read_ms_per_frame']:.2f} ms; {rec['latent_cache_mib']:.2f} vs {rec['rgb_cache_mib']:.2f} "
            f"MiB")
    bar.close()
    speedups = [r["rgb_read_ms_per_frame"] / r["latent_read_ms_per_frame"] for r in chunks]
    return {
        "chunks": chunks,
        "read_speedup_median": statistics.median(speedups),
        "memory_ratio_final": chunks[-1]["rgb_cache_mib"] / chunks[-1]["latent_cache_mib"],
        "rgb_encoder": args.rgb_encoder,
        "latent_bytes_per_point": 12 + 48 * 2,
        "rgb_bytes_per_point": 12 + 3,
    }


def scaling(args, log):
    import torch
    from tqdm import tqdm

    from ..baselines.sort_readout import sort_assign_readout
    from ..geometry import Camera, look_at
    from ..memory import LatentSpatialMemory

    cam = Camera.from_fov(704, 1280, 70, look_at([0, 0, 1.5], [5, 0, 1.5]))
    counts = [int(x) for x in args.scaling.split(",")]
    rows = []
    for n in tqdm(counts, desc="scaling", unit="size"):
        pts = _frustum_points(cam, n, 16, seed=n)
        feats = torch.randn(n, 48, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
        mem = LatentSpatialMemory(device=args.device)
        mem.add_points(pts, feats)
        xyz = mem.points
        E = cam.world_to_camera.to(xyz.device, torch.float32)
        R, t = E[:3, :3].T.contiguous(), E[:3, 3].contiguous()
        row = {
            "points": n,
            "readout_ms": _median_ms(lambda: mem.read(cam), args.repeats),
            "xyz_pass_ms": _median_ms(lambda: torch.addmm(t, xyz, R), args.repeats),
            "sort_baseline_ms": _median_ms(lambda: sort_assign_readout(xyz, mem.features, cam),
                                           max(3, args.repeats // 3)),
        }
        mem.occlusion_culling = False
        row["readout_no_occlusion_culling_ms"] = _median_ms(lambda: mem.read(cam), args.repeats)
        rows.append(row)
        log(f"{n:>8} points: readout {row['readout_ms']:.2f} ms, xyz pass {row['xyz_pass_ms']:.2f} ms, "
            f"sort {row['sort_baseline_ms']:.1f} ms, no occlusion culling {row['readout_no_occlusion_culling_ms']:.2f} "
            f"ms")
    return rows


def out_of_view(args, log):
    import torch

    from ..geometry import Camera, look_at
    from ..memory import LatentSpatialMemory

    cam = Camera.from_fov(704, 1280, 70, look_at([0, 0, 1.5], [5, 0, 1.5]))
    n0 = 100_000
    feats = torch.randn(10 * n0, 48, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    mem = LatentSpatialMemory(device=args.device)
    mem.add_points(_frustum_points(cam, n0, 16, seed=1), feats[:n0])
    t_a = _median_ms(lambda: mem.read(cam), args.repeats)
    before = mem.read(cam)
    # 9x more points outside the view: behind the camera and off to the sides
    mem.add_points(_frustum_points(cam, 6 * n0, 16, seed=2, behind=True), feats[n0 : 7 * n0])
    side = cam.with_pose(look_at([0, 0, 1.5], [0, 5, 1.5]))
    mem.add_points(_frustum_points(side, 3 * n0, 16, zrange=(9.0, 20.0), seed=3), feats[7 * n0 :])
    after = mem.read(cam)
    assert torch.equal(before.index, after.index), "out-of-view points changed the readout"
    t_b = _median_ms(lambda: mem.read(cam), args.repeats)
    log(f"out of view: {t_a:.2f} ms at {n0} points -> {t_b:.2f} ms at {mem.num_points} points (x{t_b / t_a:.2f})")
    return {"points_in_view": n0, "points_total": mem.num_points, "readout_ms_before": t_a, "readout_ms_after": t_b,
            "ratio": t_b / t_a}


def revisit(args, sim, log):
    import numpy as np
    from tqdm import tqdm

    from ..memory import LatentSpatialMemory
    from ..world_model.codec import ThumbnailCodec, images_to_tensor, tensor_to_images

    H, W = args.revisit_resolution
    scene = sim.make_scene(args.scene, seed=args.seed, moving_object=False)
    per_lap = args.chunks * args.chunk_size
    poses = sim.scene_trajectory(scene, "loop", per_lap + 1)[:per_lap]  # last pose == first pose
    cams = [sim.default_camera(H, W).with_pose(E) for E in poses]
    thumb = ThumbnailCodec()
    frames = []
    for cam in tqdm(cams, desc="revisit: render", unit="view"):
        f = sim.render(scene, cam)
        frames.append((f, f.labels != sim.STATIC, thumb.encode(images_to_tensor(f.rgb))[0]))
    out = {}
    for policy, mem in (("dedup", LatentSpatialMemory()), ("no_dedup", LatentSpatialMemory(dedup=False))):
        chunks = []
        for lap in range(2):
            for c in range(args.chunks):
                idx = range(c * args.chunk_size, (c + 1) * args.chunk_size)
                q, cov = [], []
                for i in idx:  # read before the update, as the rollout does
                    if mem.num_points:
                        r = mem.read(cams[i])
                        img = tensor_to_images(thumb.decode(r.latent[None]))[0]
                        pix = np.repeat(np.repeat(r.mask.numpy(), 16, 0), 16, 1)
                        q.append(psnr(img, frames[i][0].rgb, pix))
                        cov.append(float(r.mask.float().mean()))
                mib0 = mem.nbytes / 2**20
                adm = added = 0
                for i in idx:
                    f, ex, lat = frames[i]
                    added += mem.insert(lat, f.depth, cams[i], exclude=ex)
                    adm += mem.last_insert["admissible"]
                chunks.append({"lap": lap, "chunk": c, "new_point_fraction": added / max(1, adm),
                               "growth_mib": mem.nbytes / 2**20 - mib0, "points": mem.num_points,
                               "readout_psnr_visible": float(np.nanmean(q)) if q else None,
                               "coverage": float(np.mean(cov)) if cov else None})
        second = [r for r in chunks if r["lap"] == 1]
        first = [r for r in chunks if r["lap"] == 0 and r["readout_psnr_visible"] is not None]
        out[policy] = {
            "chunks": chunks,
            "new_point_fraction_lap2": float(np.mean([r["new_point_fraction"] for r in second])),
            "growth_mib_per_chunk_lap2": float(np.mean([r["growth_mib"] for r in second])),
            "readout_psnr_lap1": float(np.mean([r["readout_psnr_visible"] for r in first])),
            "readout_psnr_lap2": float(np.mean([r["readout_psnr_visible"] for r in second])),
            "coverage_lap2": float(np.mean([r["coverage"] for r in second])),
            "final_mib": mem.nbytes / 2**20,
        }
        log(f"revisit ({policy}): lap-2 new/admissible {out[policy]['new_point_fraction_lap2']:.3f}, "
            f"{out[policy]['growth_mib_per_chunk_lap2']:.3f} MiB/chunk, PSNR lap1 "
            f"{out[policy]['readout_psnr_lap1']:.2f} "
            f"lap2 {out[policy]['readout_psnr_lap2']:.2f} dB, final {out[policy]['final_mib']:.2f} MiB")
    return {"resolution": [H, W], "latent_hw": [H // 16, W // 16], **out}


def depth_holes(args, sim):
    import torch

    from ..memory import hole_rate

    H, W = args.resolution
    scene = sim.make_scene(args.scene, seed=args.seed)
    cam = sim.default_camera(H, W).with_pose(sim.scene_trajectory(scene, "loop", 10)[3])
    d = torch.from_numpy(sim.render(scene, cam).depth.copy())
    g = torch.Generator().manual_seed(0)
    out = {}
    for rate in (0.01, 0.05):
        dd = d.clone()
        dd[torch.rand(d.shape, generator=g) < rate] = 0.0  # sensor-like dropouts
        out[f"dropout_{rate}"] = hole_rate(dd, 16)
    return out


def plot(result, path):
    from .. import viz

    pyplot = viz.plt()
    fig, ax = pyplot.subplots(2, 2, figsize=(11, 8))
    if result.get("chunks"):
        ch = result["chunks"]
        x = [r["chunk"] for r in ch]
        a = ax[0, 0]
        a.bar([i - 0.27 for i in x], [r["latent_read_ms_per_frame"] for r in ch], 0.27, label="latent memory (ours)")
        a.bar(x, [r["sort_read_ms_per_frame"] for r in ch], 0.27, label="sort-then-assign (official style)")
        a.bar([i + 0.27 for i in x], [r["rgb_read_ms_per_frame"] for r in ch], 0.27, label="RGB cache: rasterise + VAE "
                                                                                           "encode")
        a.set_yscale("log")
        a.set(xlabel="rollout chunk", ylabel="ms per frame (log)", title="cache read time per frame")
        a.legend(fontsize=7)
        a = ax[0, 1]
        a.bar([i - 0.2 for i in x], [r["latent_cache_mib"] for r in ch], 0.4, label="latent memory")
        a.bar([i + 0.2 for i in x], [r["rgb_cache_mib"] for r in ch], 0.4, label="RGB point cloud")
        a.set(xlabel="rollout chunk", ylabel="MiB", title="cache footprint")
        a.legend(fontsize=7)
    sc = result["scaling"]
    a = ax[1, 0]
    n = [r["points"] for r in sc]
    a.loglog(n, [r["readout_ms"] for r in sc], "o-", label="readout (ours)")
    a.loglog(n, [r["readout_no_occlusion_culling_ms"] for r in sc], "^-", label="readout, no occlusion culling")
    a.loglog(n, [r["xyz_pass_ms"] for r in sc], "s--", label="one rigid transform of xyz")
    a.loglog(n, [r["sort_baseline_ms"] for r in sc], "x-", label="sort-then-assign")
    a.set(xlabel="points in memory (all in view)", ylabel="ms", title="readout into 44x80 vs memory size")
    a.legend(fontsize=7)
    rv = result["revisit"]
    a = ax[1, 1]
    for policy, style in (("dedup", "o-"), ("no_dedup", "x--")):
        a.plot([r["points"] for r in rv[policy]["chunks"]], style, label=policy)
    a.axvline(len(rv["dedup"]["chunks"]) / 2 - 0.5, color="grey", lw=0.8)
    a.set(xlabel="chunk (two laps of the loop)", ylabel="points", title=f"revisit growth at "
                                                                        f"{rv['latent_hw'][0]}x{rv['latent_hw'][1]}")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def run(args) -> int:
    import torch

    from .. import sim

    torch.manual_seed(0)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    def log(msg):
        print(msg, flush=True)

    H, W = args.resolution
    result = {"resolution": [H, W], "latent_hw": [H // 16, W // 16], "device": args.device,
              "torch_threads": torch.get_num_threads()}
    if not args.skip_figure5:
        result.update(figure5(args, sim, log))
    result["scaling"] = scaling(args, log)
    ov = out_of_view(args, log)
    result["out_of_view"] = ov
    result["out_of_view_readout_ratio"] = ov["ratio"]
    rv = revisit(args, sim, log)
    result["revisit"] = rv
    result["revisit_growth_mib_per_chunk"] = rv["dedup"]["growth_mib_per_chunk_lap2"]
    result["revisit_new_point_fraction"] = rv["dedup"]["new_point_fraction_lap2"]
    result["depth_downsample"] = depth_holes(args, sim)
    big = result["scaling"][-1]
    result["targets"] = {
        "read_speedup_median>=300": result.get("read_speedup_median", 0) >= 300,
        "memory_ratio_final>=30": result.get("memory_ratio_final", 0) >= 30,
        "readout<=3x_xyz_pass_at_max": big["readout_ms"] <= 3 * big["xyz_pass_ms"],
        "sort>=5x_readout_at_max": big["sort_baseline_ms"] >= 5 * big["readout_ms"],
        "out_of_view_ratio<=1.5": ov["ratio"] <= 1.5,
        "revisit_new_point_fraction<=0.1": result["revisit_new_point_fraction"] <= 0.1,
    }
    write_json(path, result)
    plot(result, path.with_suffix(".png"))
    log(dumps_json(result["targets"]))
    log(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
