"""What one node counts and says about its inputs and goals (no rclpy).

``Report`` holds the counters ``memory/stats`` publishes, the last rejection and the throttled
log: each kind of problem is logged at once, then at most every 5 s with a count of the ones in
between, so a peer that floods the node with bad messages cannot flood its log. Every goal's end
is counted in one place, ``goal_outcome``.
"""
from __future__ import annotations

import logging
import re
import sys
import time
from typing import Callable, Dict, Optional, Tuple

from .goals import STATUS_CANCELED, STATUS_SUCCEEDED

__all__ = ["Report", "COUNTERS"]

COUNTERS = ("messages_received", "sets_completed", "frames_observed", "frames_skipped", "inputs_rejected",
            "goals_succeeded", "goals_canceled", "goals_aborted", "frames_imagined", "time_jumps", "goals_rejected",
            "tf_received")
THROTTLE_S = 5.0

_LOG = logging.getLogger("mirage_ros.node")


def _default_log(level: str, msg: str) -> None:
    _LOG.log(getattr(logging, level.upper(), logging.INFO), msg)


class Report:
    """Counters (``counts``: read them; change them through the methods), the last rejection and
    the log of one node."""

    def __init__(self, log: Optional[Callable[[str, str], None]] = None):
        self.sink = log or _default_log
        self.counts: Dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.last_rejection = ""
        self._throttle: Dict[str, Tuple[float, int]] = {}

    def log(self, level: str, msg: str) -> None:
        try:
            self.sink(level, msg)
        except Exception:  # noqa: BLE001 - logging must never break the data path
            print(f"[{level}] {msg}", file=sys.stderr, flush=True)

    def add(self, counter: str, n: int = 1) -> None:
        self.counts[counter] += n  # plain ints, updated under the GIL

    def reject(self, kind: str, reason: str) -> None:
        """A sensor input refused: counted, remembered and logged (throttled); returns None so a
        handler can ``return report.reject(...)``."""
        self.counts["inputs_rejected"] += 1
        self.last_rejection = f"{kind}: {reason}"
        self._throttled(kind, reason, f"rejected {kind}: {reason}; dropped, memory unchanged")

    def reject_goal(self, reason: str, kind: str = "goal") -> None:
        """A request refused (an imagine goal at the door: too long, queue full; a streamed ``plan``
        the node cannot serve yet): counted as a rejected goal, not a rejected sensor input."""
        self.counts["goals_rejected"] += 1
        self._throttled(kind, reason, f"imagine {kind} rejected: {reason}")

    def goal_outcome(self, status: int) -> None:
        """Count one goal's end: succeeded, canceled, or aborted (any other status)."""
        key = {STATUS_SUCCEEDED: "goals_succeeded", STATUS_CANCELED: "goals_canceled"}.get(status, "goals_aborted")
        self.counts[key] += 1

    def _throttled(self, kind: str, reason: str, text: str) -> None:
        now = time.monotonic()
        key = f"{kind}|{re.sub(r'[0-9.eE+-]+', '#', reason.split('(')[0])[:120]}"  # per kind of problem
        last, suppressed = self._throttle.get(key, (-1e9, 0))
        if now - last >= THROTTLE_S:
            more = f" ({suppressed} more like it since the last report)" if suppressed else ""
            self.log("warn", f"{text}{more}")
            self._throttle[key] = (now, 0)
        else:
            self._throttle[key] = (last, suppressed + 1)
