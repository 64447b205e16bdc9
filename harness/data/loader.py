"""Deterministic, resumable batching.

Training reads one stream: epochs of shuffled examples back to back, epoch e's order a pure function of
(seed, e), cut into micro-batches that may straddle an epoch end. An epoch end therefore never leaves a short
update behind (fairseq's trainer would normalise such an update by its own token count; Lightning would step on
it and still divide by the accumulation factor): every update holds `accumulate` micro-batches per rank, the
size the config says. Every index carries its epoch with it (`(epoch, index)` keys), so masks computed from
(seed, epoch, index) in worker processes need no shared state.

The training loader is one Lightning "epoch" as long as the run (updates x accumulate micro-batches), so
Lightning never ends an epoch early or pre-fetches ahead of what it reports as consumed. It records how many
micro-batches it handed out; Lightning saves that with each checkpoint and a resumed run continues from exactly
there: same data order, same masks.

Validation uses `EpochBatchSampler`: one finite pass in a fixed order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from harness.data.masking import IGNORE_INDEX
from harness.data.packing import batch_by_tokens

Key = tuple[int, int]  # (epoch, example index)
GHOST = -1  # the epoch of a ghost input: fed only so that no micro-batch is empty (split_update); no loss, no count


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


def batches_by_padded_tokens(lengths: np.ndarray, seed: int, epoch: int, max_tokens: int) -> list[np.ndarray]:
    """fairseq's `batch_by_size` for one pass: inputs sorted by length (ties broken at random by (seed, epoch)),
    cut greedily so that rows x longest row <= max_tokens (what the forward pass computes, padding included), then
    the batches shuffled by (seed, epoch). Inputs of similar length share a batch: little compute goes to padding,
    and short inputs come many to a batch (the paper's "dynamically increase the batch size")."""
    rng = np.random.default_rng([seed, epoch, 0xB17E])
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches, start = [], 0
    for end, length in enumerate(lengths[order].tolist(), start=1):  # ascending: the newest row is the longest
        if end - 1 > start and (end - start) * length > max_tokens:
            batches.append(order[start : end - 1])
            start = end - 1
    batches.append(order[start:])
    return [batches[i] for i in rng.permutation(len(batches))]


class EpochBatchSampler(Sampler[list[Key]]):
    """One pass over the examples in a fixed order (validation): by a number of examples or a real-token budget,
    batches dealt round-robin to the ranks. Nothing is dropped, so every number of processes scores the same
    examples; ranks may run one batch more than others (validation steps hold no collective)."""

    def __init__(self, lengths: Sequence[int] | np.ndarray, *, seed: int, shuffle: bool, batch_size: int | None = None,
                 max_tokens: int | None = None, drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        if (batch_size is None) == (max_tokens is None):
            raise ValueError("give exactly one of batch_size and max_tokens")
        self.lengths = np.asarray(lengths)
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def _batches(self) -> list[np.ndarray]:
        order = epoch_order(len(self.lengths), self.seed, self.epoch, self.shuffle)
        if self.max_tokens is not None:
            batches = batches_by_tokens(order, self.lengths, self.max_tokens)
        else:
            batches = batches_by_count(order, self.batch_size, self.drop_last)
        return batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[Key]]:
        for batch in self._batches():
            yield [(self.epoch, int(i)) for i in batch]

    def __len__(self) -> int:
        return len(self._batches())


def split_update(update: list[Key], lengths: np.ndarray, parts: int) -> list[list[Key]]:
    """One update's inputs as `parts` micro-batches (accumulation x ranks): sorted by length (ties in stream order),
    so that a micro-batch holds inputs of similar length, and cut where the real tokens come closest to equal shares.
    The split decides only which forward pass computes an input, never which inputs the update holds. An update with
    fewer inputs than parts (the short last batch of a length-grouped pass) fills its empty micro-batches with a
    ghost: its first input again under the epoch `GHOST`, which the collator gives no label and the counts skip, so
    every rank still runs its forward and backward pass and the update's gradient is unchanged."""
    if parts == 1:
        return [update]
    order = sorted(range(len(update)), key=lambda i: (lengths[update[i][1]], i))
    tokens, n = np.cumsum([lengths[update[i][1]] for i in order]), len(order)
    cuts = [0]
    for part in range(1, parts):
        share = tokens[-1] * part / parts
        cut = int(np.searchsorted(tokens, share)) + 1  # the first cut that reaches the share, or the one before
        cut -= int(cut > 1 and share - tokens[cut - 2] < tokens[cut - 1] - share)
        # at least one input per micro-batch when there are enough; else one each, then ghosts
        cuts.append(min(max(cut, cuts[-1] + 1), n - (parts - part)) if n >= parts else min(part, n))
    cuts.append(n)
    ghost = [(GHOST, update[0][1])]
    return [[update[i] for i in order[a:b]] or ghost for a, b in pairwise(cuts)]


class StreamBatchSampler(Sampler[list[Key]]):
    """This rank's training micro-batches. The endless stream of epochs is cut into updates first, of
    `batch_size` x world_size x accumulate examples (by count) or of at most `update_tokens` real tokens (greedy,
    packing's rule) or padded positions among inputs of similar length (group_by_length); each update is then split
    into `parts` micro-batches (accumulation x ranks) and dealt round-robin to the ranks (global micro-batch g goes
    to rank g % world_size). So the inputs of an update never depend on how it is split: by count, stream positions
    [u*B, (u+1)*B) for update u of B sequences; by tokens, the update the budget cuts, whatever impl says.

    `num_batches` is this rank's share of the run (its length); `start` the micro-batches consumed before a resume."""

    def __init__(self, lengths: Sequence[int] | np.ndarray, *, seed: int, num_batches: int,
                 batch_size: int | None = None, update_tokens: int | None = None, parts: int = 1,
                 group_by_length: bool = False, rank: int = 0, world_size: int = 1) -> None:
        if (batch_size is None) == (update_tokens is None):
            raise ValueError("give exactly one of batch_size and update_tokens")
        if group_by_length and update_tokens is None:
            raise ValueError("group_by_length batches by a token budget: give update_tokens")
        if update_tokens is not None and parts % world_size:
            raise ValueError(f"parts = {parts} micro-batches per update cannot be dealt to {world_size} ranks")
        self.lengths = np.asarray(lengths)
        if len(self.lengths) == 0:
            raise ValueError("no training examples to sample from")
        self.seed, self.num_batches = seed, num_batches
        self.batch_size, self.update_tokens, self.group_by_length = batch_size, update_tokens, group_by_length
        self.parts, self.rank, self.world_size = parts, rank, world_size
        self.start = 0
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:  # an update spans at most two epochs (or a few, for tiny data)
                self._orders.pop(min(self._orders))
            self._orders[epoch] = epoch_order(len(self.lengths), self.seed, epoch, shuffle=True)
        return self._orders[epoch]

    def _keys(self, positions: np.ndarray) -> list[Key]:
        epochs, offsets = np.divmod(positions, len(self.lengths))
        return [(int(e), int(self.order(int(e))[o])) for e, o in zip(epochs, offsets, strict=True)]

    def _by_count(self, first: int) -> Iterator[list[Key]]:
        """Random access: global micro-batch g holds stream positions [g*b, (g+1)*b)."""
        g = first * self.world_size + self.rank
        while True:
            yield self._keys(np.arange(g * self.batch_size, (g + 1) * self.batch_size))
            g += self.world_size

    def updates(self) -> Iterator[list[Key]]:
        """Every update by tokens, in order, whatever the split. Greedy over the stream (an update may span an epoch
        end), or length-grouped per pass (fairseq's batch_by_size; the passes follow each other)."""
        epoch = 0
        if self.group_by_length:
            while True:
                for batch in batches_by_padded_tokens(self.lengths, self.seed, epoch, self.update_tokens):
                    yield [(epoch, int(i)) for i in batch]
                epoch += 1
        batch, total = [], 0
        while True:
            order = self.order(epoch)
            for index, length in zip(order.tolist(), self.lengths[order].tolist(), strict=True):
                if batch and total + length > self.update_tokens:
                    yield batch
                    batch, total = [], 0
                batch.append((epoch, index))
                total += length
            epoch += 1

    def _by_tokens(self, first: int) -> Iterator[list[Key]]:
        """This rank's share; the micro-batches before `first` are replayed (cheap: keys only, nothing collated)."""
        skip, g = first * self.world_size + self.rank, 0
        for update in self.updates():
            for batch in split_update(update, self.lengths, self.parts):
                if g >= skip and (g - self.rank) % self.world_size == 0:
                    yield batch
                g += 1

    def first_batch_of_epoch(self, epoch: int) -> int:
        """This rank's number of the first micro-batch that starts inside `epoch` (for looking at an epoch)."""
        if self.update_tokens is None:
            g = -(-epoch * len(self.lengths) // self.batch_size)  # the first global batch starting at or after it
            return -(-(g - self.rank) // self.world_size)
        for number, batch in enumerate(self._by_tokens(0)):
            if batch[0][0] >= epoch:
                return number
        raise AssertionError("unreachable: the stream is endless")

    def __iter__(self) -> Iterator[list[Key]]:
        stream = self._by_count(self.start) if self.update_tokens is None else self._by_tokens(self.start)
        for _ in range(self.num_batches - self.start):
            yield next(stream)

    def __len__(self) -> int:
        return self.num_batches


class UpdateLoader(DataLoader):
    """The training DataLoader: micro-batches in update order, each tagged with its update's totals on this rank
    (`update_masked_tokens`, `update_sequences`), so the loss of every micro-batch can be normalised by the whole
    update's masked tokens and sequences before its backward pass (fairseq's per-token weighting). An update's
    micro-batches are collated before the first is handed out, which a DataLoader with workers does anyway."""

    def __init__(self, dataset: Any, batch_sampler: StreamBatchSampler, *, accumulate: int, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self.accumulate = accumulate
        self._served = 0

    def __iter__(self) -> Iterator[Any]:
        sampler: StreamBatchSampler = self.batch_sampler  # type: ignore[assignment]
        self._served = sampler.start
        pending: list[dict[str, torch.Tensor]] = []
        for batch in super().__iter__():
            pending.append(batch)
            if (self._served + len(pending)) % self.accumulate == 0 or \
                    self._served + len(pending) == sampler.num_batches:
                yield from self._release(pending)
                pending = []

    def _release(self, update: list[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        masked = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in update)
        sequences = sum(int(b["input_ids"].shape[0]) - int(b["ghost"].sum()) if "ghost" in b else
                        int(b["input_ids"].shape[0]) for b in update)
        for batch in update:
            batch["update_masked_tokens"] = torch.tensor(masked, dtype=torch.long)
            batch["update_sequences"] = torch.tensor(sequences, dtype=torch.long)
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"micro_batches_served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: StreamBatchSampler = self.batch_sampler  # type: ignore[assignment]
        sampler.start = self._served = int(state["micro_batches_served"])
