"""LatentSpatialMemory against hand-worked values and a brute-force numpy reference."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mirage_ros.geometry import Camera, GeometryError, look_at
from mirage_ros.memory import READ_RTOL as LIBRARY_READ_RTOL
from mirage_ros.memory import LatentSpatialMemory, MemoryError_, MemoryFileError, downsample_depth, hole_rate

K32 = torch.tensor([[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]], dtype=torch.float64)  # 32x32 image -> 2x2 latent


def snapshot(mem):
    return mem.points.clone(), mem.features.clone(), mem.num_points


def assert_unchanged(mem, snap):
    pts, feats, n = snap
    assert mem.num_points == n
    assert torch.equal(mem.points, pts) and torch.equal(mem.features, feats)


# Float32 unit roundoff. The library computes a point's (p_u, p_v, z) = P p + p_4 in float32 with
# P rounded to float32: by the standard dot-product bound (Higham, Accuracy and Stability, 3.1)
# each component is off from the exact float64 value by at most (1 + 4) u (1 + O(u)) times
# S = sum_j |P_ij p_j| + |P_i4|, whatever the order of summation or FMA use. The readout's
# promise (see LatentSpatialMemory.read) is stated with READ_RTOL = 16 u, three times that bound.
U32 = 2.0 ** -24
READ_RTOL = 16 * U32


def float64_reference(points, cam, stride):
    """Exact Eq. 5 on the stored float32 points, computed in float64 (numpy, no torch maths).

    Returns a dict of per-point arrays: cell (flat, -1 when not in the grid), z, and the two
    error budgets ``tz`` (depth, metres) and ``tcell`` (distance to a cell border, in cells) within
    which another machine's float32 rounding may move a point's depth or cell; plus the reference
    winners ``index`` / ``depth`` per cell (smallest (z, insertion index), -1 / inf where empty).
    """
    h, w = cam.latent_size(stride)
    P = (cam.latent_K(stride) @ cam.world_to_camera[:3]).numpy().astype(np.float64)
    x = points.numpy().astype(np.float64)
    pix = x @ P[:, :3].T + P[:, 3]
    mag = np.abs(x) @ np.abs(P[:, :3]).T + np.abs(P[:, 3])  # S per component
    t = READ_RTOL * mag  # (N, 3) error budgets of p_u, p_v, z
    z = pix[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uc, vc = pix[:, 0] / z, pix[:, 1] / z
        # |d(p/z)| <= (|dp| + |p/z| |dz|) / z, plus the division's own rounding
        tu = (t[:, 0] + np.abs(uc) * t[:, 2]) / z + READ_RTOL * np.abs(uc)
        tv = (t[:, 1] + np.abs(vc) * t[:, 2]) / z + READ_RTOL * np.abs(vc)
    u, v = np.floor(uc), np.floor(vc)
    ok = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    cell = np.where(ok, v * w + u, -1).astype(np.int64)
    border = np.minimum.reduce([uc - u, u + 1 - uc, vc - v, v + 1 - vc])  # cells to the nearest border
    sure = ok & (border > np.maximum(tu, tv)) & (z > t[:, 2])  # in this cell on any machine
    index = np.full(h * w, -1, np.int64)
    depth = np.full(h * w, np.inf)
    order = np.lexsort((np.arange(len(z)), z))  # by z, then insertion index
    for i in order[ok[order]][::-1]:  # nearest written last
        index[cell[i]], depth[cell[i]] = i, z[i]
    return {"cell": cell, "sure": sure, "z": z, "tz": t[:, 2], "u": uc, "v": vc, "tu": tu, "tv": tv,
            "index": index, "depth": depth, "hw": (h, w)}


def assert_readout_matches_reference(r, points, cam, stride, what=""):
    """The readout keeps its documented promise against the float64 reference:

    - every filled cell's winner really projects into that cell (up to its rounding budget) and
      its reported depth is its true depth within the budget;
    - no point that lies in the cell on any machine is nearer than the winner by more than both
      budgets (frontmost wins);
    - a cell is empty only if no point surely lies in it;
    - where the winner differs from the exact reference, the two are a near-tie (depths within
      the budgets) or one of them is within its budget of a cell border;
    - ties go to the earliest insert: a point never wins over an identical earlier copy.
    Returns the number of cells whose winner differs from the exact reference (near-ties).
    """
    ref = float64_reference(points, cam, stride)
    h, w = ref["hw"]
    idx = r.index.flatten().numpy()
    dep = r.depth.flatten().numpy().astype(np.float64)
    assert np.array_equal(r.mask.flatten().numpy(), idx >= 0), what
    z, tz, cell, sure = ref["z"], ref["tz"], ref["cell"], ref["sure"]
    _, first = np.unique(points.numpy(), axis=0, return_inverse=True)
    first_of = np.full(first.max() + 1 if len(first) else 0, len(first))
    np.minimum.at(first_of, first, np.arange(len(first)))
    differ = 0
    for c in range(h * w):
        cu, cv = c % w, c // w
        in_c = sure & (cell == c)
        i = idx[c]
        if i < 0:
            assert not in_c.any(), f"{what} cell {c}: empty, but point {np.nonzero(in_c)[0][:3]} lies in it"
            continue
        assert z[i] > -tz[i], f"{what} cell {c}: winner {i} is behind the camera"
        assert cu - ref["tu"][i] <= ref["u"][i] <= cu + 1 + ref["tu"][i], f"{what} cell {c}: winner {i} u={ref['u'][i]}"
        assert cv - ref["tv"][i] <= ref["v"][i] <= cv + 1 + ref["tv"][i], f"{what} cell {c}: winner {i} v={ref['v'][i]}"
        assert abs(dep[c] - z[i]) <= tz[i], f"{what} cell {c}: depth {dep[c]!r} vs true {z[i]!r} (budget {tz[i]:.2g})"
        if in_c.any():
            j = np.nonzero(in_c)[0]
            assert (z[i] - tz[i] <= z[j] + tz[j]).all(), f"{what} cell {c}: winner {i} at {z[i]} behind a nearer point"
        earlier = first_of[first[i]]
        assert earlier == i, f"{what} cell {c}: winner {i} has an identical earlier copy {earlier}"
        k = ref["index"][c]
        if k != i:
            differ += 1
            near_tie = abs(z[i] - z[k]) <= tz[i] + tz[k]
            why = f"{what} cell {c}: winner {i} vs reference {k} is not a near-tie"
            assert near_tie or not (sure[i] and sure[k]), why
    return differ


def test_worked_example_2x2():
    # Paper-style example: four cells, four points, features a-d. K_l = K * 2/32 = [[2,0,1],[0,2,1],[0,0,1]].
    # Camera at world (0, 0, -1) looking along +z: E translation t = (0, 0, 1).
    E = torch.eye(4, dtype=torch.float64)
    E[2, 3] = 1.0
    cam = Camera(K32, E, 32, 32)
    a, b, c, d = (torch.full((4,), float(i)) for i in (1, 2, 3, 4))
    latent = torch.stack([torch.stack([a, b]), torch.stack([c, d])]).permute(2, 0, 1)  # (C=4, h=2, w=2)
    depth = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    mem = LatentSpatialMemory(channels=4, stride=16, feature_dtype=torch.float32)
    assert mem.insert(latent, depth, cam) == 4
    # Hand-computed: cell centre (u+1/2, v+1/2) -> ((u+1/2-1)/2, (v+1/2-1)/2, 1) * d, then z - 1.
    expected = torch.tensor(
        [[-0.25, -0.25, 0.0],  # (u=0, v=0), d=1, feature a
         [0.5, -0.5, 1.0],  # (u=1, v=0), d=2, feature b
         [-0.5, 0.5, 1.0],  # (u=0, v=1), d=2, feature c
         [0.25, 0.25, 0.0]]  # (u=1, v=1), d=1, feature d
    )
    assert torch.allclose(mem.points, expected, atol=1e-7)
    assert mem.features[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    latent_hat, mask = mem.read(cam)
    assert mask.all() and torch.equal(latent_hat, latent)
    assert torch.allclose(mem.read(cam).depth, depth)


@pytest.mark.parametrize("feature_dtype", [torch.float32, torch.bfloat16])
def test_insert_then_read_same_camera_returns_every_admissible_cell(feature_dtype):
    g = torch.Generator().manual_seed(1)
    cam = Camera.from_fov(256, 448, 70, look_at([0.3, -0.2, 1.4], [3, 1, 1.2]))
    h, w = cam.latent_size(16)
    latent = torch.randn(48, h, w, generator=g)
    depth = torch.rand(256, 448, generator=g) * 4 + 1
    depth[:40, :100] = float("nan")  # invalid pixels make inadmissible cells
    depth[200:, 300:] = 0.0
    mem = LatentSpatialMemory(feature_dtype=feature_dtype)
    adm = mem.admissible(depth, cam)
    assert mem.insert(latent, depth, cam) == int(adm.sum()) < h * w
    r = mem.read(cam)
    assert torch.equal(r.mask, adm)
    assert torch.equal(r.latent[:, adm], latent.to(feature_dtype).float()[:, adm])
    assert (r.latent[:, ~adm] == 0).all()
    d_l = downsample_depth(depth, 16, "bilinear")
    assert torch.allclose(r.depth[adm], d_l[adm], rtol=1e-5)


def test_occlusion_nearest_wins_regardless_of_insert_order():
    cam = Camera(K32, torch.eye(4, dtype=torch.float64), 32, 32)
    near, far = torch.ones(4, 2, 2), -torch.ones(4, 2, 2)
    for order in ((far, 3.0, near, 1.0), (near, 1.0, far, 3.0)):
        mem = LatentSpatialMemory(channels=4, dedup=False, feature_dtype=torch.float32)
        mem.insert(order[0], torch.full((2, 2), order[1]), cam)
        mem.insert(order[2], torch.full((2, 2), order[3]), cam)
        latent, mask = mem.read(cam)
        assert torch.equal(latent, near) and mask.all()


def test_exact_ties_go_to_the_earliest_insert():
    cam = Camera(K32, torch.eye(4, dtype=torch.float64), 32, 32)
    mem = LatentSpatialMemory(channels=4, dedup=False, feature_dtype=torch.float32)
    depth = torch.full((2, 2), 2.0)
    for k in range(5):  # identical positions and depths, five times
        mem.insert(torch.full((4, 2, 2), float(k)), depth, cam)
    r = mem.read(cam)
    assert (r.latent == 0).all() and r.index.flatten().tolist() == [0, 1, 2, 3]


def test_many_points_per_cell_with_ties_match_the_float64_reference():
    g = torch.Generator().manual_seed(2)
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    mem = LatentSpatialMemory(channels=8, dedup=False, feature_dtype=torch.float32)
    h, w = cam.latent_size(16)
    for _ in range(30):
        # quantised depths make many exact ties across inserts (identical points)
        d = (torch.randint(1, 5, (h, w), generator=g) * 0.5).float()
        mem.insert(torch.randn(8, h, w, generator=g), d, cam)
    for pose in (cam.world_to_camera, look_at([-0.2, 0.1, 0.05], [1, 0.2, 0])):
        c = cam.with_pose(pose)
        assert_readout_matches_reference(mem.read(c), mem.points, c, 16)
    # at the inserting camera every cell holds copies at several depths: the winner is the
    # first insert of the nearest depth, which the reference knows exactly
    r = mem.read(cam)
    assert r.mask.all()
    assert np.array_equal(r.index.flatten().numpy(), float64_reference(mem.points, cam, 16)["index"])


@pytest.mark.slow
@pytest.mark.parametrize("occlusion", [True, False])
def test_indexed_readout_keeps_its_promise_on_a_large_random_memory(occlusion):
    """Block index + culling against a float64 reference, with exact duplicates for the tie rule.

    Two libraries' (or machines') float32 products round differently in the last bit, so the
    winners are compared under the promise of ``LatentSpatialMemory.read``, not bit for bit.
    """
    g = torch.Generator().manual_seed(3)
    n = 60000
    pts = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([20.0, 20.0, 6.0])
    pts[50000:52000] = pts[1000:3000]  # later identical copies: they must never win
    mem = LatentSpatialMemory(channels=4, feature_dtype=torch.float32, block_size=1.0,
                              occlusion_culling=occlusion, first_round_points=2000)
    mem._append(pts[:55000], torch.randn(55000, 4, generator=g))
    mem._append(pts[55000:], torch.randn(n - 55000, 4, generator=g))  # stays in the unindexed tail
    assert 0 < mem.index.n_indexed < mem.num_points
    assert LIBRARY_READ_RTOL == READ_RTOL  # the budget the docstring states is the one checked here
    for k, target in enumerate(([5, 1, 0.5], [-3, 4, 0], [0, -8, -1], [0.5, 0.5, 2.5])):
        cam = Camera.from_fov(128, 192, 75, look_at([0.1 * k, 0, 0.2], target))
        r = mem.read(cam)
        assert r.coverage > 0.9
        assert_readout_matches_reference(r, mem.points, cam, 16, f"view {k}")
        # same machine, same inputs: the same winners, bit for bit
        r2 = mem.read(cam)
        assert torch.equal(r.index, r2.index) and torch.equal(r.depth, r2.depth)


def test_the_reference_check_catches_a_wrong_winner():
    """The promise check is not vacuous: a readout with one cell's winner swapped fails it."""
    g = torch.Generator().manual_seed(7)
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    mem = LatentSpatialMemory(channels=4, dedup=False, feature_dtype=torch.float32)
    mem.insert(torch.randn(4, 4, 6, generator=g), torch.full((4, 6), 2.0), cam)
    mem.insert(torch.randn(4, 4, 6, generator=g), torch.full((4, 6), 3.0), cam)
    r = mem.read(cam)
    assert_readout_matches_reference(r, mem.points, cam, 16)
    bad_index = r.index.clone()
    bad_index[1, 2] += 24  # the point behind it (same cell, depth 3 instead of 2)
    bad = type(r)(r.latent, r.mask, r.depth, bad_index)
    with pytest.raises(AssertionError, match="cell 8"):
        assert_readout_matches_reference(bad, mem.points, cam, 16)
    late = torch.cat([mem.points, mem.points[:1]])  # an identical later copy of point 0
    bad_index = r.index.clone()
    bad_index[0, 0] = 48
    with pytest.raises(AssertionError, match="identical earlier copy"):
        assert_readout_matches_reference(type(r)(r.latent, r.mask, r.depth, bad_index), late, cam, 16)


