"""What mirage_node does, without ROS: the node (rclpy) and ``mirage replay`` (rosbags) both
drive this class, so the bag replay runs exactly the node's logic.

- Inputs: ``on_image`` / ``on_camera_info`` / ``on_pose`` / ``on_odometry`` / ``on_depth`` /
  ``on_labels`` take a message (rclpy or rosbags, duck-typed), validate and convert it, and
  feed the timestamp pairing. Bad input is *rejected*: logged with a plain reason (throttled),
  counted, and dropped; nothing reaches the memory.
- Observation: ``observe(set)`` writes one complete set into the memory through the backend,
  following the update policy (first set only, or every set at most every ``min_interval``).
- Goals: ``prepare(path, num_frames, prompt, now_ns)`` validates a trajectory into a
  ``Request`` or raises ``GoalError(status, message)``; ``imagine(request, cancel)`` yields the
  backend's chunks, holding the memory lock only while a chunk is computed.
- Candidates (planners): ``prepare_candidates(paths, ...)`` validates K trajectories with the
  same rules (the size rule ``goals.candidates_reason`` first, from the list lengths alone), then
  ``imagine_candidates(creq, cancel)`` takes ONE snapshot of the memory, scores every candidate on
  it (``CandidateRun.scores``) and imagines them all from it (batched through a generative model);
  nothing is written into the memory. ``prepare_goal(creq, image, camera_info, metric)`` adds a
  goal image (``planning.GoalView``): the scores then carry the readout's similarity to it and the
  run the imagined frames' (``CandidateRun.goal_result``).
- Memory: ``reset`` / ``save`` / ``load``; visualisation data: ``cloud()``, ``frustums()``;
  ``stats()``.

Thread safety: one re-entrant lock guards the backend and its memory; counters are plain ints
(updated under the GIL).
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import convert as cv
from . import paths
from .goals import candidates_reason
from .params import validate
from .sync import SyncedSet, Synchronizer

__all__ = ["MirageCore", "GoalError", "Request", "CandidateRequest", "CandidateRun", "resample_trajectory",
           "STATUS_SUCCEEDED", "STATUS_CANCELED", "STATUS_INVALID_GOAL", "STATUS_NOT_READY", "STATUS_FAILED"]

# mirror action/Imagine.action
STATUS_SUCCEEDED, STATUS_CANCELED, STATUS_INVALID_GOAL, STATUS_NOT_READY, STATUS_FAILED = 0, 1, 2, 3, 4
STATUS_NAMES = {0: "succeeded", 1: "canceled", 2: "invalid goal", 3: "not ready", 4: "failed"}

_LOG = logging.getLogger("mirage_ros.node")


class GoalError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


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


class CandidateRun:
    """One ``imagine_candidates`` run: ``scores`` (per candidate: visibility per frame, known,
    novelty) are ready at once; iterating yields (candidate index, ``ImaginedChunk``). Both come
    from the same snapshot of the memory, taken when the run was made."""

    def __init__(self, core: "MirageCore", creq: CandidateRequest, cancel: Optional[Callable[[], bool]]):
        import copy

        self.core, self.request, self.cancel = core, creq, cancel
        t0 = time.perf_counter()
        with core.lock:
            if core.backend is None:
                raise GoalError(STATUS_NOT_READY, "the node is not active")
            # the snapshot: a shallow copy of the backend (model, codec, last observed frame shared)
            # over a fork of the memory; observations that arrive meanwhile go to the live memory
            view = copy.copy(core.backend)
            view.memory = core.backend.memory.fork()
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
        core, cancel = self.core, self.cancel
        with core.lock:
            it = iter(self.backend.imagine_candidates(self.request.trajectories, prompt=self.request.prompt,
                                                      cancel=cancel))
        while True:
            if cancel is not None and cancel():
                return
            with core.lock:  # one model, shared with goals and observations: one chunk at a time
                item = next(it, None)
                if item is not None and self.goal_scores is not None:
                    self.goal_scores.add_chunk(item[0], item[1], self.backend.generative)
            if item is None:
                return
            core.counts["frames_imagined"] += len(item[1].frame_indices)
            yield item


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


class MirageCore:
    def __init__(self, params: Optional[dict] = None, log: Optional[Callable[[str, str], None]] = None,
                 namespace: str = "", frame_prefix: str = ""):
        """``namespace``: the node's (``/robot1``): the default save folder is per namespace.
        ``frame_prefix``: the tf frame prefix when ``tf.frame_prefix`` is empty (mirage_multi_node:
        ``robot1/``)."""
        self.p = validate(params or {})
        self.namespace = namespace.strip("/")
        self.frame_prefix = self.p["tf.frame_prefix"] or frame_prefix
        # the frames this robot publishes and looks up, prefixed as robot_state_publisher prefixes
        self.imagined_frame = self.prefixed(self.p["imagined.frame_id"])
        self._log = log or (lambda level, msg: _LOG.log(getattr(logging, level.upper(), logging.INFO), msg))
        self.lock = threading.RLock()
        self.input_lock = threading.RLock()  # pairing and tf state (sensor callbacks and the tf thread)
        self.backend = None
        self.depth_provider = None
        self.mask_provider = None
        kinds = ["image", "camera_info", "pose"]
        if self.p["depth.provider"] == "topic":
            kinds.append("depth")
        if self.p["masks.provider"] == "labels":
            kinds.append("labels")
        self.sync = Synchronizer(
            kinds, tolerance_ns=int(round(self.p["sync.tolerance"] * 1e9)), queue_size=self.p["sync.queue_size"],
            latch=("camera_info",) if self.p["sync.latch_camera_info"] else (), max_bytes=self.p["sync.max_bytes"],
        )
        # (H, W) of the newest valid camera_info: images of another size are refused before any
        # pixel is decoded or copied (decompression bombs, issue 15 item 1)
        self.camera_size: Optional[Tuple[int, int]] = None
        b2c = self.p["pose.base_to_camera"]
        self.base_to_camera = cv.pose_to_matrix(_PoseLike(b2c), "pose.base_to_camera")
        # pose.source tf: our own transform buffer (fed by on_tf), or a foreign lookup (tf2_ros:
        # use_tf_lookup), and the queue of image stamps waiting for their transform
        self.tf_buffer = self.tf_poses = None
        if self.p["pose.source"] == "tf":
            from .tf_buffer import TfPoseQueue, TransformBuffer

            self.tf_buffer = TransformBuffer(cache_time_ns=int(self.p["tf.cache_time"] * 1e9),
                                             tolerance_ns=int(round(self.p["tf.tolerance"] * 1e9)),
                                             jump_ns=self.sync.jump_ns, max_bytes=self.p["tf.max_bytes"])
            self.tf_poses = TfPoseQueue(self.tf_buffer.lookup, self.p["world_frame"],
                                        self.prefixed(self.p["tf.camera_frame"]) if self.p["tf.camera_frame"] else "",
                                        self.p["tf.camera_is_link"], int(round(self.p["tf.wait"] * 1e9)),
                                        max_pending=self.p["sync.queue_size"])
        self.counts = {k: 0 for k in ("messages_received", "sets_completed", "frames_observed", "frames_skipped",
                                      "inputs_rejected", "goals_succeeded", "goals_canceled", "goals_aborted",
                                      "frames_imagined", "time_jumps", "goals_rejected")}
        self.last_rejection = ""
        self._reject_log: Dict[str, Tuple[float, int]] = {}
        self.last_camera: Optional[Tuple[np.ndarray, int, int]] = None
        self.last_observe_stamp: Optional[int] = None
        self._jump_lock = threading.Lock()
        self.distorted_warned = False
        n = max(1, int(self.p["viz.max_frustums"]))
        self.observed_poses: deque = deque(maxlen=n)
        self.imagined_poses: deque = deque(maxlen=n)
        self.version = 0  # bumps on every memory change (the node republishes the cloud then)
        self._colors_cache: Tuple[int, Optional[np.ndarray]] = (-1, None)
        self._warm = False

    def prefixed(self, frame: str) -> str:
        """``frame`` with this robot's tf frame prefix (unchanged when it already has it, or when
        there is none)."""
        pre = self.frame_prefix
        return frame if not pre or not frame or frame.startswith(pre) else pre + frame

    # -- logging and rejection ------------------------------------------------------------------
    def log(self, level: str, msg: str) -> None:
        try:
            self._log(level, msg)
        except Exception:  # noqa: BLE001 - logging must never break the data path
            print(f"[{level}] {msg}", file=sys.stderr, flush=True)

    def reject(self, kind: str, reason: str) -> None:
        """Count and log (each kind of problem at once, then at most every 5 s with a count)."""
        self.counts["inputs_rejected"] += 1
        self.last_rejection = f"{kind}: {reason}"
        self._throttled(kind, reason, f"rejected {kind}: {reason}; dropped, memory unchanged")

    def reject_goal(self, reason: str, kind: str = "goal") -> None:
        """A request refused (an imagine goal at the door: too long, queue full; a streamed ``plan``
        the node cannot serve yet): counted as a rejected goal, not a rejected sensor input."""
        self.counts["goals_rejected"] += 1
        self._throttled(kind, reason, f"imagine {kind} rejected: {reason}")

    def _throttled(self, kind: str, reason: str, text: str) -> None:
        now = time.monotonic()
        key = f"{kind}|{re.sub(r'[0-9.eE+-]+', '#', reason.split('(')[0])[:120]}"  # per kind of problem
        last, suppressed = self._reject_log.get(key, (-1e9, 0))
        if now - last >= 5.0:
            more = f" ({suppressed} more like it since the last report)" if suppressed else ""
            self.log("warn", f"{text}{more}")
            self._reject_log[key] = (now, 0)
        else:
            self._reject_log[key] = (last, suppressed + 1)

    # -- lifecycle ------------------------------------------------------------------------------
    def memory_config(self) -> dict:
        """Keyword arguments of this node's ``LatentSpatialMemory`` (from the memory.* parameters)."""
        p = self.p
        return {
            "depth_downsample": p["memory.depth_downsample"], "feature_dtype": p["memory.feature_dtype"],
            "dedup": p["memory.dedup"], "dedup_tolerance": p["memory.dedup_tolerance"],
            "on_revisit": p["memory.on_revisit"], "block_size": p["memory.block_size"],
            "max_points": p["memory.max_points"] or None,
        }

    def backend_config(self) -> Tuple[str, dict]:
        """(backend name, ``make_backend`` keyword arguments without ``memory``): what decides which
        model is loaded (robots whose configs are equal can share one loaded model, see ``fleet``)."""
        p = self.p
        if p["backend"] == "readout":
            return p["backend"], {"codec": p["codec"], "weights": p["weights_dir"] or None, "device": p["device"],
                                  "chunk_size": p["chunk_size"]}
        # generative: depth and masks of *generated* frames come from these providers
        cfg = {
            "config": p["mirage.config"], "weights": p["weights_dir"] or None,
            "side_branch": p["mirage.side_branch"] or None, "lora": p["mirage.lora"] or None,
            "device": p["device"], "steps": p["steps"] or None, "prompt": p["prompt"] or None,
            "depth": {"name": "da3", "weights": p["depth.weights"], "align": self._align()}
            if p["depth.provider"] == "da3" else "memory",
            "masks": self._mask_cfg() if p["masks.provider"] == "sam3" else "none"}
        if p["backend"] == "spatia":
            cfg.update(resolution=tuple(p["spatia.resolution"]), rounds=tuple(p["spatia.rounds"]),
                       negative_prompt_file=p["spatia.negative_prompt_file"] or None)
        else:  # the latent-memory sampler: each override replaces one setting of the model's own
            cfg.update(pin_until=None if p["sampler.pin_until"] < 0 else p["sampler.pin_until"],
                       pin_paste=None if p["sampler.pin_paste"] == "model" else p["sampler.pin_paste"] == "on",
                       context_sigma=None if p["sampler.context_sigma"] < 0 else p["sampler.context_sigma"],
                       noise_seed=None if p["sampler.noise_seed"] < 0 else p["sampler.noise_seed"],
                       rollout={"earliest_within": p["readout.earliest_within"]})
        return p["backend"], cfg

    def configure(self, backend=None) -> None:
        """Build the backend (loads models) unless one is given (e.g. one sharing another node's
        model, ``fleet.share_model``), the optional providers, and load memory.load_path."""
        if self.p["threads"]:
            import torch

            torch.set_num_threads(int(self.p["threads"]))
        if backend is None:
            from ..world_model.backend import make_backend

            name, cfg = self.backend_config()
            backend = make_backend(name, memory=self.memory_config(), **cfg)
        self.depth_provider = self._provider("depth", self.p["depth.provider"], ("topic",))
        self.mask_provider = self._provider("masks", self.p["masks.provider"], ("none", "labels"))
        with self.lock:
            self.backend = backend
            if self.p["memory.load_path"]:
                self.backend.memory.load(self.p["memory.load_path"])
                self.version += 1
        self.log("info", f"backend: {self.backend.description or self.backend.name}")

    def _align(self):
        """Scale alignment of monocular depth to the memory (None when switched off)."""
        return None if self.p["depth.align"] == "none" else self.p["depth.align"]

    def _mask_cfg(self) -> dict:
        p = self.p
        cfg = {"name": "sam3", "sam3_dir": p["masks.sam3_dir"] or None}
        if p["masks.qwen_dir"]:
            cfg["qwen_dir"] = p["masks.qwen_dir"]
        return cfg

    def _provider(self, what: str, name: str, builtin: tuple):
        """Observation-time depth / mask provider from mirage_ros.perception (None for the
        built-in ones: the depth topic, no masks, the label topic)."""
        if name in builtin:
            return None
        try:
            if what == "depth":
                from ..perception.depth import make_depth_provider

                kw = {"weights": self.p["depth.weights"] or None, "align": self._align()} if name == "da3" else {}
                return make_depth_provider(name, device=self.p["device"], **kw)
            from ..perception.masks import make_mask_provider

            cfg = self._mask_cfg()
            cfg.pop("name")
            return make_mask_provider(name, device=self.p["device"], **cfg)
        except ImportError as exc:
            raise ValueError(f"{what}.provider: {name!r} is not available in this build ({exc})") from None

    def release(self) -> None:
        """Drop the backend and free accelerator memory (lifecycle cleanup)."""
        with self.lock:
            self.backend = None
            self.depth_provider = self.mask_provider = None
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass

    @property
    def ready(self) -> bool:
        return self.backend is not None

    # -- inputs -------------------------------------------------------------------------------
    def _add(self, kind: str, stamp: int, payload) -> Optional[SyncedSet]:
        with self.input_lock:  # the node feeds tf from its own thread, sensors from the executor
            s = self.sync.add(kind, stamp, payload)
        if s is not None:
            self.counts["sets_completed"] += 1
        return s

    def on_image(self, msg, now_ns: Optional[int] = None) -> Optional[SyncedSet]:
        self.counts["messages_received"] += 1
        try:
            rgb = cv.image_to_rgb(msg, "image", self.p["input.max_pixels"], self.camera_size)
        except cv.ConversionError as exc:
            return self.reject("image", str(exc))
        return self._image_in(msg.header, rgb, now_ns)

    def on_compressed_image(self, msg, now_ns: Optional[int] = None) -> Optional[SyncedSet]:
        """sensor_msgs/CompressedImage (``image/compressed``: jpeg or png as image_transport publishes it)."""
        from .compressed import compressed_to_rgb

        self.counts["messages_received"] += 1
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
            with self.input_lock:
                s = self._tf_results(*self.tf_poses.request(stamp, self.prefixed(str(header.frame_id)), now)) or s
        return s

    # -- tf (pose.source tf) ------------------------------------------------------------------
    def use_tf_lookup(self, lookup: Callable[[str, str, int], np.ndarray]) -> None:
        """Take camera poses from another buffer (tf2_ros): ``lookup(target, source, stamp_ns)``
        returns target_from_source; ``on_tf`` is then not needed, ``poll_tf`` retries waiting images."""
        if self.tf_poses is None:
            raise ValueError("pose.source is not 'tf'")
        self.tf_poses.lookup = lookup

    def on_tf(self, msg, static: bool = False, now_ns: Optional[int] = None) -> Optional[SyncedSet]:
        """tf2_msgs/TFMessage from /tf (or /tf_static with ``static``): stored in the buffer, then
        images waiting for their transform are retried. Our own imagined camera
        (``imagined.frame_id``, which the node publishes on /tf) is ignored."""
        if self.tf_buffer is None:
            return None
        from .tf_buffer import TfInputError, transforms_from_msg

        self.counts["tf_received"] = self.counts.get("tf_received", 0) + 1
        good, bad = transforms_from_msg(msg)
        for reason in bad:
            self.reject("tf", reason)
        own = self.imagined_frame
        with self.input_lock:
            for parent, child, stamp, T in good:
                if child == own:
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
        with self.input_lock:
            return self._tf_results(*self.tf_poses.poll(now))

    def _tf_results(self, resolved, failed) -> Optional[SyncedSet]:
        for _stamp, reason in failed:
            self.reject("tf", reason)
        s = None
        for stamp, T in resolved:
            dist = float(np.linalg.norm(T[:3, 3]))
            if not dist <= cv.MAX_POSITION:
                self.reject("tf", f"camera position from tf is {dist:.3g} m from the world origin, beyond "
                                  f"{cv.MAX_POSITION:g} m (use a local world frame)")
                continue
            s = self._add("pose", stamp, T) or s
        return s

    def on_camera_info(self, msg) -> Optional[SyncedSet]:
        self.counts["messages_received"] += 1
        try:
            K, H, W = cv.camera_info_to_K(msg, "camera_info", self.p["input.max_pixels"])
        except cv.ConversionError as exc:
            return self.reject("camera_info", str(exc))
        self.camera_size = (H, W)
        if cv.camera_info_is_distorted(msg) and not self.distorted_warned:
            self.distorted_warned = True
            self.log("warn", "camera_info has non-zero distortion: mirage_ros treats images as pinhole; publish rectified images (image_rect) for exact geometry")
        return self._add("camera_info", cv.stamp_to_ns(msg.header.stamp), (K, H, W))

    def _check_frame(self, kind: str, frame: str) -> bool:
        world = self.p["world_frame"]
        if frame and frame != world:
            self.reject(kind, f"header.frame_id {frame!r} is not the world frame {world!r} (set the world_frame parameter)")
            return False
        return True

    def on_pose(self, msg) -> Optional[SyncedSet]:
        """geometry_msgs/PoseStamped: the camera optical frame in the world (camera_to_world)."""
        self.counts["messages_received"] += 1
        try:
            stamp, frame, T = cv.pose_stamped_to_matrix(msg, "pose")
        except cv.ConversionError as exc:
            return self.reject("pose", str(exc))
        if not self._check_frame("pose", frame):
            return None
        return self._add("pose", stamp, T)

    def on_odometry(self, msg) -> Optional[SyncedSet]:
        """nav_msgs/Odometry of the base; the camera is ``pose.base_to_camera`` in the child frame."""
        self.counts["messages_received"] += 1
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

    def on_depth(self, msg) -> Optional[SyncedSet]:
        self.counts["messages_received"] += 1
        try:
            d = cv.image_to_depth(msg, "depth", self.p["depth.mm_scale"], self._depth_pixels(), None, self.p["depth.max"])
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

        self.counts["messages_received"] += 1
        try:
            d = compressed_depth_to_array(msg, "depth/compressedDepth", self.p["depth.mm_scale"], self._depth_pixels(),
                                          None, self.p["depth.max"])
        except cv.ConversionError as exc:
            return self.reject("depth", str(exc))
        return self._add("depth", cv.stamp_to_ns(msg.header.stamp), d)

    def on_labels(self, msg) -> Optional[SyncedSet]:
        self.counts["messages_received"] += 1
        try:
            lab = cv.image_to_labels(msg, "labels", self.p["input.max_pixels"], self.camera_size)
        except cv.ConversionError as exc:
            return self.reject("labels", str(exc))
        return self._add("labels", cv.stamp_to_ns(msg.header.stamp), lab)

    # -- observation --------------------------------------------------------------------------
    def wants(self, stamp_ns: int) -> bool:
        """Would a set at this stamp be written (update policy)? Time running backwards by more
        than the synchroniser's jump threshold (a bag looped, a simulator restarted, or the last
        set carried a stray far-future stamp) restarts the policy at the new time, logged once."""
        if self.backend is None:
            return False
        with self._jump_lock:
            last = self.last_observe_stamp
            if last is not None and stamp_ns < last - self.sync.jump_ns:
                self.last_observe_stamp = None
                self.counts["time_jumps"] += 1
                self.log("warn", f"time jumped back {(last - stamp_ns) / 1e9:.3f} s (from {last} to {stamp_ns} ns: "
                                 "a bag looped, a simulator restarted, or a stray stamp): updates carry on from the "
                                 "new time; the memory is kept (call reset to clear it)")
        if self.backend.memory.num_points == 0 or self.last_observe_stamp is None:
            return True
        if not self.p["observe.update"]:
            return False
        return stamp_ns - self.last_observe_stamp >= self.p["observe.min_interval"] * 1e9

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
            return self.reject("image", f"image {H}x{W} is not divisible by the VAE stride {stride}; crop or resize upstream")
        try:
            cam = Camera(K, invert_rigid(T), H, W)
        except GeometryError as exc:
            return self.reject("pose", str(exc))
        depth = s.get("depth")
        if depth is None and need_depth:
            return self.reject("depth", f"no depth for the set at {s.stamp_ns} ns (depth.provider={self.p['depth.provider']})")
        if depth is not None and not self._depth_ok(depth, H, W, stride, s.stamp_ns):
            return None
        labels = s.get("labels")
        if labels is not None and labels.shape != (H, W):
            return self.reject("labels", f"labels are {labels.shape[0]}x{labels.shape[1]} but the image is {H}x{W}")
        return {"rgb": rgb, "K": K, "H": H, "W": W, "T": T, "camera": cam, "depth": depth, "labels": labels}

    def _depth_ok(self, depth, H: int, W: int, stride: Optional[int], stamp_ns: int) -> bool:
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

    def observe(self, s: SyncedSet) -> Optional[int]:
        """Write one complete set into the memory; returns points added, or None if skipped/rejected."""
        if not self.wants(s.stamp_ns):
            self.counts["frames_skipped"] += 1
            return None
        stride = self.backend.memory.stride
        v = self.check_set(s, stride, need_depth=self.depth_provider is None)
        if v is None:
            return None
        rgb, K, H, W, T, cam, depth = (v[k] for k in ("rgb", "K", "H", "W", "T", "camera", "depth"))
        if depth is None:
            try:
                depth = self.depth_provider(rgb, cam, memory=self.backend.memory)
            except Exception as exc:  # noqa: BLE001 - a provider failure drops this frame only
                return self.reject("depth", f"depth provider {self.p['depth.provider']} failed: {type(exc).__name__}: {exc}")
            depth = depth.detach().cpu().numpy() if hasattr(depth, "detach") else np.asarray(depth)
            if not self._depth_ok(depth, H, W, stride, s.stamp_ns):
                return None
        exclude = None
        labels = v["labels"]
        if labels is not None:
            exclude = np.isin(labels, np.asarray(self.p["masks.exclude_labels"], dtype=np.int64))
        elif self.mask_provider is not None:
            try:
                exclude = np.asarray(self.mask_provider(rgb, cam), dtype=bool)
            except Exception as exc:  # noqa: BLE001
                return self.reject("masks", f"mask provider {self.p['masks.provider']} failed: {type(exc).__name__}: {exc}")
        try:
            with self.lock:
                if self.backend is None:
                    return None
                added = int(self.backend.observe(rgb, depth, cam, exclude=exclude))
        except Exception as exc:  # noqa: BLE001 - the memory validates before changing anything
            return self.reject("observation", f"{type(exc).__name__}: {exc}")
        self.counts["frames_observed"] += 1
        self.last_observe_stamp = s.stamp_ns
        self.last_camera = (K, H, W)  # before the warm-up: a goal may come as soon as the stats show points
        self.observed_poses.append(T)
        if added:
            self.version += 1
        if not self._warm and not self.backend.generative:
            self._warm_up(cam)
        return added

    def _warm_up(self, cam) -> None:
        """One throwaway readout at the observed camera, so the first goal does not pay torch's
        one-time kernel and allocator set-up (readout backends only: nothing is written)."""
        self._warm = True
        try:
            with self.lock:
                for _ in self.backend.imagine([cam]):
                    pass
        except Exception:  # noqa: BLE001 - a warm-up failure shows up again in the first goal
            pass

    # -- goals --------------------------------------------------------------------------------
    def prepare(self, path_msg, num_frames: int = 0, prompt: Optional[str] = None, now_ns: int = 0,
                camera: Optional[Tuple[np.ndarray, int, int]] = None) -> Request:
        """``camera``: (K, H, W) of the imagined frames (default: the last observed camera_info)."""
        from ..geometry import Camera, GeometryError, invert_rigid

        maxf = self.p["imagined.max_frames"]
        if self.backend is None:
            raise GoalError(STATUS_NOT_READY, "the node is not active (lifecycle state is not 'active')")
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
        world = self.p["world_frame"]
        if frame and frame != world:
            raise GoalError(STATUS_INVALID_GOAL, f"path.header.frame_id {frame!r} is not the world frame {world!r}")
        if self.backend.memory.num_points == 0 or self.last_camera is None:
            raise GoalError(STATUS_NOT_READY, "no observation yet: the memory is empty (publish image, camera_info, pose"
                            + (" and depth" if self.p["depth.provider"] == "topic" else "") + " first, or load_memory and publish camera_info)")
        base = cv.stamp_to_ns(path_msg.header.stamp) or int(now_ns)
        period = 1e9 / self.p["imagined.frame_rate"]
        zero = stamps == 0
        if zero.any():
            stamps = np.where(zero, base + np.round(np.arange(n_poses) * period).astype(np.int64), stamps)
        if num_frames and num_frames != n_poses:
            T, stamps = resample_trajectory(T, stamps, num_frames)
        K, H, W = camera or self.last_camera
        if H * W > self.p["imagined.max_pixels"]:
            raise GoalError(STATUS_INVALID_GOAL, f"the imagined frames would be {H} x {W} = {H * W:,} pixels (the last "
                            f"camera_info), more than imagined.max_pixels = {self.p['imagined.max_pixels']:,}")
        try:
            E = invert_rigid(T)
            cams = [Camera(K, E[i], H, W) for i in range(T.shape[0])]
        except GeometryError as exc:
            raise GoalError(STATUS_INVALID_GOAL, f"path: {exc}") from None
        return Request(cams, T, stamps, world, prompt or self.p["prompt"] or None, K, H, W)

    def prepare_candidates(self, paths_msgs, num_frames: int = 0, prompt: Optional[str] = None,
                           now_ns: int = 0) -> CandidateRequest:
        """K candidate Paths -> ``CandidateRequest``, or ``GoalError`` naming the candidate and the
        reason. The size rule (``goals.candidates_reason``: count, per-path and total frames) is
        checked on the list lengths before any per-pose work; then each path as ``prepare`` does
        (frame, quaternions, positions), all with the same camera."""
        p = self.p
        if self.backend is None:
            raise GoalError(STATUS_NOT_READY, "the node is not active (lifecycle state is not 'active')")
        paths_msgs = list(paths_msgs)
        reason = candidates_reason([len(m.poses) for m in paths_msgs], int(num_frames), p["imagined.max_frames"],
                                   p["candidates.max_candidates"], p["candidates.max_total_frames"])
        if reason is not None:
            raise GoalError(STATUS_INVALID_GOAL, reason)
        camera = self.last_camera
        reqs = []
        for i, m in enumerate(paths_msgs):
            try:
                reqs.append(self.prepare(m, num_frames, prompt, now_ns, camera=camera))
            except GoalError as exc:
                if exc.status == STATUS_NOT_READY:
                    raise
                raise GoalError(exc.status, f"candidates[{i}]: {exc.message}") from None
        return CandidateRequest(reqs, reqs[0].prompt)

    def prepare_goal(self, creq: CandidateRequest, image_msg=None, info_msg=None, metric: str = "") -> CandidateRequest:
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
            rgb = cv.image_to_rgb(image_msg, "goal_image", self.p["input.max_pixels"])
            goal_K = None
            if info_msg is not None and int(info_msg.width) > 0:
                goal_K, H, W = cv.camera_info_to_K(info_msg, "goal_camera_info", self.p["input.max_pixels"])
                if (H, W) != rgb.shape[:2]:
                    raise cv.ConversionError(f"goal_camera_info: {H}x{W}, but goal_image is {rgb.shape[0]}x{rgb.shape[1]}")
        except cv.ConversionError as exc:
            raise GoalError(STATUS_INVALID_GOAL, str(exc)) from None
        with self.lock:
            if self.backend is None:
                raise GoalError(STATUS_NOT_READY, "the node is not active")
            native = self.backend.native_camera(creq.requests[0].cameras[0])
            try:
                creq.goal = GoalView(rgb, self.backend.codec, (native.height, native.width), native.K.numpy(), goal_K)
            except ValueError as exc:
                raise GoalError(STATUS_INVALID_GOAL, str(exc)) from None
        creq.goal_metric = metric
        return creq

    def imagine_candidates(self, creq: CandidateRequest, cancel: Optional[Callable[[], bool]] = None) -> CandidateRun:
        """Snapshot the memory and score every candidate now; iterate the returned run for the
        imagined chunks (see ``CandidateRun``). The memory itself is never written."""
        return CandidateRun(self, creq, cancel)

    def imagine(self, req: Request, cancel: Optional[Callable[[], bool]] = None) -> Iterator:
        """Yield the backend's ``ImaginedChunk``s; the lock is held only while one is computed."""
        with self.lock:
            if self.backend is None:
                raise GoalError(STATUS_NOT_READY, "the node is not active")
            it = iter(self.backend.imagine(req.cameras, prompt=req.prompt, cancel=cancel))
        while True:
            if cancel is not None and cancel():
                return
            with self.lock:
                chunk = next(it, None)
            if chunk is None:
                return
            self.counts["frames_imagined"] += len(chunk.frame_indices)
            for i in chunk.frame_indices:
                self.imagined_poses.append(req.camera_to_world[i])
            if self.backend is not None and self.backend.generative:
                self.version += 1  # generative rollouts write generated frames back
            yield chunk

    # -- memory operations --------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            if self.backend is not None:
                self.backend.reset()
            with self.input_lock:
                self.sync.reset()
                if self.tf_poses is not None:
                    self.tf_poses.clear()
                if self.tf_buffer is not None:
                    self.tf_buffer.clear()  # dynamic frames (junk included); /tf_static edges stay
            self.last_observe_stamp = None
            self.observed_poses.clear()
            self.imagined_poses.clear()
            self.version += 1

    def save(self, path: str = "", overwrite: bool = False) -> Tuple[str, int]:
        """Save the memory inside ``memory.save_dir`` (see ``paths``); returns (absolute path, points).
        Raises ``ValueError`` (``paths.PathError``) with the reason; nothing is written then."""
        base = paths.memory_dir(self.p["memory.save_dir"], namespace=self.namespace)
        target = paths.resolve_save(base, path, overwrite)
        with self.lock:
            if self.backend is None:
                raise ValueError("the node is not active")
            mem = self.backend.memory
            paths.write_atomic(target, mem.save, overwrite)
            return str(target), mem.num_points

    def load(self, path: str) -> int:
        """Replace the memory with a file inside ``memory.save_dir``; unchanged on any error."""
        target = paths.resolve_load(paths.memory_dir(self.p["memory.save_dir"], namespace=self.namespace), path)
        with self.lock:
            if self.backend is None:
                raise ValueError("the node is not active")
            self.backend.memory.load(target)  # unchanged on any error
            self.last_observe_stamp = None
            self.version += 1
            return self.backend.memory.num_points

    # -- outputs ------------------------------------------------------------------------------
    def cloud(self, max_points: Optional[int] = None) -> np.ndarray:
        """The memory as a structured x, y, z, rgb array, evenly subsampled to ``max_points``."""
        max_points = int(self.p["viz.cloud_max_points"] if max_points is None else max_points)
        with self.lock:
            if self.backend is None:
                return cv.xyzrgb_to_structured(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
            mem = self.backend.memory
            n = mem.num_points
            idx = None if n <= max_points or max_points <= 0 else np.linspace(0, n - 1, max_points).astype(np.int64)
            pts = mem.points.detach().cpu().numpy()
            ver, colors = self._colors_cache
            if ver != self.version or colors is None or colors.shape[0] != n:
                colors = np.asarray(self.backend.point_colors(), dtype=np.uint8)
                self._colors_cache = (self.version, colors)
        if idx is not None:
            pts, colors = pts[idx], colors[idx]
        return cv.xyzrgb_to_structured(pts, colors)

    def stats(self) -> Dict[str, object]:
        b = self.backend
        out: Dict[str, object] = dict(self.counts)
        out.update({
            "backend": b.name if b is not None else "", "generative": bool(b.generative) if b is not None else False,
            "description": b.description if b is not None else "not configured",
            "num_points": b.memory.num_points if b is not None else 0, "nbytes": b.memory.nbytes if b is not None else 0,
            "channels": b.memory.channels if b is not None else 0, "stride": b.memory.stride if b is not None else 0,
            "last_rejection": self.last_rejection,
        })
        return out


class _PoseLike:
    """x y z qx qy qz qw list -> an object with .position / .orientation for convert."""

    def __init__(self, v):
        class _V:
            pass

        self.position, self.orientation = _V(), _V()
        self.position.x, self.position.y, self.position.z = map(float, v[:3])
        self.orientation.x, self.orientation.y, self.orientation.z, self.orientation.w = map(float, v[3:7])
