"""Special tokens and the layout of one model input.

BERT (WordPiece):  [CLS] A [SEP] B [SEP]      single: [CLS] X [SEP]
RoBERTa (BPE):     <s> A </s></s> B </s>       single: <s> X </s>

token_type_ids follow Google's create_pretraining_data.py for both styles: 0 for the first special token,
A and the separator that closes A; 1 for everything after it. For RoBERTa that puts the first `</s>` of the
`</s></s>` pair in segment 0 (it closes A, like BERT's first [SEP]) and the second in segment 1 (it opens B).
Hugging Face's RoBERTa has a single segment row (type_vocab_size=1) and crashes on a non-zero type id, so the
wiring module that reads `data.segment_embeddings` must drop or zero token_type_ids when they are not fed to
a 2-row segment embedding; this module always reports the true segment structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Style = Literal["bert", "roberta"]

# (cls, sep, pad, mask, unk) token strings of each style.
_TOKENS: dict[str, tuple[str, str, str, str, str]] = {
    "bert": ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"),
    "roberta": ("<s>", "</s>", "<pad>", "<mask>", "<unk>"),
}


@dataclass(frozen=True)
class SpecialTokens:
    """The special token ids of a vocabulary and how they frame one input."""

    style: Style
    cls_id: int  # [CLS] or <s>
    sep_id: int  # [SEP] or </s>; also the extra separator between documents in full_sentences
    pad_id: int
    mask_id: int
    unk_id: int
    vocab_size: int
    all_ids: frozenset[int]  # every special id: never chosen for masking, never a random replacement

    def __post_init__(self) -> None:
        if self.style not in _TOKENS:
            raise ValueError(f"special token style '{self.style}'; allowed: {', '.join(_TOKENS)}")
        named = {self.cls_id, self.sep_id, self.pad_id, self.mask_id, self.unk_id}
        if not named <= self.all_ids:
            raise ValueError(f"all_ids must contain cls/sep/pad/mask/unk ids {sorted(named)}")
        if max(self.all_ids) >= self.vocab_size:
            raise ValueError(f"special id {max(self.all_ids)} is outside the vocabulary of {self.vocab_size}")
        if len(self.all_ids) >= self.vocab_size:
            raise ValueError("the vocabulary holds no ordinary token")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialTokens:
        """From a transformers tokenizer: BERT style if its vocabulary has [CLS], RoBERTa style if it has <s>."""
        vocab = tokenizer.get_vocab()
        style: Style
        if "[CLS]" in vocab:
            style = "bert"
        elif "<s>" in vocab:
            style = "roberta"
        else:
            raise ValueError("tokenizer has neither [CLS] (BERT) nor <s> (RoBERTa) in its vocabulary")
        missing = [token for token in _TOKENS[style] if token not in vocab]
        if missing:
            raise ValueError(f"{style}-style tokenizer lacks special tokens {missing}")
        cls_id, sep_id, pad_id, mask_id, unk_id = (vocab[token] for token in _TOKENS[style])
        named = {cls_id, sep_id, pad_id, mask_id, unk_id}
        return cls(style=style, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id, mask_id=mask_id, unk_id=unk_id,
                   vocab_size=len(tokenizer), all_ids=frozenset(named | set(tokenizer.all_special_ids)))

    @property
    def pair_overhead(self) -> int:
        """Special tokens around a pair: 3 for BERT, 4 for RoBERTa (matches config.special_token_count)."""
        return 3 if self.style == "bert" else 4

    @property
    def single_overhead(self) -> int:
        return 2

    def wrap(self, a: list[int], b: list[int] | None = None) -> tuple[list[int], list[int]]:
        """Frame one segment (b None) or a pair; returns (input_ids, token_type_ids)."""
        if b is None:
            ids = [self.cls_id, *a, self.sep_id]
            return ids, [0] * len(ids)
        if self.style == "bert":
            first, second = [self.cls_id, *a, self.sep_id], [*b, self.sep_id]
        else:
            first, second = [self.cls_id, *a, self.sep_id], [self.sep_id, *b, self.sep_id]
        return first + second, [0] * len(first) + [1] * len(second)
