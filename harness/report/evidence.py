"""Per-example outputs of a study's runs, as the seed scores the multi-bootstrap resamples (harness.study.
multibootstrap), and the one comparison function of the report: `compare_cells`.

What one pre-training seed scores on a column, from the files its jobs wrote:
- a fine-tuned task: `dev_predictions.csv` of each of its trials at the cell's learning rate (`id,prediction,label`),
  the task's official metric recomputed from weighted sums over the drawn dev examples (accuracy, F1 of the positive
  class, MCC as scikit-learn computes it, Pearson; Spearman as the Pearson correlation of the full dev set's ranks,
  which is exact on the data as they are and an approximation on a resample), averaged over the fine-tuning seeds;
- BLiMP: `pairs.csv.gz`, each pair weighted 1 / (pairs of its paradigm), so the score is the mean over paradigms;
- the held-out columns: `heldout_documents.csv` (per document: masked tokens, NLL in nats, characters): bits per
  character = sum(NLL) / ln 2 / sum(characters), perplexity = exp(sum(NLL) / sum(tokens)).
Examples are matched across seeds and arms by their id (dev example id, (paradigm, pair id), document); when any
seed lacks its file, or the ids differ, the comparison resamples the seeds alone and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.report.multibootstrap import Comparison, SeedScores, compare, example_counts, ratio_scores

PREDICTIONS = "dev_predictions.csv"
BLIMP_PAIRS = "pairs.csv.gz"
HELDOUT_DOCUMENTS = "heldout_documents.csv"
LOWER_IS_BETTER = {"ppl", "bpc"}


def compare_cells(ours: Any, reference: Any, column: str, *, oriented: bool = False, draws: int | None = None,
                  metrics: tuple[str, ...] | None = None) -> Comparison | None:
    """ours - reference on `column` over the pre-training seeds both cells have (cells of harness.report.report:
    `seed_values` {seed: score} and `seed_dirs` {seed: [job directories]}). `oriented`: for lower-is-better columns
    the sign is flipped, so positive means better. `metrics`: the task's official metrics (None for the held-out
    columns and BLiMP). None when the cells share no seed."""
    shared = sorted(set(_finite(ours["seed_values"])) & set(_finite(reference["seed_values"])))
    if not shared:
        return None
    sign = -1.0 if oriented and column in LOWER_IS_BETTER else 1.0
    scorers = [_per_example(cell, shared, column, metrics) for cell in (ours, reference)]
    if all(s is not None for s in scorers) and scorers[0][1] == scorers[1][1]:
        (mine, ids), (theirs, _) = scorers
        examples: int | None = len(ids)
    else:  # runs recorded before their per-example outputs, or different examples: the seeds alone
        mine, theirs = (_seed_scorer([cell["seed_values"][s] for s in shared]) for cell in (ours, reference))
        examples = None
    kwargs = {"draws": draws} if draws else {}
    return compare(_signed(mine, sign), _signed(theirs, sign), len(shared), examples, **kwargs)


def _finite(values: dict[Any, float]) -> dict[Any, float]:
    return {k: v for k, v in values.items() if v is not None and math.isfinite(v)}


def _signed(score: SeedScores, sign: float) -> SeedScores:
    return score if sign == 1.0 else (lambda examples: -np.asarray(score(examples)))


def _seed_scorer(values: list[float]) -> SeedScores:
    array = np.asarray(values, dtype=float)

    def score(examples: np.ndarray | None) -> np.ndarray:
        return array if examples is None else np.broadcast_to(array, (len(examples), array.size))

    return score


def _per_example(cell: Any, seeds: list[Any], column: str,
                 metrics: tuple[str, ...] | None) -> tuple[SeedScores, tuple[Any, ...]] | None:
    dirs = cell.get("seed_dirs") or {}
    if any(not dirs.get(seed) for seed in seeds):
        return None
    try:
        if column in ("bpc", "ppl"):
            return heldout_scores([dirs[s][0] for s in seeds], column)
        if column == "blimp":
            return blimp_scores([dirs[s][0] for s in seeds])
        if metrics:
            return task_scores([dirs[s] for s in seeds], metrics)
    except (OSError, ValueError, KeyError):
        return None
    return None


def heldout_scores(run_dirs: list[str | Path], column: str) -> tuple[SeedScores, tuple[Any, ...]] | None:
    """Bits per character or perplexity per seed, resampling held-out documents."""
    import pandas as pd

    frames = [pd.read_csv(Path(d) / HELDOUT_DOCUMENTS).sort_values("document") for d in run_dirs]
    ids = tuple(frames[0]["document"])
    if any(tuple(f["document"]) != ids for f in frames):
        return None
    nll = np.stack([f["nll_nats"].to_numpy(float) for f in frames])
    if column == "bpc":
        return ratio_scores(nll / math.log(2), np.stack([f["chars"].to_numpy(float) for f in frames])), ids
    tokens = np.stack([f["masked_tokens"].to_numpy(float) for f in frames])
    ratio = ratio_scores(nll, tokens)
    return (lambda examples: np.exp(ratio(examples))), ids


def blimp_scores(eval_dirs: list[str | Path]) -> tuple[SeedScores, tuple[Any, ...]] | None:
    """BLiMP accuracy (x100, the mean over paradigms) per seed, resampling pairs."""
    import pandas as pd

    frames = [pd.read_csv(Path(d) / BLIMP_PAIRS).sort_values(["paradigm", "pairID"]) for d in eval_dirs]
    ids = tuple(zip(frames[0]["paradigm"], frames[0]["pairID"], strict=True))
    if any(tuple(zip(f["paradigm"], f["pairID"], strict=True)) != ids for f in frames):
        return None
    weight = 1.0 / frames[0].groupby("paradigm")["pairID"].transform("size").to_numpy(float)
    correct = np.stack([f["correct"].to_numpy(float) for f in frames])
    ratio = ratio_scores(100.0 * correct * weight, np.broadcast_to(weight, correct.shape))
    return ratio, ids


def task_scores(trial_dirs: list[list[str | Path]], metrics: tuple[str, ...]) -> tuple[SeedScores, tuple[Any, ...]]:
    """A fine-tuned task's score (x100, the mean of its official metrics) per seed, averaged over each seed's trials
    (fine-tuning seeds), resampling dev examples."""
    import pandas as pd

    frames = [[pd.read_csv(Path(d) / PREDICTIONS).sort_values("id") for d in trials] for trials in trial_dirs]
    ids = tuple(frames[0][0]["id"])
    if any(tuple(f["id"]) != ids for trials in frames for f in trials):
        raise ValueError("trials scored different dev examples")
    labels = frames[0][0]["label"].to_numpy(float)
    statistics = [[_metric_statistic(f["prediction"].to_numpy(float), labels, metrics) for f in trials]
                  for trials in frames]

    def score(examples: np.ndarray | None) -> np.ndarray:
        weights = np.ones((1, len(ids))) if examples is None else example_counts(np.atleast_2d(examples), len(ids))
        per_seed = np.stack([np.mean([stat(weights) for stat in trials], axis=0) for trials in statistics], axis=-1)
        return per_seed[0] if examples is None else per_seed

    return score, ids


def _metric_statistic(predictions: np.ndarray, labels: np.ndarray,
                      metrics: tuple[str, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """weights [replicates, examples] -> the mean of `metrics` (x100) on each weighted resample, from weighted sums
    (each metric is a function of sums over examples, so one matrix product scores every replicate)."""
    parts = [_ONE_METRIC[name](predictions, labels) for name in metrics]

    def statistic(weights: np.ndarray) -> np.ndarray:
        return 100.0 * np.mean([part(weights) for part in parts], axis=0)

    return statistic


def _accuracy(pred: np.ndarray, gold: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    correct = (pred == gold).astype(float)
    return lambda w: (w @ correct) / w.sum(axis=1)


def _f1(pred: np.ndarray, gold: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    features = np.stack([(pred == 1) & (gold == 1), (pred == 1) & (gold != 1), (pred != 1) & (gold == 1)], axis=1)

    def f1(w: np.ndarray) -> np.ndarray:
        tp, fp, fn = (w @ features.astype(float)).T
        denominator = 2 * tp + fp + fn
        return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)

    return f1


def _mcc(pred: np.ndarray, gold: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    classes = np.union1d(pred, gold)
    onehot_pred = (pred[:, None] == classes[None, :]).astype(float)
    onehot_gold = (gold[:, None] == classes[None, :]).astype(float)
    correct = (pred == gold).astype(float)

    def mcc(w: np.ndarray) -> np.ndarray:  # scikit-learn's formula; 0 when undefined (harness.downstream.metrics)
        total, right = w.sum(axis=1), w @ correct
        p, t = w @ onehot_pred, w @ onehot_gold
        cov_pred, cov_gold = total**2 - (p * p).sum(axis=1), total**2 - (t * t).sum(axis=1)
        product = cov_pred * cov_gold
        value = np.divide(right * total - (t * p).sum(axis=1), np.sqrt(np.where(product > 0, product, 1.0)))
        return np.where(product > 0, value, 0.0)

    return mcc


def _pearson(pred: np.ndarray, gold: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    features = np.stack([np.ones_like(pred), pred, gold, pred * pred, gold * gold, pred * gold], axis=1)

    def pearson(w: np.ndarray) -> np.ndarray:  # a constant prediction: 0, no association
        n, x, y, xx, yy, xy = (w @ features).T
        cov = xy / n - (x / n) * (y / n)
        var = (xx / n - (x / n) ** 2) * (yy / n - (y / n) ** 2)
        ok = var > 1e-24
        return np.where(ok, cov / np.sqrt(np.where(ok, var, 1.0)), 0.0)

    return pearson


def _spearman(pred: np.ndarray, gold: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    from scipy.stats import rankdata

    return _pearson(rankdata(pred), rankdata(gold))


_ONE_METRIC = {"accuracy": _accuracy, "f1": _f1, "mcc": _mcc, "pearson": _pearson, "spearman": _spearman}
