"""Camera maths against hand-worked values and against kornia (an independent implementation)."""
import math

import numpy as np
import pytest
import torch

from mirage_ros.geometry import (
    Camera,
    GeometryError,
    backproject,
    check_rigid,
    invert_rigid,
    look_at,
    matrix_to_quaternion,
    pose_to_matrix,
    project,
    quaternion_to_matrix,
)

kornia = pytest.importorskip("kornia")


def random_pose(seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, generator=g, dtype=torch.float64)
    q = q / q.norm()
    E = torch.eye(4, dtype=torch.float64)
    E[:3, :3] = quaternion_to_matrix(q)
    E[:3, 3] = torch.randn(3, generator=g, dtype=torch.float64)
    return E


def test_latent_intrinsics_scale_rows_by_grid_ratios():
    K = torch.tensor([[500.0, 0, 320.0], [0, 480.0, 176.0], [0, 0, 1]], dtype=torch.float64)
    cam = Camera(K, torch.eye(4), 352, 640)
    assert cam.latent_size(16) == (22, 40)
    Kl = cam.latent_K(16)
    # w/W = 40/640 = 1/16 on row x, h/H = 22/352 = 1/16 on row y, last row untouched
    expected = torch.tensor([[500 / 16, 0, 320 / 16], [0, 480 / 16, 176 / 16], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(Kl, expected)


def test_backproject_hand_worked_cell_centres():
    # 2x2 latent grid, K_l = [[2, 0, 1], [0, 2, 1], [0, 0, 1]], camera at world (-1, -2, -3)
    # (world_to_camera translation t = (1, 2, 3)).
    Kl = torch.tensor([[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]], dtype=torch.float64)
    E = torch.eye(4, dtype=torch.float64)
    E[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    depth = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    pts = backproject(depth, Kl, E)
    # cell (u=0, v=0): centre (0.5, 0.5) -> ((0.5-1)/2, (0.5-1)/2, 1) * d=1 = (-0.25, -0.25, 1)
    # world = camera - t
    assert torch.allclose(pts[0, 0], torch.tensor([-1.25, -2.25, -2.0], dtype=torch.float64))
    # cell (u=1, v=0), d=2: (0.25*2, -0.25*2, 2) = (0.5, -0.5, 2) -> (-0.5, -2.5, -1)
    assert torch.allclose(pts[0, 1], torch.tensor([-0.5, -2.5, -1.0], dtype=torch.float64))
    # cell (u=0, v=1), d=2: (-0.5, 0.5, 2) -> (-1.5, -1.5, -1)
    assert torch.allclose(pts[1, 0], torch.tensor([-1.5, -1.5, -1.0], dtype=torch.float64))
    # cell (u=1, v=1), d=1: (0.25, 0.25, 1) -> (-0.75, -1.75, -2)
    assert torch.allclose(pts[1, 1], torch.tensor([-0.75, -1.75, -2.0], dtype=torch.float64))


def test_projection_floors_not_rounds():
    Kl = torch.tensor([[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]], dtype=torch.float64)
    E = torch.eye(4, dtype=torch.float64)
    # x/z = 0.2 -> u = 2*0.2 + 1 = 1.4 -> floor 1 (round would also give 1); x/z = 0.3 -> 1.6 -> 1 (round: 2)
    pts = torch.tensor([[0.2, 0.0, 1.0], [0.3, 0.0, 1.0], [-0.6, 0.0, 1.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    u, v, z, valid = project(pts, Kl, E, 2, 2)
    assert u[:2].tolist() == [1, 1]
    assert v[:2].tolist() == [1, 1]
    assert valid.tolist() == [True, True, False, False]  # u = -0.2 -> -1 is outside; z < 0 never counts


def test_backproject_matches_kornia_depth_to_3d():
    K = torch.tensor([[310.0, 0, 225.0], [0, 305.0, 129.0], [0, 0, 1]], dtype=torch.float64)
    E = random_pose(3)
    cam = Camera(K, E, 256, 448)
    Kl = cam.latent_K(16)
    depth = torch.rand(16, 28, dtype=torch.float64) * 5 + 0.5
    ours = backproject(depth, Kl, E)
    # kornia puts pixel centres at integer coordinates; ours at u + 1/2: shift the principal point.
    Kk = Kl.clone()
    Kk[0, 2] -= 0.5
    Kk[1, 2] -= 0.5
    cam_pts = kornia.geometry.depth.depth_to_3d_v2(depth[None], Kk[None], normalize_points=False)[0]  # (h, w, 3)
    world = kornia.geometry.linalg.transform_points(torch.linalg.inv(E)[None], cam_pts.reshape(1, -1, 3))[0]
    assert torch.allclose(ours.reshape(-1, 3), world, atol=1e-9)


def test_project_matches_kornia_and_roundtrips_cells():
    K = torch.tensor([[300.0, 0, 224.0], [0, 300.0, 128.0], [0, 0, 1]], dtype=torch.float64)
    E = random_pose(5)
    cam = Camera(K, E, 256, 448)
    h, w = cam.latent_size(16)
    Kl = cam.latent_K(16)
    g = torch.Generator().manual_seed(0)
    pts_cam = torch.randn(500, 3, generator=g, dtype=torch.float64)
    pts_cam[:, 2] = pts_cam[:, 2].abs() * 3 + 0.1
    world = kornia.geometry.linalg.transform_points(torch.linalg.inv(E)[None], pts_cam[None])[0]
    u, v, z, valid = project(world, Kl, E, h, w)
    uv = kornia.geometry.camera.perspective.project_points(pts_cam, Kl)
    # two libraries round differently in the last bits: compare the floors only away from cell
    # borders (1e-9 cells, ~1e6 float64 ulps; random points land that close with odds ~1e-9)
    clear = ((uv - uv.round()).abs() > 1e-9).all(1)
    assert clear.float().mean() > 0.99
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    assert torch.equal(valid[clear], inside[clear])
    ok = valid & clear
    assert torch.equal(u[ok], torch.floor(uv[ok, 0]).long())
    assert torch.equal(v[ok], torch.floor(uv[ok, 1]).long())
    assert torch.allclose(z, pts_cam[:, 2])
    # back-projection then projection returns every cell to itself (pixel-centre convention)
    d = torch.rand(h, w, dtype=torch.float64) + 0.5
    p = backproject(d, Kl, E).reshape(-1, 3)
    u2, v2, _, ok = project(p, Kl, E, h, w)
    vv, uu = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    assert ok.all() and torch.equal(u2, uu.flatten()) and torch.equal(v2, vv.flatten())


def test_look_at_opencv_axes_in_z_up_world():
    E = look_at([0, 0, 0], [1, 0, 0])  # look along world +x with world z up
    # camera z (forward) = world x, camera x (right) = world -y, camera y (down) = world -z
    assert torch.allclose(E[:3, :3], torch.tensor([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=torch.float64))
    cam = Camera.from_fov(64, 64, 90, look_at([1, 2, 3], [4, 2, 3]))
    assert torch.allclose(cam.center, torch.tensor([1.0, 2, 3], dtype=torch.float64))


def test_quaternion_roundtrip_and_kornia():
    for seed in range(5):
        E = random_pose(seed)
        q = matrix_to_quaternion(E[:3, :3])
        assert torch.allclose(quaternion_to_matrix(q), E[:3, :3], atol=1e-12)
        # kornia uses (w, x, y, z)
        Rk = kornia.geometry.conversions.quaternion_to_rotation_matrix(q[[3, 0, 1, 2]][None])[0]
        assert torch.allclose(Rk, E[:3, :3], atol=1e-9)
    T = pose_to_matrix([1, 2, 3], [0, 0, math.sin(0.25), math.cos(0.25)])
    assert torch.allclose(invert_rigid(T) @ T, torch.eye(4, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize(
    "E, message",
    [
        (torch.full((4, 4), float("nan")), "NaN"),
        (torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])), "orthonormal"),
        (torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0])), "determinant"),
        (torch.eye(3), "shape"),
    ],
)
def test_bad_extrinsics_are_rejected_by_name(E, message):
    with pytest.raises(GeometryError, match="world_to_camera") as err:
        Camera(torch.tensor([[10.0, 0, 16], [0, 10, 16], [0, 0, 1]]), E, 32, 32)
    assert message in str(err.value)


def test_bad_intrinsics_sizes_and_stride():
    E = torch.eye(4)
    with pytest.raises(GeometryError, match="K: focal"):
        Camera(torch.tensor([[0.0, 0, 16], [0, 10, 16], [0, 0, 1]]), E, 32, 32)
    with pytest.raises(GeometryError, match="K: contains NaN"):
        Camera(torch.tensor([[float("nan"), 0, 16], [0, 10, 16], [0, 0, 1]]), E, 32, 32)
    with pytest.raises(GeometryError, match="height"):
        Camera(torch.tensor([[10.0, 0, 16], [0, 10, 16], [0, 0, 1]]), E, 0, 32)
    cam = Camera(torch.tensor([[10.0, 0, 16], [0, 10, 16], [0, 0, 1]]), E, 40, 32)
    with pytest.raises(GeometryError, match="not divisible by the VAE stride 16"):
        cam.latent_size(16)
    with pytest.raises(GeometryError, match="orientation"):
        quaternion_to_matrix([0, 0, 0, 2.0])
    with pytest.raises(GeometryError, match="NaN"):
        quaternion_to_matrix([0, 0, float("nan"), 1.0])
    assert check_rigid(np.eye(4)).dtype == torch.float64


def test_finite_but_absurd_cameras_are_rejected_by_name():
    """A pose 1e300 m away or fx = fy = 1e-38 is finite and would store inf/NaN points. Documented
    ranges (geometry's, the only ones): a camera at most MAX_TRANSLATION (1e5 m) from the origin;
    fields of view within FOV_RANGE_DEG (0.01 .. 179 deg) along each axis; principal point within
    1e3 x (f + size) of the image centre; |skew| <= max(fx, fy)."""
    from mirage_ros.geometry import FOV_RANGE_DEG, MAX_TRANSLATION, focal_range

    assert MAX_TRANSLATION == 1e5 and FOV_RANGE_DEG == (0.01, 179.0)
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]], dtype=torch.float64)
    far = torch.eye(4, dtype=torch.float64)
    far[0, 3] = 1e300
    with pytest.raises(GeometryError, match="world_to_camera: translation"):
        Camera(K, far, 32, 32)
    far[0, 3], far[1, 3] = 0.8e5, 0.61e5  # 100.6 km from the origin: the distance counts, not each axis
    with pytest.raises(GeometryError, match="world_to_camera: translation"):
        Camera(K, far, 32, 32)
    far[1, 3] = 0.59e5  # a camera 99.3 km from the origin is still a camera
    assert Camera(K, far, 32, 32).center[0] == -0.8e5
    with pytest.raises(GeometryError, match="pose.position"):
        pose_to_matrix([1e300, 0, 0], [0, 0, 0, 1])
    bad_K = {
        "fx": [[1e-38, 0, 16], [0, 40, 16], [0, 0, 1]],
        "fy": [[40, 0, 16], [0, 1e-30, 16], [0, 0, 1]],
        "fx ": [[1e30, 0, 16], [0, 40, 16], [0, 0, 1]],
        "cx": [[40, 0, 1e30], [0, 40, 16], [0, 0, 1]],
        "cy": [[40, 0, 16], [0, 40, -1e9], [0, 0, 1]],
        "skew": [[40, 100, 16], [0, 40, 16], [0, 0, 1]],
    }
    for field, k in bad_K.items():
        with pytest.raises(GeometryError, match=f"K: {field.strip()}"):
            Camera(torch.tensor(k, dtype=torch.float64), torch.eye(4), 32, 32)
    # the edges of the documented ranges are accepted, just beyond them refused: 179 and 0.01 degrees over 32 px
    lo, hi = focal_range(32)
    assert lo == pytest.approx(16 / np.tan(np.radians(89.5))) and hi == pytest.approx(16 / np.tan(np.radians(0.005)))
    for f in (lo * (1 + 1e-9), hi * (1 - 1e-9)):
        Camera(torch.tensor([[f, 0, 16], [0, f, 16], [0, 0, 1]], dtype=torch.float64), torch.eye(4), 32, 32)
    for f in (lo * 0.999, hi * 1.001):
        with pytest.raises(GeometryError, match="K: fx: .* field of view"):
            Camera(torch.tensor([[f, 0, 16], [0, 40, 16], [0, 0, 1]], dtype=torch.float64), torch.eye(4), 32, 32)
    # a far off-axis crop
    Camera(torch.tensor([[300, 2, -600], [0, 300, 640], [0, 0, 1]], dtype=torch.float64), torch.eye(4), 9, 9)


