"""A transform buffer without ROS: what mirage_node uses for ``pose.source: tf`` where tf2_ros is
not installed (it is not on PyPI), and what ``mirage replay`` uses on a bag's /tf and /tf_static.

``TransformBuffer`` keeps, per child frame, its parent and a time series of parent_from_child
transforms (static edges keep one), composes the chain between any two frames of the tree
through their nearest common ancestor, and interpolates each dynamic edge at the requested stamp
(translation linear, rotation slerp: ``geometry.interpolate_poses``), as tf2 does:

- ``lookup(target, source, stamp_ns)`` returns target_from_source (4x4): a point in ``source``
  coordinates times it gives the point in ``target`` coordinates; ``lookup(world, camera, t)``
  is the camera pose camera_to_world. ``stamp_ns == 0`` means the latest time every edge of the
  chain has (tf2's ``Time(0)``).
- History is bounded: samples older than ``cache_time_ns`` before an edge's newest are dropped,
  and at most ``max_samples`` per edge; in all at most ``max_frames`` frames and ``max_bytes``
  (estimated: ``SAMPLE_BYTES`` a sample, ``FRAME_BYTES`` a frame, measured). Beyond either, the
  least recently updated or looked-up frames are evicted first (dynamic before static ones), so a
  flood of junk frames evicts junk, never a frame the camera's chain uses (without eviction,
  10,100 junk frames locked the camera frame out for good). A chain deeper than ``MAX_DEPTH``
  frames (a loop of any length included) is refused when it would be made.
- A sample older than its edge's newest by more than ``jump_ns`` (a bag looped, a simulator
  restarted) clears that edge's history first (``resets``).
- Errors say what is missing (``TfError`` with ``retry``: could waiting for more data help?):
  ``FrameMissing`` (never seen), ``NotConnected`` (two trees), ``Extrapolation`` (before the first
  or after the last sample of an edge by more than ``tolerance_ns``; ``future`` tells which).
  Bad transforms (NaN, non-unit quaternion, empty or '/'-prefixed names, a self or a loop) raise
  ``TfInputError`` and change nothing.

``TfPoseQueue`` turns images into camera poses: each image stamp asks for world_from_camera at
that stamp; a request whose transform has not arrived yet (tf at start-up, a tf publisher
slower than the camera) waits up to ``wait_ns`` and is retried whenever transforms arrive.

Camera link vs optical frame (REP 103): Isaac Sim and Gazebo publish the camera *link* (x
forward, y left, z up); the memory needs the *optical* frame (x right, y down, z forward, the
``*_optical_frame`` convention). ``LINK_FROM_OPTICAL`` is the fixed rotation between them,
quaternion ``LINK_TO_OPTICAL_Q`` = (-0.5, 0.5, -0.5, 0.5) (x, y, z, w): the transform a
``static_transform_publisher`` would publish for ``camera_link -> camera_optical_frame``.
With ``camera_is_link`` the queue appends it: camera_to_world = world_from_link @ LINK_FROM_OPTICAL.
"""
from __future__ import annotations

import bisect
import threading
from collections import OrderedDict, deque
from typing import Callable, List, Optional, Tuple

import numpy as np

__all__ = ["TransformBuffer", "TfPoseQueue", "TfError", "FrameMissing", "NotConnected", "Extrapolation",
           "TfInputError", "LINK_TO_OPTICAL_Q", "LINK_FROM_OPTICAL", "transforms_from_msg", "MAX_DEPTH",
           "SAMPLE_BYTES", "FRAME_BYTES", "MAX_MESSAGE_TRANSFORMS", "TfQueue"]

# optical frame (x right, y down, z forward) expressed in the camera link (x forward, y left, z up)
LINK_TO_OPTICAL_Q = (-0.5, 0.5, -0.5, 0.5)
LINK_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0],
                              [-1.0, 0.0, 0.0, 0.0],
                              [0.0, -1.0, 0.0, 0.0],
                              [0.0, 0.0, 0.0, 1.0]])

MAX_DEPTH = 1000  # frames in one chain (a deeper tree is a loop or an attack)
SAMPLE_BYTES = 512  # one stored sample (a 4x4 float64 array, its stamp and list slots): 305 B traced, RSS more
FRAME_BYTES = 1024  # one frame (its edge, names and dict slot): 570 B traced
MAX_MESSAGE_TRANSFORMS = 10000  # transforms in one TFMessage (tf2 publishers send tens)


class TfError(LookupError):
    """No transform; ``retry``: more data (a later /tf message) could still answer it."""

    retry = False


class FrameMissing(TfError):
    retry = True


