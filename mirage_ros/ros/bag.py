"""rosbag2 output and input without ROS, through rosbags: MCAP (default) or sqlite3.

``BagWriter`` writes what mirage_node publishes (imagined frames, chunks, paths, memory clouds,
stats, frustums) and, for recordings of a run, its inputs (image, camera_info, pose, depth),
as a rosbag2 that ``ros2 bag play``, ``ros2 bag info`` and Foxglove open. ``mirage replay``
and ``mirage demo`` use it; no rclpy is needed.

    from mirage_ros.ros.bag import BagWriter
    with BagWriter("run_bag") as bag:                    # a folder: run_bag/run_bag_0.mcap + metadata.yaml
        bag.add_image("/image", rgb, stamp_ns, "camera_optical_frame")
        bag.add_camera_info("/camera_info", K, H, W, stamp_ns, "camera_optical_frame")
        bag.add_pose("/pose", camera_to_world, stamp_ns)
        bag.add_depth("/depth", depth_m, stamp_ns, "camera_optical_frame")
        bag.add_imagined_chunk(chunk, camera_to_world_all, stamps_all, K, H, W)   # /tf, imagined/camera_info,
                                                                                  # imagined/image, imagined/chunk
        bag.add_path(camera_to_world_all, stamps_all)                             # imagined/path
        bag.add_chunk(chunk, stamp_s=1.0)     # or: a chunk alone (poses from chunk.cameras), + its path
        bag.add_memory(backend.memory.points, backend.point_colors(), stamp_ns)    # memory/points
        bag.add_stats(stats_dict, stamp_ns)                                       # memory/stats
        bag.add_frustums(observed, imagined, K, H, W, stamp_ns)                   # memory/frustums

Topic names are resolved against ``namespace`` (default ``/``), as the node's relative names are.
The custom types (``mirage_ros/msg/ImaginedChunk``, ``MemoryStats``) are registered from the
package's .msg files, so the bag carries their definitions for Foxglove and ``ros2 bag``.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import convert as cv
from . import outputs as out

__all__ = ["BagWriter", "RosbagsTypes", "typestore", "interface_dir", "read_messages", "DEFAULT_TOPICS",
           "check_output_path", "written_by_us", "SIGNATURE_KEY"]

DEFAULT_TOPICS = {
    "image": "image", "camera_info": "camera_info", "pose": "pose", "depth": "depth", "labels": "labels",
    "plan": "plan", "odom": "odom",
    "imagined_image": "imagined/image", "imagined_camera_info": "imagined/camera_info",
    "imagined_image_compressed": "imagined/image/compressed",
    "imagined_chunk": "imagined/chunk", "imagined_path": "imagined/path",
    "memory_points": "memory/points", "memory_stats": "memory/stats", "memory_frustums": "memory/frustums",
}
_CUSTOM = ("ImaginedChunk", "MemoryStats", "CandidateResult")


# metadata.yaml custom_data entry that marks a bag as written by BagWriter: only such a folder
# (holding nothing but its own bag files) is ever replaced with ``overwrite``
SIGNATURE_KEY = "mirage_ros.writer"
SIGNATURE = "mirage_ros.ros.bag.BagWriter"


def written_by_us(path: Union[str, Path]) -> Optional[str]:
    """None if ``path`` is a rosbag2 folder written by ``BagWriter`` that holds nothing but its
    own files; otherwise the reason it is not (to refuse replacing it)."""
    path = Path(path)
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is not a folder"
    meta = path / "metadata.yaml"
    if not meta.is_file():
        return "it is not a rosbag2 folder (no metadata.yaml)"
    try:
        import yaml

        info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
        custom = info.get("custom_data") or {}
        files = {str(f) for f in info.get("relative_file_paths") or []}
    except Exception:  # noqa: BLE001 - any unreadable metadata means: not ours
        return "its metadata.yaml is not rosbag2 metadata"
    if custom.get(SIGNATURE_KEY) != SIGNATURE:
        return "its metadata.yaml carries no mirage_ros writer signature"
    extra = sorted(p.name for p in path.iterdir() if p.name != "metadata.yaml" and p.name not in files)
    if extra:
        return f"it holds files this tool did not write ({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})"
    if any((path / f).is_dir() or (path / f).is_symlink() for f in files):
        return "its bag files are not plain files"
    return None


def check_output_path(path: Union[str, Path], overwrite: bool = False,
                      protect: Sequence[Union[str, Path]] = ()) -> Path:
    """The absolute output bag folder, or ValueError / FileExistsError saying why it may not be
    written: it is, contains or lies inside a ``protect``ed path (the inputs), or it exists and
    is not a bag this tool wrote (or ``overwrite`` is off)."""
    target = Path(os.path.abspath(os.path.expanduser(str(path))))
    real = target.resolve()
    for p in protect:
        q = Path(p).expanduser().resolve()
        if real == q or q in real.parents or real in q.parents:
            rel = "is" if real == q else ("lies inside" if q in real.parents else "contains")
            raise ValueError(f"--out: {target} {rel} the input {q}; write the output somewhere else")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(f"--out: {target} exists (pass --overwrite to replace a bag this tool wrote)")
        why = written_by_us(target)
        if why is not None:
            raise FileExistsError(f"--out: refusing to replace {target}: {why}; only a rosbag2 folder written by "
                                  "mirage_ros is ever replaced")
    return target


def _mkdir_parents(folder: Path) -> List[Path]:
    """mkdir -p; returns the folders it created, outermost first."""
    made = []
    p = folder
    while not p.exists():
        made.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return made[::-1]


def _stamp(stamp_ns: Optional[int], stamp_s: Optional[float]) -> int:
    if stamp_ns is not None:
        return int(stamp_ns)
    if stamp_s is not None:
        return int(round(float(stamp_s) * 1e9))
    raise ValueError("stamp: give stamp_ns (int nanoseconds) or stamp_s (seconds)")


def interface_dir() -> Path:
    """Folder holding mirage_ros' msg/ (source checkout, pip data_files, colcon or .ros_build install)."""
    here = Path(__file__).resolve()
    cands = [here.parents[2]]  # a source checkout: <repo>/msg
    cands += [p / "share" / "mirage_ros" for p in here.parents[3:7]]  # <prefix>/lib/pythonX/site-packages/...
    cands.append(Path(sys.prefix) / "share" / "mirage_ros")
    for pre in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if pre:
            cands.append(Path(pre) / "share" / "mirage_ros")
    for c in cands:
        if all((c / "msg" / f"{n}.msg").is_file() for n in _CUSTOM):
            return c
    looked = ", ".join(str(c) for c in cands)
    raise FileNotFoundError(f"mirage_ros msg/ definitions not found (looked in: {looked})")


