"""The node's logic without ROS: pairing, validation, goals, parameters, bags, replay, launch files.

mirage_node and `mirage replay` both drive MirageCore; here it is driven with rosbags messages.
"""
import ast
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mirage_ros import sim
from mirage_ros.ros import convert as cv
from mirage_ros.ros.bag import BagWriter, RosbagsTypes, read_messages
from mirage_ros.ros.core import STATUS_INVALID_GOAL, STATUS_NOT_READY, GoalError, MirageCore, resample_trajectory
from mirage_ros.ros.params import PARAMS, ParamError, defaults, load_yaml, validate
from mirage_ros.ros.sync import Synchronizer

ROOT = Path(__file__).resolve().parents[1]
B = RosbagsTypes()
H, W = 64, 112


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(12, H, W)


def feed(core, cam, fr, stamp, **bad):
    """Publish one set through the core's input handlers; ``bad`` replaces one message."""
    msgs = {
        "image": cv.image_msg(B, fr.rgb, stamp, "cam"),
        "camera_info": cv.camera_info_msg(B, cam.K.numpy(), cam.height, cam.width, stamp, "cam"),
        "pose": cv.pose_stamped_msg(B, cam.camera_to_world.numpy(), stamp, "map"),
        "depth": cv.image_msg(B, fr.depth, stamp, "cam", "32FC1"),
    }
    msgs.update(bad)
    done = None
    for kind in ("camera_info", "pose", "depth", "image"):
        s = getattr(core.intake, f"on_{kind}")(msgs[kind])
        done = s or done
    return done


@pytest.fixture
def core():
    c = MirageCore({"backend": "readout", "viz.cloud_max_points": 1000})
    c.configure()
    return c


# -- pairing ---------------------------------------------------------------------------------------

def test_sync_exact_and_tolerant_pairing():
    s = Synchronizer(("image", "camera_info", "pose"), tolerance_ns=0)
    assert s.add("image", 100, "i") is None and s.add("pose", 100, "p") is None
    out = s.add("camera_info", 100, "c")
    assert out.stamp_ns == 100 and out["image"] == "i" and out["pose"] == "p" and out["camera_info"] == "c"
    assert s.add("pose", 205, "p2") is None and s.add("camera_info", 200, "c2") is None
    assert s.add("image", 200, "i2") is None  # pose 5 ns off, tolerance 0
    s2 = Synchronizer(("image", "camera_info", "pose"), tolerance_ns=10)
    s2.add("pose", 195, "pa")
    s2.add("pose", 203, "pb")
    s2.add("camera_info", 200, "c")
    assert s2.add("image", 200, "i") is None  # pb is after the image: an image nearer to it may still come
    assert s2.add("image", 210, "i3")["pose"] == "pb"  # nearest within tolerance, and nearer to 200 than to 210
    # a neighbour within tolerance is not taken while the exact partner may still arrive
    s3 = Synchronizer(("image", "pose"), tolerance_ns=10)
    s3.add("pose", 295, "early")
    assert s3.add("image", 300, "i") is None
    assert s3.add("pose", 300, "exact")["pose"] == "exact"
    s3.add("pose", 395, "near")
    s3.add("image", 400, "i2")
    assert s3.add("pose", 410, "after")["pose"] == "near"  # settled: nothing nearer can come now


def test_sync_newest_complete_set_wins_and_queues_stay_bounded():
    s = Synchronizer(("image", "pose"), queue_size=5)
    for t in (1, 2, 3):
        s.add("image", t, t)
    out = s.add("pose", 3, "p3")
    assert out.stamp_ns == 3
    s.add("pose", 1, "late")  # older than the emitted set: dropped with the queue cleanup
    assert s.add("image", 2, "old") is None and s.counts["late"] == 1
    for t in range(100, 200):
        s.add("image", t * 10**8, t)
    assert s.pending() <= 2 * 5 and s.counts["overflow"] > 0
    # a restarted bag / simulator (time jumps back > 1 s) starts over
    s.add("image", 5 * 10**8, "x")
    assert s.counts["resets"] == 1 and s.add("pose", 5 * 10**8, "p").stamp_ns == 5 * 10**8


