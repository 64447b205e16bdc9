"""A study report's figures (matplotlib, Agg, `layout="constrained"`), each written as PNG and PDF, one colour per
scientific point (arm) in every figure (its position in the study, tab10). Panels are about 2.4 x 2.2 inches, at
most three to a row (a page's text width), fonts at least 7 pt, so a figure is read at 100% without zooming:

- scores: per column (task score, held-out ppl, bpc) each pre-training seed's value (its fine-tuning seeds averaged)
  as a point over the arm's mean over seeds (a tick); the trivial predictor and the no-pre-training mean as lines;
  no axis starts from zero; perplexities of different tokenizers are never put on one axis (the ppl panel is left out);
- claims: per claim of the paper, our difference per column (paper's direction positive) with its 95% interval, the
  per-seed differences, zero and the smallest effect of interest as a band, and the verdict beside each row;
- curves: held-out perplexity (or validation MLM loss) against tokens seen, each seed interpolated onto a common
  token grid per point; the median line and the seeds' min-max band;
- batch_size (only when the points differ in batch size, Table 3): held-out ppl and the first task's score against
  the batch at equal tokens; lr_batch_size: a heat map when the design crosses lr and batch size;
- efficiency: real vs padded tokens per update per point.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # figures are files: never open a window, also on a machine with a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, NullLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from harness.report.figure_layout import (  # noqa: E402
    PANEL,
    STYLE,
    TEXT_PT,
    TICK_PT,
    figure_legend,
    linear_axis_near,
    lines_of,
    log_axis_near,
    name_ticks,
    panels,
    plain,
    plain_log_ticks,
    upright_height,
    wrap,
)
from harness.runs import read_curves  # noqa: E402

UNITS = {"ppl": "held-out ppl (log scale)", "bpc": "bits/char (held-out)", "blimp": "BLiMP accuracy (%)"}
CURVE_GRID = 200  # points on the common token grid of a curve
YLABEL_CHARS = 22  # a longer axis label is broken into lines: it must not outgrow a panel's height
VERDICT_CHARS = 16  # a claim's verdict beside its row, wrapped at this many characters
# A run's curve: the first of these logged columns it has, in this order of preference.
CURVE_SOURCES = (("common_val/ppl", "held-out perplexity (common set)"),
                 ("val/mlm_loss", "validation MLM loss (nats/token)"))


def colours(report: Any) -> dict[str, Any]:
    """Point label -> colour, by the point's position in the study: the same arm has the same colour everywhere."""
    palette = plt.get_cmap("tab10").colors
    return {p.label: palette[i % len(palette)] for i, p in enumerate(report.study.points)}


def styled(draw: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Draw under the report's font sizes; tick labels are made at draw time, so their size is set on the axes."""
    @functools.wraps(draw)
    def wrapper(report: Any) -> Any:
        with plt.rc_context(STYLE):
            figure = draw(report)
            for ax in figure.axes if figure is not None else []:
                ax.tick_params(which="both", labelsize=TICK_PT)
        return figure
    return wrapper


def write_figures(report: Any, target: Path) -> list[Path]:
    """Every figure the study's data allows, as PNG and PDF under target/figures/; returns the paths."""
    folder = target / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, draw in (("scores", scores_figure), ("claims", claims_figure), ("curves", curves_figure),
                       ("batch_size", batch_figure), ("lr_batch_size", lr_batch_figure),
                       ("efficiency", efficiency_figure)):
        figure = draw(report)
        if figure is None:
            continue
        for suffix in (".png", ".pdf"):
            # No creation date in the PDF (or software version in the PNG): the same runs give byte-identical files.
            metadata = {"CreationDate": None} if suffix == ".pdf" else {"Software": None}
            figure.savefig(folder / f"{name}{suffix}", dpi=150, bbox_inches="tight", metadata=metadata)
            paths.append(folder / f"{name}{suffix}")
        plt.close(figure)
    return paths


@styled
def scores_figure(report: Any) -> Any:
    """One panel per column: each pre-training seed's value as a point over the arm's mean (a tick)."""
    cells = report.cells
    if not len(cells) or not cells["n"].any():
        return None
    shown = [c for c in report.columns if cells[(cells["column"] == c) & (cells["n"] > 0)].shape[0]
             and not (c == "ppl" and tokenizers_differ(report))]
    if not shown:
        return None
    labels = [p.label for p in report.study.points]
    figure, axes = panels(len(shown), height=PANEL[1] + upright_height(labels, PANEL[0]))
    for ax, column in zip(axes, shown, strict=True):
        _scores_panel(ax, report, column, labels)
    handles = [Line2D([], [], marker="o", linestyle="", color="0.3", markersize=3, label="one pre-training seed"),
               Line2D([], [], marker="_", linestyle="", color="0.3", markersize=10, markeredgewidth=2,
                      label="mean over seeds")]
    if report.baseline:
        handles.append(Line2D([], [], color="grey", linestyle=":", label="no pre-training (mean)"))
    if report.trivial:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1, label="trivial predictor"))
    figure_legend(figure, handles)
    left_out = "; ppl left out: tokenizers differ" if "ppl" in report.columns and "ppl" not in shown else ""
    figure.suptitle(wrap(f"{report.study.name}: scores per pre-training seed{left_out}", figure, 9))
    return figure


