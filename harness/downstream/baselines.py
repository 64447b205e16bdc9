"""The best trivial predictor of each task: the floor a fine-tuned model has to clear to have learnt anything.

A trivial predictor ignores the input. It is chosen on the TRAINING labels (the same subset the trials train on)
and scored on dev with the task's official metrics, by the functions the real evaluators use (x100, plus
`score`, the selection score):
    classification  the constant class that scores best on the selection metric over the training labels: the
                    majority class for accuracy; for F1 + accuracy (MRPC, QQP) usually the positive class, since
                    F1 of the positive class is 0 for the other one. Ties (every constant has MCC 0) go to the
                    more frequent training class, then to the lower class index.
    regression      the training mean (what minimises the squared error on the training labels)
    qa              the empty answer (SQuAD v2.0: right on every unanswerable question)
    ner             "O" for every word (no entity: F1 0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import HarnessError
from harness.downstream.metrics import compute_percent, entity_scores, glue_metrics, selection_score, squad_scores
from harness.downstream.squad import QAExample
from harness.tasks import TaskSpec

TRIVIAL_KINDS = ("classification", "regression", "qa", "ner")
CORRELATIONS = ("pearson", "spearman")


@dataclass(frozen=True)
class TrivialPredictor:
    description: str  # e.g. "always 'not_entailment'"
    constant: int | float | str  # class index, score, answer text or tag: the same for every example


def trivial_predictor(spec: TaskSpec, train_labels: Sequence[Any]) -> TrivialPredictor:
    """The best constant for the task, from its training labels (class indices or scores; QA and NER ignore them)."""
    _check_kind(spec)
    if spec.kind == "classification":
        return _best_class(spec, train_labels)
    if spec.kind == "regression":
        if not train_labels:
            raise HarnessError(f"task {spec.name}: no training labels to take the mean of")
        mean = math.fsum(train_labels) / len(train_labels)
        return TrivialPredictor(f"always {mean:.4g} (the training mean)", mean)
    if spec.kind == "qa":
        return TrivialPredictor("always the empty answer", "")
    return TrivialPredictor("always 'O' (no entity)", "O")


def _check_kind(spec: TaskSpec) -> None:
    if spec.kind not in TRIVIAL_KINDS:
        raise HarnessError(f"task {spec.name} is of kind '{spec.kind}', which has no trivial predictor; "
                           f"allowed kinds: {', '.join(TRIVIAL_KINDS)}")


def _best_class(spec: TaskSpec, train_labels: Sequence[int]) -> TrivialPredictor:
    if not train_labels:
        raise HarnessError(f"task {spec.name}: no training labels to choose a class from")
    counts = [list(train_labels).count(c) for c in range(spec.num_labels)]

    def merit(c: int) -> tuple[float, int, int]:  # selection score, then frequency, then the lower index
        return score_trivial(spec, TrivialPredictor("", c), train_labels)["score"], counts[c], -c

    best = max(range(spec.num_labels), key=merit)
    return TrivialPredictor(f"always '{spec.labels[best]}'", best)


def score_trivial(spec: TaskSpec, predictor: TrivialPredictor, dev_labels: Sequence[Any]) -> dict[str, float]:
    """The official metrics (x100) and `score` of the constant on labels: class indices or scores (GLUE), answer
    lists (QA: one tuple of gold answers per question, empty when unanswerable), tag lists (NER)."""
    _check_kind(spec)
    if spec.kind in ("classification", "regression"):
        scores = _glue_constant(spec, predictor.constant, dev_labels)
    elif spec.kind == "qa":
        questions = [QAExample(str(i), "", "", tuple(answers), (0,) * len(answers))
                     for i, answers in enumerate(dev_labels)]
        scores = squad_scores({q.id: str(predictor.constant) for q in questions}, questions,
                              version_2=bool(spec.extra.get("version_2_with_negative")))
    else:
        with warnings.catch_warnings():  # seqeval warns that precision is undefined with no predicted entity
            warnings.simplefilter("ignore")
            scores = entity_scores(dev_labels, [[predictor.constant] * len(tags) for tags in dev_labels])
    scores["score"] = selection_score(spec, scores)
    return scores


def _glue_constant(spec: TaskSpec, constant: int | float | str, labels: Sequence[int | float]) -> dict[str, float]:
    regression = spec.kind == "regression"
    target = torch.tensor(list(labels), dtype=torch.float32 if regression else torch.long)
    with warnings.catch_warnings():  # torchmetrics warns about the zero variance a constant has by definition
        warnings.simplefilter("ignore")
        metrics = glue_metrics(spec)
        metrics.update(torch.full_like(target, float(constant) if regression else int(constant)), target)
        scores = compute_percent(metrics)
    # Pearson's and Spearman's correlations of a constant are undefined (zero variance: 0/0). torchmetrics returns
    # NaN (compute_percent makes it 0), 0, or a rounding residue such as 1.6e-6 from its running sums, depending
    # on the constant. A constant carries no information about which pair is more similar: 0, no association.
    return {name: 0.0 if name in CORRELATIONS else value for name, value in scores.items()}


def example_label(spec: TaskSpec, example: Any) -> Any:
    """What a trivial predictor is scored against: class index or score, gold answers, or tags."""
    if spec.kind == "qa":
        return example.answers
    if spec.kind == "ner":
        return example.tags
    return example.label


def trivial_scores(spec: TaskSpec, data_dir: str | Path | None, train_subsample: int | None = None,
                   subsample_seed: int = 0) -> dict[str, Any]:
    """The trivial predictor chosen on the task's training set (the same subset the trials train on) and its dev
    scores: {"description", "constant", "train_examples", "metrics": {official metric: x100}, "score"}."""
    from harness.downstream.prepare import subsample
    from harness.downstream.sources import load_examples

    train: list[Any] = []
    if spec.kind in ("classification", "regression"):  # QA and NER constants do not depend on the training set
        train = subsample(load_examples(spec, "train", data_dir), train_subsample, subsample_seed)
    predictor = trivial_predictor(spec, [example_label(spec, ex) for ex in train])
    metrics = score_trivial(spec, predictor, [example_label(spec, ex) for ex in load_examples(spec, "dev", data_dir)])
    score = metrics.pop("score")
    return {"description": predictor.description, "constant": predictor.constant, "train_examples": len(train),
            "metrics": metrics, "score": score}
