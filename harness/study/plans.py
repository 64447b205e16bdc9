"""The plain values a grid file expands into (harness.study.grid builds them, harness.study.downstream and
harness.study.jobs read them): points, pre-training runs, task plans, the study; and the grid's one error type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import ConfigError, RunConfig

FINETUNE_LR = "finetune.learning_rate"  # the one nuisance that is not a run-config field


class GridError(ConfigError):
    """A grid file that cannot be run; one line naming the file, the key and what is allowed."""


@dataclass(frozen=True)
class Point:
    """One scientific point: what is compared. `values` are the axis values for tables (arms: {'arm': name}).
    A baseline point (no pre-training) is run and reported like the others but never compared with the paper."""

    label: str
    values: dict[str, Any]
    overrides: dict[str, Any]
    baseline: bool = False


@dataclass(frozen=True)
class PretrainRun:
    """One pre-training run of the grid: a point, one value of each pre-training nuisance, one seed."""

    point: Point
    nuisance: dict[str, Any]
    seed: int
    config: RunConfig

    @property
    def label(self) -> str:
        return self.config.run_name()


@dataclass(frozen=True)
class TaskPlan:
    """A downstream task: its settings (harness.finetune.FinetuneConfig, grid lists included) and its grid."""

    name: str
    settings: Any  # FinetuneConfig (its learning_rates and seeds are the task's nuisance grid and seeds), or the
    # settings of a zero-shot task (harness.evaluate), scored once per pre-training run
    optional: bool = False  # tasks.<task>.when_present: left out where its data is missing

    @property
    def zero_shot(self) -> bool:
        from harness.tasks import get_task

        return get_task(self.name).kind == "zero_shot"


@dataclass(frozen=True)
class Study:
    name: str
    scale: str | None
    path: Path
    description: str
    points: list[Point]
    runs: list[PretrainRun]
    tasks: dict[str, TaskPlan]
    data_dir: Path | None
    skipped_tasks: tuple[str, ...] = ()  # when_present tasks left out: no data on this machine

    @property
    def experiment(self) -> str:
        """results/<experiment>/ and the wandb group: one per study and scale, so scales never mix."""
        return f"{self.name}-{self.scale}" if self.scale else self.name


def grid_error(path: Path, key: str, message: str) -> GridError:
    return GridError(f"grid file {path}: {key}: {message}")
