"""Issue 15 (hostile input, round 3): the attacks of the issue against MirageCore, the tf buffer,
memory forks and point colours, in this process, with peak RSS (psutil, sampled every 2 ms) and
wall time per attack. Writes strict JSON (stdout, or --json PATH).

    python scripts/measure_round3.py --json docs/results/hostile_round3.json
"""
from __future__ import annotations

import argparse
import gc
import struct
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

S = 1_000_000_000
MiB = 2**20


@contextmanager
def peak(out: dict, key: str):
    """out[key] = {peak_mib: peak RSS above the start, held_mib: RSS after, seconds}."""
    import psutil

    proc = psutil.Process()
    gc.collect()
    base = proc.memory_info().rss
    top = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            top[0] = max(top[0], proc.memory_info().rss)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        dt = time.perf_counter() - t0
        stop.set()
        th.join()
        top[0] = max(top[0], proc.memory_info().rss)
        out[key] = {"peak_mib": round((top[0] - base) / MiB, 1),
                    "held_mib": round((proc.memory_info().rss - base) / MiB, 1),
                    "seconds": round(dt, 4)}


def _types():
    from mirage_ros.ros.bag import RosbagsTypes

    return RosbagsTypes()


def _compressed(data: bytes, fmt: str, stamp: int = S):
    from mirage_ros.ros import convert as cv

    B = _types()
    return B.CompressedImage(header=cv.header_msg(B, stamp, "cam"), format=fmt, data=np.frombuffer(data, np.uint8))


def _jpeg_bomb(h: int, w: int) -> bytes:
    import cv2

    b = bytearray(cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))[1].tobytes())
    i = b.find(b"\xff\xc0")
    b[i + 5:i + 9] = bytes([h >> 8, h & 255, w >> 8, w & 255])
    sos = b.find(b"\xff\xda")
    return bytes(b[:sos + 2 + ((b[sos + 2] << 8) | b[sos + 3])]) + b"\x00" * 8 + b"\xff\xd9"


def _png(h: int, w: int, bits: int = 8) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bits, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bombs(res: dict) -> None:
    """Item 1: six bomb messages of each kind (a 16384^2 JPEG header of a few hundred bytes, a grey
    PNG, a 16-bit compressedDepth PNG) into the core, as the node's callbacks get them."""
    from mirage_ros.ros.core import MirageCore

    core = MirageCore({"backend": "readout", "input.image_transport": "compressed",
                       "input.depth_transport": "compressedDepth"})
    core.configure()
    jpg, png = _jpeg_bomb(16384, 16384), _png(16384, 16384)
    dep = struct.pack("<iff", 0, 0.0, 0.0) + _png(16384, 16384, 16)
    res["bomb_bytes"] = {"jpeg": len(jpg), "png": len(png), "compressedDepth": len(dep)}
    with peak(res, "item1_six_bombs_of_each_kind"):
        for k in range(6):
            core.intake.on_compressed_image(_compressed(jpg, "rgb8; jpeg compressed bgr8", S + k))
            core.intake.on_compressed_image(_compressed(png, "mono8; png compressed ", S + k))
            core.intake.on_compressed_depth(_compressed(dep, "16UC1; compressedDepth png", S + k))
    res["item1_six_bombs_of_each_kind"]["rejected"] = core.counts["inputs_rejected"]
    res["item1_last_rejection"] = core.last_rejection
    # the pairing queues: 30 UHD images whose partners never come (queue_size 30)
    rgb = np.zeros((2160, 3840, 3), np.uint8)
    with peak(res, "item1_30_uhd_images_without_partners"):
        for k in range(30):
            core.intake.sync.add("image", S + k, rgb.copy())
    res["item1_30_uhd_images_without_partners"]["queued_mib"] = round(core.intake.sync.nbytes / MiB, 1)
    res["item1_30_uhd_images_without_partners"]["bound_mib"] = core.p["sync.max_bytes"] / MiB


def huge_camera(res: dict) -> None:
    """Item 2: an 8192^2 camera_info / depth refused; a goal at the largest allowed frame size."""
    from mirage_ros import sim
    from mirage_ros.ros import convert as cv
    from mirage_ros.ros.core import MirageCore

    B = _types()
    core = MirageCore({"backend": "readout"})
    core.configure()
    big = sim.default_camera(8192, 8192)
    with peak(res, "item2_8192_camera_info_and_depth"):
        core.intake.on_camera_info(cv.camera_info_msg(B, big.K.numpy(), 8192, 8192, S, "cam"))
        core.intake.on_depth(B.Image(header=cv.header_msg(B, S, "cam"), height=8192, width=8192, encoding="32FC1",
                              is_bigendian=0, step=8192 * 4, data=np.zeros(16, np.uint8)))
    res["item2_refusal"] = core.last_rejection
    # the largest camera goals are imagined at (imagined.max_pixels = 1920 x 1080): a 2-pose goal
    H, W = 1072, 1920  # 1080 is not divisible by the stride 16
    scene = sim.make_scene("room", 0)
    cams = [sim.default_camera(H, W).with_pose(E) for E in sim.scene_trajectory(scene, "loop", 3)]
    fr = sim.render(scene, cams[0], 0.0)
    s = None
    for k, m in (("camera_info", cv.camera_info_msg(B, cams[0].K.numpy(), H, W, S, "cam")),
                 ("pose", cv.pose_stamped_msg(B, cams[0].camera_to_world.numpy(), S, "map")),
                 ("depth", cv.image_msg(B, fr.depth, S, "cam", "32FC1")), ("image", cv.image_msg(B, fr.rgb, S, "cam"))):
        s = getattr(core.intake, f"on_{k}")(m) or s
    core.observe(s)
    path = cv.path_msg(B, np.stack([c.camera_to_world.numpy() for c in cams[1:]]), [2 * S, 3 * S], "map")
    with peak(res, "item2_two_pose_goal_at_1920x1072_readout"):
        for _ in core.imagine(core.prepare(path)):
            pass


