"""Fine-tune a checkpoint on a downstream task with the paper's protocol and record every trial.

Protocol (BERT's, which the RoBERTa ablation tables follow): for each learning rate of the grid and each
seed, fine-tune from the checkpoint and score the dev set; the reported lr is the one with the best MEDIAN
dev score over seeds (the lr is a nuisance parameter, tuned per checkpoint), reported with its min, max
and inter-quartile range.

Layout: results_root/<experiment>/finetune/<checkpoint>__<task>__<study id>/
    summary.json                      aggregate over the grid, rewritten at the end of each call
    lr<lr>__seed<seed>/config.json    resolved settings, written first; env.json beside it (the run-record
                                      protocol of harness.runs: done / resume / refuse, failed.json)
    lr<lr>__seed<seed>/logs/          CSVLogger curves (a resumed trial adds a version folder)
    lr<lr>__seed<seed>/dev_predictions.csv  `id,prediction,label` per dev example, from the last dev pass
    lr<lr>__seed<seed>/final_metrics.json  final dev metrics and precision, written atomically last: marks it done
The study id hashes the checkpoint's content, the task spec and every setting that changes a score, but
not the grid (learning rates, seeds: extending it reuses finished trials) and not `impl` (speed only).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from harness.config import ConfigError, ConfigSection, apply_overrides, format_validation_error
from harness.paths import atomic_write_text
from harness.runs import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    TRIAL_CONFIG_FILE,
    environment,
    is_done,
    open_record,
    read_final_metrics,
    write_final_metrics,
)
from harness.tasks import TaskSpec, get_task


class FinetuneImpl(ConfigSection):
    """Settings that change only speed or bookkeeping, never a score: not part of the study id."""

    eval_batch_size: int = Field(64, ge=1, description="dev-set batch size")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = Field(
        "32-true", description="Lightning precision: 32-true on CPU, bf16-mixed on recent GPUs")
    accelerator: Literal["auto", "cpu", "gpu"] = Field("auto", description="Lightning accelerator")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; null = torch default")
    keep_checkpoints: bool = Field(False, description="keep a finished trial's last.ckpt (kept only to resume)")
    fast_dropout: bool = Field(True, description="CPU dropout masks from numpy's PCG64 (pre-training's "
                               "impl.fast_dropout); no effect on GPUs")
    allocator: Literal["reuse", "system"] = Field("reuse", description="reuse: glibc keeps freed memory "
                                                  "(pre-training's impl.allocator); system: glibc's defaults")
    log_every_steps: int = Field(10, ge=1, description="log training loss every N updates")
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "disabled", description="also log each trial to Weights & Biases (a sweep sets it from the run's logging)")
    wandb_project: str = Field("harness", description="wandb project name")


class FinetuneConfig(ConfigSection):
    experiment: str = Field("finetune", min_length=1, description="results/<experiment>/finetune/")
    learning_rates: tuple[float, ...] = Field((5e-5, 4e-5, 3e-5, 2e-5), min_length=1,
                                              description="peak lr grid; the best median over seeds is reported")
    seeds: tuple[int, ...] = Field((0, 1, 2, 3, 4), min_length=1, description="seeds per lr (head init, data order)")
    batch_size: int = Field(32, ge=1, description="sequences per update (paper: 32)")
    epochs: int = Field(3, ge=1, description="passes over the training set (paper: 3)")
    max_steps: int | None = Field(None, ge=1, description="stop after N updates (smoke runs); null = epochs decide")
    warmup_fraction: float = Field(0.06, ge=0.0, lt=1.0, description="share of the updates spent warming up")
    weight_decay: float = Field(0.01, ge=0.0, lt=1.0, description="AdamW decoupled weight decay (not biases/norms)")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas (BERT fine-tuning: 0.9, 0.999)")
    adam_eps: float = Field(1e-6, gt=0.0, lt=1.0, description="Adam epsilon")
    clip_grad_norm: float = Field(1.0, ge=0.0, description="gradient clipping max norm; 0 = off")
    max_seq_length: int | None = Field(None, ge=8, description="tokens per input; null = task default "
                                       "(GLUE/NER 128, SQuAD 384), always capped by the checkpoint")
    train_subsample: int | None = Field(None, ge=1, description="train on a fixed random N examples; null = all")
    subsample_seed: int = Field(0, ge=0, description="seed of the train subsample (the same for every trial)")
    doc_stride: int = Field(128, ge=1, description="QA: tokens of overlap between windows of a long context")
    max_answer_length: int = Field(30, ge=1, description="QA: longest answer span in tokens")
    n_best: int = Field(20, ge=1, description="QA: start/end candidates searched per window")
    keep_pretrained_pooler: bool = Field(False, description="true: BERT's pooler starts from the checkpoint's (NSP-"
                                         "trained) one when it has one (Google's fine-tuning); false: fresh, like "
                                         "the head (fairseq), so NSP and no-NSP checkpoints get the same head")
    impl: FinetuneImpl = FinetuneImpl()

    @model_validator(mode="after")
    def _grid(self) -> FinetuneConfig:
        if not all(0.0 < lr < 1.0 for lr in self.learning_rates):
            raise ValueError(f"learning_rates = {list(self.learning_rates)}; allowed: numbers in (0, 1)")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds = {list(self.seeds)}; allowed: distinct integers >= 0")
        return self

    def outcome(self) -> dict[str, Any]:
        """The settings that change a trial's score, grid excluded."""
        return self.model_dump(mode="json", exclude={"impl", "experiment", "learning_rates", "seeds"})


