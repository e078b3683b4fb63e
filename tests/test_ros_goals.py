"""The imagine goal policy without ROS: mirage_ros.ros.goals."""
import threading
import time

import pytest

from mirage_ros.ros.goals import GoalQueue
from mirage_ros.ros.params import ParamError, validate


def wait(pred, timeout=30.0):
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.005)


def test_oversized_goals_are_rejected_on_length_alone():
    q = GoalQueue(1, 2, max_frames=1024)
    assert "1000000 poses, more than imagined.max_frames = 1024" in q.admit(10**6)
    assert "num_frames is 5000" in q.admit(3, 5000)
    assert q.admit(1024) is None and q.admit(0) is None  # an empty path is admitted and aborted with its reason
    assert q.counts == {"admitted": 2, "rejected": 2, "cancelled_queued": 0, "finished": 0}


def test_a_burst_is_answered_at_once_and_runs_on_fixed_workers():
    q = GoalQueue(max_active=2, max_queued=3)
    q.start()
    gate = threading.Event()
    results = []
    try:
        answers = [q.admit(10) for _ in range(50)]
        assert answers.count(None) == 5
        busy = [a for a in answers if a]
        assert len(busy) == 45 and all("busy: " in a and "goals.max_queued = 3" in a for a in busy)
        before = threading.active_count()
        jobs = [q.submit(lambda i=i: (gate.wait(30), i)[1], lambda ok, v: results.append((ok, v))) for i in range(5)]
        wait(lambda: q.running == 2)
        assert q.queued == 3 and threading.active_count() == before  # no thread per goal
        assert q.position(jobs[4]) == 2
        assert q.cancel(jobs[3]) and not q.cancel(jobs[3])  # queued: taken out, once
        assert not q.cancel(jobs[0])  # running: its own cancel check stops it
        assert q.admit(10) is None  # the cancelled goal's place is free again
        gate.set()
        wait(lambda: len(results) == 4)
        assert sorted(v for ok, v in results) == [0, 1, 2, 4]
        q.submit(lambda: 9, lambda ok, v: results.append((ok, v)))
        wait(lambda: len(results) == 5)
        assert q.admit(10) is None and q._admitted == 1
        q.release()
    finally:
        gate.set()
        q.stop()


def test_a_failing_goal_does_not_kill_its_worker():
    q = GoalQueue(1, 1)
    q.start()
    out = []
    try:
        q.admit(1)
        q.submit(lambda: 1 / 0, lambda ok, v: out.append((ok, type(v).__name__)))
        q.admit(1)
        q.submit(lambda: "next", lambda ok, v: out.append((ok, v)))
        wait(lambda: len(out) == 2)
        assert out == [(False, "ZeroDivisionError"), (True, "next")]
    finally:
        q.stop()


def test_stop_lets_the_running_goal_finish_and_drops_the_queue():
    q = GoalQueue(1, 5)
    q.start()
    out = []
    started = threading.Event()

    def long_goal():
        started.set()
        while not q.stopping:  # a goal's cancel check sees the shutdown
            time.sleep(0.01)
        return "stopped"

    for fn in (long_goal, lambda: "never"):
        q.admit(1)
        q.submit(fn, lambda ok, v: out.append(v))
    started.wait(30)
    left = q.stop(timeout=30)
    assert out == ["stopped"] and len(left) == 1 and all(not t.is_alive() for t in q._workers)
    assert "shutting down" in q.admit(1)
    with pytest.raises(RuntimeError):
        q.submit(lambda: 0, lambda ok, v: None)


def test_goal_parameters_are_validated():
    p = validate({})
    assert p["goals.max_active"] == 1 and p["goals.max_queued"] == 10
    with pytest.raises(ParamError, match="goals.max_active"):
        validate({"goals.max_active": 0})
    with pytest.raises(ParamError, match="goals.max_queued"):
        validate({"goals.max_queued": -1})
