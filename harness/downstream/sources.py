"""Where a task's examples come from: a local copy in the official layout, or the Hugging Face hub.

A data root (--data-dir, else $HARNESS_DATA_DIR) is searched for the task's folder as it sits in the
official distribution: `<root>/<parent>/<folder>` (e.g. glue/SST-2), `<root>/<folder>`, or the root itself
when it is the task folder. Without a local copy the hub is used; without network that fails in seconds
(not after the hub client's minute of retries) with one line saying how to point at a local copy.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness.config import HarnessError
from harness.downstream.conll import NerSentence, iob1_to_iob2, read_conll
from harness.downstream.glue import TextExample, read_glue_file
from harness.downstream.squad import qa_examples_from_records, read_squad_json
from harness.paths import data_root
from harness.tasks import TaskSpec


def load_examples(spec: TaskSpec, split: str, data_dir: str | Path | None = None) -> list[Any]:
    """The examples of one split ("train", "dev"), from a local copy if there is one, else from the hub."""
    if split not in spec.files:
        raise HarnessError(f"task {spec.name} has no split '{split}'; allowed: {', '.join(spec.files)}")
    task_dir = find_task_dir(spec, data_dir)
    if task_dir is None:
        return load_hub_examples(spec, split)
    return read_local_split(spec, task_dir, split)


def find_task_dir(spec: TaskSpec, data_dir: str | Path | None) -> Path | None:
    """The folder holding the task's files; None when no data root is set (or only the environment's root
    is set and lacks the task), so the hub is used. An explicit data_dir without the task is an error."""
    root = data_root(data_dir)
    if root is None:
        return None
    candidates = [root] + [root / parent / spec.folder for parent in spec.parents]
    for candidate in candidates:
        if any(_holds(candidate / file.filename) for file in spec.files.values()):
            return candidate
    if data_dir is None:
        return None
    names = ", ".join(file.filename for file in spec.files.values())
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise HarnessError(f"task {spec.name}: none of {names} found in {tried}")


def _holds(path: Path) -> bool:
    # A split "file" may be a folder: BLiMP's is data/, one file per paradigm. An empty folder is no copy.
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def read_local_split(spec: TaskSpec, task_dir: Path, split: str) -> list[Any]:
    file = spec.files[split]
    path = task_dir / file.filename
    if spec.kind == "qa":
        return read_squad_json(path, allow_no_answer=bool(spec.extra.get("version_2_with_negative")))
    if spec.kind == "ner":
        return read_conll(path, spec.labels)
    return read_glue_file(path, file, spec)


def load_hub_examples(spec: TaskSpec, split: str) -> list[Any]:
    hub_split = {"train": spec.hub.train_split, "dev": spec.hub.dev_split}.get(split, split)
    rows = load_hub_dataset(spec, hub_split)
    if spec.kind == "qa":
        return qa_examples_from_records(rows)
    if spec.kind == "ner":
        names = rows.features[spec.hub.label_field].feature.names
        return [NerSentence(tuple(r["tokens"]), tuple(iob1_to_iob2([names[t] for t in r[spec.hub.label_field]])))
                for r in rows]
    return [_text_example(spec, row) for row in rows]


def _text_example(spec: TaskSpec, row: dict[str, Any]) -> TextExample:
    texts = [row[name] for name in spec.hub.text_fields]
    label = row[spec.hub.label_field]
    if spec.kind == "regression":
        label = float(label)
    elif not 0 <= label < len(spec.labels):
        raise HarnessError(f"{spec.hub.name} ({spec.hub.config}): label {label} outside 0..{len(spec.labels) - 1} "
                           "(test splits carry no labels)")
    return TextExample(texts[0], texts[1] if len(texts) > 1 else None, label)


def load_hub_dataset(spec: TaskSpec, split: str) -> Any:
    import datasets  # heavy: only when the hub is actually used

    hint = (f"for a local copy in the official layout ({spec.folder}/"
            f"{', '.join(f.filename for f in spec.files.values())}) pass --data-dir")
    where = spec.hub.name + (f" ({spec.hub.config})" if spec.hub.config else "")
    offline = not hub_reachable()
    try:
        with _hub_offline(offline):
            return datasets.load_dataset(spec.hub.name, spec.hub.config, split=split)
    except Exception as err:  # the hub client raises many types; all mean "not available here"
        reason = "the hub is not reachable and it is not in the local datasets cache" if offline else \
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise HarnessError(f"cannot load {where} split '{split}' from the Hugging Face hub: {reason}; "
                           f"{hint}") from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint: cheap, and it lets an offline machine fail in seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Offline: let `datasets` answer from its cache at once instead of retrying the network."""
    if not offline:
        yield
        return
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
