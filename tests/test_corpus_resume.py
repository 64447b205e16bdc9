"""The corpus build in resumable shards: the same cache entries as the build in one piece, a build interrupted
(Ctrl-C, a full disk) keeps its finished shards and a rerun computes only the others, one progress bar per stage.

The oracle is harness/data/corpus.py as committed before sharding (ORACLE_COMMIT), read from git: one datasets.map
per stage over all documents. A 60-document Reuters slice in shards of 16 documents (4 shards: 16, 16, 16, 12)
must give the same segments and corpus entries: the same keys, rows, order, features and settings files.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import subprocess
import sys
import types
from pathlib import Path

import datasets
import numpy as np
import pytest

from harness.config import from_dict
from harness.data import cache as cache_module
from harness.data import corpus as corpus_module
from harness.data import examples as examples_module
from harness.data import segment as segment_module
from harness.data.corpus import build_corpus
from harness.data.documents import CorpusError
from harness.data.examples import PackingPlan, build_packed, load_packed
from harness.data.specials import SpecialTokens

ORACLE_COMMIT = "8fdfd490f8846e69e498fac192a2b2de16f43dc1"  # the last commit that built each stage in one map
REPO = Path(__file__).resolve().parents[1]
REUTERS = {"layout": "jsonl", "path": "corpora/reuters.jsonl", "max_documents": 60,
           "segmenter": "pysbd"}  # the oracle commit predates sentencex
SHARD = 16  # 60 documents -> shards [0, 16), [16, 32), [32, 48), [48, 60)


def _config(cache: Path, num_proc: int = 1, **corpus):
    return from_dict({"corpus": {**REUTERS, **corpus}, "tokenizer": {"vocab_size": 300},
                      "impl": {"cache_dir": str(cache), "num_proc": num_proc}})


def _committed_corpus_module() -> types.ModuleType:
    try:
        source = subprocess.run(["git", "show", f"{ORACLE_COMMIT}:harness/data/corpus.py"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"the oracle needs git history with commit {ORACLE_COMMIT[:7]}")
    module = types.ModuleType("committed_corpus")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the class is made
    try:
        exec(compile(source, f"{ORACLE_COMMIT[:7]}:harness/data/corpus.py", "exec"), module.__dict__)
    finally:
        sys.modules.pop(module.__name__, None)
    return module


@pytest.fixture(scope="module")
def reference(shared_data, tmp_path_factory):
    """The 60-document slice built by the committed code, in one piece."""
    cache = tmp_path_factory.mktemp("oracle")
    return _committed_corpus_module().build_corpus(_config(cache), shared_data)


@pytest.fixture
def shards(monkeypatch):
    monkeypatch.setattr(corpus_module, "SHARD_DOCUMENTS", SHARD)


def _entry(cache_dir: Path, stage: str) -> Path:
    [entry] = [p for p in (cache_dir / stage).iterdir() if not p.name.startswith(".") and p.is_dir()]
    return entry


def _assert_same_entries(built, reference) -> None:
    """Same segments and corpus entries (key, rows in order, features, settings), no shard or scratch left."""
    assert built.cache_dir.name == reference.cache_dir.name
    for split in ("train", "validation"):
        got, want = getattr(built, split), getattr(reference, split)
        assert got.features == want.features
        assert got.to_list() == want.to_list()
    root, oracle_root = built.cache_dir.parents[1], reference.cache_dir.parents[1]
    for stage, entry in (("corpora", built.cache_dir), ("segments", _entry(root, "segments"))):
        oracle_entry = reference.cache_dir if stage == "corpora" else _entry(oracle_root, "segments")
        assert entry.name == oracle_entry.name
        assert (entry / "harness-settings.json").read_text() == (oracle_entry / "harness-settings.json").read_text()
        assert sorted(p.name for p in (root / stage).iterdir() if not p.name.startswith(".")) == [entry.name]
    got, want = datasets.load_from_disk(str(_entry(root, "segments"))), datasets.load_from_disk(
        str(_entry(oracle_root, "segments")))
    assert got.features == want.features and got.to_list() == want.to_list()
    assert not list((root / "tmp").iterdir())


def _count_documents(monkeypatch, module, name: str, stop_at: int | None = None,
                     error: BaseException = KeyboardInterrupt()) -> list[str]:
    """Record the doc_ids each call of module.name maps; raise `error` instead once `stop_at` documents are done."""
    seen: list[str] = []
    original = getattr(module, name)

    def counted(batch, *args, **kwargs):
        if stop_at is not None and len(seen) >= stop_at:
            raise error
        seen.extend(batch["doc_id"])
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return seen


@pytest.fixture
def progress_bars():
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    yield
    if not was_enabled:
        datasets.disable_progress_bars()


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_build_in_shards_gives_the_entries_of_the_build_in_one_piece(shared_data, tmp_path, reference, shards,
                                                                        num_proc):
    built = build_corpus(_config(tmp_path, num_proc), shared_data)
    assert len(built.train) + len(built.validation) == 60 and len(built.validation) > 0
    _assert_same_entries(built, reference)


@pytest.mark.parametrize("stage, stop_at, recomputed", [("segmenting", 2 * SHARD, (60 - 2 * SHARD, 60)),
                                                        ("tokenizing", 3 * SHARD, (0, 60 - 3 * SHARD))])
def test_an_interrupted_build_resumes_and_computes_only_the_unfinished_shards(
        shared_data, tmp_path, reference, shards, monkeypatch, caplog, capsys, progress_bars, stage, stop_at,
        recomputed):
    config = _config(tmp_path)
    target = (segment_module, "segment_batch") if stage == "segmenting" else (corpus_module, "tokenize_batch")
    with monkeypatch.context() as patch:
        _count_documents(patch, *target, stop_at=stop_at)
        with pytest.raises(KeyboardInterrupt):
            build_corpus(config, shared_data)
    [partial] = (tmp_path / ("segments" if stage == "segmenting" else "corpora")).glob("*.partial")
    finished = stop_at // SHARD
    assert sorted(p.name for p in partial.iterdir()) == [f"shard-{i:05d}" for i in range(finished)]
    record = json.loads((partial / "shard-00001" / "harness-shard.json").read_text())
    assert record == {"key": partial.name.removesuffix(".partial"), "shard": 1, "documents": [16, 32], "of": 60}
    assert not list((tmp_path / "tmp").iterdir())
    capsys.readouterr()

    segmented = _count_documents(monkeypatch, segment_module, "segment_batch")
    tokenized = _count_documents(monkeypatch, corpus_module, "tokenize_batch")
    with caplog.at_level(logging.WARNING, logger="harness.data.cache"):
        resumed = build_corpus(config, shared_data)
    assert (len(segmented), len(tokenized)) == recomputed
    assert f"{stage}: resuming: {finished} of 4 shards done" in caplog.text
    bars = capsys.readouterr().err
    assert f"{stage}: " in bars and f"{stop_at}/60" in bars and "60/60" in bars  # one bar, from where it stopped
    assert not re.search(rf"{stage}: .*examples/s", bars)  # no datasets bar per shard
    assert not partial.exists()
    _assert_same_entries(resumed, reference)


def test_a_stage_of_one_shard_keeps_the_bar_of_the_datasets_library(shared_data, tmp_path, capsys, progress_bars):
    """Its bar moves within the shard; a bar over shards would sit at 0 until the stage ends."""
    build_corpus(_config(tmp_path), shared_data)  # 60 documents: one shard of SHARD_DOCUMENTS
    bars = capsys.readouterr().err
    assert re.search(r"segmenting: 100%[^\n]*60/60[^\n]*examples/s", bars) and " docs/s" not in bars


def test_a_full_disk_keeps_the_finished_shards_and_names_them_in_one_line(shared_data, tmp_path, reference, shards,
                                                                         monkeypatch):
    config = _config(tmp_path)
    saves = []
    original = cache_module._save_shard

    def disk_fills_at_the_third_shard(shard, folder, record):
        saves.append(record["shard"])
        if len(saves) == 3:
            (folder / "half-written.arrow").write_bytes(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        original(shard, folder, record)

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "_save_shard", disk_fills_at_the_third_shard)
        with pytest.raises(CorpusError) as err:
            build_corpus(config, shared_data)
    message = str(err.value)
    [partial] = (tmp_path / "segments").glob("*.partial")
    assert "\n" not in message and message.startswith("corpus.path = 'corpora/reuters.jsonl': segmenting: ")
    assert "no space left" in message and f"2 of 4 shards finished and kept in {partial}" in message
    assert "rerun the same command to resume" in message and "needs about" in message
    assert sorted(p.name for p in partial.iterdir()) == ["shard-00000", "shard-00001"]  # the third is gone
    assert not list((tmp_path / "segments").glob(".*.tmp-*")) and not list((tmp_path / "tmp").iterdir())

    segmented = _count_documents(monkeypatch, segment_module, "segment_batch")
    resumed = build_corpus(config, shared_data)
    assert len(segmented) == 60 - 2 * SHARD
    assert segmented == [row["doc_id"] for row in datasets.load_from_disk(
        str(_entry(tmp_path, "segments")))][2 * SHARD:]  # the documents of shards 2 and 3, in order
    _assert_same_entries(resumed, reference)


def test_shards_cut_at_another_size_are_not_reused(shared_data, tmp_path, reference, shards, monkeypatch, caplog):
    config = _config(tmp_path)
    with monkeypatch.context() as patch:
        _count_documents(patch, segment_module, "segment_batch", stop_at=2 * SHARD)
        with pytest.raises(KeyboardInterrupt):
            build_corpus(config, shared_data)
    monkeypatch.setattr(corpus_module, "SHARD_DOCUMENTS", 20)
    segmented = _count_documents(monkeypatch, segment_module, "segment_batch")
    with caplog.at_level(logging.WARNING, logger="harness.data.cache"):
        rebuilt = build_corpus(config, shared_data)
    assert len(segmented) == 60 and "resuming" not in caplog.text
    _assert_same_entries(rebuilt, reference)


def test_shards_that_fail_the_sentence_check_are_dropped(tmp_path, monkeypatch):
    """The fix (another file, another segmenter) changes the key: such shards would never be reused."""
    monkeypatch.setattr(corpus_module, "SHARD_DOCUMENTS", 2)
    saved = []
    original = cache_module._save_shard
    monkeypatch.setattr(cache_module, "_save_shard", lambda *args: saved.append(1) or original(*args))
    path = tmp_path / "flat.jsonl"
    path.write_text("".join(json.dumps({"text": f"just some words without any end number {i}"}) + "\n"
                            for i in range(6)))
    config = from_dict({"corpus": {"layout": "jsonl", "path": str(path)}, "tokenizer": {"vocab_size": 300},
                        "impl": {"cache_dir": str(tmp_path / "cache")}})
    with pytest.raises(CorpusError, match="single sentence"):
        build_corpus(config)
    assert len(saved) == 3 and not list((tmp_path / "cache" / "segments").glob("*.partial"))


# ---- packing's progress bar ------------------------------------------------------------------------------------------
SPECIALS = SpecialTokens("bert", cls_id=1, sep_id=2, pad_id=0, mask_id=3, unk_id=4, vocab_size=100,
                         all_ids=frozenset(range(5)))


def test_packing_shows_a_bar_over_its_documents_only_when_large_and_packs_the_same_rows(tmp_path, monkeypatch,
                                                                                        capsys, progress_bars):
    rng = np.random.default_rng(0)
    documents = [[rng.integers(5, 100, size=rng.integers(3, 12)).tolist() for _ in range(rng.integers(1, 6))]
                 for _ in range(30)]
    plan = PackingPlan.create(packing="segment_pair", max_seq_length=24, nsp=True, short_seq_prob=0.1, seed=1,
                              static_copies=2)
    quiet = build_packed(documents, plan, SPECIALS, tmp_path / "quiet", "hand-made")
    assert "packing" not in capsys.readouterr().err  # 60 documents: below PROGRESS_DOCUMENTS
    monkeypatch.setattr(examples_module, "PROGRESS_DOCUMENTS", 50)
    shown = build_packed(documents, plan, SPECIALS, tmp_path / "shown", "hand-made")
    bar = capsys.readouterr().err
    assert "packing: " in bar and "60/60" in bar  # two copies of 30 documents
    for name in ("ids", "offsets", "a_lengths", "nsp", "copy", "first_document", "boundaries"):
        assert np.array_equal(getattr(shown, name), getattr(quiet, name)), name
    assert len(load_packed(tmp_path / "shown")) == len(quiet) > 0
