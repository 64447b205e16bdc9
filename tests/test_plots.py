"""The report's figures on a hand-made study (no training): no text runs into another, at most three panels to a
row, every pre-training seed drawn, held-out axes near their data, perplexities of different tokenizers never on
one axis, curves on a common token grid, the lr x batch heat map only for a crossed design, the claims' bands."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from harness.report import plots  # noqa: E402
from harness.report.report import _cell as report_cell  # noqa: E402

ARMS = ["full_sentences", "doc_sentences", "segment_pair", "no_pretraining"]
TASKS = ["sst2", "mnli", "cola", "blimp"]
PRETRAIN_SEEDS, FINETUNE_SEEDS = (0, 1, 2), (0, 1)
BATCHES = {"full_sentences": 256, "doc_sentences": 2048, "segment_pair": 8192, "no_pretraining": 256}
LRS = (5e-4, 1e-3)
PPL = {"full_sentences": 21.0, "doc_sentences": 23.5, "segment_pair": 27.0, "no_pretraining": 4100.0}


def _cell(point: str, column: str, seeds: list[tuple], values: list[float]) -> dict:
    """A cell as the report makes it (harness.report.report._cell): per pre-training seed, its trials averaged."""
    rows = pd.DataFrame([{"score": v, "pretrain_seed": s, "finetune_seed": f, "job_dir": None}
                         for (s, f), v in zip(seeds, values, strict=True)])
    return report_cell(point, column, rows, len({s for s, _ in seeds}))


def _cells() -> pd.DataFrame:
    rows = []
    for a, point in enumerate(ARMS):
        for t, task in enumerate(TASKS):
            if task == "blimp":  # zero-shot: one value per pre-training run
                seeds = [(s, None) for s in PRETRAIN_SEEDS]
            else:
                seeds = list(itertools.product(PRETRAIN_SEEDS, FINETUNE_SEEDS))
            values = [60.0 + 3 * t - 2 * a + 0.7 * s + 0.3 * f if f is not None else 60.0 - a + s
                      for s, f in seeds]
            rows.append(_cell(point, task, seeds, values))
        held = [(s, None) for s in PRETRAIN_SEEDS]
        rows.append(_cell(point, "ppl", held, [PPL[point] * (1 + 0.02 * s) for s in PRETRAIN_SEEDS]))
        rows.append(_cell(point, "bpc", held, [np.log2(PPL[point]) / 4 + 0.01 * s for s in PRETRAIN_SEEDS]))
    return pd.DataFrame(rows)


def _write_curve(run_dir: Path, tokens: np.ndarray, ppl: np.ndarray) -> None:
    logs = run_dir / "logs" / "launch-0"
    logs.mkdir(parents=True)
    pd.DataFrame({"step": np.arange(len(tokens)), "train/tokens_seen": tokens,
                  "common_val/ppl": ppl}).to_csv(logs / "metrics.csv", index=False)


def _tidy(root: Path, tokenizers: dict[str, tuple] | None = None) -> pd.DataFrame:
    rows = []
    for point, seed, lr in itertools.product(ARMS, PRETRAIN_SEEDS, LRS):
        run_dir = root / f"{point}-s{seed}-lr{lr:g}"
        if point != "no_pretraining":  # no training, no curve
            ends = 1_000_000 + 37_000 * seed  # seeds end at different tokens
            tokens = np.linspace(4_000, ends, 25).round()
            _write_curve(run_dir, tokens, PPL[point] + 2000.0 / (1 + tokens / 20_000) + seed)
        kind, vocab = (tokenizers or {}).get(point, ("bpe", 8192))
        run = {"run_dir": str(run_dir), "point": point, "pretrain_seed": seed, "optim.batch_size": BATCHES[point],
               "optim.peak_lr": lr, "common_val_ppl": PPL[point] + seed + 1000 * lr,
               "common_val_bpc": np.log2(PPL[point]) / 4, "tokenizer.kind": kind, "tokenizer.vocab_size": vocab,
               "train_tokens_per_update": 250_000.0 + 1000 * seed, "train_padded_tokens_per_update": 262_144.0}
        rows += [{**run, "task": task, "metric": "mcc" if task == "cola" else "accuracy"} for task in TASKS]
    return pd.DataFrame(rows)


FEW_SEEDS = "reproduces (2 pre-training seeds, fewer than 3: a t interval on few seeds is wide and its calibration " \
            "rests on normal seed effects)"


def _claims() -> pd.DataFrame:
    rows = []
    for c, (claim, kind, verdict) in enumerate([("T2-doc>full", "superior", FEW_SEEDS),
                                                ("T2-pair<full", "noninferior", "no signal at this scale"),
                                                ("T2-nsp=none", "equivalent", "contradicts")]):
        for k, column in enumerate([*TASKS, "heldout"][: 3 + c]):
            diff = 0.5 * (k - 1) + 0.2 * c
            rows.append({"claim": claim, "text": "Removing NSP matches or improves downstream scores.", "kind": kind,
                         "arm": "doc_sentences", "reference": "full_sentences", "column": column, "diff": diff,
                         "low": diff - 0.8, "high": diff + 0.6, "smallest_effect": 0.25 * (k + 1),
                         "seed_diffs": [diff - 0.3, diff, diff + 0.4] if k else [], "verdict": verdict})
    rows.append({**rows[-1], "column": "ppl", "diff": None, "low": None, "high": None, "smallest_effect": None,
                 "seed_diffs": [], "verdict": "not run"})  # a claim's column this study cannot judge
    return pd.DataFrame(rows)


def fake_report(root: Path, tokenizers: dict[str, tuple] | None = None, claims: pd.DataFrame | None = None):
    study = SimpleNamespace(name="table2_input_format-cpu", tasks={t: None for t in TASKS},
                            points=[SimpleNamespace(label=a, baseline=a == "no_pretraining") for a in ARMS])
    return SimpleNamespace(study=study, cells=_cells(), tidy=_tidy(root, tokenizers), baseline="no_pretraining",
                           trivial={"sst2": {"score": 50.9, "description": "majority"},
                                    "mnli": {"score": 35.4, "description": "majority"},
                                    "cola": {"score": 0.0, "description": "majority"}},
                           arms=ARMS[:-1], columns=[*TASKS, "ppl", "bpc"], reference="full_sentences",
                           claims=_claims() if claims is None else claims)


@pytest.fixture
def report(tmp_path):
    return fake_report(tmp_path)


FIGURES = {"scores": plots.scores_figure, "claims": plots.claims_figure, "curves": plots.curves_figure,
           "batch_size": plots.batch_figure, "lr_batch_size": plots.lr_batch_figure,
           "efficiency": plots.efficiency_figure}


def _drawn_tick_labels(ax) -> list[Text]:
    """The tick labels the axis draws: those whose tick lies inside the axes (a locator also places ticks beyond
    the view, which are never drawn)."""
    box, drawn = ax.get_window_extent(), []
    for axis, (low, high), centre in ((ax.xaxis, box.intervalx, 0), (ax.yaxis, box.intervaly, 1)):
        for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
            where = ax.transData.transform((tick.get_loc(), tick.get_loc()))[centre]
            if low - 1 <= where <= high + 1:
                drawn += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    return drawn


def visible_texts(figure) -> list[Text]:
    """Every text the figure draws with something in it: titles, axis labels, drawn tick labels, legends,
    annotations."""
    figure.canvas.draw()
    ticks = {id(label) for ax in figure.axes for axis in (ax.xaxis, ax.yaxis)
             for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()] for label in (tick.label1, tick.label2)}
    drawn = {id(label) for ax in figure.axes for label in _drawn_tick_labels(ax)}
    texts = [t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()
             and (id(t) not in ticks or id(t) in drawn)]
    return list({id(t): t for t in texts}.values())


def overlapping_texts(figure) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes intersect (touching counts: two tick labels that meet are unreadable)."""
    renderer = figure.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in visible_texts(figure)]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
            if box_a.x0 <= box_b.x1 and box_b.x0 <= box_a.x1 and box_a.y0 <= box_b.y1 and box_b.y0 <= box_a.y1]


