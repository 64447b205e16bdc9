"""Official metrics for each task kind, reported x100 as in the paper's tables.

GLUE: torchmetrics (MCC for CoLA, F1 of the positive class + accuracy for MRPC/QQP, Pearson + Spearman
for STS-B, accuracy otherwise). SQuAD: torchmetrics' SQuAD metric, which is the official v1.1 script;
for v2.0 a question without an answer is scored as the official v2.0 script does - its gold answer list
becomes [""], so an empty prediction is an exact match (EM 1, F1 1) and any other prediction scores 0.
NER: entity-level precision/recall/F1 with seqeval's default (conlleval-compatible) chunking on IOB2 tags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import (
    Accuracy,
    F1Score,
    MatthewsCorrCoef,
    Metric,
    MetricCollection,
    PearsonCorrCoef,
    SpearmanCorrCoef,
)
from torchmetrics.text import SQuAD

from harness.downstream.squad import QAExample
from harness.tasks import TaskSpec


def glue_metrics(spec: TaskSpec) -> MetricCollection:
    """The task's official metrics as one torchmetrics collection, fed (predictions, targets)."""
    n = spec.num_labels
    factories: dict[str, Metric] = {}
    for name in spec.metrics:
        if name == "mcc":
            factories[name] = MatthewsCorrCoef(task="binary") if n == 2 else MatthewsCorrCoef(
                task="multiclass", num_classes=n)
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
    return {name: 100.0 * float(value) for name, value in collection.compute().items()}


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
