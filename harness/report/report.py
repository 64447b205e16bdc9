"""`harness report`: a study's tables rebuilt from its run directories alone (never from a sweep's logs, never
appended to an earlier report), so it can be re-run at any time, also on a half-finished sweep.

- `find_studies(results, study)`: the study folders under a results root (or the one given), each with the grid
  that made it: `study.json` (written by `harness sweep`) or, for older folders, `experiments/<name>.yaml` from the
  folder's name `<name>-<scale>`;
- `build_report(folder)`: re-expands the grid into its plan and reads every finished job into a tidy frame (one
  row per pre-training run x task x fine-tuning lr x seed, with every config field and metric), the paper-layout
  cells (one value per pre-training seed, the unit of replication: its fine-tuning seeds averaged at the point's lr;
  their mean, range and n), the signal test against the no-pre-training row and the trivial predictor, the paper's
  claims with their verdicts (harness.report.claims), the flags, and each arm's difference from the reference as
  description. A corrupt or partial file, a run directory that is not one of the grid's runs: one line each in
  `problems`, and the rest is still reported. docs/statistics.md says how the numbers are made.
Rendering lives in harness.report.report_md, figures in harness.report.plots.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.config import HarnessError, to_dict
from harness.report.claims import HELDOUT_COLUMN, decide, load_claims, p_values, smallest_effect, verdict_text
from harness.report.evidence import compare_cells
from harness.report.multibootstrap import one_sample_t_above
from harness.report.stats import same_sign, spread
from harness.runs import read_final_metrics
from harness.study.grid import Study, load_grid, value_label
from harness.study.jobs import STUDY_FILE, Plan, expand
from harness.study.results import best_by_median

PAPER_TABLES = Path(__file__).with_name("paper_tables.yaml")
PRETRAIN_METRICS = ("steps", "tokens_seen", "common_val_ppl", "common_val_bpc", "val_mlm_loss", "val_ppl",
                    "train_tokens_per_update", "train_padded_tokens_per_update", "train_sequences_per_update",
                    "corpus_digest", "tokenizer_digest", "precision")
# The common held-out set is scored the same way for every tokenizer and input format: the columns every table has.
HELDOUT = {"ppl": "common_val_ppl", "bpc": "common_val_bpc"}
LOWER_IS_BETTER = {"ppl", "bpc"}
# Task kinds with a trivial predictor to print beside the column (harness.downstream.baselines).
TRIVIAL_KINDS = ("classification", "regression", "qa", "ner")
# Arms that pack differently see slightly different real tokens at the same budget; beyond 5% the flag is raised.
COMPUTE_TOLERANCE = 0.05


class ReportError(HarnessError):
    """Bad input to `harness report`: one line naming the path or name and what is allowed."""


@dataclass
class StudyReport:
    study: Study
    plan: Plan
    folder: Path
    tidy: Any  # pandas DataFrame: one row per (pre-training run, task, lr, fine-tuning seed)
    cells: Any  # one row per (point, column): median, spread, n, expected, best lr, lr on the grid's edge
    comparisons: Any  # one row per (point other than the reference, column)
    reference: str
    paper: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    trivial: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> the trivial predictor's dev score
    signal: Any = None  # one row per column: does any arm beat the no-pre-training row beyond the seeds' noise?
    anchors: dict[str, dict[str, float]] = field(default_factory=dict)  # column -> published model -> score
    flags: list[dict[str, Any]] = field(default_factory=list)  # per arm: what qualifies its comparisons
    claims: Any = None  # one row per (paper claim, column): difference, interval, verdict (harness.report.claims)
    search: list[dict[str, Any]] = field(default_factory=list)  # a pre-training lr search: one row per (group, lr)

    @property
    def baseline(self) -> str | None:
        """The no-pre-training point's label, when the grid has one."""
        return next((p.label for p in self.study.points if p.baseline), None)

    @property
    def arms(self) -> list[str]:
        """The points that are compared (every point but the baseline)."""
        return [p.label for p in self.study.points if not p.baseline]

    @property
    def columns(self) -> list[str]:
        return [*self.study.tasks, *HELDOUT]


def find_studies(results: str | Path, study: str | None = None) -> list[Path]:
    """The study folders to report: `results` itself if it holds runs/, else its sub-folders that do (only the
    one named `study`, or starting with `study-`, when given). Raises ReportError for nothing to report."""
    results = Path(results)
    if not results.is_dir():
        raise ReportError(f"{results}: no such results folder")
    folders = [results] if (results / "runs").is_dir() else sorted(p for p in results.iterdir()
                                                                   if (p / "runs").is_dir())
    if study:
        folders = [p for p in folders if p.name == study or p.name.startswith(f"{study}-")]
        if not folders:
            raise ReportError(f"--study {study}: not found in {results}; allowed: "
                              f"{', '.join(p.name for p in sorted(results.iterdir()) if (p / 'runs').is_dir())}")
    if not folders:
        raise ReportError(f"{results}: holds no runs (expected runs/ in it or in its sub-folders)")
    return folders


