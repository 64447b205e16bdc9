"""`pretrain`: one run from config to a finished run directory, resumable at any point.

Identity lives in the run directory (harness.runs): a finished run is returned as it is, a half-finished one
continues from its last checkpoint with the same data order, masks and dropout, a directory holding another
config is refused.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from harness.config import ImplConfig, RunConfig
from harness.data.module import PretrainDataModule
from harness.distributed import build_strategy, check_launch, join_early, rank_zero_first, this_process
from harness.models.dropout import use_torch_dropout
from harness.paths import atomic_dir, atomic_write_text
from harness.recipe import Recipe, build_datamodule, build_module, nominal_tokens_per_update, resolve_recipe
from harness.runs import (
    RunDir,
    check_run_data,
    open_prepared_run_dir,
    prepare_run_dir,
    read_curves,
    read_final_metrics,
    write_final_metrics,
)

EXPORT_DIR = "model"


class StepSeededDropout(Callback):
    """Seeds torch's generator from (seed, update, micro-batch, rank) before every micro-batch, as fairseq does
    per update: dropout becomes a pure function of the position in training, so a resumed run draws exactly
    what the uninterrupted run drew, whatever happened in between (validation, a new DataLoader iterator)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int):
        torch.manual_seed(hash((self.seed, trainer.global_step, batch_idx, trainer.global_rank)) & (2**63 - 1))


def _loggers(config: RunConfig, run: RunDir) -> list[Logger]:
    # One CSV per launch: Lightning's CSV writer deletes an existing metrics file, and a resumed run must keep
    # the curves of its earlier launches (harness.runs.read_curves stitches them back together).
    launch = len(list((run.path / "logs").glob("launch-*")))
    loggers: list[Logger] = [CSVLogger(save_dir=str(run.path), name="logs", version=f"launch-{launch}")]
    log = config.logging
    if log.wandb and log.wandb_mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        # offline unless asked otherwise: no login prompt, no network; `wandb sync <dir>` uploads later.
        loggers.append(WandbLogger(project=log.wandb_project, name=run.path.name, id=config.run_id(),
                                   save_dir=str(run.path), offline=log.wandb_mode == "offline", resume="allow",
                                   config=json.loads(json.dumps(config.model_dump(mode="json")))))
    return loggers


def build_trainer(config: RunConfig, run: RunDir, recipe: Recipe, data: PretrainDataModule,
                  extra_callbacks: list[Callback] = ()) -> pl.Trainer:
    impl = config.impl
    checkpoint = ModelCheckpoint(dirpath=str(run.checkpoint_dir), save_last=True, save_top_k=0,
                                 every_n_train_steps=impl.checkpoint_every_steps)
    return pl.Trainer(
        max_steps=data.total_updates, max_epochs=-1, accumulate_grad_batches=recipe.accumulate,
        gradient_clip_val=config.optim.clip_grad_norm or None, precision=resolve_precision(impl),
        accelerator=impl.accelerator, devices=impl.devices, num_nodes=impl.num_nodes,
        strategy=build_strategy(impl.strategy, config.world_size()),
        use_distributed_sampler=False,  # our sampler shards by rank itself (deterministic, resumable)
        val_check_interval=config.budget.val_every_steps * recipe.accumulate, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, log_every_n_steps=config.logging.log_every_steps,
        logger=_loggers(config, run), callbacks=[checkpoint, StepSeededDropout(config.seed), *extra_callbacks],
        default_root_dir=str(run.path), enable_progress_bar=impl.progress_bar, enable_model_summary=False,
        profiler=_profiler(impl, run),
    )


def _profiler(impl: ImplConfig, run: RunDir) -> Any:
    """Lightning's own profilers; the report is written beside the run's logs (fit-profile.txt)."""
    if impl.profiler is None:
        return None
    from pytorch_lightning import profilers

    kind = {"simple": profilers.SimpleProfiler, "advanced": profilers.AdvancedProfiler,
            "pytorch": profilers.PyTorchProfiler}[impl.profiler]
    return kind(dirpath=str(run.path), filename="profile")


def reuse_freed_memory(enabled: bool) -> bool:
    """impl.allocator reuse: make glibc keep freed memory for the next allocation, for the rest of the process.

    glibc hands every freed block above its mmap threshold back to the kernel, so the next tensor of that size is
    fresh pages again, page-faulted in one by one (16,384 faults for 64 MiB). Its dynamic threshold rises to at most
    32 MiB, so runs whose activations stay below that (the mini preset) do not notice; larger tensors (a base model's
    attention maps) are re-mapped every step. Raising the mmap and trim thresholds keeps them on the heap, which is
    what jemalloc/tcmalloc (recommended for PyTorch on CPUs) do by design. The price: the process keeps its peak
    memory until it exits. Returns whether the setting took (glibc on Linux only)."""
    if not enabled or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    mmap_ok = libc.mallopt(m_mmap_threshold, 1 << 30) or libc.mallopt(m_mmap_threshold, 32 << 20)
    return bool(mmap_ok and libc.mallopt(m_trim_threshold, (1 << 31) - 1))


