"""The paper's claims (harness/report/paper_claims.yaml) and their verdicts: the file parses and names what exists,
the verdict of each kind of claim on hand-made differences, Holm's correction by hand, the rate of "reproduces"
under no effect on simulated tables, and a report's claims on hand-made cells (a NaN score, a column without
signal, a column not run)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from harness.report.claims import (
    ClaimsError,
    decide,
    holm,
    load_claims,
    p_values,
    smallest_effect,
    verdict_text,
)
from harness.report.multibootstrap import Comparison, compare, ratio_scores
from harness.report.report import claim_rows, load_paper_tables, published_difference
from harness.study.grid import load_grid
from harness.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def test_the_claims_file_parses_and_every_claim_names_columns_and_arms_that_exist():
    claims = load_claims()
    assert set(claims.studies) == {"table1_masking", "table2_input_format", "table3_batch_size"}
    for study, listed in claims.studies.items():
        grid = load_grid(ROOT / "experiments" / f"{study}.yaml", "cpu", check_data=False)
        arms = [p.label for p in grid.points if not p.baseline]
        for claim in listed:
            for key in (claim.arm, claim.reference):
                if isinstance(key, tuple):  # candidates: the first this scale runs
                    assert set(key) & set(arms), (study, claim.id, key)
                else:
                    assert (key in arms) if isinstance(key, str) else (0 <= key < len(arms)), (study, claim.id, key)
            for column in claim.all_columns:
                if column == "heldout":
                    assert smallest_effect(claims.smallest_effects, column, None, (2.0, 50.0)) > 0
                    continue
                spec = get_task(column)  # raises for a task the harness does not know
                metric = "blimp" if column == "blimp" else spec.selection_metric
                assert smallest_effect(claims.smallest_effects, column, metric) > 0, (claim.id, column)
        ids = [c.id for c in listed]
        assert len(ids) == len(set(ids)), study
    # The list: Table 1 non-inferiority; Table 2 three claims (four tests); Table 3 2K > 256, 8K ~ 2K
    kinds = {c.id: c.kind for listed in claims.studies.values() for c in listed}
    assert kinds["dynamic_not_worse"] == "noninferior" and kinds["sentence_pair_hurts"] == "superior"
    assert kinds["2k_beats_256"] == "superior" and kinds["8k_close_to_2k"] == "equivalent"


@pytest.mark.parametrize(("text", "message"), [
    ("table1_masking: []\n", "no 'smallest_effects'"),
    ("smallest_effects: {accuracy: 0.5}\nt1:\n  - {id: a, says: x, kind: better, arm: a, reference: b, "
     "columns: [sst2]}\n", "t1 claim 1 (a): kind 'better'; allowed: superior, noninferior, equivalent"),
    ("smallest_effects: {accuracy: 0.5}\nt1:\n  - {id: a, says: x, kind: superior, reference: b, columns: [sst2]}\n",
     "t1 claim 1: missing 'arm'"),
    ("smallest_effects: {accuracy: 0.5}\nt1:\n  - {id: a, says: x, kind: superior, arm: a, reference: b, "
     "columns: [sst2], colums: [rte]}\n", "unknown field 'colums'"),
    ("smallest_effects: {accuracy: 0.5}\nt1:\n  - {id: a, says: x, kind: superior, arm: [], reference: b, "
     "columns: [sst2]}\n", "t1 claim 1 (a): an empty list of arms"),
])
def test_a_malformed_claims_file_names_the_file_the_claim_and_what_is_allowed(tmp_path, text, message):
    path = tmp_path / "claims.yaml"
    path.write_text(text)
    with pytest.raises(ClaimsError, match="claims.yaml") as err:
        load_claims(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_table1s_redraw_claim_compares_equal_copies_at_every_scale():
    """Google's re-draw differs from masks-only copies only with two copies or more: at the cpu scale (one `auto`
    copy) the claim compares static_redraw with static_x2, both at two copies; where no static_x2 runs (quick, paper,
    gpu) with static, both at the same dupe_factor; dynamic is judged against the one-copy static everywhere."""
    from types import SimpleNamespace

    from harness.report.report import _claim_point

    claim = next(c for c in load_claims().studies["table1_masking"] if c.id == "redraw_is_not_the_difference")
    for scale, expected in (("cpu", "static_x2"), ("quick", "static"), ("paper", "static"), ("gpu", "static")):
        grid = load_grid(ROOT / "experiments" / "table1_masking.yaml", scale, check_data=False)
        data = {run.point.label: run.config.data for run in grid.runs}
        arm = _claim_point(SimpleNamespace(arms=[p.label for p in grid.points if not p.baseline]), claim.arm)
        assert arm == expected, scale
        assert data[arm].dupe_factor == data["static_redraw"].dupe_factor, scale
        assert (data[arm].static_mode, data["static_redraw"].static_mode) == ("masks_only", "redraw"), scale
        assert data[arm].masking == data["static_redraw"].masking == "static"
        if scale == "cpu":  # auto is one copy here, in which both modes are the same data
            assert data["static_x2"].dupe_factor == 2 and data["static"].dupe_factor == "auto"


def test_holm_by_hand():
    """p = .01, .04, .03, .005 (m = 4): sorted .005 x 4 = .02, .01 x 3 = .03, .03 x 2 = .06, .04 x 1 = .04 -> .06
    (monotone)."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def made(diff: float, se: float, df: float = 4.0, seeds: int = 5) -> Comparison:
    """A hand-made comparison: only diff, se and df decide the tests."""
    half = 2.776 * se
    return Comparison(diff, diff - half, diff + half, se, df, se**2, 0.0, diff - half, diff + half, 0.5,
                      diff - half, diff + half, seeds, None)


