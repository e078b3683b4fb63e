"""The sky dome of LatentSpatialMemory(sky=True): directions at infinity, read by rotation only.

The independent reference is plain float64 numpy: a target cell's centre ray, rotated into the
source camera and projected with the source K, lands in the source cell whose feature it must read
(away from cell borders, where the nearest stored centre ray and the containing cell agree).
"""
import numpy as np
import pytest
import torch

from mirage_ros.geometry import Camera, look_at
from mirage_ros.memory import LatentSpatialMemory, MemoryFileError

H, W, S, C = 96, 160, 16, 4  # 6 x 10 latent grid


def yaw_pose(eye, yaw_deg, pitch_deg=0.0):
    """world_to_camera looking along world +x rotated by ``yaw`` about z, tilted ``pitch`` up."""
    a, b = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    eye = np.asarray(eye, dtype=np.float64)
    d = np.array([np.cos(a) * np.cos(b), np.sin(a) * np.cos(b), np.sin(b)])
    return look_at(eye, eye + d)


def sky_frame(top_rows: int = 3):
    """Depth (H, W): rows of cells [0, top_rows) are +inf (sky), the rest a wall at 4 m; a latent
    whose every cell carries its own (u, v) code, so a read says which source cell it came from."""
    depth = torch.full((H, W), 4.0)
    depth[: top_rows * S] = float("inf")
    v, u = torch.meshgrid(torch.arange(H // S), torch.arange(W // S), indexing="ij")
    latent = torch.stack([u.float(), v.float(), (u * 10 + v).float(), torch.ones_like(u, dtype=torch.float32)])
    return latent, depth


def test_sky_is_off_by_default_and_points_only_then():
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32)
    lat, depth = sky_frame()
    cam = Camera.from_fov(H, W, 70.0, yaw_pose([0, 0, 1], 0))
    mem.insert(lat, depth, cam)
    r = mem.read(cam)
    assert not r.mask[:3].any() and r.mask[3:].all() and not r.sky.any()


def test_translation_does_not_move_the_sky_and_points_stay_in_front():
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True)
    lat, depth = sky_frame()
    cam0 = Camera.from_fov(H, W, 70.0, yaw_pose([0, 0, 1], 0))
    mem.insert(lat, depth, cam0)
    assert mem.last_insert["sky_added"] == 3 * (W // S) and len(mem.sky) == 30
    r0 = mem.read(cam0)
    assert r0.mask.all() and torch.equal(r0.sky[:3], torch.ones(3, W // S, dtype=torch.bool)) and not r0.sky[3:].any()
    assert torch.equal(r0.latent, lat)
    assert (r0.index[:3] == -1).all() and torch.isinf(r0.depth[:3]).all()
    far = Camera.from_fov(H, W, 70.0, yaw_pose([-30.0, 12.0, 6.0], 0))  # 33 m away, same rotation
    r = mem.read(far)
    assert torch.equal(r.latent[:, :3], lat[:, :3])  # every sky cell reads its own source cell
    # a point in front of the dome wins its cell
    cam_up = Camera.from_fov(H, W, 70.0, yaw_pose([0, 0, 1], 0, 10.0))
    assert mem.read(cam_up).sky[3, 5]  # the centre cell's ray is in the dome ...
    mem.add_points(torch.tensor([[10.0, 0.0, 1.0 + 10 * np.tan(np.deg2rad(10.0))]]), torch.full((1, C), 7.0))
    ru = mem.read(cam_up)  # ... until a point lies on it
    assert ru.index[3, 5] >= 0 and not ru.sky[3, 5] and (ru.latent[:, 3, 5] == 7.0).all()
    assert int(ru.sky.sum()) == int(mem.read(cam_up.with_pose(cam_up.world_to_camera)).sky.sum())


@pytest.mark.parametrize("yaw,pitch", [(9.0, 0.0), (-13.0, 4.0), (21.0, -3.0)])
def test_rotation_reads_the_source_cell_the_ray_falls_in(yaw, pitch):
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True)
    lat, depth = sky_frame(top_rows=6)  # all sky
    src = Camera.from_fov(H, W, 70.0, yaw_pose([0, 0, 1], 0))
    mem.insert(lat, depth, src)
    tgt = Camera.from_fov(H, W, 70.0, yaw_pose([2.0, -1.0, 1.0], yaw, pitch))
    r = mem.read(tgt)
    # float64 numpy reference: target cell centre ray -> world -> source pixel (latent units)
    h, w = H // S, W // S
    Kt = tgt.latent_K(S).numpy().astype(np.float64)
    Ks = src.latent_K(S).numpy().astype(np.float64)
    Et, Es = tgt.world_to_camera.numpy(), src.world_to_camera.numpy()
    checked = 0
    for v in range(h):
        for u in range(w):
            ray_c = np.linalg.inv(Kt) @ np.array([u + 0.5, v + 0.5, 1.0])
            ray_w = Et[:3, :3].T @ ray_c
            q = Ks @ (Es[:3, :3] @ ray_w)
            if q[2] <= 0:
                assert not r.mask[v, u]
                continue
            pu, pv = q[0] / q[2], q[1] / q[2]
            inside = 0 <= pu < w and 0 <= pv < h
            margin = min(pu - np.floor(pu), np.ceil(pu) - pu, pv - np.floor(pv), np.ceil(pv) - pv)
            if inside and margin > 0.1:
                assert r.mask[v, u] and r.sky[v, u]
                assert (int(r.latent[0, v, u]), int(r.latent[1, v, u])) == (int(np.floor(pu)), int(np.floor(pv)))
                checked += 1
            elif not (-1.0 < pu < w + 1.0 and -1.0 < pv < h + 1.0):  # reach: 0.75 centre pitches
                assert not r.mask[v, u]  # beyond the dome's reach: never invented
    assert checked >= 10


def test_mixed_cells_follow_sky_fraction_and_dynamic_pixels_veto():
    lat, depth = sky_frame(top_rows=2)
    depth[2 * S : 2 * S + 8] = float("inf")  # row 2: the upper half of every cell is sky (a horizon row)
    depth[2 * S + 8 :, 0:S] = 50.0
    cam = Camera.from_fov(H, W, 70.0, yaw_pose([0, 0, 1], 0))
    ex = torch.zeros(H, W, dtype=torch.bool)
    ex[2 * S + 10, 3 * S + 2] = True  # a dynamic pixel (finite depth) in cell (2, 3)
    ex[0:4, 0:4] = True  # excluded sky pixels: no veto
    counts = {}
    for frac in (0.5, 0.6, 1.0):
        mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True, sky_fraction=frac)
        mem.insert(lat, depth, cam, exclude=ex)
        r = mem.read(cam)
        counts[frac] = len(mem.sky)
        assert r.sky[:2].all()
        assert bool(r.sky[2, 0]) == (frac == 0.5) and not r.sky[2, 3]
        assert not r.sky[2].any() or r.mask[2].sum() >= 9
    assert counts == {0.5: 20 + 9, 0.6: 20, 1.0: 20}
    # the same veto with depth and mask at different resolutions (latent depth, pixel mask and back)
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True, sky_fraction=0.5)
    lat_depth = torch.where(torch.arange(H // S)[:, None] < 2, float("inf"), 4.0).expand(H // S, W // S).clone()
    mem.insert(lat, lat_depth, cam, exclude=ex)
    assert len(mem.sky) == 20  # cell (0, 0): its excluded pixels are sky (all +inf at latent level): no veto
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True, sky_fraction=0.5)
    mem.insert(lat, depth, cam, exclude=torch.zeros(H // S, W // S, dtype=torch.bool).index_put_(
        (torch.tensor([2]), torch.tensor([3])), torch.tensor(True)))
    assert len(mem.sky) == 20 + 9 and not mem.read(cam).sky[2, 3]


def test_reobserved_sky_adds_nothing():
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True, sky_fraction=1.0)
    lat, depth = sky_frame()
    depth[2 * S + 3, 5] = 9.0  # one finite pixel: with sky_fraction 1 that cell (row 2, col 0) is not sky
    cam = Camera.from_fov(H, W, 70.0, yaw_pose([0, 0, 1], 0))
    mem.insert(lat, depth, cam)
    assert len(mem.sky) == 29
    mem.insert(lat, depth, Camera.from_fov(H, W, 70.0, yaw_pose([5, 5, 1], 0.3)))
    assert mem.last_insert["sky_added"] == 0 and mem.last_insert["sky_revisited"] == 29 and len(mem.sky) == 29
    # refresh replaces the stored features, keep (default) does not
    other = lat + 100
    mem.insert(other, depth, cam)
    assert torch.equal(mem.read(cam).latent[:, 0, 0], lat[:, 0, 0])
    ref = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True, sky_fraction=1.0,
                              on_revisit="refresh")
    ref.insert(lat, depth, cam)
    ref.insert(other, depth, cam)
    assert torch.equal(ref.read(cam).latent[:, 0, 0], other[:, 0, 0])


