"""Baselines for benchmarks and ablations."""
from .rgb_memory import RGBPointCloudMemory

__all__ = ["RGBPointCloudMemory"]