def study_source(folder: Path) -> dict[str, Any]:
    """The grid file, scale, overrides and tasks that made `folder`."""
    record = folder / STUDY_FILE
    if record.is_file():
        return json.loads(record.read_text(encoding="utf-8"))
    # Folders made before sweeps wrote study.json: <name>-<scale> from experiments/<name>.yaml.
    name, _, scale = folder.name.rpartition("-")
    candidates = [(name, scale)] if name else []
    for root in (Path("experiments"), Path(__file__).resolve().parents[2] / "experiments"):
        for stem, grid_scale in [*candidates, (folder.name, None)]:
            if (root / f"{stem}.yaml").is_file():
                return {"grid": str(root / f"{stem}.yaml"), "scale": grid_scale, "overrides": [], "tasks": None,
                        "data_dir": None}
    raise ReportError(f"{folder}: no {STUDY_FILE} and no experiments/<name>.yaml for it; re-run its sweep")


def build_report(folder: str | Path) -> StudyReport:
    """Everything a study's report shows, rebuilt from `folder`'s run directories (see the module docstring)."""
    import pandas as pd

    folder = Path(folder)
    source = study_source(folder)
    data_dir = source.get("data_dir") or os.environ.get("HARNESS_DATA_DIR")
    study = load_grid(source["grid"], source.get("scale"), source.get("overrides"), source.get("tasks"),
                      data_dir, check_data=False)
    plan = expand(study, folder.parent)
    problems: list[str] = []
    tidy = pd.DataFrame(_tidy_rows(plan, problems))
    problems += _strays(plan, folder) + _data_changes(tidy)
    paper = load_paper_tables().get(study.name)
    reference = _reference(study, paper)
    cells = pd.DataFrame(_cells(plan, tidy, study))
    tidy = tidy.drop(columns="job_dir", errors="ignore")  # the cells hold each seed's job directories
    report = StudyReport(study, plan, folder, tidy, cells, None, reference, paper, problems, source)
    report.trivial = trivial_scores(study, data_dir, problems)
    report.anchors = published_anchors(study, data_dir, problems)
    report.flags = run_flags(report)
    report.comparisons = pd.DataFrame(_comparisons(report))
    report.signal = pd.DataFrame(_signal(report))
    report.claims = pd.DataFrame(claim_rows(report))
    report.search = lr_search_rows(report)
    return report


SEARCHED = "optim.peak_lr"


def lr_search_rows(report: StudyReport) -> list[dict[str, Any]]:
    """A search over the pre-training peak lr (experiments/table3_lr_search.yaml): arms that differ only in
    `optim.peak_lr` form a group; per group and lr, the held-out bits per character (mean over pre-training seeds),
    the best (lowest) of the group, and whether the best is the group's smallest or largest lr (then the search
    should be widened: the optimum may lie outside it). Empty when no two arms differ only in their lr."""
    groups: dict[str, list[Any]] = {}
    for point in report.study.points:
        if point.baseline or SEARCHED not in point.values:
            continue
        rest = {k: v for k, v in point.values.items() if k != SEARCHED}
        key = yaml.safe_dump(rest, sort_keys=True)
        groups.setdefault(key, []).append(point)
    cells = report.cells.set_index(["point", "column"]) if len(report.cells) else None
    rows = []
    for points in groups.values():
        rates = sorted({float(p.values[SEARCHED]) for p in points})
        if len(rates) < 2:
            continue
        cut = value_label(SEARCHED, points[0].values[SEARCHED])
        group = "-".join(part for part in points[0].label.split("-") if part != cut) or "all"
        found = []
        for point in points:
            cell = cells.loc[(point.label, "bpc")] if cells is not None else None
            bpc = cell["mean"] if cell is not None and cell["n"] else None
            found.append({"group": group, "point": point.label, "lr": float(point.values[SEARCHED]),
                          "bpc": None if bpc is None else float(bpc), "n": 0 if cell is None else int(cell["n"]),
                          "expected": 0 if cell is None else int(cell["expected"]), "best": False, "edge": False})
        done = [r for r in found if r["bpc"] is not None]
        if done:
            best = min(done, key=lambda r: r["bpc"])
            best["best"] = True
            best["edge"] = best["lr"] in (rates[0], rates[-1])
        rows += sorted(found, key=lambda r: r["lr"])
    return rows


def trivial_scores(study: Study, data_dir: str | Path | None, problems: list[str]) -> dict[str, dict[str, Any]]:
    """Each fine-tuned task's trivial predictor (majority class, or the best constant), fitted on the training
    examples the trials train on and scored on dev. A task whose data is not here is one line in `problems`."""
    from harness.downstream.baselines import trivial_scores as score_task
    from harness.tasks import get_task

    scores = {}
    for name, plan in study.tasks.items():
        spec = get_task(name)
        if spec.kind not in TRIVIAL_KINDS:
            continue
        try:
            scores[name] = score_task(spec, data_dir, train_subsample=plan.settings.train_subsample,
                                      subsample_seed=plan.settings.subsample_seed)
        except HarnessError as err:
            problems.append(f"task {name}: no trivial predictor ({str(err).splitlines()[0]})")
    return scores


