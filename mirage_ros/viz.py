"""Files people look at: PNG strips, MP4 videos, coloured PLY clouds, benchmark plots.

Only numpy / OpenCV / matplotlib (Agg); nothing here imports torch models or rclpy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np

__all__ = ["write_ply", "read_ply", "write_png", "write_mp4", "image_grid", "mask_to_rgb", "label_image", "plt"]


def plt():
    """matplotlib.pyplot with the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def write_ply(path, points: np.ndarray, colors: Optional[np.ndarray] = None) -> None:
    """Binary little-endian PLY: float32 x y z (+ uchar red green blue)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = points.shape[0]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        if colors.shape[0] != n:
            raise ValueError(f"colors: {colors.shape[0]} rows for {n} points")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header.append("end_header")
    rec = np.empty(n, dtype=fields)
    rec["x"], rec["y"], rec["z"] = points[:, 0], points[:, 1], points[:, 2]
    if colors is not None:
        rec["red"], rec["green"], rec["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rec.tobytes())


def read_ply(path):
    """Read a PLY written by ``write_ply``: (points (N,3) float32, colors (N,3) uint8 or None)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    n = int(next(l for l in header if l.startswith("element vertex")).split()[-1])
    has_rgb = any(l.endswith(" red") for l in header)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + ([("red", "u1"), ("green", "u1"), ("blue", "u1")] if has_rgb else [])
    rec = np.frombuffer(data[end:], dtype=fields, count=n)
    pts = np.stack([rec["x"], rec["y"], rec["z"]], 1)
    cols = np.stack([rec["red"], rec["green"], rec["blue"]], 1) if has_rgb else None
    return pts, cols


def write_png(path, image: np.ndarray) -> None:
    """(H, W, 3) RGB or (H, W) uint8 -> PNG."""
    import cv2

    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., ::-1]  # RGB -> BGR for OpenCV
    if not cv2.imwrite(str(path), np.ascontiguousarray(img)):
        raise OSError(f"path: could not write PNG {path}")


def write_mp4(path, frames: Iterable[np.ndarray], fps: float = 8.0) -> int:
    """(H, W, 3) RGB uint8 frames -> MP4 (mp4v, no ffmpeg needed). Returns frames written."""
    import cv2

    writer = None
    count = 0
    for frame in frames:
        frame = np.asarray(frame)
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise OSError(f"path: could not open MP4 writer for {path}")
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
        count += 1
    if writer is not None:
        writer.release()
    return count


def mask_to_rgb(mask: np.ndarray, size: Optional[Sequence[int]] = None) -> np.ndarray:
    """(h, w) bool -> (H, W, 3) uint8 white/black, nearest-upsampled to ``size`` (H, W)."""
    m = np.asarray(mask, dtype=np.uint8) * 255
    if size is not None:
        H, W = size
        m = np.repeat(np.repeat(m, H // m.shape[0], 0), W // m.shape[1], 1)
    return np.repeat(m[..., None], 3, -1)


def label_image(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``image`` with ``text`` in its top-left corner."""
    import cv2

    img = np.ascontiguousarray(image.copy())
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def image_grid(rows: List[List[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) images into one image, rows x columns, with a white gap."""
    H, W = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (H + pad) - pad, ncol * (W + pad) - pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            out[i * (H + pad) : i * (H + pad) + H, j * (W + pad) : j * (W + pad) + W] = img
    return out
