"""The common held-out set: the same text for every arm, packed one fixed way, masked once, scored per character.

Each arm's own-format validation (module.py) packs the held-out documents the way that arm trains, so its loss
compares only arms of one format and one tokenizer: short sentence pairs score best, and a loss per token means
something else for every vocabulary. The common set fixes everything but the model:

- text:    the corpus's validation split (chosen by a hash of the document ids, so the same for every tokenizer),
           whole documents in their order, up to `max_chars` non-whitespace characters counted on the text;
- packing: doc_sentences at the run's max_seq_length, one segment, no separators inside, no NSP, no token types;
- masks:   masking.fixed_validation_mask (15%, 80/10/10, keyed by the row), whatever the training recipe.

Bits per character makes BPE and WordPiece arms comparable: bpc = (sum over the masked tokens of their NLL in nats
/ ln 2) / (sum of those tokens' characters), where a token's characters are the non-whitespace characters of the
text it stands for (`surface_chars`). Whitespace is counted by neither side (WordPiece drops it, byte-level BPE
folds a space into the next token), nor in `chars` of the corpus (segment.visible_chars). The masks choose tokens
uniformly, so this estimates the bits the model needs per character of the held-out text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.data.examples import PackedExamples, PackingPlan, build_packed
from harness.data.masking import IGNORE_INDEX
from harness.data.segment import visible_chars
from harness.data.specials import SpecialTokens

if TYPE_CHECKING:
    from harness.data.corpus import TokenizedCorpus

COMMON_PACKING = "doc_sentences"


@dataclass(frozen=True)
class CommonValidation:
    """The packed common held-out set and what it stands for."""

    packed: PackedExamples
    documents: int  # held-out documents it holds (a prefix of the validation split)
    chars: int  # their non-whitespace characters, counted on the text: equal for every tokenizer
    char_table: np.ndarray  # surface_chars of the run's vocabulary


def common_document_count(chars: Sequence[int], max_chars: int | None) -> int:
    """How many held-out documents, in order, the common set takes: all with max_chars None, else the longest
    prefix within max_chars characters - but at least one, so a budget below the first document still scores."""
    if max_chars is None or len(chars) == 0:
        return len(chars)
    within = int(np.searchsorted(np.cumsum(np.asarray(chars, dtype=np.int64)), max_chars, side="right"))
    return max(1, within)


def build_common_validation(corpus: TokenizedCorpus, specials: SpecialTokens, *, max_seq_length: int,
                            max_chars: int | None, root: Path, corpus_key: str) -> CommonValidation:
    """Pack the common set from the validation split the run already has (no second corpus build); the rows are
    cached like the training rows, keyed by the corpus and the documents taken."""
    count = common_document_count(list(corpus.validation["chars"]), max_chars)
    documents = corpus.validation.select(range(count))
    plan = PackingPlan.create(packing=COMMON_PACKING, max_seq_length=max_seq_length, nsp=False, short_seq_prob=0.0,
                              seed=0, static_copies=1)
    key = f"{corpus_key}/validation-common:{count}"
    packed = build_packed(documents["sentences"], plan, specials, root / plan.key(key), key)
    return CommonValidation(packed=packed, documents=count, chars=int(sum(documents["chars"])),
                            char_table=surface_chars(corpus.tokenizer))


# ---- characters of a token ---------------------------------------------------------------------------------

@cache
def _byte_level_bytes() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that shows each byte (a space is 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    shown = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(shifted)}
    return {char: byte for byte, char in shown.items()}


def byte_level_chars(token: str) -> int:
    """Non-whitespace characters of the bytes a byte-level BPE token stands for. A character split over several
    tokens counts once, in the token holding its first byte (UTF-8 continuation bytes count nothing), so the
    tokens of a text add up to the text's characters."""
    table = _byte_level_bytes()
    if any(char not in table for char in token):  # not a byte-level piece (an added token): its text as written
        return visible_chars(token)
    data = bytes(table[char] for char in token)
    starts = sum(1 for byte in data if byte & 0xC0 != 0x80)
    return starts - sum(char.isspace() for char in data.decode("utf-8", errors="ignore"))


def surface_chars(tokenizer: Any) -> np.ndarray:
    """Per vocabulary id, the non-whitespace characters of the text the token stands for (int64; 0 for special
    tokens). Byte-level BPE: `byte_level_chars`. WordPiece: the piece without its '##'. WordPiece's [UNK] counts
    0: the characters it replaced are unknown, so its loss adds bits without characters (a slight upward bias
    of WordPiece bpc; [UNK] is ~0.07% of WikiText-2's held-out tokens at a 1K vocabulary, none of Reuters')."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    decoder = type(tokenizer.backend_tokenizer.decoder).__name__
    if decoder == "ByteLevel":
        counts = [byte_level_chars(token) for token in tokens]
    elif decoder == "WordPiece":
        counts = [visible_chars(token.removeprefix("##")) for token in tokens]
    else:
        raise ValueError(f"characters per token: unsupported tokenizer decoder {decoder}; allowed: ByteLevel "
                         "(byte-level BPE), WordPiece")
    table = np.asarray(counts, dtype=np.int64)
    table[list(tokenizer.all_special_ids)] = 0
    return table


def label_chars(labels: np.ndarray, char_table: np.ndarray) -> np.ndarray:
    """Characters of each masked token's original text (labels = original id at masked positions, -100 else)."""
    masked = labels != IGNORE_INDEX
    return np.where(masked, char_table[np.where(masked, labels, 0)], 0)


class CharCountingCollator:
    """Wraps the validation collator of the common set: adds `label_chars` (B x L), the characters of each masked
    token's text, which the model sums into bits per character, and `document` (B), the held-out document each row
    comes from (doc_sentences never crosses a document), so the loss can be kept per document."""

    def __init__(self, collate: Any, char_table: np.ndarray, first_document: np.ndarray | None = None) -> None:
        self.collate, self.char_table, self.first_document = collate, char_table, first_document

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        batch = self.collate(items)
        batch["label_chars"] = torch.from_numpy(label_chars(batch["labels"].numpy(), self.char_table))
        if self.first_document is not None:
            rows = [item[2] for item in items]  # (mask epoch, mask index, row)
            batch["document"] = torch.from_numpy(np.asarray(self.first_document[rows], dtype=np.int64))
        return batch
