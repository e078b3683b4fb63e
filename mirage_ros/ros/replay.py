"""``mirage replay INPUT_BAG --out OUTPUT_BAG``: mirage_node's logic over a rosbag2, no ROS needed.

Reads a rosbag2 (MCAP or sqlite3; rosbags' AnyReader) in time order and feeds image (or
image/compressed), camera_info, pose / odom / tf (/tf + /tf_static with ``pose.source: tf``;
an image waits ``tf.wait`` of bag time for its transform), depth (or depth/compressedDepth) and
labels to the same ``MirageCore`` the node uses (same parameters, same pairing, same
validation). Plans (nav_msgs/Path on ``plan``) are imagined when they arrive; a bag without
plans is imagined along its own recorded poses at the end (``--imagine recorded``). Writes
imagined/image, imagined/chunk, imagined/path, memory/points, memory/stats and memory/frustums
(and /tf, imagined/camera_info, imagined/image/compressed) to an MCAP rosbag2 (``ros2 bag play``
/ Foxglove).
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import closing
from pathlib import Path

__all__ = ["add_arguments", "run", "replay"]

INPUT_KINDS = ("image", "camera_info", "pose", "odom", "depth", "labels", "plan", "tf", "tf_static")
INPUT_TYPES = {"image": "sensor_msgs/msg/Image", "camera_info": "sensor_msgs/msg/CameraInfo",
               "pose": "geometry_msgs/msg/PoseStamped", "odom": "nav_msgs/msg/Odometry",
               "depth": "sensor_msgs/msg/Image", "labels": "sensor_msgs/msg/Image", "plan": "nav_msgs/msg/Path",
               "tf": "tf2_msgs/msg/TFMessage", "tf_static": "tf2_msgs/msg/TFMessage"}
COMPRESSED = "sensor_msgs/msg/CompressedImage"


class BagReadError(ValueError):
    """The input bag cannot be read (truncated, garbage, an unknown storage)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _guarded(src, iterable):
    """Iterate a rosbags reader; any failure of the reader becomes a BagReadError naming the file."""
    it = iter(iterable)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - rosbags raises many kinds on corrupt input
            raise BagReadError(f"input bag {src} is unreadable ({_one_line(exc)})") from None
        yield item


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="INPUT_BAG", help="rosbag2 folder or .mcap / .db3 file")
    p.add_argument("--out", required=True, metavar="OUTPUT_BAG", help="output rosbag2 folder (MCAP unless --storage "
                                                                      "sqlite3)")
    p.add_argument("--config", default=None, help="ROS 2 parameter file (like config/mirage.yaml)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a node parameter (YAML value), e.g. -p observe.update=false")
    p.add_argument("--namespace", default="/", help="namespace of the input topics (default /)")
    p.add_argument("--topic", action="append", default=[], metavar="KIND=TOPIC",
                   help=f"input topic for KIND ({', '.join(INPUT_KINDS)}), e.g. --topic image=/camera/color/image_raw")
    p.add_argument("--imagine", choices=("auto", "plans", "recorded", "none"), default="auto",
                   help="what to imagine: plans in the bag, the recorded pose trajectory (at the end), or nothing "
                        "(auto: plans if the bag has any, else recorded)")
    p.add_argument("--recorded-stride", type=int, default=1, help="use every k-th recorded pose for --imagine recorded")
    p.add_argument("--copy-inputs", action="store_true", help="also copy the input topics into the output bag")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT_BAG if it exists")
    p.add_argument("--quiet", action="store_true")


def _parse_overrides(items):
    import yaml

    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--param: expected NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as exc:
            raise ValueError(f"--param {it!r}: the value is not valid YAML "
                             f"({' '.join(str(exc).split())[:160]})") from None
    return out


