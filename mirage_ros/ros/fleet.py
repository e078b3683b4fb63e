"""Several robots on one GPU host: one memory per robot, one loaded model for all (no rclpy here).

``mirage_multi_node`` runs one ``MirageNode`` per robot namespace in one process. The first robot
builds its backend as usual (``MirageCore.configure``: loads the model); every later robot whose
backend configuration is the same (``MirageCore.backend_config``: backend, weights, device, codec,
steps ...) gets a *sibling* of it: a shallow copy that shares the loaded model, codec and
perception providers, with a memory of its own built from that robot's memory.* parameters and
its own per-robot state (the last observed frame). Observations of one robot therefore never
reach another robot's memory, and the model's weights are in memory once.

The robots also share the first robot's lock, so they take turns on the model one chunk (or one
observation) at a time: a model object is not safe to run from two threads at once (sampler
state, accelerator memory), and on one accelerator the work is serial anyway.
"""
from __future__ import annotations

import copy
import re
from typing import List, Sequence

__all__ = ["sibling_backend", "share_model", "model_key", "parse_robots", "SharingError"]

_NS = re.compile(r"^/?[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


class SharingError(ValueError):
    """Two robots cannot share a model (different backend configurations, or nothing to share)."""


def parse_robots(robots: Sequence[str]) -> List[str]:
    """Robot namespaces as ROS names: absolute (``/robot1``), unique, valid ROS 2 name tokens."""
    out: List[str] = []
    for r in robots or []:
        r = str(r).strip()
        if not _NS.match(r):
            raise ValueError(f"robots: {r!r} is not a valid namespace (letters, digits, _ and /, tokens not "
                             "starting with a digit)")
        ns = "/" + r.strip("/")
        if ns in out:
            raise ValueError(f"robots: {ns} is listed twice")
        out.append(ns)
    if not out:
        raise ValueError("robots: no robot namespaces given (e.g. robots: [robot1, robot2])")
    return out


def model_key(core) -> tuple:
    """What decides the loaded model of ``core`` (a ``MirageCore``): its backend name and config."""
    name, cfg = core.backend_config()
    return name, repr(sorted(cfg.items()))


def sibling_backend(backend, memory_kwargs: dict):
    """A backend that shares ``backend``'s loaded model (``.model``, or the codec of a model-less
    backend) and providers, with a new empty memory (``LatentSpatialMemory(**memory_kwargs)``,
    same channels, stride and device) and none of its per-robot state."""
    from ..memory import LatentSpatialMemory

    if backend is None or getattr(backend, "memory", None) is None:
        raise SharingError("nothing to share: the first robot has no backend")
    mem = backend.memory
    twin = copy.copy(backend)
    for k, v in vars(twin).items():  # containers are per robot; models, codecs and tensors are shared
        if isinstance(v, (dict, list, set)):
            setattr(twin, k, copy.copy(v))
    twin.memory = LatentSpatialMemory(channels=mem.channels, stride=mem.stride, device=mem.device, **memory_kwargs)
    twin.reset()  # clears the (new) memory and per-robot state such as the last observed frame
    return twin


def share_model(core, leader) -> None:
    """Configure ``core`` (not yet configured) with a sibling of ``leader``'s backend and
    ``leader``'s lock. Raises ``SharingError`` when their backend configurations differ."""
    if leader is None or leader.backend is None:
        raise SharingError("the first robot has no loaded backend to share")
    if model_key(core) != model_key(leader):
        raise SharingError(f"backend configurations differ ({model_key(core)[0]} vs {model_key(leader)[0]}, or their "
                           "weights / device / codec / steps): each loads its own")
    core.lock = leader.lock
    core.configure(backend=sibling_backend(leader.backend, core.memory_config()))
