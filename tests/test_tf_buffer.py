"""The ROS-free transform buffer (``mirage_ros.ros.tf_buffer``) against chains worked out by hand.

Every expected matrix below is written out from the frames' definitions, not computed with the
code under test: a robot at (1, 2, 0) yawed 90 degrees (facing +y of the map), its camera link
0.1 m ahead of and 0.5 m above the base, and the REP 103 optical frame under the link.
"""
import math
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from mirage_ros.geometry import Camera
from mirage_ros.ros.tf_buffer import (
    LINK_FROM_OPTICAL,
    LINK_TO_OPTICAL_Q,
    Extrapolation,
    FrameMissing,
    NotConnected,
    TfInputError,
    TfPoseQueue,
    TransformBuffer,
    transforms_from_msg,
)

S = 1_000_000_000


def rigid(R, t):
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64)
    T[:3, 3] = t
    return T


def rz(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def qz(deg):  # quaternion (x, y, z, w) of a rotation about z
    return (0.0, 0.0, math.sin(math.radians(deg) / 2), math.cos(math.radians(deg) / 2))


def tf(parent, child, stamp_ns, t, q):
    return NS(header=NS(frame_id=parent, stamp=NS(sec=stamp_ns // S, nanosec=stamp_ns % S)), child_frame_id=child,
              transform=NS(translation=NS(x=t[0], y=t[1], z=t[2]), rotation=NS(x=q[0], y=q[1], z=q[2], w=q[3])))


def feed(buf, transforms, static=False):
    good, bad = transforms_from_msg(NS(transforms=transforms))
    assert not bad, bad
    for parent, child, stamp, T in good:
        buf.set_transform(parent, child, stamp, T, static=static)


# the optical frame in the camera link, written out: optical x (right) = link -y, optical y
# (down) = link -z, optical z (forward) = link +x
LINK_FROM_OPTICAL_BY_HAND = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])
# the robot of the module docstring: map_from_optical. Position: base (1, 2, 0) + yaw90 * (0.1, 0, 0.5)
# = (1, 2.1, 0.5). Axes: optical x (right of a camera facing +y) = map +x, optical y (down) = map -z,
# optical z (forward) = map +y.
MAP_FROM_OPTICAL = np.array([[1, 0, 0, 1.0], [0, 0, 1, 2.1], [0, -1, 0, 0.5], [0, 0, 0, 1]])


def robot(buf, stamps=(1 * S,)):
    feed(buf, [tf("map", "odom", 0, (1, 0, 0), (0, 0, 0, 1))], static=True)
    feed(buf, [tf("base_link", "camera_link", 0, (0.1, 0, 0.5), (0, 0, 0, 1)),
               tf("camera_link", "camera_optical_frame", 0, (0, 0, 0), LINK_TO_OPTICAL_Q)], static=True)
    for st in stamps:
        feed(buf, [tf("odom", "base_link", st, (0, 2, 0), qz(90))])


def test_link_to_optical_constant_is_the_rep103_rotation():
    assert np.allclose(LINK_FROM_OPTICAL, LINK_FROM_OPTICAL_BY_HAND)
    good, _ = transforms_from_msg(NS(transforms=[tf("a", "b", 0, (0, 0, 0), LINK_TO_OPTICAL_Q)]))
    assert np.allclose(good[0][3], LINK_FROM_OPTICAL_BY_HAND, atol=1e-12)


def test_chain_through_the_tree_matches_the_hand_worked_pose():
    buf = TransformBuffer()
    robot(buf)
    T = buf.lookup("map", "camera_optical_frame", 1 * S)
    assert np.allclose(T, MAP_FROM_OPTICAL, atol=1e-12)
    # the reverse lookup is the inverse; lookups from a frame to itself are the identity
    assert np.allclose(buf.lookup("camera_optical_frame", "map", 1 * S) @ MAP_FROM_OPTICAL, np.eye(4), atol=1e-12)
    assert np.allclose(buf.lookup("odom", "odom", 5 * S), np.eye(4))
    # between two branches below base_link: a lidar 0.3 m above the base, no rotation
    feed(buf, [tf("base_link", "lidar", 0, (0, 0, 0.3), (0, 0, 0, 1))], static=True)
    # optical origin in lidar coordinates: base (0.1, 0, 0.5) - (0, 0, 0.3) = (0.1, 0, 0.2)
    T = buf.lookup("lidar", "camera_optical_frame", 1 * S)
    assert np.allclose(T, rigid(LINK_FROM_OPTICAL_BY_HAND[:3, :3], (0.1, 0, 0.2)), atol=1e-12)


def test_interpolation_by_stamp_is_slerp_and_lerp():
    buf = TransformBuffer()
    feed(buf, [tf("odom", "base", 1 * S, (0, 0, 0), qz(0)), tf("odom", "base", 2 * S, (2, 0, 0), qz(90))])
    # a rotation about one axis interpolates linearly in angle: 45 deg at the midpoint, 22.5 at a quarter
    assert np.allclose(buf.lookup("odom", "base", 1_500_000_000), rigid(rz(45), (1, 0, 0)), atol=1e-12)
    assert np.allclose(buf.lookup("odom", "base", 1_250_000_000), rigid(rz(22.5), (0.5, 0, 0)), atol=1e-12)
    assert np.allclose(buf.lookup("odom", "base", 2 * S), rigid(rz(90), (2, 0, 0)), atol=1e-12)
    # a sample that arrives out of order is sorted in
    feed(buf, [tf("odom", "base", 1_500_000_000, (5, 0, 0), qz(0))])
    assert np.allclose(buf.lookup("odom", "base", 1_250_000_000), rigid(rz(0), (2.5, 0, 0)), atol=1e-12)


def test_latest_time_zero_is_the_newest_time_every_edge_has():
    buf = TransformBuffer()
    feed(buf, [tf("map", "odom", 1 * S, (0, 0, 0), qz(0)), tf("map", "odom", 3 * S, (2, 0, 0), qz(0))])
    feed(buf, [tf("odom", "base", 1 * S, (0, 0, 0), qz(0)), tf("odom", "base", 2 * S, (0, 4, 0), qz(0))])
    assert buf.latest_common_time("map", "base") == 2 * S
    # at 2 s: map->odom is halfway (1, 0, 0), odom->base at its newest (0, 4, 0)
    assert np.allclose(buf.lookup("map", "base", 0), rigid(np.eye(3), (1, 4, 0)))


def test_extrapolation_errors_and_tolerance():
    buf = TransformBuffer(tolerance_ns=0)
    feed(buf, [tf("odom", "base", 10 * S, (0, 0, 0), qz(0)), tf("odom", "base", 11 * S, (1, 0, 0), qz(0))])
    with pytest.raises(Extrapolation) as past:
        buf.lookup("odom", "base", 9 * S)
    assert not past.value.future and not past.value.retry and "before its oldest" in str(past.value)
    with pytest.raises(Extrapolation) as fut:
        buf.lookup("odom", "base", 11 * S + 1)
    assert fut.value.future and fut.value.retry and "after its newest" in str(fut.value)
    tol = TransformBuffer(tolerance_ns=50_000_000)
    feed(tol, [tf("odom", "base", 10 * S, (0, 0, 0), qz(0)), tf("odom", "base", 11 * S, (1, 0, 0), qz(0))])
    # within 50 ms of either end: the end sample, not an extrapolated one
    assert np.allclose(tol.lookup("odom", "base", 11 * S + 40_000_000)[:3, 3], (1, 0, 0))
    assert np.allclose(tol.lookup("odom", "base", 10 * S - 40_000_000)[:3, 3], (0, 0, 0))
    with pytest.raises(Extrapolation):
        tol.lookup("odom", "base", 11 * S + 60_000_000)


def test_missing_frames_and_disconnected_trees_say_so():
    buf = TransformBuffer()
    robot(buf)
    with pytest.raises(FrameMissing, match="'camera' does not exist"):
        buf.lookup("map", "camera", 1 * S)
    feed(buf, [tf("world", "other_robot", 0, (0, 0, 0), (0, 0, 0, 1))], static=True)
    with pytest.raises(NotConnected, match="not connected"):
        buf.lookup("map", "other_robot", 1 * S)


def test_static_edges_hold_at_every_stamp():
    buf = TransformBuffer()
    robot(buf, stamps=(1 * S, 2 * S))
    for st in (1 * S, 1_700_000_000, 2 * S):
        assert np.allclose(buf.lookup("base_link", "camera_optical_frame", st),
                           rigid(LINK_FROM_OPTICAL_BY_HAND[:3, :3], (0.1, 0, 0.5)), atol=1e-12)
    # only static edges: any stamp (the static chain has no time)
    assert np.allclose(buf.lookup("base_link", "camera_optical_frame", 0)[:3, 3], (0.1, 0, 0.5))


def test_history_is_bounded_by_cache_time_and_count():
    buf = TransformBuffer(cache_time_ns=2 * S, max_samples=100)
    for k in range(50):  # 10 Hz for 5 s
        feed(buf, [tf("odom", "base", k * S // 10, (k, 0, 0), qz(0))])
    st = buf.edges["base"].stamps
    assert st[-1] == 49 * S // 10 and st[0] >= st[-1] - 2 * S and len(st) == 21
    with pytest.raises(Extrapolation):
        buf.lookup("odom", "base", 1 * S)  # dropped
    small = TransformBuffer(cache_time_ns=100 * S, max_samples=5)
    for k in range(20):
        feed(small, [tf("odom", "base", k * S, (k, 0, 0), qz(0))])
    assert small.edges["base"].stamps == [15 * S, 16 * S, 17 * S, 18 * S, 19 * S]


def test_time_jump_backwards_clears_the_edge():
    buf = TransformBuffer()
    robot(buf, stamps=(100 * S, 101 * S))
    feed(buf, [tf("odom", "base_link", 5 * S, (0, 2, 0), qz(90))])  # a bag looped
    assert buf.counts["resets"] == 1 and buf.edges["base_link"].stamps == [5 * S]
    assert np.allclose(buf.lookup("map", "camera_optical_frame", 5 * S), MAP_FROM_OPTICAL, atol=1e-12)
    with pytest.raises(Extrapolation):
        buf.lookup("map", "camera_optical_frame", 100 * S)
    # a sample a little older than the newest (within the jump threshold) is an ordinary late one
    feed(buf, [tf("odom", "base_link", 4_500_000_000, (0, 2, 0), qz(90))])
    assert buf.counts["resets"] == 1 and len(buf.edges["base_link"].stamps) == 2


def test_bad_transforms_are_refused_and_change_nothing():
    buf = TransformBuffer()
    robot(buf)
    before = {c: (e.parent, list(e.stamps)) for c, e in buf.edges.items()}
    good, bad = transforms_from_msg(NS(transforms=[
        tf("odom", "base_link", 2 * S, (float("nan"), 0, 0), qz(0)),
        tf("odom", "base_link", 2 * S, (0, 0, 0), (0, 0, 0, 2.0)),  # not a unit quaternion
        tf("odom", "base_link", 2 * S, (0, 0, 0), (0, 0, float("inf"), 1.0)),
    ]))
    assert good == [] and len(bad) == 3 and "NaN" in bad[0] and "norm" in bad[1]
    for parent, child, why in (("", "x", "empty"), ("/map", "x", "leading slash"), ("x", "x", "itself"),
                               ("camera_optical_frame", "odom", "loop")):
        with pytest.raises(TfInputError, match=why.split()[0] if why != "leading slash" else "starts with"):
            buf.set_transform(parent, child, 2 * S, np.eye(4))
    with pytest.raises(TfInputError, match="finite"):
        buf.set_transform("odom", "base_link", 2 * S, np.full((4, 4), np.nan))
    assert {c: (e.parent, list(e.stamps)) for c, e in buf.edges.items()} == before
    assert buf.counts["rejected"] == 5


def test_camera_link_worked_example_projects_where_the_robot_looks():
    """Isaac Sim / Gazebo publish the camera LINK only: with camera_is_link the queue appends the
    fixed link -> optical rotation, and the memory's camera sees what the robot faces."""
    buf = TransformBuffer()
    feed(buf, [tf("map", "camera_link", 1 * S, (1, 2.1, 0.5), qz(90))])  # the link only, facing +y
    q = TfPoseQueue(buf.lookup, "map", camera_is_link=True)
    (stamp, T), = q.request(1 * S, "camera_link", 0)[0]
    assert stamp == 1 * S and np.allclose(T, MAP_FROM_OPTICAL, atol=1e-12)
    cam = Camera.from_fov(48, 64, 90.0, torch.from_numpy(np.linalg.inv(T)))
    from mirage_ros.geometry import project_pixels

    pts = torch.tensor([[1.0, 5.1, 0.5],   # 3 m straight ahead: the principal point
                        [2.0, 5.1, 0.5],   # 1 m to the map's +x: the robot's right -> u > cx
                        [1.0, 5.1, 1.5]],  # 1 m up -> v < cy (image y points down)
                       dtype=torch.float64)
    u, v, z = project_pixels(pts, cam.K, cam.world_to_camera)
    assert np.allclose([u[0], v[0], z[0]], [32, 24, 3.0])
    assert u[1] > 32 and abs(v[1] - 24) < 1e-9 and v[2] < 24 and abs(u[2] - 32) < 1e-9
    # without the flag the link frame would be used as if it were optical: it looks up the map's -z... wrongly
    q2 = TfPoseQueue(buf.lookup, "map", camera_is_link=False)
    (_, T2), = q2.request(1 * S, "camera_link", 0)[0]
    assert not np.allclose(T2, MAP_FROM_OPTICAL)


def test_pose_queue_waits_for_late_transforms_then_resolves_or_gives_up():
    buf = TransformBuffer()
    robot(buf, stamps=(1 * S,))
    q = TfPoseQueue(buf.lookup, "map", wait_ns=500_000_000)
    # the image at 1.2 s comes before the tf sample covering it (tf extrapolation at start-up)
    resolved, failed = q.request(1_200_000_000, "camera_optical_frame", now_ns=0)
    assert resolved == [] and failed == [] and len(q.pending) == 1
    assert q.poll(100_000_000) == ([], [])
    feed(buf, [tf("odom", "base_link", 2 * S, (0, 2, 0), qz(90))])  # same pose: interpolation is exact
    resolved, failed = q.poll(200_000_000)
    assert failed == [] and [s for s, _ in resolved] == [1_200_000_000]
    assert np.allclose(resolved[0][1], MAP_FROM_OPTICAL, atol=1e-12) and not q.pending
    # a transform that never comes: dropped once the wait is over, with the reason
    assert q.request(5 * S, "camera_optical_frame", now_ns=1 * S) == ([], [])
    assert q.poll(1_400_000_000) == ([], [])
    resolved, failed = q.poll(1_500_000_000)
    assert resolved == [] and failed[0][0] == 5 * S
    assert "after its newest" in failed[0][1] and "waited 0.5 s" in failed[0][1]
    # before the oldest sample: waiting cannot help, refused at once
    resolved, failed = q.request(S // 2, "camera_optical_frame", now_ns=2 * S)
    assert resolved == [] and "before its oldest" in failed[0][1] and not q.pending
    # an unknown frame waits (its /tf_static may still come), then resolves when it does
    assert q.request(2 * S, "camera2_optical_frame", now_ns=2 * S) == ([], [])
    feed(buf, [tf("camera_link", "camera2_optical_frame", 0, (0, 0, 0), LINK_TO_OPTICAL_Q)], static=True)
    resolved, failed = q.poll(2 * S + 1)
    assert failed == [] and np.allclose(resolved[0][1], MAP_FROM_OPTICAL, atol=1e-12)


def test_pose_queue_is_bounded_and_needs_a_frame():
    buf = TransformBuffer()
    robot(buf)
    q = TfPoseQueue(buf.lookup, "map", wait_ns=S, max_pending=3)
    fails = []
    for k in range(5):
        fails += q.request(10 * S + k, "camera_optical_frame", 0)[1]
    assert len(q.pending) == 3 and [s for s, _ in fails] == [10 * S, 10 * S + 1] and "queued" in fails[0][1]
    assert "tf.camera_frame" in q.request(1 * S, "", 0)[1][0][1]
    named = TfPoseQueue(buf.lookup, "map", camera_frame="camera_optical_frame")
    assert np.allclose(named.request(1 * S, "ignored", 0)[0][0][1], MAP_FROM_OPTICAL, atol=1e-12)
    # wait 0: no queue, the reason at once
    r, f = TfPoseQueue(buf.lookup, "map", wait_ns=0).request(3 * S, "camera_optical_frame", 0)
    assert r == [] and "after its newest" in f[0][1]


def test_several_moving_edges_interpolate_together():
    """map -> odom drifts along y while odom -> base turns and drives: at the midpoint, odom is
    half-way (0, 1, 0), base at 45 degrees half-way along x; composed by hand."""
    buf = TransformBuffer()
    feed(buf, [tf("map", "odom", 1 * S, (0, 0, 0), qz(0)), tf("map", "odom", 3 * S, (0, 2, 0), qz(0))])
    feed(buf, [tf("odom", "base", 1 * S, (0, 0, 0), qz(0)), tf("odom", "base", 3 * S, (4, 0, 0), qz(90))])
    feed(buf, [tf("base", "cam", 0, (1, 0, 0), (0, 0, 0, 1))], static=True)
    # cam origin: odom (0, 1, 0) + base (2, 0, 0) + Rz(45) (1, 0, 0)
    c = math.sqrt(0.5)
    expect = rigid(rz(45), (2 + c, 1 + c, 0))
    assert np.allclose(buf.lookup("map", "cam", 2 * S), expect, atol=1e-12)
    # and the other way round, through the same edges
    assert np.allclose(buf.lookup("cam", "map", 2 * S) @ expect, np.eye(4), atol=1e-12)
