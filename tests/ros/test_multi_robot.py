"""Several robots on one GPU host (``mirage_multi_node`` / ``fleet``): one memory per robot
namespace, one loaded model for all, in one process.

The robots' nodes run in this process (so the test can check that the model OBJECT is shared);
each namespace is driven by its own real rclpy peer (``Probe``, its own context) over DDS on
loopback. The model is the shipped model's size with random weights (``mirage.config: small``).
"""
import threading

import numpy as np
import pytest

from mirage_ros.ros import fleet

H, W = 64, 128  # latent 4 x 8: the transformer patchifies 2 x 2
NS = ("/fleet_a", "/fleet_b")


# -- fleet without ROS -------------------------------------------------------------------------------

def test_parse_robots():
    assert fleet.parse_robots(["robot1", "/robot2", "site/robot_3"]) == ["/robot1", "/robot2", "/site/robot_3"]
    for bad, why in (([], "no robot"), (["a", "/a"], "twice"), (["1robot"], "not a valid"), (["a b"], "not a valid"),
                     (["a//b"], "not a valid")):
        with pytest.raises(ValueError, match=why):
            fleet.parse_robots(bad)


def test_sibling_backend_shares_the_codec_not_the_memory(room_loop):
    """readout backend (no .model): the sibling shares the codec; observations stay in their memory."""
    from mirage_ros.world_model.backend import make_backend

    cams, frames = room_loop(2, H, W)
    a = make_backend("readout", memory={"dedup": True})
    b = fleet.sibling_backend(a, {"dedup": False})
    assert b.codec is a.codec and b.memory is not a.memory and b.memory.dedup is False
    assert b.chunk_size == a.chunk_size and b.memory.num_points == 0
    a.observe(frames[0].rgb, frames[0].depth, cams[0])
    assert a.memory.num_points > 0 and b.memory.num_points == 0
    with pytest.raises(fleet.SharingError):
        fleet.sibling_backend(None, {})


# -- robots in one process, a real rclpy peer per namespace --------------------------------------------

PARAMS = {"backend": "mirage", "mirage.config": "small", "steps": 1, "chunk_size": 4, "viz.stats_period": 0.1,
          "viz.cloud_period": 0.2}


@pytest.fixture(scope="module")
def robots():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from mirage_ros.ros.multi_node import make_robots, shutdown_robots

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    nodes, ex, spin = [], None, None
    try:
        nodes = make_robots(list(NS), True, context=ctx,
                            parameter_overrides=[Parameter(k, value=v) for k, v in PARAMS.items()])
        ex = SingleThreadedExecutor(context=ctx)
        for n in nodes:
            ex.add_node(n)
        spin = threading.Thread(target=lambda: _spin(ex), daemon=True)
        spin.start()
        yield nodes
    finally:
        shutdown_robots(nodes, ex)
        if spin is not None:
            spin.join(5)
        rclpy.try_shutdown(context=ctx)


def _spin(ex):
    try:
        ex.spin()
    except Exception:  # noqa: BLE001 - shutdown
        pass


@pytest.fixture(scope="module")
def peers(robots):
    from rosprobe import Probe

    ps = {ns: Probe(f"peer_{ns.strip('/')}") for ns in NS}
    try:
        for ns, p in ps.items():
            p.watch(ns)
            p.stats(ns, timeout=120)
        yield ps
    finally:
        for p in ps.values():
            p.close()


def _observe(peer, ns, cam, frame, stamp0):
    for k in range(100):  # best effort sensors: retry until the set lands
        peer.publish_set(ns, cam, frame, stamp0 + k)
        try:
            return peer.wait_stats(ns, lambda s: s.num_points > 0 and s.frames_observed > 0, timeout=1.0)
        except TimeoutError:
            continue
    raise TimeoutError(f"{ns}: no observation")


def test_one_model_object_own_memories(robots):
    a, b = robots
    assert a.core is not None and b.core is not None, "a robot failed to configure"
    assert a.get_namespace() == NS[0] and b.get_namespace() == NS[1]
    assert b.core.backend.model is a.core.backend.model  # the loaded model, once
    assert b.core.backend is not a.core.backend and b.core.backend.memory is not a.core.backend.memory
    assert b.core.lock is a.core.lock  # they take turns on the model


