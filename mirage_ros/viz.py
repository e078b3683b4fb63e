"""Files people look at: PNG strips, MP4 videos, coloured PLY clouds, benchmark plots.

Only numpy / OpenCV / matplotlib (Agg) / PyAV (H.264 video); nothing here imports torch models or rclpy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np

__all__ = ["write_ply", "read_ply", "write_png", "write_mp4", "write_video", "h264_encoder", "VideoUnavailable",
           "image_grid", "mask_to_rgb", "label_image", "plt"]


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
    fields = [("x", "<f4"), ("y", "<f4"),
              ("z", "<f4")] + ([("red", "u1"), ("green", "u1"), ("blue", "u1")] if has_rgb else [])
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


class VideoUnavailable(RuntimeError):
    """No H.264 encoder here (PyAV with libx264 is not installed)."""


def h264_encoder() -> Optional[str]:
    """None if PyAV's libx264 encoder is usable, else why not (in plain words)."""
    try:
        import av
    except ImportError as exc:
        return f"PyAV is not installed ({exc}); pip install av (pinned in requirements.txt)"
    try:
        av.codec.Codec("libx264", "w")
    except Exception as exc:  # noqa: BLE001 - PyAV raises UnknownCodecError and others
        return f"this PyAV build has no libx264 H.264 encoder ({type(exc).__name__}: {exc})"
    return None


def write_mp4(path, frames: Iterable[np.ndarray], fps: float = 8.0, crf: int = 18) -> int:
    """(H, W, 3) RGB uint8 frames -> MP4 that browsers play: H.264 (libx264 through PyAV's
    wheel) in yuv420p, odd sizes padded to even, ``moov`` before ``mdat`` (faststart). Returns
    frames written; raises ``VideoUnavailable`` when there is no H.264 encoder."""
    from fractions import Fraction

    why = h264_encoder()
    if why is not None:
        raise VideoUnavailable(why)
    import av

    path = Path(path)
    container = None
    count = 0
    try:
        for frame in frames:
            frame = np.ascontiguousarray(np.asarray(frame, dtype=np.uint8))
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames: expected (H, W, 3) uint8 RGB, got shape {frame.shape}")
            if container is None:
                h, w = frame.shape[:2]
                H2, W2 = h + h % 2, w + w % 2
                container = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height, stream.pix_fmt = W2, H2, "yuv420p"
                stream.options = {"crf": str(int(crf)), "preset": "medium"}
            if frame.shape[:2] != (h, w):
                raise ValueError(f"frames: frame {count} is {frame.shape[1]}x{frame.shape[0]}, the first was {w}x{h}")
            if (H2, W2) != (h, w):
                frame = np.pad(frame, ((0, H2 - h), (0, W2 - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        if container is not None:
            for packet in stream.encode():
                container.mux(packet)
    except BaseException:
        if container is not None:
            container.close()
            path.unlink(missing_ok=True)
        raise
    if container is not None:
        container.close()
    return count


def write_video(path, frames: Sequence[np.ndarray], fps: float = 8.0):
    """An MP4 as ``write_mp4`` where H.264 is available; otherwise PNG frames in ``<stem>_frames/``
    beside it. Returns (what was written, frames, a note: "" or why there is no MP4)."""
    path = Path(path)
    why = h264_encoder()
    if why is None:
        return path, write_mp4(path, frames, fps), ""
    folder = path.with_name(path.stem + "_frames")
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, frame in enumerate(frames, start=1):
        write_png(folder / f"{n:05d}.png", frame)
    return folder, n, f"no MP4: {why}; wrote {n} PNG frames to {folder}"


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
