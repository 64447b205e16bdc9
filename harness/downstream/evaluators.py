"""Dev-set scorers the Lightning module feeds batch by batch: reset(), update(batch, logits...), compute().

Classification keeps only running metric states. QA and NER keep per-feature outputs because their score
is defined over whole questions (several windows each) and whole sentences, not over batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from harness.data.masking import IGNORE_INDEX
from harness.downstream.conll import NerSentence
from harness.downstream.metrics import compute_percent, entity_scores, glue_metrics, selection_score, squad_scores
from harness.downstream.squad import QAExample, QAWindow, postprocess_qa
from harness.tasks import TaskSpec


class Evaluator(Protocol):
    def reset(self) -> None: ...
    def update(self, batch: dict[str, torch.Tensor], output: Any) -> None: ...
    def compute(self) -> dict[str, float]: ...


class ClassificationEvaluator:
    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.metrics = glue_metrics(spec)

    def reset(self) -> None:
        self.metrics.reset()

    def update(self, batch: dict[str, torch.Tensor], output: Any) -> None:
        logits = output.logits.detach().float().cpu()
        predictions = logits.squeeze(-1) if self.spec.kind == "regression" else logits.argmax(-1)
        self.metrics.update(predictions, batch["labels"].cpu())

    def compute(self) -> dict[str, float]:
        scores = compute_percent(self.metrics)
        scores["score"] = selection_score(self.spec, scores)
        return scores


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
        scores = squad_scores(predictions, subset, version_2=self.version_2)
        scores["score"] = selection_score(self.spec, scores)
        return scores


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
        gold, predicted = [], []
        for index in sorted(self.predicted):
            tags = self.sentences[index].tags
            # Words cut off by max_seq_length get no prediction: they count as "O" (missed), never dropped.
            guess = self.predicted[index][:len(tags)]
            gold.append(list(tags))
            predicted.append(guess + ["O"] * (len(tags) - len(guess)))
        scores = entity_scores(gold, predicted)
        scores["score"] = selection_score(self.spec, scores)
        return scores
