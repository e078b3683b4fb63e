"""What `mirage demo` writes, as viewers see it, checked with readers that are not ours.

The MP4 (PyAV decodes it; headless Chromium plays it), strict JSON, and the
MCAP bag read with the official ``mcap`` reader and its ROS 2 decoder (the path Foxglove takes):
the imagined camera on /tf and imagined/camera_info, one realistic clock, a memory cloud after
every chunk, no image stored twice, compressed chunks, one global frame index everywhere.
"""
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from mirage_ros.cli import main

H, W, CHUNKS, CS = 64, 112, 3, 3
N = CHUNKS * CS + 1  # frame 0 (the first observation) + the imagined frames 1..N-1
# The viewer-format checks run the memory-only demo (fast, and its chunks are the demo's own);
# the shipped model's demo writes through the same writers (tests/test_cli.py runs it).
ARGS = ["--backend", "readout", "--resolution", f"{H}x{W}", "--chunks", str(CHUNKS), "--chunk-size", str(CS)]


def _strict_loads(text):
    def refuse(token):
        raise ValueError(f"not strict JSON: bare {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--out", str(out), *ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def bag(demo):
    """Every message of demo_bag, decoded by mcap + mcap-ros2-support: topic -> [(log_ns, msg)]."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    path = next((demo / "demo_bag").glob("*.mcap"))
    msgs, sizes = {}, {}
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        schemas = {ch.topic: summary.schemas[ch.schema_id].name for ch in summary.channels.values()}
        for _schema, channel, message, ros_msg in reader.iter_decoded_messages(log_time_order=True):
            msgs.setdefault(channel.topic, []).append((message.log_time, ros_msg))
            sizes[channel.topic] = sizes.get(channel.topic, 0) + len(message.data)
    return {"msgs": msgs, "schemas": schemas, "sizes": sizes, "summary": summary, "path": path}


def _ns(stamp):
    return stamp.sec * 10**9 + stamp.nanosec


def _requested():
    """The demo's camera trajectory, recomputed: (camera_to_world (N,4,4), K (3,3))."""
    from mirage_ros import sim

    scene = sim.make_scene("room", seed=0, moving_object=True)
    cams = [sim.default_camera(H, W).with_pose(E) for E in sim.scene_trajectory(scene, "loop", N)]
    return np.stack([c.camera_to_world.numpy() for c in cams]).astype(np.float64), cams[0].K.numpy().astype(np.float64)


def _quat_to_matrix(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


# -- JSON --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_stats_json_is_strict_even_where_psnr_is_undefined(tmp_path):
    out = tmp_path / "d"
    # without updates the far side of the loop sees nothing of the first frame: PSNR is undefined there
    assert main(["demo", "--out", str(out), *ARGS, "--no-update", "--no-bag"]) == 0
    stats = _strict_loads((out / "stats.json").read_text())
    vals = [v for c in stats["chunks"] for v in c["psnr_visible"]]
    assert None in vals and all(v is None or np.isfinite(v) for v in vals)


def test_json_helper_writes_strict_json(tmp_path):
    from mirage_ros.util import write_json

    p = tmp_path / "x.json"
    write_json(p, {"nan": float("nan"), "inf": [float("inf"), -float("inf"), 1.5], "np": np.float32(2.0),
                   "arr": np.arange(3), "nested": {"n": np.nan}})
    assert _strict_loads(p.read_text()) == {"nan": None, "inf": [None, None, 1.5], "np": 2.0, "arr": [0, 1, 2],
                                            "nested": {"n": None}}


# -- the MP4 --------------------------------------------------------------------------------------------

def _top_level_boxes(path):
    data, o, boxes = Path(path).read_bytes(), 0, []
    while o + 8 <= len(data):
        n, t = struct.unpack(">I4s", data[o:o + 8])
        if n == 1:
            n = struct.unpack(">Q", data[o + 8:o + 16])[0]
        boxes.append(t.decode("latin-1"))
        o += n if n else len(data)
    return boxes


def test_mp4_is_h264_yuv420p_with_the_index_first(demo):
    import av

    boxes = _top_level_boxes(demo / "readouts.mp4")
    assert "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat"), boxes
    with av.open(str(demo / "readouts.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert s.codec_context.profile in ("High", "Main", "Constrained Baseline", "Baseline"), s.codec_context.profile
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    assert len(frames) == N - 1
    assert frames[0].shape == (H, 3 * W, 3) and frames[0].std() > 10  # a picture, not a flat field


def test_mp4_plays_in_headless_chromium(demo, tmp_path):
    from chromium_cdp import Chromium, Server

    exe = Chromium.find()
    if exe is None:
        pytest.skip("no Chromium here (Debian: apt-get install -y chromium); the browser playback test needs one")
    page = demo / "play.html"
    page.write_text("""<!doctype html><html><body style="margin:0;background:#000">
<video id="v" src="readouts.mp4" muted autoplay playsinline style="display:block"></video>
<script>window.err = null; const v = document.getElementById('v');
v.addEventListener('error', () => { window.err = v.error ? v.error.code + ' ' + v.error.message : 'error'; });
</script></body></html>""")
    state = "(() => { const v = document.getElementById('v'); return v && {t: v.currentTime, ready: v.readyState, " \
            "w: v.videoWidth, h: v.videoHeight, err: window.err}; })()"
    with Server(demo) as url, Chromium(exe) as browser:
        browser.open(f"{url}/play.html")
        seen, st = [], None
        deadline = time.monotonic() + 60  # only to end a broken run; nothing is timed
        while time.monotonic() < deadline:
            st = browser.evaluate(state)
            if st:
                seen.append(st["t"])
                if st["err"] or (st["t"] > 0.3 and st["ready"] >= 2):
                    break
            time.sleep(0.05)
        assert st and not st["err"], f"Chromium did not play the MP4: {st} {browser.log()[-1500:]}"
        assert st["t"] > 0.3 and st["ready"] >= 2 and (st["w"], st["h"]) == (3 * W, H), st
        assert sorted(seen) == seen and seen[-1] > seen[0]  # currentTime advanced
        browser.evaluate("document.getElementById('v').pause()")
        png = browser.screenshot({"x": 0, "y": 0, "width": st["w"], "height": st["h"]})
    import cv2

    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    (tmp_path / "frame.png").write_bytes(png)
    assert shot.shape[:2] == (H, 3 * W)
    assert shot.std() > 10 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 50, "the screenshot is blank"


# -- the bag -----------------------------------------------------------------------------------------

def test_bag_places_the_imagined_camera_with_tf_and_camera_info(bag):
    T_req, K_req = _requested()
    m, schemas = bag["msgs"], bag["schemas"]
    assert schemas["/tf"] == "tf2_msgs/msg/TFMessage"
    assert schemas["/imagined/camera_info"] == "sensor_msgs/msg/CameraInfo"
    images = [msg for _, msg in m["/imagined/image"]]
    infos = {_ns(i.header.stamp): i for _, i in m["/imagined/camera_info"]}
    tfs = {}
    for _, msg in m["/tf"]:
        for tr in msg.transforms:
            tfs[(tr.header.frame_id, tr.child_frame_id, _ns(tr.header.stamp))] = tr
    chunks = [msg for _, msg in m["/imagined/chunk"]]
    index_of = {_ns(p.header.stamp): i for c in chunks for i, p in zip(c.frame_indices, c.poses)}
    assert len(images) == N - 1
    observed_frame = None
    for img in images:
        t, frame = _ns(img.header.stamp), img.header.frame_id
        i = index_of[t]
        tr = tfs[("map", frame, t)]  # the imagined optical frame, at the image's own stamp
        T = np.eye(4)
        T[:3, :3] = _quat_to_matrix([tr.transform.rotation.x, tr.transform.rotation.y, tr.transform.rotation.z,
                                     tr.transform.rotation.w])
        T[:3, 3] = [tr.transform.translation.x, tr.transform.translation.y, tr.transform.translation.z]
        np.testing.assert_allclose(T, T_req[i], atol=1e-5, err_msg=f"frame {i}")
        info = infos[t]
        assert info.header.frame_id == frame and (info.height, info.width) == (H, W)
        np.testing.assert_allclose(np.array(info.k).reshape(3, 3), K_req, rtol=1e-6)
        observed = [k for k in tfs if k[0] == "map" and k[2] == t and k[1] != frame]
        assert len(observed) == 1, observed  # and the observed camera at the same time
        observed_frame = observed_frame or observed[0][1]
        assert observed[0][1] == observed_frame


def test_bag_has_one_clock_one_frame_index_and_a_cloud_after_every_chunk(demo, bag):
    stats = _strict_loads((demo / "stats.json").read_text())
    m = bag["msgs"]
    stamps = [_ns(msg.header.stamp) for _, msg in m["/imagined/image"]]
    t0 = stamps[0] - (stamps[1] - stamps[0])  # frame 0 is the first observation
    assert t0 >= 946684800 * 10**9  # a realistic clock (after 2000-01-01), not 1970
    period = stamps[1] - stamps[0]
    assert period > 0 and np.diff(stamps).tolist() == [period] * (len(stamps) - 1)  # one frame period throughout
    chunks = [msg for _, msg in m["/imagined/chunk"]]
    assert [c.index for c in chunks] == list(range(CHUNKS))
    assert [list(c.frame_indices) for c in chunks] == [r["frames"] for r in stats["chunks"]]
    assert [i for c in chunks for i in c.frame_indices] == list(range(1, N))
    for c in chunks:
        assert [_ns(p.header.stamp) for p in c.poses] == [t0 + i * period for i in c.frame_indices]
        assert _ns(c.header.stamp) == t0 + c.frame_indices[0] * period and c.goal_frames == N
    clouds = m["/memory/points"]
    assert len(clouds) == CHUNKS + 1  # the first observation, then after every chunk
    widths = [msg.width for _, msg in clouds]
    assert widths == sorted(widths) and widths[-1] == stats["memory_points"] and widths[0] < widths[-1]
    assert widths[1:] == [r["memory_points"] for r in stats["chunks"]]
    cloud_t = [_ns(msg.header.stamp) for _, msg in clouds]
    assert cloud_t[0] == t0
    for c, t in zip(chunks, cloud_t[1:]):  # each cloud follows its chunk's last frame
        assert t == t0 + c.frame_indices[-1] * period
    logs = [t for topic in m for t, _ in m[topic]]
    assert min(logs) >= t0 and max(logs) <= t0 + (N - 1) * period


def test_bag_stores_each_frame_once_and_compresses_its_chunks(bag):
    m = bag["msgs"]
    for _, c in m["/imagined/chunk"]:
        assert len(c.frames) == 0 and len(c.masks) == len(c.poses) == len(c.coverage) == CS
        assert c.masks[0].encoding == "mono8" and (c.masks[0].height, c.masks[0].width) == (H // 16, W // 16)
    raw_images = bag["sizes"]["/imagined/image"]
    assert bag["sizes"]["/imagined/chunk"] < 0.1 * raw_images
    comp = {ci.compression for ci in bag["summary"].chunk_indexes}
    assert comp and comp <= {"zstd", "lz4"}, comp
    assert bag["path"].stat().st_size < sum(bag["sizes"].values())


@pytest.mark.slow
def test_rerun_replaces_its_own_bag_with_the_same_clock_and_leaves_a_foreign_folder_alone(demo, bag, tmp_path):
    from mirage_ros.ros.bag import read_messages

    stamps = [t for t, _ in bag["msgs"]["/imagined/image"]]
    assert main(["demo", "--out", str(demo), *ARGS]) == 0  # a second run into the same folder
    again = [t for topic, _, t, _ in read_messages(demo / "demo_bag") if topic == "/imagined/image"]
    assert again == stamps  # the default clock is fixed: reruns are reproducible
    assert not [p for p in demo.iterdir() if p.name.startswith(".")]  # no temporary folder left
    out = tmp_path / "d"
    (out / "demo_bag").mkdir(parents=True)
    (out / "demo_bag" / "mine.txt").write_text("keep")
    assert main(["demo", "--out", str(out), *ARGS, "--chunks", "1"]) == 0  # the bag is a bonus: skipped
    assert (out / "demo_bag" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in (out / "demo_bag").iterdir()) == ["mine.txt"]
