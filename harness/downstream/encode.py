"""A checkpoint folder as fine-tuning sees it, text -> model inputs, and batch padding.

Inputs are always built by the checkpoint's own tokenizer, so a RoBERTa checkpoint gets
`<s> A </s></s> B </s>` and a BERT one `[CLS] A [SEP] B [SEP]` with no code here knowing which. Segment
ids are fed only when the model has segment embeddings to read them (type_vocab_size > 1): RoBERTa's
single-row table crashes on a segment id of 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import HarnessError
from harness.data.masking import IGNORE_INDEX
from harness.downstream.glue import TextExample

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
# Models whose position ids start after the padding index (fairseq heritage): max length = table - pad - 1.
OFFSET_POSITION_MODELS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: Any  # transformers.PretrainedConfig
    tokenizer: Any  # a fast tokenizer: offsets and overflowing windows need one

    @property
    def token_types(self) -> bool:
        return getattr(self.config, "type_vocab_size", 1) > 1

    @property
    def max_length(self) -> int:
        """Longest input the position table allows."""
        positions = int(self.config.max_position_embeddings)
        if self.config.model_type in OFFSET_POSITION_MODELS:
            return positions - int(self.config.pad_token_id) - 1
        return positions


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint folder's config and tokenizer (no weights yet), with one-line errors for what is missing."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise HarnessError(f"checkpoint {path}: no such folder (expected a save_pretrained folder with config.json, "
                           "model weights and the tokenizer)")
    if not (path / "config.json").is_file():
        raise HarnessError(f"checkpoint {path}: no config.json (save the model with save_pretrained)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise HarnessError(f"checkpoint {path}: no model weights ({' or '.join(WEIGHT_FILES[::2])})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise HarnessError(f"checkpoint {path}: no tokenizer ({', '.join(TOKENIZER_FILES)}); save the pre-training "
                           "tokenizer into the checkpoint folder with tokenizer.save_pretrained")
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # a broken tokenizer folder raises many kinds of error
        raise HarnessError(f"checkpoint {path}: the tokenizer does not load ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise HarnessError(f"checkpoint {path}: {type(tokenizer).__name__} is not a fast tokenizer; "
                           "QA and NER need character offsets (save a tokenizer.json)")
    return Checkpoint(path, config, tokenizer)


def checkpoint_fingerprint(path: Path) -> str:
    """Content hash of the config and weights: results follow the model, not the folder it was copied to."""
    digest = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES):
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            with file.open("rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """A pre-training checkpoint lacks the fine-tuning head by design: keep transformers' load report about
    the missing and unused weights out of every trial's log."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def encode_texts(tokenizer: Any, examples: Sequence[TextExample], max_length: int,
                 token_types: bool) -> list[dict[str, Any]]:
    """Single sentences or pairs -> features with `labels` (a class index, or a float score: pad_batch keeps it
    float) and `example_index`; pairs are truncated longest-first."""
    features: list[dict[str, Any]] = []
    for start in range(0, len(examples), 2000):
        chunk = examples[start:start + 2000]
        second = [ex.text_b for ex in chunk] if chunk[0].text_b is not None else None
        enc = tokenizer([ex.text_a for ex in chunk], second, truncation=True, max_length=max_length,
                        return_token_type_ids=token_types)
        for i, example in enumerate(chunk):
            feature = {key: enc[key][i] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}
            feature["labels"] = example.label
            feature["example_index"] = start + i  # for the evaluator's per-example predictions, not a model input
            features.append(feature)
    return features


def pad_batch(features: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest feature in the batch; token labels pad with -100 (ignored)."""
    length = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if not isinstance(values[0], list):
            batch[key] = torch.tensor(values)
            continue
        fill = pad_token_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
        padded = torch.full((len(values), length), fill, dtype=torch.long)
        for row, value in enumerate(values):
            padded[row, :len(value)] = torch.tensor(value, dtype=torch.long)
        batch[key] = padded
    return batch