def resolve_precision(impl: ImplConfig) -> str:
    """`impl.precision: auto` -> bf16 autocast where this machine multiplies bf16 fast (it changes results only by
    bf16 rounding, see benchmarks/README.md), else fp32. The one place that reads impl.precision."""
    if impl.precision != "auto":
        return impl.precision
    on_gpu = impl.accelerator == "gpu" or (impl.accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    if impl.accelerator == "auto" and torch.backends.mps.is_available():
        return "32-true"  # Lightning picks MPS here; its bf16 autocast is not what we measured
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls at about twice the fp32 rate (measured: 422 vs 174-193 GFLOP/s on 2 EPYC
    cores). Without them bf16 is emulated and slower than fp32."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


def pretrain(config: RunConfig, data_dir: str | Path | None = None, results_root: str | Path = "results",
             extra_callbacks: list[Callback] = ()) -> dict[str, Any]:
    """Train (or resume, or return) the run of `config`; returns its final metrics (on rank 0; {} on the others).

    With several processes (harness.distributed) rank 0 prepares the run directory and the data cache first, and
    is the only one to write them."""
    process = this_process()
    check_launch(process, config.world_size(), config.impl.strategy, config.impl.accelerator)
    join_early(process, config.impl.accelerator)
    if config.impl.threads:
        torch.set_num_threads(config.impl.threads)
    reuse_freed_memory(config.impl.allocator == "reuse")
    pl.seed_everything(config.seed, workers=True, verbose=False)  # initialisation depends only on the seed
    recipe = resolve_recipe(config)
    data = build_datamodule(config, recipe, data_dir)
    with rank_zero_first(process):
        run = prepare_run_dir(config, results_root) if process.is_zero else open_prepared_run_dir(config, results_root)
        if not run.done and process.is_zero:
            data.prepare_data()  # tokenizer and tokenized corpus, cached for the other ranks
            check_run_data(run, data.data_identity())  # a relaunch trains on the data its run started with
    if run.done:
        return read_final_metrics(run) if process.is_zero else {}
    data.setup("fit")
    module = build_module(config, recipe, data)
    plan = training_plan(config, data)
    announce(run, plan)
    trainer = build_trainer(config, run, recipe, data, list(extra_callbacks))
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(run.last_checkpoint) if run.last_checkpoint else None)
        seconds = time.perf_counter() - started
        train_metrics = _last_train_metrics(trainer, run)  # validate() below replaces the callback metrics
        # One dict per validation set (own format, common held-out); the names do not overlap.
        validation = {k: v for out in trainer.validate(module, datamodule=data, verbose=False) for k, v in out.items()}
    finally:
        _finish_wandb(trainer)
    if trainer.global_rank != 0:
        return {}
    export_model(module, data, run.path / EXPORT_DIR)
    write_heldout_documents(module.heldout_documents, run.path / HELDOUT_DOCUMENTS_FILE)
    sequences = int(module.sequences_seen.item())
    metrics = {
        "run_id": config.run_id(), "run_name": config.run_name(), "experiment": config.experiment,
        "steps": trainer.global_step, "tokens_seen": int(module.tokens_seen.item()), "sequences_seen": sequences,
        "nominal_tokens_per_update": nominal_tokens_per_update(config),
        "train_examples": len(data.train_examples), "validation_examples": len(data.val_examples),
        **plan.final_figures(sequences),
        "fit_seconds_this_launch": round(seconds, 2),
        **{key.replace("/", "_"): float(value) for key, value in validation.items()},
        **data.common_val_record(),
        **data.data_identity(),
        **train_metrics,
        "model_dir": EXPORT_DIR,
    }
    write_final_metrics(run, metrics)
    return metrics


HELDOUT_DOCUMENTS_FILE = "heldout_documents.csv"


