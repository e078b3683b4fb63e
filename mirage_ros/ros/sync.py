"""Pair image, camera_info, pose (and depth, labels) by timestamp. No rclpy import.

message_filters is not on PyPI, and its ApproximateTime policy is more than a camera rig needs;
this is the small exact/tolerant pairing mirage_node uses:

- Inputs arrive already validated and converted (``add(kind, stamp_ns, payload)``).
- EXACT by default (``tolerance_ns=0``): an image pairs only with messages of the same stamp.
  A lost pose or depth (BEST_EFFORT) then loses that one image; it never borrows a neighbour's.
- With a tolerance (opt-in, for sensors whose clocks differ), an image takes, per kind, the
  NEAREST entry within ``tolerance_ns``, and only when that choice is settled and unique:
  * settled: the kind has a message at or after the image (nothing nearer can still come);
  * unique: no other image (seen, or still possible because the image stream has not reached
    the partner yet) is as near or nearer to that partner; a tie between two partners is
    ambiguous too. Such an image is left unpaired rather than paired with another image's data.
  * each partner serves one image only.
- camera_info may instead be *latched*: the newest one applies to any image.
- When several images are complete, the newest wins (older complete ones are counted as
  ``superseded``); everything at or before the emitted stamp is then dropped, so queues stay
  bounded by ``queue_size`` per kind no matter how messages arrive.
- A stamp more than ``jump_ns`` older than the newest one seen (a bag looped, a simulator
  restarted, or one stray far-future stamp) clears the queues and starts over (``resets``).
- The queues hold at most ``max_bytes`` of payload (numpy arrays: decoded images, depth,
  labels) in all: beyond it the oldest entries of any kind are dropped first (``overflow_bytes``),
  so a flood of big frames costs at most that much memory, whatever ``queue_size`` says.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterable, Optional, Tuple

import numpy as np

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
                 queue_size: int = 30, latch: Iterable[str] = (), jump_ns: int = 1_000_000_000,
                 max_bytes: Optional[int] = None):
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
        # recent image stamps (emitted, pending, late or superseded): partners nearer to one of
        # them than to the image being paired belong to that image
        self.images_seen: Deque[int] = deque(maxlen=4 * self.queue_size)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.nbytes = 0  # payload bytes held in the queues and the latch
        self.counts = {"added": 0, "emitted": 0, "superseded": 0, "overflow": 0, "late": 0, "resets": 0,
                       "overflow_bytes": 0}

    def reset(self) -> None:
        for q in self.queues.values():
            q.clear()
        self.latched.clear()
        self.nbytes = 0
        self.last_emitted = None
        self.newest = None
        self.images_seen.clear()

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def add(self, kind: str, stamp_ns: int, payload: Any) -> Optional[SyncedSet]:
        """Add one converted input; return the newest complete set it completes, if any."""
        if kind not in self.kinds:
            raise ValueError(f"kind: {kind!r} is not one of {self.kinds}")
        stamp_ns = int(stamp_ns)
        self.counts["added"] += 1
        if kind in self.latch:
            old = self.latched.get(kind)
            self.nbytes += _nbytes(payload) - (_nbytes(old[1]) if old else 0)
            self.latched[kind] = (stamp_ns, payload)
            return self._try()
        last = self.last_emitted
        if self.newest is not None and stamp_ns < self.newest - self.jump_ns:
            self.reset()  # time jumped backwards: a restarted bag / simulator
            self.counts["resets"] += 1
            last = None
        if kind == "image":
            self.images_seen.append(stamp_ns)
            if last is not None and stamp_ns <= last:
                self.counts["late"] += 1  # an image at or before one already used: useless
                return None
        self.newest = stamp_ns if self.newest is None else max(self.newest, stamp_ns)
        q = self.queues[kind]
        if len(q) == q.maxlen:
            self.counts["overflow"] += 1
            self.nbytes -= _nbytes(q[0][1])
        q.append((stamp_ns, payload))
        self.nbytes += _nbytes(payload)
        self._fit_bytes()
        return self._try()

    def _fit_bytes(self) -> None:
        """Drop the oldest queued entries (any kind) until the payload fits ``max_bytes``."""
        if self.max_bytes is None:
            return
        while self.nbytes > self.max_bytes:
            live = [k for k, q in self.queues.items() if q]
            if not live:
                return
            k = min(live, key=lambda k: self.queues[k][0][0])
            _, payload = self.queues[k].popleft()
            self.nbytes -= _nbytes(payload)
            self.counts["overflow_bytes"] += 1

    def _partner(self, kind: str, t: int) -> Optional[Tuple[int, Any]]:
        """The entry of ``kind`` that belongs to the image at ``t``, or None (none, not settled
        yet, or not unique)."""
        if kind in self.latch:
            return self.latched.get(kind)
        q = self.queues[kind]
        tol = self.tolerance_ns
        best, best_dt, tie = None, None, False
        for entry in q:
            dt = abs(entry[0] - t)
            if dt > tol:
                continue
            if best is None or dt < best_dt:
                best, best_dt, tie = entry, dt, False
            elif dt == best_dt and entry[0] != best[0]:
                tie = True
        if best is None or best_dt == 0:
            return best
        if tie:
            return None  # one partner before and one after, equally near: which is it?
        p = best[0]
        if p < t and not any(x[0] >= t for x in q):
            return None  # an exact or nearer partner may still be on its way: wait for it
        if p > t and max(self.images_seen, default=t) < p + best_dt:
            return None  # an image nearer to this partner may still come: wait for it
        for u in self.images_seen:
            if u != t and abs(p - u) <= best_dt:
                return None  # as near or nearer to another image: it is that image's partner
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
                e = self._partner(k, t)
                if e is None:
                    break
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
            # a partner serves one image; other entries within tolerance may serve the next one
            used = found.parts.get(k)
            keep = [e for e in q if (e[0] > t if k == "image" else e[0] >= t - self.tolerance_ns and e is not used)]
            self.nbytes -= sum(_nbytes(e[1]) for e in q) - sum(_nbytes(e[1]) for e in keep)
            q.clear()
            q.extend(keep)
        return found


def _nbytes(payload) -> int:
    """Bytes of the arrays in a payload (an array, or a tuple such as camera_info's (K, H, W))."""
    if isinstance(payload, np.ndarray):
        return int(payload.nbytes)
    if isinstance(payload, (tuple, list)):
        return sum(_nbytes(x) for x in payload)
    return int(getattr(payload, "nbytes", 0) or 0)
