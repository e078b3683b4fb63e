"""Synthetic scenes (mirage_ros.sim) against independent analytic geometry.

Expected depths come from ray/plane intersections computed here in float64 numpy from the
camera matrices, not from the renderer's code.
"""
import math

import numpy as np
import pytest
import torch

from mirage_ros import sim
from mirage_ros.geometry import Camera, backproject, look_at, project

pytestmark = pytest.mark.usefixtures("one_thread")  # a shared 2-core machine: threads only spin

ROOM_LO, ROOM_HI = np.array([-4.0, -3.0, 0.0]), np.array([4.0, 3.0, 3.0])


def _bare_room(extra=()):
    """The seed-0 room box alone (plus ``extra`` boxes): no furniture in the way."""
    s = sim.make_scene("room", seed=0)
    return sim.Scene("room", 0, [s.boxes[0], *extra], s.noise)


def _rays(cam: Camera):
    """World origin (3,) and directions (H, W, 3) with camera z = 1, float64 numpy."""
    K = cam.K.numpy()
    E = cam.world_to_camera.numpy()
    C2W = np.linalg.inv(E)
    v, u = np.mgrid[0:cam.height, 0:cam.width] + 0.5
    pix = np.stack([u, v, np.ones_like(u)], -1)
    d_cam = pix @ np.linalg.inv(K).T
    return C2W[:3, 3], d_cam @ C2W[:3, :3].T


def _room_hits(cam: Camera):
    """Analytic z-depth of the room's walls/floor/ceiling seen from inside, and the hit axis."""
    o, d = _rays(cam)
    with np.errstate(divide="ignore"):
        s = np.where(d > 0, (ROOM_HI - o) / d, (ROOM_LO - o) / d)  # exit parameter per axis
    s = np.where(np.abs(d) < 1e-15, np.inf, s)
    return s.min(-1), s.argmin(-1), np.sort(s, -1)


def test_fronto_parallel_wall_has_constant_exact_z_depth():
    # off-centre principal point, fx != fy; the camera at x = 1 sees only the wall x = 4: z = 3 m at
    # every pixel (z-depth, not ray length, which grows off axis)
    K = torch.tensor([[200.0, 0, 61.3], [0, 180.0, 30.9], [0, 0, 1]], dtype=torch.float64)
    cam = Camera(K, look_at([1.0, 0.5, 1.5], [2.0, 0.5, 1.5]), 64, 128)
    f = sim.render(_bare_room(), cam)
    assert f.depth.dtype == np.float32 and f.depth.shape == (64, 128) and f.rgb.shape == (64, 128, 3)
    assert np.abs(f.depth / 3.0 - 1).max() < 1e-6
    assert (f.object_id == 0).all() and (f.labels == sim.STATIC).all()
    np.testing.assert_array_equal(f.normals.reshape(-1, 3), np.tile([-1.0, 0.0, 0.0], (64 * 128, 1)))
    # back-projecting each pixel with the pinhole model lands on the wall plane, where its ray hits it
    pts = backproject(torch.from_numpy(f.depth).double(), cam.K, cam.world_to_camera).numpy()
    o, d = _rays(cam)
    np.testing.assert_allclose(pts, o + 3.0 * d, atol=2e-5)
    assert np.abs(pts[..., 0] - 4.0).max() < 2e-5
    np.testing.assert_array_equal(sim.render_depth_only(_bare_room(), cam), f.depth)


def test_oblique_skewed_camera_depth_matches_plane_intersections():
    K = torch.tensor([[150.0, 2.0, 40.0], [0, 170.0, 35.0], [0, 0, 1]], dtype=torch.float64)
    eye = np.array([0.3, -0.2, 1.4])
    yaw, pitch = math.radians(35), math.radians(-20)
    target = eye + [math.cos(yaw), math.sin(yaw), math.tan(pitch)]
    cam = Camera(K, look_at(eye, target), 64, 96)
    f = sim.render(_bare_room(), cam)
    z, axis, s_sorted = _room_hits(cam)
    assert np.abs(f.depth / z - 1).max() < 1e-5
    assert len(np.unique(axis)) >= 2  # the view spans a corner or the floor: a real test of faces
    # the face normal (facing the camera) where the nearest plane is unambiguous
    clear = s_sorted[..., 1] - s_sorted[..., 0] > 1e-3
    expected_axis = np.abs(f.normals).argmax(-1)
    assert (expected_axis[clear] == axis[clear]).all()
    o, d = _rays(cam)
    assert (np.einsum("hwk,hwk->hw", f.normals, d) < 0).all()
    np.testing.assert_allclose(np.linalg.norm(f.normals, axis=-1), 1.0)
    pts = backproject(torch.from_numpy(f.depth).double(), cam.K, cam.world_to_camera).numpy()
    # every back-projected point lies on the room's boundary
    dist_to_boundary = np.minimum(np.abs(pts - ROOM_LO), np.abs(pts - ROOM_HI)).min(-1)
    assert dist_to_boundary.max() < 5e-5


