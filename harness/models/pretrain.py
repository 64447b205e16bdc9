"""Pre-training model: a stock transformers model trained with masked-LM (and optionally next-sentence) loss.

The transformer is never written by hand: `build_pretraining_model` returns BertForPreTraining,
BertForMaskedLM or RobertaForMaskedLM. `PretrainModule` calls the model's encoder and then the model's own
head modules, but only at the masked positions (as Google's BERT, fairseq and Cramming do), which skips the
vocabulary projection for ~85% of the tokens. Because the head modules are the model's own, a checkpoint is a
plain `save_pretrained` checkpoint that `AutoModelForMaskedLM` (or a fine-tuning class) loads unchanged.

Batch contract (one dict per micro-batch):
    input_ids            B x L long
    attention_mask       B x L (1 = real token, 0 = padding)
    token_type_ids       B x L long, present only when the model has segment embeddings
    labels               B x L long, the original token at masked positions, -100 elsewhere
    next_sentence_label  B long, only with NSP: 0 = segment B follows A, 1 = B is random
    label_chars          B x L long, only in batches of the common held-out set: characters of each masked
                         token's text (harness.data.heldout), summed into bits per character
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    PreTrainedModel,
    RobertaConfig,
    RobertaForMaskedLM,
)

from harness.config import ModelConfig, OptimConfig
from harness.data.masking import IGNORE_INDEX
from harness.models.metrics import DocumentLosses, MaskedTokenBits
from harness.models.optim import build_lr_schedule, build_optimizer

# Layer-norm epsilon of the released checkpoints: Google's BERT 1e-12, fairseq's RoBERTa 1e-5.
LAYER_NORM_EPS = {"bert": 1e-12, "roberta": 1e-5}


def build_pretraining_model(model: ModelConfig, *, vocab_size: int, pad_token_id: int, bos_token_id: int | None,
                            eos_token_id: int | None, max_seq_length: int, nsp: bool,
                            segment_embeddings: bool) -> PreTrainedModel:
    """A freshly initialised transformers model for the given size and toggles.

    bert: BertForPreTraining with NSP, else BertForMaskedLM. roberta: RobertaForMaskedLM (no NSP head).
    """
    if nsp and model.family != "bert":
        raise ValueError(f"nsp = True with model.family = '{model.family}': RobertaForMaskedLM has no "
                         "next-sentence head; allowed: model.family = 'bert' for NSP")
    common: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=model.hidden, num_hidden_layers=model.layers,
        num_attention_heads=model.heads, intermediate_size=model.intermediate,
        hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[model.activation],
        hidden_dropout_prob=model.dropout, attention_probs_dropout_prob=model.dropout,
        type_vocab_size=2 if segment_embeddings else 1, layer_norm_eps=LAYER_NORM_EPS[model.family],
        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
    )
    if model.family == "bert":
        # 512 positions keep the checkpoint usable for fine-tuning at BERT's usual lengths.
        config = BertConfig(max_position_embeddings=max(max_seq_length, 512), **common)
        return BertForPreTraining(config) if nsp else BertForMaskedLM(config)
    # RoBERTa numbers positions from padding_idx + 1 (see create_position_ids_from_input_ids), so a sequence of
    # L tokens uses position ids up to L + padding_idx: with the usual pad id 1 that is L + 2 embeddings.
    config = RobertaConfig(max_position_embeddings=max_seq_length + pad_token_id + 1, **common)
    return RobertaForMaskedLM(config)


def model_parts(model: PreTrainedModel) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """(encoder, MLM head, NSP head or None) of a supported pre-training model: its own submodules."""
    if isinstance(model, BertForPreTraining):
        return model.bert, model.cls.predictions, model.cls.seq_relationship
    if isinstance(model, BertForMaskedLM):
        return model.bert, model.cls, None
    if isinstance(model, RobertaForMaskedLM):
        return model.roberta, model.lm_head, None
    raise TypeError(f"unsupported pre-training model {type(model).__name__}; "
                    "expected BertForPreTraining, BertForMaskedLM or RobertaForMaskedLM")


def sparse_mlm_token_losses(hidden: Tensor, labels: Tensor, head: nn.Module) -> Tensor:
    """Cross-entropy of the MLM head at the masked positions only (labels != -100), one value per token.
    Selecting the rows before the head is what saves the B x L x V projection."""
    flat_labels = labels.reshape(-1)
    positions = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)  # one host sync: the count sets the shape
    logits = head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions))
    return F.cross_entropy(logits.float(), flat_labels.index_select(0, positions), reduction="none")


class PretrainModule(pl.LightningModule):
    """MLM (+ NSP) pre-training of a transformers model, with the paper's optimiser and schedule.

    The loss of an update weighs every masked token the same, whatever micro-batch or rank it sits in, as fairseq's
    criterion and trainer do: each micro-batch contributes the SUM of its token losses divided by the masked tokens
    of the whole update (all micro-batches, all ranks), and NSP likewise per pair. The data loader tags each
    micro-batch with its update's totals on its rank (harness.data.loader.UpdateLoader); they are summed over ranks
    once per update. Lightning's accumulation divides each micro-batch loss by `accumulate_grad_batches` and DDP
    averages over ranks, so both factors are multiplied back. Clipping is left to the Trainer (gradient_clip_val).
    """

    # Per-update sums kept on the device: real tokens, masked tokens, padded positions, sequences, MLM loss sum,
    # NSP loss sum, NSP correct. The host reads them once per update, in on_before_optimizer_step.
    _COUNTERS = ("tokens", "masked", "padded", "sequences", "mlm_loss_sum", "nsp_loss_sum", "nsp_correct")

    def __init__(self, model: PreTrainedModel, *, optim: OptimConfig, total_steps: int, nsp: bool,
                 throughput_window: int = 10) -> None:
        super().__init__()
        has_nsp_head = model_parts(model)[2] is not None
        if nsp != has_nsp_head:
            raise ValueError(f"nsp = {nsp} but {type(model).__name__} {'has' if has_nsp_head else 'has no'} "
                             "NSP head; build the model with the same nsp setting")
        self.model = model
        self.optim, self.total_steps, self.nsp = optim, total_steps, nsp
        # Persistent so a resumed run keeps counting where it stopped.
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("sequences_seen", torch.zeros((), dtype=torch.long))
        self._update_counts = torch.zeros(len(self._COUNTERS), dtype=torch.float64)
        self._update_norm: Tensor | None = None  # (masked tokens, sequences) of the update in progress, all ranks
        self._window: deque[tuple[float, Tensor]] = deque(maxlen=throughput_window + 1)
        self.val_mlm_loss = MeanMetric()  # token-weighted: updated with one loss per masked token
        self.common_val = MaskedTokenBits()  # the common held-out set, scored alike for every arm
        self.common_val_documents = DocumentLosses()  # the same, per held-out document (resampled by reports)
        self.heldout_documents: dict[str, list[float]] | None = None  # the last evaluation's per-document sums
        if nsp:
            self.val_nsp_acc = BinaryAccuracy()
            self.val_nsp_loss = MeanMetric()

    # Parts are looked up, not stored as attributes, so they are not registered twice in the state dict.
    @property
    def encoder(self) -> nn.Module:
        return model_parts(self.model)[0]

    @property
    def mlm_head(self) -> nn.Module:
        return model_parts(self.model)[1]

    @property
    def nsp_head(self) -> nn.Module | None:
        return model_parts(self.model)[2]

    def compile_encoder(self) -> None:
        """torch.compile the encoder in place (nn.Module.compile): parameter names, checkpoints and the exported
        model stay those of the plain module. Sequence lengths vary with padding, so shapes are marked dynamic
        rather than recompiled per length; the sparse MLM head stays eager (its row count changes every batch)."""
        self.encoder.compile(dynamic=True)

    def encode(self, batch: dict[str, Tensor]) -> Any:
        extra = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
        return self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-token MLM losses and, with NSP, the next-sentence logits (B x 2)."""
        out = self.encode(batch)
        result = {"mlm_token_losses": sparse_mlm_token_losses(out.last_hidden_state, batch["labels"], self.mlm_head)}
        if self.nsp:
            result["nsp_logits"] = self.nsp_head(out.pooler_output)
        return result

    @staticmethod
    def mean_loss(token_losses: Tensor) -> Tensor:
        # sum / count rather than .mean(): a micro-batch without masked tokens gives 0, not NaN.
        return token_losses.sum() / max(token_losses.numel(), 1)

    def _normaliser(self, batch: dict[str, Tensor], masked: int) -> Tensor:
        """(masked tokens, sequences) of the whole update on all ranks, computed at its first micro-batch. A batch
        without update totals (a hand-built loader, a bare training loop) is normalised as an update of its own."""
        if "update_masked_tokens" not in batch:
            local = torch.tensor([masked, batch["input_ids"].shape[0]], dtype=torch.float64, device=self.device)
            return self._sum_over_ranks(local).clamp(min=1.0).float()
        if self._update_norm is None:  # reset once per update, in on_before_optimizer_step
            local = torch.stack([batch["update_masked_tokens"], batch["update_sequences"]]).double()
            self._update_norm = self._sum_over_ranks(local).clamp(min=1.0).float()  # no masked token: loss 0, not NaN
        return self._update_norm

    def _sum_over_ranks(self, values: Tensor) -> Tensor:
        trainer = self._trainer  # None when a bare loop calls training_step (benchmarks)
        return trainer.strategy.reduce(values, reduce_op="sum") if trainer and trainer.world_size > 1 else values

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch)
        token_losses = out["mlm_token_losses"]
        masked_total, sequences_total = self._normaliser(batch, token_losses.numel())
        mlm_sum = token_losses.sum()
        loss = mlm_sum / masked_total
        nsp_sum = nsp_correct = torch.zeros((), device=mlm_sum.device)
        if self.nsp:
            target = batch["next_sentence_label"]
            nsp_losses = F.cross_entropy(out["nsp_logits"].float(), target, reduction="none")
            nsp_sum = nsp_losses.sum()
            nsp_correct = (out["nsp_logits"].argmax(-1) == target).sum()
            loss = loss + nsp_sum / sequences_total  # unweighted sum of the two means, as Google's BERT
        real = batch["attention_mask"] if "ghost" not in batch else batch["attention_mask"][~batch["ghost"]]
        self._count_micro_batch(real, token_losses.numel(), mlm_sum, nsp_sum, nsp_correct,
                                computed=batch["attention_mask"].numel())
        # Lightning divides by the accumulation factor and DDP averages over ranks: undo both, so the gradient of
        # the update is exactly that of (sum of token losses) / (masked tokens of the update).
        trainer = self._trainer
        return loss * (trainer.accumulate_grad_batches * trainer.world_size if trainer else 1)

    def _count_micro_batch(self, attention_mask: Tensor, masked: int, mlm_sum: Tensor, nsp_sum: Tensor,
                           nsp_correct: Tensor, computed: int) -> None:
        """`attention_mask` of the real inputs (a ghost input, loader.split_update, is computed but not counted)."""
        # Kept on the device and summed without .item(): the host reads them once per update.
        if self._update_counts.device != attention_mask.device:
            self._update_counts = self._update_counts.to(attention_mask.device)
        sizes = torch.tensor([masked, computed, attention_mask.shape[0]], dtype=torch.float64)
        losses = torch.stack([mlm_sum.detach(), nsp_sum.detach(), nsp_correct.to(mlm_sum.dtype)]).double()
        self._update_counts += torch.cat([attention_mask.sum().double()[None],
                                          sizes.to(attention_mask.device, non_blocking=True), losses])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Once per update, after all its micro-batches: the update's figures summed over ranks, so every logged
        value describes the whole update, not one rank's share."""
        totals = self.trainer.strategy.reduce(self._update_counts.clone(), reduce_op="sum")
        self._update_counts.zero_()
        self._update_norm = None
        counts = dict(zip(self._COUNTERS, totals, strict=True))
        self.tokens_seen += counts["tokens"].long()
        self.sequences_seen += counts["sequences"].long()
        masked, sequences = counts["masked"].clamp(min=1), counts["sequences"].clamp(min=1)
        self.log("train/mlm_loss", counts["mlm_loss_sum"] / masked, on_step=True, prog_bar=True)
        if self.nsp:
            self.log("train/nsp_loss", counts["nsp_loss_sum"] / sequences, on_step=True)
            self.log("train/nsp_acc", counts["nsp_correct"] / sequences, on_step=True)
        self.log("train/tokens_seen", self.tokens_seen.double(), on_step=True)
        self.log("train/sequences_per_update", counts["sequences"], on_step=True)
        self.log("train/masked_per_update", counts["masked"], on_step=True)
        # Token batching (optim.batch_tokens) makes these vary per update: real tokens and what was computed.
        self.log("train/tokens_per_update", counts["tokens"], on_step=True)
        self.log("train/padded_tokens_per_update", counts["padded"], on_step=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True)
        self._window.append((time.perf_counter(), counts["tokens"]))
        if len(self._window) > 1:
            elapsed = self._window[-1][0] - self._window[0][0]
            tokens = torch.stack([count for _, count in list(self._window)[1:]]).sum()
            self.log("train/tokens_per_s", tokens / elapsed, on_step=True)

    def on_validation_epoch_start(self) -> None:
        self._window.clear()  # evaluation time is not training throughput

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        out = self(batch)
        if "label_chars" in batch:  # the common held-out set (its loader's batches alone carry characters)
            masked = batch["labels"] != IGNORE_INDEX
            chars = batch["label_chars"][masked]  # row-major, as the token losses
            self.common_val.update(out["mlm_token_losses"], chars)
            if "document" in batch:
                self.common_val_documents.update(out["mlm_token_losses"], chars, masked, batch["document"])
            return
        self.val_mlm_loss.update(out["mlm_token_losses"])
        if self.nsp:
            target = batch["next_sentence_label"]
            self.val_nsp_loss.update(F.cross_entropy(out["nsp_logits"].float(), target, reduction="none"))
            self.val_nsp_acc.update(out["nsp_logits"].argmax(-1), target)

    def on_validation_epoch_end(self) -> None:
        # Mean over every masked token of the validation set (not a mean of batch means), synced across ranks by
        # torchmetrics: every rank logs the same value, and sync_dist (a mean of equal values) only says so.
        loss = self.val_mlm_loss.compute()
        self.log("val/mlm_loss", loss, sync_dist=True)
        self.log("val/ppl", torch.exp(loss), sync_dist=True)
        self.val_mlm_loss.reset()
        if self.nsp:
            self.log("val/nsp_loss", self.val_nsp_loss.compute(), sync_dist=True)
            self.log("val/nsp_acc", self.val_nsp_acc.compute(), sync_dist=True)
            self.val_nsp_loss.reset()
            self.val_nsp_acc.reset()
        if self.common_val.update_count:
            # add_dataloader_idx=False: one curve per figure, whichever loader is current when this hook runs
            for name, value in self.common_val.compute().items():
                self.log(f"common_val/{name}", value, add_dataloader_idx=False, sync_dist=True)
            self.common_val.reset()
        if self.common_val_documents.update_count:
            sums = self.common_val_documents.compute()
            # reshape: torchmetrics squeezes one-element results to scalars (a held-out set of one document)
            self.heldout_documents = {name: value.reshape(-1).cpu().tolist() for name, value in sums.items()}
            self.common_val_documents.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.optim)
        schedule = build_lr_schedule(optimizer, self.optim, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}
