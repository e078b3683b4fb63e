"""Every result status of the node's goals, without ROS: ``goal_runner.GoalRunner`` / ``GoalBook``
driven with rosbags messages, a stand-in goal handle (cancel request, activity, feedback list) and
publish callbacks that record what the node would publish.

References are independent of the runner: the poses and frame count of the goal itself, the
memory's own readout through ``MirageCore.imagine``, the goal queue's own counters.
"""
import threading
import time

import numpy as np
import pytest

from mirage_ros.ros import convert as cv
from mirage_ros.ros.bag import RosbagsTypes
from mirage_ros.ros.core import MirageCore
from mirage_ros.ros.goal_runner import ClientWatch, GoalBook, GoalRunner, StopCheck, terminal_state
from mirage_ros.ros.goals import (
    STATUS_CANCELED,
    STATUS_FAILED,
    STATUS_INVALID_GOAL,
    STATUS_NOT_READY,
    STATUS_SUCCEEDED,
    GoalQueue,
)
from mirage_ros.ros.observer import Observer
from mirage_ros.ros.slot import LatestSlot, SlotWorker

B = RosbagsTypes()
H, W = 64, 112
N = 7  # poses per goal; chunk_size 3 -> chunks of 3, 3, 1


class Msg:
    """A message class of the action (Result, Feedback): any fields as keywords."""

    KIND_SCORES, KIND_CHUNK = 0, 1

    def __init__(self, **kw):
        self.__dict__.update(kw)


class Action:
    Result = Msg
    Feedback = Msg


class Handle:
    """rclpy's ServerGoalHandle as the runner uses it; ``cancel_after`` feedbacks, a cancel arrives."""

    def __init__(self, request, cancel_after=None, on_feedback=None):
        self.request, self.feedback = request, []
        self.is_cancel_requested, self.is_active = cancel_after == 0, True
        self.cancel_after, self.on_feedback = cancel_after, on_feedback

    def publish_feedback(self, fb):
        self.feedback.append(fb)
        if self.cancel_after is not None and len(self.feedback) >= self.cancel_after:
            self.is_cancel_requested = True
        if self.on_feedback is not None:
            self.on_feedback(len(self.feedback))


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(12, H, W)


def observed_core(scene, observe=True, **params):
    core = MirageCore({"backend": "readout", "chunk_size": 3, **params})
    core.configure()
    if observe:
        cams, frames = scene
        cam, fr, t = cams[0], frames[0], 10**9
        for kind, m in (("camera_info", cv.camera_info_msg(B, cam.K.numpy(), H, W, t, "cam")),
                        ("pose", cv.pose_stamped_msg(B, cam.camera_to_world.numpy(), t, "map")),
                        ("depth", cv.image_msg(B, fr.depth, t, "cam", "32FC1"))):
            getattr(core.intake, f"on_{kind}")(m)
        assert core.observe(core.intake.on_image(cv.image_msg(B, fr.rgb, t, "cam"))) > 0
    return core


def path_msg(scene, n=N, frame="map"):
    cams, _ = scene
    T = np.stack([c.camera_to_world.numpy() for c in cams[1:1 + n]])
    return cv.path_msg(B, T, [2 * 10**9 + i * 10**8 for i in range(n)], frame)


def goal(scene, **kw):
    return Msg(path=kw.pop("path", None) or path_msg(scene), prompt="", num_frames=0, **kw)


def candidates_goal(scene, k=2, **kw):
    fields = dict(candidates=[path_msg(scene, 4) for _ in range(k)], num_frames=0, prompt="", return_frames=False,
                  scores_only=False, goal_image=None, goal_camera_info=None, goal_metric="")
    fields.update(kw)
    return Msg(**fields)


class Published(dict):
    """Output key -> messages published, in order (``log`` keeps the interleaving)."""

    def __init__(self):
        super().__init__()
        self.log = []

    def callbacks(self, keys=("path", "tf", "camera_info", "image", "chunk")):
        def make(k):
            return lambda m: (self.setdefault(k, []).append(m), self.log.append(k))
        return {k: make(k) for k in keys}


def runner(core, active=lambda: True, clients=None, clock=time.perf_counter):
    pub = Published()
    return GoalRunner(core, B, pub.callbacks(), active, clients, lambda: 5 * 10**9, clock), pub


def outcomes(core):
    c = core.counts
    return c["goals_succeeded"], c["goals_canceled"], c["goals_aborted"]


