"""Held-out figures that are sums over masked tokens, kept as torchmetrics states so ranks are summed correctly."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


class MaskedTokenBits(Metric):
    """Sums over the masked tokens of a held-out set: their NLL (nats), their count and their characters.

    compute() -> mlm_loss = NLL / tokens (nats per masked token), ppl = exp(mlm_loss) and
    bpc = NLL / ln 2 / characters: bits per character of the masked tokens' text (harness.data.heldout)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("chars", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, token_losses: Tensor, token_chars: Tensor) -> None:
        """token_losses: NLL of each masked token (nats); token_chars: the characters of each one's text."""
        self.nll += token_losses.detach().float().sum()
        self.tokens += token_losses.numel()
        self.chars += token_chars.sum()

    def compute(self) -> dict[str, Tensor]:
        loss = self.nll / self.tokens.clamp(min=1)
        return {"mlm_loss": loss, "ppl": torch.exp(loss), "bpc": self.nll / math.log(2) / self.chars.clamp(min=1)}
