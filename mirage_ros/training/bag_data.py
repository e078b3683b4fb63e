"""``mirage data bag``: training clips from a rosbag2 of a robot or simulator.

The bag's image, camera_info, pose (PoseStamped, camera optical frame in the world; or Odometry +
``pose.base_to_camera``), optional depth (32FC1 m / 16UC1 mm) and labels go through the node's own
ROS-free path (``ros.core.MirageCore``: the same conversions, validation and exact-stamp pairing),
so a dataset sees exactly what the node would observe. Depth comes from the bag or from Depth
Anything 3 (``--depth da3 --depth-weights DIR``, scale from the camera poses); labels, when
recorded, exclude sky and dynamic pixels (``masks.exclude_labels``). The paired frames are cut
into clips of ``--frames`` and written with ``clips.build_clip``, like ``mirage data sim``.
"""
from __future__ import annotations

import sys
from collections import deque
from contextlib import closing
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

from .clips import ClipSpec, build_clip

__all__ = ["iter_synced_frames", "read_synced_frames", "generate_from_bag"]

KINDS = ("image", "camera_info", "pose", "odom", "depth", "labels")


def _topics(items: List[str]) -> Dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--topic: expected KIND=TOPIC, got {it!r}")
        k, v = it.split("=", 1)
        if k not in KINDS:
            raise ValueError(f"--topic: unknown kind {k!r} (expected one of {', '.join(KINDS)})")
        out[k] = v
    return out


def iter_synced_frames(bag, topics: Dict[str, str], depth_from_bag: bool = True, tolerance: float = 0.0,
                       log=print, namespace: str = "/", info: Optional[Dict] = None) -> Iterator[Dict]:
    """Paired frames of ``bag`` in time order, ONE AT A TIME (memory: one frame, whatever the bag's
    length): dicts with stamp, rgb (H, W, 3), K (3, 3), camera_to_world (4, 4), depth (H, W) or
    None, labels (H, W) or None. Every message goes through the node's conversions and bounds
    (``MirageCore``: input.max_pixels before decoding, depth.max, exact pairing) and every set
    through the node's own ``Intake.check_set`` (K matches the image, valid depth, pose); a
    refused set is counted in ``info["rejected"]`` and skipped, as the node skips it. ``info`` also
    gets pose_kind and exclude_labels."""
    from rosbags.highlevel import AnyReader

    from ..ros.bag import typestore
    from ..ros.core import MirageCore
    from ..ros.replay import INPUT_TYPES, BagReadError, _guarded, _one_line

    info = {} if info is None else info
    src = Path(bag)
    if not src.exists():
        raise FileNotFoundError(f"bag: {src} does not exist")
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    names = {k: f"{ns}/{k}" for k in KINDS}
    names.update(topics)
    try:
        reader = AnyReader([src], default_typestore=typestore())
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises many kinds on corrupt input
        raise BagReadError(f"bag: {src} is unreadable ({_one_line(exc)})") from None
    with closing(reader):
        present = {c.topic for c in reader.connections}
        pose_kind = "pose" if names["pose"] in present else "odom"
        has_depth = depth_from_bag
        has_labels = names["labels"] in present
        need = ["image", "camera_info", pose_kind] + (["depth"] if has_depth else [])
        missing = [f"{k} ({names[k]})" for k in need if names[k] not in present]
        if missing:
            raise ValueError(f"bag: {src} lacks {', '.join(missing)}; it has: "
                             f"{', '.join(sorted(present)) or 'no topics'} "
                             "(use --topic KIND=TOPIC, or --depth da3 without a depth topic)")
        params = {"depth.provider": "topic" if has_depth else "memory",
                  "masks.provider": "labels" if has_labels else "none",
                  "sync.tolerance": float(tolerance), "pose.source": "pose" if pose_kind == "pose" else "odometry"}
        core = MirageCore(params,
                          log=lambda level, msg: log(f"[{level}] {msg}") if level in ("warn", "error") else None)
        info.update(pose_kind=pose_kind, exclude_labels=list(core.p["masks.exclude_labels"]), rejected=0, paired=0,
                    has_depth=has_depth, has_labels=has_labels, core=core)
        intake = core.intake
        handlers = {"image": intake.on_image, "camera_info": intake.on_camera_info, "pose": intake.on_pose,
                    "odom": intake.on_odometry, "depth": intake.on_depth if has_depth else None,
                    "labels": intake.on_labels if has_labels else None}
        by_topic = {names[k]: k for k in KINDS if names[k] in present and handlers.get(k) is not None
                    and (k != "odom" or pose_kind == "odom") and (k != "pose" or pose_kind == "pose")}
        for c in reader.connections:
            kind = by_topic.get(c.topic)
            if kind is not None and c.msgtype != INPUT_TYPES[kind]:
                raise ValueError(f"bag: {src}: topic {c.topic} ({kind}) was recorded as {c.msgtype}, expected "
                                 f"{INPUT_TYPES[kind]}")
        conns = [c for c in reader.connections if c.topic in by_topic]
        for conn, t, raw in _guarded(src, reader.messages(connections=conns)):
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001
                raise BagReadError(f"bag: {src}: a {conn.msgtype} message on {conn.topic} at {t} ns does not decode "
                                   f"({_one_line(exc)})") from None
            s = handlers[by_topic[conn.topic]](msg)
            info["rejected"] = core.counts["inputs_rejected"]
            if s is None:
                continue
            v = intake.check_set(s, need_depth=has_depth)  # the node's own validation of a set
            info["rejected"] = core.counts["inputs_rejected"]
            if v is None:
                continue
            info["paired"] += 1
            yield {"stamp": s.stamp_ns, "rgb": v["rgb"], "K": v["K"], "camera_to_world": v["T"], "depth": v["depth"],
                   "labels": v["labels"]}


