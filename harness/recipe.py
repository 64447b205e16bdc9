"""The one place that reads a whole run config and wires data and model together.

Toggles that touch both sides (next-sentence prediction, segment embeddings) are resolved here, once, and handed
down as plain arguments: the data module and the model cannot disagree about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.config import RunConfig
from harness.data.module import PretrainDataModule, TrainBudget
from harness.models.dropout import use_fast_dropout
from harness.models.pretrain import PretrainModule, build_pretraining_model


@dataclass(frozen=True)
class Recipe:
    nsp: bool
    segment_embeddings: bool
    micro_batch_size: int  # sequences per forward pass per device (batching by count; validation)
    accumulate: int  # micro-batches per optimizer update per device
    budget: TrainBudget  # the number of updates is known once the data is packed: PretrainDataModule.total_updates


def nominal_tokens_per_update(config: RunConfig) -> int:
    """Input tokens of one update if every input were full: the token budget, or full-length sequences."""
    return config.optim.batch_tokens or config.optim.batch_size * config.data.max_seq_length


def resolve_recipe(config: RunConfig) -> Recipe:
    accumulate, devices = config.grad_accumulation(), config.world_size()
    tokens = config.optim.batch_tokens  # by tokens, each update is cut from the stream before it is split
    budget = TrainBudget(max_steps=config.budget.max_steps, max_tokens=config.budget.max_tokens, accumulate=accumulate,
                         devices=devices, update_tokens=tokens,
                         group_by_length=config.optim.group_by_length and tokens is not None,  # by tokens only
                         sequences_per_update=None if tokens else config.optim.batch_size)
    return Recipe(nsp=config.data.nsp, segment_embeddings=config.data.segment_embeddings,
                  micro_batch_size=config.impl.micro_batch_size or config.optim.batch_size // devices,
                  accumulate=accumulate, budget=budget)


def build_datamodule(config: RunConfig, recipe: Recipe, data_dir: str | Path | None = None) -> PretrainDataModule:
    return PretrainDataModule(config, nsp=recipe.nsp, token_types=recipe.segment_embeddings, data_dir=data_dir,
                              micro_batch_size=recipe.micro_batch_size, budget=recipe.budget)


def build_module(config: RunConfig, recipe: Recipe, data: PretrainDataModule) -> PretrainModule:
    """The model needs the vocabulary and the schedule the number of updates: the data module must be set up."""
    specials = data.specials
    model = build_pretraining_model(config.model, vocab_size=specials.vocab_size, pad_token_id=specials.pad_id,
                                    bos_token_id=specials.cls_id, eos_token_id=specials.sep_id,
                                    max_seq_length=config.data.max_seq_length, nsp=recipe.nsp,
                                    segment_embeddings=recipe.segment_embeddings)
    if config.impl.fast_dropout and not config.impl.compile:  # compiled graphs draw their masks with inductor's RNG
        use_fast_dropout(model)
    module = PretrainModule(model, optim=config.optim, total_steps=data.total_updates, nsp=recipe.nsp)
    if config.impl.compile:
        module.compile_encoder()
    return module