def published_anchors(study: Study, data_dir: str | Path | None, problems: list[str]) -> dict[str, dict[str, float]]:
    """Published scores to print beside a column: BLiMP's overall accuracy of the authors' models and humans."""
    if "blimp" not in study.tasks:
        return {}
    from harness.downstream.blimp import published_overall

    try:
        return {"blimp": published_overall(data_dir)}
    except HarnessError as err:
        problems.append(f"task blimp: no published accuracies ({str(err).splitlines()[0]})")
        return {}


def _signal(report: StudyReport) -> list[dict[str, Any]]:
    """Per column: the trivial score, the no-pre-training row's and the best arm's means, and whether pre-training
    shows: some arm beats the no-pre-training row (the lower end of the 95% interval of the paired difference,
    harness.report.evidence.compare_cells, is above zero on the better side) and, for a task with a trivial predictor,
    some arm's seed values are above the trivial score (one-sided t at 2.5%). A column where a test could be made
    and none passed carries no pre-training signal at this scale; with one pre-training seed it cannot be told."""
    if not len(report.cells) or (report.baseline is None and not report.trivial):
        return []
    cells = report.cells.set_index(["point", "column"])
    rows = []
    for column in report.columns:
        sign = -1.0 if column in LOWER_IS_BETTER else 1.0
        base = cells.loc[(report.baseline, column)] if report.baseline else None
        trivial = report.trivial.get(column, {}).get("score")
        beats, above, best, tested = [], [], None, False
        for point in report.arms:
            ours = cells.loc[(point, column)]
            if not ours["n"]:
                continue
            best = ours["mean"] if best is None or sign * (ours["mean"] - best) > 0 else best
            if base is not None and base["n"]:
                comparison = compare_cells(ours, base, column, oriented=True, metrics=_metrics(column))
                if comparison is not None and comparison.judged:
                    tested = True
                    if comparison.low > 0:
                        beats.append(point)
            if trivial is not None and ours["n"] >= 2:
                tested = True
                if one_sample_t_above(list(ours["seed_values"].values()), trivial):
                    above.append(point)
        passes = (base is None or bool(beats)) and (trivial is None or bool(above))
        testable = (base is not None and bool(base["n"])) or trivial is not None
        verdict_text_ = ("signal" if tested and passes else "no signal" if tested else
                         "missing" if best is None else "cannot tell" if testable else "not tested")
        rows.append({"column": column, "trivial": trivial,
                     "no_pretraining": base["mean"] if base is not None and base["n"] else None, "best_arm": best,
                     "arms_beating_baseline": ",".join(beats), "arms_above_trivial": ",".join(above),
                     "signal": verdict_text_})
    return rows


def claim_rows(report: StudyReport) -> list[dict[str, Any]]:
    """The paper's claims for this study (harness.report.claims), one row per (claim, column): the oriented
    difference with its 95% interval, the test's p-values, the Holm-corrected verdict over the study's family, the
    flags that qualify it."""
    claims = load_claims()
    listed = claims.studies.get(report.study.name, ())
    if not listed or not len(report.cells):
        return []
    cells = report.cells.set_index(["point", "column"])
    quiet = {row["column"] for row in (report.signal.to_dict("records") if report.signal is not None else [])
             if row["signal"] == "no signal"}
    rows, family = [], []
    for claim in listed:
        arm, reference = _claim_point(report, claim.arm), _claim_point(report, claim.reference)
        for column in claim.all_columns:
            ours_column = "bpc" if column == HELDOUT_COLUMN else column
            row = {"claim": claim.id, "text": claim.says, "kind": claim.kind, "arm": arm, "reference": reference,
                   "column": column, "extension": column not in claim.columns, "diff": None, "low": None,
                   "high": None, "smallest_effect": None, "seed_diffs": [], "seeds": 0, "examples": None,
                   "method": "", "p_support": None, "flags": "",
                   "paper_diff": _paper_claim_diff(report, arm, reference, column)}
            if arm is None or reference is None or ours_column not in report.columns:
                rows.append({**row, "verdict": "not run"})
                continue
            mine, theirs = cells.loc[(arm, ours_column)], cells.loc[(reference, ours_column)]
            if not mine["n"] or not theirs["n"]:
                rows.append({**row, "verdict": "missing"})
                continue
            comparison = compare_cells(mine, theirs, ours_column, oriented=True, metrics=_metrics(ours_column))
            delta = smallest_effect(claims.smallest_effects, column, _metric_name(report, column),
                                    (theirs["mean"], cells.loc[(reference, "ppl")]["mean"])
                                    if column == HELDOUT_COLUMN else None)
            row.update({"smallest_effect": delta, "flags": "; ".join(_pair_flags(report, arm, reference, column))})
            if comparison is None:
                rows.append({**row, "verdict": "missing"})
                continue
            row.update({"diff": comparison.diff, "low": comparison.low, "high": comparison.high,
                        "seed_diffs": list(comparison.seed_diffs), "seeds": comparison.seeds,
                        "examples": comparison.examples, "method": comparison.method,
                        "boot_low": comparison.boot_low, "boot_high": comparison.boot_high,
                        "p_not_above": comparison.p_not_above, "t_low": comparison.t_low,
                        "t_high": comparison.t_high})
            if ours_column in quiet:
                rows.append({**row, "verdict": "no signal at this scale"})
            elif not comparison.judged:
                rows.append({**row, "verdict": "inconclusive (one pre-training run per arm)"})
            else:
                tests = p_values(comparison, claim.kind, delta)
                rows.append({**row, "p_support": tests["support"], "verdict": None})
                family.append((len(rows) - 1, tests))
    for (index, _), decided in zip(family, decide([tests for _, tests in family]), strict=True):
        rows[index]["verdict"] = verdict_text(decided, rows[index]["seeds"])
    for row in rows:
        row["family"] = len(family)
    return rows


