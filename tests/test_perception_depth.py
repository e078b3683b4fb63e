"""Depth providers and scale alignment, against the synthetic scene's exact depth."""
import json

import numpy as np
import pytest
import torch

from mirage_ros import sim
from mirage_ros.memory import LatentSpatialMemory, downsample_depth
from mirage_ros.perception import (
    AlignedDepth,
    DA3Depth,
    MemoryDepth,
    SimulatorDepth,
    align_depth,
    decode_depth_image,
    make_depth_provider,
)
from mirage_ros.world_model.codec import ThumbnailCodec, images_to_tensor


@pytest.fixture(scope="module")
def room():
    scene = sim.make_scene("room", seed=0)
    poses = sim.scene_trajectory(scene, "loop", 40)
    cams = [sim.default_camera(128, 224, world_to_camera=E) for E in poses]
    frames = [sim.render(scene, c) for c in cams[:9]]  # the tests use frames 0-8 (rendering is the slow part)
    return scene, cams, frames


def build_memory(cams, frames, idx, depth_fn=lambda i, f: f.depth):
    codec, mem = ThumbnailCodec(), LatentSpatialMemory()
    for i in idx:
        mem.insert(codec.encode(images_to_tensor(frames[i].rgb))[0], depth_fn(i, frames[i]), cams[i])
    return mem


def test_decode_depth_image_encodings_and_invalid_values():
    f = np.array([[1.5, 0.0], [np.nan, np.inf]], np.float32)
    d = decode_depth_image(f, "32FC1")
    assert d[0, 0] == 1.5 and np.isnan(d[0, 1]) and np.isnan(d[1]).all()
    mm = np.array([[1500, 0], [65535, 20]], np.uint16)
    d = decode_depth_image(mm, "16UC1")
    assert np.allclose(d[0, 0], 1.5) and np.isnan(d[0, 1]) and np.isclose(d[1, 0], 65.535) and np.isclose(d[1, 1], 0.02)
    with pytest.raises(ValueError, match="encoding"):
        decode_depth_image(f, "8UC1")
    with pytest.raises(ValueError, match="16UC1 needs uint16"):
        decode_depth_image(f, "16UC1")
    with pytest.raises(ValueError, match="depth: expected a single-channel"):
        decode_depth_image(np.zeros((2, 2, 3), np.float32), "32FC1")


def test_simulator_depth_marks_sky_invalid():
    scene = sim.make_scene("outdoor", seed=0)
    cam = sim.default_camera(64, 112, world_to_camera=sim.scene_trajectory(scene, "loop", 5)[0])
    f = sim.render(scene, cam)
    mm = np.where(np.isfinite(f.depth), np.round(f.depth * 1000), 0).clip(0, 65535).astype(np.uint16)
    provider = SimulatorDepth(lambda c, i: (mm, "16UC1"))
    depth, conf = provider.estimate(f.rgb[None], [cam])
    sky = f.labels == sim.SKY
    assert torch.isnan(depth[0][torch.from_numpy(sky)]).all() and (conf[0][torch.from_numpy(sky)] == 0).all()
    near = torch.from_numpy(~sky & (f.depth < 60))
    assert torch.allclose(depth[0][near], torch.from_numpy(f.depth)[near], atol=6e-4)


@pytest.mark.slow
def test_memory_depth_is_the_readout_depth(room):
    scene, cams, frames = room
    mem = build_memory(cams, frames, [0])
    depth, conf = MemoryDepth().estimate(frames[1].rgb[None], [cams[1]], memory=mem)
    r = mem.read(cams[1])
    assert depth.shape == (1, 8, 14)
    assert torch.equal(torch.isfinite(depth[0]), r.mask) and torch.equal(depth[0][r.mask], r.depth[r.mask])
    # where covered, it agrees with the true depth of frame 1 (same static surfaces)
    truth = downsample_depth(torch.from_numpy(frames[1].depth), 16)
    rel = ((depth[0] - truth).abs() / truth)[r.mask]
    assert rel.median() < 0.05
    with pytest.raises(ValueError, match="memory"):
        MemoryDepth().estimate(frames[1].rgb[None], [cams[1]])


