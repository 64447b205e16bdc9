"""`harness report`: a study's tables rebuilt from its run directories alone (never from a sweep's logs, never
appended to an earlier report), so it can be re-run at any time, also on a half-finished sweep.

- `find_studies(results, study)`: the study folders under a results root (or the one given), each with the grid
  that made it: `study.json` (written by `harness sweep`) or, for older folders, `experiments/<name>.yaml` from the
  folder's name `<name>-<scale>`;
- `build_report(folder)`: re-expands the grid into its plan and reads every finished job into a tidy frame (one
  row per pre-training run x task x fine-tuning lr x seed, with every config field and metric), the paper-layout
  cells (median over seeds at the best learning rate, spread, n of expected) and the comparisons with the reference
  row (bootstrap interval, verdict, the paper's difference). A corrupt or partial file, a run directory that is not
  one of the grid's runs: one line each in `problems`, and the rest is still reported.
Rendering lives in harness.study.report_md, figures in harness.study.plots.
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
from harness.paths import atomic_write_text
from harness.runs import read_final_metrics
from harness.study.grid import Study, load_grid, value_label
from harness.study.jobs import Plan, expand
from harness.study.multibootstrap import paired_t_interval
from harness.study.stats import best_by_median, bootstrap_ci, same_sign, spread, verdict

STUDY_FILE = "study.json"
PAPER_TABLES = Path(__file__).with_name("paper_tables.yaml")
PRETRAIN_METRICS = ("steps", "tokens_seen", "common_val_ppl", "common_val_bpc", "val_mlm_loss", "val_ppl",
                    "train_tokens_per_update", "train_padded_tokens_per_update", "train_sequences_per_update",
                    "corpus_digest", "tokenizer_digest")
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


def write_study_file(folder: Path, grid: Path, scale: str | None, overrides: list[str] | None,
                     tasks: list[str] | None, data_dir: str | Path | None) -> None:
    """What `harness report` needs to re-expand the plan of a results folder (written by `harness sweep`)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"grid": str(Path(grid).resolve()), "scale": scale, "overrides": list(overrides or []),
              "tasks": tasks, "data_dir": str(Path(data_dir).resolve()) if data_dir else None}
    atomic_write_text(folder / STUDY_FILE, json.dumps(record, indent=2) + "\n")


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
    report = StudyReport(study, plan, folder, tidy, cells, None, reference, paper, problems, source)
    report.comparisons = pd.DataFrame(_comparisons(report))
    report.trivial = trivial_scores(study, data_dir, problems)
    report.anchors = published_anchors(study, data_dir, problems)
    report.signal = pd.DataFrame(_signal(report))
    return report


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
    """Per column: the trivial score, the no-pre-training median, the best arm's median, and whether any arm beats
    the no-pre-training row beyond the seeds' noise: the 95% paired t interval of the seed-level differences (each
    pre-training seed's mean over its fine-tuning seeds, paired by pre-training seed) excludes zero on the better
    side. A column where none does carries no pre-training signal at this scale."""
    if report.baseline is None or not len(report.cells):
        return []
    cells = report.cells.set_index(["point", "column"])
    rows = []
    for column in report.columns:
        base = cells.loc[(report.baseline, column)]
        sign = -1.0 if column in LOWER_IS_BETTER else 1.0
        beats, best, tested = [], None, 0
        for point in report.arms:
            ours = cells.loc[(point, column)]
            if not ours["n"] or not base["n"]:
                continue
            best = ours["median"] if best is None or sign * (ours["median"] - best) > 0 else best
            mine, theirs = seed_means(ours), seed_means(base)
            shared = sorted(set(mine) & set(theirs))
            if len(shared) < 2:
                continue
            tested += 1
            interval = paired_t_interval([sign * (mine[s] - theirs[s]) for s in shared])
            if interval.low > 0:
                beats.append(point)
        verdict_text = ("signal" if beats else "no signal" if tested else
                        "cannot tell" if base["n"] else "missing")
        rows.append({"column": column, "trivial": report.trivial.get(column, {}).get("score"),
                     "no_pretraining": base["median"] if base["n"] else None, "best_arm": best,
                     "arms_beating_baseline": ",".join(beats), "arms_tested": tested, "signal": verdict_text})
    return rows


