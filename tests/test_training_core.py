"""The training core through `pretrain` on the shared data: every update the size the config says (also across a
pass over the data, with micro-batches), a token-weighted update loss, static masking in the paper's regime, the
token budget, and a run directory that is only marked done once its model is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from harness.config import load_config
from harness.runs import FINAL_METRICS_FILE, read_curves
from harness.train import EXPORT_DIR, pretrain

# 18 Reuters articles (2 more held out) at length 64 are about 110 training inputs: few updates make several passes.
SMALL = [
    "corpus.layout=jsonl", "corpus.path=corpora/reuters.jsonl", "corpus.max_documents=20",
    "corpus.validation_fraction=0.1",
    "tokenizer.vocab_size=600", "data.max_seq_length=64", "optim.peak_lr=2e-3", "optim.warmup_fraction=0.1",
    "budget.val_every_steps=1000", "budget.val_max_examples=16", "impl.progress_bar=false", "logging.wandb=false",
    "logging.log_every_steps=1", "impl.threads=1",
]


def _run_dir(results: Path) -> Path:
    return next(results.glob("*/runs/*"))


def _run(shared_data: Path, results: Path, *overrides: str, callbacks=()) -> tuple[dict, object]:
    metrics = pretrain(load_config(overrides=[*SMALL, *overrides]), shared_data, results, extra_callbacks=callbacks)
    return metrics, read_curves(_run_dir(results))


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()  # impl.threads is process-wide
    yield
    torch.set_num_threads(threads)


def test_table3_pair_sees_full_updates_of_the_configured_size_across_passes(shared_data, tmp_path):
    """Batch 8 for 32 updates and batch 32 by accumulation (4 micro-batches of 8) for 8 updates: the same 256
    sequences in the same order, every update exactly its configured size, although both runs cross pass ends."""
    small, small_curves = _run(shared_data, tmp_path / "b8", "optim.batch_size=8", "budget.max_steps=32")
    large, large_curves = _run(shared_data, tmp_path / "b32", "optim.batch_size=32", "impl.micro_batch_size=8",
                               "budget.max_steps=8")
    assert small_curves["train/sequences_per_update"].dropna().tolist() == [8.0] * 32
    assert large_curves["train/sequences_per_update"].dropna().tolist() == [32.0] * 8
    assert small["data_passes"] > 2 and large["data_passes"] > 2  # both ran through two pass ends
    assert small["sequences_seen"] == large["sequences_seen"] == 256
    assert small["tokens_seen"] == large["tokens_seen"]  # the same inputs: the stream does not depend on the split
    assert (large_curves["train/masked_per_update"].dropna() > 0).all()


class GradientsOfFirstUpdate(Callback):
    """Copies every gradient right before the first optimizer step, and the masked tokens of each micro-batch."""

    def __init__(self) -> None:
        self.gradients: dict[str, torch.Tensor] = {}
        self.masked: list[int] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 0:
            self.masked.append(int((batch["labels"] != -100).sum()))

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step == 0:
            self.gradients = {name: p.grad.detach().clone() for name, p in module.named_parameters()
                              if p.grad is not None}


def test_the_gradient_of_an_update_does_not_depend_on_its_micro_batches(shared_data, tmp_path):
    """One micro-batch of 16 or four of 4 with unequal masked-token counts: the same sum of token losses over the
    same masked-token total, MLM and NSP alike (BERT with NSP, dropout 0)."""
    bert = ["model.family=bert", "tokenizer.kind=wordpiece", "data.packing=segment_pair", "data.nsp=true",
            "data.segment_embeddings=true", "model.dropout=0", "optim.batch_size=16", "budget.max_steps=1",
            "impl.precision=32-true"]  # fp32: bf16 rounds differently for other batch shapes
    whole, split = GradientsOfFirstUpdate(), GradientsOfFirstUpdate()
    _run(shared_data, tmp_path / "whole", *bert, callbacks=[whole])
    _run(shared_data, tmp_path / "split", *bert, "impl.micro_batch_size=4", callbacks=[split])
    assert len(whole.masked) == 1 and len(split.masked) == 4 and sum(split.masked) == whole.masked[0]
    assert len(set(split.masked)) > 1  # unequal counts: a mean of micro-batch means would weigh tokens unequally
    assert whole.gradients.keys() == split.gradients.keys() and len(whole.gradients) > 10
    for name, gradient in whole.gradients.items():
        torch.testing.assert_close(split.gradients[name], gradient, rtol=1e-4, atol=1e-7, msg=name)


def test_static_run_reports_how_often_each_mask_was_shown(shared_data, tmp_path):
    """dupe_factor auto sizes the copies from the budget (passes / 4, the paper's ratio); the run records it."""
    metrics, _ = _run(shared_data, tmp_path, "data.masking=static", "data.dupe_factor=auto", "optim.batch_size=16",
                      "budget.max_steps=64")
    passes = 64 * 16 / metrics["train_rows_per_pass"]
    assert metrics["sequences_seen"] == 1024 and metrics["data_passes"] == pytest.approx(passes, rel=1e-3)
    assert metrics["dupe_factor"] == max(1, round(passes / 4)) >= 2
    assert metrics["static_mask_views"] == pytest.approx(passes / metrics["dupe_factor"], rel=1e-3)
    assert metrics["train_examples"] == metrics["dupe_factor"] * metrics["train_rows_per_pass"]


def test_static_masks_shown_fewer_than_twice_warn_loudly(shared_data, tmp_path):
    with pytest.warns(UserWarning, match="STATIC MASKING IN NAME ONLY"):
        metrics, _ = _run(shared_data, tmp_path, "data.masking=static", "data.dupe_factor=10", "optim.batch_size=8",
                          "budget.max_steps=2")
    assert metrics["static_mask_views"] < 2 and "static_mask_views" in metrics


def test_a_redraw_of_one_static_copy_warns_that_it_is_masks_only(shared_data, tmp_path):
    """Google's re-draw differs from masks-only copies only from two copies on: a grid comparing the two modes at
    one copy (dupe_factor auto on a short budget) compares the same data, and the run says so."""
    with pytest.warns(UserWarning, match="static_mode = redraw with one static copy is the same data as masks_only"):
        metrics, _ = _run(shared_data, tmp_path, "data.masking=static", "data.static_mode=redraw",
                          "data.dupe_factor=1", "optim.batch_size=8", "budget.max_steps=2")
    assert metrics["dupe_factor"] == 1


@pytest.mark.parametrize("batching", [["optim.batch_size=8"], ["optim.batch_tokens=384"]], ids=["count", "tokens"])
def test_a_token_budget_becomes_the_updates_that_feed_that_many_real_tokens(shared_data, tmp_path, batching):
    metrics, curves = _run(shared_data, tmp_path, *batching, "budget.max_steps=null", "budget.max_tokens=4000")
    per_update = curves["train/tokens_per_update"].dropna().mean()
    assert abs(metrics["tokens_seen"] - 4000) < 1.5 * per_update  # real tokens, not padded or nominal ones
    assert metrics["tokens_seen"] < metrics["nominal_tokens_per_update"] * metrics["steps"]


def test_final_metrics_come_only_after_a_complete_model(shared_data, tmp_path, monkeypatch):
    """A crash between the export and the done marker leaves a complete model/ and no final_metrics.json; a crash
    inside the export leaves no model/ at all. Either way the next launch finishes the run."""
    import harness.train as train

    overrides = ("optim.batch_size=8", "budget.max_steps=2", "impl.checkpoint_every_steps=1")
    config = load_config(overrides=[*SMALL, *overrides])

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", crash)
        with pytest.raises(RuntimeError, match="killed"):
            pretrain(config, shared_data, tmp_path)
    run = _run_dir(tmp_path)
    assert not (run / EXPORT_DIR).exists() and not (run / FINAL_METRICS_FILE).exists()
    with monkeypatch.context() as patch:
        patch.setattr(train, "write_final_metrics", crash)
        with pytest.raises(RuntimeError, match="killed"):
            pretrain(config, shared_data, tmp_path)
    assert (run / EXPORT_DIR / "config.json").is_file() and not (run / FINAL_METRICS_FILE).exists()
    metrics = pretrain(config, shared_data, tmp_path)
    assert json.loads((run / FINAL_METRICS_FILE).read_text()) == metrics and metrics["steps"] == 2
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(run / EXPORT_DIR)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(run / EXPORT_DIR))