def load_finetune_config(overrides: list[str] | None = None) -> FinetuneConfig:
    """Defaults < `key=value` overrides (values parsed as YAML, e.g. `learning_rates=[1e-4, 5e-5]`,
    `impl.precision=bf16-mixed`); any bad value is a ConfigError naming the field."""
    data = apply_overrides({}, list(overrides or []))
    try:
        return FinetuneConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def finetune(checkpoint: Path, task: str, data_dir: str | Path | None, settings: FinetuneConfig,
             results_root: Path) -> dict[str, Any]:
    """Run (or finish) the lr x seed grid and return the summary that is also written to summary.json."""
    from harness.downstream.encode import checkpoint_fingerprint, open_checkpoint

    spec = finetune_task(task)
    ckpt = open_checkpoint(checkpoint)
    fingerprint = checkpoint_fingerprint(ckpt.path)
    study_dir = finetune_study_dir(results_root, ckpt.path, spec, settings, fingerprint)
    data = None
    trials: list[dict[str, Any]] = []
    for lr in settings.learning_rates:
        for seed in settings.seeds:
            trial_dir = study_dir / trial_name(lr, seed)
            if not is_done(trial_dir) and data is None:  # load and encode only if needed, once for the grid
                data = _prepare(spec, ckpt, data_dir, settings)
            trials.append(_trial(trial_dir, spec, ckpt, fingerprint, data, settings, lr, seed))
    summary = summarize(spec, trials, settings)
    summary.update(checkpoint=str(ckpt.path), checkpoint_fingerprint=fingerprint, study_dir=str(study_dir))
    atomic_write_text(study_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def finetune_trial(checkpoint: Path, task: str, data_dir: str | Path | None, settings: FinetuneConfig,
                   results_root: Path, lr: float, seed: int, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """One trial of the grid (what a sweep job runs): returned untouched when done, else run or resumed into
    `trial_path(...)`. `callbacks` are extra Lightning callbacks (e.g. a progress reporter)."""
    from harness.downstream.encode import checkpoint_fingerprint, open_checkpoint

    spec = finetune_task(task)
    ckpt = open_checkpoint(checkpoint)
    fingerprint = checkpoint_fingerprint(ckpt.path)
    trial_dir = finetune_study_dir(results_root, ckpt.path, spec, settings, fingerprint) / trial_name(lr, seed)
    data = None if is_done(trial_dir) else _prepare(spec, ckpt, data_dir, settings)
    return _trial(trial_dir, spec, ckpt, fingerprint, data, settings, lr, seed, callbacks)


def finetune_task(name: str) -> TaskSpec:
    """The spec of a task that is fine-tuned; a zero-shot task (BLiMP) is one line pointing at `harness evaluate`."""
    spec = get_task(name)
    if spec.kind == "zero_shot":
        raise ConfigError(f"task '{name}' is zero-shot (no fine-tuning): score it with harness evaluate --task {name}")
    return spec


def trial_path(results_root: str | Path, checkpoint: Path, task: str, settings: FinetuneConfig, lr: float,
               seed: int, fingerprint: str) -> Path:
    """Where a trial lives, without loading the checkpoint (the sweep plans with it); `fingerprint` is
    harness.downstream.encode.checkpoint_fingerprint(checkpoint)."""
    study = finetune_study_dir(results_root, Path(checkpoint).expanduser(), get_task(task), settings, fingerprint)
    return study / trial_name(lr, seed)


def trial_name(lr: float, seed: int) -> str:
    return f"lr{lr:g}__seed{seed}"


def finetune_study_dir(results_root: str | Path, checkpoint: Path, spec: TaskSpec, settings: FinetuneConfig,
                       fingerprint: str) -> Path:
    return Path(results_root) / settings.experiment / "finetune" / study_name(checkpoint, spec, settings, fingerprint)


def study_name(checkpoint: Path, spec: TaskSpec, settings: FinetuneConfig, fingerprint: str) -> str:
    identity = {"checkpoint": fingerprint, "task": spec.to_dict(), "settings": settings.outcome()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{checkpoint.name}__{spec.name}__{digest}"


def _prepare(spec: TaskSpec, ckpt: Any, data_dir: str | Path | None, settings: FinetuneConfig) -> Any:
    from harness.downstream.prepare import prepare_task_data

    return prepare_task_data(spec, ckpt, data_dir, max_seq_length=settings.max_seq_length,
                             train_subsample=settings.train_subsample, subsample_seed=settings.subsample_seed,
                             doc_stride=settings.doc_stride, n_best=settings.n_best,
                             max_answer_length=settings.max_answer_length)


def _trial(trial_dir: Path, spec: TaskSpec, ckpt: Any, fingerprint: str, data: Any, settings: FinetuneConfig,
           lr: float, seed: int, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    if is_done(trial_dir):  # finished: skipped, never overwritten (and its data never loaded)
        return read_final_metrics(trial_dir)
    config = {"task": spec.to_dict(), "checkpoint": {"path": str(ckpt.path), "fingerprint": fingerprint},
              "settings": settings.model_dump(mode="json"), "learning_rate": lr, "seed": seed,
              "resolved": {"max_seq_length": data.max_seq_length, "doc_stride": data.doc_stride,
                           "train_examples": data.train_examples, "train_features": len(data.train),
                           "dev_examples": data.dev_examples, "train_subsample": settings.train_subsample}}
    # The run-record protocol of harness.runs: an interrupted trial resumes only under the same outcome.
    open_record(trial_dir, TRIAL_CONFIG_FILE, json.dumps(config, indent=2) + "\n", _trial_outcome(config),
                lambda path: _trial_outcome(json.loads(path.read_text(encoding="utf-8"))),
                lambda: environment({"seed": seed, "learning_rate": lr, "task": spec.name}))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        result = run_trial(trial_dir, spec, ckpt, data, settings, lr, seed, callbacks)
    result.update(learning_rate=lr, seed=seed, train_examples=data.train_examples,
                  train_subsample=settings.train_subsample, precision=settings.impl.precision,
                  wall_s=round(time.perf_counter() - started, 2))
    write_final_metrics(trial_dir, result)
    if not settings.impl.keep_checkpoints:
        shutil.rmtree(trial_dir / CHECKPOINT_DIR, ignore_errors=True)
    return result


def _trial_outcome(config: dict[str, Any]) -> dict[str, Any]:
    """What a trial's score depends on (the grid lists, impl and the checkpoint's path do not)."""
    settings = FinetuneConfig.model_validate(config["settings"]).outcome()
    return {"task": config["task"], "learning_rate": config["learning_rate"], "seed": config["seed"],
            "resolved": config["resolved"], "settings": settings}


def run_trial(trial_dir: Path, spec: TaskSpec, ckpt: Any, data: Any, settings: FinetuneConfig, lr: float,
              seed: int, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """One fine-tuning run under a Lightning Trainer; resumes from checkpoints/last.ckpt if a previous run of this
    trial was interrupted. Returns the final dev metrics."""
    import torch

    from harness.downstream.encode import pad_batch
    from harness.downstream.evaluators import PREDICTIONS_FILE, write_predictions
    from harness.models.finetune import FinetuneModule
    from harness.train import reuse_freed_memory

    if settings.impl.threads:
        torch.set_num_threads(settings.impl.threads)
    reuse_freed_memory(settings.impl.allocator == "reuse")
    model, fresh_modules = _seeded_model(ckpt.path, spec, settings, seed)
    module = FinetuneModule(model, data.make_evaluator(), learning_rate=lr,
                            weight_decay=settings.weight_decay, warmup_fraction=settings.warmup_fraction,
                            betas=settings.adam_betas, eps=settings.adam_eps)

    def loader(features: list[dict[str, Any]], batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(features, batch_size=batch_size, shuffle=shuffle,
                                           num_workers=settings.impl.num_workers,
                                           collate_fn=lambda rows: pad_batch(rows, ckpt.tokenizer.pad_token_id))

    train = loader(data.train, settings.batch_size, shuffle=True)
    dev = loader(data.dev, settings.impl.eval_batch_size, shuffle=False)
    last = trial_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    trainer = _trainer(trial_dir, settings)
    trainer.callbacks.extend(callbacks)
    try:
        trainer.fit(module, train, dev, ckpt_path=last if last.is_file() else None)
        if not module.dev_history or module.dev_history[-1][0] != trainer.global_step:
            trainer.validate(module, dev, verbose=False)  # training stopped between dev passes (max_steps)
    finally:
        _finish_wandb(trainer)
    step, metrics = module.dev_history[-1]
    # The evaluator still holds the last dev pass, the one whose metrics are final.
    write_predictions(trial_dir / PREDICTIONS_FILE, module.evaluator.example_predictions())
    return {"dev": metrics, "score": metrics["score"], "global_step": step, "epochs": trainer.current_epoch,
            "fresh_modules": fresh_modules, "dev_history": [{"step": s, **m} for s, m in module.dev_history]}


def _seeded_model(checkpoint: Path, spec: TaskSpec, settings: FinetuneConfig, seed: int) -> tuple[Any, list[str]]:
    """The checkpoint's encoder with a head drawn from `seed`, and the names of the modules drawn fresh; the global
    generators are left seeded for the data order and dropout."""
    import pytorch_lightning as pl

    from harness.models.dropout import use_fast_dropout
    from harness.models.finetune import init_fresh_head, load_pretrained

    model, missing = load_pretrained(checkpoint, spec)
    # After loading (which draws for the weights the checkpoint lacks, so as many numbers as it lacks weights) and
    # before the head is drawn and the data shuffled: the head and the data order then depend on the seed only.
    pl.seed_everything(seed, workers=True, verbose=False)
    fresh_modules = init_fresh_head(model, missing, settings.keep_pretrained_pooler)
    if settings.impl.fast_dropout:
        use_fast_dropout(model)
    return model, fresh_modules


def _trainer(trial_dir: Path, settings: FinetuneConfig) -> Any:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    # One rolling checkpoint per epoch, kept only so an interrupted trial can resume.
    checkpoint = ModelCheckpoint(trial_dir / CHECKPOINT_DIR, filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
                                 save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True)
    return pl.Trainer(
        default_root_dir=trial_dir, max_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        accelerator=settings.impl.accelerator, devices=1, precision=settings.impl.precision,
        gradient_clip_val=settings.clip_grad_norm or None, logger=_loggers(trial_dir, settings),
        callbacks=[checkpoint], log_every_n_steps=settings.impl.log_every_steps, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False)


def _loggers(trial_dir: Path, settings: FinetuneConfig) -> list[Any]:
    from pytorch_lightning.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(trial_dir, name="logs")]
    if settings.impl.wandb_mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        # group and job type come from WANDB_RUN_GROUP / WANDB_JOB_TYPE (set per job by the sweep's worker)
        name = f"{trial_dir.parent.name}/{trial_dir.name}"
        loggers.append(WandbLogger(project=settings.impl.wandb_project, name=name, save_dir=str(trial_dir),
                                   offline=settings.impl.wandb_mode == "offline",
                                   config=json.loads(json.dumps(settings.model_dump(mode="json")))))
    return loggers


def _finish_wandb(trainer: Any) -> None:
    """Lightning leaves a wandb run open for reuse; the next trial in this process would log into it."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
            logger.experiment.finish()


def spread(scores: list[float]) -> dict[str, Any]:
    values = np.asarray(scores, dtype=float)
    q25, q75 = np.percentile(values, [25, 75])
    return {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max()),
            "q25": float(q25), "q75": float(q75), "iqr": float(q75 - q25), "n": len(scores), "scores": scores}


def summarize(spec: TaskSpec, trials: list[dict[str, Any]], settings: FinetuneConfig) -> dict[str, Any]:
    """Per-lr spread of the selection score over seeds; the best lr by median (ties: the earlier grid entry)."""
    per_lr = {lr: [t for t in trials if t["learning_rate"] == lr] for lr in settings.learning_rates}
    stats = {lr: spread([t["score"] for t in runs]) for lr, runs in per_lr.items()}
    best_lr = max(settings.learning_rates, key=lambda lr: stats[lr]["median"])
    best_runs = per_lr[best_lr]
    metric_medians = {name: float(np.median([t["dev"][name] for t in best_runs])) for name in best_runs[0]["dev"]}
    return {
        "task": spec.name, "task_version": spec.version, "selection_metric": spec.selection_metric,
        "official_metrics": list(spec.metrics), "best_learning_rate": best_lr, "best": stats[best_lr],
        "best_dev_medians": metric_medians,
        # Google's tuning playbook: a best value on the edge of the grid means the grid should be widened.
        "best_on_grid_edge": len(settings.learning_rates) > 1 and best_lr in (min(settings.learning_rates),
                                                                              max(settings.learning_rates)),
        "per_learning_rate": {f"{lr:g}": s for lr, s in stats.items()},
        "train_examples": trials[0].get("train_examples"), "train_subsample": settings.train_subsample,
        "settings": settings.model_dump(mode="json"),
        "trials": [{"learning_rate": t["learning_rate"], "seed": t["seed"], "score": t["score"]} for t in trials],
    }