@pytest.mark.parametrize(("kind", "diff", "se", "expected"), [
    ("superior", 2.0, 0.5, "reproduces"),  # t = 4 on 4 df: p = .008
    ("superior", -2.0, 0.5, "contradicts"),
    ("superior", 0.05, 0.05, "equivalent"),  # inside +-0.5 by far
    ("superior", 0.3, 0.5, "inconclusive"),
    ("noninferior", -0.1, 0.1, "reproduces"),  # above -0.5 by 4 se
    ("noninferior", -2.0, 0.2, "contradicts"),  # below -0.5 by 7.5 se
    ("noninferior", -0.5, 0.3, "inconclusive"),
    ("equivalent", 0.1, 0.05, "reproduces"),
    ("equivalent", 2.0, 0.2, "contradicts"),
    ("equivalent", 0.4, 0.3, "inconclusive"),
])
def test_the_verdict_of_each_kind_of_claim(kind, diff, se, expected):
    assert decide([p_values(made(diff, se), kind, 0.5)]) == [expected]


def test_holm_turns_a_marginal_verdict_into_inconclusive_in_a_family():
    """p = .02 alone reproduces (< .025); among 4 tests with p .02, .5, .5, .5 it does not (.02 x 4 = .08)."""
    marginal = made(2.0 * 0.5, 0.5, df=1e6)  # t = 2.0 -> one-sided p ~ .023
    assert decide([p_values(marginal, "superior", 0.1)]) == ["reproduces"]
    family = [p_values(marginal, "superior", 0.1)] + [p_values(made(0.0, 1.0), "superior", 0.1)] * 3
    assert decide(family)[0] == "inconclusive"


def test_few_seeds_are_said_in_every_verdict():
    assert verdict_text("reproduces", 3).startswith("reproduces (3 pre-training seeds, fewer than 5")
    assert verdict_text("inconclusive", 5) == "inconclusive"


def test_the_held_out_smallest_effect_is_one_percent_of_perplexity_in_bits_per_character():
    """ppl 4 and 1 bit per character: 0.5 tokens per character... log2(1.01) x 1.0 / log2(4) = 0.00718."""
    effects = load_claims().smallest_effects
    assert smallest_effect(effects, "heldout", None, (1.0, 4.0)) == pytest.approx(math.log2(1.01) / 2)


@pytest.mark.parametrize("kind", ["superior", "noninferior", "equivalent"])
def test_under_no_effect_reproduces_is_rare_after_holm(kind):
    """Simulated tables of 4 claims x 4 columns whose true differences sit exactly where the claim is false
    (superior: 0; non-inferior: -delta; equivalent: +delta), 5 seeds, seed effects N(0, 1) (N(0, 0.2) for
    equivalence, which has no power otherwise): over 300 tables, the share with any "reproduces" (after Holm over
    the 16 tests) is at most 5%; without the correction it is not."""
    rng = np.random.default_rng(["superior", "noninferior", "equivalent"].index(kind))
    delta = 0.5
    truth = {"superior": 0.0, "noninferior": -delta, "equivalent": delta}[kind]
    sd = 0.2 if kind == "equivalent" else 1.0
    any_after = any_before = 0
    tables = 300
    for _ in range(tables):
        tests = []
        for _ in range(16):
            diffs = rng.normal(truth, sd, size=(5, 1))
            tests.append(p_values(compare(ratio_scores(diffs), ratio_scores(np.zeros((5, 1))), 5, None, draws=20),
                                  kind, delta))
        any_after += "reproduces" in decide(tests)
        any_before += any(decide([t]) == ["reproduces"] for t in tests)
    assert any_after / tables <= 0.05, any_after
    assert any_before / tables > 0.15, any_before


