"""A grid's downstream tasks: each task's fine-tuning settings, and the check that every task's data and every
pre-training corpus is there, both before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.config import ConfigError, HarnessError, format_validation_error, set_dotted
from harness.paths import data_root, resolve_data_path
from harness.study.plans import FINETUNE_LR, PretrainRun, TaskPlan, grid_error
from harness.tasks import TASKS

# tasks.<task>.when_present: true = run the task where its data is (a local copy or the hub), skip it elsewhere,
# so a paper-scale grid can name MNLI or SQuAD and still run on a machine that only has the small GLUE tasks.
WHEN_PRESENT = "when_present"
GRID_OWNED = {"learning_rates": "nuisance.finetune.learning_rate (or tasks.<task>.learning_rates)",
              "seeds": "seeds.finetune (or tasks.<task>.seeds)", "experiment": "the grid's name"}


def task_plans(path: Path, experiment: str, only: list[str] | None, *, finetune: dict[str, Any],
               nuisance: dict[str, list[Any]], seeds: list[int], listed: dict[str, Any]) -> dict[str, TaskPlan]:
    """Settings per task: FinetuneConfig defaults < `finetune:` < the grid's lr nuisance and seeds < the task's
    own settings (`listed`: the file's `tasks:`). `only` (--tasks) replaces the file's list; a task the file names
    keeps its settings."""
    from harness.evaluate import zero_shot_settings
    from harness.finetune import FinetuneConfig

    for key in finetune:
        if key in GRID_OWNED:
            raise grid_error(path, f"finetune.{key}", f"set by {GRID_OWNED[key]}, not here")
    grid_lrs = {"learning_rates": nuisance[FINETUNE_LR]} if FINETUNE_LR in nuisance else {}
    plans = {}
    for name in only if only is not None else list(listed):
        key = f"tasks.{name}" if only is None else f"--tasks {name}"
        if name not in TASKS:
            raise grid_error(path, key, f"unknown task '{name}'; allowed: {', '.join(TASKS)}")
        own = dict(listed.get(name) or {})
        optional = own.pop(WHEN_PRESENT, False)
        if not isinstance(optional, bool):
            raise grid_error(path, f"{key}.{WHEN_PRESENT}", f"{optional!r}; allowed: true, false")
        if "experiment" in own:
            raise grid_error(path, f"{key}.experiment", f"set by {GRID_OWNED['experiment']}, not here")
        zero_shot = TASKS[name].kind == "zero_shot"
        # A zero-shot task (BLiMP) is scored once per pre-training run: no fine-tuning settings, lrs or seeds.
        layers = {**own, "experiment": experiment} if zero_shot else \
            {**finetune, "seeds": seeds, **grid_lrs, **own, "experiment": experiment}
        data: dict[str, Any] = {}
        try:
            for field, value in layers.items():
                set_dotted(data, field, value)
            settings = zero_shot_settings(name, data) if zero_shot else FinetuneConfig.model_validate(data)
        except ValidationError as err:
            raise grid_error(path, key, format_validation_error(err)) from None
        except ConfigError as err:
            raise grid_error(path, key, str(err)) from None
        plans[name] = TaskPlan(name=name, settings=settings, optional=optional)
    return plans


def check_corpora_and_tasks(path: Path, runs: list[PretrainRun], plans: dict[str, TaskPlan],
                            data_dir: str | Path | None) -> list[str]:
    """Every local corpus of the runs and every task's files must be there (or the task on a reachable hub).
    Returns the `when_present` tasks whose data is missing, for the caller to leave out; any other missing task
    is a GridError."""
    for corpus in sorted({run.config.corpus.path for run in runs if run.config.corpus.hub is None}):
        try:
            resolve_data_path(corpus, data_dir)
        except ConfigError as err:
            raise grid_error(path, "corpus.path", str(err)) from None
    missing = [name for name in plans if not _task_data_here(name, data_dir)]
    if not missing:
        return []
    from harness.downstream.sources import hub_reachable

    if hub_reachable():
        return []  # the hub has every registered task; loading it is the trial's business
    required = [name for name in missing if not plans[name].optional]
    if required:
        root = data_root(data_dir) or "(no --data-dir or $HARNESS_DATA_DIR)"
        present = [name for name in TASKS if _task_data_here(name, data_dir)]
        raise grid_error(path, f"tasks.{required[0]}", f"no local data under {root} and the hub is not reachable; "
                         f"allowed here: {', '.join(present) or 'none'} (or mark it {WHEN_PRESENT}: true)")
    return missing


def _task_data_here(name: str, data_dir: str | Path | None) -> bool:
    from harness.downstream.sources import find_task_dir

    root = data_root(data_dir)
    if root is None:
        return False
    try:
        return find_task_dir(TASKS[name], root) is not None
    except HarnessError:
        return False