def test_exclusion_masks_keep_cells_out():
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    h, w = cam.latent_size(16)
    latent = torch.randn(48, h, w)
    depth = torch.full((64, 96), 3.0)
    exclude = torch.zeros(64, 96, dtype=torch.bool)
    exclude[20, 40] = True  # one pixel excludes its whole cell (v=1, u=2)
    exclude[48:, :16] = True  # cell (v=3, u=0)
    mem = LatentSpatialMemory(exclude_fraction=0.0)
    assert mem.insert(latent, depth, cam, exclude=exclude) == h * w - 2
    _, mask = mem.read(cam)
    assert not mask[1, 2] and not mask[3, 0] and mask.sum() == h * w - 2
    ex_l = torch.zeros(h, w, dtype=torch.bool)
    ex_l[0] = True
    mem2 = LatentSpatialMemory()
    assert mem2.insert(latent, depth, cam, exclude=ex_l) == (h - 1) * w


def test_reobservation_does_not_duplicate_and_new_surface_is_added():
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    h, w = cam.latent_size(16)
    mem = LatentSpatialMemory()
    depth = torch.full((64, 96), 4.0)
    assert mem.insert(torch.randn(48, h, w), depth, cam) == h * w
    assert mem.insert(torch.randn(48, h, w), depth * 1.01, cam) == 0  # same surface, 1 % off
    assert mem.last_insert == {"admissible": h * w, "revisited": h * w, "added": 0}
    closer = depth.clone()
    closer[:, :48] = 2.0  # an object appears in front on the left half
    assert mem.insert(torch.randn(48, h, w), closer, cam) == h * (w // 2)
    # refresh policy overwrites the stored feature instead
    mem2 = LatentSpatialMemory(on_revisit="refresh", feature_dtype=torch.float32)
    mem2.insert(torch.zeros(48, h, w), depth, cam)
    mem2.insert(torch.ones(48, h, w), depth, cam)
    assert mem2.num_points == h * w and (mem2.read(cam).latent == 1).all()


def test_depth_downsampling_methods_against_torch_references():
    g = torch.Generator().manual_seed(4)
    depth = torch.rand(64, 96, generator=g) * 5 + 1
    bil = F.interpolate(depth[None, None], size=(4, 6), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(downsample_depth(depth, 16, "bilinear"), bil, atol=1e-6)
    assert torch.allclose(downsample_depth(depth, 16, "area"), F.avg_pool2d(depth[None, None], 16)[0, 0], atol=1e-6)
    assert torch.equal(downsample_depth(depth, 16, "nearest"), depth[8::16, 8::16])
    blocks = depth.reshape(4, 16, 6, 16).permute(0, 2, 1, 3).reshape(4, 6, 256)
    assert torch.equal(downsample_depth(depth, 16, "median"), blocks.median(-1).values)
    # invalid pixels never become plausible depth
    bad = depth.clone()
    bad[7, 7] = float("nan")  # a bilinear tap of cell (0, 0)
    bad[20, 20] = -1.0  # inside cell (1, 1) but not a bilinear tap
    for m in ("bilinear", "area"):
        assert torch.isnan(downsample_depth(bad, 16, m)[0, 0])
    assert torch.isfinite(downsample_depth(bad, 16, "bilinear")[1, 1])
    assert torch.isnan(downsample_depth(bad, 16, "area")[1, 1])
    # sparse dropouts: bilinear loses fewer cells than area pooling (paper appendix)
    sparse = depth.clone()
    sparse[torch.rand(64, 96, generator=g) < 0.02] = 0.0
    rates = hole_rate(sparse, 16)
    assert rates["bilinear"]["hole_rate"] < rates["area"]["hole_rate"]


def test_save_load_roundtrip_and_corrupt_files(tmp_path):
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    mem = LatentSpatialMemory()
    mem.insert(torch.randn(48, 4, 6), torch.rand(64, 96) + 1, cam)
    path = tmp_path / "mem.safetensors"
    mem.save(path)
    other = LatentSpatialMemory()
    other.load(path)
    assert torch.equal(other.points, mem.points) and torch.equal(other.features, mem.features)
    assert torch.equal(other.read(cam).latent, mem.read(cam).latent)

    target = LatentSpatialMemory()
    target.insert(torch.randn(48, 4, 6), torch.rand(64, 96) + 2, cam)
    snap = snapshot(target)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    for bad in (tmp_path / "garbage.safetensors", truncated, tmp_path / "missing.safetensors"):
        with pytest.raises(MemoryFileError, match="path"):
            target.load(bad)
        assert_unchanged(target, snap)
    with pytest.raises(MemoryFileError, match="channels"):
        LatentSpatialMemory(channels=16).load(path)
    from safetensors.torch import save_file

    save_file({"points": torch.zeros(3, 3)}, str(tmp_path / "nofeat.safetensors"))
    with pytest.raises(MemoryFileError, match="features"):
        target.load(tmp_path / "nofeat.safetensors")
    assert_unchanged(target, snap)


def test_bad_inputs_raise_by_name_and_leave_memory_unchanged():
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    mem = LatentSpatialMemory(max_points=30)
    mem.insert(torch.randn(48, 4, 6), torch.full((64, 96), 2.0), cam)
    snap = snapshot(mem)
    good_latent, good_depth = torch.randn(48, 4, 6), torch.full((64, 96), 1.0)
    nan_latent = good_latent.clone()
    nan_latent[0, 0, 0] = float("nan")
    cases = [
        ((torch.randn(48, 5, 6), good_depth, cam), {}, "latent: expected shape"),
        ((nan_latent, good_depth, cam), {}, "latent: contains NaN"),
        ((good_latent.int(), good_depth, cam), {}, "latent: expected a floating-point"),
        ((good_latent, torch.ones(10, 10), cam), {}, "depth: expected shape"),
        ((good_latent, good_depth, "camera"), {}, "camera"),
        ((good_latent, good_depth, cam), {"exclude": torch.zeros(64, 96)}, "exclude: expected a bool"),
        ((good_latent, good_depth, cam), {"exclude": torch.zeros(3, 3, dtype=torch.bool)}, "exclude: expected shape"),
        ((good_latent, good_depth, cam), {}, "max_points"),  # 24 new points exceed the cap of 30
    ]
    for args, kwargs, message in cases:
        with pytest.raises(MemoryError_, match=message):
            mem.insert(*args, **kwargs)
        assert_unchanged(mem, snap)
    odd = Camera.from_fov(60, 96, 60)
    with pytest.raises(GeometryError, match="divisible"):
        mem.insert(good_latent, torch.ones(60, 96), odd)
    assert_unchanged(mem, snap)
    with pytest.raises(MemoryError_, match="depth_downsample"):
        LatentSpatialMemory(depth_downsample="cubic")


def test_nan_inf_negative_depth_cells_are_not_lifted():
    cam = Camera.from_fov(32, 32, 60)
    mem = LatentSpatialMemory()
    d = torch.tensor([[float("nan"), float("inf")], [-1.0, 2.0]])
    assert mem.insert(torch.randn(48, 2, 2), d, cam) == 1
    assert torch.isfinite(mem.points).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_keeps_the_same_promise_as_cpu():
    """CPU and CUDA round float32 differently: each readout is checked against the float64
    reference of its own points, and where both pick the same winner the features are equal."""
    g = torch.Generator().manual_seed(5)
    cam = Camera.from_fov(128, 192, 70, look_at([0, 0, 0], [1, 0.2, 0]))
    latents = [torch.randn(48, 8, 12, generator=g) for _ in range(3)]
    depths = [torch.rand(128, 192, generator=g) * 3 + 1 for _ in range(3)]
    # no de-duplication: its near-tie decisions could differ and shift the storage indices
    cpu, gpu = LatentSpatialMemory(dedup=False), LatentSpatialMemory(dedup=False, device="cuda")
    for lat, d in zip(latents, depths):
        cpu.insert(lat, d, cam)
        gpu.insert(lat.cuda(), d.cuda(), cam)
    a, b = cpu.read(cam), gpu.read(cam)
    b = type(b)(*(t.cpu() for t in (b.latent, b.mask, b.depth, b.index)))
    assert_readout_matches_reference(a, cpu.points, cam, 16, "cpu")
    assert_readout_matches_reference(b, gpu.points.cpu(), cam, 16, "cuda")
    same = a.index == b.index
    assert torch.equal(a.latent[:, same], b.latent[:, same])


def test_read_is_robust_to_non_finite_points_in_an_indexed_memory():
    """+inf points (once let in by an absurd pose) made ``read`` raise IndexError
    for some views of a memory big enough for occlusion culling (NaN block footprints became
    INT64_MIN indices). insert/load/add_points refuse them; read must not crash if one got in."""
    g = torch.Generator().manual_seed(11)
    n = 12000
    pts = torch.rand(n, 3, generator=g) * torch.tensor([13.0, 8.0, 6.0]) + torch.tensor([-5.0, -4.0, -3.0])
    pts[::500, 0] = float("inf")  # x = +inf shares an index block with finite x in [0, 1)
    pts[7::500] = float("nan")
    mem = LatentSpatialMemory(channels=4, feature_dtype=torch.float32, first_round_points=1000)
    mem._append(pts, torch.randn(n, 4, generator=g))  # bypasses validation, as a corrupt state would
    assert mem.index.num_blocks > 0 and not torch.isfinite(mem.index.bmax).all()
    for k, target in enumerate(([1, 0.1, 0.05], [1, -0.3, 0.2], [1, 0.4, -0.1])):
        cam = Camera.from_fov(128, 192, 75, look_at([-6, 0, 0], target))
        r = mem.read(cam)
        assert r.coverage > 0.9
        assert torch.isfinite(mem.points[r.index[r.mask]]).all(), "a non-finite point won a cell"
        with np.errstate(invalid="ignore", over="ignore"):
            assert_readout_matches_reference(r, mem.points, cam, 16, f"view {k}")


@pytest.mark.parametrize("on_revisit", ["keep", "refresh"])
def test_insert_refuses_points_that_are_not_finite_and_changes_nothing(on_revisit):
    """Finite but absurd input (here a depth of 3e38 m, finite in float32) lifts
    to +-inf world points; insert must refuse by name before any change (also the refresh of
    re-observed cells, which used to happen before the points were computed)."""
    cam = Camera.from_fov(64, 96, 150, look_at([0, 0, 0], [1, 0, 0]))  # wide: corner rays |x/z| ~ 3
    mem = LatentSpatialMemory(on_revisit=on_revisit, feature_dtype=torch.float32)
    mem.insert(torch.zeros(48, 4, 6), torch.full((64, 96), 2.0), cam)
    snap = snapshot(mem)
    depth = torch.full((4, 6), 2.0)  # re-observes every stored cell ...
    depth[0, 0] = 3e38  # ... except a corner cell whose point (|x| ~ 9e38) overflows float32
    depth[3, 5] = 5.0
    with pytest.raises(MemoryError_, match="depth: .*non-finite"):
        mem.insert(torch.ones(48, 4, 6), depth, cam)
    assert_unchanged(mem, snap)
    assert mem.last_insert["added"] == 24


def test_load_refuses_non_finite_points(tmp_path):
    from safetensors.torch import save_file

    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    mem = LatentSpatialMemory()
    mem.insert(torch.randn(48, 4, 6), torch.full((64, 96), 2.0), cam)
    snap = snapshot(mem)
    meta = {"format": "mirage_ros.LatentSpatialMemory", "version": "1", "channels": "48", "stride": "16",
            "feature_dtype": "bfloat16"}
    pts = torch.zeros(5, 3)
    pts[2, 1] = float("inf")
    save_file({"points": pts, "features": torch.zeros(5, 48, dtype=torch.bfloat16)}, str(tmp_path / "inf.safetensors"),
              metadata=meta)
    with pytest.raises(MemoryFileError, match="NaN or inf"):
        mem.load(tmp_path / "inf.safetensors")
    assert_unchanged(mem, snap)


def _memory_file(tmp_path, name, n=24, **meta_overrides):
    from safetensors.torch import save_file

    meta = {"format": "mirage_ros.LatentSpatialMemory", "version": "1", "channels": "48", "stride": "16",
            "feature_dtype": "bfloat16", **meta_overrides}
    g = torch.Generator().manual_seed(n)
    path = tmp_path / name
    save_file({"points": torch.rand(n, 3, generator=g), "features": torch.randn(n, 48, generator=g).bfloat16()},
              str(path), metadata=meta)
    return path


def test_load_respects_max_points_and_changes_nothing(tmp_path):
    """load() ignored memory.max_points."""
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    mem = LatentSpatialMemory(max_points=30)
    mem.insert(torch.randn(48, 4, 6), torch.full((64, 96), 2.0), cam)
    snap = snapshot(mem)
    with pytest.raises(MemoryFileError, match="max_points: .* holds 31 points, more than the cap of 30"):
        mem.load(_memory_file(tmp_path, "big.safetensors", n=31))
    assert_unchanged(mem, snap)
    mem.load(_memory_file(tmp_path, "fits.safetensors", n=30))
    assert mem.num_points == 30


def test_load_says_what_a_path_that_is_not_a_file_is(tmp_path):
    """A directory or /dev/zero was reported as 'does not exist'."""
    mem = LatentSpatialMemory()
    with pytest.raises(MemoryFileError, match="is a directory"):
        mem.load(tmp_path)
    if Path("/dev/zero").exists():
        with pytest.raises(MemoryFileError, match="not a regular file .*character device"):
            mem.load("/dev/zero")
    with pytest.raises(MemoryFileError, match="does not exist"):
        mem.load(tmp_path / "missing.safetensors")
    assert mem.num_points == 0


@pytest.mark.parametrize("field,value", [("channels", "abc"), ("stride", "1.5"), ("channels", "")])
def test_load_names_a_malformed_metadata_field(tmp_path, field, value):
    """channels='abc' in a file's metadata raised a bare ValueError."""
    mem = LatentSpatialMemory()
    with pytest.raises(MemoryFileError, match=f"{field}"):
        mem.load(_memory_file(tmp_path, "meta.safetensors", **{field: value}))
    assert mem.num_points == 0


@pytest.mark.parametrize("kwargs,field", [({"channels": "abc"}, "channels"), ({"stride": 2.5}, "stride"),
                                          ({"channels": True}, "channels"), ({"max_points": -1}, "max_points"),
                                          ({"max_points": "many"}, "max_points")])
def test_constructor_names_a_malformed_argument(kwargs, field):
    with pytest.raises(MemoryError_, match=f"^{field}: "):
        LatentSpatialMemory(**kwargs)


# -- observed-first readout (earliest_within) -----------------------------------------------------

def earliest_reference(points, cam, stride, tol):
    """The observed-first rule in float64: per cell, among points with z <= z_min (1 + tol), the
    smallest insertion index; plus per cell whether the decision is a near-tie on some machine
    (a point's depth within its budget of the limit, or the minimum itself a near-tie, or a point
    within its budget of the cell border)."""
    ref = float64_reference(points, cam, stride)
    h, w = ref["hw"]
    cell, z, tz, sure = ref["cell"], ref["z"], ref["tz"], ref["sure"]
    index = np.full(h * w, -1, np.int64)
    fragile = np.zeros(h * w, bool)
    for c in range(h * w):
        j = np.nonzero(cell == c)[0]
        if not len(j):
            continue
        zmin = z[j].min()
        lim = zmin * (1 + tol)
        cand = j[z[j] <= lim]
        index[c] = cand.min()
        slack = tz[j] + tz[j].max() * (1 + tol) + 2 * READ_RTOL * lim
        fragile[c] = bool((np.abs(z[j] - lim) <= slack).any() or not sure[j].all())
    return index, fragile


def test_earliest_within_hand_worked_example():
    """One cell, three inserts at the camera: 2.00 m (first), 1.95 m (2.5 % nearer: the same surface
    seen again), 1.50 m (a real occluder). With a 5 % tolerance the first insert keeps the cell
    against the 1.95 m copy; the 1.50 m occluder still wins; 0 is plain frontmost-wins."""
    cam = Camera(K32, torch.eye(4, dtype=torch.float64), 32, 32)
    mem = LatentSpatialMemory(channels=1, dedup=False, feature_dtype=torch.float32)
    for d, f in ((2.0, 1.0), (1.95, 2.0)):
        mem.insert(torch.full((1, 2, 2), f), torch.full((2, 2), d), cam)
    assert torch.equal(mem.read(cam).latent, torch.full((1, 2, 2), 2.0))  # frontmost: the later copy
    r = mem.read(cam, earliest_within=0.05)
    assert torch.equal(r.latent, torch.full((1, 2, 2), 1.0)) and torch.equal(r.index, torch.arange(4).view(2, 2))
    assert torch.allclose(r.depth, torch.full((2, 2), 2.0))  # the winner's own depth
    mem.insert(torch.full((1, 2, 2), 3.0), torch.full((2, 2), 1.5), cam)
    assert torch.equal(mem.read(cam, earliest_within=0.05).latent, torch.full((1, 2, 2), 3.0))
    assert torch.equal(LatentSpatialMemory(channels=1, earliest_within=0.05).read(cam).mask,
                       torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(MemoryError_, match="earliest_within"):
        mem.read(cam, earliest_within=float("nan"))
    with pytest.raises(MemoryError_, match="earliest_within"):
        LatentSpatialMemory(channels=1, earliest_within=-0.1)


@pytest.mark.slow
@pytest.mark.parametrize("occlusion", [True, False])
def test_earliest_within_keeps_the_promise_on_a_large_random_memory(occlusion):
    """Block index + culling (both passes) against the float64 observed-first reference: winners
    equal except where the decision is a near-tie on some machine."""
    g = torch.Generator().manual_seed(11)
    n = 60000
    pts = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([20.0, 20.0, 6.0])
    pts[40000:50000] = pts[:10000] * 0.98  # later copies 2 % nearer along the ray from the origin
    mem = LatentSpatialMemory(channels=4, feature_dtype=torch.float32, block_size=1.0,
                              occlusion_culling=occlusion, first_round_points=2000, earliest_within=0.05)
    mem._append(pts[:55000], torch.randn(55000, 4, generator=g))
    mem._append(pts[55000:], torch.randn(n - 55000, 4, generator=g))
    differs = 0
    for k, target in enumerate(([5, 1, 0.5], [-3, 4, 0], [0.5, 0.5, 2.5])):
        cam = Camera.from_fov(128, 192, 75, look_at([0, 0, 0], target))
        r = mem.read(cam)
        ref, fragile = earliest_reference(mem.points, cam, 16, 0.05)
        got = r.index.flatten().numpy()
        bad = (got != ref) & ~fragile
        assert not bad.any(), f"view {k}: cells {np.nonzero(bad)[0][:5]} differ from the reference outside near-ties"
        differs += int((got != ref).sum())
        assert (ref >= 0).sum() > 0.9 * len(ref)
        plain = mem.read(cam, earliest_within=0.0).index.flatten().numpy()
        assert (plain != got).sum() > 10  # the rule changes winners here (the 2 % nearer copies)
        r2 = mem.read(cam)
        assert torch.equal(r.index, r2.index) and torch.equal(r.depth, r2.depth)
    assert differs <= 30