# -- succeeded ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_goal_succeeds_and_publishes_every_frame_transform_first(scene):
    core = observed_core(scene)
    run, pub = runner(core)
    h = Handle(goal(scene))
    status, result = run.imagine(h, Action)
    assert status == STATUS_SUCCEEDED and terminal_state(status) == "succeed"
    assert result.num_frames == N and result.num_chunks == 3 and "imagined 7 frames in 3 chunks" in result.message
    assert result.backend == "readout" and result.generative is False and result.total_time >= 0
    assert len(pub["path"]) == 1 and len(pub["image"]) == len(pub["camera_info"]) == len(pub["tf"]) == N
    assert len(pub["chunk"]) == 3 and [fb.frames_done for fb in h.feedback] == [3, 6, 7]
    frames = pub.log[1:]
    for k in range(N):  # per frame: tf, camera_info, image (a chunk message after each chunk)
        i = [j for j, x in enumerate(frames) if x == "image"][k]
        assert frames[i - 2:i] == ["tf", "camera_info"]
    # the frames are the memory's readout along the goal's own poses, stamped with them
    want = [c.frames for c in core.imagine(core.prepare(path_msg(scene)))]
    assert np.array_equal(np.concatenate(want).reshape(-1), np.concatenate([np.asarray(m.data) for m in pub["image"]]))
    assert [cv.stamp_to_ns(m.header.stamp) for m in pub["image"]] == [2 * 10**9 + i * 10**8 for i in range(N)]
    assert 0 < result.mean_coverage <= 1
    assert outcomes(core) == (1, 0, 0)  # counted once


# -- canceled ---------------------------------------------------------------------------------------

def test_canceled_before_it_started_and_after_a_chunk(scene):
    core = observed_core(scene)
    run, pub = runner(core)
    status, result = run.imagine(Handle(goal(scene), cancel_after=0), Action)
    assert status == STATUS_CANCELED and result.message == "canceled before it started" and not pub
    assert terminal_state(status) == "canceled"
    status, result = run.imagine(Handle(goal(scene), cancel_after=1), Action)  # the cancel comes during chunk 1
    assert status == STATUS_CANCELED and result.message == f"canceled after 3 of {N} frames"
    assert len(pub["image"]) == 3
    assert outcomes(core) == (0, 2, 0)


# -- aborted, for each reason ---------------------------------------------------------------------------

def test_not_active_no_observation_and_an_invalid_goal(scene):
    core = observed_core(scene)
    run, pub = runner(core, active=lambda: False)
    status, result = run.imagine(Handle(goal(scene)), Action)
    assert status == STATUS_NOT_READY and "not active" in result.message and terminal_state(status) == "abort"
    run, pub = runner(observed_core(scene, observe=False))
    status, result = run.imagine(Handle(goal(scene)), Action)
    assert status == STATUS_NOT_READY and "no observation yet" in result.message
    run, pub = runner(core)
    status, result = run.imagine(Handle(goal(scene, path=path_msg(scene, frame="odom"))), Action)
    assert status == STATUS_INVALID_GOAL and "path.header.frame_id 'odom'" in result.message
    bad = path_msg(scene)
    bad.poses[2].pose.orientation.w = 3.0
    status, result = run.imagine(Handle(goal(scene, path=bad)), Action)
    assert status == STATUS_INVALID_GOAL and "path.poses[2].pose.orientation" in result.message
    assert not pub  # nothing published for a refused goal
    assert outcomes(core) == (0, 0, 3)


def test_deactivated_mid_goal_is_not_ready_with_what_was_done(scene):
    core = observed_core(scene)
    state = {"active": True}
    run, pub = runner(core, active=lambda: state["active"])
    h = Handle(goal(scene), on_feedback=lambda n: state.update(active=False))
    status, result = run.imagine(h, Action)
    assert status == STATUS_NOT_READY and result.message == f"stopped after 3 of {N} frames (node deactivated)"
    assert result.num_frames == 3 and len(pub["image"]) == 3


def test_goals_max_seconds_and_a_vanished_client_fail_after_the_current_chunk(scene):
    core = observed_core(scene, **{"goals.max_seconds": 1.0})
    t = {"now": 0.0}

    def clock():
        return t["now"]

    run, pub = runner(core, clock=clock)
    h = Handle(goal(scene), on_feedback=lambda n: t.update(now=t["now"] + 2.0))  # each chunk "takes" 2 s
    status, result = run.imagine(h, Action)
    assert status == STATUS_FAILED and "longer than goals.max_seconds = 1" in result.message
    assert result.message.startswith(f"stopped after 3 of {N} frames (aborted after 2 s")
    # no action client left: the feedback topics have had no subscriber for over a second
    t["now"] = 0.0
    core.p["goals.max_seconds"] = 3600.0
    watch = ClientWatch(lambda: 0, clock=clock)
    run, pub = runner(core, clients=watch, clock=clock)
    h = Handle(goal(scene), on_feedback=lambda n: t.update(now=t["now"] + 0.8))
    status, result = run.imagine(h, Action)
    assert status == STATUS_FAILED and "no action client is left" in result.message
    assert 0 < result.num_frames < N
    assert outcomes(core) == (0, 0, 2)


