"""Statistics of a study's report: the median over seeds with its spread, and a bootstrap confidence interval for
the difference between two arms' medians, paired by seed where the design pairs them.

Pure functions of plain number lists (tested on hand-made values): the report decides what is paired. Also the one
nuisance-selection rule (best median over seeds) of the sweep's table and the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BOOTSTRAP_DRAWS = 4000
BOOTSTRAP_SEED = 0  # a fixed generator: the same run directories always give the same report


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


def bootstrap_ci(ours: Sequence[float], reference: Sequence[float], paired: bool, level: float = 0.95,
                 draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of median(ours) - median(reference) over `draws` resamples of the seeds.

    Paired (the two lists are aligned by seed, same length): one set of seed indices is drawn per resample and used
    for both arms, so what the seeds share (the pre-training run, the fine-tuning data order) cancels out. Unpaired:
    each arm's seeds are resampled on their own. One seed per arm gives a zero-width interval: no spread is known."""
    a, b = np.asarray(ours, dtype=float), np.asarray(reference, dtype=float)
    if not a.size or not b.size:
        raise ValueError("bootstrap_ci needs at least one value per arm")
    if paired and a.size != b.size:
        raise ValueError(f"paired bootstrap needs aligned seeds: {a.size} vs {b.size} values")
    rng = np.random.default_rng(seed)
    pick_a = rng.integers(0, a.size, size=(draws, a.size))
    pick_b = pick_a if paired else rng.integers(0, b.size, size=(draws, b.size))
    diffs = np.median(a[pick_a], axis=1) - np.median(b[pick_b], axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return float(low), float(high)


def verdict(diff: float, ci: tuple[float, float], n: int) -> str:
    """'beyond the seeds' spread' when the interval excludes zero, else 'within noise'; `n` = independent
    pre-training runs per arm: one cannot tell, whatever its fine-tuning seeds say."""
    if n < 2:
        return "one pre-training run per arm: no spread to judge by"
    return "beyond the seeds' spread" if ci[0] > 0 or ci[1] < 0 else "within noise"


def same_sign(ours: float | None, paper: float | None) -> bool | None:
    """Whether our difference and the paper's point the same way (None where either is missing; a zero
    difference agrees only with a zero)."""
    if ours is None or paper is None or not np.isfinite(ours) or not np.isfinite(paper):
        return None
    return bool(np.sign(ours) == np.sign(paper))


def best_by_median(scores: Any, keys: str | list[str]) -> Any:
    """The nuisance value (a `keys` group of a frame of trials with a `score` column) with the highest median score
    over seeds: the paper's fine-tuning protocol and the playbook's. Ties go to the first group in the frame's order,
    which is the grid's (as harness.finetune.summarize breaks them). The one selection rule of the sweep's table and
    the report."""
    return scores.groupby(keys, sort=False)["score"].median().idxmax()
