"""The common held-out set: characters per token on hand-made vocabularies, bits per character by hand, the same
held-out text for arms that differ in tokenizer and packing, and the paragraph structure behind fairseq's separators
in real batches."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from harness.config import ModelConfig, OptimConfig, load_config
from harness.data.corpus import tokenize_batch
from harness.data.heldout import (
    byte_level_chars,
    common_document_count,
    label_chars,
    surface_chars,
)
from harness.data.inspect import inspect_data
from harness.data.masking import IGNORE_INDEX
from harness.data.segment import segment_batch, visible_chars
from harness.data.tokenizer import train_bpe, train_wordpiece
from harness.models.metrics import MaskedTokenBits
from harness.models.pretrain import PretrainModule, build_pretraining_model
from harness.recipe import build_datamodule, resolve_recipe
from harness.runs import read_curves
from harness.train import pretrain

WIKI = ["corpus.path=corpora/wikitext-2-raw/wiki.valid.raw", "tokenizer.vocab_size=1000", "data.max_seq_length=64",
        "optim.batch_size=16", "impl.progress_bar=false", "logging.wandb=false", "impl.num_proc=2"]
BPE_FULL = ["model.family=roberta", "data.packing=full_sentences"]
WORDPIECE_PAIRS = ["model.family=bert", "tokenizer.kind=wordpiece", "data.packing=segment_pair", "data.nsp=true",
                   "data.segment_embeddings=true"]


def shown(text: str) -> str:
    """The byte-level BPE spelling of a text (a space is 'Ġ', 'é' is 'Ã©')."""
    return "".join(piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text))


def hand_tokenizer(vocab: list[str], decoder: object, **special: str) -> PreTrainedTokenizerFast:
    ids = {token: i for i, token in enumerate(vocab)}
    backend = Tokenizer(models.WordPiece(ids, unk_token="[UNK]") if "[UNK]" in ids else models.BPE(ids, []))
    backend.decoder = decoder
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


# ---- characters of the text (pure) ---------------------------------------------------------------------------

def test_visible_chars_leave_out_every_whitespace():
    assert visible_chars("a bc\td\u00a0e\n") == 5 and visible_chars("   ") == 0 and visible_chars("café") == 4


def test_byte_level_characters_by_hand():
    assert byte_level_chars(shown(" the")) == 3  # 'Ġthe': the space counts nothing
    assert byte_level_chars(shown(" café")) == 4
    e_acute = shown("é")  # two bytes, two byte-level symbols: the character counts once, with its first byte
    assert [byte_level_chars(e_acute[:1]), byte_level_chars(e_acute[1:])] == [1, 0]
    euro = shown("€")  # three bytes
    assert [byte_level_chars(c) for c in euro] == [1, 0, 0]
    assert byte_level_chars(shown("\u00a0")) == 0 and byte_level_chars(shown("\n")) == 0  # whitespace, as text


def test_surface_chars_table_of_hand_made_vocabularies():
    bpe_vocab = ["<s>", "<pad>", "</s>", "<unk>", shown(" the"), "the", shown(" "), *shown("é"), shown("é"),
                 shown(" café"), shown("€")[0], "<mask>"]
    bpe = hand_tokenizer(bpe_vocab, decoders.ByteLevel(), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                         unk_token="<unk>", mask_token="<mask>")
    assert surface_chars(bpe).tolist() == [0, 0, 0, 0, 3, 3, 0, 1, 0, 1, 4, 1, 0]
    wp_vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hel", "##lo", "##é", "café", ","]
    wordpiece = hand_tokenizer(wp_vocab, decoders.WordPiece(), pad_token="[PAD]", unk_token="[UNK]",
                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    assert surface_chars(wordpiece).tolist() == [0, 0, 0, 0, 0, 3, 2, 1, 4, 1]


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_tokens_of_a_text_add_up_to_its_characters(kind):
    texts = ["The café serves crème brûlée for 5 €, naïvely priced.", "Zoë’s œuvre: 3.5 km — “quoted” text!"] * 20
    train = train_bpe if kind == "bpe" else train_wordpiece
    tokenizer = train(texts, 400, False, 1)
    table = surface_chars(tokenizer)
    for text in texts[:2]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert int(table[ids].sum()) == visible_chars(text)


def test_label_chars_count_masked_positions_only():
    table = np.array([0, 0, 3, 1, 5])
    labels = np.array([[IGNORE_INDEX, 2, IGNORE_INDEX, 4], [3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    assert label_chars(labels, table).tolist() == [[0, 3, 0, 5], [1, 0, 0, 0]]


def test_common_set_takes_whole_documents_up_to_the_character_budget():
    chars = [50, 70, 30, 10]
    assert common_document_count(chars, None) == 4
    assert common_document_count(chars, 150) == 3  # 50 + 70 + 30: a prefix, never a cut document
    assert common_document_count(chars, 149) == 2
    assert common_document_count(chars, 10) == 1  # at least one document
    assert common_document_count([], 100) == 0


def test_tokenize_batch_keeps_paragraph_ends_and_counts_characters():
    from harness.data.corpus import text_encoder

    tokenizer = train_bpe(["One two. Three four five. Six."] * 5, 300, False, 1)
    segmented = segment_batch({"doc_id": ["a"], "text": ["One two. Three four\nfive.\n\nSix."]}, "pysbd")
    assert segmented["sentences"] == [["One two.", "Three four five.", "Six."]]
    assert segmented["paragraph_ends"] == [[False, True, True]]
    out = tokenize_batch(segmented, text_encoder(tokenizer))
    assert out["paragraph_ends"] == [[False, True, True]] and out["chars"] == [len("Onetwo.Threefourfive.Six.")]


# ---- bits per character (the model side) -----------------------------------------------------------------------

def test_masked_token_bits_by_hand():
    bits = MaskedTokenBits()
    ln2 = math.log(2)
    bits.update(torch.tensor([ln2, 3 * ln2]), torch.tensor([1, 3]))
    bits.update(torch.tensor([2 * ln2]), torch.tensor([0]))  # e.g. WordPiece's [UNK]: bits, no characters
    got = bits.compute()
    assert got["bpc"].item() == pytest.approx(6 / 4)
    assert got["mlm_loss"].item() == pytest.approx(2 * ln2) and got["ppl"].item() == pytest.approx(4.0)


def test_validation_step_bpc_matches_a_hand_computation():
    torch.manual_seed(0)
    model = build_pretraining_model(ModelConfig(size="tiny"), vocab_size=50, pad_token_id=1, bos_token_id=0,
                                    eos_token_id=2, max_seq_length=16, nsp=False, segment_embeddings=False)
    module = PretrainModule(model, optim=OptimConfig(), total_steps=10, nsp=False).eval()
    ids = torch.randint(5, 50, (3, 12))
    ids[2, 9:] = 1  # padding
    attention = (ids != 1).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    masked = torch.tensor([[0, 3], [0, 7], [1, 1], [1, 11], [2, 4]])
    labels[masked[:, 0], masked[:, 1]] = ids[masked[:, 0], masked[:, 1]]
    inputs = ids.clone()
    inputs[masked[:, 0], masked[:, 1]] = 4  # the mask id
    table = torch.arange(50) % 4  # characters per token, 0 to 3
    batch = {"input_ids": inputs, "attention_mask": attention, "labels": labels,
             "label_chars": torch.where(labels != IGNORE_INDEX, table[labels.clamp(min=0)], 0)}
    with torch.no_grad():
        module.validation_step(batch, 0, dataloader_idx=1)
        module.validation_step({k: v for k, v in batch.items() if k != "label_chars"}, 0)  # own format: elsewhere
        logits = model(input_ids=inputs, attention_mask=attention).logits
    nll = -torch.log_softmax(logits.double(), -1)[masked[:, 0], masked[:, 1], labels[masked[:, 0], masked[:, 1]]]
    chars = table[labels[masked[:, 0], masked[:, 1]]].sum()
    got = module.common_val.compute()
    assert got["bpc"].item() == pytest.approx((nll.sum() / math.log(2) / chars).item(), rel=1e-5)
    assert got["mlm_loss"].item() == pytest.approx(nll.mean().item(), rel=1e-5)
    assert module.common_val.tokens.item() == 5 and module.val_mlm_loss.compute().item() == pytest.approx(
        nll.mean().item(), rel=1e-5)


# ---- the common set on real data -------------------------------------------------------------------------------

def set_up(overrides, shared_data):
    config = load_config(overrides=WIKI + overrides)
    data = build_datamodule(config, resolve_recipe(config), shared_data)
    data.prepare_data()
    data.setup("fit")
    return data


def test_common_set_is_the_same_text_for_different_tokenizers_and_packings(shared_data):
    bpe, wordpiece = set_up(BPE_FULL, shared_data), set_up(WORDPIECE_PAIRS, shared_data)
    records = [data.common_val_record() for data in (bpe, wordpiece)]
    # WikiText-2 valid holds out 3 of its 60 articles (6,589 + 13,781 + 19,121 characters): all fit the default budget
    assert records[0]["common_val_documents"] == records[1]["common_val_documents"] == 3
    assert records[0]["common_val_chars"] == records[1]["common_val_chars"] == 6_589 + 13_781 + 19_121
    for data, record in zip((bpe, wordpiece), records, strict=True):
        packed, common = data.common_validation.packed, data.common_validation
        content = np.concatenate([packed.row(r)[1:-1] for r in range(len(packed))])
        framing = list(data.specials.all_ids - {data.specials.unk_id})  # [UNK] is content
        assert not np.isin(content, framing).any()  # one segment, no separator inside
        assert (packed.lengths() <= 64).all() and (np.asarray(packed.a_lengths) == packed.lengths()).all()
        surface = int(common.char_table[content].sum())
        if data is bpe:  # byte-level BPE is lossless: its tokens spell the held-out text exactly
            assert surface == common.chars
        else:  # WordPiece: all but its rare [UNK] words
            assert 0.99 * common.chars < surface <= common.chars
        assert 0.13 < record["common_val_masked_tokens"] / record["common_val_tokens"] < 0.17
        batch = next(iter(data.common_val_dataloader()))
        assert {"label_chars", "labels"} <= set(batch) and not {"token_type_ids", "next_sentence_label"} & set(batch)
    assert {"token_type_ids", "next_sentence_label"} <= set(next(iter(wordpiece.own_val_dataloader())))


def test_common_set_budget_counts_characters_not_tokens(shared_data):
    for budget, documents, chars in ((20_370, 2, 20_370), (20_369, 1, 6_589), (100, 1, 6_589), ("null", 3, 39_491)):
        common = set_up(BPE_FULL + [f"budget.common_val_max_chars={budget}"], shared_data).common_validation
        assert (common.documents, common.chars) == (documents, chars), budget


def test_pretrain_reports_the_common_set_for_two_different_arms(shared_data, tmp_path):
    steps = ["budget.max_steps=2", "budget.val_every_steps=1", "budget.val_max_examples=32",
             "impl.checkpoint_every_steps=2", "logging.log_every_steps=1"]
    metrics = {name: pretrain(load_config(overrides=WIKI + steps + arm), shared_data, tmp_path / name)
               for name, arm in (("bpe", BPE_FULL), ("wordpiece", WORDPIECE_PAIRS))}
    bpe, wordpiece = metrics["bpe"], metrics["wordpiece"]
    assert bpe["common_val_chars"] == wordpiece["common_val_chars"] > 30_000
    assert bpe["common_val_tokens"] != wordpiece["common_val_tokens"]  # same text, other tokens
    for m in (bpe, wordpiece):
        assert isinstance(m["common_val_chars"], int) and m["common_val_masked_chars"] > m["common_val_masked_tokens"]
        assert 2.0 < m["common_val_bpc"] < 8.0
        assert m["common_val_ppl"] == pytest.approx(math.exp(m["common_val_mlm_loss"]), rel=1e-4)
        assert "val_mlm_loss" in m  # the arm's own format, still reported beside
    assert "val_nsp_acc" in wordpiece
    run = next((tmp_path / "bpe").glob("*/runs/*"))
    curves = read_curves(run)
    assert curves["common_val/bpc"].dropna().size == 3  # after updates 1 and 2, and the final validate()
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["common_val_bpc"] == pytest.approx(curves["common_val/bpc"].dropna().iloc[-1])


# ---- fairseq separators in real batches ------------------------------------------------------------------------

def test_fairseq_separators_in_real_batches(shared_data, tmp_path):
    config = load_config(overrides=WIKI + BPE_FULL + ["data.separators=fairseq", "data.max_seq_length=128"])
    stats = inspect_data(config, batches=4, out=tmp_path / "batches.jsonl", data_dir=shared_data, show=0)
    assert stats["length"]["over_max_seq_length"] == 0
    records = [json.loads(line) for line in (tmp_path / "batches.jsonl").read_text().splitlines()]
    sep = 2  # </s> of the harness's byte-level BPE
    interior = 0
    for record in records:
        original = [label if label != IGNORE_INDEX else token
                    for token, label in zip(record["input_ids"], record["labels"], strict=True)]
        assert original[0] == 0 and original[-1] == sep
        interior += original[1:-1].count(sep)
    assert interior > 0  # paragraph ends inside inputs (WikiText's paragraphs are long: most end an input)
    # Every packed input: each of the 57 training articles ends in </s></s> exactly once; with data.separators =
    # document no input holds two separators in a row. Paragraph ends (1,754 in the training split) add the rest.
    fairseq = set_up(BPE_FULL + ["data.separators=fairseq", "data.max_seq_length=128"], shared_data)
    plain = set_up(BPE_FULL + ["data.max_seq_length=128"], shared_data)
    ids, plain_ids = (np.asarray(d.train_examples.packed.ids) for d in (fairseq, plain))
    assert int(((ids[:-1] == sep) & (ids[1:] == sep)).sum()) == 57
    assert not ((plain_ids[:-1] == sep) & (plain_ids[1:] == sep)).any()
    rows = len(fairseq.train_examples.packed)
    assert 1_754 + 57 <= int((ids == sep).sum()) <= 1_754 + 57 + rows


def test_document_losses_sum_per_document_by_hand():
    """Two rows of document 3 and one of document 1; masked tokens in row-major order as the model returns them. A
    held-out set of one document comes back as one-element tensors squeezed to scalars by torchmetrics: the module
    reshapes them (see PretrainModule), so one document is also a list."""
    import torch

    from harness.models.metrics import DocumentLosses

    metric = DocumentLosses()
    masked = torch.tensor([[True, False, True], [False, True, False], [True, True, False]])
    metric.update(torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0]), torch.tensor([1, 1, 2, 3, 5]), masked,
                  torch.tensor([3, 1, 3]))
    sums = metric.compute()
    assert sums["document"].tolist() == [1, 3] and sums["nll"].tolist() == [4.0, 27.0]
    assert sums["tokens"].tolist() == [1, 4] and sums["chars"].tolist() == [2, 10]
    single = DocumentLosses()
    single.update(torch.tensor([1.0, 2.0]), torch.tensor([3, 4]), torch.tensor([[False, True, True]]),
                  torch.tensor([7]))
    assert {name: value.reshape(-1).tolist() for name, value in single.compute().items()} == {
        "document": [7], "nll": [3.0], "tokens": [2], "chars": [7]}