def pretraining_runs(*cells: Any) -> int:
    """Independent pre-training runs behind a comparison: the fewest pre-training seeds of its cells. Fine-tuning
    seeds of one pre-trained model are not independent replicates: a single run per arm has no spread to judge by."""
    return min(len(seed_means(cell)) for cell in cells)


def seed_means(cell: Any) -> dict[Any, float]:
    """A cell's values averaged within each pre-training seed (the unit of replication): fine-tuning seeds are
    repeated measurements of one pre-trained model, not independent runs."""
    by_seed: dict[Any, list[float]] = {}
    for (pretrain_seed, _), value in zip(cell["seeds"] or [], cell["values"], strict=True):
        if value is not None and np.isfinite(value):
            by_seed.setdefault(pretrain_seed, []).append(float(value))
    return {seed: float(np.mean(values)) for seed, values in by_seed.items()}


def paper_orderings(report: StudyReport) -> list[dict[str, Any]]:
    """For every pair of our points with published rows: which one the paper finds better, and per column of ours
    whether this study reproduces that ordering beyond the seeds' spread (the 95% interval of the difference
    excludes zero, same direction), contradicts it (excludes zero, other direction) or cannot tell (the interval
    holds zero, or one pre-training run per arm).

    The paper's ordering tested on a column: its own on that column where it reports it (a task, or ppl in Table 3);
    on our held-out columns (ppl, bits per character), its held-out perplexity where it reports one, else its task
    average; on our other tasks, its task average (the mean difference over the tasks it reports)."""
    if not len(report.cells) or not report.paper:
        return []
    cells = report.cells.set_index(["point", "column"])
    points = [label for label in report.arms if paper_row(report, label)]
    rows = []
    for i, first in enumerate(points):
        for second in points[i + 1:]:
            mine, theirs = paper_row(report, first), paper_row(report, second)
            shared = [c for c in report.paper["columns"] if c in mine and c in theirs]
            published = {c: _better(mine[c], theirs[c], c) for c in shared}
            tasks = [mine[c] - theirs[c] for c in shared if c not in LOWER_IS_BETTER]
            average = _better(float(np.mean(tasks)), 0.0, "task") if tasks else 0
            for column in report.columns:
                if column in published:
                    paper_sign, basis = published[column], "this column"
                elif column in HELDOUT and "ppl" in published:
                    paper_sign, basis = published["ppl"], "its held-out ppl"
                else:
                    paper_sign, basis = average, "its task average"
                if not paper_sign:
                    rows.append({"better": first, "worse": second, "column": column, "basis": basis,
                                 "verdict": "the paper ties"})
                    continue
                better, worse = (first, second) if paper_sign > 0 else (second, first)
                rows.append({"better": better, "worse": worse, "column": column, "basis": basis,
                             **_ordering_verdict(cells.loc[(better, column)], cells.loc[(worse, column)], column)})
    return rows


def _better(a: float, b: float, column: str) -> int:
    """+1 when a is the better value on `column`, -1 when b is, 0 for a tie."""
    diff = (b - a) if column in LOWER_IS_BETTER else (a - b)
    return int(diff > 0) - int(diff < 0)


