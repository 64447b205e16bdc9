"""Packing and special-token layout: exact outputs on hand-made documents where the packing is deterministic,
properties over many draws where it is random (as fairseq tests each token-block break mode)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from harness.config import ConfigError, load_config, special_token_count
from harness.data.examples import PackingPlan
from harness.data.packing import (
    CorpusDocuments,
    _truncate_pair,
    batch_by_tokens,
    build_copies,
    iter_copies,
    pack_documents,
    packing_rng,
)
from harness.data.specials import SpecialTokens

BERT = SpecialTokens("bert", cls_id=1, sep_id=2, pad_id=0, mask_id=3, unk_id=4, vocab_size=100,
                     all_ids=frozenset(range(5)))
ROBERTA = SpecialTokens("roberta", cls_id=0, sep_id=2, pad_id=1, mask_id=4, unk_id=3, vocab_size=100,
                        all_ids=frozenset(range(5)))
DOC0 = [[10, 11, 12], [13, 14], [15, 16, 17, 18]]
DOC1 = [[20, 21], [22, 23, 24]]
DOC2 = [list(range(30, 42))]  # one 12-token sentence: longer than the inputs below
DOCS = [DOC0, DOC1, DOC2]


def pack(documents, packing, max_len, specials=BERT, nsp=False, short=0.0, seed=0, separators="document"):
    return pack_documents(documents, packing, max_len, specials, nsp, short, packing_rng(seed), separators)


def random_corpus(num_docs: int, seed: int, max_sentences: int = 12) -> list[list[list[int]]]:
    """Documents whose token ids are unique corpus-wide, so every token tells where it came from."""
    rng = random.Random(seed)
    docs, next_id = [], 10
    for _ in range(num_docs):
        doc = []
        for _ in range(rng.randint(1, max_sentences)):
            length = rng.randint(1, 25)
            doc.append(list(range(next_id, next_id + length)))
            next_id += length
        docs.append(doc)
    return docs


def locate(docs):
    """token id -> (document, position in the document's token stream, sentence start?, sentence end?)"""
    where = {}
    for d, doc in enumerate(docs):
        pos = 0
        for sentence in doc:
            for k, token in enumerate(sentence):
                where[token] = (d, pos, k == 0, k == len(sentence) - 1)
                pos += 1
    return where


def split_pair(example, specials=BERT):
    """(A, B) of a BERT-layout pair, checking the special tokens and segment ids on the way."""
    ids, types = example.input_ids, example.token_type_ids
    assert ids[0] == specials.cls_id and ids[-1] == specials.sep_id
    first_b = types.index(1)
    assert types == [0] * first_b + [1] * (len(ids) - first_b)
    assert ids[first_b - 1] == specials.sep_id
    a, b = ids[1: first_b - 1], ids[first_b:-1]
    assert a and b and not set(a + b) & specials.all_ids
    return a, b


def is_run(tokens, where):
    """Consecutive positions of one document."""
    spots = [where[t] for t in tokens]
    return all(s[0] == spots[0][0] for s in spots) and [s[1] for s in spots] == list(
        range(spots[0][1], spots[0][1] + len(spots)))


# ---- special tokens ---------------------------------------------------------------------------------------

def test_wrap_bert_layout_and_segment_ids():
    assert BERT.wrap([10, 11], [20]) == ([1, 10, 11, 2, 20, 2], [0, 0, 0, 0, 1, 1])
    assert BERT.wrap([10, 11]) == ([1, 10, 11, 2], [0, 0, 0, 0])


def test_wrap_roberta_layout_and_segment_ids():
    # the first </s> closes A (segment 0), the second opens B (segment 1)
    assert ROBERTA.wrap([10, 11], [20]) == ([0, 10, 11, 2, 2, 20, 2], [0, 0, 0, 0, 1, 1, 1])
    assert ROBERTA.wrap([10]) == ([0, 10, 2], [0, 0, 0])


def test_overheads_match_config():
    for specials, kind in ((BERT, "wordpiece"), (ROBERTA, "bpe")):
        for packing in ("segment_pair", "full_sentences"):
            pair = packing == "segment_pair"
            wrapped, _ = specials.wrap([10], [20]) if pair else specials.wrap([10])
            assert len(wrapped) - (2 if pair else 1) == special_token_count(kind, packing)
            assert (specials.pair_overhead if pair else specials.single_overhead) == special_token_count(kind, packing)


def hf_tokenizer(vocab: list[str], **special) -> PreTrainedTokenizerFast:
    ids = {token: i for i, token in enumerate(vocab)}
    model = models.WordPiece(ids, unk_token=special["unk_token"]) if "[CLS]" in ids else models.BPE(ids, [])
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(model), **special)