def test_observations_stay_in_their_namespace(robots, peers, room_loop):
    """An observation published to robot A's namespace fills A's memory only; one published to B
    fills B's and leaves A's as it was (as seen by each namespace's own peer over DDS)."""
    from mirage_ros import sim

    a, b = robots
    pa, pb = peers[NS[0]], peers[NS[1]]
    cams, frames = room_loop(4, H, W)
    _observe(pa, NS[0], cams[0], frames[0], 10**9)
    import time

    time.sleep(1.0)  # sets still in flight land (the same view: nothing new after the first)
    sa = pa.stats(NS[0], fresh_after=time.perf_counter())
    n_a = int(sa.num_points)
    before = a.core.backend.memory.points.cpu().numpy().copy()
    # B, after A's observation, still has nothing: a fresh stats message from B's own peer
    sb = pb.stats(NS[1], fresh_after=time.perf_counter())
    assert sb.num_points == 0 and sb.frames_observed == 0 and b.core.backend.memory.num_points == 0

    scene = sim.make_scene("outdoor", 3)
    cam_b = sim.default_camera(H, W).with_pose(sim.scene_trajectory(scene, "orbit", 4)[0])
    sb = _observe(pb, NS[1], cam_b, sim.render(scene, cam_b, 0.0), 30 * 10**9)
    assert sb.num_points > 0
    sa = pa.stats(NS[0], fresh_after=time.perf_counter())
    assert sa.num_points == n_a  # A's memory did not change: its own peer's view, and its points
    pts_a = a.core.backend.memory.points.cpu().numpy()
    assert np.array_equal(pts_a, before)
    # B's memory holds none of A's points
    pts_b = b.core.backend.memory.points.cpu().numpy()
    assert len(pts_a) == n_a and len(pts_b) == sb.num_points
    common = set(map(tuple, np.round(pts_a, 4))) & set(map(tuple, np.round(pts_b, 4)))
    assert not common


def test_each_robot_imagines_from_its_own_memory_with_the_shared_model(robots, peers, room_loop):
    """A goal to B runs the shared model (generative result) and changes B's memory only by what
    B's rollout does (keep_imagined is off: nothing); A's memory is untouched."""
    a, b = robots
    pb = peers[NS[1]]
    n_a, n_b = a.core.backend.memory.num_points, b.core.backend.memory.num_points
    assert n_b > 0, "run after test_observations_stay_in_their_namespace"
    from mirage_ros import sim

    scene = sim.make_scene("outdoor", 3)
    cams = [sim.default_camera(H, W).with_pose(E) for E in sim.scene_trajectory(scene, "orbit", 4)]
    r = pb.imagine(NS[1], pb.path(cams[1:4], [40 * 10**9 + i * 10**8 for i in range(3)]), expect_frames=3,
                   chunk_size=4, timeout=300)
    res = r["result"]
    assert res.status == 0 and res.generative and res.backend == "mirage", res.message
    assert len(r["images"]) == 3 and all((m.height, m.width) == (H, W) for m in r["images"])
    assert a.core.backend.memory.num_points == n_a and a.core.counts["frames_imagined"] == 0
    assert b.core.backend.memory.num_points == n_b  # the rollout ran on a fork of B's memory
    assert b.core.counts["frames_imagined"] == 3


# -- the executable, measured: mirage bench multi --------------------------------------------------------

def test_bench_multi_writes_consistent_strict_json(tmp_path):
    """mirage_multi_node as its own process with 1 and 2 robots: every goal succeeded with its
    frames, the process stopped cleanly, and the derived figures are what the rows say. No
    wall-clock limits. (Sharing itself is checked in-process above.)"""
    import json
    import statistics
    import subprocess
    import sys

    from rosprobe import ROOT

    path = tmp_path / "multi.json"
    out = subprocess.run([sys.executable, "-m", "mirage_ros", "bench", "multi", "--json", str(path), "--robots", "1,2",
                          "--unshared", "", "--model", "readout", "--frames", "2", "--goals", "1", "--timeout", "200"],
                         capture_output=True, text=True, timeout=900, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    def bad(name):
        raise ValueError(name)
    r = json.loads(path.read_text(), parse_constant=bad)
    assert [(x["robots"], x["share_model"]) for x in r["rows"]] == [(1, True), (2, True)]
    for x in r["rows"]:
        assert x["exit_code"] == 0, x["log_tail"]
        assert x["sequential_all_succeeded"] and x["concurrent_all_succeeded"]
        assert len(x["sequential"]) == len(x["concurrent"]) == x["robots"]
        assert sorted(g["robot"] for g in x["concurrent"]) == list(range(x["robots"]))
        assert x["concurrent_first_frame_ms_median"] == statistics.median(g["first_frame_ms"] for g in x["concurrent"])
        assert 0 < x["rss_ready_mb"] and 0 < x["rss_observed_mb"] <= x["rss_peak_mb"]
    one, two = r["rows"]
    assert r["rss_per_extra_robot_mb_shared"] == two["rss_observed_mb"] - one["rss_observed_mb"]
    extra = two["concurrent_wall_ms_median"] - one["concurrent_wall_ms_median"]
    assert r["concurrent_wall_ms_per_extra_robot"] == extra
    assert r["model"] == "readout" and r["model_param_bytes"] == 0
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
