"""Masked-LM pseudo-log-likelihood (Salazar et al., ACL 2020): score a sentence with a bidirectional model.

PLL(s) = sum over the non-special tokens t of log p(t | s with t masked), with the checkpoint's own tokenizer and
special tokens. `pll_word_l2r` (Kauf & Ivanova, ACL 2023) also masks the later pieces of t's word, so a word split
into pieces cannot be "spelled out" from its own tail; words are the fast tokenizer's `word_ids()` (its
pre-tokenizer's words: whitespace and punctuation for WordPiece, the GPT-2 split for byte-level BPE).

Speed (the same numbers as the plain forward up to float rounding, see tests/test_blimp.py): each distinct token
sequence is scored once; the masked copies of sentences of equal length are stacked into batches (no batch holds
padding); only the scored position of each copy is carried through the last layer and the MLM head. Every other
position's last-layer query, feed-forward and vocabulary projection feed nothing that is scored, so they are
skipped (the tiny preset with an 8K vocabulary: a fifth of the plain forward's arithmetic, benchmarks/README.md).
The path is chosen at load by checking it against the model's own forward on a probe sentence:
    last_layer  the model's own modules, with the last layer's query, feed-forward and head at one position
                (BERT-style layers: attention.self.query/key/value, attention.output, intermediate, output)
    head        the encoder on every position, the head (BERT's `cls`, RoBERTa's `lm_head`) at one
    full        the model's forward: vocabulary logits at every position (slow, any masked LM)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import HarnessError
from harness.downstream.encode import Checkpoint, quiet_transformers

Scoring = Literal["pll", "pll_word_l2r"]
SCORINGS: tuple[Scoring, ...] = ("pll", "pll_word_l2r")
ScoringPath = Literal["last_layer", "head", "full"]
PROBE = "The probe sentence, with a few words in it."


@dataclass(frozen=True)
class MaskedLM:
    model: nn.Module  # an AutoModelForMaskedLM, in eval mode
    head: nn.Module | None  # the MLM head on base_model's hidden states (None: not one module)
    tokenizer: Any
    mask_id: int
    device: torch.device
    path: ScoringPath = "full"


def load_masked_lm(ckpt: Checkpoint, device: str = "cpu") -> MaskedLM:
    """The checkpoint with its pre-training head and the fastest path that reproduces its forward; a checkpoint
    without MLM head weights (a fine-tuned classifier) or a tokenizer without a mask token is one line."""
    if ckpt.tokenizer.mask_token_id is None:
        raise HarnessError(f"checkpoint {ckpt.path}: its tokenizer ({type(ckpt.tokenizer).__name__}) has no mask "
                           "token; pseudo-log-likelihood scoring masks each token in turn")
    model = _load_model(ckpt).to(device).eval()
    lm = MaskedLM(model, find_mlm_head(model), ckpt.tokenizer, int(ckpt.tokenizer.mask_token_id), torch.device(device))
    for path in ("last_layer", "head"):
        if lm.head is not None and _path_matches_forward(replace(lm, path=path)):
            return replace(lm, path=path)
    return lm


def _load_model(ckpt: Checkpoint) -> nn.Module:
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' per-load bar and report are not for the user's console
    try:
        with quiet_transformers():
            model, info = AutoModelForMaskedLM.from_pretrained(ckpt.path, local_files_only=True,
                                                               output_loading_info=True)
    except ValueError as err:  # a config with no masked-LM class (e.g. GPT-2)
        raise HarnessError(f"checkpoint {ckpt.path}: no masked-LM model for it ({str(err).splitlines()[0]})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(info["missing_keys"])
    if missing:  # randomly initialised head weights would be scored as if trained
        saved_as = ", ".join(getattr(ckpt.config, "architectures", None) or ["an unnamed architecture"])
        raise HarnessError(f"checkpoint {ckpt.path}: no masked-LM head weights ({missing[0]} and {len(missing) - 1} "
                           f"more missing; saved as {saved_as}); score a pre-training checkpoint (a run's model/), "
                           "not a fine-tuned one")
    return model


def find_mlm_head(model: nn.Module) -> nn.Module | None:
    """The top-level submodule holding the output embeddings (BERT's `cls`, RoBERTa's `lm_head`), or None when the
    output projection is itself a top-level module (DistilBERT, ELECTRA: the head is spread over several)."""
    output = model.get_output_embeddings()
    base = getattr(model, "base_model", None)
    if output is None:
        return None
    for child in model.children():
        if child is not base and any(module is output for module in child.modules()):
            return None if child is output else child
    return None


@torch.inference_mode()
def _path_matches_forward(lm: MaskedLM) -> bool:
    """Each fast path assumes the model is built the usual way: checked once, on every masked copy of a probe."""
    ids = torch.tensor(lm.tokenizer(PROBE)["input_ids"], device=lm.device)
    positions = torch.arange(1, len(ids) - 1, device=lm.device)
    copies = ids.repeat(len(positions), 1)
    copies[torch.arange(len(positions)), positions] = lm.mask_id
    try:
        fast = token_log_probs(lm, copies, positions, ids[positions])
    except (AttributeError, TypeError, RuntimeError, ValueError):  # not the layout this path reads
        return False
    full = token_log_probs(replace(lm, path="full"), copies, positions, ids[positions])
    return torch.allclose(fast, full, atol=1e-4, rtol=1e-4)


# ---- sentences -> masked copies -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedGroup:
    """Distinct token sequences of one length: ids, word index per token (-1 = special) and scored positions."""

    ids: np.ndarray  # S x L int64
    words: np.ndarray  # S x L int64
    scored: np.ndarray  # S x L bool: the non-special tokens


def encode_sentences(tokenizer: Any, sentences: Sequence[str]) -> tuple[list[EncodedGroup], np.ndarray, np.ndarray]:
    """Tokenize with special tokens; group the distinct sequences by length. Returns the groups and, per sentence,
    its group and row: equal token sequences share one row, so they get one score (an exact tie)."""
    enc = tokenizer(list(sentences), return_special_tokens_mask=True)
    keys: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[int, int]] = {}
    rows: dict[int, list[tuple[list[int], list[int], list[int]]]] = {}
    where = np.empty((len(sentences), 2), dtype=np.int64)
    for i, ids in enumerate(enc["input_ids"]):
        words = [-1 if w is None else w for w in enc.word_ids(i)]
        key = (tuple(ids), tuple(words))
        if key not in keys:
            group = rows.setdefault(len(ids), [])
            keys[key] = (len(ids), len(group))
            group.append((ids, words, enc["special_tokens_mask"][i]))
        where[i] = keys[key]
    lengths = sorted(rows)
    groups = [EncodedGroup(np.array([r[0] for r in rows[n]], dtype=np.int64),
                           np.array([r[1] for r in rows[n]], dtype=np.int64),
                           np.array([r[2] for r in rows[n]], dtype=np.int64) == 0) for n in lengths]
    index = {n: g for g, n in enumerate(lengths)}
    return groups, np.array([index[n] for n in where[:, 0]], dtype=np.int64), where[:, 1]


def masked_copies(group: EncodedGroup, sentence_rows: np.ndarray, positions: np.ndarray, mask_id: int,
                  word_l2r: bool) -> tuple[np.ndarray, np.ndarray]:
    """One copy per (row, position): the token at `position` masked and, with `word_l2r`, the later tokens of the
    same word too. Returns the copies (C x L) and the original ids at the scored positions (C)."""
    copies = group.ids[sentence_rows].copy()
    columns = np.arange(copies.shape[1])
    masked = columns[None, :] == positions[:, None]
    if word_l2r:
        words = group.words[sentence_rows]
        own_word = words[np.arange(len(positions)), positions]
        masked |= (columns[None, :] > positions[:, None]) & (words == own_word[:, None]) & (own_word[:, None] >= 0)
    targets = copies[np.arange(len(positions)), positions]
    copies[masked] = mask_id
    return copies, targets


# ---- scoring ------------------------------------------------------------------------------------------------
def score_sentences(lm: MaskedLM, sentences: Sequence[str], scoring: Scoring = "pll", batch_size: int = 512,
                    max_length: int | None = None) -> np.ndarray:
    """PLL (float64 sums of float32 log-probabilities) of each sentence, in order."""
    if scoring not in SCORINGS:
        raise HarnessError(f"scoring = '{scoring}'; allowed: {', '.join(SCORINGS)}")
    groups, group_of, row_of = encode_sentences(lm.tokenizer, sentences)
    longest = groups[-1].ids.shape[1] if groups else 0
    if max_length is not None and longest > max_length:
        sentence = next(s for i, s in enumerate(sentences) if groups[group_of[i]].ids.shape[1] == longest)
        raise HarnessError(f"sentence of {longest} tokens exceeds the checkpoint's {max_length} positions: "
                           f"{sentence[:80]!r}")
    totals = [np.zeros(len(g.ids), dtype=np.float64) for g in groups]
    for group, total in zip(groups, totals, strict=True):
        score_group(lm, group, total, scoring == "pll_word_l2r", batch_size)
    return np.array([totals[g][r] for g, r in zip(group_of, row_of, strict=True)], dtype=np.float64)


def score_group(lm: MaskedLM, group: EncodedGroup, total: np.ndarray, word_l2r: bool, batch_size: int) -> None:
    """Add each copy's log-probability of its original token into `total` (one entry per row of the group)."""
    rows, positions = np.nonzero(group.scored)
    for start in range(0, len(rows), batch_size):
        chunk_rows, chunk_positions = rows[start:start + batch_size], positions[start:start + batch_size]
        copies, targets = masked_copies(group, chunk_rows, chunk_positions, lm.mask_id, word_l2r)
        values = token_log_probs(lm, *(torch.from_numpy(a).to(lm.device) for a in (copies, chunk_positions, targets)))
        np.add.at(total, chunk_rows, values.double().cpu().numpy())