def panels_per_row(figure) -> int:
    """The most panels side by side: axes whose vertical extents overlap are in one row."""
    figure.canvas.draw()
    spans = [ax.get_position().intervaly for ax in figure.axes if ax.get_visible()]
    return max(sum(min(a[1], b[1]) - max(a[0], b[0]) > 0.5 * (a[1] - a[0]) for b in spans) for a in spans)


@pytest.mark.parametrize("name", list(FIGURES))
def test_no_text_of_a_figure_runs_into_another_and_every_text_is_readable(report, name):
    figure = FIGURES[name](report)
    assert figure is not None, name
    assert figure.get_layout_engine() is not None  # constrained: panels never collide with their labels
    assert overlapping_texts(figure) == []
    sizes = {t.get_text(): t.get_fontsize() for t in visible_texts(figure)}
    assert min(sizes.values()) >= 7, {k: v for k, v in sizes.items() if v < 7}
    assert panels_per_row(figure) <= 3
    plt.close(figure)


def test_the_overlap_check_finds_two_texts_at_one_spot():
    figure, ax = plt.subplots(figsize=(3, 2), layout="constrained")
    ax.set_title("a title")
    assert overlapping_texts(figure) == []
    ax.text(0.5, 0.5, "first label", transform=ax.transAxes)
    ax.text(0.52, 0.5, "second label", transform=ax.transAxes)
    assert overlapping_texts(figure) == [("first label", "second label")]
    crowded, ax = plt.subplots(figsize=(1.5, 1.5))
    ax.set_xticks(range(4), ["a long label"] * 4)  # tick labels of one axis running into each other count too
    assert ("a long label", "a long label") in overlapping_texts(crowded)
    plt.close("all")


