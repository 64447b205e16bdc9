"""Downstream tasks as data (lm-evaluation-harness style): each task is declared once, here.

A `TaskSpec` says where a task's files live in its official distribution (folder, file names, header or
not, encoding, which columns hold the text and the label), where it lives on the Hugging Face hub, its
labels, its official metrics and which score picks the fine-tuning learning rate. Loaders, encoders and
metrics read these fields; nothing downstream hard-codes a task name.

Label order matters: `labels[i]` is the label whose hub ClassLabel id is `i`, so local TSV files and hub
copies map to the same class indices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harness.config import ConfigError

TaskKind = Literal["classification", "regression", "qa", "ner", "zero_shot"]  # zero_shot: scored, never fine-tuned
Column = str | int  # a header name, or a 0-based index for files without a header


@dataclass(frozen=True)
class FileSpec:
    """One split file of a task's official local layout."""

    filename: str
    header: bool = True  # first row names the columns (CoLA's train/dev have none)
    encoding: str = "utf-8"  # MRPC starts with a byte-order mark: utf-8-sig
    text_columns: tuple[Column, ...] = ()  # one column (single sentence) or two (a pair)
    label_column: Column | None = None
    n_fields: int | None = None  # header-less files: fields per row (checked on every row)
    skip_short_rows: bool = False  # QQP train: a few official rows lack fields; GLUE's reference reader skips them


@dataclass(frozen=True)
class HubSpec:
    """The same task on the Hugging Face hub."""

    name: str
    config: str | None
    train_split: str = "train"
    dev_split: str = "validation"
    text_fields: tuple[str, ...] = ()
    label_field: str = "label"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: TaskKind
    folder: str  # folder name in the official distribution (GLUE: CoLA, SST-2, ...)
    parents: tuple[str, ...]  # folder sits at <root>/<parent>/<folder>: "glue" -> glue/SST-2, "" -> SST-2
    files: dict[str, FileSpec]  # split ("train", "dev") -> file
    hub: HubSpec
    metrics: tuple[str, ...]  # official metrics, reported x100 like the paper's tables
    selection_metric: str  # picks the lr; "score" = mean of `metrics` (the GLUE leaderboard convention)
    labels: tuple[str, ...] = ()  # classification and NER label names, in hub id order
    default_max_seq_length: int = 128
    tag_scheme: str | None = None  # NER: IOB1 (CoNLL-2003 files) is converted to IOB2 when loaded
    version: int = 1  # bump when a change here changes scores: recorded in every result
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        return len(self.hub.text_fields) == 2

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _glue(name: str, folder: str, config: str, files: dict[str, FileSpec], text_fields: tuple[str, ...],
          metrics: tuple[str, ...], labels: tuple[str, ...] = ("0", "1"), kind: TaskKind = "classification",
          dev_split: str = "validation", version: int = 1) -> TaskSpec:
    selection = metrics[0] if len(metrics) == 1 else "score"
    return TaskSpec(name=name, kind=kind, folder=folder, parents=("glue", ""), files=files,
                    hub=HubSpec("nyu-mll/glue", config, dev_split=dev_split, text_fields=text_fields),
                    metrics=metrics, selection_metric=selection, labels=labels if kind != "regression" else (),
                    version=version)


def _pair(filename: str, a: str, b: str, label: str, **kw: Any) -> FileSpec:
    return FileSpec(filename, text_columns=(a, b), label_column=label, **kw)


_COLA_FILE = {"header": False, "text_columns": (3,), "label_column": 1, "n_fields": 4}
_MNLI_TRAIN = _pair("train.tsv", "sentence1", "sentence2", "gold_label")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_ENTITY_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")

