"""Descriptive statistics of a report's cells: the median of a cell's values with their range and quartiles, and
whether two differences point the same way. The intervals and verdicts are harness.report.multibootstrap's and
harness.report.claims'."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    """The median of a cell's seeds, their min, max, quartiles and count."""

    median: float
    low: float
    high: float
    q1: float
    q3: float
    n: int


def spread(values: Sequence[float]) -> Spread | None:
    """None for no values (a missing cell); quartiles by numpy's linear interpolation."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not data.size:
        return None
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return Spread(float(median), float(data.min()), float(data.max()), float(q1), float(q3), int(data.size))


def same_sign(ours: float | None, paper: float | None) -> bool | None:
    """Whether our difference and the paper's point the same way (None where either is missing; a zero
    difference agrees only with a zero)."""
    if ours is None or paper is None or not np.isfinite(ours) or not np.isfinite(paper):
        return None
    return bool(np.sign(ours) == np.sign(paper))
