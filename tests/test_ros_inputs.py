"""MirageCore (the node's logic, no ROS) with a tf-only robot and with compressed inputs.

A robot that publishes no pose topic, only /tf (map -> odom static, odom -> base_link moving) and
/tf_static (base_link -> camera_link -> camera_optical_frame), must fill the memory exactly as a
robot publishing the optical frame's PoseStamped does; compressed images must give what their raw
twins give (PNG is lossless: identical memories). Messages are rosbags dataclasses, the poses
of the chain are derived here with NumPy from the scene's camera poses.
"""
import cv2
import numpy as np
import pytest

from mirage_ros.ros import convert as cv
from mirage_ros.ros import outputs as out
from mirage_ros.ros.bag import RosbagsTypes
from mirage_ros.ros.core import MirageCore
from mirage_ros.ros.tf_buffer import LINK_FROM_OPTICAL, LINK_TO_OPTICAL_Q

B = RosbagsTypes()
H, W = 64, 112
S = 1_000_000_000
FRAME = "camera_optical_frame"


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(6, H, W)


def rigid(yaw_deg, t):
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = t
    return T


MAP_FROM_ODOM = rigid(30, (0.5, -0.25, 0.0))
BASE_FROM_LINK = rigid(0, (0.2, 0.0, 0.4))


def tf_msg(edges):
    """edges: [(parent, child, stamp, T, quaternion or None)]"""
    return out.tf_msg(B, [out.transform_stamped_msg(B, T, st, parent, child, q) for parent, child, st, T, q in edges])


def robot_static():
    return tf_msg([("base_link", "camera_link", 0, BASE_FROM_LINK, None),
                   ("camera_link", FRAME, 0, LINK_FROM_OPTICAL, np.array(LINK_TO_OPTICAL_Q))])


def odom_to_base(camera_to_world):
    """odom_from_base such that map <- odom <- base_link <- camera_link <- optical is camera_to_world."""
    base_from_optical = BASE_FROM_LINK @ LINK_FROM_OPTICAL
    return np.linalg.inv(MAP_FROM_ODOM) @ camera_to_world @ np.linalg.inv(base_from_optical)


def sensor_msgs(cam, fr, stamp, frame=FRAME):
    return (cv.camera_info_msg(B, cam.K.numpy(), H, W, stamp, frame), cv.image_msg(B, fr.depth, stamp, frame, "32FC1"),
            cv.image_msg(B, fr.rgb, stamp, frame))


@pytest.mark.slow
def test_tf_only_robot_fills_the_memory_as_the_pose_topic_does(scene):
    cams, frames = scene
    ref = MirageCore({"backend": "readout", "viz.cloud_max_points": 10**6})
    ref.configure()
    tfc = MirageCore({"backend": "readout", "pose.source": "tf", "viz.cloud_max_points": 10**6})
    tfc.configure()
    now = 0
    assert tfc.intake.on_tf(tf_msg([("map", "odom", 0, MAP_FROM_ODOM, None)]), static=True, now_ns=now) is None
    assert tfc.intake.on_tf(robot_static(), static=True, now_ns=now) is None
    for i, (cam, fr) in enumerate(zip(cams, frames)):
        st = 10 * S + i * S // 10
        C = cam.camera_to_world.numpy()
        info, depth, img = sensor_msgs(cam, fr, st)
        # the pose-topic robot
        for m, h in ((info, ref.intake.on_camera_info), (cv.pose_stamped_msg(B, C, st, "map"), ref.intake.on_pose),
                     (depth, ref.intake.on_depth)):
            assert h(m) is None
        ref.observe(ref.intake.on_image(img))
        # the tf-only robot: the image comes before the transform covering its stamp
        assert tfc.intake.on_camera_info(info) is None and tfc.intake.on_depth(depth) is None
        assert tfc.intake.on_image(img, now_ns=now) is None and len(tfc.intake.tf_poses.pending) == 1
        s = tfc.intake.on_tf(tf_msg([("odom", "base_link", st, odom_to_base(C), None)]), now_ns=now + 1)
        assert s is not None and s.stamp_ns == st
        np.testing.assert_allclose(s["pose"], C, atol=1e-12)
        tfc.observe(s)
        now += S // 10
    assert tfc.counts["frames_observed"] == ref.counts["frames_observed"] == len(cams)
    assert tfc.counts["inputs_rejected"] == 0
    a, b = ref.backend.memory, tfc.backend.memory
    assert a.num_points == b.num_points > 0
    np.testing.assert_allclose(b.points.numpy(), a.points.numpy(), atol=1e-5)
    assert np.array_equal(ref.cloud()["rgb"], tfc.cloud()["rgb"])
    np.testing.assert_allclose(np.stack(list(tfc.observed_poses)), np.stack([c.camera_to_world.numpy() for c in cams]),
                               atol=1e-12)