def test_a_backend_failure_is_a_failed_result_and_the_runner_serves_on(scene, monkeypatch):
    core = observed_core(scene)
    run, pub = runner(core)

    def broken(cameras, prompt=None, cancel=None):
        raise RuntimeError("out of memory")
        yield

    monkeypatch.setattr(core.backend, "imagine", broken)
    status, result = run.imagine(Handle(goal(scene)), Action)
    assert status == STATUS_FAILED and result.message == "backend raised RuntimeError: out of memory"
    monkeypatch.undo()
    assert run.imagine(Handle(goal(scene)), Action)[0] == STATUS_SUCCEEDED


def test_client_watch_needs_a_second_without_subscribers():
    t, n = {"now": 0.0}, {"subs": 0}
    w = ClientWatch(lambda: n["subs"], clock=lambda: t["now"])
    assert not w.gone()  # the first zero starts the grace second
    t["now"] = 0.6
    assert not w.gone()
    t["now"] = 1.2
    assert w.gone()
    n["subs"] = 1
    t["now"] = 1.3
    assert w.gone()  # asked at most every 0.5 s
    t["now"] = 1.8
    assert not w.gone()
    w.reset()
    n["subs"] = 0
    t["now"] = 2.0
    assert not w.gone()
    w2 = ClientWatch(lambda: 1 / 0, clock=lambda: 100.0)
    assert not w2.gone()  # a graph query failure is not a vanished client
    stop = StopCheck(Handle(None), lambda: True, 10.0, None, 0.0, clock=lambda: 5.0)
    assert not stop() and stop.reason is None


# -- candidates --------------------------------------------------------------------------------------

def test_candidates_scores_first_then_chunks_and_each_status(scene):
    core = observed_core(scene)
    run, pub = runner(core)
    h = Handle(candidates_goal(scene, scores_only=True))
    status, result = run.candidates(h, Action)
    assert status == STATUS_SUCCEEDED and result.message.startswith("scored 2 candidates (8 frames), no model run")
    assert len(h.feedback) == 1 and h.feedback[0].kind == Msg.KIND_SCORES and len(h.feedback[0].scores) == 2
    h = Handle(candidates_goal(scene))
    status, result = run.candidates(h, Action)
    assert status == STATUS_SUCCEEDED and result.num_chunks == 4 and len(result.candidates) == 2
    assert [fb.kind for fb in h.feedback] == [Msg.KIND_SCORES] + [Msg.KIND_CHUNK] * 4
    assert h.feedback[-1].frames_done == 8 and not pub  # nothing on imagined/*
    status, result = run.candidates(Handle(candidates_goal(scene), cancel_after=2), Action)
    assert status == STATUS_CANCELED and result.message == "canceled after 3 of 8 frames"
    status, result = run.candidates(Handle(candidates_goal(scene, k=17)), Action)
    assert status == STATUS_INVALID_GOAL and "more than candidates.max_candidates = 16" in result.message
    status, result = run.candidates(Handle(candidates_goal(scene, goal_metric="psnr")), Action)
    assert status == STATUS_INVALID_GOAL and result.message.startswith("goal_metric:")
    run_off, _ = runner(core, active=lambda: False)
    assert run_off.candidates(Handle(candidates_goal(scene)), Action)[0] == STATUS_NOT_READY
    assert outcomes(core) == (2, 1, 3)


# -- the book: rejected, canceled while queued, node stopped before it started ---------------------------

def test_admission_rejects_at_the_door_from_the_lengths_alone(scene):
    core = observed_core(scene, **{"goals.max_queued": 1, "imagined.max_frames": 8})
    book = GoalBook(GoalQueue(1, 1, 8), core.p)
    assert "more than imagined.max_frames = 8" in book.admit(goal(scene, path=path_msg(scene, 9)))
    assert book.admit(goal(scene)) is None and book.admit(goal(scene)) is None
    assert book.admit(goal(scene)).startswith("busy: 0 goal(s) running and 2 waiting")
    assert book.admit_candidates(candidates_goal(scene)).startswith("imagine_candidates: busy")
    book.queue.release()
    assert book.admit_candidates(candidates_goal(scene, k=17)) == (
        "imagine_candidates: 17 candidates, more than candidates.max_candidates = 16")
    assert book.admit_candidates(candidates_goal(scene)) is None
    assert book.queue.counts["rejected"] == 3


