"""Readers of local corpus files, one per layout: WikiText-style files (articles at ' = Title = ' lines), JSON Lines,
Parquet (a record batch at a time) and one-document-per-file texts. Each yields documents (doc_id, title, text: its
paragraphs separated by blank lines). Files are decoded by hand, not by load_dataset("text"/"json"), so that a bad
byte or a bad record is reported with its file, line and byte offset (CorpusError, one line). harness.data.documents
picks the reader for a corpus and makes one dataset of their documents."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from harness.config import HarnessError

EncodingErrors = Literal["strict", "replace"]
Document = dict[str, str]  # doc_id, title, text


class CorpusError(HarnessError):
    """Bad corpus input (missing or malformed file, empty corpus, unreachable hub); the message is one line."""


# ---- decoding --------------------------------------------------------------------------------------------------
def decode_utf8(data: bytes, path: Path, errors: EncodingErrors, line: int = 1, offset: int = 0) -> str:
    """Decode UTF-8 (a leading byte-order mark is dropped); strict mode names the file, line and byte offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if errors != "strict":
            text = data.decode("utf-8", errors="replace")
        else:
            bad_line = line + data.count(b"\n", 0, err.start)
            raise CorpusError(
                f"{path}: not UTF-8 text at byte {offset + err.start} (line {bad_line}, byte 0x{data[err.start]:02x}); "
                "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or set corpus.encoding_errors: replace"
            ) from None
    return text.removeprefix("\ufeff") if offset == 0 else text


def read_lines(path: Path, errors: EncodingErrors) -> Iterator[str]:
    """Lines (without line endings) of a UTF-8 file, streamed, with the byte offset tracked for error messages."""
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield decode_utf8(raw, path, errors, line=number, offset=offset).rstrip("\r\n")
            offset += len(raw)


# ---- WikiText ---------------------------------------------------------------------------------------------------
def _is_heading(stripped: str) -> bool:
    return stripped.startswith("= =") and stripped.endswith("= =")


def _is_title(stripped: str) -> bool:
    return len(stripped) > 4 and stripped.startswith("= ") and stripped.endswith(" =") and not _is_heading(stripped)


def split_wikitext_articles(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(title, text) per article. An article starts at a ` = Title = ` line that stands between blank lines (as
    every WikiText title does; a formula line such as ` = 1 henry and capacitance C = ` inside a paragraph does not);
    ` = = Section = = ` headings are dropped; each remaining line is a paragraph. Text before the first title, if
    any, is an untitled article."""
    title: str | None = None
    paragraphs: list[str] = []
    previous_blank = True
    iterator = iter(lines)
    line = next(iterator, None)
    while line is not None:
        following = next(iterator, None)
        stripped = line.strip()
        if _is_title(stripped) and previous_blank and (following is None or not following.strip()):
            if title is not None or paragraphs:
                yield title or "", "\n\n".join(paragraphs)
            title, paragraphs = stripped[2:-2].strip(), []
        elif stripped and not _is_heading(stripped):
            paragraphs.append(stripped)
        previous_blank = not stripped
        line = following
    if title is not None or paragraphs:
        yield title or "", "\n\n".join(paragraphs)


def wikitext_documents(lines: Iterable[str], source: str, id_prefix: str) -> Iterator[Document]:
    titled = False
    for index, (title, text) in enumerate(split_wikitext_articles(lines)):
        titled = titled or bool(title)
        yield {"doc_id": f"{id_prefix}:{index}", "title": title, "text": text}
    if not titled:
        raise CorpusError(f"{source}: no article title lines (' = Title = ') found; is corpus.layout right?")


# ---- JSON Lines -------------------------------------------------------------------------------------------------
def read_jsonl(path: Path, text_field: str, errors: EncodingErrors, name: str | None = None) -> Iterator[Document]:
    """One document per record; doc_id `<name>:<line>` (name: the file's name unless given)."""
    for number, line in enumerate(read_lines(path, errors), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path} line {number}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(record, dict):
            raise CorpusError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        if text_field not in record:
            fields = ", ".join(sorted(record)) or "none"
            raise CorpusError(
                f"{path} line {number}: record has no field '{text_field}' (corpus.text_field); its fields: {fields}"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise CorpusError(f"{path} line {number}: field '{text_field}' is {type(text).__name__}, not text")
        title = record.get("title")
        title = title if isinstance(title, str) else ""
        yield {"doc_id": f"{name or path.name}:{number}", "title": title, "text": text}


# ---- Parquet ----------------------------------------------------------------------------------------------------
def _is_text_type(kind: Any) -> bool:
    import pyarrow as pa

    is_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_view(kind)


def check_parquet(path: Path, text_field: str) -> None:
    """Reads only the file's footer: a non-Parquet file, a missing or non-text column fails before any work."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CorpusError(f"{path}: not a Parquet file ({first}); is corpus.layout right?") from None
    if text_field not in schema.names:
        raise CorpusError(f"{path}: no column '{text_field}' (corpus.text_field); its columns: "
                          f"{', '.join(schema.names) or 'none'}")
    kind = schema.field(text_field).type
    if not _is_text_type(kind):
        raise CorpusError(f"{path}: column '{text_field}' (corpus.text_field) is {kind}, not text")


def read_parquet(path: Path, text_field: str, name: str, batch_rows: int = 1024) -> Iterator[Document]:
    """One document per row of the text column (null = empty), with a string `title` column if there is one; doc_id
    `<name>:<row>`, rows counted from 0. Read in record batches of those columns, one row group at a time and without
    pre-buffering (which holds the row groups still to come: +400 MB for a 420 MB file, against +50 MB this way)."""
    import pyarrow.parquet as pq

    check_parquet(path, text_field)
    row = 0
    with pq.ParquetFile(path, pre_buffer=False) as parquet:
        schema = parquet.schema_arrow
        titled = "title" in schema.names and text_field != "title" and _is_text_type(schema.field("title").type)
        columns = [text_field, "title"] if titled else [text_field]
        batches = (batch for group in range(parquet.num_row_groups)
                   for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns))
        for batch in batches:
            titles = batch.column("title").to_pylist() if titled else [None] * batch.num_rows
            for text, title in zip(batch.column(text_field).to_pylist(), titles, strict=True):
                yield {"doc_id": f"{name}:{row}", "title": title or "", "text": text or ""}
                row += 1


# ---- folder of texts --------------------------------------------------------------------------------------------
_BRACKET_TITLE = re.compile(r"^\[(.+)\]$")


def text_files(folder: Path) -> list[Path]:
    """The documents of a text folder: every file below it, hidden ones (and those in hidden folders) excepted."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_text_file(path: Path, name: str, errors: EncodingErrors) -> Document:
    """A whole file as one document with doc_id `name`. A first line `[Title by Author Year]` (Gutenberg) is the
    title and not part of the text; otherwise the title is the file name."""
    text = decode_utf8(path.read_bytes(), path, errors).replace("\r\n", "\n").replace("\r", "\n")
    first, _, rest = text.partition("\n")
    match = _BRACKET_TITLE.match(first.strip())
    title, text = (match.group(1).strip(), rest) if match else (path.stem, text)
    return {"doc_id": name, "title": title, "text": text}