def _claim_point(report: StudyReport, key: str | int | tuple[str, ...]) -> str | None:
    """A claim's arm or reference: a point label, (position-matched studies) its position among the arms, or
    candidate labels, of which the first the study ran (a scale may run its own version of an arm)."""
    if isinstance(key, int):
        return report.arms[key] if 0 <= key < len(report.arms) else None
    if isinstance(key, tuple):
        return next((label for label in key if label in report.arms), None)
    return key if key in report.arms else None


def _paper_claim_diff(report: StudyReport, arm: str | None, reference: str | None, column: str) -> float | None:
    """The paper's difference on the claim's column, oriented as the claim (lower ppl is better), rounded to the
    published precision (Table 3's 3.77 - 3.68 is 0.09, not 0.0899999...)."""
    if arm is None or reference is None:
        return None
    mine, theirs = paper_row(report, arm), paper_row(report, reference)
    key = "ppl" if column == HELDOUT_COLUMN else column
    if not mine or not theirs or key not in mine or key not in theirs:
        return None
    return published_difference(mine[key], theirs[key], lower_is_better=key in LOWER_IS_BETTER)


def published_difference(ours: float, reference: float, lower_is_better: bool = False) -> float:
    """A difference of two published values, at their printed precision (two decimals at most): floating-point
    residue (7.1e-15 for a tie) never becomes an ordering."""
    diff = round(float(ours) - float(reference), 6)
    return -diff if lower_is_better and diff else diff


def _metrics(column: str) -> tuple[str, ...] | None:
    """The official metrics a fine-tuned task's score is the mean of (None for zero-shot and held-out columns and
    the task kinds whose per-example outputs are not scored here: QA and NER)."""
    from harness.tasks import get_task

    if column in HELDOUT or column == "blimp":
        return None
    spec = get_task(column)
    if spec.kind not in ("classification", "regression"):
        return None
    return tuple(spec.metrics) if spec.selection_metric == "score" else (spec.selection_metric,)


def _metric_name(report: StudyReport, column: str) -> str | None:
    from harness.tasks import get_task

    if column == HELDOUT_COLUMN or column == "blimp":
        return None
    return get_task(column).selection_metric


def load_paper_tables() -> dict[str, Any]:
    """The paper's Tables 1-3 (package data), keyed by study name."""
    return yaml.safe_load(PAPER_TABLES.read_text(encoding="utf-8"))


def _tidy_rows(plan: Plan, problems: list[str]) -> list[dict[str, Any]]:
    rows = []
    for job in plan.pretrain:
        base = _pretrain_row(plan, job, problems)
        if base is None:
            continue
        added = 0
        for evaluation in (e for e in plan.evaluate if e.pretrain is job):
            final = _read(plan.path(evaluation), problems, required=("score",))
            if final is not None:
                rows.append({**base, "task": evaluation.task.name, "metric": _metric(evaluation.task.name),
                             "finetune_lr": None, "finetune_seed": None, "finetune_precision": None,
                             "score": final["score"], "lr_grid": None,
                             "job_dir": str(plan.path(evaluation)),
                             **{f"dev.{k}": v for k, v in _zero_shot_figures(final).items()}})
                added += 1
        trials = [t for t in plan.finetune if t.pretrain is job]
        for trial in trials:
            final = _read(plan.path(trial), problems, required=("score",))
            if final is not None:
                rows.append({**base, "task": trial.task.name, "metric": _metric(trial.task.name),
                             "finetune_lr": trial.lr, "finetune_seed": trial.seed,
                             "finetune_precision": final.get("precision"), "score": final["score"],
                             "job_dir": str(plan.path(trial)),
                             "lr_grid": ",".join(map(str, trial.settings.learning_rates)),
                             **{f"dev.{k}": v for k, v in final.get("dev", {}).items() if k != "score"}})
                added += 1
        if not added:  # a run without fine-tuning results still carries its held-out figures
            rows.append({**base, "task": None, "metric": None, "finetune_lr": None, "finetune_seed": None,
                         "finetune_precision": None, "score": None, "lr_grid": None})
    return rows


