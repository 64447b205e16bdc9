"""A study report's figures (matplotlib, Agg), each written as PNG and PDF, one colour per scientific point (arm)
in every figure (its position in the study, tab10):

- scores: per column (task score, held-out ppl, bpc) the median over seeds per point, seeds' min-max as error bars;
- curves: held-out perplexity (or validation MLM loss) against tokens seen, a line per point, seeds as a band;
- batch_size (only when the points differ in batch size, Table 3): held-out ppl and the first task's score against
  the batch at equal tokens;
- efficiency: real vs padded tokens per update per point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # figures are files: never open a window, also on a machine with a display

import matplotlib.pyplot as plt  # noqa: E402

from harness.runs import read_curves  # noqa: E402

UNITS = {"ppl": "held-out perplexity (common set)", "bpc": "held-out bits per character (common set)",
         "blimp": "BLiMP accuracy (%, zero-shot)"}


def colours(report: Any) -> dict[str, Any]:
    """Point label -> colour, by the point's position in the study: the same arm has the same colour everywhere."""
    palette = plt.get_cmap("tab10").colors
    return {p.label: palette[i % len(palette)] for i, p in enumerate(report.study.points)}


def write_figures(report: Any, target: Path) -> list[Path]:
    """Every figure the study's data allows, as PNG and PDF under target/figures/; returns the paths."""
    folder = target / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, draw in (("scores", scores_figure), ("curves", curves_figure), ("batch_size", batch_figure),
                       ("lr_batch_size", lr_batch_figure), ("efficiency", efficiency_figure)):
        figure = draw(report)
        if figure is None:
            continue
        for suffix in (".png", ".pdf"):
            # No creation date in the PDF (or software version in the PNG): the same runs give byte-identical files.
            metadata = {"CreationDate": None} if suffix == ".pdf" else {"Software": None}
            figure.savefig(folder / f"{name}{suffix}", dpi=120, bbox_inches="tight", metadata=metadata)
            paths.append(folder / f"{name}{suffix}")
        plt.close(figure)
    return paths


def scores_figure(report: Any) -> Any:
    """Grouped bars: one panel per column, one bar per point with the seeds' min-max."""
    cells, labels, colour = report.cells, [p.label for p in report.study.points], colours(report)
    if not len(cells) or not cells["n"].any():
        return None
    figure, axes = plt.subplots(1, len(report.columns), figsize=(3.2 * len(report.columns), 3.4), squeeze=False,
                                layout="constrained")  # no axis label runs into the next panel
    for ax, column in zip(axes[0], report.columns, strict=True):
        for i, label in enumerate(labels):
            cell = cells[(cells["point"] == label) & (cells["column"] == column)].iloc[0]
            if not cell["n"]:
                continue
            err = [[cell["median"] - cell["min"]], [cell["max"] - cell["median"]]]
            ax.bar(i, cell["median"], yerr=err, color=colour[label], capsize=3, label=label,
                   hatch="//" if label == report.baseline else None)
        trivial = report.trivial.get(column)
        if trivial is not None and np.isfinite(trivial["score"]):  # what a constant answer scores
            ax.axhline(trivial["score"], color="black", linestyle="--", linewidth=1, label="trivial predictor")
        metric = _task_metric(report, column)
        ax.set_title(column)
        ax.set_ylabel(UNITS.get(column, f"{metric} (dev, %)"))
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    baseline = "; hatched: no pre-training" if report.baseline else ""
    trivial = "; dashed: trivial predictor" if report.trivial else ""
    figure.suptitle(f"{report.study.name}: median over seeds, bars = seeds' min-max{baseline}{trivial}")
    return figure


def curves_figure(report: Any) -> Any:
    """Held-out curve per point against tokens seen; the band spans the seeds."""
    import pandas as pd

    runs = report.tidy.drop_duplicates("run_dir") if len(report.tidy) else report.tidy
    if not len(runs):
        return None
    figure, ax = plt.subplots(figsize=(6, 4))
    ylabel = None
    for label, colour in colours(report).items():
        series = [s for s in (_curve(Path(d)) for d in runs[runs["point"] == label]["run_dir"]) if s is not None]
        if not series:
            continue
        ylabel = series[0][1]
        frame = pd.concat([s.rename(i) for i, (s, _) in enumerate(series)], axis=1).sort_index().interpolate(
            limit_area="inside")
        ax.plot(frame.index, frame.median(axis=1), color=colour, label=label)
        if frame.shape[1] > 1:
            ax.fill_between(frame.index, frame.min(axis=1), frame.max(axis=1), color=colour, alpha=0.2)
    if ylabel is None:
        plt.close(figure)
        return None
    ax.set_xlabel("tokens seen (real, per run)")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(f"{report.study.name}: pre-training curves (band = seeds' min-max)")
    return figure


