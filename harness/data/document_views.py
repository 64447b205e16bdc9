"""Documents as packing reads them: in order, one shard at a time, and single documents at random (NSP partners).

A tokenized corpus on disk is a datasets table (columns sentences, paragraph_ends) of any size; packing must never
turn all of it into Python objects (about 11.5 bytes of RAM per byte of text). `ArrowDocuments` reads it through
Arrow in shards of `shard_size` documents and drops a shard before reading the next, so at most one shard (plus
the document being packed and one partner) is alive at once. `ListDocuments` is the same view over documents
already in memory (hand-made tests, small inputs). `document_view` picks one for what a caller holds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

DEFAULT_SHARD_DOCUMENTS = 10_000

Document = list[list[int]]
Paragraphs = list[bool] | None


class ListDocuments:
    """Documents held in memory: a sequence of documents, with their paragraph ends or None."""

    def __init__(self, sentences: Sequence[Any], paragraph_ends: Sequence[Any] | None = None) -> None:
        self.sentences, self.paragraph_ends = sentences, paragraph_ends

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def has_paragraph_ends(self) -> bool:
        return self.paragraph_ends is not None

    def __iter__(self) -> Iterator[tuple[int, Any, Any]]:
        ends = self.paragraph_ends
        for index, document in enumerate(self.sentences):
            yield index, document, None if ends is None else ends[index]

    def document(self, index: int) -> Any:
        return self.sentences[index]

    def nonempty(self) -> np.ndarray:
        return np.fromiter((any(len(s) for s in doc) for doc in self.sentences), dtype=bool, count=len(self))


class ArrowDocuments:
    """The documents of a datasets.Dataset, read lazily through Arrow. Iteration reads `shard_size` documents per
    Arrow slice; `document(i)` serves i from the shard in hand or reads that one row."""

    def __init__(self, dataset: Any, sentences: str = "sentences", paragraph_ends: str | None = None,
                 shard_size: int = DEFAULT_SHARD_DOCUMENTS) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size = {shard_size}; allowed: >= 1")
        columns = [sentences] + ([paragraph_ends] if paragraph_ends else [])
        # Arrow format: a slice is a pyarrow Table (an index mapping left by select() is applied per slice).
        self._data = dataset.select_columns(columns).with_format("arrow")
        self._sentences, self._ends, self.shard_size = sentences, paragraph_ends, shard_size
        self._shard_start = 0
        self._shard: list[Document] = []
        self._nonempty: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._data)

    @property
    def has_paragraph_ends(self) -> bool:
        return self._ends is not None

    def _read(self, start: int, stop: int) -> tuple[list[Document], list[Paragraphs]]:
        table = self._data[start:stop]
        sentences = table.column(self._sentences).to_pylist()
        ends = table.column(self._ends).to_pylist() if self._ends else [None] * len(sentences)
        return sentences, ends

    def __iter__(self) -> Iterator[tuple[int, Document, Paragraphs]]:
        for start in range(0, len(self), self.shard_size):
            self._shard = []  # the previous shard goes before the next is read
            self._shard, ends = self._read(start, min(start + self.shard_size, len(self)))
            self._shard_start = start
            for offset, (document, paragraph_ends) in enumerate(zip(self._shard, ends, strict=True)):
                yield start + offset, document, paragraph_ends
        self._shard = []

    def document(self, index: int) -> Document:
        if 0 <= index - self._shard_start < len(self._shard):
            return self._shard[index - self._shard_start]
        return self._read(index, index + 1)[0][0]

    def nonempty(self) -> np.ndarray:
        """Per document: does it hold a non-empty sentence? Computed on the Arrow columns, a shard at a time."""
        if self._nonempty is None:
            import pyarrow.compute as pc

            flags = np.zeros(len(self), dtype=bool)
            for start in range(0, len(self), self.shard_size):
                column = self._data[start:start + self.shard_size].column(self._sentences).combine_chunks()
                parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
                lengths = pc.list_value_length(pc.list_flatten(column)).to_numpy(zero_copy_only=False)
                flags[start + parents[lengths > 0]] = True
            self._nonempty = flags
        return self._nonempty


DocumentView = ListDocuments | ArrowDocuments


def document_view(documents: Any, shard_size: int = DEFAULT_SHARD_DOCUMENTS) -> DocumentView:
    """The view for what a caller holds: a view (as it is), a CorpusDocuments, a datasets Dataset or Column of
    sentences (read through Arrow), or documents in memory."""
    if isinstance(documents, ListDocuments | ArrowDocuments):
        return documents
    sentences = getattr(documents, "sentences", documents)
    ends = getattr(documents, "paragraph_ends", None)
    arrow = sys.modules.get("datasets.arrow_dataset")  # nothing can be a Dataset unless datasets is loaded
    if arrow is None:
        return ListDocuments(sentences, ends)
    Dataset, Column = arrow.Dataset, arrow.Column
    if isinstance(sentences, Dataset):
        ends_column = "paragraph_ends" if "paragraph_ends" in sentences.column_names else None
        return ArrowDocuments(sentences, paragraph_ends=ends_column, shard_size=shard_size)
    if isinstance(sentences, Column) and isinstance(sentences.source, Dataset):
        same_table = isinstance(ends, Column) and ends.source is sentences.source
        if ends is None or same_table:
            return ArrowDocuments(sentences.source, sentences.column_name, ends.column_name if same_table else None,
                                  shard_size=shard_size)
    return ListDocuments(sentences, ends)
