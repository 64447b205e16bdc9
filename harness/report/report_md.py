"""Writing a study's report (harness.report.report) to disk: the tidy CSV, the paper-layout table in Markdown and
LaTeX (booktabs) beside the published values, the comparisons in plain words, the figures, and report.md.

`write_report(results, study=None, out=None)` is `harness report`: every study folder found is rebuilt from scratch
into `out/<experiment>/` (default: `<study folder>/report/`); a study that cannot be reported is one line in the
returned messages and the others are still written.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness.report.claims import ALPHA
from harness.report.multibootstrap import FEW_SEEDS
from harness.report.report import (
    LOWER_IS_BETTER,
    ReportError,
    StudyReport,
    build_report,
    find_studies,
    paper_row,
)

TIDY_FILE = "tidy.csv"


def write_report(results: str | Path, study: str | None = None, out: str | Path | None = None,
                 command: str | None = None) -> tuple[list[Path], list[str]]:
    """(report.md paths written, one-line messages). Raises ReportError only when nothing at all can be reported."""
    written, messages = [], []
    for folder in find_studies(results, study):
        target = Path(out) / folder.name if out else folder / "report"
        try:
            report = build_report(folder)
        except Exception as err:  # noqa: BLE001 - one study's bad input must not stop the others' reports
            messages.append(f"{folder}: not reported: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            continue
        written.append(write_study(report, target, command))
        messages += report.problems
    if not written:
        raise ReportError("; ".join(messages) or f"{results}: nothing to report")
    return written, messages


def write_study(report: StudyReport, target: Path, command: str | None = None) -> Path:
    """All files of one study's report under `target`; returns report.md's path."""
    from harness.report.plots import write_figures

    # Rebuilt, never appended to: a figure an earlier report drew and this one does not must not linger.
    shutil.rmtree(target / "figures", ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    report.tidy.to_csv(target / TIDY_FILE, index=False)
    (target / "table.md").write_text(markdown_table(report) + "\n", encoding="utf-8")
    (target / "table.tex").write_text(latex_table(report), encoding="utf-8")
    figures = write_figures(report, target)
    path = target / "report.md"
    path.write_text(report_markdown(report, figures, target, command), encoding="utf-8")
    return path


def cell_text(cell: Any) -> str:
    """'mean [min-max] n=k/expected' over pre-training seeds (the range, not an interval), or 'missing'."""
    if not cell["n"]:
        return f"missing (0/{cell['expected']})"
    text = f"{_num(cell['mean'])} [{_num(cell['min'])}-{_num(cell['max'])}]" if cell["n"] > 1 \
        else _num(cell["mean"])
    return f"{text} n={cell['n']}/{cell['expected']}" + (" (lr on grid edge)" if cell["lr_on_edge"] else "")


def markdown_table(report: StudyReport) -> str:
    """Rows = scientific points (the no-pre-training baseline last), then the trivial predictor; columns = tasks,
    ppl, bpc: each the mean over pre-training seeds [their range] with n. A column without pre-training signal is
    marked."""
    cells = report.cells.set_index(["point", "column"])
    quiet = set(no_signal_columns(report))
    head = ["point", *(f"{c} (no signal)" if c in quiet else c for c in report.columns)]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for point in (p.label for p in report.study.points):
        mark = " (reference)" if point == report.reference else " (baseline)" if point == report.baseline else ""
        lines.append(_md_row([point + mark, *(cell_text(cells.loc[(point, c)]) for c in report.columns)]))
    if report.trivial:
        lines.append(_md_row(["trivial predictor", *(_trivial_text(report, c) for c in report.columns)]))
    for name, values in _anchor_rows(report):
        lines.append(_md_row([name, *(_num(values.get(c)) if c in values else "" for c in report.columns)]))
    return "\n".join(lines)


def no_signal_columns(report: StudyReport) -> list[str]:
    """Columns where no arm beats the no-pre-training row beyond the seeds' noise."""
    if report.signal is None or not len(report.signal):
        return []
    return list(report.signal[report.signal["signal"] == "no signal"]["column"])


