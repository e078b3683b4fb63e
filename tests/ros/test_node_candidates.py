"""imagine_candidates against a live mirage_node, from a second real rclpy process (this one).

A planner sends K candidate Paths in one goal. Checked against what the node says through other
interfaces: the single-trajectory imagine action along the same path (its imagined/chunk coverage
and imagined/image pixels), memory/stats before and after (the memory is unchanged), and the
node's log (a goal refused at the door says why).
"""
import threading
import time

import numpy as np
import pytest
from rosprobe import ROOT, start_node, wait_for

from mirage_ros.ros.probe import action_client, get_result
from mirage_ros.ros.probe import start_node as raw_start_node

H, W = 128, 224


def send(probe, ns, candidates, num_frames=0, return_frames=False, scores_only=False, cancel_after_chunks=0,
         timeout=120.0):
    """One ImagineCandidates goal; returns dict(accepted, result, status, feedback)."""
    from action_msgs.msg import GoalStatus

    from mirage_ros.action import ImagineCandidates

    key = ("candidates", ns)
    if key not in probe._clients:
        probe._clients[key] = action_client(probe.node, ImagineCandidates, f"{ns}/imagine_candidates")
    ac = probe._clients[key]
    wait_for(ac.server_is_ready, 30, what=f"the {ns}/imagine_candidates action server")
    fbs, lock = [], threading.Lock()

    def on_fb(f):
        with lock:
            fbs.append(f.feedback)

    goal = ImagineCandidates.Goal(candidates=list(candidates), num_frames=num_frames, return_frames=return_frames,
                                  scores_only=scores_only)
    fut = ac.send_goal_async(goal, feedback_callback=on_fb)
    wait_for(fut.done, 30, what="the goal response")
    gh = fut.result()
    if not gh.accepted:
        return {"accepted": False}
    if cancel_after_chunks:
        wait_for(lambda: sum(f.kind == f.KIND_CHUNK for f in list(fbs)) >= cancel_after_chunks, timeout,
                 what="chunk feedback")
        cf = gh.cancel_goal_async()
        wait_for(cf.done, 30, what="the cancel response")
    # rclpy drops feedback that arrives after the result: ask for the result once the goal has
    # ended (the status topic; feedback was published before it)
    wait_for(lambda: gh.status in (GoalStatus.STATUS_SUCCEEDED, GoalStatus.STATUS_CANCELED, GoalStatus.STATUS_ABORTED),
             timeout, what="the end of the goal")
    time.sleep(0.2)
    rf = get_result(gh, timeout)
    with lock:
        fb = list(fbs)
    return {"accepted": True, "result": rf.result().result, "status": rf.result().status, "feedback": fb}


def observe_first(probe, ns, cams, frames):
    """The first set (the nodes here run with observe.update false: later sets are not written)."""
    for k in range(50):  # best effort sensors: retry until the first set lands
        probe.publish_set(ns, cams[0], frames[0], 10**9 + k)
        try:
            return probe.wait_stats(ns, lambda s: s.num_points > 0, timeout=0.5)
        except TimeoutError:
            continue
    raise TimeoutError("no observation reached the memory")


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(24, H, W)