def replay(input_bag, out_bag, params=None, namespace="/", topics=None, imagine="auto", recorded_stride=1,
           copy_inputs=False, storage="mcap", overwrite=False, log=print) -> dict:
    """Run the node logic over ``input_bag``; write results to ``out_bag``. Returns a summary."""
    import numpy as np
    from rosbags.highlevel import AnyReader

    from . import convert as cv
    from .bag import BagWriter, check_output_path, typestore
    from .core import STATUS_SUCCEEDED, GoalError, MirageCore

    t_start = time.perf_counter()
    src = input_bag if isinstance(input_bag, Path) else Path(input_bag)
    if not src.exists():
        raise FileNotFoundError(f"input bag {src} does not exist")
    # before any work: never write onto (or around) the input, never replace what we did not write
    check_output_path(out_bag, overwrite=overwrite, protect=[src])
    core = MirageCore(params or {}, log=lambda level, msg: log(f"[{level}] {msg}"))
    core.configure()
    p = core.p
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    names = {k: f"{ns}/{k}" for k in INPUT_KINDS}
    names.update({"tf": "/tf", "tf_static": "/tf_static"})  # tf2's absolute names
    types = dict(INPUT_TYPES)
    if p["input.image_transport"] == "compressed":  # image_transport's sub-topic names
        names["image"], types["image"] = f"{ns}/image/compressed", COMPRESSED
    if p["input.depth_transport"] == "compressedDepth":
        names["depth"], types["depth"] = f"{ns}/depth/compressedDepth", COMPRESSED
    names.update(topics or {})
    summary = {"messages": 0, "sets": 0, "observed": 0, "plans": 0, "chunks": 0, "frames": 0, "clouds": 0}
    # handlers take (message, bag time): images waiting for their transform wait in bag time
    intake = core.intake
    on_image = intake.on_compressed_image if p["input.image_transport"] == "compressed" else intake.on_image
    on_depth = intake.on_compressed_depth if p["input.depth_transport"] == "compressedDepth" else intake.on_depth
    tf_src = p["pose.source"] == "tf"
    handlers = {
        "image": lambda m, t: on_image(m, now_ns=t), "camera_info": lambda m, t: intake.on_camera_info(m),
        "depth": lambda m, t: on_depth(m), "labels": lambda m, t: intake.on_labels(m),
        "pose": (lambda m, t: intake.on_pose(m)) if p["pose.source"] == "pose" else None,
        "odom": (lambda m, t: intake.on_odometry(m)) if p["pose.source"] == "odometry" else None,
        "tf": (lambda m, t: intake.on_tf(m, False, now_ns=t)) if tf_src else None,
        "tf_static": (lambda m, t: intake.on_tf(m, True, now_ns=t)) if tf_src else None,
    }
    try:
        reader = AnyReader([src], default_typestore=typestore())
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises many kinds on corrupt input
        raise BagReadError(f"input bag {src} is unreadable ({_one_line(exc)})") from None
    with closing(reader), BagWriter(out_bag, storage=storage, namespace=namespace, overwrite=overwrite,
                           protect=[src]) as bag:
        present = {c.topic for c in reader.connections}
        need = ["image", "camera_info"] + ({"pose": ["pose"], "odometry": ["odom"]}.get(p["pose.source"], []))
        if p["depth.provider"] == "topic":
            need.append("depth")
        if p["masks.provider"] == "labels":
            need.append("labels")
        missing = [f"{k} ({names[k]})" for k in need if names[k] not in present]
        if tf_src and names["tf"] not in present and names["tf_static"] not in present:
            missing.append(f"tf ({names['tf']} or {names['tf_static']})")
        if missing:
            raise ValueError(f"input bag {src} lacks {', '.join(missing)}; it has: "
                             f"{', '.join(sorted(present)) or 'no topics'}"
                             " (use --topic KIND=TOPIC or --namespace)")
        by_topic = {names[k]: k for k in INPUT_KINDS if names[k] in present}
        for c in reader.connections:
            kind = by_topic.get(c.topic)
            if kind is not None and c.msgtype != types[kind]:
                raise ValueError(f"input bag {src}: topic {c.topic} ({kind}) was recorded as {c.msgtype}, "
                                 f"expected {types[kind]}")
        has_plans = names["plan"] in present
        mode = imagine if imagine != "auto" else ("plans" if has_plans else "recorded")
        conns = [c for c in reader.connections if c.topic in by_topic]
        recorded = []  # (stamp, camera_to_world) of observed poses
        last_cloud = last_stats = None
        t_last = 0

        def emit_memory(t):
            nonlocal last_cloud
            last_cloud = t
            bag.add_cloud(core.cloud(), t, p["world_frame"])
            K, H, W = core.last_camera if core.last_camera is not None else (None, 0, 0)
            bag.add_frustums(list(core.observed_poses), list(core.imagined_poses), K, H, W, t, p["world_frame"],
                             p["viz.frustum_scale"])
            summary["clouds"] += 1

        zc = p["imagined.compressed"]
        compressed = None if zc == "none" else (zc, p["imagined.jpeg_quality"], p["imagined.png_level"])

        def run_request(req, t):
            bag.add_path(req.camera_to_world, req.stamps_ns, p["world_frame"], log_ns=t)
            for chunk in core.imagine(req):
                bag.add_imagined_chunk(chunk, req.camera_to_world, req.stamps_ns, req.K, req.height, req.width,
                                       p["world_frame"], core.imagined_frame, len(req.cameras), core.backend.name,
                                       core.backend.generative, log_ns=t, compressed=compressed)
                summary["chunks"] += 1
                summary["frames"] += len(chunk.frame_indices)

        for conn, t, raw in _guarded(src, reader.messages(connections=conns)):
            kind = by_topic[conn.topic]
            t_last = max(t_last, t)
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - any decoder failure: one error naming the message
                raise BagReadError(f"input bag {src}: a {conn.msgtype} message on {conn.topic} at {t} ns does not "
                                   f"decode ({_one_line(exc)})") from None
            if copy_inputs:
                bag.write_raw(conn.topic, conn.msgtype, raw, t, {"plan": "plan", "tf": "tf", "tf_static": "tf_static"}
                              .get(kind, "sensor"))
            summary["messages"] += 1
            if kind == "plan":
                if mode != "plans":
                    continue
                summary["plans"] += 1
                try:
                    req = core.prepare(msg, 0, None, t)
                except GoalError as exc:
                    core.report.reject_goal(exc.message, kind="plan")
                    continue
                run_request(req, t)
                core.report.goal_outcome(STATUS_SUCCEEDED)
                continue
            h = handlers.get(kind)
            if h is None:
                continue
            s = h(msg, t)
            if s is not None:
                summary["sets"] += 1
                if core.observe(s) is not None:
                    summary["observed"] += 1
                recorded.append((s.stamp_ns, s["pose"]))
                if last_cloud is None or (t - last_cloud) >= p["viz.cloud_period"] * 1e9:
                    emit_memory(t)
            if last_stats is None or (t - last_stats) >= p["viz.stats_period"] * 1e9:
                last_stats = t
                bag.add_stats(core.stats(), t, p["world_frame"])
        if tf_src:  # images still waiting for their transform when the bag ends: the wait is over
            s = intake.poll_tf(t_last + int(p["tf.wait"] * 1e9) + 1)
            if s is not None and core.observe(s) is not None:
                summary["observed"] += 1
        if mode == "recorded" and recorded:
            k = max(1, int(recorded_stride))
            poses = recorded[::k]
            maxf = p["imagined.max_frames"]
            for start in range(0, len(poses), maxf):
                part = poses[start:start + maxf]
                T = np.stack([x[1] for x in part])
                path = cv.path_msg(bag.types, T, [x[0] for x in part], p["world_frame"])
                try:
                    req = core.prepare(path, 0, None, t_last)
                except GoalError as exc:
                    log(f"[warn] recorded trajectory not imagined: {exc.message}")
                    break
                run_request(req, t_last)
                core.report.goal_outcome(STATUS_SUCCEEDED)
        t_end = t_last + 1
        emit_memory(t_end)
        bag.add_stats(core.stats(), t_end, p["world_frame"])
        summary["topics"] = dict(bag.counts)
    summary.update({"mode": mode, "points": core.backend.memory.num_points, "rejected": core.counts["inputs_rejected"],
                    "last_rejection": core.last_rejection, "seconds": time.perf_counter() - t_start,
                    "backend": core.backend.description})
    return summary