def test_the_scores_panels_hold_one_point_per_pretraining_seed_and_point(report):
    figure = plots.scores_figure(report)
    panels = {ax.get_title(): ax for ax in figure.axes}
    assert list(panels) == report.columns
    for column, ax in panels.items():
        offsets = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
        assert sum(len(o) for o in offsets) == len(ARMS) * len(PRETRAIN_SEEDS), column
        assert not ax.patches  # no bar from zero
    # a seed's point is the mean of its fine-tuning seeds: sst2, full_sentences (a=0, t=0), seed 2: 60 + 1.4 + 0.15
    first = next(c for c in panels["sst2"].collections if isinstance(c, PathCollection)).get_offsets()
    assert first[:, 1].tolist() == pytest.approx([60.15, 60.85, 61.55])
    plt.close(figure)


def test_held_out_axes_start_near_their_data_not_at_zero(report):
    figure = plots.scores_figure(report)
    for ax in figure.axes:
        if ax.get_title() in ("ppl", "bpc"):
            smallest = min(v for values in report.cells[report.cells["column"] == ax.get_title()]["values"]
                           for v in values)
            assert 0.5 * smallest < ax.get_ylim()[0] < smallest, ax.get_title()
    plt.close(figure)


def test_perplexities_of_different_tokenizers_never_share_an_axis(tmp_path):
    mixed = fake_report(tmp_path, tokenizers={"doc_sentences": ("wordpiece", 8192)})
    figure = plots.scores_figure(mixed)
    titles = [ax.get_title() for ax in figure.axes]
    assert "ppl" not in titles and "bpc" in titles
    curves = plots.curves_figure(mixed)
    assert "per token of each arm's tokenizer" in curves.axes[0].get_title().replace("\n", " ")
    plt.close("all")