def test_from_tokenizer_bert_and_roberta():
    bert = hf_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hel", "##lo"], cls_token="[CLS]",
                        sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]", unk_token="[UNK]")
    got = SpecialTokens.from_tokenizer(bert)
    assert (got.style, got.cls_id, got.sep_id, got.pad_id, got.mask_id, got.unk_id) == ("bert", 2, 3, 0, 4, 1)
    assert got.all_ids == frozenset(range(5)) and got.vocab_size == 7
    roberta = hf_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "\u0120hel", "lo", "<mask>"], bos_token="<s>",
                           eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                           mask_token="<mask>", unk_token="<unk>")
    got = SpecialTokens.from_tokenizer(roberta)
    assert (got.style, got.cls_id, got.sep_id, got.pad_id, got.mask_id, got.unk_id) == ("roberta", 0, 2, 1, 6, 3)
    assert got.all_ids == frozenset({0, 1, 2, 3, 6})


def test_from_tokenizer_rejects_unknown_style():
    plain = hf_tokenizer(["a", "b", "<unk>"], unk_token="<unk>")
    with pytest.raises(ValueError, match="neither"):
        SpecialTokens.from_tokenizer(plain)


# ---- full_sentences / doc_sentences (deterministic: exact outputs) ----------------------------------------

def test_full_sentences_exact():
    got = pack(DOCS, "full_sentences", 10)  # 8 content tokens per input
    assert [e.input_ids for e in got] == [
        [1, 10, 11, 12, 13, 14, 2],
        [1, 15, 16, 17, 18, 2, 20, 21, 2],  # crosses into DOC1 with one extra separator
        [1, 22, 23, 24, 2],  # the 12-token sentence does not fit after it ...
        [1, 30, 31, 32, 33, 34, 35, 36, 37, 2],  # ... and is split into max-length pieces, not dropped
        [1, 38, 39, 40, 41, 2],
    ]
    assert [e.documents for e in got] == [(0,), (0, 1), (1,), (2,), (2,)]
    assert [e.boundaries for e in got] == [0, 1, 0, 0, 0]
    assert all(e.token_type_ids == [0] * len(e.input_ids) and e.nsp_label is None for e in got)


def test_full_sentences_roberta_and_empty_documents():
    got = pack([DOC1, [], [[], [50, 51]], DOC0], "full_sentences", 12, specials=ROBERTA)  # 10 content tokens
    assert [e.input_ids for e in got] == [
        [0, 20, 21, 22, 23, 24, 2, 50, 51, 2],  # one separator: the empty document and sentence leave no trace
        [0, 10, 11, 12, 13, 14, 15, 16, 17, 18, 2],
    ]
    assert [e.documents for e in got] == [(0, 2), (3,)]
    assert [e.boundaries for e in got] == [1, 0]


def test_doc_sentences_exact():
    got = pack(DOCS, "doc_sentences", 10)
    assert [e.input_ids for e in got] == [
        [1, 10, 11, 12, 13, 14, 2],
        [1, 15, 16, 17, 18, 2],  # shorter: the document ends
        [1, 20, 21, 22, 23, 24, 2],
        [1, 30, 31, 32, 33, 34, 35, 36, 37, 2],
        [1, 38, 39, 40, 41, 2],
    ]
    assert [e.documents for e in got] == [(0,), (0,), (1,), (2,), (2,)]
    assert all(e.boundaries == 0 for e in got)