def _scores_panel(ax: Any, report: Any, column: str, labels: list[str]) -> None:
    colour, cells = colours(report), report.cells
    drawn: list[float] = []
    for i, label in enumerate(labels):
        cell = cells[(cells["point"] == label) & (cells["column"] == column)]
        by_seed = dict(cell.iloc[0]["seed_values"]) if len(cell) and cell.iloc[0]["n"] else {}
        if not by_seed:
            continue
        values = [by_seed[s] for s in sorted(by_seed)]
        # Spread evenly, not at random: the same runs draw the same figure.
        offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(i + offsets, values, s=12, color=colour[label], alpha=0.8, linewidths=0, zorder=3)
        mean = float(np.mean(values))
        ax.hlines(mean, i - 0.3, i + 0.3, colors=[colour[label]], linewidth=2, zorder=4)
        if label == report.baseline:
            ax.axhline(mean, color="grey", linestyle=":", linewidth=1, zorder=1)
        drawn += [*values, mean]
    trivial = report.trivial.get(column)
    if trivial is not None and np.isfinite(trivial["score"]):  # what a constant answer scores
        ax.axhline(trivial["score"], color="black", linestyle="--", linewidth=1, zorder=1)
    if column == "ppl":
        log_axis_near(ax, drawn)
    elif column == "bpc":
        linear_axis_near(ax, drawn)
    ax.set_title(column)
    ax.set_ylabel(axis_label(report, column))
    name_ticks(ax, labels, PANEL[0])


@styled
def claims_figure(report: Any) -> Any:
    """One panel per claim of the paper: y = its columns, x = our difference (the paper's direction positive).
    Beside each row its verdict; a verdict's qualification (few seeds, ...) is a numbered note below the panels."""
    claims = getattr(report, "claims", None)
    if claims is not None and len(claims) and "verdict" in claims:  # a column the study did not run is no evidence
        claims = claims[claims["verdict"] != "not run"]
    if claims is None or not len(claims):
        return None
    names = list(dict.fromkeys(claims["claim"]))
    notes = verdict_notes(claims["verdict"])
    rows = max(int((claims["claim"] == n).sum()) for n in names)
    lines = max(len(lines_of(short_verdict(v, notes), VERDICT_CHARS)) or 1 for v in claims["verdict"])
    # Two claims to a row: the verdicts beside the rows need the width a third panel would take.
    figure, axes = panels(len(names), width=3.6, height=max(PANEL[1], 1.0 + rows * (0.13 * lines + 0.12)),
                          per_row=2)
    for ax, name in zip(axes, names, strict=True):
        _claim_panel(ax, claims[claims["claim"] == name].to_dict("records"), notes)
    handles = [Line2D([], [], marker="o", color="black", markersize=4, label="our difference, 95% interval"),
               Line2D([], [], marker="o", linestyle="", color="0.4", markersize=3, label="one pre-training seed"),
               Patch(color="0.85", label="within the smallest effect")]
    # A verdict's qualification as a numbered line of the legend (a figure's supxlabel would collide with it).
    handles += [Line2D([], [], linestyle="", label=wrap(f"[{k}] {note}", figure, TICK_PT))
                for note, k in notes.items()]
    figure_legend(figure, handles)
    figure.suptitle(wrap(f"{report.study.name}: the paper's claims", figure, 9))
    return figure


