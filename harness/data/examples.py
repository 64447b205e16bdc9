"""Packed examples on disk: the output of packing, stored once per data setting and shared by every run with
equal data settings (a sweep over batch size or learning rate packs nothing again).

Storage is columnar numpy (flat token ids + offsets), memory-mapped on load, so a DataLoader worker reads a row
in microseconds and nothing is pickled per example.

Building streams: documents are read from the tokenized corpus a shard at a time (harness.data.document_views),
packed as they are read, and the rows appended to the .npy files in chunks (`PackedWriter`); static copies are
packed one after another. Memory is bounded by one shard of documents, whatever the corpus size. Packing at least
PROGRESS_DOCUMENTS documents (all copies together) shows a progress bar over them (rate, ETA); smaller ones, as in
tests, pack silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from harness.data.cache import build_lock
from harness.data.document_views import DEFAULT_SHARD_DOCUMENTS, document_view
from harness.data.packing import Example, draws_randomly, stream_copies
from harness.data.specials import SpecialTokens
from harness.paths import atomic_dir

EXAMPLES_CACHE_VERSION = 2
NO_NSP = -1
WRITE_ROWS = 4096  # rows converted and appended at a time
NPY_HEADER_BYTES = 128  # numpy's format 1.0 header of a 1-D array, whatever its length
PROGRESS_DOCUMENTS = 10_000  # packing fewer documents than this (all copies together) takes seconds: no bar


@dataclass(frozen=True)
class PackedExamples:
    """Rows of packed inputs. Row r spans ids[offsets[r]:offsets[r+1]]; its first a_lengths[r] tokens are segment
    0 (the rest segment 1); nsp[r] is the NSP label or -1; copy[r] the static copy it belongs to."""

    ids: np.ndarray
    offsets: np.ndarray
    a_lengths: np.ndarray
    nsp: np.ndarray
    copy: np.ndarray
    first_document: np.ndarray
    boundaries: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, r: int) -> np.ndarray:
        return self.ids[self.offsets[r] : self.offsets[r + 1]]

    def num_copies(self) -> int:
        return int(self.copy.max()) + 1 if len(self) else 0

    def select(self, rows: int) -> PackedExamples:
        """The first `rows` rows (a validation cap keeps the same prefix for every run)."""
        if rows >= len(self):
            return self
        end = int(self.offsets[rows])
        return PackedExamples(self.ids[:end], self.offsets[: rows + 1], self.a_lengths[:rows], self.nsp[:rows],
                              self.copy[:rows], self.first_document[:rows], self.boundaries[:rows])


def examples_to_arrays(examples: list[Example], copy: int) -> PackedExamples:
    rows = examples
    lengths = np.fromiter((len(e.input_ids) for e in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((t for e in rows for t in e.input_ids), dtype=np.int32, count=int(offsets[-1]))
    return PackedExamples(
        ids=ids,
        offsets=offsets,
        a_lengths=np.fromiter((e.token_type_ids.count(0) for e in rows), dtype=np.int32, count=len(rows)),
        nsp=np.fromiter((NO_NSP if e.nsp_label is None else e.nsp_label for e in rows), dtype=np.int8,
                        count=len(rows)),
        copy=np.full(len(rows), copy, dtype=np.int16),
        first_document=np.fromiter((e.documents[0] if e.documents else -1 for e in rows), dtype=np.int32,
                                   count=len(rows)),
        boundaries=np.fromiter((e.boundaries for e in rows), dtype=np.int16, count=len(rows)),
    )


class PackedWriter:
    """Appends rows to the .npy files of `folder` (one per PackedExamples field) as they are packed. Each file
    starts with a header for 0 rows; `close` rewrites it with the final length (a 1-D header is 128 bytes for
    any length, so the data never moves)."""

    def __init__(self, folder: Path) -> None:
        self._files: dict[str, BinaryIO] = {}
        self._dtypes = {name: array.dtype for name, array in vars(examples_to_arrays([], 0)).items()}
        self._counts = dict.fromkeys(self._dtypes, 0)
        for name, dtype in self._dtypes.items():
            self._files[name] = (folder / f"{name}.npy").open("wb")
            self._header(name, dtype, 0)
        self._write("offsets", np.zeros(1, dtype=np.int64))

    def _header(self, name: str, dtype: np.dtype, length: int) -> None:
        np.lib.format.write_array_header_1_0(self._files[name], {"descr": np.lib.format.dtype_to_descr(dtype),
                                                                 "fortran_order": False, "shape": (length,)})

    def _write(self, name: str, array: np.ndarray) -> None:
        self._files[name].write(np.ascontiguousarray(array, dtype=self._dtypes[name]).tobytes())
        self._counts[name] += len(array)

    def append(self, rows: PackedExamples) -> None:
        start = self._counts["ids"]
        for name, array in vars(rows).items():
            if name == "offsets":
                self._write(name, array[1:] + start)
            else:
                self._write(name, array)

    def close(self) -> None:
        for name, file in self._files.items():
            file.seek(0)
            self._header(name, self._dtypes[name], self._counts[name])
            if file.tell() != NPY_HEADER_BYTES:  # never for 1-D arrays; would shift the data if it were
                raise RuntimeError(f"{name}.npy: a header of {file.tell()} bytes, not {NPY_HEADER_BYTES}")
            file.close()

    def __enter__(self) -> PackedWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
                 ) -> None:
        if kind is None:
            self.close()
        else:
            for file in self._files.values():
                file.close()


def chunks(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(examples)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _progress(documents: int) -> AbstractContextManager[Any]:
    """A bar over the documents packed, or None for a packing that takes seconds. The datasets library's switch
    (datasets.disable_progress_bars) hides it as it hides the corpus stages' bars."""
    if documents < PROGRESS_DOCUMENTS:
        return nullcontext(None)
    from datasets.utils.tqdm import tqdm

    return tqdm(total=documents, unit=" docs", desc="packing", dynamic_ncols=True)


