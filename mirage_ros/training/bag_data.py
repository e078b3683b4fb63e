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
from contextlib import closing
from pathlib import Path
from typing import Dict, List

import numpy as np

from .clips import ClipSpec, build_clip

__all__ = ["read_synced_frames", "generate_from_bag"]

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


def read_synced_frames(bag, topics: Dict[str, str], depth_from_bag: bool = True, tolerance: float = 0.0,
                       log=print, namespace: str = "/") -> Dict:
    """Paired frames of ``bag`` in time order: stamps, rgb (N, H, W, 3), K (N, 3, 3), camera_to_world
    (N, 4, 4), depth (N, H, W) or None, labels (N, H, W) or None, exclude_labels."""
    from rosbags.highlevel import AnyReader

    from ..ros.bag import typestore
    from ..ros.core import MirageCore
    from ..ros.replay import INPUT_TYPES, BagReadError, _guarded, _one_line

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
            raise ValueError(f"bag: {src} lacks {', '.join(missing)}; it has: {', '.join(sorted(present)) or 'no topics'} "
                             "(use --topic KIND=TOPIC, or --depth da3 without a depth topic)")
        params = {"depth.provider": "topic" if has_depth else "none", "masks.provider": "labels" if has_labels else "none",
                  "sync.tolerance": float(tolerance), "pose.source": "pose" if pose_kind == "pose" else "odometry"}
        core = MirageCore(params, log=lambda level, msg: log(f"[{level}] {msg}") if level in ("warn", "error") else None)
        handlers = {"image": core.on_image, "camera_info": core.on_camera_info, "pose": core.on_pose,
                    "odom": core.on_odometry, "depth": core.on_depth if has_depth else None,
                    "labels": core.on_labels if has_labels else None}
        by_topic = {names[k]: k for k in KINDS if names[k] in present and handlers.get(k) is not None
                    and (k != "odom" or pose_kind == "odom") and (k != "pose" or pose_kind == "pose")}
        for c in reader.connections:
            kind = by_topic.get(c.topic)
            if kind is not None and c.msgtype != INPUT_TYPES[kind]:
                raise ValueError(f"bag: {src}: topic {c.topic} ({kind}) was recorded as {c.msgtype}, expected {INPUT_TYPES[kind]}")
        sets = []
        conns = [c for c in reader.connections if c.topic in by_topic]
        for conn, t, raw in _guarded(src, reader.messages(connections=conns)):
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001
                raise BagReadError(f"bag: {src}: a {conn.msgtype} message on {conn.topic} at {t} ns does not decode "
                                   f"({_one_line(exc)})") from None
            s = handlers[by_topic[conn.topic]](msg)
            if s is not None:
                sets.append(s)
    if not sets:
        raise ValueError(f"bag: {src}: no complete image + camera_info + pose{' + depth' if has_depth else ''} set "
                         f"(pairing is by exact stamp unless --tolerance; rejected: {core.last_rejection or 'none'})")
    sizes = {s["image"].shape for s in sets}
    if len(sizes) != 1:
        raise ValueError(f"bag: {src}: images change size within the bag ({sorted(sizes)}); split it")
    return {
        "stamps": [s.stamp_ns for s in sets], "rgb": np.stack([s["image"] for s in sets]),
        "K": np.stack([s["camera_info"][0] for s in sets]), "camera_to_world": np.stack([s["pose"] for s in sets]),
        "depth": np.stack([s["depth"] for s in sets]) if has_depth else None,
        "labels": np.stack([s["labels"] for s in sets]) if has_labels else None,
        "exclude_labels": list(core.p["masks.exclude_labels"]), "pose_kind": pose_kind,
        "rejected": core.counts["inputs_rejected"],
    }