@pytest.mark.parametrize("packing", ["full_sentences", "doc_sentences"])
def test_sentence_packings_are_greedy_and_lossless(packing):
    docs = random_corpus(40, seed=3)  # sentences of at most 25 tokens: none needs splitting at 32
    got = pack(docs, packing, 32)
    content = [t for e in got for t in e.input_ids[1:-1] if t != BERT.sep_id]
    assert content == [t for doc in docs for s in doc for t in s]
    where = locate(docs)
    sentence_length = {t: len(s) for doc in docs for s in doc for t in s}
    for e, following in zip(got, got[1:] + [None], strict=True):
        assert len(e.input_ids) <= 32 and where[e.input_ids[1]][2] and where[e.input_ids[-2]][3]
        if packing == "doc_sentences":
            assert len({where[t][0] for t in e.input_ids[1:-1]}) == 1
        if following is not None and (packing == "full_sentences" or following.documents == e.documents):
            # greedy: the next sentence (plus a separator if it starts a new document) did not fit
            separator = int(following.documents[0] != e.documents[-1])
            assert len(e.input_ids) - 2 + separator + sentence_length[following.input_ids[1]] > 30


# ---- fairseq separators (full_sentences / doc_sentences) --------------------------------------------------
# DOC0 has two paragraphs (sentences 0-1, then 2), DOC1 two one-sentence paragraphs, DOC2 one long sentence.
PARAGRAPHED = CorpusDocuments(DOCS, [[False, True, True], [True, True], [True]])


def test_full_sentences_fairseq_separators_exact():
    got = pack(PARAGRAPHED, "full_sentences", 10, separators="fairseq")  # 8 content tokens per input
    assert [e.input_ids for e in got] == [
        [1, 10, 11, 12, 13, 14, 2],  # DOC0's first paragraph: its </s> is the input's closing one
        [1, 15, 16, 17, 18, 2, 2, 20, 21, 2],  # paragraph end + document end, then DOC1's first paragraph
        [1, 22, 23, 24, 2, 2],  # DOC1 ends: </s> of the paragraph, </s> of the document
        [1, 30, 31, 32, 33, 34, 35, 36, 37, 2],  # a sentence longer than an input is still split into pieces
        [1, 38, 39, 40, 41, 2, 2],
    ]
    assert [e.documents for e in got] == [(0,), (0, 1), (1,), (2,), (2,)]
    assert [e.boundaries for e in got] == [0, 1, 0, 0, 0]


def test_doc_sentences_fairseq_separators_exact():
    # complete_doc skips fairseq's empty line between documents: paragraph ends only
    got = pack(PARAGRAPHED, "doc_sentences", 10, separators="fairseq")
    assert [e.input_ids for e in got] == [
        [1, 10, 11, 12, 13, 14, 2],
        [1, 15, 16, 17, 18, 2],
        [1, 20, 21, 2, 22, 23, 24, 2],  # the paragraph end inside; the second doubles as the closing </s>
        [1, 30, 31, 32, 33, 34, 35, 36, 37, 2],
        [1, 38, 39, 40, 41, 2],
    ]
    assert [e.documents for e in got] == [(0,), (0,), (1,), (2,), (2,)]


def test_fairseq_separators_roberta_and_empty_sentences():
    # an empty last sentence hands its paragraph end back to the sentence before it; an empty document vanishes
    docs = CorpusDocuments([[[10, 11], []], [], [[20], [21, 22]]], [[False, True], [], [False, False]])
    got = pack(docs, "full_sentences", 12, specials=ROBERTA, separators="fairseq")
    assert [e.input_ids for e in got] == [[0, 10, 11, 2, 2, 20, 21, 22, 2, 2]]
    assert got[0].documents == (0, 2)


