"""BLiMP zero-shot evaluation: PLL against the plain forward on tiny BERT and RoBERTa checkpoints, the word-l2r masks on
hand-made ids, outcomes and aggregation on hand-made scores, one line per bad input, the published figures, and
`harness evaluate` end to end with its record. The checkpoints are random-init 2-layer models (equality does not
need training) whose tokenizers are trained on a few sentences, so words split into several pieces."""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.config import ConfigError, HarnessError
from harness.downstream.blimp import (
    PARADIGMS,
    MinimalPair,
    PairOutcome,
    accuracies,
    load_pairs,
    load_reference,
    read_outcomes,
    read_paradigm_file,
)
from harness.downstream.encode import open_checkpoint
from harness.downstream.pll import EncodedGroup, load_masked_lm, masked_copies, score_sentences
from harness.downstream.sources import find_task_dir
from harness.evaluate import BlimpConfig, blimp_record_path, evaluate_blimp, load_blimp_config
from harness.runs import RunDirError
from harness.tasks import TASKS

CORPUS = [
    "Who should Derek hug after shocking Richard?", "Who should Derek hug Richard after shocking?",
    "Unbelievably, Katherine's dog was barking at the neighbours.", "The cats that the dog chases are hungry.",
    "Many girls insulted themselves.", "Many girls insulted herself.", "Whose hat should Carla wear?",
    "There was a documentary about music irritating Allison.", "Every customer who a waitress has talked to left.",
]
SENTENCES = CORPUS[:4] + ["Irritating documentaries were unbelievably shocking.", "Dogs bark."]


