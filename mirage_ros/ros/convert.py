"""Conversions between ROS 2 messages and numpy / mirage_ros types. No rclpy import.

Every function here is duck-typed: it reads and writes message *attributes* only, so the same
code serves rclpy messages (the node), rosbags' dataclasses (``mirage replay``, ``BagWriter``)
and plain test objects. Builders take a ``types`` namespace that supplies the message classes
(``types.Image``, ``types.Header`` ...) and ``types.u8(ndarray)``, which turns a uint8 array
into what that message library wants for ``uint8[]`` fields (``array.array`` for rclpy, the
ndarray itself for rosbags), and ``types.seq(ndarray)`` likewise for other numeric arrays
(a list for rclpy, a typed ndarray for rosbags).

Conventions
-----------
- Poses (``geometry_msgs/PoseStamped``, the poses of a ``nav_msgs/Path``) describe the camera
  OPTICAL frame (x right, y down, z forward; REP 103 ``*_optical_frame``) expressed in the world
  frame: the pose is ``camera_to_world``; mirage_ros' ``Camera.world_to_camera`` is its inverse.
- Quaternions are (x, y, z, w) and must be finite and of unit norm within ``QUAT_TOL``
  (we normalise within the tolerance, reject beyond it; never silently fix a bad pose).
- Images: rgb8, bgr8, rgba8, bgra8, mono8 (colour); 32FC1 (metres) and 16UC1 / mono16
  (millimetres) depth; rows may be padded (``step`` >= width * bytes per pixel); multi-byte
  pixels honour ``is_bigendian``. ``data`` must hold exactly ``height * step`` bytes.
- PointCloud2 colour is the PCL/RViz convention: a ``rgb`` FLOAT32 field whose 4 bytes are the
  uint32 0x00RRGGBB.

Everything raises ``ConversionError`` (a ``ValueError``) whose message names the offending field.
"""
from __future__ import annotations

import array
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "ConversionError", "QUAT_TOL", "IMAGE_ENCODINGS", "COLOR_ENCODINGS", "DEPTH_ENCODINGS",
    "stamp_to_ns", "ns_to_stamp", "time_msg", "header_msg",
    "image_to_array", "image_to_rgb", "image_to_depth", "image_to_labels", "array_to_image", "image_msg",
    "camera_info_to_K", "camera_info_to_camera", "camera_info_msg",
    "quaternions_to_matrices", "matrices_to_quaternions", "pose_to_matrix", "poses_to_matrices",
    "pose_stamped_to_matrix", "path_to_matrices", "odometry_to_matrix", "pose_msg", "pose_stamped_msg",
    "path_msg",
    "POINTFIELD_DTYPES", "structured_to_pointcloud", "pointcloud_msg", "xyzrgb_to_structured",
    "pointcloud_to_structured", "unpack_rgb", "ros_u8", "RclpyTypes", "MSGTYPES",
    "camera_info_is_distorted",
]

QUAT_TOL = 1e-3
# Finite is not enough: a pose at 1e300 m or a focal length of 1e-38 px is finite and fills the
# memory with inf/NaN points. The ranges of a sensible camera (positions, fields of view,
# principal point) are geometry's (``geometry.MAX_TRANSLATION``, ``geometry.intrinsics_problem``).


class ConversionError(ValueError):
    """Invalid message content; the message names the field. Nothing was produced."""


# -- byte buffers -------------------------------------------------------------------------------

