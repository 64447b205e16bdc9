"""Per-example evidence (harness.report.evidence): each task metric recomputed from weighted sums equals the metric
computed on the resampled examples directly (the harness's own torchmetrics collection), BLiMP's score is the mean
over paradigms, held-out bits per character is a ratio of sums over documents, and a run without per-example files
falls back to the seeds alone."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness.downstream.metrics import compute_percent, glue_metrics
from harness.report.evidence import blimp_scores, compare_cells, heldout_scores, task_scores
from harness.tasks import get_task


def write_predictions(folder, predictions, labels):
    folder.mkdir(parents=True)
    pd.DataFrame({"id": range(len(labels)), "prediction": predictions, "label": labels}).to_csv(
        folder / "dev_predictions.csv", index=False)
    return folder


def official(task: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """The task's selection score as the fine-tuning records compute it (torchmetrics, harness metrics)."""
    spec = get_task(task)
    collection = glue_metrics(spec)
    kind = torch.float32 if spec.kind == "regression" else torch.long
    collection.update(torch.tensor(predictions, dtype=kind), torch.tensor(labels, dtype=kind))
    values = compute_percent(collection)
    return float(np.mean([values[m] for m in spec.metrics]))


@pytest.mark.parametrize("task", ["sst2", "mrpc", "cola", "stsb", "mnli"])
def test_weighted_metrics_equal_the_official_metric_on_a_resample(tmp_path, task):
    spec = get_task(task)
    rng = np.random.default_rng(0)
    n = 60
    if spec.kind == "regression":
        labels = rng.uniform(0, 5, n).round(2)
        predictions = (labels + rng.normal(0, 1.5, n)).round(3)
    else:
        labels = rng.integers(0, spec.num_labels, n)
        predictions = np.where(rng.random(n) < 0.7, labels, rng.integers(0, spec.num_labels, n))
    folder = write_predictions(tmp_path / "trial", predictions, labels)
    metrics = tuple(spec.metrics) if spec.selection_metric == "score" else (spec.selection_metric,)
    score, ids = task_scores([[folder]], metrics)
    assert len(ids) == n and score(None)[0] == pytest.approx(official(task, predictions, labels), abs=1e-3)
    drawn = rng.integers(0, n, size=(4, n))
    per_replicate = score(drawn)[:, 0]
    for row, value in zip(drawn, per_replicate, strict=True):
        if task == "stsb":  # Spearman keeps the full set's ranks: exact on the data, close on a resample
            assert value == pytest.approx(official(task, predictions[row], labels[row]), abs=3.0)
        else:
            assert value == pytest.approx(official(task, predictions[row], labels[row]), abs=1e-3)


def test_a_constant_prediction_scores_zero_not_nan(tmp_path):
    folder = write_predictions(tmp_path / "constant", np.full(10, 2.5), np.linspace(0, 5, 10))
    score, _ = task_scores([[folder]], ("pearson", "spearman"))
    assert score(None)[0] == 0.0 and not np.isnan(score(np.zeros((1, 10), dtype=int))).any()


def test_blimp_is_the_mean_over_paradigms_and_held_out_bpc_a_ratio_of_sums(tmp_path):
    """Paradigm a: 3 pairs, 2 right (66.7%); b: 1 pair, right (100%): BLiMP's overall is 83.3, not 75 (3 of 4)."""
    folder = tmp_path / "blimp"
    folder.mkdir()
    with gzip.open(folder / "pairs.csv.gz", "wt") as handle:
        pd.DataFrame({"paradigm": ["a", "a", "a", "b"], "pairID": [0, 1, 2, 0],
                      "correct": [1, 0, 1, 1]}).to_csv(handle, index=False)
    score, ids = blimp_scores([folder])
    assert score(None)[0] == pytest.approx(250 / 3) and len(ids) == 4
    # a replicate drawing b's pair 3 times (weight 1 each) and a's wrong pair once (weight 1/3): 300 / (10/3) = 90
    assert score(np.array([[3, 3, 3, 1]]))[0, 0] == pytest.approx(90.0)
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"document": [0, 1], "masked_tokens": [10, 30], "nll_nats": [10 * math.log(2), 50 * math.log(2)],
                  "chars": [20, 40]}).to_csv(run / "heldout_documents.csv", index=False)
    bpc, _ = heldout_scores([run], "bpc")
    assert bpc(None)[0] == pytest.approx(60 / 60)
    ppl, _ = heldout_scores([run], "ppl")
    assert ppl(None)[0] == pytest.approx(math.exp(60 * math.log(2) / 40))


def test_without_per_example_files_the_comparison_resamples_the_seeds_alone():
    ours = {"seed_values": {0: 2.0, 1: 3.0, 2: 4.0}, "seed_dirs": {}}
    ref = {"seed_values": {0: 1.0, 1: 1.5, 2: 2.0, 3: 9.0}, "seed_dirs": {}}
    comparison = compare_cells(ours, ref, "sst2", metrics=("accuracy",))
    assert comparison.seeds == 3 and comparison.examples is None and comparison.diff == pytest.approx(1.5)
    assert comparison.method == "paired t over seeds alone (no per-example outputs)"
    flipped = compare_cells(ours, ref, "bpc", oriented=True)
    assert flipped.diff == pytest.approx(-1.5)  # lower bits per character is better
    assert compare_cells(ours, {"seed_values": {7: 1.0}, "seed_dirs": {}}, "sst2") is None
