"""A tf-only robot fills a live mirage_node's memory.

The peer (the probe, a real rclpy node) publishes no pose topic: /tf_static (latched, published
BEFORE the node starts: base -> camera_link -> camera_optical_frame, map -> odom), /tf (odom ->
base, after each image, so the node has to wait for it, as at start-up), image, camera_info and
depth. The node (pose.source tf) must observe every frame at the pose the pose topic would have
given: its memory/points equal the memory an in-process MirageCore builds from PoseStamped
poses, and its observed frustums sit where the scene's cameras are.
"""
import time

import numpy as np
import pytest
from rosprobe import start_node, wait_for

H, W = 64, 112
NS = "/tfbot"
S = 1_000_000_000
# unique frame names: /tf is shared by every node of the test session
WORLD, ODOM, BASE = "tfbot_map", "tfbot_odom", "tfbot_base"
LINK, OPT = "tfbot_camera_link", "tfbot_camera_optical_frame"


def rigid(yaw_deg, t):
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = t
    return T


MAP_FROM_ODOM = rigid(-20, (1.0, 0.5, 0.0))
BASE_FROM_LINK = rigid(0, (0.15, 0.0, 0.3))
# REP 103: the optical frame (x right, y down, z forward) in the camera link (x forward, y left, z up)
LINK_FROM_OPTICAL = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])


def odom_from_base(C):
    return np.linalg.inv(MAP_FROM_ODOM) @ C @ np.linalg.inv(BASE_FROM_LINK @ LINK_FROM_OPTICAL)


@pytest.fixture(scope="module")
def scene(room_loop):
    cams, frames = room_loop(8, H, W)
    return cams[:5], frames[:5]  # five distinct views: each adds points (and republishes the frustums)


def _tf(probe, parent, child, stamp, T, q=None):
    from mirage_ros.ros import outputs as out

    return out.transform_stamped_msg(probe.types, T, stamp, parent, child, q)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, probe):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    tmp = tmp_path_factory.mktemp("tfbot")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    static_pub = probe.node.create_publisher(TFMessage, "/tf_static", latched)
    static_pub.publish(TFMessage(transforms=[
        _tf(probe, WORLD, ODOM, 0, MAP_FROM_ODOM),
        _tf(probe, BASE, LINK, 0, BASE_FROM_LINK),
        _tf(probe, LINK, OPT, 0, LINK_FROM_OPTICAL, np.array([-0.5, 0.5, -0.5, 0.5])),
    ]))
    proc = start_node(tmp, NS, {"pose.source": "tf", "world_frame": WORLD, "tf.wait": 5.0,
                                "viz.stats_period": 0.1, "viz.cloud_period": 0.1, "viz.cloud_max_points": 10**6,
                                "imagined.frame_id": "tfbot_imagined_optical_frame", "memory.save_dir": str(tmp)})
    probe.watch(NS)
    pubs = {"image": probe.pub(f"{NS}/image", Image), "camera_info": probe.pub(f"{NS}/camera_info", CameraInfo),
            "depth": probe.pub(f"{NS}/depth", Image), "tf": probe.pub("/tf", TFMessage, depth=100)}
    try:
        probe.stats(NS, timeout=60)
        for k in ("image", "camera_info", "depth"):
            probe.wait_matched(pubs[k])
        wait_for(lambda: pubs["tf"].get_subscription_count() >= 1, 20, what="the node's /tf subscription")
        yield proc, pubs, static_pub
    finally:
        rc = proc.stop()
        print(proc.log()[-4000:])
        probe.node.destroy_publisher(static_pub)
    assert rc == 0, f"mirage_node exited with {rc}"