def signal_markdown(report: StudyReport) -> str:
    """Per column: the trivial predictor, the no-pre-training row and the best arm, and whether pre-training
    shows beyond the seeds' noise; then one plain line per column that carries no signal."""
    if report.signal is None or not len(report.signal):
        return ("(no no-pre-training row and no trivial predictor in this study: set `baselines: {no_pretraining: "
                "true}` in its grid to tell what pre-training adds)")
    head = ["column", "trivial predictor", "no pre-training (mean)", "best arm (mean)",
            "arms beating no pre-training (95%)", "arms above the trivial predictor (95%)", "verdict"]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    words = []
    for row in report.signal.to_dict("records"):
        tested = row["signal"] in ("signal", "no signal")  # else there is no list to give: "none" would be a finding
        lines.append(_md_row([row["column"], _trivial_text(report, row["column"]), _num(row["no_pretraining"]),
                              _num(row["best_arm"]),
                              (row["arms_beating_baseline"] or "none") if tested and report.baseline else "",
                              (row["arms_above_trivial"] or "none") if tested and row["trivial"] is not None else "",
                              row["signal"]]))
        if row["signal"] == "no signal":
            words.append(f"**{row['column']} carries no pre-training signal at this scale**: no arm beats "
                         + ("the no-pre-training row and the trivial predictor" if row["trivial"] is not None
                            and report.baseline else "the no-pre-training row" if report.baseline
                            else "the trivial predictor")
                         + " beyond the seeds' noise, so its differences between arms say nothing about the recipes.")
        elif row["signal"] == "cannot tell":
            words.append(f"{row['column']}: one pre-training run per arm, so whether pre-training shows cannot be "
                         "judged.")
    notes = ["", "An arm beats the no-pre-training row when the 95% interval of their paired difference (over the "
             "pre-training seeds both have, with the evaluation examples resampled where per-example outputs exist; "
             "see the claims' notes) lies above zero on the better side. It is above the trivial predictor when the "
             "one-sided t test of its pre-training seeds' values against the trivial score passes at 2.5%. A column "
             "has signal when some arm passes both (each where it applies). The trivial predictor is fitted on the "
             "training labels the trials use and scored on dev (majority class, or the best constant)."]
    return "\n".join([*lines, *notes, "", *(f"- {w}" for w in words)])


def _trivial_text(report: StudyReport, column: str) -> str:
    trivial = report.trivial.get(column)
    return f"{_num(trivial['score'])} ({trivial['description']})" if trivial else ""


def _anchor_rows(report: StudyReport) -> list[tuple[str, dict[str, float]]]:
    """One row per published model (BLiMP's 5-gram ... humans), holding its score in the columns it has."""
    names = dict.fromkeys(name for values in report.anchors.values() for name in values)
    return [(f"published: {name}", {column: values[name] for column, values in report.anchors.items()
                                    if name in values}) for name in names]


def paper_markdown(report: StudyReport) -> str:
    """The published values beside ours, and each point's difference from the reference: ours, the paper's, and
    a mark where they agree in sign."""
    if not report.paper:
        return "(the paper has no table for this study)"
    columns = list(report.paper["columns"])  # the whole published table, also the tasks this study left out
    head = ["point", *(report.paper["columns"][c] for c in columns)]
    lines = [f"Published ({report.paper['source']}):", "", _md_row(head), _md_row(["---"] * len(head))]
    for point in (p.label for p in report.study.points):
        values = paper_row(report, point) or {}
        lines.append(_md_row([point, *(_num(values.get(c)) for c in columns)]))
    for name, values in report.paper.get("extra_rows", {}).items():
        lines.append(_md_row([name, *(_num(values.get(c)) for c in columns)]))
    return "\n".join(lines)


def comparison_markdown(report: StudyReport) -> str:
    """Each arm's difference from the reference per column, as description (the verdicts are the claims')."""
    if not len(report.comparisons):
        return "(no comparisons: one arm only)"
    head = ["point", "column", "ours: mean difference [95% interval]", "P(diff <= 0)", "paper", "same sign",
            "seeds x examples", "flags"]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    words = []
    for row in report.comparisons.to_dict("records"):
        if _missing(row.get("diff")):
            lines.append(_md_row([row["point"], row["column"], "missing", "", "", "", "", ""]))
            continue
        agree = {True: "yes", False: "no"}.get(row.get("agree"), "")
        lines.append(_md_row([row["point"], row["column"], _interval(row["diff"], row.get("ci_low"),
                                                                     row.get("ci_high")),
                              _num(row.get("p_not_above")) if row.get("judged") else "",
                              _signed(row.get("paper_diff")), agree, _design(row), row.get("flags") or ""]))
        words.append(_sentence(report, row))
    notes = ["", "Description, not verdicts: the paper's claims are judged below, with a correction for testing "
             "many. Intervals: see the claims' notes; \"seeds alone\" where the runs have no per-example outputs."]
    return "\n".join([*lines, *notes, "", *(f"- {w}" for w in words)])


