"""A study expanded into jobs, each owning one run record (harness.runs), and what is left to compute.

- a pre-training job per (scientific point, pre-training nuisance value, pre-training seed): one run directory;
- a fine-tuning job per (pre-training run, task, learning rate, fine-tuning seed): one trial directory. Every
  fine-tuning job of a run shares that run; its directory is known once the run's model exists (the trial's study
  id hashes the model's content), so until then it counts as 'new';
- an evaluation job per (pre-training run, zero-shot task such as BLiMP): one record directory, known the same way.
Two jobs that would write the same directory, or compute the same run under two names, stop the expansion.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import to_dict
from harness.paths import atomic_write_text
from harness.runs import RecordStatus, read_curves, read_final_metrics, record_status, run_dir
from harness.study.plans import PretrainRun, Study, TaskPlan, grid_error


@dataclass(frozen=True)
class PretrainJob:
    name: str
    run: PretrainRun
    path: Path

    kind = "pretrain"

    @property
    def depends_on(self) -> None:
        return None


@dataclass(frozen=True)
class FinetuneJob:
    name: str
    pretrain: PretrainJob
    task: TaskPlan
    settings: Any  # FinetuneConfig for this run (wandb as the run logs), lr and seed grid included
    lr: float
    seed: int

    kind = "finetune"

    @property
    def depends_on(self) -> PretrainJob:
        return self.pretrain


@dataclass(frozen=True)
class EvaluateJob:
    """A zero-shot task scored on a pre-training run's model (harness.evaluate): no lr, no fine-tuning seed."""

    name: str
    pretrain: PretrainJob
    task: TaskPlan
    settings: Any  # the zero-shot task's settings (e.g. harness.evaluate.BlimpConfig)

    kind = "evaluate"

    @property
    def depends_on(self) -> PretrainJob:
        return self.pretrain


Job = PretrainJob | FinetuneJob | EvaluateJob
DownstreamJob = FinetuneJob | EvaluateJob


@dataclass
class Plan:
    study: Study
    results_root: Path
    pretrain: list[PretrainJob]
    finetune: list[FinetuneJob]
    evaluate: list[EvaluateJob] = field(default_factory=list)
    _fingerprints: dict[Path, str] = field(default_factory=dict)

    @property
    def jobs(self) -> list[Job]:
        """Pre-training first: every fine-tuning and evaluation job needs its run's model."""
        return [*self.pretrain, *self.evaluate, *self.finetune]

    @property
    def downstream(self) -> list[DownstreamJob]:
        return [*self.evaluate, *self.finetune]

    def checkpoint(self, job: DownstreamJob) -> Path:
        return job.pretrain.path / read_final_metrics(job.pretrain.path).get("model_dir", "model")

    def path(self, job: Job) -> Path | None:
        """The job's record directory; None for a downstream job whose pre-training run is not done."""
        if isinstance(job, PretrainJob):
            return job.path
        if record_status(job.pretrain.path) != "done":
            return None
        checkpoint = self.checkpoint(job)
        if checkpoint not in self._fingerprints:  # one hash of the weights per run, shared by its trials
            from harness.downstream.encode import checkpoint_fingerprint

            self._fingerprints[checkpoint] = checkpoint_fingerprint(checkpoint)
        if isinstance(job, EvaluateJob):
            from harness.evaluate import zero_shot_record_path

            return zero_shot_record_path(self.results_root, checkpoint, job.task.name, job.settings,
                                         self._fingerprints[checkpoint])
        from harness.finetune import trial_path

        return trial_path(self.results_root, checkpoint, job.task.name, job.settings, job.lr, job.seed,
                          self._fingerprints[checkpoint])

    def status(self, job: Job) -> RecordStatus:
        path = self.path(job)
        return "new" if path is None else record_status(path)

    def select(self, pattern: str | None) -> list[Job]:
        """Jobs whose name matches the glob `pattern` (all when None), with the pre-training runs they need."""
        if pattern is None:
            return self.jobs
        chosen = {job.name for job in self.jobs if fnmatch.fnmatchcase(job.name, pattern)}
        chosen |= {job.pretrain.name for job in self.downstream if job.name in chosen}
        return [job for job in self.jobs if job.name in chosen]


