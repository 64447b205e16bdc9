"""BLiMP (Warstadt et al., TACL 2020): 67 paradigms x 1,000 minimal pairs, their outcomes and the published figures.

Data: the official layout `<root>/blimp/data/<paradigm>.jsonl` (fields `sentence_good`, `sentence_bad`, `field`,
`linguistics_term`, `UID`, `pairID`, ...), found by `harness.downstream.sources.find_task_dir`; without a local
copy, the hub's `nyu-mll/blimp` (one config per paradigm, split `train`). Every line is checked; a bad one stops
the load with one line naming the file and the line.

Outcomes: a pair is right when score(good) > score(bad); a tie is wrong (and counted). Accuracies are x100; the
overall figure, each field's and each phenomenon's are means over their paradigms (the paper's convention), so
every paradigm weighs the same whatever its number of pairs.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import fmean
from typing import Any

from harness.config import ConfigError, HarnessError
from harness.paths import data_root
from harness.tasks import TASKS

# The 67 paradigms of the released benchmark (the file names of data/, the hub's config names).
PARADIGMS: tuple[str, ...] = (
    "adjunct_island", "anaphor_gender_agreement", "anaphor_number_agreement", "animate_subject_passive",
    "animate_subject_trans", "causative", "complex_NP_island", "coordinate_structure_constraint_complex_left_branch",
    "coordinate_structure_constraint_object_extraction", "determiner_noun_agreement_1",
    "determiner_noun_agreement_2", "determiner_noun_agreement_irregular_1", "determiner_noun_agreement_irregular_2",
    "determiner_noun_agreement_with_adj_2", "determiner_noun_agreement_with_adj_irregular_1",
    "determiner_noun_agreement_with_adj_irregular_2", "determiner_noun_agreement_with_adjective_1",
    "distractor_agreement_relational_noun", "distractor_agreement_relative_clause", "drop_argument",
    "ellipsis_n_bar_1", "ellipsis_n_bar_2", "existential_there_object_raising", "existential_there_quantifiers_1",
    "existential_there_quantifiers_2", "existential_there_subject_raising", "expletive_it_object_raising",
    "inchoative", "intransitive", "irregular_past_participle_adjectives", "irregular_past_participle_verbs",
    "irregular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_2",
    "left_branch_island_echo_question", "left_branch_island_simple_question", "matrix_question_npi_licensor_present",
    "npi_present_1", "npi_present_2", "only_npi_licensor_present", "only_npi_scope", "passive_1", "passive_2",
    "principle_A_c_command", "principle_A_case_1", "principle_A_case_2", "principle_A_domain_1",
    "principle_A_domain_2", "principle_A_domain_3", "principle_A_reconstruction",
    "regular_plural_subject_verb_agreement_1", "regular_plural_subject_verb_agreement_2",
    "sentential_negation_npi_licensor_present", "sentential_negation_npi_scope", "sentential_subject_island",
    "superlative_quantifiers_1", "superlative_quantifiers_2", "tough_vs_raising_1", "tough_vs_raising_2",
    "transitive", "wh_island", "wh_questions_object_gap", "wh_questions_subject_gap",
    "wh_questions_subject_gap_long_distance", "wh_vs_that_no_gap", "wh_vs_that_no_gap_long_distance",
    "wh_vs_that_with_gap", "wh_vs_that_with_gap_long_distance",
)
REQUIRED_FIELDS = ("sentence_good", "sentence_bad", "field", "linguistics_term", "UID", "pairID")
# The released files spell one field two ways and file two argument-structure paradigms under "s-selection";
# the paper's tables (and reference/models_summary.jsonl) have 4 fields and 12 phenomena.
FIELD_ALIASES = {"syntax/semantics": "syntax_semantics"}
TERM_ALIASES = {"s-selection": "argument_structure"}
# reference/models_summary.jsonl's column -> the paper's name; "human" comes from human_validation_summary.csv.
REFERENCE_MODELS = {"ngram": "5-gram", "lstm": "LSTM", "txl": "Transformer-XL", "gpt2": "GPT-2", "human": "human"}
PAIRS_FILE = "pairs.csv.gz"
PAIRS_COLUMNS = ("paradigm", "pairID", "field", "term", "score_good", "score_bad", "correct")


@dataclass(frozen=True, slots=True)
class MinimalPair:
    paradigm: str
    pair_id: str
    good: str
    bad: str
    field: str  # normalised by FIELD_ALIASES
    term: str  # linguistics_term, normalised by TERM_ALIASES


@dataclass(frozen=True, slots=True)
class PairOutcome:
    pair: MinimalPair
    score_good: float
    score_bad: float

    @property
    def correct(self) -> bool:
        return self.score_good > self.score_bad  # a tie is wrong: the model did not prefer the good sentence

    @property
    def tie(self) -> bool:
        return self.score_good == self.score_bad


def check_paradigms(names: Iterable[str]) -> tuple[str, ...]:
    """The given paradigm names in the benchmark's order, duplicates dropped; an unknown one is one line."""
    wanted = set(names)
    unknown = sorted(wanted - set(PARADIGMS))
    if unknown:
        raise ConfigError(f"unknown BLiMP paradigm '{unknown[0]}'; allowed: the {len(PARADIGMS)} file names of "
                          f"blimp/data/ without .jsonl, e.g. {', '.join(PARADIGMS[:3])}, ..., {PARADIGMS[-1]}")
    return tuple(name for name in PARADIGMS if name in wanted)