def claims_markdown(report: StudyReport) -> str:
    """The paper's stated claims tested at this scale: one row per (claim, column), then a line per claim."""
    claims = report.claims
    if claims is None or not len(claims):
        return "(the paper states no claim about this study's arms: nothing is judged, the tables describe)"
    head = ["claim", "column", "ours: difference [95% interval]", "seeds alone: paired t [95%]", "P(diff <= 0)",
            "smallest effect", "paper", "seeds x examples", "verdict", "flags"]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for row in claims.to_dict("records"):
        if row["verdict"] == "not run":
            continue
        column = row["column"] + (" (extension)" if row["extension"] else "")
        if row["column"] == "heldout":
            column += " (bpc)"
        judged = not _missing(row.get("low"))
        lines.append(_md_row([row["claim"], column,
                              "" if _missing(row["diff"]) else _interval(row["diff"], row["low"], row["high"]),
                              f"[{_signed(row['t_low'])}, {_signed(row['t_high'])}]" if judged else "",
                              _num(row.get("p_not_above")) if judged else "",
                              _num(row.get("smallest_effect")), _signed(row.get("paper_diff")), _design(row),
                              row["verdict"], row.get("flags") or ""]))
    summary = []
    for claim_id, group in claims.groupby("claim", sort=False):
        first = group.iloc[0]
        records = group.to_dict("records")
        tested = ", ".join(f"{r['column']}: {r['verdict']}" for r in records if r["verdict"] != "not run")
        absent = [r["column"] for r in records if r["verdict"] == "not run"]
        summary.append(f"- **{claim_id}** ({first['kind']}: `{first['arm']}` vs `{first['reference']}`): "
                       f"\"{first['text']}\" - {tested or 'no column of it was run'}"
                       + (f" (not run at this scale: {', '.join(absent)})" if absent else ""))
    family = int(claims["family"].iloc[0]) if "family" in claims else 0
    seeds = [int(s) for s in claims["seeds"] if s]
    warning = []
    if seeds and min(seeds) < FEW_SEEDS:
        warning = ["", f"**{min(seeds)} pre-training seed{'s' if min(seeds) != 1 else ''} per arm, fewer than "
                   f"{FEW_SEEDS}: every verdict says so.**"]
    notes = ["", "Each difference is arm - reference, oriented so that positive is the paper's direction (for "
             "`heldout`: lower bits per character on the common held-out set; perplexity and bits per character are "
             "one finding). The interval: each pre-training seed is the unit (its fine-tuning seeds averaged at the "
             "arm's best fine-tuning lr); the variance of the mean difference is the seeds' (sample variance / n) "
             "plus what the shared draw of evaluation examples adds, estimated by the multi-bootstrap of MultiBERTs "
             "(dev examples, held-out documents, BLiMP pairs, drawn once for both arms and every seed); a t interval "
             "with Welch-Satterthwaite degrees of freedom (harness/report/multibootstrap.py; simulated coverage 93-97% "
             "at 5 seeds). Beside it: the paired t interval over the seeds alone (it leaves out the evaluation set's "
             "sampling error) and the multi-bootstrap's P(difference <= 0) (paper's direction). Verdicts: superior "
             "claims reproduce when the difference is above 0, non-inferiority "
             "claims when it is above minus the smallest effect, equivalence claims when both one-sided tests "
             f"against plus and minus the smallest effect pass (TOST); each one-sided test at {ALPHA} with Holm's "
             f"correction over the {family} tests of this table; \"equivalent\": a superiority claim whose "
             "difference is shown to be inside the smallest effect. \"no signal at this scale\": the column does "
             "not beat the no-pre-training row or the trivial predictor, so it is not tested. An extension is a "
             "column the paper does not report, where the claim (made of downstream tasks in general) is tested "
             "too. The paper's column is its own difference on that column (lower ppl is better)."]
    return "\n".join([*lines, *warning, *notes, "", *summary])