def _pretrain_row(plan: Plan, job: Any, problems: list[str]) -> dict[str, Any] | None:
    final = _read(job.path, problems, required=("common_val_bpc",))
    if final is None:
        return None
    run = job.run
    return {"study": plan.study.name, "point": run.point.label,
            **{f"axis.{k}": _scalar(v) for k, v in run.point.values.items()},
            "pretrain_nuisance": ",".join(value_label(k, v) for k, v in run.nuisance.items()) or "-",
            "pretrain_seed": run.seed, "run_id": final.get("run_id"), "run_dir": str(job.path),
            **{k: final.get(k) for k in PRETRAIN_METRICS}, **_flat(to_dict(run.config))}


def _zero_shot_figures(final: dict[str, Any]) -> dict[str, Any]:
    """A zero-shot record's breakdown for the tidy table: BLiMP's accuracy per field and its ties."""
    figures = {f"field.{name}": value for name, value in (final.get("by_field") or {}).items()}
    return {**figures, **{key: final[key] for key in ("ties", "pairs") if key in final}}


def _read(path: Path | None, problems: list[str], required: tuple[str, ...]) -> dict[str, Any] | None:
    """A job's final metrics, or None: not done (missing, not a problem) or unreadable (listed in `problems`)."""
    if path is None or not (path / "final_metrics.json").is_file():
        return None
    try:
        final = read_final_metrics(path)
    except (OSError, ValueError) as err:
        problems.append(f"{path / 'final_metrics.json'}: not readable JSON ({type(err).__name__}); skipped")
        return None
    lacking = [k for k in required if not isinstance(final, dict) or k not in final]
    if lacking:
        problems.append(f"{path / 'final_metrics.json'}: partial, no '{lacking[0]}'; skipped")
        return None
    return final


# What must be equal between runs whose settings are: the digest, and the settings that decide it.
DATA_DIGESTS = {"corpus_digest": ("corpus.",), "tokenizer_digest": ("corpus.", "tokenizer.")}


def _data_changes(tidy: Any) -> list[str]:
    """Runs whose corpus (and tokenizer) settings are equal but whose documents or vocabularies were not: the
    corpus was edited between runs, or a tokenizer was retrained differently in another cache (another tokenizers
    release; before TOKENIZER_VERSION 4, WordPiece's ties in hash-map order, tokenizers#1794). One
    line per such group, for their comparison is not like for like. Runs recorded before the digests existed are
    not judged."""
    if not len(tidy):
        return []
    runs = tidy.drop_duplicates("run_dir")
    lines = []
    for column, prefixes in DATA_DIGESTS.items():
        if column not in runs:
            continue
        known = runs.dropna(subset=[column])
        settings = [c for c in known.columns if c.startswith(prefixes)]
        for _, group in known.groupby(settings, dropna=False) if settings and len(known) else []:
            digests = group.groupby(column)["run_dir"].apply(lambda dirs: ", ".join(Path(d).name for d in dirs))
            if len(digests) > 1:
                listed = "; ".join(f"{digest}: {dirs}" for digest, dirs in digests.items())
                what = "documents" if column == "corpus_digest" else "vocabularies"
                lines.append(f"runs with the same {' and '.join(p.rstrip('.') for p in prefixes)} settings trained on "
                             f"different {what} ({column} {listed}): their comparison is not like for like")
    return lines


def _strays(plan: Plan, folder: Path) -> list[str]:
    """Run directories under runs/ that are none of the grid's runs, with the first field that differs from the
    planned run of the same name (a config that disagrees with the table's fixed fields)."""
    planned = {job.path.resolve(): job for job in plan.pretrain}
    by_name = {job.run.config.name: job for job in plan.pretrain}
    lines = []
    for path in sorted((folder / "runs").iterdir()):
        if not path.is_dir() or path.resolve() in planned:
            continue
        try:
            config = _flat(yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {})
        except (OSError, yaml.YAMLError):
            lines.append(f"{path}: not a run of this grid (no readable config.yaml); left out")
            continue
        twin = by_name.get(path.name.split("__")[0])
        ours = _flat(to_dict(twin.run.config)) if twin else {}
        diff = next((k for k in sorted(set(config) | set(ours)) if k != "name" and config.get(k) != ours.get(k)),
                    None)
        detail = f"{diff} is {config.get(diff)!r}, the grid holds {ours.get(diff)!r}" if twin and diff else \
            "no run of that name in the grid"
        lines.append(f"{path}: not a run of this grid ({detail}); left out")
    return lines


