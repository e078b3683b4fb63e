"""Running goals: each result status decided here, from a cancel check and publish callbacks (no rclpy).

The node's action callbacks are thin: the goal callback asks ``GoalBook.admit`` /
``admit_candidates`` (a reason rejects the goal), the execute callback hands the goal to
``GoalBook.submit`` and awaits its answer, and a worker thread runs ``GoalRunner.imagine`` /
``candidates``, which return (status, result). ``GoalBook`` answers a goal exactly once: with the
runner's result, when it is canceled while queued, or when the node stops before it starts.

A goal handle is duck-typed as rclpy's ``ServerGoalHandle``: ``request``, ``is_cancel_requested``,
``is_active`` and ``publish_feedback(msg)``; an ``action`` is the interface class (``Result``,
``Feedback``). Publishing goes through ``publish``: output key (``interfaces.TOPICS``) -> a
callable taking the message; absent keys are not published.

Statuses (``goals.STATUS_*``): succeeded; canceled (before it started, while queued, or after the
chunk running when the cancel came); not ready (the node is not active, no observation yet, the
node stopped or was deactivated mid-goal); invalid goal (the request, with the field named);
failed (the backend raised, ``goals.max_seconds`` ran out, or no action client is left).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from . import outputs as out
from .goals import (
    STATUS_CANCELED,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_NOT_READY,
    STATUS_SUCCEEDED,
    GoalError,
    GoalQueue,
    candidates_reason,
)
from .requests import NOT_ACTIVE

__all__ = ["GoalRunner", "GoalBook", "StopCheck", "ClientWatch", "publish_request", "terminal_state"]


def terminal_state(status: int) -> str:
    """The goal handle's method that ends a goal of ``status``: succeed, canceled or abort."""
    return {STATUS_SUCCEEDED: "succeed", STATUS_CANCELED: "canceled"}.get(status, "abort")


