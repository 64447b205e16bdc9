"""Held-out figures that are sums over masked tokens, kept as torchmetrics states so ranks are summed correctly."""

from __future__ import annotations

import math
from typing import Any

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


class DocumentLosses(Metric):
    """The same sums as MaskedTokenBits, kept per held-out document, so that a report can resample documents.

    update() takes the flat masked-token losses (row-major, as the model returns them), the masked tokens' characters
    and the batch's `labels` mask and `document` per row; compute() -> (documents, nll, tokens, chars), one entry per
    document seen, sorted by document."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("document", "nll", "tokens", "chars"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, token_losses: Tensor, token_chars: Tensor, masked: Tensor, document: Tensor) -> None:
        rows = masked.nonzero()[:, 0]  # the row of each masked token, in the order of token_losses
        size = masked.shape[0]
        self.document.append(document.detach().long())
        self.nll.append(torch.zeros(size, device=rows.device).index_add_(0, rows, token_losses.detach().float()))
        self.tokens.append(masked.sum(-1).long())
        self.chars.append(torch.zeros(size, dtype=torch.long, device=rows.device).index_add_(0, rows, token_chars))

    def compute(self) -> dict[str, Tensor]:
        def flat(state: Any) -> Tensor:
            return torch.cat(state) if isinstance(state, list) else state

        document, nll, tokens, chars = (flat(s) for s in (self.document, self.nll, self.tokens, self.chars))
        ids, inverse = torch.unique(document, sorted=True, return_inverse=True)

        def per_document(values: Tensor) -> Tensor:
            return torch.zeros(len(ids), dtype=values.dtype, device=values.device).index_add_(0, inverse, values)

        return {"document": ids, "nll": per_document(nll), "tokens": per_document(tokens),
                "chars": per_document(chars)}