# -- the one vectorised set of pose maths, against kornia ----------------------

def _random_quaternions(n, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return q / q.norm(dim=1, keepdim=True)


def test_vectorised_quaternions_match_kornia_and_return_the_callers_array_type():
    from mirage_ros.geometry import matrices_to_quaternions, quaternions_to_matrices

    q = _random_quaternions(500, 20)
    # w = 0: Shepperd's other branches
    q[:4] = torch.tensor([[0, 0, 0, 1.0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    R = quaternions_to_matrices(q)
    Rk = kornia.geometry.conversions.quaternion_to_rotation_matrix(q[:, [3, 0, 1, 2]])  # kornia is (w, x, y, z)
    assert R.shape == (500, 3, 3) and torch.allclose(R, Rk, atol=1e-12)
    q2 = matrices_to_quaternions(R)
    qk = kornia.geometry.conversions.rotation_matrix_to_quaternion(R, eps=1e-12)[:, [1, 2, 3, 0]]
    qk = torch.where(qk[:, 3:] < 0, -qk, qk)
    assert (q2[:, 3] >= 0).all() and torch.allclose(q2, qk, atol=1e-9)
    assert torch.allclose(q2, torch.where(q[:, 3:] < 0, -q, q), atol=1e-12)  # round trip, w >= 0
    # numpy in, numpy out; any batch shape
    Rn = quaternions_to_matrices(q.numpy().reshape(5, 100, 4))
    assert isinstance(Rn, np.ndarray) and Rn.shape == (5, 100, 3, 3)
    assert np.allclose(Rn.reshape(-1, 3, 3), R.numpy(), atol=1e-15)
    assert isinstance(matrices_to_quaternions(Rn), np.ndarray)
    # the single-pose helpers are the same maths
    assert torch.allclose(quaternion_to_matrix(q[7]), R[7], atol=1e-15)
    assert torch.allclose(matrix_to_quaternion(R[7]), q2[7], atol=1e-15)


def test_vectorised_quaternions_name_the_first_bad_index():
    from mirage_ros.geometry import quaternions_to_matrices

    q = np.tile([0, 0, 0, 1.0], (5, 1))
    q[3] = [0, 0, 0, 2.0]
    with pytest.raises(GeometryError, match=r"poses\[3\].orientation: quaternion norm is 2"):
        quaternions_to_matrices(q, "poses[{i}].orientation")
    q[3] = [0, np.nan, 0, 1]
    with pytest.raises(GeometryError, match=r"^orientation\[3\]: quaternion contains NaN"):
        quaternions_to_matrices(q)


def test_rigid_inverse_and_compose_match_kornia():
    from mirage_ros.geometry import compose_rigid, invert_rigid, poses_to_matrices

    q = _random_quaternions(50, 21)
    t = torch.randn(50, 3, generator=torch.Generator().manual_seed(22), dtype=torch.float64) * 10
    T = poses_to_matrices(t, q)
    assert torch.allclose(T[:, :3, 3],
                          t) and torch.equal(T[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(50, 4))
    assert torch.allclose(invert_rigid(T), kornia.geometry.linalg.inverse_transformation(T), atol=1e-12)
    A, B = T[:25], T[25:]
    assert torch.allclose(compose_rigid(A, B), kornia.geometry.linalg.compose_transformations(A, B), atol=1e-12)
    assert torch.allclose(compose_rigid(T, invert_rigid(T)), torch.eye(4, dtype=torch.float64).expand(50, 4, 4),
                          atol=1e-12)
    Tn = poses_to_matrices(t.numpy(), q.numpy())
    assert isinstance(invert_rigid(Tn), np.ndarray)
    assert np.allclose(invert_rigid(Tn), invert_rigid(T).numpy(), atol=1e-15)
    far = t.clone()
    far[4, 2] = 2e6
    with pytest.raises(GeometryError, match=r"path\[4\].position: .*MAX_TRANSLATION"):
        poses_to_matrices(far, q, "path[{i}]")


def test_slerp_and_pose_interpolation_match_kornia():
    from kornia.geometry.quaternion import Quaternion

    from mirage_ros.geometry import interpolate_poses, poses_to_matrices, quaternions_to_matrices, slerp

    q0, q1 = _random_quaternions(200, 23), _random_quaternions(200, 24)
    q1[:3] = q0[:3]  # identical ends
    q1[3] = -q0[3]  # the same rotation with the other sign: no motion, not a full turn
    a = torch.rand(200, generator=torch.Generator().manual_seed(25), dtype=torch.float64)
    qs = slerp(q0, q1, a)
    qk = Quaternion(q0[:, [3, 0, 1, 2]]).slerp(Quaternion(q1[:, [3, 0, 1, 2]]), a).data[:, [1, 2, 3, 0]]
    assert torch.allclose(quaternions_to_matrices(qs), quaternions_to_matrices(qk), atol=1e-9)
    assert torch.allclose(quaternions_to_matrices(qs[3]), quaternions_to_matrices(q0[3]), atol=1e-12)
    # poses: positions linear in the fractional index, rotations slerped between the neighbours
    T = poses_to_matrices(torch.randn(4, 3, dtype=torch.float64), q0[:4])
    s = torch.tensor([0.0, 0.25, 1.0, 1.5, 3.0], dtype=torch.float64)
    Ti = interpolate_poses(T, s)
    assert torch.allclose(Ti[[0, 2, 4]], T[[0, 1, 3]], atol=1e-12)
    assert torch.allclose(Ti[1, :3, 3], 0.75 * T[0, :3, 3] + 0.25 * T[1, :3, 3])
    assert torch.allclose(Ti[3, :3, :3],
                          quaternions_to_matrices(slerp(q0[1], q0[2], torch.tensor(0.5, dtype=torch.float64))),
                          atol=1e-12)
    assert isinstance(interpolate_poses(T.numpy(), s.numpy()), np.ndarray)


def test_frustum_corners_match_kornia_unprojection():
    from mirage_ros.geometry import frustum_corners

    K = torch.tensor([[310.0, 0.0, 225.0], [0, 305.0, 129.0], [0, 0, 1]], dtype=torch.float64)
    c = frustum_corners(K, 256, 448, depth=2.5)
    uv = torch.tensor([[0.0, 0], [448, 0], [448, 256], [0, 256]], dtype=torch.float64)
    ck = kornia.geometry.camera.perspective.unproject_points(uv, torch.full((4, 1), 2.5, dtype=torch.float64), K)
    assert c.shape == (4, 3) and torch.allclose(c, ck, atol=1e-12)
    assert isinstance(frustum_corners(K.numpy(), 256, 448), np.ndarray)
    # kornia ignores skew; with skew the corners must still project (K p / z) onto the image corners
    K[0, 1] = 3.0
    c = frustum_corners(K, 256, 448, depth=2.5)
    pix = c @ K.T
    assert torch.allclose(pix[:, :2] / pix[:, 2:], uv,
                          atol=1e-12) and torch.allclose(c[:, 2], torch.full((4,), 2.5, dtype=torch.float64))
