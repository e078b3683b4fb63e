"""The CLI end to end on small settings: files exist and say what they should."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mirage_ros.cli import main
from mirage_ros.viz import read_ply


@pytest.mark.slow
def test_help_is_fast_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "mirage_ros", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "demo" in out.stdout and "bench" in out.stdout
    # heavy modules stay unimported for --help
    code = ("import sys; from mirage_ros.cli import build_parser; build_parser(); "
            "print('diffusers' in sys.modules, 'rclpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False False"


@pytest.mark.slow
def test_demo_imagines_with_the_shipped_model_by_default(tmp_path, capsys):
    """The README's first command: the shipped model imagines the loop from the first frame; every
    view has ground truth | readout | imagined | visibility, and the run says which model ran."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--chunks", "2", "--steps", "3"]) == 0
    said = capsys.readouterr().out
    assert "mirage_small" in said and "first frame only" in said
    stats = json.loads((out / "stats.json").read_text())
    assert stats["backend"] == "shipped" and stats["resolution"] == [128, 224]
    frames = [i for c in stats["chunks"] for i in c["frames"]]
    assert frames == list(range(1, 17))  # 2 chunks x 8 new views, one global index
    assert all(np.isfinite(c["psnr_imagined"]).all() for c in stats["chunks"])
    import av

    with av.open(str(out / "readouts.mp4")) as f:
        s = f.streams.video[0]
        assert s.codec_context.name == "h264" and s.width == 4 * 224 and s.frames == 16  # 4 panels per view
    for name in ("readouts.png", "masks.png", "memory.ply", "memory_growth.png", "demo_bag"):
        assert (out / name).exists(), name


def test_demo_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--backend", "readout", "--out", str(out), "--resolution", "64x112", "--chunks", "2",
                 "--chunk-size", "3", "--no-bag"]) == 0
    said = capsys.readouterr().out
    assert "NO generative model" in said
    for name in ("readouts.png", "readouts.mp4", "masks.png", "memory.ply", "stats.json", "memory_growth.png"):
        assert (out / name).stat().st_size > 0, name
    stats = json.loads((out / "stats.json").read_text())
    assert len(stats["chunks"]) == 2 and stats["memory_points"] > 0
    assert 0 < stats["mean_coverage"] <= 1
    pts, cols = read_ply(out / "memory.ply")
    assert pts.shape == (stats["memory_points"], 3) and cols.shape == pts.shape and np.isfinite(pts).all()


@pytest.mark.slow
def test_bench_memory_small_writes_the_documented_keys(tmp_path):
    path = tmp_path / "bench.json"
    args = ["bench", "memory", "--json", str(path), "--resolution", "64x112", "--revisit-resolution", "64x112",
            "--chunks", "2", "--chunk-size", "3", "--rgb-encoder", "thumbnail", "--scaling", "2000,8000", "--repeats",
            "1"]
    assert main(args) == 0
    r = json.loads(path.read_text())
    for key in ("resolution", "latent_hw", "chunks", "read_speedup_median", "memory_ratio_final", "scaling",
                "out_of_view_readout_ratio", "revisit_growth_mib_per_chunk", "revisit_new_point_fraction"):
        assert key in r, key
    assert set(r["chunks"][0]) >= {"chunk", "latent_read_ms_per_frame", "rgb_read_ms_per_frame", "latent_cache_mib",
                                   "rgb_cache_mib"}
    assert set(r["scaling"][0]) >= {"points", "readout_ms", "xyz_pass_ms", "sort_baseline_ms"}
    assert path.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_bench_perception_small_writes_the_documented_keys(tmp_path):
    path = tmp_path / "perc.json"
    assert main(["bench", "perception", "--json", str(path), "--resolution", "128x224", "--frames", "2",
                 "--repeats", "1", "--da3-res", "56"]) == 0
    r = json.loads(path.read_text())
    kinds = {p["name"]: p["kind"] for p in r["providers"]}
    assert {"simulator", "memory", "da3",
            "labels"} <= set(kinds) and kinds["da3"] == "depth" and kinds["labels"] == "mask"
    assert all(p["ms_per_frame"] is not None and p["ms_per_frame"] > 0 for p in r["providers"])
    sa = r["scale_alignment"]
    assert abs(sa["recovered_scale"] - sa["true_scale"]) / sa["true_scale"] < 0.05


@pytest.mark.slow
def test_house_rules_for_imports():
    """docs/library.md: mirage_ros.ros is the only place that imports rclpy; benchmarks share helpers
    through mirage_ros.util, not through the demo command."""
    import ast
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "mirage_ros"
    rclpy_outside, demo_users = [], []
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(pkg)
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            for n in names:
                if (n == "rclpy" or n.startswith("rclpy.")) and rel.parts[0] != "ros":
                    rclpy_outside.append(str(rel))
                if rel.parts[0] == "bench" and n in ("..demo", "mirage_ros.demo"):
                    demo_users.append(str(rel))
    assert not rclpy_outside, f"rclpy imported outside mirage_ros/ros: {sorted(set(rclpy_outside))}"
    assert not demo_users, f"benchmarks import the demo command: {sorted(set(demo_users))}"


def test_benchmarks_write_strict_json(tmp_path):
    from mirage_ros.util import write_json

    def refuse(token):
        raise ValueError(f"bare {token}")

    p = write_json(tmp_path / "r.json", {"ratio": float("nan")})
    assert json.loads(p.read_text(), parse_constant=refuse) == {"ratio": None}
    import ast
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "mirage_ros" / "bench"
    for f in sorted(bench.glob("*.py")):  # every JSON file a benchmark writes goes through write_json
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "write_text":
                src = ast.unparse(node)
                assert "json" not in src, f"{f.name}: {src} (use mirage_ros.util.write_json)"


@pytest.mark.slow
def test_openmp_spin_default_is_set_before_torch_and_user_choices_win():
    import os

    code = "import os, mirage_ros, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    def run(env):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=120).stdout.strip()

    assert run(base) == "10000"
    assert run(dict(base, GOMP_SPINCOUNT="5")) == "5"
    assert run(dict(base, OMP_WAIT_POLICY="ACTIVE")) == "None"
