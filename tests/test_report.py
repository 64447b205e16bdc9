"""`harness report` on a real tiny sweep made here (2 arms, 2 fine-tuning seeds, the shared data): the tidy table
holds exactly the run directories' numbers, the cells' medians and spreads and the bootstrap interval match a hand
computation, the figures and report.md are written, and a partial / corrupt / stray results folder is reported with
one line per problem instead of crashing."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.report.report import STUDY_FILE, ReportError, build_report, find_studies, load_paper_tables
from harness.report.report_md import report_markdown, write_report
from harness.report.stats import same_sign, spread
from harness.study import sweep

TINY = {"corpus.path": "corpora/wikitext-2-raw/wiki.valid.raw", "corpus.max_documents": 12,
        "corpus.validation_fraction": 0.25, "tokenizer.vocab_size": 1000, "data.max_seq_length": 64,
        "optim.batch_size": 8, "budget.max_steps": 6, "budget.val_every_steps": 3, "budget.val_max_examples": 32,
        "logging.wandb": False, "logging.log_every_steps": 1, "impl.progress_bar": False, "impl.threads": 1}
FINETUNE = {"train_subsample": 32, "epochs": 1, "max_seq_length": 32, "batch_size": 16, "impl.threads": 1}


@pytest.fixture(scope="module")
def results(tmp_path_factory, shared_data) -> Path:
    """A finished tiny study: arms dynamic (reference) and static, 1 pre-training seed, 2 fine-tuning seeds."""
    root = tmp_path_factory.mktemp("report")
    grid = {"name": "tiny_report", "base": {"preset": "tiny", "recipe": "roberta", "set": TINY},
            "scientific": {"arms": {"dynamic": {}, "static": {"data.masking": "static", "data.dupe_factor": 2}}},
            "nuisance": {"finetune.learning_rate": [1e-3]}, "seeds": {"pretrain": [0], "finetune": [0, 1]},
            "finetune": FINETUNE, "tasks": {"sst2": {}}}
    (root / "tiny_report.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    result = sweep(root / "tiny_report.yaml", results=root / "results", data_dir=shared_data, out=io.StringIO())
    assert result.exit_status == 0, result.failures
    return root / "results"


def scores(folder: Path, arm: str) -> list[float]:
    """The two fine-tuning scores of an arm, straight from its trial files, ordered by fine-tuning seed."""
    report = build_report(folder)
    trials = [j for j in report.plan.finetune if j.pretrain.run.point.label == arm]
    return [json.loads((report.plan.path(j) / "final_metrics.json").read_text())["score"]
            for j in sorted(trials, key=lambda j: j.seed)]


def test_the_sweep_records_its_grid_and_the_tidy_table_holds_the_run_directories(results):
    folder = results / "tiny_report"
    record = json.loads((folder / STUDY_FILE).read_text())
    assert record["scale"] is None and Path(record["grid"]).name == "tiny_report.yaml"
    report = build_report(folder)
    tidy = report.tidy
    assert len(tidy) == 4 and report.problems == []
    for digest in ("corpus_digest", "tokenizer_digest"):  # one corpus and one vocabulary for both arms
        assert tidy[digest].nunique() == 1 and len(tidy[digest].iloc[0]) == 16
    assert sorted(zip(tidy["point"], tidy["finetune_seed"], strict=True)) == [("dynamic", 0), ("dynamic", 1),
                                                                              ("static", 0), ("static", 1)]
    assert set(tidy["task"]) == {"sst2"} and set(tidy["finetune_lr"]) == {1e-3}
    assert set(tidy[tidy["point"] == "static"]["data.masking"]) == {"static"}
    for arm in ("dynamic", "static"):
        assert sorted(tidy[tidy["point"] == arm]["score"]) == sorted(scores(folder, arm))
        run = json.loads((Path(tidy[tidy["point"] == arm]["run_dir"].iloc[0]) / "final_metrics.json").read_text())
        assert (tidy[tidy["point"] == arm]["common_val_bpc"] == run["common_val_bpc"]).all()


def test_cells_and_the_comparison_match_a_hand_computation(results):
    """One pre-training seed per arm, two fine-tuning seeds: the seed's value is their mean, the cell has n=1 of 1
    pre-training runs, and the comparison has a difference but no interval (fine-tuning seeds of one pre-trained
    model are not replicates). The per-example scores recomputed from dev_predictions.csv and
    heldout_documents.csv equal what the runs recorded."""
    from harness.report.evidence import heldout_scores, task_scores

    folder = results / "tiny_report"
    report = build_report(folder)
    cells = report.cells.set_index(["point", "column"])
    a, b = scores(folder, "static"), scores(folder, "dynamic")
    cell = cells.loc[("static", "sst2")]
    assert cell["mean"] == pytest.approx((a[0] + a[1]) / 2) and cell["n"] == 1 and cell["expected"] == 1
    assert cell["seed_values"] == {0: pytest.approx((a[0] + a[1]) / 2)} and len(cell["seed_dirs"][0]) == 2
    assert report.reference == "dynamic"
    row = report.comparisons.set_index(["point", "column"]).loc[("static", "sst2")]
    assert row["diff"] == pytest.approx((a[0] + a[1]) / 2 - (b[0] + b[1]) / 2)
    assert not row["judged"] and row["seeds"] == 1 and row["examples"] == 872  # SST-2's dev set, per example
    score, ids = task_scores([cell["seed_dirs"][0]], ("accuracy",))
    assert len(ids) == 872 and score(None)[0] == pytest.approx(cell["seed_values"][0], abs=1e-3)
    bpc = cells.loc[("static", "bpc")]
    per_document, _ = heldout_scores(bpc["seed_dirs"][0], "bpc")
    assert per_document(None)[0] == pytest.approx(bpc["seed_values"][0], rel=1e-5)


def test_statistics_on_hand_made_values():
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.q1, s.q3, s.n) == (2.5, 1.0, 10.0, 1.75, 4.75, 4)
    assert spread([]) is None
    assert same_sign(-1.0, -0.4) is True and same_sign(1.0, -0.4) is False and same_sign(1.0, None) is None


def test_report_files_are_written_from_the_run_directories(results, tmp_path):
    written, messages = write_report(results, "tiny_report", tmp_path)
    target = tmp_path / "tiny_report"
    assert written == [target / "report.md"] and messages == []
    text = (target / "report.md").read_text()
    assert "## Our table" in text and "| static |" in text and "n=1/1" in text and "nothing: every cell" in text
    digest = build_report(results / "tiny_report").tidy["corpus_digest"].iloc[0]
    assert re.search(rf"- corpus: `\S+` \(corpus_digest {digest}\); model:", text)  # one corpus, named by content
    # how long the study took, from its records: 2 pre-training runs and 4 fine-tuning trials
    assert re.search(r"- wall-clock: \S+ with at least one job running, 6 jobs; first start .* UTC \(span \S+\); "
                     r"job time pre-training \S+, fine-tuning \S+", text), text[:1500]
    # one pre-training run per arm: said at the top, no interval anywhere, no verdict word, no "95% CI"
    assert "**1 pre-training seed per arm (fewer than 5)**: one pre-training run per arm has no spread" in text
    assert "(one pre-training seed: no interval)" in text and "95% CI" not in text and "reproduces" not in text
    # the grid has one fine-tuning lr: the header does not call it the best
    assert "at the grid's one fine-tuning lr" in text and "best fine-tuning lr" not in text
    assert "[their range: min-max, not an interval]" in text
    assert "- every arm: 6 updates (fewer than 1000)" in text  # a flag a reader needs
    import pandas as pd

    assert len(pd.read_csv(target / "tidy.csv")) == 4
    assert "\\toprule" in (target / "table.tex").read_text()
    for name in ("scores", "curves", "efficiency"):
        for suffix in (".png", ".pdf"):
            assert (target / "figures" / f"{name}{suffix}").stat().st_size > 1000
            assert f"figures/{name}.png" in text
    write_report(results, "tiny_report", tmp_path / "again")  # a rebuilt report is byte for byte the same
    for figure in (target / "figures").iterdir():
        assert figure.read_bytes() == (tmp_path / "again" / "tiny_report" / "figures" / figure.name).read_bytes()


def test_a_partial_corrupt_and_stray_results_folder_is_reported_with_one_line_each(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    folder = copy / "tiny_report"
    report = build_report(folder)
    static = sorted((j for j in report.plan.finetune if j.pretrain.run.point.label == "static"), key=lambda j: j.seed)
    (report.plan.path(static[0]) / "final_metrics.json").unlink()  # a sweep still running: missing seed
    (report.plan.path(static[1]) / "final_metrics.json").write_text('{"score": ')  # cut off mid-write
    stray = folder / "runs" / "dynamic-s0__0000000000"
    shutil.copytree(report.plan.pretrain[0].path, stray)
    config = yaml.safe_load((stray / "config.yaml").read_text())
    config["optim"]["peak_lr"] = 0.5
    (stray / "config.yaml").write_text(yaml.safe_dump(config))
    written, messages = write_report(copy, out=tmp_path / "out")
    assert len(written) == 1 and len(messages) == 2
    assert "final_metrics.json: not readable JSON" in messages[0]
    assert "dynamic-s0__0000000000: not a run of this grid (optim.peak_lr is 0.5" in messages[1]
    text = written[0].read_text()
    assert "missing (0/1)" in text and "- static / sst2: 0 of 1 pre-training seeds" in text
    # a pre-training run still running: its fine-tuning jobs have no directory yet, and the report still builds
    (static[0].pretrain.path / "final_metrics.json").unlink()
    written, _ = write_report(copy, out=tmp_path / "running")
    assert re.search(r"- wall-clock: \S+ with at least one job running, 3 jobs;", written[0].read_text())


@pytest.mark.parametrize(("column", "what"), [("corpus_digest", "documents"), ("tokenizer_digest", "vocabularies")])
def test_runs_trained_on_other_data_are_reported(results, tmp_path, column, what):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    folder = copy / "tiny_report"
    static = next(j for j in build_report(folder).plan.pretrain if j.run.point.label == "static")
    final = json.loads((static.path / "final_metrics.json").read_text())
    (static.path / "final_metrics.json").write_text(json.dumps({**final, column: "0" * 16}))
    problems = build_report(folder).problems
    assert len(problems) == 1 and f"trained on different {what} ({column} " in problems[0]
    assert f"{'0' * 16}: {static.path.name}" in problems[0]


def test_each_run_records_its_resolved_precision_and_the_tidy_table_carries_it(results, tmp_path):
    """The sweep's pre-training runs (impl.precision auto) record what auto resolved to on this machine, its
    fine-tuning trials their own setting (32-true by default); the tidy table and report.md show them, and one
    precision for every arm raises no flag."""
    from harness.train import resolve_precision

    report = build_report(results / "tiny_report")
    resolved = {resolve_precision(job.run.config.impl) for job in report.plan.pretrain}
    assert len(resolved) == 1 and {job.run.config.impl.precision for job in report.plan.pretrain} == {"auto"}
    for job in report.plan.pretrain:
        recorded = json.loads((job.path / "final_metrics.json").read_text())["precision"]
        assert recorded in resolved and set(report.tidy[report.tidy["run_dir"] == str(job.path)]["precision"]) == \
            {recorded}
    for trial in report.plan.finetune:
        assert json.loads((report.plan.path(trial) / "final_metrics.json").read_text())["precision"] == "32-true"
    assert set(report.tidy["finetune_precision"]) == {"32-true"}
    assert not [f for f in report.flags if "precision" in f["kind"]]
    assert not any("precision" in flags for flags in report.comparisons["flags"].dropna())
    text = report_markdown(report, [], tmp_path, None)  # write_study's report.md, without drawing the figures
    assert f"; pre-training precision: {resolved.pop()}\n" in text


def test_arms_at_two_precisions_are_flagged_and_an_unrecorded_precision_is_never_guessed(results, tmp_path):
    """The static arm's record says the other precision: report.md's flags name both arms with theirs, and the
    comparison carries it; a run whose record has no precision (made before runs wrote it) is an empty cell, does
    not count as a precision of its own, and is counted in the flag."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    folder = copy / "tiny_report"
    runs = {job.run.point.label: job.path for job in build_report(folder).plan.pretrain}
    ours = json.loads((runs["dynamic"] / "final_metrics.json").read_text())["precision"]
    other = "bf16-mixed" if ours == "32-true" else "32-true"

    def record(arm: str, precision: str | None) -> None:
        final = json.loads((runs[arm] / "final_metrics.json").read_text())
        final.pop("precision", None)
        (runs[arm] / "final_metrics.json").write_text(json.dumps(final if precision is None
                                                                 else {**final, "precision": precision}))

    record("static", other)
    text = report_markdown(build_report(folder), [], tmp_path, None)
    flags = text.split("## Flags")[1].split("##")[0]
    assert (f"- pre-training runs at more than one precision (dynamic {ours}; static {other}): they round "
            "differently, so a difference between arms may be partly the precision's\n") in flags
    assert f"different precisions ({other} vs {ours})" in text  # beside static's comparison with dynamic
    record("dynamic", None)  # a run recorded before runs wrote their precision
    report = build_report(folder)
    assert report.tidy[report.tidy["point"] == "dynamic"]["precision"].isna().all()
    assert [f["flag"] for f in report.flags if "precision" in f["kind"]] == [
        "precision unrecorded for 1 of 2 pre-training runs (made before runs recorded it); the other runs trained "
        f"at {other}"]
    assert not any("different precisions" in flags for flags in report.comparisons["flags"].dropna())