def expand(study: Study, results_root: str | Path) -> Plan:
    """Every job of the study, checked for two jobs writing one directory."""
    results_root = Path(results_root)
    pretrain: list[PretrainJob] = []
    by_dir: dict[Path, PretrainJob] = {}
    by_id: dict[str, PretrainJob] = {}
    for run in study.runs:
        job = PretrainJob(name=f"pretrain/{run.label}", run=run, path=run_dir(results_root, run.config))
        other = by_dir.get(job.path) or by_id.get(run.config.run_id())
        if other is not None:
            raise grid_error(study.path, "scientific", f"jobs '{other.name}' and '{job.name}' would write the same "
                             f"run (run id {run.config.run_id()}); allowed: points whose run configs differ")
        by_dir[job.path] = by_id[run.config.run_id()] = job
        pretrain.append(job)
    finetune: list[FinetuneJob] = []
    evaluate: list[EvaluateJob] = []
    for job in pretrain:
        for task in study.tasks.values():
            if task.zero_shot:
                evaluate.append(EvaluateJob(name=f"evaluate/{job.run.label}/{task.name}", pretrain=job, task=task,
                                            settings=task.settings))
                continue
            settings = _with_wandb(task.settings, job.run)
            if len({f"{lr:g}" for lr in settings.learning_rates}) != len(settings.learning_rates):
                raise grid_error(study.path, f"tasks.{task.name}", f"learning rates {list(settings.learning_rates)} "
                                 "would write one trial directory twice; allowed: distinct values")
            finetune += [FinetuneJob(name=f"finetune/{job.run.label}/{task.name}/lr{lr:g}-seed{seed}", pretrain=job,
                                     task=task, settings=settings, lr=lr, seed=seed)
                         for lr in settings.learning_rates for seed in settings.seeds]
    return Plan(study=study, results_root=results_root, pretrain=pretrain, finetune=finetune, evaluate=evaluate)


def _with_wandb(settings: Any, run: PretrainRun) -> Any:
    """Trials log to wandb when their pre-training run does (speed/bookkeeping only: not in the trial's id)."""
    log = run.config.logging
    mode = log.wandb_mode if log.wandb else "disabled"
    impl = settings.impl.model_copy(update={"wandb_mode": mode, "wandb_project": log.wandb_project})
    return settings.model_copy(update={"impl": impl})


STUDY_FILE = "study.json"  # in results/<experiment>/: what `harness report` needs to re-expand the plan


