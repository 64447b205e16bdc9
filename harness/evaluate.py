"""Zero-shot evaluation of a checkpoint (no fine-tuning), recorded like every other run.

`ZERO_SHOT` maps a task name to its typed settings, its evaluation and its record path; `harness evaluate` and a
sweep's evaluation jobs only dispatch through it (`load_zero_shot_settings`, `zero_shot_settings`,
`evaluate_zero_shot`, `zero_shot_record_path`). BLiMP (data and outcomes: harness.downstream.blimp; scores:
harness.downstream.pll) is the first task.

Layout: results_root/<experiment>/evaluate/<checkpoint folder>__blimp__<digest>/
    config.json         task spec, checkpoint (path, fingerprints), settings, resolved data: written first
    env.json            git commit, package versions, machine (the run-record protocol of harness.runs)
    pairs.csv.gz        one row per pair: paradigm, pairID, field, term, score_good, score_bad, correct
    final_metrics.json  the accuracies, written atomically last: marks the record done
The digest hashes the checkpoint's content (weights and config, and its tokenizer files: the score depends on
them), the task spec and the settings that change a score; not `impl` (speed only) nor `experiment`. A finished
record is returned as it is; a half-finished one is scored again; one holding another config is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from harness.config import ConfigError, ConfigSection, apply_overrides, format_validation_error
from harness.runs import TRIAL_CONFIG_FILE, environment, is_done, open_record, read_final_metrics, write_final_metrics
from harness.tasks import TASKS

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt")


class BlimpImpl(ConfigSection):
    """Settings that change only speed, never a score: not part of the record's identity."""

    batch_size: int = Field(512, ge=1, description="masked copies per forward pass")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; null = torch default")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPU when there is one")