def test_candidates_readout_node(tmp_path, probe, scene):
    ns = "/cand"
    proc = start_node(tmp_path, ns, {"chunk_size": 3, "viz.stats_period": 0.1, "candidates.max_candidates": 4,
                                              "observe.update": False})
    probe.watch(ns)
    cams, frames = scene
    try:
        probe.stats(ns, timeout=60)
        observe_first(probe, ns, cams, frames)
        def stamps(n):
            return [3 * 10**9 + i * 10**8 for i in range(n)]

        paths = [probe.path(cams[0:5], stamps(5)), probe.path(cams[4:12], stamps(8)),
                 probe.path(cams[20:24], stamps(4))]
        before = probe.stats(ns)
        probe.clear(f"{ns}/imagined/image")
        probe.clear(f"{ns}/imagined/chunk")
        out = send(probe, ns, paths, return_frames=True)
        res = out["result"]
        assert out["accepted"] and res.status == 0 and not res.generative and res.backend == "readout", res.message
        assert [c.index for c in res.candidates] == [0, 1, 2]
        assert [c.num_frames for c in res.candidates] == [5, 8, 4] == [c.frames_imagined for c in res.candidates]
        # feedback: the scores first, then every chunk of every candidate
        fb = out["feedback"]
        assert fb[0].kind == fb[0].KIND_SCORES and [s.known for s in fb[0].scores] == [c.known for c in res.candidates]
        chunks = [f for f in fb if f.kind == f.KIND_CHUNK]
        for k, n in enumerate([5, 8, 4]):
            assert sorted(i for f in chunks if f.candidate == k for i in f.chunk.frame_indices) == list(range(n))
            assert all(len(f.chunk.frames) == 0 for f in chunks)  # frames only in the result, when asked
        # nothing published on imagined/*, nothing written into the memory
        assert probe.msgs(f"{ns}/imagined/image") == [] and probe.msgs(f"{ns}/imagined/chunk") == []
        after = probe.stats(ns, fresh_after=time.perf_counter())
        assert after.num_points == before.num_points and after.frames_observed == before.frames_observed
        # each candidate against the single-trajectory action along the same path
        for k, path in enumerate(paths):
            single = probe.imagine(ns, path, expect_frames=len(path.poses), chunk_size=3)
            assert single["result"].status == 0
            assert len(single["feedback"]) == -(-len(path.poses) // 3)  # one per chunk of 3
            cov = [c for f in sorted(single["feedback"], key=lambda f: f.chunk.index) for c in f.chunk.coverage]
            cand = res.candidates[k]
            assert np.allclose(cand.visibility, cov, atol=1e-6), (k, list(cand.visibility), cov)
            assert cand.known == pytest.approx(np.mean(cov), abs=1e-6) and cand.novelty == pytest.approx(1 - cand.known)
            mine = [probe.cv.image_to_rgb(m, "image") for m in cand.frames]
            theirs = [probe.cv.image_to_rgb(m, "image") for m in single["images"]]
            assert len(mine) == len(theirs) == len(path.poses)
            assert all(np.array_equal(a, b) for a, b in zip(mine, theirs))
            assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in cand.frames] == \
                   [(t.sec, t.nanosec) for t in cand.stamps] == [(3, i * 10**8) for i in range(len(path.poses))]
        # the loop turns away from the observed view and comes back to it: a planner can rank them
        known = [c.known for c in res.candidates]
        assert known[1] < 0.1 < known[0] and known[1] < known[2], known

        # one bad candidate (non-unit quaternion) refuses the whole request, with the reason
        bad = probe.path(cams[4:8], stamps(4))
        q = bad.poses[2].pose.orientation
        q.x, q.y, q.z, q.w = 0.0, 0.0, 0.5, 0.5
        out = send(probe, ns, [paths[0], bad, paths[2]])
        r = out["result"]
        assert out["accepted"] and r.status == r.STATUS_INVALID_GOAL and len(r.candidates) == 0
        assert r.message.startswith("candidates[1]: path.poses[2].pose.orientation") and "norm" in r.message, r.message
        assert out["feedback"] == []
        # too many candidates: refused at the door (from the list's length), and the log says why
        out = send(probe, ns, [paths[2]] * 5)
        assert not out["accepted"]
        wait_for(lambda: "imagine_candidates: 5 candidates, more than candidates.max_candidates = 4" in proc.log(), 10,
                 what="the rejection in the log")
        # and the node keeps serving: scores only, no model run
        out = send(probe, ns, paths, scores_only=True)
        r = out["result"]
        assert r.status == 0 and r.num_chunks == 0 and [c.frames_imagined for c in r.candidates] == [0, 0, 0]
        assert [c.known for c in r.candidates] == [c.known for c in res.candidates]
        end = probe.stats(ns, fresh_after=time.perf_counter())
        assert end.num_points == before.num_points and proc.alive()
    finally:
        rc = proc.stop()
        print(proc.log()[-3000:])
    assert rc == 0


def test_candidates_shipped_model_batched_and_cancel(tmp_path, probe, scene):
    """The default backend: K = 3 candidates generated in one batched rollout; the memory is
    unchanged; a cancel lands between chunks."""
    ns = "/cand_shipped"
    proc = raw_start_node(tmp_path, ns, {"viz.stats_period": 0.2, "observe.update": False}, cwd=str(ROOT))
    probe.watch(ns)
    cams, frames = scene
    try:
        st = probe.stats(ns, timeout=120)
        assert st.backend == "shipped" and st.generative
        before = observe_first(probe, ns, cams, frames)
        stamps = [4 * 10**9 + i * 10**8 for i in range(8)]
        paths = [probe.path(cams[1:9], stamps), probe.path(cams[5:13], stamps), probe.path(cams[14:22], stamps)]
        out = send(probe, ns, paths, timeout=600)
        res = out["result"]
        assert res.status == 0 and res.generative and res.backend == "shipped", res.message
        assert [c.frames_imagined for c in res.candidates] == [8, 8, 8]
        assert all(len(c.rollout_coverage) == 8 for c in res.candidates)
        after = probe.stats(ns, fresh_after=time.perf_counter())
        assert after.num_points == before.num_points and after.frames_observed == before.frames_observed
        # 2 candidates x 40 frames (two chunk rounds of the model): cancel after the first chunk
        long = [probe.path(cams[1:24], [5 * 10**9 + i * 10**8 for i in range(23)])] * 2
        out = send(probe, ns, long, num_frames=40, cancel_after_chunks=1, timeout=900)
        r = out["result"]
        assert r.status == r.STATUS_CANCELED and out["status"] == 5, r.message  # GoalStatus.STATUS_CANCELED
        assert sum(c.frames_imagined for c in r.candidates) < 80 and len(r.candidates) == 2
        assert all(len(c.visibility) == 40 for c in r.candidates)  # the scores are whole
        end = probe.stats(ns, fresh_after=time.perf_counter())
        assert end.num_points == before.num_points
    finally:
        rc = proc.stop()
        print(proc.log()[-3000:])
    assert rc == 0
