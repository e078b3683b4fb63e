"""A live mirage_node places its imagined camera for viewers.

Per imagined frame the node publishes /tf (world -> imagined optical frame, the requested pose),
imagined/camera_info (same header as the image) and imagined/image; imagined/chunk carries the
indices, poses and visibility but not the images again; the action's feedback does carry them.
"""
import numpy as np
import pytest
from rosprobe import start_node, wait_for

H, W = 64, 112
NS = "/outs"
CHUNK = 4
FRAME = "outs_imagined_optical_frame"  # unique: /tf is shared by every node of the session


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(8, H, W)


@pytest.fixture(scope="module")
def node(tmp_path_factory, probe, scene):
    from sensor_msgs.msg import CameraInfo
    from tf2_msgs.msg import TFMessage

    tmp = tmp_path_factory.mktemp("outs")
    proc = start_node(tmp, NS, {"chunk_size": CHUNK, "viz.stats_period": 0.1, "imagined.frame_id": FRAME,
                                "memory.save_dir": str(tmp)})
    probe.watch(NS)
    probe.listen(f"{NS}/imagined/camera_info", CameraInfo)
    probe.listen("/tf", TFMessage)
    try:
        probe.stats(NS, timeout=60)
        cams, frames = scene
        for k in range(50):
            probe.publish_set(NS, cams[0], frames[0], 10**9 + k)
            try:
                probe.wait_stats(NS, lambda s: s.num_points > 0, timeout=0.5)
                break
            except TimeoutError:
                continue
        yield proc
    finally:
        rc = proc.stop()
        print(proc.log()[-3000:])
    assert rc == 0, f"mirage_node exited with {rc}"


def _quat_to_matrix(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_node_publishes_tf_and_camera_info_per_imagined_frame(node, probe, scene):
    from mirage_ros.ros import convert as cv

    cams, _ = scene
    n = 6
    stamps = [40 * 10**9 + i * 10**8 for i in range(n)]
    probe.clear(f"{NS}/imagined/camera_info")
    r = probe.imagine(NS, probe.path(cams[:n], stamps), expect_frames=n, chunk_size=CHUNK)
    assert r["result"].status == 0, r["result"].message
    assert [cv.stamp_to_ns(m.header.stamp) for m in r["images"]] == stamps

    def mine():
        out = {}
        for msg in probe.msgs("/tf"):
            for tr in msg.transforms:
                if tr.child_frame_id == FRAME:
                    out[cv.stamp_to_ns(tr.header.stamp)] = tr
        return out if all(t in out for t in stamps) else None

    tfs = wait_for(mine, 15, what=f"/tf for every imagined frame ({FRAME})")
    infos = wait_for(lambda: (lambda m: m if len(m) >= n else None)(probe.msgs(f"{NS}/imagined/camera_info")), 15,
                     what="imagined/camera_info for every frame")
    info_by_t = {cv.stamp_to_ns(i.header.stamp): i for i in infos}
    for i, (img, t) in enumerate(zip(r["images"], stamps)):
        assert img.header.frame_id == FRAME
        tr = tfs[t]
        assert tr.header.frame_id == "map"
        T = np.eye(4)
        q = tr.transform.rotation
        T[:3, :3] = _quat_to_matrix([q.x, q.y, q.z, q.w])
        T[:3, 3] = [tr.transform.translation.x, tr.transform.translation.y, tr.transform.translation.z]
        np.testing.assert_allclose(T, cams[i].camera_to_world.numpy(), atol=1e-5)
        info = info_by_t[t]
        assert info.header.frame_id == FRAME and (info.height, info.width) == (H, W)
        np.testing.assert_allclose(np.array(info.k).reshape(3, 3), cams[i].K.numpy(), rtol=1e-6)
    # imagined/chunk: indices, poses and visibility, not the images a second time
    chunks = r["chunks"]
    assert sorted(i for c in chunks for i in c.frame_indices) == list(range(n))
    assert [c.index for c in sorted(chunks, key=lambda c: c.frame_indices[0])] == list(range(len(chunks)))
    for c in chunks:
        assert len(c.frames) == 0 and len(c.masks) == len(c.poses) == len(c.frame_indices)
    # the action's feedback carries the frames (imagined.feedback_frames defaults to true)
    fb = r["feedback"]
    assert fb and all(len(f.chunk.frames) == len(f.chunk.frame_indices) for f in fb)