@pytest.mark.parametrize("packing", ["full_sentences", "doc_sentences"])
def test_fairseq_separators_lossless_and_within_length(packing):
    docs = random_corpus(40, seed=13)  # sentences of at most 25 tokens: none needs splitting at 32
    rng = random.Random(0)
    ends = [[rng.random() < 0.3 or k == len(doc) - 1 for k in range(len(doc))] for doc in docs]
    got = pack(CorpusDocuments(docs, ends), packing, 32, separators="fairseq")
    assert all(len(e.input_ids) <= 32 and e.input_ids[0] == BERT.cls_id == 1 for e in got)
    content = [t for e in got for t in e.input_ids[1:] if t != BERT.sep_id]
    assert content == [t for doc in docs for s in doc for t in s]
    ids = [t for e in got for t in e.input_ids]
    pairs = sum(a == b == BERT.sep_id for a, b in zip(ids, ids[1:]))  # a document end: </s></s>
    assert pairs == (len(docs) if packing == "full_sentences" else 0)
    separators = ids.count(BERT.sep_id)  # every paragraph end, plus a closing one where an input ends mid-paragraph
    paragraph_ends = sum(map(sum, ends)) + (len(docs) if packing == "full_sentences" else 0)
    assert paragraph_ends <= separators <= paragraph_ends + len(got)


def test_fairseq_separators_of_one_paragraph_documents_match_doc_sentences():
    docs = random_corpus(30, seed=14)
    ends = [[k == len(doc) - 1 for k in range(len(doc))] for doc in docs]
    assert pack(CorpusDocuments(docs, ends), "doc_sentences", 40, separators="fairseq") == pack(
        docs, "doc_sentences", 40)


def test_separators_are_rejected_where_they_cannot_apply():
    with pytest.raises(ValueError, match="needs the paragraph ends"):
        pack(DOCS, "full_sentences", 10, separators="fairseq")
    with pytest.raises(ValueError, match="separators 'fairseq' with packing 'segment_pair'"):
        pack(PARAGRAPHED, "segment_pair", 32, separators="fairseq")
    with pytest.raises(ValueError, match="separators 'lines'"):
        pack(PARAGRAPHED, "full_sentences", 32, separators="lines")


def test_config_allows_fairseq_separators_for_sentence_packings_only():
    with pytest.raises(ConfigError, match="data.separators = 'fairseq' with data.packing = 'sentence_pair'"):
        load_config(overrides=["data.packing=sentence_pair", "data.separators=fairseq"])
    assert load_config(overrides=["data.packing=doc_sentences", "data.separators=fairseq"]).data.separators == "fairseq"
    assert load_config().data.separators == "document"


def test_separators_are_part_of_the_packing_plan():
    plans = [PackingPlan.create(packing="full_sentences", max_seq_length=32, nsp=False, short_seq_prob=0.0, seed=0,
                                static_copies=1, separators=separators) for separators in ("document", "fairseq")]
    assert plans[0].key("corpus") != plans[1].key("corpus")
    copies = build_copies(PARAGRAPHED, "full_sentences", 10, BERT, False, 0.0, seed=0, dupe_factor=2,
                          separators="fairseq")
    assert copies[0] == copies[1] == pack(PARAGRAPHED, "full_sentences", 10, separators="fairseq")


# ---- segment_pair -----------------------------------------------------------------------------------------

def test_segment_pair_nsp_properties():
    docs = random_corpus(60, seed=1)
    where = locate(docs)
    labels = Counter()
    for copy in build_copies(docs, "segment_pair", 64, BERT, True, 0.1, seed=5, dupe_factor=4):
        for e in copy:
            assert len(e.input_ids) <= 64
            a, b = split_pair(e)
            assert is_run(a, where) and is_run(b, where)
            labels[e.nsp_label] += 1
            if e.nsp_label == 0:
                (d,) = e.documents
                assert where[a[0]][0] == where[b[0]][0] == d
                assert where[b[0]][1] > where[a[-1]][1]
                if len(a) + len(b) < 64 - 3:  # untruncated: B starts where A ends, at a sentence boundary
                    assert where[b[0]][1] == where[a[-1]][1] + 1 and where[b[0]][2]
            else:
                d, other = e.documents
                assert e.nsp_label == 1 and d != other
                assert where[a[0]][0] == d and where[b[0]][0] == other
    assert set(labels) == {0, 1}