def test_tf_only_robot_fills_the_memory_with_the_pose_topic_poses(setup, probe, scene):
    from tf2_msgs.msg import TFMessage

    from mirage_ros.ros import convert as cv
    from mirage_ros.ros import outputs as out
    from mirage_ros.ros.bag import RosbagsTypes
    from mirage_ros.ros.core import MirageCore

    proc, pubs, _ = setup
    cams, frames = scene
    T = probe.types
    ref = MirageCore({"backend": "readout", "world_frame": WORLD, "viz.cloud_max_points": 10**6})
    ref.configure()
    B = RosbagsTypes()
    stamps = []
    for i, (cam, fr) in enumerate(zip(cams, frames)):
        st = 50 * S + i * S // 5
        stamps.append(st)
        C = cam.camera_to_world.numpy()
        pubs["camera_info"].publish(cv.camera_info_msg(T, cam.K.numpy(), H, W, st, OPT))
        pubs["depth"].publish(cv.image_msg(T, fr.depth.astype(np.float32), st, OPT, "32FC1"))
        pubs["image"].publish(cv.image_msg(T, fr.rgb, st, OPT))
        time.sleep(0.15)  # the image is in: its transform is not, yet
        if i == 2:
            # the base moves in a straight line through this frame: tf samples 40 ms before and
            # after it, none at its stamp; interpolation must give exactly the camera pose
            d = np.eye(4)
            d[0, 3] = 0.05
            ob = odom_from_base(C)
            msgs = [_tf(probe, ODOM, BASE, st - 40_000_000, ob @ np.linalg.inv(d)),
                    _tf(probe, ODOM, BASE, st + 40_000_000, ob @ d)]
        else:
            msgs = [_tf(probe, ODOM, BASE, st, odom_from_base(C))]
        pubs["tf"].publish(TFMessage(transforms=msgs))
        probe.wait_stats(NS, lambda s, n=i + 1: s.frames_observed >= n, timeout=20, what=f"frame {i} observed")
        # the pose-topic twin, in-process
        for m, h in ((cv.camera_info_msg(B, cam.K.numpy(), H, W, st, OPT), ref.intake.on_camera_info),
                     (cv.pose_stamped_msg(B, C, st, WORLD), ref.intake.on_pose),
                     (cv.image_msg(B, fr.depth.astype(np.float32), st, OPT, "32FC1"), ref.intake.on_depth)):
            h(m)
        ref.observe(ref.intake.on_image(cv.image_msg(B, fr.rgb, st, OPT)))
    stats = probe.wait_stats(NS, lambda s: s.num_points == ref.backend.memory.num_points, timeout=20,
                             what="the node's memory size equal to the pose-topic memory")
    assert stats.frames_observed == len(cams) and stats.inputs_rejected == 0, stats.last_rejection
    ref_cloud = ref.cloud()

    def cloud():
        for m in reversed(probe.msgs(f"{NS}/memory/points")):
            c = cv.pointcloud_to_structured(m)
            if len(c) == len(ref_cloud):
                return [c]
        return None

    got, = wait_for(cloud, 20, what="memory/points of the whole memory")
    def xyz(c):
        return np.stack([c["x"], c["y"], c["z"]], 1)

    np.testing.assert_allclose(xyz(got), xyz(ref_cloud), atol=1e-4)
    assert np.array_equal(got["rgb"].view(np.uint32), ref_cloud["rgb"].view(np.uint32))

    def observed_lines():
        for m in reversed(probe.msgs(f"{NS}/memory/frustums")):
            mk = [k for k in m.markers if k.ns == "observed"]
            if mk and len(mk[0].points) == 16 * len(cams):
                return [np.array([[p.x, p.y, p.z] for p in mk[0].points])]
        return None

    lines, = wait_for(observed_lines, 20, what="observed frustums of every frame")
    expect = out.frustum_lines([c.camera_to_world.numpy() for c in cams], cams[0].K.numpy(), H, W, 0.3)
    np.testing.assert_allclose(lines, expect, atol=1e-5)
    assert proc.alive()


def test_bad_and_missing_transforms_are_logged_and_dropped(setup, probe, scene):
    from tf2_msgs.msg import TFMessage

    from mirage_ros.ros import convert as cv

    proc, pubs, _ = setup
    cams, frames = scene
    T = probe.types
    before = probe.stats(NS, fresh_after=time.perf_counter())
    bad = _tf(probe, ODOM, BASE, 60 * S, np.eye(4))
    bad.transform.rotation.w = 2.0  # not a unit quaternion
    pubs["tf"].publish(TFMessage(transforms=[bad]))
    # an image whose transform never comes (far in the future of every sample): dropped after tf.wait
    st = 900 * S
    pubs["camera_info"].publish(cv.camera_info_msg(T, cams[0].K.numpy(), H, W, st, OPT))
    pubs["depth"].publish(cv.image_msg(T, frames[0].depth.astype(np.float32), st, OPT, "32FC1"))
    pubs["image"].publish(cv.image_msg(T, frames[0].rgb, st, OPT))
    s = probe.wait_stats(NS, lambda s: s.inputs_rejected >= before.inputs_rejected + 2 and "tf:" in s.last_rejection
                         and "waited" in s.last_rejection, timeout=30, what="both refusals")
    assert s.num_points == before.num_points and s.frames_observed == before.frames_observed
    assert proc.alive()
    log = proc.log()
    assert "norm" in log and "after its newest transform" in log