def _cells(plan: Plan, tidy: Any, study: Study) -> list[dict[str, Any]]:
    """Per (point, column): each pre-training seed's value (the mean over its fine-tuning seeds at the point's best
    learning rate, or its one zero-shot or held-out figure), their mean, median and range, n of the expected
    pre-training seeds, and the job directories behind each seed (the per-example outputs)."""
    rows = []
    for point in study.points:
        runs = [r for r in study.runs if r.point.label == point.label]
        expected = len({r.seed for r in runs})
        mine = tidy[tidy["point"] == point.label] if len(tidy) else tidy
        for task, plan_task in study.tasks.items():
            scores = mine[mine["task"] == task] if len(mine) else mine
            if plan_task.zero_shot:
                rows.append(_zero_shot_cell(point.label, task, scores, expected))
            else:
                rows.append(_task_cell(point.label, task, scores, expected, plan_task.settings.learning_rates))
        pretrain = mine.drop_duplicates("run_dir") if len(mine) else mine
        for column, metric in HELDOUT.items():
            rows.append(_heldout_cell(point.label, column, pretrain, metric, expected))
    return rows


def _task_cell(point: str, task: str, scores: Any, expected: int, grid: tuple[float, ...]) -> dict[str, Any]:
    if not len(scores):
        return _cell(point, task, None, expected, lr_grid=len(grid))
    # Nuisance = (pre-training nuisance, fine-tuning lr): the best median over seeds is reported (the paper's protocol).
    nuisance, lr = best_by_median(scores, ["pretrain_nuisance", "finetune_lr"])
    best = scores[(scores["pretrain_nuisance"] == nuisance) & (scores["finetune_lr"] == lr)]
    edge = len(grid) > 1 and lr in (min(grid), max(grid))
    return _cell(point, task, best, expected, lr=lr, edge=edge, lr_grid=len(grid))


def _zero_shot_cell(point: str, task: str, scores: Any, expected: int) -> dict[str, Any]:
    if not len(scores):
        return _cell(point, task, None, expected)
    return _cell(point, task, scores[scores["pretrain_nuisance"] == best_by_median(scores, "pretrain_nuisance")],
                 expected)


def _heldout_cell(point: str, column: str, runs: Any, metric: str, expected: int) -> dict[str, Any]:
    if not len(runs) or metric not in runs or runs[metric].isna().all():
        return _cell(point, column, None, expected)
    # A tuned pre-training nuisance (Table 3's lr): the value with the best (lowest) median held-out figure.
    frame = runs.assign(score=-runs[metric].astype(float))
    best = runs[runs["pretrain_nuisance"] == best_by_median(frame, "pretrain_nuisance")]
    return _cell(point, column, best.assign(score=best[metric], job_dir=best["run_dir"]), expected)


def _cell(point: str, column: str, rows: Any, expected: int, lr: float | None = None, edge: bool = False,
          lr_grid: int = 0) -> dict[str, Any]:
    """`rows`: the cell's jobs (score, pretrain_seed, finetune_seed, job_dir), or None for a missing cell."""
    seed_values: dict[Any, float] = {}
    seed_dirs: dict[Any, list[str]] = {}
    values, seeds = [], []
    for record in ([] if rows is None else rows.to_dict("records")):
        value = record["score"]
        values.append(float(value) if value is not None else float("nan"))
        seeds.append((record["pretrain_seed"], record.get("finetune_seed")))
        if value is not None and np.isfinite(value):  # a NaN score (no association) never enters a mean
            seed_dirs.setdefault(record["pretrain_seed"], []).append(record.get("job_dir"))
    for seed, dirs in seed_dirs.items():
        scores = [float(v) for (s, _), v in zip(seeds, values, strict=True) if s == seed and np.isfinite(v)]
        seed_values[seed] = float(np.mean(scores))
    summary = spread(list(seed_values.values()))
    return {"point": point, "column": column, "mean": float(np.mean(list(seed_values.values()))) if summary else None,
            "median": summary.median if summary else None, "min": summary.low if summary else None,
            "max": summary.high if summary else None, "q1": summary.q1 if summary else None,
            "q3": summary.q3 if summary else None, "n": summary.n if summary else 0, "expected": expected,
            "best_lr": lr, "lr_on_edge": edge, "lr_grid": lr_grid, "values": values, "seeds": seeds,
            "seed_values": seed_values, "seed_dirs": {k: [d for d in v if d] for k, v in seed_dirs.items()}}


def _reference(study: Study, paper: dict[str, Any] | None) -> str:
    labels = [p.label for p in study.points if not p.baseline]
    if paper and paper.get("match") == "position":
        return labels[int(paper["reference"])]
    if paper and paper.get("reference") in labels:
        return paper["reference"]
    return labels[0]


