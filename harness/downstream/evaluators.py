"""Dev-set scorers the Lightning module feeds batch by batch: reset(), update(batch, logits...), compute(),
and example_predictions(): what the last pass predicted for each dev example (a trial writes it beside its
final metrics, `write_predictions`, so a score can be re-derived and errors read example by example).

Classification keeps running metric states and one prediction per example. QA and NER keep per-feature
outputs because their score is defined over whole questions (several windows each) and whole sentences.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from harness.data.masking import IGNORE_INDEX
from harness.downstream.conll import NerSentence
from harness.downstream.metrics import compute_percent, entity_scores, glue_metrics, selection_score, squad_scores
from harness.downstream.squad import QAExample, QAWindow, postprocess_qa
from harness.paths import atomic_write_text
from harness.tasks import TaskSpec

PREDICTIONS_FILE = "dev_predictions.csv"


@dataclass(frozen=True, slots=True)
class ExamplePrediction:
    """One dev example: its id (index in file order, or the SQuAD question id), the prediction (class index,
    score, answer text, space-joined tags) and the gold label in the same form (QA: the JSON list of answers)."""

    id: int | str
    prediction: int | float | str
    label: int | float | str


class Evaluator(Protocol):
    def reset(self) -> None: ...
    def update(self, batch: dict[str, torch.Tensor], output: Any) -> None: ...
    def compute(self) -> dict[str, float]: ...
    def example_predictions(self) -> list[ExamplePrediction]: ...


def write_predictions(path: Path, rows: Iterable[ExamplePrediction]) -> None:
    """`id,prediction,label` as CSV, floats to 6 significant digits, written atomically."""
    def cell(value: int | float | str) -> int | str:
        return f"{value:.6g}" if isinstance(value, float) else value

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "prediction", "label"])
    writer.writerows([row.id, cell(row.prediction), cell(row.label)] for row in rows)
    atomic_write_text(path, buffer.getvalue())


class ClassificationEvaluator:
    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.metrics = glue_metrics(spec)

    def reset(self) -> None:
        self.metrics.reset()
        self.predicted: dict[int, tuple[int | float, int | float]] = {}  # example index -> (prediction, label)

    def update(self, batch: dict[str, torch.Tensor], output: Any) -> None:
        logits = output.logits.detach().float().cpu()
        predictions = logits.squeeze(-1) if self.spec.kind == "regression" else logits.argmax(-1)
        labels = batch["labels"].cpu()
        self.metrics.update(predictions, labels)
        count = len(labels)  # features built without an index are numbered in arrival order (an unshuffled pass)
        indices = batch["example_index"].tolist() if "example_index" in batch else range(
            len(self.predicted), len(self.predicted) + count)
        for index, guess, gold in zip(indices, predictions.tolist(), labels.tolist(), strict=True):
            self.predicted[index] = (guess, gold)

    def compute(self) -> dict[str, float]:
        scores = compute_percent(self.metrics)
        scores["score"] = selection_score(self.spec, scores)
        return scores

    def example_predictions(self) -> list[ExamplePrediction]:
        return [ExamplePrediction(i, *self.predicted[i]) for i in sorted(self.predicted)]


class QAEvaluator:
    def __init__(self, spec: TaskSpec, examples: Sequence[QAExample], windows: Sequence[QAWindow],
                 n_best: int, max_answer_length: int) -> None:
        self.spec, self.examples, self.windows = spec, examples, windows
        self.n_best, self.max_answer_length = n_best, max_answer_length
        self.version_2 = bool(spec.extra.get("version_2_with_negative"))
        self.reset()

    def reset(self) -> None:
        self.start: dict[int, np.ndarray] = {}
        self.end: dict[int, np.ndarray] = {}
        self.answered: tuple[list[QAExample], dict[str, str]] = ([], {})  # compute()'s questions and answers

    def update(self, batch: dict[str, torch.Tensor], output: Any) -> None:
        lengths = batch["attention_mask"].sum(-1).tolist()
        starts = output.start_logits.detach().float().cpu().numpy()
        ends = output.end_logits.detach().float().cpu().numpy()
        for row, index in enumerate(batch["feature_index"].tolist()):
            self.start[index] = starts[row, :lengths[row]]
            self.end[index] = ends[row, :lengths[row]]

    def compute(self) -> dict[str, float]:
        covered = [i for i in range(len(self.windows)) if i in self.start]
        examples = sorted({self.windows[i].example_index for i in covered})
        windows = [self.windows[i] for i in covered]
        remap = {old: new for new, old in enumerate(examples)}  # a limited dev pass scores only what it saw
        windows = [QAWindow(remap[w.example_index], w.offsets) for w in windows]
        subset = [self.examples[i] for i in examples]
        predictions = postprocess_qa(subset, windows, [self.start[i] for i in covered], [self.end[i] for i in covered],
                                     self.n_best, self.max_answer_length, allow_no_answer=self.version_2)
        self.answered = subset, predictions
        scores = squad_scores(predictions, subset, version_2=self.version_2)
        scores["score"] = selection_score(self.spec, scores)
        return scores

    def example_predictions(self) -> list[ExamplePrediction]:
        """The answers of the last compute() (post-processing is too slow to run twice per pass)."""
        subset, predictions = self.answered
        return [ExamplePrediction(e.id, predictions.get(e.id, ""), json.dumps(list(e.answers), ensure_ascii=False))
                for e in subset]


class NerEvaluator:
    def __init__(self, spec: TaskSpec, sentences: Sequence[NerSentence]) -> None:
        self.spec, self.sentences = spec, sentences
        self.reset()

    def reset(self) -> None:
        self.predicted: dict[int, list[str]] = {}

    def update(self, batch: dict[str, torch.Tensor], output: Any) -> None:
        predictions = output.logits.detach().argmax(-1).cpu()
        labels = batch["labels"].cpu()
        for row, index in enumerate(batch["sentence_index"].tolist()):
            keep = labels[row] != IGNORE_INDEX
            self.predicted[index] = [self.spec.labels[t] for t in predictions[row][keep].tolist()]

    def compute(self) -> dict[str, float]:
        gold, predicted = zip(*self._aligned().values(), strict=True) if self.predicted else ((), ())
        scores = entity_scores(gold, predicted)
        scores["score"] = selection_score(self.spec, scores)
        return scores

    def example_predictions(self) -> list[ExamplePrediction]:
        return [ExamplePrediction(i, " ".join(guess), " ".join(tags)) for i, (tags, guess) in self._aligned().items()]

    def _aligned(self) -> dict[int, tuple[list[str], list[str]]]:
        """Sentence index -> (gold tags, predicted tags), one tag per word."""
        aligned = {}
        for index in sorted(self.predicted):
            tags = list(self.sentences[index].tags)
            # Words cut off by max_seq_length get no prediction: they count as "O" (missed), never dropped.
            guess = self.predicted[index][:len(tags)]
            aligned[index] = tags, guess + ["O"] * (len(tags) - len(guess))
        return aligned
