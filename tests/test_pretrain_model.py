"""Pre-training model: every accepted toggle combination trains under a real Trainer, the sparse MLM loss equals
the model's own dense loss, exported checkpoints reload, NSP learns, and the optimiser follows the paper."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertForMaskedLM,
    BertForPreTraining,
    RobertaForMaskedLM,
)

from harness.config import ModelConfig, OptimConfig
from harness.models.optim import build_lr_schedule, build_optimizer, parameter_groups
from harness.models.pretrain import PretrainModule, build_pretraining_model

VOCAB, PAD, CLS, SEP, MASK, FIRST_WORD = 200, 0, 1, 2, 3, 4
PERIOD = 50  # sequences are ascending runs over 50 word ids: a masked token is predictable from its neighbours
RANDOM_B_OFFSET = 116  # NSP toy: a "random" segment B uses ids 120..169, a continuation stays in 4..53
SEQ_LEN = 32
COMBINATIONS = [  # (family, nsp, segment_embeddings): roberta + nsp is the one rejected combination
    ("bert", True, True), ("bert", True, False), ("bert", False, True), ("bert", False, False),
    ("roberta", False, False), ("roberta", False, True),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine extra OpenMP threads spin at barriers
    waiting for preempted peers (we measured 30x slower steps): one thread keeps these tests fast everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_batch(gen: torch.Generator, *, batch: int = 16, segments: bool = False, nsp: bool = False,
              mask_prob: float = 0.15) -> dict[str, torch.Tensor]:
    """[CLS] A [SEP] B [SEP] with padding; 15% of word tokens replaced by [MASK]; with NSP, label 1 = B random."""
    ids = torch.full((batch, SEQ_LEN), PAD)
    token_types, attention = torch.zeros_like(ids), torch.zeros_like(ids)
    labels, next_label = torch.full_like(ids, -100), torch.zeros(batch, dtype=torch.long)
    for row in range(batch):
        length = int(torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (), generator=gen))
        start = int(torch.randint(0, PERIOD, (), generator=gen))
        words = [FIRST_WORD + (start + i) % PERIOD for i in range(length - 3)]
        cut = len(words) // 2
        if nsp and torch.rand((), generator=gen) < 0.5:
            next_label[row] = 1
            words[cut:] = [w + RANDOM_B_OFFSET for w in words[cut:]]
        ids[row, :length] = torch.tensor([CLS, *words[:cut], SEP, *words[cut:], SEP])
        attention[row, :length] = 1
        token_types[row, cut + 2 : length] = 1
        candidates = torch.arange(length)[ids[row, :length] >= FIRST_WORD]
        chosen = candidates[torch.rand(len(candidates), generator=gen) < mask_prob]
        chosen = chosen if len(chosen) else candidates[:1]
        labels[row, chosen], ids[row, chosen] = ids[row, chosen], MASK
    out = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    if segments:
        out["token_type_ids"] = token_types
    if nsp:
        out["next_sentence_label"] = next_label
    return out


def toy_batches(count: int, seed: int, **kwargs) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [toy_batch(gen, **kwargs) for _ in range(count)]


def tiny_model(family: str, nsp: bool, segments: bool):
    torch.manual_seed(0)
    return build_pretraining_model(ModelConfig(family=family, size="tiny"), vocab_size=VOCAB, pad_token_id=PAD,
                                   bos_token_id=CLS, eos_token_id=SEP, max_seq_length=SEQ_LEN, nsp=nsp,
                                   segment_embeddings=segments)


class RecordLosses(pl.Callback):
    """The MLM loss of every update (the returned loss would mix in NSP)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/mlm_loss"]))


def fit(module: PretrainModule, train: list, val: list | None = None, *, steps: int, **trainer_args) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", precision="32-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, log_every_n_steps=1, limit_val_batches=len(val or []) or None,
                         val_check_interval=len(train) // trainer_args.get("accumulate_grad_batches", 1),
                         **trainer_args)
    loader = DataLoader(train, batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=DataLoader(val, batch_size=None) if val else None)
    return trainer


