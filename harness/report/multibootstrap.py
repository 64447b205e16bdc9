"""The interval of the difference between two arms when the unit of replication is the pre-training seed.

`compare(ours, reference, seeds, examples)` - what every comparison, signal test and claim of a report uses:
- the seed-level differences (each arm's score per shared pre-training seed, on all examples) and their mean;
- the multi-bootstrap of MultiBERTs (Sellam et al., ICLR 2022; google-research/language,
  `multiberts/multibootstrap.py`): each replicate draws the evaluation examples with replacement once, shared by both
  arms and every seed (dev examples of a task, documents of the held-out set, pairs of BLiMP), and the pre-training
  seeds with replacement (one draw for both arms: they are paired); its percentile interval and P(difference <= 0)
  are reported (`boot_low`, `boot_high`, `p_not_above`);
- the paired t interval over the seeds alone (`t_low`, `t_high`);
- the verdict interval (`low`, `high`). The percentile multi-bootstrap is too narrow at 5 seeds (it treats the
  seeds' spread as known: about 83% coverage when the seeds dominate), and the t over seeds alone misses the
  evaluation set's own sampling error (what the shared example draw adds: it dominates when the pre-training seeds
  barely differ). The verdict interval adds the two: the variance of the mean seed-level difference (the seeds'
  sample variance / n, n - 1 degrees of freedom) and the variance the example draw adds, estimated from the
  replicates with the seeds held fixed, less the part the seeds' variance already holds (method of moments for the
  seeds x examples design); a t interval with Welch-Satterthwaite degrees of freedom. Simulated studies with known
  differences (tests/test_multibootstrap.py) check 93-97% coverage at 5 seeds in both regimes and between them. Its
  one-sided p-values (`Comparison.p_above`, `p_below`) are what the claims' tests use (harness.report.claims).
Without per-example outputs (runs recorded before them) the examples are not resampled (`examples` is None).

Pure functions of arrays and scoring callables (simulated data with known answers in the tests); the report decides
which seeds are shared and which examples a column has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

DRAWS = 2000
SEED = 0  # a fixed generator: the same run directories always give the same interval
# Pre-training seeds below which every verdict carries a warning (issue: few seeds are said, not hidden).
FEW_SEEDS = 5
_CHUNK = 200  # replicates scored at once (bounds the memory of the example-count matrices)

# score(examples) -> one score per seed. `examples` is None ("all of them as they are": shape [seeds]) or an index
# array [replicates, examples] of drawn evaluation examples (shape [replicates, seeds]).
SeedScores = Callable[[np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class Comparison:
    """`compare`'s answer for ours - reference over shared pre-training seeds (see the module docstring)."""

    diff: float  # mean over seeds of the seed-level differences, all examples
    low: float  # the verdict interval: t with Welch-Satterthwaite df on seed + example variance
    high: float
    se: float
    df: float
    seed_variance: float  # variance of the mean difference from the seeds (sample variance / n)
    example_variance: float  # what the shared draw of evaluation examples adds (0 without per-example outputs)
    boot_low: float  # the multi-bootstrap's percentile interval (MultiBERTs), for reference
    boot_high: float
    p_not_above: float  # the multi-bootstrap's P(difference <= 0)
    t_low: float  # the paired t interval over the seeds alone
    t_high: float
    seeds: int
    examples: int | None
    seed_diffs: tuple[float, ...] = field(default=())
    level: float = 0.95

    @property
    def method(self) -> str:
        if self.seeds < 2:
            return "one shared pre-training seed: no interval"
        return ("t on seed and example variance (multi-bootstrap)" if self.examples is not None
                else "paired t over seeds alone (no per-example outputs)")

    @property
    def few_seeds(self) -> bool:
        return self.seeds < FEW_SEEDS

    @property
    def judged(self) -> bool:
        """Whether there is an interval at all (two shared pre-training seeds or more)."""
        return self.seeds >= 2 and np.isfinite(self.se)

    def p_above(self, threshold: float = 0.0) -> float:
        """One-sided p-value of "the true difference is above `threshold`" (small: it is)."""
        return self._p(self.diff - threshold)

    def p_below(self, threshold: float = 0.0) -> float:
        """One-sided p-value of "the true difference is below `threshold`" (small: it is)."""
        return self._p(threshold - self.diff)

    def _p(self, distance: float) -> float:
        from scipy import stats

        if not self.judged:
            return 1.0
        if self.se == 0:
            return 0.0 if distance > 0 else 1.0
        return float(stats.t.sf(distance / self.se, self.df))


def draw_examples(rng: np.random.Generator, examples: int, replicates: int) -> np.ndarray:
    """[replicates, examples] indices drawn with replacement."""
    return rng.integers(0, examples, size=(replicates, examples))


