"""Alignment to the memory at the winning points' exact projections (no latent-grid bias)."""
import numpy as np
import pytest
import torch

from mirage_ros import sim
from mirage_ros.memory import LatentSpatialMemory
from mirage_ros.perception import AlignedDepth, SimulatorDepth, align_depth, align_to_memory
from mirage_ros.world_model.codec import ThumbnailCodec, images_to_tensor


@pytest.fixture(scope="module", params=["outdoor", "room"])
def scene_views(request):
    """Frame 0 in the memory (moving object and sky excluded), frames 1-3 to align; truth depth
    of frames 1-3 with non-static pixels set invalid."""
    scene = sim.make_scene(request.param, seed=0, moving_object=True)
    cams = [sim.default_camera(128, 224, world_to_camera=E) for E in sim.scene_trajectory(scene, "loop", 45)[:4]]
    frames = [sim.render(scene, c, t=float(i)) for i, c in enumerate(cams)]
    mem = LatentSpatialMemory()
    mem.insert(ThumbnailCodec().encode(images_to_tensor(frames[0].rgb))[0], frames[0].depth, cams[0],
               exclude=frames[0].labels != sim.STATIC)
    truths = []
    for f in frames[1:]:
        t = torch.from_numpy(f.depth).clone()
        t[torch.from_numpy(f.labels != sim.STATIC)] = float("nan")
        truths.append(t)
    return mem, cams[1:], truths


def test_align_to_memory_recovers_scale_and_shift_exactly(scene_views):
    mem, cams, truths = scene_views
    g = torch.Generator().manual_seed(1)
    for cam, truth in zip(cams, truths):
        aligned, res = align_to_memory(truth / 2.5, mem, cam)
        assert res.ok and res.reference == "points" and res.cells > 25
        assert abs(res.scale - 2.5) < 2.5e-3 and res.residual < 1e-3 < 0.5 < res.residual_before
        ok = torch.isfinite(truth)
        assert ((aligned[ok] - truth[ok]).abs() / truth[ok]).median() < 1e-3
        # the grid pairing of the same data is never better (it is biased on slanted surfaces)
        _, grid = align_depth(truth / 2.5, mem.read(cam).depth)
        assert abs(res.scale - 2.5) <= abs(grid.scale - 2.5) + 1e-6
        # scale and shift, with 10 % of the 16x16 blocks grossly wrong
        pred = (truth - 0.4) / 1.7
        h, w = pred.shape[0] // 16, pred.shape[1] // 16
        bad = (torch.rand(h, w, generator=g) < 0.1).repeat_interleave(16, 0).repeat_interleave(16, 1)
        pred[bad] *= 4.0
        _, res = align_to_memory(pred, mem, cam, mode="scale_shift")
        assert abs(res.scale - 1.7) < 0.02 and abs(res.shift - 0.4) < 0.05


def test_align_to_memory_latent_grid_input_and_too_little_overlap(scene_views):
    mem, cams, truths = scene_views
    from mirage_ros.memory import downsample_depth

    small = downsample_depth(truths[0], 16) / 2.0
    _, res = align_to_memory(small, mem, cams[0])
    assert res.reference == "cells" and abs(res.scale - 2.0) < 0.05
    empty = LatentSpatialMemory()
    same, res = align_to_memory(truths[0] / 2.0, empty, cams[0])
    assert not res.ok and res.cells == 0
    torch.testing.assert_close(same, truths[0] / 2.0, equal_nan=True)


def test_aligned_provider_uses_the_points(scene_views):
    mem, cams, truths = scene_views
    p = AlignedDepth(SimulatorDepth(lambda c, i: (truths[i] / 3.0).numpy().astype(np.float32)), mode="scale")
    rgb = np.zeros((len(cams), cams[0].height, cams[0].width, 3), np.uint8)
    depth, _ = p.estimate(rgb, cams, memory=mem)
    assert [r.reference for r in p.last_alignment] == ["points"] * len(cams)
    assert all(abs(r.scale - 3.0) < 3e-3 for r in p.last_alignment)
    ok = torch.isfinite(torch.stack(truths))
    assert ((depth[ok] - torch.stack(truths)[ok]).abs() / torch.stack(truths)[ok]).max() < 5e-3