def test_an_arm_whose_seeds_ran_at_two_precisions_is_named_with_its_counts():
    import pandas as pd

    from harness.report.report import precision_flags

    runs = pd.DataFrame([{"point": p, "run_dir": f"{p}{s}", "precision": precision}
                         for p, s, precision in [("a", 0, "32-true"), ("a", 1, "32-true"), ("b", 0, "bf16-mixed"),
                                                 ("b", 1, "32-true"), ("b", 2, "32-true"), ("b", 3, None),
                                                 ("none", 0, "16-mixed")]])
    [flag] = precision_flags(runs, ["a", "b"])  # the no-pre-training row ("none") is not compared
    assert flag["flag"] == ("pre-training runs at more than one precision (a 32-true; b 32-true (2 runs) and "
                            "bf16-mixed (1 run)): they round differently, so a difference between arms may be partly "
                            "the precision's; precision unrecorded for 1 of 6 pre-training runs (made before runs "
                            "recorded it)")
    # nothing recorded (the committed reports' runs): no flag, no value made up
    assert precision_flags(runs.assign(precision=None), ["a", "b"]) == []


def test_bad_input_is_one_line(results, tmp_path, capsys):
    with pytest.raises(ReportError, match="no such results folder"):
        find_studies(tmp_path / "nowhere")
    with pytest.raises(ReportError, match="holds no runs"):
        find_studies(tmp_path)
    with pytest.raises(ReportError, match="--study table9: not found .*allowed: tiny_report"):
        find_studies(results, "table9")
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such results folder" in capsys.readouterr().err
    assert main(["report", str(results), "--out", str(tmp_path / "cli")]) == 0
    assert f"wrote {tmp_path / 'cli' / 'tiny_report' / 'report.md'}" in capsys.readouterr().out


