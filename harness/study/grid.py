"""Grid files: a typed, completely validated description of a study (the tuning playbook's terms).

    name: table2_input_format        # results/<name>[-<scale>]/, the wandb group; default: the file's stem
    description: Table 2             # printed with the plan
    base:                            # the fixed part: a run config and/or preset + recipe, and fixed overrides
      config: configs/quickstart.yaml  #   relative to the grid file
      preset: tiny
      recipe: roberta
      set: {budget.max_steps: 200}
    scientific:                      # what is compared: named arms x the cross product of axes
      arms: {bert: {recipe: bert}, roberta: {recipe: roberta}}   # an arm: fields that move together
      axes: {data.packing: [segment_pair, full_sentences]}
    zip:                             # values that move together row by row (crossed with the points above)
      optim.batch_size: [256, 2048]
      optim.peak_lr: [1.0e-4, 7.0e-4]
    nuisance:                        # tuned for each scientific point; the best median over seeds is reported
      finetune.learning_rate: [1.0e-5, 2.0e-5, 3.0e-5]
      optim.peak_lr: [5.0e-4, 1.0e-3]  # a pre-training nuisance: one pre-training run per value
    seeds: {pretrain: [0], finetune: [0, 1, 2]}
    finetune: {epochs: 3}            # fine-tuning settings for every task (harness.finetune.FinetuneConfig)
    tasks:                           # downstream tasks, each with its own settings (may list learning_rates, seeds)
      sst2: {train_subsample: 2000}
      mrpc: {}
      blimp: {pairs_per_paradigm: 100}  # a zero-shot task: one evaluation per pre-training run, no lr, no seeds
    baselines:                       # rows every arm is measured against (not compared with the paper)
      no_pretraining: true           # the first point's architecture and tokenizer, random weights (0 updates),
                                     # fine-tuned and scored like every arm; or a point's label to copy instead
    scales:                          # named overlays chosen with --scale, deep-merged over the file (null deletes)
      quick: {base: {set: {budget.max_steps: 50}}, seeds: {finetune: [0]}}

Precedence of a pre-training run's fields: defaults < base.preset < recipe < base.config < base.set < arm < axes
< zip < nuisance < seed < `--set` (the command line). `load_grid` validates everything, every run config and every
task's settings and data included, before any work: a bad value is one line naming the file, the key and what is
allowed (`GridError`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.config import ConfigError, RecipeName, RunConfig, SizePreset, load_config, read_yaml
from harness.study.downstream import check_corpora_and_tasks, task_plans
from harness.study.plans import (
    FINETUNE_LR,
    GridError,
    Point,
    PretrainRun,
    Study,
    grid_error,
)

RESERVED_FIELDS = {"experiment": "set by the grid's name", "name": "set per job by the sweep",
                   "seed": "use seeds.pretrain"}


class GridSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BaseSpec(GridSection):
    config: str | None = Field(None, description="a run config file, relative to the grid file")
    preset: SizePreset | None = Field(None, description="size preset under everything else")
    recipe: RecipeName | None = Field(None, description="paper recipe (an arm may name another)")
    set: dict[str, Any] = Field(default_factory=dict, description="fixed dotted-key overrides of every run")


class ScientificSpec(GridSection):
    arms: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name -> fields that move together")
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="field -> values, crossed")


class SeedsSpec(GridSection):
    pretrain: list[int] = Field([0], min_length=1, description="pre-training seeds (one run each)")
    finetune: list[int] = Field([0], min_length=1, description="fine-tuning seeds of every task")


class BaselinesSpec(GridSection):
    no_pretraining: bool | str = Field(False, description="a row with the architecture and tokenizer of the first "
                                       "point (or of the point named here) and random weights: 0 updates")


class GridFile(GridSection):
    name: str | None = Field(None, min_length=1, description="study name; default: the file's stem")
    description: str = Field("", description="one line printed with the plan")
    base: BaseSpec = BaseSpec()
    scientific: ScientificSpec = ScientificSpec()
    zip: dict[str, list[Any]] = Field(default_factory=dict, description="fields whose values move row by row")
    nuisance: dict[str, list[Any]] = Field(default_factory=dict, description="fields tuned per scientific point")
    seeds: SeedsSpec = SeedsSpec()
    finetune: dict[str, Any] = Field(default_factory=dict, description="fine-tuning settings of every task")
    tasks: dict[str, dict[str, Any] | None] = Field(default_factory=dict, description="task -> its own settings")
    baselines: BaselinesSpec = BaselinesSpec()
    scales: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name -> overlay of this file")


NO_PRETRAINING = "no_pretraining"  # the baseline point's label
# What turns a point into the no-pre-training baseline: the run builds, evaluates and exports its initialised model.
NO_PRETRAINING_FIELDS = {"budget.max_steps": 0, "budget.max_tokens": None}


def load_grid(path: str | Path, scale: str | None = None, overrides: list[str] | None = None,
              tasks: list[str] | None = None, data_dir: str | Path | None = None, check_data: bool = True) -> Study:
    """Read, overlay `scale`, validate and expand a grid file into its runs and tasks; raises GridError.

    `overrides` (`--set`) apply to every pre-training run; `tasks` (`--tasks`) replaces the file's task list
    (a task the file names keeps its settings); `data_dir` is the root of relative corpus and task paths, whose
    presence is checked unless `check_data` is false (validating a paper-scale grid on a machine without its data)."""
    path = Path(path)
    raw = read_yaml(path)
    scales = raw.get("scales")
    for other in scales if isinstance(scales, dict) else ():
        _validate(_apply_scale(raw, other, path), path)  # a typo in any scale is caught whichever one runs
    spec = _validate(_apply_scale(raw, scale, path), path)
    name = spec.name or path.stem.removesuffix(".grid")
    experiment = f"{name}-{scale}" if scale else name
    points = _points(spec, path)
    nuisances = _product(_pretrain_nuisance(spec))
    # A pre-training nuisance (e.g. the peak lr) does nothing to a run of 0 updates: the baseline takes the first.
    runs = [_run(spec, path, experiment, point, nuisance, seed, list(overrides or []))
            for point in points for nuisance in (nuisances[:1] if point.baseline else nuisances)
            for seed in spec.seeds.pretrain]
    plans = task_plans(path, experiment, tasks, finetune=spec.finetune, nuisance=spec.nuisance,
                       seeds=spec.seeds.finetune, listed=spec.tasks)
    skipped = check_corpora_and_tasks(path, runs, plans, data_dir) if check_data else []
    return Study(name=name, scale=scale, path=path, description=spec.description, points=points, runs=runs,
                 tasks={k: v for k, v in plans.items() if k not in skipped},
                 data_dir=Path(data_dir) if data_dir else None, skipped_tasks=tuple(skipped))


def _apply_scale(raw: dict[str, Any], scale: str | None, path: Path) -> dict[str, Any]:
    scales = raw.get("scales") or {}
    if scale is None:
        return raw
    if not isinstance(scales, dict) or scale not in scales:
        allowed = ", ".join(scales) if isinstance(scales, dict) and scales else "none defined"
        raise grid_error(path, "scales", f"--scale {scale} is not defined; allowed: {allowed}")
    overlay = scales[scale] or {}
    if not isinstance(overlay, dict) or {"name", "scales"} & set(overlay):
        raise grid_error(path, f"scales.{scale}", "expected a mapping of top-level keys other than name and scales")
    return _overlay(raw, overlay)


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep merge where a null in the overlay deletes the key (e.g. drop a task at one scale); lists replace."""
    merged = dict(base)
    for key, value in top.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate(raw: dict[str, Any], path: Path) -> GridFile:
    try:
        spec = GridFile.model_validate(raw)
    except ValidationError as err:
        raise _one_line(err, path) from None
    for section, axes in (("scientific.axes", spec.scientific.axes), ("zip", spec.zip), ("nuisance", spec.nuisance)):
        for key, values in axes.items():
            if not values:
                raise grid_error(path, f"{section}.{key}", "an axis with no values; allowed: a list of one or more")
            if key != FINETUNE_LR or section != "nuisance":
                check_run_field(key, path, f"{section}.{key}")
    lengths = {key: len(values) for key, values in spec.zip.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise grid_error(path, "zip", f"values of unequal length ({listed}); allowed: equal lengths, one per row")
    for arm, fields in spec.scientific.arms.items():
        for key in fields:
            if key != "recipe":
                check_run_field(key, path, f"scientific.arms.{arm}.{key}")
    for key in spec.base.set:
        if key != "recipe":
            check_run_field(key, path, f"base.set.{key}")
    return spec


def _one_line(err: ValidationError, path: Path) -> GridError:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        owner: type[BaseModel] = GridFile
        for part in first["loc"][:-1]:
            annotation = owner.model_fields[str(part)].annotation
            owner = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else owner
        return grid_error(path, loc, f"unknown key; allowed: {', '.join(owner.model_fields)}")
    return grid_error(path, loc, f"{first['msg']} (got {first.get('input')!r})")


def check_run_field(dotted: str, path: Path, key: str) -> None:
    """A dotted run-config field (e.g. data.packing) that an axis may set; else one line listing the allowed."""
    if dotted in RESERVED_FIELDS:
        raise grid_error(path, key, f"'{dotted}' cannot be an axis here ({RESERVED_FIELDS[dotted]})")
    owner: type[BaseModel] = RunConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = owner.model_fields
        if part not in fields:
            prefix = ".".join(parts[:i])
            allowed = ", ".join(f"{prefix}.{f}" if prefix else f for f in fields if f not in RESERVED_FIELDS)
            raise grid_error(path, key, f"unknown field '{dotted}'; allowed: {allowed}")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1 and not is_section:
            raise grid_error(path, key, f"unknown field '{dotted}': '{'.'.join(parts[:i + 1])}' is not a section")
        if i == len(parts) - 1 and is_section:
            raise grid_error(path, key, f"'{dotted}' is a section; allowed: one of its fields, e.g. "
                             f"{dotted}.{next(iter(annotation.model_fields))}")
        owner = annotation if is_section else owner


def value_label(key: str, value: Any) -> str:
    """A short, path-safe label: strings as they are, numbers and booleans with their field's name."""
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        text = leaf if value else f"no_{leaf}"
    elif isinstance(value, int | float):
        text = f"{leaf}{value:g}"
    elif isinstance(value, str):
        text = value
    else:
        text = f"{leaf}{yaml.safe_dump(value, default_flow_style=True).strip()}"
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in text)


