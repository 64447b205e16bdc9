"""Train, save and load the two tokenizers the paper compares, with the `tokenizers` library's trainers:

- bpe: byte-level BPE as RoBERTa (no normalizer unless lowercase, ByteLevel pre-tokenizer without prefix space,
  `<s> A </s></s> B </s>` pairs); ids `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3 and `<mask>` last, as in roberta-base.
- wordpiece: WordPiece as BERT (BertNormalizer, BertPreTokenizer, `[CLS] A [SEP] B [SEP]` pairs with segment ids);
  ids `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4.

Both are wrapped as transformers tokenizers (RobertaTokenizer / BertTokenizer), so `save_pretrained` +
`AutoTokenizer.from_pretrained` give back the same class. A tokenizer is trained on the training documents (an evenly
spaced sample of them when their text exceeds tokenizer.train_sample_mb) and cached under
cache_root()/tokenizers/<hash of the documents, the held-out split and the tokenizer settings>.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import ConfigError, RunConfig, TokenizerConfig
from harness.data.cache import build_lock
from harness.data.documents import DIGESTS_DIR, fingerprint, load_documents, source_identity, validation_mask
from harness.data.segment import split_paragraphs
from harness.paths import atomic_dir, cache_root, resolve_data_path

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "bpe": ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
    "wordpiece": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
}
_MODEL_TYPES = {"BPE": "bpe", "WordPiece": "wordpiece"}
# Bump when training changes in a way that changes the result: it is part of the cache key.
TOKENIZER_VERSION = 4  # 4: WordPiece trains reproducibly (train_wordpiece)
SETTINGS_FILE = "harness-tokenizer.json"

log = logging.getLogger(__name__)


def train_bpe(texts: Iterable[str], vocab_size: int, lowercase: bool, min_frequency: int) -> PreTrainedTokenizerBase:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizer

    bos, pad, eos, unk, mask = SPECIAL_TOKENS["bpe"]
    backend = Tokenizer(models.BPE())
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # <mask> is added after training so that it gets the last id, as in roberta-base.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[bos, pad, eos, unk],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    backend.add_special_tokens([AddedToken(mask, lstrip=True, rstrip=False, normalized=False, special=True)])
    backend.post_processor = processors.RobertaProcessing(
        (eos, backend.token_to_id(eos)), (bos, backend.token_to_id(bos)), trim_offsets=True, add_prefix_space=False
    )
    return RobertaTokenizer(tokenizer_object=backend, add_prefix_space=False)


def _wordpiece_symbols(texts: list[str], normalizer: Any, pre_tokenizer: Any, limit: int
                       ) -> tuple[list[str], list[str]]:
    """(alphabet, continuing pieces). The alphabet: the `limit` most frequent characters, ties broken by the
    character itself. Without a cap the alphabet of a multilingual corpus (WikiText) could use up a small vocabulary
    by itself; the trainer's own cap breaks ties at the cut-off in hash-map order, so two trainings could keep
    different rare characters and learn different pieces. Passed as the initial alphabet with limit_alphabet = its
    size, the choice is ours and reproducible. The continuing pieces: '##c' for each alphabet character that occurs
    inside a word, in sorted order (see train_wordpiece)."""
    from collections import Counter

    counts: Counter[str] = Counter()
    spans: set[str] = set()  # each distinct run of non-space characters, pre-tokenized once below
    for text in texts:
        normalized = normalizer.normalize_str(text)
        counts.update(normalized)
        spans.update(normalized.split())
    inside: set[str] = set()
    for span in spans:
        for word, _ in pre_tokenizer.pre_tokenize_str(span):
            inside.update(word[1:])
    chars = sorted((c for c in counts if not c.isspace()), key=lambda c: (-counts[c], c))[:limit]
    return chars, [f"##{c}" for c in sorted(inside.intersection(chars))]


def _renumbered_wordpiece(vocab: dict[str, int], special: list[str], unk: str) -> Any:
    """Ids carry no meaning in WordPiece: the specials first, then every other piece in sorted order, so that the
    ids are the same wherever the same pieces were learned (the trainer numbers pieces in the order it met them)."""
    from tokenizers import models

    ordinary = sorted(token for token in vocab if token not in special)
    return models.WordPiece(vocab={token: i for i, token in enumerate([*special, *ordinary])}, unk_token=unk)


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool, min_frequency: int
                    ) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizer

    pad, unk, cls, sep, mask = SPECIAL_TOKENS["wordpiece"]
    backend = Tokenizer(models.WordPiece(unk_token=unk))
    # strip_accents=None follows lowercase, as BERT-uncased / BERT-cased.
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                    lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    texts = list(texts)
    specials = [pad, unk, cls, sep, mask]
    alphabet, continuing = _wordpiece_symbols(texts, backend.normalizer, backend.pre_tokenizer,
                                              limit=min(1000, max(100, vocab_size // 10)))
    # The trainer numbers the alphabet in code-point order, then creates a '##c' piece when it first meets c inside a
    # word, walking the word counts in hash-map order, and breaks ties between equally frequent merges by the pieces'
    # ids: two trainings on the same text could learn different pieces (huggingface/tokenizers#1794, open in
    # tokenizers 0.23). It is handed the alphabet in its own order and then every '##c' it would create, sorted, as
    # tokens it already knows ("special" tokens of the training only): every id and every tie is the same in every
    # training, and the ids keep the trainer's own order (alphabet first), so its ties go the way they mostly went.
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                        special_tokens=[*specials, *sorted(alphabet), *continuing],
                                        initial_alphabet=alphabet, limit_alphabet=len(alphabet))
    backend.train_from_iterator(texts, trainer)
    trained = backend
    backend = Tokenizer(_renumbered_wordpiece(trained.get_vocab(), special=specials, unk=unk))
    backend.normalizer, backend.pre_tokenizer, backend.decoder = (trained.normalizer, trained.pre_tokenizer,
                                                                  trained.decoder)
    backend.add_special_tokens(specials)  # not the '##c' pieces: those are ordinary pieces from here on
    ids = {token: backend.token_to_id(token) for token in (cls, sep)}
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1", special_tokens=list(ids.items())
    )
    # do_lower_case is saved in tokenizer_config.json: BertTokenizer rebuilds its normalizer from it when loaded.
    return BertTokenizer(tokenizer_object=backend, do_lower_case=lowercase)


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, lowercase: bool, min_frequency: int
                    ) -> PreTrainedTokenizerBase:
    trainers = {"bpe": train_bpe, "wordpiece": train_wordpiece}
    if kind not in trainers:
        raise ConfigError(f"tokenizer.kind = '{kind}'; allowed: {', '.join(trainers)}")
    return trainers[kind](texts, vocab_size, lowercase, min_frequency)


def tokenizer_kind(tokenizer: PreTrainedTokenizerBase) -> str:
    """'bpe' or 'wordpiece' from the backend model (or the model type name when it is neither)."""
    model_type = type(tokenizer.backend_tokenizer.model).__name__
    return _MODEL_TYPES.get(model_type, model_type)


def load_tokenizer(path: str | Path, kind: str | None = None, field: str = "tokenizer.path"
                   ) -> PreTrainedTokenizerBase:
    """A saved tokenizer folder through AutoTokenizer; with `kind`, refuse one of the other kind."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"{field} = '{path}': not a saved tokenizer folder (no tokenizer.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    found = tokenizer_kind(tokenizer)
    if kind is not None and found != kind:
        raise ConfigError(f"{field} = '{path}' holds a {type(tokenizer).__name__} ({found}) but tokenizer.kind = "
                          f"'{kind}'; set tokenizer.kind = '{found}' or point {field} at a {kind} tokenizer")
    missing = [name for name in ("cls_token", "sep_token", "pad_token", "mask_token", "unk_token")
               if getattr(tokenizer, name) is None]
    if missing:
        raise ConfigError(f"{field} = '{path}': the tokenizer lacks special tokens: {', '.join(missing)}")
    # RobertaTokenizer rebuilds its backend from vocab and merges and drops the normalizer (transformers 5), which
    # would silently turn a lowercasing BPE tokenizer into a cased one: put the saved normalizer back.
    saved = Tokenizer.from_file(str(path / "tokenizer.json"))
    if saved.normalizer is not None and tokenizer.backend_tokenizer.normalizer is None:
        tokenizer.backend_tokenizer.normalizer = saved.normalizer
    return tokenizer


def tokenizer_digest(path: Path) -> str:
    """Content hash of a saved tokenizer: what a tokenized corpus depends on, whether trained or given."""
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        file = path / name
        digest.update(file.read_bytes() if file.exists() else b"")
    return digest.hexdigest()[:16]


def training_texts(documents: Dataset, chosen: list[bool]) -> Iterator[str]:
    """Paragraphs of the chosen documents only (training_sample: never a held-out one, which must stay unseen)."""
    index = 0
    for batch in documents.iter(batch_size=1000):
        for text in batch["text"]:
            if chosen[index]:
                yield from split_paragraphs(text)
            index += 1


def training_sample(documents: Dataset, held_out: list[bool], sample_mb: float | None
                    ) -> tuple[list[bool], dict[str, Any] | None]:
    """Which documents train the tokenizer: every training document, or, when their text exceeds `sample_mb` MB of
    UTF-8, an evenly spaced share of them (the n-th training document, from 0, is taken when floor((n + 1) x share)
    exceeds floor(n x share), so the choice depends on the documents' order only, never on a seed). Returns (the
    choice, a record of the sample or None when there is none)."""
    import numpy as np
    import pyarrow.compute as pc

    # Byte lengths on the Arrow columns, batch by batch (the rows as the dataset shows them, a selection included).
    batches = documents.select_columns(["text"]).with_format("arrow").iter(batch_size=100_000)
    sizes = np.concatenate([np.zeros(0, dtype=np.int64), *(
        np.asarray(pc.binary_length(batch["text"]).fill_null(0), dtype=np.int64) for batch in batches)])
    training = ~np.asarray(held_out, dtype=bool)
    total = int(sizes[training].sum())
    if sample_mb is None or total <= sample_mb * 1e6:
        return training.tolist(), None
    share = sample_mb * 1e6 / total
    rank = np.arange(int(training.sum()))
    taken = np.floor((rank + 1) * share) > np.floor(rank * share)
    chosen = np.zeros(len(held_out), dtype=bool)
    chosen[np.flatnonzero(training)[taken]] = True
    record = {"documents": int(chosen.sum()), "of_documents": int(training.sum()), "bytes": int(sizes[chosen].sum()),
              "of_bytes": total}
    return chosen.tolist(), record


def tokenizer_settings(config: RunConfig, source: dict[str, Any]) -> dict[str, Any]:
    """Everything that shapes a trained tokenizer (not the segmenter: it trains on paragraphs)."""
    import tokenizers

    t = config.tokenizer
    settings = {"version": TOKENIZER_VERSION, "tokenizers": tokenizers.__version__, "source": source,
                "validation_fraction": config.corpus.validation_fraction, "kind": t.kind, "vocab_size": t.vocab_size,
                "lowercase": t.lowercase, "min_frequency": t.min_frequency}
    # Only away from its default, so the tokenizers cached before the field existed keep their keys: at the default
    # a corpus under 1024 MB trains on all its text as before, and a larger one is sampled the same way every time.
    if t.train_sample_mb != TokenizerConfig.model_fields["train_sample_mb"].default:
        settings["train_sample_mb"] = t.train_sample_mb
    return settings


def obtain_tokenizer(config: RunConfig, source: dict[str, Any], documents: Callable[[], Dataset], root: Path,
                     data_dir: str | Path | None = None) -> tuple[PreTrainedTokenizerBase, Path, bool]:
    """(tokenizer, its folder, whether nothing was trained). `documents` is called only when training is needed."""
    t = config.tokenizer
    if t.path is not None:
        path = resolve_data_path(t.path, data_dir, field="tokenizer.path")
        return load_tokenizer(path, t.kind), path, True
    settings = tokenizer_settings(config, source)
    final = root / "tokenizers" / fingerprint(settings)
    with build_lock(final) as cached:
        if not cached:
            _train_into(final, config, settings, documents())
    return load_tokenizer(final, t.kind), final, cached


def _train_into(final: Path, config: RunConfig, settings: dict[str, Any], docs: Dataset) -> None:
    t = config.tokenizer
    held_out = validation_mask(list(docs["doc_id"]), config.corpus.validation_fraction)
    chosen, sample = training_sample(docs, held_out, t.train_sample_mb)
    if sample is not None:
        log.info("training the tokenizer on a sample: %d of %d training documents, %.2f of %.2f MB of text "
                 "(tokenizer.train_sample_mb = %g)", sample["documents"], sample["of_documents"],
                 sample["bytes"] / 1e6, sample["of_bytes"] / 1e6, t.train_sample_mb)
        settings = {**settings, "train_sample": sample}  # recorded beside the tokenizer, not part of its key
    trained = train_tokenizer(training_texts(docs, chosen), t.kind, t.vocab_size, t.lowercase, t.min_frequency)
    if len(trained) < t.vocab_size:
        log.warning("tokenizer.vocab_size = %d, but the training documents only yield %d tokens (min_frequency = %d); "
                    "size the model's embeddings by len(tokenizer)", t.vocab_size, len(trained), t.min_frequency)
    with atomic_dir(final) as tmp:
        trained.save_pretrained(str(tmp))
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")


def build_tokenizer(config: RunConfig, data_dir: str | Path | None = None) -> tuple[PreTrainedTokenizerBase, Path]:
    """The tokenizer a run config asks for: loaded from tokenizer.path, from the cache, or trained on the training
    documents of the corpus (never the held-out ones) and cached. Returns (tokenizer, its folder)."""
    encoding_errors = config.corpus.encoding_errors
    root = cache_root(config.impl.cache_dir)
    given = config.tokenizer.path is not None  # then the corpus is not needed at all
    source = {} if given else source_identity(config.corpus, data_dir, encoding_errors, root / DIGESTS_DIR)
    (root / "tmp").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "tmp") as work:
        def documents() -> Dataset:
            return load_documents(config.corpus, data_dir, Path(work), encoding_errors)

        tokenizer, path, _ = obtain_tokenizer(config, source, documents, root, data_dir)
    return tokenizer, path
