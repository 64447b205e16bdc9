"""Documents from the corpus sources: WikiText-style files, JSON Lines files, Parquet files, one-document-per-file
texts (a folder, or the files a glob matches) or a Hugging Face hub dataset (downloaded whole, or streamed). Every
source becomes the same `datasets.Dataset` of (doc_id, title, text), where text holds paragraphs separated by blank
lines, so segmentation and tokenization treat all sources alike. `corpus.path` may be a glob (`shards/*.jsonl`): the
files it matches, in sorted order, are one corpus, and each doc_id starts with the file's path below the pattern's
fixed folder, so ids stay unique across files (a plain path keeps the file's own name, as before globs existed).

Each layout's file reader is in harness.data.readers (decoded by hand, so that a bad byte or record is reported with
its file, line and byte offset); here the corpus is identified (its cache key), its files or hub rows are read
through `Dataset.from_generator`, and its validation documents are chosen.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from harness.config import CorpusConfig, HarnessError
from harness.data.readers import (  # noqa: F401  (CorpusError, split_wikitext_articles: imported from here too)
    CorpusError,
    Document,
    EncodingErrors,
    check_parquet,
    read_jsonl,
    read_lines,
    read_parquet,
    read_text_file,
    split_wikitext_articles,
    text_files,
    wikitext_documents,
)
from harness.paths import DATA_DIR_ENV, atomic_write_text, data_root, resolve_data_path

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

# Bump when a reader's output changes (e.g. how WikiText articles are found): it is part of every cache key.
DOCUMENTS_VERSION = 1
# The folder of the cache that remembers file hashes (source_identity's memo_dir).
DIGESTS_DIR = "digests"


def fingerprint(obj: Any) -> str:
    """A stable short hash of a JSON-able object: the name of a cache entry."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe_source(corpus: CorpusConfig) -> str:
    if corpus.hub is not None:
        return f"corpus.hub = '{corpus.hub}'"
    return f"corpus.path = '{corpus.path}'"


# ---- sources -> one dataset ----------------------------------------------------------------------------------------
def is_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


def _glob_files(pattern: str, data_dir: str | Path | None) -> list[tuple[Path, str]]:
    """(file, its path below the pattern's fixed folder) for the files a glob matches, sorted by that path. Like a
    plain path, a relative pattern is tried below the working dir, then below the data root: the first that matches
    wins. Shell rules: `**` spans folders, `*` skips hidden files."""
    parts = Path(pattern).expanduser().parts
    fixed = next(i for i, part in enumerate(parts) if is_glob(part))
    base, rest = Path(*parts[:fixed]) if fixed else Path(), "/".join(parts[fixed:])
    root = data_root(data_dir)
    bases = [base] if base.is_absolute() else [Path.cwd() / base] + ([root / base] if root else [])
    for folder in bases:
        names = sorted(Path(m).as_posix() for m in glob.glob(rest, root_dir=folder, recursive=True)
                       if (folder / m).is_file()) if folder.is_dir() else []
        if names:
            folder = folder.resolve()
            return [(folder / name, name) for name in names]
    hint = "" if root else f" (relative patterns are also tried under --data-dir / ${DATA_DIR_ENV})"
    raise CorpusError(f"corpus.path = '{pattern}': the pattern '{rest}' matches no file in "
                      f"{' or '.join(str(b) for b in bases)}{hint}")


_GLOB_HINT = {"jsonl": "*.jsonl", "parquet": "*.parquet"}


