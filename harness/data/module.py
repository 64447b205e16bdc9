"""The pre-training LightningDataModule: corpus -> packed examples (cached) -> masked batches.

`prepare_data` builds (or finds) the tokenized corpus and the packed examples; `setup` memory-maps them. Masks are
drawn in the collator, per batch and vectorised, as a pure function of (seed, epoch-or-copy, example index): a
resumed run, a different batch size or a different number of workers sees exactly the same masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from harness.config import ConfigError, RunConfig
from harness.data.examples import PackedExamples, PackingPlan, build_packed
from harness.data.heldout import CharCountingCollator, CommonValidation, build_common_validation
from harness.data.loader import (
    GHOST,
    EpochBatchSampler,
    Key,
    StreamBatchSampler,
    UpdateLoader,
    batches_by_padded_tokens,
    batches_by_tokens,
    epoch_order,
)
from harness.data.masking import (
    IGNORE_INDEX,
    fixed_validation_mask,
    mask_key,
    mask_rng,
    mask_tokens,
    word_start_table,
)
from harness.data.specials import SpecialTokens
from harness.paths import cache_root

VALIDATION_PACKING_SEED = 0  # validation packs the same way for every run
# The paper (section 4.1): 10 copies over 40 epochs, so each static mask is shown 4 times.
PAPER_STATIC_MASK_VIEWS = 4


@dataclass(frozen=True)
class TrainBudget:
    """What the run will consume, resolved by the recipe as plain values. A budget in tokens becomes updates only
    once the packed rows are known (how many real tokens an update holds depends on their lengths)."""

    max_steps: int | None
    max_tokens: int | None  # real (non-padding) input tokens
    accumulate: int  # micro-batches per update per device
    devices: int
    sequences_per_update: int | None  # batching by count (all devices together)
    update_tokens: int | None  # batching by tokens: the budget of one update (all devices together)
    group_by_length: bool = False  # the token budget counts padded positions among inputs of similar length

    def tokens_per_update(self, lengths: np.ndarray, seed: int) -> float:
        """Real tokens one update holds on average: by count, the mean row length times the batch; by tokens, the
        mean of the first epoch's updates (each a little under its budget; how they are split does not matter)."""
        if self.update_tokens is None:
            return float(self.sequences_per_update * np.mean(lengths))
        if self.group_by_length:
            updates = batches_by_padded_tokens(lengths, seed, 0, self.update_tokens)
        else:
            updates = batches_by_tokens(epoch_order(len(lengths), seed, 0, shuffle=True), lengths, self.update_tokens)
        return float(np.mean([lengths[b].sum() for b in updates]))

    def plan(self, lengths: np.ndarray, seed: int) -> tuple[int, float]:
        """(updates, sequences the run will feed) for packed rows of these lengths; by tokens, the sequences are
        estimated from the mean row length. Computed once per run: by tokens it batches a whole pass."""
        if self.max_steps is not None and self.sequences_per_update is not None:
            return self.max_steps, float(self.max_steps * self.sequences_per_update)
        per_update = self.tokens_per_update(lengths, seed)
        updates = self.max_steps if self.max_steps is not None else max(1, math.ceil(self.max_tokens / per_update))
        if self.sequences_per_update is not None:
            return updates, float(updates * self.sequences_per_update)
        return updates, updates * per_update / max(float(np.mean(lengths)), 1.0)


def auto_dupe_factor(expected_sequences: float, rows_per_copy: int) -> int:
    """Static copies so that each mask is shown about as often as in the paper: passes over the data / 4."""
    passes = expected_sequences / max(rows_per_copy, 1)
    return max(1, round(passes / PAPER_STATIC_MASK_VIEWS))


def _check_nsp_documents(nsp: bool, documents: int, split: str) -> None:
    if nsp and documents < 2:
        hint = "raise corpus.validation_fraction" if split == "validation" else "use a larger corpus"
        raise ConfigError(f"data.nsp = true needs at least two documents in the {split} split to draw random "
                          f"B segments from; it has {documents} ({hint})")


@dataclass(frozen=True)
class MaskSettings:
    mask_prob: float
    mask_token_fraction: float
    random_token_fraction: float
    mask_count: str
    max_predictions: int | None