def test_camera_link_only_with_camera_is_link(scene):
    """Isaac Sim / Gazebo: only map -> camera_link; tf.camera_is_link adds link -> optical."""
    cams, frames = scene
    core = MirageCore({"backend": "readout", "pose.source": "tf", "tf.camera_frame": "camera_link",
                       "tf.camera_is_link": True})
    core.configure()
    C = cams[0].camera_to_world.numpy()
    map_from_link = C @ np.linalg.inv(LINK_FROM_OPTICAL)
    info, depth, img = sensor_msgs(cams[0], frames[0], 5 * S, frame="some_sensor_frame")
    core.intake.on_tf(tf_msg([("map", "camera_link", 5 * S, map_from_link, None)]), now_ns=0)
    core.intake.on_camera_info(info)
    core.intake.on_depth(depth)
    s = core.intake.on_image(img, now_ns=0)
    np.testing.assert_allclose(s["pose"], C, atol=1e-12)
    assert core.observe(s) > 0


def test_refused_tf_and_late_transforms_change_nothing(scene):
    cams, frames = scene
    core = MirageCore({"backend": "readout", "pose.source": "tf", "tf.wait": 0.5})
    core.configure()
    core.intake.on_tf(tf_msg([("map", "odom", 0, MAP_FROM_ODOM, None)]), static=True, now_ns=0)
    core.intake.on_tf(robot_static(), static=True, now_ns=0)
    bad = tf_msg([("odom", "base_link", 1 * S, np.eye(4), np.array([0.0, 0.0, 0.0, 2.0]))])  # not unit
    assert core.intake.on_tf(bad, now_ns=0) is None and "norm" in core.last_rejection
    own = tf_msg([("map", core.p["imagined.frame_id"], 1 * S, np.eye(4), None)])  # the node's own output
    core.intake.on_tf(own, now_ns=0)
    assert core.p["imagined.frame_id"] not in core.intake.tf_buffer.edges
    info, depth, img = sensor_msgs(cams[0], frames[0], 1 * S)
    core.intake.on_camera_info(info)
    core.intake.on_depth(depth)
    assert core.intake.on_image(img, now_ns=0) is None
    assert core.intake.poll_tf(now_ns=S // 2) is None  # the wait is over: dropped with the reason
    assert core.last_rejection.startswith("tf: map <- camera_optical_frame") and "waited 0.5 s" in core.last_rejection
    # the transform now arrives too late: the image was dropped, nothing completes
    C = cams[0].camera_to_world.numpy()
    assert core.intake.on_tf(tf_msg([("odom", "base_link", 1 * S, odom_to_base(C), None)]), now_ns=S) is None
    assert core.backend.memory.num_points == 0 and core.counts["frames_observed"] == 0


def _png(rgb):
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    return B.CompressedImage(format="rgb8; png compressed bgr8", data=buf.reshape(-1))


def test_compressed_inputs_give_what_raw_inputs_give(scene):
    cams, frames = scene
    raw = MirageCore({"backend": "readout", "viz.cloud_max_points": 10**6})
    raw.configure()
    z = MirageCore({"backend": "readout", "input.image_transport": "compressed",
                    "input.depth_transport": "compressedDepth",
                    "viz.cloud_max_points": 10**6})
    z.configure()
    import struct

    for i, (cam, fr) in enumerate(zip(cams[:3], frames[:3])):
        st = 20 * S + i * S // 10
        mm = np.nan_to_num(fr.depth * 1000.0, nan=0).astype(np.uint16)  # what a 16UC1 camera sends
        ok, dpng = cv2.imencode(".png", mm)
        head = struct.pack("<iff", 0, 0.0, 0.0)  # compressed_depth_image_transport's header for 16UC1
        cmsg = B.CompressedImage(format="16UC1; compressedDepth png",
                                 data=np.frombuffer(head + dpng.tobytes(), np.uint8))
        for c in (raw, z):
            c.intake.on_camera_info(cv.camera_info_msg(B, cam.K.numpy(), H, W, st, FRAME))
            c.intake.on_pose(cv.pose_stamped_msg(B, cam.camera_to_world.numpy(), st, "map"))
        raw.intake.on_depth(cv.image_msg(B, mm, st, FRAME, "16UC1"))
        raw.observe(raw.intake.on_image(cv.image_msg(B, fr.rgb, st, FRAME)))
        zi = _png(fr.rgb)
        zi.header = cv.header_msg(B, st, FRAME)
        cmsg.header = cv.header_msg(B, st, FRAME)
        assert z.intake.on_compressed_depth(cmsg) is None
        z.observe(z.intake.on_compressed_image(zi))
    assert raw.backend.memory.num_points == z.backend.memory.num_points > 0
    assert np.array_equal(raw.backend.memory.points.numpy(), z.backend.memory.points.numpy())
    assert np.array_equal(raw.cloud()["rgb"], z.cloud()["rgb"])
    # a corrupt JPEG is refused, counted, and changes nothing
    n, v = z.backend.memory.num_points, z.version
    jpg = cv2.imencode(".jpg", frames[0].rgb)[1].tobytes()
    broken = B.CompressedImage(header=cv.header_msg(B, 30 * S, FRAME), format="rgb8; jpeg compressed bgr8",
                               data=np.frombuffer(jpg[: len(jpg) // 3], np.uint8))
    assert z.intake.on_compressed_image(broken) is None
    assert "truncated" in z.last_rejection and z.backend.memory.num_points == n and z.version == v


@pytest.mark.slow
def test_replay_from_tf_and_compressed_topics_equals_the_pose_topic_replay(tmp_path, scene):
    """A bag recorded from a tf-only robot with compressed cameras (/tf_static, /tf, PNG
    image/compressed, compressedDepth) replays to the memory a pose-topic bag of the same frames
    gives; the output carries imagined/image/compressed (JPEG) that OpenCV decodes."""
    import struct

    from mirage_ros.ros.bag import BagWriter, read_messages
    from mirage_ros.ros.replay import replay

    cams, frames = scene
    with BagWriter(tmp_path / "posebag") as pb, BagWriter(tmp_path / "tfbag") as tb:
        tb.write("/tf_static", tf_msg([("map", "odom", 0, MAP_FROM_ODOM, None)]), 1, "tf_static")
        tb.write("/tf_static", robot_static(), 1, "tf_static")
        for i, (cam, fr) in enumerate(zip(cams, frames)):
            st = 30 * S + i * S // 10
            C = cam.camera_to_world.numpy()
            mm = np.nan_to_num(fr.depth * 1000.0, nan=0).astype(np.uint16)
            for b in (pb, tb):
                b.add_camera_info("camera_info", cam.K.numpy(), H, W, st, FRAME)
            pb.add_pose("pose", C, st)
            pb.add_image("depth", mm, st, FRAME, "16UC1")
            pb.add_image("image", fr.rgb, st, FRAME)
            ok, dpng = cv2.imencode(".png", mm)
            tb.write("depth/compressedDepth", B.CompressedImage(
                header=cv.header_msg(B, st, FRAME), format="16UC1; compressedDepth png",
                data=np.frombuffer(struct.pack("<iff", 0, 0.0, 0.0) + dpng.tobytes(), np.uint8)), st, "sensor")
            zi = _png(fr.rgb)
            zi.header = cv.header_msg(B, st, FRAME)
            tb.write("image/compressed", zi, st, "sensor")
            # the transform is recorded 30 ms after its image (a slower tf publisher)
            tb.write("/tf", tf_msg([("odom", "base_link", st, odom_to_base(C), None)]), st + 30_000_000, "tf")
    common = {"viz.cloud_max_points": 10**6}
    a = replay(tmp_path / "posebag", tmp_path / "out_pose", dict(common), imagine="none", log=lambda *_: None)
    b = replay(tmp_path / "tfbag", tmp_path / "out_tf", dict(common, **{
        "pose.source": "tf", "input.image_transport": "compressed", "input.depth_transport": "compressedDepth",
        "imagined.compressed": "jpeg"}), imagine="recorded", log=lambda *_: None)
    assert a["observed"] == b["observed"] == len(cams) and b["rejected"] == 0, b["last_rejection"]
    assert a["points"] == b["points"] > 0

    def last_cloud(path):
        return [m for t, _, _, m in read_messages(path) if t == "/memory/points"][-1]

    ca, cb = (cv.pointcloud_to_structured(last_cloud(tmp_path / p)) for p in ("out_pose", "out_tf"))
    for k in ("x", "y", "z"):
        np.testing.assert_allclose(cb[k], ca[k], atol=1e-5)
    assert np.array_equal(ca["rgb"].view(np.uint32), cb["rgb"].view(np.uint32))
    msgs = [(t, m) for t, _, _, m in read_messages(tmp_path / "out_tf")]
    raw = {cv.stamp_to_ns(m.header.stamp): m for t, m in msgs if t == "/imagined/image"}
    z = [m for t, m in msgs if t == "/imagined/image/compressed"]
    assert len(z) == len(raw) == len(cams)
    for m in z:
        assert m.format == "rgb8; jpeg compressed bgr8"
        dec = cv2.imdecode(np.asarray(m.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(float)
        ref = cv.image_to_rgb(raw[cv.stamp_to_ns(m.header.stamp)]).astype(float)
        assert 10 * np.log10(255 ** 2 / max(np.mean((dec - ref) ** 2), 1e-9)) > 30