def read_synced_frames(bag, topics: Dict[str, str], depth_from_bag: bool = True, tolerance: float = 0.0,
                       log=print, namespace: str = "/") -> Dict:
    """All paired frames of ``bag`` stacked (``iter_synced_frames``; for small bags and tests):
    stamps, rgb (N, H, W, 3), K (N, 3, 3), camera_to_world (N, 4, 4), depth or None, labels or None."""
    info: Dict = {}
    sets = list(iter_synced_frames(bag, topics, depth_from_bag, tolerance, log, namespace, info))
    if not sets:
        raise ValueError(_no_sets(bag, info))
    sizes = {f["rgb"].shape for f in sets}
    if len(sizes) != 1:
        raise ValueError(f"bag: {bag}: images change size within the bag ({sorted(sizes)}); split it")
    return {
        "stamps": [f["stamp"] for f in sets], "rgb": np.stack([f["rgb"] for f in sets]),
        "K": np.stack([f["K"] for f in sets]), "camera_to_world": np.stack([f["camera_to_world"] for f in sets]),
        "depth": np.stack([f["depth"] for f in sets]) if info["has_depth"] else None,
        "labels": np.stack([f["labels"] for f in sets]) if info["has_labels"] else None,
        "exclude_labels": info["exclude_labels"], "pose_kind": info["pose_kind"], "rejected": info["rejected"],
    }


def _no_sets(bag, info: Dict) -> str:
    core = info.get("core")
    return (f"bag: {bag}: no complete image + camera_info + pose{' + depth' if info.get('has_depth') else ''} set the "
            f"node would observe (pairing is by exact stamp unless --tolerance; rejected: "
            f"{(core.last_rejection if core is not None else '') or 'none'})")


def _resize_one(frame: Dict, size) -> Dict:
    import cv2

    H0, W0 = frame["rgb"].shape[:2]
    H, W = size
    if (H, W) == (H0, W0):
        return frame
    out = dict(frame)
    out["rgb"] = cv2.resize(frame["rgb"], (W, H), interpolation=cv2.INTER_AREA)
    K = frame["K"].copy()
    K[0, :] *= W / W0
    K[1, :] *= H / H0
    out["K"] = K
    for key in ("depth", "labels"):
        if frame[key] is not None:
            out[key] = cv2.resize(frame[key], (W, H), interpolation=cv2.INTER_NEAREST)
    return out


