"""Pure packing: tokenized documents -> model inputs, one function per input format of the paper (section 4.2).

A document is a list of sentences; a sentence is a list of token ids without special tokens. `pack_documents`
is the only place that reads the packing mode:

- segment_pair:   Google's `create_instances_from_document`, step for step (multi-sentence segments, target
                  length drawn once per document, random A/B split, NSP negatives from another document with the
                  unused sentences put back, random front/back truncation of the longer segment).
- sentence_pair:  the same with one natural sentence per segment.
- full_sentences: fairseq `sample_break_mode=complete` plus RoBERTa's extra separator between documents.
- doc_sentences:  fairseq `complete_doc`: never crosses a document boundary.

`separators` (read only here, by the two sentence packings) says which separator tokens sit inside an input:
- document: one separator between two documents that share an input, nothing else.
- fairseq:  as `TokenBlockDataset` sees fairseq's preprocessed text (one line per paragraph, `</s>` ending every
            line, an empty line - a lone `</s>` - between documents): a paragraph's last sentence is followed by
            `</s>`, a document's by one more (full_sentences; `complete_doc` skips the empty line, so doc_sentences
            has none). A trailing `</s>` doubles as the input's closing one, as fairseq's block ends on its line's.

Randomised packings draw from a `random.Random` (the generator Google's script uses). Static masking re-draws
the packing for every duplicate with one running generator, as Google does: see `iter_copies`.

Packing streams (`stream_examples`): documents are read in order from a document view (harness.data.document_views:
the Arrow cache a shard at a time) and inputs come out as they are packed; an NSP negative reads its one document.
The only thing taken from the whole corpus up front is which documents are non-empty (the NSP pool), so the random
draws are exactly those of packing the corpus held as one list.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.data.document_views import DocumentView, document_view
from harness.data.specials import SpecialTokens

Documents = Sequence[Sequence[Sequence[int]]]
PACKINGS = ("segment_pair", "sentence_pair", "full_sentences", "doc_sentences")
PAIR_PACKINGS = ("segment_pair", "sentence_pair")
SEPARATORS = ("document", "fairseq")


@dataclass(frozen=True)
class CorpusDocuments(Sequence):
    """Documents (lists of sentences) with their paragraph structure: paragraph_ends[d][s] is true when sentence s
    of document d ends a paragraph (a document's last sentence always does). Indexes like its `sentences`."""

    sentences: Documents
    paragraph_ends: Sequence[Sequence[bool]]

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: Any) -> Any:
        return self.sentences[index]

    def __iter__(self) -> Iterator[Sequence[Sequence[int]]]:
        return iter(self.sentences)


@dataclass(frozen=True, slots=True)
class Example:
    """One model input with the provenance that corpus statistics need."""

    input_ids: list[int]  # special tokens included
    token_type_ids: list[int]  # 0 up to and including the separator closing A, 1 after it
    nsp_label: int | None  # 0 = B follows A, 1 = B is random (Hugging Face); None without NSP
    documents: tuple[int, ...]  # indices (into the input list) of the documents the tokens come from, in order
    boundaries: int  # document boundaries crossed contiguously inside this input (full_sentences only)


# ---- dispatch and copies ----------------------------------------------------------------------------------

def pack_documents(documents: Documents, packing: str, max_seq_length: int, specials: SpecialTokens, nsp: bool,
                   short_seq_prob: float, rng: random.Random, separators: str = "document") -> list[Example]:
    """Pack documents into inputs of at most max_seq_length tokens (special tokens included). separators
    'fairseq' needs CorpusDocuments (the paragraph ends) and a sentence packing."""
    return list(stream_examples(document_view(documents), packing, max_seq_length, specials, nsp, short_seq_prob,
                                rng, separators))


