"""End-to-end pre-training on real data: the paper's recipes train, resume exactly, export standard checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from pytorch_lightning.callbacks import Callback

from harness.config import load_config
from harness.data.corpus import build_corpus
from harness.data.tokenizer import tokenizer_digest
from harness.runs import FINAL_METRICS_FILE, RunDirError, launch_intervals, read_curves
from harness.train import EXPORT_DIR, pretrain

BASE = [
    "corpus.path=corpora/wikitext-2-raw/wiki.valid.raw", "tokenizer.vocab_size=1000", "data.max_seq_length=64",
    "optim.batch_size=16", "optim.peak_lr=2e-3", "optim.warmup_fraction=0.1", "budget.max_steps=16",
    "budget.val_every_steps=8", "budget.val_max_examples=64", "impl.checkpoint_every_steps=4",
    "impl.progress_bar=false", "logging.wandb=false", "impl.num_proc=2", "logging.log_every_steps=1",
]

# The paper's arms (BERT's recipe and RoBERTa's, and the formats between), not every product of the switches:
# the model-level tests cover each toggle combination on synthetic batches.
ARMS = {
    "bert-segment_pair-nsp-static": ["model.family=bert", "tokenizer.kind=wordpiece", "data.packing=segment_pair",
                                     "data.nsp=true", "data.segment_embeddings=true", "data.masking=static",
                                     "data.dupe_factor=2"],
    "bert-sentence_pair-nsp": ["model.family=bert", "data.packing=sentence_pair", "data.nsp=true",
                               "data.segment_embeddings=true"],
    "roberta-full_sentences": ["model.family=roberta", "data.packing=full_sentences"],
    "roberta-doc_sentences-tokens": ["model.family=roberta", "data.packing=doc_sentences", "optim.batch_tokens=768",
                                     "data.whole_word_masking=true"],
}


def _curve(run_dir: Path, column: str) -> pd.Series:
    return read_curves(run_dir)[column].dropna()


def _run_dir(results: Path) -> Path:
    return next(results.glob("*/runs/*"))


class OwnValidation(Callback):
    """The run's own validation set scored by the model as training starts and as it ends (eval mode, the run's
    autocast, as Lightning's validation loop scores it): the masked-token loss, NSP labels and predictions, and the
    NSP head's weights, which move only if the NSP loss reaches them (AdamW skips a parameter without a gradient,
    weight decay included)."""

    def __init__(self) -> None:
        self.scores: dict[str, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer, module) -> None:
        self.scores["start"] = self._score(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.scores["end"] = self._score(trainer, module)

    @staticmethod
    def _score(trainer, module) -> dict[str, torch.Tensor]:
        losses, labels, predictions = [], [], []
        module.eval()
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for batch in trainer.datamodule.own_val_dataloader():
                out = module(batch)
                losses.append(out["mlm_token_losses"].float())
                if "next_sentence_label" in batch:
                    labels.append(batch["next_sentence_label"])
                    predictions.append(out["nsp_logits"].argmax(-1))
        module.train()
        score = {"mlm_loss": torch.cat(losses).mean()}
        if labels:
            score.update(nsp_labels=torch.cat(labels), nsp_predictions=torch.cat(predictions),
                         nsp_head=module.nsp_head.weight.detach().clone())
        return score


@pytest.mark.parametrize("arm", list(ARMS))
def test_paper_arms_train_and_loss_goes_down(arm, shared_data, tmp_path):
    """16 updates lower the held-out MLM loss well below where the same model started (about ln(1000) = 6.91, a
    uniform guess over the vocabulary: measured 6.91-6.95 at the start, 6.21-6.34 at the end). They do not teach NSP
    (the accuracy stays near the majority label's share): for NSP the run must score its validation pairs, both
    labels present, and train the NSP head."""
    config = load_config(overrides=BASE + ARMS[arm])
    probe = OwnValidation()
    metrics = pretrain(config, shared_data, tmp_path, extra_callbacks=[probe])
    run = _run_dir(tmp_path)
    assert (run / FINAL_METRICS_FILE).is_file() and metrics["steps"] == 16
    loss = _curve(run, "train/mlm_loss")
    assert loss.iloc[-3:].mean() < loss.iloc[:3].mean() - 0.3, loss.tolist()
    start, end = probe.scores["start"], probe.scores["end"]
    assert float(start["mlm_loss"]) == pytest.approx(6.908, abs=0.1)  # the untrained model: near uniform
    assert metrics["val_mlm_loss"] < float(start["mlm_loss"]) - 0.4, (float(start["mlm_loss"]), metrics)
    assert metrics["val_mlm_loss"] == pytest.approx(float(end["mlm_loss"]), abs=0.02)  # the same set, the same model
    curves = read_curves(run)
    real, padded = curves["train/tokens_per_update"].dropna(), curves["train/padded_tokens_per_update"].dropna()
    assert (real <= padded).all() and (curves["train/masked_per_update"].dropna() > 0).all()
    if config.optim.batch_tokens:
        assert (real <= config.optim.batch_tokens).all()
    else:
        assert (padded <= 16 * 64).all()
    if config.data.nsp:
        labels, predictions = end["nsp_labels"], end["nsp_predictions"]
        assert len(labels) == 64 and 0 < int(labels.sum()) < 64  # val_max_examples pairs, both labels present
        assert metrics["val_nsp_acc"] == pytest.approx(float((predictions == labels).float().mean()), abs=1e-6)
        assert "train_nsp_loss" in metrics and not torch.equal(start["nsp_head"], end["nsp_head"])


class KillAt(Callback):
    """Simulates a crash in the middle of training (after a checkpoint, before the next one)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_killed_run_resumes_to_the_same_result(shared_data, tmp_path):
    config = load_config(overrides=BASE + ["data.masking=dynamic", "optim.batch_size=16", "impl.micro_batch_size=8",
                                           "budget.max_steps=12"])
    uninterrupted = pretrain(config, shared_data, tmp_path / "a")
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(config, shared_data, tmp_path / "b", extra_callbacks=[KillAt(6)])
    run_b = _run_dir(tmp_path / "b")
    assert not (run_b / FINAL_METRICS_FILE).exists() and (run_b / "checkpoints" / "last.ckpt").exists()
    resumed = pretrain(config, shared_data, tmp_path / "b")
    assert resumed["steps"] == uninterrupted["steps"] == 12
    assert resumed["tokens_seen"] == uninterrupted["tokens_seen"]
    assert resumed["val_mlm_loss"] == pytest.approx(uninterrupted["val_mlm_loss"], abs=1e-4)
    a_curve, b_curve = _curve(_run_dir(tmp_path / "a"), "train/mlm_loss"), _curve(run_b, "train/mlm_loss")
    assert list(b_curve.index) == list(a_curve.index)  # the first launch's curve survived the resume
    assert b_curve.to_numpy() == pytest.approx(a_curve.to_numpy(), abs=1e-4)
    assert len(list((run_b / "logs").glob("launch-*/metrics.csv"))) == 2


def test_a_run_does_not_resume_on_an_edited_corpus(shared_data, tmp_path):
    """The first launch records the data by content in env.json; a relaunch on other bytes stops before training
    with one line, and the restored corpus resumes the run."""
    corpus = tmp_path / "wiki.valid.raw"
    original = (shared_data / "corpora/wikitext-2-raw/wiki.valid.raw").read_text(encoding="utf-8")
    corpus.write_text(original, encoding="utf-8")
    config = load_config(overrides=BASE + [f"corpus.path={corpus}", "corpus.max_documents=12",
                                         "corpus.validation_fraction=0.25", "budget.max_steps=8"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(config, shared_data, tmp_path / "results", extra_callbacks=[KillAt(4)])
    run = _run_dir(tmp_path / "results")
    recorded = json.loads((run / "env.json").read_text())["data"]
    assert set(recorded) == {"corpus_digest", "tokenizer_digest"}

    corpus.write_text(original.replace(" the ", " a ", 1), encoding="utf-8")
    with pytest.raises(RunDirError) as err:
        pretrain(config, shared_data, tmp_path / "results")
    message = str(err.value)
    assert "\n" not in message and f"corpus_digest: {recorded['corpus_digest']} there" in message
    assert not (run / FINAL_METRICS_FILE).exists()

    corpus.write_text(original, encoding="utf-8")
    resumed = pretrain(config, shared_data, tmp_path / "results")
    assert resumed["steps"] == 8 and resumed["corpus_digest"] == recorded["corpus_digest"]
    resumes = json.loads((run / "env.json").read_text())["resumes"]
    assert [entry["status"] for entry in resumes] == ["refused", "resumable"]
    assert len(launch_intervals(run)) == 2  # the refused launch took no time


def test_finished_run_is_returned_not_retrained(shared_data, tmp_path):
    config = load_config(overrides=BASE + ["budget.max_steps=4", "budget.val_every_steps=4"])
    first = pretrain(config, shared_data, tmp_path)
    final = _run_dir(tmp_path) / FINAL_METRICS_FILE
    corpus = build_corpus(config, shared_data)  # what the run trained on, by content
    assert (first["corpus_digest"], first["tokenizer_digest"]) == (corpus.corpus_digest,
                                                                   tokenizer_digest(corpus.tokenizer_dir))
    stamp = final.stat().st_mtime_ns
    assert pretrain(config, shared_data, tmp_path) == first
    assert final.stat().st_mtime_ns == stamp
    # stopped after its last update, before the export and final metrics: the relaunch makes no update and still
    # records the training figures the run ended on
    final.unlink()
    import shutil

    shutil.rmtree(_run_dir(tmp_path) / EXPORT_DIR)
    again = pretrain(config, shared_data, tmp_path)
    assert again["steps"] == 4
    assert {k: v for k, v in again.items() if k.startswith("train_") and k != "train_tokens_per_s"} == {
        k: v for k, v in first.items() if k.startswith("train_") and k != "train_tokens_per_s"}


def test_export_loads_with_auto_classes_and_gives_the_same_loss(shared_data, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    from harness.recipe import build_datamodule, resolve_recipe

    # fp32 on purpose: the eager fp32 model below must reproduce the run's own held-out loss to 1e-4
    config = load_config(overrides=BASE + ["budget.max_steps=4", "budget.val_every_steps=4", "impl.precision=32-true"])
    pretrain(config, shared_data, tmp_path)
    export = _run_dir(tmp_path) / EXPORT_DIR
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForMaskedLM.from_pretrained(export).eval()
    assert AutoModelForSequenceClassification.from_pretrained(export, num_labels=2).config.num_labels == 2
    data = build_datamodule(config, resolve_recipe(config), shared_data)
    data.setup("fit")
    assert len(tokenizer) == data.specials.vocab_size
    losses, counts = [], []
    with torch.no_grad():
        for batch in data.own_val_dataloader():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            n = int((batch["labels"] != -100).sum())
            losses.append(float(out.loss) * n)
            counts.append(n)
    final = json.loads((_run_dir(tmp_path) / FINAL_METRICS_FILE).read_text())
    assert sum(losses) / sum(counts) == pytest.approx(final["val_mlm_loss"], rel=1e-4)


def test_wandb_offline_writes_run_files(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline must come from our config, not the environment
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for seed in (0, 1):  # two runs in one process, as a study runs its arms: each must get its own wandb run
        config = load_config(overrides=BASE + ["budget.max_steps=2", "budget.val_every_steps=2", "logging.wandb=true",
                                               f"seed={seed}"])
        pretrain(config, shared_data, tmp_path)
    runs = sorted(tmp_path.glob("*/runs/*"))
    assert len(runs) == 2
    for run in runs:
        offline_runs = list((run / "wandb").glob("offline-run-*"))
        assert len(offline_runs) == 1 and any(offline_runs[0].glob("*.wandb"))
        assert offline_runs[0].name.endswith(load_config(run / "config.yaml").run_id())