class TrainExamples(torch.utils.data.Dataset):
    """Maps a sampler key (epoch, i) to (mask epoch, mask index, stored row).

    Dynamic masking: i is a stored row and the mask is keyed by the training epoch. Static masking: i runs over
    dupe_factor copies of the data; the mask is keyed by the copy number instead of the epoch, so every pass
    over the data sees the same dupe_factor masks of each sequence (Google's duplicated data)."""

    def __init__(self, packed: PackedExamples, masking: str, copies: int) -> None:
        self.packed, self.masking = packed, masking
        stored = np.arange(len(packed))
        if packed.num_copies() > 1 or copies == 1:  # each stored row already belongs to one copy
            self.rows, self.copies = stored, np.asarray(packed.copy, dtype=np.int64)
        else:  # one deterministic packing stored: the copies differ only by their masks
            self.rows = np.tile(stored, copies)
            self.copies = np.repeat(np.arange(copies), len(packed))

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> np.ndarray:
        return self.packed.lengths()[self.rows]

    def __getitem__(self, key: Key) -> tuple[int, int, int]:
        epoch, index = key
        if epoch == GHOST:  # a ghost keeps its epoch: the collator gives it no label
            return GHOST, index, int(self.rows[index])
        return mask_key(self.masking, epoch, int(self.copies[index])), index, int(self.rows[index])


class ValidationExamples(torch.utils.data.Dataset):
    def __init__(self, packed: PackedExamples) -> None:
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, key: Key) -> tuple[int, int, int]:
        return 0, key[1], key[1]


