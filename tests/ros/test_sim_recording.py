"""`mirage data bag` on a recording of mirage_sim_node, made as `ros2 bag record` makes one.

A real simulator process publishes; this process subscribes to its topics with raw (serialized)
subscriptions and writes the CDR bytes as received into an MCAP bag (rosbag2's recorder does the
same; rosbag2 itself is not on PyPI). The dataset built from it is checked against the bag read
back with rosbags (an independent reader): cameras from the recorded poses and intrinsics,
latents from the recorded images, exact-stamp sets only.
"""
import threading
import time

import numpy as np
import torch
from rosprobe import start_node, wait_for

H, W = 64, 96
KINDS = {"image": "sensor_msgs/msg/Image", "camera_info": "sensor_msgs/msg/CameraInfo",
         "pose": "geometry_msgs/msg/PoseStamped", "depth": "sensor_msgs/msg/Image", "labels": "sensor_msgs/msg/Image"}


def _record(probe, ns, min_sets: int, timeout: float):
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    types = {"image": Image, "camera_info": CameraInfo, "pose": PoseStamped, "depth": Image, "labels": Image}
    got, lock, subs = {k: [] for k in KINDS}, threading.Lock(), []
    q = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    for kind, t in types.items():
        def cb(raw, kind=kind):
            with lock:
                got[kind].append((time.time_ns(), bytes(raw)))
        subs.append(probe.node.create_subscription(t, f"{ns}/{kind}", cb, q, raw=True))
    try:
        wait_for(lambda: min(len(v) for v in got.values()) >= min_sets, timeout, what=f"{min_sets} recorded sets")
    finally:
        for s in subs:
            probe.node.destroy_subscription(s)
    with lock:
        return {k: list(v) for k, v in got.items()}


def test_data_bag_on_a_sim_node_recording(tmp_path, probe):
    from mirage_ros.cli import main
    from mirage_ros.ros import convert as cv
    from mirage_ros.ros.bag import BagWriter, read_messages
    from mirage_ros.training.dataset import MirageDataset
    from mirage_ros.world_model.codec import ThumbnailCodec, images_to_tensor

    ns = "/rec"
    sim = start_node(tmp_path, ns, {"height": H, "width": W, "rate": 10.0, "num_poses": 16, "moving_object": True,
                                    "image_encoding": "bgr8", "depth_encoding": "16UC1", "plan_period": 0.0},
                     module="mirage_ros.ros.sim_node")
    try:
        got = _record(probe, ns, 16, timeout=120)
    finally:
        rc = sim.stop()
    assert rc == 0, sim.log()[-2000:]
    bag = tmp_path / "recording"
    with BagWriter(bag) as w:
        for kind, rows in got.items():
            for t, raw in rows:
                w.write_raw(f"{ns}/{kind}", KINDS[kind], raw, t)

    ds_path = tmp_path / "ds"
    assert main(["data", "bag", str(bag), "--namespace", ns, "--out", str(ds_path), "--frames", "12"]) == 0
    ds = MirageDataset(ds_path)
    assert ds.header["source"] == "bag" and ds.header["counts"]["clips"] >= 1 and len(ds) >= 1

    # the bag, read back by rosbags: sets are the stamps every one of the 5 topics has
    msgs = {}
    for topic, _, _, m in read_messages(bag):
        msgs.setdefault(topic.rsplit("/", 1)[-1], {})[cv.stamp_to_ns(m.header.stamp)] = m
    stamps = sorted(set.intersection(*(set(v) for v in msgs.values())))
    assert len(stamps) >= 12
    meta = ds.meta(0)
    n = len(meta["world_to_camera"])
    assert n == 12
    first = next(i for i, s in enumerate(stamps) if np.allclose(
        np.linalg.inv(cv.pose_to_matrix(msgs["pose"][s].pose)), meta["world_to_camera"][0], atol=1e-6))
    sel = stamps[first:first + n]
    E = np.stack([np.linalg.inv(cv.pose_to_matrix(msgs["pose"][s].pose)) for s in sel])
    assert np.allclose(np.array(meta["world_to_camera"]), E, atol=1e-6)
    K = np.array(msgs["camera_info"][sel[0]].k, dtype=np.float64).reshape(3, 3)
    assert np.allclose(np.array(meta["K"]), np.broadcast_to(K, (n, 3, 3)), atol=1e-4)
    # latents: the recorded bgr8 images, flipped to RGB and encoded with the dataset's codec
    rgb = np.stack([np.frombuffer(bytes(msgs["image"][s].data), np.uint8).reshape(H, W, 3)[..., ::-1] for s in sel])
    z = ThumbnailCodec().encode(images_to_tensor(rgb))
    assert torch.allclose(ds.latents(0, range(n)), z.half().float(), atol=1e-3)
