"""Pure, vectorised masked-LM noise: which tokens to predict and what the model sees in their place.

Every random number is a counter-based hash of (seed, epoch, example index, stream, position) - SplitMix64
evaluated with numpy - so a mask is a pure function of (seed, epoch, index), as fairseq's
`numpy_seed(seed, epoch, index)` makes it, while a whole collated batch is masked in a few vectorised numpy
calls. The mask of an example does not depend on which batch it lands in, its row, or how much padding the
batch has. Dynamic masking passes the epoch; static masking passes the copy number in its place, so every
epoch that shows copy k shows the same masks.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache
from typing import Any, Literal

import numpy as np

MaskCount = Literal["fairseq", "google", "bernoulli"]
IGNORE_INDEX = -100  # label of a position that is not predicted (PyTorch cross-entropy's ignore_index)

_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1
_TRAIN_DOMAIN, _VALIDATION_DOMAIN = 0x7A11, 0x7A12  # keep training and validation masks independent
_KEYS, _CORRUPT, _ROUND = 0, 1, 2  # one stream per decision


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, IN PLACE on a fresh uint64 array (every caller passes a temporary): a bijection
    with full avalanche. Wrapping arithmetic is intended; numpy wraps arrays silently."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(_MIX1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_MIX2)
    z ^= z >> np.uint64(31)
    return z


def _mix_int(z: int) -> int:
    """The same finaliser on one Python int, for the scalar part of a key (much cheaper than a 1-element array)."""
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _absorb_int(key: int, value: int) -> int:
    return _mix_int((key + (value + 1) * _GAMMA) & _MASK64)


def _absorb(key: np.ndarray, value: np.ndarray) -> np.ndarray:
    return _mix(key + (value.astype(np.uint64) + np.uint64(1)) * np.uint64(_GAMMA))


class MaskRandom:
    """Uniform numbers keyed by (seed, domain, epoch, index) per row and (stream, position) per column."""

    def __init__(self, seed: int, epoch: Any, index: Any, domain: int = _TRAIN_DOMAIN) -> None:
        epoch = np.atleast_1d(np.asarray(epoch, dtype=np.int64))
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        if seed < 0 or (epoch < 0).any() or (index < 0).any():
            raise ValueError("seed, epoch and index must be non-negative")
        key = np.uint64(_absorb_int(_absorb_int(0, seed), domain))
        self.row_keys = _absorb(_absorb(key, epoch), index)  # one 64-bit key per example (broadcast)

    def __len__(self) -> int:
        return len(self.row_keys)

    def bits(self, stream: int, length: int) -> np.ndarray:
        """[rows, length] uint64 words; column j is the same word whatever the length asked for."""
        stream_keys = _mix(self.row_keys + np.uint64(((stream + 1) * _GAMMA) & _MASK64))[:, None]
        positions = np.arange(1, length + 1, dtype=np.uint64) * np.uint64(_GAMMA)
        return _mix(stream_keys + positions)

    def uniform(self, stream: int, length: int) -> np.ndarray:
        """[rows, length] floats in [0, 1) with 53 random bits."""
        return (self.bits(stream, length) >> np.uint64(11)) * _UNIT53

    def uniform_pair(self, stream: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Two independent [rows, length] float arrays in [0, 1) with 32 bits each, from one word per position:
        enough resolution for thresholds and vocabulary indices, at half the hashing cost."""
        words = self.bits(stream, length)
        high = (words >> np.uint64(32)).astype(np.float64) * _UNIT32
        low = (words & np.uint64(0xFFFFFFFF)).astype(np.float64) * _UNIT32
        return high, low


_UNIT53, _UNIT32 = 1.0 / (1 << 53), 1.0 / (1 << 32)


def mask_rng(seed: int, epoch: Any, index: Any) -> MaskRandom:
    """The randomness of the masks of examples `index` (int or array, one per row) in `epoch` (int or array).
    Dynamic masking: epoch = the training epoch. Static masking: epoch = the copy number (0..dupe_factor-1)."""
    return MaskRandom(seed, epoch, index)


def mask_key(masking: str, epoch: int, copy: int) -> int:
    """The number that fills the epoch slot of the mask key. This is the one place that reads the masking mode:
    dynamic -> the training epoch (a fresh mask every time an example is fed); static -> the copy number
    (dupe_factor copies, each masked once: every epoch that shows copy k shows the same masks)."""
    if masking == "dynamic":
        return epoch
    if masking == "static":
        return copy
    raise ValueError(f"masking '{masking}'; allowed: dynamic, static")


@lru_cache(maxsize=16)
def _special_table(vocab_size: int, special_ids: frozenset[int]) -> np.ndarray:
    """A boolean per vocabulary id: a lookup is ~10x cheaper than np.isin on every batch."""
    table = np.zeros(vocab_size, dtype=bool)
    table[[i for i in special_ids if 0 <= i < vocab_size]] = True
    return table


