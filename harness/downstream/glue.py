"""GLUE in its official distribution layout: `<TASK>/train.tsv`, `dev.tsv` (MNLI: `dev_matched.tsv`, ...).

The files are tab-separated with no quoting at all: sentences contain bare `"` characters, so they must be
read with csv.QUOTE_NONE (the default csv dialect silently merges rows at an unbalanced quote). Every row
is checked; a bad one stops the load with one line naming the file and the line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.config import HarnessError
from harness.tasks import Column, FileSpec, TaskSpec


@dataclass(frozen=True, slots=True)
class TextExample:
    """A single sentence or a sentence pair with its label (class index, or a float for regression)."""

    text_a: str
    text_b: str | None
    label: int | float


def read_glue_file(path: Path, file: FileSpec, spec: TaskSpec) -> list[TextExample]:
    if not path.is_file():
        raise HarnessError(f"{spec.name}: split file {path} not found (official GLUE layout: "
                           f"{spec.folder}/{', '.join(f.filename for f in spec.files.values())})")
    examples: list[TextExample] = []
    with path.open(encoding=file.encoding, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        text_idx, label_idx, n_fields = _layout(reader, file, path)
        for row in reader:
            if not row:  # a trailing blank line
                continue
            if len(row) != n_fields:
                if file.skip_short_rows and len(row) < n_fields:
                    continue
                raise HarnessError(f"{path}:{reader.line_num}: expected {n_fields} tab-separated fields, "
                                   f"found {len(row)}")
            texts = [row[i] for i in text_idx]
            label = parse_label(row[label_idx], spec, f"{path}:{reader.line_num}")
            examples.append(TextExample(texts[0], texts[1] if len(texts) > 1 else None, label))
    return examples


def _layout(reader: Iterator[list[str]], file: FileSpec, path: Path) -> tuple[list[int], int, int]:
    """Column indices of the text(s) and the label, and the number of fields every row must have."""
    if not file.header:
        assert file.n_fields is not None, "a header-less FileSpec must declare n_fields"
        return [int(c) for c in file.text_columns], int(_label_column(file)), file.n_fields
    header = next(reader, None)
    if header is None:
        raise HarnessError(f"{path}: empty file (expected a header row)")
    if header and header[0].startswith("\ufeff"):
        raise HarnessError(f"{path}:1: header starts with a byte-order mark; the task's file spec must say "
                           "encoding='utf-8-sig'")

    def index(column: Column) -> int:
        if isinstance(column, int):
            return column
        if column not in header:
            raise HarnessError(f"{path}:1: header has no column '{column}' (found: {', '.join(header)})")
        return header.index(column)

    return [index(c) for c in file.text_columns], index(_label_column(file)), len(header)


def _label_column(file: FileSpec) -> Column:
    assert file.label_column is not None, f"{file.filename}: no label column declared"
    return file.label_column


def parse_label(raw: str, spec: TaskSpec, where: str) -> int | float:
    """Class index in `spec.labels`, or the float score of a regression task."""
    if spec.kind == "regression":
        try:
            return float(raw)
        except ValueError:
            raise HarnessError(f"{where}: label '{raw}' is not a number ({spec.name} is a regression task)") from None
    try:
        return spec.labels.index(raw.strip())
    except ValueError:
        raise HarnessError(f"{where}: label '{raw}' is not one of {', '.join(spec.labels)} "
                           f"(task {spec.name})") from None