def test_box_silhouette_and_front_face_depth():
    lo, hi = np.array([2.0, -0.5, 1.0]), np.array([3.0, 0.6, 2.2])
    mat = sim.Material(torch.tensor([0.8, 0.2, 0.2]), torch.tensor([0.5, 0.1, 0.1]))
    scene = _bare_room([sim.Box(torch.from_numpy(lo), torch.from_numpy(hi), mat)])
    cam = Camera.from_fov(96, 128, 2 * math.degrees(math.atan(0.4)), look_at([0, 0, 1.5], [1, 0, 1.5]))
    f = sim.render(scene, cam)
    o, d = _rays(cam)
    p = o + (2.0 - o[0]) / d[..., :1] * d  # where each ray crosses the plane x = 2
    margin = np.minimum.reduce([p[..., 1] - lo[1], hi[1] - p[..., 1], p[..., 2] - lo[2], hi[2] - p[..., 2]])
    inside, outside = margin > 1e-3, margin < -1e-3
    assert inside.sum() > 500 and outside.sum() > 500
    assert (f.object_id[inside] == 1).all() and (f.object_id[outside] == 0).all()
    assert np.abs(f.depth[inside] - 2.0).max() < 2e-6 and np.abs(f.depth[outside] - 4.0).max() < 4e-6
    assert (f.normals[inside] == [-1, 0, 0]).all()
    # the box's colour differs from the wall's (it is drawn, not just in the depth)
    assert np.abs(f.rgb[inside].mean(0) - f.rgb[outside].mean(0)).max() > 20