def test_segment_pair_puts_unused_sentences_back():
    # A random B leaves the chunk's tail unused; Google starts the next chunk there, so (truncation aside)
    # every token still appears in an A or a true B of its own document. Dropping the tail would lose ~1/4.
    docs = random_corpus(60, seed=12, max_sentences=40)
    used = set()
    for e in pack(docs, "segment_pair", 128, nsp=True):
        a, b = split_pair(e)
        used.update(a if e.nsp_label else a + b)
    assert len(used) / sum(len(s) for doc in docs for s in doc) > 0.93


@pytest.mark.parametrize("packing", ["segment_pair", "sentence_pair"])
def test_nsp_balance_on_long_documents(packing):
    # Google forces a random B for a one-sentence chunk, so short documents (and short_seq_prob, which makes
    # many one-sentence chunks: ~55% negatives at 0.1) tilt towards negatives; long ones stay near half.
    docs = random_corpus(200, seed=11, max_sentences=80)
    labels = Counter(e.nsp_label for e in pack(docs, packing, 128, nsp=True, short=0.0, seed=2))
    assert sum(labels.values()) > 1000
    assert 0.45 < labels[1] / sum(labels.values()) < 0.55


def test_segment_pair_without_nsp_is_the_whole_document():
    docs = [d for d in random_corpus(30, seed=2) if len(d) >= 2]
    got = pack(docs, "segment_pair", 512, nsp=False)
    assert len(got) == len(docs)
    for e, doc in zip(got, docs, strict=True):
        a, b = split_pair(e)
        assert e.nsp_label is None and e.documents == (docs.index(doc),)
        assert a + b == [t for s in doc for t in s]


def test_segment_pair_short_seq_prob_shortens_inputs():
    docs = random_corpus(60, seed=4)

    def mean_length(short):
        got = pack(docs, "segment_pair", 128, nsp=True, short=short)
        return sum(len(e.input_ids) for e in got) / len(got)

    assert mean_length(1.0) < 0.8 * mean_length(0.0)


def test_segment_pair_roberta_layout():
    got = pack(random_corpus(20, seed=6), "segment_pair", 40, specials=ROBERTA, nsp=False)
    for e in got:
        ids, types = e.input_ids, e.token_type_ids
        first_b = types.index(1)
        assert ids[0] == 0 and ids[first_b - 1] == ids[first_b] == 2 and ids[-1] == 2 and len(ids) <= 40
        assert types == [0] * first_b + [1] * (len(ids) - first_b)


def test_copies_redraw_with_one_running_generator():
    docs = random_corpus(40, seed=7)
    copies = build_copies(docs, "segment_pair", 64, BERT, True, 0.1, seed=9, dupe_factor=3)
    assert copies == build_copies(docs, "segment_pair", 64, BERT, True, 0.1, seed=9, dupe_factor=3)
    assert copies[0] != copies[1] != copies[2]
    assert copies != build_copies(docs, "segment_pair", 64, BERT, True, 0.1, seed=10, dupe_factor=3)
    rng = packing_rng(9)
    first = pack_documents(docs, "segment_pair", 64, BERT, True, 0.1, rng)
    second = pack_documents(docs, "segment_pair", 64, BERT, True, 0.1, rng)  # same generator, continued
    assert copies[0] == first and copies[1] == second
    assert next(iter_copies(docs, "segment_pair", 64, BERT, True, 0.1, seed=9, dupe_factor=3)) == first


def test_deterministic_packings_have_identical_copies():
    copies = build_copies(DOCS, "full_sentences", 10, BERT, False, 0.1, seed=0, dupe_factor=3)
    assert copies[0] == copies[1] == copies[2] == pack(DOCS, "full_sentences", 10)