def colours(res: dict, n: int) -> None:
    """Item 4: point colours of an n-point memory with the shipped model's codec."""
    import torch

    from mirage_ros.world_model.codec import load_codec

    codec = load_codec(Path(__file__).resolve().parents[1] / "mirage_ros" / "models" / "mirage_small" / "codec")
    feats = torch.randn(n, codec.channels).to(torch.bfloat16)
    res["item4_memory_features_mib"] = round(feats.numel() * 2 / MiB, 1)
    with peak(res, f"item4_mean_rgb_{n}_points"):
        codec.mean_rgb(feats)


def tf_budget(res: dict) -> None:
    """Items 5 and 14: junk frames, a sample flood, a 100k-transform message, a 1,001-frame loop."""
    from mirage_ros.ros import outputs as out
    from mirage_ros.ros.tf_buffer import TfInputError, TransformBuffer, transforms_from_msg

    T = np.eye(4)
    b = TransformBuffer(max_bytes=64 * MiB)
    b.set_transform("base_link", "camera", 0, T, static=True)
    b.set_transform("map", "base_link", S, T)
    with peak(res, "item5_10100_junk_frames"):  # while the robot's own tf goes on (map -> base_link at 1/100)
        for i in range(10100):
            b.set_transform("map", f"junk{i}", S, T)
            if i % 100 == 0:
                b.set_transform("map", "base_link", S + i, T)
    try:
        b.lookup("map", "camera", 0)
        res["item5_camera_after_junk"] = "found"
    except Exception as exc:  # noqa: BLE001 - the outcome is recorded, whatever it is
        res["item5_camera_after_junk"] = f"{type(exc).__name__}: {exc}"
    b.set_transform("map", "late_camera", 2 * S, T)
    res["item5_new_frame_after_junk"] = "accepted" if "late_camera" in b.edges else "refused"
    with peak(res, "item5_500k_sample_flood"):
        for k in range(500_000):
            b.set_transform("map", f"j{k % 100}", 10 * S + k, T)
    res["item5_500k_sample_flood"].update(estimate_mib=round(b.nbytes / MiB, 1), budget_mib=64)
    B = _types()
    tr = [out.transform_stamped_msg(B, T, S, "map", f"f{i}") for i in range(100_000)]
    with peak(res, "item5_100k_transform_message"):
        transforms_from_msg(out.tf_msg(B, tr))
    loop = TransformBuffer()
    for i in range(1, 1001):
        try:
            loop.set_transform(f"f{i - 1}", f"f{i}", 0, T, static=True)
        except TfInputError:
            break
    try:
        loop.set_transform(f"f{max(int(c[1:]) for c in loop.edges)}", "f0", 0, T, static=True)
        res["item14_long_loop"] = "accepted"
    except TfInputError as exc:
        res["item14_long_loop"] = f"refused: {exc}"


def forks(res: dict, n: int) -> None:
    """Item 6: K = 4 and 16 forks of an n-point memory (48 bf16 channels), each taking one frame."""
    import torch

    from mirage_ros import sim
    from mirage_ros.memory import LatentSpatialMemory

    g = torch.Generator().manual_seed(0)
    mem = LatentSpatialMemory(channels=48, stride=16)
    mem.add_points(torch.rand(n, 3, generator=g) * 20 - 10, torch.randn(n, 48, generator=g))
    res["item6_memory_mib"] = round(mem.nbytes / MiB, 1)
    scene = sim.make_scene("room", 0)
    cam = sim.default_camera(128, 224).with_pose(sim.scene_trajectory(scene, "loop", 2)[0])
    fr = sim.render(scene, cam, 0.0)
    lat = torch.randn(48, 8, 14, generator=g)
    for K in (4, 16):
        with peak(res, f"item6_{K}_forks_each_inserting_a_frame"):
            fs = [mem.fork() for _ in range(K)]
            for f in fs:
                f.insert(lat, fr.depth, cam)
        del fs
        gc.collect()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--points", type=int, default=1_000_000, help="memory size for items 4 and 6")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    res: dict = {"points": a.points}
    for fn in (bombs, huge_camera, lambda r: colours(r, a.points), tf_budget, lambda r: forks(r, a.points)):
        fn(res)
        gc.collect()
    from mirage_ros.util import dumps_json, write_json

    if a.json:
        write_json(a.json, res)
    print(dumps_json(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
