"""Test helpers: the shared probe and process helpers of ``mirage_ros.ros.probe`` (also used by
``mirage bench node``), with node processes started from the repository root."""
from __future__ import annotations

from pathlib import Path

from mirage_ros.ros.probe import Probe, Proc, wait_for, write_params
from mirage_ros.ros.probe import start_node as _start_node

__all__ = ["Probe", "Proc", "wait_for", "write_params", "start_node", "ROOT"]

ROOT = Path(__file__).resolve().parents[2]


def start_node(tmp, ns, params=None, module="mirage_ros.ros.node"):
    """The node-mechanics tests run the instant ``readout`` backend unless they say otherwise (the
    default, the shipped world model, has its own tests: test_node_shipped.py)."""
    return _start_node(tmp, ns, {"backend": "readout", **(params or {})}, module, cwd=str(ROOT))
