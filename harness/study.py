"""A study: a few named pre-training arms over one base config, each pre-trained and then fine-tuned the same way,
and a table comparing them. The quickstart is one such study (experiments/quickstart.study.yaml).

Study file:
    base: quickstart.yaml            # a run config, relative to the study file
    arms:                            # name -> dotted overrides of the base; `recipe` names a whole recipe
      roberta-recipe: {recipe: roberta}
      doc-sentences: {recipe: roberta, data.packing: doc_sentences}
    finetune:                        # optional
      task: sst2
      set: {train_subsample: 2000, epochs: 1}

Every arm is an ordinary run directory (skipped when done, resumed when interrupted), so re-running a study only
does the work that is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import ConfigError, RunConfig, load_config, read_yaml


@dataclass(frozen=True)
class Study:
    arms: dict[str, RunConfig]
    finetune_task: str | None
    finetune_overrides: list[str]


def _as_overrides(mapping: Any, where: str) -> list[str]:
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted.key: value")
    import yaml

    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in mapping.items()]


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Validate the whole study (every arm's config, the fine-tuning settings) before any work starts."""
    from harness.finetune import load_finetune_config
    from harness.tasks import get_task

    path = Path(path)
    raw = read_yaml(path)
    unknown = set(raw) - {"base", "arms", "finetune"}
    if unknown:
        raise ConfigError(f"study file {path}: unknown key(s) {sorted(unknown)}; allowed: base, arms, finetune")
    if "base" not in raw or not isinstance(raw.get("arms"), dict) or not raw["arms"]:
        raise ConfigError(f"study file {path}: needs 'base' (a run config file) and a non-empty 'arms' mapping")
    base = path.parent / str(raw["base"])
    arms = {}
    for name, arm in raw["arms"].items():
        try:
            config = load_config(base, _as_overrides(arm, f"arms.{name}") + list(overrides or []))
        except ConfigError as err:
            raise ConfigError(f"study arm '{name}': {err}") from None
        arms[str(name)] = config.model_copy(update={"name": config.name or str(name)})
    finetune = raw.get("finetune") or {}
    task = finetune.get("task")
    finetune_overrides = _as_overrides(finetune.get("set"), "finetune.set")
    if task is not None:
        get_task(task)
        load_finetune_config(finetune_overrides)
    return Study(arms=arms, finetune_task=task, finetune_overrides=finetune_overrides)


def run_study(study: Study, data_dir: str | Path | None, results_root: str | Path) -> list[dict[str, Any]]:
    """Pre-train every arm, fine-tune each export, and return one row per arm."""
    from harness.finetune import finetune, load_finetune_config
    from harness.runs import run_dir
    from harness.train import EXPORT_DIR, pretrain

    rows = []
    for name, config in study.arms.items():
        metrics = pretrain(config, data_dir, results_root)
        # common_val_bpc: the same held-out text for every arm, in bits per character, so arms with different
        # formats and tokenizers compare; val_mlm_loss is each arm's own format and vocabulary.
        row: dict[str, Any] = {"arm": name, "run_id": config.run_id(), "steps": metrics.get("steps"),
                               "common_val_bpc": metrics.get("common_val_bpc"),
                               "val_mlm_loss": metrics.get("val_mlm_loss"), "val_ppl": metrics.get("val_ppl")}
        if study.finetune_task:
            settings = load_finetune_config([f"experiment={config.experiment}", *study.finetune_overrides])
            checkpoint = run_dir(results_root, config) / EXPORT_DIR
            summary = finetune(checkpoint, study.finetune_task, data_dir, settings, Path(results_root))
            row.update(_finetune_columns(study.finetune_task, summary))
        rows.append(row)
    return rows


def _finetune_columns(task: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Median over seeds at the best learning rate, with the seeds' range (the paper reports medians)."""
    best = summary["best"]
    return {f"{task}_{summary['selection_metric']}_median": best["median"], f"{task}_min": best["min"],
            f"{task}_max": best["max"], f"{task}_seeds": best["n"], f"{task}_best_lr": summary["best_learning_rate"]}


def format_table(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}")