def test_truncate_pair_cuts_the_longer_segment():
    a, b = list(range(10, 16)), list(range(20, 26))
    for seed in range(20):
        ta, tb = _truncate_pair(a, b, 10, random.Random(seed))
        assert (len(ta), len(tb)) == (5, 5)  # tie -> B first, then the now-longer A
        assert ta in (a[1:], a[:-1]) and tb in (b[1:], b[:-1])
        assert tuple(map(len, _truncate_pair(a, b, 11, random.Random(seed)))) == (6, 5)  # a tie cuts B
    cuts = {(_truncate_pair(a, [], 3, random.Random(s))[0][0]) for s in range(30)}
    assert len(cuts) > 1 and cuts <= {10, 11, 12, 13}  # front and back cuts both happen


def test_nsp_needs_two_documents():
    with pytest.raises(ValueError, match="at least 2 non-empty documents"):
        pack([DOC0, []], "segment_pair", 32, nsp=True)
    with pytest.raises(ValueError, match="at least 2 non-empty documents"):
        pack([DOC0], "sentence_pair", 32, nsp=True)
    assert pack([DOC0], "segment_pair", 32, nsp=False)  # without NSP one document is enough


def test_bad_arguments():
    with pytest.raises(ValueError, match="packing 'blocks'"):
        pack(DOCS, "blocks", 32)
    with pytest.raises(ValueError, match="nsp with packing 'full_sentences'"):
        pack(DOCS, "full_sentences", 32, nsp=True)
    with pytest.raises(ValueError, match="need >= 2"):
        pack(DOCS, "segment_pair", 4)


# ---- sentence_pair ----------------------------------------------------------------------------------------

def test_sentence_pair_without_nsp_exact():
    got = pack(DOCS, "sentence_pair", 32, nsp=False)
    # consecutive non-overlapping pairs; DOC0's third sentence and DOC2's only one have no partner
    assert [e.input_ids for e in got] == [[1, 10, 11, 12, 2, 13, 14, 2], [1, 20, 21, 2, 22, 23, 24, 2]]
    assert [e.token_type_ids for e in got] == [[0] * 5 + [1] * 3, [0] * 4 + [1] * 4]
    assert all(e.nsp_label is None for e in got)


def test_sentence_pair_nsp_properties():
    docs = random_corpus(60, seed=8)
    sentences = {tuple(s): (d, k) for d, doc in enumerate(docs) for k, s in enumerate(doc)}
    labels = Counter()
    for seed in range(3):
        for e in pack(docs, "sentence_pair", 512, nsp=True, seed=seed):  # never truncated at 512
            a, b = split_pair(e)
            (da, ka), (db, kb) = sentences[tuple(a)], sentences[tuple(b)]  # each segment is one sentence
            labels[e.nsp_label] += 1
            if e.nsp_label == 0:
                assert db == da and kb == ka + 1 and e.documents == (da,)
            else:
                assert db != da and e.documents == (da, db)
    assert set(labels) == {0, 1}


def test_sentence_pair_truncates_long_sentences():
    got = pack([DOC2, DOC0], "sentence_pair", 9, nsp=True, seed=1)
    assert all(len(e.input_ids) <= 9 for e in got)
    assert any(len(e.input_ids) == 9 for e in got)


# ---- token-budget batches ---------------------------------------------------------------------------------

def test_batch_by_tokens_exact():
    assert batch_by_tokens([3, 4, 5, 2, 9, 1], 8) == [[0, 1], [2, 3], [4], [5]]
    assert batch_by_tokens([], 8) == []


def test_batch_by_tokens_budget_holds():
    lengths = [random.Random(i).randint(5, 120) for i in range(500)]
    batches = batch_by_tokens(lengths, 512)
    assert [i for batch in batches for i in batch] == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 512 for b in batches)
    # greedy: adding the next example would have broken the budget
    assert all(sum(lengths[i] for i in b) + lengths[b[-1] + 1] > 512 for b in batches[:-1])
