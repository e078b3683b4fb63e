"""Every parameter of ``mirage_node``, declared in ONE place (no rclpy import).

The node declares exactly these (with their descriptions) and nothing else; ``config/mirage.yaml``
mirrors them (a test checks names, types and defaults); ``mirage replay --config`` reads the
same file. Dotted names nest in YAML (``memory.dedup`` is ``memory: {dedup: ...}``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

__all__ = ["Param", "PARAMS", "MODES", "defaults", "load_yaml", "validate", "ParamError", "to_yaml", "markdown_table",
           "check_change",
           "LAUNCH_ONLY"]


class ParamError(ValueError):
    """A parameter has an invalid value; the message names it."""


MODES = ("launch", "configure", "runtime")


@dataclass(frozen=True)
class Param:
    """One parameter. ``mode``: ``launch`` (fixed when the node starts: the parameter file or the
    command line; refused afterwards in every lifecycle state, because any DDS peer can call
    set_parameters and the lifecycle services: the folders and files a node reads and writes, and
    what decides which model is loaded), ``configure`` (takes effect at the next configure: set it
    while the node is unconfigured) or ``runtime`` (settable at any time). ``lo`` / ``hi``: the
    accepted range of a number (of each element of a list; of the length of a string). ``kind``
    ``path``: names a file or folder."""

    name: str
    default: Any
    description: str
    choices: Optional[tuple] = None
    mode: str = "configure"
    lo: Optional[float] = None
    hi: Optional[float] = None
    kind: str = ""

    @property
    def read_only(self) -> bool:
        return self.mode != "runtime"

    def bounds(self) -> str:
        """The accepted values, in words (the parameter table of docs/node.md)."""
        if self.choices:
            return " \\| ".join(map(str, self.choices))
        d = self.default
        if isinstance(d, bool):
            return "true \\| false"
        if isinstance(d, str):
            n = f"{int(self.lo or 0)} .. {int(self.hi or 1024)} characters"
            return ("a path, " if self.kind == "path" else "") + n
        lo, hi = _num(self.lo), _num(self.hi)
        if isinstance(d, list):
            fixed = self.name == "pose.base_to_camera" or self.name.startswith("spatia.")
            return f"{len(d) if fixed else 'up to 256'} numbers, each {lo} .. {hi}"
        return f"{lo} .. {hi}" + ("" if isinstance(d, int) else ", finite")


def _num(v) -> str:
    if v is None:
        return "?"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return str(int(v)) if abs(v) >= 1 or v == 0 else repr(v)
    if isinstance(v, int) and v >= 1 << 20 and (v & (v - 1)) == 0:
        return f"2^{v.bit_length() - 1}"
    return f"{v:g}" if isinstance(v, float) else (f"{v:,}" if abs(v) >= 10**6 else str(v))


PARAMS: List[Param] = [
    # -- backend (what generates frames) --
    Param("backend", "shipped",
          "world-model backend: shipped (the small world model trained by this project, in the package; weights_dir "
          "overrides its folder) | readout (no generative model: memory readouts decoded) | mirage (Wan2.2-TI2V-5B + "
          "Mirage side branch from weights_dir, or random weights of mirage.config) | spatia (Spatia's released "
          "model: Wan2.2-TI2V-5B in weights_dir, Spatia's VACE + LoRA in mirage.side_branch, conditioned on the "
          "memory as an RGB point cloud; without weights_dir random weights of mirage.config)",
          ("shipped", "readout", "mirage", "spatia"), mode="launch"),
    Param("codec", "thumbnail",
          "latent codec of the readout backend: thumbnail (analytic, no weights) | wan (Wan2.2 VAE from weights_dir)",
          ("thumbnail", "wan"), mode="launch"),
    Param("weights_dir", "",
          "folder with model weights (empty: none; the readout backend needs none)",
          mode="launch", kind="path"),
    Param("device", "cpu", "torch device for the backend and the memory (cpu, cuda, cuda:1 ...)", mode="launch"),
    Param("threads", 0,
          "torch CPU threads (0: torch's default, one per core). On a CPU that other busy processes share, use fewer "
          "than the cores: OpenMP threads spin-wait for a busy core (measured here: a chunk of the shipped model 16x "
          "slower with 2 threads while another process held one of 2 cores). Process-wide",
          lo=0, hi=1024),
    Param("chunk_size", 9, "frames per imagined chunk (one feedback message per chunk)", lo=1, hi=256),
    Param("steps", 0,
          "denoising steps per chunk (generative backends; 0: the model's own: 10 for shipped, 40 for Wan2.2)",
          lo=0, hi=1000),
    Param("prompt", "", "default text prompt when a goal gives none (mirage backend)", hi=4096),
    Param("sampler.pin_until", -1.0,
          "memory pinning (shipped and mirage backends): fraction of the denoising steps during which cells the "
          "memory sees are held at the noised readout (-1: the model's own, 0: off). Pinning trusts the memory: a "
          "stale memory (something moved in front of a remembered wall) is drawn as remembered",
          lo=-1.0, hi=1.0),
    Param("sampler.pin_paste", "model",
          "after denoising, copy the readout into the cells the memory sees: model (the model's own setting) | on | "
          "off",
          ("model", "on", "off")),
    Param("sampler.context_sigma", -1.0,
          "noise level the model's own earlier frames get as context (-1: the model's own; 0: clean)",
          lo=-1.0, hi=1.0),
    Param("sampler.noise_seed", -1,
          "sampler noise seed (-1: derived from the observation, so the same memory and request give the same video "
          "and different scenes different noise)",
          lo=-1, hi=2**31 - 1),
    Param("sampler.pin_generated", True,
          "memory pinning also holds cells that the request's own generated frames fill (off: only what was "
          "observed, and the sky dome)"),
    Param("sampler.paste_generated", False,
          "the paste also copies cells that the request's own generated frames fill (off by default: a generated "
          "cell reprojected whole is a hard-edged block; the model redraws it, guided by pinning)"),
    Param("sampler.decode_imagined", True,
          "decode what the observations did not supply with the codec's imagination decoder, when it has one "
          "(the shipped codec: smooth where the model guesses; observed cells keep the clean decoder)"),
    Param("sampler.decode_aligned", True,
          "draw each observed memory cell where its point projects, not on the latent grid (block codecs such as "
          "the shipped one; off: the cells' blocks sit on the grid, up to half a cell from where they belong)"),
    Param("readout.earliest_within", 0.3,
          "observed-first readout for generation: among points within this fraction of a cell's nearest depth the "
          "earliest inserted wins (0: plain frontmost-wins)",
          lo=0.0, hi=1.0),
    Param("mirage.config", "tiny",
          "mirage backend without weights_dir: tiny | small (the shipped model's size) | full model with RANDOM "
          "weights (tests, benchmarks)",
          ("tiny", "small", "full"), mode="launch"),
    Param("mirage.side_branch", "",
          "Mirage side-branch checkpoint file (mirage backend; empty: none); spatia backend: Spatia's VACE file, or "
          "the folder holding it and its LoRA",
          mode="launch", kind="path"),
    Param("mirage.lora", "",
          "LoRA checkpoint file (mirage and spatia backends; empty: none, or for spatia the one in "
          "mirage.side_branch's folder)",
          mode="launch", kind="path"),
    Param("spatia.resolution", [704, 1248],
          "spatia backend: the model's frame size H W (Spatia's 704 1248; requests and observations are resized to "
          "it; multiples of 32)",
          lo=32, hi=4096, mode="launch"),
    Param("spatia.rounds", [121, 81, 9],
          "spatia backend: frames of the first round, of later rounds and of history (each 4k + 1; Spatia's 121 81 9)",
          lo=5, hi=1001, mode="launch"),
    Param("spatia.negative_prompt_file", "",
          "spatia backend: Spatia's negative prompt, a text file or Spatia's inference.py (its NEGATIVE_PROMPT "
          "constant is read, never run; empty: none)",
          mode="launch", kind="path"),
    # -- perception --
    Param("depth.provider", "topic",
          "where depth of observed frames comes from: topic (subscribe `depth`) | da3 (Depth Anything 3) | memory",
          ("topic", "da3", "memory")),
    Param("depth.mm_scale", 0.001, "metres per unit of 16UC1 / mono16 depth images", lo=1e-9, hi=1.0),
    Param("depth.weights", "",
          "Depth Anything 3 weights folder (depth.provider da3; also depth of generated frames)",
          mode="launch", kind="path"),
    Param("depth.align", "scale",
          "align Depth Anything 3 depth to the memory's readout depth before inserting: scale | scale_shift | none",
          ("scale", "scale_shift", "none")),
    Param("depth.max", 1000.0,
          "depth beyond this many metres is no return (NaN, not lifted), like NaN and inf: a sensor's 1e30 m or a "
          "compressedDepth quantisation to 3e38 m never enters the memory (poses are bounded at 1e5 m)",
          lo=0.01, hi=1e5),
    Param("masks.provider", "none",
          "which cells to keep out of the memory: none | labels (subscribe `labels`, mono8 0 static / 1 sky / 2 "
          "dynamic) | sam3",
          ("none", "labels", "sam3")),
    Param("masks.exclude_labels", [1, 2],
          "label values excluded from the memory when masks.provider is labels",
          lo=0, hi=255),
    Param("masks.sam3_dir", "", "SAM3 weights folder (masks.provider sam3)", mode="launch", kind="path"),
    Param("masks.qwen_dir", "",
          "Qwen3-VL weights folder listing the entities SAM3 masks (masks.provider sam3; empty: a fixed list)",
          mode="launch", kind="path"),
    # -- memory --
    Param("memory.depth_downsample", "bilinear",
          "pixel -> latent depth downsampling",
          ("bilinear", "nearest", "area", "median")),
    Param("memory.feature_dtype", "bfloat16", "storage dtype of latent features", ("bfloat16", "float16", "float32")),
    Param("memory.dedup", True, "skip cells that re-observe stored surface (bounded growth)"),
    Param("memory.dedup_tolerance", 0.05, "relative depth agreement that counts as the same surface", lo=0.0, hi=1.0),
    Param("memory.on_revisit", "keep",
          "re-observed surface: keep the stored feature | refresh it",
          ("keep", "refresh")),
    Param("memory.sky", False,
          "keep cells with no point and at least memory.sky_fraction of +inf depth (REP 118: nothing within range) "
          "in a sky dome read by rotation only; turn on where +inf means sky (simulators' depth cameras outdoors), "
          "not where it means beyond a sensor's range indoors; generated frames never write it"),
    Param("memory.sky_fraction", 0.25, "share of a cell's pixels at +inf that makes it a sky-dome cell (memory.sky)",
          lo=0.01, hi=1.0),
    Param("memory.exclude_fraction", 0.375,
          "a latent cell is left out of the memory only when more than this share of its pixels is excluded (dynamic "
          "mask or +inf depth); a partly excluded kept cell takes the median depth of its other pixels (0: any pixel)",
          lo=0.0, hi=0.99),
    Param("memory.block_size", 1.0, "edge of the spatial index blocks (m)", lo=0.01, hi=1000.0),
    Param("memory.max_points", 0,
          "hard cap on stored points (0: none); inserts beyond it are refused",
          lo=0, hi=1_000_000_000),
    Param("memory.load_path", "", "memory file loaded at configure (empty: start empty)", mode="launch", kind="path"),
    Param("memory.save_dir", "",
          "the one folder save_memory / load_memory may write and read (requests name files inside it; empty: "
          "$XDG_DATA_HOME/mirage_ros/memories, i.e. ~/.local/share/mirage_ros/memories)",
          mode="launch", kind="path"),
    # -- observation --
    Param("observe.update", True,
          "keep writing observed frames into the memory after the first (false: initialise once)",
          mode="runtime"),
    Param("observe.min_interval", 0.0,
          "minimum time between memory updates from observed frames (s, by message stamps)",
          mode="runtime", lo=0.0, hi=86400.0),
    # -- input pairing --
    Param("sync.tolerance", 0.0,
          "0: image, camera_info, pose (and depth) of one set share one stamp (exact); > 0 (s, opt-in for sensors "
          "with their own clocks): each image takes the nearest partner within it that is nearer to no other image",
          lo=0.0, hi=10.0),
    Param("sync.queue_size", 30, "messages kept per input while waiting for partners", lo=1, hi=1000),
    Param("sync.max_bytes", 536870912,
          "bytes of decoded images, depth and labels kept in all pairing queues together (oldest dropped first): the "
          "pairing memory a flood of big frames can take",
          lo=1 << 20, hi=1 << 36),
    Param("sync.latch_camera_info", False, "pair every image with the newest camera_info regardless of stamp"),
    Param("pose.source", "pose",
          "camera pose input: pose (PoseStamped) | odometry (nav_msgs/Odometry on `odom`) | tf (/tf + /tf_static: "
          "world_frame -> the camera frame at each image's stamp)",
          ("pose", "odometry", "tf")),
    Param("pose.base_to_camera", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
          "camera optical frame in the odometry child frame: x y z qx qy qz qw (pose.source odometry)",
          lo=-1e5, hi=1e5),
    # -- tf (pose.source tf) --
    Param("tf.camera_frame", "",
          "frame whose pose in world_frame is the camera pose (pose.source tf; empty: each image's header.frame_id)",
          hi=256),
    Param("tf.camera_is_link", False,
          "the camera frame is a REP 103 camera LINK (x forward, y left, z up, as Isaac Sim and Gazebo publish), not "
          "its optical frame: append the fixed link -> optical rotation (quaternion -0.5 0.5 -0.5 0.5)"),
    Param("tf.wait", 0.5,
          "seconds an image waits for the transform at its stamp (tf later than the image, e.g. at start-up); then "
          "it is dropped with the reason",
          lo=0.0, hi=60.0),
    Param("tf.tolerance", 0.0,
          "a stamp up to this many seconds outside a tf edge's samples takes the nearest sample instead of failing "
          "(0: interpolate only, as tf2)",
          lo=0.0, hi=60.0),
    Param("tf.cache_time", 10.0, "seconds of tf history kept per edge", lo=0.001, hi=3600.0),
    Param("tf.listener", "auto",
          "auto (tf2_ros where installed, else builtin) | tf2_ros | builtin (the node's own /tf + /tf_static "
          "subscription and buffer)",
          ("auto", "tf2_ros", "builtin")),
    Param("tf.max_bytes", 67108864,
          "estimated bytes of the built-in tf buffer (samples and frames); beyond it the least recently updated or "
          "used frames are evicted (a flood of junk frames cannot lock the camera frame out)",
          lo=1 << 20, hi=1 << 34),
    Param("tf.frame_prefix", "",
          "prepended to tf.camera_frame, to image frame ids that lack it, and to imagined.frame_id (as "
          "robot_state_publisher's frame_prefix; mirage_multi_node: '<robot>/' unless set): robots sharing /tf keep "
          "apart",
          hi=256),
    # -- input transports --
    Param("input.image_transport", "raw",
          "colour input: raw (sensor_msgs/Image on `image`) | compressed (CompressedImage on `image/compressed`, "
          "jpeg or png as image_transport publishes it)",
          ("raw", "compressed")),
    Param("input.depth_transport", "raw",
          "depth input: raw (Image on `depth`) | compressedDepth (CompressedImage on `depth/compressedDepth`, "
          "image_transport's png format)",
          ("raw", "compressedDepth")),
    Param("input.max_pixels", 8294400,
          "largest image area (height x width pixels) accepted as an observation: image, depth, labels and "
          "camera_info; compressed images are checked from their file header before decoding (default 3840 x 2160)",
          lo=1, hi=16384 * 16384),
    # -- frames --
    Param("world_frame", "map", "world frame: poses, paths, clouds and markers are in it", lo=1, hi=256),
    Param("imagined.frame_id", "mirage_imagined_optical_frame", "frame_id of imagined images", lo=1, hi=256),
    Param("imagined.frame_rate", 10.0,
          "Hz; stamps of imagined frames whose pose has a zero stamp are path stamp + i / rate",
          lo=0.001, hi=1000.0),
    Param("imagined.max_frames", 1024, "goals and plans with more poses (or num_frames) are rejected", lo=1, hi=4096),
    Param("imagined.max_pixels", 2073600,
          "largest imagined frame area (height x width of the camera goals are imagined at, the last camera_info); "
          "goals for a larger camera are refused (default 1920 x 1080)",
          lo=1, hi=16384 * 16384),
    Param("imagined.feedback_frames", True,
          "action feedback carries the chunk's images (false: poses, coverage and timings only)",
          mode="runtime"),
    Param("imagined.compressed", "none",
          "also publish imagined/image/compressed (sensor_msgs/CompressedImage as image_transport's compressed "
          "plugin): none | jpeg | png",
          ("none", "jpeg", "png")),
    Param("imagined.jpeg_quality", 90,
          "JPEG quality of imagined/image/compressed (1 .. 100)",
          mode="runtime", lo=1, hi=100),
    Param("imagined.png_level", 3,
          "PNG compression level of imagined/image/compressed (0 .. 9)",
          mode="runtime", lo=0, hi=9),
    # -- goals --
    Param("goals.max_active", 1,
          "imagine goals run at once, each on one of this many fixed worker threads",
          lo=1, hi=64),
    Param("goals.max_queued", 10,
          "imagine goals waiting for a worker; a goal beyond this is rejected at once (the node logs why)",
          lo=0, hi=10000),
    Param("goals.max_seconds", 3600.0,
          "a running goal is aborted after this many seconds (checked after each chunk); a goal whose action client "
          "has vanished is cancelled after its current chunk whatever this says",
          lo=1.0, hi=604800.0),
    # -- candidates (imagine_candidates: K trajectories per request, for planners) --
    Param("candidates.max_candidates", 16,
          "imagine_candidates goals with more candidate paths are rejected (1 .. 64)",
          lo=1, hi=64),
    Param("candidates.max_total_frames", 256,
          "imagine_candidates goals with more frames in all (sum over candidates, after num_frames resampling) are "
          "rejected (1 .. 4096)",
          lo=1, hi=4096),
    # -- QoS --
    Param("qos.sensor_reliability", "best_effort",
          "sensor subscriptions: best_effort | reliable",
          ("best_effort", "reliable")),
    Param("qos.sensor_depth", 1, "sensor subscription history depth (1: keep only the newest message)", lo=1, hi=1000),
    Param("qos.results_depth", 10, "history depth of result publishers (RELIABLE)", lo=1, hi=1000),
    # -- visualisation --
    Param("viz.cloud_max_points", 200000,
          "memory/points is downsampled to at most this many points",
          mode="runtime", lo=1, hi=10_000_000),
    Param("viz.cloud_period", 1.0,
          "memory/points and memory/frustums are published at most once per period (s)",
          mode="runtime", lo=0.05, hi=86400.0),
    Param("viz.stats_period", 1.0, "memory/stats period (s)", mode="runtime", lo=0.05, hi=86400.0),
    Param("viz.frustum_scale", 0.3, "depth of drawn camera frustums (m)", mode="runtime", lo=0.001, hi=100.0),
    Param("viz.max_frustums", 50, "observed and imagined frustums kept for memory/frustums", lo=0, hi=10000),
    # -- lifecycle --
    Param("autostart", True, "configure and activate at start (false: wait for lifecycle transitions)", mode="launch"),
]

_BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMS}
LAUNCH_ONLY = tuple(p.name for p in PARAMS if p.mode == "launch")


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

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, not text
        raise ParamError(f"--config: {path} cannot be read ({type(exc).__name__}: "
                         f"{exc.strerror if isinstance(exc, OSError) else exc})") from None
    except yaml.YAMLError as exc:
        raise ParamError(f"--config: {path} is not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ParamError(f"--config: {path} holds a YAML {type(data).__name__}, expected a ROS 2 parameter file "
                         "(a mapping: /**: {ros__parameters: {...}})")
    flat: Dict[str, Any] = {}
    for key, section in data.items():
        k = str(key).strip("/")
        if k in ("**", node_name) or k.endswith("/" + node_name) or k == "**/" + node_name:
            params = (section or {}).get("ros__parameters", {}) if isinstance(section, dict) else None
            if not isinstance(params, dict) and params is not None:
                raise ParamError(f"--config: {path}: {key}.ros__parameters is a {type(params).__name__}, expected a "
                                 f"mapping")
            flat.update(_flatten(params or {}))
    return flat


def validate(values: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults overlaid with ``values``; unknown names, wrong types, bad choices, NaN / inf and
    values outside a parameter's ``lo`` .. ``hi`` raise ``ParamError`` naming the parameter."""
    out = defaults()
    for name, v in values.items():
        if name == "use_sim_time":
            continue
        p = _BY_NAME.get(name)
        if p is None:
            raise ParamError(f"{name}: unknown parameter (known: {', '.join(sorted(_BY_NAME))})")
        out[name] = _check(p, v)
    b2c = out["pose.base_to_camera"]
    if len(b2c) != 7:
        raise ParamError("pose.base_to_camera: expected 7 numbers x y z qx qy qz qw")
    if abs(math.sqrt(sum(float(x) ** 2 for x in b2c[3:])) - 1.0) > 1e-3:
        raise ParamError(f"pose.base_to_camera: the quaternion {b2c[3:]} is not of unit length")
    for name, n in _FIXED_LENGTH_INTS.items():
        if len(out[name]) != n or any(float(x) != int(x) for x in out[name]):
            raise ParamError(f"{name}: expected {n} whole numbers, got {out[name]!r}")
        out[name] = [int(x) for x in out[name]]
    return out