def local_files(corpus: CorpusConfig, data_dir: str | Path | None) -> list[tuple[Path, str]]:
    """The files of a local corpus, in reading order, each with the name its doc_ids start with: the file's own
    name for a plain path (the ids of before globs), its path below the folder (text_dir) or below the glob's fixed
    folder. Parquet footers are checked here, before any file is read."""
    if is_glob(corpus.path or ""):
        files = _glob_files(corpus.path or "", data_dir)
    else:
        path = resolve_data_path(corpus.path or "", data_dir, field="corpus.path")
        if corpus.layout == "text_dir" and not path.is_dir():
            raise CorpusError(f"corpus.path = '{corpus.path}': layout 'text_dir' needs a folder or a glob, "
                              f"{path} is a file")
        if corpus.layout != "text_dir" and path.is_dir():
            files_in = f"{(corpus.path or '').rstrip('/')}/{_GLOB_HINT.get(corpus.layout, '*')}"
            raise CorpusError(
                f"corpus.path = '{corpus.path}': layout '{corpus.layout}' needs a file or a glob, {path} is a folder "
                f"(use layout 'text_dir' for a folder of texts, or a glob such as '{files_in}' for its files)"
            )
        files = [(p, p.relative_to(path).as_posix()) for p in text_files(path)] if path.is_dir() \
            else [(path, path.name)]
    if corpus.layout == "parquet":
        for file, _ in files:
            check_parquet(file, corpus.text_field)
    return files


def source_identity(corpus: CorpusConfig, data_dir: str | Path | None, errors: EncodingErrors,
                    memo_dir: Path | None = None, hub: HubRows | None = None) -> dict[str, Any]:
    """Everything that decides the documents: for a local corpus, the name and content hash of every file in
    reading order (not its path's times), so that a copied, re-created or touched corpus with the same bytes keeps
    its caches and a changed one never reuses them. Hashes are remembered per file by (size, mtime, inode), in this
    process and in `memo_dir` (the cache's), so an unchanged corpus is read once. A hub dataset is identified by
    name, config and split; a streamed one also by the revision the hub resolved (opened here unless `hub` is the
    stream already opened), never by its content."""
    shape = {"version": DOCUMENTS_VERSION, "layout": corpus.layout, "max_documents": corpus.max_documents,
             "encoding_errors": errors}
    if corpus.layout in ("jsonl", "parquet") or corpus.hub is not None:
        shape["text_field"] = corpus.text_field
    if corpus.hub is not None:
        shape = {**shape, "hub": corpus.hub, "hub_config": corpus.hub_config, "hub_split": corpus.hub_split}
        if corpus.hub_streaming:  # the key of before streaming existed stays as it was for downloaded datasets
            shape["hub_revision"] = (hub if hub is not None else open_hub_dataset(corpus)).revision
        return shape
    files = local_files(corpus, data_dir)
    digests = file_digests([file for file, _ in files], memo_dir)
    return {**shape, "files": [(name, file.stat().st_size, digest)
                               for (file, name), digest in zip(files, digests, strict=True)]}


def corpus_digest(identity: dict[str, Any]) -> str:
    """What final_metrics.json records of the documents a run trained on: equal for equal contents, wherever the
    files lie (for a hub dataset: its name, config and split, and for a streamed one the revision the hub
    resolved; a downloaded one's revision is not pinned)."""
    return fingerprint(identity)


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def file_digests(files: Sequence[Path], memo_dir: Path | None = None) -> list[str]:
    """SHA-256 (first 16 hex digits) of each file's bytes, read only when its (size, mtime, inode) is not already
    remembered. With `memo_dir` the answers of other processes count too: a JSON file per folder of files."""
    memo_file = memo = None
    if memo_dir is not None and files:
        memo_file = memo_dir / f"{fingerprint(str(files[0].parent.resolve()))}.json"
        try:
            memo = json.loads(memo_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            memo = {}
    out, changed = [], False
    for file in files:
        stat = file.stat()
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        if key not in _DIGESTS and memo is not None and isinstance(memo.get(key[0]), list) \
                and memo[key[0]][:3] == stamp and len(memo[key[0]]) == 4:
            _DIGESTS[key] = memo[key[0]][3]
        if key not in _DIGESTS:
            with file.open("rb") as handle:
                _DIGESTS[key] = hashlib.file_digest(handle, "sha256").hexdigest()[:16]
        if memo is not None and memo.get(key[0]) != [*stamp, _DIGESTS[key]]:
            memo[key[0]], changed = [*stamp, _DIGESTS[key]], True
        out.append(_DIGESTS[key])
    if changed and memo_file is not None:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo_file, json.dumps(memo))
    return out