def verdict_notes(verdicts: Any) -> dict[str, int]:
    """The qualifications of the verdicts (the text in brackets after the verdict), numbered in order of first use."""
    notes: dict[str, int] = {}
    for verdict in verdicts:
        _, bracket, note = str(verdict or "").partition(" (")
        if bracket:
            notes.setdefault(note.removesuffix(")"), len(notes) + 1)
    return notes


def short_verdict(verdict: Any, notes: dict[str, int]) -> str:
    """'reproduces [1]' for 'reproduces (2 pre-training seeds, ...)': the note itself is written below the panels."""
    head, bracket, note = str(verdict or "").partition(" (")
    return f"{head} [{notes[note.removesuffix(')')]}]" if bracket else head


def _claim_panel(ax: Any, rows: list[dict[str, Any]], notes: dict[str, int]) -> None:
    beside = blended_transform_factory(ax.transAxes, ax.transData)
    for y, row in enumerate(rows):
        smallest = _number(row.get("smallest_effect"))
        if smallest is not None:  # per row: the smallest effect of interest has each column's own units
            ax.add_patch(Rectangle((-smallest, y - 0.3), 2 * smallest, 0.6, facecolor="0.85", edgecolor="none",
                                   zorder=0, gid="smallest_effect"))
        listed = row.get("seed_diffs")
        seeds = [float(v) for v in (listed if isinstance(listed, list | tuple | np.ndarray) else [])
                 if _number(v) is not None]
        if seeds:
            rise = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else np.zeros(1)
            ax.scatter(seeds, y + rise, s=8, color="0.4", linewidths=0, zorder=2)
        diff, low, high = (_number(row.get(k)) for k in ("diff", "low", "high"))
        if diff is not None:
            error = [[diff - low], [high - diff]] if low is not None and high is not None else None
            ax.errorbar(diff, y, xerr=error, fmt="o", color="black", markersize=4, capsize=2, linewidth=1,
                        zorder=3)
        ax.text(1.03, y, "\n".join(lines_of(short_verdict(row["verdict"], notes), VERDICT_CHARS)),
                transform=beside, fontsize=TICK_PT, va="center", ha="left")
    ax.axvline(0, color="black", linewidth=0.8, zorder=1)
    ax.set_yticks(range(len(rows)), [str(row["column"]) for row in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the claim's first column on top
    ax.set_title(str(rows[0]["claim"]))
    ax.set_xlabel("difference\n(paper's direction positive)")


@styled
def curves_figure(report: Any) -> Any:
    """Held-out curve per point against tokens seen: the seeds' median on a common token grid, their min-max band."""
    runs = report.tidy.drop_duplicates("run_dir") if len(report.tidy) else report.tidy
    if not len(runs):
        return None
    found = {label: [s for s in (_curve(Path(d)) for d in runs[runs["point"] == label]["run_dir"]) if s is not None]
             for label in colours(report)}
    kinds = [kind for series in found.values() for _, kind in series]
    if not kinds:
        return None
    # One quantity on the axis, the held-out perplexity where any run logged it: a run without it is left out.
    ylabel = next(label for _, label in CURVE_SOURCES if label in kinds)
    figure, ax = plt.subplots(figsize=(3.6, 2.8), layout="constrained")
    drawn: list[float] = []
    for label, colour in colours(report).items():
        grid, curves = common_grid([s for s, kind in found[label] if kind == ylabel])
        if grid is None:
            continue
        ax.plot(grid, np.median(curves, axis=0), color=colour, label=label, linewidth=1.2)
        if len(curves) > 1:
            ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=colour, alpha=0.2, linewidth=0)
        drawn += [float(curves.min()), float(curves.max())]
    if not drawn:
        plt.close(figure)
        return None
    if "perplexity" in ylabel:
        log_axis_near(ax, drawn)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 2M, not an offset text beside the axis
    differ = tokenizers_differ(report)
    ax.set_xlabel("tokens seen" + (" (each arm's own tokenizer)" if differ else ""))
    ax.set_ylabel(ylabel)
    figure_legend(figure, ax.get_legend_handles_labels()[0])
    per_token = "; per token of each arm's tokenizer" if differ else ""
    ax.set_title(wrap(f"{report.study.name}: pre-training curves, band = seeds' min-max{per_token}", figure,
                      TEXT_PT))
    return figure


def common_grid(series: list[Any]) -> tuple[Any, Any]:
    """Each seed's curve interpolated onto one evenly spaced token grid over the range every seed covers:
    (grid, array seeds x grid), or (None, None). Seeds that end at different tokens give no stair-steps or end
    artefacts, for no seed is extrapolated."""
    series = [s for s in series if len(s)]
    if not series:
        return None, None
    start, end = max(float(s.index.min()) for s in series), min(float(s.index.max()) for s in series)
    if end <= start:  # a single logged point, or seeds that share no tokens: nothing to interpolate
        return None, None
    grid = np.linspace(start, end, CURVE_GRID)
    curves = np.array([np.interp(grid, s.index.to_numpy(float), s.to_numpy(float)) for s in series])
    return grid, curves


@styled
def batch_figure(report: Any) -> Any:
    """Table 3: held-out ppl and the first task's score against the batch size, per seed and the mean; the
    no-pre-training row (it has no batch) as a line."""
    runs = report.tidy.drop_duplicates("run_dir") if len(report.tidy) else report.tidy
    runs = runs[runs["point"] != report.baseline] if len(runs) else runs
    if not len(runs) or "optim.batch_size" not in runs or runs["optim.batch_size"].nunique() < 2:
        return None
    columns = ["bpc" if tokenizers_differ(report) else "ppl", *list(report.study.tasks)[:1]]
    batches = runs.groupby("point")["optim.batch_size"].first()
    figure, axes = panels(len(columns))
    for ax, column in zip(axes, columns, strict=True):
        _batch_panel(ax, report, column, batches)
    handles = axes[0].get_legend_handles_labels()[0]  # one entry per point
    if report.baseline:
        handles.append(Line2D([], [], color="grey", linestyle=":", label="no pre-training (mean)"))
    figure_legend(figure, handles)
    figure.suptitle(wrap(f"{report.study.name}: batch size at equal tokens (points: seeds; tick: mean)", figure, 9))
    return figure


def _batch_panel(ax: Any, report: Any, column: str, batches: Any) -> None:
    colour, cells = colours(report), report.cells
    means, drawn = [], []
    for cell in cells[(cells["column"] == column) & (cells["n"] > 0)].to_dict("records"):
        by_seed = dict(cell["seed_values"])
        values = [by_seed[s] for s in sorted(by_seed)]
        if not values:
            continue
        drawn += values
        if cell["point"] == report.baseline or cell["point"] not in batches:
            ax.axhline(float(np.mean(values)), color="grey", linestyle=":", linewidth=1, zorder=1)
            continue
        x = batches[cell["point"]]
        spread = 2.0 ** np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else np.ones(1)
        ax.scatter(x * spread, values, s=10, color=colour[cell["point"]], linewidths=0, alpha=0.8, zorder=3)
        ax.plot([x], [np.mean(values)], marker="_", markersize=12, markeredgewidth=2, color=colour[cell["point"]],
                label=cell["point"], zorder=4)
        means.append((x, float(np.mean(values))))
    if means:
        ax.plot(*zip(*sorted(means), strict=True), color="grey", linewidth=1, zorder=2)
    if column == "ppl":
        log_axis_near(ax, drawn)
    elif column == "bpc":
        linear_axis_near(ax, drawn)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(batches.unique())))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("batch (sequences/update)")
    ax.set_ylabel(axis_label(report, column))
    ax.set_title(column)


