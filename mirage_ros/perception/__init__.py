"""Perception in the loop: depth providers (+ scale alignment) and dynamic/sky mask providers.

Depth: ``make_depth_provider("da3" | "simulator" | "memory", align=None | "scale" | "scale_shift")``.
Masks: ``make_mask_provider("sam3" | "labels" | "none")``. Providers load lazily and can live on
another device than the world model. Nothing here imports rclpy.
"""
from .align import AlignResult, align_depth, align_to_memory
from .depth import (
    AlignedDepth,
    DA3Depth,
    DepthProvider,
    MemoryDepth,
    SimulatorDepth,
    decode_depth_image,
    make_depth_provider,
)

__all__ = ["AlignResult", "align_depth", "align_to_memory", "AlignedDepth", "DA3Depth", "DepthProvider", "MemoryDepth",
           "SimulatorDepth", "decode_depth_image", "make_depth_provider", "make_mask_provider"]


def make_mask_provider(name: str, **cfg):
    """Build a mask provider by name (``sam3`` | ``labels`` | ``none``); see ``masks.py``."""
    from .masks import make_mask_provider as _make

    return _make(name, **cfg)
