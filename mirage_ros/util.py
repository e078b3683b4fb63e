"""Small helpers shared by the CLI commands (demo, benchmarks): argument parsing, image metrics,
and strict JSON. numpy only; nothing heavy is imported here.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Union

__all__ = ["parse_resolution", "psnr", "strict", "dumps_json", "write_json", "HELP_RES"]

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