class NotConnected(TfError):
    retry = True


class Extrapolation(TfError):
    def __init__(self, message: str, future: bool):
        super().__init__(message)
        self.future = future
        self.retry = future  # a later sample may still come; an earlier one will not


class TfInputError(ValueError):
    """A transform that cannot be stored; nothing changed."""


def _fmt_s(ns: int) -> str:
    return f"{ns / 1e9:.3f} s"


class _Edge:
    __slots__ = ("parent", "static", "stamps", "poses")

    def __init__(self, parent: str, static: bool):
        self.parent = parent
        self.static = static
        self.stamps: List[int] = []
        self.poses: List[np.ndarray] = []


class TransformBuffer:
    def __init__(self, cache_time_ns: int = 10_000_000_000, tolerance_ns: int = 0, max_samples: int = 10000,
                 max_frames: int = 10000, jump_ns: int = 1_000_000_000, max_bytes: int = 64 << 20):
        if cache_time_ns <= 0:
            raise ValueError(f"cache_time_ns: expected > 0, got {cache_time_ns}")
        if tolerance_ns < 0:
            raise ValueError(f"tolerance_ns: expected >= 0, got {tolerance_ns}")
        self.cache_time_ns = int(cache_time_ns)
        self.tolerance_ns = int(tolerance_ns)
        self.max_samples = max(2, int(max_samples))
        self.max_frames = int(max_frames)
        self.jump_ns = int(jump_ns)
        self.max_bytes = int(max_bytes)
        self.edges: "OrderedDict[str, _Edge]" = OrderedDict()  # least recently updated / used first
        self.samples = 0
        self.counts = {"set": 0, "rejected": 0, "resets": 0, "reparented": 0, "dropped_old": 0, "evicted": 0}

    @property
    def nbytes(self) -> int:
        """Estimated bytes held (``FRAME_BYTES`` a frame, ``SAMPLE_BYTES`` a sample)."""
        return len(self.edges) * FRAME_BYTES + self.samples * SAMPLE_BYTES

    def _drop_edge(self, child: str) -> None:
        self.samples -= len(self.edges.pop(child).stamps)

    def _evict(self, keep: str) -> None:
        """Evict least recently updated / used frames (never ``keep``) until within the budgets:
        dynamic ones first, static ones only when no dynamic frame is left (/tf_static arrives once:
        a flood of /tf junk while no image looks the camera mount up must not evict it)."""
        while (len(self.edges) > self.max_frames or self.nbytes > self.max_bytes) and len(self.edges) > 1:
            victim = next((c for c, e in self.edges.items() if not e.static and c != keep), None)
            if victim is None:
                victim = next(c for c in self.edges if c != keep)
            self._drop_edge(victim)
            self.counts["evicted"] += 1

    # -- input --------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget every dynamic edge (static ones stay: tf2 keeps /tf_static across clears)."""
        for child in [c for c, e in self.edges.items() if not e.static]:
            self._drop_edge(child)

    def frames(self) -> List[str]:
        out = set(self.edges)
        out.update(e.parent for e in self.edges.values())
        return sorted(out)

    def set_transform(self, parent: str, child: str, stamp_ns: int, T: np.ndarray, static: bool = False) -> None:
        """Store parent_from_child ``T`` (4x4 rigid, already validated) at ``stamp_ns``."""
        for what, name in (("parent", parent), ("child", child)):
            if not isinstance(name, str) or not name:
                self.counts["rejected"] += 1
                raise TfInputError(f"{what} frame id is empty")
            if name.startswith("/"):
                self.counts["rejected"] += 1
                raise TfInputError(f"{what} frame id {name!r} starts with '/' (tf2 frame ids have no leading slash)")
        if parent == child:
            self.counts["rejected"] += 1
            raise TfInputError(f"transform from {child!r} to itself")
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            self.counts["rejected"] += 1
            raise TfInputError(f"{parent} -> {child}: expected a finite 4x4 transform")
        edge = self.edges.get(child)
        if edge is None or edge.parent != parent:
            # a loop (the new parent descends from the child), or a chain deeper than MAX_DEPTH:
            # the walk up from the parent is bounded, so a loop longer than MAX_DEPTH is refused too
            f, depth = parent, 1
            while f in self.edges:
                f = self.edges[f].parent
                depth += 1
                if f == child:
                    self.counts["rejected"] += 1
                    raise TfInputError(f"{parent} -> {child} would close a loop ({child} is an ancestor of {parent})")
                if depth > MAX_DEPTH:
                    self.counts["rejected"] += 1
                    raise TfInputError(f"{parent} -> {child}: the chain above {child!r} would be deeper than "
                                       f"{MAX_DEPTH} frames (a loop or an attack)")
            if edge is not None:
                self.counts["reparented"] += 1  # tf2 allows it too: the newest parent wins
                self._drop_edge(child)
            edge = self.edges[child] = _Edge(parent, static)
        elif edge.static != static:
            self._drop_edge(child)
            edge = self.edges[child] = _Edge(parent, static)
        self.edges.move_to_end(child)
        stamp_ns = int(stamp_ns)
        n_before = len(edge.stamps)
        if static:
            edge.stamps, edge.poses = [stamp_ns], [T]
            self.samples += 1 - n_before
            self.counts["set"] += 1
            self._evict(child)
            return
        if edge.stamps and stamp_ns < edge.stamps[-1] - self.jump_ns:
            edge.stamps, edge.poses = [], []  # time jumped back: this edge starts over
            self.counts["resets"] += 1
        i = bisect.bisect_left(edge.stamps, stamp_ns)
        if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
            edge.poses[i] = T  # the same stamp again: the newest wins
        else:
            edge.stamps.insert(i, stamp_ns)
            edge.poses.insert(i, T)
        newest = edge.stamps[-1]
        cut = bisect.bisect_left(edge.stamps, newest - self.cache_time_ns)
        cut = max(cut, len(edge.stamps) - self.max_samples)
        cut = min(cut, len(edge.stamps) - 1)
        if cut > 0:
            del edge.stamps[:cut]
            del edge.poses[:cut]
            self.counts["dropped_old"] += cut
        self.samples += len(edge.stamps) - n_before
        self.counts["set"] += 1
        self._evict(child)

    # -- lookups ------------------------------------------------------------------------------
    def _known(self, frame: str) -> bool:
        return frame in self.edges or any(e.parent == frame for e in self.edges.values())

    def _ancestry(self, frame: str) -> List[str]:
        chain = [frame]
        f = frame
        while f in self.edges:
            f = self.edges[f].parent
            chain.append(f)
            if len(chain) > MAX_DEPTH:
                raise TfError(f"the chain above {frame!r} is deeper than {MAX_DEPTH} frames")
        return chain

    def _edge_at(self, child: str, stamp_ns: int):
        """parent_from_child at ``stamp_ns``: a 4x4, or (T0, T1, a) to interpolate (batched by ``lookup``)."""
        edge = self.edges[child]
        if edge.static:
            return edge.poses[0]
        st = edge.stamps
        tol = self.tolerance_ns
        if stamp_ns < st[0]:
            if st[0] - stamp_ns > tol:
                raise Extrapolation(
                    f"{edge.parent} -> {child}: {_fmt_s(stamp_ns)} is {(st[0] - stamp_ns) / 1e6:.1f} ms before its "
                    f"oldest transform ({_fmt_s(st[0])}; tolerance {tol / 1e6:g} ms)", future=False)
            return edge.poses[0]
        if stamp_ns > st[-1]:
            if stamp_ns - st[-1] > tol:
                raise Extrapolation(
                    f"{edge.parent} -> {child}: {_fmt_s(stamp_ns)} is {(stamp_ns - st[-1]) / 1e6:.1f} ms after its "
                    f"newest transform ({_fmt_s(st[-1])}; tolerance {tol / 1e6:g} ms)", future=True)
            return edge.poses[-1]
        i = bisect.bisect_left(st, stamp_ns)
        if st[i] == stamp_ns:
            return edge.poses[i]
        t0, t1 = st[i - 1], st[i]
        return edge.poses[i - 1], edge.poses[i], (stamp_ns - t0) / (t1 - t0)

    def _chain(self, target: str, source: str) -> Tuple[List[str], List[str]]:
        """(edges from source up to the common ancestor, edges from target up to it): child names."""
        for f in (target, source):
            if not self._known(f):
                raise FrameMissing(f"frame {f!r} does not exist (known: {', '.join(self.frames()[:20]) or 'none'})")
        up_s = self._ancestry(source)
        up_t = self._ancestry(target)
        on_t = {f: i for i, f in enumerate(up_t)}
        for i, f in enumerate(up_s):
            if f in on_t:
                return up_s[:i], up_t[:on_t[f]]
        raise NotConnected(f"{target!r} and {source!r} are not connected: their trees have roots "
                           f"{up_t[-1]!r} and {up_s[-1]!r}")

    def latest_common_time(self, target: str, source: str) -> int:
        s_edges, t_edges = self._chain(target, source)
        dyn = [self.edges[c].stamps[-1] for c in s_edges + t_edges if not self.edges[c].static]
        return min(dyn) if dyn else 0

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        """target_from_source (4x4 float64) at ``stamp_ns`` (0: the latest common time)."""
        if target == source:
            return np.eye(4)
        s_edges, t_edges = self._chain(target, source)
        if stamp_ns == 0:
            dyn = [self.edges[c].stamps[-1] for c in s_edges + t_edges if not self.edges[c].static]
            stamp_ns = min(dyn) if dyn else 0
        from ..geometry import interpolate_poses, invert_rigid

        at = [self._edge_at(child, stamp_ns) for child in s_edges + t_edges]
        for child in s_edges + t_edges:  # in use: the last frames eviction would take
            self.edges.move_to_end(child)
        todo = [k for k, e in enumerate(at) if isinstance(e, tuple)]
        if todo:  # every interpolated edge in one call: pairs (2k, 2k + 1) at fractional index 2k + a
            pairs = np.stack([m for k in todo for m in at[k][:2]])
            got = interpolate_poses(pairs, np.array([2 * j + at[k][2] for j, k in enumerate(todo)]))
            for j, k in enumerate(todo):
                at[k] = got[j]
        anc_from_source = np.eye(4)
        for T in at[:len(s_edges)]:  # source first: anc <- ... <- parent(source) <- source
            anc_from_source = T @ anc_from_source
        anc_from_target = np.eye(4)
        for T in at[len(s_edges):]:
            anc_from_target = T @ anc_from_target
        if not t_edges:
            return anc_from_source
        return np.asarray(invert_rigid(anc_from_target)) @ anc_from_source

    def can_lookup(self, target: str, source: str, stamp_ns: int = 0) -> Optional[str]:
        """None if ``lookup`` would succeed, else its error message."""
        try:
            self.lookup(target, source, stamp_ns)
        except TfError as exc:
            return str(exc)
        return None


