"""Compressed images in and out of a live mirage_node.

The probe publishes image/compressed (JPEG, as image_transport's compressed plugin writes it:
BGR through cv2.imencode, format "rgb8; jpeg compressed bgr8") and depth/compressedDepth (the
16UC1 PNG with its 12-byte header); the node (input.image_transport compressed,
input.depth_transport compressedDepth, imagined.compressed png) fills its memory and publishes
imagined/image/compressed next to imagined/image. Checked independently: OpenCV decodes every
compressed frame to exactly the raw frame (PNG is lossless), and the bytes rclpy received
deserialise with rosbags' CDR and serialise back to the same bytes. A corrupt JPEG is logged and
dropped; the node keeps running.
"""
import struct

import cv2
import numpy as np
import pytest
from rosprobe import start_node, wait_for

H, W = 64, 112
NS = "/zbot"
S = 1_000_000_000
FRAME = "zbot_camera_optical_frame"


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(8, H, W)


def jpeg_msg(probe, rgb, stamp):
    from sensor_msgs.msg import CompressedImage

    from mirage_ros.ros import convert as cv

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return CompressedImage(header=cv.header_msg(probe.types, stamp, FRAME), format="rgb8; jpeg compressed bgr8",
                           data=buf.tobytes())


def depth_msg(probe, depth_m, stamp):
    from sensor_msgs.msg import CompressedImage

    from mirage_ros.ros import convert as cv

    mm = np.nan_to_num(depth_m * 1000.0, nan=0).astype(np.uint16)
    ok, buf = cv2.imencode(".png", mm)
    return CompressedImage(header=cv.header_msg(probe.types, stamp, FRAME), format="16UC1; compressedDepth png",
                           data=struct.pack("<iff", 0, 0.0, 0.0) + buf.tobytes())


@pytest.fixture(scope="module")
def node(tmp_path_factory, probe, scene):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, CompressedImage

    from mirage_ros.ros import convert as cv

    tmp = tmp_path_factory.mktemp("zbot")
    proc = start_node(tmp, NS, {"input.image_transport": "compressed", "input.depth_transport": "compressedDepth",
                                "imagined.compressed": "png", "imagined.frame_id": "zbot_imagined_optical_frame",
                                "chunk_size": 4, "viz.stats_period": 0.1, "memory.save_dir": str(tmp)})
    probe.watch(NS)
    probe.listen(f"{NS}/imagined/image/compressed", CompressedImage)
    pubs = {"image": probe.pub(f"{NS}/image/compressed", CompressedImage),
            "depth": probe.pub(f"{NS}/depth/compressedDepth", CompressedImage),
            "camera_info": probe.pub(f"{NS}/camera_info", CameraInfo), "pose": probe.pub(f"{NS}/pose", PoseStamped)}
    cams, frames = scene
    T = probe.types
    try:
        probe.stats(NS, timeout=60)
        for p in pubs.values():
            probe.wait_matched(p)
        for i in range(3):
            st = 10 * S + i * S // 10
            cam, fr = cams[i], frames[i]
            pubs["camera_info"].publish(cv.camera_info_msg(T, cam.K.numpy(), H, W, st, FRAME))
            pubs["pose"].publish(cv.pose_stamped_msg(T, cam.camera_to_world.numpy(), st, "map"))
            pubs["depth"].publish(depth_msg(probe, fr.depth, st))
            pubs["image"].publish(jpeg_msg(probe, fr.rgb, st))
            probe.wait_stats(NS, lambda s, n=i + 1: s.frames_observed >= n, timeout=20, what=f"frame {i} observed")
        yield proc, pubs
    finally:
        rc = proc.stop()
        print(proc.log()[-3000:])
    assert rc == 0, f"mirage_node exited with {rc}"


