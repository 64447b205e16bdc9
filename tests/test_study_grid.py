"""Grid files through `harness sweep` (dry runs and finished studies, no training): expansion counts, sharing of
pre-training runs, zip rows, scales, nuisance selection by median over seeds, and one-line errors before any work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import load_config
from harness.runs import prepare_run_dir, write_final_metrics
from harness.study import load_grid, sweep
from harness.study.jobs import expand

REPO = Path(__file__).resolve().parents[1]
TINY_BASE = {"model.size": "tiny", "budget.max_steps": 10, "corpus.path": "corpora/wikitext-2-raw/wiki.valid.raw"}


def write_grid(folder: Path, grid: dict, name: str = "study.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(grid, sort_keys=False))
    return folder / name


@pytest.fixture
def big_grid(tmp_path) -> Path:
    return write_grid(tmp_path, {
        "name": "big", "description": "every kind of axis",
        "base": {"preset": "tiny", "recipe": "roberta", "set": TINY_BASE},
        "scientific": {"arms": {"bert": {"recipe": "bert"}, "roberta": {}},
                       "axes": {"data.masking": ["static", "dynamic"]}},
        "zip": {"optim.batch_size": [16, 64], "budget.max_steps": [40, 10]},
        "nuisance": {"optim.peak_lr": [5e-4, 1e-3], "finetune.learning_rate": [1e-4, 2e-4, 3e-4]},
        "seeds": {"pretrain": [0, 1], "finetune": [0, 1]},
        "finetune": {"epochs": 1},
        "tasks": {"sst2": {"train_subsample": 100}, "rte": {"seeds": [5]}},
        "scales": {"quick": {"base": {"set": {"budget.max_steps": 2}}, "zip": None,
                             "seeds": {"pretrain": [0]}, "tasks": {"rte": None}}},
    })


def test_expansion_counts_sharing_and_zip(big_grid, tmp_path, shared_data, capsys):
    assert main(["sweep", str(big_grid), "--dry-run", "--results", str(tmp_path / "r"),
                 "--data-dir", str(shared_data)]) == 0
    out = capsys.readouterr().out
    # 2 arms x 2 masking x 2 zip rows x 2 peak lr x 2 seeds = 32 runs; sst2 3 lr x 2 seeds, rte 3 lr x 1 seed
    assert "big: every kind of axis" in out and "320 jobs (32 pre-training, 288 fine-tuning)" in out
    assert "done 0, partial 0, failed 0, to do 320" in out and "M pre-training tokens" in out
    assert out.count("would run pretrain/") == 32 and not (tmp_path / "r").exists()  # a dry run writes nothing
    plan = expand(load_grid(big_grid, data_dir=shared_data), tmp_path / "r")
    users = {job.pretrain.name for job in plan.finetune}
    assert users == {job.name for job in plan.pretrain}  # every run is shared by its 9 trials
    assert all(sum(j.pretrain is p for j in plan.finetune) == 9 for p in plan.pretrain)
    rows = {(j.run.config.optim.batch_size, j.run.config.budget.max_steps) for j in plan.pretrain}
    assert rows == {(16, 40), (64, 10)}  # zipped, not crossed
    first = plan.pretrain[0].run.config
    assert (first.recipe, first.data.nsp, first.seed, first.experiment) == ("bert", True, 0, "big")
    assert plan.pretrain[0].name == "pretrain/bert-static-batch_size16-peak_lr0.0005-s0"
    assert {j.run.config.optim.peak_lr for j in plan.pretrain} == {5e-4, 1e-3}  # the nuisance beats the preset
    rte = [j for j in plan.finetune if j.task.name == "rte"]
    assert {j.seed for j in rte} == {5} and {j.lr for j in rte} == {1e-4, 2e-4, 3e-4}
    assert {j.settings.train_subsample for j in plan.finetune if j.task.name == "sst2"} == {100}
    assert {j.settings.epochs for j in plan.finetune} == {1}


def test_a_scale_overlays_the_file_and_set_tasks_data_dir_apply(big_grid, tmp_path, shared_data, capsys):
    assert main(["sweep", str(big_grid), "--scale", "quick", "--dry-run", "--results", str(tmp_path / "r"),
                 "--data-dir", str(shared_data), "--set", "optim.warmup_fraction=0.2", "--tasks", "mrpc,sst2"]) == 0
    out = capsys.readouterr().out
    # no zip, one seed: 2 x 2 x 2 = 8 runs; mrpc (file-less: grid defaults) and sst2: 3 lr x 2 seeds each
    assert "104 jobs (8 pre-training, 96 fine-tuning)" in out and "at scale quick" in out
    plan = expand(load_grid(big_grid, "quick", ["optim.warmup_fraction=0.2"], ["mrpc", "sst2"], shared_data),
                  tmp_path)
    configs = [job.run.config for job in plan.pretrain]
    assert {c.budget.max_steps for c in configs} == {2} and {c.optim.warmup_fraction for c in configs} == {0.2}
    assert {c.experiment for c in configs} == {"big-quick"}  # scales never share a results folder
    assert {job.task.name for job in plan.finetune} == {"mrpc", "sst2"}
    assert set(load_grid(big_grid, "quick", data_dir=shared_data).tasks) == {"sst2"}  # the scale's null drops rte


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grids_validate_at_every_scale(path, shared_data):
    """Schema, every run config, every task's settings and the data, at every scale: every corpus and task is in the
    shared data, except the GPU scales' (paper, gpu) `when_present` tasks this machine has no copy of (left out,
    listed)."""
    for scale in [None, *(yaml.safe_load(path.read_text()).get("scales") or {})]:
        study = load_grid(path, scale, data_dir=shared_data)
        assert study.runs and all(run.config.run_id() for run in study.runs), (path, scale)
        assert expand(study, "results").jobs
        if scale not in ("paper", "gpu"):
            assert study.skipped_tasks == (), (path, scale)
        else:
            assert set(study.skipped_tasks) <= {"mnli", "qnli", "squad_v1", "squad_v2"}, (path, scale)


def test_quickstart_grid_compares_the_two_recipes(shared_data, tmp_path, capsys):
    grid = REPO / "experiments" / "quickstart.yaml"
    assert main(["quickstart", "--dry-run", "--grid", str(grid), "--data-dir", str(shared_data),
                 "--results", str(tmp_path)]) == 0
    # 2 arms + the no-pre-training row, 3 pre-training seeds each (never a finding from one), each run fine-tuned on
    # SST-2 once and scored on BLiMP once; two jobs at a time where there are two cores
    out = capsys.readouterr().out
    assert "27 jobs (9 pre-training, 9 fine-tuning, 9 zero-shot)" in out
    study = load_grid(grid, data_dir=shared_data)
    assert [run.seed for run in study.runs] == [0, 1, 2] * 3
    bert, roberta, baseline = (run.config for run in study.runs[::3])
    assert (baseline.budget.max_steps, baseline.recipe, baseline.tokenizer.kind) == (0, "roberta", "bpe")
    assert (bert.recipe, bert.data.nsp, bert.data.dupe_factor, roberta.recipe) == ("bert", True, "auto", "roberta")
    assert bert.run_name() == "bert-recipe-s0" and bert.model.size == "tiny"
    sst2 = study.tasks["sst2"].settings
    assert (sst2.learning_rates, sst2.seeds, sst2.train_subsample) == ((1e-3,), (0,), 2000)
    from harness.cli import build_parser
    from harness.machine import usable_cores

    assert build_parser().parse_args(["quickstart"]).workers == min(2, usable_cores())
    assert build_parser().parse_args(["sweep", str(grid)]).workers == 1


BAD = {
    "unknown axis field": ({"scientific": {"axes": {"data.packng": ["full_sentences"]}}},
                           "scientific.axes.data.packng", "allowed: data.max_seq_length"),
    "unknown section key": ({"scientific": {"axis": {}}}, "scientific.axis", "allowed: arms, axes"),
    "axis with no values": ({"scientific": {"axes": {"data.masking": []}}}, "scientific.axes.data.masking",
                            "allowed: a list"),
    "bad axis value": ({"scientific": {"axes": {"data.masking": ["sometimes"]}}}, "data.masking",
                       "'dynamic' or 'static'"),
    "bad arm value": ({"scientific": {"arms": {"broken": {"data.packing": "segments"}}}}, "point 'broken'",
                      "config field 'data.packing'"),
    "typo in another scale": ({"scales": {"paper": {"seeds": {"pretrian": [0]}}}}, "seeds.pretrian",
                              "allowed: pretrain, finetune"),
    "same trial twice": ({"nuisance": {"finetune.learning_rate": [1e-3, 0.001]}}, "tasks.sst2",
                         "allowed: distinct values"),
    "zip lengths": ({"zip": {"optim.batch_size": [8, 16], "optim.peak_lr": [1e-3]}}, "zip", "equal lengths"),
    "unknown task": ({"tasks": {"sst3": {}}}, "tasks.sst3", "allowed: cola, sst2"),
    "task data missing": ({"tasks": {"mnli": {}}}, "tasks.mnli", "allowed here: sst2"),
    "bad when_present": ({"tasks": {"mnli": {"when_present": "yes"}}}, "tasks.mnli.when_present", "true, false"),
    "bad task setting": ({"tasks": {"sst2": {"epochs": 0}}}, "tasks.sst2", "epochs"),
    "grid-owned setting": ({"finetune": {"seeds": [1]}}, "finetune.seeds", "seeds.finetune"),
    "reserved field": ({"scientific": {"axes": {"seed": [0, 1]}}}, "scientific.axes.seed", "seeds.pretrain"),
    "same directory": ({"scientific": {"axes": {"impl.threads": [1, 2]}}}, "would write the same run",
                       "allowed: points whose run configs differ"),
    "corpus missing": ({"base": {"set": {"corpus.path": "corpora/nope.raw"}}}, "corpus.path", "no such file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_stops_before_any_work_with_one_line(case, tmp_path, shared_data, capsys):
    fields, key, allowed = BAD[case]
    grid = {"base": {"set": {**TINY_BASE, **fields.get("base", {}).get("set", {})}}, "tasks": {"sst2": {}}}
    grid.update({section: value for section, value in fields.items() if section != "base"})
    path = write_grid(tmp_path, grid)
    assert main(["sweep", str(path), "--results", str(tmp_path / "r"), "--data-dir", str(shared_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and key in err and allowed in err, err
    assert not (tmp_path / "r").exists()


def test_a_when_present_task_without_data_here_is_left_out_and_said(tmp_path, shared_data, capsys):
    """A paper-scale grid names MNLI and SQuAD; on a machine with only the small GLUE tasks those marked
    when_present are left out (the plan says so) and the rest runs; an unmarked missing task still stops it."""
    grid = write_grid(tmp_path, {"base": {"set": TINY_BASE}, "nuisance": {"finetune.learning_rate": [1e-3]}, "tasks": {
        "sst2": {}, "mnli": {"when_present": True}, "squad_v2": {"when_present": True, "max_seq_length": 64}}})
    study = load_grid(grid, data_dir=shared_data)
    assert list(study.tasks) == ["sst2"] and study.skipped_tasks == ("mnli", "squad_v2")
    assert main(["sweep", str(grid), "--dry-run", "--results", str(tmp_path / "r"), "--data-dir",
                 str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "left out (when_present, no data here): mnli, squad_v2" in out
    assert "2 jobs (1 pre-training, 1 fine-tuning)" in out


def test_undefined_scale_and_unknown_cli_task_are_one_line(big_grid, tmp_path, shared_data, capsys):
    for args, expected in [(["--scale", "huge"], "scales: --scale huge is not defined; allowed: quick"),
                           (["--tasks", "sst2,nope"], "--tasks nope: unknown task '"),
                           (["--only", "nothing/*"], "--only nothing/*: matches no job")]:
        assert main(["sweep", str(big_grid), *args, "--dry-run", "--data-dir", str(shared_data)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and expected in err, err


def test_only_and_max_jobs_choose_what_runs(big_grid, tmp_path, shared_data, capsys):
    common = ["sweep", str(big_grid), "--scale", "quick", "--dry-run", "--data-dir", str(shared_data)]
    assert main([*common, "--only", "finetune/roberta-static-*-s0/sst2/lr0.0001-seed1"]) == 0
    out = capsys.readouterr().out  # the matching trials of both nuisance runs, with the runs they need
    assert "4 jobs (selected from 56) (2 pre-training, 2 fine-tuning)" in out
    assert "would run pretrain/roberta-static-peak_lr0.001-s0" in out
    assert main([*common, "--max-jobs", "3"]) == 0
    out = capsys.readouterr().out
    assert "to do 3" in out and out.count("would run") == 3 and out.count("would run pretrain/") == 3


# ---- a finished study: selection from the run directories ---------------------------------------------------
def finish_study(grid: Path, results: Path, data_dir: Path, score) -> int:
    """Mark every job of `grid` done through the run-record protocol, as the workers would; `score(job)` gives
    each trial's score. Returns the number of jobs."""
    plan = expand(load_grid(grid, data_dir=data_dir), results)
    for job in plan.pretrain:
        run = prepare_run_dir(job.run.config, results)
        (run.path / "model").mkdir()
        (run.path / "model" / "config.json").write_text(json.dumps({"seed": job.run.seed}))
        (run.path / "model" / "model.safetensors").write_bytes(job.run.config.run_id().encode())
        write_final_metrics(run, {"steps": 10, "common_val_bpc": 3.0 + job.run.seed, "tokens_seen": 1000,
                                  "fit_seconds_this_launch": 2.0, "model_dir": "model"})
    for job in plan.finetune:
        write_final_metrics(plan.path(job), {"score": score(job), "wall_s": 3.0, "dev": {}})
    return len(plan.jobs)


