"""`mirage bench spatia`: what the Spatia layout's pixel-space memory costs on this machine (CPU by default).

1. Memory: the same frames of the simulator's room loop into the latent memory (one 48-channel bf16
   feature per 16 x 16 cell, at 704 x 1248) and into the RGB point-cloud cache the spatia backend keeps
   (one xyz + RGB point per pixel at MapAnything's 294 x 518 density, as Spatia lifts frames): points,
   bytes and insert time per frame.
2. Readout of one view at 704 x 1248: the latent memory's read (Eq. 5) vs the Spatia conditioning's
   render (voxelise at 1 cm + PyTorch3D-equivalent disks, 5 per pixel, colour + score). The VAE encode of
   the two 81-frame render videos that follows is not timed here (seconds per frame for the real VAE on
   a CPU; ``mirage bench gpu`` times it on a GPU).
3. Renderer scaling: milliseconds per 704 x 1248 frame for 100k and 300k points in the view.
4. What Spatia does and this package does not: it writes both renders to MP4 and reads them back
   before encoding; here an H.264 round trip (libx264, yuv420p, CRF 25: imageio's quality 5) of the
   renders is measured against the renders themselves (PSNR, hole mask error).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from ..util import write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/bench_spatia.json", help="output JSON path (a PNG is written beside "
                                                                          "it)")
    p.add_argument("--frames", type=int, default=8, help="frames of the loop written into both memories")
    p.add_argument("--scaling", default="100000,300000", help="point counts for the renderer scaling")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")


def _time(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def run(args) -> int:
    import cv2
    import numpy as np
    import torch

    from .. import sim, viz
    from ..baselines.point_render import PointRender, voxel_downsample
    from ..baselines.rgb_memory import RGBPointCloudMemory
    from ..geometry import Camera
    from ..memory import LatentSpatialMemory
    from ..util import psnr
    from ..world_model.codec import ThumbnailCodec, images_to_tensor
    from ..world_model.spatia import SpatiaSettings

    dev = torch.device(args.device)
    s = SpatiaSettings()
    H, W = s.height, s.width
    ph, pw = s.point_resolution
    codec = ThumbnailCodec()  # 48 channels, stride 16: the bytes of a Wan2.2 latent; no VAE weights needed
    scene = sim.make_scene("room", 0)
    poses = sim.scene_trajectory(scene, "loop", 3 * args.frames + 3)
    latent = LatentSpatialMemory(codec.channels, codec.stride, device=dev)
    rgb = RGBPointCloudMemory(codec, device=dev)
    rows = []
    print(f"memory: {args.frames} frames of the room loop; latent memory at {H}x{W}, RGB cache at {ph}x{pw}")
    for k in range(args.frames):
        cam = sim.default_camera(H, W).with_pose(poses[3 * k])
        small = cam.resized(ph, pw)
        fr = sim.render(scene, small, 0.0)
        full = cv2.resize(fr.rgb, (W, H), interpolation=cv2.INTER_LINEAR)
        h, w = cam.latent_size(codec.stride)
        d_lat = sim.render(scene, cam.resized(h, w), 0.0).depth  # depth per latent cell
        z = codec.encode(images_to_tensor(full))[0]
        t0 = time.perf_counter()
        n_lat = latent.insert(z, torch.as_tensor(d_lat), cam)
        t1 = time.perf_counter()
        n_rgb = rgb.insert(fr.rgb, fr.depth, small)
        t2 = time.perf_counter()
        rows.append({"frame": 3 * k, "latent_points": n_lat, "latent_insert_ms": 1e3 * (t1 - t0), "rgb_points": n_rgb,
                     "rgb_insert_ms": 1e3 * (t2 - t1), "latent_mib": latent.nbytes / 2**20,
                     "rgb_mib": rgb.nbytes / 2**20})
        print(f"  frame {3 * k}: latent +{n_lat} ({rows[-1]['latent_insert_ms']:.1f} ms), rgb +{n_rgb} "
              f"({rows[-1]['rgb_insert_ms']:.1f} ms)")
    view = sim.default_camera(H, W).with_pose(poses[1])
    render = PointRender(radius=s.render_radius, points_per_pixel=s.points_per_pixel)
    read_ms = _time(lambda: latent.read(view), args.repeats)

    def spatia_readout():
        pts, cols = voxel_downsample(rgb.points, rgb.colors.float() / 255.0, s.render_voxel_at(0))
        return render(pts, cols, view)

    t0 = time.perf_counter()
    img, hole = spatia_readout()
    render_ms = 1e3 * (time.perf_counter() - t0)
    vox = voxel_downsample(rgb.points, None, s.render_voxel_at(0))[0].shape[0]
    print(f"readout of one {H}x{W} view: latent {read_ms:.1f} ms; Spatia render {render_ms:.0f} ms ({vox} points after "
          f"the 1 cm voxels)")
    scaling = []
    cam = Camera.from_fov(H, W, 70.0)
    g = torch.Generator().manual_seed(0)
    for n in [int(x) for x in args.scaling.split(",") if x]:
        zz = torch.rand(n, generator=g) * 9 + 1
        u, v = torch.rand(n, generator=g) * W, torch.rand(n, generator=g) * H
        K = cam.K.float()
        pts = torch.stack([(u - K[0, 2]) / K[0, 0] * zz, (v - K[1, 2]) / K[1, 1] * zz, zz], 1).to(dev)
        cols = torch.rand(n, 3, generator=g).to(dev)
        ms = _time(lambda: render(pts, cols, cam), 1)
        scaling.append({"points": n, "render_ms": ms})
        print(f"  renderer: {n} points, {ms:.0f} ms per {H}x{W} frame")
    # H.264 round trip of the renders (Spatia: export_to_video then decord), here on this view and a second
    frames_rgb = [img.cpu().numpy()]
    score8 = torch.round((1.0 - hole) * 255).to(torch.uint8).cpu().numpy()  # the score image Spatia writes
    frames_score = [np.repeat(score8[..., None], 3, 2)]
    video = None
    try:
        import tempfile

        import av

        with tempfile.TemporaryDirectory() as tmp:
            for name, frames in (("render", frames_rgb), ("score", frames_score)):
                path = Path(tmp) / f"{name}.mp4"
                viz.write_mp4(path, frames * 3, fps=24, crf=25)
                with av.open(str(path)) as c:
                    back = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][0]
                if name == "render":
                    video = {"render_psnr_db": psnr(back, frames[0]),
                             "render_mean_abs": float(np.abs(back.astype(float) - frames[0]).mean())}
                else:
                    err = np.abs(back[..., 0].astype(float) - score8) / 255.0  # = the error of 1 - score, the hole mask
                    video.update({"hole_mean_abs": float(err.mean()), "hole_max_abs": float(err.max()),
                                  "hole_pixels_off_by_over_0.1": float((err > 0.1).mean())})
    except Exception as exc:  # noqa: BLE001 - no H.264 encoder: reported, not fatal
        video = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"H.264 round trip (CRF 25, yuv420p): {video}")
    last = rows[-1]
    result = {
        "device": str(dev), "torch_threads": torch.get_num_threads(), "resolution": [H, W],
        "point_resolution": [ph, pw],
        "frames": rows,
        "per_frame": {"latent_points": statistics.mean(r["latent_points"] for r in rows),
                      "rgb_points": statistics.mean(r["rgb_points"] for r in rows),
                      "latent_kib": 1024 * last["latent_mib"] / len(rows),
                      "rgb_kib": 1024 * last["rgb_mib"] / len(rows),
                      "latent_insert_ms": statistics.median(r["latent_insert_ms"] for r in rows),
                      "rgb_insert_ms": statistics.median(r["rgb_insert_ms"] for r in rows)},
        "memory_mib": {"latent": last["latent_mib"], "rgb": last["rgb_mib"],
                       "ratio": last["rgb_mib"] / max(last["latent_mib"], 1e-9)},
        "readout_ms": {"latent_read": read_ms, "spatia_render": render_ms, "render_points_after_voxels": vox,
                       "spatia_81_frame_round_s": 81 * render_ms / 1e3,
                       "note": "the Spatia readout also VAE-encodes the 81-frame render and hole videos (not timed "
                               "here)"},
        "renderer_scaling": scaling, "h264_round_trip": video,
        "renderer_vs_pytorch3d": "tests/test_spatia.py: the same 5 points per pixel as PyTorch3D's reference "
                                 "rasteriser on a "
                                 "rendered room (both views, indices equal), colour and score within 1e-6",
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    _plot(result, out.with_suffix(".png"))
    print(f"memory after {len(rows)} frames: latent {last['latent_mib']:.2f} MiB, RGB cache {last['rgb_mib']:.2f} MiB "
          f"({result['memory_mib']['ratio']:.0f}x); wrote {out}")
    return 0


def _plot(result, path: Path) -> None:
    from ..viz import plt

    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(9, 3.5))
    rows = result["frames"]
    xs = list(range(1, len(rows) + 1))
    axes[0].plot(xs, [r["latent_mib"] for r in rows], "o-", label="latent memory (44x78 cells)")
    axes[0].plot(xs, [r["rgb_mib"] for r in rows], "s-", label="RGB cache (294x518 points)")
    axes[0].set_xlabel("frames written")
    axes[0].set_ylabel("MiB")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    ro = result["readout_ms"]
    axes[1].bar(["latent read", "Spatia render"], [ro["latent_read"], ro["spatia_render"]])
    axes[1].set_yscale("log")
    axes[1].set_ylabel("ms per 704x1248 view")
    for i, v in enumerate([ro["latent_read"], ro["spatia_render"]]):
        axes[1].text(i, v, f"{v:.0f} ms", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"Spatia's pixel memory vs the latent memory on {result['device']} ({result['torch_threads']} "
                 f"threads)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
