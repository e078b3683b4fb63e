"""Scene seeds: training data and evaluation never share one.

Training clips use seeds ``seed, seed+1, ...``; evaluation (``mirage bench imagine``) uses the
held-out block ``HELD_OUT_BASE .. HELD_OUT_BASE + HELD_OUT_COUNT - 1``, which ``mirage data sim``
refuses to generate and records in every dataset header. Checkpoints and sampler settings are
chosen on a third block, ``VALIDATION_BASE ..`` (``validation_seeds``), which training refuses too,
so that the held-out numbers are never the ones a choice was tuned on.
"""
from __future__ import annotations

from typing import Dict, Sequence

__all__ = ["HELD_OUT_BASE", "HELD_OUT_COUNT", "VALIDATION_BASE", "VALIDATION_COUNT", "held_out_seeds",
           "validation_seeds", "check_train_seeds", "seed_record"]

HELD_OUT_BASE = 900_000
HELD_OUT_COUNT = 10_000
VALIDATION_BASE = 800_000
VALIDATION_COUNT = 10_000


def held_out_seeds(n: int) -> list:
    """The first ``n`` evaluation seeds."""
    if not 1 <= n <= HELD_OUT_COUNT:
        raise ValueError(f"seeds: expected 1..{HELD_OUT_COUNT}, got {n}")
    return list(range(HELD_OUT_BASE, HELD_OUT_BASE + n))


def validation_seeds(n: int) -> list:
    """The first ``n`` validation seeds (for choosing checkpoints and settings)."""
    if not 1 <= n <= VALIDATION_COUNT:
        raise ValueError(f"seeds: expected 1..{VALIDATION_COUNT}, got {n}")
    return list(range(VALIDATION_BASE, VALIDATION_BASE + n))


def check_train_seeds(seeds: Sequence[int]) -> None:
    for name, base, count in (("held-out evaluation", HELD_OUT_BASE, HELD_OUT_COUNT),
                              ("validation", VALIDATION_BASE, VALIDATION_COUNT)):
        bad = [s for s in seeds if base <= s < base + count]
        if bad:
            raise ValueError(f"seed: training seeds {bad[0]}..{bad[-1]} fall in the {name} block "
                             f"[{base}, {base + count}); choose another --seed")


def seed_record(first: int, count: int) -> Dict:
    return {"train": {"first": int(first), "count": int(count)},
            "held_out": {"first": HELD_OUT_BASE, "count": HELD_OUT_COUNT},
            "validation": {"first": VALIDATION_BASE, "count": VALIDATION_COUNT}}