def generate_from_bag(args) -> Dict:
    """Stream the bag into clips: frames are read, checked, resized and (``--depth da3``) given
    depth one at a time; a clip is built as soon as its ``--frames`` frames are in, so memory holds
    one clip, not the bag. On any failure (a bad frame, a full disk) the dataset folder is removed
    (``DatasetWriter.abort``): nothing partial is left."""
    import torch
    from tqdm.auto import tqdm

    from ..geometry import Camera, invert_rigid
    from ..world_model.codec import load_codec, make_codec
    from .dataset import DatasetWriter

    codec = load_codec(args.codec_weights) if args.codec_weights else make_codec(args.codec)
    F = int(args.frames)
    stride = int(args.clip_stride or F)
    if F < 1 or stride < 1:
        raise ValueError(f"frames / clip-stride: expected >= 1, got {F} / {stride}")
    da3 = None
    if args.depth == "da3":
        if not args.depth_weights:
            raise ValueError("depth: --depth da3 needs --depth-weights (a local Depth Anything 3 folder)")
        from ..perception.depth import make_depth_provider

        da3 = make_depth_provider("da3", weights=args.depth_weights)
    spec = ClipSpec(memory=args.memory)
    info: Dict = {}
    frames = iter_synced_frames(args.bag, _topics(args.topic), depth_from_bag=args.depth == "bag",
                                tolerance=args.tolerance, log=lambda m: print(m, file=sys.stderr),
                                namespace=args.namespace, info=info)
    writer = None
    buf: deque = deque()
    size = None
    n = 0
    bar = tqdm(desc="mirage data bag", unit="clip")
    try:
        for i, fr in enumerate(frames):
            if args.resolution:
                fr = _resize_one(fr, args.resolution)
            H, W = fr["rgb"].shape[:2]
            if size is None:
                size = (H, W)
                if H % codec.stride or W % codec.stride:
                    raise ValueError(f"resolution: the bag's frames are {H}x{W}, not divisible by the codec stride "
                                     f"{codec.stride}; pass --resolution (e.g. {H // codec.stride * codec.stride}x"
                                     f"{W // codec.stride * codec.stride})")
                header = {
                    "source": "bag", "bag": str(Path(args.bag).resolve()), "command": " ".join(sys.argv),
                    "codec": codec.config(), "resolution": [H, W],
                    "latent_grid": [H // codec.stride, W // codec.stride],
                    "channels": codec.channels, "temporal_stride": codec.temporal_stride,
                    "chunk_latents": spec.chunk_latents, "preceding_latents": spec.preceding_latents,
                    "max_references": spec.max_references, "frame_roles": "targets (first clean) | preceding | "
                                                                          "references",
                    "memory": spec.memory, "window_stride": spec.window_stride, "frames_per_clip": F,
                    "depth": args.depth,
                    "masks": "labels " + str(info["exclude_labels"]) if info["has_labels"] else "none",
                    "seeds": {"train": None, "held_out": None},
                }
                writer = DatasetWriter(args.out, header, overwrite=args.overwrite)
                codec.save_pretrained(Path(args.out) / "codec")
            elif (H, W) != size:
                raise ValueError(f"bag: {args.bag}: images change size within the bag ({size} then {(H, W)}); split it")
            cam = Camera(torch.as_tensor(fr["K"]), invert_rigid(torch.as_tensor(fr["camera_to_world"])), H, W)
            if da3 is not None:
                fr["depth"] = np.asarray(da3(fr["rgb"], cam))
            buf.append((i, fr, cam))
            n += 1
            while len(buf) > F:
                buf.popleft()
            if len(buf) == F and buf[0][0] % stride == 0:
                _write_clip(writer, list(buf), codec, spec, info)
                bar.update(1)
        if writer is None:
            raise ValueError(_no_sets(args.bag, info))
        if writer.num_clips == 0:
            raise ValueError(f"frames: the bag has {n} paired frames, fewer than one clip of --frames {F}")
        return writer.close(paired_frames=n, rejected_inputs=info["rejected"])
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()


def _write_clip(writer, items, codec, spec, info) -> None:
    first = items[0][0]
    fr = [f for _, f, _ in items]
    exclude = None
    if info["has_labels"]:
        exclude = np.stack([np.isin(f["labels"], np.asarray(info["exclude_labels"])) for f in fr])
    frames, windows, meta = build_clip(np.stack([f["rgb"] for f in fr]),
                                       np.stack([f["depth"] for f in fr]).astype(np.float32),
                                       [c for _, _, c in items], codec, exclude=exclude, spec=spec)
    meta.update(source="bag", first_frame=first, stamps_ns=[int(f["stamp"]) for f in fr])
    writer.add_clip(meta, frames, windows)
