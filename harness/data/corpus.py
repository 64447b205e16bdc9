"""Documents -> sentences -> token ids, cached by a hash of what shapes each stage.

    documents (documents.py)  --segment (sentencex, or pysbd: slow)-->  cache_root()/segments/<hash>
        --tokenize (fast)-->  cache_root()/corpora/<hash>  = {train, validation}:
                              (doc_id, sentences as token ids, paragraph_ends, chars)

Segmentation is cached apart from tokenization because it can be the slow step (pysbd: about 120 Reuters articles
per second per core): a new vocabulary size re-tokenizes the cached sentences but never re-segments. Each cache entry
is built under its lock (harness.data.cache: one process builds, others wait and read) and written through
`atomic_dir`, so an interrupted build never leaves a half-written entry; scratch Arrow files of the datasets library
go to a temporary folder inside our cache, never to ~/.cache/huggingface.

Both stages map their documents in contiguous shards of SHARD_DOCUMENTS documents (harness.data.cache.map_in_shards),
each saved when done under `<entry>.partial/shard-NNNNN/` beside the entry, with a record of the entry's key and the
shard's documents. A build that was interrupted (Ctrl-C, a crash, a full disk) resumes: rerun the same command and
it reuses the finished shards of the same key ("resuming: 3 of 7 shards done") and computes only the others. The
entry is then published from the shards concatenated in order - the same rows, features, settings and key as a
build in one piece - and the partial folder removed. A stage of several shards shows one progress bar over the whole
corpus (documents, rate, ETA), advanced per shard; a stage of one shard keeps the datasets library's bar. A full
disk stops with one line saying how many shards are kept, where, and about how much more space the step needs.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import CorpusConfig, RunConfig
from harness.data import segment
from harness.data.cache import build_lock, drop_partial, full_disk_keeps_shards, map_in_shards, shard_ranges
from harness.data.documents import (
    DIGESTS_DIR,
    CorpusError,
    corpus_digest,
    describe_source,
    fingerprint,
    load_documents,
    quiet_progress,
    source_identity,
    validation_mask,
)
from harness.data.packing import CorpusDocuments
from harness.data.readers import split_wikitext_articles
from harness.data.segment import segment_text, split_paragraphs, visible_chars
from harness.data.tokenizer import build_tokenizer, obtain_tokenizer, tokenizer_digest
from harness.machine import usable_cores
from harness.paths import atomic_dir, cache_root

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = ["CORPUS_CACHE_VERSION", "CorpusError", "TokenizedCorpus", "build_corpus", "build_tokenizer", "segment_text",
           "split_paragraphs", "split_stats", "split_wikitext_articles", "text_encoder", "tokenize_batch",
           "validation_mask"]

log = logging.getLogger(__name__)

# Bump when the layout or content of a cached corpus changes: it is part of every corpus and segments key.
CORPUS_CACHE_VERSION = 3

# Documents per resumable shard of each stage: an interruption loses at most one shard (about 3 minutes of pysbd
# on one core at 120 articles/s, seconds of tokenizing); the shard size never changes the result.
SHARD_DOCUMENTS = 20_000


@dataclass(frozen=True)
class CacheHits:
    """Which stages were reused from the cache (True) rather than computed in this call."""

    segments: bool
    tokenizer: bool
    tokens: bool


@dataclass(frozen=True)
class TokenizedCorpus:
    """The tokenized corpus of a run: `train` and `validation` are datasets with columns doc_id, sentences (each
    a list of token-id lists, special tokens not included), paragraph_ends (one flag per sentence: does it end a
    paragraph?) and chars (the document's non-whitespace characters, counted on its text before tokenization, so
    equal for every tokenizer), memory-mapped from `cache_dir`."""

    train: Dataset
    validation: Dataset
    tokenizer: PreTrainedTokenizerBase
    tokenizer_dir: Path
    cache_dir: Path
    cache_hits: CacheHits
    corpus_digest: str  # harness.data.documents.corpus_digest: equal for equal documents, wherever they lie

    @property
    def from_cache(self) -> bool:
        return self.cache_hits.tokens

    def documents(self, split: str) -> CorpusDocuments:
        """The documents of `split` ("train" or "validation") as packing takes them."""
        data = {"train": self.train, "validation": self.validation}[split]
        return CorpusDocuments(data["sentences"], data["paragraph_ends"])

    def stats(self) -> dict[str, Any]:
        return {
            "train": split_stats(self.train),
            "validation": split_stats(self.validation),
            "vocab_size": len(self.tokenizer),
            "tokenizer": type(self.tokenizer).__name__,
            "loaded_from_cache": self.cache_hits.tokens,
            "segments_from_cache": self.cache_hits.segments,
            "tokenizer_from_cache": self.cache_hits.tokenizer,
            "cache_dir": str(self.cache_dir),
            "tokenizer_dir": str(self.tokenizer_dir),
            "corpus_digest": self.corpus_digest,
        }


def split_stats(dataset: Dataset) -> dict[str, Any]:
    """Counts computed on the Arrow columns (no Python loop over sentences)."""
    import pyarrow.compute as pc

    documents = len(dataset)
    if documents == 0:
        return {"documents": 0, "sentences": 0, "tokens": 0, "chars": 0, "mean_sentence_tokens": 0.0,
                "mean_doc_sentences": 0.0}
    column = dataset.data.column("sentences")
    sentences = pc.sum(pc.list_value_length(column)).as_py() or 0
    tokens = pc.sum(pc.list_value_length(pc.list_flatten(column))).as_py() or 0
    chars = pc.sum(dataset.data.column("chars")).as_py() or 0
    return {"documents": documents, "sentences": sentences, "tokens": tokens, "chars": chars,
            "mean_sentence_tokens": round(tokens / max(sentences, 1), 2),
            "mean_doc_sentences": round(sentences / documents, 2)}


def tokenize_batch(batch: dict[str, list[Any]], tokenizer: Any) -> dict[str, list[Any]]:
    """datasets.map(batched=True) function: sentences as text -> sentences as token ids (no special tokens), their
    paragraph_ends, and the document's non-whitespace characters (`chars`, counted on all its text).

    Every sentence but a document's first is encoded with its leading space, as it stands in running text, so
    that a byte-level BPE gives it the same tokens as in the unsplit document ("ĠIt", not "It") and the ids of
    consecutive sentences concatenate to the ids of the text. Empty encodings are dropped (a paragraph's end moves
    to its last kept sentence); a document may end up with no sentence (it is then dropped when splitting)."""
    # `tokenizer` is a private copy from text_encoder; the flag does not survive pickling into map workers.
    tokenizer.encode_special_tokens = True
    texts = [s if i == 0 else " " + s for sentences in batch["sentences"] for i, s in enumerate(sentences)]
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    ids = [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
    out, out_ends, chars, start = [], [], [], 0
    for sentences, ends in zip(batch["sentences"], batch["paragraph_ends"], strict=True):
        kept, kept_ends = [], []
        for sentence, end in zip(ids[start:start + len(sentences)], ends, strict=True):
            if sentence:
                kept.append(sentence)
                kept_ends.append(end)
            elif end and kept_ends:
                kept_ends[-1] = True
        out.append(kept)
        out_ends.append(kept_ends)
        chars.append(sum(visible_chars(s) for s in sentences))
        start += len(sentences)
    return {"doc_id": batch["doc_id"], "sentences": out, "paragraph_ends": out_ends, "chars": chars}


def text_encoder(tokenizer: PreTrainedTokenizerBase) -> Any:
    """The backend tokenizer for corpus text: a literal "</s>" or "[MASK]" in a document is text to be split like
    any other, never a special token (transformers' default would turn it into the separator or the mask)."""
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.encode_special_tokens = True
    return backend


def check_sentence_boundaries(segmented: Dataset, corpus: CorpusConfig) -> None:
    """A corpus whose every document is one sentence cannot feed sentence packings or NSP: almost always a wrong
    file or a wrong segmenter, so stop here rather than train on it."""
    import pyarrow.compute as pc

    most = pc.max(pc.list_value_length(segmented.data.column("sentences"))).as_py() or 0
    if most <= 1:
        hint = ("each non-empty line should hold one sentence: check the file" if corpus.segmenter == "newline"
                else "set corpus.segmenter = 'newline' if the text holds one sentence per line, or check the file")
        raise CorpusError(f"{describe_source(corpus)}: every document segments into a single sentence with "
                          f"corpus.segmenter = '{corpus.segmenter}' (no sentence boundaries found); {hint}")


def _features(token_ids: bool) -> Any:
    from datasets import Features, List, Value

    sentence = List(Value("int32")) if token_ids else Value("string")
    columns = {"doc_id": Value("string"), "sentences": List(sentence), "paragraph_ends": List(Value("bool"))}
    return Features({**columns, "chars": Value("int64")} if token_ids else columns)


# impl.num_proc = null gives each datasets.map worker at least this many documents (harness.config.ImplConfig).
_DOCS_PER_PROCESS = 1000


def _num_proc(config: RunConfig, documents: int | None = None) -> int | None:
    """The one place impl.num_proc is resolved: processes for a datasets.map over `documents` documents, None for
    one (no worker pool). A set value wins; null means the usable cores (this process's CPU affinity, which
    containers and `taskset` narrow: harness.machine), at most one per _DOCS_PER_PROCESS documents. A caller
    that does not pass the count gets one process unless impl.num_proc is set."""
    processes = config.impl.num_proc
    if processes is None:
        processes = min(usable_cores(), (documents or 0) // _DOCS_PER_PROCESS)
    return processes if processes > 1 else None


@contextmanager
def _scratch(root: Path) -> Iterator[Path]:
    """Where the datasets library writes intermediate Arrow files during one build; removed afterwards."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "tmp", prefix="build-") as work:
        yield Path(work)


def _write_settings(folder: Path, settings: dict[str, Any]) -> None:
    (folder / "harness-settings.json").write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")


def segments_settings(corpus: CorpusConfig, source: dict[str, Any]) -> dict[str, Any]:
    """What shapes the segmented corpus: the documents and the segmenter with its version (not the tokenizer, not
    the split). The keys of pysbd and newline are those of the caches built before sentencex existed."""
    import pysbd

    settings = {"version": CORPUS_CACHE_VERSION, "source": source, "segmenter": corpus.segmenter,
                "pysbd": pysbd.__version__ if corpus.segmenter == "pysbd" else None}
    if corpus.segmenter == "sentencex":
        from importlib.metadata import version

        settings["sentencex"] = version("sentencex")  # the package has no __version__
    return settings


def _segments(config: RunConfig, source: dict[str, Any], documents: Callable[[], Dataset], root: Path, work: Path
              ) -> tuple[Dataset, bool]:
    """The segmented corpus (doc_id, sentences as text) from the cache, or segmented now and cached."""
    from datasets import load_from_disk

    settings = segments_settings(config.corpus, source)
    final = root / "segments" / fingerprint(settings)
    with build_lock(final) as hit:
        if not hit:
            _segment_into(final, config, documents(), work, settings)
    return load_from_disk(str(final)), hit


def _shard_num_proc(config: RunConfig, documents: int) -> int | None:
    """_num_proc for one shard, never more processes than documents (datasets would warn and cut them)."""
    processes = _num_proc(config, documents)
    return processes if processes is None or processes <= documents else (documents if documents > 1 else None)


def _segment_into(final: Path, config: RunConfig, docs: Dataset, work: Path, settings: dict[str, Any]) -> None:
    corpus = config.corpus
    key = fingerprint(settings)
    log.info("segmenting %d documents with %s in shards of %d (num_proc=%s)", len(docs), corpus.segmenter,
             SHARD_DOCUMENTS, _shard_num_proc(config, min(len(docs), SHARD_DOCUMENTS)))

    def segment_shard(shard: Dataset, scratch: Path) -> Dataset:
        return shard.map(segment.segment_batch, batched=True, batch_size=16,
                         num_proc=_shard_num_proc(config, len(shard)), fn_kwargs={"segmenter": corpus.segmenter},
                         remove_columns=["title", "text"], features=_features(token_ids=False),
                         cache_file_name=str(scratch), new_fingerprint=fingerprint([key, scratch.name]),
                         desc="segmenting")

    what = f"{describe_source(corpus)}: segmenting"
    segmented = map_in_shards(final, key, docs, segment_shard, work, SHARD_DOCUMENTS, what, "segmenting")
    try:
        check_sentence_boundaries(segmented, corpus)
    except CorpusError:
        drop_partial(final)  # the fix (another file or segmenter) changes the key: these shards are never reused
        raise
    full_disk = full_disk_keeps_shards(final, what, len(shard_ranges(len(docs), SHARD_DOCUMENTS)))
    with full_disk, atomic_dir(final) as tmp, quiet_progress():
        segmented.save_to_disk(str(tmp))
        _write_settings(tmp, settings)
    drop_partial(final)


def _split(tokenized: Dataset, corpus: CorpusConfig) -> Any:
    """The held-out split of the tokenized documents, each split in corpus order; documents with no token go."""
    import pyarrow.compute as pc
    from datasets import DatasetDict

    held_out = validation_mask(list(tokenized["doc_id"]), corpus.validation_fraction)
    sentences = pc.list_value_length(tokenized.data.column("sentences")).to_pylist()
    train = [i for i, (v, n) in enumerate(zip(held_out, sentences, strict=True)) if n and not v]
    validation = [i for i, (v, n) in enumerate(zip(held_out, sentences, strict=True)) if n and v]
    if not train:
        raise CorpusError(f"{describe_source(corpus)}: no training document has any token")
    return DatasetDict({"train": tokenized.select(train), "validation": tokenized.select(validation)})


def _tokenize_and_split(config: RunConfig, segmented: Dataset, tokenizer: PreTrainedTokenizerBase, final: Path,
                        work: Path, settings: dict[str, Any]) -> None:
    key = fingerprint(settings)
    log.info("tokenizing %d documents in shards of %d (num_proc=%s)", len(segmented), SHARD_DOCUMENTS,
             _shard_num_proc(config, min(len(segmented), SHARD_DOCUMENTS)))
    encoder = text_encoder(tokenizer)

    def tokenize_shard(shard: Dataset, scratch: Path) -> Dataset:
        return shard.map(tokenize_batch, batched=True, batch_size=64, num_proc=_shard_num_proc(config, len(shard)),
                         fn_kwargs={"tokenizer": encoder}, features=_features(token_ids=True),
                         cache_file_name=str(scratch), new_fingerprint=fingerprint([key, scratch.name]),
                         desc="tokenizing")

    what = f"{describe_source(config.corpus)}: tokenizing"
    tokenized = map_in_shards(final, key, segmented, tokenize_shard, work, SHARD_DOCUMENTS, what, "tokenizing")
    try:
        splits = _split(tokenized, config.corpus)
    except CorpusError:
        drop_partial(final)  # as for check_sentence_boundaries: only other settings can fix it
        raise
    # An empty split (validation_fraction = 0) must still be written as one (empty) shard to load back.
    shards = {name: 1 if len(split) == 0 else None for name, split in splits.items()}
    full_disk = full_disk_keeps_shards(final, what, len(shard_ranges(len(tokenized), SHARD_DOCUMENTS)))
    with full_disk, atomic_dir(final) as tmp, quiet_progress():
        splits.save_to_disk(str(tmp), num_shards=shards)
        _write_settings(tmp, settings)
    drop_partial(final)


def build_corpus(config: RunConfig, data_dir: str | Path | None = None) -> TokenizedCorpus:
    """Load, segment, split and tokenize the corpus of a run config, reusing every cached stage.

    `corpus.encoding_errors: replace` reads files with stray non-UTF-8 bytes (two shared Gutenberg books have a
    few) instead of stopping; it is part of the cache key."""
    from datasets import load_from_disk

    encoding_errors = config.corpus.encoding_errors
    root = cache_root(config.impl.cache_dir)
    source = source_identity(config.corpus, data_dir, encoding_errors, root / DIGESTS_DIR)
    with _scratch(root) as work:
        @cache
        def documents() -> Dataset:
            return load_documents(config.corpus, data_dir, work, encoding_errors)

        tokenizer, tokenizer_dir, tokenizer_hit = obtain_tokenizer(config, source, documents, root, data_dir)
        settings = {"version": CORPUS_CACHE_VERSION, "segments": segments_settings(config.corpus, source),
                    "validation_fraction": config.corpus.validation_fraction,
                    "tokenizer": tokenizer_digest(tokenizer_dir)}
        final = root / "corpora" / fingerprint(settings)
        with build_lock(final) as tokens_hit:
            segments_hit = tokens_hit
            if not tokens_hit:  # the segments lock is taken inside this one, never the other way round
                segmented, segments_hit = _segments(config, source, documents, root, work)
                _tokenize_and_split(config, segmented, tokenizer, final, work, settings)
    splits = load_from_disk(str(final))
    hits = CacheHits(segments=segments_hit, tokenizer=tokenizer_hit, tokens=tokens_hit)
    return TokenizedCorpus(train=splits["train"], validation=splits["validation"], tokenizer=tokenizer,
                           tokenizer_dir=tokenizer_dir, cache_dir=final, cache_hits=hits,
                           corpus_digest=corpus_digest(source))
