"""The fine-tuning LightningModule: one class for classification, regression, QA and token tagging.

The task kind decides only which transformers head is loaded (`load_finetune_model`) and which evaluator
scores the dev set; training is the same for all: the head's own loss, AdamW with decoupled weight decay
(not on biases and LayerNorm), linear warm-up to the peak lr then linear decay to 0, stepped per update.
Sequence heads read the first token (`<s>` / `[CLS]`): RoBERTa's classification head does so directly,
BERT's through its pooler. Every trial starts from a fresh head and, unless `keep_pretrained_pooler`, a fresh
pooler (`init_fresh_head`), so checkpoints pre-trained with and without NSP are compared on their encoders.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch

from harness.downstream.encode import quiet_transformers
from harness.downstream.evaluators import Evaluator
from harness.models.optim import parameter_groups, warmup_steps
from harness.tasks import TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Batch keys the transformers heads accept; the rest (example_index, feature_index, sentence_index) are for evaluators.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")


def load_finetune_model(checkpoint: Path, spec: TaskSpec, keep_pretrained_pooler: bool = False) -> PreTrainedModel:
    """The pre-trained encoder with a freshly initialised head for the task, drawn from torch's generator as it
    stands (a trial loads with `load_pretrained`, seeds, then calls `init_fresh_head`)."""
    model, missing = load_pretrained(checkpoint, spec)
    init_fresh_head(model, missing, keep_pretrained_pooler)
    return model


def load_pretrained(checkpoint: Path, spec: TaskSpec) -> tuple[PreTrainedModel, frozenset[str]]:
    """The task's transformers model with every weight the checkpoint has (the MLM/NSP heads are dropped), and
    the names of the weights it lacked."""
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    load: dict[str, Any] = {"local_files_only": True, "output_loading_info": True}
    labels = {"id2label": dict(enumerate(spec.labels)), "label2id": {n: i for i, n in enumerate(spec.labels)}}
    with quiet_transformers():
        if spec.kind == "qa":
            model, info = AutoModelForQuestionAnswering.from_pretrained(checkpoint, **load)
        elif spec.kind == "ner":
            model, info = AutoModelForTokenClassification.from_pretrained(
                checkpoint, num_labels=spec.num_labels, **labels, **load)
        elif spec.kind == "regression":  # one output and an MSE loss
            model, info = AutoModelForSequenceClassification.from_pretrained(
                checkpoint, num_labels=1, problem_type="regression", **load)
        else:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                checkpoint, num_labels=spec.num_labels, problem_type="single_label_classification", **labels, **load)
    return model, frozenset(info["missing_keys"])


def init_fresh_head(model: PreTrainedModel, missing: frozenset[str], keep_pretrained_pooler: bool = False) -> list[str]:
    """Re-initialise the task head (every module outside the encoder: classifier, qa_outputs) and the encoder's
    pooler with the model's own initialiser, from torch's generator; returns the re-initialised module names.

    Why: a checkpoint pre-trained with NSP (BertForPreTraining) brings its NSP-trained pooler, one without NSP
    (BertForMaskedLM) has none in its file, so comparing them would compare heads as well as pre-training;
    fairseq's classification head is always new. `keep_pretrained_pooler` keeps a pooler the checkpoint has
    (Google's BERT fine-tuning); a pooler the checkpoint lacks is fresh either way. RoBERTa's heads and the
    QA / token heads have no pooler (transformers builds them without one)."""
    encoder = model.base_model_prefix
    fresh = [name for name, module in model.named_children()
             if name != encoder and next(module.parameters(), None) is not None]  # not the parameter-free dropout
    pooler = f"{encoder}.pooler"
    pooler_loaded = not any(key.startswith(f"{pooler}.") for key in missing)
    if getattr(model.base_model, "pooler", None) is not None and not (keep_pretrained_pooler and pooler_loaded):
        fresh.append(pooler)
    for name in fresh:
        for module in model.get_submodule(name).modules():
            for param in module.parameters(recurse=False):
                param._is_hf_initialized = False  # transformers flags loaded weights, and its init then skips them
            model._init_weights(module)
    return sorted(fresh)


class FinetuneModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, evaluator: Evaluator, learning_rate: float, weight_decay: float = 0.01,
                 warmup_fraction: float = 0.06, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6) -> None:
        super().__init__()
        # from_pretrained returns the model in eval mode and Lightning keeps each submodule's mode: without this,
        # fine-tuning would silently run without dropout.
        self.model = model.train()
        self.evaluator = evaluator
        self.save_hyperparameters(ignore=["model", "evaluator"])
        # (global step, dev metrics) after each dev pass: the caller reads the last one instead of re-running it
        self.dev_history: list[tuple[int, dict[str, float]]] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(**{key: batch[key] for key in MODEL_INPUTS if key in batch})

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("lr", self.lr_schedulers().get_last_lr()[0], batch_size=batch["input_ids"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        output = self(batch)
        if getattr(output, "loss", None) is not None:
            self.log("dev_loss", output.loss, batch_size=batch["input_ids"].shape[0])
        self.evaluator.update(batch, output)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = self.evaluator.compute()
        self.log_dict({f"dev_{name}": value for name, value in metrics.items()})
        self.dev_history.append((self.global_step, metrics))

    def configure_optimizers(self) -> dict[str, Any]:
        from transformers import get_linear_schedule_with_warmup

        hp = self.hparams
        # The same grouping as pre-training (no decay on biases and LayerNorm), from the one place it is defined.
        optimizer = torch.optim.AdamW(parameter_groups(self.model, hp.weight_decay), lr=hp.learning_rate,
                                      betas=tuple(hp.betas), eps=hp.eps)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps(total, hp.warmup_fraction), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
