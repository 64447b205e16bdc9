"""Intervals for the difference between two arms when the unit of replication is the pre-training seed.

- `multi_bootstrap`: the multi-bootstrap of MultiBERTs (Sellam et al., ICLR 2022; google-research/language,
  `multiberts/multibootstrap.py`). Each replicate draws pre-training seeds with replacement (one draw for both arms
  when they are paired, i.e. share their seeds) and, where per-example outputs exist, evaluation examples with
  replacement, once, shared by both arms and every seed (dev examples of a task, documents of the held-out set,
  pairs of BLiMP). The statistic of a replicate is the difference of the two arms' means over their drawn seeds, each
  seed scored on the drawn examples. Returned: the difference on the data as they are, the percentile interval and
  P(difference <= 0) over the replicates. Without per-example outputs (runs recorded before them) it resamples seeds
  alone, and says so (`examples` is None).
- `paired_t_interval`: Student's t interval of the mean of the seed-level differences, the textbook answer for few
  seeds: with 3 seeds a bootstrap's interval is no wider than the range of the 3 values, and covers the true mean
  only about 75% of the time (tests/test_multibootstrap.py simulates both).

Pure functions of arrays and scoring callables (simulated data with known answers in the tests); the report decides
what is paired and which examples a column has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DRAWS = 2000
SEED = 0  # a fixed generator: the same run directories always give the same interval
# Pre-training seeds below which every verdict carries a warning (issue: few seeds are said, not hidden).
FEW_SEEDS = 5

# score(examples) -> one score per seed (shape [seeds]); `examples` is an index array into the evaluation
# examples, or None for "all of them as they are".
SeedScores = Callable[[np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A difference (ours - reference) with its interval and how it was obtained."""

    diff: float
    low: float
    high: float
    p_not_above: float | None  # P(difference <= 0) over the replicates (None for the t interval)
    seeds: int  # pre-training seeds per arm (the smaller arm)
    examples: int | None  # evaluation examples resampled; None: seeds alone
    method: str

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def few_seeds(self) -> bool:
        return self.seeds < FEW_SEEDS


def multi_bootstrap(ours: SeedScores, reference: SeedScores, seeds: tuple[int, int], examples: int | None, *,
                    paired: bool, level: float = 0.95, draws: int = DRAWS, seed: int = SEED) -> Interval:
    """The multi-bootstrap interval of mean(ours over seeds) - mean(reference over seeds).

    `seeds` = (seeds of ours, seeds of the reference); paired arms must have as many seeds, listed in the same
    order (seed i of ours shares its pre-training seed with seed i of the reference). `examples` = how many
    evaluation examples the scoring callables index (None: no per-example outputs, seeds alone)."""
    n_ours, n_ref = seeds
    if n_ours < 1 or n_ref < 1:
        raise ValueError("multi_bootstrap needs at least one seed per arm")
    if paired and n_ours != n_ref:
        raise ValueError(f"paired arms need the same seeds: {n_ours} vs {n_ref}")
    rng = np.random.default_rng(seed)
    point = float(np.mean(ours(None)) - np.mean(reference(None)))
    diffs = np.empty(draws)
    for i in range(draws):
        drawn = None if examples is None else rng.integers(0, examples, size=examples)
        a, b = ours(drawn), reference(drawn)
        pick_a = rng.integers(0, n_ours, size=n_ours)
        pick_b = pick_a if paired else rng.integers(0, n_ref, size=n_ref)
        diffs[i] = a[pick_a].mean() - b[pick_b].mean()
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    method = "multi-bootstrap over seeds and examples" if examples is not None else "bootstrap over seeds alone"
    return Interval(point, float(low), float(high), float(np.mean(diffs <= 0)), min(n_ours, n_ref), examples,
                    f"{method} ({'paired' if paired else 'unpaired'})")


def paired_t_interval(differences: Sequence[float], level: float = 0.95) -> Interval:
    """Student's t interval of the mean of seed-level differences (ours - reference, one per shared seed)."""
    from scipy import stats

    values = np.asarray(differences, dtype=float)
    if values.size < 2:
        raise ValueError("a t interval needs at least two seed-level differences")
    mean, sem = float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))
    half = float(stats.t.ppf(0.5 + level / 2, df=values.size - 1)) * sem
    return Interval(mean, mean - half, mean + half, None, int(values.size), None, "paired t over seeds")


def ratio_scores(numerators: np.ndarray, denominators: np.ndarray | None = None) -> SeedScores:
    """Seed scores of a metric that is a ratio of sums over examples (accuracy: correct / 1, BLiMP: right pairs,
    bits per character: NLL in bits / characters), from [seeds, examples] arrays."""
    num = np.asarray(numerators, dtype=float)
    den = np.ones_like(num) if denominators is None else np.asarray(denominators, dtype=float)
    if num.shape != den.shape or num.ndim != 2:
        raise ValueError(f"expected two [seeds, examples] arrays of one shape, got {num.shape} and {den.shape}")

    def score(examples: np.ndarray | None) -> np.ndarray:
        if examples is None:
            return num.sum(axis=1) / den.sum(axis=1)
        return num[:, examples].sum(axis=1) / den[:, examples].sum(axis=1)

    return score


def metric_scores(predictions: np.ndarray, labels: np.ndarray,
                  metric: Callable[[np.ndarray, np.ndarray], float]) -> SeedScores:
    """Seed scores of any metric of (predictions, labels) (F1, Pearson), from [seeds, examples] predictions and the
    examples' labels."""
    preds, gold = np.asarray(predictions), np.asarray(labels)

    def score(examples: np.ndarray | None) -> np.ndarray:
        index = slice(None) if examples is None else examples
        return np.array([metric(row[index], gold[index]) for row in preds])

    return score