_SPECS: list[TaskSpec] = [
    _glue("cola", "CoLA", "cola", {"train": FileSpec("train.tsv", **_COLA_FILE),
                                   "dev": FileSpec("dev.tsv", **_COLA_FILE)}, ("sentence",), ("mcc",),
          version=2),  # 2: MCC as scikit-learn (and GLUE) compute it, 0 for a constant prediction
    _glue("sst2", "SST-2", "sst2", {"train": FileSpec("train.tsv", text_columns=("sentence",), label_column="label"),
                                    "dev": FileSpec("dev.tsv", text_columns=("sentence",), label_column="label")},
          ("sentence",), ("accuracy",)),
    _glue("mrpc", "MRPC", "mrpc",
          {split: _pair(f"{split}.tsv", "#1 String", "#2 String", "Quality", encoding="utf-8-sig")
           for split in ("train", "dev")}, ("sentence1", "sentence2"), ("f1", "accuracy")),
    _glue("stsb", "STS-B", "stsb", {split: _pair(f"{split}.tsv", "sentence1", "sentence2", "score")
                                    for split in ("train", "dev")},
          ("sentence1", "sentence2"), ("pearson", "spearman"), kind="regression"),
    _glue("qqp", "QQP", "qqp", {"train": _pair("train.tsv", "question1", "question2", "is_duplicate",
                                               skip_short_rows=True),
                                "dev": _pair("dev.tsv", "question1", "question2", "is_duplicate")},
          ("question1", "question2"), ("f1", "accuracy")),
    _glue("mnli", "MNLI", "mnli", {"train": _MNLI_TRAIN,
                                   "dev": _pair("dev_matched.tsv", "sentence1", "sentence2", "gold_label")},
          ("premise", "hypothesis"), ("accuracy",), labels=_NLI3, dev_split="validation_matched"),
    _glue("mnli_mm", "MNLI", "mnli", {"train": _MNLI_TRAIN,
                                      "dev": _pair("dev_mismatched.tsv", "sentence1", "sentence2", "gold_label")},
          ("premise", "hypothesis"), ("accuracy",), labels=_NLI3, dev_split="validation_mismatched"),
    _glue("qnli", "QNLI", "qnli", {split: _pair(f"{split}.tsv", "question", "sentence", "label")
                                   for split in ("train", "dev")}, ("question", "sentence"), ("accuracy",),
          labels=_NLI2),
    _glue("rte", "RTE", "rte", {split: _pair(f"{split}.tsv", "sentence1", "sentence2", "label")
                                for split in ("train", "dev")}, ("sentence1", "sentence2"), ("accuracy",),
          labels=_NLI2),
    _glue("wnli", "WNLI", "wnli", {split: _pair(f"{split}.tsv", "sentence1", "sentence2", "label")
                                   for split in ("train", "dev")}, ("sentence1", "sentence2"), ("accuracy",)),
    TaskSpec("squad_v1", "qa", "squad", ("",),
             {"train": FileSpec("train-v1.1.json"), "dev": FileSpec("dev-v1.1.json")},
             HubSpec("rajpurkar/squad", None, text_fields=("question", "context"), label_field="answers"),
             metrics=("exact_match", "f1"), selection_metric="f1", default_max_seq_length=384),
    TaskSpec("squad_v2", "qa", "squad", ("",),
             {"train": FileSpec("train-v2.0.json"), "dev": FileSpec("dev-v2.0.json")},
             HubSpec("rajpurkar/squad_v2", None, text_fields=("question", "context"), label_field="answers"),
             metrics=("exact_match", "f1"), selection_metric="f1", default_max_seq_length=384,
             extra={"version_2_with_negative": True}),
    TaskSpec("conll2003", "ner", "conll2003", ("", "ner"),
             {"train": FileSpec("eng.train"), "dev": FileSpec("eng.testa"), "test": FileSpec("eng.testb")},
             HubSpec("eriktks/conll2003", None, text_fields=("tokens",), label_field="ner_tags"),
             metrics=("f1", "precision", "recall"), selection_metric="f1", labels=_ENTITY_TAGS, tag_scheme="IOB1"),
    # BLiMP's "file" is its folder of 67 paradigm files (data/<paradigm>.jsonl); the hub has one config per
    # paradigm, each a single split `train` (it is a test set). Scored by harness.evaluate, never fine-tuned.
    TaskSpec("blimp", "zero_shot", "blimp", ("",), {"test": FileSpec("data")},
             HubSpec("nyu-mll/blimp", None, dev_split="train"),
             metrics=("accuracy",), selection_metric="accuracy"),
]

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}


def get_task(name: str) -> TaskSpec:
    """The spec of a known task; an unknown name is a one-line error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}") from None
