"""What comes in: sensor messages validated, converted and paired into complete sets (no rclpy).

``Intake`` is the node's input side, driven by the rclpy callbacks and by ``mirage replay`` /
``mirage data bag`` (rosbags messages, duck-typed) alike:

- ``on_image`` / ``on_compressed_image`` / ``on_camera_info`` / ``on_pose`` / ``on_odometry`` /
  ``on_depth`` / ``on_compressed_depth`` / ``on_labels`` take one message, validate and convert
  it within the node's bounds (``input.max_pixels`` before decoding, the newest camera_info's size,
  ``depth.max``) and feed the timestamp pairing (``sync.Synchronizer``); each returns the
  ``SyncedSet`` it completed, or None.
- ``pose.source: tf``: ``on_tf`` stores /tf and /tf_static in the built-in ``TransformBuffer``
  (or ``use_tf_lookup`` takes tf2_ros' buffer) and an image asks for its camera pose at its own
  stamp, waiting up to ``tf.wait`` (``poll_tf`` retries). ``TfThread`` is the node's tf thread:
  it deserialises raw /tf messages off the executor.
- ``check_set`` is the ONE validation of a complete set (node, replay, data bag).

Bad input is *rejected* through the node's ``Report``: logged with a plain reason (throttled),
counted, and dropped; nothing reaches the memory.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Tuple

import numpy as np

from . import convert as cv
from .report import Report
from .sync import SyncedSet, Synchronizer

__all__ = ["Intake", "TfThread", "PoseLike"]


class PoseLike:
    """An (x, y, z, qx, qy, qz, qw) list as an object with .position / .orientation (for convert),
    or a translation and rotation message pair (tf2_ros' transform)."""

    class _V:
        pass

    def __init__(self, v=None, position=None, orientation=None):
        if v is not None:
            self.position, self.orientation = self._V(), self._V()
            self.position.x, self.position.y, self.position.z = map(float, v[:3])
            self.orientation.x, self.orientation.y, self.orientation.z, self.orientation.w = map(float, v[3:7])
        else:
            self.position, self.orientation = position, orientation


class Intake:
    def __init__(self, p: dict, report: Report, prefixed: Callable[[str], str], own_frame: str):
        """``p``: the validated parameters (the node's dict: runtime changes are seen);
        ``prefixed``: the robot's tf frame prefix applied to a frame id; ``own_frame``: the imagined
        frame this node publishes on /tf (ignored when it comes back)."""
        self.p, self.report, self.prefixed, self.own_frame = p, report, prefixed, own_frame
        self.lock = threading.RLock()  # pairing and tf state: sensor callbacks and the tf thread
        kinds = ["image", "camera_info", "pose"]
        if p["depth.provider"] == "topic":
            kinds.append("depth")
        if p["masks.provider"] == "labels":
            kinds.append("labels")
        self.sync = Synchronizer(
            kinds, tolerance_ns=int(round(p["sync.tolerance"] * 1e9)), queue_size=p["sync.queue_size"],
            latch=("camera_info",) if p["sync.latch_camera_info"] else (), max_bytes=p["sync.max_bytes"],
        )
        # (H, W) of the newest valid camera_info: images of another size are refused before any
        # pixel is decoded or copied (decompression bombs)
        self.camera_size: Optional[Tuple[int, int]] = None
        self.base_to_camera = cv.pose_to_matrix(PoseLike(p["pose.base_to_camera"]), "pose.base_to_camera")
        self.distorted_warned = False
        # pose.source tf: our own transform buffer (fed by on_tf), or a foreign lookup (tf2_ros:
        # use_tf_lookup), and the queue of image stamps waiting for their transform
        self.tf_buffer = self.tf_poses = None
        if p["pose.source"] == "tf":
            from .tf_buffer import TfPoseQueue, TransformBuffer

            self.tf_buffer = TransformBuffer(cache_time_ns=int(p["tf.cache_time"] * 1e9),
                                             tolerance_ns=int(round(p["tf.tolerance"] * 1e9)),
                                             jump_ns=self.sync.jump_ns, max_bytes=p["tf.max_bytes"])
            self.tf_poses = TfPoseQueue(self.tf_buffer.lookup, p["world_frame"],
                                        prefixed(p["tf.camera_frame"]) if p["tf.camera_frame"] else "",
                                        p["tf.camera_is_link"], int(round(p["tf.wait"] * 1e9)),
                                        max_pending=p["sync.queue_size"])

    def reject(self, kind: str, reason: str) -> None:
        self.report.reject(kind, reason)

    def reset(self) -> None:
        """Forget pending inputs and dynamic tf frames (junk included); /tf_static edges stay."""
        with self.lock:
            self.sync.reset()
            if self.tf_poses is not None:
                self.tf_poses.clear()
            if self.tf_buffer is not None:
                self.tf_buffer.clear()

    def _add(self, kind: str, stamp: int, payload) -> Optional[SyncedSet]:
        with self.lock:
            s = self.sync.add(kind, stamp, payload)
        if s is not None:
            self.report.add("sets_completed")
        return s

    # -- images ---------------------------------------------------------------------------------
    def on_image(self, msg, now_ns: Optional[int] = None) -> Optional[SyncedSet]:
        self.report.add("messages_received")
        try:
            rgb = cv.image_to_rgb(msg, "image", self.p["input.max_pixels"], self.camera_size)
        except cv.ConversionError as exc:
            return self.reject("image", str(exc))
        return self._image_in(msg.header, rgb, now_ns)

    def on_compressed_image(self, msg, now_ns: Optional[int] = None) -> Optional[SyncedSet]:
        """sensor_msgs/CompressedImage (``image/compressed``: jpeg or png as image_transport publishes it)."""
        from .compressed import compressed_to_rgb

        self.report.add("messages_received")
        try:
            rgb = compressed_to_rgb(msg, "image/compressed", self.p["input.max_pixels"], self.camera_size)
        except cv.ConversionError as exc:
            return self.reject("image", str(exc))
        return self._image_in(msg.header, rgb, now_ns)

    def _image_in(self, header, rgb: np.ndarray, now_ns: Optional[int]) -> Optional[SyncedSet]:
        stamp = cv.stamp_to_ns(header.stamp)
        s = self._add("image", stamp, rgb)
        if self.tf_poses is not None:  # ask for the camera pose at this image's stamp
            now = time.monotonic_ns() if now_ns is None else int(now_ns)
            with self.lock:
                s = self._tf_results(*self.tf_poses.request(stamp, self.prefixed(str(header.frame_id)), now)) or s
        return s

    def on_camera_info(self, msg) -> Optional[SyncedSet]:
        self.report.add("messages_received")
        try:
            K, H, W = cv.camera_info_to_K(msg, "camera_info", self.p["input.max_pixels"])
        except cv.ConversionError as exc:
            return self.reject("camera_info", str(exc))
        self.camera_size = (H, W)
        if cv.camera_info_is_distorted(msg) and not self.distorted_warned:
            self.distorted_warned = True
            self.report.log("warn", "camera_info has non-zero distortion: mirage_ros treats images as pinhole; "
                                    "publish rectified images (image_rect) for exact geometry")
        return self._add("camera_info", cv.stamp_to_ns(msg.header.stamp), (K, H, W))

    # -- poses ----------------------------------------------------------------------------------
    def _check_frame(self, kind: str, frame: str) -> bool:
        world = self.p["world_frame"]
        if frame and frame != world:
            self.reject(kind, f"header.frame_id {frame!r} is not the world frame {world!r} (set the world_frame "
                              f"parameter)")
            return False
        return True

    def on_pose(self, msg) -> Optional[SyncedSet]:
        """geometry_msgs/PoseStamped: the camera optical frame in the world (camera_to_world)."""
        self.report.add("messages_received")
        try:
            stamp, frame, T = cv.pose_stamped_to_matrix(msg, "pose")
        except cv.ConversionError as exc:
            return self.reject("pose", str(exc))
        if not self._check_frame("pose", frame):
            return None
        return self._add("pose", stamp, T)

    def on_odometry(self, msg) -> Optional[SyncedSet]:
        """nav_msgs/Odometry of the base; the camera is ``pose.base_to_camera`` in the child frame."""
        self.report.add("messages_received")
        try:
            stamp, frame, _child, T = cv.odometry_to_matrix(msg, "odom")
        except cv.ConversionError as exc:
            return self.reject("odom", str(exc))
        if not self._check_frame("odom", frame):
            return None
        return self._add("pose", stamp, T @ self.base_to_camera)

    def on_camera_pose(self, stamp_ns: int, camera_to_world: np.ndarray) -> Optional[SyncedSet]:
        """A camera pose from elsewhere (tf lookups)."""
        return self._add("pose", stamp_ns, np.asarray(camera_to_world, dtype=np.float64))

    # -- tf (pose.source tf) --------------------------------------------------------------------
    def use_tf_lookup(self, lookup: Callable[[str, str, int], np.ndarray]) -> None:
        """Take camera poses from another buffer (tf2_ros): ``lookup(target, source, stamp_ns)``
        returns target_from_source; ``on_tf`` is then not needed, ``poll_tf`` retries waiting images."""
        if self.tf_poses is None:
            raise ValueError("pose.source is not 'tf'")
        self.tf_poses.lookup = lookup

    def on_tf(self, msg, static: bool = False, now_ns: Optional[int] = None) -> Optional[SyncedSet]:
        """tf2_msgs/TFMessage from /tf (or /tf_static with ``static``): stored in the buffer, then
        images waiting for their transform are retried. Our own imagined camera is ignored."""
        if self.tf_buffer is None:
            return None
        from .tf_buffer import TfInputError, transforms_from_msg

        self.report.add("tf_received")
        good, bad = transforms_from_msg(msg)
        for reason in bad:
            self.reject("tf", reason)
        with self.lock:
            for parent, child, stamp, T in good:
                if child == self.own_frame:
                    continue
                try:
                    self.tf_buffer.set_transform(parent, child, stamp, T, static=static)
                except TfInputError as exc:
                    self.reject("tf", str(exc))
            return self.poll_tf(now_ns)

    def poll_tf(self, now_ns: Optional[int] = None) -> Optional[SyncedSet]:
        """Retry images waiting for their transform; drop those whose wait is over (logged)."""
        if self.tf_poses is None or not self.tf_poses.pending:
            return None
        now = time.monotonic_ns() if now_ns is None else int(now_ns)
        with self.lock:
            return self._tf_results(*self.tf_poses.poll(now))

    def _tf_results(self, resolved, failed) -> Optional[SyncedSet]:
        from ..geometry import MAX_TRANSLATION

        for _stamp, reason in failed:
            self.reject("tf", reason)
        s = None
        for stamp, T in resolved:
            dist = float(np.linalg.norm(T[:3, 3]))
            if not dist <= MAX_TRANSLATION:
                self.reject("tf", f"camera position from tf is {dist:.3g} m from the world origin, beyond "
                                  f"MAX_TRANSLATION = {MAX_TRANSLATION:g} m (use a local world frame)")
                continue
            s = self._add("pose", stamp, T) or s
        return s

    # -- depth and labels -------------------------------------------------------------------------
    def on_depth(self, msg) -> Optional[SyncedSet]:
        self.report.add("messages_received")
        try:
            d = cv.image_to_depth(msg, "depth", self.p["depth.mm_scale"], self._depth_pixels(), None,
                                  self.p["depth.max"])
        except cv.ConversionError as exc:
            return self.reject("depth", str(exc))
        return self._add("depth", cv.stamp_to_ns(msg.header.stamp), d)

    def _depth_pixels(self) -> int:
        """Depth may come at the image's size or at the latent grid's: at most the camera's area."""
        mp = int(self.p["input.max_pixels"])
        return mp if self.camera_size is None else min(mp, self.camera_size[0] * self.camera_size[1])

    def on_compressed_depth(self, msg) -> Optional[SyncedSet]:
        """CompressedImage on ``depth/compressedDepth`` (image_transport's compressedDepth png)."""
        from .compressed import compressed_depth_to_array

        self.report.add("messages_received")
        try:
            d = compressed_depth_to_array(msg, "depth/compressedDepth", self.p["depth.mm_scale"], self._depth_pixels(),
                                          None, self.p["depth.max"])
        except cv.ConversionError as exc:
            return self.reject("depth", str(exc))
        return self._add("depth", cv.stamp_to_ns(msg.header.stamp), d)

    def on_labels(self, msg) -> Optional[SyncedSet]:
        self.report.add("messages_received")
        try:
            lab = cv.image_to_labels(msg, "labels", self.p["input.max_pixels"], self.camera_size)
        except cv.ConversionError as exc:
            return self.reject("labels", str(exc))
        return self._add("labels", cv.stamp_to_ns(msg.header.stamp), lab)

    # -- a complete set ---------------------------------------------------------------------------
    def check_set(self, s: SyncedSet, stride: Optional[int] = None, need_depth: bool = True) -> Optional[dict]:
        """The ONE validation of a complete set, shared by the node, ``mirage replay`` and ``mirage
        data bag``: the image matches its camera_info, its size is divisible by ``stride`` (None:
        not checked here), the pose makes a camera, depth (when present, or ``need_depth``) is at
        the image's or the latent grid's size with at least one valid pixel, labels match the image.
        Returns dict(rgb, K, H, W, T, camera, depth, labels), or None after ``reject``."""
        from ..geometry import Camera, GeometryError, invert_rigid

        rgb = s["image"]
        K, H, W = s["camera_info"]
        T = s["pose"]
        if rgb.shape[:2] != (H, W):
            return self.reject("image", f"image is {rgb.shape[0]}x{rgb.shape[1]} but camera_info says {H}x{W}")
        if stride and (H % stride or W % stride):
            return self.reject("image", f"image {H}x{W} is not divisible by the VAE stride {stride}; crop or resize "
                                        f"upstream")
        try:
            cam = Camera(K, invert_rigid(T), H, W)
        except GeometryError as exc:
            return self.reject("pose", str(exc))
        depth = s.get("depth")
        if depth is None and need_depth:
            return self.reject("depth", f"no depth for the set at {s.stamp_ns} ns "
                                        f"(depth.provider={self.p['depth.provider']})")
        if depth is not None and not self.depth_ok(depth, H, W, stride, s.stamp_ns):
            return None
        labels = s.get("labels")
        if labels is not None and labels.shape != (H, W):
            return self.reject("labels", f"labels are {labels.shape[0]}x{labels.shape[1]} but the image is {H}x{W}")
        return {"rgb": rgb, "K": K, "H": H, "W": W, "T": T, "camera": cam, "depth": depth, "labels": labels}

    def depth_ok(self, depth, H: int, W: int, stride: Optional[int], stamp_ns: int) -> bool:
        """Depth at the image's (H, W) or the latent grid's size, with at least one valid pixel."""
        grid = (H // stride, W // stride) if stride else None
        if depth.shape != (H, W) and (grid is None or depth.shape != grid):
            self.reject("depth", f"depth is {depth.shape[0]}x{depth.shape[1]} but the image is {H}x{W}")
            return False
        with np.errstate(invalid="ignore"):
            if not (np.isfinite(depth) & (depth > 0)).any():
                self.reject("depth", f"no valid depth in the set at {stamp_ns} ns (every pixel NaN, inf, zero "
                                     "or negative): not an observation")
                return False
        return True


class TfThread:
    """The built-in tf input's thread: raw /tf and /tf_static messages queued by the executor
    (``tf_buffer.TfQueue``) are deserialised and stored here, even while inactive (/tf_static is
    latched: it arrives once), and waiting images are retried every 20 ms. ``offer(set)`` gets the
    sets this completes."""

    def __init__(self, intake: Intake, deserialize: Callable[[bytes], object], offer: Callable[[SyncedSet], None]):
        from .slot import Loop
        from .tf_buffer import TfQueue

        self.intake, self.deserialize, self.offer = intake, deserialize, offer
        self.queue = TfQueue()
        self._loop = Loop("mirage-tf", self.step)
        self.start, self.stop = self._loop.start, self._loop.stop

    def put(self, raw: bytes, static: bool) -> None:
        self.queue.put(raw, static)

    def step(self, timeout: float = 0.02) -> None:
        """One message (or, after ``timeout`` s without one, a retry of the waiting images)."""
        intake, q = self.intake, self.queue
        item = q.get(timeout)
        s = None
        try:
            if item is not None:
                raw, static = item
                s = intake.on_tf(self.deserialize(raw), static)
            else:
                s = intake.poll_tf()
        except Exception as exc:  # noqa: BLE001 - a bad message must not stop the tf input
            intake.reject("tf", f"{type(exc).__name__}: {exc}")
        if q.dropped:
            intake.reject("tf", f"{q.take_dropped()} /tf messages dropped: more than {q.max_bytes} bytes waited")
        if s is not None:
            self.offer(s)
