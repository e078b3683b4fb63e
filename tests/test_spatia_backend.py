"""backend spatia with the toy weights of tests/fixtures/spatia_toy (Spatia's key layout): rounds, LoRA
toggle, references, the RGB point cloud as memory, the demo and the node's core."""
from pathlib import Path

import numpy as np
import pytest
import torch

from mirage_ros import sim
from mirage_ros.world_model.backend import make_backend

FX = Path(__file__).resolve().parent / "fixtures" / "spatia_toy"
H, W = 64, 96
TOY = dict(weights=str(FX / "wan"), side_branch=str(FX / "spatia"), resolution=(H, W), rounds=(21, 17, 9), steps=1)


@pytest.fixture(scope="module")
def loop():
    scene = sim.make_scene("room", 0)
    poses = sim.scene_trajectory(scene, "loop", 40)
    cams = [sim.default_camera(H, W).with_pose(E) for E in poses]
    return scene, poses, cams


@pytest.mark.slow
def test_rounds_lora_references_and_memory(loop, one_thread):
    """Four rounds along 39 cameras: round 0 (LoRA off, first frame only), then rounds of 17 frames with 9
    history frames (LoRA on, references from every 4th earlier frame, one per 12th camera); every requested
    frame once; the imagined frames leave the cache as it was unless keep_imagined."""
    scene, poses, cams = loop
    oracle = sim.SceneOracle(scene, poses)
    be = make_backend("spatia", **TOY, depth=oracle.depth_provider(), masks=oracle.mask_provider())
    assert be.model.layout == "spatia" and "layout spatia" in be.description
    plan = be.round_plan(39)
    assert [(p["start"], p["end"], p["frames"], p["lora"]) for p in plan] == [
        (0, 21, 21, False), (12, 29, 17, True), (20, 37, 17, True), (28, 40, 17, True)]
    assert [p["voxel"] for p in plan] == pytest.approx([0.01, 0.015, 0.02, 0.025])
    f0 = sim.render(scene, cams[0], 0.0)
    n0 = be.observe(f0.rgb, f0.depth, cams[0])
    assert n0 > 0 and be.memory.num_points == n0
    states = []
    orig = be.model.set_lora
    be.model.set_lora = lambda on: (states.append(on), orig(on))[1]
    chunks = list(be.imagine(cams[1:40]))
    assert states == [False, True, True, True]
    assert sum((c.frame_indices for c in chunks), []) == list(range(39))
    assert chunks[0].references == [] and chunks[1].references and all(i < 11 for i in chunks[1].references)
    assert -1 in chunks[1].references  # the observed frame is a candidate (Spatia's frame 0)
    c = chunks[1]
    assert c.frames.shape == (8, H, W, 3) and c.renders.shape == (8, H, W, 3) and c.masks.shape == (8, 4, 6)
    assert c.readouts.shape == (8, 48, 4, 6) and {"readout", "references", "denoise", "decode",
                                                  "update"} <= set(c.timings)
    assert be.memory.num_points == n0  # imagined content stays out of the cache by default
    # the render the model saw is the cache's: black where it holds nothing, the hole mask says where
    assert (c.renders[~np.repeat(np.repeat(c.masks, 16, 1), 16, 2)] < 128).mean() > 0.5
    be.keep_imagined = True
    list(be.imagine(cams[1:25]))
    assert be.memory.num_points > n0  # simulator depth of every 6th new frame went in


def test_candidate_scores_and_colours(loop, one_thread):
    scene, _, cams = loop
    be = make_backend("spatia", **TOY)
    f0 = sim.render(scene, cams[0], 0.0)
    be.observe(f0.rgb, f0.depth, cams[0])
    s = be.candidate_scores([cams[:2], cams[18:20]])
    assert s[0]["known"] > 0.9 and s[0]["known"] > s[1]["known"]
    col = be.point_colors()
    assert col.dtype == np.uint8 and col.shape == (be.memory.num_points, 3)


def test_memory_save_load_round_trip(tmp_path, loop, one_thread):
    from mirage_ros.memory import MemoryFileError

    scene, _, cams = loop
    be = make_backend("spatia", **TOY)
    f0 = sim.render(scene, cams[0], 0.0)
    be.observe(f0.rgb, f0.depth, cams[0])
    be.memory.save(tmp_path / "m.safetensors")
    other = make_backend("spatia", **TOY)
    other.memory.load(tmp_path / "m.safetensors")
    assert torch.equal(other.memory.points, be.memory.points) and torch.equal(other.memory.colors, be.memory.colors)
    latent = make_backend("readout")
    latent.memory.save(tmp_path / "latent.safetensors")
    with pytest.raises(MemoryFileError):
        other.memory.load(tmp_path / "latent.safetensors")  # a latent memory is not a point cloud: refused
    assert other.memory.num_points == be.memory.num_points  # and nothing changed