def test_best_nuisance_is_chosen_by_median_over_seeds(tmp_path, shared_data, capsys):
    grid = write_grid(tmp_path, {"base": {"set": TINY_BASE}, "scientific": {"arms": {"a": {}, "b": {
        "data.masking": "static"}}}, "nuisance": {"finetune.learning_rate": [1e-4, 2e-4]},
        "seeds": {"pretrain": [0], "finetune": [0, 1, 2]}, "tasks": {"sst2": {}}})
    # lr 1e-4 has the higher mean (90, 60, 61 -> 70.3) but the lower median (61) than 2e-4 (70, 70, 69)
    scores = {1e-4: [90.0, 60.0, 61.0], 2e-4: [70.0, 70.0, 69.0]}
    finish_study(grid, tmp_path / "r", shared_data, lambda job: scores[job.lr][job.seed])
    assert main(["sweep", str(grid), "--results", str(tmp_path / "r"), "--data-dir", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "done 14, partial 0, failed 0, to do 0" in out and "ran 0 job(s); 0 failure(s)" in out
    assert "compute left: 0M pre-training tokens (~0m00s), 0 fine-tuning trials (~0m00s)" in out
    header, *rows = out.split("compute left")[1].splitlines()[1:4]
    assert header.split()[:6] == ["point", "sst2_accuracy_median", "sst2_min", "sst2_max", "sst2_n", "sst2_best"]
    for row in rows:
        assert re.search(r"\b70\s+69\s+70\s+3\s+lr0.0002\b", row), row


def test_the_table_gives_the_seeds_spread_of_the_common_held_out_loss(tmp_path, shared_data):
    """With several pre-training seeds the table shows the bpc median and its min and max over seeds, so a reader can
    see whether two arms differ by more than the seeds do."""
    from harness.study.results import comparison_table

    grid = write_grid(tmp_path, {"base": {"set": TINY_BASE}, "scientific": {"arms": {"a": {}, "b": {
        "data.masking": "static"}}}, "seeds": {"pretrain": [0, 1, 2]}})
    finish_study(grid, tmp_path / "r", shared_data, lambda job: 0.0)  # bpc = 3 + seed
    table = comparison_table(expand(load_grid(grid, data_dir=shared_data), tmp_path / "r"))
    assert table[["common_val_bpc", "common_val_bpc_min", "common_val_bpc_max", "runs"]].values.tolist() == [
        [4.0, 3.0, 5.0, 3], [4.0, 3.0, 5.0, 3]]


def test_plan_counts_partial_and_failed_jobs_and_estimates_time(tmp_path, shared_data):
    grid = write_grid(tmp_path, {"base": {"set": TINY_BASE}, "scientific": {"axes": {"data.masking": ["static",
                                                                                              "dynamic"]}},
                                 "seeds": {"pretrain": [0, 1, 2]}})
    plan = expand(load_grid(grid, data_dir=shared_data), tmp_path / "r")
    done, partial, failed = plan.pretrain[:3]
    prepare_run_dir(done.run.config, tmp_path / "r")
    write_final_metrics(done.path, {"tokens_seen": 1000, "fit_seconds_this_launch": 2.0})
    prepare_run_dir(partial.run.config, tmp_path / "r")
    prepare_run_dir(failed.run.config, tmp_path / "r")
    from harness.runs import write_failure

    write_failure(failed.path, RuntimeError("out of\nmemory"), "Traceback ...")
    lines = []

    class Out:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    result = sweep(grid, results=tmp_path / "r", data_dir=shared_data, dry_run=True, out=Out())
    text = "".join(lines)
    assert "6 jobs (6 pre-training, 0 fine-tuning)" in text and "done 1, partial 1, failed 1, to do 4" in text
    # 5 runs left x 10 updates x 32 x 128 tokens, at the 500 tokens/s the finished run measured
    assert "0.205M pre-training tokens (~6m50s)" in text
    from harness.study.jobs import count_label

    assert [count_label(n) for n in (0, 36e6, 2.62e11, 1.2e12)] == ["0M", "36M", "262B", "1.2T"]
    # A resumed run: fit_seconds_this_launch is its last launch only, so its own throughput is what counts
    from harness.study.jobs import _measured

    assert _measured({"tokens_seen": 9e6, "fit_seconds_this_launch": 487.0, "train_tokens_per_s": 5000.0}) == (
        9e6, 1800.0)
    assert _measured({"tokens_seen": 1000, "fit_seconds_this_launch": 2.0}) == (1000, 2.0)
    assert result.failures == {failed.name: "failed earlier, not retried (--retry-failed): RuntimeError: out of "
                                            "memory"}
    assert result.exit_status == 1
    assert load_config(done.path / "config.yaml").data.masking == "static"


def test_each_scale_of_the_quickstart_describes_itself():
    """The report's header is the grid's description: the quickstart's said "WikiText-2, an SST-2 subset" at every
    scale, also at cpu (Reuters-21578, SST-2 and BLiMP) and paper (BERT-base)."""
    grid = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    descriptions = {scale: load_grid(grid, scale, check_data=False).description for scale in ("quick", "cpu", "paper")}
    assert "WikiText-2" in descriptions["quick"] and "Reuters-21578" in descriptions["cpu"]
    assert "BERT-base" in descriptions["paper"] and len(set(descriptions.values())) == 3


@pytest.mark.parametrize("scale", ["quick", "cpu"])
def test_table3s_lr_search_covers_its_rows_and_names_each_rate(scale, shared_data):
    """experiments/table3_lr_search.yaml runs each row of Table 3 (same batch, updates and betas, one seed) at three
    peak lrs (four to six at the cpu scale), and Table 3's lr for the row is one of them. Its zip repeats a batch
    size, so the points are named by batch size and lr (a zip whose first field tells its rows apart keeps its
    one-field names)."""
    search = load_grid(REPO / "experiments" / "table3_lr_search.yaml", scale, data_dir=shared_data)
    table3 = load_grid(REPO / "experiments" / "table3_batch_size.yaml", scale, data_dir=shared_data)
    assert [p.label for p in search.points][:3] == ["batch_size8-peak_lr0.00025", "batch_size8-peak_lr0.0005",
                                                    "batch_size8-peak_lr0.001"]
    assert [p.label for p in table3.points] == ["batch_size8", "batch_size64", "batch_size256", "no_pretraining"]
    assert not search.tasks and {run.seed for run in search.runs} == {0}
    for run in table3.runs:
        if run.point.baseline:
            continue
        optim, steps = run.config.optim, run.config.budget.max_steps
        rates = [r.config.optim.peak_lr for r in search.runs if r.config.optim.batch_size == optim.batch_size
                 and r.config.budget.max_steps == steps and r.config.optim.betas == optim.betas]
        assert len(rates) >= 3 and optim.peak_lr in rates, (run.point.label, rates)