# ---- loading pairs ------------------------------------------------------------------------------------------
def load_pairs(paradigms: Iterable[str], pairs_per_paradigm: int | None,
               data_dir: str | Path | None = None) -> tuple[list[MinimalPair], str]:
    """The first `pairs_per_paradigm` pairs (all when None) of each paradigm, in file order, and where they came
    from (the local data folder, or the hub's name)."""
    from harness.downstream.sources import find_task_dir

    folder = find_task_dir(TASKS["blimp"], data_dir)
    if folder is None:
        source = TASKS["blimp"].hub.name
        pairs = [pair for name in paradigms for pair in load_hub_paradigm(name, pairs_per_paradigm)]
    else:
        data = folder / TASKS["blimp"].files["test"].filename
        source = str(data)
        pairs = [pair for name in paradigms for pair in read_paradigm_file(data / f"{name}.jsonl", pairs_per_paradigm)]
    return pairs, source


def read_paradigm_file(path: Path, limit: int | None = None) -> list[MinimalPair]:
    if not path.is_file():
        raise HarnessError(f"blimp: paradigm file {path} not found (official layout: blimp/data/<paradigm>.jsonl)")
    pairs: list[MinimalPair] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if limit is not None and len(pairs) == limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise HarnessError(f"{path}:{number}: not a JSON object ({err.msg})") from None
            pairs.append(pair_from_record(record, path.stem, f"{path}:{number}"))
    if not pairs:
        raise HarnessError(f"{path}: no minimal pairs in the file")
    return pairs


def pair_from_record(record: Any, paradigm: str, where: str) -> MinimalPair:
    """One checked pair; `where` (file:line, or hub config and row) starts any error message."""
    if not isinstance(record, dict):
        raise HarnessError(f"{where}: expected a JSON object, found {type(record).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise HarnessError(f"{where}: missing field '{missing[0]}' (every pair needs {', '.join(REQUIRED_FIELDS)})")
    for name in ("sentence_good", "sentence_bad"):
        if not isinstance(record[name], str) or not record[name].strip():
            raise HarnessError(f"{where}: field '{name}' = {record[name]!r}; allowed: a non-empty sentence")
    if record["UID"] != paradigm:
        raise HarnessError(f"{where}: UID '{record['UID']}' in the file of paradigm '{paradigm}'")
    field, term = str(record["field"]), str(record["linguistics_term"])
    return MinimalPair(paradigm, str(record["pairID"]), record["sentence_good"], record["sentence_bad"],
                       FIELD_ALIASES.get(field, field), TERM_ALIASES.get(term, term))


def load_hub_paradigm(paradigm: str, limit: int | None = None) -> list[MinimalPair]:
    from harness.downstream.sources import load_hub_dataset

    spec = TASKS["blimp"]
    rows = load_hub_dataset(replace(spec, hub=replace(spec.hub, config=paradigm)), "train")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return [pair_from_record(dict(row), paradigm, f"{spec.hub.name} ({paradigm}) row {i}")
            for i, row in enumerate(rows)]


# ---- outcomes -----------------------------------------------------------------------------------------------
def accuracies(outcomes: Iterable[PairOutcome]) -> dict[str, Any]:
    """Accuracy x100 per paradigm; per field, per phenomenon and overall as means over paradigms; ties counted."""
    per_paradigm: dict[str, list[PairOutcome]] = {}
    for outcome in outcomes:
        per_paradigm.setdefault(outcome.pair.paradigm, []).append(outcome)
    if not per_paradigm:
        raise HarnessError("blimp: no pairs were scored")
    by_paradigm = {name: 100.0 * fmean(o.correct for o in rows) for name, rows in per_paradigm.items()}
    first = {name: rows[0].pair for name, rows in per_paradigm.items()}
    return {
        "overall": fmean(by_paradigm.values()),
        "by_field": _mean_by(by_paradigm, {name: pair.field for name, pair in first.items()}),
        "by_term": _mean_by(by_paradigm, {name: pair.term for name, pair in first.items()}),
        "by_paradigm": by_paradigm,
        "ties": sum(o.tie for rows in per_paradigm.values() for o in rows),
        "pairs": sum(len(rows) for rows in per_paradigm.values()),
        "paradigms": len(by_paradigm),
    }


def _mean_by(by_paradigm: Mapping[str, float], group_of: Mapping[str, str]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for name, accuracy in by_paradigm.items():
        groups.setdefault(group_of[name], []).append(accuracy)
    return {group: fmean(values) for group, values in sorted(groups.items())}


def write_outcomes(path: Path, outcomes: Iterable[PairOutcome]) -> None:
    """Every pair's scores (repr floats: exact) as gzipped CSV, written atomically, byte-identical across runs."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PAIRS_COLUMNS)
    for o in outcomes:
        writer.writerow([o.pair.paradigm, o.pair.pair_id, o.pair.field, o.pair.term, repr(o.score_good),
                         repr(o.score_bad), int(o.correct)])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
            handle.write(text.getvalue().encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_outcomes(path: Path) -> list[dict[str, Any]]:
    """The rows of a pairs file, scores as floats and `correct` as bool (for resampling statistics)."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return [{**row, "score_good": float(row["score_good"]), "score_bad": float(row["score_bad"]),
                 "correct": row["correct"] == "1"} for row in csv.DictReader(handle)]


