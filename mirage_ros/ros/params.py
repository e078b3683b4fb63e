"""Every parameter of ``mirage_node``, declared in ONE place (no rclpy import).

The node declares exactly these (with their descriptions) and nothing else; ``config/mirage.yaml``
mirrors them (a test checks names, types and defaults); ``mirage replay --config`` reads the
same file. Dotted names nest in YAML (``memory.dedup`` is ``memory: {dedup: ...}``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

__all__ = ["Param", "PARAMS", "defaults", "load_yaml", "validate", "ParamError", "to_yaml"]


class ParamError(ValueError):
    """A parameter has an invalid value; the message names it."""


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    choices: Optional[tuple] = None
    read_only: bool = True  # most settings take effect at configure; a few are live (False)


PARAMS: List[Param] = [
    # -- backend (what generates frames) --
    Param("backend", "shipped", "world-model backend: shipped (the small world model trained by this project, in the package; weights_dir overrides its folder) | readout (no generative model: memory readouts decoded) | mirage (Wan2.2-TI2V-5B + Mirage side branch from weights_dir, or random weights of mirage.config)", ("shipped", "readout", "mirage")),
    Param("codec", "thumbnail", "latent codec of the readout backend: thumbnail (analytic, no weights) | wan (Wan2.2 VAE from weights_dir)", ("thumbnail", "wan")),
    Param("weights_dir", "", "folder with model weights (empty: none; the readout backend needs none)"),
    Param("device", "cpu", "torch device for the backend and the memory (cpu, cuda, cuda:1 ...)"),
    Param("threads", 0, "torch CPU threads (0: torch's default, one per core). On a CPU that other busy processes share, use fewer than the cores: OpenMP threads spin-wait for a busy core (measured here: a chunk of the shipped model 16x slower with 2 threads while another process held one of 2 cores). Process-wide"),
    Param("chunk_size", 9, "frames per imagined chunk (one feedback message per chunk)"),
    Param("steps", 0, "denoising steps per chunk (generative backends; 0: the model's own: 10 for shipped, 40 for Wan2.2)"),
    Param("prompt", "", "default text prompt when a goal gives none (mirage backend)"),
    Param("mirage.config", "tiny", "mirage backend without weights_dir: tiny | small (the shipped model's size) | full model with RANDOM weights (tests, benchmarks)", ("tiny", "small", "full")),
    Param("mirage.side_branch", "", "Mirage side-branch checkpoint file (mirage backend; empty: none)"),
    Param("mirage.lora", "", "LoRA checkpoint file (mirage backend; empty: none)"),
    # -- perception --
    Param("depth.provider", "topic", "where depth of observed frames comes from: topic (subscribe `depth`) | da3 (Depth Anything 3) | memory", ("topic", "da3", "memory")),
    Param("depth.mm_scale", 0.001, "metres per unit of 16UC1 / mono16 depth images"),
    Param("depth.weights", "", "Depth Anything 3 weights folder (depth.provider da3; also depth of generated frames)"),
    Param("depth.align", "scale", "align Depth Anything 3 depth to the memory's readout depth before inserting: scale | scale_shift | none", ("scale", "scale_shift", "none")),
    Param("masks.provider", "none", "which cells to keep out of the memory: none | labels (subscribe `labels`, mono8 0 static / 1 sky / 2 dynamic) | sam3", ("none", "labels", "sam3")),
    Param("masks.exclude_labels", [1, 2], "label values excluded from the memory when masks.provider is labels"),
    Param("masks.sam3_dir", "", "SAM3 weights folder (masks.provider sam3)"),
    Param("masks.qwen_dir", "", "Qwen3-VL weights folder listing the entities SAM3 masks (masks.provider sam3; empty: a fixed list)"),
    # -- memory --
    Param("memory.depth_downsample", "bilinear", "pixel -> latent depth downsampling", ("bilinear", "nearest", "area", "median")),
    Param("memory.feature_dtype", "bfloat16", "storage dtype of latent features", ("bfloat16", "float16", "float32")),
    Param("memory.dedup", True, "skip cells that re-observe stored surface (bounded growth)"),
    Param("memory.dedup_tolerance", 0.05, "relative depth agreement that counts as the same surface"),
    Param("memory.on_revisit", "keep", "re-observed surface: keep the stored feature | refresh it", ("keep", "refresh")),
    Param("memory.block_size", 1.0, "edge of the spatial index blocks (m)"),
    Param("memory.max_points", 0, "hard cap on stored points (0: none); inserts beyond it are refused"),
    Param("memory.load_path", "", "memory file loaded at configure (empty: start empty)"),
    Param("memory.save_dir", "", "the one folder save_memory / load_memory may write and read (requests name files inside it; empty: $XDG_DATA_HOME/mirage_ros/memories, i.e. ~/.local/share/mirage_ros/memories)"),
    # -- observation --
    Param("observe.update", True, "keep writing observed frames into the memory after the first (false: initialise once)", read_only=False),
    Param("observe.min_interval", 0.0, "minimum time between memory updates from observed frames (s, by message stamps)", read_only=False),
    # -- input pairing --
    Param("sync.tolerance", 0.0, "0: image, camera_info, pose (and depth) of one set share one stamp (exact); > 0 (s, opt-in for sensors with their own clocks): each image takes the nearest partner within it that is nearer to no other image"),
    Param("sync.queue_size", 30, "messages kept per input while waiting for partners"),
    Param("sync.latch_camera_info", False, "pair every image with the newest camera_info regardless of stamp"),
    Param("pose.source", "pose", "camera pose input: pose (PoseStamped) | odometry (nav_msgs/Odometry on `odom`) | tf (/tf + /tf_static: world_frame -> the camera frame at each image's stamp)", ("pose", "odometry", "tf")),
    Param("pose.base_to_camera", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], "camera optical frame in the odometry child frame: x y z qx qy qz qw (pose.source odometry)"),
    # -- tf (pose.source tf) --
    Param("tf.camera_frame", "", "frame whose pose in world_frame is the camera pose (pose.source tf; empty: each image's header.frame_id)"),
    Param("tf.camera_is_link", False, "the camera frame is a REP 103 camera LINK (x forward, y left, z up, as Isaac Sim and Gazebo publish), not its optical frame: append the fixed link -> optical rotation (quaternion -0.5 0.5 -0.5 0.5)"),
    Param("tf.wait", 0.5, "seconds an image waits for the transform at its stamp (tf later than the image, e.g. at start-up); then it is dropped with the reason"),
    Param("tf.tolerance", 0.0, "a stamp up to this many seconds outside a tf edge's samples takes the nearest sample instead of failing (0: interpolate only, as tf2)"),
    Param("tf.cache_time", 10.0, "seconds of tf history kept per edge"),
    Param("tf.listener", "auto", "auto (tf2_ros where installed, else builtin) | tf2_ros | builtin (the node's own /tf + /tf_static subscription and buffer)", ("auto", "tf2_ros", "builtin")),
    # -- input transports --
    Param("input.image_transport", "raw", "colour input: raw (sensor_msgs/Image on `image`) | compressed (CompressedImage on `image/compressed`, jpeg or png as image_transport publishes it)", ("raw", "compressed")),
    Param("input.depth_transport", "raw", "depth input: raw (Image on `depth`) | compressedDepth (CompressedImage on `depth/compressedDepth`, image_transport's png format)", ("raw", "compressedDepth")),
    # -- frames --
    Param("world_frame", "map", "world frame: poses, paths, clouds and markers are in it"),
    Param("imagined.frame_id", "mirage_imagined_optical_frame", "frame_id of imagined images"),
    Param("imagined.frame_rate", 10.0, "Hz; stamps of imagined frames whose pose has a zero stamp are path stamp + i / rate"),
    Param("imagined.max_frames", 1024, "goals and plans with more poses (or num_frames) are rejected"),
    Param("imagined.feedback_frames", True, "action feedback carries the chunk's images (false: poses, coverage and timings only)", read_only=False),
    Param("imagined.compressed", "none", "also publish imagined/image/compressed (sensor_msgs/CompressedImage as image_transport's compressed plugin): none | jpeg | png", ("none", "jpeg", "png")),
    Param("imagined.jpeg_quality", 90, "JPEG quality of imagined/image/compressed (1 .. 100)", read_only=False),
    Param("imagined.png_level", 3, "PNG compression level of imagined/image/compressed (0 .. 9)", read_only=False),
    # -- goals --
    Param("goals.max_active", 1, "imagine goals run at once, each on one of this many fixed worker threads"),
    Param("goals.max_queued", 10, "imagine goals waiting for a worker; a goal beyond this is rejected at once (the node logs why)"),
    # -- candidates (imagine_candidates: K trajectories per request, for planners) --
    Param("candidates.max_candidates", 16, "imagine_candidates goals with more candidate paths are rejected (1 .. 64)"),
    Param("candidates.max_total_frames", 256, "imagine_candidates goals with more frames in all (sum over candidates, after num_frames resampling) are rejected (1 .. 4096)"),
    # -- QoS --
    Param("qos.sensor_reliability", "best_effort", "sensor subscriptions: best_effort | reliable", ("best_effort", "reliable")),
    Param("qos.sensor_depth", 1, "sensor subscription history depth (1: keep only the newest message)"),
    Param("qos.results_depth", 10, "history depth of result publishers (RELIABLE)"),
    # -- visualisation --
    Param("viz.cloud_max_points", 200000, "memory/points is downsampled to at most this many points", read_only=False),
    Param("viz.cloud_period", 1.0, "memory/points and memory/frustums are published at most once per period (s)", read_only=False),
    Param("viz.stats_period", 1.0, "memory/stats period (s)", read_only=False),
    Param("viz.frustum_scale", 0.3, "depth of drawn camera frustums (m)", read_only=False),
    Param("viz.max_frustums", 50, "observed and imagined frustums kept for memory/frustums", read_only=False),
    # -- lifecycle --
    Param("autostart", True, "configure and activate at start (false: wait for lifecycle transitions)"),
]

_BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMS}


def defaults() -> Dict[str, Any]:
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default) for p in PARAMS}


def _flatten(d: dict, prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_yaml(path: Union[str, Path], node_name: str = "mirage") -> Dict[str, Any]:
    """Read a ROS 2 parameter file (``/**:`` or ``<node>:`` -> ``ros__parameters``) into flat
    ``{dotted name: value}`` (only this node's keys)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    flat: Dict[str, Any] = {}
    for key, section in data.items():
        k = str(key).strip("/")
        if k in ("**", node_name) or k.endswith("/" + node_name) or k == "**/" + node_name:
            flat.update(_flatten((section or {}).get("ros__parameters", {}) or {}))
    return flat


def validate(values: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults overlaid with ``values``; unknown names, wrong types and bad choices raise."""
    out = defaults()
    for name, v in values.items():
        if name == "use_sim_time":
            continue
        p = _BY_NAME.get(name)
        if p is None:
            raise ParamError(f"{name}: unknown parameter (known: {', '.join(sorted(_BY_NAME))})")
        d = p.default
        if isinstance(d, bool):
            ok = isinstance(v, bool)
        elif isinstance(d, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(d, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            v = float(v) if ok else v
        elif isinstance(d, str):
            ok = isinstance(v, str)
        elif isinstance(d, list):
            ok = isinstance(v, (list, tuple))
            v = list(v) if ok else v
        else:  # pragma: no cover
            ok = True
        if not ok:
            raise ParamError(f"{name}: expected {type(d).__name__}, got {v!r}")
        if p.choices and v not in p.choices:
            raise ParamError(f"{name}: {v!r} is not one of {', '.join(map(str, p.choices))}")
        out[name] = v
    if not 0 <= out["threads"] <= 1024:
        raise ParamError(f"threads: expected 0 (torch's default) .. 1024, got {out['threads']}")
    if out["chunk_size"] < 1:
        raise ParamError(f"chunk_size: expected >= 1, got {out['chunk_size']}")
    if out["imagined.max_frames"] < 1:
        raise ParamError(f"imagined.max_frames: expected >= 1, got {out['imagined.max_frames']}")
    if not 1 <= out["goals.max_active"] <= 64:
        raise ParamError(f"goals.max_active: expected 1 .. 64, got {out['goals.max_active']}")
    if not 0 <= out["goals.max_queued"] <= 10000:
        raise ParamError(f"goals.max_queued: expected 0 .. 10000, got {out['goals.max_queued']}")
    if not 1 <= out["candidates.max_candidates"] <= 64:
        raise ParamError(f"candidates.max_candidates: expected 1 .. 64, got {out['candidates.max_candidates']}")
    if not 1 <= out["candidates.max_total_frames"] <= 4096:
        raise ParamError(f"candidates.max_total_frames: expected 1 .. 4096, got {out['candidates.max_total_frames']}")
    if out["imagined.frame_rate"] <= 0:
        raise ParamError(f"imagined.frame_rate: expected > 0, got {out['imagined.frame_rate']}")
    if not 1 <= out["imagined.jpeg_quality"] <= 100:
        raise ParamError(f"imagined.jpeg_quality: expected 1 .. 100, got {out['imagined.jpeg_quality']}")
    if not 0 <= out["imagined.png_level"] <= 9:
        raise ParamError(f"imagined.png_level: expected 0 .. 9, got {out['imagined.png_level']}")
    for name in ("tf.wait", "tf.tolerance"):
        if not out[name] >= 0:
            raise ParamError(f"{name}: expected >= 0 s, got {out[name]}")
    if not out["tf.cache_time"] > 0:
        raise ParamError(f"tf.cache_time: expected > 0 s, got {out['tf.cache_time']}")
    if len(out["pose.base_to_camera"]) != 7:
        raise ParamError("pose.base_to_camera: expected 7 numbers x y z qx qy qz qw")
    return out


def _fmt(v) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def to_yaml() -> str:
    """config/mirage.yaml as generated from PARAMS (``python -m mirage_ros.ros.params > config/mirage.yaml``)."""
    lines = [
        "# mirage_node parameters. Mirrors mirage_ros/ros/params.py, the one place they are declared",
        "# (regenerate: python -m mirage_ros.ros.params > config/mirage.yaml; a test checks they agree).",
        "#   ros2 run mirage_ros mirage_node --ros-args --params-file config/mirage.yaml",
        "#   ros2 launch mirage_ros mirage.launch.py config:=/path/to/your.yaml",
        "#   mirage replay IN_BAG --out OUT_BAG --config config/mirage.yaml",
        "/**:",
        "  ros__parameters:",
    ]
    group = None
    for p in PARAMS:
        parts = p.name.split(".")
        if len(parts) == 1:
            group = None
            lines += [f"    # {p.description}", f"    {p.name}: {_fmt(p.default)}"]
        else:
            if parts[0] != group:
                group = parts[0]
                lines.append(f"    {group}:")
            lines += [f"      # {p.description}", f"      {parts[1]}: {_fmt(p.default)}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(to_yaml(), end="")
