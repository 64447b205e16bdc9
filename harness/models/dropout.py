"""Dropout on the CPU with masks drawn from numpy's PCG64 instead of torch's Mersenne Twister.

Why: torch draws CPU dropout masks one element at a time from a single-threaded Mersenne Twister (Intel CPUs get
MKL's vectorised generator, others do not), so on our 2-core AMD machine dropout was 42% of a bf16 forward pass, and
the attention-probability dropout alone made `scaled_dot_product_attention` 20x slower than without it (it forces
the math path). PCG64 fills 64 random bits per call, four 16-bit draws, and the mask is built with vectorised numpy.

What stays the same: each element is kept independently with probability 1 - p and scaled by 1 / (1 - p) (p is
quantised to 1/65536: 0.1 becomes 0.100006), on the same tensors as the transformers model (embeddings, attention
probabilities, attention and FFN outputs). Each call seeds PCG64 from torch's generator, so the masks follow the run
seed like torch's own. Only tensors on the CPU take this path; on a GPU (torch's Philox, already fast) and in eval
mode the call is torch's. `impl.fast_dropout: false` keeps torch's generator everywhere (docs/fidelity.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "sdpa_fast_dropout"
_LEVELS = 1 << 16  # one 16-bit draw per element


def dropout_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> Tensor:
    """1 where kept (probability 1 - p), 0 where dropped, each element independently, in `dtype`."""
    count = int(np.prod(shape))
    seed = int(torch.randint(0, 2**63 - 1, (1,)))  # from torch's generator: masks follow the run seed
    draws = np.random.PCG64(seed).random_raw((count + 3) // 4).view(np.uint16)[:count]
    keep = draws >= round(p * _LEVELS)
    if dtype in (torch.bfloat16, torch.float16):  # write 1.0's bit pattern where kept: no float conversion pass
        one_bits = torch.ones((), dtype=dtype).view(torch.int16).item() & 0xFFFF
        return torch.from_numpy(np.multiply(keep.view(np.uint8), np.uint16(one_bits), dtype=np.uint16)).view(
            dtype).view(shape)
    return torch.from_numpy(keep).view(shape).to(dtype)


def fast_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0 or p >= 1.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    # Scaled after masking, not by a scale rounded to x's dtype: a bf16 1/0.9 would shrink every activation by 0.16%.
    return (x * dropout_mask(x.shape, p, x.dtype)).mul_(1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    """nn.Dropout with CPU masks from PCG64 (no parameters, so checkpoints are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training)


def sdpa_fast_dropout(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """transformers' SDPA attention, except that attention-probability dropout on the CPU is applied here (the math
    of transformers' eager attention, with an SDPA boolean mask) instead of inside SDPA's slow math path."""
    if dropout == 0.0 or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.size(-1) ** -0.5)
    if attention_mask is not None:  # sdpa_mask: True = attend
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = fast_dropout(F.softmax(scores, dim=-1), dropout, True)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, sdpa_fast_dropout)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_fast_dropout(model: PreTrainedModel) -> PreTrainedModel:
    """Swap every nn.Dropout of `model` for FastDropout and its attention for sdpa_fast_dropout, in place."""
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
    model.set_attn_implementation(ATTENTION)
    return model


def use_torch_dropout(model: PreTrainedModel) -> PreTrainedModel:
    """Undo use_fast_dropout (before export: a saved model must load anywhere without this module)."""
    for module in model.modules():
        if type(module) is FastDropout:
            module.__class__ = nn.Dropout
    model.set_attn_implementation("sdpa")
    return model
