"""Run a sweep's jobs as Ray tasks: on a local Ray instance started for the sweep (the machine's cores), or on an
existing cluster (`--address auto`, `ray://head:10001`). The scheduler drives it exactly like LocalLauncher.

Each task runs one job payload through the worker's own job-running path (harness.study.worker.run_payload), so a
failing job writes failed.json just as it does locally. A task asks for its share of the cores (`threads`: the
CPUs divided by --workers, as locally) and, when its config asks for the `gpu` accelerator, for its GPUs. A task
is never retried: a worker that crashes or is killed for memory is reported ("died") and the scheduler records the
failure; nothing but the job itself writes final_metrics.json, so such a directory never looks finished.

Every node must see the results folder (and the data) at the same path - a shared file system - and have harness
installed; see docs/distributed.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from harness.config import HarnessError
from harness.machine import usable_cores

# Forwarded into every task: a cluster's workers do not inherit the sweep's environment (caches, data, wandb).
FORWARDED_ENV = ("HARNESS_", "WANDB_", "HF_")
PATH_KEYS = ("path", "results_root", "data_dir", "checkpoint")


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest (step, total) of each running job; tasks report fire-and-forget, the sweep drains it."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[int, int]] = {}

    def report(self, name: str, step: int, total: int) -> None:
        self.latest[name] = (step, total)

    def drain(self) -> dict[str, tuple[int, int]]:
        latest, self.latest = self.latest, {}
        return latest


def run_task(job: dict[str, Any], board: Any) -> tuple[str, ...]:
    """One job in a Ray worker (which Ray may reuse for the next job): the sweep's directory, environment and
    thread share, then the same code path as a local worker."""
    from harness.study.worker import limit_threads, run_payload

    if os.path.isdir(job["cwd"]):  # relative paths in the config mean what they mean to the sweep
        os.chdir(job["cwd"])
    os.environ.update(job["env"])
    if not ray.get_gpu_ids():  # Ray leaves a node's GPUs visible to a task that reserved none: `auto` must not take one
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    limit_threads(job["threads"])
    name = job["name"]
    return run_payload(job, lambda step, total: board.report.remote(name, step, total))


# Never retried: a crash is the job's failure, reported once (Ray would rerun a crashed task 3 times by default).
_run_task = ray.remote(max_retries=0)(run_task)


class RayLauncher:
    """`submit` a payload to an idle slot, `poll` for events: ("progress", name, step, total), ("done", name),
    ("failed", name, message), and ("died", name, message) when the task ended without an answer (its worker
    crashed, was killed for memory, or the node went away). At most `slots` tasks run at once."""

    def __init__(self, slots: int, workers: int, address: str | None = None) -> None:
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:  # "local": always a fresh instance of our own, never a stray cluster found on the machine
            try:
                ray.init(address=address or "local", num_cpus=None if address else usable_cores(),
                         logging_level="WARNING", include_dashboard=False)
            except ConnectionError as err:
                message = " ".join(str(err).split())
                raise HarnessError(f"--address {address}: no Ray cluster to connect to ({message})") from None
        self.threads = cluster_threads(ray.cluster_resources(), _largest_node_cpus(), workers)
        self.gpus_available = int(ray.cluster_resources().get("GPU", 0))
        self.board = ProgressBoard.remote()
        # (job name, task ref) or idle; a job no node can ever take holds its slot, ref None, until the next poll
        self.slots: list[tuple[str, Any] | None] = [None] * max(1, slots)
        self.refused: dict[str, str] = {}
        self.cwd, self.env = os.getcwd(), {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}

    def idle(self) -> list[int]:
        return [i for i, slot in enumerate(self.slots) if slot is None]

    def running(self) -> list[str]:
        return [slot[0] for slot in self.slots if slot is not None]

    def submit(self, index: int, payload: dict[str, Any]) -> None:
        name, gpus = payload["name"], gpus_asked(payload)
        if gpus > self.gpus_available:  # Ray would queue it for ever
            self.refused[name] = (f"needs {gpus} GPU(s) (impl.accelerator: gpu); the Ray cluster has "
                                  f"{self.gpus_available}")
            self.slots[index] = (name, None)
            return
        job = {**payload, **{key: str(Path(payload[key]).resolve()) for key in PATH_KEYS if payload.get(key)},
               "cwd": self.cwd, "env": self.env}
        task = _run_task.options(num_cpus=job["threads"], num_gpus=gpus, name=name)
        self.slots[index] = (name, task.remote(job, self.board))

    def poll(self, timeout: float) -> list[tuple[Any, ...]]:
        refs = [slot[1] for slot in self.slots if slot is not None and slot[1] is not None]
        ready: list[Any] = []
        if refs:
            ready, _ = ray.wait(refs, num_returns=1, timeout=0 if self.refused else timeout)
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        events: list[tuple[Any, ...]] = [("progress", name, step, total)
                                         for name, (step, total) in self._progress().items()]
        for i, slot in enumerate(self.slots):
            if slot is not None and slot[1] is None:
                events.append(("died", slot[0], self.refused.pop(slot[0])))
                self.slots[i] = None
            elif slot is not None and slot[1] in ready:
                events.append(_answer(slot[0], slot[1]))
                self.slots[i] = None
        return events

    def _progress(self) -> dict[str, tuple[int, int]]:
        try:
            return ray.get(self.board.drain.remote(), timeout=10)
        except (ray.exceptions.RayError, TimeoutError):  # progress is a nicety: never a reason to stop the sweep
            return {}

    def shutdown(self, now: bool = False) -> None:
        """Forget the board; at once (Ctrl-C) cancel the running tasks, killing their workers: an interrupted
        job is left partial and resumes from its last checkpoint next time. Stops the Ray instance we started."""
        if now:
            for slot in self.slots:
                if slot is not None and slot[1] is not None:
                    ray.cancel(slot[1], force=True)
        if self.owns_ray:
            ray.shutdown()


def cluster_threads(resources: dict[str, float], largest_node: int, workers: int) -> int:
    """Threads (= CPUs asked) per task: the cluster's CPUs over --workers, as locally, but never more than one
    node has, or no node could take the task."""
    total = int(resources.get("CPU", 0))
    return max(1, min(largest_node or 1, total // max(1, workers)))


def gpus_asked(payload: dict[str, Any]) -> int:
    """GPUs a job's config asks for: `impl.accelerator: gpu` (`auto` asks for none: it trains on what it finds)."""
    if payload["kind"] == "pretrain":
        impl = payload["config"].get("impl", {})
        return int(impl.get("devices", 1)) if impl.get("accelerator") == "gpu" else 0
    return 1 if (payload["settings"].get("impl") or {}).get("accelerator") == "gpu" else 0


def _largest_node_cpus() -> int:
    return max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")), default=0)


def _answer(name: str, ref: Any) -> tuple[Any, ...]:
    try:
        return tuple(ray.get(ref))
    except ray.exceptions.RayError as err:
        return ("died", name, death_message(err))


def death_message(err: BaseException) -> str:
    """One line for a task that ended without its job's answer."""
    if isinstance(err, ray.exceptions.OutOfMemoryError):
        kind = "Ray task killed for memory (Ray's memory monitor)"
    elif isinstance(err, ray.exceptions.TaskCancelledError):
        kind = "Ray task cancelled"
    elif isinstance(err, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError):
        kind = "Ray worker died while running the job (killed, or out of memory)"
    else:
        kind = "Ray task failed outside the job"
    cause = getattr(err, "cause", None)  # RayTaskError: the exception raised in the task, not its traceback
    detail = " ".join((f"{type(cause).__name__}: {cause}" if cause is not None else str(err)).split())
    return f"{kind}: {detail[:300]}" if detail else kind