def test_scale_alignment_recovers_known_factors_with_outliers(room):
    scene, cams, frames = room
    mem = build_memory(cams, frames, [0])
    ref = mem.read(cams[2]).depth
    true = torch.from_numpy(frames[2].depth)
    g = torch.Generator().manual_seed(0)
    for mode, pred, expect in (("scale", true / 2.5, (2.5, 0.0)), ("scale_shift", (true - 0.3) / 2.0, (2.0, 0.3))):
        noisy = pred.clone()
        bad = (torch.rand(8, 14, generator=g) < 0.1).repeat_interleave(16, 0).repeat_interleave(16, 1)
        noisy[bad] = noisy[bad] * 3.0  # 10 % of the cells grossly wrong
        aligned, res = align_depth(noisy, ref, mode=mode)
        assert res.ok and res.cells > 50
        if mode == "scale":
            assert abs(res.scale - expect[0]) / expect[0] < 0.02
        else:  # scale and shift trade off over a 2-4 m range: judge the aligned depth itself
            assert abs(res.scale - expect[0]) / expect[0] < 0.1 and abs(res.shift - expect[1]) < 0.2
        good = ~bad & torch.isfinite(true)
        assert ((aligned - true).abs() / true)[good].median() < 0.02
        assert res.residual < 0.05 < res.residual_before
    _, res = align_depth(true, torch.full((8, 14), float("inf")))
    assert not res.ok and res.cells == 0


def test_unaligned_monocular_depth_would_corrupt_the_memory(room):
    scene, cams, frames = room
    first = [0, 1, 2]
    factor = 2.5  # a monocular model off by this scale
    def wrong(i, f):
        return f.depth / factor if i not in first else f.depth

    provider = AlignedDepth(SimulatorDepth(lambda c, i: frames[cams.index(c)].depth / factor), mode="scale")
    later = [3, 4, 5]
    mem_ok = build_memory(cams, frames, first)
    mem_bad = build_memory(cams, frames, first)
    codec = ThumbnailCodec()
    added_ok = added_bad = 0
    for i in later:
        lat = codec.encode(images_to_tensor(frames[i].rgb))[0]
        d_al, _ = provider.estimate(frames[i].rgb[None], [cams[i]], memory=mem_ok)
        assert abs(provider.last_alignment[0].scale - factor) / factor < 0.02
        added_ok += mem_ok.insert(lat, d_al[0], cams[i])
        added_bad += mem_bad.insert(lat, wrong(i, frames[i]), cams[i])
    # aligned: the later frames mostly re-observe stored surface; unaligned: a shrunken ghost room
    assert added_bad > 3 * max(1, added_ok)
    probe = cams[8]
    truth = downsample_depth(torch.from_numpy(frames[8].depth), 16)
    def err(m):
        r = m.read(probe)
        return float(((r.depth - truth).abs() / truth)[r.mask].median())

    assert err(mem_ok) < 0.05 and err(mem_bad) > 0.3


@pytest.mark.slow
def test_da3_random_weights_shapes_and_safetensors_roundtrip(tmp_path):
    from safetensors.torch import save_file

    scene = sim.make_scene("room", seed=1)
    cams = [sim.default_camera(48, 80, world_to_camera=E) for E in sim.scene_trajectory(scene, "loop", 3)[:2]]
    frames = np.stack([sim.render(scene, c).rgb for c in cams])
    p = make_depth_provider("da3", preset="da3-small", random_weights=True, process_res=84)
    assert p._net is None  # lazy: nothing built before the first frame
    depth, conf = p.estimate(frames, cams)
    assert depth.shape == (2, 48, 80) and conf.shape == (2, 48, 80)
    assert torch.isfinite(depth).any() and (depth[torch.isfinite(depth)] > 0).all()
    folder = tmp_path / "da3"
    folder.mkdir()
    save_file({k: v.clone().contiguous() for k, v in p.net.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"preset": "da3-small"}))
    q = make_depth_provider("da3", weights=str(folder), process_res=84)
    d2, _ = q.estimate(frames, cams)
    assert torch.allclose(d2, depth, equal_nan=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DA3Depth.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        DA3Depth.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        DA3Depth.from_pretrained(tmp_path / "empty", preset="da3-small")
    with pytest.raises(ValueError, match="unknown provider"):
        make_depth_provider("lidar")
