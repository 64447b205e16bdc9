"""The paper's optimiser: AdamW without decay on biases and LayerNorm weights, linear warm-up to the peak
learning rate, then linear decay to zero (or a constant rate). Schedules come from transformers so they match
what every Hugging Face recipe uses; only the grouping of parameters is ours."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from harness.config import OptimConfig


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """Updates spent warming up: the fraction of the update budget, rounded to the nearest update."""
    return int(round(warmup_fraction * total_steps))


def _is_exempt_from_decay(module: nn.Module, name: str) -> bool:
    # Decided by module type, not by parameter name: BERT spells it `LayerNorm`, RoBERTa's head `layer_norm`.
    return isinstance(module, nn.LayerNorm) or name == "bias"


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights, and biases plus LayerNorm parameters without decay.
    Tied parameters (the MLM decoder shares the word embeddings and the head bias) are listed once."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if _is_exempt_from_decay(module, name) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, optim.weight_decay), lr=optim.peak_lr, betas=tuple(optim.betas), eps=optim.eps
    )


def build_lr_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int) -> LambdaLR:
    """Multiplier on the peak rate, stepped once per optimizer update: 0 at update 0, 1 after the warm-up,
    then linear to 0 at `total_steps` (schedule 'linear') or held at 1 (schedule 'constant')."""
    if total_steps < 1:
        raise ValueError(f"total_steps = {total_steps}; the learning-rate schedule needs at least one update")
    warmup = warmup_steps(total_steps, optim.warmup_fraction)
    if optim.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
