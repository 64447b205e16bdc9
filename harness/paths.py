"""Where things live: local data paths, the cache, atomic writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.config import ConfigError

DATA_DIR_ENV = "HARNESS_DATA_DIR"
CACHE_DIR_ENV = "HARNESS_CACHE_DIR"


def data_root(data_dir: str | Path | None = None) -> Path | None:
    """--data-dir wins over $HARNESS_DATA_DIR; None when neither is given."""
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(root).expanduser() if root else None


def resolve_data_path(path: str | Path, data_dir: str | Path | None = None, field: str = "corpus.path") -> Path:
    """A local data path may be absolute, relative to the working directory, or relative to the data root."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        tried = [candidate]
    else:
        tried = [Path.cwd() / candidate]
        root = data_root(data_dir)
        if root is not None:
            tried.append(root / candidate)
    for option in tried:
        if option.exists():
            return option.resolve()
    where = " or ".join(str(t) for t in tried)
    hint = "" if data_root(data_dir) else f" (relative paths are also looked up under --data-dir / ${DATA_DIR_ENV})"
    raise ConfigError(f"{field} = '{path}': no such file or folder: {where}{hint}")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The harness cache: impl.cache_dir, else $HARNESS_CACHE_DIR, else ~/.cache/harness. Must be writable."""
    root = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "harness").expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as err:
        raise ConfigError(f"impl.cache_dir = '{root}': not writable ({err.strerror})") from None
    return root


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it into place only when the block succeeds,
    so an interrupted build never leaves a half-written cache entry behind."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # another process finished the same entry first; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
