"""CoNLL-2003 NER: `token POS chunk NER` lines, blank lines between sentences, `-DOCSTART-` between documents.

The English files tag entities in IOB1 (an entity starts with I-; B- only separates two adjacent entities of
one type). We convert to IOB2 (every entity starts with B-) when reading, so training labels and seqeval
both see one unambiguous scheme; IOB2 input passes through unchanged.

Sub-words: a word's label sits on its first sub-token; the others get -100 (ignored by the loss and the
metric), as in BERT's NER recipe. Words are joined with single spaces and mapped back through character
offsets, which works the same for WordPiece and byte-level BPE tokenizers.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import HarnessError
from harness.data.masking import IGNORE_INDEX


@dataclass(frozen=True, slots=True)
class NerSentence:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]  # IOB2


def read_conll(path: Path, labels: Sequence[str]) -> list[NerSentence]:
    if not path.is_file():
        raise HarnessError(f"CoNLL file {path} not found (official names: eng.train, eng.testa, eng.testb)")
    allowed = set(labels) | {"I-" + tag[2:] for tag in labels if tag.startswith("B-")}
    sentences: list[NerSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if tokens:
                    sentences.append(NerSentence(tuple(tokens), tuple(iob1_to_iob2(tags))))
                tokens, tags = [], []
                continue
            if len(fields) != 4:
                raise HarnessError(f"{path}:{number}: expected 4 space-separated fields (token POS chunk NER), "
                                   f"found {len(fields)}")
            if fields[3] not in allowed:
                raise HarnessError(f"{path}:{number}: tag '{fields[3]}' is not one of {', '.join(sorted(allowed))}")
            tokens.append(fields[0])
            tags.append(fields[3])
    if tokens:
        sentences.append(NerSentence(tuple(tokens), tuple(iob1_to_iob2(tags))))
    return sentences


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """An I-X that does not continue an entity of type X (after O, another type, or at the start) begins one."""
    converted: list[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        converted.append(tag)
        previous = tag
    return converted


def encode_ner(tokenizer: Any, sentences: Sequence[NerSentence], label_to_id: dict[str, int], max_length: int,
               token_types: bool) -> list[dict[str, Any]]:
    features: list[dict[str, Any]] = []
    for start in range(0, len(sentences), 1000):
        chunk = sentences[start:start + 1000]
        texts = [" ".join(s.tokens) for s in chunk]
        enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True,
                        return_token_type_ids=token_types)
        for i, sentence in enumerate(chunk):
            feature = {key: enc[key][i] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}
            feature["labels"] = first_subtoken_labels(sentence, enc["offset_mapping"][i], label_to_id)
            feature["sentence_index"] = start + i
            features.append(feature)
    return features


def first_subtoken_labels(sentence: NerSentence, offsets: Sequence[tuple[int, int]],
                          label_to_id: dict[str, int]) -> list[int]:
    """Each word's label on the first token that starts inside it; -100 on special and continuation tokens."""
    word_starts: list[int] = []
    position = 0
    for token in sentence.tokens:
        word_starts.append(position)
        position += len(token) + 1
    text = " ".join(sentence.tokens)
    labels: list[int] = []
    seen: set[int] = set()
    for begin, end in offsets:
        while begin < end and text[begin] == " ":  # tokenizers that keep the leading space in a token's span
            begin += 1
        if begin == end:  # special tokens have empty spans
            labels.append(IGNORE_INDEX)
            continue
        word = bisect.bisect_right(word_starts, begin) - 1
        labels.append(IGNORE_INDEX if word in seen else label_to_id[sentence.tags[word]])
        seen.add(word)
    return labels