def compare(ours: SeedScores, reference: SeedScores, seeds: int, examples: int | None, *, level: float = 0.95,
            draws: int = DRAWS, seed: int = SEED) -> Comparison:
    """ours - reference, paired by pre-training seed: both callables score the same `seeds` seeds in the same order
    (seed i of ours shares its pre-training seed with seed i of the reference) on `examples` evaluation examples
    (None: no per-example outputs, the seeds alone)."""
    from scipy import stats

    if seeds < 1:
        raise ValueError("compare needs at least one shared pre-training seed")
    rng = np.random.default_rng(seed)
    seed_diffs = np.asarray(ours(None), dtype=float) - np.asarray(reference(None), dtype=float)
    if seed_diffs.shape != (seeds,):
        raise ValueError(f"expected {seeds} seed scores per arm, got shape {seed_diffs.shape}")
    diff = float(seed_diffs.mean())
    nan = float("nan")
    if seeds < 2:
        return Comparison(diff, nan, nan, nan, nan, nan, 0.0, nan, nan, nan, nan, nan, seeds, examples,
                          tuple(map(float, seed_diffs)), level)
    seed_variance = float(seed_diffs.var(ddof=1) / seeds)
    tail = (1 - level) / 2
    t_half = float(stats.t.ppf(1 - tail, seeds - 1)) * np.sqrt(seed_variance)
    # Replicates: examples drawn once per replicate (shared by both arms and all seeds), seeds drawn on top of them.
    replicate_diffs = np.empty((draws, seeds))
    for start in range(0, draws, _CHUNK):
        size = min(_CHUNK, draws - start)
        if examples is None:
            replicate_diffs[start:start + size] = seed_diffs[None, :]
        else:
            drawn = draw_examples(rng, examples, size)
            replicate_diffs[start:start + size] = np.asarray(ours(drawn)) - np.asarray(reference(drawn))
    picks = rng.integers(0, seeds, size=(draws, seeds))
    boot = np.take_along_axis(replicate_diffs, picks, axis=1).mean(axis=1)
    boot_low, boot_high = np.percentile(boot, [100 * tail, 100 * (1 - tail)])
    example_variance = 0.0
    if examples is not None:
        # Var over example draws of the seed-mean difference = sigma_e^2/m + sigma_x^2/(n m); of one seed's
        # difference = sigma_e^2/m + sigma_x^2/m (sigma_x: seed x example noise, already in the seeds' variance).
        of_mean = float(replicate_diffs.mean(axis=1).var(ddof=1))
        of_one = float(replicate_diffs.var(axis=0, ddof=1).mean())
        example_variance = max(0.0, (seeds * of_mean - of_one) / (seeds - 1))
    variance = seed_variance + example_variance
    se = float(np.sqrt(variance))
    if variance > 0:
        m = examples or 1
        df = variance**2 / (seed_variance**2 / (seeds - 1) + (example_variance**2 / max(m - 1, 1)))
    else:
        df = float(seeds - 1)
    half = float(stats.t.ppf(1 - tail, df)) * se
    return Comparison(diff, diff - half, diff + half, se, float(df), seed_variance, example_variance,
                      float(boot_low), float(boot_high), float(np.mean(boot <= 0)), diff - t_half, diff + t_half,
                      seeds, examples, tuple(map(float, seed_diffs)), level)


def one_sample_t_above(values: Sequence[float], threshold: float, level: float = 0.95) -> bool:
    """Whether the mean of `values` (one per pre-training seed) is above `threshold` beyond the seeds' noise: the
    one-sided t test at (1 - level) / 2, as the lower end of the two-sided t interval. Fewer than two values: False."""
    from scipy import stats

    data = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if data.size < 2:
        return False
    sem = float(data.std(ddof=1) / np.sqrt(data.size))
    if sem == 0:
        return bool(data.mean() > threshold)
    return bool(data.mean() - float(stats.t.ppf(0.5 + level / 2, data.size - 1)) * sem > threshold)


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
        counts = example_counts(examples, num.shape[1])
        return (counts @ num.T) / (counts @ den.T)

    return score


def example_counts(examples: np.ndarray, size: int) -> np.ndarray:
    """[replicates, size] how often each example was drawn, from [replicates, drawn] (or one [drawn]) indices."""
    drawn = np.atleast_2d(examples)
    flat = (np.arange(drawn.shape[0])[:, None] * size + drawn).ravel()
    counts = np.bincount(flat, minlength=drawn.shape[0] * size).reshape(drawn.shape[0], size).astype(float)
    return counts if np.ndim(examples) == 2 else counts[0]
