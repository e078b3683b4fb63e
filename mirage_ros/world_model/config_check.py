"""Range checks of every configuration field a model folder can carry, in ONE place.

A model folder is a file a user (or an attacker) hands the node: ``model_index.json``, the
backbone's and the side branch's ``config.json``, the codec's ``config.json``. A field such as
``ffn_dim`` or ``rope_max_seq_len`` = 1e9 used to fail deep inside torch with "can't allocate
1 TB" naming no file, ``rope_max_seq_len`` = 3e6 loaded with +2.9 GiB of rotary tables, and
``sampler.steps`` = 1e9, ``text.max_length`` = 1e9 or ``resolution`` = [0, 0] loaded and then
failed every goal. ``check_config(kind, cfg, path)`` refuses such a field before anything is
built, with a ``CheckpointError`` naming the file and the field. Leaf module: no model imports.

The ranges are generous bounds on what any Wan2.2-family model (the 5B TI2V has 24 heads of 128,
ffn 14336, 30 layers, text 4096, rope 1024) or this project's small models need, not tuning.
Fields a kind does not list are left to the class that reads them (forward compatibility).
"""
from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any, Dict, Mapping, Optional, Tuple

from .checkpoints import CheckpointError

__all__ = ["check_config", "LIMITS", "MAX_PARAMETERS"]

# (lo, hi, type): "int", "float", "bool", "ints3" (three ints), "name" (a plain sub-folder name),
# "optional int" (null or an int)
_TRANSFORMER = {
    "num_attention_heads": (1, 256, "int"), "attention_head_dim": (2, 1024, "int"), "ffn_dim": (1, 131072, "int"),
    "num_layers": (1, 256, "int"), "in_channels": (1, 1024, "int"), "out_channels": (1, 1024, "int"),
    "text_dim": (1, 16384, "int"), "freq_dim": (2, 4096, "int"), "rope_max_seq_len": (1, 8192, "int"),
    "patch_size": (1, 16, "ints3"), "eps": (1e-12, 0.1, "float"), "cross_attn_norm": (None, None, "bool"),
    "image_dim": (1, 16384, "optional int"), "added_kv_proj_dim": (1, 16384, "optional int"),
    "pos_embed_seq_len": (1, 1 << 20, "optional int"),
}
LIMITS: Dict[str, Dict[str, Tuple]] = {
    "backbone": _TRANSFORMER,
    "side_branch": {
        **{k: v for k, v in _TRANSFORMER.items() if k in ("num_attention_heads", "attention_head_dim", "ffn_dim",
                                                          "patch_size", "eps", "cross_attn_norm")},
        "num_backbone_layers": (1, 256, "int"), "in_channels": (1, 2048, "int"), "layers": (0, 255, "ints"),
        "own_patch_embedding": (None, None, "bool"), "embed_mask": (None, None, "bool"),
    },
    "model_index": {
        "version": (0, 1 << 31, "int"), "transformer": (None, None, "name"), "codec": (None, None, "name"),
        "text.text_dim": (1, 16384, "int"), "text.max_length": (1, 4096, "int"),
        "sampler.steps": (1, 1000, "int"), "sampler.shift": (1e-3, 100.0, "float"),
        "sampler.guidance_scale": (0.0, 100.0, "float"), "resolution": (1, 4096, "ints2"),
    },
    "codec": {"stride": (1, 64, "int"), "channels": (1, 4096, "int"), "scale": (1e-12, 1e12, "float"),
              "thumb": (1, 64, "int")},
}
MAX_PARAMETERS = 3e10  # a backbone (or side branch) estimated larger than this is refused (the 5B: 5e9)


def _get(cfg: Mapping, dotted: str):
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer())


