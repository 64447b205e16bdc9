"""The pre-training LightningDataModule: corpus -> packed examples (cached) -> masked batches.

`prepare_data` builds (or finds) the tokenized corpus and the packed examples; `setup` memory-maps them. Masks are
drawn in the collator, per batch and vectorised, as a pure function of (seed, epoch-or-copy, example index): a
resumed run, a different batch size or a different number of workers sees exactly the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from harness.config import ConfigError, RunConfig
from harness.data.examples import PackedExamples, PackingPlan, build_packed
from harness.data.loader import EpochBatchSampler, Key, ResumableDataLoader
from harness.data.masking import (
    fixed_validation_mask,
    mask_key,
    mask_rng,
    mask_tokens,
    word_start_table,
)
from harness.data.specials import SpecialTokens
from harness.paths import cache_root

VALIDATION_PACKING_SEED = 0  # validation packs the same way for every run


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
        masked, labels = self._mask(ids, epochs, indices)
        batch = {"input_ids": torch.from_numpy(masked),
                 "attention_mask": torch.from_numpy((positions < lengths[:, None]).astype(np.int64)),
                 "labels": torch.from_numpy(labels.astype(np.int64))}
        if self.token_types:
            a_lengths = np.asarray(self.packed.a_lengths)[rows]
            types = (positions >= a_lengths[:, None]) & (positions < lengths[:, None])
            batch["token_type_ids"] = torch.from_numpy(types.astype(np.int64))
        if self.nsp:
            batch["next_sentence_label"] = torch.from_numpy(np.asarray(self.packed.nsp, dtype=np.int64)[rows])
        batch["example_index"] = torch.from_numpy(indices)
        batch["mask_epoch"] = torch.from_numpy(epochs)
        return batch



class PretrainDataModule(pl.LightningDataModule):
    """Data for one pre-training run. `nsp` and `token_types` come from the recipe (resolved once, in
    harness.recipe), not from the config, so the model and the data cannot disagree about them."""

    def __init__(self, config: RunConfig, *, nsp: bool, token_types: bool, data_dir: str | Path | None = None,
                 micro_batch_size: int, micro_batch_tokens: int | None = None) -> None:
        super().__init__()
        self.config, self.data_dir = config, data_dir
        self.nsp, self.token_types = nsp, token_types
        self.micro_batch_size, self.micro_batch_tokens = micro_batch_size, micro_batch_tokens
        self.train_examples: TrainExamples | None = None
        self.val_examples: ValidationExamples | None = None

    # ---- building -------------------------------------------------------------------------------------
    def _plans(self) -> tuple[PackingPlan, PackingPlan]:
        d = self.config.data
        common = {"packing": d.packing, "max_seq_length": d.max_seq_length, "nsp": self.nsp,
                  "short_seq_prob": d.short_seq_prob}
        train = PackingPlan.create(**common, seed=self.config.seed,
                                   static_copies=d.dupe_factor if d.masking == "static" else 1)
        validation = PackingPlan.create(**common, seed=VALIDATION_PACKING_SEED, static_copies=1)
        return train, validation

    def build(self) -> tuple[PackedExamples, PackedExamples]:
        from harness.data.corpus import build_corpus

        corpus = build_corpus(self.config, self.data_dir)
        self.tokenizer, self.tokenizer_dir = corpus.tokenizer, corpus.tokenizer_dir
        self.specials = SpecialTokens.from_tokenizer(corpus.tokenizer)
        root = cache_root(self.config.impl.cache_dir) / "examples"
        packed = []
        for name, split, plan in zip(("train", "validation"), (corpus.train, corpus.validation), self._plans(),
                                     strict=True):
            documents = split["sentences"]
            if plan.nsp and len(documents) == 0:  # no validation documents: nothing to pack, no pair to draw
                plan = replace(plan, nsp=False)
            elif plan.nsp and len(documents) < 2:
                hint = "raise corpus.validation_fraction" if name == "validation" else "use a larger corpus"
                raise ConfigError(f"data.nsp = true needs at least two documents in the {name} split to draw random "
                                  f"B segments from; it has {len(documents)} ({hint})")
            # The split is part of the key: equal plans over different documents must never share a cache entry.
            key = f"{corpus.cache_dir.name}/{name}"
            packed.append(build_packed(documents, plan, self.specials, root / plan.key(key), key))
        return packed[0], packed[1]

    def prepare_data(self) -> None:
        if self.train_examples is None:  # pretrain() sets up before the Trainer asks again
            self.build()

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return
        train, validation = self.build()
        d = self.config.data
        self.train_examples = TrainExamples(train, d.masking, d.dupe_factor if d.masking == "static" else 1)
        cap = self.config.budget.val_max_examples
        self.val_examples = ValidationExamples(validation.select(cap) if cap else validation)
        self.word_starts = word_start_table(self.tokenizer) if d.whole_word_masking else None

    # ---- loading --------------------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _collator(self, packed: PackedExamples, masks: MaskSettings | None) -> MaskingCollator:
        return MaskingCollator(packed, self.specials, seed=self.config.seed, masks=masks,
                               word_starts=self.word_starts, token_types=self.token_types, nsp=self.nsp)

    def _loader(self, dataset: Any, sampler: EpochBatchSampler, collate: MaskingCollator) -> ResumableDataLoader:
        workers = self.config.impl.num_workers
        return ResumableDataLoader(dataset, sampler, collate_fn=collate, num_workers=workers,
                                   persistent_workers=False, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> ResumableDataLoader:
        assert self.train_examples is not None, "call setup() first"
        rank, world = self._rank()
        d = self.config.data
        sampler = EpochBatchSampler(self.train_examples.lengths(), seed=self.config.seed, shuffle=True,
                                    batch_size=None if self.micro_batch_tokens else self.micro_batch_size,
                                    max_tokens=self.micro_batch_tokens, drop_last=True, rank=rank, world_size=world)
        masks = MaskSettings(d.mask_prob, d.mask_token_fraction, d.random_token_fraction, d.mask_count,
                             d.max_predictions_per_seq)
        return self._loader(self.train_examples, sampler, self._collator(self.train_examples.packed, masks))

    def val_dataloader(self) -> ResumableDataLoader:
        assert self.val_examples is not None, "call setup() first"
        rank, world = self._rank()
        sampler = EpochBatchSampler(self.val_examples.packed.lengths(), seed=0, shuffle=False,
                                    batch_size=self.micro_batch_size, rank=rank, world_size=world)
        return self._loader(self.val_examples, sampler, self._collator(self.val_examples.packed, None))
