"""Packed examples on disk: the output of packing, stored once per data setting and shared by every run with
equal data settings (a sweep over batch size or learning rate packs nothing again).

Storage is columnar numpy (flat token ids + offsets), memory-mapped on load, so a DataLoader worker reads a row
in microseconds and nothing is pickled per example.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.cache import build_lock
from harness.data.packing import Example, draws_randomly, iter_copies
from harness.data.specials import SpecialTokens
from harness.paths import atomic_dir

EXAMPLES_CACHE_VERSION = 2
NO_NSP = -1


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


def concatenate(parts: list[PackedExamples]) -> PackedExamples:
    offsets = [parts[0].offsets]
    for part in parts[1:]:
        offsets.append(part.offsets[1:] + offsets[-1][-1])
    join = {name: np.concatenate([getattr(p, name) for p in parts]) for name in PackedExamples.__dataclass_fields__
            if name != "offsets"}
    return PackedExamples(offsets=np.concatenate(offsets), **join)


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


def _save(packed: PackedExamples, folder: Path, settings: dict[str, Any]) -> None:
    for name, array in vars(packed).items():
        np.save(folder / f"{name}.npy", array)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True))


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


def build_packed(documents: list[list[list[int]]], plan: PackingPlan, specials: SpecialTokens, folder: Path,
                 corpus_key: str) -> PackedExamples:
    """Pack once into `folder` (atomically, one process at a time), or load what an earlier run packed with the
    same plan."""
    with build_lock(folder) as cached:
        if not cached:
            # Copies are converted to arrays one at a time: dupe_factor copies as Python objects would not fit.
            copies = iter_copies(documents, plan.packing, plan.max_seq_length, specials, plan.nsp,
                                 plan.short_seq_prob, plan.seed, plan.copies, plan.separators)
            packed = concatenate([examples_to_arrays(examples, k) for k, examples in enumerate(copies)])
            with atomic_dir(folder) as tmp:
                _save(packed, tmp, {"corpus": corpus_key, **vars(plan)})
    return load_packed(folder)
