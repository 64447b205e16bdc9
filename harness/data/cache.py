"""One builder per cache entry across processes.

Two sweep workers that need the same uncached tokenizer, segments, corpus or packed examples would otherwise both
build it (minutes of pysbd for a large corpus) and race to publish it. Each stage builds under `build_lock`:
an OS lock (flock) on `.<entry>.lock` beside the entry, so one process builds and the others wait, then read.
The name is hidden as atomic_dir's scratch folders are: a cache folder's entries are its names without a dot.
The OS releases the lock when its holder dies, so a killed build never blocks the next one; the lock file itself
stays (deleting it while another process waits on it would let a third one lock a new file and build again).
Publishing stays atomic (harness.paths.atomic_dir) whether or not the file system honours the lock.

A long stage (segmenting a large corpus takes hours) builds its entry in resumable shards (`map_in_shards`): each
finished shard of documents is saved atomically under `<entry>.partial/shard-NNNNN/` with a record of the entry's
key and its documents; a build that finds finished shards of the same key continues after them; the entry is then
published from their concatenation and the partial folder removed. An interrupted build (Ctrl-C, a crash, a full
disk) thus loses at most the shard in progress; a full disk is one line saying what is kept and how to resume."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from harness.data.documents import CorpusError, quiet_progress
from harness.paths import atomic_dir

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["build_lock", "drop_partial", "full_disk_keeps_shards", "lock_path", "map_in_shards", "partial_path",
           "shard_ranges"]

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


# ---- resumable builds: a datasets.map in shards ---------------------------------------------------------------------
SHARD_RECORD = "harness-shard.json"


def partial_path(entry: Path) -> Path:
    """Where the finished shards of `entry` wait until all are done. Not an entry: its name has a dot."""
    return entry.with_name(f"{entry.name}.partial")


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_ranges(documents: int, shard_documents: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of `shard_documents` documents (the last may be shorter; one empty shard for
    an empty input, so that there is always something to concatenate)."""
    if shard_documents < 1:
        raise ValueError(f"shard_documents = {shard_documents}; allowed: >= 1")
    return [(start, min(start + shard_documents, documents)) for start in range(0, documents, shard_documents)] or [
        (0, 0)]


def _record(key: str, index: int, span: tuple[int, int], documents: int) -> dict[str, Any]:
    return {"key": key, "shard": index, "documents": list(span), "of": documents}


def _read_record(folder: Path) -> Any:
    try:
        return json.loads((folder / SHARD_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finished_shards(partial: Path, key: str, ranges: list[tuple[int, int]], documents: int) -> set[int]:
    """The shards an earlier build of the same key finished. Anything else in the folder (the scratch folder of a
    killed save, a shard cut at another size) is removed: the caller holds the entry's lock."""
    if not partial.is_dir():
        return set()
    expected = {_shard_name(i): (i, _record(key, i, span, documents)) for i, span in enumerate(ranges)}
    done = set()
    for folder in sorted(partial.iterdir()):
        index, record = expected.get(folder.name, (None, None))
        if index is not None and _read_record(folder) == record:
            done.add(index)
        elif folder.is_dir():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    return done


def _save_shard(shard: Dataset, folder: Path, record: dict[str, Any]) -> None:
    shard.save_to_disk(str(folder))
    (folder / SHARD_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")


def _disk_full(err: OSError) -> bool:
    # pyarrow's writers raise OSError subclasses that carry the message but not always the errno.
    return err.errno == errno.ENOSPC or "No space left on device" in str(err)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _human(size: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000:
            break
        size /= 1000
    else:
        unit = "TB"
    return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"


@contextmanager
def full_disk_keeps_shards(entry: Path, what: str, shards: int) -> Iterator[None]:
    """Turn a full disk (ENOSPC) while building `entry` in `shards` shards into one line saying what is kept, where,
    that rerunning resumes, and about how much more space the rest needs: each missing shard, one shard's scratch
    file, and the final copy of all of them, at the mean size of the finished ones."""
    try:
        yield
    except OSError as err:
        if not _disk_full(err):
            raise
        partial = partial_path(entry)
        kept = [f for f in partial.iterdir() if f.name.startswith("shard-")] if partial.is_dir() else []
        if kept:
            mean = sum(_size(f) for f in kept) / len(kept)
            need = f"; this step needs about {_human(mean * (2 * shards - len(kept) + 1))} more free space there"
        else:
            need = "; no shard was finished, so the space needed is not known"
        raise CorpusError(f"{what}: no space left on the disk of {entry.parent} ({len(kept)} of {shards} shards "
                          f"finished and kept in {partial}; rerun the same command to resume from them{need})"
                          ) from err


def map_in_shards(entry: Path, key: str, data: Dataset, map_shard: Callable[[Dataset, Path], Dataset], work: Path,
                  shard_documents: int, what: str, desc: str) -> Dataset:
    """`map_shard(shard, scratch_file)` over `data` in contiguous shards of `shard_documents` rows, in order. Each
    finished shard is saved (atomically) under partial_path(entry) with a record of `key` and its rows; shards that
    an earlier, interrupted build of the same key finished are reused. Returns the shards concatenated in order,
    memory-mapped from the partial folder: publish the entry from it, then `drop_partial(entry)`. The caller holds
    build_lock(entry).

    Progress: with several shards, one bar over all rows (rate, ETA) replaces the datasets library's bar per shard;
    a stage of one shard keeps the library's bar, which moves within the shard (ours would only move at its end)."""
    from datasets import concatenate_datasets, load_from_disk
    from datasets.utils.tqdm import tqdm

    partial, ranges = partial_path(entry), shard_ranges(len(data), shard_documents)
    done = _finished_shards(partial, key, ranges, len(data))
    if done:  # a warning, as in build_lock: the CLI configures no logging, and the user should know why it is quick
        log.warning("%s: resuming: %d of %d shards done (%s)", desc, len(done), len(ranges), partial)
    several = len(ranges) > 1
    bar = tqdm(total=len(data), initial=sum(ranges[i][1] - ranges[i][0] for i in done), unit=" docs", desc=desc,
               dynamic_ncols=True) if several else nullcontext(None)
    with full_disk_keeps_shards(entry, what, len(ranges)), bar:
        for index, span in enumerate(ranges):
            if index not in done:
                scratch = work / f"{entry.parent.name}-{entry.name}-{_shard_name(index)}.arrow"
                with quiet_progress() if several else nullcontext():
                    _map_and_save(map_shard, data.select(range(*span)), scratch, partial / _shard_name(index),
                                  _record(key, index, span, len(data)))
                if several:
                    bar.update(span[1] - span[0])
    with quiet_progress():
        return concatenate_datasets([load_from_disk(str(partial / _shard_name(i))) for i in range(len(ranges))])


def _map_and_save(map_shard: Callable[[Dataset, Path], Dataset], rows: Dataset, scratch: Path, folder: Path,
                  record: dict[str, Any]) -> None:
    try:
        shard = map_shard(rows, scratch)
        with atomic_dir(folder) as tmp, quiet_progress():
            _save_shard(shard, tmp, record)
    finally:
        for file in scratch.parent.glob(f"{scratch.stem}*"):  # the map's output (one file per worker), saved by now
            file.unlink(missing_ok=True)


def drop_partial(entry: Path) -> None:
    """Remove the finished shards of `entry`: once it is published, or when its shards turned out unusable."""
    shutil.rmtree(partial_path(entry), ignore_errors=True)
