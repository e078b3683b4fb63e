"""What mirage_node does, without ROS: the node (rclpy) and ``mirage replay`` (rosbags) both
drive this class, so the bag replay runs exactly the node's logic.

``MirageCore`` holds one robot's backend (the model and its memory) and puts the parts together:

- ``intake`` (``intake.Intake``): sensor messages validated, converted and paired into sets;
- ``observe(set)``: one complete set written into the memory through the backend, when the
  update policy (``policy``, ``observer.UpdatePolicy``) wants it;
- goals: ``prepare`` / ``prepare_candidates`` / ``prepare_goal`` check a goal into a request
  (``requests``) or raise ``GoalError(status, message)``; ``imagine(request, cancel)`` yields the
  backend's chunks, ``imagine_candidates(creq, cancel)`` takes ONE snapshot of the memory, scores
  every candidate on it and imagines them all from it, writing nothing into the memory;
- memory: ``reset`` / ``save`` / ``load``; visualisation data ``cloud()``; ``stats()``;
- ``report`` (``report.Report``): the counters, the last rejection and the throttled log.

Thread safety: one re-entrant lock guards the backend and its memory; the intake has its own
(sensor callbacks and the tf thread); counters are plain ints (updated under the GIL).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from . import convert as cv
from . import paths, requests
from .goals import (
    STATUS_CANCELED,
    STATUS_FAILED,
    STATUS_INVALID_GOAL,
    STATUS_NAMES,
    STATUS_NOT_READY,
    STATUS_SUCCEEDED,
    GoalError,
)
from .intake import Intake
from .observer import UpdatePolicy
from .params import validate
from .report import Report
from .requests import CandidateRequest, CandidateRun, Request, resample_trajectory
from .sync import SyncedSet

__all__ = ["MirageCore", "GoalError", "Request", "CandidateRequest", "CandidateRun", "resample_trajectory",
           "STATUS_SUCCEEDED", "STATUS_CANCELED", "STATUS_INVALID_GOAL", "STATUS_NOT_READY", "STATUS_FAILED",
           "STATUS_NAMES"]


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
        self.report = Report(log)
        self.lock = threading.RLock()
        self.backend = None
        self.depth_provider = None
        self.mask_provider = None
        self.intake = Intake(self.p, self.report, self.prefixed, self.imagined_frame)
        self.policy = UpdatePolicy(self.p, self.report, self.intake.sync.jump_ns)
        self.last_camera: Optional[Tuple[np.ndarray, int, int]] = None  # (K, H, W) of the last observation
        n = max(1, int(self.p["viz.max_frustums"]))
        self.observed_poses: deque = deque(maxlen=n)
        self.imagined_poses: deque = deque(maxlen=n)
        self.version = 0  # bumps on every memory change (the node republishes the cloud then)
        self._colors_cache: Tuple[int, Optional[np.ndarray]] = (-1, None)
        self._warm = False

    @property
    def counts(self) -> Dict[str, int]:
        """The counters (read only: they change through ``report``)."""
        return self.report.counts

    @property
    def last_rejection(self) -> str:
        return self.report.last_rejection

    def prefixed(self, frame: str) -> str:
        """``frame`` with this robot's tf frame prefix (unchanged when it already has it, or when
        there is none)."""
        pre = self.frame_prefix
        return frame if not pre or not frame or frame.startswith(pre) else pre + frame

    def log(self, level: str, msg: str) -> None:
        self.report.log(level, msg)

    # -- lifecycle ------------------------------------------------------------------------------
    def memory_config(self) -> dict:
        """Keyword arguments of this node's ``LatentSpatialMemory`` (from the memory.* parameters)."""
        p = self.p
        return {
            "depth_downsample": p["memory.depth_downsample"], "feature_dtype": p["memory.feature_dtype"],
            "dedup": p["memory.dedup"], "dedup_tolerance": p["memory.dedup_tolerance"],
            "on_revisit": p["memory.on_revisit"], "block_size": p["memory.block_size"],
            "max_points": p["memory.max_points"] or None,
            "sky": p["memory.sky"], "sky_fraction": p["memory.sky_fraction"],
            "exclude_fraction": p["memory.exclude_fraction"],
        }

    def provider_spec(self, kind: str, generated: bool):
        """The ``kind`` (depth | masks) provider of observed frames, or of ``generated`` ones, as
        ``world_model.providers.make_provider`` takes it; None where nothing is built (observed
        frames: depth from the topic, no masks, masks from the label topic). Generated frames have
        no topic: their depth is the memory's own by default, their masks none."""
        p = self.p
        name = p[f"{kind}.provider"]
        if kind == "depth":
            if name == "da3":
                return {"name": "da3", "weights": p["depth.weights"] or None,
                        "align": None if p["depth.align"] == "none" else p["depth.align"]}
            if generated:
                return "memory"
            return {"name": name} if name != "topic" else None
        if name == "sam3":
            cfg = {"name": "sam3", "sam3_dir": p["masks.sam3_dir"] or None}
            if p["masks.qwen_dir"]:
                cfg["qwen_dir"] = p["masks.qwen_dir"]
            return cfg
        return "none" if generated else None

    def backend_config(self) -> Tuple[str, dict]:
        """(backend name, ``make_backend`` keyword arguments without ``memory``): what decides which
        model is loaded (robots whose configs are equal can share one loaded model, see ``fleet``)."""
        p = self.p
        if p["backend"] == "readout":
            return p["backend"], {"codec": p["codec"], "weights": p["weights_dir"] or None, "device": p["device"],
                                  "chunk_size": p["chunk_size"]}
        cfg = {
            "config": p["mirage.config"], "weights": p["weights_dir"] or None,
            "side_branch": p["mirage.side_branch"] or None, "lora": p["mirage.lora"] or None,
            "device": p["device"], "steps": p["steps"] or None, "prompt": p["prompt"] or None,
            "depth": self.provider_spec("depth", generated=True), "masks": self.provider_spec("masks", generated=True)}
        if p["backend"] == "spatia":
            cfg.update(resolution=tuple(p["spatia.resolution"]), rounds=tuple(p["spatia.rounds"]),
                       negative_prompt_file=p["spatia.negative_prompt_file"] or None)
        else:  # the latent-memory sampler: each override replaces one setting of the model's own
            cfg.update(pin_until=None if p["sampler.pin_until"] < 0 else p["sampler.pin_until"],
                       pin_paste=None if p["sampler.pin_paste"] == "model" else p["sampler.pin_paste"] == "on",
                       context_sigma=None if p["sampler.context_sigma"] < 0 else p["sampler.context_sigma"],
                       noise_seed=None if p["sampler.noise_seed"] < 0 else p["sampler.noise_seed"],
                       rollout={"earliest_within": p["readout.earliest_within"],
                                "pin_generated": p["sampler.pin_generated"],
                                "paste_generated": p["sampler.paste_generated"],
                                "decode_imagined": p["sampler.decode_imagined"],
                                "decode_aligned": p["sampler.decode_aligned"]})
        return p["backend"], cfg

    def configure(self, backend=None) -> None:
        """Build the backend (loads models) unless one is given (e.g. one sharing another node's
        model, ``fleet.share_model``), the observation-time providers, and load memory.load_path."""
        from ..world_model.providers import make_provider

        if self.p["threads"]:
            import torch

            torch.set_num_threads(int(self.p["threads"]))
        if backend is None:
            from ..world_model.backend import make_backend

            name, cfg = self.backend_config()
            backend = make_backend(name, memory=self.memory_config(), **cfg)
        device = self.p["device"]
        self.depth_provider = make_provider("depth", self.provider_spec("depth", generated=False), device)
        self.mask_provider = make_provider("masks", self.provider_spec("masks", generated=False), device)
        with self.lock:
            self.backend = backend
            if self.p["memory.load_path"]:
                self.backend.memory.load(self.p["memory.load_path"])
                self.version += 1
        self.log("info", f"backend: {self.backend.description or self.backend.name}")

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
        except Exception:  # noqa: BLE001 - freeing accelerator memory is best effort
            pass

    @property
    def ready(self) -> bool:
        return self.backend is not None

    # -- observation --------------------------------------------------------------------------
    def wants(self, stamp_ns: int) -> bool:
        """Would a set at this stamp be written (``policy``)? Never without a backend."""
        b = self.backend
        return b is not None and self.policy.wants(stamp_ns, b.memory.num_points == 0)

    def observe(self, s: SyncedSet) -> Optional[int]:
        """Write one complete set into the memory; returns points added, or None if skipped/rejected."""
        if not self.wants(s.stamp_ns):
            self.report.add("frames_skipped")
            return None
        reject = self.report.reject
        stride = self.backend.memory.stride
        v = self.intake.check_set(s, stride, need_depth=self.depth_provider is None)
        if v is None:
            return None
        rgb, K, H, W, T, cam, depth = (v[k] for k in ("rgb", "K", "H", "W", "T", "camera", "depth"))
        if depth is None:
            try:
                depth = self.depth_provider(rgb, cam, memory=self.backend.memory)
            except Exception as exc:  # noqa: BLE001 - a provider failure drops this frame only
                return reject("depth", f"depth provider {self.p['depth.provider']} failed: {type(exc).__name__}: {exc}")
            depth = depth.detach().cpu().numpy() if hasattr(depth, "detach") else np.asarray(depth)
            if not self.intake.depth_ok(depth, H, W, stride, s.stamp_ns):
                return None
        exclude = None
        labels = v["labels"]
        if labels is not None:
            exclude = np.isin(labels, np.asarray(self.p["masks.exclude_labels"], dtype=np.int64))
        elif self.mask_provider is not None:
            try:
                exclude = np.asarray(self.mask_provider(rgb, cam), dtype=bool)
            except Exception as exc:  # noqa: BLE001 - a provider failure drops this frame only
                return reject("masks", f"mask provider {self.p['masks.provider']} failed: {type(exc).__name__}: {exc}")
        try:
            with self.lock:
                if self.backend is None:
                    return None
                added = int(self.backend.observe(rgb, depth, cam, exclude=exclude))
        except Exception as exc:  # noqa: BLE001 - the memory validates before changing anything
            return reject("observation", f"{type(exc).__name__}: {exc}")
        self.report.add("frames_observed")
        self.policy.written(s.stamp_ns)
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
        """``requests.prepare``; ``camera``: (K, H, W) of the imagined frames (default: the last
        observed camera_info)."""
        return requests.prepare(self.p, self.backend, camera or self.last_camera, path_msg, num_frames, prompt, now_ns)

    def prepare_candidates(self, paths_msgs, num_frames: int = 0, prompt: Optional[str] = None,
                           now_ns: int = 0) -> CandidateRequest:
        """``requests.prepare_candidates`` with the last observed camera."""
        return requests.prepare_candidates(self.p, self.backend, self.last_camera, paths_msgs, num_frames, prompt,
                                           now_ns)

    def prepare_goal(self, creq: CandidateRequest, image_msg=None, info_msg=None, metric: str = "") -> CandidateRequest:
        """``requests.prepare_goal``: the goal image at the camera this backend imagines at."""
        return requests.prepare_goal(self.p, self.backend, self.lock, creq, image_msg, info_msg, metric)

    def imagine_candidates(self, creq: CandidateRequest, cancel: Optional[Callable[[], bool]] = None) -> CandidateRun:
        """Snapshot the memory and score every candidate now; iterate the returned run for the
        imagined chunks (see ``CandidateRun``). The memory itself is never written."""
        return CandidateRun(self.backend, self.lock, creq, cancel, lambda n: self.report.add("frames_imagined", n))

    def imagine(self, req: Request, cancel: Optional[Callable[[], bool]] = None) -> Iterator:
        """Yield the backend's ``ImaginedChunk``s; the lock is held only while one is computed."""
        with self.lock:
            if self.backend is None:
                raise GoalError(STATUS_NOT_READY, "the node is not active")
            backend = self.backend
            it = iter(backend.imagine(req.cameras, prompt=req.prompt, cancel=cancel))
        while True:
            if cancel is not None and cancel():
                return
            with self.lock:
                chunk = next(it, None)
            if chunk is None:
                return
            self.report.add("frames_imagined", len(chunk.frame_indices))
            for i in chunk.frame_indices:
                self.imagined_poses.append(req.camera_to_world[i])
            if getattr(backend, "keep_imagined", False):
                self.version += 1  # this backend wrote the generated frames into the memory
            yield chunk

    # -- memory operations --------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            if self.backend is not None:
                self.backend.reset()
            self.intake.reset()
            self.policy.restart()
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
            self.policy.restart()
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
            "num_points": b.memory.num_points if b is not None else 0,
            "nbytes": b.memory.nbytes if b is not None else 0,
            "channels": b.memory.channels if b is not None else 0, "stride": b.memory.stride if b is not None else 0,
            "last_rejection": self.last_rejection,
        })
        return out