def write_heldout_documents(sums: dict[str, list[float]] | None, path: Path) -> None:
    """The final evaluation's common held-out loss per document (document = its index in the validation split,
    the same documents for every arm): masked tokens, their NLL in nats and their characters, so a report can
    resample documents (bpc of a resample = sum nll / ln 2 / sum chars). Written before final_metrics.json."""
    if not sums:
        return
    lines = ["document,masked_tokens,nll_nats,chars"]
    lines += [f"{int(d)},{int(t)},{n:.6f},{int(c)}"
              for d, n, t, c in zip(sums["document"], sums["nll"], sums["tokens"], sums["chars"], strict=True)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def export_model(module: Any, data: PretrainDataModule, export: Path) -> None:
    """A standard save_pretrained checkpoint plus the tokenizer, renamed into place only once complete: a run
    killed while exporting leaves no model/ behind, and final_metrics.json (the done marker) comes after it."""
    use_torch_dropout(module.model)  # the saved config names plain sdpa attention: it loads without the harness
    with atomic_dir(export) as tmp:
        module.model.save_pretrained(tmp)
        data.tokenizer.save_pretrained(tmp)


@dataclass(frozen=True)
class TrainingPlan:
    """What the run will do, known before the first update: printed at start-up, checked in final metrics."""

    updates: int
    accumulate: int
    micro_batches: str  # how one update is split, in words
    rows_per_copy: int  # packed training inputs of one pass over the data
    static_copies: int | None  # None for dynamic masking
    expected_sequences: float
    precision: str  # resolved: impl.precision auto becomes bf16-mixed or 32-true
    redraw: bool = False  # static copies re-draw their pairs (data.static_mode redraw)

    @property
    def passes(self) -> float:
        return self.expected_sequences / max(self.rows_per_copy, 1)

    @property
    def static_mask_views(self) -> float | None:
        return None if self.static_copies is None else self.passes / self.static_copies

    def final_figures(self, sequences_seen: int) -> dict[str, Any]:
        """The same figures from what the run actually fed."""
        passes = sequences_seen / max(self.rows_per_copy, 1)
        figures: dict[str, Any] = {"train_rows_per_pass": self.rows_per_copy, "data_passes": round(passes, 4),
                                   "precision": self.precision}
        if self.static_copies is not None:
            figures.update(dupe_factor=self.static_copies, static_mask_views=round(passes / self.static_copies, 4))
        return figures


def training_plan(config: RunConfig, data: PretrainDataModule) -> TrainingPlan:
    budget = data.budget
    parts = f"{budget.accumulate} micro-batch(es) x {budget.devices} device(s)"
    split = (f"{parts} of {data.micro_batch_size} sequences" if budget.update_tokens is None
             else f"<= {budget.update_tokens} padded positions of inputs of similar length, split into {parts}"
             if budget.group_by_length
             else f"<= {budget.update_tokens} real tokens, split into {parts}")
    return TrainingPlan(updates=data.total_updates, accumulate=budget.accumulate, micro_batches=split,
                        rows_per_copy=data.rows_per_copy,
                        static_copies=data.static_copies if config.data.masking == "static" else None,
                        expected_sequences=data.expected_sequences,
                        precision=resolve_precision(config.impl),
                        redraw=data.redraw)


def announce(run: RunDir, plan: TrainingPlan) -> None:
    """The start-up summary; a loud warning when static masking would not show its masks at least twice."""
    lines = [f"run {run.path} ({run.status})",
             f"  {plan.updates} updates, each {plan.micro_batches}; precision {plan.precision}",
             f"  {plan.rows_per_copy} training inputs per pass; {plan.passes:.2f} passes over the data"]
    if plan.static_copies is not None:
        copies = f"{plan.static_copies} {'copy' if plan.static_copies == 1 else 'copies'}"
        lines.append(f"  static masking: {copies}, each mask shown {plan.static_mask_views:.2f} times on average "
                     "(paper: 4)")
    rank_zero_info("\n".join(lines))
    if plan.static_mask_views is not None and plan.static_mask_views < 2:
        rank_zero_warn(
            f"STATIC MASKING IN NAME ONLY: each of the {plan.static_copies} static masks of a sequence will be shown "
            f"{plan.static_mask_views:.2f} times on average (the paper: 4); below 2 it is close to dynamic masking. "
            "Set data.dupe_factor=auto (passes / 4) or train for more passes.")
    if plan.redraw and plan.static_copies == 1:
        rank_zero_warn("data.static_mode = redraw with one static copy is the same data as masks_only: the pairs "
                       "are re-drawn per copy, so the two differ only from two copies on (data.dupe_factor; "
                       f"{plan.passes:.2f} passes over the data)")


def _finish_wandb(trainer: pl.Trainer) -> None:
    """Lightning leaves the wandb run open for reuse; the next run of a study would log into it."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def _last_train_metrics(trainer: pl.Trainer, run: RunDir) -> dict[str, float]:
    """The last update's training figures. A launch that made no update (the run had stopped after its last one,
    while validating or exporting) has none of its own: then what the earlier launches logged last."""
    metrics = {key.replace("/", "_"): float(value) for key, value in trainer.callback_metrics.items()
               if key.startswith("train/")}
    if metrics or trainer.global_rank != 0:
        return metrics
    curves = read_curves(run)
    return {column.replace("/", "_"): float(curves[column].dropna().iloc[-1]) for column in curves.columns
            if column.startswith("train/") and curves[column].notna().any()}
