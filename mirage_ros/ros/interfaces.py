"""Every topic, service and action of mirage_node, declared once (no rclpy).

The node creates its publishers and subscriptions from ``TOPICS`` (``active(p)`` says whether the
parameters ``p`` ask for one), ``tests/test_rviz_config.py`` checks RViz's displays against it and
``markdown_table()`` is the table of docs/node.md and README.md (a test keeps them in sync). Names
are relative, so a namespace or a remap moves them, except tf2's absolute ``/tf`` and ``/tf_static``. ``type`` is a
short name of ``convert.MSGTYPES``; ``qos`` a kind of ``qos.SPECS`` (sensors take
``qos.sensor_reliability`` / ``qos.sensor_depth``, results ``qos.results_depth``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

__all__ = ["Topic", "TOPICS", "SERVICES", "ACTIONS", "inputs", "outputs", "markdown_table"]


def _always(p: dict) -> bool:
    return True


@dataclass(frozen=True)
class Topic:
    key: str  # the node's name for it (publisher key, or the Intake handler's kind)
    name: str
    type: str
    qos: str
    direction: str  # "in" | "out"
    what: str
    active: Callable[[dict], bool] = _always


def _raw_image(p):
    return p["input.image_transport"] == "raw"


def _depth(transport):
    return lambda p: p["depth.provider"] == "topic" and p["input.depth_transport"] == transport


def _builtin_tf(p):  # tf2_ros, where installed, subscribes /tf itself (tf.listener auto or tf2_ros)
    return p["pose.source"] == "tf"


TOPICS: List[Topic] = [
    Topic("image", "image", "Image", "sensor", "in", "camera image (rgb8, bgr8, rgba8, bgra8, mono8)", _raw_image),
    Topic("compressed_image", "image/compressed", "CompressedImage", "sensor", "in",
          "jpeg / png as image_transport publishes it (input.image_transport: "
          "compressed)", lambda p: not _raw_image(p)),
    Topic("camera_info", "camera_info", "CameraInfo", "sensor", "in", "intrinsics of the images"),
    Topic("pose", "pose", "PoseStamped", "sensor", "in",
          "the camera OPTICAL frame in world_frame (camera_to_world; pose.source: pose)",
          lambda p: p["pose.source"] == "pose"),
    Topic("odometry", "odom", "Odometry", "sensor", "in", "the base in world_frame, camera at pose.base_to_camera "
          "(pose.source: odometry)", lambda p: p["pose.source"] == "odometry"),
    Topic("tf", "/tf", "TFMessage", "tf", "in", "camera pose at each image's stamp (pose.source: tf)", _builtin_tf),
    Topic("tf_static", "/tf_static", "TFMessage", "tf_static", "in", "static frames (pose.source: tf)", _builtin_tf),
    Topic("depth", "depth", "Image", "sensor", "in", "32FC1 metres or 16UC1 millimetres (depth.provider: topic)",
          _depth("raw")),
    Topic("compressed_depth", "depth/compressedDepth", "CompressedImage", "sensor", "in",
          "image_transport's compressedDepth png (input.depth_transport: compressedDepth)", _depth("compressedDepth")),
    Topic("labels", "labels", "Image", "sensor", "in", "mono8 labels; masks.exclude_labels never enter the memory "
          "(masks.provider: labels)", lambda p: p["masks.provider"] == "labels"),
    Topic("plan", "plan", "Path", "plan", "in", "streaming mode: the newest plan is imagined, a newer one preempts it"),
    Topic("image", "imagined/image", "Image", "results", "out", "one imagined frame per pose, stamped with its pose"),
    Topic("camera_info", "imagined/camera_info", "CameraInfo", "results", "out", "its intrinsics"),
    Topic("image_compressed", "imagined/image/compressed", "CompressedImage", "results", "out",
          "the same frames as jpeg / png (imagined.compressed)", lambda p: p["imagined.compressed"] != "none"),
    Topic("tf", "/tf", "TFMessage", "tf", "out", "world_frame -> imagined.frame_id at each frame's stamp"),
    Topic("chunk", "imagined/chunk", "ImaginedChunk", "results", "out",
          "per chunk: frame indices, poses, intrinsics, visibility, timings (not the images)"),
    Topic("path", "imagined/path", "Path", "results", "out", "the trajectory being imagined"),
    Topic("points", "memory/points", "PointCloud2", "latched", "out", "the memory as xyz + rgb (latched, "
                                                                      "rate-limited)"),
    Topic("frustums", "memory/frustums", "MarkerArray", "latched", "out", "observed and imagined cameras (latched)"),
    Topic("stats", "memory/stats", "MemoryStats", "results", "out", "memory size and input / goal counters"),
]

SERVICES = [("reset", "std_srvs/srv/Trigger", "clear the memory"),
            ("save_memory", "mirage_ros/srv/SaveMemory", "save the memory inside memory.save_dir"),
            ("load_memory", "mirage_ros/srv/LoadMemory", "load a memory file from memory.save_dir")]
ACTIONS = [("imagine", "mirage_ros/action/Imagine", "a Path of camera poses -> the imagined frames, chunk by chunk"),
           ("imagine_candidates", "mirage_ros/action/ImagineCandidates",
            "K candidate Paths (and a goal image) -> scores, then imagined chunks; nothing enters the memory")]


def inputs(p: dict) -> List[Topic]:
    return [t for t in TOPICS if t.direction == "in" and t.active(p)]


def outputs(p: dict) -> List[Topic]:
    return [t for t in TOPICS if t.direction == "out" and t.active(p)]


def markdown_table(p: Optional[dict] = None) -> str:
    """The node's topics, services and actions as a Markdown table: every one (docs/node.md), or
    with parameters ``p`` only the topics they use (README: the defaults). ``scripts/gen_docs.py``
    writes both; a test keeps them in sync."""
    rows = ["| | name | type | what |", "| --- | --- | --- | --- |"]
    for t in TOPICS if p is None else [t for t in TOPICS if t.active(p)]:
        rows.append(f"| {'sub' if t.direction == 'in' else 'pub'} | `{t.name}` | {t.type} | {t.what} |")
    for kind, items in (("service", SERVICES), ("action", ACTIONS)):
        for name, typ, what in items:
            rows.append(f"| {kind} | `{name}` | {typ.rsplit('/', 1)[-1]} | {what} |")
    return "\n".join(rows)