def test_each_goal_is_answered_once_queued_canceled_or_stopped(scene):
    core = observed_core(scene)
    run, _ = runner(core)
    book = GoalBook(GoalQueue(1, 10, 1024), core.p)
    release = threading.Event()
    answers = {}

    def answer(key):
        return lambda ok, value: answers.setdefault(key, []).append((ok, value))

    def short(st, m):
        return run.short(Action, st, m)

    def blocked():
        release.wait(10)
        return run.imagine(Handle(goal(scene)), Action)

    book.queue.start()
    for key, fn in ((b"a", blocked), (b"b", lambda: run.imagine(Handle(goal(scene)), Action)),
                    (b"c", lambda: 1 / 0), (b"d", lambda: None)):
        assert book.queue.admit(N) is None
        book.submit(key, fn, short, answer(key))
    assert book.cancel(b"b") and not book.cancel(b"b")  # queued: answered canceled at once, once
    assert answers[b"b"][0][1][0] == STATUS_CANCELED and "while queued" in answers[b"b"][0][1][1].message
    assert book.skip(short)[0] == STATUS_CANCELED  # canceled before it was even submitted
    release.set()
    for _ in range(200):
        if b"c" in answers and b"d" in answers:
            break
        time.sleep(0.05)
    assert answers[b"a"] == [(True, answers[b"a"][0][1])] and answers[b"a"][0][1][0] == STATUS_SUCCEEDED
    ok, exc = answers[b"c"][0]
    assert not ok and isinstance(exc, ZeroDivisionError)  # the worker's exception is handed on
    assert not book.cancel(b"a")  # it ran: nothing to cancel
    # stopping with goals still queued answers them NOT_READY; the workers are gone
    gate = threading.Event()
    book.queue.admit(N)
    book.submit(b"e", lambda: gate.wait(10), short, answer(b"e"))
    time.sleep(0.2)
    book.queue.admit(N)
    book.submit(b"f", lambda: None, short, answer(b"f"))
    threading.Timer(0.3, gate.set).start()
    assert book.stop(timeout=10) == 0
    status, result = answers[b"f"][0][1]
    assert status == STATUS_NOT_READY and "stopped before this goal started" in result.message
    assert all(len(v) == 1 for v in answers.values())
    book.queue.admit(N)  # refused: shutting down
    book.submit(b"g", lambda: None, short, answer(b"g"))
    assert answers[b"g"][0][1][0] == STATUS_NOT_READY and "shutting down" in answers[b"g"][0][1][1].message


# -- plans (streaming mode) ----------------------------------------------------------------------------

def test_a_plan_runs_until_superseded_and_a_refused_plan_is_a_rejected_goal(scene):
    core = observed_core(scene)
    run, pub = runner(core)
    run.plan(path_msg(scene), lambda: "chunk" in pub)  # a newer plan arrived during the first chunk
    assert len(pub["image"]) == 3 and len(pub["chunk"]) == 1
    run.plan(path_msg(scene, frame="odom"), lambda: False)
    assert core.counts["goals_rejected"] == 1 and outcomes(core) == (0, 0, 0)


# -- the latest-wins slot and the observer ---------------------------------------------------------------

def test_latest_slot_newest_wins_and_seq_moves():
    slot = LatestSlot()
    assert slot.take(0.01) is None
    assert slot.put("a") is False and slot.put("b") is True  # "a" was superseded
    assert slot.take(0.01) == (2, "b") and slot.take(0.01) is None
    slot.bump()
    assert slot.seq == 3
    slot.close()
    t0 = time.monotonic()
    assert slot.take(5.0) is None and time.monotonic() - t0 < 1.0  # closed: no wait


def test_observer_counts_what_it_skips_and_survives_a_failing_observation(scene):
    core = observed_core(scene)
    seen, gate = [], threading.Event()

    def observe(s):
        gate.wait(5)
        if s == "bad":
            raise ValueError("boom")
        seen.append(s)

    wants = {"yes": True}
    obs = Observer(lambda stamp: wants["yes"], observe, core.report)
    skipped0 = core.counts["frames_skipped"]

    class S:
        def __init__(self, name):
            self.stamp_ns, self.name = 0, name

        def __eq__(self, other):
            return self.name == other

    obs.offer(S("x"))  # inactive: dropped, not counted
    obs.active = True
    obs.start()
    try:
        obs.offer(S("bad"))
        time.sleep(0.2)  # the thread holds "bad" (waiting on the gate)
        obs.offer(S("1"))
        obs.offer(S("2"))  # supersedes "1"
        wants["yes"] = False
        obs.offer(S("3"))  # the policy does not want it
        gate.set()
        for _ in range(100):
            if seen:
                break
            time.sleep(0.05)
    finally:
        obs.stop()
    assert seen == ["2"] and core.counts["frames_skipped"] - skipped0 == 2
    assert "observation: ValueError: boom" in core.last_rejection


def test_slot_worker_stops_promptly():
    got = []
    w = SlotWorker("t", lambda seq, item: got.append((seq, item)), lambda exc: None)
    w.start()
    w.slot.put("x")
    for _ in range(100):
        if got:
            break
        time.sleep(0.02)
    w.stop(2.0)
    assert got == [(1, "x")] and w.stopping
