"""Sentence segmentation: pure functions from a document's text to its list of sentences.

A document's text holds paragraphs separated by blank lines (the loaders put WikiText's one-paragraph lines into
that shape too). Inside a paragraph, line breaks are hard wraps (Reuters, Gutenberg), not sentence ends, so they are
collapsed into spaces before pysbd sees the paragraph; a sentence therefore never crosses a paragraph boundary.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, Literal

Segmenter = Literal["pysbd", "newline"]

_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs are separated by blank lines; inside one, hard-wrapped lines and runs of layout whitespace
    (Gutenberg indentation, Reuters tables) become single spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = (" ".join(block.split()) for block in _BLANK_LINE.split(text))
    return [p for p in paragraphs if p]


@cache
def _pysbd_segmenter() -> Any:
    # One instance per process (datasets.map workers each build their own); clean=False keeps the text as is.
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def segment_paragraph(paragraph: str) -> list[str]:
    sentences = (s.strip() for s in _pysbd_segmenter().segment(paragraph))
    return [s for s in sentences if s]


def segment_text(text: str, segmenter: Segmenter) -> list[str]:
    """A document's sentences, in order: stripped, none empty.

    pysbd: rule-based English segmentation of each paragraph (handles "Mr.", "U.S.", "Jan. 5.", quotes, ?!).
    newline: the text already holds one sentence per line; each non-empty line is a sentence.
    """
    if segmenter == "newline":
        lines = (" ".join(line.split()) for line in text.splitlines())
        return [line for line in lines if line]
    if segmenter == "pysbd":
        return [s for paragraph in split_paragraphs(text) for s in segment_paragraph(paragraph)]
    raise ValueError(f"unknown segmenter {segmenter!r}; allowed: pysbd, newline")


def segment_batch(batch: dict[str, list[Any]], segmenter: Segmenter) -> dict[str, list[Any]]:
    """datasets.map(batched=True) function: a batch of documents (doc_id, text) -> (doc_id, sentences).
    Documents are kept even when they have no sentence, so document sets stay aligned with the loader's."""
    return {"doc_id": batch["doc_id"], "sentences": [segment_text(text, segmenter) for text in batch["text"]]}
