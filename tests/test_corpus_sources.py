"""Corpora at scale: a glob of local files read as one corpus (JSON Lines, WikiText, Parquet, texts), a Parquet
layout read in record batches, a hub dataset streamed instead of downloaded, and the one-line errors for each bad
input. Every comparison goes through build_corpus, the entry point that pre-training uses."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.config import ConfigError, from_dict
from harness.data.corpus import build_corpus
from harness.data.documents import CorpusError, corpus_digest, load_documents, source_identity

N_RECORDS = 30


def _config(tmp_path: Path, **corpus):
    return from_dict({"corpus": {"segmenter": "newline", "validation_fraction": 0.0, **corpus},
                      "tokenizer": {"vocab_size": 300}, "impl": {"num_proc": 1, "cache_dir": str(tmp_path / "cache")}})


def _one_line(err: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(err.value), str(err.value)
    return str(err.value)


def _write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reuters_lines(shared_data) -> list[str]:
    with (shared_data / "corpora" / "reuters.jsonl").open(encoding="utf-8") as handle:
        return [next(handle).rstrip("\n") for _ in range(N_RECORDS)]


def _shards(folder: Path, lines: list[str]) -> list[Path]:
    """Three shards, one in a subfolder with the same file name as another: ids must still be unique."""
    names = ["a.jsonl", "b.jsonl", "more/a.jsonl"]  # sorted order: a, b, more/a
    written = [_write(folder / name, "\n".join(lines[i * 10:(i + 1) * 10]) + "\n") for i, name in enumerate(names)]
    return list(reversed(written))  # written last to first, so that only sorting gives the expected order


# ---- a glob of files as one corpus --------------------------------------------------------------------------------
def test_a_glob_of_jsonl_shards_gives_the_sentences_of_the_concatenated_file(tmp_path, reuters_lines):
    _shards(tmp_path / "data" / "shards", reuters_lines)
    whole = _write(tmp_path / "whole.jsonl", "\n".join(reuters_lines) + "\n")
    # a relative pattern is found below the data root, as a plain relative path is
    globbed = build_corpus(_config(tmp_path, layout="jsonl", path="shards/**/*.jsonl"), tmp_path / "data")
    single = build_corpus(_config(tmp_path, layout="jsonl", path=str(whole)))
    assert len(globbed.train) == N_RECORDS
    assert globbed.train["sentences"] == single.train["sentences"]
    assert globbed.train["doc_id"][:2] == ["a.jsonl:1", "a.jsonl:2"]
    assert globbed.train["doc_id"][10] == "b.jsonl:1" and globbed.train["doc_id"][20] == "more/a.jsonl:1"
    assert len(set(globbed.train["doc_id"])) == N_RECORDS
    assert single.train["doc_id"][:2] == ["whole.jsonl:1", "whole.jsonl:2"]  # a plain path keeps its ids


def test_a_glob_of_wikitext_files_and_of_texts(tmp_path):
    _write(tmp_path / "wiki" / "part1.raw", " = Alpha = \n\n Alpha one . \n Alpha two . \n")
    _write(tmp_path / "wiki" / "part2.raw", " = Beta = \n\n Beta one . \n Beta two . \n\n = Gamma = \n\n Gamma . \n")
    _write(tmp_path / "wiki" / "notes.md", "not matched")
    wiki = build_corpus(_config(tmp_path, layout="wikitext", path=str(tmp_path / "wiki" / "*.raw")))
    assert wiki.train["doc_id"] == ["part1.raw:0", "part2.raw:0", "part2.raw:1"]
    assert [len(s) for s in wiki.train["sentences"]] == [2, 2, 1]

    _write(tmp_path / "books" / "x" / "one.txt", "[One by A 1900]\nFirst line.\nSecond line.\n")
    _write(tmp_path / "books" / "y" / "two.txt", "Only line.\nAnd another.\n")
    _write(tmp_path / "books" / "y" / ".hidden.txt", "skipped like a hidden file in a text_dir folder")
    texts = load_documents(_config(tmp_path, layout="text_dir", path=str(tmp_path / "books/**/*.txt")).corpus,
                           None, tmp_path / "work")
    assert texts["doc_id"] == ["x/one.txt", "y/two.txt"] and texts["title"] == ["One by A 1900", "two"]


def test_a_glob_cache_key_covers_every_file_content(tmp_path, reuters_lines):
    shards = _shards(tmp_path / "shards", reuters_lines)
    config = _config(tmp_path, layout="jsonl", path=str(tmp_path / "shards" / "**" / "*.jsonl"))
    first = build_corpus(config)
    assert build_corpus(config).cache_hits.tokens  # unchanged files: the same entry
    edited = shards[1]  # b.jsonl, the middle file
    content = edited.read_text(encoding="utf-8")
    assert "the" in content
    stat = edited.stat()
    edited.write_text(content.replace("the", "THE", 1), encoding="utf-8")  # same size, other bytes
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = build_corpus(config)
    assert not second.cache_hits.tokens and second.corpus_digest != first.corpus_digest
    assert second.cache_dir != first.cache_dir
    _write(tmp_path / "shards" / "c.jsonl", reuters_lines[0] + "\n")
    assert corpus_digest(source_identity(config.corpus, None, "strict")) != second.corpus_digest


def test_plain_paths_keep_the_cache_keys_of_before_globs(tmp_path):
    # Keys computed by the documents.py of commit 0965983 (before globs) for these exact bytes.
    _write(tmp_path / "two.jsonl", '{"text": "One. Two."}\n{"text": "Three. Four."}\n')
    _write(tmp_path / "wiki.raw", " = Alpha = \n\n Alpha text . \n")
    _write(tmp_path / "books" / "a.txt", "A text.\n")
    _write(tmp_path / "books" / "b.txt", "[B by C 1900]\nB text.\n")
    expected = {("jsonl", "two.jsonl"): "34669955be859c0b", ("wikitext", "wiki.raw"): "78d6a9d55f89a3ec",
                ("text_dir", "books"): "fa5a65ff8523c74f"}
    for (layout, path), key in expected.items():
        corpus = _config(tmp_path, layout=layout, path=str(tmp_path / path)).corpus
        assert corpus_digest(source_identity(corpus, None, "strict")) == key, layout


# ---- Parquet --------------------------------------------------------------------------------------------------------
def test_parquet_gives_the_documents_of_the_jsonl(tmp_path, reuters_lines):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in reuters_lines]
    table = pa.table({"id": [r["id"] for r in records], "title": [r["title"] for r in records],
                      "text": [r["text"] for r in records]})
    pq.write_table(table, tmp_path / "reuters30.parquet", row_group_size=7)  # several row groups, several batches
    jsonl = _write(tmp_path / "reuters30.jsonl", "\n".join(reuters_lines) + "\n")
    from_parquet = build_corpus(_config(tmp_path, layout="parquet", path=str(tmp_path / "reuters30.parquet")))
    from_jsonl = build_corpus(_config(tmp_path, layout="jsonl", path=str(jsonl)))
    assert from_parquet.train["sentences"] == from_jsonl.train["sentences"]
    assert from_parquet.train["doc_id"][:2] == ["reuters30.parquet:0", "reuters30.parquet:1"]
    docs = load_documents(_config(tmp_path, layout="parquet", path=str(tmp_path / "*.parquet")).corpus, None,
                          tmp_path / "work")
    assert docs["title"] == [r["title"] for r in records] and docs["text"] == [r["text"] for r in records]


# ---- bad input: one line each, before any work ---------------------------------------------------------------------
def test_a_glob_that_matches_nothing_names_the_pattern_and_the_folder(tmp_path):
    _write(tmp_path / "data" / "shards" / "a.jsonl", '{"text": "x"}\n')
    config = _config(tmp_path, layout="parquet", path="shards/*.parquet")
    with pytest.raises(CorpusError) as err:
        build_corpus(config, tmp_path / "data")
    message = _one_line(err)
    assert "corpus.path = 'shards/*.parquet'" in message and "matches no file" in message
    assert str(tmp_path / "data" / "shards") in message
    assert not (tmp_path / "cache" / "corpora").exists()


def test_bad_json_in_one_shard_names_that_shard_and_line(tmp_path):
    good = json.dumps({"text": "One. Two."})
    for name in ("a.jsonl", "c.jsonl"):
        _write(tmp_path / "shards" / name, good + "\n")
    bad = _write(tmp_path / "shards" / "b.jsonl", good + "\n" + good + "\n{\"text\": broken\n")
    with pytest.raises(CorpusError) as err:
        build_corpus(_config(tmp_path, layout="jsonl", path=str(tmp_path / "shards" / "*.jsonl")))
    message = _one_line(err)
    assert message.startswith(f"{bad} line 3: not valid JSON")


def test_parquet_without_the_text_field_names_file_field_and_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"text": ["Fine. Text."]}), tmp_path / "p" / "a.parquet")
    pq.write_table(pa.table({"id": [1], "body": ["x"]}), tmp_path / "p" / "b.parquet")
    with pytest.raises(CorpusError) as err:
        build_corpus(_config(tmp_path, layout="parquet", path=str(tmp_path / "p" / "*.parquet")))
    message = _one_line(err)
    assert message == f"{tmp_path / 'p' / 'b.parquet'}: no column 'text' (corpus.text_field); its columns: id, body"


def test_parquet_layout_on_a_jsonl_file_says_it_is_not_parquet(tmp_path):
    path = _write(tmp_path / "docs.jsonl", json.dumps({"text": "One. Two."}) + "\n")
    with pytest.raises(CorpusError) as err:
        build_corpus(_config(tmp_path, layout="parquet", path=str(path)))
    message = _one_line(err)
    assert message.startswith(f"{path}: not a Parquet file") and "corpus.layout" in message


@pytest.mark.parametrize(("corpus", "expected"), [
    ({"hub_streaming": True}, ["corpus.hub_streaming", "corpus.hub"]),
    ({"path": None, "hub": "org/x", "layout": "parquet"}, ["layout 'parquet'", "'wikitext'", "'jsonl'"]),
], ids=["streaming-without-hub", "parquet-from-hub"])
def test_source_settings_that_cannot_work_fail_at_config_time(corpus, expected):
    with pytest.raises(ConfigError) as err:
        from_dict({"corpus": corpus})
    for part in expected:
        assert part in _one_line(err)


# ---- streaming from the hub ---------------------------------------------------------------------------------------
def _fake_hub(monkeypatch, tmp_path: Path, rows: Path) -> dict:
    """datasets.load_dataset / load_dataset_builder answered from a local JSON Lines file: no network."""
    import datasets

    real_load, real_builder = datasets.load_dataset, datasets.load_dataset_builder
    calls: dict[str, tuple] = {}

    def load_dataset(name, config=None, split=None):
        calls["load_dataset"] = (name, config, split)
        return real_load("json", data_files=str(rows), split=split, cache_dir=str(tmp_path / "hf"))

    def load_dataset_builder(name, config=None):
        calls["load_dataset_builder"] = (name, config)
        return real_builder("json", data_files=str(rows), cache_dir=str(tmp_path / "hf"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "load_dataset_builder", load_dataset_builder)
    return calls


@pytest.mark.parametrize("layout", ["jsonl", "wikitext"])
def test_streaming_gives_the_documents_of_the_download(tmp_path, monkeypatch, shared_data, reuters_lines, layout):
    if layout == "jsonl":
        rows = _write(tmp_path / "rows.jsonl", "\n".join(reuters_lines) + "\n")
    else:  # a hub dataset of WikiText lines, one row per line as Salesforce/wikitext has them
        with (shared_data / "corpora" / "wikitext-2-raw" / "wiki.valid.raw").open(encoding="utf-8") as handle:
            lines = [next(handle) for _ in range(400)]
        rows = _write(tmp_path / "rows.jsonl", "".join(json.dumps({"text": line}) + "\n" for line in lines))
    calls = _fake_hub(monkeypatch, tmp_path, rows)
    hub = {"path": None, "hub": "org/corpus", "hub_config": "cfg", "hub_split": "train", "layout": layout,
           "validation_fraction": 0.2}
    downloaded = build_corpus(_config(tmp_path, **hub))
    streamed = build_corpus(_config(tmp_path, **hub, hub_streaming=True))
    assert calls == {"load_dataset": ("org/corpus", "cfg", "train"), "load_dataset_builder": ("org/corpus", "cfg")}
    assert not streamed.cache_hits.tokens  # built from the stream, not read back from the download's entry
    assert len(streamed.train) > 1 and len(streamed.validation) >= 1
    for split in ("train", "validation"):
        assert getattr(streamed, split)["doc_id"] == getattr(downloaded, split)["doc_id"]
        assert getattr(streamed, split)["sentences"] == getattr(downloaded, split)["sentences"]


def test_streaming_stops_at_max_documents_and_is_keyed_by_revision(tmp_path, monkeypatch):
    import datasets

    pulled: list[int] = []
    revision = {"hash": "1111aaaa"}

    def rows():
        for i in range(1_000):
            pulled.append(i)
            yield {"text": f"Document {i} starts.\nIt ends here.", "title": f"t{i}"}

    def load_dataset_builder(name, config=None):
        stream = datasets.IterableDataset.from_generator(rows)
        return SimpleNamespace(hash=revision["hash"], as_streaming_dataset=lambda split: stream)

    monkeypatch.setattr(datasets, "load_dataset_builder", load_dataset_builder)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("a stream downloaded the dataset"))
    config = _config(tmp_path, path=None, hub="org/big", layout="jsonl", hub_streaming=True, max_documents=5)
    built = build_corpus(config)
    assert built.train["doc_id"] == [f"org/big/default/train:{i}" for i in range(5)]
    assert len(pulled) < 50  # the stream was not read to its end
    assert build_corpus(config).cache_hits.tokens
    revision["hash"] = "2222bbbb"  # a new commit on the hub: a new corpus entry
    assert build_corpus(config).corpus_digest != built.corpus_digest


def test_hub_streaming_keeps_run_ids_unless_set():
    hub = {"path": None, "hub": "org/x", "layout": "jsonl", "segmenter": "pysbd"}
    # ids computed by the config.py of commit 0965983, before corpus.hub_streaming existed (pysbd the default then)
    assert from_dict({"corpus": {"segmenter": "pysbd"}}).run_id() == "f257c67247"
    assert from_dict({"corpus": hub}).run_id() == "0c71568d5e"
    assert from_dict({"corpus": {**hub, "hub_streaming": True}}).run_id() != "0c71568d5e"
