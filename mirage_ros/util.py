"""Small helpers shared by the CLI commands (demo, benchmarks): argument parsing, image metrics,
and strict JSON. numpy only; nothing heavy is imported here.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Union

__all__ = ["parse_resolution", "psnr", "ssim", "strict", "dumps_json", "write_json", "HELP_RES", "median_seconds"]

HELP_RES = "image size HxW, both divisible by 16 (default 256x448)"


def parse_resolution(text: str):
    """``"256x448"`` -> (256, 448); both positive multiples of 16 (the VAE stride)."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution: expected HxW like 256x448, got {text!r}") from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise argparse.ArgumentTypeError(f"resolution: {h}x{w} must be positive multiples of 16")
    return h, w


def psnr(a, b, mask=None) -> float:
    """PSNR in dB of uint8 images ``a`` vs ``b`` over ``mask`` (all pixels if None). NaN when the
    mask is empty, +inf when the images are identical (``strict`` turns both into null)."""
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    err = (a - b) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = float(err.mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a, b) -> float:
    """Mean SSIM (Wang et al. 2004) of uint8 RGB images ``a`` vs ``b`` (H, W, 3): 11x11 Gaussian window,
    sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255, valid region only (no padding), channels averaged."""
    import cv2
    import numpy as np

    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = cv2.getGaussianKernel(11, 1.5)
    win = g @ g.T

    def filt(img):
        return cv2.filter2D(img, -1, win, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


def strict(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: NaN and ±inf become None (null), numpy scalars
    and arrays become Python numbers and lists, tuples and sets become lists, paths strings."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [strict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a core dependency
        np = None
    if np is not None:
        if isinstance(obj, np.ndarray):
            return strict(obj.tolist())
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return strict(float(obj))
    if hasattr(obj, "item") and callable(obj.item):  # torch scalars
        return strict(obj.item())
    raise TypeError(f"strict JSON: cannot write a {type(obj).__name__}")


def dumps_json(obj: Any, indent: int = 1) -> str:
    """Strict JSON text (``allow_nan=False`` after ``strict``: a bare NaN can never slip through)."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False)


def write_json(path: Union[str, Path], obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as strict JSON to ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_json(obj, indent) + "\n")
    return path


def median_seconds(fn, repeats: int, sync=None) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn`` after one warm-up call; ``sync``
    (e.g. ``torch.cuda.synchronize``) is called before and after each timed call (benchmarks only)."""
    import statistics
    import time

    fn()
    times = []
    for _ in range(max(1, int(repeats))):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_safetensors(path: Path, error: type, label: str) -> dict:
    """The tensors of a safetensors file; missing or unreadable raises ``error`` naming ``label`` and the path."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise error(f"{label}: {path} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt files
        raise error(f"{label}: {path} is corrupt ({exc})") from None