_TYPESTORE = None


def typestore():
    """The ROS 2 Jazzy typestore of rosbags with mirage_ros' messages registered (cached)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        ts = get_typestore(Stores.ROS2_JAZZY)
        base = interface_dir()
        types = {}
        for n in _CUSTOM:
            types.update(get_types_from_msg((base / "msg" / f"{n}.msg").read_text(), f"mirage_ros/msg/{n}"))
        ts.register(types)
        _TYPESTORE = ts
    return _TYPESTORE


_NUMPY_BASE = {"bool": np.bool_, "int8": np.int8, "uint8": np.uint8, "byte": np.uint8, "char": np.uint8,
               "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
               "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64}


class RosbagsTypes:
    """``types`` namespace for the builders backed by rosbags dataclasses. Like rclpy messages,
    constructors here take any subset of fields as keywords; the rest get ROS defaults."""

    def __init__(self, store=None):
        self.store = store or typestore()
        self._factories: Dict[str, object] = {}

    @staticmethod
    def u8(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.uint8).reshape(-1)

    @staticmethod
    def seq(a) -> np.ndarray:
        return np.ascontiguousarray(a).reshape(-1)

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in cv.MSGTYPES:
            raise AttributeError(name)
        return self.factory(cv.MSGTYPES[name])

    def factory(self, msgtype: str):
        f = self._factories.get(msgtype)
        if f is None:
            cls = self.store.types[msgtype]

            def make(**kw):
                for fname, ftype in self.store.fielddefs[msgtype][1]:
                    if fname not in kw:
                        kw[fname] = self.default_of(ftype)
                    elif ftype[0] in (3, 4) and ftype[1][0][0] == 1 and not isinstance(kw[fname], np.ndarray) \
                            and ftype[1][0][1][0] in _NUMPY_BASE:
                        kw[fname] = np.asarray(kw[fname], dtype=_NUMPY_BASE[ftype[1][0][1][0]])
                return cls(**kw)

            make.msgtype = msgtype
            f = self._factories[msgtype] = make
        return f

    def default(self, msgtype: str):
        return self.factory(msgtype)()

    def default_of(self, ftype):
        kind, spec = ftype
        if kind == 1:  # BASE
            t = spec[0]
            if t == "string" or t == "wstring":
                return ""
            if t == "bool":
                return False
            if t.startswith("float"):
                return 0.0
            return 0
        if kind == 2:  # NAME
            return self.default(spec)
        sub, n = spec  # ARRAY (3) fixed n / SEQUENCE (4)
        if sub[0] == 1 and sub[1][0] in _NUMPY_BASE:
            return np.zeros(n if kind == 3 else 0, dtype=_NUMPY_BASE[sub[1][0]])
        if kind == 3:
            return [self.default_of(sub) for _ in range(n)]
        return []


class BagWriter:
    """Write mirage_ros topics to a rosbag2 (``storage='mcap'`` default, or ``'sqlite3'``).

    ``path`` is the bag folder. It must not exist, or, with ``overwrite``, be a bag folder this
    class wrote (its metadata.yaml carries ``SIGNATURE_KEY``) holding nothing else; it must not
    be, contain or lie inside a ``protect``ed path (the inputs). The bag is written into a hidden
    temporary folder beside ``path`` and renamed into place by ``close()``; ``abort()`` or an
    exception in a ``with`` block leaves ``path`` as it was and nothing behind. MCAP chunks are
    zstd-compressed unless ``compress=False``. Use as a context manager or call ``close()``.
    Every ``add_*`` takes stamps in integer nanoseconds; the bag's receive time is the stamp (or
    ``log_ns`` where given).
    """

    def __init__(self, path: Union[str, Path], storage: str = "mcap", namespace: str = "/",
                 overwrite: bool = False, topics: Optional[Dict[str, str]] = None,
                 protect: Sequence[Union[str, Path]] = (), compress: bool = True):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

        if storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage: expected 'mcap' or 'sqlite3', got {storage!r}")
        self.path = check_output_path(path, overwrite=overwrite, protect=protect)
        self.overwrite = overwrite
        self.protect = tuple(protect)
        self.store = typestore()
        self.types = RosbagsTypes(self.store)
        self.namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.topics = dict(DEFAULT_TOPICS, **(topics or {}))
        self._closed = False
        # Written into a fresh hidden folder next to the target and renamed into place by close():
        # an interrupted or failed run leaves the target as it was and nothing else behind.
        self._made_parents = _mkdir_parents(self.path.parent)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._writer = Writer(self._tmp / self.path.name, version=9 if storage == "mcap" else 8,
                                  storage_plugin=plugin)
            if compress and storage == "mcap":
                # zstd inside the MCAP's chunks: the file stays a plain .mcap that Foxglove, the
                # mcap library and ros2 bag read directly (not rosbag2's whole-file compression)
                self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
            self._writer.set_custom_data(SIGNATURE_KEY, SIGNATURE)
            self._writer.open()
        except BaseException:
            self._cleanup()
            raise
        self._conns: Dict[Tuple[str, str], object] = {}
        self.counts: Dict[str, int] = {}

    # -- generic ------------------------------------------------------------------------------
    def resolve(self, topic: str) -> str:
        topic = self.topics.get(topic, topic)
        return topic if topic.startswith("/") else f"{self.namespace}/{topic}"

    def write(self, topic: str, msg, stamp_ns: int, qos: str = "results") -> None:
        """Serialise a rosbags message (any type of the typestore) onto ``topic``."""
        from .qos import rosbags_qos

        name = self.resolve(topic)
        msgtype = msg.__msgtype__
        key = (name, msgtype)
        conn = self._conns.get(key)
        if conn is None:
            conn = self._writer.add_connection(name, msgtype, typestore=self.store,
                                               offered_qos_profiles=[rosbags_qos(qos)])
            self._conns[key] = conn
        self._writer.write(conn, int(stamp_ns), self.store.serialize_cdr(msg, msgtype))
        self.counts[name] = self.counts.get(name, 0) + 1

    def write_raw(self, topic: str, msgtype: str, raw: bytes, stamp_ns: int, qos: str = "sensor") -> bool:
        """Copy already serialised CDR bytes (e.g. from another bag). False if the type is unknown."""
        from .qos import rosbags_qos

        name = self.resolve(topic)
        key = (name, msgtype)
        conn = self._conns.get(key)
        if conn is None:
            if msgtype not in self.store.types:
                return False
            conn = self._writer.add_connection(name, msgtype, typestore=self.store,
                                               offered_qos_profiles=[rosbags_qos(qos)])
            self._conns[key] = conn
        self._writer.write(conn, int(stamp_ns), bytes(raw))
        self.counts[name] = self.counts.get(name, 0) + 1
        return True

    def close(self) -> None:
        """Finish the bag and move it into place (replacing an old bag of ours with ``overwrite``)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
            # checked again: something may have appeared at the target while we wrote
            check_output_path(self.path, overwrite=self.overwrite, protect=self.protect)
            old = None
            if self.path.exists():
                old = self._tmp / ".replaced"
                os.rename(self.path, old)
            try:
                os.rename(self._tmp / self.path.name, self.path)
            except BaseException:
                if old is not None:
                    os.rename(old, self.path)
                raise
        except BaseException:
            self._cleanup()
            raise
        shutil.rmtree(self._tmp, ignore_errors=True)  # now holds at most the replaced bag, ours

    def abort(self) -> None:
        """Drop what was written; the target stays as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.abort()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
        for d in reversed(self._made_parents):  # folders we created for the target, if still empty
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- inputs (a recording of a run) --------------------------------------------------------
    def add_image(self, topic: str, image: np.ndarray, stamp_ns: int, frame_id: str,
                  encoding: Optional[str] = None) -> None:
        self.write(topic, cv.image_msg(self.types, image, stamp_ns, frame_id, encoding), stamp_ns, "sensor")

    def add_depth(self, topic: str, depth_m: np.ndarray, stamp_ns: int, frame_id: str) -> None:
        self.add_image(topic, np.asarray(depth_m, dtype=np.float32), stamp_ns, frame_id, "32FC1")

    def add_camera_info(self, topic: str, K: np.ndarray, height: int, width: int, stamp_ns: int, frame_id: str) -> None:
        self.write(topic, cv.camera_info_msg(self.types, K, height, width, stamp_ns, frame_id), stamp_ns, "sensor")

    def add_pose(self, topic: str, camera_to_world: np.ndarray, stamp_ns: int, world_frame: str = "map") -> None:
        """PoseStamped of the camera optical frame in the world (camera_to_world)."""
        self.write(topic, cv.pose_stamped_msg(self.types, camera_to_world, stamp_ns, world_frame), stamp_ns, "sensor")

    def add_plan(self, camera_to_world: np.ndarray, stamps_ns: Sequence[int], world_frame: str = "map",
                 topic: str = "plan", stamp_ns: Optional[int] = None) -> None:
        msg = cv.path_msg(self.types, camera_to_world, stamps_ns, world_frame, stamp_ns)
        self.write(topic, msg, stamp_ns if stamp_ns is not None else int(stamps_ns[0]), "plan")

    # -- outputs ------------------------------------------------------------------------------
    def add_imagined_chunk(self, chunk, camera_to_world: np.ndarray, stamps_ns: Sequence[int], K: np.ndarray,
                           height: int, width: int, world_frame: str = "map",
                           frame_id: str = "mirage_imagined_optical_frame", goal_frames: Optional[int] = None,
                           backend: str = "readout", generative: bool = False, log_ns: Optional[int] = None,
                           extra_transforms: Optional[Dict[str, np.ndarray]] = None,
                           compressed: Optional[Tuple[str, int, int]] = None) -> None:
        """One backend ``ImaginedChunk``, as the node publishes it: per frame a /tf transform
        world_frame -> frame_id (the requested pose), ``imagined/camera_info`` and
        ``imagined/image``, all stamped with the frame's pose time; then the ``imagined/chunk``
        message (indices, poses, visibility; no images: each frame is stored once).
        ``camera_to_world`` / ``stamps_ns`` cover the whole request; ``chunk.frame_indices``
        (global within the request) index into them. Log times are the stamps unless ``log_ns``.
        ``extra_transforms`` {child frame: (N, 4, 4) world_from_child, indexed like
        ``camera_to_world``} go into each frame's /tf message too (e.g. the observed camera).
        ``compressed`` = (codec jpeg | png, jpeg quality, png level) also writes
        ``imagined/image/compressed`` per frame, as the node does with ``imagined.compressed``."""
        images = out.frame_images(self.types, chunk, stamps_ns, frame_id)
        zimgs = (out.frame_compressed_images(self.types, chunk, stamps_ns, frame_id, *compressed)
                 if compressed else None)
        infos = out.frame_camera_infos(self.types, chunk, stamps_ns, K, height, width, frame_id)
        tfs = out.frame_transforms(self.types, chunk, camera_to_world, stamps_ns, world_frame, frame_id)
        for child, Ts in (extra_transforms or {}).items():
            for j, i in enumerate(chunk.frame_indices):
                tfs[j].transforms.append(out.transform_stamped_msg(self.types, Ts[i], int(stamps_ns[i]), world_frame,
                                                                   child))
        for j, i in enumerate(chunk.frame_indices):
            t = int(stamps_ns[i]) if log_ns is None else log_ns
            self.write("/tf", tfs[j], t, "tf")
            self.write("imagined_camera_info", infos[j], t)
            self.write("imagined_image", images[j], t)
            if zimgs is not None:
                self.write("imagined_image_compressed", zimgs[j], t)
        msg = out.chunk_msg(self.types, chunk, camera_to_world, stamps_ns, K, height, width, world_frame, frame_id,
                            len(stamps_ns) if goal_frames is None else goal_frames, backend, generative)
        last = int(stamps_ns[chunk.frame_indices[-1]]) if len(chunk.frame_indices) else 0
        self.write("imagined_chunk", msg, last if log_ns is None else log_ns)  # complete after its last frame

    def add_transform(self, camera_to_world: np.ndarray, stamp_ns: int, parent: str, child: str,
                      static: bool = False) -> None:
        """``/tf`` (or ``/tf_static``): ``child`` in ``parent`` (T = parent_from_child) at ``stamp_ns``."""
        msg = out.tf_msg(self.types, [out.transform_stamped_msg(self.types, camera_to_world, stamp_ns, parent, child)])
        self.write("/tf_static" if static else "/tf", msg, stamp_ns, "tf_static" if static else "tf")

    def add_path(self, camera_to_world: np.ndarray, stamps_ns: Sequence[int], world_frame: str = "map",
                 log_ns: Optional[int] = None) -> None:
        msg = out.imagined_path_msg(self.types, camera_to_world, stamps_ns, world_frame)
        self.write("imagined_path", msg, int(stamps_ns[0]) if log_ns is None else log_ns)

    def add_memory(self, points, colors, stamp_ns: Optional[int] = None, world_frame: str = "map", max_points: int = 0,
                   *, stamp_s: Optional[float] = None) -> None:
        """``memory/points``: PointCloud2 xyz + rgb (points (N, 3) array or tensor, colours (N, 3)
        uint8), evenly subsampled to ``max_points`` when > 0. Stamp in ns, or ``stamp_s`` seconds."""
        stamp_ns = _stamp(stamp_ns, stamp_s)
        pts = points.detach().cpu().numpy() if hasattr(points, "detach") else np.asarray(points)
        col = np.asarray(colors, dtype=np.uint8)
        if max_points and pts.shape[0] > max_points:
            idx = np.linspace(0, pts.shape[0] - 1, max_points).astype(np.int64)
            pts, col = pts[idx], col[idx]
        self.write("memory_points", out.cloud_msg(self.types, cv.xyzrgb_to_structured(pts.astype(np.float32), col),
                                                  stamp_ns, world_frame), stamp_ns, "latched")

    def add_chunk(self, chunk, stamp_ns: Optional[int] = None, world_frame: str = "map",
                  frame_id: str = "mirage_imagined_optical_frame", frame_period_s: float = 0.1,
                  backend: str = "readout", generative: bool = False, *, stamp_s: Optional[float] = None) -> None:
        """A backend ``ImaginedChunk`` on its own (no request context): poses and intrinsics come
        from ``chunk.cameras``; frame j is stamped ``stamp + j * frame_period_s``. Writes
        imagined/image per frame, imagined/chunk and imagined/path (the chunk's poses)."""
        t0 = _stamp(stamp_ns, stamp_s)
        cams = list(chunk.cameras)
        if not cams:
            return
        T = np.stack([c.camera_to_world.numpy() for c in cams])
        stamps = [t0 + int(round(j * frame_period_s * 1e9)) for j in range(len(cams))]

        class _Local:  # frame_indices relative to this chunk's own cameras
            pass

        loc = _Local()
        loc.__dict__.update(chunk.__dict__)
        loc.frame_indices = list(range(len(cams)))
        c0 = cams[0]
        self.add_imagined_chunk(loc, T, stamps, c0.K.numpy(), c0.height, c0.width, world_frame, frame_id,
                                len(cams), backend, generative)
        self.add_path(T, stamps, world_frame)

    add_memory_cloud = add_memory

    def add_cloud(self, cloud: np.ndarray, stamp_ns: int, world_frame: str = "map") -> None:
        """``memory/points`` from a structured array (``MirageCore.cloud()``)."""
        self.write("memory_points", out.cloud_msg(self.types, cloud, stamp_ns, world_frame), stamp_ns, "latched")

    def add_stats(self, stats: Dict[str, object], stamp_ns: int, world_frame: str = "map") -> None:
        """``memory/stats`` from ``MirageCore.stats()`` (missing counters count as 0)."""
        full = {k: 0 for k in ("messages_received", "sets_completed", "frames_observed", "frames_skipped",
                               "inputs_rejected", "goals_succeeded", "goals_canceled", "goals_aborted",
                               "frames_imagined", "num_points", "nbytes", "channels", "stride")}
        full.update({"backend": "", "generative": False, "description": "", "last_rejection": ""})
        full.update(stats)
        self.write("memory_stats", out.stats_msg(self.types, full, stamp_ns, world_frame), stamp_ns)

    def add_frustums(self, observed: Sequence[np.ndarray], imagined: Sequence[np.ndarray], K, height: int, width: int,
                     stamp_ns: int, world_frame: str = "map", scale: float = 0.3) -> None:
        msg = out.frustum_markers(self.types, observed, imagined, K, height, width, scale, stamp_ns, world_frame)
        self.write("memory_frustums", msg, stamp_ns, "latched")


def read_messages(path: Union[str, Path], topics: Optional[Iterable[str]] = None):
    """Yield (topic, msgtype, log_time_ns, message) from a rosbag2 (MCAP or sqlite3), in time
    order, deserialised with the mirage_ros typestore (custom types included)."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in set(topics)]
        for conn, t, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, t, reader.deserialize(raw, conn.msgtype)
