"""Masking: masks are pure functions of (seed, epoch, index); the count rules are exact; the rates hold on
>= 10,000 realistic examples; specials are never chosen nor used as replacements; whole words stay whole."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from harness.data.masking import fixed_validation_mask, mask_key, mask_rng, mask_tokens, word_start_table

PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4
SPECIALS = frozenset({PAD, CLS, SEP, MASK, UNK})
VOCAB = 1000
STANDARD = dict(special_ids=SPECIALS, mask_id=MASK, vocab_size=VOCAB, mask_prob=0.15, mask_token_fraction=0.8,
                random_token_fraction=0.1)


def make_batch(rows: int, width: int, seed: int, min_len: int = 8) -> np.ndarray:
    """Padded rows [CLS] tokens [SEP] PAD..., with a [SEP] in the middle of some (pairs) and real lengths varying."""
    rs = np.random.default_rng(seed)
    ids = rs.integers(5, VOCAB, size=(rows, width))
    lengths = rs.integers(min_len, width + 1, size=rows)
    ids[:, 0] = CLS
    ids[np.arange(rows), lengths - 1] = SEP
    ids[np.arange(width)[None, :] >= lengths[:, None]] = PAD
    pairs = rs.random(rows) < 0.5
    ids[pairs, lengths[pairs] // 2] = SEP
    return ids


def mask(ids, epoch=0, index=None, seed=0, **overrides):
    index = np.arange(len(ids)) if index is None else index
    kwargs = {**STANDARD, "mask_count": "fairseq", "max_predictions": None, **overrides}
    return mask_tokens(ids, rng=mask_rng(seed, epoch, index), **kwargs)


def non_special(ids: np.ndarray) -> np.ndarray:
    return ~np.isin(ids, list(SPECIALS))


# ---- reproducibility --------------------------------------------------------------------------------------

def test_mask_is_a_pure_function_of_seed_epoch_index():
    ids = make_batch(16, 64, seed=0)
    first, again = mask(ids, epoch=3), mask(ids, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    # one example alone, or in another row of another batch, or with more padding: the same mask
    alone = mask(ids[5], epoch=3, index=5)
    assert np.array_equal(alone[0], first[0][5]) and np.array_equal(alone[1], first[1][5])
    shuffled = np.arange(16)[::-1]
    padded = np.pad(ids[shuffled], ((0, 0), (0, 40)), constant_values=PAD)
    masked, labels = mask(padded, epoch=3, index=shuffled)
    assert np.array_equal(masked[:, :64], first[0][shuffled]) and np.array_equal(labels[:, :64], first[1][shuffled])
    assert (labels[:, 64:] == -100).all()


def test_epochs_seeds_and_indices_change_the_mask():
    ids = make_batch(16, 64, seed=1)
    base = mask(ids, epoch=0)[1]
    assert not np.array_equal(base, mask(ids, epoch=1)[1])
    assert not np.array_equal(base, mask(ids, epoch=0, seed=1)[1])
    assert not np.array_equal(base, mask(ids, epoch=0, index=np.arange(16) + 16)[1])


def test_static_masking_repeats_each_copy_dynamic_does_not():
    ids = make_batch(16, 64, seed=2)
    for copy in range(3):  # static: every epoch showing this copy sees the copy's masks
        seen = {mask(ids, epoch=mask_key("static", epoch, copy))[1].tobytes() for epoch in (0, 4, 9)}
        assert len(seen) == 1
    static_copies = {mask(ids, epoch=mask_key("static", 0, copy))[1].tobytes() for copy in range(3)}
    assert len(static_copies) == 3
    dynamic = {mask(ids, epoch=mask_key("dynamic", epoch, 0))[1].tobytes() for epoch in (0, 4, 9)}
    assert len(dynamic) == 3
    with pytest.raises(ValueError, match="masking 'sometimes'"):
        mask_key("sometimes", 0, 0)


# ---- what is chosen and how it is replaced ----------------------------------------------------------------

@pytest.mark.parametrize("rule", ["fairseq", "google", "bernoulli"])
def test_rates_on_ten_thousand_examples(rule):
    ids = np.concatenate([make_batch(1000, 128, seed=s, min_len=64) for s in range(10)])
    masked, labels = mask(ids, epoch=2, mask_count=rule)
    chosen = labels != -100
    assert not (chosen & ~non_special(ids)).any()  # no special token (pad included) is ever chosen
    assert np.array_equal(labels[chosen], ids[chosen]) and (masked[~chosen] == ids[~chosen]).all()
    assert abs(chosen.sum() / non_special(ids).sum() - 0.15) < 0.005
    as_mask = masked[chosen] == MASK
    kept = masked[chosen] == ids[chosen]
    randomised = ~as_mask & ~kept
    assert abs(as_mask.mean() - 0.8) < 0.01
    assert abs(randomised.mean() - 0.1 * (1 - 1 / (VOCAB - 5))) < 0.01  # a random draw may hit the original
    assert abs(kept.mean() - 0.1) < 0.01
    replacements = masked[chosen][randomised]
    assert not np.isin(replacements, list(SPECIALS)).any()
    assert len(np.unique(replacements)) > 0.9 * (VOCAB - 5)  # drawn from the whole ordinary vocabulary


def test_google_count_rule_is_exact():
    ids = make_batch(2000, 128, seed=3, min_len=3)
    for cap in (None, 12):
        labels = mask(ids, mask_count="google", max_predictions=cap)[1]
        n = non_special(ids).sum(axis=1)
        expected = [min(cap or 10**9, max(1, int(round(0.15 * k)))) if k else 0 for k in n]
        assert np.array_equal((labels != -100).sum(axis=1), expected)
    # round() is half-to-even as in Python 3: 10 tokens x 0.15 = 1.5 -> 2, 30 x 0.15 = 4.5 -> 4
    row = np.array([[CLS, *range(10, 40), SEP]])
    assert (mask(row[:, :11], mask_count="google")[1] != -100).sum() == 2
    assert (mask(row, mask_count="google")[1] != -100).sum() == 4


def test_fairseq_count_is_probabilistic_rounding():
    ids = np.tile(np.array([[CLS, *range(10, 40), SEP]]), (4000, 1))  # 30 tokens: 4.5 expected
    counts = (mask(ids, mask_count="fairseq")[1] != -100).sum(axis=1)
    assert set(np.unique(counts)) == {4, 5}
    assert abs(counts.mean() - 4.5) < 0.05


@pytest.mark.parametrize("rule", ["fairseq", "google", "bernoulli"])
def test_max_predictions_cap(rule):
    ids = make_batch(500, 128, seed=4, min_len=100)
    counts = (mask(ids, mask_count=rule, max_predictions=10)[1] != -100).sum(axis=1)
    assert counts.max() == 10 and (counts <= 10).all()


def test_validation_mask_is_fixed_and_standard():
    ids = np.concatenate([make_batch(1000, 128, seed=s, min_len=64) for s in range(10)])
    index = np.arange(len(ids))
    masked, labels = fixed_validation_mask(ids, special_ids=SPECIALS, mask_id=MASK, vocab_size=VOCAB, index=index)
    again = fixed_validation_mask(ids[:50], special_ids=SPECIALS, mask_id=MASK, vocab_size=VOCAB, index=index[:50])
    assert np.array_equal(again[1], labels[:50]) and np.array_equal(again[0], masked[:50])
    chosen = labels != -100
    assert abs(chosen.sum() / non_special(ids).sum() - 0.15) < 0.005
    assert abs((masked[chosen] == MASK).mean() - 0.8) < 0.01
    assert not np.array_equal(labels[:50], mask(ids[:50], epoch=0)[1])  # not the training masks of epoch 0


# ---- whole words ------------------------------------------------------------------------------------------

def words_of(ids: np.ndarray, starts: np.ndarray) -> list[list[tuple[int, int]]]:
    """Per row, the positions of each word (a start and its continuation pieces, never across a special)."""
    result = []
    for row, row_starts in zip(ids, starts, strict=True):
        words, current = [], None
        for j, (token, start) in enumerate(zip(row, row_starts, strict=True)):
            if token in SPECIALS:
                current = None
                continue
            if start or current is None:
                current = []
                words.append(current)
            current.append(j)
        result.append(words)
    return result


@pytest.mark.parametrize("rule,cap", [("fairseq", None), ("google", None), ("bernoulli", None), ("fairseq", 8),
                                      ("google", 8)])
def test_whole_word_masking_never_splits_a_word(rule, cap):
    ids = make_batch(800, 128, seed=5, min_len=64)
    rs = np.random.default_rng(6)
    starts = rs.random(ids.shape) < 0.6  # words of 1-several pieces
    starts[:, 1] = False  # a continuation right after [CLS] still starts a word
    labels = mask(ids, mask_count=rule, max_predictions=cap, word_starts=starts)[1]
    chosen = labels != -100
    multi_piece_chosen = 0
    for r, words in enumerate(words_of(ids, starts)):
        for word in words:
            picked = chosen[r, word]
            assert picked.all() or not picked.any()
            multi_piece_chosen += len(word) > 1 and picked.all()
        if cap is not None:
            assert chosen[r].sum() <= cap
        if rule == "google" and cap is None:  # Google fills the token budget with whole words, skipping misfits
            assert chosen[r].sum() <= max(1, round(0.15 * non_special(ids[r : r + 1]).sum()))
    assert multi_piece_chosen > 100
    if cap is None:
        assert abs(chosen.sum() / non_special(ids).sum() - 0.15) < 0.01


def test_fairseq_whole_words_counts_words():
    ids = np.tile(np.array([[CLS, *range(10, 50), SEP]]), (3000, 1))
    starts = np.zeros(ids.shape, dtype=bool)
    starts[:, 1::2] = True  # 20 two-piece words: 3 words expected
    labels = mask(ids, mask_count="fairseq", word_starts=starts)[1]
    assert set(np.unique((labels != -100).sum(axis=1))) == {6}


def hf_tokenizer(vocab: list[str], **special) -> PreTrainedTokenizerFast:
    ids = {token: i for i, token in enumerate(vocab)}
    model = models.WordPiece(ids, unk_token="[UNK]") if "[CLS]" in ids else models.BPE(ids, [])
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(model), **special)


def test_word_start_table():
    wordpiece = hf_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hel", "##lo", "world", "##s"],
                             cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                             unk_token="[UNK]")
    assert word_start_table(wordpiece).tolist() == [True] * 6 + [False, True, False]
    bpe = hf_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "\u0120hel", "lo", "\u0120world", ",", "<mask>"],
                       cls_token="<s>", sep_token="</s>", pad_token="<pad>", mask_token="<mask>", unk_token="<unk>")
    assert word_start_table(bpe).tolist() == [True] * 5 + [False, True, False, True]


def test_bad_inputs():
    ids = make_batch(4, 16, seed=7)
    with pytest.raises(ValueError, match="mask_count 'sometimes'"):
        mask(ids, mask_count="sometimes")
    with pytest.raises(ValueError, match="row keys"):
        mask(ids, index=np.arange(3))
    with pytest.raises(ValueError, match="input ids must lie"):
        mask(ids + VOCAB)
    with pytest.raises(ValueError, match="non-negative"):
        mask(ids, epoch=-1)
