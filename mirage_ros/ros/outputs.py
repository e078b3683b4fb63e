"""Output messages of mirage_node, built with a ``types`` namespace (rclpy or rosbags; see
``convert``): imagined frames with their camera_info and /tf transforms, ``ImaginedChunk``,
imagined path, ``MemoryStats``, the memory cloud and camera-frustum markers. No rclpy import;
the node and ``BagWriter`` share these.

Per imagined frame j (global index i = chunk.frame_indices[j] into the request), all stamped with
the pose time stamps_ns[i]: an rgb8 Image and a CameraInfo in ``frame_id`` (the imagined optical
frame), and a TFMessage world_frame -> frame_id holding camera_to_world[i], so viewers (RViz,
Foxglove) place the imagined image in 3D. ``ImaginedChunk`` carries the frame indices, poses,
intrinsics, visibility and timings, not the images (those are on imagined/image), except where
``images`` are passed (the action's feedback).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import convert as cv

__all__ = ["frame_images", "frame_compressed_images", "frame_camera_infos", "frame_transforms", "transform_stamped_msg",
           "tf_msg", "chunk_msg", "stats_msg", "frustum_lines", "frustum_markers", "imagined_path_msg", "cloud_msg",
           "candidate_result_msg", "PeriodicOutputs"]


def frame_images(types, chunk, stamps_ns: Sequence[int], frame_id: str) -> List[object]:
    """One rgb8 Image per imagined frame, stamped with its pose time."""
    return [cv.image_msg(types, chunk.frames[j], int(stamps_ns[i]), frame_id, "rgb8")
            for j, i in enumerate(chunk.frame_indices)]


def frame_compressed_images(types, chunk, stamps_ns: Sequence[int], frame_id: str, codec: str,
                            jpeg_quality: int = 90, png_level: int = 3) -> List[object]:
    """One sensor_msgs/CompressedImage per imagined frame (``imagined/image/compressed``: jpeg or
    png, format "rgb8; <codec> compressed bgr8" as image_transport's compressed plugin writes it),
    with the same header as its Image."""
    from .compressed import compressed_image_msg

    return [compressed_image_msg(types, chunk.frames[j], int(stamps_ns[i]), frame_id, codec, jpeg_quality, png_level)
            for j, i in enumerate(chunk.frame_indices)]


def frame_camera_infos(types, chunk, stamps_ns: Sequence[int], K: np.ndarray, height: int, width: int,
                       frame_id: str) -> List[object]:
    """One CameraInfo per imagined frame, with the same header as its Image."""
    return [cv.camera_info_msg(types, K, height, width, int(stamps_ns[i]), frame_id) for i in chunk.frame_indices]


def transform_stamped_msg(types, T: np.ndarray, stamp_ns: int, parent: str, child: str, q: Optional[np.ndarray] = None):
    """geometry_msgs/TransformStamped: ``child`` expressed in ``parent`` (T = parent_from_child)."""
    T = np.asarray(T, dtype=np.float64)
    if q is None:
        q = cv.matrices_to_quaternions(T[None, :3, :3])[0]
    return types.TransformStamped(
        header=cv.header_msg(types, stamp_ns, parent), child_frame_id=str(child),
        transform=types.Transform(
            translation=types.Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            rotation=types.Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))))


def tf_msg(types, transforms: Sequence[object]):
    """tf2_msgs/TFMessage of TransformStamped messages (for /tf or /tf_static)."""
    return types.TFMessage(transforms=list(transforms))


def frame_transforms(types, chunk, camera_to_world: np.ndarray, stamps_ns: Sequence[int], world_frame: str,
                     frame_id: str) -> List[object]:
    """One TFMessage per imagined frame: world_frame -> frame_id at the frame's stamp, the
    requested camera pose (camera_to_world of the optical frame)."""
    idx = list(chunk.frame_indices)
    if not idx:
        return []
    T = np.asarray(camera_to_world, dtype=np.float64)[idx]
    Q = cv.matrices_to_quaternions(T[:, :3, :3])
    return [tf_msg(types, [transform_stamped_msg(types, T[j], int(stamps_ns[i]), world_frame, frame_id, Q[j])])
            for j, i in enumerate(idx)]


def chunk_msg(types, chunk, camera_to_world: np.ndarray, stamps_ns: Sequence[int], K: np.ndarray, height: int,
              width: int, world_frame: str, frame_id: str, goal_frames: int, backend: str, generative: bool,
              images: Optional[List[object]] = None):
    """``mirage_ros/ImaginedChunk`` for one backend chunk: frame indices, poses, intrinsics,
    visibility masks, coverage and timings. ``frames`` stays empty (the images are published on
    imagined/image) unless ``images`` are given (the action's feedback)."""
    idx = list(chunk.frame_indices)
    st = [int(stamps_ns[i]) for i in idx]
    T = np.asarray(camera_to_world)[idx]
    Q = cv.matrices_to_quaternions(T[:, :3, :3]) if len(idx) else np.zeros((0, 4))
    poses = [cv.pose_stamped_msg(types, T[j], st[j], world_frame, Q[j]) for j in range(len(idx))]
    masks = np.asarray(chunk.masks, dtype=bool)
    coverage = masks.reshape(masks.shape[0], -1).mean(axis=1) if masks.size else np.zeros(len(idx))
    mask_imgs = [cv.image_msg(types, (masks[j].astype(np.uint8) * 255), st[j], frame_id, "mono8")
                 for j in range(len(idx))]
    names = list(chunk.timings.keys())
    return types.ImaginedChunk(
        header=cv.header_msg(types, st[0] if st else 0, world_frame),
        goal_frames=int(goal_frames), index=int(chunk.index),
        frame_indices=types.seq(np.asarray(idx, dtype=np.uint32)),
        poses=poses,
        camera_info=cv.camera_info_msg(types, K, height, width, st[0] if st else 0, frame_id),
        frames=list(images) if images is not None else [], masks=mask_imgs,
        coverage=types.seq(np.asarray(coverage, dtype=np.float32)),
        timing_names=names,
        timing_seconds=types.seq(np.asarray([float(chunk.timings[k]) for k in names], dtype=np.float64)),
        backend=str(backend), generative=bool(generative),
    )


def candidate_result_msg(types, index: int, score: Dict, stamps_ns: Sequence[int], coverage: Sequence[float] = (),
                         images: Optional[List[object]] = None, goal: Optional[Dict] = None):
    """``mirage_ros/CandidateResult`` of candidate ``index``: its scores (``score``: visibility per
    frame, known, novelty, from ``MirageCore.imagine_candidates``), the per-frame stamps, the
    coverage of each imagined frame's readout in its own fork, and the images if given. ``goal``
    (``planning.CandidateGoalScores.result``; default the readout's in ``score["goal"]``) fills the
    goal_* fields; without one they stay empty (GOAL_NONE)."""
    cov = np.asarray(list(coverage), dtype=np.float32)
    goal = goal if goal is not None else score.get("goal")
    extra = {}
    if goal is not None:  # only then: interfaces built before the goal fields still take the rest
        extra = dict(goal_source=int(goal["source"]), goal_similarity=float(goal["similarity"]),
                     goal_best_frame=int(goal["best_frame"]),
                     goal_latent_similarity=types.seq(np.asarray(goal["latent"], dtype=np.float32)),
                     goal_pixel_similarity=types.seq(np.asarray(goal["pixel"], dtype=np.float32)))
    return types.CandidateResult(
        index=int(index), num_frames=len(stamps_ns),
        known=float(score["known"]), novelty=float(score["novelty"]),
        visibility=types.seq(np.asarray(score["visibility"], dtype=np.float32)),
        frames_imagined=int(cov.size), rollout_coverage=types.seq(cov),
        mean_rollout_coverage=float(cov.mean()) if cov.size else 0.0,
        stamps=[cv.time_msg(types, int(t)) for t in stamps_ns],
        frames=list(images) if images is not None else [],
        **extra,
    )


def imagined_path_msg(types, camera_to_world: np.ndarray, stamps_ns: Sequence[int], world_frame: str):
    return cv.path_msg(types, camera_to_world, stamps_ns, world_frame)


def stats_msg(types, stats: Dict[str, object], stamp_ns: int, world_frame: str):
    return types.MemoryStats(
        header=cv.header_msg(types, stamp_ns, world_frame),
        backend=str(stats["backend"]), generative=bool(stats["generative"]), description=str(stats["description"]),
        num_points=int(stats["num_points"]), nbytes=int(stats["nbytes"]),
        channels=int(stats["channels"]), stride=int(stats["stride"]),
        messages_received=int(stats["messages_received"]), sets_completed=int(stats["sets_completed"]),
        frames_observed=int(stats["frames_observed"]), frames_skipped=int(stats["frames_skipped"]),
        inputs_rejected=int(stats["inputs_rejected"]), last_rejection=str(stats["last_rejection"]),
        goals_succeeded=int(stats["goals_succeeded"]), goals_canceled=int(stats["goals_canceled"]),
        goals_aborted=int(stats["goals_aborted"]), frames_imagined=int(stats["frames_imagined"]),
    )


def cloud_msg(types, cloud: np.ndarray, stamp_ns: int, world_frame: str):
    return cv.pointcloud_msg(types, cloud, stamp_ns, world_frame)


def frustum_lines(camera_to_world: Sequence[np.ndarray], K: np.ndarray, height: int, width: int,
                  scale: float) -> np.ndarray:
    """Line-list vertices (M*16, 3) of camera frustums of depth ``scale``: apex to the four image
    corners and the far rectangle, in the world frame."""
    from ..geometry import frustum_corners

    T = np.asarray(camera_to_world, dtype=np.float64).reshape(-1, 4, 4)
    if T.shape[0] == 0:
        return np.zeros((0, 3))
    corners = frustum_corners(np.asarray(K, dtype=np.float64), height, width, scale)  # (4, 3) camera frame
    apex = np.zeros((1, 3))
    seg = []
    for i in range(4):
        seg += [apex[0], corners[i]]
    for i in range(4):
        seg += [corners[i], corners[(i + 1) % 4]]
    local = np.asarray(seg)  # (16, 3) camera frame
    world = local[None] @ np.swapaxes(T[:, :3, :3], 1, 2) + T[:, None, :3, 3]
    return world.reshape(-1, 3)


def frustum_markers(types, observed: Sequence[np.ndarray], imagined: Sequence[np.ndarray], K, height: int,
                    width: int, scale: float, stamp_ns: int, world_frame: str):
    """``visualization_msgs/MarkerArray``: observed cameras (green) and imagined ones (orange),
    one LINE_LIST marker each (a DELETEALL first, so stale markers disappear)."""
    markers = [_marker(types, stamp_ns, world_frame, "mirage", 0, action=3)]
    for mid, (poses, rgba, ns) in enumerate(((observed, (0.2, 0.9, 0.3, 1.0), "observed"),
                                             (imagined, (1.0, 0.55, 0.1, 1.0), "imagined")), start=1):
        pts = frustum_lines(list(poses), K, height, width, scale) if K is not None and len(poses) else np.zeros((0, 3))
        markers.append(_marker(types, stamp_ns, world_frame, ns, mid, action=0, mtype=5, rgba=rgba,
                               points=[types.Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in pts]))
    return types.MarkerArray(markers=markers)


def _marker(types, stamp_ns, frame, ns, mid, action, mtype=5, rgba=(1.0, 1.0, 1.0, 1.0), points=()):
    return types.Marker(
        header=cv.header_msg(types, stamp_ns, frame), ns=ns, id=int(mid), type=int(mtype), action=int(action),
        pose=types.Pose(position=types.Point(x=0.0, y=0.0, z=0.0),
                        orientation=types.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
        scale=types.Vector3(x=0.01, y=0.0, z=0.0),
        color=types.ColorRGBA(r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]), a=float(rgba[3])),
        points=list(points),
    )


class PeriodicOutputs:
    """memory/stats every ``viz.stats_period``; memory/points and memory/frustums at most every
    ``viz.cloud_period`` and only when the memory changed. ``tick()`` publishes what is due
    (``publish``: output key -> callable); ``start()`` runs it every 20 ms on a thread of its own, so
    a large cloud never holds up the sensor callbacks."""

    def __init__(self, core, types, publish: Dict[str, Callable], now_ns: Callable[[], int],
                 active: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.monotonic):
        self.core, self.types, self.publish, self.now_ns, self.active, self.clock = \
            core, types, publish, now_ns, active, clock
        self.last_stats = self.last_cloud = -float("inf")
        self.published_version = -1
        self._loop = None

    def republish(self) -> None:
        """Send the cloud again at the next tick (a viewer may have missed it: activation)."""
        self.published_version = -1

    def tick(self) -> None:
        core, now = self.core, self.clock()
        p, stamp = core.p, self.now_ns()
        if now - self.last_stats >= p["viz.stats_period"]:
            self.last_stats = now
            self.publish["stats"](stats_msg(self.types, core.stats(), stamp, p["world_frame"]))
        if now - self.last_cloud >= p["viz.cloud_period"] and core.version != self.published_version:
            self.last_cloud = now
            self.published_version = core.version
            self.publish_cloud(stamp)
            cam = core.last_camera
            K, H, W = cam if cam is not None else (None, 0, 0)
            self.publish["frustums"](frustum_markers(self.types, list(core.observed_poses), list(core.imagined_poses),
                                                     K, H, W, p["viz.frustum_scale"], stamp, p["world_frame"]))

    def publish_cloud(self, stamp_ns: int) -> float:
        """Build and publish memory/points; returns the seconds it took."""
        t0 = time.perf_counter()
        self.publish["points"](cloud_msg(self.types, self.core.cloud(), stamp_ns, self.core.p["world_frame"]))
        return time.perf_counter() - t0

    def start(self, on_error: Callable[[BaseException], None]) -> None:
        from .slot import Loop

        def step():
            if self._loop.wait(0.02) or not self.active():
                return
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - keep publishing
                on_error(exc)

        self._loop = Loop("mirage-outputs", step)
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None:
            self._loop.stop(timeout)
