"""Pair image, camera_info, pose (and depth, labels) by timestamp. No rclpy import.

message_filters is not on PyPI, and its ApproximateTime policy is more than a camera rig needs;
this is the small exact/tolerant pairing mirage_node uses:

- Inputs arrive already validated and converted (``add(kind, stamp_ns, payload)``).
- A set is complete when, for an image stamp t, every other required kind has an entry within
  ``tolerance_ns`` of t, and that kind's choice is settled: the nearest entry is taken once the
  kind has a message at or after t (so a neighbouring frame's pose is never used while the exact
  one is still in flight). camera_info may instead be *latched*: the newest one applies to any
  image.
- When several images are complete, the newest wins (older complete ones are counted as
  ``superseded``); everything at or before the emitted stamp is then dropped, so queues stay
  bounded by ``queue_size`` per kind no matter how messages arrive.
- A stamp more than ``jump_ns`` older than the newest one seen (a bag or a simulator restarted)
  clears the queues and starts over.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterable, Optional, Tuple

__all__ = ["Synchronizer", "SyncedSet"]


@dataclass
class SyncedSet:
    """One complete input set, keyed by the image stamp. ``parts[kind] = (stamp_ns, payload)``."""

    stamp_ns: int
    parts: Dict[str, Tuple[int, Any]] = field(default_factory=dict)

    def __getitem__(self, kind: str) -> Any:
        return self.parts[kind][1]

    def get(self, kind: str, default=None) -> Any:
        p = self.parts.get(kind)
        return default if p is None else p[1]


class Synchronizer:
    def __init__(self, kinds: Iterable[str] = ("image", "camera_info", "pose"), tolerance_ns: int = 0,
                 queue_size: int = 30, latch: Iterable[str] = (), jump_ns: int = 1_000_000_000):
        kinds = tuple(kinds)
        if "image" not in kinds:
            raise ValueError("kinds: 'image' is the pivot and must be included")
        if queue_size < 1:
            raise ValueError(f"queue_size: expected >= 1, got {queue_size}")
        self.kinds = kinds
        self.tolerance_ns = int(tolerance_ns)
        self.queue_size = int(queue_size)
        self.latch = set(latch) & set(kinds)
        self.jump_ns = int(jump_ns)
        self.queues: Dict[str, Deque[Tuple[int, Any]]] = {k: deque(maxlen=self.queue_size) for k in kinds}
        self.latched: Dict[str, Tuple[int, Any]] = {}
        self.last_emitted: Optional[int] = None
        self.newest: Optional[int] = None
        self.counts = {"added": 0, "emitted": 0, "superseded": 0, "overflow": 0, "late": 0, "resets": 0}

    def reset(self) -> None:
        for q in self.queues.values():
            q.clear()
        self.latched.clear()
        self.last_emitted = None
        self.newest = None

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def add(self, kind: str, stamp_ns: int, payload: Any) -> Optional[SyncedSet]:
        """Add one converted input; return the newest complete set it completes, if any."""
        if kind not in self.kinds:
            raise ValueError(f"kind: {kind!r} is not one of {self.kinds}")
        stamp_ns = int(stamp_ns)
        self.counts["added"] += 1
        if kind in self.latch:
            self.latched[kind] = (stamp_ns, payload)
            return self._try()
        last = self.last_emitted
        if self.newest is not None and stamp_ns < self.newest - self.jump_ns:
            self.reset()  # time jumped backwards: a restarted bag / simulator
            self.counts["resets"] += 1
            last = None
        elif last is not None and kind == "image" and stamp_ns <= last:
            self.counts["late"] += 1  # an image at or before one already used: useless
            return None
        self.newest = stamp_ns if self.newest is None else max(self.newest, stamp_ns)
        q = self.queues[kind]
        if len(q) == q.maxlen:
            self.counts["overflow"] += 1
        q.append((stamp_ns, payload))
        return self._try()

    def _nearest(self, kind: str, t: int) -> Optional[Tuple[int, Any]]:
        if kind in self.latch:
            return self.latched.get(kind)
        best, best_dt = None, None
        for entry in self.queues[kind]:
            dt = abs(entry[0] - t)
            if dt <= self.tolerance_ns and (best_dt is None or dt < best_dt):
                best, best_dt = entry, dt
        return best

    def _try(self) -> Optional[SyncedSet]:
        images = sorted(self.queues["image"], key=lambda e: e[0], reverse=True)
        found = None
        n_complete = 0
        for t, img in images:
            parts = {"image": (t, img)}
            for k in self.kinds:
                if k == "image":
                    continue
                e = self._nearest(k, t)
                if e is None:
                    break
                if k not in self.latch and e[0] < t and not any(x[0] >= t for x in self.queues[k]):
                    break  # an exact or nearer partner may still be on its way: wait for it
                parts[k] = e
            else:
                n_complete += 1
                if found is None:
                    found = SyncedSet(t, parts)
        if found is None:
            return None
        self.counts["superseded"] += n_complete - 1
        self.counts["emitted"] += 1
        t = found.stamp_ns
        self.last_emitted = t
        for k, q in self.queues.items():
            # partners within tolerance stay usable for the next image (a slower pose stream)
            keep = [e for e in q if (e[0] > t if k == "image" else e[0] >= t - self.tolerance_ns)]
            q.clear()
            q.extend(keep)
        return found
