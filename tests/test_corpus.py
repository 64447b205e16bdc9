"""Corpora: the three local layouts and the hub path, sentence segmentation, the held-out split, the two-stage
cache (segments apart from tokens, each entry built by one process at a time) and the one-line errors for bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from harness.cli import main
from harness.config import ConfigError, HarnessError, from_dict
from harness.data import corpus as corpus_module
from harness.data import documents as documents_module
from harness.data import readers
from harness.data import segment as segment_module
from harness.data.cache import build_lock, lock_path
from harness.data.corpus import CacheHits, build_corpus, split_stats
from harness.data.documents import CorpusError, load_documents, validation_mask
from harness.data.readers import split_wikitext_articles
from harness.data.segment import segment_text, split_paragraphs

WIKI = "corpora/wikitext-2-raw"


def _config(tmp_path: Path | None = None, **sections):
    data = {"corpus": {}, "tokenizer": {"vocab_size": 1000}, "impl": {}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    if tmp_path is not None:
        data["impl"].setdefault("cache_dir", str(tmp_path / "cache"))
    return from_dict(data)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ---- WikiText articles (pure) --------------------------------------------------------------------------------------
def test_wikitext_articles_keep_title_drop_headings_and_ignore_formula_lines():
    lines = [" ", " = First Article = ", " ", " Intro paragraph . It has two sentences . ", " ",
             " = = History = = ", " ", " Second paragraph . ", " The value k", " = 1 henry and C = ", " 1 farad . ",
             " ", " ", " = Second Article = ", " ", " Only text . ", ""]
    articles = list(split_wikitext_articles(lines))
    assert [title for title, _ in articles] == ["First Article", "Second Article"]
    first = articles[0][1].split("\n\n")
    assert first == ["Intro paragraph . It has two sentences .", "Second paragraph .", "The value k",
                     "= 1 henry and C =", "1 farad ."]
    assert "History" not in articles[0][1]
    assert articles[1][1] == "Only text ."


def test_wikitext_text_before_first_title_is_an_untitled_article():
    articles = list(split_wikitext_articles(["Preamble line .", "", " = Title = ", "", "Body ."]))
    assert articles == [("", "Preamble line ."), ("Title", "Body .")]


# ---- segmentation (pure) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("Mr. Smith went to Washington. He arrived on Jan. 5. The U.S. Senate met him.",
     ["Mr. Smith went to Washington.", "He arrived on Jan. 5.", "The U.S. Senate met him."]),
    ("Is it raining? Yes! It is pouring.", ["Is it raining?", "Yes!", "It is pouring."]),
    ('"Come here," she said. "Now!" He came.', ['"Come here," she said.', '"Now!"', "He came."]),
    ("Prices rose 3.5 pct. Analysts at Morgan Stanley Inc. were surprised.",
     ["Prices rose 3.5 pct.", "Analysts at Morgan Stanley Inc. were surprised."]),
    # a paragraph boundary ends a sentence even without punctuation; a hard wrap inside a paragraph does not
    ("A heading without a period\n\nThe body starts here. It ends here.",
     ["A heading without a period", "The body starts here.", "It ends here."]),
    ("A hard-wrapped sentence that\ncontinues on the next line. A second\r\nsentence wraps too.",
     ["A hard-wrapped sentence that continues on the next line.", "A second sentence wraps too."]),
    ("  \n\n   \n", []),
], ids=["abbreviations", "question-exclamation", "quotes", "numbers-and-inc", "paragraphs", "hard-wraps", "empty"])
def test_pysbd_segmentation(text, expected):
    assert segment_text(text, "pysbd") == expected


def test_newline_segmenter_is_one_sentence_per_nonempty_line():
    text = "First line. Still the first.\n\n  second   line \nthird"
    assert segment_text(text, "newline") == ["First line. Still the first.", "second line", "third"]


def test_split_paragraphs_collapses_wraps_and_layout_whitespace():
    assert split_paragraphs("  a\n   b\n \t\n\nc  d\n") == ["a b", "c d"]


# ---- held-out split (pure)
def test_validation_mask_is_a_function_of_the_doc_ids_only():
    ids = [f"doc-{i}" for i in range(200)]
    mask = validation_mask(ids, 0.05)
    assert sum(mask) == 10
    held = {d for d, m in zip(ids, mask, strict=True) if m}
    reversed_ids = ids[::-1]
    held_reversed = {d for d, m in zip(reversed_ids, validation_mask(reversed_ids, 0.05), strict=True) if m}
    assert held == held_reversed  # independent of order (and there is no seed to depend on)
    assert held != set(ids[:10]) and held != set(ids[-10:])  # not simply the first or last documents


def test_validation_mask_holds_out_at_least_one_and_refuses_to_leave_no_training_document():
    assert sum(validation_mask(["a", "b", "c"], 0.01)) == 1
    assert validation_mask(["a", "b"], 0.0) == [False, False]
    with pytest.raises(CorpusError) as err:
        validation_mask(["only"], 0.05)
    assert "validation_fraction" in _one_line(err)


# ---- real data: document counts (no segmentation needed) -----------------------------------------------------------
@pytest.mark.parametrize(("layout", "path", "count", "first_title"), [
    ("wikitext", f"{WIKI}/wiki.valid.raw", 60, "Homarus gammarus"),
    # the data README says 62: it counts the two formula lines ' = 1 rad / s and a nominal impedance k = ' and
    # ' = 1 henry and capacitance C = ' inside 'Constant k filter' as titles. WikiText-2's test split has 60 articles.
    ("wikitext", f"{WIKI}/wiki.test.raw", 60, "Robert Boulter"),
    ("jsonl", "corpora/reuters.jsonl", 10_788, "BAHIA COCOA REVIEW"),
    ("text_dir", "corpora/gutenberg", 10, "Poems by William Blake 1789"),
])
def test_document_counts_of_the_shared_corpora(shared_data, tmp_path, layout, path, count, first_title):
    corpus = _config(corpus={"layout": layout, "path": path}).corpus
    docs = load_documents(corpus, shared_data, tmp_path, encoding_errors="replace")
    assert len(docs) == count
    assert docs[0]["title"] == first_title
    assert len(set(docs["doc_id"])) == count
    assert not docs[0]["text"].startswith("[")  # the Gutenberg title line is not part of the text


def test_wikitext_test_split_keeps_the_formula_lines_as_text(shared_data, tmp_path):
    corpus = _config(corpus={"path": f"{WIKI}/wiki.test.raw"}).corpus
    docs = load_documents(corpus, shared_data, tmp_path)
    filter_article = docs[docs["title"].index("Constant k filter")]["text"]
    assert "= 1 rad / s and a nominal impedance k =" in filter_article
    assert "= = Prototype transformations = = =" not in filter_article
    lines = (shared_data / WIKI / "wiki.test.raw").read_text(encoding="utf-8").splitlines()
    assert sum(readers._is_title(line.strip()) for line in lines) == 62  # the README's naive count


def test_max_documents_takes_the_first_documents(shared_data, tmp_path):
    corpus = _config(corpus={"layout": "jsonl", "path": "corpora/reuters.jsonl", "max_documents": 5}).corpus
    docs = load_documents(corpus, shared_data, tmp_path)
    assert docs["doc_id"] == [f"reuters.jsonl:{n}" for n in range(1, 6)]


def test_latin1_bytes_in_gutenberg_are_a_one_line_error_naming_file_byte_and_line(shared_data, tmp_path):
    # Two of the ten books carry stray Latin-1 bytes (chesterton-ball: "Brunetière" on line 4631; shakespeare-caesar:
    # "Cæsar"); strict decoding stops at the first one in path order.
    corpus = _config(corpus={"layout": "text_dir", "path": "corpora/gutenberg"}).corpus
    with pytest.raises(CorpusError) as err:
        load_documents(corpus, shared_data, tmp_path)
    message = _one_line(err)
    assert "chesterton-ball.txt" in message and "byte 227337" in message and "line 4631" in message


# ---- the build and its cache ---------------------------------------------------------------------------------------
def _count_calls(monkeypatch, module, name: str) -> list[int]:
    calls = [0]
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_build_corpus_then_cache_hits_and_which_settings_rebuild(shared_data, tmp_path, monkeypatch):
    reuters = {"layout": "jsonl", "path": "corpora/reuters.jsonl", "max_documents": 40}
    config = _config(tmp_path, corpus=reuters)
    segmented = _count_calls(monkeypatch, segment_module, "segment_batch")
    tokenized = _count_calls(monkeypatch, corpus_module, "tokenize_batch")

    cold = build_corpus(config, shared_data)
    assert (segmented[0] > 0, tokenized[0] > 0, cold.from_cache) == (True, True, False)
    stats = cold.stats()
    assert stats["validation"]["documents"] == 2 and stats["train"]["documents"] == 38
    assert stats["vocab_size"] == 1000 and stats["loaded_from_cache"] is False
    assert set(cold.train.column_names) == {"doc_id", "sentences", "paragraph_ends", "chars"}
    assert not set(cold.train["doc_id"]) & set(cold.validation["doc_id"])
    # sentences are token ids without special tokens and decode back to the segmented text
    specials = set(cold.tokenizer.all_special_ids)
    first = cold.train[0]
    assert all(specials.isdisjoint(sentence) for sentence in first["sentences"])
    text = json.loads((shared_data / "corpora/reuters.jsonl").open().readline())["text"]
    doc_index = int(first["doc_id"].split(":")[1])
    assert doc_index == 1
    sentences = segment_text(text, "pysbd")
    assert cold.tokenizer.decode(first["sentences"][0]) == sentences[0]
    # later sentences carry their leading space: the ids concatenate to those of the running text
    assert cold.tokenizer.decode(sum(first["sentences"], [])) == " ".join(sentences)

    segmented[0] = tokenized[0] = 0
    warm = build_corpus(config, shared_data)
    assert (segmented[0], tokenized[0], warm.from_cache) == (0, 0, True)
    assert warm.cache_dir == cold.cache_dir and warm.stats()["train"] == stats["train"]

    bigger_vocab = _config(tmp_path, corpus=reuters, tokenizer={"vocab_size": 1200})
    retokenized = build_corpus(bigger_vocab, shared_data)
    assert (segmented[0], tokenized[0] > 0) == (0, True)
    assert retokenized.cache_hits.segments and not retokenized.cache_hits.tokenizer
    assert retokenized.cache_dir != cold.cache_dir and len(retokenized.tokenizer) == 1200

    tokenized[0] = 0
    build_corpus(_config(tmp_path, corpus=reuters, tokenizer={"lowercase": True}), shared_data)
    assert (segmented[0], tokenized[0] > 0) == (0, True)

    fewer = build_corpus(_config(tmp_path, corpus={**reuters, "max_documents": 30}), shared_data)
    assert segmented[0] > 0 and fewer.stats()["train"]["documents"] == 28

    segmented[0] = 0
    by_line = build_corpus(_config(tmp_path, corpus={**reuters, "segmenter": "newline"}), shared_data)
    assert segmented[0] > 0 and by_line.stats()["train"]["sentences"] > stats["train"]["sentences"]
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # scratch files are cleaned up


def test_the_cache_follows_the_corpus_bytes_not_where_or_when_they_were_written(tmp_path, monkeypatch):
    """A corpus copied elsewhere (new times, new inode) keeps every cache; one changed byte rebuilds them. File
    hashes are remembered in the cache, so another process does not read an unchanged corpus again."""
    import hashlib
    import shutil

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(6):
        (texts / f"doc{i}.txt").write_text(f"[Story {i} by Someone 1900]\nThe river rose on day {i}. "
                                           f"People watched it rise. Boats number {i} were lost.\n")
    config = _config(tmp_path, corpus={"layout": "text_dir", "path": str(texts)}, tokenizer={"vocab_size": 300})
    cold = build_corpus(config)
    assert not cold.from_cache and len(cold.corpus_digest) == 16

    moved = tmp_path / "moved"
    shutil.copytree(texts, moved, copy_function=shutil.copyfile)  # new inodes and times, same bytes
    documents_module._DIGESTS.clear()  # as in a new process
    reads = _count_calls(monkeypatch, hashlib, "file_digest")
    at_moved = _config(tmp_path, corpus={"layout": "text_dir", "path": str(moved)}, tokenizer={"vocab_size": 300})
    warm = build_corpus(at_moved)
    assert warm.cache_hits == CacheHits(segments=True, tokenizer=True, tokens=True)
    assert warm.corpus_digest == cold.corpus_digest and warm.cache_dir == cold.cache_dir
    assert reads[0] == 6  # the copy is new to the memo

    documents_module._DIGESTS.clear()
    reads[0] = 0
    assert build_corpus(at_moved).corpus_digest == cold.corpus_digest and reads[0] == 0  # remembered in the cache

    (moved / "doc3.txt").write_text((moved / "doc3.txt").read_text().replace("river", "rivers"))
    edited = build_corpus(at_moved)
    assert not edited.cache_hits.tokenizer and not edited.from_cache and edited.corpus_digest != cold.corpus_digest
    assert reads[0] == 1  # only the changed file is read again


def _corpus_process(cache: Path, shared_data: Path, documents: int) -> subprocess.Popen:
    """`harness corpus` in a process of its own, as a sweep worker runs it."""
    args = ["--set", "corpus.layout=jsonl", "--set", "corpus.path=corpora/reuters.jsonl",
            "--set", f"corpus.max_documents={documents}", "--set", "tokenizer.vocab_size=1000",
            "--set", f"impl.cache_dir={cache}", "--data-dir", str(shared_data)]
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "corpus", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def test_two_processes_that_need_the_same_corpus_build_it_once(shared_data, tmp_path):
    """Two processes started together on a cold cache: each stage is built by one of them and read by the other
    (without the entry locks both build every stage: each reports every stage as not from the cache)."""
    processes = [_corpus_process(tmp_path / "cache", shared_data, documents=200) for _ in range(2)]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    first, second = (json.loads(out) for out, _ in outputs)
    for stage in ("tokenizer_from_cache", "segments_from_cache", "loaded_from_cache"):
        assert [first[stage], second[stage]].count(False) == 1, (stage, first[stage], second[stage])
    same = ("corpus_digest", "cache_dir", "tokenizer_dir", "train", "validation", "vocab_size")
    assert {k: first[k] for k in same} == {k: second[k] for k in same}
    for _, err in outputs:  # a waiting process says so once per entry it waits for
        waits = [line for line in err.splitlines() if "waiting for another process building" in line]
        assert len(waits) == len(set(waits)), waits


def _blocked_until_logged(entry: Path, caplog: pytest.LogCaptureFixture) -> tuple[threading.Thread, list[bool]]:
    """Enter build_lock(entry) in a thread; return once it has said it waits."""
    entered: list[bool] = []

    def enter() -> None:
        with build_lock(entry) as cached:
            entered.append(cached)

    thread = threading.Thread(target=enter, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "waiting for another process building" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    return thread, entered


def test_a_waiting_builder_says_so_once_then_reads_what_the_holder_built(tmp_path, caplog):
    entry = tmp_path / "segments" / "0123abcd"
    entry.parent.mkdir()
    holder = FileLock(lock_path(entry))
    holder.acquire()
    thread, entered = _blocked_until_logged(entry, caplog)
    assert thread.is_alive() and entered == []
    entry.mkdir()  # the holder publishes, then lets go
    holder.release()
    thread.join(10)
    assert entered == [True]  # re-checked after the wait: nothing is built again
    assert caplog.text.count("waiting for another process building") == 1 and str(entry) in caplog.text


def test_a_lock_left_by_a_killed_process_does_not_block_the_next_build(tmp_path, caplog):
    entry = tmp_path / "corpora" / "0123abcd"
    entry.parent.mkdir()
    hold = ("import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(120)")
    killed = subprocess.Popen([sys.executable, "-c", hold, str(lock_path(entry))], stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == "held"
        thread, entered = _blocked_until_logged(entry, caplog)
        assert thread.is_alive() and entered == []
    finally:
        killed.kill()  # SIGKILL: no clean-up runs, the OS drops the lock
        killed.wait()
    thread.join(10)
    assert entered == [False] and lock_path(entry).exists()


def test_wikitext_build_keeps_document_boundaries(shared_data, tmp_path):
    config = _config(tmp_path, corpus={"path": f"{WIKI}/wiki.valid.raw", "max_documents": 4,
                                       "validation_fraction": 0.25})
    built = build_corpus(config, shared_data)
    assert len(built.train) == 3 and len(built.validation) == 1
    doc_ids = sorted(list(built.train["doc_id"]) + list(built.validation["doc_id"]))
    assert doc_ids == [f"wiki.valid.raw:{i}" for i in range(4)]
    train = split_stats(built.train)
    assert train["sentences"] > 100 and 10 < train["mean_sentence_tokens"] < 80


@pytest.mark.parametrize(("kind", "num_proc"), [("bpe", 2), ("wordpiece", None)])  # 2: the flag must reach workers
def test_special_token_strings_in_the_text_are_not_special_ids(tmp_path, kind, num_proc):
    text = "Tags like </s>, <s>, <mask>, [SEP], [CLS] and [MASK] are text here. They must stay text."
    path = _write(tmp_path / "tags.jsonl", "\n".join(json.dumps({"text": text}) for _ in range(4)) + "\n")
    config = _config(tmp_path, corpus={"layout": "jsonl", "path": str(path)},
                     tokenizer={"kind": kind, "vocab_size": 300}, impl={"num_proc": num_proc})
    built = build_corpus(config)
    ids = {i for sentence in built.train[0]["sentences"] for i in sentence}
    assert ids and ids.isdisjoint(built.tokenizer.all_special_ids)


def test_no_validation_split_when_the_fraction_is_zero(tmp_path):
    path = _write(tmp_path / "two.jsonl", '{"text": "One. Two."}\n{"text": "Three. Four."}\n')
    config = _config(tmp_path, corpus={"layout": "jsonl", "path": str(path), "validation_fraction": 0.0},
                     tokenizer={"vocab_size": 300})
    for _ in range(2):  # built, then loaded back from the cache
        built = build_corpus(config)
        assert (len(built.train), len(built.validation)) == (2, 0)
        assert built.stats()["validation"]["documents"] == 0


# ---- the hub path --------------------------------------------------------------------------------------------------
def test_hub_offline_fails_fast_with_a_hint_and_no_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to open a connection while offline")

    monkeypatch.setattr(socket, "create_connection", no_network)
    corpus = _config(corpus={"path": None, "hub": "made-up-org/no-such-corpus-xyz"}).corpus
    with pytest.raises(CorpusError) as err:
        load_documents(corpus, None, tmp_path)
    message = _one_line(err)
    assert "made-up-org/no-such-corpus-xyz" in message and "offline" in message and "corpus.path" in message


def test_hub_without_network_fails_before_calling_the_hub_client(tmp_path, monkeypatch):
    import datasets

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub client was called"))
    corpus = _config(corpus={"path": None, "hub": "Salesforce/wikitext", "hub_config": "wikitext-2-raw-v1"}).corpus
    with pytest.raises(CorpusError) as err:
        load_documents(corpus, None, tmp_path)
    assert "cannot reach" in _one_line(err) and "corpus.path" in str(err.value)


def test_hub_rows_of_lines_are_regrouped_into_articles_and_rows_of_documents_kept(tmp_path, monkeypatch):
    import datasets

    lines = ["", " = Alpha = \n", "", " Alpha text . More . \n", "", " = = Part = = \n", "", " Part text . \n", "",
             " = Beta = \n", "", " Beta text . \n"]
    seen = {}

    def fake_load_dataset(name, config=None, split=None):
        seen.update(name=name, config=config, split=split)
        rows = {"text": lines} if config == "lines" else {"text": ["One. Two.", "", "Three."], "title": ["a", "b", "c"]}
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = _config(corpus={"path": None, "hub": "org/wiki", "hub_config": "lines", "hub_split": "test"}).corpus
    docs = load_documents(corpus, None, tmp_path / "a")
    assert seen == {"name": "org/wiki", "config": "lines", "split": "test"}
    assert docs["title"] == ["Alpha", "Beta"]
    assert docs[0]["text"] == "Alpha text . More .\n\nPart text ."
    assert docs["doc_id"] == ["org/wiki/lines/test:0", "org/wiki/lines/test:1"]

    as_documents = _config(corpus={"path": None, "hub": "org/docs", "layout": "jsonl"}).corpus
    docs = load_documents(as_documents, None, tmp_path / "b")
    assert docs["text"] == ["One. Two.", "Three."] and docs["title"] == ["a", "c"]


# ---- bad input: one-line errors
def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


GOOD = json.dumps({"id": 1, "text": "One sentence. Another one."})


@pytest.mark.parametrize(("name", "layout", "content", "expected"), [
    ("bad.jsonl", "jsonl", GOOD + "\n" + GOOD + "\n{\"text\": broken\n", ["bad.jsonl line 3", "not valid JSON"]),
    ("nofield.jsonl", "jsonl", GOOD + "\n" + json.dumps({"id": 2, "body": "x"}) + "\n",
     ["nofield.jsonl line 2", "no field 'text'", "corpus.text_field", "body, id"]),
    ("notobject.jsonl", "jsonl", "[1, 2]\n", ["notobject.jsonl line 1", "JSON object"]),
    ("latin1.jsonl", "jsonl", (GOOD + "\n").encode() + b'{"text": "caf\xe9"}\n',
     ["latin1.jsonl", f"byte {len(GOOD) + 1 + 13}", "line 2", "0xe9", "UTF-8"]),
    ("empty.jsonl", "jsonl", "\n" + json.dumps({"text": "   "}) + "\n", ["empty.jsonl", "empty"]),
    ("plain.txt", "wikitext", "Just text. No titles here.\n", ["plain.txt", "no article title lines", "layout"]),
    ("empty.raw", "wikitext", "", ["empty.raw", "empty"]),
], ids=["malformed-json", "missing-text-field", "not-an-object", "non-utf8", "empty-jsonl", "no-titles", "empty-file"])
def test_bad_corpus_files_give_one_line_errors(tmp_path, name, layout, content, expected):
    path = _write(tmp_path / "data" / name, content)
    corpus = _config(corpus={"layout": layout, "path": str(path)}).corpus
    with pytest.raises(CorpusError) as err:
        load_documents(corpus, None, tmp_path / "work")
    message = _one_line(err)
    for part in expected:
        assert part in message


def test_missing_corpus_file_names_the_setting_and_the_paths_tried(tmp_path):
    config = _config(tmp_path, corpus={"path": "corpora/nope.raw"})
    with pytest.raises(ConfigError) as err:
        build_corpus(config, tmp_path)
    message = _one_line(err)
    assert "corpus.path = 'corpora/nope.raw'" in message and str(tmp_path / "corpora/nope.raw") in message


def test_layout_and_path_kind_must_agree(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    with pytest.raises(CorpusError) as err:
        load_documents(_config(corpus={"layout": "jsonl", "path": str(folder)}).corpus, None, tmp_path / "w")
    assert "text_dir" in _one_line(err)
    with pytest.raises(CorpusError) as err:
        load_documents(_config(corpus={"layout": "text_dir", "path": str(_write(folder / "a.txt", "x"))}).corpus,
                       None, tmp_path / "w")
    assert "needs a folder" in _one_line(err)


def test_corpus_without_sentence_boundaries_suggests_the_newline_segmenter(tmp_path):
    docs = [json.dumps({"text": f"just some words without any end number {i}"}) for i in range(6)]
    path = _write(tmp_path / "flat.jsonl", "\n".join(docs) + "\n")
    config = _config(tmp_path, corpus={"layout": "jsonl", "path": str(path), "validation_fraction": 0.2},
                     tokenizer={"vocab_size": 300})
    with pytest.raises(CorpusError) as err:
        build_corpus(config)
    message = _one_line(err)
    assert "single sentence" in message and "corpus.segmenter = 'newline'" in message and "flat.jsonl" in message


def test_unwritable_cache_dir_is_a_one_line_error(tmp_path):
    blocker = _write(tmp_path / "a-file", "not a folder")
    config = _config(corpus={"path": str(tmp_path)}, impl={"cache_dir": str(blocker / "cache")})
    with pytest.raises(ConfigError) as err:
        build_corpus(config)
    assert "impl.cache_dir" in _one_line(err) and "not writable" in str(err.value)


def test_cli_corpus_reports_bad_input_on_one_line(tmp_path, capsys):
    path = _write(tmp_path / "bad.jsonl", GOOD + "\nnot json\n")
    code = main(["corpus", "--set", "corpus.layout=jsonl", "--set", f"corpus.path={path}",
                 "--set", f"impl.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "bad.jsonl line 2" in err


def test_corpus_errors_are_harness_errors():
    assert issubclass(CorpusError, HarnessError) and issubclass(CorpusError, ValueError)


# ---- sentencex segmenter, impl.num_proc resolution (issue 24) ------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("Mr. Smith went to Washington. He arrived at 5 p.m. yesterday.\n\nIt rained. \"Why?\" he asked.",
     [["Mr. Smith went to Washington.", "He arrived at 5 p.m. yesterday."], ["It rained.", '"Why?" he asked.']]),
    ("A hard-wrapped sentence that\ncontinues. Prices rose 3.5 pct in Jan. 1987!",
     [["A hard-wrapped sentence that continues.", "Prices rose 3.5 pct in Jan. 1987!"]]),
    # where it parts from pysbd on Reuters: no end after a company's "Co." (pysbd: two sentences) ...
    ("He works for the Larsen Co. Dean said so.", [["He works for the Larsen Co. Dean said so."]]),
    # ... and an end after "U.S." before a capital (pysbd: one sentence)
    ("Prices are up in the U.S. And Canada too.", [["Prices are up in the U.S.", "And Canada too."]]),
], ids=["abbreviations-paragraphs-quotes", "wraps-and-numbers", "co-kept", "us-split"])
def test_sentencex_segmentation(text, expected):
    assert segment_module.segment_paragraphs(text, "sentencex") == expected


def _boundaries(built, split: str) -> set[tuple[str, int]]:
    """(doc id, non-whitespace characters before the end) of every sentence end inside a paragraph: comparable
    across segmentations, whose token streams may differ by a space token where they cut differently."""
    from harness.data.segment import visible_chars

    data = getattr(built, split)
    ends = set()
    for doc_id, sentences, paragraph_ends in zip(data["doc_id"], data["sentences"], data["paragraph_ends"],
                                                 strict=True):
        offset = 0
        for ids, paragraph_end in zip(sentences, paragraph_ends, strict=True):
            offset += visible_chars(built.tokenizer.decode(ids))
            if not paragraph_end:
                ends.add((doc_id, offset))
    return ends


def test_sentencex_corpus_has_its_own_key_and_finds_most_of_pysbds_ends(shared_data, tmp_path):
    from importlib.metadata import version

    import pysbd

    reuters = {"layout": "jsonl", "path": "corpora/reuters.jsonl", "max_documents": 30}
    by_pysbd = build_corpus(_config(tmp_path, corpus={**reuters, "segmenter": "pysbd"}, tokenizer={"vocab_size": 300}),
                            shared_data)
    fast = build_corpus(_config(tmp_path, corpus={**reuters, "segmenter": "sentencex"},
                                tokenizer={"vocab_size": 300}), shared_data)
    assert fast.cache_dir != by_pysbd.cache_dir and not fast.cache_hits.segments
    assert fast.cache_hits.tokenizer  # the tokenizer trains on paragraphs: the segmenter does not shape it
    stats = fast.stats()["train"]
    assert stats["sentences"] > 3 * stats["documents"]
    reference, found = _boundaries(by_pysbd, "train"), _boundaries(fast, "train")
    assert len(reference) > 100 and len(reference & found) / len(reference) > 0.9
    assert found != reference  # they do differ (Co., U.S.): the share above is not trivially 1

    # the segments key: sentencex's version only for sentencex; pysbd's and newline's keys exactly as before
    source = {"id": "x"}
    corpus = _config(corpus={**reuters, "segmenter": "sentencex"}).corpus
    assert corpus_module.segments_settings(corpus, source)["sentencex"] == version("sentencex")
    for segmenter, pysbd_version in (("pysbd", pysbd.__version__), ("newline", None)):
        corpus = _config(corpus={**reuters, "segmenter": segmenter}).corpus
        assert corpus_module.segments_settings(corpus, source) == {
            "version": corpus_module.CORPUS_CACHE_VERSION, "source": source, "segmenter": segmenter,
            "pysbd": pysbd_version}


def test_corpus_without_sentence_boundaries_under_sentencex_suggests_the_newline_segmenter(tmp_path):
    docs = [json.dumps({"text": f"just some words without any end number {i}"}) for i in range(6)]
    path = _write(tmp_path / "flat.jsonl", "\n".join(docs) + "\n")
    config = _config(tmp_path, corpus={"layout": "jsonl", "path": str(path), "validation_fraction": 0.2,
                                       "segmenter": "sentencex"}, tokenizer={"vocab_size": 300})
    with pytest.raises(CorpusError) as err:
        build_corpus(config)
    message = _one_line(err)
    assert "corpus.segmenter = 'sentencex'" in message and "set corpus.segmenter = 'newline'" in message


def test_num_proc_null_uses_the_cores_but_not_on_small_corpora(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    auto = _config()
    resolved = {n: corpus_module._num_proc(auto, n) for n in (None, 0, 300, 1999, 2000, 5500, 10**6)}
    assert resolved == {None: None, 0: None, 300: None, 1999: None, 2000: 2, 5500: 5, 10**6: 8}
    # a set value wins, whatever the corpus size; 1 means no worker pool
    assert corpus_module._num_proc(_config(impl={"num_proc": 3}), 10) == 3
    assert corpus_module._num_proc(_config(impl={"num_proc": 1}), 10**6) is None
    # without CPU affinity (macOS, Windows) the CPU count
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert corpus_module._num_proc(auto, 10**6) == 4


def test_num_proc_does_not_change_the_tokenized_corpus(shared_data, tmp_path, monkeypatch):
    # Two cores and a smaller share per process, so that null means 2 processes on this 300-document slice.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(corpus_module, "_DOCS_PER_PROCESS", 100)
    resolved: list[int | None] = []
    original = corpus_module._num_proc
    monkeypatch.setattr(corpus_module, "_num_proc", lambda *a: resolved.append(original(*a)) or resolved[-1])
    reuters = {"layout": "jsonl", "path": "corpora/reuters.jsonl", "max_documents": 300, "segmenter": "sentencex"}
    built = {}
    for n in (None, 1, 2):
        resolved.clear()
        built[n] = build_corpus(_config(tmp_path / str(n), corpus=reuters, tokenizer={"vocab_size": 300},
                                        impl={"num_proc": n}), shared_data)
        assert set(resolved) == {None if n == 1 else 2}, (n, resolved)  # what reached datasets.map
    assert len({b.cache_dir.name for b in built.values()}) == 1  # impl is not part of the corpus key
    for split in ("train", "validation"):
        tables = [getattr(b, split).to_dict() for b in built.values()]
        assert len(tables[0]["doc_id"]) > 10 and tables[0] == tables[1] == tables[2]