def save_tiny(path: Path, family: str) -> Path:
    """A random-init MLM checkpoint (2 layers, hidden 64) with a small tokenizer trained on CORPUS."""
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertTokenizer,
        RobertaConfig,
        RobertaForMaskedLM,
        RobertaTokenizer,
    )

    path.mkdir(parents=True)
    size = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
    if family == "bert":
        from tokenizers import BertWordPieceTokenizer

        wordpiece = BertWordPieceTokenizer(lowercase=True)
        wordpiece.train_from_iterator(CORPUS * 3, vocab_size=120, show_progress=False,
                                      special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        wordpiece.save_model(str(path.parent), "wp")
        tokenizer = BertTokenizer(vocab=str(path.parent / "wp-vocab.txt"), do_lower_case=True)
        model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, **size))
    else:
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(CORPUS * 3, vocab_size=300, min_frequency=2, show_progress=False,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(str(path.parent), "bpe")
        tokenizer = RobertaTokenizer(vocab=str(path.parent / "bpe-vocab.json"),
                                     merges=str(path.parent / "bpe-merges.txt"))
        model = RobertaForMaskedLM(RobertaConfig(
            vocab_size=len(tokenizer), max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, **size))
    torch.manual_seed(0)
    model.init_weights()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blimp-ckpt")
    return {family: save_tiny(root / f"tiny-{family}", family) for family in ("bert", "roberta")}


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


def brute_force_pll(path: Path, sentence: str, word_l2r: bool) -> float:
    """The definition, one masked copy at a time through the plain AutoModelForMaskedLM forward (full logits)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path).eval()
    enc = tokenizer(sentence, return_special_tokens_mask=True)
    ids, words = enc["input_ids"], enc.word_ids()
    total = 0.0
    for position, special in enumerate(enc["special_tokens_mask"]):
        if special:
            continue
        copy = list(ids)
        for later in range(position, len(ids)):
            if later == position or (word_l2r and words[later] == words[position]):
                copy[later] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([copy])).logits[0, position]
        total += torch.log_softmax(logits, dim=-1)[ids[position]].item()
    return total


# ---- scoring ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("scoring", ["pll", "pll_word_l2r"])
def test_pll_equals_the_plain_forward_over_every_masked_copy(checkpoints, family, scoring):
    lm = load_masked_lm(open_checkpoint(checkpoints[family]))
    assert lm.path == "last_layer"  # the fast path: last layer and head at the scored positions only
    # a batch of 5 copies cuts across sentences; the repeated sentence must get the very same score
    scores = score_sentences(lm, [*SENTENCES, SENTENCES[0]], scoring, batch_size=5)
    expected = [brute_force_pll(checkpoints[family], s, scoring == "pll_word_l2r") for s in SENTENCES]
    np.testing.assert_allclose(scores[:-1], expected, rtol=1e-5, atol=1e-4)
    assert scores[-1] == scores[0]


def test_the_three_scoring_paths_agree(checkpoints):
    lm = load_masked_lm(open_checkpoint(checkpoints["roberta"]))
    scores = {path: score_sentences(replace(lm, path=path), SENTENCES, batch_size=16)
              for path in ("last_layer", "head", "full")}
    np.testing.assert_allclose(scores["last_layer"], scores["full"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores["head"], scores["full"], rtol=1e-5, atol=1e-4)


def test_word_l2r_masks_the_rest_of_the_word_on_hand_made_ids():
    # [CLS] un believ ably news [SEP]: one word in 3 pieces, then a one-piece word; 9 = the mask id
    group = EncodedGroup(ids=np.array([[1, 10, 11, 12, 13, 2]]), words=np.array([[-1, 0, 0, 0, 1, -1]]),
                         scored=np.array([[False, True, True, True, True, False]]))
    rows, positions = np.zeros(4, dtype=np.int64), np.array([1, 2, 3, 4])
    l2r, targets = masked_copies(group, rows, positions, mask_id=9, word_l2r=True)
    assert l2r.tolist() == [[1, 9, 9, 9, 13, 2], [1, 10, 9, 9, 13, 2], [1, 10, 11, 9, 13, 2], [1, 10, 11, 12, 9, 2]]
    assert targets.tolist() == [10, 11, 12, 13]
    plain, _ = masked_copies(group, rows, positions, mask_id=9, word_l2r=False)
    assert plain.tolist() == [[1, 9, 11, 12, 13, 2], [1, 10, 9, 12, 13, 2], [1, 10, 11, 9, 13, 2],
                              [1, 10, 11, 12, 9, 2]]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_word_ids_group_the_pieces_of_one_word(checkpoints, family):
    tokenizer = open_checkpoint(checkpoints[family]).tokenizer
    sentence = "Unbelievably, Katherine's dog barked."
    enc = tokenizer(sentence, return_offsets_mapping=True)
    first_word = [w for w, (start, end) in zip(enc.word_ids(), enc["offset_mapping"], strict=True)
                  if w is not None and end <= len("Unbelievably")]
    assert len(first_word) >= 3 and len(set(first_word)) == 1  # several pieces, one word
    comma = [w for w, (start, _) in zip(enc.word_ids(), enc["offset_mapping"], strict=True)
             if w is not None and sentence[start] == ","]
    assert comma and comma[0] != first_word[0]


# ---- outcomes -----------------------------------------------------------------------------------------------
def outcome(paradigm: str, field: str, term: str, good: float, bad: float) -> PairOutcome:
    return PairOutcome(MinimalPair(paradigm, "0", "g", "b", field, term), good, bad)


def test_a_tie_is_wrong_and_counted():
    tie = outcome("p", "f", "t", -3.5, -3.5)
    assert not tie.correct and tie.tie
    assert outcome("p", "f", "t", -3.0, -3.5).correct and not outcome("p", "f", "t", -4.0, -3.5).correct
    result = accuracies([tie, outcome("p", "f", "t", -1.0, -2.0)])
    assert (result["overall"], result["by_paradigm"], result["ties"], result["pairs"]) == (50.0, {"p": 50.0}, 1, 2)


def test_accuracy_is_a_mean_over_paradigms_by_field_and_term():
    # p1 (A, X): 3 of 4 right = 75; p2 (A, Y): 1 of 2, the other a tie = 50; p3 (B, X): 0 of 1 = 0
    outcomes = [outcome("p1", "A", "X", g, b) for g, b in ((-1, -2), (-1, -2), (-1, -2), (-3, -2))]
    outcomes += [outcome("p2", "A", "Y", -1, -2), outcome("p2", "A", "Y", -2, -2), outcome("p3", "B", "X", -5, -1)]
    result = accuracies(outcomes)
    assert result["by_paradigm"] == {"p1": 75.0, "p2": 50.0, "p3": 0.0}
    assert result["overall"] == pytest.approx(125 / 3)  # not the pooled 4 of 7 = 57.1
    assert result["by_field"] == {"A": 62.5, "B": 0.0}
    assert result["by_term"] == {"X": 37.5, "Y": 50.0}
    assert (result["ties"], result["pairs"], result["paradigms"]) == (1, 7, 3)


# ---- bad input, one line each -------------------------------------------------------------------------------
def write_blimp(root: Path, paradigm: str, lines: list[str]) -> Path:
    path = root / "blimp" / "data" / f"{paradigm}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def record(paradigm: str, pair_id: int, **drop: bool) -> str:
    row = {"sentence_good": "Dogs bark.", "sentence_bad": "Dogs barks.", "field": "morphology",
           "linguistics_term": "subject_verb_agreement", "UID": paradigm, "pairID": str(pair_id)}
    return json.dumps({k: v for k, v in row.items() if not drop.get(k)})


def test_missing_paradigm_file_names_the_file(tmp_path):
    write_blimp(tmp_path, "passive_1", [record("passive_1", 0)])
    assert find_task_dir(TASKS["blimp"], tmp_path) == tmp_path / "blimp"
    with pytest.raises(HarnessError) as err:
        load_pairs(["passive_1", "passive_2"], None, tmp_path)
    assert str(tmp_path / "blimp" / "data" / "passive_2.jsonl") in one_line(err) and "not found" in str(err.value)


def test_malformed_lines_name_file_line_and_what_is_wrong(tmp_path):
    path = write_blimp(tmp_path, "passive_1", [record("passive_1", 0), record("passive_1", 1, sentence_bad=True)])
    with pytest.raises(HarnessError, match=rf"{path}:2: missing field 'sentence_bad'") as err:
        read_paradigm_file(path)
    one_line(err)
    path = write_blimp(tmp_path, "passive_1", [record("passive_1", 0), "{not json"])
    with pytest.raises(HarnessError, match=rf"{path}:2: not a JSON object") as err:
        read_paradigm_file(path)
    path = write_blimp(tmp_path, "passive_1", [record("passive_2", 0)])
    with pytest.raises(HarnessError, match=rf"{path}:1: UID 'passive_2' in the file of paradigm 'passive_1'"):
        read_paradigm_file(path)
    assert len(read_paradigm_file(write_blimp(tmp_path, "passive_1", [record("passive_1", 0), "{x"]), 1)) == 1


def test_bad_settings_are_one_line_naming_the_field():
    with pytest.raises(ConfigError) as err:
        load_blimp_config(["blimp.paradigms=adjunct_island,nope"])
    assert "blimp.paradigms" in one_line(err) and "'nope'" in str(err.value) and "67" in str(err.value)
    with pytest.raises(ConfigError, match="blimp.scoring") as err:
        load_blimp_config(["scoring=ppl"])
    assert "pll_word_l2r" in one_line(err)
    with pytest.raises(ConfigError, match="unknown config field 'blimp.pairs'"):
        load_blimp_config(["blimp.pairs=3"])
    settings = load_blimp_config(["blimp.paradigms=passive_1, adjunct_island", "pairs_per_paradigm=5"])
    assert settings.paradigms == ("adjunct_island", "passive_1") and settings.pairs_per_paradigm == 5
    assert load_blimp_config().paradigm_names() == PARADIGMS and len(PARADIGMS) == 67


def test_a_fine_tuned_classifier_is_refused(tmp_path, checkpoints):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path / "classifier"
    BertForSequenceClassification(BertConfig.from_pretrained(checkpoints["bert"])).save_pretrained(path)
    AutoTokenizer.from_pretrained(checkpoints["bert"]).save_pretrained(path)
    with pytest.raises(HarnessError) as err:
        load_masked_lm(open_checkpoint(path))
    assert "no masked-LM head weights" in one_line(err) and "BertForSequenceClassification" in str(err.value)


def test_a_tokenizer_without_mask_token_is_refused(tmp_path, checkpoints):
    from transformers import PreTrainedTokenizerFast

    path = tmp_path / "no-mask"
    shutil.copytree(checkpoints["bert"], path)
    (path / "tokenizer_config.json").unlink()
    PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]").save_pretrained(path)
    with pytest.raises(HarnessError, match="has no mask token") as err:
        load_masked_lm(open_checkpoint(path))
    one_line(err)


def test_unknown_evaluate_task_lists_the_zero_shot_tasks(capsys, checkpoints, tmp_path):
    assert main(["evaluate", "--checkpoint", str(checkpoints["bert"]), "--task", "sst2", "--results",
                 str(tmp_path)]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "unknown zero-shot task 'sst2'" in message and "allowed: blimp" in message


def test_without_a_data_root_the_hub_is_used(monkeypatch):
    import datasets

    import harness.downstream.sources as sources

    asked = []

    def fake_hub(spec, split):
        asked.append((spec.hub.name, spec.hub.config, split))
        return datasets.Dataset.from_list([json.loads(record(spec.hub.config, i)) for i in range(3)])

    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.setattr(sources, "load_hub_dataset", fake_hub)
    pairs, source = load_pairs(["passive_1", "wh_island"], 2, None)
    assert asked == [("nyu-mll/blimp", "passive_1", "train"), ("nyu-mll/blimp", "wh_island", "train")]
    assert source == "nyu-mll/blimp" and [(p.paradigm, p.pair_id) for p in pairs] == [
        ("passive_1", "0"), ("passive_1", "1"), ("wh_island", "0"), ("wh_island", "1")]


# ---- real data ----------------------------------------------------------------------------------------------
def test_reference_figures_reproduce_the_papers_overall_means(shared_data):
    reference = load_reference(shared_data)
    overall = {key: round(entry["overall"], 1) for key, entry in reference.items()}
    # The README (and the paper) give GPT-2 81.5; models_summary.jsonl's own per-paradigm figures average 83.0,
    # and so does its own "overall" row: the file is what is distributed, so it is what is loaded.
    assert overall == {"ngram": 61.2, "lstm": 69.8, "txl": 69.6, "gpt2": 83.0, "human": 88.6}
    assert all(len(entry["by_paradigm"]) == 67 for entry in reference.values())
    # the file's per-phenomenon rows are means over the paradigms our loader files under that phenomenon
    pairs, _ = load_pairs(PARADIGMS, 1, shared_data)
    term_of = {pair.paradigm: pair.term for pair in pairs}
    for entry in (reference[key] for key in ("ngram", "lstm", "txl", "gpt2")):
        assert len(entry["by_term"]) == 12
        for term, value in entry["by_term"].items():
            mine = [entry["by_paradigm"][p] for p in PARADIGMS if term_of[p] == term]
            assert np.mean(mine) == pytest.approx(value, abs=1e-6)


def test_load_pairs_reads_the_official_layout(shared_data):
    assert find_task_dir(TASKS["blimp"], shared_data) == shared_data / "blimp"
    pairs, source = load_pairs(["adjunct_island", "principle_A_case_2"], 3, shared_data)
    assert source == str(shared_data / "blimp" / "data") and len(pairs) == 6
    assert pairs[0].good == "Who should Derek hug after shocking Richard?" and pairs[0].pair_id == "0"
    assert {p.field for p in pairs} == {"syntax", "syntax_semantics"}  # the file spells it syntax/semantics


def test_evaluate_end_to_end_writes_the_record_once(capsys, checkpoints, shared_data, tmp_path, monkeypatch):
    argv = ["evaluate", "--checkpoint", str(checkpoints["roberta"]), "--task", "blimp", "--results", str(tmp_path),
            "--data-dir", str(shared_data), "--set", "blimp.paradigms=adjunct_island,passive_1",
            "--set", "blimp.pairs_per_paradigm=20", "--set", "blimp.impl.batch_size=64"]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    folder = Path(shown["record"])
    assert folder.parent == tmp_path / "evaluate" / "evaluate" and folder.name.startswith("tiny-roberta__blimp__")
    assert {p.name for p in folder.iterdir()} == {"config.json", "env.json", "pairs.csv.gz", "final_metrics.json"}
    final = json.loads((folder / "final_metrics.json").read_text())
    assert final["score"] == final["overall"] == shown["overall"] and final["pairs"] == shown["pairs"] == 40
    assert set(final["by_paradigm"]) == {"adjunct_island", "passive_1"} and final["paradigms"] == 2
    assert set(shown["by_field"]) == {"syntax"} and final["scoring"] == "pll"
    rows = read_outcomes(folder / "pairs.csv.gz")
    assert len(rows) == 40 and sum(r["correct"] for r in rows) / 20 * 50 == pytest.approx(final["overall"])
    assert sum(r["score_good"] == r["score_bad"] for r in rows) == final["ties"]
    lm = load_masked_lm(open_checkpoint(checkpoints["roberta"]))
    assert (rows[0]["paradigm"], rows[0]["pairID"]) == ("adjunct_island", "0")
    first = score_sentences(lm, ["Who should Derek hug after shocking Richard?"])[0]
    assert first == pytest.approx(rows[0]["score_good"], abs=1e-4)
    with gzip.open(folder / "pairs.csv.gz", "rt") as handle:
        assert handle.readline().strip() == "paradigm,pairID,field,term,score_good,score_bad,correct"

    # a second call returns the record without loading the model or the data
    import harness.downstream.pll as pll

    monkeypatch.setattr(pll, "load_masked_lm", lambda *a, **k: pytest.fail("the model was loaded again"))
    settings = load_blimp_config(["paradigms=adjunct_island,passive_1", "pairs_per_paradigm=20"])
    stamp = (folder / "final_metrics.json").stat().st_mtime_ns
    assert evaluate_blimp(checkpoints["roberta"], shared_data, settings, tmp_path) == final
    assert (folder / "final_metrics.json").stat().st_mtime_ns == stamp
    assert blimp_record_path(tmp_path, checkpoints["roberta"], settings, final["checkpoint_fingerprint"]) == folder
    # impl is speed only: same record; the scoring is not
    faster = settings.model_copy(update={"impl": settings.impl.model_copy(update={"batch_size": 7})})
    assert blimp_record_path(tmp_path, checkpoints["roberta"], faster, final["checkpoint_fingerprint"]) == folder
    other = settings.model_copy(update={"scoring": "pll_word_l2r"})
    assert blimp_record_path(tmp_path, checkpoints["roberta"], other, final["checkpoint_fingerprint"]) != folder


def test_a_record_holding_another_config_is_refused(checkpoints, shared_data, tmp_path):
    settings = BlimpConfig(paradigms=("passive_1",), pairs_per_paradigm=2)
    evaluate_blimp(checkpoints["bert"], shared_data, settings, tmp_path)
    folder = next((tmp_path / "evaluate" / "evaluate").iterdir())
    (folder / "final_metrics.json").unlink()  # half-finished: it would be scored again...
    config = json.loads((folder / "config.json").read_text())
    config["resolved"]["data_digest"] = "0" * 16  # ...but it started on other pairs
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="different config \\(data_digest") as err:
        evaluate_blimp(checkpoints["bert"], shared_data, settings, tmp_path)
    one_line(err)
