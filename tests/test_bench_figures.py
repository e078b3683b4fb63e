"""`mirage bench imagine --figures-only`: the frames figure is built from the written PNGs, one row
per (loop, arm), one column per chunk, the first loop of each scene kind, pixels copied unchanged."""
import argparse
import json

import numpy as np
import pytest

from mirage_ros.bench import imagine
from mirage_ros.viz import write_png

H, W, FRAMES = 48, 96, 17  # two chunks of 8 after the observation


def _fake_run(tmp_path):
    out = tmp_path / "frames"
    rng = np.random.default_rng(0)
    seeds = [(900000, "outdoor"), (900001, "outdoor"), (900002, "room")]
    arms = ["latent", "none", "readout", "latent_nomask"]
    pixels = {}
    for seed, _ in seeds:
        for name in ["gt"] + arms:
            for i in range(FRAMES):
                img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                (out / name / str(seed)).mkdir(parents=True, exist_ok=True)
                write_png(out / name / str(seed) / f"{i:04d}.png", img)
                pixels[(name, seed, i)] = img
    row = {"final_frame_psnr": 20.0, "revisited_psnr": 20.0, "never_seen_psnr": 13.0, "final_frame_ssim": 0.5,
           "blockiness16_all": 2.0}
    per_arm = {a: [dict(row, seed=s, scene=k) for s, k in seeds] for a in arms}
    result = {"seeds": [s for s, _ in seeds], "frames_per_loop": FRAMES, "per_seed": {"oracle": per_arm},
              "arms": {a: dict(row, cross_loop_correlation_never_seen=0.1) for a in arms},
              "arms_memory_depth": {}, "ground_truth": {"cross_loop_correlation_never_seen": 0.05}}
    path = tmp_path / "bench_imagine.json"
    path.write_text(json.dumps(result))
    return path, out, pixels


def test_figures_only_redraws_from_the_written_frames(tmp_path):
    import cv2

    path, out, pixels = _fake_run(tmp_path)
    args = argparse.Namespace(threads=None, figures_only=True, json=str(path), out=str(out))
    assert imagine.run(args) == 0
    fig = cv2.cvtColor(cv2.imread(str(tmp_path / "bench_imagine_frames.png")), cv2.COLOR_BGR2RGB)
    # loops 900000 (first outdoor) and 900002 (first room); rows truth, latent, none, readout; columns 8, 16
    rows, cols, pad = 2 * 4, 2, 2
    assert fig.shape == (rows * (H + pad) - pad, cols * (W + pad) - pad, 3)
    names = ["gt", "latent", "none", "readout"]
    for r, (seed, name) in enumerate([(s, n) for s in (900000, 900002) for n in names]):
        for c, i in enumerate((8, 16)):
            tile = fig[r * (H + pad): r * (H + pad) + H, c * (W + pad): c * (W + pad) + W]
            # the label covers the top-left corner; the bottom rows are the frame's own pixels
            np.testing.assert_array_equal(tile[-8:], pixels[(name, seed, i)][-8:])
    assert (tmp_path / "bench_imagine.png").is_file()


def test_figures_only_without_a_run_names_what_is_missing(tmp_path):
    args = argparse.Namespace(threads=None, figures_only=True, json=str(tmp_path / "none.json"),
                              out=str(tmp_path / "frames"))
    with pytest.raises(SystemExit, match="no results at"):
        imagine.run(args)
    path, out, _ = _fake_run(tmp_path)
    args.json, args.out = str(path), str(tmp_path / "elsewhere")
    with pytest.raises(SystemExit, match="no frames under"):
        imagine.run(args)
