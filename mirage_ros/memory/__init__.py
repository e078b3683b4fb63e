"""The latent spatial memory and its spatial index (no diffusers / transformers imports here)."""
from .downsample import DEPTH_DOWNSAMPLE_METHODS, downsample_depth, downsample_mask, hole_rate
from .index import BlockIndex
from .latent_memory import READ_RTOL, LatentSpatialMemory, MemoryError_, MemoryFileError, Readout

__all__ = [
    "LatentSpatialMemory", "Readout", "READ_RTOL", "MemoryError_", "MemoryFileError", "BlockIndex",
    "DEPTH_DOWNSAMPLE_METHODS", "downsample_depth", "downsample_mask", "hole_rate",
]
