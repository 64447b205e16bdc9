"""`sweep`: a grid file to finished run directories and a comparison table, idempotently.

1. load and validate the grid (harness.study.grid) and expand it into jobs (harness.study.jobs): any error stops
   here, before any work, with one line;
2. print the plan: jobs in total, done, partial, failed, to do, and the compute left;
3. run what is missing on local worker processes (harness.study.launch_local) or as Ray tasks
   (harness.study.launch_ray, `launcher="ray"`), pre-training runs before the fine-tuning trials that need them.
   A done job is never run again; a partial one resumes; a failed one is recorded (failed.json) and skipped until
   --retry-failed, and never stops the others;
4. print the table rebuilt from the run directories (harness.study.results) and the failures.
Ctrl-C stops the workers (cancels the Ray tasks); the interrupted jobs are partial and the same command continues them.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness.runs import RecordStatus, record_status, write_failure
from harness.study.grid import GridError, load_grid
from harness.study.jobs import (
    Job,
    Plan,
    PretrainJob,
    estimate,
    expand,
    format_duration,
    payload,
    write_study_file,
)
from harness.study.launch_local import LocalLauncher, threads_per_worker
from harness.study.projection import Throughput, datasheet_throughput, measured_throughput, projection_lines
from harness.study.results import comparison_table, format_table

LAUNCHERS = ("local", "ray")


@dataclass
class SweepResult:
    plan: Plan
    statuses: dict[str, RecordStatus]  # of every job, before this sweep ran anything
    ran: list[str] = field(default_factory=list)  # jobs that finished in this sweep
    failures: dict[str, str] = field(default_factory=dict)  # job -> one-line reason (failed, blocked, or skipped)
    interrupted: bool = False
    table: Any = None

    @property
    def exit_status(self) -> int:
        return 130 if self.interrupted else 1 if self.failures else 0


def sweep(grid: str | Path, *, scale: str | None = None, results: str | Path = "results",
          data_dir: str | Path | None = None, overrides: list[str] | None = None, tasks: list[str] | None = None,
          workers: int = 1, dry_run: bool = False, only: str | None = None, max_jobs: int | None = None,
          retry_failed: bool = False, launcher: str = "local", address: str | None = None,
          out: TextIO | None = None, verbose: bool = False, gpu: str | None = None,
          throughput: str | Path | None = None) -> SweepResult:
    """Run the missing jobs of a grid file (see the module docstring); returns what happened. Raises GridError
    (one line) for any bad input before any work. `gpu` (a datasheet name) or `throughput` (a measured JSON): the
    plan also projects each pre-training run's GPU-hours (harness.study.projection)."""
    out = out or sys.stdout
    if workers < 1 or (max_jobs is not None and max_jobs < 1):
        raise GridError(f"--workers {workers} / --max-jobs {max_jobs}: allowed: integers >= 1")
    check_launcher(launcher, address)
    rate = projected_throughput(gpu, throughput)
    plan = expand(load_grid(grid, scale, overrides, tasks, data_dir), results)
    selected = plan.select(only)
    if not selected:
        raise GridError(f"--only {only}: matches no job; job names look like {plan.jobs[0].name}")
    statuses = {job.name: plan.status(job) for job in plan.jobs}
    result = SweepResult(plan=plan, statuses=statuses)
    todo = [job for job in selected if statuses[job.name] in ("new", "partial")
            or (retry_failed and statuses[job.name] == "failed")]
    for job in selected:
        if statuses[job.name] == "failed" and not retry_failed:
            result.failures[job.name] = f"failed earlier, not retried (--retry-failed): {_failure_line(plan, job)}"
    todo = todo[:max_jobs] if max_jobs else todo
    if not dry_run:  # what `harness report` needs to re-expand this plan from the results folder alone
        write_study_file(plan.results_root / plan.study.experiment, Path(grid), scale, overrides, tasks, data_dir)
    print_plan(plan, selected, statuses, len(todo), out)
    if rate is not None:
        runs = [(job.name, job.run.config) for job in selected if isinstance(job, PretrainJob)]
        print("\n".join(f"  {line}" for line in projection_lines(runs, rate)), file=out, flush=True)
    if dry_run:
        for job in todo:
            print(f"  would run {job.name} ({statuses[job.name]})", file=out)
        return result
    if todo:
        display = Display(len(selected), sum(statuses[j.name] == "done" for j in selected), verbose=verbose)
        run_jobs(plan, todo, workers, result, display, launcher, address, verbose)
    result.table = comparison_table(plan)
    print(format_table(result.table), file=out)
    _print_summary(result, out)
    return result


