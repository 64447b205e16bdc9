"""The rows every arm is measured against, through the grid, the sweep and the report: the no-pre-training row (the
first point's architecture and tokenizer, 0 updates), the trivial predictor of each task, BLiMP as a zero-shot
task (one evaluation per pre-training run), and the mark of a column that carries no pre-training signal."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.config import ConfigError
from harness.report.report import _signal, build_report
from harness.report.report_md import write_report
from harness.study import load_grid, sweep
from harness.study.jobs import expand

TINY = {"corpus.path": "corpora/wikitext-2-raw/wiki.valid.raw", "corpus.max_documents": 12,
        "corpus.validation_fraction": 0.25, "tokenizer.vocab_size": 1000, "data.max_seq_length": 64,
        "optim.batch_size": 8, "budget.max_steps": 6, "budget.val_every_steps": 3, "budget.val_max_examples": 32,
        "logging.wandb": False, "logging.log_every_steps": 1, "impl.progress_bar": False, "impl.threads": 1}
PARADIGMS = ["anaphor_gender_agreement", "regular_plural_subject_verb_agreement_1"]


def write_grid(folder: Path, grid: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{grid['name']}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def grid_with(baselines: dict, **extra) -> dict:
    return {"name": "baselines", "base": {"preset": "tiny", "recipe": "roberta", "set": TINY},
            "scientific": {"arms": {"static": {"data.masking": "static", "data.dupe_factor": 2}, "dynamic": {}}},
            "nuisance": {"optim.peak_lr": [1e-3, 5e-4], "finetune.learning_rate": [1e-3]},
            "seeds": {"pretrain": [0, 1], "finetune": [0]}, "finetune": {"epochs": 1},
            "tasks": {"sst2": {}, "blimp": {"paradigms": PARADIGMS, "pairs_per_paradigm": 10}},
            "baselines": baselines, **extra}


def test_the_no_pretraining_row_copies_a_point_with_no_updates(tmp_path, shared_data):
    study = load_grid(write_grid(tmp_path, grid_with({"no_pretraining": True})), data_dir=shared_data)
    baseline = [run for run in study.runs if run.point.baseline]
    # one run per pre-training seed, not one per pre-training nuisance value: the nuisance does nothing at 0 updates
    assert [run.seed for run in baseline] == [0, 1] and {run.nuisance["optim.peak_lr"] for run in baseline} == {1e-3}
    static = next(run for run in study.runs if run.point.label == "static").config
    config = baseline[0].config
    assert (config.budget.max_steps, config.budget.max_tokens) == (0, None)
    assert (config.data.masking, config.tokenizer.kind, config.model.family) == (
        static.data.masking, static.tokenizer.kind, static.model.family)  # the first point's, by default
    named = load_grid(write_grid(tmp_path, grid_with({"no_pretraining": "dynamic"})), data_dir=shared_data)
    assert {run.config.data.masking for run in named.runs if run.point.baseline} == {"dynamic"}
    plan = expand(study, tmp_path / "results")
    # 2 arms x 2 peak lrs x 2 seeds + 2 baseline runs; BLiMP: one evaluation per run, no lr, no fine-tuning seed
    assert len(plan.evaluate) == len(plan.pretrain) == 10 and len(plan.finetune) == 10
    assert {job.name.split("/")[0] for job in plan.evaluate} == {"evaluate"}


def test_a_baseline_naming_no_point_is_one_line(tmp_path, shared_data):
    with pytest.raises(ConfigError, match=r"baselines.no_pretraining: no point labelled 'dinamic'; allowed: "):
        load_grid(write_grid(tmp_path, grid_with({"no_pretraining": "dinamic"})), data_dir=shared_data)


def cell(point: str, column: str, values: list[float]) -> dict:
    """One value per pre-training seed, no per-example outputs (the comparisons resample the seeds alone)."""
    return {"point": point, "column": column, "median": float(pd.Series(values).median()) if values else None,
            "mean": float(pd.Series(values).mean()) if values else None, "n": len(values), "values": values,
            "seeds": [(i, None) for i in range(len(values))], "seed_values": dict(enumerate(values)),
            "seed_dirs": {}}


class HandMade:
    """What _signal reads of a report, made by hand."""

    def __init__(self, cells: list[dict], columns: list[str]) -> None:
        self.cells, self.columns = pd.DataFrame(cells), columns
        self.baseline, self.arms = "no_pretraining", ["a", "b"]
        self.trivial = {"sst2": {"score": 50.92}, "mrpc": {"score": 74.8}}


def test_a_column_has_signal_only_when_an_arm_beats_no_pretraining_beyond_the_seeds():
    made = HandMade([
        cell("a", "sst2", [70.0, 71.0, 72.0, 70.5, 71.5]), cell("b", "sst2", [50.0, 52.0, 51.0, 49.0, 53.0]),
        cell("no_pretraining", "sst2", [51.0, 50.0, 52.0, 50.5, 51.5]),
        cell("a", "rte", [52.0, 55.0, 50.0, 53.0, 51.0]), cell("b", "rte", [53.0, 50.0, 54.0, 51.0, 52.0]),
        cell("no_pretraining", "rte", [52.0, 54.0, 51.0, 52.0, 53.0]),
        # lower is better: 300 < 8000 beats the random model
        cell("a", "ppl", [300.0, 310.0]), cell("b", "ppl", [320.0, 330.0]),
        cell("no_pretraining", "ppl", [8000.0, 8100.0]),
        cell("a", "bpc", [2.0]), cell("b", "bpc", [2.1]), cell("no_pretraining", "bpc", [4.0]),
        # beats the random model, but not the majority class: no signal either
        cell("a", "mrpc", [74.9, 74.7, 74.8, 74.85, 74.75]), cell("b", "mrpc", [70.0, 71.0, 70.5, 69.5, 70.2]),
        cell("no_pretraining", "mrpc", [70.0, 70.5, 69.0, 71.0, 70.1]),
    ], ["sst2", "rte", "ppl", "bpc", "mrpc"])
    rows = {row["column"]: row for row in _signal(made)}
    assert rows["sst2"]["signal"] == "signal" and rows["sst2"]["arms_beating_baseline"] == "a"
    assert rows["sst2"]["trivial"] == 50.92 and rows["sst2"]["best_arm"] == 71.0
    assert rows["sst2"]["arms_above_trivial"] == "a"
    assert rows["mrpc"]["arms_beating_baseline"] == "a" and rows["mrpc"]["arms_above_trivial"] == ""
    assert rows["mrpc"]["signal"] == "no signal"
    assert rows["rte"]["signal"] == "no signal" and rows["rte"]["arms_beating_baseline"] == ""
    assert rows["ppl"]["signal"] == "signal" and rows["ppl"]["arms_beating_baseline"] == "a,b"
    assert rows["bpc"]["signal"] == "cannot tell"  # one seed: no spread to judge by


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shared_data) -> Path:
    """A tiny study with the baseline row and BLiMP: one arm, one pre-training seed, SST-2 x 1 fine-tuning seed."""
    root = tmp_path_factory.mktemp("baselines")
    grid = {"name": "baselines_e2e", "base": {"preset": "tiny", "recipe": "roberta", "set": TINY},
            "scientific": {"arms": {"dynamic": {}}}, "nuisance": {"finetune.learning_rate": [1e-3]},
            "seeds": {"pretrain": [0], "finetune": [0]},
            "finetune": {"train_subsample": 32, "epochs": 1, "max_seq_length": 32, "batch_size": 16,
                         "impl.threads": 1},
            "tasks": {"sst2": {}, "blimp": {"paradigms": PARADIGMS, "pairs_per_paradigm": 10}},
            "baselines": {"no_pretraining": True}}
    out = io.StringIO()
    result = sweep(write_grid(root, grid), results=root / "results", data_dir=shared_data, out=out)
    assert result.exit_status == 0, result.failures
    assert "(2 pre-training, 2 fine-tuning, 2 zero-shot)" in out.getvalue()
    return root / "results" / "baselines_e2e"


def test_the_sweep_runs_the_baseline_and_blimp_and_the_report_shows_them(finished, tmp_path):
    report = build_report(finished)
    runs = report.tidy.drop_duplicates("run_dir").set_index("point")
    assert runs.loc["no_pretraining", "steps"] == 0 and runs.loc["dynamic", "steps"] == 6
    # a random model scores about the vocabulary size as perplexity; six updates already do better
    assert runs.loc["no_pretraining", "common_val_ppl"] > runs.loc["dynamic", "common_val_ppl"]
    blimp = report.tidy[report.tidy["task"] == "blimp"]
    assert len(blimp) == 2 and blimp["finetune_lr"].isna().all() and blimp["score"].between(0, 100).all()
    for job in report.plan.evaluate:  # the record holds the per-pair outcomes the statistics resample
        final = json.loads((report.plan.path(job) / "final_metrics.json").read_text())
        assert final["pairs"] == 20 and final["score"] == final["overall"]
    assert report.trivial["sst2"]["score"] == pytest.approx(50.92, abs=0.01)  # always 'positive' on dev
    assert set(report.signal["column"]) == {"sst2", "blimp", "ppl", "bpc"}
    assert set(report.signal["signal"]) == {"cannot tell"}  # one seed per arm
    assert report.comparisons.empty  # the baseline is never compared with the paper or used as the reference
    written, _ = write_report(finished.parent, out=tmp_path)
    text = written[0].read_text()
    assert "no_pretraining (baseline)" in text and "| trivial predictor | 50.92 (always" in text
    assert "published: GPT-2" in text and "## Does pre-training show at this scale?" in text
    # one seed per arm: no list of arms that beat the baseline, not even "none" (that would read as a finding)
    signal = text.split("## Does pre-training show at this scale?")[1].split("\n\n")[1]
    assert "| sst2 | 50.92 (always" in signal and "none" not in signal and signal.count("cannot tell") == 4
