"""Official metrics for each task kind, reported x100 as in the paper's tables.

GLUE: torchmetrics (MCC for CoLA, F1 of the positive class + accuracy for MRPC/QQP, Pearson + Spearman
for STS-B, accuracy otherwise), with MCC as GLUE computes it (scikit-learn: 0 when the predictions or the
targets are constant; torchmetrics returns a value that depends on the class counts there, e.g. 57.7 for
"always 1" on the labels 0, 1, 1, 1) and a correlation of a constant (NaN in torchmetrics) reported as 0.
SQuAD: torchmetrics' SQuAD metric, which is the official v1.1 script; for v2.0 a question without an answer
is scored as the official v2.0 script does - its gold answer list becomes [""], so an empty prediction is an
exact match (EM 1, F1 1) and any other prediction scores 0.
NER: entity-level precision/recall/F1 with seqeval's default (conlleval-compatible) chunking on IOB2 tags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Accuracy, F1Score, Metric, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import BinaryMatthewsCorrCoef, MulticlassMatthewsCorrCoef
from torchmetrics.text import SQuAD

from harness.downstream.squad import QAExample
from harness.tasks import TaskSpec


def glue_mcc(confmat: torch.Tensor) -> torch.Tensor:
    """Matthews correlation from a confusion matrix (rows: targets), scikit-learn's formula: 0 when undefined."""
    confmat = confmat.double()
    targets, predictions = confmat.sum(1), confmat.sum(0)
    total, correct = confmat.sum(), torch.trace(confmat)
    cov_pred = total**2 - predictions @ predictions
    cov_target = total**2 - targets @ targets
    if cov_pred * cov_target == 0:  # constant predictions or targets: no correlation to measure
        return torch.tensor(0.0)
    return ((correct * total - targets @ predictions) / torch.sqrt(cov_pred * cov_target)).float()


class BinaryGlueMCC(BinaryMatthewsCorrCoef):
    def compute(self) -> torch.Tensor:
        return glue_mcc(self.confmat)


class MulticlassGlueMCC(MulticlassMatthewsCorrCoef):
    def compute(self) -> torch.Tensor:
        return glue_mcc(self.confmat)


def glue_metrics(spec: TaskSpec) -> MetricCollection:
    """The task's official metrics as one torchmetrics collection, fed (predictions, targets)."""
    n = spec.num_labels
    factories: dict[str, Metric] = {}
    for name in spec.metrics:
        if name == "mcc":
            factories[name] = BinaryGlueMCC() if n == 2 else MulticlassGlueMCC(num_classes=n)
        elif name == "f1":  # MRPC / QQP: F1 of the positive class ("paraphrase", "duplicate")
            factories[name] = F1Score(task="binary")
        elif name == "accuracy":
            factories[name] = Accuracy(task="multiclass", num_classes=n)
        elif name == "pearson":
            factories[name] = PearsonCorrCoef()
        elif name == "spearman":
            factories[name] = SpearmanCorrCoef()
        else:
            raise ValueError(f"task {spec.name}: no GLUE metric named '{name}'")
    return MetricCollection(factories)


def compute_percent(collection: MetricCollection) -> dict[str, float]:
    """x100; a NaN (torchmetrics' Pearson of constant predictions) becomes 0, no association, for a NaN would
    poison every median and mean over seeds it enters (and is not valid JSON)."""
    values = {name: 100.0 * float(value) for name, value in collection.compute().items()}
    return {name: 0.0 if math.isnan(value) else value for name, value in values.items()}


def squad_scores(predictions: Mapping[str, str], examples: Sequence[QAExample],
                 version_2: bool = False) -> dict[str, float]:
    """Exact match and F1 (0-100) over all questions; v2.0 adds the answerable / unanswerable breakdown."""
    scores = _squad(predictions, examples)
    if version_2:
        for prefix, subset in (("has_answer", [e for e in examples if e.answers]),
                               ("no_answer", [e for e in examples if not e.answers])):
            if subset:
                part = _squad(predictions, subset)
                scores[f"{prefix}_exact_match"], scores[f"{prefix}_f1"] = part["exact_match"], part["f1"]
    return scores


def _squad(predictions: Mapping[str, str], examples: Sequence[QAExample]) -> dict[str, float]:
    metric = SQuAD()
    preds = [{"id": e.id, "prediction_text": predictions.get(e.id, "")} for e in examples]
    targets = [{"id": e.id, "answers": {"text": list(e.answers) or [""],
                                        "answer_start": list(e.answer_starts) or [-1]}} for e in examples]
    metric.update(preds, targets)
    return {name: float(value) for name, value in metric.compute().items()}


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level scores (0-100): an entity counts only with the exact span and type."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold_lists, pred_lists = [list(g) for g in gold], [list(p) for p in predicted]
    return {"f1": 100.0 * f1_score(gold_lists, pred_lists),
            "precision": 100.0 * precision_score(gold_lists, pred_lists),
            "recall": 100.0 * recall_score(gold_lists, pred_lists)}


def selection_score(spec: TaskSpec, metrics: Mapping[str, float]) -> float:
    """The number that picks the learning rate: one metric, or ("score") the mean of the official ones."""
    if spec.selection_metric == "score":
        return float(torch.tensor([metrics[name] for name in spec.metrics]).mean())
    return float(metrics[spec.selection_metric])