def print_plan(plan: Plan, selected: list[Job], statuses: dict[str, RecordStatus], todo: int, out: TextIO) -> None:
    study = plan.study
    counts = {state: sum(statuses[job.name] == state for job in selected) for state in ("done", "partial", "failed")}
    per_kind = {kind: sum(j.kind == kind for j in selected) for kind in ("pretrain", "finetune", "evaluate")}
    kinds = f"{per_kind['pretrain']} pre-training, {per_kind['finetune']}"
    scope = "" if len(selected) == len(plan.jobs) else f" (selected from {len(plan.jobs)})"
    print(f"sweep {study.name}" + (f" at scale {study.scale}" if study.scale else "")
          + (f": {study.description}" if study.description else ""), file=out)
    zero_shot = f", {per_kind['evaluate']} zero-shot" if per_kind["evaluate"] else ""
    print(f"  {len(selected)} jobs{scope} ({kinds} fine-tuning{zero_shot}) in {plan.results_root / study.experiment}",
          file=out)
    print(f"  done {counts['done']}, partial {counts['partial']}, failed {counts['failed']}, to do {todo}", file=out)
    if study.skipped_tasks:
        print(f"  left out (when_present, no data here): {', '.join(study.skipped_tasks)}", file=out)
    print(f"  {estimate(plan, statuses).describe()}", file=out, flush=True)


def projected_throughput(gpu: str | None, throughput: str | Path | None) -> Throughput | None:
    """--gpu or --throughput (one of them), read and checked before any work; None when neither is given."""
    if gpu is not None and throughput is not None:
        raise GridError(f"--gpu {gpu} and --throughput {throughput}: allowed: one of them")
    if gpu is not None:
        return datasheet_throughput(gpu)
    return None if throughput is None else measured_throughput(throughput)


def check_launcher(launcher: str, address: str | None) -> None:
    """--launcher and --address, and that Ray imports when asked for: one line, before any work."""
    if launcher not in LAUNCHERS:
        raise GridError(f"--launcher {launcher}: allowed: {', '.join(LAUNCHERS)}")
    if address is not None and launcher != "ray":
        raise GridError(f"--address {address}: only with --launcher ray (allowed: --launcher ray --address ADDR)")
    if launcher == "ray":
        try:
            import harness.study.launch_ray  # noqa: F401
        except ImportError as err:
            missing = "ray is not installed" if err.name == "ray" else f"ray does not import ({err})"
            raise GridError(f"--launcher ray: {missing}; install it with pip install 'harness[ray]'") from None


def start_launcher(kind: str, slots: int, workers: int, address: str | None) -> Any:
    """A launcher (LocalLauncher or RayLauncher: idle / running / submit / poll / shutdown, and `threads`, each
    job's share of the cores); ray is imported only here, for the ray launcher."""
    if kind == "ray":
        from harness.study.launch_ray import RayLauncher

        return RayLauncher(slots, workers, address)
    return LocalLauncher(slots, threads_per_worker(workers))


def run_jobs(plan: Plan, todo: list[Job], workers: int, result: SweepResult, display: Display,
             kind: str = "local", address: str | None = None, verbose: bool = False) -> None:
    """Feed ready jobs to idle workers until none is left; record failures; Ctrl-C or SIGTERM (`kill`, a batch
    system's stop) stops cleanly: the running jobs are left partial, never failed."""
    launcher, pending, paths = None, list(todo), {}
    previous = _stop_on_sigterm()
    try:
        launcher = start_launcher(kind, min(workers, len(todo)), workers, address)
        threads = launcher.threads
        while True:
            for slot in launcher.idle():
                job = _next_ready(plan, pending, result)
                if job is None:
                    break
                paths[job.name] = payload(plan, job, threads, verbose)
                launcher.submit(slot, paths[job.name])
                display.started(job.name)
            if not launcher.running():
                break  # nothing runs and nothing is ready: what is left waits on a run outside --max-jobs
            for event in launcher.poll(timeout=1.0):
                _handle(event, paths, result, display)
            display.refresh(launcher.running())
    except KeyboardInterrupt:
        if launcher is not None:
            launcher.shutdown(now=True)
        result.interrupted = True
        print("\ninterrupted: the running jobs are left partial; run the same command to continue",
              file=sys.stderr)
        return
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    launcher.shutdown()