def paper_row(report: StudyReport, point: str) -> dict[str, float] | None:
    """The paper's values for one of our points (None where the study or the point has no published row)."""
    if not report.paper or point not in report.arms:
        return None
    rows = report.paper["rows"]
    if report.paper.get("match") == "position":
        index = report.arms.index(point)
        return list(rows.values())[index] if index < len(rows) else None
    return rows.get(point)


def _comparisons(report: StudyReport) -> list[dict[str, Any]]:
    """Each arm against the reference, per column, as description (the verdicts are the claims'): our mean
    difference with its 95% interval (harness.report.evidence.compare_cells), the paper's difference, whether they
    point the same way, and the flags that qualify the comparison."""
    if not len(report.cells):
        return []
    cells = report.cells.set_index(["point", "column"])
    rows = []
    for point in (label for label in report.arms if label != report.reference):
        for column in report.columns:
            ours, ref = cells.loc[(point, column)], cells.loc[(report.reference, column)]
            comparison = compare_cells(ours, ref, column, metrics=_metrics(column)) if ours["n"] and ref["n"] \
                else None
            if comparison is None:
                rows.append({"point": point, "column": column, "diff": None, "seeds": 0})
                continue
            mine, theirs = paper_row(report, point), paper_row(report, report.reference)
            paper_diff = published_difference(mine[column], theirs[column]) \
                if mine and theirs and column in mine and column in theirs else None
            rows.append({"point": point, "column": column, "diff": comparison.diff, "ci_low": comparison.low,
                         "ci_high": comparison.high, "judged": comparison.judged, "seeds": comparison.seeds,
                         "examples": comparison.examples, "method": comparison.method,
                         "p_not_above": comparison.p_not_above, "paper_diff": paper_diff,
                         "agree": same_sign(comparison.diff, paper_diff),
                         "flags": "; ".join(_pair_flags(report, point, report.reference, column))})
    return rows


# Flags a reader needs beside a comparison (harness.report.report_md prints them).
FALLING = 0.01  # a held-out perplexity that fell more than 1% over the last tenth of training is still falling
MIN_UPDATES = 1000  # fewer updates than this: warm-up and the first phase of training dominate what a run learned
COMMON_PACKING = "doc_sentences"  # harness.data.heldout packs the common held-out set this way, without NSP


def run_flags(report: StudyReport) -> list[dict[str, Any]]:
    """Per arm (not the no-pre-training row): its held-out curve still falling at the end (the slope of its last
    two evaluations, as the relative change over a tenth of the run's tokens, median over seeds), fewer than
    MIN_UPDATES updates, a training input packed unlike the common held-out set; and, for the study, the arms'
    pre-training runs at more than one recorded precision (`precision_flags`)."""
    runs = report.tidy.drop_duplicates("run_dir") if len(report.tidy) else report.tidy
    rows = []
    for point in report.arms:
        mine = runs[runs["point"] == point] if len(runs) else runs
        if not len(mine):
            continue
        slopes = [s for s in (last_tenth_change(Path(d)) for d in mine["run_dir"]) if s is not None]
        if slopes and -float(np.median(slopes)) > FALLING:
            detail = (f"held-out perplexity still falling at the end ({100 * float(np.median(slopes)):+.1f}% over "
                      "the last tenth of training, median over seeds): more updates could reorder it")
            rows.append({"point": point, "kind": "still falling", "columns": "all",
                         "short": f"{point}'s curve still falling", "detail": detail, "flag": f"{point}: {detail}"})
        steps = mine["steps"].dropna() if "steps" in mine else []
        if len(steps) and float(np.median(steps)) < MIN_UPDATES:
            detail = f"{int(np.median(steps))} updates (fewer than {MIN_UPDATES})"
            rows.append({"point": point, "kind": "few updates", "columns": "all",
                         "short": f"{point}: {int(np.median(steps))} updates", "detail": detail,
                         "flag": f"{point}: {detail}"})
        packing = mine["data.packing"].iloc[0] if "data.packing" in mine else None
        nsp = bool(mine["data.nsp"].iloc[0]) if "data.nsp" in mine else False
        if packing and (packing != COMMON_PACKING or nsp):
            detail = (f"trains on {packing}{' with NSP' if nsp else ''}; the common held-out set is packed as "
                      f"{COMMON_PACKING} without NSP")
            rows.append({"point": point, "kind": "held-out packing", "columns": "heldout",
                         "short": f"held-out set packed unlike {point}'s input", "detail": detail,
                         "flag": f"{point}: {detail}"})
    return rows + precision_flags(runs, report.arms)


