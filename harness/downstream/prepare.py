"""Examples -> encoded train and dev features plus the dev evaluator, once per study (shared by all trials)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from harness.downstream.conll import encode_ner
from harness.downstream.encode import Checkpoint, encode_texts
from harness.downstream.evaluators import ClassificationEvaluator, Evaluator, NerEvaluator, QAEvaluator
from harness.downstream.sources import load_examples
from harness.downstream.squad import encode_qa
from harness.tasks import TaskSpec


@dataclass
class TaskData:
    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]
    make_evaluator: Callable[[], Evaluator]
    train_examples: int  # after subsampling; QA windows and NER sentences are counted as examples before encoding
    dev_examples: int
    max_seq_length: int  # the length actually used (the request, capped by the checkpoint's position table)
    doc_stride: int | None = None  # QA: the window overlap actually used


def subsample(examples: list[Any], size: int | None, seed: int) -> list[Any]:
    """A fixed random subset (same for every trial of a study), kept in file order."""
    if size is None or size >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in keep]


def prepare_task_data(spec: TaskSpec, checkpoint: Checkpoint, data_dir: str | Path | None, *,
                      max_seq_length: int | None, train_subsample: int | None, subsample_seed: int,
                      doc_stride: int = 128, n_best: int = 20, max_answer_length: int = 30) -> TaskData:
    length = min(max_seq_length or spec.default_max_seq_length, checkpoint.max_length)
    train = subsample(load_examples(spec, "train", data_dir), train_subsample, subsample_seed)
    dev = load_examples(spec, "dev", data_dir)
    tok, types = checkpoint.tokenizer, checkpoint.token_types
    stride = min(doc_stride, length // 2)  # the tokenizer needs the overlap smaller than the context room
    if spec.kind == "qa":
        train_features, _ = encode_qa(tok, train, length, stride, types, train=True)
        dev_features, windows = encode_qa(tok, dev, length, stride, types, train=False)
        evaluator: Callable[[], Evaluator] = partial(QAEvaluator, spec, dev, windows, n_best, max_answer_length)
    elif spec.kind == "ner":
        label_to_id = {name: i for i, name in enumerate(spec.labels)}
        train_features = encode_ner(tok, train, label_to_id, length, types)
        dev_features = encode_ner(tok, dev, label_to_id, length, types)
        evaluator = partial(NerEvaluator, spec, dev)
    else:
        train_features = encode_texts(tok, train, length, types)
        dev_features = encode_texts(tok, dev, length, types)
        evaluator = partial(ClassificationEvaluator, spec)
    return TaskData(train_features, dev_features, evaluator, len(train), len(dev), length,
                    stride if spec.kind == "qa" else None)