def stream_examples(view: DocumentView, packing: str, max_seq_length: int, specials: SpecialTokens, nsp: bool,
                    short_seq_prob: float, rng: random.Random, separators: str = "document") -> Iterator[Example]:
    """`pack_documents` as a stream over a document view: inputs in order, packed as the documents are read.
    Bad arguments fail on the call, before any document is read."""
    if packing not in PACKINGS:
        raise ValueError(f"packing '{packing}'; allowed: {', '.join(PACKINGS)}")
    if nsp and packing not in PAIR_PACKINGS:
        raise ValueError(f"nsp with packing '{packing}': NSP needs a pair packing ({', '.join(PAIR_PACKINGS)})")
    if separators not in SEPARATORS:
        raise ValueError(f"separators '{separators}'; allowed: {', '.join(SEPARATORS)}")
    if separators != "document" and packing in PAIR_PACKINGS:
        raise ValueError(f"separators '{separators}' with packing '{packing}': only the sentence packings mark "
                         "paragraphs (allowed: full_sentences, doc_sentences)")
    if separators == "fairseq" and not view.has_paragraph_ends:
        raise ValueError("separators 'fairseq' needs the paragraph ends: pass the documents as CorpusDocuments")
    if packing == "segment_pair":
        return pack_segment_pairs(view, max_seq_length, specials, nsp, short_seq_prob, rng)
    if packing == "sentence_pair":
        return pack_sentence_pairs(view, max_seq_length, specials, nsp, rng)
    if packing == "full_sentences":
        return pack_full_sentences(view, max_seq_length, specials, separators)
    return pack_doc_sentences(view, max_seq_length, specials, separators)


def draws_randomly(packing: str) -> bool:
    """Pair packings draw target lengths, split points and negatives; the sentence packings are deterministic."""
    return packing in PAIR_PACKINGS


def packing_rng(seed: int) -> random.Random:
    # A string seed is hashed (sha512) by random.Random, so this stream is stable across Python runs and
    # independent of any other generator seeded with the bare integer.
    return random.Random(f"harness.packing:{seed}")


def iter_copies(documents: Documents, packing: str, max_seq_length: int, specials: SpecialTokens, nsp: bool,
                short_seq_prob: float, seed: int, dupe_factor: int, separators: str = "document"
                ) -> Iterator[list[Example]]:
    """Yield dupe_factor packings drawn one after another from ONE running generator, as Google's script does:
    copy k re-draws target lengths, A/B splits and NSP negatives, and depends on the draws of copies < k.
    Lazy, so a caller can write each copy out before the next is built. Deterministic packings
    (full_sentences, doc_sentences) yield identical copies: only their masks differ (keyed by the copy number)."""
    for copy in stream_copies(document_view(documents), packing, max_seq_length, specials, nsp, short_seq_prob,
                              seed, dupe_factor, separators):
        yield list(copy)


def stream_copies(view: DocumentView, packing: str, max_seq_length: int, specials: SpecialTokens, nsp: bool,
                  short_seq_prob: float, seed: int, dupe_factor: int, separators: str = "document"
                  ) -> Iterator[Iterator[Example]]:
    """`iter_copies` with each copy a stream: read copy k to its end before asking for copy k+1, which continues
    the same generator."""
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor = {dupe_factor}; allowed: >= 1")
    rng = packing_rng(seed)
    for _ in range(dupe_factor):
        yield stream_examples(view, packing, max_seq_length, specials, nsp, short_seq_prob, rng, separators)


def build_copies(documents: Documents, packing: str, max_seq_length: int, specials: SpecialTokens, nsp: bool,
                 short_seq_prob: float, seed: int, dupe_factor: int, separators: str = "document"
                 ) -> list[list[Example]]:
    """All copies of `iter_copies` as a list; result[k] is copy k (mask it with epoch := k)."""
    return list(iter_copies(documents, packing, max_seq_length, specials, nsp, short_seq_prob, seed, dupe_factor,
                            separators))


# ---- shared pieces ----------------------------------------------------------------------------------------

def _as_ints(sentence: Sequence[int]) -> list[int]:
    if isinstance(sentence, list):
        return sentence
    tolist = getattr(sentence, "tolist", None)  # numpy / arrow rows: convert once to plain ints
    return tolist() if tolist is not None else [int(t) for t in sentence]


