"""`mirage bench compression`: bytes per frame and encode / decode milliseconds of the node's
CompressedImage paths (``mirage_ros.ros.compressed``: what image/compressed, depth/compressedDepth
and imagined/image/compressed cost), at 256x448 and 704x1280 by default.

Frames are the synthetic scenes rendered at each resolution (room and outdoor, several poses),
as rendered and with Gaussian noise of sigma ``--noise`` grey levels added (renders are smoother
than a camera's images; the noisy variant is nearer what a real sensor sends and compresses
worse). Codecs: JPEG at ``--jpeg-quality`` (default 90) and PNG at ``--png-level`` (default 3,
image_transport's default), each as image_transport's compressed plugin writes them; depth as
compressedDepth PNG (16UC1 millimetres and 32FC1 inverse depth). Encode time is the node's
encoder (RGB -> BGR, cv2.imencode); decode time is the node's decoder (header and completeness
checks, cv2.imdecode, BGR -> RGB). Medians over ``--repeats``; JPEG also reports PSNR against the
original. Writes strict JSON and a PNG chart beside it.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import struct
from pathlib import Path
from types import SimpleNamespace

from ..util import median_seconds, parse_resolution, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/bench_compression.json")
    p.add_argument("--resolution", type=parse_resolution, action="append", default=None,
                   help="frame size HxW, repeatable (default 256x448 and 704x1280)")
    p.add_argument("--frames", type=int, default=4, help="distinct frames per scene")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per frame")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--png-level", type=int, default=3)
    p.add_argument("--noise", type=float, default=3.0, help="sigma (grey levels) of the noisy variant; 0: none")


def _median_ms(fn, repeats):
    return 1e3 * median_seconds(fn, repeats)


def run(args) -> int:
    import cv2
    import numpy as np

    from .. import sim, viz
    from ..ros import compressed as cz

    resolutions = args.resolution or [(256, 448), (704, 1280)]
    rng = np.random.default_rng(0)
    rows = []
    for H, W in resolutions:
        frames, depths = [], []
        for name in ("room", "outdoor"):
            scene = sim.make_scene(name, 0)
            poses = sim.scene_trajectory(scene, "loop", max(8, args.frames * 2))[:: 2][: args.frames]
            for E in poses:
                f = sim.render(scene, sim.default_camera(H, W).with_pose(E), 0.0)
                frames.append(f.rgb)
                depths.append(f.depth.astype(np.float32))
        variants = {"rendered": frames}
        if args.noise > 0:
            variants[f"rendered + noise sigma {args.noise:g}"] = [
                np.clip(f.astype(np.float32) + rng.normal(0, args.noise, f.shape), 0,
                        255).astype(np.uint8) for f in frames]
        raw_bytes = H * W * 3
        for variant, imgs in variants.items():
            for codec in ("jpeg", "png"):
                sizes, enc_ms, dec_ms, psnr = [], [], [], []
                for img in imgs:
                    data, fmt = cz.encode_rgb(img, codec, args.jpeg_quality, args.png_level)
                    msg = SimpleNamespace(format=fmt, data=data)
                    sizes.append(int(data.size))
                    enc_ms.append(_median_ms(lambda: cz.encode_rgb(img, codec, args.jpeg_quality, args.png_level),
                                             args.repeats))
                    dec_ms.append(_median_ms(lambda: cz.compressed_to_rgb(msg), args.repeats))
                    back = cz.compressed_to_rgb(msg).astype(np.float64)
                    mse = float(np.mean((back - img.astype(np.float64)) ** 2))
                    psnr.append(None if mse == 0 else 10 * np.log10(255 ** 2 / mse))
                row = {"resolution": [H, W], "input": variant, "codec": codec,
                       "setting": f"quality {args.jpeg_quality}" if codec == "jpeg" else f"level {args.png_level}",
                       "format": fmt, "frames": len(imgs), "raw_bytes": raw_bytes,
                       "bytes_per_frame": statistics.median(sizes), "bytes_min": min(sizes), "bytes_max": max(sizes),
                       "ratio": raw_bytes / statistics.median(sizes),
                       "encode_ms": statistics.median(enc_ms), "decode_ms": statistics.median(dec_ms),
                       "psnr_db": None if any(p is None for p in psnr) else statistics.median(psnr),
                       "lossless": all(p is None for p in psnr)}
                rows.append(row)
                print(f"{H}x{W} {variant:>26} {codec:>4}: {row['bytes_per_frame'] / 1024:8.1f} KiB/frame "
                      f"(1:{row['ratio']:.1f}), encode {row['encode_ms']:.2f} ms, decode {row['decode_ms']:.2f} ms"
                      + ("" if row["lossless"] else f", PSNR {row['psnr_db']:.1f} dB"))
        # depth: image_transport's compressedDepth (PNG of 16UC1 mm, or of quantised inverse depth)
        for enc in ("16UC1", "32FC1"):
            sizes, dec_ms = [], []
            for d in depths:
                if enc == "16UC1":  # millimetres; no return (sky, beyond 65.535 m) is 0, as a camera sends it
                    mm = d.astype(np.float64) * 1000.0
                    img16 = np.where(np.isfinite(mm) & (mm > 0) & (mm < 65535), np.round(mm), 0).astype(np.uint16)
                    head = struct.pack("<iff", 0, 0.0, 0.0)
                else:
                    qa = np.float32(100.0 * 101.0)
                    qb = np.float32(1.0 - qa / np.float32(10.0))
                    with np.errstate(divide="ignore", invalid="ignore"):
                        inv = np.where(np.isfinite(d) & (d > 0) & (d < 10.0), qa / d + qb, 0)
                    img16 = inv.astype(np.uint16)
                    head = struct.pack("<iff", 0, float(qa), float(qb))
                ok, buf = cv2.imencode(".png", img16, [cv2.IMWRITE_PNG_COMPRESSION, args.png_level])
                msg = SimpleNamespace(format=f"{enc}; compressedDepth png",
                                      data=np.frombuffer(head + buf.tobytes(), np.uint8))
                sizes.append(int(msg.data.size))
                dec_ms.append(_median_ms(lambda: cz.compressed_depth_to_array(msg), args.repeats))
            raw = H * W * (2 if enc == "16UC1" else 4)
            row = {"resolution": [H, W], "input": f"depth {enc}", "codec": "compressedDepth png",
                   "setting": f"level {args.png_level}", "format": f"{enc}; compressedDepth png", "frames": len(depths),
                   "raw_bytes": raw, "bytes_per_frame": statistics.median(sizes), "bytes_min": min(sizes),
                   "bytes_max": max(sizes), "ratio": raw / statistics.median(sizes), "encode_ms": None,
                   "decode_ms": statistics.median(dec_ms), "psnr_db": None, "lossless": enc == "16UC1"}
            rows.append(row)
            print(f"{H}x{W} {'depth ' + enc:>26} cDep: {row['bytes_per_frame'] / 1024:8.1f} KiB/frame "
                  f"(1:{row['ratio']:.1f}), decode {row['decode_ms']:.2f} ms")
    result = {
        "what": "bytes per frame and encode/decode ms of the node's CompressedImage paths (mirage_ros.ros.compressed)",
        "frames": "synthetic room + outdoor renders; the noisy variant adds Gaussian noise (nearer a real camera)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads()},
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "repeats": args.repeats, "rows": rows,
    }
    path = Path(args.json)
    write_json(path, result)
    pyplot = viz.plt()
    col = [r for r in rows if r["codec"] in ("jpeg", "png")]
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 3.8))
    labels = [f"{r['resolution'][0]}x{r['resolution'][1]} "
              f"{r['codec']}{' +noise' if 'noise' in r['input'] else ''}" for r in col]
    axes[0].barh(labels, [r["bytes_per_frame"] / 1024 for r in col],
                 color=["C0" if r["codec"] == "jpeg" else "C1" for r in col])
    axes[0].set(xlabel="KiB per frame", xscale="log", title="size (raw rgb8: " + ", ".join(
        f"{h}x{w} {h * w * 3 / 1024:.0f} KiB" for h, w in resolutions) + ")")
    y = np.arange(len(col))
    axes[1].barh(y - 0.2, [r["encode_ms"] for r in col], height=0.4, label="encode")
    axes[1].barh(y + 0.2, [r["decode_ms"] for r in col], height=0.4, label="decode")
    axes[1].set_yticks(y, labels)
    axes[1].set(xlabel="ms per frame (CPU)", title="time")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    pyplot.close(fig)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