_FIXED_LENGTH_INTS = {"spatia.resolution": 2, "spatia.rounds": 3}


def _check(p: Param, v: Any) -> Any:
    name, d = p.name, p.default
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
        ok = isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        v = list(v) if ok else v
    else:  # pragma: no cover
        ok = True
    if not ok:
        raise ParamError(f"{name}: expected {type(d).__name__}"
                         + (" of numbers" if isinstance(d, list) else "") + f", got {v!r}")
    if p.choices and v not in p.choices:
        raise ParamError(f"{name}: {v!r} is not one of {', '.join(map(str, p.choices))}")
    if isinstance(d, str):
        lo, hi = int(p.lo or 0), int(p.hi or 1024)
        if not lo <= len(v) <= hi or "\x00" in v:
            raise ParamError(f"{name}: expected {lo} .. {hi} characters without NUL, got {len(v)}")
        return v
    if isinstance(d, bool) or p.lo is None:
        return v
    if isinstance(d, list):
        if len(v) > 256:
            raise ParamError(f"{name}: {len(v)} values, at most 256")
        for i, x in enumerate(v):
            if not (math.isfinite(float(x)) and p.lo <= x <= p.hi):
                raise ParamError(f"{name}[{i}]: expected {_num(p.lo)} .. {_num(p.hi)}, got {x!r}")
        return v
    if not (math.isfinite(float(v)) and p.lo <= v <= p.hi):
        raise ParamError(f"{name}: expected {_num(p.lo)} .. {_num(p.hi)}" + ("" if isinstance(d, int) else " (finite)")
                         + f", got {v!r}")
    return v