def transforms_from_msg(msg) -> Tuple[List[Tuple[str, str, int, np.ndarray]], List[str]]:
    """tf2_msgs/TFMessage (rclpy or rosbags, duck-typed) -> ([(parent, child, stamp_ns, T)],
    [reason for each transform that was refused]). Quaternions must be finite and of unit norm
    (within ``geometry.QUAT_TOL``; then normalised), translations finite and within
    ``geometry.MAX_TRANSLATION``."""
    from ..geometry import GeometryError, poses_to_matrices

    rows, bad = [], []
    transforms = getattr(msg, "transforms", []) or []
    if len(transforms) > MAX_MESSAGE_TRANSFORMS:
        return [], [f"a TFMessage of {len(transforms)} transforms, more than {MAX_MESSAGE_TRANSFORMS}: refused whole"]
    for i, tr in enumerate(transforms):
        try:
            parent, child = str(tr.header.frame_id), str(tr.child_frame_id)
            stamp = int(tr.header.stamp.sec) * 1_000_000_000 + int(tr.header.stamp.nanosec)
            t, r = tr.transform.translation, tr.transform.rotation
            rows.append((i, parent, child, stamp, (float(t.x), float(t.y), float(t.z)),
                         (float(r.x), float(r.y), float(r.z), float(r.w))))
        except (AttributeError, TypeError, ValueError) as exc:
            bad.append(f"transforms[{i}]: {type(exc).__name__}: {exc}")
    if not rows:
        return [], bad
    P = np.array([r[4] for r in rows], dtype=np.float64)
    Q = np.array([r[5] for r in rows], dtype=np.float64)
    try:  # one validated conversion per message
        Ts = poses_to_matrices(P, Q, "transforms[{i}]")
        return [(r[1], r[2], r[3], Ts[k]) for k, r in enumerate(rows)], bad
    except GeometryError:
        pass
    good = []
    for k, r in enumerate(rows):  # one is bad: find which, keep the rest
        try:
            good.append((r[1], r[2], r[3], poses_to_matrices(P[k], Q[k], f"transforms[{r[0]}]")))
        except GeometryError as exc:
            bad.append(str(exc))
    return good, bad