def _product(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))]


def _points(spec: GridFile, path: Path) -> list[Point]:
    arms = list(spec.scientific.arms.items()) or [(None, {})]
    rows = _zip_rows(spec.zip) or [{}]
    named = _zip_label_keys(rows)
    points = []
    for (arm, arm_fields), values, row in itertools.product(arms, _product(spec.scientific.axes), rows):
        parts = ([arm] if arm else []) + [value_label(k, v) for k, v in values.items()]
        parts += [value_label(key, row[key]) for key in named]
        shown = {"arm": arm} if arm else {}
        points.append(Point(label="-".join(parts) or "base", values={**shown, **values, **row},
                            overrides={**arm_fields, **values, **row}))
    labels = [p.label for p in points]
    for label in labels:
        if labels.count(label) > 1:
            raise grid_error(path, "scientific", f"two points are both labelled '{label}'; allowed: distinct values")
    return points + _baseline_points(spec, path, points)


def _baseline_points(spec: GridFile, path: Path, points: list[Point]) -> list[Point]:
    """The no-pre-training row: a copy of one point (the first, or the one named) with 0 updates."""
    like = spec.baselines.no_pretraining
    if like is False:
        return []
    if like is True:
        source = points[0]
    else:
        source = next((p for p in points if p.label == like), None)
        if source is None:
            raise grid_error(path, "baselines.no_pretraining", f"no point labelled '{like}'; allowed: true, false or "
                             f"one of {', '.join(p.label for p in points)}")
    if NO_PRETRAINING in {p.label for p in points}:
        raise grid_error(path, "baselines.no_pretraining", f"a point is already labelled '{NO_PRETRAINING}'")
    return [Point(label=NO_PRETRAINING, values={"arm": NO_PRETRAINING}, baseline=True,
                  overrides={**source.overrides, **NO_PRETRAINING_FIELDS})]