@styled
def lr_batch_figure(report: Any) -> Any:
    """Table 3 with the pre-training lr tuned (a nuisance): the median held-out perplexity over seeds of each
    (peak lr, batch size), as a heat map; None unless the design crosses them (two batch sizes or more, each with
    two lrs or more): a zip, one lr per batch size, is a diagonal with nothing to compare along a row."""
    runs = report.tidy.drop_duplicates("run_dir") if len(report.tidy) else report.tidy
    metric = "common_val_bpc" if tokenizers_differ(report) else "common_val_ppl"
    if not len(runs) or not all(k in runs for k in ("optim.peak_lr", "optim.batch_size", metric)):
        return None
    if "point" in runs:
        runs = runs[runs["point"] != getattr(report, "baseline", None)]  # not pre-trained: no lr, no batch
    if (runs.groupby("optim.batch_size")["optim.peak_lr"].nunique() >= 2).sum() < 2:
        return None
    grid = runs.pivot_table(index="optim.peak_lr", columns="optim.batch_size", values=metric, aggfunc="median")
    figure, ax = plt.subplots(figsize=(0.6 * len(grid.columns) + 2.4, 0.35 * len(grid.index) + 1.9),
                              layout="constrained")
    # Perplexity on a log colour scale, as on every perplexity axis here.
    norm = LogNorm() if metric.endswith("ppl") and (grid.to_numpy()[np.isfinite(grid.to_numpy())] > 0).all() else None
    image = ax.imshow(grid.to_numpy(), cmap="viridis_r", aspect="auto", norm=norm)
    ax.set_xticks(range(len(grid.columns)), [f"{b:g}" for b in grid.columns])
    ax.set_yticks(range(len(grid.index)), [f"{lr:g}" for lr in grid.index])
    for (row, col), value in np.ndenumerate(grid.to_numpy()):
        if np.isfinite(value):  # dark text on the light cells, light on the dark ones
            red, green, blue, _ = image.cmap(image.norm(value))
            ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            ax.text(col, row, plain(value), ha="center", va="center", fontsize=TICK_PT, color=ink)
    ax.set_xlabel("batch (sequences/update)")
    ax.set_ylabel("peak learning rate")
    bar = figure.colorbar(image, ax=ax, label="median held-out " + ("bpc" if metric.endswith("bpc") else "ppl"))
    if norm is not None:
        plain_log_ticks(bar.ax.yaxis, norm.vmin, norm.vmax)
    figure.suptitle(wrap(f"{report.study.name}: learning rate x batch size", figure, 9))
    return figure


