"""The one place that reads a whole run config and wires data and model together.

Toggles that touch both sides (next-sentence prediction, segment embeddings) are resolved here, once, and handed
down as plain arguments: the data module and the model cannot disagree about them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from harness.config import RunConfig
from harness.data.module import PretrainDataModule
from harness.models.pretrain import PretrainModule, build_pretraining_model


@dataclass(frozen=True)
class Recipe:
    nsp: bool
    segment_embeddings: bool
    micro_batch_size: int  # sequences per forward pass per device
    micro_batch_tokens: int | None  # padded tokens per forward pass per device (token batching)
    accumulate: int  # micro-batches per optimizer update per device
    total_steps: int  # optimizer updates


def tokens_per_update(config: RunConfig) -> int:
    """Nominal input tokens of one update: the token budget, or full-length sequences."""
    return config.optim.batch_tokens or config.optim.batch_size * config.data.max_seq_length


def total_steps(config: RunConfig) -> int:
    if config.budget.max_steps is not None:
        return config.budget.max_steps
    return max(1, math.ceil(config.budget.max_tokens / tokens_per_update(config)))


def resolve_recipe(config: RunConfig) -> Recipe:
    accumulate = config.grad_accumulation()
    micro_tokens = None
    if config.optim.batch_tokens is not None:
        micro_tokens = max(config.data.max_seq_length,
                           config.optim.batch_tokens // (accumulate * config.impl.devices))
    return Recipe(nsp=config.data.nsp, segment_embeddings=config.data.segment_embeddings,
                  micro_batch_size=config.impl.micro_batch_size or config.optim.batch_size // config.impl.devices,
                  micro_batch_tokens=micro_tokens, accumulate=accumulate, total_steps=total_steps(config))


def build_datamodule(config: RunConfig, recipe: Recipe, data_dir: str | Path | None = None) -> PretrainDataModule:
    return PretrainDataModule(config, nsp=recipe.nsp, token_types=recipe.segment_embeddings, data_dir=data_dir,
                              micro_batch_size=recipe.micro_batch_size, micro_batch_tokens=recipe.micro_batch_tokens)


def build_module(config: RunConfig, recipe: Recipe, data: PretrainDataModule) -> PretrainModule:
    """The model needs the vocabulary, so the data module must have been set up."""
    specials = data.specials
    model = build_pretraining_model(config.model, vocab_size=specials.vocab_size, pad_token_id=specials.pad_id,
                                    bos_token_id=specials.cls_id, eos_token_id=specials.sep_id,
                                    max_seq_length=config.data.max_seq_length, nsp=recipe.nsp,
                                    segment_embeddings=recipe.segment_embeddings)
    return PretrainModule(model, optim=config.optim, total_steps=recipe.total_steps, nsp=recipe.nsp)