def _resize(frames: Dict, size) -> Dict:
    import cv2

    H0, W0 = frames["rgb"].shape[1:3]
    H, W = size
    if (H, W) == (H0, W0):
        return frames
    sx, sy = W / W0, H / H0
    out = dict(frames)
    out["rgb"] = np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) for f in frames["rgb"]])
    K = frames["K"].copy()
    K[:, 0, :] *= sx
    K[:, 1, :] *= sy
    out["K"] = K
    for key in ("depth", "labels"):
        if frames[key] is not None:
            out[key] = np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_NEAREST) for f in frames[key]])
    return out


def generate_from_bag(args) -> Dict:
    import torch
    from tqdm.auto import tqdm

    from ..geometry import Camera, invert_rigid
    from ..world_model.codec import load_codec, make_codec
    from .dataset import DatasetWriter

    frames = read_synced_frames(args.bag, _topics(args.topic), depth_from_bag=args.depth == "bag",
                                tolerance=args.tolerance, log=lambda m: print(m, file=sys.stderr),
                                namespace=args.namespace)
    if args.resolution:
        frames = _resize(frames, args.resolution)
    N, H, W = frames["rgb"].shape[:3]
    codec = load_codec(args.codec_weights) if args.codec_weights else make_codec(args.codec)
    if H % codec.stride or W % codec.stride:
        raise ValueError(f"resolution: the bag's frames are {H}x{W}, not divisible by the codec stride {codec.stride}; "
                         f"pass --resolution (e.g. {H // codec.stride * codec.stride}x{W // codec.stride * codec.stride})")
    cams = [Camera(torch.as_tensor(K), invert_rigid(torch.as_tensor(T)), H, W)
            for K, T in zip(frames["K"], frames["camera_to_world"])]
    if args.depth == "da3":
        if not args.depth_weights:
            raise ValueError("depth: --depth da3 needs --depth-weights (a local Depth Anything 3 folder)")
        from ..perception.depth import make_depth_provider

        da3 = make_depth_provider("da3", weights=args.depth_weights)
        depth = np.stack([da3(frames["rgb"][i], cams[i]) for i in range(N)])
    else:
        depth = frames["depth"]
    exclude = None
    if frames["labels"] is not None:
        exclude = np.isin(frames["labels"], np.asarray(frames["exclude_labels"]))
    F = int(args.frames)
    stride = int(args.clip_stride or F)
    starts = list(range(0, N - F + 1, stride))
    if not starts:
        raise ValueError(f"frames: the bag has {N} paired frames, fewer than one clip of --frames {F}")
    spec = ClipSpec(memory=args.memory)
    header = {
        "source": "bag", "bag": str(Path(args.bag).resolve()), "command": " ".join(sys.argv), "codec": codec.config(),
        "resolution": [H, W], "latent_grid": [H // codec.stride, W // codec.stride], "channels": codec.channels,
        "temporal_stride": codec.temporal_stride, "chunk_latents": spec.chunk_latents,
        "preceding_latents": spec.preceding_latents, "max_references": spec.max_references,
        "frame_roles": "targets (first clean) | preceding | references", "memory": spec.memory,
        "window_stride": spec.window_stride, "frames_per_clip": F, "depth": args.depth,
        "masks": "labels " + str(frames["exclude_labels"]) if exclude is not None else "none",
        "paired_frames": N, "rejected_inputs": frames["rejected"],
        "seeds": {"train": None, "held_out": None},
    }
    writer = DatasetWriter(args.out, header, overwrite=args.overwrite)
    codec.save_pretrained(Path(args.out) / "codec")
    for s in tqdm(starts, desc="mirage data bag", unit="clip"):
        sl = slice(s, s + F)
        fr, win, meta = build_clip(frames["rgb"][sl], depth[sl].astype(np.float32), cams[sl], codec,
                                   exclude=None if exclude is None else exclude[sl], spec=spec)
        meta.update(source="bag", first_frame=s, stamps_ns=[int(t) for t in frames["stamps"][sl]])
        writer.add_clip(meta, fr, win)
    return writer.close()