@torch.inference_mode()
def token_log_probs(lm: MaskedLM, copies: Tensor, positions: Tensor, targets: Tensor) -> Tensor:
    """log p(target | copy) at each copy's scored position (copies: C x L without padding)."""
    picked = torch.arange(len(copies), device=copies.device)
    if lm.path == "full":
        logits = lm.model(input_ids=copies).logits[picked, positions]
    elif lm.path == "head":
        logits = lm.head(lm.model.base_model(input_ids=copies).last_hidden_state[picked, positions])
    else:
        logits = lm.head(_hidden_at(lm.model.base_model, copies, positions))
    return torch.log_softmax(logits.float(), dim=-1)[picked, targets]


def _hidden_at(base: nn.Module, copies: Tensor, positions: Tensor) -> Tensor:
    """The last layer's output at one position per copy: the lower layers on every position (they feed the last
    layer's keys and values), then the last layer's query, attention output and feed-forward at `positions` only."""
    *lower, last = base.encoder.layer
    hidden = base.embeddings(input_ids=copies)
    for layer in lower:
        hidden = layer(hidden)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # transformers 4 layers return tuples
    attention = last.attention.self
    rows, length = hidden.shape[:2]
    at = hidden[torch.arange(rows, device=hidden.device), positions]
    heads, size = attention.num_attention_heads, attention.attention_head_size
    query = attention.query(at).view(rows, heads, 1, size)
    key = attention.key(hidden).view(rows, length, heads, size).transpose(1, 2)
    value = attention.value(hidden).view(rows, length, heads, size).transpose(1, 2)
    context = F.scaled_dot_product_attention(query, key, value, scale=attention.scaling).reshape(rows, heads * size)
    attended = last.attention.output(context, at)
    return last.output(last.intermediate(attended), attended)
