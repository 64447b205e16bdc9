"""The paper's stated claims (paper_claims.yaml) and their verdicts at a study's scale.

Each (claim, column) is one test of the difference arm - reference, oriented so that positive is the paper's
direction (for the held-out column: lower bits per character), on the pre-training seeds both arms share
(harness.report.evidence.compare_cells: the multi-bootstrap's seed and example variance, a t interval). With delta the
column's smallest effect of interest and alpha = 0.025 one-sided (the side of a 95% interval):

| kind        | reproduces                       | contradicts                     | equivalent (no effect)   |
|-------------|----------------------------------|---------------------------------|--------------------------|
| superior    | difference > 0                   | difference < 0                  | TOST: within +-delta     |
| noninferior | difference > -delta              | difference < -delta             | (is "reproduces")        |
| equivalent  | TOST: within +-delta             | outside +-delta (either side)   | (is "reproduces")        |

Each kind of test is corrected with Holm's step-down procedure across every tested (claim, column) of the study's
table (one family per table); a verdict is the first of reproduces / contradicts / equivalent whose adjusted p-value
is below alpha, else inconclusive. Without adjustment each verdict is where the 95% interval lies against 0 and
+-delta. Not tested (and not counted in the family): a column the study did not run ("not run"), a column without
pre-training signal at this scale (no arm beats the no-pre-training row, or the trivial predictor: "no signal at this
scale"), fewer than two shared pre-training seeds ("inconclusive (one pre-training run per arm)"). With fewer than 5
pre-training seeds every verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.config import HarnessError
from harness.report.multibootstrap import FEW_SEEDS, Comparison

CLAIMS_FILE = Path(__file__).with_name("paper_claims.yaml")
ALPHA = 0.025  # one-sided: a verdict without correction reads the 95% interval
KINDS = ("superior", "noninferior", "equivalent")
HELDOUT_COLUMN = "heldout"  # judged on bits per character
VERDICTS = ("reproduces", "contradicts", "equivalent", "inconclusive", "no signal at this scale")


class ClaimsError(HarnessError):
    """A malformed claims file: one line naming the file, the claim and what is allowed."""


@dataclass(frozen=True)
class Claim:
    id: str
    says: str
    kind: str
    arm: str | int | tuple[str, ...]  # a point label, a position, or candidate labels: the first the study ran
    reference: str | int | tuple[str, ...]
    columns: tuple[str, ...]
    extends_to: tuple[str, ...] = ()

    @property
    def all_columns(self) -> tuple[str, ...]:
        return (*self.columns, *self.extends_to)


@dataclass(frozen=True)
class Claims:
    smallest_effects: dict[str, Any]
    studies: dict[str, tuple[Claim, ...]]


def load_claims(path: str | Path = CLAIMS_FILE) -> Claims:
    """The claims file, checked: every claim has an id, a kind of KINDS, an arm, a reference and columns; every
    column's metric has a smallest effect."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ClaimsError(f"{path}: not readable YAML ({str(err).splitlines()[0]})") from err
    effects = raw.pop("smallest_effects", None)
    if not isinstance(effects, dict):
        raise ClaimsError(f"{path}: no 'smallest_effects' mapping (metric -> smallest effect of interest)")
    studies = {}
    for study, entries in raw.items():
        if not isinstance(entries, list):
            raise ClaimsError(f"{path}: {study}: expected a list of claims, got {type(entries).__name__}")
        claims = []
        for i, entry in enumerate(entries):
            where = f"{path}: {study} claim {i + 1}"
            missing = [k for k in ("id", "says", "kind", "arm", "reference", "columns") if k not in (entry or {})]
            if missing:
                raise ClaimsError(f"{where}: missing '{missing[0]}'")
            if entry["kind"] not in KINDS:
                raise ClaimsError(f"{where} ({entry['id']}): kind '{entry['kind']}'; allowed: {', '.join(KINDS)}")
            unknown = set(entry) - {"id", "says", "kind", "arm", "reference", "columns", "extends_to"}
            if unknown:
                raise ClaimsError(f"{where} ({entry['id']}): unknown field '{sorted(unknown)[0]}'")
            arm, reference = (tuple(map(str, entry[k])) if isinstance(entry[k], list) else entry[k]
                              for k in ("arm", "reference"))
            if () in (arm, reference):
                raise ClaimsError(f"{where} ({entry['id']}): an empty list of arms; allowed: a label, a position or "
                                  "a list of labels (the first the study ran)")
            claims.append(Claim(str(entry["id"]), " ".join(str(entry["says"]).split()), entry["kind"], arm,
                                reference, tuple(entry["columns"]), tuple(entry.get("extends_to") or ())))
        studies[study] = tuple(claims)
    return Claims(effects, studies)