class BlimpConfig(ConfigSection):
    experiment: str = Field("evaluate", min_length=1, description="results/<experiment>/evaluate/")
    paradigms: tuple[str, ...] | None = Field(None, min_length=1, description="paradigms to score (a list, or "
                                              "'a,b' on the command line); null = all 67")
    pairs_per_paradigm: int | None = Field(None, ge=1, description="the first N pairs of each paradigm in file "
                                           "order; null = all (1,000)")
    scoring: Literal["pll", "pll_word_l2r"] = Field("pll", description="pll: mask one token at a time (Salazar et "
                                                    "al. 2020); pll_word_l2r: also the later pieces of its word "
                                                    "(Kauf & Ivanova 2023)")
    impl: BlimpImpl = BlimpImpl()

    @field_validator("paradigms", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):  # --set blimp.paradigms=a,b arrives as one string
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("paradigms")
    @classmethod
    def _known_paradigms(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from harness.downstream.blimp import check_paradigms

        if value is None:
            return None
        try:
            return check_paradigms(value)  # benchmark order: 'a,b' and 'b,a' are one evaluation
        except ConfigError as err:
            raise ValueError(str(err)) from None

    def paradigm_names(self) -> tuple[str, ...]:
        from harness.downstream.blimp import PARADIGMS

        return PARADIGMS if self.paradigms is None else self.paradigms

    def outcome(self) -> dict[str, Any]:
        """What a score depends on; null paradigms and the full list are the same evaluation."""
        return {"paradigms": list(self.paradigm_names()), "pairs_per_paradigm": self.pairs_per_paradigm,
                "scoring": self.scoring}


def load_blimp_config(overrides: list[str] | None = None) -> BlimpConfig:
    """Defaults < `key=value` overrides, each with or without the `blimp.` prefix (values parsed as YAML);
    a bad value is one ConfigError line naming the field."""
    return load_zero_shot_settings("blimp", overrides)


# ---- BLiMP --------------------------------------------------------------------------------------------------
def evaluate_blimp(checkpoint: Path, data_dir: str | Path | None, settings: BlimpConfig,
                   results_root: Path) -> dict[str, Any]:
    """Score every pair of the chosen paradigms with the checkpoint's MLM pseudo-log-likelihood and record it;
    returns the final metrics (a finished record's, untouched, without loading the model or the data)."""
    from harness.downstream.encode import checkpoint_fingerprint, open_checkpoint

    ckpt = open_checkpoint(checkpoint)
    fingerprint = checkpoint_fingerprint(ckpt.path)
    record = blimp_record_path(results_root, ckpt.path, settings, fingerprint)
    if is_done(record):
        return read_final_metrics(record)
    from harness.downstream.blimp import PAIRS_FILE, accuracies, load_pairs, write_outcomes

    pairs, source = load_pairs(settings.paradigm_names(), settings.pairs_per_paradigm, data_dir)
    config = {"task": TASKS["blimp"].to_dict(), "settings": settings.model_dump(mode="json"),
              "checkpoint": {"path": str(ckpt.path), "fingerprint": fingerprint,
                             "tokenizer": tokenizer_fingerprint(ckpt.path)},
              "resolved": {"paradigms": list(settings.paradigm_names()), "pairs": len(pairs),
                           "data_digest": pairs_digest(pairs), "source": source}}
    open_record(record, TRIAL_CONFIG_FILE, json.dumps(config, indent=2) + "\n", _blimp_outcome(config),
                lambda path: _blimp_outcome(json.loads(path.read_text(encoding="utf-8"))),
                lambda: environment({"task": "blimp", "scoring": settings.scoring}))
    started = time.perf_counter()
    outcomes = score_pairs(ckpt, pairs, settings)
    write_outcomes(record / PAIRS_FILE, outcomes)
    metrics = accuracies(outcomes)
    metrics = {"task": "blimp", "task_version": TASKS["blimp"].version, "scoring": settings.scoring, **metrics,
               "score": metrics["overall"], "checkpoint_fingerprint": fingerprint, "pairs_file": PAIRS_FILE,
               "wall_s": round(time.perf_counter() - started, 2)}
    write_final_metrics(record, metrics)
    return metrics


def score_pairs(ckpt: Any, pairs: list[Any], settings: BlimpConfig) -> list[Any]:
    import torch

    from harness.downstream.blimp import PairOutcome
    from harness.downstream.pll import load_masked_lm, score_sentences

    if settings.impl.threads:
        torch.set_num_threads(settings.impl.threads)
    device = settings.impl.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = load_masked_lm(ckpt, device)
    scores = score_sentences(lm, [s for pair in pairs for s in (pair.good, pair.bad)], settings.scoring,
                             settings.impl.batch_size, ckpt.max_length)
    return [PairOutcome(pair, float(scores[2 * i]), float(scores[2 * i + 1])) for i, pair in enumerate(pairs)]


def blimp_record_path(results_root: str | Path, checkpoint: Path, settings: BlimpConfig, fingerprint: str) -> Path:
    """Where a BLiMP record lives, without loading the model (a sweep plans with it); `fingerprint` is
    harness.downstream.encode.checkpoint_fingerprint(checkpoint)."""
    checkpoint = Path(checkpoint).expanduser()
    identity = {"checkpoint": fingerprint, "tokenizer": tokenizer_fingerprint(checkpoint),
                "task": TASKS["blimp"].to_dict(), "settings": settings.outcome()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return Path(results_root) / settings.experiment / "evaluate" / f"{checkpoint.name}__blimp__{digest}"


def _blimp_outcome(config: dict[str, Any]) -> dict[str, Any]:
    """What the record's scores depend on (impl, experiment and the checkpoint's path do not)."""
    return {"task": config["task"], "settings": BlimpConfig.model_validate(config["settings"]).outcome(),
            "checkpoint": {k: config["checkpoint"][k] for k in ("fingerprint", "tokenizer")},
            "data_digest": config["resolved"]["data_digest"]}


def tokenizer_fingerprint(path: Path) -> str:
    """Content hash of the tokenizer files: a PLL is a sum over the tokenizer's pieces."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (Path(path) / name).is_file():
            digest.update(name.encode() + (Path(path) / name).read_bytes())
    return digest.hexdigest()[:16]


def pairs_digest(pairs: list[Any]) -> str:
    """Content hash of the scored sentences: a local copy and the hub's must hold the same pairs."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.paradigm, pair.pair_id, pair.good, pair.bad]).encode())
    return digest.hexdigest()[:16]


# ---- dispatch -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZeroShotTask:
    settings: type[ConfigSection]  # the task's typed settings
    evaluate: Callable[[Path, str | Path | None, Any, Path], dict[str, Any]]  # -> final metrics
    record_path: Callable[[str | Path, Path, Any, str], Path]  # (results, checkpoint, settings, fingerprint)


ZERO_SHOT: dict[str, ZeroShotTask] = {"blimp": ZeroShotTask(BlimpConfig, evaluate_blimp, blimp_record_path)}


def zero_shot_task(name: str) -> ZeroShotTask:
    if name not in ZERO_SHOT:
        hint = " (fine-tuning tasks run with `harness finetune`)" if name in TASKS else ""
        raise ConfigError(f"unknown zero-shot task '{name}'{hint}; allowed: {', '.join(ZERO_SHOT)}")
    return ZERO_SHOT[name]


def load_zero_shot_settings(task: str, overrides: list[str] | None = None) -> Any:
    """Defaults < `key=value` overrides; `--set blimp.scoring=...` and `--set scoring=...` are the same key."""
    data = apply_overrides({}, [item.strip().removeprefix(f"{task}.") for item in overrides or []])
    return zero_shot_settings(task, data)


def zero_shot_settings(task: str, data: dict[str, Any]) -> Any:
    """A task's settings from a plain dict (a grid's `tasks.<task>:` block, a job's stored settings); a bad value
    is one ConfigError line naming the field as the command line spells it (`blimp.scoring`)."""
    try:
        return zero_shot_task(task).settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("config field '", f"config field '{task}.")) from None


def evaluate_zero_shot(checkpoint: Path, task: str, data_dir: str | Path | None, settings: Any, results_root: Path,
                       threads: int | None = None) -> dict[str, Any]:
    """`task`'s evaluation; `threads` (a sweep worker's share of the cores) caps impl.threads (speed only)."""
    if threads is not None:
        impl = settings.impl.model_copy(update={"threads": min(settings.impl.threads or threads, threads)})
        settings = settings.model_copy(update={"impl": impl})
    return zero_shot_task(task).evaluate(checkpoint, data_dir, settings, results_root)


def zero_shot_record_path(results_root: str | Path, checkpoint: Path, task: str, settings: Any,
                          fingerprint: str) -> Path:
    return zero_shot_task(task).record_path(results_root, checkpoint, settings, fingerprint)
