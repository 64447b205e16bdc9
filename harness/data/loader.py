"""Deterministic, resumable batching.

The order of examples is a pure function of (seed, epoch), and every index the sampler yields carries its
epoch with it (`(epoch, index)` keys), so masks computed from (seed, epoch, index) in worker processes need no
shared state. The loader records how many batches it has handed out; Lightning saves that with each checkpoint
(it calls `state_dict` on any loader that has one) and a resumed run skips exactly those batches, so it sees
the same data order and masks an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Sampler

from harness.data.packing import batch_by_tokens

Key = tuple[int, int]  # (epoch, example index)


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_examples)


def batches_by_count(order: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    cut = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[i : i + batch_size] for i in range(0, cut, batch_size)]


def batches_by_tokens(order: np.ndarray, lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Consecutive examples of the shuffled order, at most max_tokens real tokens per batch (packing's rule)."""
    return [order[np.asarray(group)] for group in batch_by_tokens(lengths[order], max_tokens)]


class EpochBatchSampler(Sampler[list[Key]]):
    """Yields lists of (epoch, index) keys: by a fixed number of examples, or by a budget of real tokens per batch
    (the paper keeps tokens per update similar across input formats)."""

    def __init__(self, lengths: Sequence[int] | np.ndarray, *, seed: int, shuffle: bool, batch_size: int | None = None,
                 max_tokens: int | None = None, drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        if (batch_size is None) == (max_tokens is None):
            raise ValueError("give exactly one of batch_size and max_tokens")
        self.lengths = np.asarray(lengths)
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0  # batches of epoch `skip_epoch` already consumed before a resume
        self.skip_epoch = 0

    @property
    def sampler(self) -> EpochBatchSampler:
        # Lightning advances epochs by calling set_epoch on `loader.batch_sampler.sampler`; without this it would
        # never reach us and every epoch would replay epoch 0's order and masks.
        return self

    def pending_skip(self) -> int:
        """Batches of the current epoch consumed before a resume (none once the resume moved to a new epoch)."""
        return self.skip if self.epoch == self.skip_epoch else 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        order = epoch_order(len(self.lengths), self.seed, self.epoch, self.shuffle)
        if self.max_tokens is not None:
            batches = batches_by_tokens(order, self.lengths, self.max_tokens)
        else:
            batches = batches_by_count(order, self.batch_size, self.drop_last)
        if self.world_size == 1:
            return batches
        # Every process must run the same number of steps, so the uneven tail is dropped.
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def __iter__(self) -> Iterator[list[Key]]:
        # A state saved at the end of an epoch resumes into the next one, which must then start from its beginning.
        skip, self.skip = self.pending_skip(), 0
        for batch in self._batches()[skip:]:
            yield [(self.epoch, int(i)) for i in batch]

    def __len__(self) -> int:
        if self.max_tokens is None and self.world_size == 1:
            full, rest = divmod(len(self.lengths), self.batch_size)
            return full + (0 if self.drop_last or not rest else 1)
        return len(self._batches())


class ResumableDataLoader(DataLoader):
    """A DataLoader over an EpochBatchSampler that Lightning can checkpoint mid-epoch."""

    def __init__(self, dataset: Any, batch_sampler: EpochBatchSampler, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._served = 0
        self._served_epoch = 0

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochBatchSampler = self.batch_sampler  # type: ignore[assignment]
        self._served_epoch, self._served = sampler.epoch, sampler.pending_skip()
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if self._served == 0:  # nothing served yet in this epoch: the sampler's epoch is the current one
            sampler: EpochBatchSampler = self.batch_sampler  # type: ignore[assignment]
            return {"epoch": sampler.epoch, "batches_served": sampler.pending_skip()}
        return {"epoch": self._served_epoch, "batches_served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: EpochBatchSampler = self.batch_sampler  # type: ignore[assignment]
        sampler.set_epoch(state["epoch"])
        sampler.skip, sampler.skip_epoch = state["batches_served"], state["epoch"]