def _stop_on_sigterm() -> Any:
    """SIGTERM raises KeyboardInterrupt in the sweep (the main thread only), so it stops its workers as Ctrl-C does;
    returns the handler it replaced (None where it cannot set one)."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        return None


def _next_ready(plan: Plan, pending: list[Job], result: SweepResult) -> Job | None:
    """The first pending job whose pre-training run is done; a job whose run failed is dropped as blocked."""
    for job in list(pending):
        if not isinstance(job, PretrainJob):
            needed = job.pretrain.name
            if needed in result.failures:
                pending.remove(job)
                result.failures[job.name] = f"blocked: {needed} did not finish"
                continue
            if record_status(job.pretrain.path) != "done":
                continue
            if plan.status(job) == "done":
                pending.remove(job)
                continue
        pending.remove(job)
        return job
    return None


def _handle(event: tuple[Any, ...], payloads: dict[str, dict[str, Any]], result: SweepResult,
            display: Display) -> None:
    kind, name = event[0], event[1]
    if kind == "progress":
        display.progress(name, event[2], event[3])
        return
    if kind == "done":
        result.ran.append(name)
    else:
        if kind == "died":  # the worker could not record it: the sweep does
            write_failure(payloads[name]["path"], event[2])
        result.failures[name] = event[2]
    display.finished(name, None if kind == "done" else event[2])


def _failure_line(plan: Plan, job: Job) -> str:
    from harness.runs import read_failure

    path = plan.path(job)
    record = (read_failure(path) if path else None) or {}
    return record.get("error", "?")


def _print_summary(result: SweepResult, out: TextIO) -> None:
    print(f"ran {len(result.ran)} job(s); {len(result.failures)} failure(s)", file=out)
    for name, reason in result.failures.items():
        path = result.plan.path(next(j for j in result.plan.jobs if j.name == name))
        print(f"  FAILED {name}: {reason}" + (f" [{path}]" if path else ""), file=out)


class Display:
    """On stderr: one line per finished job ("[done/total] done NAME in 3m12s"), and the running jobs' steps and
    ETAs: one line rewritten in place on a terminal, else a line every 5 minutes (30 seconds and a line per start
    with `verbose`), so a log of a long sweep shows it is alive without drowning the job lines."""

    def __init__(self, total: int, done: int, stream: TextIO | None = None, verbose: bool = False) -> None:
        self.total, self.done, self.failed = total, done, 0
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.verbose = verbose
        self.steps: dict[str, tuple[float, int, float, int, int]] = {}  # name -> (t0, step0, t, step, total)
        self.began: dict[str, float] = {}
        self.last = time.monotonic()

    def started(self, name: str) -> None:
        self.began[name] = time.monotonic()
        if self.verbose:
            self._line(f"start {name}")

    def finished(self, name: str, failure: str | None) -> None:
        self.steps.pop(name, None)
        took = time.monotonic() - self.began.pop(name, time.monotonic())
        self.done += failure is None
        self.failed += failure is not None
        count = f"[{self.done}/{self.total}{f', {self.failed} failed' if self.failed else ''}]"
        self._line(f"{count} {'done' if failure is None else 'FAILED'} {name} in {format_duration(took)}"
                   + (f": {failure}" if failure else ""))

    def progress(self, name: str, step: int, total: int) -> None:
        now = time.monotonic()
        t0, step0 = self.steps.get(name, (now, step, 0.0, 0, 0))[:2]
        self.steps[name] = (t0, step0, now, step, total)

    def refresh(self, running: list[str]) -> None:
        if time.monotonic() - self.last < (1.0 if self.live else 30.0 if self.verbose else 300.0):
            return
        self.last = time.monotonic()
        jobs = "; ".join(self._job(name) for name in running)
        text = f"[{self.done}/{self.total} done{f', {self.failed} failed' if self.failed else ''}] {jobs}"
        print(f"\r\033[K{text[:200]}" if self.live else text, end="" if self.live else "\n", file=self.stream,
              flush=True)

    def _job(self, name: str) -> str:
        if name not in self.steps:
            return f"{name} starting"
        t0, step0, now, step, total = self.steps[name]
        rate = (step - step0) / (now - t0) if now > t0 and step > step0 else None
        eta = f" ETA {format_duration((total - step) / rate)}" if rate else ""
        return f"{name} step {step}/{total}{eta}"

    def _line(self, text: str) -> None:
        print(("\r\033[K" if self.live else "") + text, file=self.stream, flush=True)
