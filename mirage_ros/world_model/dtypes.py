"""Building models in a dtype: random init without a float32 detour, and Wan's float32 islands.

A leaf module (imports no model class), so every model file and loader can use it.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import torch

__all__ = ["KEEP_FP32", "cast_keep_fp32", "default_dtype", "build_random", "default_dtype_for"]

KEEP_FP32 = ("scale_shift_table", "norm1", "norm2", "norm3", "norm_out", "time_embedder")


def cast_keep_fp32(model: torch.nn.Module, dtype: Optional[torch.dtype]) -> torch.nn.Module:
    """Cast parameters to ``dtype`` but keep modulation tables, norms and the time embedder in
    float32 (as diffusers' ``_keep_in_fp32_modules`` does for Wan)."""
    if dtype is None:
        return model
    for name, p in model.named_parameters():
        keep = dtype != torch.float32 and any(part in KEEP_FP32 for part in name.split("."))
        target = torch.float32 if keep else dtype
        if p.dtype != target:
            p.data = p.data.to(target)
    return model


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Temporarily make ``dtype`` torch's default (modules are then built directly in it)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def build_random(cls, config: Dict, device="cpu", dtype=torch.float32, seed: int = 0):
    """Instantiate ``cls(**config)`` with random weights directly in ``dtype`` on ``device`` (a 5B
    model in bf16 never passes through float32)."""
    with torch.random.fork_rng(devices=[]), default_dtype(dtype), torch.device(device):
        torch.manual_seed(seed)
        model = cls(**config)
    return cast_keep_fp32(model, dtype).eval()


def default_dtype_for(device) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