def precision_flags(runs: Any, arms: list[str]) -> list[dict[str, Any]]:
    """The compared arms' pre-training runs at more than one recorded precision (bf16 autocast rounds unlike fp32:
    part of a difference may be the precision's). A run made before runs recorded their precision is not known
    (never guessed, never a precision of its own): with others recorded, their number is said."""
    if not len(runs) or "precision" not in runs:
        return []
    mine = runs[runs["point"].isin(arms)]
    known = mine.dropna(subset=["precision"])
    unrecorded = len(mine) - len(known)
    if not len(known) or (known["precision"].nunique() == 1 and not unrecorded):
        return []
    missing = f"precision unrecorded for {unrecorded} of {len(mine)} pre-training runs (made before runs recorded it)"
    if known["precision"].nunique() == 1:
        return [{"point": None, "kind": "precision unrecorded", "columns": "all", "short": missing,
                 "flag": f"{missing}; the other runs trained at {known['precision'].iloc[0]}"}]
    by_arm = "; ".join(f"{point} {_counted(known[known['point'] == point]['precision'])}" for point in arms
                       if (known["point"] == point).any())
    return [{"point": None, "kind": "mixed precision", "columns": "all", "short": "pre-training precisions differ",
             "flag": f"pre-training runs at more than one precision ({by_arm}): they round differently, so a "
                     "difference between arms may be partly the precision's"
                     + (f"; {missing}" if unrecorded else "")}]


def _counted(values: Any) -> str:
    """`32-true`, or `bf16-mixed (1 run) and 32-true (2 runs)` for an arm whose seeds ran at different precisions."""
    counts = values.value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return " and ".join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in counts.items())


def last_tenth_change(run_dir: Path) -> float | None:
    """The relative change of a run's held-out perplexity over the last tenth of its tokens, from the slope between
    its last two evaluations (None: fewer than two)."""
    from harness.runs import read_curves

    try:
        curves = read_curves(run_dir)
    except (OSError, ValueError):
        return None
    if not len(curves) or "common_val/ppl" not in curves or "train/tokens_seen" not in curves:
        return None
    tokens = curves["train/tokens_seen"].ffill()
    keep = curves["common_val/ppl"].notna() & tokens.notna()
    points = sorted(zip(tokens[keep], curves["common_val/ppl"][keep], strict=True))
    if len(points) < 2 or points[-1][0] <= points[-2][0] or points[-1][1] <= 0:
        return None
    (t0, v0), (t1, v1) = points[-2], points[-1]
    return float((v1 - v0) / (t1 - t0) * 0.1 * t1 / v1)


def _pair_flags(report: StudyReport, point: str, reference: str, column: str) -> list[str]:
    """What qualifies point vs reference on `column`: either arm's run flags, unequal tokens (beyond 5%), a best
    fine-tuning lr on the grid's edge (a grid of more than one lr), perplexities of different tokenizers, pre-training
    at different recorded precisions."""
    flags = [row["short"] for row in (report.flags or []) if row["point"] in (point, reference)
             and (row["columns"] == "all" or column in (HELDOUT_COLUMN, *HELDOUT))]
    tokens = _tokens(report.tidy)
    t_ours, t_ref = tokens.get(point), tokens.get(reference)
    if t_ours and t_ref and abs(t_ours - t_ref) > COMPUTE_TOLERANCE * max(t_ours, t_ref):
        flags.append(f"not compute-matched ({int(t_ours):,} vs {int(t_ref):,} tokens seen)")
    cells = report.cells.set_index(["point", "column"])
    ours_column = "bpc" if column == HELDOUT_COLUMN else column
    if (point, ours_column) in cells.index and any(bool(cells.loc[(p, ours_column)]["lr_on_edge"])
                                                   for p in (point, reference)):
        flags.append("best fine-tuning lr on the grid's edge")
    vocabularies = _vocabularies(report.tidy)
    if column == "ppl" and vocabularies.get(point) != vocabularies.get(reference):
        flags.append("different tokenizers: perplexities do not compare, bits per character do")
    precisions = _precisions(report.tidy)
    if precisions.get(point) and precisions.get(reference) and precisions[point] != precisions[reference]:
        flags.append(f"different precisions ({precisions[point]} vs {precisions[reference]})")
    return flags


def _tokens(tidy: Any) -> dict[str, float]:
    if not len(tidy) or "tokens_seen" not in tidy:
        return {}
    return tidy.drop_duplicates("run_dir").groupby("point")["tokens_seen"].median().to_dict()


def _precisions(tidy: Any) -> dict[str, str]:
    """Point -> the precisions its pre-training runs recorded (`bf16-mixed/32-true` when its seeds differ)."""
    if not len(tidy) or "precision" not in tidy:
        return {}
    known = tidy.drop_duplicates("run_dir").dropna(subset=["precision"])
    return {point: "/".join(sorted(group.unique())) for point, group in known.groupby("point")["precision"]}


def _vocabularies(tidy: Any) -> dict[str, tuple[Any, ...]]:
    """Point -> (tokenizer kind, vocabulary size) of its runs."""
    keys = ["tokenizer.kind", "tokenizer.vocab_size"]
    if not len(tidy) or not all(k in tidy for k in keys):
        return {}
    return {point: tuple(group[keys].iloc[0]) for point, group in tidy.groupby("point")}


def _metric(task: str) -> str:
    from harness.tasks import get_task

    return get_task(task).selection_metric


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _scalar(value)
    return flat


def _scalar(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)
