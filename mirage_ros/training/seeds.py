"""Scene seeds: training data and evaluation never share one.

Training clips use seeds ``seed, seed+1, ...``; evaluation (``mirage bench imagine``) uses the
held-out block ``HELD_OUT_BASE .. HELD_OUT_BASE + HELD_OUT_COUNT - 1``, which ``mirage data sim``
refuses to generate and records in every dataset header.
"""
from __future__ import annotations

from typing import Dict, Sequence

__all__ = ["HELD_OUT_BASE", "HELD_OUT_COUNT", "held_out_seeds", "check_train_seeds", "seed_record"]

HELD_OUT_BASE = 900_000
HELD_OUT_COUNT = 10_000


def held_out_seeds(n: int) -> list:
    """The first ``n`` evaluation seeds."""
    if not 1 <= n <= HELD_OUT_COUNT:
        raise ValueError(f"seeds: expected 1..{HELD_OUT_COUNT}, got {n}")
    return list(range(HELD_OUT_BASE, HELD_OUT_BASE + n))


def check_train_seeds(seeds: Sequence[int]) -> None:
    bad = [s for s in seeds if HELD_OUT_BASE <= s < HELD_OUT_BASE + HELD_OUT_COUNT]
    if bad:
        raise ValueError(f"seed: training seeds {bad[0]}..{bad[-1]} fall in the held-out evaluation block "
                         f"[{HELD_OUT_BASE}, {HELD_OUT_BASE + HELD_OUT_COUNT}); choose another --seed")


def seed_record(first: int, count: int) -> Dict:
    return {"train": {"first": int(first), "count": int(count)},
            "held_out": {"first": HELD_OUT_BASE, "count": HELD_OUT_COUNT}}
