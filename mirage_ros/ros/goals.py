"""Admission and scheduling of ``imagine`` goals. No rclpy import.

The node's executor must answer every goal and cancel request at once, however many arrive, so
the policy is decided here in O(1) and the work runs elsewhere:

- ``admit(n_poses, num_frames)`` runs in the action server's goal callback, on the message's
  list LENGTH only (before any per-pose work): a path longer than ``max_frames`` poses, or
  ``num_frames`` above it, is rejected; so is a goal arriving while ``max_active`` goals run and
  ``max_queued`` wait. The reason is returned (the node logs it: a rejected ROS 2 goal carries
  none). An admitted goal holds its place until it finishes.
- ``submit(fn, done)`` queues the goal's work; ``max_active`` fixed worker threads, started once,
  run the queue in order (no thread per goal, so a burst cannot multiply threads).
- ``cancel(job)`` removes a goal that is still queued (True: the caller reports it cancelled at
  once); a running goal is cancelled by its own cancel check instead (False).
- ``stop()`` asks the workers to finish (a running goal's cancel check sees ``stopping``) and
  joins them: shut down before the ROS context goes away.
- ``candidates_reason(lengths, ...)``: the size rule of an ``imagine_candidates`` goal (K paths),
  from the K list lengths alone; the node's goal callback and ``MirageCore.prepare_candidates``
  both apply it, so a request is refused before any per-pose work. Such goals share the queue
  and workers above with single ``imagine`` goals (one model, one queue).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Sequence

__all__ = ["GoalQueue", "Job", "candidates_reason", "GoalError", "STATUS_SUCCEEDED", "STATUS_CANCELED",
           "STATUS_INVALID_GOAL", "STATUS_NOT_READY", "STATUS_FAILED", "STATUS_NAMES"]

# a goal's result status: mirrors action/Imagine.action (and ImagineCandidates.action)
STATUS_SUCCEEDED, STATUS_CANCELED, STATUS_INVALID_GOAL, STATUS_NOT_READY, STATUS_FAILED = 0, 1, 2, 3, 4
STATUS_NAMES = {0: "succeeded", 1: "canceled", 2: "invalid goal", 3: "not ready", 4: "failed"}


class GoalError(Exception):
    """A goal that cannot be served: its result ``status`` and the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def candidates_reason(lengths: Sequence[int], num_frames: int, max_frames: int, max_candidates: int,
                      max_total: int) -> Optional[str]:
    """Why K candidate paths of ``lengths`` poses (each resampled to ``num_frames`` if > 0) are too
    big for one request, or None: no candidates, more than ``max_candidates``, a path longer than
    ``max_frames`` poses, ``num_frames`` out of 0 .. ``max_frames``, or more than ``max_total`` frames
    in all (K x num_frames, or the sum of the lengths)."""
    k = len(lengths)
    if k == 0:
        return "no candidates"
    if k > max_candidates:
        return f"{k} candidates, more than candidates.max_candidates = {max_candidates}"
    if num_frames < 0 or num_frames > max_frames:
        return f"num_frames is {num_frames}, expected 0 .. imagined.max_frames = {max_frames}"
    for i, n in enumerate(lengths):
        if n == 0:
            return f"candidates[{i}]: path has no poses"
        if n > max_frames:
            return f"candidates[{i}]: path has {n} poses, more than imagined.max_frames = {max_frames}"
    total = k * num_frames if num_frames else sum(int(n) for n in lengths)
    if total > max_total:
        return f"{total} frames in all ({k} candidates), more than candidates.max_total_frames = {max_total}"
    return None


class Job:
    """One admitted goal's work. ``done(ok, value)`` is called exactly once: with the return
    value of ``fn()``, its exception, or not at all when ``cancel`` took it out of the queue."""

    __slots__ = ("fn", "done", "state")

    def __init__(self, fn: Callable[[], Any], done: Callable[[bool, Any], None]):
        self.fn, self.done, self.state = fn, done, "queued"


