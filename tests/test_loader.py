"""The training stream (full updates across epoch ends, rank shards, token budgets, resume) and the validation pass."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from harness.data.loader import (
    EpochBatchSampler,
    StreamBatchSampler,
    UpdateLoader,
    batches_by_padded_tokens,
    batches_by_tokens,
    epoch_order,
)


def _stream(sampler) -> list[list[tuple[int, int]]]:
    return [list(batch) for batch in sampler]


def test_the_stream_runs_on_across_epoch_ends_with_full_batches():
    """10 examples, batches of 4: batch 2 holds the last two of epoch 0 and the first two of epoch 1."""
    sampler = StreamBatchSampler(np.ones(10), seed=3, num_batches=5, batch_size=4)
    batches = _stream(sampler)
    assert len(batches) == len(sampler) == 5 and all(len(b) == 4 for b in batches)
    flat = [key for batch in batches for key in batch]
    assert [epoch for epoch, _ in flat] == [0] * 10 + [1] * 10
    for epoch in (0, 1):  # every example once per epoch, in the order of (seed, epoch)
        assert [i for e, i in flat if e == epoch] == epoch_order(10, 3, epoch, shuffle=True).tolist()
    assert _stream(sampler) == batches  # a pure function of the seed


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_share_the_stream_of_one_process(world):
    """Global micro-batch g goes to rank g % world: the ranks together see exactly the one-process stream."""
    one = _stream(StreamBatchSampler(np.ones(13), seed=1, num_batches=12, batch_size=2))
    shares = [_stream(StreamBatchSampler(np.ones(13), seed=1, num_batches=12 // world, batch_size=2, rank=r,
                                         world_size=world)) for r in range(world)]
    assert [shares[g % world][g // world] for g in range(12)] == one


def test_token_batches_stream_across_epochs_and_respect_the_budget():
    lengths = np.array([5, 9, 3, 7, 8, 2, 6])
    sampler = StreamBatchSampler(lengths, seed=0, num_batches=12, update_tokens=12)
    batches = _stream(sampler)
    for number, batch in enumerate(batches):
        real = sum(lengths[i] for _, i in batch)
        assert real <= 12
        if number + 1 < len(batches):  # greedy: the next input did not fit
            assert real + lengths[batches[number + 1][0][1]] > 12
    flat = [key for batch in batches for key in batch]
    epochs = [e for e, _ in flat]
    assert epochs == sorted(epochs) and max(epochs) >= 2  # passes follow each other without a gap
    assert sorted(i for e, i in flat if e == 1) == list(range(7))


@pytest.mark.parametrize("tokens", [None, 12])
def test_a_resumed_sampler_continues_the_same_stream(tokens):
    lengths = np.array([5, 9, 3, 7, 8, 2, 6])
    size = {"update_tokens": tokens} if tokens else {"batch_size": 3}
    full = _stream(StreamBatchSampler(lengths, seed=5, num_batches=9, **size))
    resumed = StreamBatchSampler(lengths, seed=5, num_batches=9, **size)
    resumed.start = 4
    assert _stream(resumed) == full[4:]


@pytest.mark.parametrize("tokens", [None, 12])
def test_first_batch_of_epoch_finds_where_a_pass_begins(tokens):
    lengths = np.array([5, 9, 3, 7, 8, 2, 6])
    size = {"update_tokens": tokens} if tokens else {"batch_size": 3}
    batches = _stream(StreamBatchSampler(lengths, seed=2, num_batches=12, **size))
    sampler = StreamBatchSampler(lengths, seed=2, num_batches=12, **size)
    for epoch in (0, 1, 2):
        first = sampler.first_batch_of_epoch(epoch)
        assert batches[first][0][0] >= epoch and (first == 0 or batches[first - 1][0][0] < epoch)


class Rows(torch.utils.data.Dataset):
    """Key (epoch, index) -> a row of `index % 3 + 1` masked tokens, so micro-batches differ in masked counts."""

    def __getitem__(self, key):
        return key

    def __len__(self):
        return 10


def _collate(keys):
    masked = [index % 3 + 1 for _, index in keys]
    labels = torch.full((len(keys), 4), -100)
    for row, count in enumerate(masked):
        labels[row, :count] = 7
    return {"input_ids": torch.zeros(len(keys), 4, dtype=torch.long), "labels": labels,
            "example_index": torch.tensor([index for _, index in keys])}


def _loader(accumulate: int, num_batches: int = 9) -> UpdateLoader:
    sampler = StreamBatchSampler(np.ones(10), seed=0, num_batches=num_batches, batch_size=2)
    return UpdateLoader(Rows(), sampler, accumulate=accumulate, collate_fn=_collate)


def test_every_micro_batch_carries_its_whole_update_totals():
    batches = list(_loader(accumulate=3))
    assert len(batches) == 9
    for update in range(3):
        group = batches[3 * update: 3 * update + 3]
        masked = sum(int((b["labels"] != -100).sum()) for b in group)
        assert {int(b["update_masked_tokens"]) for b in group} == {masked}
        assert {int(b["update_sequences"]) for b in group} == {6}
    assert len({int(b["update_masked_tokens"]) for b in batches}) > 1


def test_loader_state_counts_micro_batches_and_resumes_there():
    full = [b["example_index"].tolist() for b in _loader(accumulate=3)]
    first = _loader(accumulate=3)
    head = [b["example_index"].tolist() for b in islice(first, 6)]
    assert first.state_dict() == {"micro_batches_served": 6}
    resumed = _loader(accumulate=3)
    resumed.load_state_dict(first.state_dict())
    assert head + [b["example_index"].tolist() for b in resumed] == full


def test_validation_pass_is_fixed_and_sharded():
    sampler = EpochBatchSampler(np.ones(45), seed=0, shuffle=False, batch_size=4)
    assert [i for batch in sampler for _, i in batch] == list(range(44 + 1))
    # 11 batches over 2 ranks: 6 and 5, nothing dropped, so any number of processes scores the same examples
    shares = [list(EpochBatchSampler(np.ones(41), seed=0, shuffle=False, batch_size=4, rank=r, world_size=2))
              for r in range(2)]
    assert [len(share) for share in shares] == [6, 5]
    assert sorted(i for share in shares for batch in share for _, i in batch) == list(range(41))


def test_batches_by_tokens_follow_the_shuffled_order_and_bound_real_tokens():
    lengths = np.array([5, 9, 3, 7, 8, 2, 6])
    order = epoch_order(len(lengths), seed=0, epoch=0, shuffle=True)
    batches = batches_by_tokens(order, lengths, max_tokens=20)
    assert [i for b in batches for i in b] == order.tolist()
    assert all(lengths[b].sum() <= 20 for b in batches)
    assert [list(b) for b in batches_by_tokens(np.arange(2), np.array([30, 4]), 20)] == [[0], [1]]


def test_length_grouped_batches_cover_a_pass_and_bound_padded_positions():
    lengths = np.random.default_rng(0).integers(3, 60, size=500)
    batches = batches_by_padded_tokens(lengths, seed=1, epoch=0, max_tokens=256)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(500))  # every input once per pass
    assert all(len(b) * lengths[b].max() <= 256 for b in batches)  # what the forward pass computes
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 3  # similar lengths share a batch: little padding
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert lengths.sum() / padded > 0.9
    again = batches_by_padded_tokens(lengths, seed=1, epoch=0, max_tokens=256)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))  # a function of (seed, epoch)
    other = batches_by_padded_tokens(lengths, seed=1, epoch=1, max_tokens=256)
    assert [b.tolist() for b in other] != [b.tolist() for b in batches]  # reshuffled every pass


def test_length_grouped_stream_passes_follow_each_other_and_resume():
    lengths = np.random.default_rng(3).integers(3, 30, size=40)
    sampler = StreamBatchSampler(lengths, seed=2, num_batches=30, update_tokens=64, group_by_length=True)
    batches = _stream(sampler)
    flat = [key for batch in batches for key in batch]
    assert [e for e, _ in flat] == sorted(e for e, _ in flat)
    assert sorted(i for e, i in flat if e == 0) == list(range(40))
    resumed = StreamBatchSampler(lengths, seed=2, num_batches=30, update_tokens=64, group_by_length=True)
    resumed.start = 11
    assert _stream(resumed) == batches[11:]


@pytest.mark.parametrize("group", [False, True], ids=["greedy", "grouped"])
def test_an_update_holds_the_same_inputs_however_it_is_split(group):
    """By tokens, the update is cut from the stream first: 1, 2 or 4 micro-batches on 1 or 2 ranks change which
    forward pass computes an input, never which inputs (with their epochs, hence masks) an update holds. A
    length-grouped pass ends in a short update; split into more parts than it has inputs, it gets ghosts."""
    lengths = np.random.default_rng(7).integers(3, 30, size=41)

    def updates(parts: int, world: int) -> list[list[tuple[int, int]]]:
        accumulate, count = parts // world, 24
        shares = [_stream(StreamBatchSampler(lengths, seed=4, num_batches=count * accumulate, update_tokens=96,
                                             parts=parts, group_by_length=group, rank=r, world_size=world))
                  for r in range(world)]
        merged = []
        for u in range(count):
            keys = [k for r in range(world) for batch in shares[r][u * accumulate:(u + 1) * accumulate] for k in batch]
            merged.append(sorted(k for k in keys if k[0] != -1))  # ghosts carry epoch -1
        return merged

    one = updates(1, 1)
    assert len({len(u) for u in one}) > 1  # the inputs per update vary with their lengths
    for parts, world in [(2, 1), (4, 1), (2, 2), (4, 2)]:
        assert updates(parts, world) == one, (parts, world)
    small = StreamBatchSampler(np.array([20, 20, 20]), seed=0, num_batches=4, update_tokens=40, parts=4,
                               group_by_length=True)
    batches = _stream(small)  # the pass's last update holds one input: three ghosts fill its other micro-batches
    assert [len(b) for b in batches] == [1, 1, 1, 1] and sum(b[0][0] == -1 for b in batches) >= 2
