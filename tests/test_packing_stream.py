"""Packing streams from the tokenized corpus on disk: the same rows as packing the corpus held in memory, with at
most one shard of documents alive at once.

The oracle is the in-memory implementation as committed before streaming (ORACLE_COMMIT), read from git: every
row, NSP label, segment-A length, copy number and source document must match, on the first 400 Reuters documents,
for the four formats, static copies re-drawn (data.static_mode redraw: plan.copies > 1) or not (masks_only and
dynamic masking: one packing), and shards far smaller than the split so that NSP partners lie in other shards.
"""

from __future__ import annotations

import subprocess
import sys
import types
import weakref
from pathlib import Path

import numpy as np
import pytest

from harness.config import load_config
from harness.data.document_views import ArrowDocuments, document_view
from harness.data.examples import PackedExamples, PackingPlan, build_packed
from harness.data.packing import CorpusDocuments
from harness.data.specials import SpecialTokens

ORACLE_COMMIT = "a56d44451008e4261253e49fdaec752e51af7e85"  # the last commit that packed in memory
REPO = Path(__file__).resolve().parents[1]


def committed_module(name: str, path: str, replace: dict[str, str]) -> types.ModuleType:
    try:
        source = subprocess.run(["git", "show", f"{ORACLE_COMMIT}:{path}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"the oracle needs git history with commit {ORACLE_COMMIT[:7]}")
    for old, new in replace.items():
        source = source.replace(old, new)
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    exec(compile(source, f"{ORACLE_COMMIT[:7]}:{path}", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def in_memory_build_packed():
    packing = committed_module("committed_packing", "harness/data/packing.py", {})
    examples = committed_module("committed_examples", "harness/data/examples.py",
                                {"from harness.data.packing import": "from committed_packing import"})

    def build(documents, *args):
        if isinstance(documents, CorpusDocuments):  # the committed code checks for its own class
            documents = packing.CorpusDocuments(documents.sentences, documents.paragraph_ends)
        return examples.build_packed(documents, *args)

    yield build
    for name in ("committed_packing", "committed_examples"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def reuters(shared_data, tmp_path_factory):
    """The first 400 Reuters articles through the real corpus path (sentencex sentences, a BPE vocabulary)."""
    from harness.data.corpus import build_corpus

    cache = tmp_path_factory.mktemp("stream-cache")
    config = load_config(overrides=["corpus.layout=jsonl", "corpus.path=corpora/reuters.jsonl",
                                    "corpus.max_documents=400", "tokenizer.vocab_size=2000", f"impl.cache_dir={cache}"])
    corpus = build_corpus(config, shared_data)
    return corpus, SpecialTokens.from_tokenizer(corpus.tokenizer)


def plan(packing: str, *, nsp: bool = False, copies: int = 1, separators: str = "document") -> PackingPlan:
    return PackingPlan.create(packing=packing, max_seq_length=64, nsp=nsp, short_seq_prob=0.1, seed=3,
                              static_copies=copies, separators=separators)


def assert_same_rows(streamed: PackedExamples, in_memory: PackedExamples) -> None:
    for name in PackedExamples.__dataclass_fields__:
        got, want = np.asarray(getattr(streamed, name)), np.asarray(getattr(in_memory, name))
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


PLANS = {  # redraw: each static copy re-draws its pairs; masks_only (and dynamic): one packing
    "segment_pair-nsp-redraw": plan("segment_pair", nsp=True, copies=3),
    "segment_pair-nsp-masks_only": plan("segment_pair", nsp=True),
    "segment_pair-redraw": plan("segment_pair", copies=2),
    "sentence_pair-nsp-redraw": plan("sentence_pair", nsp=True, copies=3),
    "sentence_pair-nsp-masks_only": plan("sentence_pair", nsp=True),
    "sentence_pair": plan("sentence_pair"),
    "full_sentences": plan("full_sentences", copies=3),  # deterministic: one copy stored
    "full_sentences-fairseq": plan("full_sentences", separators="fairseq"),
    "doc_sentences": plan("doc_sentences"),
    "doc_sentences-fairseq": plan("doc_sentences", separators="fairseq"),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_streamed_packing_equals_in_memory_packing_on_reuters(name, reuters, in_memory_build_packed, tmp_path):
    corpus, specials = reuters
    documents = corpus.documents("train")
    chosen = PLANS[name]
    want = in_memory_build_packed(documents, chosen, specials, tmp_path / "in-memory", "reuters")
    got = build_packed(documents, chosen, specials, tmp_path / "streamed", "reuters", shard_size=37)
    assert len(got) > 100 and got.num_copies() == chosen.copies
    assert_same_rows(got, want)
    assert (tmp_path / "streamed/settings.json").read_text() == (tmp_path / "in-memory/settings.json").read_text()


def test_streamed_packing_of_a_selected_prefix_and_of_nothing(reuters, in_memory_build_packed, tmp_path):
    """The common held-out set packs a select()ed prefix of the validation split; an empty split packs no row."""
    corpus, specials = reuters
    prefix = corpus.validation.select(range(20))["sentences"]
    for label, documents in (("prefix", prefix), ("empty", [])):
        want = in_memory_build_packed(documents, plan("doc_sentences"), specials, tmp_path / f"{label}-a", label)
        got = build_packed(documents, plan("doc_sentences"), specials, tmp_path / f"{label}-b", label, shard_size=7)
        assert_same_rows(got, want)
    assert len(got) == 0


class CountingDocuments(ArrowDocuments):
    """Every document read from Arrow is counted while it is alive (CPython frees it when the last reference goes)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alive = self.most_alive = 0

    def _read(self, start: int, stop: int):
        sentences, ends = super()._read(start, stop)
        return [self._track(document) for document in sentences], ends

    def _track(self, document: list) -> list:
        tracked = TrackedDocument(document)
        self.alive += 1
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(tracked, self._release)
        return tracked

    def _release(self) -> None:
        self.alive -= 1


class TrackedDocument(list):
    pass


@pytest.mark.parametrize("packing, nsp", [("segment_pair", True), ("sentence_pair", True), ("full_sentences", False)])
def test_packing_holds_at_most_one_shard_of_documents(packing, nsp, reuters, tmp_path):
    corpus, specials = reuters
    train = corpus.documents("train")
    view = CountingDocuments(train.sentences.source, "sentences", shard_size=16)
    assert len(view) > 300
    packed = build_packed(view, plan(packing, nsp=nsp, copies=2), specials, tmp_path / "small-shards", "reuters")
    # One shard, plus the last document of the previous shard still in the packer's hands while the next shard
    # is read, plus one NSP partner read on its own.
    assert 16 <= view.most_alive <= 16 + 2
    assert view.alive == 0
    whole = build_packed(train, plan(packing, nsp=nsp, copies=2), specials, tmp_path / "one-shard", "reuters")
    assert_same_rows(packed, whole)  # the shard size changes memory, never the rows


def test_document_view_reads_what_the_caller_holds(reuters):
    corpus, _ = reuters
    train = corpus.documents("train")
    view = document_view(train, shard_size=50)
    assert isinstance(view, ArrowDocuments) and view.has_paragraph_ends and len(view) == len(train)
    assert view.document(123) == train.sentences[123]
    assert [d for _, d, _ in view][77] == train.sentences[77]
    assert view.nonempty().all()  # the corpus drops documents without tokens
    listed = document_view([[[1, 2]], [], [[], [3]]])
    assert not listed.has_paragraph_ends and listed.nonempty().tolist() == [True, False, True]
