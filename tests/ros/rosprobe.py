"""Test helpers: the shared probe and process helpers of ``mirage_ros.ros.probe`` (also used by
``mirage bench node``), with node processes started from the repository root."""
from __future__ import annotations

from pathlib import Path

from mirage_ros.ros.probe import Probe, Proc, wait_for, write_params  # noqa: F401
from mirage_ros.ros.probe import start_node as _start_node

ROOT = Path(__file__).resolve().parents[2]


def start_node(tmp, ns, params=None, module="mirage_ros.ros.node"):
    return _start_node(tmp, ns, params, module, cwd=str(ROOT))