def check_change(new: Dict[str, Any], launch_values: Dict[str, Any], current: Dict[str, Any],
                 configured: bool) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """A ``set_parameters`` request (``new``: name -> value) judged as the node must, since any DDS
    peer may send one: a ``launch`` parameter keeps its launch value in every lifecycle state, a
    ``configure`` one changes only while unconfigured, every value is range-checked against the
    rest of ``current``. Returns (the reason it is refused, None) or (None, the validated parameters
    to apply: None while unconfigured, when rclpy stores them for the next configure)."""
    by = {p.name: p for p in PARAMS}
    new = {k: v for k, v in new.items() if k in by}
    for name, v in new.items():
        if by[name].mode == "launch" and v != launch_values.get(name):
            return (f"{name}: fixed at launch (set it in the parameter file or on the command line and restart the "
                    "node); no peer may change it"), None
    if configured:
        for name, v in new.items():
            if by[name].mode == "configure" and v != current.get(name):
                return f"{name}: takes effect at configure (deactivate, cleanup, set it, configure, activate)", None
    try:
        checked = validate({**current, **new})
    except ParamError as exc:
        return str(exc), None
    return None, (checked if configured else None)


def markdown_table() -> str:
    """The parameter table of docs/node.md, generated from PARAMS (``scripts/gen_docs.py``; a test keeps it in
    sync)."""
    lines = ["| parameter | default | settable | accepted values |", "| --- | --- | --- | --- |"]
    when = {"launch": "at launch only", "configure": "at configure", "runtime": "at any time"}
    for p in PARAMS:
        lines.append(f"| `{p.name}` | `{_fmt(p.default)}` | {when[p.mode]} | {p.bounds()} |")
    return "\n".join(lines) + "\n"


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
