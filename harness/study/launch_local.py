"""Run jobs in parallel on this machine: N long-lived worker processes (harness.study.worker), each given the
machine's cores divided by N as threads.

Workers are spawned once and reused, so the heavy imports (torch, Lightning, transformers: seconds each) are paid
once per worker rather than once per job. A worker that dies (out of memory, killed) is reported as a failure of
the job it held and replaced by a fresh one; the others carry on.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from harness.machine import usable_cores
from harness.study.worker import worker_main


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    return max(1, (cores or usable_cores()) // max(1, workers))


@dataclass
class _Slot:
    process: Any
    conn: Any
    job: str | None = None  # the name of the job it runs, None when idle


class LocalLauncher:
    """`submit` a payload to an idle slot, `poll` for events: ("progress", name, step, total), ("done", name),
    ("failed", name, message), and ("died", name, message) when a worker process ended while running a job."""

    def __init__(self, workers: int, threads: int) -> None:
        self.threads = threads
        self._context = multiprocessing.get_context("spawn")  # fork would copy a parent's torch threads and locks
        self.slots = [self._spawn() for _ in range(max(1, workers))]

    def _spawn(self) -> _Slot:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=worker_main, args=(child_end, self.threads, os.getpid()), daemon=True)
        process.start()
        child_end.close()
        return _Slot(process, parent_end)

    def idle(self) -> list[int]:
        return [i for i, slot in enumerate(self.slots) if slot.job is None]

    def running(self) -> list[str]:
        return [slot.job for slot in self.slots if slot.job is not None]

    def submit(self, index: int, payload: dict[str, Any]) -> None:
        slot = self.slots[index]
        slot.job = payload["name"]
        slot.conn.send(payload)

    def poll(self, timeout: float) -> list[tuple[Any, ...]]:
        busy = [slot for slot in self.slots if slot.job is not None]
        ready = wait([s.conn for s in busy] + [s.process.sentinel for s in busy], timeout=timeout) if busy else []
        events: list[tuple[Any, ...]] = []
        for i, slot in enumerate(self.slots):
            if slot.job is None or (slot.conn not in ready and slot.process.sentinel not in ready):
                continue
            try:
                while slot.conn.poll():
                    event = slot.conn.recv()
                    events.append(event)
                    if event[0] in ("done", "failed"):
                        slot.job = None
            except (EOFError, OSError):
                pass
            if slot.job is not None and not slot.process.is_alive():
                events.append(("died", slot.job, _death(slot.process.exitcode)))
                slot.conn.close()
                self.slots[i] = self._spawn()
        return events

    def shutdown(self, now: bool = False) -> None:
        """Stop every worker: politely when idle, at once (SIGTERM, then SIGKILL) when `now` (Ctrl-C): an
        interrupted job is left partial and resumes from its last checkpoint next time."""
        for slot in self.slots:
            if now:
                slot.process.terminate()
            else:
                try:
                    slot.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for slot in self.slots:
            slot.process.join(timeout=10)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        import signal

        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with status {exitcode} while running the job"