def run(args) -> int:
    from .params import ParamError, load_yaml, validate

    try:
        params = load_yaml(args.config) if args.config else {}
        params.update(_parse_overrides(args.param))
        params = validate(params)
        topics = {}
        for it in args.topic:
            k, _, v = it.partition("=")
            if k not in INPUT_KINDS or not v:
                raise ValueError(f"--topic: expected KIND=TOPIC with KIND one of {', '.join(INPUT_KINDS)}, got {it!r}")
            topics[k] = v if v.startswith("/") else "/" + v
        log = (lambda *a, **k: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
        s = replay(args.input, args.out, params, args.namespace, topics, args.imagine, args.recorded_stride,
                   args.copy_inputs, args.storage, args.overwrite, log)
    except (ValueError, ParamError, OSError) as exc:  # OSError: a full disk, a folder for a file ...
        msg = str(exc) if not isinstance(exc, OSError) or not exc.strerror else f"{exc.strerror}: {exc.filename or ''}"
        print("mirage replay: " + " ".join(msg.split()), file=sys.stderr)  # one line; the output bag is removed
        return 2
    print(f"mirage replay: {s['messages']} input messages, {s['sets']} complete sets, {s['observed']} observed, "
          f"{s['points']} memory points; imagined {s['frames']} frames in {s['chunks']} chunks ({s['mode']}); "
          f"{s['rejected']} inputs rejected; wrote {args.out} in {s['seconds']:.1f} s")
    if not s["frames"]:
        print("mirage replay: nothing was imagined (no complete input set before the plans?)", file=sys.stderr)
    return 0