def test_compressed_inputs_fill_the_memory_and_imagined_frames_come_compressed(node, probe, scene):
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage

    from mirage_ros.ros import convert as cv
    from mirage_ros.ros.bag import typestore

    proc, _ = node
    cams, _ = scene
    s = probe.stats(NS)
    assert s.num_points > 0 and s.frames_observed == 3 and s.inputs_rejected == 0, s.last_rejection
    n = 6
    stamps = [40 * S + i * S // 10 for i in range(n)]
    ztopic = f"{NS}/imagined/image/compressed"
    probe.clear(ztopic)
    r = probe.imagine(NS, probe.path(cams[:n], stamps), expect_frames=n, chunk_size=4)
    assert r["result"].status == 0, r["result"].message
    zs = wait_for(lambda: (lambda m: m if len(m) >= n else None)(probe.msgs(ztopic)), 15,
                  what="imagined/image/compressed for every frame")
    raw = {cv.stamp_to_ns(m.header.stamp): m for m in r["images"]}
    store = typestore()
    for z in zs:
        st = cv.stamp_to_ns(z.header.stamp)
        assert st in raw and z.header.frame_id == raw[st].header.frame_id == "zbot_imagined_optical_frame"
        assert z.format == "rgb8; png compressed bgr8"
        dec = cv2.imdecode(np.frombuffer(bytes(z.data), np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(dec[..., ::-1], cv.image_to_rgb(raw[st]))
        # wire format: rclpy's CDR bytes are what rosbags reads and writes for the same message
        wire = serialize_message(z)
        back = store.deserialize_cdr(wire, "sensor_msgs/msg/CompressedImage")
        assert back.format == z.format and bytes(back.data) == bytes(z.data)
        assert (back.header.stamp.sec, back.header.stamp.nanosec) == (z.header.stamp.sec, z.header.stamp.nanosec)
        ours = bytes(store.serialize_cdr(back, "sensor_msgs/msg/CompressedImage"))
        assert len(ours) == len(wire)
        # equal but for CDR's alignment padding, which Fast DDS leaves uninitialised: by hand, the
        # layout is encapsulation (4), stamp (8), frame_id (4 + n + 1), format (4 + n + 1), pad to 4,
        # data length (4), data
        fmt_end = 4 + 8 + 4 + len(z.header.frame_id) + 1
        fmt_end = (fmt_end + 3) // 4 * 4 + 4 + len(z.format) + 1
        pad = set(range(fmt_end, (fmt_end + 3) // 4 * 4))
        wire = bytes(wire)
        assert {i for i in range(len(wire)) if wire[i] != ours[i]} <= pad
        assert ours[-len(z.data):] == bytes(z.data)
    assert sorted(cv.stamp_to_ns(z.header.stamp) for z in zs) == stamps
    # and the other way: a CompressedImage serialised by rosbags is what rclpy deserialises
    from rclpy.serialization import deserialize_message

    m = deserialize_message(bytes(store.serialize_cdr(back, "sensor_msgs/msg/CompressedImage")), CompressedImage)
    assert bytes(m.data) == bytes(back.data) and m.format == back.format
    assert proc.alive()


def test_corrupt_jpeg_is_logged_and_dropped(node, probe, scene):
    from mirage_ros.ros import convert as cv

    proc, pubs = node
    cams, frames = scene
    before = probe.stats(NS)
    st = 20 * S
    good = jpeg_msg(probe, frames[5].rgb, st)
    good.data = bytes(good.data)[: len(good.data) // 2]  # truncated on the way
    pubs["camera_info"].publish(cv.camera_info_msg(probe.types, cams[5].K.numpy(), H, W, st, FRAME))
    pubs["pose"].publish(cv.pose_stamped_msg(probe.types, cams[5].camera_to_world.numpy(), st, "map"))
    pubs["depth"].publish(depth_msg(probe, frames[5].depth, st))
    pubs["image"].publish(good)
    s = probe.wait_stats(NS, lambda s: s.inputs_rejected > before.inputs_rejected, timeout=15, what="the rejection")
    assert "truncated" in s.last_rejection and s.num_points == before.num_points
    assert s.frames_observed == before.frames_observed and proc.alive()