class GoalQueue:
    def __init__(self, max_active: int = 1, max_queued: int = 10, max_frames: int = 1024, name: str = "mirage-goal"):
        if max_active < 1:
            raise ValueError(f"goals.max_active: expected >= 1, got {max_active}")
        if max_queued < 0:
            raise ValueError(f"goals.max_queued: expected >= 0, got {max_queued}")
        self.max_active, self.max_queued, self.max_frames = int(max_active), int(max_queued), int(max_frames)
        self.name = name
        self._cv = threading.Condition()
        self._queue: Deque[Job] = deque()
        self._admitted = 0  # admitted and not finished: reserved + queued + running
        self._running = 0
        self._workers: List[threading.Thread] = []
        self.stopping = False
        self.counts = {"admitted": 0, "rejected": 0, "cancelled_queued": 0, "finished": 0}

    # -- policy (the goal callback) ---------------------------------------------------------------
    def admit(self, n_poses: int, num_frames: int = 0) -> Optional[str]:
        """None: accepted (a place is held until the job finishes or ``release``); else the reason."""
        maxf = self.max_frames
        if n_poses > maxf:
            reason = f"path has {n_poses} poses, more than imagined.max_frames = {maxf}"
        elif num_frames > maxf:
            reason = f"num_frames is {num_frames}, more than imagined.max_frames = {maxf}"
        else:
            with self._cv:
                if self.stopping:
                    reason = "the node is shutting down"
                elif self._admitted >= self.max_active + self.max_queued:
                    reason = (f"busy: {self._running} goal(s) running and {self._admitted - self._running} waiting "
                              f"(goals.max_active = {self.max_active}, goals.max_queued = {self.max_queued}); retry "
                              f"later")
                else:
                    self._admitted += 1
                    self.counts["admitted"] += 1
                    return None
        self.counts["rejected"] += 1
        return reason

    def release(self) -> None:
        """Give back a place held by ``admit`` whose job was never submitted."""
        with self._cv:
            self._admitted = max(0, self._admitted - 1)

    # -- work ----------------------------------------------------------------------------------
    def submit(self, fn: Callable[[], Any], done: Callable[[bool, Any], None]) -> Job:
        job = Job(fn, done)
        with self._cv:
            if self.stopping:
                job.state = "done"
                self._admitted = max(0, self._admitted - 1)
                raise RuntimeError("the node is shutting down")
            self._queue.append(job)
            self._cv.notify()
        return job

    def cancel(self, job: Job) -> bool:
        """Take a queued job out (True; its ``done`` is not called); False if it already runs or ran."""
        with self._cv:
            if job.state != "queued":
                return False
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            job.state = "done"
            self._admitted = max(0, self._admitted - 1)
            self.counts["cancelled_queued"] += 1
            return True

    def position(self, job: Job) -> int:
        """0-based place of a queued job in the queue (-1 if not queued)."""
        with self._cv:
            try:
                return self._queue.index(job)
            except ValueError:
                return -1

    @property
    def running(self) -> int:
        return self._running

    @property
    def workers_alive(self) -> int:
        """Worker threads still alive (after ``stop``: those whose goal did not return in time)."""
        return sum(t.is_alive() for t in self._workers)

    @property
    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    # -- workers -------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cv:
            self.stopping = False
            alive = [t for t in self._workers if t.is_alive()]
            for i in range(len(alive), self.max_active):
                t = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
                alive.append(t)
                t.start()
            self._workers = alive

    def stop(self, timeout: float = 30.0) -> List[Job]:
        """Stop taking work, wait for the running jobs to return; returns the jobs never started
        (their ``done`` is not called)."""
        with self._cv:
            self.stopping = True
            left = list(self._queue)
            self._queue.clear()
            for j in left:
                j.state = "done"
            self._admitted = max(0, self._admitted - len(left))
            self._cv.notify_all()
        for t in self._workers:
            t.join(timeout)
        self._workers = [t for t in self._workers if t.is_alive()]
        return left

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self.stopping:
                    self._cv.wait()
                if self.stopping:
                    return
                job = self._queue.popleft()
                job.state = "running"
                self._running += 1
            ok, value = True, None
            try:
                value = job.fn()
            except BaseException as exc:  # noqa: BLE001 - handed to done(); the worker lives on
                ok, value = False, exc
            finally:
                with self._cv:
                    job.state = "done"
                    self._running -= 1
                    self._admitted = max(0, self._admitted - 1)
                    self.counts["finished"] += 1
            try:
                job.done(ok, value)
            except Exception:  # noqa: BLE001 - a failing callback must not kill the worker
                pass