def _file_documents(corpus: CorpusConfig, file: Path, name: str, errors: EncodingErrors) -> Iterator[Document]:
    if corpus.layout == "wikitext":
        yield from wikitext_documents(read_lines(file, errors), str(file), name)
    elif corpus.layout == "jsonl":
        yield from read_jsonl(file, corpus.text_field, errors, name)
    elif corpus.layout == "parquet":
        yield from read_parquet(file, corpus.text_field, name)
    else:
        yield read_text_file(file, name, errors)


def _generate_documents(corpus_json: str, files: tuple[tuple[str, str], ...], errors: EncodingErrors,
                        hub_rows: Any = None) -> Iterator[Document]:
    # `files` is a tuple, not a list: datasets would split a list into shards and call this once per file.
    corpus = CorpusConfig.model_validate_json(corpus_json)
    source = describe_source(corpus)
    if hub_rows is not None:
        records = _hub_documents(corpus, hub_rows)
    else:
        records = (doc for file, name in files for doc in _file_documents(corpus, Path(file), name, errors))
    kept = 0
    for record in islice((r for r in records if r["text"].strip()), corpus.max_documents):
        kept += 1
        yield record
    if kept == 0:
        raise CorpusError(f"{source}: the corpus is empty (no document with any text; layout '{corpus.layout}')")


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide the datasets library's progress bars for steps that take a moment (reading, saving); the long ones
    (segmenting, tokenizing) keep theirs."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def load_documents(corpus: CorpusConfig, data_dir: str | Path | None, workdir: Path,
                   encoding_errors: EncodingErrors = "strict") -> Dataset:
    """The corpus as a `datasets.Dataset` with columns doc_id, title, text (first `corpus.max_documents` non-empty
    documents). Its Arrow files live in `workdir`, which must outlive the dataset."""
    from datasets import Dataset, Features, Value
    from datasets.exceptions import DatasetGenerationError

    hub = open_hub_dataset(corpus) if corpus.hub is not None else None
    identity = source_identity(corpus, data_dir, encoding_errors, hub=hub)
    files = () if hub is not None else tuple((str(file), name) for file, name in local_files(corpus, data_dir))
    kwargs = {"corpus_json": corpus.model_dump_json(), "files": files, "errors": encoding_errors,
              "hub_rows": hub.rows if hub is not None else None}
    features = Features({"doc_id": Value("string"), "title": Value("string"), "text": Value("string")})
    try:
        with quiet_progress():
            return Dataset.from_generator(_generate_documents, features=features, gen_kwargs=kwargs,
                                          cache_dir=str(workdir), fingerprint=fingerprint(identity))
    except DatasetGenerationError as err:
        if isinstance(err.__cause__, HarnessError):
            raise err.__cause__ from None
        raise


def validation_mask(doc_ids: Sequence[str], fraction: float) -> list[bool]:
    """Which documents are held out: the round(fraction x n) (at least one if fraction > 0) whose doc_id has the
    smallest SHA-256. It depends on the documents alone, never on the run seed, so every run evaluates on the same
    held-out documents."""
    n = len(doc_ids)
    if fraction <= 0:
        return [False] * n
    count = max(1, int(fraction * n + 0.5))
    if count >= n:
        raise CorpusError(
            f"the corpus has {n} document(s): corpus.validation_fraction = {fraction:g} leaves none for training; "
            "use more documents or validation_fraction = 0"
        )
    order = sorted(range(n), key=lambda i: (hashlib.sha256(doc_ids[i].encode()).digest(), i))
    held_out = set(order[:count])
    return [i in held_out for i in range(n)]