def _stream_100hz(n, drop_kinds=("pose", "depth"), drop=0.05, seed=0):
    """(kind, stamp, payload) of n sets 10 ms apart in publishing order; BEST_EFFORT drops a
    fraction of the poses and depths. Payloads name their set index."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = 10**9 + i * 10**7
        for kind in ("camera_info", "pose", "depth", "image"):
            if kind in drop_kinds and rng.random() < drop:
                continue
            out.append((kind, t, i))
    return out


def test_sync_exact_pairing_is_the_default_and_drops_never_borrow_a_neighbour():
    """Sensors at 100 Hz (10 ms = the old default tolerance), 5 % of poses and depths
    dropped: every emitted set holds one set's messages, never a neighbour's."""
    assert defaults()["sync.tolerance"] == 0.0
    core = MirageCore({"backend": "readout"})
    assert core.intake.sync.tolerance_ns == 0
    s = Synchronizer(("image", "camera_info", "pose", "depth"))
    emitted = []
    for kind, t, i in _stream_100hz(2000):
        out = s.add(kind, t, i)
        if out is not None:
            emitted.append(out)
    assert len(emitted) > 1500
    for e in emitted:
        assert len({e[k] for k in e.parts}) == 1, {k: e[k] for k in e.parts}


def test_sync_tolerance_takes_the_nearest_unique_partner():
    """With sync.tolerance (opt-in), an image takes the nearest partner within it, never one that
    is as close or closer to another image, and each partner serves one image only."""
    tol = 10**7
    s = Synchronizer(("image", "pose"), tolerance_ns=tol)
    emitted = []
    for kind, t, i in _stream_100hz(2000, drop_kinds=("pose",), drop=0.05):
        if kind in ("image", "pose"):
            out = s.add(kind, t, i)
            if out is not None:
                emitted.append(out)
    assert len(emitted) > 1500
    assert all(e["image"] == e["pose"] for e in emitted)
    # jittered clocks: a pose 3 ms after each image still pairs, with its own image
    s = Synchronizer(("image", "pose"), tolerance_ns=tol)
    got = []
    for i in range(50):
        t = 10**9 + i * 10**7
        for out in (s.add("image", t, i), s.add("pose", t + 3 * 10**6, i)):
            if out is not None:
                got.append(out)
    assert len(got) >= 48 and all(e["image"] == e["pose"] for e in got)
    # two images, one pose between them but nearer the second: the first image gets nothing
    s = Synchronizer(("image", "pose"), tolerance_ns=tol)
    assert s.add("image", 100 * 10**6, "a") is None
    assert s.add("pose", 108 * 10**6, "p") is None  # nearer an image that may still come: wait
    assert s.add("image", 110 * 10**6, "b") is None  # b's exact pose may still come
    out = s.add("pose", 125 * 10**6, "late")  # settled: p is b's nearest, and nearer to b than to a
    assert out is not None and out["image"] == "b" and out["pose"] == "p"
    # a tie (a dropped image's pose halfway between two images) pairs with neither
    s = Synchronizer(("image", "pose"), tolerance_ns=tol)
    s.add("image", 100 * 10**6, "a")
    s.add("pose", 110 * 10**6, "dropped image's")
    assert s.add("image", 120 * 10**6, "c") is None
    assert s.add("pose", 130 * 10**6, "x") is None


@pytest.mark.slow
def test_dropped_partners_do_not_grow_the_memory(scene):
    """End to end in the core: four views at 100 Hz again and again, 5 % of poses and
    depths lost; the memory holds exactly what the four views hold (it grew 84 -> 3106)."""
    cams, frames = scene
    views = [0, 3, 6, 9]
    ref = MirageCore({"backend": "readout"})
    ref.configure()
    for j, v in enumerate(views):
        ref.observe(feed(ref, cams[v], frames[v], 10**9 + j * 10**7))
    core = MirageCore({"backend": "readout"})
    core.configure()
    for kind, t, i in _stream_100hz(200, drop=0.05, seed=1):
        v = views[i % 4]
        m = {"image": lambda: cv.image_msg(B, frames[v].rgb, t, "cam"),
             "camera_info": lambda: cv.camera_info_msg(B, cams[v].K.numpy(), H, W, t, "cam"),
             "pose": lambda: cv.pose_stamped_msg(B, cams[v].camera_to_world.numpy(), t, "map"),
             "depth": lambda: cv.image_msg(B, frames[v].depth, t, "cam", "32FC1")}[kind]()
        out = getattr(core.intake, f"on_{kind}")(m)
        if out is not None:
            core.observe(out)
    assert core.counts["frames_observed"] > 150
    assert core.backend.memory.num_points == ref.backend.memory.num_points


def test_sync_latched_camera_info():
    s = Synchronizer(("image", "camera_info", "pose"), latch=("camera_info",))
    s.add("camera_info", 1, "c")
    s.add("pose", 50, "p")
    assert s.add("image", 50, "i")["camera_info"] == "c"


# -- core: observation and rejection --------------------------------------------------------------

def test_core_observes_and_imagines(core, scene):
    cams, frames = scene
    s = feed(core, cams[0], frames[0], 10**9)
    assert s is not None and core.observe(s) > 0
    n = core.backend.memory.num_points
    T = np.stack([c.camera_to_world.numpy() for c in cams[:5]])
    req = core.prepare(cv.path_msg(B, T, [0] * 5, "map"), 0, None, 7 * 10**9)
    assert req.stamps_ns.tolist() == [7 * 10**9 + i * 10**8 for i in range(5)]  # zero stamps -> now + i / rate
    chunks = list(core.imagine(req))
    assert sum(len(c.frame_indices) for c in chunks) == 5 and chunks[0].frames.shape == (5, H, W, 3)
    assert core.backend.memory.num_points == n  # readouts write nothing
    cloud = core.cloud()
    assert cloud.shape == (min(n, 1000),) and cloud.dtype.names == ("x", "y", "z", "rgb")


@pytest.mark.parametrize("kind,make,needle", [
    ("image", lambda cam, fr, t: B.Image(header=cv.header_msg(B, t, "cam"), height=H, width=W, encoding="yuv422",
                                         is_bigendian=0, step=W * 2, data=np.zeros(H * W * 2, np.uint8)),
     "unsupported encoding"),
    ("image", lambda cam, fr, t: B.Image(header=cv.header_msg(B, t, "cam"), height=H, width=W, encoding="rgb8",
                                         is_bigendian=0, step=W * 3, data=np.zeros(H * W * 3 - 1, np.uint8)),
     "data is short"),
    ("camera_info", lambda cam, fr, t: cv.camera_info_msg(B, np.diag([0.0, 100.0, 1.0]), H, W, t, "cam"), "k[0] (fx)"),
    ("pose", lambda cam, fr, t: _with_q(cv.pose_stamped_msg(B, cam.camera_to_world.numpy(), t, "map"),
                                        (np.nan, 0, 0, 1)), "NaN"),
    ("pose", lambda cam, fr, t: _with_q(cv.pose_stamped_msg(B, cam.camera_to_world.numpy(), t, "map"),
                                        (0, 0, 0.5, 0.5)), "norm"),
    ("pose", lambda cam, fr, t: cv.pose_stamped_msg(B, cam.camera_to_world.numpy(), t, "odom"), "not the world frame"),
    ("depth", lambda cam, fr, t: cv.image_msg(B, fr.rgb, t, "cam", "rgb8"), "not a depth encoding"),
])
def test_core_rejects_bad_input_and_leaves_memory_unchanged(core, scene, kind, make, needle):
    cams, frames = scene
    core.observe(feed(core, cams[0], frames[0], 10**9))
    n, nbytes = core.backend.memory.num_points, core.backend.memory.nbytes
    s = feed(core, cams[6], frames[6], 2 * 10**9, **{kind: make(cams[6], frames[6], 2 * 10**9)})
    assert s is None  # the set never completes
    assert core.counts["inputs_rejected"] == 1 and needle in core.last_rejection
    assert core.backend.memory.num_points == n and core.backend.memory.nbytes == nbytes
    s = feed(core, cams[6], frames[6], 3 * 10**9)  # and the next good set still goes in
    assert core.observe(s) > 0


def test_refused_absurd_inputs_change_no_state(core, scene):
    """A pose at 1e300 m, fx = fy = 1e-38, or one bad CameraInfo (fx = 1e-30) is refused
    with a reason and changes nothing: not the memory, not the K of later goals."""
    cams, frames = scene
    core.observe(feed(core, cams[0], frames[0], 10**9))
    n, K0, last = core.backend.memory.num_points, core.last_camera[0].copy(), core.policy.last_stamp
    far = cams[6].camera_to_world.numpy().copy()
    far[:3, 3] = 1e300
    tiny = np.array([[1e-38, 0, W / 2], [0, 1e-38, H / 2], [0, 0, 1]])
    bad_k = cams[6].K.numpy().copy()
    bad_k[0, 0] = 1e-30
    for i, bad in enumerate([{"pose": cv.pose_stamped_msg(B, far, 0, "map")},
                             {"camera_info": cv.camera_info_msg(B, tiny, H, W, 0, "cam")},
                             {"camera_info": cv.camera_info_msg(B, bad_k, H, W, 0, "cam")}]):
        t = (2 + i) * 10**9
        for m in bad.values():
            m.header.stamp = cv.time_msg(B, t)
        assert feed(core, cams[6], frames[6], t, **bad) is None
        assert core.counts["inputs_rejected"] == i + 1
        assert "beyond" in core.last_rejection or "px" in core.last_rejection, core.last_rejection
    assert core.backend.memory.num_points == n and core.policy.last_stamp == last
    assert core.counts["frames_observed"] == 1
    assert np.array_equal(core.last_camera[0], K0)
    req = core.prepare(_path(3))
    assert np.array_equal(req.K, K0)
    far_path = _path(3)
    far_path.poses[2].pose.position.x = 1e300
    with pytest.raises(GoalError, match=r"path.poses\[2\].pose.position"):
        core.prepare(far_path)


@pytest.mark.parametrize("fill", [np.nan, -1.0, 0.0])
def test_depth_without_a_valid_pixel_is_not_an_observation(core, scene, fill):
    """An all-NaN / negative / zero depth image counted as observed, silently."""
    cams, frames = scene
    logs = []
    core.report.sink = lambda level, msg: logs.append(msg)
    core.observe(feed(core, cams[0], frames[0], 10**9))
    n, observed, last = core.backend.memory.num_points, core.counts["frames_observed"], core.policy.last_stamp
    bad = cv.image_msg(B, np.full((H, W), fill, np.float32), 2 * 10**9, "cam", "32FC1")
    assert core.observe(feed(core, cams[6], frames[6], 2 * 10**9, depth=bad)) is None
    assert core.counts["frames_observed"] == observed and core.policy.last_stamp == last
    assert core.backend.memory.num_points == n and core.counts["inputs_rejected"] == 1
    assert "no valid depth" in core.last_rejection and any("no valid depth" in m for m in logs)


def _with_q(msg, q):
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = q
    return msg


def test_core_rejects_mismatched_sizes(core, scene):
    cams, frames = scene
    s = feed(core, cams[0], frames[0], 10**9, depth=cv.image_msg(B, np.ones((32, 56), np.float32), 10**9, "c", "32FC1"))
    assert core.observe(s) is None and "depth is 32x56" in core.last_rejection
    big = sim.default_camera(H, W + 8)
    s = feed(core, cams[0], frames[0], 2 * 10**9,
             camera_info=cv.camera_info_msg(B, big.K.numpy(), H, W + 8, 2 * 10**9, "c"))
    # refused when the image arrives, before its pixels are copied
    assert s is None and "camera_info says 64 x 120" in core.last_rejection, core.last_rejection
    assert core.backend.memory.num_points == 0


def test_core_update_policy(scene):
    cams, frames = scene
    core = MirageCore({"backend": "readout", "observe.update": False})
    core.configure()
    assert core.observe(feed(core, cams[0], frames[0], 10**9)) > 0
    assert core.observe(feed(core, cams[5], frames[5], 2 * 10**9)) is None and core.counts["frames_skipped"] == 1
    core = MirageCore({"backend": "readout", "observe.min_interval": 1.5})
    core.configure()
    core.observe(feed(core, cams[0], frames[0], 10**9))
    assert core.observe(feed(core, cams[5], frames[5], 2 * 10**9)) is None
    assert core.observe(feed(core, cams[5], frames[5], 3 * 10**9)) is not None


def test_updates_carry_on_after_a_far_future_stamp_or_a_clock_jump(scene):
    """One far-future stamp, or time jumping back (a bag loops, a simulator restarts),
    used to stop every later update (wants() compared against the old stamp): the jump is
    detected, logged once, and observation carries on."""
    cams, frames = scene
    logs = []
    core = MirageCore({"backend": "readout", "observe.min_interval": 0.5},
                      log=lambda level, msg: logs.append((level, msg)))
    core.configure()
    assert core.observe(feed(core, cams[0], frames[0], 100 * 10**9)) > 0
    assert core.observe(feed(core, cams[2], frames[2], 10**18)) is not None  # one stray far-future stamp
    n = core.backend.memory.num_points
    s = feed(core, cams[5], frames[5], 101 * 10**9)  # the stream goes on at its own time
    assert s is not None and core.wants(s.stamp_ns)
    assert core.observe(s) > 0 and core.backend.memory.num_points > n
    jumps = [m for _, m in logs if "jumped back" in m]
    assert len(jumps) == 1, logs
    # a simulator restart: time starts again at 1 s, with use_sim_time's /clock
    n = core.backend.memory.num_points
    assert core.observe(feed(core, cams[8], frames[8], 10**9)) > 0 and core.backend.memory.num_points > n
    assert core.observe(feed(core, cams[8], frames[8], 10**9 + 10**8)) is None  # min_interval still holds
    assert core.observe(feed(core, cams[10], frames[10], 2 * 10**9)) is not None
    assert len([m for _, m in logs if "jumped back" in m]) == 2
    assert core.counts["inputs_rejected"] == 0


# -- core: goals ----------------------------------------------------------------------------------

def _path(n, frame="map"):
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, 0, 3] = np.linspace(0, 0.5, n)
    if not n:
        return B.Path(header=cv.header_msg(B, 0, frame), poses=[])
    return cv.path_msg(B, T, [10**9 + i for i in range(n)], frame)


def test_goal_errors(core, scene):
    with pytest.raises(GoalError) as e:
        core.prepare(_path(3))
    assert e.value.status == STATUS_NOT_READY and "no observation yet" in e.value.message
    cams, frames = scene
    core.observe(feed(core, cams[0], frames[0], 10**9))
    for path, nf, status, needle in [(_path(0), 0, STATUS_INVALID_GOAL, "no poses"),
                                     (_path(10000), 0, STATUS_INVALID_GOAL, "10000 poses, more than "
                                                                            "imagined.max_frames = 1024"),
                                     (_path(3), 5000, STATUS_INVALID_GOAL, "num_frames is 5000"),
                                     (_path(3, "odom"), 0, STATUS_INVALID_GOAL, "not the world frame")]:
        with pytest.raises(GoalError) as e:
            core.prepare(path, nf)
        assert e.value.status == status and needle in e.value.message
    bad = _path(3)
    bad.poses[1].pose.orientation.w = float("nan")
    with pytest.raises(GoalError, match=r"path.poses\[1\].pose.orientation: quaternion contains NaN"):
        core.prepare(bad)
    req = core.prepare(_path(4), 9)
    assert len(req.cameras) == 9 and np.allclose(req.camera_to_world[[0, -1], 0, 3], [0, 0.5])


def test_resample_trajectory_interpolates():
    from mirage_ros.geometry import invert_rigid, look_at

    T = np.stack([invert_rigid(look_at([0, 0, 1.5], [1, 0, 1.5])).numpy(),
                  invert_rigid(look_at([1, 0, 1.5], [1, 1, 1.5])).numpy()])
    out, st = resample_trajectory(T, np.array([0, 100]), 3)
    assert np.allclose(out[0], T[0]) and np.allclose(out[-1], T[1]) and st.tolist() == [0, 50, 100]
    assert np.allclose(out[1][:3, 3], [0.5, 0, 1.5])
    z = out[1][:3, 2]  # viewing direction halfway between +x and +y
    assert np.allclose(z, [np.sqrt(0.5), np.sqrt(0.5), 0], atol=1e-9)


def test_save_load_reset(core, scene, tmp_path):
    core.p["memory.save_dir"] = str(tmp_path)
    cams, frames = scene
    core.observe(feed(core, cams[0], frames[0], 10**9))
    n = core.backend.memory.num_points
    path, saved = core.save(str(tmp_path / "m.safetensors"))
    assert saved == n and Path(path).is_file()
    core.reset()
    assert core.backend.memory.num_points == 0
    assert core.load(path) == n
    (tmp_path / "bad.safetensors").write_bytes(b"not a memory")
    with pytest.raises(ValueError):
        core.load(str(tmp_path / "bad.safetensors"))
    assert core.backend.memory.num_points == n
    with pytest.raises(ValueError, match="does not exist"):
        core.save(str(tmp_path / "nope" / "m.safetensors"))


# -- parameters -----------------------------------------------------------------------------------

def test_config_yaml_mirrors_the_declared_parameters():
    from mirage_ros.ros.params import to_yaml

    flat = load_yaml(ROOT / "config" / "mirage.yaml")
    assert set(flat) == {p.name for p in PARAMS}
    assert validate(flat) == defaults()
    for p in PARAMS:  # same YAML type (an int default written as 1.0 would fail in rclpy)
        assert type(flat[p.name]) is type(p.default), p.name
    assert (ROOT / "config" / "mirage.yaml").read_text() == to_yaml()


def test_param_validation_names_the_parameter():
    with pytest.raises(ParamError, match="backend: 'nope' is not one of"):
        validate({"backend": "nope"})
    with pytest.raises(ParamError, match="chunk_size: expected int"):
        validate({"chunk_size": "9"})
    with pytest.raises(ParamError, match="unknown parameter"):
        validate({"chunk_sise": 9})
    assert validate({"sync.tolerance": 1})["sync.tolerance"] == 1.0


def test_qos_choices():
    from mirage_ros.ros import qos

    assert qos.spec("sensor") == {"reliability": "best_effort", "durability": "volatile", "history": "keep_last",
                                  "depth": 1}
    assert qos.spec("results")["reliability"] == "reliable" and qos.spec("latched")["durability"] == "transient_local"
    with pytest.raises(ValueError):
        qos.spec("sensor", depth=0)


# -- bags and replay --------------------------------------------------------------------------------

def _input_bag(path, scene, storage="mcap", plan=False, n=8):
    cams, frames = scene
    with BagWriter(path, storage=storage) as bag:
        for i in range(n):
            t = 10**9 + i * 10**8
            bag.add_image("/image", frames[i].rgb, t, "cam")
            bag.add_camera_info("/camera_info", cams[i].K.numpy(), H, W, t, "cam")
            bag.add_pose("/pose", cams[i].camera_to_world.numpy(), t)
            bag.add_depth("/depth", frames[i].depth, t, "cam")
        if plan:
            T = np.stack([c.camera_to_world.numpy() for c in cams[:6]])
            bag.add_plan(T, [2 * 10**9 + i * 10**8 for i in range(6)], stamp_ns=2 * 10**9)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_writes_an_mcap_bag(tmp_path, scene, storage):
    from mirage_ros.ros.replay import replay

    src = _input_bag(tmp_path / "in", scene, storage, plan=True)
    s = replay(src, tmp_path / "out", {"backend": "readout", "viz.cloud_period": 0.2}, log=lambda m: None)
    assert s["mode"] == "plans" and s["frames"] == 6 and s["observed"] == 8 and s["rejected"] == 0
    assert (tmp_path / "out" / "out_0.mcap").is_file() or list((tmp_path / "out").glob("*.mcap"))
    seen = {}
    imgs = []
    for topic, msgtype, _t, msg in read_messages(tmp_path / "out"):
        seen.setdefault(topic, msgtype)
        if topic == "/imagined/image":
            imgs.append(cv.stamp_to_ns(msg.header.stamp))
        if topic == "/imagined/chunk":
            assert msg.backend == "readout" and not msg.generative
            assert len(msg.frames) == 0 and len(msg.poses) == len(msg.masks) > 0
        if topic == "/memory/points":
            cloud = cv.pointcloud_to_structured(msg)
    assert seen == {"/imagined/image": "sensor_msgs/msg/Image", "/imagined/chunk": "mirage_ros/msg/ImaginedChunk",
                    "/imagined/camera_info": "sensor_msgs/msg/CameraInfo", "/tf": "tf2_msgs/msg/TFMessage",
                    "/imagined/path": "nav_msgs/msg/Path", "/memory/points": "sensor_msgs/msg/PointCloud2",
                    "/memory/stats": "mirage_ros/msg/MemoryStats",
                    "/memory/frustums": "visualization_msgs/msg/MarkerArray"}
    assert imgs == [2 * 10**9 + i * 10**8 for i in range(6)]  # stamped with the plan's pose times
    assert cloud.shape[0] == s["points"] and np.isfinite(cloud["x"]).all()


@pytest.mark.slow
def test_replay_cli_recorded_trajectory_and_errors(tmp_path, scene):
    from mirage_ros.cli import main

    src = _input_bag(tmp_path / "in", scene, n=6)
    assert main(["replay", str(src), "--out", str(tmp_path / "out"), "--copy-inputs", "--quiet",
                 "-p", "observe.update=false"]) == 0
    counts = {}
    for topic, _, _, _msg in read_messages(tmp_path / "out"):
        counts[topic] = counts.get(topic, 0) + 1
    assert counts["/imagined/image"] == 6 and counts["/image"] == 6  # recorded poses imagined; inputs copied
    assert main(["replay", str(src), "--out", str(tmp_path / "out")]) == 2  # exists, no --overwrite
    assert main(["replay", str(src), "--out", str(tmp_path / "o2"), "--topic", "image=/camera/image"]) == 2


def test_bag_writer_serialises_what_rosbags_reads(tmp_path, scene):
    cams, frames = scene
    with BagWriter(tmp_path / "b") as bag:
        bag.add_memory(np.zeros((5, 3), np.float32), np.full((5, 3), 7, np.uint8), stamp_s=1.5)
        bag.add_stats({"num_points": 5, "backend": "readout"}, 2)
        bag.add_frustums([cams[0].camera_to_world.numpy()], [], cams[0].K.numpy(), H, W, 3)
    msgs = {t: m for t, _, _, m in read_messages(tmp_path / "b")}
    assert cv.unpack_rgb(cv.pointcloud_to_structured(msgs["/memory/points"])["rgb"]).tolist() == [[7, 7, 7]] * 5
    assert msgs["/memory/stats"].num_points == 5 and msgs["/memory/points"].header.stamp.sec == 1
    m = msgs["/memory/frustums"].markers
    assert m[0].action == 3 and len(m[1].points) == 16 and len(m[2].points) == 0


# -- launch files (launch / launch_ros are not on PyPI: checked statically and on stand-ins) -------

def _launch_calls(path):
    tree = ast.parse(path.read_text())
    declared, used, executables, joins = set(), set(), set(), []
    consts = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, (ast.Tuple, ast.List))}
    loops = {n.target.id: consts.get(n.iter.id, ()) for n in ast.walk(tree)
             if isinstance(n, ast.For) and isinstance(n.target, ast.Name) and isinstance(n.iter, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "DeclareLaunchArgument":
                declared.add(node.args[0].value)
            elif name == "LaunchConfiguration":
                arg = node.args[0]
                used |= set(loops[arg.id]) if isinstance(arg, ast.Name) else {arg.value}  # for name in OVERRIDES
            elif name == "Node":
                for kw in node.keywords:
                    if kw.arg == "executable":
                        executables.add(kw.value.value)
            elif name == "join" and all(isinstance(a, ast.Constant) for a in node.args[1:]):
                joins.append([a.value for a in node.args[1:]])
    return declared, used, executables, joins


@pytest.mark.parametrize("name", ["mirage.launch.py", "demo.launch.py", "planner_example.launch.py"])
def test_launch_files_statically(name):
    declared, used, executables, joins = _launch_calls(ROOT / "launch" / name)
    assert used <= declared, f"undeclared launch arguments: {used - declared}"
    setup = (ROOT / "setup.py").read_text()
    for exe in executables - {"rviz2"}:
        assert re.search(rf"['\"]{exe} = mirage_ros\.", setup), f"{exe} is not a console script"
        assert (ROOT / "nodes" / exe).is_file(), f"{exe} is not installed for colcon (nodes/)"
        assert re.search(rf"nodes/{exe}", (ROOT / "CMakeLists.txt").read_text())
    for parts in joins:  # os.path.join(share, "config", "mirage.yaml") -> the file ships
        assert (ROOT.joinpath(*parts)).is_file(), parts


def _stub_launch_modules(monkeypatch, share):
    made = {}

    class Rec:
        def __init__(self, *a, **k):
            self.a, self.k = a, k
            made.setdefault(type(self).__name__, []).append(self)

    class LaunchConfiguration(Rec):
        values = {}

        def perform(self, context):
            return context[self.a[0]]

    names = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction", "IncludeLaunchDescription"],
        "launch.substitutions": [], "launch.conditions": ["IfCondition"],
        "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
        "launch_ros.actions": ["Node"], "launch_ros.parameter_descriptions": ["ParameterValue"],
        "ament_index_python.packages": [],
    }
    for mod, classes in names.items():
        m = types.ModuleType(mod)
        for c in classes:
            setattr(m, c, type(c, (Rec,), {}))
        monkeypatch.setitem(sys.modules, mod, m)
    sys.modules["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    sys.modules["ament_index_python.packages"].get_package_share_directory = lambda pkg: str(share)
    return made


@pytest.mark.parametrize("name", ["mirage.launch.py", "demo.launch.py", "planner_example.launch.py"])
def test_launch_files_run_on_stand_in_launch_classes(monkeypatch, name):
    import importlib.util

    made = _stub_launch_modules(monkeypatch, ROOT)
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), ROOT / "launch" / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    declared = {d.a[0]: d.k.get("default_value") for d in made["DeclareLaunchArgument"]}
    assert {"config", "namespace", "backend", "device", "weights_dir", "use_sim_time"} <= set(declared)
    assert Path(declared["config"]).is_file()
    if name == "mirage.launch.py":
        fn = made["OpaqueFunction"][0].k["function"]
        ctx = {"backend": "", "device": "cuda", "weights_dir": "", "use_sim_time": "true", "namespace": "",
               "config": "x"}
        node = fn(ctx)[0]
        assert node.k["executable"] == "mirage_node" and node.k["name"] == "mirage"
        # empty overrides keep the file's value
        assert node.k["parameters"][1] == {"device": "cuda", "use_sim_time": True}
    elif name == "planner_example.launch.py":  # the planner knows the simulator's scene, for collisions
        nodes = {n.k["executable"]: n for n in made["Node"]}
        assert set(nodes) == {"mirage_sim_node", "mirage_planner_example", "rviz2"}
        sim_p, plan_p = nodes["mirage_sim_node"].k["parameters"][0], nodes["mirage_planner_example"].k["parameters"][0]
        assert plan_p["sim_scene"].a == sim_p["scene"].a == ("scene",)
        assert Path(made["PythonLaunchDescriptionSource"][0].a[0]).name == "mirage.launch.py"
        assert {"rule", "k", "frames", "period", "scene", "seed", "rviz"} <= set(declared)
    else:
        execs = {n.k["executable"] for n in made["Node"]}
        assert execs == {"mirage_sim_node", "rviz2"}
        rviz = [n for n in made["Node"] if n.k["executable"] == "rviz2"][0]
        assert Path(rviz.k["arguments"][1]).is_file()
        inc = made["PythonLaunchDescriptionSource"][0].a[0]
        assert Path(inc).is_file()
    assert ld is not None


def test_package_xml_and_cmake_agree():
    import xml.etree.ElementTree as ET

    px = ET.parse(ROOT / "package.xml").getroot()
    assert px.get("format") == "3" and px.findtext("name") == "mirage_ros"
    assert px.find("export/build_type").text == "ament_cmake"
    assert px.findtext("member_of_group") == "rosidl_interface_packages"
    cm = (ROOT / "CMakeLists.txt").read_text()
    files = [f for kind in ("msg", "srv", "action") for f in (ROOT / kind).glob(f"*.{kind}")]
    for f in files:
        assert f'"{f.parent.name}/{f.name}"' in cm, f
    deps = {e.text for e in px.findall("depend")}
    m = re.search(r"DEPENDENCIES ([\w ]+)", cm)
    assert set(m.group(1).split()) <= deps


def test_ros_modules_do_not_import_rclpy_at_import_time():
    modules = ("convert", "core", "sync", "params", "qos", "outputs", "bag", "replay", "intake", "observer", "requests",
               "report", "slot", "goals", "goal_runner", "interfaces", "fleet", "tf_buffer", "paths", "runtime")
    code = (f"import sys; import {', '.join('mirage_ros.ros.' + m for m in modules)}, mirage_ros.bench.node; "
            "print(any(m == 'rclpy' or m.startswith('rclpy.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_odometry_with_a_camera_mount(scene):
    """pose.source odometry: camera_to_world = odom (base in world) @ base_to_camera."""

    cams, frames = scene
    mount = [0.2, 0.0, 1.0, -0.5, 0.5, -0.5, 0.5]  # x y z qx qy qz qw: optical frame on a REP 103 base
    core = MirageCore({"backend": "readout", "pose.source": "odometry", "pose.base_to_camera": mount})
    core.configure()
    base = np.eye(4)
    base[:3, 3] = [1.0, 2.0, 0.0]
    odom = B.Odometry(header=cv.header_msg(B, 10**9, "map"), child_frame_id="base_link",
                      pose=B.factory("geometry_msgs/msg/PoseWithCovariance")(pose=cv.pose_msg(B, base)))
    assert core.intake.on_odometry(odom) is None
    T = core.intake.sync.queues["pose"][-1][1]
    assert np.allclose(T[:3, 3], [1.2, 2.0, 1.0])
    assert np.allclose(T[:3, 2], [1, 0, 0], atol=1e-9)  # optical z looks along the base's x (forward)
    assert np.allclose(T[:3, 1], [0, 0, -1], atol=1e-9)  # optical y is down
    odom.header.frame_id = "odom"
    assert core.intake.on_odometry(odom) is None and "not the world frame" in core.last_rejection


@pytest.mark.slow
def test_core_drives_the_generative_backend_and_a_depth_provider():
    """backend mirage (tiny, random weights) through the same core; depth from the memory provider."""
    s = sim.make_scene("room", 0)
    cams = [sim.default_camera(64, 128).with_pose(E) for E in sim.scene_trajectory(s, "loop", 12)]
    frames = [sim.render(s, c) for c in cams]
    core = MirageCore({"backend": "mirage", "steps": 2, "chunk_size": 9})
    core.configure()
    assert core.backend.generative and "RANDOM weights" in core.backend.description
    t = 10**9
    core.intake.on_camera_info(cv.camera_info_msg(B, cams[0].K.numpy(), 64, 128, t, "c"))
    core.intake.on_pose(cv.pose_stamped_msg(B, cams[0].camera_to_world.numpy(), t, "map"))
    core.intake.on_depth(cv.image_msg(B, frames[0].depth, t, "c", "32FC1"))
    assert core.observe(core.intake.on_image(cv.image_msg(B, frames[0].rgb, t, "c"))) > 0
    T = np.stack([c.camera_to_world.numpy() for c in cams[1:10]])
    req = core.prepare(cv.path_msg(B, T, [t + i for i in range(9)], "map"))
    chunks = list(core.imagine(req))
    assert sum(len(c.frame_indices) for c in chunks) == 9 and "denoise" in chunks[0].timings
    # an observation-time depth provider instead of a depth topic
    core2 = MirageCore({"backend": "readout", "depth.provider": "memory"})
    core2.configure()
    assert "depth" not in core2.intake.sync.kinds and core2.depth_provider is not None
    with pytest.raises(ValueError, match="weights"):
        # no DA3 weights: a clear configure error
        MirageCore({"backend": "readout", "depth.provider": "da3"}).configure()


def test_threads_parameter_sets_torch_threads_at_configure():
    import torch

    from mirage_ros.ros.params import ParamError

    with pytest.raises(ParamError, match="threads"):
        MirageCore({"backend": "readout", "threads": -1})
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    try:
        core = MirageCore({"backend": "readout", "threads": want})
        assert torch.get_num_threads() == before  # read at configure, not at construction
        core.configure()
        assert torch.get_num_threads() == want
        MirageCore({"backend": "readout"}).configure()  # 0: leaves torch's setting alone
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_sampler_parameters_override_one_setting_each_of_the_model_folders():
    """sampler.* -1 / model keep the shipped model's own settings; each set one replaces only
    itself (steps never touches shift), and readout.earliest_within and sampler.pin_generated /
    paste_generated / decode_imagined / decode_aligned reach the rollout."""
    import json

    from mirage_ros.world_model.backend import SHIPPED_MODEL

    own = json.loads((SHIPPED_MODEL / "model_index.json").read_text())["sampler"]
    core = MirageCore({"backend": "shipped"})
    core.configure()
    s = core.backend.model.sampler
    assert (s.steps, s.shift, s.pin_until, s.pin_paste) == (own["steps"], own["shift"], own.get("pin_until", 0.0),
                                                            own.get("pin_paste", False))
    assert core.backend.config.earliest_within == 0.3 and core.backend.config.seed is None
    assert core.backend.config.pin_generated and not core.backend.config.paste_generated
    assert core.backend.config.decode_imagined and core.backend.config.decode_aligned
    core = MirageCore({"backend": "shipped", "steps": 3, "sampler.pin_until": 0.0, "sampler.pin_paste": "on",
                       "sampler.noise_seed": 7, "readout.earliest_within": 0.0, "sampler.pin_generated": False,
                       "sampler.paste_generated": True, "sampler.decode_imagined": False,
                       "sampler.decode_aligned": False})
    core.configure()
    s = core.backend.model.sampler
    assert (s.steps, s.shift, s.pin_until, s.pin_paste) == (3, own["shift"], 0.0, True)
    assert core.backend.config.earliest_within == 0.0 and core.backend.config.seed == 7
    assert not core.backend.config.pin_generated and core.backend.config.paste_generated
    assert not core.backend.config.decode_imagined and not core.backend.config.decode_aligned