def smallest_effect(effects: dict[str, Any], column: str, metric: str | None, reference: Any = None) -> float:
    """The column's smallest effect of interest in its units. The held-out column's is a perplexity ratio, turned
    into bits per character with the reference cell's perplexity and bits per character (bpc = log2(ppl) x
    tokens / characters, so a ratio r moves bpc by log2(1 + r) x bpc / log2(ppl))."""
    if column == HELDOUT_COLUMN:
        ratio = float(effects[HELDOUT_COLUMN]["perplexity_ratio"])
        if reference is None:
            raise ValueError("the held-out column's smallest effect needs the reference's ppl and bpc")
        bpc, ppl = reference
        return math.log2(1 + ratio) * bpc / math.log2(ppl)
    key = "blimp" if column == "blimp" else metric
    if key not in effects:
        raise ClaimsError(f"{CLAIMS_FILE}: no smallest effect for metric '{key}' (column {column}); "
                          f"has: {', '.join(effects)}")
    return float(effects[key])


def p_values(comparison: Comparison, kind: str, delta: float) -> dict[str, float]:
    """One-sided p-values of the claim (`support`), of its opposite (`against`) and, for a superiority claim, of no
    effect of interest (`equivalent`: two one-sided tests against +-delta)."""
    tost = max(comparison.p_above(-delta), comparison.p_below(delta))
    if kind == "superior":
        return {"support": comparison.p_above(0.0), "against": comparison.p_below(0.0), "equivalent": tost}
    if kind == "noninferior":
        return {"support": comparison.p_above(-delta), "against": comparison.p_below(-delta)}
    if kind == "equivalent":  # outside the band on either side: the smaller one-sided p, doubled (Bonferroni)
        outside = min(1.0, 2 * min(comparison.p_below(-delta), comparison.p_above(delta)))
        return {"support": tost, "against": outside}
    raise ValueError(f"kind '{kind}'; allowed: {', '.join(KINDS)}")


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): p_(i) x (m - i + 1), made monotone, capped at 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def decide(tests: list[dict[str, float]], alpha: float = ALPHA) -> list[str]:
    """Verdicts for one family of tests (each the `p_values` of one (claim, column)), Holm-adjusted per kind of
    test: reproduces, else contradicts, else equivalent, else inconclusive."""
    adjusted = {key: holm([t[key] for t in tests if key in t]) for key in ("support", "against", "equivalent")}
    cursor = dict.fromkeys(adjusted, 0)
    verdicts = []
    for test in tests:
        p = {}
        for key in adjusted:
            if key in test:
                p[key] = adjusted[key][cursor[key]]
                cursor[key] += 1
        verdicts.append("reproduces" if p["support"] < alpha else "contradicts" if p["against"] < alpha
                        else "equivalent" if p.get("equivalent", 1.0) < alpha else "inconclusive")
    return verdicts


def verdict_text(verdict: str, seeds: int) -> str:
    """The verdict with the warning every verdict on fewer than FEW_SEEDS pre-training seeds carries."""
    if verdict in ("reproduces", "contradicts", "equivalent", "inconclusive") and 2 <= seeds < FEW_SEEDS:
        return f"{verdict} ({seeds} pre-training seeds, fewer than {FEW_SEEDS}: a t interval on few seeds is wide " \
               "and its calibration rests on normal seed effects)"
    return verdict