class TfPoseQueue:
    """Camera poses for image stamps from a transform lookup, waiting for late transforms.

    ``lookup(target, source, stamp_ns)`` returns target_from_source or raises ``TfError``
    (``retry`` says whether waiting can help; any other exception counts as retryable, e.g.
    tf2_ros' own). ``request`` and ``poll`` return ``(resolved, failed)``: lists of
    ``(stamp_ns, camera_to_world)`` and ``(stamp_ns, reason)``. Clocks are the caller's
    (``now_ns``): the node passes monotonic time, ``mirage replay`` the bag's time.
    """

    def __init__(self, lookup: Callable[[str, str, int], np.ndarray], world_frame: str, camera_frame: str = "",
                 camera_is_link: bool = False, wait_ns: int = 500_000_000, max_pending: int = 30):
        self.lookup = lookup
        self.world = world_frame
        self.camera_frame = camera_frame
        self.camera_is_link = bool(camera_is_link)
        self.wait_ns = max(0, int(wait_ns))
        self.pending: deque = deque()  # [stamp, frame, deadline, last error]
        self.max_pending = max(1, int(max_pending))
        self.counts = {"resolved": 0, "waited": 0, "failed": 0}

    def frame_for(self, header_frame: str) -> str:
        return self.camera_frame or header_frame

    def _try(self, stamp: int, frame: str):
        """(camera_to_world or None, error or None, retry)."""
        try:
            T = np.asarray(self.lookup(self.world, frame, stamp), dtype=np.float64)
        except TfError as exc:
            return None, str(exc), exc.retry
        except Exception as exc:  # noqa: BLE001 - a foreign buffer (tf2_ros) raises its own kinds
            return None, f"{type(exc).__name__}: {exc}", True
        if self.camera_is_link:
            T = T @ LINK_FROM_OPTICAL
        return T, None, False

    def request(self, stamp_ns: int, header_frame: str, now_ns: int):
        resolved, failed = [], []
        frame = self.frame_for(header_frame)
        if not frame:
            failed.append((stamp_ns, "the image has no header.frame_id and tf.camera_frame is empty"))
            self.counts["failed"] += 1
            return resolved, failed
        T, err, retry = self._try(stamp_ns, frame)
        if T is not None:
            self.counts["resolved"] += 1
            resolved.append((stamp_ns, T))
        elif retry and self.wait_ns > 0:
            self.counts["waited"] += 1
            self.pending.append([int(stamp_ns), frame, int(now_ns) + self.wait_ns, err])
            while len(self.pending) > self.max_pending:
                st, fr, _, e = self.pending.popleft()
                self.counts["failed"] += 1
                failed.append((st, f"{self.world} <- {fr} at {_fmt_s(st)}: still waiting when {self.max_pending} newer "
                                   f"images queued ({e})"))
        else:
            self.counts["failed"] += 1
            failed.append((stamp_ns, f"{self.world} <- {frame} at {_fmt_s(stamp_ns)}: {err}"))
        return resolved, failed

    def poll(self, now_ns: int):
        resolved, failed = [], []
        keep = deque()
        for item in self.pending:
            st, fr, deadline, _ = item
            T, err, retry = self._try(st, fr)
            if T is not None:
                self.counts["resolved"] += 1
                resolved.append((st, T))
            elif not retry or now_ns >= deadline:
                self.counts["failed"] += 1
                why = "" if not retry else f" (waited {self.wait_ns / 1e9:g} s)"
                failed.append((st, f"{self.world} <- {fr} at {_fmt_s(st)}: {err}{why}"))
            else:
                item[3] = err
                keep.append(item)
        self.pending = keep
        return resolved, failed

    def clear(self) -> None:
        self.pending.clear()


