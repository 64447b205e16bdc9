"""Layout rules of the report's figures (harness.report.plots): panels of about 2.4 x 2.2 inches, at most three to
a row (a page's text width), fonts of at least 7 pt, one legend below the panels, point names that never run into
each other, axes fitted to the data (never from zero for a perplexity or bits per character), plain numbers."""

from __future__ import annotations

import math
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files: never open a window, also on a machine with a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

PANEL = (2.4, 2.2)  # inches per panel: three side by side fill a page's text width
PER_ROW = 3
TICK_PT, TEXT_PT = 7, 8
STYLE = {"font.size": TEXT_PT, "axes.titlesize": TEXT_PT, "axes.labelsize": TEXT_PT, "legend.fontsize": TICK_PT,
         "figure.titlesize": 9, "xtick.labelsize": TICK_PT, "ytick.labelsize": TICK_PT}
CHAR_PT = 0.6  # a character's width in points per point of font size (DejaVu Sans, generous)
FIGURE_EXTRA = 0.6  # inches for a figure's title and legend, beside its panels


def panels(n: int, width: float = PANEL[0], height: float = PANEL[1], per_row: int = PER_ROW) -> tuple[Any, list]:
    """A constrained figure of n panels wrapped into rows of at most `per_row`; the unused cells removed."""
    ncols = min(per_row, n)
    nrows = math.ceil(n / ncols)
    figure, grid = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + FIGURE_EXTRA), squeeze=False,
                                layout="constrained")
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.remove()
    return figure, axes[:n]


def figure_legend(figure: Any, handles: list[Any]) -> None:
    """One legend below the panels, as many entries to a line as the figure's width holds."""
    if not handles:
        return
    entry = max(len(line) for h in handles for line in h.get_label().split("\n")) * CHAR_PT * TICK_PT + 30
    ncols = max(1, min(len(handles), int(figure.get_figwidth() * 72 // entry)))
    figure.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False, fontsize=TICK_PT)


def name_ticks(ax: Any, labels: list[str], width_in: float) -> None:
    """Point labels on the x axis: side by side when neighbours fit in the panel's width, else upright (a label at
    45 degrees still reaches over its neighbour's box)."""
    ax.set_xticks(range(len(labels)), labels, rotation=90 if upright_height(labels, width_in) else 0)
    ax.set_xlim(-0.6, len(labels) - 0.4)


def upright_height(labels: list[str], width_in: float) -> float:
    """0 when the labels fit side by side under a panel `width_in` wide, else the inches they take stood upright
    (what the panel must grow by, lest its axes shrink to a strip)."""
    room = 0.7 * width_in * 72 / max(len(labels), 1)
    widths = [len(label) * CHAR_PT * TICK_PT for label in labels]
    fits = all((a + b) / 2 + 4 < room for a, b in zip(widths, widths[1:], strict=False))
    return 0.0 if fits else max(widths) / 72


def log_axis_near(ax: Any, values: list[float]) -> None:
    """A log axis around the data (perplexity is exp of a loss: ratios matter, and zero is never near), with a
    few plain-number ticks instead of crowded minor labels."""
    values = [v for v in values if np.isfinite(v) and v > 0]
    if not values:
        return
    low, high = min(values), max(values)
    pad = max((high / low) ** 0.08, 1.05)
    ax.set_yscale("log")
    ax.set_ylim(low / pad, high * pad)
    plain_log_ticks(ax.yaxis, low, high)


def plain_log_ticks(axis: Any, low: float, high: float) -> None:
    """Four plain-number ticks spread over [low, high] on a log axis, and no minor labels (they crowd)."""
    axis.set_major_locator(FixedLocator(sorted({float(f"{v:.2g}") for v in np.geomspace(low, high, 4)})))
    axis.set_major_formatter(FuncFormatter(lambda v, _: plain(v)))
    axis.set_minor_formatter(NullFormatter())


def linear_axis_near(ax: Any, values: list[float]) -> None:
    """A linear axis around the data, never reaching down to zero for a positive quantity."""
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    pad = 0.1 * (high - low) if high > low else 0.05 * abs(low) or 0.1
    ax.set_ylim(max(low - pad, 0.6 * low) if low > 0 else low - pad, high + pad)


def plain(value: float) -> str:
    """A number as a reader writes it: 4,300 and 21.5, not 4.3e+03."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def wrap(text: str, figure: Any, size: float) -> str:
    """`text` broken into lines that fit the figure's width at `size` points."""
    return "\n".join(lines_of(text, max(20, int(figure.get_figwidth() * 72 / (CHAR_PT * size)))))


def lines_of(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters, broken between words only ("min-max" stays whole)."""
    return textwrap.wrap(text, width, break_on_hyphens=False)