def test_ground_depth_sky_and_horizon():
    base = sim.make_scene("outdoor", seed=0)
    flat = sim.Scene("outdoor", 0, [], base.noise, ground=base.ground)
    H, W = 64, 96
    cam = sim.default_camera(H, W, world_to_camera=look_at([0.3, 0.2, 1.5], [1.3, 0.7, 1.5]))  # level
    f = sim.render(flat, cam)
    fy, cy = cam.K[1, 1].item(), cam.K[1, 2].item()
    below = (np.arange(H) + 0.5 - cy) > 0
    expected = np.where(below, 1.5 * fy / np.maximum(np.arange(H) + 0.5 - cy, 1e-9), np.inf)  # z-depth per row
    near = expected < 100  # the ground ends 200 m out: the rows just below the horizon may be sky
    np.testing.assert_allclose(f.depth[near], np.broadcast_to(expected[:, None], (H, W))[near], rtol=1e-5)
    assert (f.object_id[near] == sim.GROUND_ID).all()
    assert (f.normals[near] == [0, 0, 1]).all()
    sky = f.labels == sim.SKY
    assert sky[~below].all() and np.isinf(f.depth[~below]).all() and (f.object_id[~below] == sim.SKY_ID).all()
    assert (f.normals[sky] == 0).all()
    np.testing.assert_array_equal(sky, ~np.isfinite(f.depth))
    # the sky is a gradient: bluer at the top than at the horizon
    blue = f.rgb[..., 2].astype(float) - f.rgb[..., 0]
    assert blue[0].mean() > blue[H // 2 - 1].mean() + 20

    # the generated scene: sky exactly where depth is infinite, only above (or at) the horizon
    scene = sim.make_scene("outdoor", seed=1)
    g = sim.render(scene, sim.default_camera(H, W, world_to_camera=look_at([0, 0, 1.5], [1, 0, 1.5])))
    sky = g.labels == sim.SKY
    assert sky.any() and np.isinf(g.depth[sky]).all() and np.isfinite(g.depth[~sky]).all()
    assert not sky[H // 2 + 1:].any() and sky[: H // 2 - 1].mean() > 0.3
    assert (g.labels[~sky] == sim.STATIC).all()


def test_moving_object_moves_is_labelled_dynamic_and_lies_in_its_box():
    scene = sim.make_scene("room", seed=0, moving_object=True)
    for t in (0.0, 1.0, 2.5, 12.0):  # the documented motion: clockwise circle, phase 90 deg, 12 s period
        a = math.radians(scene.motion_phase_deg) - 2 * math.pi * t / scene.motion_period
        c = scene.moving_at(t).center.numpy()
        np.testing.assert_allclose(c[:2], scene.motion_radius * np.array([math.cos(a), math.sin(a)]), atol=1e-12)
    cam = Camera.from_fov(96, 96, 100, look_at([0, 0, 2.9], [0.01, 0, 0]))  # from the ceiling, looking down
    frames = {t: sim.render(scene, cam, t=t) for t in (0.0, 1.0)}
    masks = {t: fr.labels == sim.DYNAMIC for t, fr in frames.items()}
    assert masks[0.0].sum() > 50 and masks[1.0].sum() > 50 and (masks[0.0] != masks[1.0]).sum() > 20
    for t, fr in frames.items():
        np.testing.assert_array_equal(masks[t], fr.object_id == sim.MOVING_ID)
        pts = backproject(torch.from_numpy(fr.depth).double(), cam.K, cam.world_to_camera).numpy()[masks[t]]
        box = scene.moving_at(t)
        assert ((pts >= box.lo.numpy() - 1e-4) & (pts <= box.hi.numpy() + 1e-4)).all()
        other = scene.moving_at(1.0 - t)
        assert not ((pts >= other.lo.numpy() - 1e-4) & (pts <= other.hi.numpy() + 1e-4)).all(1).all()
    static = sim.render(sim.make_scene("room", seed=0), cam)
    assert not (static.labels == sim.DYNAMIC).any()
    # the trajectories meet it: the default loop (10 frames per second) sees it in several frames
    seen = [(sim.render(scene, sim.default_camera(32, 56, world_to_camera=E), t=i / 10).labels == sim.DYNAMIC).any()
            for i, E in enumerate(sim.scene_trajectory(scene, "loop", 46))]
    assert 3 <= sum(seen) < 46


def test_trajectories():
    poses = sim.closed_loop(37, center=(0.5, -0.2, 0.0), radius=0.7, height=1.4)
    assert len(poses) == 37 and all(E.dtype == torch.float64 and E.shape == (4, 4) for E in poses)
    assert torch.equal(poses[0], poses[-1])
    centres = torch.stack([torch.linalg.inv(E)[:3, 3] for E in poses])
    np.testing.assert_allclose((centres[:, :2] - torch.tensor([0.5, -0.2])).norm(dim=1), 0.7, atol=1e-12)
    np.testing.assert_allclose(centres[:, 2], 1.4, atol=1e-12)
    # smooth yaw: the optical axis turns by the same angle at every step, once around in total
    axes = torch.stack([E[2, :3] for E in poses])
    yaw = torch.atan2(axes[:, 1], axes[:, 0])
    steps = torch.remainder(yaw[1:] - yaw[:-1], 2 * math.pi)
    np.testing.assert_allclose(steps, 2 * math.pi / 36, atol=1e-9)
    # orbit: the target lies on the optical axis, at the orbit's slant distance, from every pose
    orbit = sim.orbit(8, center=(1.0, 2.0, 0.0), radius=1.5, height=1.6, target_height=1.0)
    for E in orbit:
        q = E[:3, :3] @ torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) + E[:3, 3]
        np.testing.assert_allclose(q, [0.0, 0.0, math.hypot(1.5, 0.6)], atol=1e-12)
        np.testing.assert_allclose(torch.linalg.inv(E)[2, 3], 1.6, atol=1e-12)
    assert len({tuple(torch.linalg.inv(E)[:2, 3].round(decimals=6).tolist()) for E in orbit}) == 8
    walk = sim.forward_walk(5, start=(0.0, 1.0, 1.5), direction=(0.0, 2.0, 0.0), step=0.25)
    for i, E in enumerate(walk):
        np.testing.assert_allclose(torch.linalg.inv(E)[:3, 3], [0.0, 1.0 + 0.25 * i, 1.5], atol=1e-12)
        np.testing.assert_allclose(E[2, :3], [0.0, 1.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="n"):
        sim.closed_loop(1)
    with pytest.raises(ValueError, match="kind"):
        sim.scene_trajectory(sim.make_scene("room"), "spiral", 4)


def test_loop_revisits_what_the_start_saw():
    scene = sim.make_scene("room", seed=4)
    poses = sim.scene_trajectory(scene, "loop", 46)
    cams = [sim.default_camera(64, 112, world_to_camera=poses[i]) for i in (0, 22, 44)]
    f0, f22, f44 = (sim.render(scene, c) for c in cams)
    pts = backproject(torch.from_numpy(f0.depth).double(), cams[0].K, cams[0].world_to_camera).reshape(-1, 3)

    def overlap(cam, fr):
        u, v, z, ok = project(pts, cam.K, cam.world_to_camera, 64, 112)
        z2 = torch.from_numpy(fr.depth).double()[v, u]
        return (ok & ((z - z2).abs() < 0.02 * z)).double().mean().item()

    assert overlap(cams[2], f44) > 0.6  # near the end: the start's view again
    assert overlap(cams[1], f22) < 0.2  # half way: the other side of the room


def test_scenes_keep_the_free_area_free():
    for kind in ("room", "outdoor"):
        for seed in range(3):
            scene = sim.make_scene(kind, seed=seed, moving_object=True)
            static = [b for b in scene.boxes if not b.inside]
            assert len(static) >= 6
            for b in static:  # nearest footprint point to the centre
                nearest = torch.maximum(torch.minimum(torch.zeros(2, dtype=torch.float64), b.hi[:2]), b.lo[:2])
                assert nearest.norm() >= scene.clear_radius - 1e-9
            half_diag = ((scene.moving.hi - scene.moving.lo)[:2] / 2).norm().item()
            assert scene.free_radius + 0.2 < scene.motion_radius - half_diag
            assert scene.motion_radius + half_diag <= scene.clear_radius
            for traj in ("loop", "orbit", "forward"):
                for E in sim.scene_trajectory(scene, traj, 9):
                    c = torch.linalg.inv(E)[:3, 3]
                    assert c[:2].norm() <= scene.free_radius and abs(c[2].item() - 1.5) < 1e-9
            if kind == "room":
                assert scene.boxes[0].inside and scene.ground is None
            else:
                assert scene.ground is not None and not any(b.inside for b in scene.boxes)
    with pytest.raises(ValueError, match="kind"):
        sim.make_scene("space")


def test_seeds_are_deterministic_and_differ():
    a, b, c = sim.make_scene("room", 5), sim.make_scene("room", 5), sim.make_scene("room", 6)
    assert [(x.lo.tolist(), x.hi.tolist()) for x in a.boxes] == [(x.lo.tolist(), x.hi.tolist()) for x in b.boxes]
    cam = sim.default_camera(32, 48, world_to_camera=sim.scene_trajectory(a, "loop", 8)[2])
    fa, fb, fc = sim.render(a, cam), sim.render(b, cam), sim.render(c, cam)
    np.testing.assert_array_equal(fa.rgb, fb.rgb)
    np.testing.assert_array_equal(fa.depth, fb.depth)
    assert not np.array_equal(fa.rgb, fc.rgb)
    o1, o2 = sim.make_scene("outdoor", 0), sim.make_scene("outdoor", 1)
    assert [x.lo.tolist() for x in o1.boxes] != [x.lo.tolist() for x in o2.boxes]


def test_texture_is_view_independent_exactly():
    """A world point rendered at a pixel centre of two very different cameras has one colour."""
    scene = sim.make_scene("room", seed=2)
    c1 = sim.default_camera(64, 112, world_to_camera=look_at([0, 0, 1.5], [1, 0.2, 1.4]))
    f1 = sim.render(scene, c1, antialias=False)
    pts = backproject(torch.from_numpy(f1.depth).double(), c1.K, c1.world_to_camera)
    rng = np.random.default_rng(0)
    E2 = look_at([0.6, -0.5, 1.1], [1.5, 0.6, 1.7])
    checked = 0
    for _ in range(40):
        v, u = int(rng.integers(64)), int(rng.integers(112))
        p = pts[v, u]
        q = E2[:3, :3] @ p + E2[:3, 3]
        if q[2] < 0.3:
            continue
        # a small camera whose pixel (4, 4) centre looks exactly at p
        f = 300.0
        K = torch.tensor([[f, 0, 4.5 - f * q[0] / q[2]], [0, f, 4.5 - f * q[1] / q[2]], [0, 0, 1]], dtype=torch.float64)
        g = sim.render(scene, Camera(K, E2, 9, 9), antialias=False)
        if abs(g.depth[4, 4] - q[2].item()) > 1e-3 * q[2].item():
            continue  # occluded from the second camera
        assert g.object_id[4, 4] == f1.object_id[v, u]
        assert np.abs(g.rgb[4, 4].astype(int) - f1.rgb[v, u]).max() <= 1
        checked += 1
    assert checked >= 15


def test_texture_view_independent_with_antialiasing_and_has_structure_at_several_scales():
    scene = sim.make_scene("room", seed=2)
    c1 = sim.default_camera(128, 224, world_to_camera=look_at([0, 0, 1.5], [1, 0.2, 1.4]))
    c2 = sim.default_camera(128, 224, world_to_camera=look_at([0.5, -0.4, 1.2], [1, 0.3, 1.5]))
    f1, f2 = sim.render(scene, c1), sim.render(scene, c2)
    pts = backproject(torch.from_numpy(f1.depth).double(), c1.K, c1.world_to_camera).reshape(-1, 3)
    u, v, z, ok = project(pts, c2.K, c2.world_to_camera, 128, 224)
    z2 = torch.from_numpy(f2.depth)[v, u].double()
    same = ok & ((z - z2).abs() < 0.01 * z)
    assert same.sum() > 5000
    a = f1.rgb.reshape(-1, 3)[same.numpy()].astype(int)
    b = f2.rgb[v[same], u[same]].astype(int)
    assert np.median(np.abs(a - b)) <= 4
    # and a different scene really looks different at the same pixels (the comparison can fail)
    other = sim.render(sim.make_scene("room", seed=3), c2)
    assert np.median(np.abs(a - other.rgb[v[same], u[same]].astype(int))) > 10

    # structure: at full resolution (neighbouring pixels differ) and in 16 x 16 blocks (a latent grid)
    for kind in ("room", "outdoor"):
        s = sim.make_scene(kind, seed=0)
        fr = sim.render(s, sim.default_camera(256, 448, world_to_camera=sim.scene_trajectory(s, "loop", 8)[1]))
        lum = fr.rgb.astype(float).mean(-1)
        blocks = lum.reshape(16, 16, 28, 16).mean((1, 3))
        assert blocks.std() > 12, kind
        assert lum.reshape(16, 16, 28, 16).std((1, 3)).mean() > 3, kind
        assert np.abs(np.diff(lum, axis=1)).mean() > 1.5, kind
        assert len(np.unique(fr.rgb.reshape(-1, 3), axis=0)) > 2000, kind


def test_masks_keep_the_moving_object_and_sky_out_of_memory():
    from mirage_ros.memory import LatentSpatialMemory
    from mirage_ros.world_model.codec import ThumbnailCodec, images_to_tensor

    scene = sim.make_scene("outdoor", seed=0, moving_object=True)
    poses = sim.scene_trajectory(scene, "loop", 12)
    codec, mem, seen = ThumbnailCodec(), LatentSpatialMemory(), 0
    for i, E in enumerate(poses):
        cam = sim.default_camera(96, 160, world_to_camera=E)
        f = sim.render(scene, cam, t=float(i))
        seen += int((f.labels == sim.DYNAMIC).sum())
        mem.insert(codec.encode(images_to_tensor(f.rgb))[0], f.depth, cam, exclude=f.labels != sim.STATIC)
    pts = mem.points
    assert seen > 0 and mem.num_points > 0 and torch.isfinite(pts).all()
    # the dynamic post sweeps a ring of radius 2.6 +- 0.29 around the centre, up to 1.6 m high
    r = pts[:, :2].norm(dim=1)
    assert not ((r > 2.25) & (r < 2.95) & (pts[:, 2] > 0.05) & (pts[:, 2] < 1.55)).any()