def test_paper_tables_ship_the_published_numbers():
    tables = load_paper_tables()
    assert tables["table1_masking"]["rows"]["dynamic"]["squad_v2"] == 78.7
    assert tables["table2_input_format"]["rows"]["doc_sentences"]["race"] == 65.6
    assert [row["ppl"] for row in tables["table3_batch_size"]["rows"].values()] == [3.99, 3.68, 3.77]


def test_the_notebook_executes_on_the_tests_results(results, monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("HARNESS_REPORT_RESULTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(Path(__file__).parents[1] / "notebooks" / "report.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(__file__).parents[1] / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = json.dumps(outputs)
    assert "tiny_report None - 4 tidy rows; 0 problems" in text and "| static |" in text and "image/png" in text


def test_quickstart_ends_with_the_report(results, capsys):
    """`harness quickstart` on a finished study runs nothing and writes the report (README's first command)."""
    grid = json.loads((results / "tiny_report" / STUDY_FILE).read_text())["grid"]
    assert main(["quickstart", "--grid", grid, "--results", str(results)]) == 0
    assert f"report: {results / 'tiny_report' / 'report' / 'report.md'}" in capsys.readouterr().out
    assert (results / "tiny_report" / "report" / "figures" / "scores.png").stat().st_size > 1000


def test_the_best_learning_rate_is_the_best_median_and_an_edge_is_flagged():
    import pandas as pd

    from harness.report.report import _task_cell

    rows = [{"point": "a", "task": "sst2", "pretrain_nuisance": "-", "finetune_lr": lr, "pretrain_seed": seed,
             "finetune_seed": 0, "score": score, "job_dir": f"trial-{lr}-{seed}"}
            for lr, seed, score in [(1e-3, 0, 50.0), (1e-3, 1, 90.0), (1e-3, 2, 51.0),   # median 51
                                    (2e-3, 0, 60.0), (2e-3, 1, 61.0), (2e-3, 2, 10.0),   # median 60
                                    (3e-3, 0, 55.0), (3e-3, 1, 56.0), (3e-3, 2, 57.0)]]  # median 56
    frame = pd.DataFrame(rows)
    cell = _task_cell("a", "sst2", frame, 3, (1e-3, 2e-3, 3e-3))
    assert (cell["best_lr"], cell["median"], cell["min"], cell["max"], cell["n"]) == (2e-3, 60.0, 10.0, 61.0, 3)
    assert cell["mean"] == pytest.approx(131 / 3) and cell["seed_dirs"][2] == ["trial-0.002-2"]
    assert not cell["lr_on_edge"]
    edge = _task_cell("a", "sst2", frame[frame["finetune_lr"] != 2e-3], 3, (1e-3, 2e-3, 3e-3))
    assert edge["best_lr"] == 3e-3 and edge["lr_on_edge"] and (edge["q1"], edge["q3"]) == (55.5, 56.5)
    # a grid of one lr has no edge
    assert not _task_cell("a", "sst2", frame[frame["finetune_lr"] == 1e-3], 3, (1e-3,))["lr_on_edge"]


def test_a_nan_score_never_enters_a_seed_value():
    """A constant STS-B prediction gives a NaN correlation in older records: the seed's other trials stand, a seed
    with no finite score is missing (it made a cell, and a verdict, NaN)."""
    import pandas as pd

    from harness.report.report import _task_cell

    frame = pd.DataFrame([{"pretrain_nuisance": "-", "finetune_lr": 1e-3, "pretrain_seed": seed, "finetune_seed": ft,
                           "score": score, "job_dir": "x"}
                          for seed, ft, score in [(0, 0, 10.0), (0, 1, float("nan")), (1, 0, float("nan")),
                                                  (2, 0, 20.0)]])
    cell = _task_cell("a", "stsb", frame, 3, (1e-3,))
    assert cell["seed_values"] == {0: 10.0, 2: 20.0} and cell["n"] == 2 and cell["mean"] == 15.0


def test_comparisons_at_unequal_tokens_or_an_edge_lr_are_flagged():
    from types import SimpleNamespace

    import pandas as pd

    from harness.report.report import _pair_flags

    tidy = pd.DataFrame([{"point": "a", "run_dir": "a0", "tokens_seen": 1_000_000},
                         {"point": "b", "run_dir": "b0", "tokens_seen": 800_000}])
    cells = pd.DataFrame([{"point": p, "column": "sst2", "lr_on_edge": p == "a"} for p in ("a", "b")])
    flags = [{"point": "a", "columns": "heldout", "short": "held-out set packed unlike a's input"},
             {"point": "b", "columns": "all", "short": "b's curve still falling"}]
    report = SimpleNamespace(tidy=tidy, cells=cells, flags=flags)
    assert _pair_flags(report, "a", "b", "sst2") == [
        "b's curve still falling", "not compute-matched (1,000,000 vs 800,000 tokens seen)",
        "best fine-tuning lr on the grid's edge"]
    assert _pair_flags(report, "a", "b", "heldout")[0] == "held-out set packed unlike a's input"


def test_a_curve_still_falling_is_flagged(tmp_path):
    """Held-out perplexity 110 at 900 tokens and 100 at 1000: over a tenth of the run (100 tokens) it fell 10% of
    its last value, so the run is still falling; 100.5 -> 100 is 0.5%, flat enough."""
    from harness.report.report import last_tenth_change

    for name, previous, expected in (("falling", 110.0, -0.1), ("flat", 100.5, -0.005)):
        logs = tmp_path / name / "logs" / "launch-0"
        logs.mkdir(parents=True)
        (logs / "metrics.csv").write_text("step,train/tokens_seen,common_val/ppl\n1,100,500\n9,900,"
                                          f"{previous}\n10,1000,100\n")
        assert last_tenth_change(tmp_path / name) == pytest.approx(expected)
    assert last_tenth_change(tmp_path / "missing") is None


def test_perplexity_across_tokenizers_is_flagged():
    """BERT's recipe (WordPiece) against RoBERTa's (BPE): a perplexity difference is per token of two different
    vocabularies, so the comparison says only bits per character compare."""
    import pandas as pd

    from harness.report.report import _vocabularies

    tidy = pd.DataFrame([{"point": "bert", "tokenizer.kind": "wordpiece", "tokenizer.vocab_size": 8192},
                         {"point": "roberta", "tokenizer.kind": "bpe", "tokenizer.vocab_size": 8192},
                         {"point": "roberta-2", "tokenizer.kind": "bpe", "tokenizer.vocab_size": 8192}])
    vocabularies = _vocabularies(tidy)
    assert vocabularies["bert"] != vocabularies["roberta"] == vocabularies["roberta-2"]


def test_a_tuned_pretraining_lr_gives_an_lr_by_batch_size_heat_map():
    """Table 3 with optim.peak_lr as a nuisance: the heat map holds the median held-out perplexity over seeds of
    each (lr, batch size); a study where the lr moves with the batch (zip only) has no heat map."""
    from types import SimpleNamespace

    import pandas as pd

    from harness.report.plots import lr_batch_figure

    rows = [{"run_dir": f"r{i}", "optim.peak_lr": lr, "optim.batch_size": batch, "common_val_ppl": ppl}
            for i, (lr, batch, ppl) in enumerate([(1e-3, 8, 10.0), (1e-3, 8, 14.0), (1e-3, 64, 9.0),
                                                  (2e-3, 8, 11.0), (2e-3, 64, 7.0), (2e-3, 64, 8.0)])]
    report = SimpleNamespace(tidy=pd.DataFrame(rows), study=SimpleNamespace(name="t3"))
    figure = lr_batch_figure(report)
    heat = figure.axes[0].images[0].get_array()
    assert heat.tolist() == [[12.0, 9.0], [11.0, 7.5]]  # rows: lr 1e-3, 2e-3; columns: batch 8, 64
    zipped = SimpleNamespace(tidy=pd.DataFrame(rows[::3]), study=SimpleNamespace(name="t3"))
    assert lr_batch_figure(zipped) is None


def test_the_papers_claims_are_judged_through_the_report(results):
    """The fixture's arms carry Table 1's labels: named table1_masking, its report tests the claim "dynamic is not
    worse than static" on SST-2 (the paper's column), lists SQuAD 2.0 and MNLI as not run, and gives no verdict from
    one pre-training run per arm."""
    import dataclasses

    from harness.report.report import claim_rows
    from harness.report.report_md import claims_markdown

    report = build_report(results / "tiny_report")
    report.study = dataclasses.replace(report.study, name="table1_masking")
    report.paper = load_paper_tables()["table1_masking"]
    every = claim_rows(report)
    rows = {row["column"]: row for row in every if row["claim"] == "dynamic_not_worse"}
    assert rows["sst2"]["kind"] == "noninferior"
    # the fixture has no static_redraw arm: the claims against Google's re-drawn copies are listed as not run
    redraw = {"dynamic_not_worse_redraw", "redraw_is_not_the_difference"}
    assert {row["verdict"] for row in every if row["claim"] in redraw} == {"not run"}
    assert rows["sst2"]["verdict"] == "inconclusive (one pre-training run per arm)"
    assert rows["sst2"]["paper_diff"] == pytest.approx(0.4) and rows["sst2"]["smallest_effect"] == 0.5
    assert rows["mnli"]["verdict"] == rows["squad_v2"]["verdict"] == "not run"
    assert rows["blimp"]["extension"] and rows["blimp"]["verdict"] == "not run"
    report.claims = __import__("pandas").DataFrame(claim_rows(report))
    text = claims_markdown(report)
    assert "| dynamic_not_worse | sst2 |" in text and "(not run at this scale: squad_v2, mnli" in text


def test_the_committed_reports_have_the_columns_harness_report_writes_today(results):
    """reports/<study>-<scale>/tidy.csv are rebuilt by `harness report`; a change of the tidy table's columns (a new
    config field, a new metric) must come with the reports regenerated. Axis and per-task dev columns depend on
    the study and its tasks, so they are left out of the comparison. A report whose run directories are gone gets
    a new column with empty cells, as `harness report` writes it for records made before the field (`precision`)."""
    import pandas as pd

    def shared(columns) -> list[str]:
        return [c for c in columns if not c.startswith(("axis.", "dev."))]

    today = shared(build_report(results / "tiny_report").tidy.columns)
    committed = sorted((Path(__file__).resolve().parents[1] / "reports").glob("*/tidy.csv"))
    assert committed, "no committed report found under reports/"
    for path in committed:
        assert shared(pd.read_csv(path, nrows=0).columns) == today, f"{path}: regenerate with harness report"


def test_a_pretraining_lr_search_names_each_groups_best_rate_and_an_edge(results, shared_data, tmp_path):
    """A grid whose arms differ only in optim.peak_lr within each batch size (experiments/table3_lr_search.yaml's
    shape), swept for real: `harness report` groups the arms by everything but the lr, marks each group's lowest
    held-out bpc (read here straight from the run directories) as its choice, and says when it lies on the edge of
    the group's rates."""
    grid = {"name": "tiny_search", "base": {"preset": "tiny", "recipe": "roberta",
                                            "set": {**TINY, "budget.max_steps": 2, "budget.val_every_steps": 2}},
            "zip": {"optim.batch_size": [8, 8, 8, 4], "optim.peak_lr": [1e-4, 1e-3, 1e-2, 1e-3]},
            "seeds": {"pretrain": [0], "finetune": [0]}, "tasks": {}}
    (tmp_path / "tiny_search.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    result = sweep(tmp_path / "tiny_search.yaml", results=tmp_path / "results", data_dir=shared_data,
                   out=io.StringIO())
    assert result.exit_status == 0, result.failures
    folder = tmp_path / "results" / "tiny_search"
    report = build_report(folder)
    bpc = {j.run.point.label: json.loads((report.plan.path(j) / "final_metrics.json").read_text())["common_val_bpc"]
           for j in report.plan.pretrain}
    rows = {(row["group"], row["lr"]): row for row in report.search}
    # batch 4 ran at one rate only: not a search, so not a group
    assert sorted(rows) == [("batch_size8", 1e-4), ("batch_size8", 1e-3), ("batch_size8", 1e-2)]
    rates = (1e-4, 1e-3, 1e-2)
    values = {lr: bpc[f"batch_size8-peak_lr{lr:g}"] for lr in rates}
    best = min(values, key=values.get)
    assert [lr for lr in rates if rows[("batch_size8", lr)]["best"]] == [best]
    assert rows[("batch_size8", best)]["bpc"] == pytest.approx(values[best])
    assert rows[("batch_size8", best)]["edge"] == (best != 1e-3)
    text = report_markdown(report, [], tmp_path, None)  # report.md's text, without drawing the figures
    assert "## Pre-training learning-rate search" in text and "Chosen: batch_size8 -> " in text
    # a flag every arm shares is one line, not one per arm
    assert text.count("updates (fewer than 1000)") == 1 and "- every arm: 2 updates (fewer than 1000)" in text
    # a study whose arms do not differ in their lr alone has no search section
    assert build_report(results / "tiny_report").search == []


def test_a_grid_swept_from_another_checkout_is_named_as_this_checkouts_when_it_is_the_same_file(tmp_path,
                                                                                                 monkeypatch):
    """A sweep run from a second checkout records that checkout's grid path; the report names it as
    experiments/<file> when the working directory holds the same bytes there, else by its recorded path."""
    from types import SimpleNamespace

    from harness.report.report_md import _grid_path

    other = tmp_path / "worktree" / "experiments"
    other.mkdir(parents=True)
    (other / "t1.yaml").write_text("name: t1\n")
    here = tmp_path / "checkout"
    (here / "experiments").mkdir(parents=True)
    (here / "experiments" / "t1.yaml").write_text("name: t1\n")
    monkeypatch.chdir(here)
    report = SimpleNamespace(source={"grid": str(other / "t1.yaml")})
    assert _grid_path(report) == "experiments/t1.yaml"
    (here / "experiments" / "t1.yaml").write_text("name: t1\nchanged: true\n")
    assert _grid_path(report) == (other / "t1.yaml").as_posix()
    assert _grid_path(SimpleNamespace(source={"grid": str(here / "experiments" / "t1.yaml")})) == "experiments/t1.yaml"