@styled
def efficiency_figure(report: Any) -> Any:
    """Real and padded tokens per update per point (medians over seeds): the data each format wastes."""
    runs = report.tidy.drop_duplicates("run_dir") if len(report.tidy) else report.tidy
    if not len(runs) or "train_tokens_per_update" not in runs or runs["train_tokens_per_update"].isna().all():
        return None
    medians = runs.groupby("point", sort=False)[["train_tokens_per_update", "train_padded_tokens_per_update"]].median()
    medians = medians.dropna(how="all")  # the no-pre-training row trains on nothing
    colour = colours(report)
    width = max(PANEL[0], 0.45 * len(medians) + 1.2)
    figure, ax = plt.subplots(figsize=(width, 2.6 + upright_height(list(medians.index), width)), layout="constrained")
    for i, (label, row) in enumerate(medians.iterrows()):
        ax.bar(i - 0.2, row["train_tokens_per_update"], width=0.4, color=colour[label])
        ax.bar(i + 0.2, row["train_padded_tokens_per_update"], width=0.4, color=colour[label], alpha=0.4,
               hatch="//")
    name_ticks(ax, list(medians.index), width)
    ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_ylabel("tokens per update")
    figure_legend(figure, [Patch(facecolor="0.5", label="real"),
                           Patch(facecolor="0.5", alpha=0.4, hatch="//", label="padded")])
    ax.set_title(wrap("real vs padded tokens per update (median over seeds)", figure, TEXT_PT))
    return figure


def tokenizers_differ(report: Any) -> bool:
    """Do the points use different tokenizers (kind or vocabulary size)? Then perplexities are per different tokens
    and never share an axis; bits per character still compare."""
    keys = ["tokenizer.kind", "tokenizer.vocab_size"]
    tidy = report.tidy
    if not len(tidy) or not all(k in tidy for k in keys):
        return False
    return len(tidy.drop_duplicates("point")[keys].astype(str).drop_duplicates()) > 1


def axis_label(report: Any, column: str) -> str:
    """A column's y-axis label, in lines short enough for a panel's height."""
    return "\n".join(lines_of(UNITS.get(column, f"{_task_metric(report, column)} (dev)"), YLABEL_CHARS))


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _curve(run_dir: Path) -> tuple[Any, str] | None:
    curves = read_curves(run_dir)
    if not len(curves) or "train/tokens_seen" not in curves:
        return None  # a run that logged no training step (log_every_steps above its budget) has no token axis
    tokens = curves["train/tokens_seen"].ffill()
    for column, label in CURVE_SOURCES:
        if column in curves and curves[column].notna().any():
            values = curves[column]
            keep = values.notna() & tokens.notna()
            return values[keep].set_axis(tokens[keep].to_numpy()).groupby(level=0).last(), label
    return None


def _task_metric(report: Any, column: str) -> str:
    metric = report.tidy[report.tidy["task"] == column]["metric"] if len(report.tidy) else []
    return metric.iloc[0] if len(metric) else column
