"""Sentence segmentation: pure functions from a document's text to its list of sentences.

A document's text holds paragraphs separated by blank lines (the loaders put WikiText's one-paragraph lines into
that shape too). Inside a paragraph, line breaks are hard wraps (Reuters, Gutenberg), not sentence ends, so they are
collapsed into spaces before the segmenter (pysbd or sentencex) sees the paragraph; a sentence therefore never
crosses a paragraph boundary.
Which sentences end a paragraph is kept (`paragraph_ends`): fairseq's preprocessed text has one line per paragraph,
and packing can mark those line ends (data.separators = fairseq).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, Literal

Segmenter = Literal["pysbd", "sentencex", "newline"]

_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs are separated by blank lines; inside one, hard-wrapped lines and runs of layout whitespace
    (Gutenberg indentation, Reuters tables) become single spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = (" ".join(block.split()) for block in _BLANK_LINE.split(text))
    return [p for p in paragraphs if p]


def visible_chars(text: str) -> int:
    """Characters of `text` that are not whitespace: the unit of the tokenizer-independent bits per character
    (harness.data.heldout). Whitespace is left out because the tokenizers treat it differently (WordPiece drops
    it, byte-level BPE folds a space into the next token)."""
    return len("".join(text.split()))


@cache
def _pysbd_segmenter() -> Any:
    # One instance per process (datasets.map workers each build their own); clean=False keeps the text as is.
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def segment_paragraph(paragraph: str) -> list[str]:
    """One paragraph's sentences with pysbd (stripped, none empty)."""
    sentences = (s.strip() for s in _pysbd_segmenter().segment(paragraph))
    return [s for s in sentences if s]


def segment_paragraph_sentencex(paragraph: str) -> list[str]:
    """One paragraph's sentences with sentencex (stripped, none empty)."""
    import sentencex

    sentences = (s.strip() for s in sentencex.segment("en", paragraph))
    return [s for s in sentences if s]


def segment_paragraphs(text: str, segmenter: Segmenter) -> list[list[str]]:
    """A document's paragraphs, each a list of its sentences (stripped, none empty; no paragraph empty).

    sentencex (the default): sentencex's English rules on each paragraph (compiled, a few hundred times faster than
    pysbd; it finds 99% of pysbd's sentence ends on Reuters and WikiText, boundary F1 0.98 and 0.97, as it also
    ends sentences where pysbd does not: benchmarks/segmenters.py, docs/fidelity.md).
    pysbd: rule-based English segmentation of each paragraph (handles "Mr.", "U.S.", "Jan. 5.", quotes, ?!).
    newline: the text already holds one sentence per line; each non-empty line is a sentence, and blank lines
    separate paragraphs as for pysbd.
    """
    if segmenter == "newline":
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        blocks = ([" ".join(line.split()) for line in block.splitlines()] for block in _BLANK_LINE.split(text))
        paragraphs = [[line for line in lines if line] for lines in blocks]
    elif segmenter == "pysbd":
        paragraphs = [segment_paragraph(paragraph) for paragraph in split_paragraphs(text)]
    elif segmenter == "sentencex":
        paragraphs = [segment_paragraph_sentencex(paragraph) for paragraph in split_paragraphs(text)]
    else:
        raise ValueError(f"unknown segmenter {segmenter!r}; allowed: pysbd, sentencex, newline")
    return [sentences for sentences in paragraphs if sentences]


def segment_text(text: str, segmenter: Segmenter) -> list[str]:
    """A document's sentences, in order (the paragraphs of `segment_paragraphs`, flattened)."""
    return [sentence for paragraph in segment_paragraphs(text, segmenter) for sentence in paragraph]


def segment_batch(batch: dict[str, list[Any]], segmenter: Segmenter) -> dict[str, list[Any]]:
    """datasets.map(batched=True) function: a batch of documents (doc_id, text) -> (doc_id, sentences,
    paragraph_ends), where paragraph_ends[i] says whether sentence i is the last of its paragraph.
    Documents are kept even when they have no sentence, so document sets stay aligned with the loader's."""
    sentences, ends = [], []
    for text in batch["text"]:
        paragraphs = segment_paragraphs(text, segmenter)
        sentences.append([s for paragraph in paragraphs for s in paragraph])
        ends.append([i == len(paragraph) - 1 for paragraph in paragraphs for i in range(len(paragraph))])
    return {"doc_id": batch["doc_id"], "sentences": sentences, "paragraph_ends": ends}