def _check_value(field: str, v, lo, hi, kind: str) -> Optional[str]:
    """Why ``v`` is out of range for ``field``, or None."""
    if kind == "bool":
        return None if isinstance(v, bool) else f"expected true or false, got {v!r}"
    if kind == "name":
        p = PurePosixPath(str(v)) if isinstance(v, str) else None
        if p is None or not v or p.is_absolute() or ".." in p.parts or "\\" in v or len(p.parts) != 1:
            return f"expected the name of a folder inside the model folder, got {v!r}"
        return None
    if kind == "optional int":
        if v is None:
            return None
        kind = "int"
    if kind in ("ints", "ints2", "ints3"):
        want = {"ints2": 2, "ints3": 3}.get(kind)
        if not isinstance(v, (list, tuple)) or (want and len(v) != want) or not v or len(v) > 256:
            return f"expected {want or '1 .. 256'} integers, got {v!r}"
        for i, x in enumerate(v):
            why = _check_value(f"{field}[{i}]", x, lo, hi, "int")
            if why:
                return f"[{i}]: {why}"
        return None
    if kind == "int":
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if not _is_int(v):
            return f"expected an integer, got {v!r}"
    else:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            return f"expected a finite number, got {v!r}"
    if not lo <= v <= hi:
        return f"{v!r} is outside {lo:g} .. {hi:g}"
    return None


def _estimate_parameters(cfg: Mapping) -> float:
    """Rough parameter count of a Wan-style transformer (attention 4 D^2 self + cross, FFN 2 D F)."""
    d = float(cfg.get("num_attention_heads", 1)) * float(cfg.get("attention_head_dim", 1))
    blocks = cfg.get("layers")  # a side branch: one block per attached layer
    layers = float(len(blocks)) if isinstance(blocks, (list, tuple)) else float(cfg.get("num_layers", 1))
    return layers * (8 * d * d + 2 * d * float(cfg.get("ffn_dim", 1))) + d * float(cfg.get("text_dim", 0) or 0)


def check_config(kind: str, cfg: Any, path) -> None:
    """Refuse a ``kind`` config (``backbone`` | ``side_branch`` | ``model_index`` | ``codec``) whose
    fields are out of range: ``CheckpointError`` naming ``path`` and the field. Nothing is built."""
    what = {"backbone": "backbone config", "side_branch": "side branch config", "model_index": "Mirage world model",
            "codec": "codec config"}[kind]
    if not isinstance(cfg, Mapping):
        raise CheckpointError(path, what=what, note=f"expected a JSON object, got {type(cfg).__name__}")
    for field, (lo, hi, typ) in LIMITS[kind].items():
        present, v = _get(cfg, field)
        if not present:
            continue
        why = _check_value(field, v, lo, hi, typ)
        if why:
            raise CheckpointError(path, what=what, note=f"field {field}: {why}")
    if kind == "model_index":
        sampler = cfg.get("sampler", {})
        if not isinstance(sampler, Mapping):
            raise CheckpointError(path, what=what, note=f"field sampler: expected a JSON object, got {sampler!r}")
        for k, v in sampler.items():  # every number a sampler carries is finite and sane
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not (math.isfinite(v) and abs(v) <= 1e6):
                raise CheckpointError(path, what=what, note=f"field sampler.{k}: {v!r} is not a finite number within "
                                                            f"1e6")
        res = cfg.get("resolution")
        if res:
            h, w = (int(x) for x in res)
            if h * w > 4096 * 4096:
                raise CheckpointError(path, what=what, note=f"field resolution: {h} x {w} is more than 4096 x 4096 "
                                                            f"pixels")
    if kind in ("backbone", "side_branch"):
        d = int(cfg.get("num_attention_heads", 1)) * int(cfg.get("attention_head_dim", 1))
        if d > 16384:
            raise CheckpointError(path, what=what, note=f"fields num_attention_heads x attention_head_dim: hidden size "
                                                        f"{d} is more than 16384")
        n = _estimate_parameters(cfg)
        if n > MAX_PARAMETERS:
            raise CheckpointError(path, what=what, note=f"its fields describe about {n:.3g} parameters, more than "
                                                        f"{MAX_PARAMETERS:.0e}")
    if kind == "side_branch":
        layers, nb = cfg.get("layers"), cfg.get("num_backbone_layers")
        if isinstance(layers, (list, tuple)) and _is_int(nb) and any(int(x) >= int(nb) for x in layers):
            raise CheckpointError(path, what=what, note=f"field layers: {list(layers)} reaches beyond the backbone's "
                                                        f"{nb} blocks")