def _buffer(data, field: str) -> np.ndarray:
    """A read-only uint8 view of a message's ``uint8[]`` field without copying where possible."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            data = np.ascontiguousarray(data).view(np.uint8)
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{field}: expected bytes, got {type(data).__name__} ({exc})") from None


def ros_u8(a: np.ndarray) -> array.array:
    """uint8 ndarray -> ``array.array('B')`` with one memcpy (what rclpy stores for ``uint8[]``;
    assigning anything else makes rclpy iterate element by element)."""
    out = array.array("B")
    out.frombytes(memoryview(np.ascontiguousarray(a)).cast("B"))
    return out


# Short names the builders use -> ROS 2 message types.
MSGTYPES: Dict[str, str] = {
    "Time": "builtin_interfaces/msg/Time", "Duration": "builtin_interfaces/msg/Duration",
    "Header": "std_msgs/msg/Header", "ColorRGBA": "std_msgs/msg/ColorRGBA",
    "Image": "sensor_msgs/msg/Image", "CameraInfo": "sensor_msgs/msg/CameraInfo",
    "RegionOfInterest": "sensor_msgs/msg/RegionOfInterest", "PointCloud2": "sensor_msgs/msg/PointCloud2",
    "CompressedImage": "sensor_msgs/msg/CompressedImage",
    "PointField": "sensor_msgs/msg/PointField",
    "Pose": "geometry_msgs/msg/Pose", "PoseStamped": "geometry_msgs/msg/PoseStamped",
    "Point": "geometry_msgs/msg/Point", "Quaternion": "geometry_msgs/msg/Quaternion",
    "Vector3": "geometry_msgs/msg/Vector3", "Path": "nav_msgs/msg/Path", "Odometry": "nav_msgs/msg/Odometry",
    "Transform": "geometry_msgs/msg/Transform", "TransformStamped": "geometry_msgs/msg/TransformStamped",
    "TFMessage": "tf2_msgs/msg/TFMessage",
    "Marker": "visualization_msgs/msg/Marker", "MarkerArray": "visualization_msgs/msg/MarkerArray",
    "ImaginedChunk": "mirage_ros/msg/ImaginedChunk", "MemoryStats": "mirage_ros/msg/MemoryStats",
    "CandidateResult": "mirage_ros/msg/CandidateResult",
}


class RclpyTypes:
    """``types`` namespace for the builders, backed by rclpy message classes (imported lazily)."""

    u8 = staticmethod(ros_u8)
    seq = staticmethod(lambda a: np.asarray(a).reshape(-1).tolist())

    def __getattr__(self, name):
        import importlib

        if name not in MSGTYPES:
            raise AttributeError(name)
        pkg, _, cls_name = MSGTYPES[name].split("/")
        cls = getattr(importlib.import_module(f"{pkg}.msg"), cls_name)
        setattr(self, name, cls)
        return cls


# -- time ---------------------------------------------------------------------------------------

def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Tuple[int, int]:
    ns = int(ns)
    return ns // 1_000_000_000, ns % 1_000_000_000


def time_msg(types, ns: int):
    sec, nanosec = ns_to_stamp(ns)
    return types.Time(sec=sec, nanosec=nanosec)


def header_msg(types, ns: int, frame_id: str):
    return types.Header(stamp=time_msg(types, ns), frame_id=frame_id)


# -- images -------------------------------------------------------------------------------------

# encoding -> (numpy dtype, channels)
IMAGE_ENCODINGS: Dict[str, Tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "mono16": (np.dtype(np.uint16), 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("32FC1", "16UC1", "mono16")
MAX_IMAGE_SIDE = 16384


def image_to_array(msg, field: str = "image", max_pixels: Optional[int] = None,
                   expect_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, C) or (H, W) array in native byte order (a view when possible).

    Validates encoding, size, ``step`` and the exact data length; removes row padding. An image of
    more than ``max_pixels`` (height x width), or of another size than ``expect_size``, is refused
    before anything is copied (``compressed.check_area``).
    """
    enc = str(msg.encoding)
    if enc not in IMAGE_ENCODINGS:
        raise ConversionError(f"{field}.encoding: unsupported encoding {enc!r} (supported: "
                              f"{', '.join(IMAGE_ENCODINGS)})")
    dtype, ch = IMAGE_ENCODINGS[enc]
    H, W, step = int(msg.height), int(msg.width), int(msg.step)
    if H <= 0 or W <= 0 or H > MAX_IMAGE_SIDE or W > MAX_IMAGE_SIDE:
        raise ConversionError(f"{field}: height x width = {H} x {W} is not a valid image size")
    if max_pixels is not None or expect_size is not None:
        from .compressed import check_area

        check_area(H, W, field, max_pixels, expect_size)
    row = W * ch * dtype.itemsize
    if step < row:
        raise ConversionError(f"{field}.step: {step} bytes is less than width * bytes per pixel = {W} * "
                              f"{ch * dtype.itemsize} = {row}")
    buf = _buffer(msg.data, f"{field}.data")
    if buf.size != H * step:
        raise ConversionError(
            f"{field}.data: {buf.size} bytes, expected height * step = {H} * {step} = {H * step}"
            + (" (data is short)" if buf.size < H * step else " (data is too long)")
        )
    rows = buf.reshape(H, step)
    if step != row:
        rows = rows[:, :row]
    if dtype.itemsize == 1:
        arr = rows.reshape(H, W, ch) if ch > 1 else rows.reshape(H, W)
        return arr
    dt = dtype.newbyteorder(">" if bool(msg.is_bigendian) else "<")
    arr = np.ascontiguousarray(rows).view(dt).reshape(H, W)  # no copy unless rows were padded
    if arr.dtype != dtype:
        arr = arr.astype(dtype)  # swap to native byte order
    return arr