def fake_report(cells: dict[tuple[str, str], list[float]], quiet: tuple[str, ...] = ()) -> SimpleNamespace:
    """A Table 2 report of hand-made cells: (point, column) -> one value per pre-training seed, no per-example
    outputs (the seeds alone)."""
    rows = []
    for (point, column), values in cells.items():
        finite = [v for v in values if np.isfinite(v)]
        rows.append({"point": point, "column": column, "n": len(finite), "mean": float(np.mean(finite)),
                     "seed_values": {i: v for i, v in enumerate(values)}, "seed_dirs": {}, "lr_on_edge": False})
    columns = sorted({c for _, c in cells})
    signal = pd.DataFrame([{"column": c, "signal": "no signal" if c in quiet else "signal"} for c in columns])
    arms = ["segment_pair", "sentence_pair", "full_sentences", "doc_sentences"]
    return SimpleNamespace(study=SimpleNamespace(name="table2_input_format"), arms=arms, columns=columns,
                           cells=pd.DataFrame(rows), signal=signal, tidy=pd.DataFrame(), flags=[],
                           paper=load_paper_tables()["table2_input_format"], reference="segment_pair")


def test_a_reports_claims_on_hand_made_cells():
    """SEGMENT-PAIR beats SENTENCE-PAIR on SST-2 by 2 points in every seed (+-0.1): reproduces. RTE carries no signal.
    A NaN score of one SENTENCE-PAIR seed on STS-B (a constant prediction) leaves 4 shared seeds and never turns
    into "contradicts" (it did before: the NaN made the interval NaN and the verdict fell through). MNLI is not run."""
    base = np.array([80.0, 81.0, 79.0, 80.5, 79.5])
    wiggle = np.array([0.1, -0.1, 0.0, 0.05, -0.05])
    cells = {}
    for point, shift in (("segment_pair", 0.0), ("sentence_pair", -2.0), ("full_sentences", 0.0),
                         ("doc_sentences", 0.0)):
        cells[(point, "sst2")] = list(base + shift + (wiggle if point != "segment_pair" else 0))
        cells[(point, "rte")] = list(base + shift)
        cells[(point, "stsb")] = list(base + (wiggle if point != "segment_pair" else 0))
    cells[("sentence_pair", "stsb")][2] = float("nan")
    rows = {(r["claim"], r["column"]): r for r in claim_rows(fake_report(cells, quiet=("rte",)))}
    hurts = rows[("sentence_pair_hurts", "sst2")]
    assert hurts["verdict"] == "reproduces" and hurts["diff"] == pytest.approx(2.0) and hurts["seeds"] == 5
    assert hurts["paper_diff"] == pytest.approx(0.8) and not hurts["extension"]
    assert rows[("sentence_pair_hurts", "rte")]["verdict"] == "no signal at this scale"
    assert rows[("sentence_pair_hurts", "mnli")]["verdict"] == "not run"
    stsb = rows[("sentence_pair_hurts", "stsb")]
    assert stsb["seeds"] == 4 and stsb["extension"] and stsb["verdict"].startswith(("equivalent", "inconclusive"))
    assert "fewer than 5" in stsb["verdict"]  # 4 shared seeds
    matches = rows[("full_sentences_matches", "sst2")]
    assert matches["verdict"] == "reproduces"  # -0.0 +- 0.1: above -0.5
    assert rows[("full_sentences_matches", "sst2")]["family"] == 8  # sst2 and stsb of 4 claims; rte is quiet


def test_a_published_tie_is_a_tie():
    """Table 3's 256 vs 8K task average: (84.6 - 84.7 + 92.8 - 92.7) / 2 is 7.1e-15 in floating point, and was
    an ordering; at the published precision it is 0."""
    raw = ((84.6 - 84.7) + (92.8 - 92.7)) / 2
    assert raw != 0
    assert published_difference(84.6, 84.7) + published_difference(92.8, 92.7) == 0.0
    assert published_difference(3.77, 3.68, lower_is_better=True) == pytest.approx(-0.09)