# ---- static copies of pair packings ------------------------------------------------------------------------------

BERT_STATIC = ["model.family=bert", "tokenizer.kind=wordpiece", "data.packing=segment_pair", "data.nsp=true",
               "data.segment_embeddings=true", "data.masking=static", "data.dupe_factor=3", "data.short_seq_prob=0.1"]


def _copies(data) -> list[list[tuple[list[int], int]]]:
    """Per static copy: (input ids, NSP label) of each packed row, in stored order."""
    examples = data.train_examples
    copies: list[list[tuple[list[int], int]]] = [[] for _ in range(data.static_copies)]
    for index in range(len(examples)):
        copy, _, row = examples[(0, index)]
        copies[copy].append((examples.packed.row(row).tolist(), int(examples.packed.nsp[row])))
    return copies


@pytest.mark.parametrize("mode", ["redraw", "masks_only"])
def test_static_mode_decides_whether_pair_copies_draw_a_new_packing(shared_data, tmp_path, mode):
    """redraw (Google): each copy re-draws target lengths, A/B splits and NSP negatives; masks_only: one packing,
    three copies that differ only by their masks. Either way every copy is masked differently."""
    from harness.recipe import build_datamodule, resolve_recipe

    overrides = [*SMALL, *BERT_STATIC, f"data.static_mode={mode}", "optim.batch_size=8", "budget.max_steps=2"]
    metrics = pretrain(load_config(overrides=overrides), shared_data, tmp_path)
    config = load_config(overrides=overrides)
    data = build_datamodule(config, resolve_recipe(config), shared_data)
    data.setup("fit")
    copies = _copies(data)
    assert len(copies) == 3 and metrics["dupe_factor"] == 3
    if mode == "masks_only":
        assert copies[0] == copies[1] == copies[2]
        assert metrics["train_examples"] == 3 * metrics["train_rows_per_pass"]
    else:
        assert copies[0] != copies[1] and copies[1] != copies[2]
    collate = data.train_dataloader().collate_fn
    rows = len(copies[0])
    first = collate([data.train_examples[(0, i)] for i in range(rows)])
    second = collate([data.train_examples[(0, rows + i)] for i in range(len(copies[1]))])
    if mode == "masks_only":  # the same inputs, other masks
        assert (first["labels"] != second["labels"]).any(dim=1).float().mean() > 0.9