def image_to_rgb(msg, field: str = "image", max_pixels: Optional[int] = None,
                 expect_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A colour sensor_msgs/Image -> (H, W, 3) uint8 RGB (contiguous; copies unless rgb8 unpadded)."""
    enc = str(msg.encoding)
    if enc not in IMAGE_ENCODINGS:
        image_to_array(msg, field)  # raises "unsupported encoding"
    if enc not in COLOR_ENCODINGS:
        raise ConversionError(
            f"{field}.encoding: {enc!r} is not a colour encoding (supported: {', '.join(COLOR_ENCODINGS)})"
        )
    a = image_to_array(msg, field, max_pixels, expect_size)
    if enc == "rgb8":
        a = np.ascontiguousarray(a)
        return a if a.flags.writeable else a.copy()  # rosbags buffers are read-only
    if enc == "bgr8":
        return np.ascontiguousarray(a[..., ::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(a[..., :3])
    if enc == "bgra8":
        return np.ascontiguousarray(a[..., 2::-1])
    return np.repeat(a[..., None], 3, axis=2)  # mono8


def image_to_depth(msg, field: str = "depth", mm_scale: float = 0.001, max_pixels: Optional[int] = None,
                   expect_size: Optional[Tuple[int, int]] = None, max_depth: Optional[float] = None) -> np.ndarray:
    """A depth sensor_msgs/Image -> (H, W) float32 metres; invalid (0, NaN, inf, < 0, and beyond
    ``max_depth`` m: the node's ``depth.max``) -> NaN.

    32FC1 is metres (REP 118); 16UC1 / mono16 is millimetres (times ``mm_scale``), 0 = no return.
    """
    enc = str(msg.encoding)
    if enc not in IMAGE_ENCODINGS:
        image_to_array(msg, field)  # raises "unsupported encoding"
    if enc not in DEPTH_ENCODINGS:
        raise ConversionError(f"{field}.encoding: {enc!r} is not a depth encoding (supported: "
                              f"{', '.join(DEPTH_ENCODINGS)})")
    a = image_to_array(msg, field, max_pixels, expect_size)
    if enc == "32FC1":
        d = a.astype(np.float32, copy=True)
    else:
        d = a.astype(np.float32) * np.float32(mm_scale)
    with np.errstate(invalid="ignore"):
        d[~(np.isfinite(d) & (d > 0) & (d <= (np.inf if max_depth is None else max_depth)))] = np.nan
    return d


def image_to_labels(msg, field: str = "labels", max_pixels: Optional[int] = None,
                    expect_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A mono8 / 8UC1 label image -> (H, W) uint8 (0 static, 1 sky, 2 dynamic, as mirage_ros.sim)."""
    enc = str(msg.encoding)
    if enc not in ("mono8", "8UC1"):
        raise ConversionError(f"{field}.encoding: expected mono8 or 8UC1 labels, got {enc!r}")
    return np.ascontiguousarray(image_to_array(msg, field, max_pixels, expect_size))


def array_to_image(arr: np.ndarray, encoding: Optional[str] = None) -> Dict[str, object]:
    """(H, W[, C]) array -> the Image fields (height, width, encoding, is_bigendian, step, data)
    with ``data`` a flat uint8 ndarray (no padding, native byte order). ``encoding`` defaults to
    rgb8 / rgba8 / mono8 for uint8, 32FC1 for float32 and 16UC1 for uint16."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if encoding is None:
        if a.dtype == np.uint8:
            encoding = {2: "mono8", 3: "rgb8",
                        4: "rgba8"}.get(a.ndim if a.ndim == 2 else a.shape[2] if a.shape[2] in (3, 4) else -1)
        elif a.dtype == np.float32:
            encoding = "32FC1"
        elif a.dtype == np.uint16:
            encoding = "16UC1"
        if encoding is None:
            raise ConversionError(f"array: cannot infer an encoding for shape {a.shape} dtype {a.dtype}")
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(f"encoding: unsupported {encoding!r}")
    dtype, ch = IMAGE_ENCODINGS[encoding]
    expect = 2 if ch == 1 else 3
    if a.ndim != expect or (ch > 1 and a.shape[2] != ch):
        raise ConversionError(f"array: shape {a.shape} does not fit encoding {encoding} ({ch} channel(s))")
    if a.dtype != dtype:
        raise ConversionError(f"array: dtype {a.dtype} does not fit encoding {encoding} ({dtype})")
    H, W = a.shape[:2]
    a = np.ascontiguousarray(a)
    if dtype.itemsize > 1 and not np.little_endian:  # pragma: no cover - big-endian hosts
        a = a.astype(dtype.newbyteorder("<"))
    return {
        "height": int(H), "width": int(W), "encoding": encoding, "is_bigendian": 0,
        "step": int(W * ch * dtype.itemsize), "data": a.reshape(-1).view(np.uint8),
    }


def image_msg(types, arr: np.ndarray, stamp_ns: int, frame_id: str, encoding: Optional[str] = None):
    f = array_to_image(arr, encoding)
    f["data"] = types.u8(f["data"])
    return types.Image(header=header_msg(types, stamp_ns, frame_id), **f)


# -- camera info --------------------------------------------------------------------------------

def camera_info_to_K(msg, field: str = "camera_info", max_pixels: Optional[int] = None) -> Tuple[np.ndarray, int, int]:
    """sensor_msgs/CameraInfo -> (K (3, 3) float64 for the image as published, height, width).

    Applies binning and region of interest as the CameraInfo documentation defines them.
    Rejects zero / negative / non-finite focal lengths, an empty size and (``max_pixels``) an
    image area beyond the node's ``input.max_pixels``, naming the field.
    """
    k = np.asarray(list(msg.k), dtype=np.float64)
    if k.shape != (9,):
        raise ConversionError(f"{field}.k: expected 9 values, got {k.shape[0]}")
    if not np.isfinite(k).all():
        raise ConversionError(f"{field}.k: contains NaN or inf")
    K = k.reshape(3, 3).copy()
    if K[0, 0] <= 0:
        raise ConversionError(f"{field}.k[0] (fx): focal length must be positive, got {K[0, 0]}")
    if K[1, 1] <= 0:
        raise ConversionError(f"{field}.k[4] (fy): focal length must be positive, got {K[1, 1]}")
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise ConversionError(f"{field}.k: expected [fx, s, cx, 0, fy, cy, 0, 0, 1], got {k.tolist()}")
    H, W = int(msg.height), int(msg.width)
    if H <= 0 or W <= 0:
        raise ConversionError(f"{field}: height x width = {H} x {W} (the camera is not calibrated)")
    bx, by = max(1, int(getattr(msg, "binning_x", 0) or 0)), max(1, int(getattr(msg, "binning_y", 0) or 0))
    roi = getattr(msg, "roi", None)
    if roi is not None and int(roi.width) > 0 and int(roi.height) > 0 and (int(roi.width), int(roi.height)) != (W, H):
        K[0, 2] -= int(roi.x_offset)
        K[1, 2] -= int(roi.y_offset)
        H, W = int(roi.height), int(roi.width)
    if bx > 1 or by > 1:
        K[0] /= bx
        K[1] /= by
        H, W = H // by, W // bx
    if H <= 0 or W <= 0:
        raise ConversionError(f"{field}: binning / roi leave a {H} x {W} image")
    if H > MAX_IMAGE_SIDE or W > MAX_IMAGE_SIDE or (max_pixels is not None and H * W > int(max_pixels)):
        raise ConversionError(f"{field}: height x width = {H} x {W} = {H * W:,} pixels, more than "
                              + (f"input.max_pixels = {int(max_pixels):,}" if max_pixels is not None
                                 else f"{MAX_IMAGE_SIDE} a side"))
    from ..geometry import intrinsics_problem

    bad = intrinsics_problem(K[0, 0], K[1, 1], K[0, 1], K[0, 2], K[1, 2], H, W)
    if bad is not None:
        raise ConversionError(f"{field}.{_K_FIELDS[bad[0]]}: {bad[1]}")
    return K, H, W


_K_FIELDS = {"fx": "k[0] (fx)", "fy": "k[4] (fy)", "cx": "k[2] (cx)", "cy": "k[5] (cy)", "skew": "k[1] (skew)"}


def camera_info_is_distorted(msg) -> bool:
    d = getattr(msg, "d", None)
    d = np.asarray(list(d) if d is not None else [], dtype=np.float64)
    return bool(d.size and np.any(np.abs(d) > 1e-9))


def camera_info_to_camera(msg, camera_to_world: Optional[np.ndarray] = None, field: str = "camera_info"):
    """CameraInfo (+ optional camera_to_world 4x4) -> ``mirage_ros.geometry.Camera``."""
    from .. import geometry
    from ..geometry import Camera, GeometryError

    K, H, W = camera_info_to_K(msg, field)
    E = np.eye(4) if camera_to_world is None else geometry.invert_rigid(np.asarray(camera_to_world, dtype=np.float64))
    try:
        return Camera(K, E, H, W)
    except GeometryError as exc:
        raise ConversionError(f"{field}: {exc}") from None


def camera_info_msg(types, K: np.ndarray, height: int, width: int, stamp_ns: int, frame_id: str):
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return types.CameraInfo(
        header=header_msg(types, stamp_ns, frame_id), height=int(height), width=int(width),
        distortion_model="plumb_bob", d=types.seq(np.zeros(5)),
        k=types.seq(K.reshape(-1)), r=types.seq(np.eye(3).reshape(-1)), p=types.seq(P.reshape(-1)),
        binning_x=0, binning_y=0,
        roi=types.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


# -- poses --------------------------------------------------------------------------------------

def quaternions_to_matrices(q: np.ndarray, field: str = "orientation", tol: float = QUAT_TOL) -> np.ndarray:
    """(N, 4) (x, y, z, w) -> (N, 3, 3): ``geometry.quaternions_to_matrices`` (rejects NaN/inf and
    norms off 1 by more than ``tol``, naming the first offending index) raising ConversionError."""
    from .. import geometry

    try:
        return geometry.quaternions_to_matrices(np.asarray(q, dtype=np.float64).reshape(-1, 4), field, tol)
    except geometry.GeometryError as exc:
        raise ConversionError(str(exc)) from None


def matrices_to_quaternions(R: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations -> (N, 4) (x, y, z, w) with w >= 0: ``geometry.matrices_to_quaternions``."""
    from .. import geometry

    return geometry.matrices_to_quaternions(np.asarray(R, dtype=np.float64).reshape(-1, 3, 3))


def _pose_arrays(poses: Sequence) -> Tuple[np.ndarray, np.ndarray]:
    n = len(poses)
    P = np.empty((n, 3))
    Q = np.empty((n, 4))
    for i, p in enumerate(poses):
        a, o = p.position, p.orientation
        P[i] = (a.x, a.y, a.z)
        Q[i] = (o.x, o.y, o.z, o.w)
    return P, Q


def poses_to_matrices(poses: Sequence, field: str = "poses[{i}]") -> np.ndarray:
    """geometry_msgs/Pose list -> (N, 4, 4) parent_from_frame (for camera poses: camera_to_world)."""
    from .. import geometry

    P, Q = _pose_arrays(poses)
    try:
        return geometry.poses_to_matrices(P, Q, field)
    except geometry.GeometryError as exc:
        raise ConversionError(str(exc)) from None


def pose_to_matrix(pose, field: str = "pose") -> np.ndarray:
    from .. import geometry

    P, Q = _pose_arrays([pose])
    try:
        return geometry.poses_to_matrices(P[0], Q[0], field)
    except geometry.GeometryError as exc:
        raise ConversionError(str(exc)) from None


def pose_stamped_to_matrix(msg, field: str = "pose") -> Tuple[int, str, np.ndarray]:
    """PoseStamped -> (stamp ns, frame_id, camera_to_world (4, 4))."""
    return stamp_to_ns(msg.header.stamp), str(msg.header.frame_id), pose_to_matrix(msg.pose, f"{field}.pose")


def odometry_to_matrix(msg, field: str = "odom") -> Tuple[int, str, str, np.ndarray]:
    """nav_msgs/Odometry -> (stamp ns, frame_id, child_frame_id, frame_from_child (4, 4))."""
    return (stamp_to_ns(msg.header.stamp), str(msg.header.frame_id), str(msg.child_frame_id),
            pose_to_matrix(msg.pose.pose, f"{field}.pose.pose"))


def path_to_matrices(msg, field: str = "path") -> Tuple[np.ndarray, np.ndarray, str]:
    """nav_msgs/Path -> (stamps (N,) int64 ns, camera_to_world (N, 4, 4), frame_id).

    Each pose's header.frame_id must be empty or equal to the path's frame_id.
    """
    frame = str(msg.header.frame_id)
    poses = list(msg.poses)
    for i, ps in enumerate(poses):
        f = str(ps.header.frame_id)
        if f and frame and f != frame:
            raise ConversionError(f"{field}.poses[{i}].header.frame_id: {f!r} differs from {field}.header.frame_id "
                                  f"{frame!r}")
        if f and not frame:
            frame = f
    stamps = np.fromiter((stamp_to_ns(ps.header.stamp) for ps in poses), dtype=np.int64, count=len(poses))
    T = poses_to_matrices([ps.pose for ps in poses], field + ".poses[{i}].pose")
    return stamps, T, frame


def pose_msg(types, T: np.ndarray, q: Optional[np.ndarray] = None):
    T = np.asarray(T, dtype=np.float64)
    if q is None:
        q = matrices_to_quaternions(T[None, :3, :3])[0]
    return types.Pose(
        position=types.Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        orientation=types.Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def pose_stamped_msg(types, T: np.ndarray, stamp_ns: int, frame_id: str, q: Optional[np.ndarray] = None):
    return types.PoseStamped(header=header_msg(types, stamp_ns, frame_id), pose=pose_msg(types, T, q))


def path_msg(types, T: np.ndarray, stamps_ns: Sequence[int], frame_id: str, stamp_ns: Optional[int] = None):
    """(N, 4, 4) camera_to_world + stamps -> nav_msgs/Path."""
    T = np.asarray(T, dtype=np.float64).reshape(-1, 4, 4)
    Q = matrices_to_quaternions(T[:, :3, :3])
    poses = [pose_stamped_msg(types, T[i], int(stamps_ns[i]), frame_id, Q[i]) for i in range(T.shape[0])]
    s = int(stamps_ns[0]) if stamp_ns is None and len(poses) else int(stamp_ns or 0)
    return types.Path(header=header_msg(types, s, frame_id), poses=poses)


# -- point clouds -------------------------------------------------------------------------------

# sensor_msgs/PointField datatypes
POINTFIELD_DTYPES: Dict[int, np.dtype] = {
    1: np.dtype(np.int8), 2: np.dtype(np.uint8), 3: np.dtype(np.int16), 4: np.dtype(np.uint16),
    5: np.dtype(np.int32), 6: np.dtype(np.uint32), 7: np.dtype(np.float32), 8: np.dtype(np.float64),
}
_DTYPE_TO_PF = {(v.kind, v.itemsize): k for k, v in POINTFIELD_DTYPES.items()}


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(N,) uint32 (or the same 4 bytes as float32) 0x00RRGGBB -> (N, 3) uint8."""
    p = np.ascontiguousarray(packed)
    if p.dtype != np.uint32:
        p = p.view(np.uint32)
    return np.stack([(p >> 16) & 255, (p >> 8) & 255, p & 255], axis=1).astype(np.uint8)


def xyzrgb_to_structured(points: np.ndarray, colors: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, 3) float xyz (+ (N, 3) uint8 colours) -> a structured array x, y, z[, rgb] (16 bytes a
    point with colour; ``rgb`` holds 0x00RRGGBB, declared FLOAT32 as PCL and RViz expect)."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ConversionError(f"points: expected shape (N, 3), got {pts.shape}")
    n = pts.shape[0]
    if colors is None:
        out = np.empty(n, dtype=np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8],
                                          "itemsize": 12}))
        raw = out.view(np.float32).reshape(n, 3) if n else np.empty((0, 3), np.float32)
        raw[...] = pts
        return out
    col = np.asarray(colors)
    if col.shape != (n, 3) or col.dtype != np.uint8:
        raise ConversionError(f"colors: expected (N, 3) uint8 with N={n}, got {col.shape} {col.dtype}")
    out = np.empty(n, dtype=np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<f4"],
                                      "offsets": [0, 4, 8, 12], "itemsize": 16}))
    raw = out.view(np.float32).reshape(n, 4) if n else np.empty((0, 4), np.float32)
    raw[:, :3] = pts
    u = raw.view(np.uint32)
    # 0x00RRGGBB in one pass over the colour bytes
    u[:, 3] = (col[:, 0].astype(np.uint32) << 16) | (col[:, 1].astype(np.uint32) << 8) | col[:, 2]
    return out


def structured_to_pointcloud(cloud: np.ndarray, float_fields: Sequence[str] = ("rgb", "rgba")) -> Dict[str, object]:
    """Structured array (N,) -> PointCloud2 fields (height=1, width=N, fields as
    (name, offset, datatype, count) tuples, point_step, row_step, data as flat uint8, is_dense).
    Fields named in ``float_fields`` with a 4-byte integer type are declared FLOAT32 (PCL colour
    convention). Sub-array fields (e.g. ``('normal', '<f4', (3,))``) get ``count``."""
    a = np.asarray(cloud)
    if a.dtype.names is None or a.ndim != 1:
        raise ConversionError(f"cloud: expected a 1-D structured array, got dtype {a.dtype} shape {a.shape}")
    fields = []
    for name in a.dtype.names:
        dt, off = a.dtype.fields[name][:2]
        base, count = (dt.base, int(np.prod(dt.shape))) if dt.shape else (dt, 1)
        if base.byteorder == ">" or (base.byteorder == "=" and not np.little_endian):
            raise ConversionError(f"cloud.{name}: big-endian fields are not supported")
        key = (base.kind if base.kind != "b" else "u", base.itemsize)
        if key not in _DTYPE_TO_PF:
            raise ConversionError(f"cloud.{name}: dtype {base} has no PointField datatype")
        pf = _DTYPE_TO_PF[key]
        if name in float_fields and base.itemsize == 4 and base.kind in "iu":
            pf = 7
        fields.append((name, int(off), int(pf), count))
    a = np.ascontiguousarray(a)
    step = a.dtype.itemsize
    dense = True
    for name in ("x", "y", "z"):
        if name in a.dtype.names and a.dtype[name].kind == "f" and a.size and not np.isfinite(a[name]).all():
            dense = False
    return {
        "height": 1, "width": int(a.shape[0]), "fields": fields, "is_bigendian": False,
        "point_step": int(step), "row_step": int(step * a.shape[0]), "data": a.view(np.uint8).reshape(-1),
        "is_dense": dense,
    }


def pointcloud_msg(types, cloud: np.ndarray, stamp_ns: int, frame_id: str, dense: Optional[bool] = None):
    """Structured array -> sensor_msgs/PointCloud2 (see ``structured_to_pointcloud``)."""
    f = structured_to_pointcloud(cloud)
    fields = [types.PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in f.pop("fields")]
    f["data"] = types.u8(f["data"])
    if dense is not None:
        f["is_dense"] = bool(dense)
    return types.PointCloud2(header=header_msg(types, stamp_ns, frame_id), fields=fields, **f)


def pointcloud_to_structured(msg, field: str = "cloud") -> np.ndarray:
    """sensor_msgs/PointCloud2 -> structured array (height*width,) with one field per PointField
    (a view of ``data`` when the layout allows). Honours point_step padding and row_step."""
    if bool(msg.is_bigendian):
        raise ConversionError(f"{field}.is_bigendian: big-endian clouds are not supported")
    names, formats, offsets = [], [], []
    for f in msg.fields:
        dt = POINTFIELD_DTYPES.get(int(f.datatype))
        if dt is None:
            raise ConversionError(f"{field}.fields[{f.name}].datatype: unknown {f.datatype}")
        names.append(str(f.name))
        cnt = int(f.count) if int(f.count) > 0 else 1
        formats.append((dt.newbyteorder("<"), (cnt,)) if cnt > 1 else dt.newbyteorder("<"))
        offsets.append(int(f.offset))
    step = int(msg.point_step)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": step})
    H, W, row = int(msg.height), int(msg.width), int(msg.row_step)
    buf = _buffer(msg.data, f"{field}.data")
    if row < W * step or buf.size < H * row:
        raise ConversionError(f"{field}.data: {buf.size} bytes, expected height * row_step = {H} * {row} with row_step "
                              f">= width * point_step = {W * step}")
    rows = buf[: H * row].reshape(H, row)[:, : W * step]
    return np.ascontiguousarray(rows).reshape(-1).view(dtype)
