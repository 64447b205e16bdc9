"""One builder per cache entry across processes.

Two sweep workers that need the same uncached tokenizer, segments, corpus or packed examples would otherwise both
build it (minutes of pysbd for a large corpus) and race to publish it. Each stage builds under `build_lock`:
an OS lock (flock) on `.<entry>.lock` beside the entry, so one process builds and the others wait, then read.
The name is hidden as atomic_dir's scratch folders are: a cache folder's entries are its names without a dot.
The OS releases the lock when its holder dies, so a killed build never blocks the next one; the lock file itself
stays (deleting it while another process waits on it would let a third one lock a new file and build again).
Publishing stays atomic (harness.paths.atomic_dir) whether or not the file system honours the lock."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["build_lock", "lock_path"]

log = logging.getLogger(__name__)


def lock_path(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.lock")


@contextmanager
def build_lock(entry: Path) -> Iterator[bool]:
    """Yield whether the cache entry `entry` exists. If it does not, the block runs holding the entry's lock and must
    build and publish it; if another process holds the lock, wait for it and yield True once it has published."""
    if entry.exists():
        yield True
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(entry))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        # A warning, not info: the CLI configures no logging, and a silent wait of minutes looks like a hang.
        log.warning("waiting for another process building %s", entry)
        lock.acquire()
    try:
        yield entry.exists()  # the holder we waited for has built it, unless it failed
    finally:
        lock.release()
