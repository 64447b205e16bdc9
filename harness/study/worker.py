"""The worker process: runs one job at a time for the sweep, in its own process, so that a job that crashes, runs
out of memory or is killed never takes the sweep down.

Protocol over a multiprocessing pipe: the sweep sends a job payload (harness.study.jobs.payload) or None (stop);
the worker answers ("progress", name, step, total) now and then, then ("done", name) or ("failed", name, message).
A job that raises gets failed.json (message and traceback) in its directory; its final metrics are never written.
`run_payload` is that whole job-running path; the Ray launcher (harness.study.launch_ray) calls it in its tasks too.
Nothing heavy is imported at module level: the thread count must be set before torch loads.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

PROGRESS_EVERY_S = 2.0


def worker_main(conn: Any, threads: int, parent_pid: int) -> None:
    """Entry point of a spawned worker: serve jobs until told to stop or the sweep goes away."""
    _exit_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the sweep, which stops its workers itself
    limit_threads(threads)
    from harness.runs import git_state

    git_state()  # the commit of the code this worker runs, pinned before any job
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        conn.send(run_payload(job, _progress(conn, job["name"])))


def _progress(conn: Any, name: str) -> Any:
    """The job's progress callback. When the sweep has gone (killed, or stopped without stopping its workers) the
    pipe is broken: the worker exits at once, so the job is left partial (it resumes from its last checkpoint) and
    is never recorded as a failure of its own."""
    def report(step: int, total: int) -> None:
        try:
            conn.send(("progress", name, step, total))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            os._exit(1)

    return report


def limit_threads(threads: int) -> None:
    """Split the machine's cores between workers: 2 workers on 2 cores must not run 2 threads each. The
    environment only counts before torch loads (a fresh worker); set_num_threads also in a reused one."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(threads)


def run_payload(job: dict[str, Any], report: Any) -> tuple[str, ...]:
    """Run one job payload, `report(step, total)` now and then; ("done", name) or ("failed", name, message), with
    failed.json written into the job's directory. Never raises for a failure of the job itself."""
    from harness.runs import clear_failure, write_failure

    clear_failure(job["path"])  # a retried job: its last failure is history once it runs again
    try:
        with job_console(job["path"], job.get("verbose", False)):
            run_job(job, report)
    except Exception as err:  # any failure of one job is recorded and the sweep goes on
        try:
            write_failure(job["path"], err, traceback.format_exc())
        except Exception:  # e.g. the directory belongs to another config: the message still reaches the sweep
            pass
        return ("failed", job["name"], " ".join(f"{type(err).__name__}: {err}".split()))
    finally:
        _teardown_wandb()
    return ("done", job["name"])


@contextmanager
def job_console(path: str | Path, verbose: bool) -> Iterator[None]:
    """What a job prints itself (Lightning's start-up lines, wandb's, warnings, also from the processes it starts)
    goes to `<job directory>/console.log`, appended per launch, not to the sweep's console; `verbose`: left there.
    File descriptors 1 and 2 are redirected, so output from C code and subprocesses is caught too."""
    from harness.runs import CONSOLE_FILE

    if verbose:
        yield
        return
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(folder / CONSOLE_FILE, "a", buffering=1, encoding="utf-8") as log, \
            redirect_stdout(log), redirect_stderr(log):  # Python's streams, wherever they pointed before
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def run_job(job: dict[str, Any], report: Any) -> None:
    """Run one pre-training run, fine-tuning trial or zero-shot evaluation through its ordinary entry point."""
    os.environ.update(WANDB_RUN_GROUP=job["wandb"]["group"], WANDB_JOB_TYPE=job["wandb"]["job_type"])
    callbacks = [_progress_callback(report), _wandb_axes_callback(job["wandb"]["axes"])]
    if job["kind"] == "pretrain":
        from harness.config import from_dict
        from harness.train import pretrain

        config = from_dict(job["config"])
        # The sweep shows its own progress line; a bar per job would interleave with it (speed-only fields).
        impl = config.impl.model_copy(update={"threads": _threads(config.impl.threads, job["threads"]),
                                              "progress_bar": False})
        pretrain(config.model_copy(update={"impl": impl}), job["data_dir"], job["results_root"],
                 extra_callbacks=callbacks)
        return
    if job["kind"] == "evaluate":
        from harness.evaluate import evaluate_zero_shot, zero_shot_settings

        settings = zero_shot_settings(job["task"], job["settings"])
        evaluate_zero_shot(Path(job["checkpoint"]), job["task"], job["data_dir"], settings, Path(job["results_root"]),
                           threads=job["threads"])
        return
    from harness.finetune import FinetuneConfig, finetune_trial

    settings = FinetuneConfig.model_validate(job["settings"])
    impl = settings.impl.model_copy(update={"threads": _threads(settings.impl.threads, job["threads"])})
    settings = settings.model_copy(update={"impl": impl})
    finetune_trial(Path(job["checkpoint"]), job["task"], job["data_dir"], settings, Path(job["results_root"]),
                   job["lr"], job["seed"], callbacks)


def _threads(asked: int | None, share: int) -> int:
    """The config's thread count, capped by this worker's share of the cores (impl.threads is speed only: the
    run id and trial id do not change)."""
    return min(asked or share, share)


def _progress_callback(report: Any) -> Any:
    import pytorch_lightning as pl

    class Progress(pl.Callback):
        """Tells the sweep the job's update count every few seconds (its display computes the ETA)."""

        def __init__(self) -> None:
            self.last = 0.0

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if time.monotonic() - self.last >= PROGRESS_EVERY_S:
                self.last = time.monotonic()
                report(int(trainer.global_step), int(trainer.estimated_stepping_batches))

    return Progress()


def _wandb_axes_callback(axes: dict[str, Any]) -> Any:
    import pytorch_lightning as pl

    class WandbAxes(pl.Callback):
        """Adds the job's axis values to its wandb run config, so the UI can group and compare arms."""

        def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            for logger in trainer.loggers:
                if type(logger).__name__ == "WandbLogger":
                    logger.experiment.config.update({"study": axes}, allow_val_change=True)

    return WandbAxes()


def _teardown_wandb() -> None:
    """wandb reads WANDB_RUN_GROUP / WANDB_JOB_TYPE once per process setup: reset it between jobs."""
    import sys

    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


def _exit_with_parent(parent_pid: int) -> None:
    """A sweep killed with SIGKILL cannot stop its workers: each worker notices and exits on its own, so a
    restarted sweep never races an orphan for the same run directory."""
    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