def batch_figure(report: Any) -> Any:
    """Table 3: held-out ppl and the first task's score against the batch size (sequences per update)."""
    runs = report.tidy.drop_duplicates("run_dir") if len(report.tidy) else report.tidy
    if not len(runs) or "optim.batch_size" not in runs or runs["optim.batch_size"].nunique() < 2:
        return None
    columns = ["ppl", *list(report.study.tasks)[:1]]
    figure, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    batches = runs.groupby("point")["optim.batch_size"].first()
    colour = colours(report)
    for ax, column in zip(axes[0], columns, strict=True):
        cells = report.cells[(report.cells["column"] == column) & (report.cells["n"] > 0)]
        xs = [batches[p] for p in cells["point"]]
        ax.plot(xs, cells["median"], color="grey", linewidth=1)
        for x, cell in zip(xs, cells.to_dict("records"), strict=True):
            ax.errorbar(x, cell["median"], yerr=[[cell["median"] - cell["min"]], [cell["max"] - cell["median"]]],
                        fmt="o", color=colour[cell["point"]], capsize=3, label=cell["point"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (sequences per update), equal tokens")
        ax.set_ylabel(UNITS.get(column, f"{_task_metric(report, column)} (dev, %)"))
        ax.legend(fontsize="small")
    figure.suptitle(f"{report.study.name}: batch size at equal tokens")
    return figure


def lr_batch_figure(report: Any) -> Any:
    """Table 3 with the pre-training lr tuned (a nuisance): median held-out perplexity over seeds for each
    (peak lr, batch size), as a heat map; None unless both vary."""
    runs = report.tidy.drop_duplicates("run_dir") if len(report.tidy) else report.tidy
    axes_needed = ("optim.peak_lr", "optim.batch_size", "common_val_ppl")
    if not len(runs) or not all(k in runs for k in axes_needed) or min(runs[k].nunique() for k in axes_needed[:2]) < 2:
        return None
    grid = runs.pivot_table(index="optim.peak_lr", columns="optim.batch_size", values="common_val_ppl",
                            aggfunc="median")
    figure, ax = plt.subplots(figsize=(1.3 * len(grid.columns) + 3, 0.6 * len(grid.index) + 2.2))
    image = ax.imshow(grid.to_numpy(), cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(grid.columns)), [f"{b:g}" for b in grid.columns])
    ax.set_yticks(range(len(grid.index)), [f"{lr:g}" for lr in grid.index])
    for (row, col), value in np.ndenumerate(grid.to_numpy()):
        if np.isfinite(value):
            ax.text(col, row, f"{value:.4g}", ha="center", va="center", fontsize="small", color="white")
    ax.set_xlabel("batch size (sequences per update), equal tokens")
    ax.set_ylabel("peak learning rate")
    figure.colorbar(image, ax=ax, label="held-out perplexity (common set, median over seeds)")
    figure.suptitle(f"{report.study.name}: learning rate x batch size")
    return figure


def efficiency_figure(report: Any) -> Any:
    """Real and padded tokens per update per point (medians over seeds): the data each format wastes."""
    runs = report.tidy.drop_duplicates("run_dir") if len(report.tidy) else report.tidy
    if not len(runs) or runs["train_tokens_per_update"].isna().all():
        return None
    medians = runs.groupby("point", sort=False)[["train_tokens_per_update", "train_padded_tokens_per_update"]].median()
    colour = colours(report)
    figure, ax = plt.subplots(figsize=(1.4 * len(medians) + 2, 3.6))
    for i, (label, row) in enumerate(medians.iterrows()):
        ax.bar(i - 0.2, row["train_tokens_per_update"], width=0.4, color=colour[label])
        ax.bar(i + 0.2, row["train_padded_tokens_per_update"], width=0.4, color=colour[label], alpha=0.4,
               hatch="//")
    ax.set_xticks(range(len(medians)), list(medians.index), rotation=30, ha="right")
    ax.set_ylabel("tokens per update (last logged)")
    ax.set_title("real (solid) vs padded (hatched) tokens per update")
    return figure


def _curve(run_dir: Path) -> tuple[Any, str] | None:
    curves = read_curves(run_dir)
    if not len(curves) or "train/tokens_seen" not in curves:
        return None  # a run that logged no training step (log_every_steps above its budget) has no token axis
    tokens = curves["train/tokens_seen"].ffill()
    for column, label in (("common_val/ppl", "held-out perplexity (common set)"),
                          ("val/mlm_loss", "validation MLM loss (nats/token)")):
        if column in curves and curves[column].notna().any():
            values = curves[column]
            keep = values.notna() & tokens.notna()
            return values[keep].set_axis(tokens[keep].to_numpy()).groupby(level=0).last(), label
    return None


def _task_metric(report: Any, column: str) -> str:
    metric = report.tidy[report.tidy["task"] == column]["metric"] if len(report.tidy) else []
    return metric.iloc[0] if len(metric) else column