# ---- Hugging Face hub -------------------------------------------------------------------------------------------
_TRUE = {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    import datasets

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").upper() in _TRUE for n in names) or bool(datasets.config.HF_HUB_OFFLINE)


def _hub_hint(corpus: CorpusConfig) -> str:
    if corpus.layout == "wikitext":
        save = f"write each of its '{corpus.text_field}' rows as one line of a text file"
    else:
        save = "save it with .to_json('corpus.jsonl')"
    return (f"use a local copy instead: where the hub is reachable, load the split with datasets.load_dataset and "
            f"{save}, then set corpus.hub: null and corpus.path: <that file> (corpus.layout: {corpus.layout})")


def _hub_reachable(timeout: float = 5.0) -> str | None:
    """None when the hub's host accepts a connection, else the reason; a quick check instead of the hub client's
    retries (half a minute without network)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError as err:
        return f"cannot reach {url.hostname} ({err.strerror or err})"
    return None


class HubRows(NamedTuple):
    """An opened hub split: downloaded (a Dataset; revision None, not pinned) or streamed (an IterableDataset,
    read as it is iterated; revision: the commit the hub resolved, where the dataset builder knows it)."""

    rows: Dataset | IterableDataset
    revision: str | None


def _open_hub_rows(corpus: CorpusConfig) -> HubRows:
    import datasets

    if not corpus.hub_streaming:
        return HubRows(datasets.load_dataset(corpus.hub, corpus.hub_config, split=corpus.hub_split), None)
    # What load_dataset(..., streaming=True) does, keeping the builder: its `hash` is the hub commit it resolved.
    builder = datasets.load_dataset_builder(corpus.hub, corpus.hub_config)
    revision = builder.hash if isinstance(builder.hash, str) else None
    return HubRows(builder.as_streaming_dataset(split=corpus.hub_split), revision)


def open_hub_dataset(corpus: CorpusConfig) -> HubRows:
    """The hub split, downloaded whole or (corpus.hub_streaming) as a stream: nothing is downloaded up front. Offline
    (HF_HUB_OFFLINE set) only the local Hugging Face cache is tried; a missing network fails in seconds. Either way
    the error is one line that says how to use a local copy."""
    from unittest import mock

    import datasets
    from huggingface_hub import constants

    name = f"corpus.hub = '{corpus.hub}'" + (f" (config '{corpus.hub_config}')" if corpus.hub_config else "")
    offline = _hub_offline()
    if not offline and (reason := _hub_reachable()):
        raise CorpusError(f"{name}: {reason}; {_hub_hint(corpus)}")
    # The libraries read HF_HUB_OFFLINE once at import; honour it when it was set later (e.g. by a test).
    with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", offline or datasets.config.HF_HUB_OFFLINE), \
            mock.patch.object(constants, "HF_HUB_OFFLINE", offline or constants.HF_HUB_OFFLINE):
        try:
            hub = _open_hub_rows(corpus)
        except Exception as err:  # the hub client raises many types; the user needs one line, not a traceback
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            state = f"the hub is offline (HF_HUB_OFFLINE) and the local cache cannot serve it ({first})" if offline \
                else first
            raise CorpusError(f"{name}: {state}; {_hub_hint(corpus)}") from None
    columns = hub.rows.column_names  # None for a stream whose features the hub does not declare
    if columns is not None and corpus.text_field not in columns:
        raise CorpusError(f"{name}: no column '{corpus.text_field}' (corpus.text_field); columns: {', '.join(columns)}")
    return hub


def _hub_documents(corpus: CorpusConfig, rows: Dataset | IterableDataset) -> Iterator[Document]:
    """layout 'wikitext': rows are lines, regrouped into articles; layout 'jsonl': rows are documents. Rows are
    pulled as documents are taken, so corpus.max_documents stops a stream early; ids are equal streamed or not."""
    prefix = f"{corpus.hub}/{corpus.hub_config or 'default'}/{corpus.hub_split}"
    field = corpus.text_field

    def checked(row: dict[str, Any], index: int) -> dict[str, Any]:
        if field not in row:
            raise CorpusError(f"{describe_source(corpus)}: row {index} has no column '{field}' (corpus.text_field); "
                              f"columns: {', '.join(row)}")
        return row

    if corpus.layout == "wikitext":
        size = 1_000 if corpus.hub_streaming else 10_000
        batches = rows.iter(batch_size=size)
        lines = (line for index, batch in enumerate(batches) for line in checked(batch, index * size)[field])
        yield from wikitext_documents(lines, describe_source(corpus), prefix)
        return
    for index, row in enumerate(rows):
        title = checked(row, index).get("title")
        yield {"doc_id": f"{prefix}:{index}", "title": title if isinstance(title, str) else "",
               "text": row[field] or ""}