# ---- the published figures ----------------------------------------------------------------------------------
def load_reference(data_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The authors' accuracies x100 from blimp/reference/: model -> {name, overall, by_term (where given),
    by_paradigm}. `overall` is the mean over the 67 paradigms, as in the paper."""
    folder = _reference_folder(data_dir)
    rows = [json.loads(line) for line in (folder / "models_summary.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    reference: dict[str, dict[str, Any]] = {}
    for key in (k for k in REFERENCE_MODELS if k != "human"):
        by_paradigm = {r["UID"]: 100.0 * r[key] for r in rows if r["UID"] in PARADIGMS}
        by_term = {r["linguistics_term"]: 100.0 * r[key] for r in rows
                   if r["UID"] == "overall" and r["linguistics_term"] != "overall"}
        reference[key] = _reference_entry(key, by_paradigm, by_term, folder / "models_summary.jsonl")
    with (folder / "human_validation_summary.csv").open(encoding="utf-8", newline="") as handle:
        # The validation also covered two paradigms dropped from the release (they failed it): left out here.
        humans = {r["Condition"]: 100.0 * float(r["total_mean"]) for r in csv.DictReader(handle)
                  if r["Condition"] in PARADIGMS}
    reference["human"] = _reference_entry("human", humans, {}, folder / "human_validation_summary.csv")
    return reference


def published_overall(data_dir: str | Path | None = None) -> dict[str, float]:
    """The paper's overall accuracy x100 per published model and humans: {"5-gram": 61.2, ..., "human": 88.6}."""
    return {entry["name"]: entry["overall"] for entry in load_reference(data_dir).values()}


def _reference_folder(data_dir: str | Path | None) -> Path:
    root = data_root(data_dir)
    candidates = [] if root is None else [root / "blimp" / "reference", root / "reference"]
    for folder in candidates:
        if (folder / "models_summary.jsonl").is_file() and (folder / "human_validation_summary.csv").is_file():
            return folder
    tried = ", ".join(str(c) for c in candidates) or "(no --data-dir or $HARNESS_DATA_DIR)"
    raise HarnessError(f"blimp reference: models_summary.jsonl and human_validation_summary.csv not found in {tried}")


def _reference_entry(key: str, by_paradigm: dict[str, float], by_term: dict[str, float],
                     path: Path) -> dict[str, Any]:
    missing = [name for name in PARADIGMS if name not in by_paradigm]
    if missing:
        raise HarnessError(f"{path}: no figure for paradigm '{missing[0]}' ({key}); expected all {len(PARADIGMS)}")
    return {"name": REFERENCE_MODELS[key], "overall": fmean(by_paradigm[name] for name in PARADIGMS),
            "by_term": by_term, "by_paradigm": {name: by_paradigm[name] for name in PARADIGMS}}