def test_a_spatia_branch_is_refused_by_the_mirage_backend_and_options_are_checked(one_thread):
    """Spatia's VACE file loads as a 96-channel branch like the official Mirage one; the mirage backend would
    feed it readout + all-ones latents: it tells the layouts apart by the block spacing and refuses."""
    from mirage_ros.world_model.backend import _refuse_spatia_branch
    from mirage_ros.world_model.model import MirageWorldModel

    vace = FX / "spatia" / "vace.safetensors"
    m = MirageWorldModel.from_pretrained(FX / "wan", side_branch=vace, layout="official", device="cpu",
                                         dtype=torch.float32, text_encoder=False)
    assert m.layout == "official" and list(m.transformer.side_branch.config.layers) == [0, 4]
    with pytest.raises(ValueError, match="use backend spatia"):
        _refuse_spatia_branch(m, vace)
    with pytest.raises(ValueError, match="use backend spatia"):
        make_backend("mirage", layout="spatia")
    with pytest.raises(ValueError, match="unknown option"):
        make_backend("spatia", **TOY, chunk_latents=9)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        make_backend("spatia", **{**TOY, "rounds": (20, 17, 9)})


@pytest.mark.slow
def test_demo_runs_the_spatia_backend(tmp_path, one_thread):
    from mirage_ros.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--backend", "spatia", "--weights", str(FX / "wan"), "--side-branch", str(FX / "spatia"),
                 "--resolution", f"{H}x{W}", "--rounds", "21,17,9", "--steps", "1", "--chunks", "3", "--chunk-size",
                 "8",
                 "--no-bag", "--out", str(out)]) == 0
    import json

    stats = json.loads((out / "stats.json").read_text())
    assert stats["backend"] == "spatia" and sum(len(c["frames"]) for c in stats["chunks"]) == 24
    assert (out / "readouts.png").is_file() and (out / "memory.ply").is_file()


def test_node_core_serves_the_spatia_backend(one_thread):
    from mirage_ros.ros import convert as cv
    from mirage_ros.ros.bag import RosbagsTypes
    from mirage_ros.ros.core import MirageCore

    B = RosbagsTypes()
    s = sim.make_scene("room", 0)
    cams = [sim.default_camera(64, 128).with_pose(E) for E in sim.scene_trajectory(s, "loop", 12)]
    f0 = sim.render(s, cams[0])
    core = MirageCore({"backend": "spatia", "weights_dir": str(FX / "wan"), "mirage.side_branch": str(FX / "spatia"),
                       "spatia.resolution": [64, 96], "spatia.rounds": [13, 9, 5], "steps": 1})
    core.configure()
    assert core.backend.name == "spatia" and core.backend.generative
    t = 10**9
    core.intake.on_camera_info(cv.camera_info_msg(B, cams[0].K.numpy(), 64, 128, t, "c"))
    core.intake.on_pose(cv.pose_stamped_msg(B, cams[0].camera_to_world.numpy(), t, "map"))
    core.intake.on_depth(cv.image_msg(B, f0.depth, t, "c", "32FC1"))
    assert core.observe(core.intake.on_image(cv.image_msg(B, f0.rgb, t, "c"))) > 0
    T = np.stack([c.camera_to_world.numpy() for c in cams[1:12]])
    req = core.prepare(cv.path_msg(B, T, [t + i for i in range(11)], "map"))
    chunks = list(core.imagine(req))
    assert sum(len(c.frame_indices) for c in chunks) == 11 and chunks[0].frames.shape[1:] == (64, 128, 3)
    from mirage_ros.ros.params import ParamError

    with pytest.raises(ParamError, match="spatia.rounds"):
        MirageCore({"backend": "spatia", "spatia.rounds": [13, 9]})


@pytest.mark.slow
def test_gpu_check_skips_without_cuda_and_its_dry_run_runs(tmp_path):
    """The prepared GPU check: here (no CUDA) the script says why and exits 0; its benchmark runs the same
    code at toy size on the CPU (both layouts), so it is known to run before a GPU session spends minutes."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    if not torch.cuda.is_available():
        r = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                           timeout=120,
                           env={**__import__("os").environ, "PYTHON": sys.executable})
        assert r.returncode == 0 and "skipped, no CUDA device" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "-m", "mirage_ros.bench.gpu", "--dry-run", "--steps", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=str(root))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["layouts"]) == {"mirage", "spatia"}
    sp = res["layouts"]["spatia"]
    assert sp["new_frames"] == 8 and sp["references"] == 7 and sp["seconds_per_frame"] > 0 and sp["readout_s"] > 0
