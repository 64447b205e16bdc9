"""Tokenizers: byte-level BPE (RoBERTa) and WordPiece (BERT) trained with the tokenizers trainers, saved, reloaded with
AutoTokenizer, their special tokens, pair layouts and round trips; the tokenizer cache and tokenizer.path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from harness.config import ConfigError, from_dict, load_config
from harness.data import tokenizer as tokenizer_module
from harness.data.documents import validation_mask
from harness.data.readers import split_wikitext_articles
from harness.data.segment import split_paragraphs
from harness.data.tokenizer import SPECIAL_TOKENS, build_tokenizer, load_tokenizer, train_tokenizer

VOCAB = 1000
CLASSES = {"bpe": "RobertaTokenizer", "wordpiece": "BertTokenizer"}


@pytest.fixture(scope="module")
def wiki_paragraphs(shared_data) -> list[str]:
    lines = (shared_data / "corpora/wikitext-2-raw/wiki.valid.raw").read_text(encoding="utf-8").splitlines()
    return [p for _, text in split_wikitext_articles(lines) for p in split_paragraphs(text)]


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def saved(request, wiki_paragraphs, tmp_path_factory) -> tuple[str, Path]:
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    train_tokenizer(wiki_paragraphs, kind, VOCAB, lowercase=False, min_frequency=2).save_pretrained(str(folder))
    return kind, folder


def test_reloads_as_the_right_class_with_the_right_special_token_ids(saved):
    kind, folder = saved
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert type(tokenizer).__name__ == CLASSES[kind]
    assert len(tokenizer) == VOCAB
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS[kind]}
    if kind == "bpe":  # roberta-base: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last
        assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": VOCAB - 1}
        named = (tokenizer.cls_token, tokenizer.sep_token, tokenizer.pad_token, tokenizer.mask_token)
        assert named == ("<s>", "</s>", "<pad>", "<mask>")
    else:
        assert ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
        named = (tokenizer.cls_token, tokenizer.sep_token, tokenizer.pad_token, tokenizer.mask_token)
        assert named == ("[CLS]", "[SEP]", "[PAD]", "[MASK]")
    assert tokenizer.unk_token_id == ids[SPECIAL_TOKENS[kind][3 if kind == "bpe" else 1]]


def test_pair_encoding_layout(saved):
    kind, folder = saved
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    a = tokenizer("The lobster is large.", add_special_tokens=False)["input_ids"]
    b = tokenizer("It lives in the sea.", add_special_tokens=False)["input_ids"]
    pair = tokenizer("The lobster is large.", "It lives in the sea.")
    if kind == "bpe":
        assert pair["input_ids"] == [0, *a, 2, 2, *b, 2]  # <s> A </s></s> B </s>
        assert tokenizer("The lobster is large.")["input_ids"] == [0, *a, 2]
    else:
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        assert pair["input_ids"] == [cls, *a, sep, *b, sep]  # [CLS] A [SEP] B [SEP]
        assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


TEXTS = ["The lobster, known as Homarus gammarus, is large.", "Prices rose 3.5 pct in Jan. 1987!",
         "  Leading and   inner spaces\tand a tab.", "Ünïcödé — 東京 and emoji 🦞 are bytes too.",
         "Café in Zürich – naïve résumé."]
# What the cased WordPiece tokenizer trained on WikiText-2's validation articles gives back for non-ASCII text. Accents
# stay (BertNormalizer strips them only when lowercasing, as BERT-cased). Its alphabet is the corpus's 100 most
# frequent characters (`_wordpiece_symbols`): é, ü, ö, – and — are among them; Ü, ï, the CJK characters and the emoji
# never occur in the corpus. A word holding a character outside the alphabet becomes one [UNK]; each CJK character is
# a word of its own.
WORDPIECE_DECODED = {
    "Ünïcödé — 東京 and emoji 🦞 are bytes too.": "[UNK] — [UNK] [UNK] and emoji [UNK] are bytes too.",
    "Café in Zürich – naïve résumé.": "Café in Zürich – [UNK] résumé.",
}


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(saved, text):
    kind, folder = saved
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids)
    if kind == "bpe":
        assert decoded == text  # byte level: every string survives exactly
        assert tokenizer.unk_token_id not in ids
    elif text.isascii():  # WordPiece: equal up to whitespace around punctuation
        assert "".join(decoded.split()) == "".join(text.split())
        assert tokenizer.unk_token_id not in ids
    else:
        assert decoded == WORDPIECE_DECODED[text]


def test_lowercase_is_honoured_after_reload(wiki_paragraphs, tmp_path):
    for kind in ("bpe", "wordpiece"):
        for lowercase in (False, True):
            folder = tmp_path / f"{kind}-{lowercase}"
            train_tokenizer(wiki_paragraphs[:300], kind, 500, lowercase, 2).save_pretrained(str(folder))
            tokenizer = load_tokenizer(folder, kind)
            upper, lower = (tokenizer("The LOBSTER Is Large", add_special_tokens=False)["input_ids"],
                            tokenizer("the lobster is large", add_special_tokens=False)["input_ids"])
            assert (upper == lower) is lowercase, (kind, lowercase)
            if kind == "wordpiece":
                assert (AutoTokenizer.from_pretrained(str(folder)).do_lower_case) is lowercase


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_min_frequency_is_honoured(kind):
    texts = ["qwertyuiop"] * 2 + ["zxcvbnm"] * 5
    vocabularies = {}
    for min_frequency in (1, 3):
        tokenizer = train_tokenizer(texts, kind, 400, lowercase=False, min_frequency=min_frequency)
        vocabularies[min_frequency] = set(tokenizer.get_vocab())
    assert {"qwertyuiop", "zxcvbnm"} <= vocabularies[1]
    assert "zxcvbnm" in vocabularies[3] and "qwertyuiop" not in vocabularies[3]


# ---- build_tokenizer: cache, held-out documents, tokenizer.path ---------------------------------------------------
def _corpus_file(tmp_path: Path, secret_doc: int | None) -> Path:
    """Ten documents; `secret_doc` (0-based) repeats a made-up word that BPE would surely learn if it saw it."""
    records = []
    for i in range(10):
        text = "The market rose today. Traders were pleased. " * 20
        if i == secret_doc:
            text += " ".join(["Qzxjkvw"] * 200)
        records.append(json.dumps({"text": text}))
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(records) + "\n", encoding="utf-8")
    return path


def _config(tmp_path: Path, corpus_path: Path, validation_fraction: float = 0.1, **tokenizer):
    corpus = {"layout": "jsonl", "path": str(corpus_path), "validation_fraction": validation_fraction}
    return from_dict({"corpus": corpus,
                      "tokenizer": {"vocab_size": 300, **tokenizer}, "impl": {"cache_dir": str(tmp_path / "cache")}})


def test_tokenizer_never_sees_the_held_out_documents(tmp_path):
    held_out = validation_mask([f"docs.jsonl:{n}" for n in range(1, 11)], 0.1).index(True)
    path = _corpus_file(tmp_path, secret_doc=held_out)
    tokenizer, _ = build_tokenizer(_config(tmp_path, path), None)
    assert "ĠQzxjkvw" not in tokenizer.get_vocab()
    # the control: the same corpus with nothing held out does learn the word
    tokenizer, _ = build_tokenizer(_config(tmp_path, path, validation_fraction=0.0), None)
    assert "ĠQzxjkvw" in tokenizer.get_vocab()


def test_build_tokenizer_is_cached_by_its_settings(tmp_path, monkeypatch):
    path = _corpus_file(tmp_path, secret_doc=None)
    calls = []
    original = tokenizer_module.train_tokenizer
    monkeypatch.setattr(tokenizer_module, "train_tokenizer", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    first, folder = build_tokenizer(_config(tmp_path, path), None)
    again, same_folder = build_tokenizer(_config(tmp_path, path), None)
    assert calls == ["bpe"] and same_folder == folder and folder.parent == tmp_path / "cache" / "tokenizers"
    assert again.get_vocab() == first.get_vocab()
    _, other = build_tokenizer(_config(tmp_path, path, kind="wordpiece"), None)
    assert calls == ["bpe", "wordpiece"] and other != folder


def test_tokenizer_path_loads_a_saved_tokenizer_and_checks_its_kind(saved, tmp_path):
    kind, folder = saved
    missing_corpus = tmp_path / "no-such-corpus.jsonl"  # not needed when the tokenizer is given
    tokenizer, path = build_tokenizer(_config(tmp_path, missing_corpus, kind=kind, path=str(folder)), None)
    assert path == folder and type(tokenizer).__name__ == CLASSES[kind]
    other = "wordpiece" if kind == "bpe" else "bpe"
    with pytest.raises(ConfigError) as err:
        build_tokenizer(_config(tmp_path, missing_corpus, kind=other, path=str(folder)), None)
    message = str(err.value)
    assert "\n" not in message and f"tokenizer.kind = '{other}'" in message and CLASSES[kind] in message


def test_tokenizer_path_that_is_not_a_tokenizer_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    config = _config(tmp_path, tmp_path / "x.jsonl", path=str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as err:
        build_tokenizer(config, None)
    assert "not a saved tokenizer folder" in str(err.value) and "\n" not in str(err.value)


def test_wordpiece_trains_the_same_vocabulary_every_time_on_a_real_corpus(shared_data):
    """Upstream, the trainer numbers '##' pieces in hash-map order (huggingface/tokenizers#1794): 331 of 2,000 ids
    moved between two trainings, and even after renumbering about 1 training in 4 learned a different piece. With the
    alphabet and every '##' piece handed to the trainer in sorted order, three trainings agree on every id."""
    import json

    lines = (shared_data / "corpora" / "reuters.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    texts = [json.loads(line)["text"] for line in lines]
    first, *others = (train_tokenizer(texts, "wordpiece", 2000, False, 2) for _ in range(3))
    assert all(other.get_vocab() == first.get_vocab() for other in others)
    assert [token for token, _ in sorted(first.get_vocab().items(), key=lambda kv: kv[1])][:5] == list(
        SPECIAL_TOKENS["wordpiece"])
    # the '##' pieces and the alphabet were special only while training: text that spells one is ordinary text
    assert set(first.all_special_tokens) == set(SPECIAL_TOKENS["wordpiece"])
    assert len(first.backend_tokenizer.get_added_tokens_decoder()) == 5
    assert first.tokenize("##s s") == first.tokenize("# # s s") != ["##s", "s"]


def test_wordpiece_trainer_breaks_ties_the_same_way_every_time():
    """Where the upstream trainer always differs (huggingface/tokenizers#1794): it numbers the word-initial
    characters in sorted order but the '##' pieces in hash-map order, and a tie between equally frequent merges goes
    to the pair with the smaller ids. 128 two-letter words (a..h then i..x), 3 times each: every merge has count 3,
    the 16 merges a + ##i .. a + ##x lead the tie, and a vocabulary with room for 8 merges keeps those whose '##'
    pieces have the 8 smallest ids. Upstream that was 8 of 16 chosen afresh in each training (961 different sets in
    1,000 trainings); harness numbers the '##' pieces in sorted order, so every training keeps ai .. ap."""
    texts = [" ".join(f"{first}{second}" for first in "abcdefgh" for second in "ijklmnopqrstuvwx")] * 3
    room = len(SPECIAL_TOKENS["wordpiece"]) + 24 + 16 + 8  # specials, a..x, ##i..##x, then 8 merges
    for _ in range(3):
        vocab = train_tokenizer(texts, "wordpiece", room, lowercase=False, min_frequency=2).get_vocab()
        merged = {token for token in vocab if len(token) == 2 and token.isalpha()}
        assert len(vocab) == room and merged == {f"a{second}" for second in "ijklmnop"}, sorted(merged)


# ---- tokenizer.train_sample_mb: a sample of a large corpus --------------------------------------------------------
def test_training_sample_takes_every_kth_training_document_by_utf8_size_and_never_a_held_out_one():
    from datasets import Dataset

    docs = Dataset.from_dict({"doc_id": [str(i) for i in range(10)], "text": ["é" * 50] * 10})  # 100 bytes each
    held_out = [i == 3 for i in range(10)]
    chosen, record = tokenizer_module.training_sample(docs, held_out, sample_mb=300 / 1e6)
    assert [i for i, taken in enumerate(chosen) if taken] == [2, 6, 9]  # every third of the 9 training documents
    assert record == {"documents": 3, "of_documents": 9, "bytes": 300, "of_bytes": 900}
    for limit in (900 / 1e6, None):  # at the limit, or with null: every training document, no sample
        chosen, record = tokenizer_module.training_sample(docs, held_out, limit)
        assert chosen == [not h for h in held_out] and record is None


def test_a_corpus_over_train_sample_mb_trains_the_tokenizer_on_a_recorded_sample(shared_data, tmp_path, caplog):
    def config(**tokenizer):
        return from_dict({"corpus": {"layout": "jsonl", "path": "corpora/reuters.jsonl", "max_documents": 200},
                          "tokenizer": {"vocab_size": 500, **tokenizer}, "impl": {"cache_dir": str(tmp_path)}})

    with caplog.at_level(logging.INFO, logger=tokenizer_module.__name__):
        sampled, sampled_dir = build_tokenizer(config(train_sample_mb=0.05), shared_data)
    whole, whole_dir = build_tokenizer(config(train_sample_mb=None), shared_data)
    default, default_dir = build_tokenizer(config(), shared_data)
    assert sampled.get_vocab() != whole.get_vocab() and default.get_vocab() == whole.get_vocab()
    assert len({sampled_dir, whole_dir, default_dir}) == 3  # each setting has its own cache entry
    record = json.loads((sampled_dir / tokenizer_module.SETTINGS_FILE).read_text())
    sample = record["train_sample"]
    assert record["train_sample_mb"] == 0.05 and sample["of_documents"] == 190  # 10 of 200 held out
    assert sample["documents"] < 80 and 30_000 < sample["bytes"] < 80_000 and sample["of_bytes"] > 150_000
    lines = [r.getMessage() for r in caplog.records if "sample" in r.getMessage()]
    assert len(lines) == 1 and f"{sample['documents']} of 190 training documents" in lines[0]
    # at the default (no sample on this corpus) the key and the record are those from before the field existed
    default_record = json.loads((default_dir / tokenizer_module.SETTINGS_FILE).read_text())
    assert set(default_record) == {"version", "tokenizers", "source", "validation_fraction", "kind", "vocab_size",
                                   "lowercase", "min_frequency"}


def test_train_sample_mb_at_its_default_keeps_the_recorded_run_ids():
    """f257c67247 is the default config's id computed before tokenizer.train_sample_mb existed (as
    tests/test_recipes.py records it): the field is in ADDED_LATER, hashed only away from its default."""
    pysbd = ["corpus.segmenter=pysbd"]  # the segmenter's default when the id was recorded
    assert load_config(overrides=pysbd).run_id() == "f257c67247"
    assert load_config(overrides=[*pysbd, "tokenizer.train_sample_mb=1024.0"]).run_id() == "f257c67247"
    for override in ("tokenizer.train_sample_mb=64", "tokenizer.train_sample_mb=null"):
        assert load_config(overrides=[*pysbd, override]).run_id() != "f257c67247", override