def _ordering_verdict(better: Any, worse: Any, column: str) -> dict[str, Any]:
    """Our `better - worse` difference, oriented so that positive means "as the paper orders them"."""
    if not better["n"] or not worse["n"]:
        return {"verdict": "missing", "margin": None, "ci_low": None, "ci_high": None, "n": 0}
    a, b, paired = _aligned(better, worse)
    sign = -1.0 if column in LOWER_IS_BETTER else 1.0
    margin = sign * (better["median"] - worse["median"])
    low, high = sorted(sign * x for x in bootstrap_ci(a, b, paired))
    n = min(len(a), len(b))
    if pretraining_runs(better, worse) < 2 or low <= 0 <= high:
        text = "cannot tell"
    else:
        text = "reproduces" if low > 0 else "contradicts"
    return {"verdict": text, "margin": margin, "ci_low": low, "ci_high": high, "n": n}


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
                             "finetune_lr": None, "finetune_seed": None, "score": final["score"], "lr_grid": None,
                             **{f"dev.{k}": v for k, v in _zero_shot_figures(final).items()}})
                added += 1
        trials = [t for t in plan.finetune if t.pretrain is job]
        for trial in trials:
            final = _read(plan.path(trial), problems, required=("score",))
            if final is not None:
                rows.append({**base, "task": trial.task.name, "metric": _metric(trial.task.name),
                             "finetune_lr": trial.lr, "finetune_seed": trial.seed, "score": final["score"],
                             "lr_grid": ",".join(map(str, trial.settings.learning_rates)),
                             **{f"dev.{k}": v for k, v in final.get("dev", {}).items() if k != "score"}})
                added += 1
        if not added:  # a run without fine-tuning results still carries its held-out figures
            rows.append({**base, "task": None, "metric": None, "finetune_lr": None, "finetune_seed": None,
                         "score": None})
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
    corpus was edited between runs, or WordPiece was retrained differently in another cache (tokenizers#1794). One
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
    """Per (point, column): the best learning rate's median over seeds, its spread and n of the expected seeds."""
    rows = []
    for point in study.points:
        runs = [r for r in study.runs if r.point.label == point.label]
        mine = tidy[tidy["point"] == point.label] if len(tidy) else tidy
        for task, plan_task in study.tasks.items():
            if plan_task.zero_shot:  # one value per pre-training run
                rows.append(_zero_shot_cell(point.label, task, mine, len({r.seed for r in runs})))
                continue
            expected = len({r.seed for r in runs}) * len(plan_task.settings.seeds)
            rows.append(_task_cell(point.label, task, mine, expected, plan_task.settings.learning_rates))
        pretrain = mine.drop_duplicates("run_dir") if len(mine) else mine
        for column, metric in HELDOUT.items():
            values = list(pretrain[metric]) if len(pretrain) else []
            seeds = [(seed, None) for seed in pretrain["pretrain_seed"]] if len(pretrain) else []
            rows.append(_cell(point.label, column, values, len({r.seed for r in runs}), None, False, seeds))
    return rows


def _task_cell(point: str, task: str, mine: Any, expected: int, grid: tuple[float, ...]) -> dict[str, Any]:
    scores = mine[mine["task"] == task] if len(mine) else mine
    if not len(scores):
        return _cell(point, task, [], expected, None, False, None)
    # Nuisance = (pre-training nuisance, fine-tuning lr): the best median over seeds is reported (the paper's protocol).
    nuisance, lr = best_by_median(scores, ["pretrain_nuisance", "finetune_lr"])
    best = scores[(scores["pretrain_nuisance"] == nuisance) & (scores["finetune_lr"] == lr)]
    edge = len(grid) > 1 and lr in (min(grid), max(grid))
    seeds = list(zip(best["pretrain_seed"], best["finetune_seed"], strict=True))
    return _cell(point, task, list(best["score"]), expected, lr, edge, seeds)


def _zero_shot_cell(point: str, task: str, mine: Any, expected: int) -> dict[str, Any]:
    scores = mine[mine["task"] == task] if len(mine) else mine
    if not len(scores):
        return _cell(point, task, [], expected, None, False, None)
    best = scores[scores["pretrain_nuisance"] == best_by_median(scores, "pretrain_nuisance")]
    return _cell(point, task, list(best["score"]), expected, None, False,
                 [(seed, None) for seed in best["pretrain_seed"]])


def _cell(point: str, column: str, values: list[float], expected: int, lr: float | None, edge: bool,
          seeds: list[tuple[Any, Any]] | None) -> dict[str, Any]:
    summary = spread(values)
    return {"point": point, "column": column, "median": summary.median if summary else None,
            "min": summary.low if summary else None, "max": summary.high if summary else None,
            "q1": summary.q1 if summary else None, "q3": summary.q3 if summary else None,
            "n": summary.n if summary else 0, "expected": expected, "best_lr": lr, "lr_on_edge": edge,
            "values": [float(v) for v in values], "seeds": seeds}


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
    """Each point against the reference, per column: our difference with a bootstrap interval and verdict, the
    paper's difference, whether they agree in sign, and whether the two saw the same number of tokens."""
    if not len(report.cells):
        return []
    cells = report.cells.set_index(["point", "column"])
    tokens, vocabularies = _tokens(report.tidy), _vocabularies(report.tidy)
    rows = []
    for point in (label for label in report.arms if label != report.reference):
        for column in report.columns:
            ours, ref = cells.loc[(point, column)], cells.loc[(report.reference, column)]
            if not ours["n"] or not ref["n"]:
                rows.append({"point": point, "column": column, "diff": None, "verdict": "missing"})
                continue
            row = _compare(report, point, column, ours, ref, tokens)
            # Perplexity is per token of each arm's own tokenizer: across tokenizers only bits per character compare.
            row["same_tokenizer"] = column != "ppl" or vocabularies.get(point) == vocabularies.get(report.reference)
            rows.append(row)
    return rows


def _compare(report: StudyReport, point: str, column: str, ours: Any, ref: Any, tokens: dict[str, float]) -> dict:
    a, b, paired = _aligned(ours, ref)
    diff = ours["median"] - ref["median"]
    ci = bootstrap_ci(a, b, paired)
    mine, theirs = paper_row(report, point), paper_row(report, report.reference)
    paper_diff = mine[column] - theirs[column] if mine and theirs and column in mine and column in theirs else None
    t_ours, t_ref = tokens.get(point), tokens.get(report.reference)
    matched = t_ours is None or t_ref is None or abs(t_ours - t_ref) <= COMPUTE_TOLERANCE * max(t_ours, t_ref)
    return {"point": point, "column": column, "diff": diff, "ci_low": ci[0], "ci_high": ci[1], "paired": paired,
            "n": min(len(a), len(b)), "verdict": verdict(diff, ci, pretraining_runs(ours, ref)),
            "paper_diff": paper_diff,
            "agree": same_sign(diff, paper_diff), "compute_matched": matched, "tokens": t_ours,
            "reference_tokens": t_ref, "lr_on_edge": bool(ours["lr_on_edge"] or ref["lr_on_edge"])}


def _aligned(ours: Any, ref: Any) -> tuple[list[float], list[float], bool]:
    """Pair by (pre-training seed, fine-tuning seed) where both arms have exactly the same seeds."""
    if ours["seeds"] and ref["seeds"] and sorted(ours["seeds"]) == sorted(ref["seeds"]) \
            and len(set(ours["seeds"])) == len(ours["seeds"]):
        a = dict(zip(ours["seeds"], ours["values"], strict=True))
        b = dict(zip(ref["seeds"], ref["values"], strict=True))
        keys = sorted(a)
        return [a[k] for k in keys], [b[k] for k in keys], True
    return list(ours["values"]), list(ref["values"]), False


def _tokens(tidy: Any) -> dict[str, float]:
    if not len(tidy) or "tokens_seen" not in tidy:
        return {}
    return tidy.drop_duplicates("run_dir").groupby("point")["tokens_seen"].median().to_dict()


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