def flags_markdown(report: StudyReport) -> str:
    if not report.flags:
        return "- none: every arm's held-out curve has flattened, each ran at least the minimum updates, and trains " \
               "on the held-out set's packing"
    # One line per flag, the arms it applies to named together (an lr search's nine arms share most flags).
    lines: dict[str, list[str]] = {}
    for row in report.flags:
        if row.get("point") and row.get("detail"):
            lines.setdefault(row["detail"], []).append(row["point"])
        else:
            lines.setdefault(row["flag"], [])
    every = set(report.arms)
    return "\n".join(f"- {_arms_named(points, every)}: {text}" if points else f"- {text}"
                     for text, points in lines.items())


def _arms_named(points: list[str], every: set[str]) -> str:
    return "every arm" if len(points) > 1 and set(points) == every else ", ".join(points)


def latex_table(report: StudyReport) -> str:
    """The paper-layout table as a booktabs tabular (median, spread as a subscript range, n)."""
    cells = report.cells.set_index(["point", "column"])
    spec = "l" + "r" * len(report.columns)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(["point", *(_tex(c) for c in report.columns)]) + " \\\\", "\\midrule"]
    for point in (p.label for p in report.study.points):
        values = []
        for column in report.columns:
            cell = cells.loc[(point, column)]
            values.append("--" if not cell["n"] else f"{_num(cell['mean'])}$_{{[{_num(cell['min'])},"
                          f"{_num(cell['max'])}]}}^{{n={cell['n']}}}$")
        lines.append(" & ".join([_tex(point), *values]) + " \\\\")
    return "\n".join([*lines, "\\bottomrule", "\\end{tabular}", ""])


def report_markdown(report: StudyReport, figures: list[Path], target: Path, command: str | None) -> str:
    study, tidy = report.study, report.tidy
    runs = tidy.drop_duplicates("run_dir") if len(tidy) else tidy
    first = study.runs[0].config
    tokens = runs.groupby("point")["tokens_seen"].median().to_dict() if len(runs) else {}
    seeds_ft = {t: list(p.settings.seeds) for t, p in study.tasks.items() if not p.zero_shot}
    lines = [f"# {study.name}" + (f" at scale {study.scale}" if study.scale else ""), "",
             study.description, "",
             f"- results: `{report.folder}`; grid: `{_grid_path(report)}`",
             f"- corpus: `{first.corpus.path or first.corpus.hub}`{_digests(runs)}; model: {first.model.family} "
             f"`{first.model.size}`; pre-training precision: {_precisions(runs)}",
             f"- pre-training seeds: {sorted({r.seed for r in study.runs})}; fine-tuning seeds: {seeds_ft}",
             "- tokens seen per arm: " + (", ".join(f"{k} {int(v):,}" for k, v in tokens.items()) or "none yet"),
             f"- commit: {_commit(runs)}; made by: `{command or 'harness report ' + str(report.folder)}`",
             f"- wall-clock: {_wall_clock(report)}",
             f"- the sweep: `{_sweep_command(report)}`",
             f"- reference row: `{report.reference}`; {_cell_words(report)}", *_few_seeds_line(report), "",
             "## Our table", "", markdown_table(report), "",
             *_search_section(report),
             "## Does pre-training show at this scale?", "", signal_markdown(report), "",
             "## The paper", "", paper_markdown(report), "",
             "## The paper's claims at this scale", "", claims_markdown(report), "",
             "## Flags", "", flags_markdown(report), "",
             "## Differences from the reference (description)", "", comparison_markdown(report), "",
             "## Figures", "", *(f"![{f.stem}]({f.relative_to(target).as_posix()})" for f in figures
                                 if f.suffix == ".png"), "",
             "## Missing and skipped", "", *_missing_lines(report), "",
             f"Tidy data: `pandas.read_csv('{target / 'tidy.csv'}')`; LaTeX: `table.tex`.", ""]
    return "\n".join(lines)