@torch.no_grad()
def sparse_loss(module: PretrainModule, batch: dict[str, torch.Tensor]) -> float:
    module.eval()
    out = module(batch)
    loss = module.mean_loss(out["mlm_token_losses"])
    if module.nsp:
        loss = loss + torch.nn.functional.cross_entropy(out["nsp_logits"], batch["next_sentence_label"])
    return float(loss)


@torch.no_grad()
def sparse_mlm_loss(module: PretrainModule, batch: dict[str, torch.Tensor]) -> float:
    module.eval()
    return float(module.mean_loss(module(batch)["mlm_token_losses"]))


@torch.no_grad()
def dense_hf_loss(model, batch: dict[str, torch.Tensor]) -> float:
    """The model's own loss: dense head over all positions (BertForPreTraining adds NSP when given its label)."""
    model.eval()
    return float(model(**batch).loss)


@pytest.mark.parametrize(("family", "nsp", "segments"), COMBINATIONS)
def test_every_combination_trains_and_exports(family, nsp, segments, tmp_path):
    model = tiny_model(family, nsp, segments)
    expected = {"bert": BertForPreTraining if nsp else BertForMaskedLM, "roberta": RobertaForMaskedLM}[family]
    assert type(model) is expected
    assert model.config.type_vocab_size == (2 if segments else 1)
    module = PretrainModule(model, optim=OptimConfig(peak_lr=5e-3, warmup_fraction=0.1), total_steps=20, nsp=nsp)
    train = toy_batches(20, seed=1, segments=segments, nsp=nsp)
    record = RecordLosses()
    trainer = fit(module, train, toy_batches(2, seed=2, segments=segments, nsp=nsp), steps=20, callbacks=[record])

    first, last = record.losses[0], sum(record.losses[-3:]) / 3
    assert last < first - 0.4, record.losses  # untrained: ln(200) = 5.3; noise between updates is ~0.1
    assert trainer.logged_metrics["val/mlm_loss"] < math.log(VOCAB) - 0.4
    logged = trainer.logged_metrics
    assert {"train/mlm_loss", "train/lr", "train/tokens_seen", "train/tokens_per_s", "train/masked_per_update",
            "val/mlm_loss", "val/ppl"} <= set(logged)
    assert ("train/nsp_acc" in logged) == nsp and ("val/nsp_acc" in logged) == nsp
    assert float(module.tokens_seen) == sum(float(b["attention_mask"].sum()) for b in train)

    # The exported checkpoint is a standard one: the Auto classes load it and give the same MLM loss.
    model.save_pretrained(tmp_path)
    batch = toy_batches(1, seed=3, segments=segments)[0]
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(reloaded) is (BertForMaskedLM if family == "bert" else RobertaForMaskedLM)
    assert abs(dense_hf_loss(reloaded, batch) - sparse_mlm_loss(module, batch)) < 1e-5
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    assert classifier.base_model.embeddings.word_embeddings.weight.equal(model.get_input_embeddings().weight)
    assert classifier(**{k: batch[k] for k in batch if k != "labels"}).logits.shape == (16, 3)


@pytest.mark.parametrize(("family", "nsp", "segments"), [("bert", False, True), ("bert", True, True),
                                                         ("roberta", False, False)])
def test_sparse_loss_equals_the_models_dense_loss(family, nsp, segments):
    model = tiny_model(family, nsp, segments)
    module = PretrainModule(model, optim=OptimConfig(), total_steps=10, nsp=nsp)
    batch = toy_batches(1, seed=5, segments=segments, nsp=nsp, mask_prob=0.3)[0]
    assert abs(sparse_loss(module, batch) - dense_hf_loss(model, batch)) < 1e-5


def test_roberta_with_nsp_is_rejected():
    with pytest.raises(ValueError, match="RobertaForMaskedLM has no next-sentence head"):
        tiny_model("roberta", True, False)
    with pytest.raises(ValueError, match="NSP head"):
        PretrainModule(tiny_model("bert", False, True), optim=OptimConfig(), total_steps=10, nsp=True)