# ---- masking options reach the batches that `harness inspect-data` writes (the training loader) ------------------

def _inspect(shared_data: Path, tmp_path: Path, capsys, *overrides: str) -> tuple[dict, list[dict]]:
    from harness.cli import main

    out = tmp_path / "batches.jsonl"
    sets = [arg for item in [*SMALL, "optim.batch_size=16", *overrides] for arg in ("--set", item)]
    assert main(["inspect-data", "--data-dir", str(shared_data), "--out", str(out), "--batches", "12", "--show", "0",
                 *sets]) == 0
    stats = json.loads(capsys.readouterr().out)
    return stats, [json.loads(line) for line in out.read_text().splitlines()]


def _tokenizer(shared_data: Path, *overrides: str):
    from harness.data.tokenizer import build_tokenizer

    return build_tokenizer(load_config(overrides=[*SMALL, *overrides]), shared_data)[0]


def test_mask_count_and_cap_reach_the_training_batches(shared_data, tmp_path, capsys):
    overrides = ("data.mask_count=google", "data.max_predictions_per_seq=5")
    _, records = _inspect(shared_data, tmp_path, capsys, *overrides)
    special = set(_tokenizer(shared_data, *overrides).all_special_ids)
    assert len(records) == 12 * 16
    capped = 0
    for record in records:
        candidates = sum(1 for token, label in zip(record["input_ids"], record["labels"], strict=True)
                         if (label if label != -100 else token) not in special)
        chosen = sum(label != -100 for label in record["labels"])
        assert chosen == min(5, max(1, round(0.15 * candidates)))  # Google's rule, capped
        capped += chosen == 5 < round(0.15 * candidates)
    assert capped > 0


