"""Small statistics helpers for the benchmarks: nearest-rank percentiles over integer samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[int], fraction: float) -> int | None:
    """The nearest-rank percentile (`fraction` in (0, 1]) of `samples`, or None when empty.

    Nearest rank: the smallest sample such that at least `fraction` of all samples are less
    than or equal to it; with fewer than 100 samples p99 is therefore the maximum."""
    if not samples:
        return None
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def ns_to_ms(value: int | None) -> float | None:
    """Nanoseconds as milliseconds (None stays None)."""
    return None if value is None else value / 1e6
