"""Deterministic order, token-budget batching and mid-epoch resume of the batch sampler and loader."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.loader import EpochBatchSampler, ResumableDataLoader, batches_by_tokens


class KeyDataset:
    def __getitem__(self, key):
        return key

    def __len__(self):
        return 10


def _collect(loader):
    return [list(map(tuple, batch)) for batch in loader]


def test_order_is_a_function_of_seed_and_epoch():
    sampler = EpochBatchSampler(np.ones(50), seed=3, shuffle=True, batch_size=8)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert all(epoch == 1 for batch in second for epoch, _ in batch)
    assert sorted(i for batch in second for _, i in batch) == list(range(50))
    assert len(sampler) == 7 == len(second)


def test_batches_by_tokens_follow_the_shuffled_order_and_bound_real_tokens():
    lengths = np.array([5, 9, 3, 8, 2, 10, 1, 7])
    order = np.array([7, 6, 5, 4, 3, 2, 1, 0])
    batches = batches_by_tokens(order, lengths, max_tokens=20)
    assert [list(b) for b in batches] == [[7, 6, 5, 4], [3, 2, 1], [0]]
    for batch in batches:
        assert lengths[batch].sum() <= 20
    # an example longer than the budget still gets a batch of its own instead of being dropped
    assert [list(b) for b in batches_by_tokens(np.arange(2), np.array([30, 4]), 20)] == [[0], [1]]


def test_ranks_get_disjoint_equal_shares():
    shares = [list(EpochBatchSampler(np.ones(45), seed=0, shuffle=True, batch_size=4, rank=r, world_size=2))
              for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 6
    seen = [i for share in shares for batch in share for _, i in batch]
    assert len(seen) == len(set(seen)) == 12 * 4 - 4 + 1  # 12 batches, the last holding one example


@pytest.mark.parametrize("served", [0, 3, 7])
def test_loader_resumes_mid_epoch_where_it_stopped(served):
    def make():
        sampler = EpochBatchSampler(np.ones(60), seed=1, shuffle=True, batch_size=8)
        return ResumableDataLoader(KeyDataset(), sampler, collate_fn=lambda keys: keys)

    full = make()
    full.batch_sampler.set_epoch(2)
    expected = _collect(full)
    interrupted = make()
    interrupted.batch_sampler.set_epoch(2)
    iterator = iter(interrupted)
    head = [list(map(tuple, next(iterator))) for _ in range(served)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches_served": served}
    resumed = make()
    resumed.load_state_dict(state)
    assert head + _collect(resumed) == expected
    assert _collect(resumed) == expected  # the skip applies to the resumed epoch only
