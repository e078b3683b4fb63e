"""What a goal asks for, checked: trajectories into validated requests (no rclpy).

- ``prepare(p, backend, camera, path, num_frames, prompt, now_ns)`` turns a nav_msgs/Path into a
  ``Request`` (N cameras and their stamps) or raises ``GoalError(status, reason)``: the size rule
  first (from the list's length, before any per-pose work), then frame, quaternions, positions,
  readiness (an observation to start from), the frame size (``imagined.max_pixels``).
- ``prepare_candidates`` does the same for K paths (the size rule ``goals.candidates_reason``
  first), naming the candidate of a bad pose; ``prepare_goal`` adds a goal image
  (``planning.GoalView`` at the camera the backend imagines at).
- ``CandidateRun``: one snapshot of the memory, the candidates' scores at once and their imagined
  chunks when iterated; nothing is written into the memory.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import convert as cv
from .goals import STATUS_INVALID_GOAL, STATUS_NOT_READY, GoalError, candidates_reason

__all__ = ["Request", "CandidateRequest", "CandidateRun", "resample_trajectory", "prepare", "prepare_candidates",
           "prepare_goal", "NOT_ACTIVE"]

NOT_ACTIVE = "the node is not active (lifecycle state is not 'active')"


@dataclass
class Request:
    """A validated imagination request: N cameras along the trajectory and their stamps."""

    cameras: list  # List[geometry.Camera]
    camera_to_world: np.ndarray  # (N, 4, 4)
    stamps_ns: np.ndarray  # (N,) int64
    frame_id: str
    prompt: Optional[str]
    K: np.ndarray
    height: int
    width: int


@dataclass
class CandidateRequest:
    """K validated candidate trajectories (one ``Request`` each: same intrinsics and size)."""

    requests: List[Request]
    prompt: Optional[str]
    goal: Optional[object] = None  # planning.GoalView at the backend's native camera (prepare_goal)
    goal_metric: str = "latent"

    @property
    def trajectories(self) -> list:
        return [r.cameras for r in self.requests]

    @property
    def num_frames(self) -> int:
        return sum(len(r.cameras) for r in self.requests)


def resample_trajectory(T: np.ndarray, stamps: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """N poses -> n poses evenly spaced in path index: positions and stamps linearly
    interpolated, rotations by slerp (``geometry.interpolate_poses``). (N, 4, 4), (N,) -> (n, 4, 4), (n,)."""
    from ..geometry import interpolate_poses

    T = np.asarray(T, dtype=np.float64)
    m = T.shape[0]
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    if m == 1:
        return np.repeat(T, n, axis=0), np.repeat(np.asarray(stamps, dtype=np.int64), n)
    u = np.linspace(0.0, m - 1, n) if n > 1 else np.zeros(1)
    i0 = np.clip(np.floor(u).astype(int), 0, m - 2)
    a = u - i0
    out = interpolate_poses(T, u)
    st = np.asarray(stamps, dtype=np.int64)  # ns since 1970 do not fit a float64 exactly: interpolate the offset
    return out, st[i0] + np.round(a * (st[i0 + 1] - st[i0]).astype(np.float64)).astype(np.int64)


def prepare(p: dict, backend, camera: Optional[Tuple[np.ndarray, int, int]], path_msg, num_frames: int = 0,
            prompt: Optional[str] = None, now_ns: int = 0) -> Request:
    """A Path goal -> ``Request``; ``camera``: (K, H, W) of the imagined frames (the last observed
    camera_info; None before any). ``GoalError`` names the field and the reason."""
    from ..geometry import Camera, GeometryError, invert_rigid

    maxf = p["imagined.max_frames"]
    if backend is None:
        raise GoalError(STATUS_NOT_READY, NOT_ACTIVE)
    n_poses = len(path_msg.poses)
    if n_poses == 0:
        raise GoalError(STATUS_INVALID_GOAL, "path has no poses")
    if n_poses > maxf:
        raise GoalError(STATUS_INVALID_GOAL, f"path has {n_poses} poses, more than imagined.max_frames = {maxf}")
    if num_frames < 0 or num_frames > maxf:
        raise GoalError(STATUS_INVALID_GOAL, f"num_frames is {num_frames}, expected 0 .. imagined.max_frames = {maxf}")
    try:
        stamps, T, frame = cv.path_to_matrices(path_msg, "path")
    except cv.ConversionError as exc:
        raise GoalError(STATUS_INVALID_GOAL, str(exc)) from None
    world = p["world_frame"]
    if frame and frame != world:
        raise GoalError(STATUS_INVALID_GOAL, f"path.header.frame_id {frame!r} is not the world frame {world!r}")
    if backend.memory.num_points == 0 or camera is None:
        inputs = "image, camera_info, pose" + (" and depth" if p["depth.provider"] == "topic" else "")
        raise GoalError(STATUS_NOT_READY, f"no observation yet: the memory is empty (publish {inputs} first, or "
                                          "load_memory and publish camera_info)")
    base = cv.stamp_to_ns(path_msg.header.stamp) or int(now_ns)
    period = 1e9 / p["imagined.frame_rate"]
    zero = stamps == 0
    if zero.any():
        stamps = np.where(zero, base + np.round(np.arange(n_poses) * period).astype(np.int64), stamps)
    if num_frames and num_frames != n_poses:
        T, stamps = resample_trajectory(T, stamps, num_frames)
    K, H, W = camera
    if H * W > p["imagined.max_pixels"]:
        raise GoalError(STATUS_INVALID_GOAL, f"the imagined frames would be {H} x {W} = {H * W:,} pixels (the last "
                        f"camera_info), more than imagined.max_pixels = {p['imagined.max_pixels']:,}")
    try:
        E = invert_rigid(T)
        cams = [Camera(K, E[i], H, W) for i in range(T.shape[0])]
    except GeometryError as exc:
        raise GoalError(STATUS_INVALID_GOAL, f"path: {exc}") from None
    return Request(cams, T, stamps, world, prompt or p["prompt"] or None, K, H, W)


def prepare_candidates(p: dict, backend, camera, paths_msgs, num_frames: int = 0, prompt: Optional[str] = None,
                       now_ns: int = 0) -> CandidateRequest:
    """K candidate Paths -> ``CandidateRequest``, or ``GoalError`` naming the candidate and the
    reason. The size rule (count, per-path and total frames) is checked on the list lengths before
    any per-pose work; then each path as ``prepare`` does, all with the same camera."""
    if backend is None:
        raise GoalError(STATUS_NOT_READY, NOT_ACTIVE)
    paths_msgs = list(paths_msgs)
    reason = candidates_reason([len(m.poses) for m in paths_msgs], int(num_frames), p["imagined.max_frames"],
                               p["candidates.max_candidates"], p["candidates.max_total_frames"])
    if reason is not None:
        raise GoalError(STATUS_INVALID_GOAL, reason)
    reqs = []
    for i, m in enumerate(paths_msgs):
        try:
            reqs.append(prepare(p, backend, camera, m, num_frames, prompt, now_ns))
        except GoalError as exc:
            if exc.status == STATUS_NOT_READY:
                raise
            raise GoalError(exc.status, f"candidates[{i}]: {exc.message}") from None
    return CandidateRequest(reqs, reqs[0].prompt)


def prepare_goal(p: dict, backend, lock, creq: CandidateRequest, image_msg=None, info_msg=None,
                 metric: str = "") -> CandidateRequest:
    """An imagine_candidates goal image -> ``creq`` with its ``planning.GoalView`` (at the camera
    the backend imagines at) and metric; an empty image (width 0) leaves ``creq`` as it is.
    ``GoalError`` (invalid goal) names goal_image, goal_camera_info or goal_metric."""
    from ..planning import DEFAULT_METRIC, METRICS, GoalView

    metric = str(metric or DEFAULT_METRIC)
    if metric not in METRICS:
        raise GoalError(STATUS_INVALID_GOAL, f"goal_metric: expected {' or '.join(METRICS)}, got {metric!r}")
    if image_msg is None or (int(image_msg.width) == 0 and int(image_msg.height) == 0):
        return creq
    try:
        rgb = cv.image_to_rgb(image_msg, "goal_image", p["input.max_pixels"])
        goal_K = None
        if info_msg is not None and int(info_msg.width) > 0:
            goal_K, H, W = cv.camera_info_to_K(info_msg, "goal_camera_info", p["input.max_pixels"])
            if (H, W) != rgb.shape[:2]:
                raise cv.ConversionError(f"goal_camera_info: {H}x{W}, but goal_image is {rgb.shape[0]}x{rgb.shape[1]}")
    except cv.ConversionError as exc:
        raise GoalError(STATUS_INVALID_GOAL, str(exc)) from None
    with lock:
        if backend is None:
            raise GoalError(STATUS_NOT_READY, "the node is not active")
        native = backend.native_camera(creq.requests[0].cameras[0])
        try:
            creq.goal = GoalView(rgb, backend.codec, (native.height, native.width), native.K.numpy(), goal_K)
        except ValueError as exc:
            raise GoalError(STATUS_INVALID_GOAL, str(exc)) from None
    creq.goal_metric = metric
    return creq


class CandidateRun:
    """One ``imagine_candidates`` run: ``scores`` (per candidate: visibility per frame, known,
    novelty) are ready at once; iterating yields (candidate index, ``ImaginedChunk``). Both come
    from the same snapshot of the memory, taken when the run was made. ``on_frames(n)`` is told of
    every chunk's frames (the node counts them)."""

    def __init__(self, backend, lock, creq: CandidateRequest, cancel: Optional[Callable[[], bool]],
                 on_frames: Callable[[int], None] = lambda n: None):
        self.lock, self.request, self.cancel, self.on_frames = lock, creq, cancel, on_frames
        t0 = time.perf_counter()
        with lock:
            if backend is None:
                raise GoalError(STATUS_NOT_READY, "the node is not active")
            # the snapshot: a shallow copy of the backend (model, codec, last observed frame shared)
            # over a fork of the memory; observations that arrive meanwhile go to the live memory
            view = copy.copy(backend)
            view.memory = backend.memory.fork()
            if creq.goal is None:
                self.scores = view.candidate_scores(creq.trajectories)
            else:
                self.scores = view.candidate_scores(creq.trajectories, goal=creq.goal, goal_metric=creq.goal_metric)
        self.scores_time = time.perf_counter() - t0
        self.backend = view
        self.goal_scores = None
        if creq.goal is not None:
            from ..planning import CandidateGoalScores

            self.goal_scores = CandidateGoalScores(creq.goal, [len(t) for t in creq.trajectories])

    def goal_result(self, k: int) -> Optional[Dict]:
        """Candidate ``k``'s imagined frames scored against the goal (None without a goal image)."""
        return None if self.goal_scores is None else self.goal_scores.result(k, self.request.goal_metric)

    def __iter__(self) -> Iterator[Tuple[int, object]]:
        cancel = self.cancel
        with self.lock:
            it = iter(self.backend.imagine_candidates(self.request.trajectories, prompt=self.request.prompt,
                                                      cancel=cancel))
        while True:
            if cancel is not None and cancel():
                return
            with self.lock:  # one model, shared with goals and observations: one chunk at a time
                item = next(it, None)
                if item is not None and self.goal_scores is not None:
                    self.goal_scores.add_chunk(item[0], item[1], self.backend.generative)
            if item is None:
                return
            self.on_frames(len(item[1].frame_indices))
            yield item