def _advance(bar: Any, documents: int) -> None:
    """Move the bar to `documents` done (a row's first document marks how far its copy has been read)."""
    if bar is not None and documents > bar.n:
        bar.update(documents - bar.n)


def load_packed(folder: Path) -> PackedExamples:
    fields = PackedExamples.__dataclass_fields__
    return PackedExamples(**{name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in fields})


@dataclass(frozen=True)
class PackingPlan:
    """Everything that shapes the packed rows of one split (and nothing that does not)."""

    packing: str
    max_seq_length: int
    nsp: bool
    short_seq_prob: float
    seed: int
    copies: int
    separators: str = "document"

    @classmethod
    def create(cls, *, packing: str, max_seq_length: int, nsp: bool, short_seq_prob: float, seed: int,
               static_copies: int, separators: str = "document") -> PackingPlan:
        randomised = draws_randomly(packing)
        # Deterministic packings give identical copies: store one and let the masks tell the copies apart.
        return cls(packing=packing, max_seq_length=max_seq_length, nsp=nsp,
                   short_seq_prob=short_seq_prob if packing == "segment_pair" else 0.0,
                   seed=seed if randomised else 0, copies=static_copies if randomised else 1, separators=separators)

    def key(self, corpus_key: str) -> str:
        settings = {"version": EXAMPLES_CACHE_VERSION, "corpus": corpus_key, **vars(self)}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def build_packed(documents: Any, plan: PackingPlan, specials: SpecialTokens, folder: Path, corpus_key: str,
                 shard_size: int = DEFAULT_SHARD_DOCUMENTS) -> PackedExamples:
    """Pack once into `folder` (atomically, one process at a time), or load what an earlier run packed with the
    same plan. `documents`: a CorpusDocuments or a datasets Column / Dataset of sentences (read through Arrow,
    `shard_size` documents at a time), or documents in memory. The shard size changes memory, never the rows."""
    with build_lock(folder) as cached:
        if not cached:
            view = document_view(documents, shard_size)
            copies = stream_copies(view, plan.packing, plan.max_seq_length, specials, plan.nsp, plan.short_seq_prob,
                                   plan.seed, plan.copies, plan.separators)
            with atomic_dir(folder) as tmp:
                with PackedWriter(tmp) as writer, _progress(len(view) * plan.copies) as bar:
                    for copy, examples in enumerate(copies):  # one copy at a time, each streamed to the end
                        for chunk in chunks(examples, WRITE_ROWS):
                            rows = examples_to_arrays(chunk, copy)
                            writer.append(rows)
                            _advance(bar, copy * len(view) + int(rows.first_document.max(initial=-1)) + 1)
                        _advance(bar, (copy + 1) * len(view))
                settings = {"corpus": corpus_key, **vars(plan)}
                (tmp / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
    return load_packed(folder)
