"""The shipped small world model: its files, a closed loop where the memory must pay off, bad files.

The model lives in ``mirage_ros/models/mirage_small`` (trained here with ``mirage train``; see its
MODEL_CARD.md). These tests run it on CPU at its own resolution (128x224) with a few sampler steps.
"""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from mirage_ros.world_model.backend import SHIPPED_MODEL, make_backend
from mirage_ros.world_model.checkpoints import CheckpointError
from mirage_ros.world_model.model import MirageWorldModel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_files_are_safetensors_under_20_mb_matching_their_recorded_hashes():
    from safetensors import safe_open

    recorded = {}
    for line in (SHIPPED_MODEL / "weights.sha256").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        recorded[name.strip()] = digest
    files = sorted(str(p.relative_to(SHIPPED_MODEL)) for p in SHIPPED_MODEL.rglob("*.safetensors"))
    assert files and sorted(recorded) == files
    for name in files:
        path = SHIPPED_MODEL / name
        assert path.stat().st_size <= 20 * 2**20, name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded[name], f"{name} differs from weights.sha256"
        with safe_open(str(path), framework="pt") as f:  # safetensors only: nothing is unpickled
            assert len(list(f.keys())) > 0
    for doc in ("MODEL_CARD.md", "data_recipe.json", "training_log.jsonl.gz", "loss.png", "model_index.json"):
        assert (SHIPPED_MODEL / doc).is_file(), doc
    index = json.loads((SHIPPED_MODEL / "model_index.json").read_text())
    assert index["format"] == "mirage_ros.world_model" and index["resolution"] == [128, 224]
    recipe = json.loads((SHIPPED_MODEL / "data_recipe.json").read_text())
    assert recipe["seeds"]["held_out"]["first"] == 900_000 and recipe["memory"] == "latent"


@pytest.mark.slow
def test_the_memory_pays_off_on_a_held_out_closed_loop():
    """One held-out seed, a 25-frame closed loop from the first frame only: on the cells the first
    observation covers, the model with its latent memory is closer to the truth than the same model
    with the readout zeroed, by a margin far above run-to-run float noise."""
    from mirage_ros.bench.evaluation import region_metrics
    from mirage_ros.bench.imagine import _readout_frames, _rollout, _scene_loop
    from mirage_ros.training.seeds import held_out_seeds

    model = MirageWorldModel.from_pretrained(SHIPPED_MODEL, device="cpu")
    model.transformer.eval()
    seed = held_out_seeds(1)[0]
    _, gt, depth, labels, cams = _scene_loop(seed, 25, 128, 224)
    _, vis = _readout_frames(model.codec, gt[0], cams, depth, labels)
    latent = _rollout(model, "latent", "oracle", gt[0], cams, depth, labels, None)
    none = _rollout(model, "none", "oracle", gt[0], cams, depth, labels, None)
    a = region_metrics(gt, latent, vis, model.codec.stride)
    b = region_metrics(gt, none, vis, model.codec.stride)
    assert a["revisited_psnr"] > b["revisited_psnr"] + 1.0, (a, b)
    assert np.isfinite(a["never_seen_psnr"]) and a["never_seen_psnr"] > 10.0


def test_corrupt_or_mismatched_weights_are_refused_with_the_file_named(tmp_path):
    bad = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, bad)
    weights = bad / "transformer" / "backbone" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 4096])  # truncated
    with pytest.raises(CheckpointError, match=str(weights.parent)):
        MirageWorldModel.from_pretrained(bad, device="cpu")
    with pytest.raises(CheckpointError):
        make_backend("shipped", weights=str(bad))
    shutil.rmtree(bad)
    shutil.copytree(SHIPPED_MODEL, bad)
    cfg = bad / "transformer" / "side_branch" / "config.json"
    c = json.loads(cfg.read_text())
    c["num_attention_heads"] = 2 * c["num_attention_heads"]  # a branch that does not fit the backbone
    cfg.write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match="side_branch"):
        MirageWorldModel.from_pretrained(bad, device="cpu")
    with pytest.raises(FileNotFoundError, match="readout"):
        make_backend("shipped", weights=str(tmp_path / "nowhere"))


def test_shipped_backend_imagines_at_any_requested_size():
    """Observed at 256x448, imagined at 256x448: the model runs at 128x224 and says so."""
    from mirage_ros import sim

    b = make_backend("shipped", steps=2)
    assert b.resolution == (128, 224) and "mirage_small" in b.description
    scene = sim.make_scene("room", 1)
    cams = [sim.default_camera(256, 448).with_pose(E) for E in sim.scene_trajectory(scene, "loop", 10)]
    f = sim.render(scene, cams[0])
    b.observe(f.rgb, f.depth, cams[0], exclude=f.labels != 0)
    n = b.memory.num_points
    chunks = list(b.imagine(cams[1:]))
    assert sum(len(c.frame_indices) for c in chunks) == 9 and chunks[0].frames.shape[1:] == (256, 448, 3)
    assert b.memory.num_points == n  # imagined content never enters the node's memory
    assert torch.isfinite(chunks[0].readouts).all()