def _clean(document: Sequence[Sequence[int]]) -> list[list[int]]:
    """Drop empty sentences (Google skips them too). A list of non-empty int lists (a document read from Arrow)
    comes back as it is: no copy."""
    if isinstance(document, list) and all(type(s) is list and s for s in document):
        return document
    return [_as_ints(s) for s in document if len(s)]


def _nonempty_documents(view: DocumentView) -> Iterator[tuple[int, list[list[int]]]]:
    """(index, cleaned document) in order, documents left with no sentence skipped (their indices stay unused)."""
    for index, sentences, _ in view:
        document = _clean(sentences)
        if document:
            yield index, document


def _flatten(sentences: list[list[int]]) -> list[int]:
    return [token for sentence in sentences for token in sentence]


def _nsp_pool(view: DocumentView, nsp: bool) -> np.ndarray:
    """Indices of the documents an NSP negative can come from, ascending (none are needed without NSP)."""
    if not nsp:
        return np.zeros(0, dtype=np.int64)
    pool = np.flatnonzero(view.nonempty())
    if len(pool) < 2:
        raise ValueError(f"NSP needs at least 2 non-empty documents to draw random segments from, got {len(pool)}")
    return pool


def _random_partner(view: DocumentView, pool: np.ndarray, doc_index: int, rng: random.Random
                    ) -> tuple[int, list[list[int]]]:
    """Another non-empty document, uniformly, read on its own. Google retries 10 times and may fall back to the
    same document; drawing from the others directly is the limit of retrying until it differs and never mislabels
    a pair."""
    r = rng.randint(0, len(pool) - 2)
    other = int(pool[r + 1] if r >= int(np.searchsorted(pool, doc_index)) else pool[r])
    return other, _clean(view.document(other))


