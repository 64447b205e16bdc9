"""SQuAD v1.1 / v2.0: the official JSON files, windows over long contexts, and logits -> answer text.

Encoding follows the Hugging Face `run_qa.py` recipe: the question is the first segment, the context the
second; a context longer than the window is cut into several windows that overlap by `doc_stride` tokens.
A training window that does not contain the whole answer (or any window of a v2.0 question without one)
points both start and end at the first token, which is also where v2.0's "no answer" score is read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import HarnessError


@dataclass(frozen=True, slots=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # empty: a v2.0 question without an answer
    answer_starts: tuple[int, ...]


def read_squad_json(path: Path, allow_no_answer: bool) -> list[QAExample]:
    if not path.is_file():
        raise HarnessError(f"SQuAD file {path} not found (official names: train-v1.1.json, dev-v1.1.json, "
                           "train-v2.0.json, dev-v2.0.json)")
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise HarnessError(f"{path}: not a SQuAD JSON file with a top-level 'data' list ({err})") from None
    examples: list[QAExample] = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(_field(article, "paragraphs", path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", path, where)
            for q, qa in enumerate(_field(paragraph, "qas", path, where)):
                examples.append(_qa_example(qa, context, path, f"{where}.qas[{q}]", allow_no_answer))
    return examples


def _field(record: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise HarnessError(f"{path}: {where} has no '{key}'")
    return record[key]


def _qa_example(qa: Any, context: str, path: Path, where: str, allow_no_answer: bool) -> QAExample:
    answers = _field(qa, "answers", path, where)
    if not answers and not allow_no_answer:
        raise HarnessError(f"{path}: {where} has no answer: a SQuAD 2.0 file? use task squad_v2")
    texts = tuple(_field(ans, "text", path, f"{where}.answers") for ans in answers)
    starts = tuple(int(_field(ans, "answer_start", path, f"{where}.answers")) for ans in answers)
    return QAExample(str(_field(qa, "id", path, where)), _field(qa, "question", path, where), context, texts, starts)


def qa_examples_from_records(records: Iterable[dict[str, Any]]) -> list[QAExample]:
    """Hub rows (`id`, `question`, `context`, `answers: {text: [...], answer_start: [...]}`) -> examples."""
    return [QAExample(str(r["id"]), r["question"], r["context"], tuple(r["answers"]["text"]),
                      tuple(int(s) for s in r["answers"]["answer_start"])) for r in records]


@dataclass(frozen=True, slots=True)
class QAWindow:
    """What evaluation needs to map a window's logits back to text: its example and each token's characters
    in the context (None for question and special tokens, which can never start or end an answer)."""

    example_index: int
    offsets: tuple[tuple[int, int] | None, ...]


def encode_qa(tokenizer: Any, examples: Sequence[QAExample], max_length: int, doc_stride: int,
              token_types: bool, train: bool) -> tuple[list[dict[str, Any]], list[QAWindow]]:
    """Features (one per window) and, for evaluation, the windows' offsets."""
    features: list[dict[str, Any]] = []
    windows: list[QAWindow] = []
    for start in range(0, len(examples), 512):  # chunks keep peak memory flat on 130k questions
        chunk = examples[start:start + 512]
        enc = tokenizer([ex.question.lstrip() for ex in chunk], [ex.context for ex in chunk],
                        truncation="only_second", max_length=max_length, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True,
                        return_token_type_ids=token_types)
        for i, offsets in enumerate(enc["offset_mapping"]):
            example_index = start + enc["overflow_to_sample_mapping"][i]
            sequence_ids = enc.sequence_ids(i)
            feature = {key: enc[key][i] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}
            if train:
                feature.update(_answer_positions(examples[example_index], offsets, sequence_ids))
            else:
                feature["feature_index"] = len(windows)
                context_offsets = tuple(o if s == 1 else None for o, s in zip(offsets, sequence_ids, strict=True))
                windows.append(QAWindow(example_index, context_offsets))
            features.append(feature)
    return features, windows


def _answer_positions(example: QAExample, offsets: Sequence[tuple[int, int]],
                      sequence_ids: Sequence[int | None]) -> dict[str, int]:
    """Token indices of the first answer in this window; (0, 0) when the window does not hold all of it."""
    if not example.answers:
        return {"start_positions": 0, "end_positions": 0}
    start_char = example.answer_starts[0]
    end_char = start_char + len(example.answers[0])
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return {"start_positions": 0, "end_positions": 0}
    start_token = next(i for i in context if offsets[i][1] > start_char)
    end_token = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return {"start_positions": start_token, "end_positions": end_token}


def postprocess_qa(examples: Sequence[QAExample], windows: Sequence[QAWindow], start_logits: Sequence[np.ndarray],
                   end_logits: Sequence[np.ndarray], n_best: int = 20, max_answer_length: int = 30,
                   allow_no_answer: bool = False) -> dict[str, str]:
    """Best answer span per question over all its windows (score = start + end logit). With v2.0, predict
    the empty answer when the no-answer score (first token's logits, lowest over windows) beats every span."""
    by_example: dict[int, list[int]] = defaultdict(list)
    for w, window in enumerate(windows):
        by_example[window.example_index].append(w)
    predictions: dict[str, str] = {}
    for e, example in enumerate(examples):
        best_score, best_text, null_score = -np.inf, "", np.inf
        for w in by_example.get(e, []):
            starts, ends = start_logits[w], end_logits[w]
            null_score = min(null_score, float(starts[0] + ends[0]))
            score, text = _best_span(example.context, windows[w].offsets, starts, ends, n_best, max_answer_length)
            if score > best_score:
                best_score, best_text = score, text
        predictions[example.id] = "" if allow_no_answer and null_score > best_score else best_text
    return predictions


def _best_span(context: str, offsets: Sequence[tuple[int, int] | None], starts: np.ndarray, ends: np.ndarray,
               n_best: int, max_answer_length: int) -> tuple[float, str]:
    best_score, best_text = -np.inf, ""
    top_starts = np.argsort(starts)[::-1][:n_best]
    top_ends = np.argsort(ends)[::-1][:n_best]
    for s in top_starts:
        for e in top_ends:
            if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                continue
            if e < s or e - s + 1 > max_answer_length:
                continue
            score = float(starts[s] + ends[e])
            if score > best_score:
                best_score, best_text = score, context[offsets[s][0]:offsets[e][1]]
    return best_score, best_text
