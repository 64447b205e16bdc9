"""The command line end to end, as a user runs it: `harness pretrain`, `harness finetune` and `harness quickstart` (a
sweep) in subprocesses on the real data with tiny settings, asserting on what they print and write. Marked `slow`:
each recipe composed with the tiny size preset pre-trains for 30 updates and its loss falls."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import RECIPES, load_config
from harness.runs import FINAL_METRICS_FILE, read_curves

TINY = ["--set", "corpus.path=corpora/wikitext-2-raw/wiki.valid.raw", "--set", "corpus.max_documents=12",
        "--set", "corpus.validation_fraction=0.25",  # three held-out documents: NSP draws B from another one
        "--set", "tokenizer.vocab_size=1000", "--set", "data.max_seq_length=64", "--set", "optim.batch_size=8",
        "--set", "budget.max_steps=4", "--set", "budget.val_every_steps=4", "--set", "budget.val_max_examples=32",
        "--set", "logging.wandb=false", "--set", "impl.progress_bar=false", "--set", "impl.threads=1"]
TINY_FINETUNE = ["train_subsample=32", "epochs=1", "learning_rates=[1e-3]", "seeds=[0]", "max_seq_length=32",
                 "batch_size=16", "impl.threads=1"]


def harness(*args: str | Path, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m harness.cli ARGS` with its caches in `cache` and wandb offline, as a user would run it."""
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One cache and results root for the module: later commands reuse the corpus and tokenizer built first."""
    return tmp_path_factory.mktemp("cli-e2e")


@pytest.fixture(scope="module")
def pretrained(workspace, shared_data) -> tuple[Path, dict]:
    """`harness pretrain --preset tiny --recipe roberta` with tiny overrides: (run directory, printed metrics)."""
    result = succeeded(harness("pretrain", "--preset", "tiny", "--recipe", "roberta", *TINY, "--data-dir",
                               shared_data, "--results", workspace / "results", cache=workspace / "cache"))
    runs = list((workspace / "results").glob("*/runs/*"))
    assert len(runs) == 1
    return runs[0], json.loads(result.stdout)


def test_pretrain_from_the_command_line(pretrained):
    run, printed = pretrained
    final = json.loads((run / FINAL_METRICS_FILE).read_text())
    assert printed == final and final["steps"] == 4
    assert 0 < final["val_mlm_loss"] < 10 and final["tokens_seen"] > 0
    saved = load_config(run / "config.yaml")
    assert saved.recipe == "roberta" and saved.optim.decay_norm_and_bias and saved.model.size == "tiny"
    assert saved.data.max_seq_length == 64 and final["run_id"] == saved.run_id() and run.name.endswith(saved.run_id())
    assert (run / "model" / "config.json").is_file() and (run / "model" / "tokenizer_config.json").is_file()


def test_pretrain_again_returns_the_finished_run(pretrained, workspace, shared_data):
    run, printed = pretrained
    stamp = (run / FINAL_METRICS_FILE).stat().st_mtime_ns
    result = succeeded(harness("pretrain", "--preset", "tiny", "--set", "recipe=roberta", *TINY, "--data-dir",
                               shared_data, "--results", workspace / "results", cache=workspace / "cache"))
    assert json.loads(result.stdout) == printed  # --set recipe= names the same run as --recipe
    assert (run / FINAL_METRICS_FILE).stat().st_mtime_ns == stamp


def test_finetune_the_pretrained_model_from_the_command_line(pretrained, workspace, shared_data):
    run, _ = pretrained
    overrides = [arg for item in TINY_FINETUNE for arg in ("--set", item)]
    result = succeeded(harness("finetune", "--checkpoint", run / "model", "--task", "sst2", *overrides,
                               "--data-dir", shared_data, "--results", workspace / "results",
                               cache=workspace / "cache"))
    printed = json.loads(result.stdout)
    assert printed["task"] == "sst2" and printed["best_learning_rate"] == 1e-3
    assert 0.0 <= printed["best"]["median"] <= 100.0 and printed["best"]["n"] == 1  # accuracy in percent
    summary = json.loads((Path(printed["study_dir"]) / "summary.json").read_text())
    assert summary["best"] == printed["best"] and summary["train_subsample"] == 32
    assert (Path(printed["study_dir"]) / "lr0.001__seed0" / FINAL_METRICS_FILE).is_file()


def test_the_run_keeps_its_held_out_loss_per_document(pretrained):
    """heldout_documents.csv holds the final common held-out evaluation split by document: its sums are the run's
    common_val figures, so a report may resample documents."""
    import math

    import pandas as pd

    run, printed = pretrained
    documents = pd.read_csv(run / "heldout_documents.csv")
    assert list(documents["document"]) == list(range(printed["common_val_documents"]))
    assert documents["masked_tokens"].sum() == printed["common_val_masked_tokens"]
    assert documents["chars"].sum() == printed["common_val_masked_chars"]
    bpc = documents["nll_nats"].sum() / math.log(2) / documents["chars"].sum()
    assert bpc == pytest.approx(printed["common_val_bpc"], rel=1e-4)


def test_evaluate_blimp_on_the_pretrained_model(pretrained, workspace, shared_data):
    """`harness evaluate --task blimp` on the model `harness pretrain` exported: accuracies as JSON, a record with
    every pair, and the same record returned by a second call."""
    run, _ = pretrained
    args = ["evaluate", "--checkpoint", run / "model", "--task", "blimp", "--set",
            "blimp.paradigms=anaphor_gender_agreement,determiner_noun_agreement_1", "--set",
            "blimp.pairs_per_paradigm=25", "--data-dir", shared_data, "--results", workspace / "results"]
    printed = json.loads(succeeded(harness(*args, cache=workspace / "cache")).stdout)
    assert printed["pairs"] == 50 and 0.0 <= printed["overall"] <= 100.0
    assert set(printed["by_field"]) == {"morphology"} and printed["ties"] >= 0
    records = list((workspace / "results").glob("evaluate/evaluate/model__blimp__*"))
    assert len(records) == 1 and (records[0] / "pairs.csv.gz").is_file()
    stamp = (records[0] / FINAL_METRICS_FILE).stat().st_mtime_ns
    assert json.loads(succeeded(harness(*args, cache=workspace / "cache")).stdout) == printed
    assert (records[0] / FINAL_METRICS_FILE).stat().st_mtime_ns == stamp  # a finished record is never rewritten


def test_quickstart_runs_a_grid_file(workspace, shared_data, pretrained):
    folder = workspace / "study"
    folder.mkdir()
    # Only what differs from the defaults: a base that spelled out every field would override the arm's recipe.
    base = {"model.size": "tiny", **dict(item.split("=", 1) for item in TINY if item != "--set")}
    grid = {"name": "e2e-study", "base": {"set": {k: yaml.safe_load(v) for k, v in base.items()}},
            "scientific": {"arms": {"bert-arm": {"recipe": "bert"}}},
            "nuisance": {"finetune.learning_rate": [1e-3]}, "seeds": {"finetune": [0]},
            "finetune": {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in TINY_FINETUNE)
                         if key not in ("learning_rates", "seeds")}, "tasks": {"sst2": {}}}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(grid))
    result = succeeded(harness("quickstart", "--grid", folder / "tiny.yaml", "--data-dir", shared_data,
                               "--results", workspace / "results", cache=workspace / "cache"))
    lines = result.stdout.strip().splitlines()
    report = workspace / "results" / "e2e-study" / "report" / "report.md"
    assert lines[-1] == f"report: {report}" and report.is_file()  # the quickstart ends with its report
    lines = lines[:-1]
    assert "2 jobs (1 pre-training, 1 fine-tuning)" in lines[1] and lines[-1] == "ran 2 job(s); 0 failure(s)"
    header, row = lines[-3:-1]
    assert header.split()[:2] == ["point", "sst2_accuracy_median"] and "common_val_bpc" in header
    assert row.split()[0] == "bert-arm" and row.split()[6] == "1" and row.split()[7] == "4"  # runs, steps
    run = next((workspace / "results" / "e2e-study" / "runs").glob("bert-arm-s0__*"))
    assert load_config(run / "config.yaml").recipe == "bert"
    assert (run / FINAL_METRICS_FILE).is_file()
    # A quiet console: the plan, a line per job, the table; the jobs' own lines (Lightning, wandb, warnings) are in
    # each job's console.log
    job_lines = result.stderr.strip().splitlines()
    assert len(job_lines) == 2 and job_lines[0].startswith("[1/2] done pretrain/bert-arm-s0 in "), result.stderr
    assert job_lines[1].startswith("[2/2] done finetune/bert-arm-s0/sst2/"), result.stderr
    assert not any(word in result.stdout + result.stderr for word in ("wandb", "GPU available", "Warning", "%|"))
    assert "tokenizing: 100%" in (run / "console.log").read_text()  # datasets' progress bars, kept


def test_a_jobs_console_goes_to_its_log_unless_verbose(tmp_path, capfd):
    """Output of the job's process and of the processes it starts (file descriptors 1 and 2) goes to console.log;
    the sweep's console gets it back when the job ends; with verbose nothing is redirected."""
    import os
    import sys

    from harness.study.worker import job_console

    with job_console(tmp_path / "job", verbose=False):
        print("from python", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        os.system("echo from a subprocess")
    print("after the job", flush=True)
    with job_console(tmp_path / "loud", verbose=True):
        print("verbose job", flush=True)
    captured = capfd.readouterr()
    log = (tmp_path / "job" / "console.log").read_text()
    assert log.splitlines() == ["from python", "to stderr", "from a subprocess"]
    assert captured.out == "after the job\nverbose job\n" and captured.err == ""
    assert not (tmp_path / "loud").exists()


@pytest.mark.parametrize("args,field", [(["--set", "data.packing=nope"], "data.packing"),
                                        (["--recipe", "nope"], "recipe")])
def test_bad_value_stops_pretrain_with_one_line(args, field, tmp_path):
    result = harness("pretrain", "--preset", "tiny", *args, "--results", tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and field in result.stderr and "nope" in result.stderr
    assert not any(tmp_path.glob("*/runs"))  # refused before any work


# ---- slow: every recipe actually learns ------------------------------------------------------------------

REUTERS = ["--set", "corpus.layout=jsonl", "--set", "corpus.path=corpora/reuters.jsonl",
           "--set", "corpus.max_documents=1500", "--set", "budget.max_steps=30", "--set", "budget.val_every_steps=30",
           "--set", "budget.val_max_examples=64", "--set", "logging.wandb=false", "--set", "logging.log_every_steps=1",
           "--set", "impl.progress_bar=false", "--set", "impl.threads=1"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_each_recipe_with_the_tiny_preset_learns_on_reuters(recipe, workspace, shared_data):
    results = workspace / f"slow-{recipe}"
    printed = json.loads(succeeded(harness("pretrain", "--preset", "tiny", "--recipe", recipe, *REUTERS,
                                           "--data-dir", shared_data, "--results", results,
                                           cache=workspace / "cache", timeout=1200)).stdout)
    run = next(results.glob("*/runs/*"))
    assert printed["steps"] == 30 and load_config(run / "config.yaml").recipe == recipe
    loss = read_curves(run)["train/mlm_loss"].dropna()
    assert len(loss) == 30
    assert loss.iloc[-5:].mean() < loss.iloc[:5].mean() - 0.5, loss.tolist()


@pytest.mark.slow
def test_the_shipped_quickstart_runs_at_its_smoke_scale(workspace, shared_data):
    """The README's quickstart grid itself, for real, at its smoke scale: every job of both recipes and the
    no-pre-training row runs, the report is written with its BLiMP column and baseline row, and the console holds
    the plan, one line per job, the table and the report's path (wandb's and Lightning's lines are in the jobs'
    console.log files)."""
    grid = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    result = succeeded(harness("quickstart", "--grid", grid, "--scale", "smoke", "--data-dir", shared_data,
                               "--results", workspace / "smoke", cache=workspace / "cache", timeout=1200))
    report = workspace / "smoke" / "quickstart-smoke" / "report" / "report.md"
    assert result.stdout.strip().splitlines()[-1] == f"report: {report}"
    text = report.read_text()
    assert "| no_pretraining (baseline) |" in text and "blimp" in text and "## The paper's claims" in text
    jobs = [line for line in result.stderr.splitlines() if line.strip()]
    assert jobs and all(re.match(r"\[\d+/\d+\] done \S+ in \S+$", line) for line in jobs), result.stderr[-2000:]
    assert "wandb" not in result.stdout + result.stderr