def _truncate_pair(a: list[int], b: list[int], max_num_tokens: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Google's truncate_seq_pair: drop one token at a time from the longer segment (B on ties), from the front
    or the back at random. Counted first, sliced once: same draws and result, without O(n^2) list pops."""
    la, lb = len(a), len(b)
    cut = {"a": [0, 0], "b": [0, 0]}  # [front, back]
    while la + lb > max_num_tokens:
        side = "a" if la > lb else "b"
        cut[side][0 if rng.random() < 0.5 else 1] += 1
        la, lb = (la - 1, lb) if side == "a" else (la, lb - 1)
    return a[cut["a"][0]: len(a) - cut["a"][1]], b[cut["b"][0]: len(b) - cut["b"][1]]


def _pair_example(a: list[int], b: list[int], nsp_label: int | None, sources: tuple[int, ...],
                  specials: SpecialTokens) -> Example:
    ids, types = specials.wrap(a, b)
    return Example(ids, types, nsp_label, sources, 0)


def _pair_budget(max_seq_length: int, specials: SpecialTokens) -> int:
    budget = max_seq_length - specials.pair_overhead
    if budget < 2:
        raise ValueError(f"max_seq_length = {max_seq_length} leaves {budget} tokens for A and B; need >= 2")
    return budget


# ---- segment_pair -----------------------------------------------------------------------------------------

def pack_segment_pairs(view: DocumentView, max_seq_length: int, specials: SpecialTokens, nsp: bool,
                       short_seq_prob: float, rng: random.Random) -> Iterator[Example]:
    pool = _nsp_pool(view, nsp)
    max_num_tokens = _pair_budget(max_seq_length, specials)
    return (example for doc_index, document in _nonempty_documents(view)
            for example in _segment_pairs_of_document(view, document, doc_index, pool, max_num_tokens, specials,
                                                      nsp, short_seq_prob, rng))


def _segment_pairs_of_document(view: DocumentView, document: list[list[int]], doc_index: int, pool: np.ndarray,
                               max_num_tokens: int, specials: SpecialTokens, nsp: bool, short_seq_prob: float,
                               rng: random.Random) -> list[Example]:
    # Drawn once per document (per copy): mostly fill the input, sometimes train on shorter ones.
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    examples: list[Example] = []
    chunk: list[list[int]] = []
    length, i = 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = _flatten(chunk[:a_end])
            label: int | None = 0 if nsp else None
            sources: tuple[int, ...] = (doc_index,)
            if nsp and (len(chunk) == 1 or rng.random() < 0.5):
                other, other_document = _random_partner(view, pool, doc_index, rng)
                b = _random_continuation(other_document, target - len(a), rng)
                label, sources = 1, (doc_index, other)
                i -= len(chunk) - a_end  # the unused sentences go back, to start the next chunk
            elif len(chunk) >= 2:
                b = _flatten(chunk[a_end:])
            else:
                # No NSP and a one-sentence chunk: Google would take a random B; without NSP, B must follow A,
                # so the sentence is cut at a random token (a 1-token chunk has no pair and is dropped).
                if len(a) < 2:
                    chunk, length, i = [], 0, i + 1
                    continue
                cut = rng.randint(1, len(a) - 1)
                a, b = a[:cut], a[cut:]
            a, b = _truncate_pair(a, b, max_num_tokens, rng)
            examples.append(_pair_example(a, b, label, sources, specials))
            chunk, length = [], 0
        i += 1
    return examples


def _random_continuation(document: list[list[int]], target_b_length: int, rng: random.Random) -> list[int]:
    """Sentences of another document from a random start until B reaches its target length (at least one)."""
    tokens: list[int] = []
    for sentence in document[rng.randint(0, len(document) - 1):]:
        tokens.extend(sentence)
        if len(tokens) >= target_b_length:
            break
    return tokens


# ---- sentence_pair ----------------------------------------------------------------------------------------

def pack_sentence_pairs(view: DocumentView, max_seq_length: int, specials: SpecialTokens, nsp: bool,
                        rng: random.Random) -> Iterator[Example]:
    """A = sentence i; B = sentence i+1, or (NSP, half the time, always for a document's last sentence) a random
    sentence of another document, in which case sentence i+1 is put back and becomes the next A. Without NSP
    the last sentence of an odd-length document has no partner and is left out."""
    pool = _nsp_pool(view, nsp)
    max_num_tokens = _pair_budget(max_seq_length, specials)
    return (example for doc_index, document in _nonempty_documents(view)
            for example in _sentence_pairs_of_document(view, document, doc_index, pool, max_num_tokens, specials,
                                                       nsp, rng))


def _sentence_pairs_of_document(view: DocumentView, document: list[list[int]], doc_index: int, pool: np.ndarray,
                                max_num_tokens: int, specials: SpecialTokens, nsp: bool, rng: random.Random
                                ) -> list[Example]:
    examples: list[Example] = []
    i = 0
    while i < len(document):
        is_last = i == len(document) - 1
        if nsp and (is_last or rng.random() < 0.5):
            other, other_document = _random_partner(view, pool, doc_index, rng)
            b = other_document[rng.randint(0, len(other_document) - 1)]
            label, sources, step = 1, (doc_index, other), 1
        elif not is_last:
            b, label, sources, step = document[i + 1], (0 if nsp else None), (doc_index,), 2
        else:
            break
        a, b = _truncate_pair(document[i], b, max_num_tokens, rng)
        examples.append(_pair_example(a, b, label, sources, specials))
        i += step
    return examples


# ---- full_sentences / doc_sentences -----------------------------------------------------------------------

def pack_full_sentences(view: DocumentView, max_seq_length: int, specials: SpecialTokens,
                        separators: str = "document") -> Iterator[Example]:
    """Greedy contiguous full sentences across documents. document: a separator token sits between two documents
    that share an input (never at an input's edge, where it would mark nothing); fairseq: see the module doc."""
    if separators == "fairseq":
        return _pack_sentences(_fairseq_lines(view, specials.sep_id, document_end=True), max_seq_length,
                               specials, cross_documents=True, fairseq=True)
    return _pack_sentences(((i, _clean(s)) for i, s, _ in view), max_seq_length, specials, cross_documents=True)


def pack_doc_sentences(view: DocumentView, max_seq_length: int, specials: SpecialTokens,
                       separators: str = "document") -> Iterator[Example]:
    """Greedy contiguous full sentences of one document; inputs at a document's end are shorter."""
    if separators == "fairseq":
        return _pack_sentences(_fairseq_lines(view, specials.sep_id, document_end=False), max_seq_length,
                               specials, cross_documents=False, fairseq=True)
    return _pack_sentences(((i, _clean(s)) for i, s, _ in view), max_seq_length, specials, cross_documents=False)


def _fairseq_lines(view: DocumentView, sep_id: int, document_end: bool) -> Iterator[tuple[int, list[list[int]]]]:
    """Sentences with fairseq's line ends attached: `</s>` after a paragraph's last sentence, one more after a
    document's last with document_end. Empty sentences are dropped; a paragraph end they held moves back to the
    previous kept sentence, so a separator never stands alone."""
    for index, document, ends in view:
        lines: list[list[int]] = []
        closed = True
        for sentence, end in zip(document, ends, strict=True):
            if len(sentence):
                lines.append(list(_as_ints(sentence)))  # a copy: separators are appended to it
                closed = False
            if end and not closed:
                lines[-1].append(sep_id)
                closed = True
        if lines and not closed:  # a document's last sentence always ends its paragraph
            lines[-1].append(sep_id)
        if lines and document_end:  # fairseq's empty line after each document: a lone </s>
            lines[-1].append(sep_id)
        yield index, lines


def _pieces(document: list[list[int]], capacity: int, closing_id: int | None) -> Iterator[list[int]]:
    """Sentences, with one longer than an input split into capacity-sized pieces (fairseq would emit an
    over-long block; dropping it would lose text). A trailing closing_id may become the input's closing
    separator, so it does not count against the last piece's capacity."""
    for sentence in document:
        last = capacity + int(closing_id is not None and sentence[-1] == closing_id)
        start = 0
        while len(sentence) - start > last:
            yield sentence[start: start + capacity]
            start += capacity
        yield sentence[start:] if start else sentence


def _pack_sentences(docs: Iterable[tuple[int, list[list[int]]]], max_seq_length: int, specials: SpecialTokens,
                    cross_documents: bool, fairseq: bool = False) -> Iterator[Example]:
    capacity = max_seq_length - specials.single_overhead
    if capacity < 1:
        raise ValueError(f"max_seq_length = {max_seq_length} leaves no room for content tokens")
    return _sentence_blocks(docs, capacity, specials, cross_documents, fairseq)


def _sentence_blocks(docs: Iterable[tuple[int, list[list[int]]]], capacity: int, specials: SpecialTokens,
                     cross_documents: bool, fairseq: bool) -> Iterator[Example]:
    sep = specials.sep_id
    closing_id = sep if fairseq else None  # fairseq: a block ending on a line's </s> needs no second one
    block: list[int] = []
    sources: list[int] = []

    def example() -> Example:
        ids, types = specials.wrap(block[:-1] if fairseq and block[-1] == sep else block)
        return Example(ids, types, None, tuple(sources), len(sources) - 1)

    for doc_index, document in docs:
        if not cross_documents and block:
            yield example()
            block, sources = [], []
        for piece in _pieces(document, capacity, closing_id):
            # fairseq marks document ends inside the lines already; otherwise one separator between documents
            separator = int(not fairseq and bool(block) and sources[-1] != doc_index)
            closes = int(piece[-1] == closing_id)
            if block and len(block) + separator + len(piece) - closes > capacity:
                yield example()
                block, sources = [], []
                separator = 0
            if separator:
                block.append(sep)
            if not sources or sources[-1] != doc_index:
                sources.append(doc_index)
            block.extend(piece)
    if block:
        yield example()


# ---- token-budget batches ---------------------------------------------------------------------------------

def batch_by_tokens(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group consecutive example indices so each batch holds at most max_tokens REAL tokens (the sum of lengths).

    Real tokens, not count x longest, because the paper equalises the tokens seen per update when it raises the
    batch size for sentence_pair / doc_sentences; padding is a cost of the forward pass, not data. An example
    longer than max_tokens forms a batch of its own rather than being dropped."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens = {max_tokens}; allowed: >= 1")
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, length in enumerate(lengths):
        if current and total + int(length) > max_tokens:
            batches.append(current)
            current, total = [], 0
        current.append(index)
        total += int(length)
    if current:
        batches.append(current)
    return batches