def test_fork_keeps_the_parent_dome(tmp_path):
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True)
    lat, depth = sky_frame()
    mem.insert(lat, depth, Camera.from_fov(H, W, 70.0, yaw_pose([0, 0, 1], 0)))
    f = mem.fork()
    f.insert(lat + 1, depth, Camera.from_fov(H, W, 70.0, yaw_pose([0, 0, 1], 90)))
    assert len(f.sky) == 60 and len(mem.sky) == 30


def test_save_load_round_trip_and_refusals(tmp_path):
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True)
    lat, depth = sky_frame()
    cam = Camera.from_fov(H, W, 70.0, yaw_pose([0, 0, 1], 0))
    mem.insert(lat, depth, cam)
    path = tmp_path / "m.safetensors"
    mem.save(path)
    back = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky=True)
    back.load(path)
    assert torch.equal(back.sky.directions, mem.sky.directions) and torch.equal(back.read(cam).latent, lat)
    plain = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32)
    plain.insert(lat, depth, cam)
    n0 = plain.num_points
    with pytest.raises(MemoryFileError, match="sky"):
        plain.load(path)
    assert plain.num_points == n0
    from safetensors.torch import load_file, save_file

    t = load_file(str(path))
    meta = {"format": "mirage_ros.LatentSpatialMemory", "version": "1", "channels": str(C), "stride": str(S),
            "feature_dtype": "float32"}
    half = dict(t)
    half.pop("sky_features")
    save_file(half, str(tmp_path / "half.safetensors"), metadata=meta)
    with pytest.raises(MemoryFileError, match="pair"):
        back.load(tmp_path / "half.safetensors")
    bad = dict(t)
    bad["sky_directions"] = bad["sky_directions"] * 2
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(MemoryFileError, match="sky_directions"):
        back.load(tmp_path / "bad.safetensors")
    assert len(back.sky) == 30 and torch.equal(back.read(cam).latent, lat)  # unchanged by the refusals