def _search_section(report: StudyReport) -> list[str]:
    """The pre-training lr search (harness.report.report.lr_search_rows), when the study is one: per group, each
    lr's held-out bpc, the best marked, and a best on the edge of its group's rates called out."""
    if not report.search:
        return []
    lines = ["## Pre-training learning-rate search", "",
             "Arms that differ only in `optim.peak_lr`, grouped; each lr's held-out bits per character on the common "
             "set (mean over its pre-training seeds; lower is better). The best of each group is the rate to run the "
             "study at; a best on the edge of its group's rates means the optimum may lie outside the search: widen "
             "it before using the rate.", "",
             _md_row(["group", "peak lr", "bpc", "n", "choice"]), _md_row(["---"] * 5)]
    for row in report.search:
        choice = ("best, on the edge of the search: widen it" if row["edge"] else "best") if row["best"] else ""
        bpc = "pending" if row["bpc"] is None else f"{row['bpc']:.4f}"
        lines.append(_md_row([row["group"], f"{row['lr']:g}", bpc, f"{row['n']}/{row['expected']}", choice]))
    chosen = [r for r in report.search if r["best"]]
    groups = list(dict.fromkeys(r["group"] for r in report.search))
    lines += ["", "Chosen: " + "; ".join(
        next((f"{g} -> {r['lr']:g}" + (" (edge)" if r["edge"] else "") for r in chosen if r["group"] == g),
             f"{g} -> pending") for g in groups), ""]
    return lines


def _digests(runs: Any) -> str:
    """The corpus the finished runs trained on, by content (several digests: the problems list says which runs)."""
    if not len(runs) or "corpus_digest" not in runs:
        return ""
    known = sorted(runs["corpus_digest"].dropna().unique())
    unknown = int(runs["corpus_digest"].isna().sum())
    if not known:
        return ""
    return f" (corpus_digest {', '.join(known)}" + (f"; {unknown} run(s) recorded before the digest" if unknown
                                                    else "") + ")"


def _precisions(runs: Any) -> str:
    """The precisions the finished pre-training runs recorded; runs made before runs recorded it are counted, not
    guessed (the flags say when the arms differ)."""
    if not len(runs) or "precision" not in runs or runs["precision"].isna().all():
        return "not recorded"
    unknown = int(runs["precision"].isna().sum())
    return ", ".join(sorted(runs["precision"].dropna().unique())) + (f" ({unknown} run(s) not recorded)" if unknown
                                                                     else "")


def _wall_clock(report: StudyReport) -> str:
    """How long the finished jobs took, from their records (`runs.launch_intervals`): the time during which at
    least one job ran (parallel workers counted once, the time between sessions not at all), the span from the
    first start to the last end, and the job time of each kind (the sum over jobs and launches). Whatever else
    ran on the machine at the same time is inside these figures."""
    from harness.runs import busy_seconds, launch_intervals

    intervals, seconds, jobs = [], {"pre-training": 0.0, "fine-tuning": 0.0}, 0
    for job in report.plan.jobs:
        path = report.plan.path(job)  # None: a fine-tuning job whose pre-training run is not done
        found = launch_intervals(path) if path is not None else []
        if not found:
            continue
        jobs += 1
        intervals += found
        kind = "pre-training" if job.kind == "pretrain" else "fine-tuning"
        seconds[kind] += sum((end - start).total_seconds() for start, end in found)
    if not intervals:
        return "no finished job yet"
    first, last = min(s for s, _ in intervals), max(e for _, e in intervals)
    launches = len(intervals) - jobs
    return (f"{_duration(busy_seconds(intervals))} with at least one job running, {jobs} jobs"
            + (f" ({launches} relaunches)" if launches else "")
            + f"; first start {first:%Y-%m-%d %H:%M} UTC, last end {last:%Y-%m-%d %H:%M} UTC "
            f"(span {_duration((last - first).total_seconds())}); job time "
            + ", ".join(f"{kind} {_duration(value)}" for kind, value in seconds.items()))


def _grid_path(report: StudyReport) -> str:
    """The study's grid file, relative to the working directory where it lies below it, or where the working
    directory holds the same file at the same place under its experiments/ (a sweep run from another checkout)."""
    grid = Path(str(report.source.get("grid")))
    try:
        return grid.relative_to(Path.cwd()).as_posix()
    except ValueError:
        pass
    here = Path("experiments") / grid.name
    try:
        if grid.parent.name == "experiments" and here.read_bytes() == grid.read_bytes():
            return here.as_posix()
    except OSError:
        pass
    return grid.as_posix()


def _sweep_command(report: StudyReport) -> str:
    """The command that runs (or continues) this study, from its study.json: grid (relative to the working
    directory where it lies below it), scale, --set, --tasks and the results root."""
    source = report.source
    parts = ["harness sweep", _grid_path(report)]
    if source.get("scale"):
        parts.append(f"--scale {source['scale']}")
    parts += [f"--set {override}" for override in source.get("overrides") or []]
    if source.get("tasks"):
        parts.append(f"--tasks {','.join(source['tasks'])}")
    parts.append(f"--results {report.folder.parent.as_posix()}")
    return " ".join(parts)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m" if minutes else f"{seconds:.0f}s"