class ClientWatch:
    """Whether every action client is gone: ``count()`` (subscribers of both actions' feedback
    topics: every action client subscribes its action's) has been 0 for over ``grace`` s; asked at
    most every ``period`` s. ``reset()`` when a goal starts (it has a client)."""

    def __init__(self, count: Callable[[], int], grace: float = 1.0, period: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self.count, self.grace, self.period, self.clock = count, grace, period, clock
        self._last: Optional[Tuple[float, bool, Optional[float]]] = None  # (asked at, gone, zero since)

    def reset(self) -> None:
        self._last = None

    def gone(self) -> bool:
        now, last = self.clock(), self._last
        if last is not None and now - last[0] < self.period:
            return last[1]
        try:
            n = self.count()
        except Exception:  # noqa: BLE001 - a graph query failure is not a vanished client
            n = 1
        since = None if n else (last[2] if last is not None and last[2] is not None else now)
        gone = since is not None and now - since > self.grace
        self._last = (now, gone, since)
        return gone


class StopCheck:
    """The cancel check of a running goal: True (stop after the current chunk) on a cancel, when the
    goal or the node is no longer active, after ``max_seconds`` from ``t0``, or when no client is
    left; ``reason`` says which of the last two."""

    def __init__(self, handle, active: Callable[[], bool], max_seconds: float, clients: Optional[ClientWatch],
                 t0: float, clock: Callable[[], float] = time.perf_counter):
        self.handle, self.active, self.max_seconds, self.clients, self.t0, self.clock = \
            handle, active, max_seconds, clients, t0, clock
        self.reason: Optional[str] = None

    def __call__(self) -> bool:
        h = self.handle
        if h.is_cancel_requested or not h.is_active or not self.active():
            return True
        ran = self.clock() - self.t0
        if ran > self.max_seconds:
            self.reason = f"aborted after {ran:.0f} s: longer than goals.max_seconds = {self.max_seconds:g}"
            return True
        if self.clients is not None and self.clients.gone():
            self.reason = "aborted: no action client is left to take its result (the client vanished)"
            return True
        return False


def publish_request(core, types, publish: Dict[str, Callable], req, cancel, goal_frames: int,
                    on_chunk: Optional[Callable] = None, t0: Optional[float] = None,
                    clock: Callable[[], float] = time.perf_counter) -> dict:
    """Imagine ``req`` and publish imagined/path once, then per frame its transform (first, so
    viewers can place the image), camera_info, image (and compressed image), and per chunk
    imagined/chunk; ``on_chunk(chunk, msg, summary, images)`` after each. Returns the summary:
    frames, chunks, coverage (per frame), first (s from ``t0`` to the first frame)."""
    p = core.p
    summary = {"frames": 0, "chunks": 0, "coverage": [], "first": None}
    publish["path"](out.imagined_path_msg(types, req.camera_to_world, req.stamps_ns, p["world_frame"]))
    fid = core.imagined_frame
    zpub, tfpub = publish.get("image_compressed"), publish.get("tf")
    for chunk in core.imagine(req, cancel=cancel):
        images = out.frame_images(types, chunk, req.stamps_ns, fid)
        zimgs = (out.frame_compressed_images(types, chunk, req.stamps_ns, fid, p["imagined.compressed"],
                                             p["imagined.jpeg_quality"], p["imagined.png_level"])
                 if zpub is not None else [None] * len(images))
        infos = out.frame_camera_infos(types, chunk, req.stamps_ns, req.K, req.height, req.width, fid)
        tfs = (out.frame_transforms(types, chunk, req.camera_to_world, req.stamps_ns, p["world_frame"], fid)
               if tfpub is not None else [None] * len(images))
        for img, info, tf, zimg in zip(images, infos, tfs, zimgs):
            if tf is not None:
                tfpub(tf)
            publish["camera_info"](info)
            publish["image"](img)
            if zimg is not None:
                zpub(zimg)
            if summary["first"] is None:
                summary["first"] = clock() - (clock() if t0 is None else t0)
        msg = out.chunk_msg(types, chunk, req.camera_to_world, req.stamps_ns, req.K, req.height, req.width,
                            p["world_frame"], fid, goal_frames, core.backend.name, core.backend.generative)
        publish["chunk"](msg)
        summary["frames"] += len(images)
        summary["chunks"] += 1
        summary["coverage"].extend(list(msg.coverage))
        if on_chunk is not None:
            on_chunk(chunk, msg, summary, images)
    return summary


class GoalRunner:
    """One node's goal work. ``active()``: the node's lifecycle state is active (and it is not
    stopping); ``clients``: the ``ClientWatch`` of its actions; ``now_ns()``: the node's clock."""

    def __init__(self, core, types, publish: Dict[str, Callable], active: Callable[[], bool],
                 clients: Optional[ClientWatch] = None, now_ns: Callable[[], int] = time.time_ns,
                 clock: Callable[[], float] = time.perf_counter):
        self.core, self.types, self.publish, self.active, self.clients, self.now_ns, self.clock = \
            core, types, publish, active, clients, now_ns, clock

    # -- results -----------------------------------------------------------------------------
    def finish(self, result, status: int, message: str, what: str = "", t0: Optional[float] = None):
        """Fill ``result`` (status, message, backend, time), count the outcome (the one place a
        goal's end is counted) and log a failure; returns (status, result)."""
        core = self.core
        result.status, result.message = status, message
        if t0 is not None:
            result.total_time = self.clock() - t0
        if core is not None:
            if core.backend is not None:
                result.backend, result.generative = core.backend.name, bool(core.backend.generative)
            core.report.goal_outcome(status)
            if what and status not in (STATUS_SUCCEEDED, STATUS_CANCELED):
                core.log("warn", f"{what} goal {STATUS_NAMES[status]}: {message}")
        return status, result

    def short(self, action, status: int, message: str):
        """(status, result) of a goal that did no work (canceled while queued, node stopping)."""
        return self.finish(action.Result(), status, message)

    def _start(self, handle, result, what: str, t0: float):
        """The early answer of a goal (node not active, canceled before it started), or None."""
        if self.clients is not None:
            self.clients.reset()  # a goal that starts has a client: forget an earlier "gone"
        if not self.active() or self.core is None:
            return self.finish(result, STATUS_NOT_READY, NOT_ACTIVE, what, t0)
        if handle.is_cancel_requested:
            return self.finish(result, STATUS_CANCELED, "canceled before it started", what, t0)
        return None

    def _stop_check(self, handle, t0: float) -> StopCheck:
        return StopCheck(handle, self.active, self.core.p["goals.max_seconds"], self.clients, t0, self.clock)

    def _stopped(self, handle, result, done: int, total: int, stop: StopCheck, what: str, t0: float):
        """The answer of a goal that did not produce all its frames, or None when it did."""
        if handle.is_cancel_requested:
            return self.finish(result, STATUS_CANCELED, f"canceled after {done} of {total} frames", what, t0)
        if done < total:
            return self.finish(result, STATUS_NOT_READY if not self.active() else STATUS_FAILED,
                               f"stopped after {done} of {total} frames "
                               f"({stop.reason or 'node deactivated'})", what, t0)
        return None

    # -- imagine ---------------------------------------------------------------------------------
    def imagine(self, handle, action):
        """An ``imagine`` goal: its frames published as they come, one feedback per chunk."""
        t0, what = self.clock(), "imagine"
        goal, core, result = handle.request, self.core, action.Result()
        early = self._start(handle, result, what, t0)
        if early is not None:
            return early
        try:
            req = core.prepare(goal.path, int(goal.num_frames), goal.prompt or None, self.now_ns())
        except GoalError as exc:
            return self.finish(result, exc.status, exc.message, what, t0)
        n = len(req.cameras)
        stop = self._stop_check(handle, t0)

        def feedback(chunk, msg, summary, images):
            fb = action.Feedback()
            if core.p["imagined.feedback_frames"]:
                msg.frames = images  # the feedback alone carries the images with the chunk
            else:
                msg.masks = []
            fb.chunk, fb.frames_done, fb.frames_total = msg, summary["frames"], n
            handle.publish_feedback(fb)

        try:
            s = publish_request(core, self.types, self.publish, req, stop, n, feedback, t0, self.clock)
        except GoalError as exc:
            return self.finish(result, exc.status, exc.message, what, t0)
        except Exception as exc:  # noqa: BLE001 - report backend failures as a result, keep serving
            return self.finish(result, STATUS_FAILED, f"backend raised {type(exc).__name__}: {exc}", what, t0)
        result.num_frames, result.num_chunks = s["frames"], s["chunks"]
        result.mean_coverage = float(np.mean(s["coverage"])) if s["coverage"] else 0.0
        result.first_frame_latency = float(s["first"] or 0.0)
        stopped = self._stopped(handle, result, s["frames"], n, stop, what, t0)
        if stopped is not None:
            return stopped
        b = core.backend
        return self.finish(result, STATUS_SUCCEEDED, f"imagined {n} frames in {s['chunks']} chunks with the {b.name} "
                           "backend" + ("" if b.generative else " (no generative model: memory readouts)")
                           + f"; mean memory coverage {result.mean_coverage:.2f}", what, t0)

    # -- imagine_candidates ----------------------------------------------------------------------
    def candidates(self, handle, action):
        """An ``imagine_candidates`` goal: every candidate validated, the scores as the first
        feedback, then one feedback per imagined chunk. Nothing is published on imagined/* and
        nothing enters the memory."""
        t0, what = self.clock(), "imagine_candidates"
        goal, core, result = handle.request, self.core, action.Result()
        early = self._start(handle, result, what, t0)
        if early is not None:
            return early
        stop = self._stop_check(handle, t0)
        try:
            creq = core.prepare_candidates(goal.candidates, int(goal.num_frames), goal.prompt or None, self.now_ns())
            creq = core.prepare_goal(creq, getattr(goal, "goal_image", None), getattr(goal, "goal_camera_info", None),
                                     # getattr: interfaces built before the goal image
                                     getattr(goal, "goal_metric", ""))
            run = core.imagine_candidates(creq, stop)
        except GoalError as exc:
            return self.finish(result, exc.status, exc.message, what, t0)
        except Exception as exc:  # noqa: BLE001 - report backend failures as a result, keep serving
            return self.finish(result, STATUS_FAILED, f"backend raised {type(exc).__name__}: {exc}", what, t0)
        T, p, reqs, Feedback = self.types, core.p, creq.requests, action.Feedback
        result.scores_time = float(run.scores_time)
        n_total = creq.num_frames
        handle.publish_feedback(Feedback(
            kind=Feedback.KIND_SCORES, frames_total=n_total,
            scores=[out.candidate_result_msg(T, k, run.scores[k], r.stamps_ns) for k, r in enumerate(reqs)]))
        coverage = [[] for _ in reqs]
        images = [[] for _ in reqs] if goal.return_frames else [None] * len(reqs)
        done = chunks = 0
        if not goal.scores_only:
            fid, backend = core.imagined_frame, core.backend
            try:
                for k, chunk in run:
                    r = reqs[k]
                    msg = out.chunk_msg(T, chunk, r.camera_to_world, r.stamps_ns, r.K, r.height, r.width,
                                        p["world_frame"], fid, len(r.cameras), backend.name, backend.generative)
                    coverage[k].extend(msg.coverage)
                    if images[k] is not None:
                        images[k].extend(out.frame_images(T, chunk, r.stamps_ns, fid))
                    done += len(chunk.frame_indices)
                    chunks += 1
                    if chunks == 1:
                        result.first_chunk_latency = self.clock() - t0
                    handle.publish_feedback(Feedback(kind=Feedback.KIND_CHUNK, candidate=k, chunk=msg,
                                                     frames_done=done, frames_total=n_total))
            except GoalError as exc:
                return self.finish(result, exc.status, exc.message, what, t0)
            except Exception as exc:  # noqa: BLE001 - report backend failures as a result, keep serving
                return self.finish(result, STATUS_FAILED, f"backend raised {type(exc).__name__}: {exc}", what, t0)
        result.candidates = [out.candidate_result_msg(T, k, run.scores[k], r.stamps_ns, coverage[k], images[k],
                                                      None if goal.scores_only else run.goal_result(k))
                             for k, r in enumerate(reqs)]
        result.num_chunks = chunks
        known = ", ".join(f"{s['known']:.2f}" for s in run.scores)
        if creq.goal is not None:
            sims = [c.goal_similarity for c in result.candidates]
            best = int(np.nanargmax(sims)) if np.isfinite(sims).any() else -1
            known += f"; goal ({creq.goal_metric}): most similar candidate {best}" + (
                f" ({sims[best]:.3f})" if best >= 0 else "")
        if goal.scores_only:
            return self.finish(result, STATUS_SUCCEEDED, f"scored {len(reqs)} candidates ({n_total} frames), no model "
                               f"run; known: {known}", what, t0)
        stopped = self._stopped(handle, result, done, n_total, stop, what, t0)
        if stopped is not None:
            return stopped
        return self.finish(result, STATUS_SUCCEEDED, f"imagined {len(reqs)} candidates ({n_total} frames, {chunks} "
                           f"chunks) with the {core.backend.name} backend from one memory snapshot, none written into "
                           f"it; known: {known}", what, t0)

    # -- plan (streaming mode) -------------------------------------------------------------------
    def plan(self, msg, superseded: Callable[[], bool]) -> None:
        """Imagine a streamed plan until it is ``superseded`` (a newer plan, deactivation); a plan
        the node cannot serve yet is a rejected goal."""
        core = self.core
        try:
            req = core.prepare(msg, 0, None, self.now_ns())
        except GoalError as exc:
            core.report.reject_goal(exc.message, kind="plan")
            return
        try:
            publish_request(core, self.types, self.publish, req, superseded, len(req.cameras))
        except Exception as exc:  # noqa: BLE001 - a plan's failure is logged, the next plan runs
            core.log("error", f"plan: backend raised {type(exc).__name__}: {exc}")


class GoalBook:
    """The admitted goals of one node by goal id, each answered exactly once through its
    ``answer(ok, value)``: with its (status, result) or the worker's exception, with ``short``'s
    answer when it is canceled while queued or the node stops before it starts."""

    def __init__(self, queue: GoalQueue, p: dict):
        self.queue, self.p = queue, p
        self._entries: Dict[bytes, tuple] = {}
        self._lock = threading.Lock()

    # -- the goal callbacks: O(1), from the request's list lengths alone -------------------------
    def admit(self, goal_request) -> Optional[str]:
        """Why an ``imagine`` goal is rejected at the door (too long, queue full, stopping), or None."""
        return self.queue.admit(len(goal_request.path.poses), int(goal_request.num_frames))

    def admit_candidates(self, goal_request) -> Optional[str]:
        """Why an ``imagine_candidates`` goal is rejected (``goals.candidates_reason``, then a place
        in the one goal queue), or None."""
        p = self.p
        reason = candidates_reason([len(c.poses) for c in goal_request.candidates], int(goal_request.num_frames),
                                   p["imagined.max_frames"], p["candidates.max_candidates"],
                                   p["candidates.max_total_frames"])
        if reason is None:
            reason = self.queue.admit(0, 0)
        return None if reason is None else f"imagine_candidates: {reason}"

    # -- execution ---------------------------------------------------------------------------------
    def submit(self, key: bytes, run: Callable[[], tuple], short: Callable[[int, str], tuple],
               answer: Callable[[bool, object], None]) -> None:
        """Queue ``run`` for the workers; a node shutting down answers NOT_READY at once."""
        with self._lock:
            self._entries[key] = (None, short, answer)
        try:
            job = self.queue.submit(run, lambda ok, value: self._answer(key, ok, value))
        except RuntimeError as exc:  # shutting down
            self._answer(key, True, short(STATUS_NOT_READY, str(exc)))
            return
        with self._lock:
            if key in self._entries:
                self._entries[key] = (job, short, answer)

    def skip(self, short: Callable[[int, str], tuple]) -> tuple:
        """The answer of an admitted goal canceled before it was submitted (its place is freed)."""
        self.queue.release()
        return short(STATUS_CANCELED, "canceled before it started")

    def cancel(self, key: bytes) -> bool:
        """A queued goal is answered canceled at once (True); a running one stops itself."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] is None or not self.queue.cancel(entry[0]):
            return False
        self._answer(key, True, entry[1](STATUS_CANCELED, "canceled while queued, before it started"))
        return True

    def stop(self, timeout: float = 30.0) -> int:
        """Stop the workers (after their current chunk); goals never started are answered NOT_READY.
        Returns how many workers did not stop within ``timeout``."""
        left = set(map(id, self.queue.stop(timeout)))
        with self._lock:
            never = [k for k, (job, _s, _a) in self._entries.items() if job is not None and id(job) in left]
        for k in never:
            with self._lock:
                entry = self._entries.get(k)
            if entry is not None:
                self._answer(k, True, entry[1](STATUS_NOT_READY, "the node stopped before this goal started"))
        return self.queue.workers_alive

    def _answer(self, key: bytes, ok: bool, value) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None:
            entry[2](ok, value)