def write_study_file(folder: Path, grid: Path, scale: str | None, overrides: list[str] | None,
                     tasks: list[str] | None, data_dir: str | Path | None) -> None:
    """What `harness report` needs to re-expand the plan of a results folder (written by `harness sweep`)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"grid": str(Path(grid).resolve()), "scale": scale, "overrides": list(overrides or []),
              "tasks": tasks, "data_dir": str(Path(data_dir).resolve()) if data_dir else None}
    atomic_write_text(folder / STUDY_FILE, json.dumps(record, indent=2) + "\n")


def payload(plan: Plan, job: Job, threads: int, verbose: bool = False) -> dict[str, Any]:
    """What a worker process needs to run `job` (plain data: it crosses a process boundary). `verbose`: the job's
    own console lines stay on the console (else they go to its console.log)."""
    study, run = plan.study, job_run(job)
    # wandb: group = the study, job type = pretrain/finetune, the axes in the run's config (compare arms in the UI)
    axes = {"point": run.point.label, **run.point.values, **run.nuisance, "seed": run.seed}
    common = {"name": job.name, "kind": job.kind, "threads": threads, "verbose": verbose,
              "results_root": str(plan.results_root),
              "data_dir": str(study.data_dir) if study.data_dir else None,
              "wandb": {"group": study.experiment, "job_type": job.kind, "axes": axes}}
    if isinstance(job, PretrainJob):
        return {**common, "path": str(job.path), "config": to_dict(job.run.config)}
    if isinstance(job, EvaluateJob):
        axes.update(task=job.task.name)
        return {**common, "path": str(plan.path(job)), "checkpoint": str(plan.checkpoint(job)), "task": job.task.name,
                "settings": job.settings.model_dump(mode="json")}
    axes.update(task=job.task.name, learning_rate=job.lr, finetune_seed=job.seed)
    return {**common, "path": str(plan.path(job)), "checkpoint": str(plan.checkpoint(job)), "task": job.task.name,
            "settings": job.settings.model_dump(mode="json"), "lr": job.lr, "seed": job.seed}


def job_run(job: Job) -> PretrainRun:
    return job.run if isinstance(job, PretrainJob) else job.pretrain.run


# ---- what is left -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    tokens_left: int
    pretrain_seconds: float | None  # None: no finished run measured a throughput yet
    finetune_left: int
    finetune_seconds: float | None
    evaluate_left: int = 0

    def describe(self) -> str:
        def clock(seconds: float | None) -> str:
            return "time unknown until one finishes" if seconds is None else f"~{format_duration(seconds)}"

        zero_shot = f", {self.evaluate_left} zero-shot evaluations" if self.evaluate_left else ""
        return (f"compute left: {count_label(self.tokens_left)} pre-training tokens ({clock(self.pretrain_seconds)}), "
                f"{self.finetune_left} fine-tuning trials ({clock(self.finetune_seconds)}){zero_shot}")


def count_label(count: float) -> str:
    """A token count in the unit that keeps it short: 0M, 0.205M, 36M, 262B (a paper-scale grid), 1.2T."""
    for scale, unit in ((1e12, "T"), (1e9, "B")):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count / 1e6:.3g}M"


def estimate(plan: Plan, statuses: dict[str, RecordStatus]) -> Estimate:
    """Tokens left from each unfinished run's budget (less what a partial run already logged); time from the
    tokens/second the finished runs measured and the wall time the finished trials took."""
    tokens_left, measured_tokens, measured_seconds = 0, 0.0, 0.0
    for job in plan.pretrain:
        if statuses[job.name] == "done":
            tokens, seconds = _measured(read_final_metrics(job.path))
            measured_tokens, measured_seconds = measured_tokens + tokens, measured_seconds + seconds
            continue
        tokens_left += int(_budget_tokens(job) * (1 - _progress(job)))
    seconds_per_token = measured_seconds / measured_tokens if measured_tokens else None
    trial_seconds = [read_final_metrics(path).get("wall_s", 0.0) for job in plan.finetune
                     if statuses[job.name] == "done" and (path := plan.path(job)) is not None]
    finetune_left = sum(statuses[job.name] != "done" for job in plan.finetune)
    per_trial = sum(trial_seconds) / len(trial_seconds) if trial_seconds else None
    return Estimate(tokens_left=tokens_left, pretrain_seconds=_seconds(tokens_left, seconds_per_token),
                    finetune_left=finetune_left, finetune_seconds=_seconds(finetune_left, per_trial),
                    evaluate_left=sum(statuses[job.name] != "done" for job in plan.evaluate))


def _measured(final: dict[str, Any]) -> tuple[float, float]:
    """(tokens, seconds) a finished run measured. Its own training throughput (train_tokens_per_s) when logged:
    fit_seconds_this_launch covers only the last launch of a resumed run, while tokens_seen counts every launch."""
    tokens = final.get("tokens_seen") or 0
    if final.get("train_tokens_per_s"):
        return tokens, tokens / final["train_tokens_per_s"]
    return (tokens, final["fit_seconds_this_launch"]) if final.get("fit_seconds_this_launch") else (0, 0.0)


def _seconds(left: float, per_unit: float | None) -> float | None:
    return 0.0 if not left else None if per_unit is None else left * per_unit


def _budget_tokens(job: PretrainJob) -> int:
    from harness.recipe import nominal_tokens_per_update

    budget = job.run.config.budget
    return budget.max_tokens or (budget.max_steps or 0) * nominal_tokens_per_update(job.run.config)


def _progress(job: PretrainJob) -> float:
    """Share of the updates a partial run has logged (its curves), 0 for a new one."""
    budget = job.run.config.budget
    if not (job.path / "logs").is_dir() or not budget.max_steps:
        return 0.0
    curves = read_curves(job.path)
    return min(1.0, (int(curves.index.max()) + 1) / budget.max_steps) if len(curves) else 0.0


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