def test_roberta_positions_leave_room_for_the_padding_offset():
    model = tiny_model("roberta", False, False)
    assert model.config.max_position_embeddings == SEQ_LEN + PAD + 1
    full = toy_batches(1, seed=0)[0]
    full["input_ids"][:, :] = FIRST_WORD  # no padding: the last position id is SEQ_LEN + PAD, the largest used
    with torch.no_grad():
        model(input_ids=full["input_ids"])  # would raise an index error with only SEQ_LEN positions


def test_nsp_accuracy_rises_above_chance():
    module = PretrainModule(tiny_model("bert", True, True), optim=OptimConfig(peak_lr=2e-3, warmup_fraction=0.1),
                            total_steps=30, nsp=True)
    val = toy_batches(4, seed=8, segments=True, nsp=True)
    labels = torch.cat([b["next_sentence_label"] for b in val]).float()
    assert 0.3 < labels.mean() < 0.7  # balanced, so chance is about 50%
    trainer = fit(module, toy_batches(30, seed=7, segments=True, nsp=True), val, steps=30)
    assert trainer.logged_metrics["val/nsp_acc"] > 0.85


def test_validation_loss_is_token_weighted():
    module = PretrainModule(tiny_model("roberta", False, False), optim=OptimConfig(), total_steps=1, nsp=False)
    # Very different masked counts per batch: a mean of batch means would differ from the token-weighted mean.
    val = toy_batches(1, seed=9, mask_prob=0.9) + toy_batches(1, seed=10, mask_prob=0.0)
    module.eval()
    with torch.no_grad():
        per_batch = [module(b)["mlm_token_losses"] for b in val]
    pooled = float(torch.cat(per_batch).mean())
    mean_of_means = sum(float(x.mean()) for x in per_batch) / 2
    assert abs(pooled - mean_of_means) > 1e-3
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = trainer.validate(module, DataLoader(val, batch_size=None), verbose=False)[0]
    assert result["val/mlm_loss"] == pytest.approx(pooled, abs=1e-5)
    assert result["val/ppl"] == pytest.approx(math.exp(pooled), rel=1e-5)


def test_accumulation_and_clipping_count_per_update():
    module = PretrainModule(tiny_model("bert", False, True), optim=OptimConfig(peak_lr=1e-3, warmup_fraction=0.5),
                            total_steps=4, nsp=False)
    train = toy_batches(8, seed=11, segments=True)
    trainer = fit(module, train, steps=4, accumulate_grad_batches=2, gradient_clip_val=1.0)
    assert trainer.global_step == 4
    assert float(module.tokens_seen) == sum(float(b["attention_mask"].sum()) for b in train)
    last_update = sum(int((b["labels"] != -100).sum()) for b in train[-2:])
    assert trainer.logged_metrics["train/masked_per_update"] == last_update
    # lr of the 4th update (index 3): warm-up of 2 updates, then linear decay over 2: 1e-3 * (4 - 3) / 2
    assert trainer.logged_metrics["train/lr"] == pytest.approx(5e-4)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_learning_rate_schedule(schedule):
    optim = OptimConfig(peak_lr=1e-3, warmup_fraction=0.1, schedule=schedule)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), optim)
    lambdas = build_lr_schedule(optimizer, optim, total_steps=100).lr_lambdas[0]
    assert lambdas(0) == 0.0
    assert lambdas(5) == pytest.approx(0.5)
    assert lambdas(10) == pytest.approx(1.0)
    assert lambdas(55) == pytest.approx(0.5 if schedule == "linear" else 1.0)
    assert lambdas(100) == pytest.approx(0.0 if schedule == "linear" else 1.0)


@pytest.mark.parametrize(("family", "nsp"), [("bert", True), ("roberta", False)])
def test_no_weight_decay_on_biases_and_layer_norms(family, nsp):
    model = tiny_model(family, nsp, True)
    decay, no_decay = parameter_groups(model, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    exempt = {id(p) for n, p in model.named_parameters() if n.endswith("bias") or "layernorm" in n.lower().replace(
        "_", "")}
    assert {id(p) for p in no_decay["params"]} == exempt
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters()} - exempt
    assert id(model.get_input_embeddings().weight) in {id(p) for p in decay["params"]}
    optimizer = build_optimizer(model, OptimConfig(betas=(0.9, 0.98), eps=1e-6))
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-6