@lru_cache(maxsize=16)
def _ordinary_ids(vocab_size: int, special_ids: frozenset[int]) -> np.ndarray:
    """Ids a random replacement may take: every id but the special ones."""
    return np.flatnonzero(~_special_table(vocab_size, special_ids))


def _token_counts(rule: MaskCount, n: np.ndarray, mask_prob: float, max_predictions: int | None,
                  rng: MaskRandom) -> np.ndarray:
    """How many units (tokens or words) to choose per row, for the deterministic-count rules."""
    if rule == "fairseq":  # probabilistic rounding: the expectation is exactly mask_prob * n
        counts = np.floor(mask_prob * n + rng.uniform(_ROUND, 1)[:, 0]).astype(np.int64)
    else:  # google: Python 3's round (half to even), as int(round(x)) in create_pretraining_data.py
        counts = np.maximum(1, np.rint(mask_prob * n).astype(np.int64))
    if max_predictions is not None:
        counts = np.minimum(counts, max_predictions)
    return np.minimum(counts, n)


def _smallest(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per row, True at the `counts[row]` smallest keys (keys of non-candidates are inf)."""
    ordered = np.sort(keys, axis=1)
    threshold = np.take_along_axis(ordered, np.maximum(counts - 1, 0)[:, None], axis=1)
    return (keys <= threshold) & (counts[:, None] > 0)


def _choose_tokens(candidates: np.ndarray, rule: MaskCount, mask_prob: float, max_predictions: int | None,
                   rng: MaskRandom) -> np.ndarray:
    keys = np.where(candidates, rng.uniform(_KEYS, candidates.shape[1]), np.inf)
    if rule == "bernoulli":
        chosen = keys < mask_prob
        if max_predictions is None:
            return chosen
        # Keys below mask_prob are still uniform, so the smallest ones are a uniform subset of the chosen.
        counts = np.minimum(chosen.sum(axis=1), max_predictions)
        return _smallest(np.where(chosen, keys, np.inf), counts)
    counts = _token_counts(rule, candidates.sum(axis=1), mask_prob, max_predictions, rng)
    return _smallest(keys, counts)


def _greedy_fill(lengths_in_order: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Google's whole-word rule: walk words in random order, take a word if it still fits the token budget,
    skip it otherwise. Vectorised across rows; stops once every row's budget is full."""
    taken = np.zeros(lengths_in_order.shape, dtype=bool)
    total = np.zeros(len(budget), dtype=np.int64)
    occupied = np.flatnonzero(lengths_in_order.any(axis=0))
    for k in range(occupied[-1] + 1 if len(occupied) else 0):
        column = lengths_in_order[:, k]
        fits = (column > 0) & (total + column <= budget)
        taken[:, k] = fits
        total += np.where(fits, column, 0)
        if np.all(total >= budget):
            break
    return taken


def _choose_words(candidates: np.ndarray, word_starts: np.ndarray, rule: MaskCount, mask_prob: float,
                  max_predictions: int | None, rng: MaskRandom) -> np.ndarray:
    rows, width = candidates.shape
    previous_is_candidate = np.zeros_like(candidates)
    previous_is_candidate[:, 1:] = candidates[:, :-1]
    # A word starts where the tokenizer says so, or right after a special token (a word never spans one).
    starts = candidates & (word_starts | ~previous_is_candidate)
    word_of = np.cumsum(starts.ravel()) - 1  # global word number of each position (valid on candidates)
    lengths = np.bincount(word_of[candidates.ravel()], minlength=int(starts.sum()))
    start_lengths = np.zeros((rows, width), dtype=np.int64)
    start_lengths[starts] = lengths
    keys = np.where(starts, rng.uniform(_KEYS, width), np.inf)
    order = np.argsort(keys, axis=1)
    lengths_in_order = np.take_along_axis(start_lengths, order, axis=1)
    if rule == "google":  # a token budget filled with whole words, exactly as create_pretraining_data.py
        budget = _token_counts(rule, candidates.sum(axis=1), mask_prob, max_predictions, rng)
        taken_in_order = _greedy_fill(lengths_in_order, budget)
    else:  # fairseq counts words (mask_whole_words); bernoulli draws each word
        picked = keys < mask_prob if rule == "bernoulli" else _smallest(
            keys, _token_counts(rule, starts.sum(axis=1), mask_prob, None, rng))
        taken_in_order = np.take_along_axis(picked, order, axis=1)
        if max_predictions is not None:  # the cap counts tokens: keep whole words while they fit
            budget = np.full(rows, max_predictions)
            taken_in_order = _greedy_fill(np.where(taken_in_order, lengths_in_order, 0), budget)
    chosen_starts = np.zeros((rows, width), dtype=bool)
    np.put_along_axis(chosen_starts, order, taken_in_order, axis=1)
    word_chosen = chosen_starts.ravel()[starts.ravel()]
    chosen = np.zeros(rows * width, dtype=bool)
    chosen[candidates.ravel()] = word_chosen[word_of[candidates.ravel()]]
    return chosen.reshape(rows, width)


def mask_tokens(input_ids: np.ndarray, *, special_ids: Collection[int], mask_id: int, vocab_size: int,
                mask_prob: float, mask_token_fraction: float, random_token_fraction: float, mask_count: MaskCount,
                max_predictions: int | None, word_starts: np.ndarray | None = None,
                rng: MaskRandom) -> tuple[np.ndarray, np.ndarray]:
    """Choose mask_prob of the non-special tokens of each row (1-D: one example, 2-D: a padded batch whose
    rows match rng's rows) and corrupt them: mask_token_fraction -> mask_id, random_token_fraction -> a
    uniformly drawn non-special id, the rest unchanged. Returns (masked_ids, labels), labels = original id at
    the chosen positions, -100 elsewhere. word_starts (same shape, bool) turns on whole-word masking."""
    if mask_count not in ("fairseq", "google", "bernoulli"):
        raise ValueError(f"mask_count '{mask_count}'; allowed: fairseq, google, bernoulli")
    ids = np.asarray(input_ids)
    batch = np.atleast_2d(ids)
    if len(rng) != len(batch):
        raise ValueError(f"rng has {len(rng)} row keys for {len(batch)} rows")
    specials = frozenset(int(i) for i in special_ids)
    if batch.size and (batch.min() < 0 or batch.max() >= vocab_size):
        raise ValueError(f"input ids must lie in [0, {vocab_size}), got [{batch.min()}, {batch.max()}]")
    candidates = ~_special_table(vocab_size, specials)[batch]
    if word_starts is None:
        chosen = _choose_tokens(candidates, mask_count, mask_prob, max_predictions, rng)
    else:
        starts = np.atleast_2d(np.asarray(word_starts, dtype=bool))
        chosen = _choose_words(candidates, starts, mask_count, mask_prob, max_predictions, rng)
    # Per token, as Google, fairseq and Hugging Face decide it.
    split, pick = rng.uniform_pair(_CORRUPT, batch.shape[1])
    to_mask = chosen & (split < mask_token_fraction)
    to_random = chosen & (split >= mask_token_fraction) & (split < mask_token_fraction + random_token_fraction)
    ordinary = _ordinary_ids(vocab_size, specials)
    replacement = ordinary[(pick * len(ordinary)).astype(np.int64)]
    masked = np.where(to_mask, mask_id, np.where(to_random, replacement, batch))
    labels = np.where(chosen, batch, IGNORE_INDEX)
    return masked.reshape(ids.shape), labels.reshape(ids.shape)


def fixed_validation_mask(input_ids: np.ndarray, *, special_ids: Collection[int], mask_id: int, vocab_size: int,
                          index: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The one validation mask set: 15% of tokens (fairseq's unbiased count), 80/10/10, no whole words, no cap,
    whatever the training recipe, so held-out loss compares across arms (MosaicBERT pins it the same way).
    Keyed by (seed, index) in its own domain: a fixed seed (default 0) gives every run the same masks."""
    rng = MaskRandom(seed, 0, index, domain=_VALIDATION_DOMAIN)
    return mask_tokens(input_ids, special_ids=special_ids, mask_id=mask_id, vocab_size=vocab_size, mask_prob=0.15,
                       mask_token_fraction=0.8, random_token_fraction=0.1, mask_count="fairseq",
                       max_predictions=None, rng=rng)


def word_start_table(tokenizer: Any) -> np.ndarray:
    """A boolean per vocabulary id: does this token begin a word? WordPiece: pieces starting with '##' continue
    a word. Byte-level BPE: tokens starting with 'Ġ' (an encoded space) begin one, others continue (fairseq's
    rule). Special tokens are words of their own. Index it with input ids to get mask_tokens' word_starts."""
    vocab = tokenizer.get_vocab()
    if "[CLS]" in vocab:
        begins = [not token.startswith("##") for token in tokenizer.convert_ids_to_tokens(range(len(tokenizer)))]
    elif "<s>" in vocab:
        begins = [token.startswith("\u0120") for token in tokenizer.convert_ids_to_tokens(range(len(tokenizer)))]
    else:
        raise ValueError("tokenizer has neither [CLS] (WordPiece) nor <s> (byte-level BPE) in its vocabulary")
    table = np.array(begins, dtype=bool)
    table[list(tokenizer.all_special_ids)] = True
    return table