def test_mask_probability_and_corruption_fractions_reach_the_training_batches(shared_data, tmp_path, capsys):
    stats, _ = _inspect(shared_data, tmp_path, capsys, "data.mask_prob=0.3", "data.mask_token_fraction=0.5",
                        "data.random_token_fraction=0.5")
    assert stats["mask_rate"] == pytest.approx(0.3, abs=0.01)
    assert stats["mask_split"]["mask"] == pytest.approx(0.5, abs=0.05)
    assert stats["mask_split"]["kept"] < 0.01  # none kept on purpose; a random draw may hit the original


def test_whole_word_masking_reaches_the_training_batches(shared_data, tmp_path, capsys):
    from harness.data.masking import word_start_table

    overrides = ("tokenizer.kind=wordpiece", "model.family=bert", "data.whole_word_masking=true")
    _, records = _inspect(shared_data, tmp_path, capsys, *overrides)
    tokenizer = _tokenizer(shared_data, *overrides)
    starts = word_start_table(tokenizer)
    special = set(tokenizer.all_special_ids)
    continued = 0
    for record in records:
        originals = [label if label != -100 else token for token, label in zip(record["input_ids"], record["labels"],
                                                                                strict=True)]
        chosen = [label != -100 for label in record["labels"]]
        for position in range(1, len(originals)):
            if not starts[originals[position]] and originals[position - 1] not in special:
                # a '##' piece inside a word: chosen exactly when the piece before it is
                assert chosen[position] == chosen[position - 1], tokenizer.convert_ids_to_tokens(originals)
                continued += chosen[position]
    assert continued > 20  # multi-piece words were masked whole, many times


@pytest.mark.slow  # compiling takes minutes on 2 CPU cores; impl.compile is meant for GPUs
def test_compiled_encoder_trains_and_exports_a_plain_checkpoint(shared_data, tmp_path):
    from safetensors.torch import load_file

    metrics, curves = _run(shared_data, tmp_path, "impl.compile=true", "optim.batch_size=16", "budget.max_steps=20")
    loss = curves["train/mlm_loss"].dropna()
    assert metrics["steps"] == 20 and loss.iloc[-3:].mean() < loss.iloc[:3].mean() - 0.3
    weights = load_file(_run_dir(tmp_path) / EXPORT_DIR / "model.safetensors")
    assert weights and not any("_orig_mod" in name for name in weights)  # compiled in place, names unchanged


# ---- precision ---------------------------------------------------------------------------------------------------

def test_auto_precision_is_bf16_only_where_bf16_is_fast(monkeypatch):
    import harness.train as train
    from harness.config import ImplConfig

    cpu = ImplConfig(accelerator="cpu")
    for fast, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert train.resolve_precision(cpu) == expected
    assert train.resolve_precision(ImplConfig(accelerator="cpu", precision="32-true")) == "32-true"


def test_bf16_autocast_follows_fp32_on_a_fixed_run(shared_data, tmp_path):
    """The same run (data, masks, initialisation, dropout) in fp32 and with bf16 autocast: the curves agree to
    bf16 rounding, and the run records which precision it used."""
    common = ("optim.batch_size=16", "budget.max_steps=30")
    fp32, fp32_curves = _run(shared_data, tmp_path / "fp32", *common, "impl.precision=32-true")
    bf16, bf16_curves = _run(shared_data, tmp_path / "bf16", *common, "impl.precision=bf16-mixed")
    assert (fp32["precision"], bf16["precision"]) == ("32-true", "bf16-mixed")
    fp32_loss, bf16_loss = (c["train/mlm_loss"].dropna().to_numpy() for c in (fp32_curves, bf16_curves))
    assert len(fp32_loss) == len(bf16_loss) == 30 and bf16_loss[-5:].mean() < bf16_loss[:5].mean() - 0.5
    assert abs(bf16_loss - fp32_loss).max() < 0.05
    assert bf16["val_mlm_loss"] == pytest.approx(fp32["val_mlm_loss"], abs=0.02)