class MaskingCollator:
    """Pads a list of (mask epoch, mask index, row) into tensors and masks them in one vectorised call."""

    def __init__(self, packed: PackedExamples, specials: SpecialTokens, *, seed: int, masks: MaskSettings | None,
                 word_starts: np.ndarray | None, token_types: bool, nsp: bool) -> None:
        self.packed, self.specials, self.seed, self.masks = packed, specials, seed, masks
        self.word_starts, self.token_types, self.nsp = word_starts, token_types, nsp

    def _pad(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.array([self.packed.offsets[r + 1] - self.packed.offsets[r] for r in rows])
        ids = np.full((len(rows), int(lengths.max())), self.specials.pad_id, dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : lengths[i]] = self.packed.row(r)
        return ids, lengths

    def _mask(self, ids: np.ndarray, epochs: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        common = {"special_ids": self.specials.all_ids, "mask_id": self.specials.mask_id,
                  "vocab_size": self.specials.vocab_size}
        if self.masks is None:  # validation: the one fixed mask set, whatever the training recipe
            return fixed_validation_mask(ids, index=indices, **common)
        m = self.masks
        word_starts = None if self.word_starts is None else self.word_starts[ids]
        return mask_tokens(ids, **common, mask_prob=m.mask_prob, mask_token_fraction=m.mask_token_fraction,
                           random_token_fraction=m.random_token_fraction, mask_count=m.mask_count,
                           max_predictions=m.max_predictions, word_starts=word_starts,
                           rng=mask_rng(self.seed, epochs, indices))

    def __call__(self, items: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
        epochs, indices, rows = (np.array(column, dtype=np.int64) for column in zip(*items, strict=True))
        ids, lengths = self._pad(list(rows))
        positions = np.arange(ids.shape[1])[None, :]
        ghost = epochs == GHOST  # fed only so that no micro-batch is empty (loader.split_update): no label
        masked, labels = self._mask(ids, np.where(ghost, 0, epochs), indices)
        labels[ghost] = IGNORE_INDEX
        batch = {"input_ids": torch.from_numpy(masked),
                 "attention_mask": torch.from_numpy((positions < lengths[:, None]).astype(np.int64)),
                 "labels": torch.from_numpy(labels.astype(np.int64))}
        if self.token_types:
            a_lengths = np.asarray(self.packed.a_lengths)[rows]
            types = (positions >= a_lengths[:, None]) & (positions < lengths[:, None])
            batch["token_type_ids"] = torch.from_numpy(types.astype(np.int64))
        if self.nsp:
            nsp = np.asarray(self.packed.nsp, dtype=np.int64)[rows]
            batch["next_sentence_label"] = torch.from_numpy(np.where(ghost, IGNORE_INDEX, nsp))
        if ghost.any():
            batch["ghost"] = torch.from_numpy(ghost)
        batch["example_index"] = torch.from_numpy(indices)
        batch["mask_epoch"] = torch.from_numpy(epochs)
        return batch



class PretrainDataModule(pl.LightningDataModule):
    """Data for one pre-training run. `nsp` and `token_types` come from the recipe (resolved once, in
    harness.recipe), not from the config, so the model and the data cannot disagree about them."""

    def __init__(self, config: RunConfig, *, nsp: bool, token_types: bool, data_dir: str | Path | None = None,
                 micro_batch_size: int, budget: TrainBudget) -> None:
        super().__init__()
        self.config, self.data_dir = config, data_dir
        self.nsp, self.token_types = nsp, token_types
        self.micro_batch_size = micro_batch_size
        self.budget = budget
        self.train_examples: TrainExamples | None = None
        self.val_examples: ValidationExamples | None = None
        self.static_copies = 1  # set by build(), with rows_per_copy, total_updates and expected_sequences
        self.redraw = False  # static copies re-draw their pairs (data.static_mode redraw, static masking only)

    # ---- building -------------------------------------------------------------------------------------
    def _plan(self, seed: int, copies: int) -> PackingPlan:
        d = self.config.data
        return PackingPlan.create(packing=d.packing, max_seq_length=d.max_seq_length, nsp=self.nsp,
                                  short_seq_prob=d.short_seq_prob, seed=seed, static_copies=copies,
                                  separators=d.separators)

    def _pack(self, split: str, documents: Any, plan: PackingPlan) -> PackedExamples:
        # The split is part of the key: equal plans over different documents must never share a cache entry.
        key = f"{self._corpus_key}/{split}"
        root = cache_root(self.config.impl.cache_dir) / "examples"
        return build_packed(documents, plan, self.specials, root / plan.key(key), key)

    def build(self) -> tuple[PackedExamples, PackedExamples]:
        from harness.data.corpus import build_corpus

        corpus = build_corpus(self.config, self.data_dir)
        self.tokenizer, self.tokenizer_dir = corpus.tokenizer, corpus.tokenizer_dir
        self.specials = SpecialTokens.from_tokenizer(corpus.tokenizer)
        self._corpus_key = corpus.cache_dir.name
        self.corpus_digest = corpus.corpus_digest
        self.common_validation = self._build_common_validation(corpus)
        return self._build_train(corpus.documents("train")), self._build_validation(corpus.documents("validation"))

    def _build_train(self, documents: Any) -> PackedExamples:
        """One packing first (copy 0 of any static packing): its size tells `dupe_factor: auto` how many copies the
        budget allows. Pair packings then re-draw every copy (static_mode redraw, Google) or keep the one packing
        and let only the masks differ (masks_only)."""
        _check_nsp_documents(self.nsp, len(documents), "train")
        first = self._pack("train", documents, self._plan(self.config.seed, 1))
        self.rows_per_copy = len(first)
        self.total_updates, self.expected_sequences = self.budget.plan(first.lengths(), self.config.seed)
        self.static_copies = self._resolve_static_copies()
        self.redraw = self.config.data.masking == "static" and self.config.data.static_mode == "redraw"
        plan = self._plan(self.config.seed, self.static_copies if self.redraw else 1)
        return first if plan.copies == 1 else self._pack("train", documents, plan)

    def _resolve_static_copies(self) -> int:
        d = self.config.data
        if d.masking != "static":
            return 1
        if d.dupe_factor != "auto":
            return int(d.dupe_factor)
        return auto_dupe_factor(self.expected_sequences, self.rows_per_copy)

    def _build_validation(self, documents: Any) -> PackedExamples:
        plan = self._plan(VALIDATION_PACKING_SEED, 1)  # validation packs the same way for every run
        if plan.nsp and len(documents) == 0:  # no validation documents: nothing to pack, no pair to draw
            plan = replace(plan, nsp=False)
        _check_nsp_documents(plan.nsp, len(documents), "validation")
        return self._pack("validation", documents, plan)

    def _build_common_validation(self, corpus: Any) -> CommonValidation:
        """The held-out set every arm is scored on alike (harness.data.heldout), from the same validation split."""
        return build_common_validation(corpus, self.specials, max_seq_length=self.config.data.max_seq_length,
                                       max_chars=self.config.budget.common_val_max_chars,
                                       root=cache_root(self.config.impl.cache_dir) / "examples",
                                       corpus_key=self._corpus_key)

    def prepare_data(self) -> None:
        if self.train_examples is None:  # pretrain() sets up before the Trainer asks again
            self.build()

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return
        train, validation = self.build()
        d = self.config.data
        self.train_examples = TrainExamples(train, d.masking, self.static_copies)
        cap = self.config.budget.val_max_examples
        self.val_examples = ValidationExamples(validation.select(cap) if cap else validation)
        self.common_val_examples = ValidationExamples(self.common_validation.packed)
        self.word_starts = word_start_table(self.tokenizer) if d.whole_word_masking else None

    # ---- loading --------------------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _collator(self, packed: PackedExamples, masks: MaskSettings | None) -> MaskingCollator:
        return MaskingCollator(packed, self.specials, seed=self.config.seed, masks=masks,
                               word_starts=self.word_starts, token_types=self.token_types, nsp=self.nsp)

    def train_dataloader(self) -> UpdateLoader:
        assert self.train_examples is not None, "call setup() first"
        rank, world = self._rank()
        d = self.config.data
        sampler = StreamBatchSampler(self.train_examples.lengths(), seed=self.config.seed,
                                     num_batches=self.total_updates * self.budget.accumulate,
                                     batch_size=None if self.budget.update_tokens else self.micro_batch_size,
                                     update_tokens=self.budget.update_tokens,
                                     parts=self.budget.accumulate * self.budget.devices,
                                     group_by_length=self.budget.group_by_length, rank=rank, world_size=world)
        masks = MaskSettings(d.mask_prob, d.mask_token_fraction, d.random_token_fraction, d.mask_count,
                             d.max_predictions_per_seq)
        return UpdateLoader(self.train_examples, sampler, accumulate=self.budget.accumulate,
                            collate_fn=self._collator(self.train_examples.packed, masks), **self._loader_options())

    def _loader_options(self) -> dict[str, Any]:
        return {"num_workers": self.config.impl.num_workers, "pin_memory": torch.cuda.is_available()}

    def val_dataloader(self) -> list[DataLoader]:
        """Two sets, in this order: the run's own-format validation, then the common held-out set."""
        return [self.own_val_dataloader(), self.common_val_dataloader()]

    def own_val_dataloader(self) -> DataLoader:
        """The held-out documents packed as this arm trains (its NSP pairs and token types included)."""
        assert self.val_examples is not None, "call setup() first"
        return self._validation_loader(self.val_examples, self._collator(self.val_examples.packed, None))

    def common_val_dataloader(self) -> DataLoader:
        """The common held-out set: one segment, no NSP, no token types; batches carry `label_chars`."""
        assert self.val_examples is not None, "call setup() first"
        return self._validation_loader(self.common_val_examples, self._common_collator())

    def _common_collator(self) -> CharCountingCollator:
        collate = MaskingCollator(self.common_val_examples.packed, self.specials, seed=0, masks=None,
                                  word_starts=None, token_types=False, nsp=False)
        return CharCountingCollator(collate, self.common_validation.char_table,
                                    self.common_val_examples.packed.first_document)

    def _validation_loader(self, examples: ValidationExamples, collate: Any) -> DataLoader:
        rank, world = self._rank()
        sampler = EpochBatchSampler(examples.packed.lengths(), seed=0, shuffle=False,
                                    batch_size=self.micro_batch_size, rank=rank, world_size=world)
        return DataLoader(examples, batch_sampler=sampler, collate_fn=collate, **self._loader_options())

    def data_identity(self) -> dict[str, str]:
        """For final_metrics.json: content hashes of the documents and of the tokenizer the run trained on, so a
        report can tell whether runs it compares saw the same data (a corpus edited between runs does not)."""
        from harness.data.tokenizer import tokenizer_digest

        return {"corpus_digest": self.corpus_digest, "tokenizer_digest": tokenizer_digest(Path(self.tokenizer_dir))}

    def common_val_record(self) -> dict[str, int]:
        """The fixed figures of the common held-out set, for final_metrics.json: its documents and characters
        (equal for every arm), and its tokens, masked tokens and their characters (this tokenizer's)."""
        common, collate = self.common_validation, self._common_collator()
        packed = common.packed
        masked = masked_chars = 0
        for start in range(0, len(packed), 256):  # the masks are fixed: the same ones every evaluation scores
            batch = collate([self.common_val_examples[(0, r)] for r in range(start, min(start + 256, len(packed)))])
            masked += int((batch["labels"] != IGNORE_INDEX).sum())
            masked_chars += int(batch["label_chars"].sum())
        content = int(packed.lengths().sum()) - self.specials.single_overhead * len(packed)
        return {"common_val_documents": common.documents, "common_val_chars": common.chars,
                "common_val_tokens": content, "common_val_masked_tokens": masked,
                "common_val_masked_chars": masked_chars}
