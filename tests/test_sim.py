"""Synthetic scenes against analytic geometry."""
import math

import numpy as np
import pytest
import torch

from mirage_ros import sim
from mirage_ros.geometry import Camera, backproject, look_at
from mirage_ros.memory import LatentSpatialMemory
from mirage_ros.world_model.codec import ThumbnailCodec, images_to_tensor


def test_fronto_parallel_wall_has_constant_exact_z_depth():
    scene = sim.make_scene("room", seed=3)
    # room spans x in [-4, 4]; a camera at x = 1 looking along +x sees the wall x = 4 at z = 3 m,
    # for every pixel (z-depth, not ray length), unless furniture is in the way.
    K = torch.tensor([[200.0, 0, 61.3], [0, 180.0, 30.9], [0, 0, 1]], dtype=torch.float64)  # off-centre principal point
    cam = Camera(K, look_at([1.0, 0.0, 2.2], [2.0, 0.0, 2.2]), 64, 128)  # sees only the wall x = 4
    f = sim.render(scene, cam)
    wall = f.object_id == 0
    assert wall.mean() > 0.5
    assert np.allclose(f.depth[wall], 3.0, rtol=1e-5)
    # back-projecting those pixels lands on the plane x = 4
    pts = backproject(torch.from_numpy(f.depth).double(), cam.K, cam.world_to_camera)
    assert np.allclose(pts.numpy()[wall][:, 0], 4.0, atol=1e-4)


def test_outdoor_sky_is_infinite_and_above_the_horizon():
    scene = sim.make_scene("outdoor", seed=1)
    cam = sim.default_camera(64, 112, world_to_camera=look_at([0, 0, 1.5], [1, 0, 1.5]))
    f = sim.render(scene, cam)
    sky = f.labels == sim.SKY
    assert sky.any() and np.isinf(f.depth[sky]).all() and np.isfinite(f.depth[~sky]).all()
    # looking level: the horizon is the image's middle row; sky only above it, ground below
    assert not sky[33:].any() and sky[:31].mean() > 0.3
    # ground hit below the optical axis: z-depth = h / tan(angle below the horizon) for pixel rows
    row = 50
    fy, cy = cam.K[1, 1].item(), cam.K[1, 2].item()
    ground = f.object_id[row] == -1
    assert np.allclose(f.depth[row][ground], 1.5 * fy / (row + 0.5 - cy), rtol=1e-4)


def test_moving_object_moves_and_is_labelled_dynamic():
    scene = sim.make_scene("room", seed=0, moving_object=True)
    cam = Camera.from_fov(96, 96, 100, look_at([0, 0, 2.9], [0.01, 0, 0]))  # look down from the ceiling
    f0, f1 = sim.render(scene, cam, t=0.0), sim.render(scene, cam, t=3.0)
    d0, d1 = f0.labels == sim.DYNAMIC, f1.labels == sim.DYNAMIC
    assert d0.any() and d1.any() and not np.array_equal(d0, d1)
    assert (f0.object_id[d0] == -3).all()


def test_closed_loop_closes_and_determinism_by_seed():
    poses = sim.closed_loop(20)
    assert torch.equal(poses[0], poses[-1])
    assert not torch.allclose(poses[0], poses[10])
    a, b, c = sim.make_scene("room", 5), sim.make_scene("room", 5), sim.make_scene("room", 6)
    cam = sim.default_camera(32, 48, world_to_camera=sim.scene_trajectory(a, "loop", 8)[2])
    assert np.array_equal(sim.render(a, cam).rgb, sim.render(b, cam).rgb)
    assert not np.array_equal(sim.render(a, cam).rgb, sim.render(c, cam).rgb)
    for kind in ("loop", "orbit", "forward"):
        for E in sim.scene_trajectory(a, kind, 6):
            centre = torch.linalg.inv(E)[:3, 3]
            assert math.hypot(centre[0], centre[1]) <= a.free_radius + 1e-9


def test_texture_is_view_independent():
    scene = sim.make_scene("room", seed=2)
    c1 = sim.default_camera(128, 224, world_to_camera=look_at([0, 0, 1.5], [1, 0.2, 1.4]))
    c2 = sim.default_camera(128, 224, world_to_camera=look_at([0.5, -0.4, 1.2], [1, 0.3, 1.5]))
    f1, f2 = sim.render(scene, c1), sim.render(scene, c2)
    pts = backproject(torch.from_numpy(f1.depth).double(), c1.K, c1.world_to_camera).reshape(-1, 3)
    from mirage_ros.geometry import project

    u, v, z, ok = project(pts, c2.K, c2.world_to_camera, 128, 224)
    z2 = torch.from_numpy(f2.depth)[v, u].double()
    same = ok & ((z - z2).abs() < 0.01 * z)  # visible from both (sub-pixel offsets)
    assert same.sum() > 2000
    a = f1.rgb.reshape(-1, 3)[same.numpy()].astype(int)
    b = f2.rgb[v[same], u[same]].astype(int)
    assert np.median(np.abs(a - b)) <= 8


def test_masks_keep_the_moving_object_and_sky_out_of_memory():
    scene = sim.make_scene("outdoor", seed=0, moving_object=True)
    poses = sim.scene_trajectory(scene, "loop", 12)
    codec, mem = ThumbnailCodec(), LatentSpatialMemory()
    for i, E in enumerate(poses):
        cam = sim.default_camera(96, 160, world_to_camera=E)
        f = sim.render(scene, cam, t=float(i))
        mem.insert(codec.encode(images_to_tensor(f.rgb))[0], f.depth, cam, exclude=f.labels != sim.STATIC)
    pts = mem.points
    assert mem.num_points > 0 and torch.isfinite(pts).all()
    # the dynamic box sweeps a ring of radius 2.6 +- 0.36 around the centre, up to 0.9 m high
    r = pts[:, :2].norm(dim=1)
    assert not ((r > 2.2) & (r < 3.0) & (pts[:, 2] > 0.05) & (pts[:, 2] < 0.85)).any()