class TfQueue:
    """Serialised /tf messages waiting for the node's tf thread: ``put`` (on the executor) is O(1)
    and refuses a message above ``max_message_bytes`` (about ``MAX_MESSAGE_TRANSFORMS`` transforms)
    before anything deserialises it; at most ``max_bytes`` wait, the oldest dropped first
    (``dropped`` counts them)."""

    def __init__(self, max_bytes: int = 16 << 20, max_message_bytes: int = 1 << 20):
        self.max_bytes, self.max_message_bytes = int(max_bytes), int(max_message_bytes)
        self._q: deque = deque()
        self._bytes = 0
        self._cv = threading.Condition()
        self.dropped = 0

    def put(self, raw: bytes, static: bool) -> None:
        n = len(raw)
        with self._cv:
            if n > self.max_message_bytes:
                self.dropped += 1
                return
            self._q.append((raw, static))
            self._bytes += n
            while self._bytes > self.max_bytes and len(self._q) > 1:
                old, _ = self._q.popleft()
                self._bytes -= len(old)
                self.dropped += 1
            self._cv.notify()

    def get(self, timeout: float):
        """The oldest (raw, static), or None after ``timeout`` s."""
        with self._cv:
            if not self._q:
                self._cv.wait(timeout)
            if not self._q:
                return None
            raw, static = self._q.popleft()
            self._bytes -= len(raw)
            return raw, static

    def take_dropped(self) -> int:
        with self._cv:
            n, self.dropped = self.dropped, 0
            return n