def test_curves_lie_on_a_common_token_grid_where_every_seed_has_data(report):
    figure = plots.curves_figure(report)
    ax = figure.axes[0]
    line = next(line for line in ax.lines if line.get_label() == "full_sentences")
    x = line.get_xdata()
    steps = np.diff(x)
    assert (steps > 0).all() and np.allclose(steps, steps[0])  # no stair-steps: evenly spaced, increasing
    assert x[0] == 4_000 and x[-1] == 1_000_000  # the seed that ends first ends the grid: no end artefact
    band = next(c for c in ax.collections if isinstance(c, PolyCollection))
    edge = band.get_paths()[0].vertices
    assert np.isfinite(edge).all() and edge[:, 0].min() == 4_000 and edge[:, 0].max() == 1_000_000
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] > 0
    plt.close(figure)


def test_a_common_grid_of_seeds_that_share_no_tokens_is_empty():
    early, late = pd.Series([3.0, 2.0], index=[0.0, 10.0]), pd.Series([2.0, 1.0], index=[20.0, 30.0])
    assert plots.common_grid([early, late]) == (None, None)
    grid, curves = plots.common_grid([early, pd.Series([4.0, 3.0, 2.0], index=[0.0, 4.0, 12.0])])
    assert grid[0] == 0.0 and grid[-1] == 10.0 and curves.shape == (2, plots.CURVE_GRID)
    assert curves[1, -1] == pytest.approx(3.0 - 6 / 8)  # interpolated inside the seed's own points


def test_the_lr_heat_map_is_drawn_for_a_crossed_design_only(report):
    figure = plots.lr_batch_figure(report)
    assert figure is not None and figure.axes[0].images[0].get_array().shape == (len(LRS), 3)
    plt.close(figure)
    runs = report.tidy
    zipped = runs[runs["optim.peak_lr"] == np.where(runs["optim.batch_size"] == 256, LRS[0], LRS[1])]
    assert plots.lr_batch_figure(SimpleNamespace(**{**vars(report), "tidy": zipped})) is None


def test_the_claims_figure_has_a_panel_per_claim_and_a_band_of_twice_the_smallest_effect(report):
    figure = plots.claims_figure(report)
    assert "not run" in set(report.claims["verdict"])
    claims = report.claims[report.claims["verdict"] != "not run"]  # a column the study did not run is not drawn
    assert [ax.get_title() for ax in figure.axes] == list(dict.fromkeys(claims["claim"]))
    for ax in figure.axes:
        rows = claims[claims["claim"] == ax.get_title()]
        judged = rows.dropna(subset=["smallest_effect"])  # a column not run has no smallest effect, no band
        bands = [p for p in ax.patches if p.get_gid() == "smallest_effect"]
        assert [b.get_width() for b in bands] == pytest.approx([2 * s for s in judged["smallest_effect"]])
        assert [b.get_x() for b in bands] == pytest.approx([-s for s in judged["smallest_effect"]])
        assert [b.get_y() + 0.3 for b in bands] == pytest.approx([list(rows["column"]).index(c)
                                                                 for c in judged["column"]])  # on its own row
        assert [t.get_text() for t in ax.get_yticklabels()] == list(rows["column"])
        assert ax.get_xlabel().replace("\n", " ") == "difference (paper's direction positive)"
        beside = [t.get_text().replace("\n", " ") for t in ax.texts]
        assert beside == ["reproduces [1]" if v == FEW_SEEDS else v for v in rows["verdict"]]
    # the verdict's qualification is written once, as a numbered note in the legend
    notes = [t.get_text().replace("\n", " ") for t in figure.legends[0].get_texts() if t.get_text().startswith("[")]
    assert notes == ["[1] " + FEW_SEEDS.partition(" (")[2].removesuffix(")")]
    plt.close(figure)
    assert plots.claims_figure(SimpleNamespace(**{**vars(report), "claims": None})) is None
    assert plots.claims_figure(SimpleNamespace(**{**vars(report), "claims": claims.iloc[:0]})) is None


def test_the_figures_are_written_as_png_and_pdf_the_same_each_time(report, tmp_path):
    paths = plots.write_figures(report, tmp_path / "first")
    assert sorted(p.name for p in paths) == sorted(f"{n}{s}" for n in FIGURES for s in (".png", ".pdf"))
    again = plots.write_figures(report, tmp_path / "again")
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