def _zip_label_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The zip fields that name a row: the first one, and when its values repeat (a search of several rates per
    batch size), also the first other field that tells the rows apart."""
    if not rows or not rows[0]:
        return []
    keys = list(rows[0])

    def distinct(chosen: list[str]) -> bool:
        labels = ["-".join(value_label(k, row[k]) for k in chosen) for row in rows]
        return len(set(labels)) == len(labels)

    if distinct(keys[:1]):
        return keys[:1]
    return next(([keys[0], key] for key in keys[1:] if distinct([keys[0], key])), keys)


def _zip_rows(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    length = len(next(iter(axes.values()))) if axes else 0
    return [{key: values[i] for key, values in axes.items()} for i in range(length)]


def _pretrain_nuisance(spec: GridFile) -> dict[str, list[Any]]:
    return {key: values for key, values in spec.nuisance.items() if key != FINETUNE_LR}


def _run(spec: GridFile, path: Path, experiment: str, point: Point, nuisance: dict[str, Any], seed: int,
         cli_overrides: list[str]) -> PretrainRun:
    """One pre-training run's config, validated; an error names the grid key that produced it."""
    name = "-".join([point.label, *(value_label(k, v) for k, v in nuisance.items()), f"s{seed}"])
    layers = {**spec.base.set, **point.overrides, **nuisance}
    overrides = ([f"recipe={spec.base.recipe}"] if spec.base.recipe else []) + _as_overrides(layers) + [
        f"seed={seed}", f"experiment={experiment}", f"name={name}", *cli_overrides]
    config_file = path.parent / spec.base.config if spec.base.config else None
    try:
        config = load_config(config_file, overrides, preset=spec.base.preset)
    except ConfigError as err:
        raise grid_error(path, f"point '{point.label}' (seed {seed})", str(err)) from None
    return PretrainRun(point=point, nuisance=nuisance, seed=seed, config=config)


def _as_overrides(fields: dict[str, Any]) -> list[str]:
    """`--set` strings in order; values are YAML, so lists and nulls survive the round trip."""
    def text(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

    return [f"{key}={text(value)}" for key, value in fields.items()]