def test_profiler_writes_its_report_into_the_run_directory(shared_data, tmp_path):
    _run(shared_data, tmp_path, "optim.batch_size=8", "budget.max_steps=2", "impl.profiler=simple")
    report = (_run_dir(tmp_path) / "fit-profile.txt").read_text()
    assert "run_training_batch" in report and "optimizer_step" in report


def test_length_grouped_batches_cut_padding_and_keep_each_inputs_masks(shared_data, tmp_path, capsys):
    """optim.group_by_length (fairseq's batch_by_size; on by default with batch_tokens) through `harness inspect-data`
    and `pretrain`: DOC-SENTENCES inputs of similar length share a micro-batch, so nearly every computed position is
    a real token, and each input keeps the mask it has without grouping (masks are keyed by (seed, pass, index))."""
    tokens = ("data.packing=doc_sentences", "optim.batch_tokens=512")
    _, plain = _inspect(shared_data, tmp_path / "plain", capsys, *tokens, "optim.group_by_length=false")
    _, grouped = _inspect(shared_data, tmp_path / "grouped", capsys, *tokens)  # the default with batch_tokens
    masks = {(r["mask_key"], r["example_index"]): r["labels"] for r in plain}
    both = [r for r in grouped if (r["mask_key"], r["example_index"]) in masks]
    assert len(both) > 5 and all(masks[r["mask_key"], r["example_index"]] == r["labels"] for r in both)
    metrics, curves = _run(shared_data, tmp_path / "run", *tokens, "budget.max_steps=12")
    real, padded = curves["train/tokens_per_update"].dropna(), curves["train/padded_tokens_per_update"].dropna()
    assert (padded <= 512).all() and real.sum() / padded.sum() > 0.9
    assert metrics["steps"] == 12


class UpdateContents(Callback):
    """The (epoch, input) keys of each update's micro-batches, ghosts left out."""

    def __init__(self) -> None:
        self.updates: dict[int, list[tuple[int, int]]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        keys = zip(batch["mask_epoch"].tolist(), batch["example_index"].tolist(), strict=True)
        self.updates.setdefault(trainer.global_step, []).extend(k for k in keys if k[0] != -1)


def test_impl_micro_batch_size_changes_the_split_of_a_token_update_not_its_inputs(shared_data, tmp_path):
    """optim.batch_tokens with 1, 2 and 4 micro-batches per update (impl.micro_batch_size): every update holds the same
    inputs with the same masks, so the losses agree to float rounding (dropout 0, fp32)."""
    tokens = ["optim.batch_tokens=512", "data.packing=doc_sentences", "model.dropout=0", "budget.max_steps=4",
              "impl.precision=32-true"]
    runs = {}
    for name, extra in [("one", []), ("two", ["impl.micro_batch_size=4"]), ("four", ["impl.micro_batch_size=2"])]:
        contents = UpdateContents()
        metrics, curves = _run(shared_data, tmp_path / name, *tokens, *extra, callbacks=[contents])
        runs[name] = ({step: sorted(keys) for step, keys in contents.updates.items()}, metrics, curves)
    one, metrics, curves = runs["one"]
    assert len(one) == 4 and len({len(keys) for keys in one.values()}) > 1  # the inputs per update vary
    for name in ("two", "four"):
        updates, other, other_curves = runs[name]
        assert updates == one, name
        assert other["tokens_seen"] == metrics["tokens_seen"]
        torch.testing.assert_close(other_curves["train/mlm_loss"].dropna().to_numpy(),
                                   curves["train/mlm_loss"].dropna().to_numpy(), rtol=1e-4, atol=1e-5)