def _missing_lines(report: StudyReport) -> list[str]:
    lines = [f"- {c['point']} / {c['column']}: {c['n']} of {c['expected']} pre-training seeds"
             for c in report.cells.to_dict("records") if c["n"] < c["expected"]]
    lines += [f"- {line}" for line in report.problems]
    if report.study.skipped_tasks:
        lines.append(f"- tasks left out (no data): {', '.join(report.study.skipped_tasks)}")
    return lines or ["- nothing: every cell has all its seeds"]


def _cell_words(report: StudyReport) -> str:
    """What a cell holds, as this study's grid makes it (one fine-tuning lr is not "the best")."""
    grids = {len(p.settings.learning_rates) for p in report.study.tasks.values() if not p.zero_shot}
    seeds = {len(p.settings.seeds) for p in report.study.tasks.values() if not p.zero_shot}
    lr = ("the best fine-tuning lr of the grid (the best median over pre-training seeds)" if grids and max(grids) > 1
          else "the grid's one fine-tuning lr" if grids else "")
    within = (f"each pre-training seed's value is the mean over its {max(seeds)} fine-tuning seeds at {lr}, "
              if seeds and max(seeds) > 1 else f"each pre-training seed's value is its score at {lr}, " if lr else "")
    return (f"each cell: {within}the cell is their mean over pre-training seeds [their range: min-max, not an "
            "interval], n = pre-training runs present / expected")


def _few_seeds_line(report: StudyReport) -> list[str]:
    seeds = len({r.seed for r in report.study.runs})
    if seeds >= FEW_SEEDS:
        return []
    return [f"- **{seeds} pre-training seed{'s' if seeds != 1 else ''} per arm (fewer than {FEW_SEEDS})**: "
            + ("one pre-training run per arm has no spread to judge by: nothing below is a finding" if seeds < 2
               else "intervals on so few seeds are wide and every verdict carries this warning")]


def _interval(diff: float, low: Any, high: Any) -> str:
    if _missing(low) or _missing(high):
        return f"{_signed(diff)} (no interval: one pre-training seed)"
    return f"{_signed(diff)} [{_signed(low)}, {_signed(high)}]"


def _design(row: dict[str, Any]) -> str:
    if not row.get("seeds"):
        return ""
    examples = row.get("examples")
    return f"{int(row['seeds'])} x {int(examples):,}" if not _missing(examples) and examples else \
        f"{int(row['seeds'])} x seeds alone"


def _sentence(report: StudyReport, row: dict[str, Any]) -> str:
    """One plain line per comparison, with no verdict word: "static is above dynamic on sst2 by 0.4 (95% interval
    -1.2 to +2.0, 5 pre-training seeds)"."""
    lower = row["column"] in LOWER_IS_BETTER
    relation = "ties with" if row["diff"] == 0 else "is below" if row["diff"] < 0 else "is above"
    better = "" if row["diff"] == 0 else " (better)" if (row["diff"] < 0) == lower else " (worse)"
    if row.get("judged"):
        detail = (f"95% interval {row['ci_low']:+.4g} to {row['ci_high']:+.4g} for the difference, "
                  f"{int(row['seeds'])} pre-training seeds")
    else:
        detail = "one pre-training seed: no interval"
    text = f"{row['point']} {relation} {report.reference} on {row['column']}{better} by {abs(row['diff']):.4g} " \
           f"({detail})"
    return text + (f"; {row['flags']}" if row.get("flags") else "")


def _commit(runs: Any) -> str:
    import json

    commits = set()
    for run_dir in (runs["run_dir"] if len(runs) else []):
        try:
            env = json.loads((Path(run_dir) / "env.json").read_text(encoding="utf-8"))
            commits.add(f"{env['git']['commit'][:10]}{' (dirty)' if env['git'].get('dirty') else ''}")
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if commits:
        return ", ".join(sorted(commits)) + " (runs)"
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() + " (report)"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any) -> str:
    return "" if _missing(value) else f"{value:.4g}"


def _signed(value: Any) -> str:
    return "" if _missing(value) else f"{value:+.4g}"


def _tex(text: str) -> str:
    return str(text).replace("_", "\\_").replace("%", "\\%")
