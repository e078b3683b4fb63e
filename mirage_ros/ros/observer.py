"""When a complete set enters the memory, and the thread that writes it (no rclpy).

``UpdatePolicy.wants(stamp)``: the first set always (an empty memory, or after a reset or a time
jump), later ones only with ``observe.update`` and at most every ``observe.min_interval`` s. Time
running back by more than the pairing's jump threshold (a bag looped, a simulator restarted, or
the last set carried a stray far-future stamp) restarts the policy at the new time, logged once.

``Observer`` is the node's observation thread: ``offer(set)`` from any callback is O(1) (a set
the policy does not want, or one superseded by a newer set before the thread took it, counts as
skipped), and the thread calls ``observe(set)`` (``MirageCore.observe``) for the newest.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

from .report import Report
from .slot import SlotWorker

__all__ = ["UpdatePolicy", "Observer"]


class UpdatePolicy:
    def __init__(self, p: dict, report: Report, jump_ns: int):
        self.p, self.report, self.jump_ns = p, report, int(jump_ns)
        self.last_stamp: Optional[int] = None  # of the last set written into the memory
        self._lock = threading.Lock()

    def restart(self) -> None:
        """The next set is written whatever its stamp (after reset or load)."""
        self.last_stamp = None

    def wants(self, stamp_ns: int, memory_empty: bool) -> bool:
        """Would a set at this stamp be written?"""
        with self._lock:
            last = self.last_stamp
            if last is not None and stamp_ns < last - self.jump_ns:
                self.last_stamp = None
                self.report.add("time_jumps")
                self.report.log("warn", f"time jumped back {(last - stamp_ns) / 1e9:.3f} s (from {last} to {stamp_ns} "
                                        f"ns: "
                                        "a bag looped, a simulator restarted, or a stray stamp): updates carry on from "
                                        "the new time; the memory is kept (call reset to clear it)")
        if memory_empty or self.last_stamp is None:
            return True
        if not self.p["observe.update"]:
            return False
        return stamp_ns - self.last_stamp >= self.p["observe.min_interval"] * 1e9

    def written(self, stamp_ns: int) -> None:
        self.last_stamp = stamp_ns


class Observer:
    """Latest-wins hand-over of complete sets to one thread that writes them into the memory."""

    def __init__(self, wants: Callable[[int], bool], observe: Callable[[object], object], report: Report):
        self.wants, self.observe, self.report = wants, observe, report
        self.worker = SlotWorker("mirage-observe", self._handle,
                                 lambda exc: report.reject("observation", f"{type(exc).__name__}: {exc}"))
        self.active = False  # the node's lifecycle: sets arriving while inactive are dropped

    def offer(self, s) -> None:
        """Hand a complete set to the thread; a set still waiting is superseded (skipped)."""
        if s is None or not self.active:
            return
        if not self.wants(s.stamp_ns):
            self.report.add("frames_skipped")
            return
        if self.worker.slot.put(s):
            self.report.add("frames_skipped")

    def _handle(self, _seq: int, s) -> None:
        if self.active:
            self.observe(s)

    def start(self) -> None:
        self.worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.worker.stop(timeout)
