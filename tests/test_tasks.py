"""Task registry, loaders (GLUE TSV, SQuAD JSON, CoNLL), encoders and metrics on hand-made and real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from harness.config import ConfigError, HarnessError
from harness.downstream.conll import NerSentence, iob1_to_iob2, read_conll
from harness.downstream.metrics import entity_scores, glue_metrics, squad_scores
from harness.downstream.sources import load_examples
from harness.downstream.squad import QAExample, QAWindow, postprocess_qa, read_squad_json
from harness.tasks import TASKS, get_task

GLUE = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli_mm", "qnli", "rte", "wnli"]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_registry_declares_every_task_once_with_official_metrics():
    assert set(GLUE) | {"squad_v1", "squad_v2", "conll2003", "blimp"} == set(TASKS)
    assert get_task("blimp").kind == "zero_shot"
    expected = {"cola": ("mcc",), "mrpc": ("f1", "accuracy"), "qqp": ("f1", "accuracy"),
                "stsb": ("pearson", "spearman"), "squad_v2": ("exact_match", "f1")}
    for name, metrics in expected.items():
        assert get_task(name).metrics == metrics
    assert {get_task(n).metrics for n in ("sst2", "mnli", "mnli_mm", "qnli", "rte", "wnli")} == {("accuracy",)}
    assert get_task("mnli").hub.dev_split == "validation_matched"
    assert get_task("mnli_mm").hub.dev_split == "validation_mismatched"
    assert get_task("stsb").kind == "regression" and get_task("stsb").num_labels == 1


def test_unknown_task_is_one_line_listing_the_known_ones():
    with pytest.raises(ConfigError) as err:
        get_task("sst-2")
    message = one_line(err)
    assert "sst-2" in message and "sst2" in message and "conll2003" in message and "mnli_mm" in message


# ---- GLUE files in their exact official layouts -------------------------------------------------------------
# Each entry: folder, {file name: text}, the split files' expected (text_a, text_b, label) of the first row.
Q = '"'  # GLUE text holds bare quotes; with csv's default quoting they would swallow the following rows
LAYOUTS = {
    "cola": ("CoLA", {"train.tsv": f"gj04\t1\t\tOur friends won't buy {Q}this.\nclc95\t0\t*\tThe more you eat.\n",
                      "dev.tsv": "gj04\t1\t\tA good one.\n"}),
    "sst2": ("SST-2", {"train.tsv": f"sentence\tlabel\nhide {Q}new secretions \t0\nwarm and funny \t1\n",
                       "dev.tsv": "sentence\tlabel\nit 's charming . \t1\n"}),
    "mrpc": ("MRPC", {"train.tsv": f"\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                   f"1\t702876\t702977\tAmrozi {Q}accused .\tReferring to him .\n"
                                   "0\t2108705\t2108831\tYucaipa owned .\tYucaipa bought .\n",
                      "dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said .\tHe says .\n"}),
    "stsb": ("STS-B", {name: "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\t"
                             "score\n0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\t"
                             f"A {Q}plane.\tAn air plane.\t5.000\n"
                             "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man.\tA flute.\t3.800\n"
                       for name in ("train.tsv", "dev.tsv")}),
    "qqp": ("QQP", {name: "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                          f"133273\t213221\t213222\tHow is {Q}life?\tHow is life at UBC?\t0\n"
                          "402555\t536040\t536041\tHow do I?\tWhat do I do?\t1\n"
                    for name in ("train.tsv", "dev.tsv")}),
    "mnli": ("MNLI", {
        "train.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                     "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
                     f"0\t31193\t31193n\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tConceptually {Q}cream.\t"
                     "Product and geography.\tneutral\tneutral\n"
                     "1\t101457\t101457e\ttelephone\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tyou know .\tYou lose .\t"
                     "entailment\tentailment\n",
        "dev_matched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                           "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
                           "label5\tgold_label\n0\t63735\t63735n\tslate\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t"
                           "The new rights.\tEveryone wants them.\tneutral\tentailment\tneutral\tneutral\tneutral\t"
                           "contradiction\n",
        "dev_mismatched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                              "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
                              "label4\tlabel5\tgold_label\n0\t75290\t75290c\tletters\t( x )\t( y )\t(ROOT x)\t"
                              "(ROOT y)\tYour gift.\tHundreds gave.\tentailment\tneutral\tentailment\tentailment\t"
                              "entailment\tentailment\n"}),
    "qnli": ("QNLI", {name: f"index\tquestion\tsentence\tlabel\n0\tWhat {Q}came?\tThe Treaty.\tentailment\n"
                            "1\tWho?\tNobody.\tnot_entailment\n" for name in ("train.tsv", "dev.tsv")}),
    "rte": ("RTE", {name: f"index\tsentence1\tsentence2\tlabel\n0\tNo {Q}Weapons Found.\tWeapons Found.\t"
                          "not_entailment\n1\tA place.\tPope Benedict.\tentailment\n"
                    for name in ("train.tsv", "dev.tsv")}),
    "wnli": ("WNLI", {name: f"index\tsentence1\tsentence2\tlabel\n0\tI stuck a {Q}pin.\tThe carrot had a hole.\t1\n"
                            "1\tJohn is short.\tBilly is short.\t0\n" for name in ("train.tsv", "dev.tsv")}),
}
FIRST_TRAIN = {
    "cola": ("Our friends won't buy \"this.", None, 1), "sst2": ("hide \"new secretions ", None, 0),
    "mrpc": ("Amrozi \"accused .", "Referring to him .", 1), "stsb": ("A \"plane.", "An air plane.", 5.0),
    "qqp": ("How is \"life?", "How is life at UBC?", 0), "mnli": ("Conceptually \"cream.", "Product and geography.", 1),
    "mnli_mm": ("Conceptually \"cream.", "Product and geography.", 1), "qnli": ("What \"came?", "The Treaty.", 0),
    "rte": ("No \"Weapons Found.", "Weapons Found.", 1), "wnli": ("I stuck a \"pin.", "The carrot had a hole.", 1),
}
DEV_ROWS = {"cola": 1, "sst2": 1, "mrpc": 1, "stsb": 2, "qqp": 2, "mnli": 1, "mnli_mm": 1, "qnli": 2, "rte": 2,
            "wnli": 2}
FIRST_DEV_LABEL = {"cola": 1, "sst2": 1, "mrpc": 1, "stsb": 5.0, "qqp": 0, "mnli": 2, "mnli_mm": 0, "qnli": 0,
                   "rte": 1, "wnli": 1}


def write_layout(root, task: str):
    folder, files = LAYOUTS["mnli" if task == "mnli_mm" else task]
    task_dir = root / "glue" / folder
    task_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (task_dir / name).write_text(text, encoding="utf-8")
    return task_dir


@pytest.mark.parametrize("task", GLUE)
def test_glue_loader_reads_the_official_layout(task, tmp_path):
    write_layout(tmp_path, task)
    spec = get_task(task)
    train = load_examples(spec, "train", tmp_path)
    dev = load_examples(spec, "dev", tmp_path)
    assert len(train) == 2 and len(dev) == DEV_ROWS[task]
    first = train[0]
    assert (first.text_a, first.text_b, first.label) == FIRST_TRAIN[task]
    assert dev[0].label == FIRST_DEV_LABEL[task]


def test_a_task_folder_itself_can_be_the_data_dir(tmp_path):
    task_dir = write_layout(tmp_path, "rte")
    assert len(load_examples(get_task("rte"), "train", task_dir)) == 2


REAL_COUNTS = {"sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500), "rte": (2490, 277), "wnli": (635, 71)}


@pytest.mark.parametrize("task", list(REAL_COUNTS))
def test_real_glue_files_load_with_the_published_row_counts(task, shared_data):
    spec = get_task(task)
    train, dev = load_examples(spec, "train", shared_data), load_examples(spec, "dev", shared_data)
    assert (len(train), len(dev)) == REAL_COUNTS[task]
    labels = {ex.label for ex in train + dev}
    if spec.kind == "regression":
        assert min(labels) == 0.0 and max(labels) == 5.0
    else:
        assert labels == set(range(spec.num_labels))
    assert all(ex.text_a for ex in train) and all((ex.text_b is not None) == spec.is_pair for ex in dev)


# ---- one-line errors on bad files ----------------------------------------------------------------------------
def test_wrong_field_count_names_file_and_line(tmp_path):
    task_dir = write_layout(tmp_path, "rte")
    (task_dir / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    with pytest.raises(HarnessError) as err:
        load_examples(get_task("rte"), "train", tmp_path)
    assert f"{task_dir / 'train.tsv'}:3:" in one_line(err) and "found 3" in str(err.value)


def test_label_outside_the_label_set_names_file_line_and_label(tmp_path):
    task_dir = write_layout(tmp_path, "cola")
    (task_dir / "dev.tsv").write_text("gj04\t1\t\tfine.\ngj04\t2\t\tbad label.\n")
    with pytest.raises(HarnessError) as err:
        load_examples(get_task("cola"), "dev", tmp_path)
    assert f"{task_dir / 'dev.tsv'}:2:" in one_line(err) and "'2'" in str(err.value)


def test_missing_split_file_is_named(tmp_path):
    task_dir = write_layout(tmp_path, "mnli")
    (task_dir / "dev_mismatched.tsv").unlink()
    assert len(load_examples(get_task("mnli"), "dev", tmp_path)) == 1
    with pytest.raises(HarnessError) as err:
        load_examples(get_task("mnli_mm"), "dev", tmp_path)
    assert "dev_mismatched.tsv" in one_line(err)


def test_header_without_the_declared_column(tmp_path):
    task_dir = write_layout(tmp_path, "sst2")
    (task_dir / "train.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(HarnessError) as err:
        load_examples(get_task("sst2"), "train", tmp_path)
    assert "sentence" in one_line(err) and "train.tsv:1" in str(err.value)


def test_explicit_data_dir_without_the_task_lists_where_it_looked(tmp_path):
    with pytest.raises(HarnessError) as err:
        load_examples(get_task("qnli"), "train", tmp_path)
    assert str(tmp_path / "glue" / "QNLI") in one_line(err)


def test_hub_loading_offline_fails_fast_with_a_hint(monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    with pytest.raises(HarnessError) as err:
        load_examples(get_task("sst2"), "train", None)
    message = one_line(err)
    assert "nyu-mll/glue (sst2)" in message and "--data-dir" in message


# ---- SQuAD ---------------------------------------------------------------------------------------------------
def squad_file(path, with_impossible: bool):
    qas = [{"id": "q1", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 0}]}]
    if with_impossible:
        qas.append({"id": "q2", "question": "Who lost?", "answers": [], "is_impossible": True,
                    "plausible_answers": [{"text": "Panthers", "answer_start": 24}]})
    data = {"version": "v2.0", "data": [{"title": "SB50", "paragraphs": [
        {"context": "Denver Broncos beat the Panthers.", "qas": qas}]}]}
    path.write_text(json.dumps(data))
    return path


def test_squad_json_reader_and_v1_refuses_unanswerable(tmp_path):
    examples = read_squad_json(squad_file(tmp_path / "dev-v2.0.json", True), allow_no_answer=True)
    assert [(e.id, e.answers, e.answer_starts) for e in examples] == [("q1", ("Denver Broncos",), (0,)),
                                                                        ("q2", (), ())]
    with pytest.raises(HarnessError) as err:
        read_squad_json(tmp_path / "dev-v2.0.json", allow_no_answer=False)
    assert "data[0].paragraphs[0].qas[1]" in one_line(err) and "squad_v2" in str(err.value)


def test_squad_v1_scores_match_hand_computed_values():
    examples = [QAExample("a", "", "", ("Denver Broncos", "The Denver Broncos"), (0, 0)),
                QAExample("b", "", "", ("Denver Broncos",), (0,)),
                QAExample("c", "", "", ("a cat",), (0,))]
    predictions = {"a": "the denver broncos!", "b": "Broncos", "c": "the cat sat"}
    scores = squad_scores(predictions, examples)
    # a: exact after normalisation. b: P=1, R=1/2 -> F1 2/3. c: "cat sat" vs "cat": P=1/2, R=1 -> F1 2/3.
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)


def test_squad_v2_scores_no_answer_the_official_way():
    examples = [QAExample("has", "", "", ("Denver",), (0,)), QAExample("none1", "", "", (), ()),
                QAExample("none2", "", "", (), ()), QAExample("has2", "", "", ("Carolina Panthers",), (0,))]
    predictions = {"has": "Denver", "none1": "", "none2": "Denver", "has2": ""}
    scores = squad_scores(predictions, examples, version_2=True)
    # empty vs empty = exact match; any text for a no-answer question = 0; empty for an answerable one = 0.
    assert scores["exact_match"] == pytest.approx(50.0) and scores["f1"] == pytest.approx(50.0)
    assert scores["has_answer_exact_match"] == pytest.approx(50.0)
    assert scores["no_answer_exact_match"] == pytest.approx(50.0)


def test_qa_postprocess_picks_the_best_valid_span_and_v2_null():
    context = "Denver Broncos beat Carolina"
    offsets = (None, None, (0, 6), (7, 14), (15, 19), (20, 28), None)
    example = QAExample("q", "Who?", context, ("Denver Broncos",), (0,))
    start = np.array([0.0, 9.0, 5.0, 1.0, 0.0, 0.0, 9.0])  # the question token and </s> score high: not context
    end = np.array([0.0, 9.0, 0.5, 4.0, 0.0, 3.5, 9.0])  # spans: (2,3) 9.0 > (2,5) 8.5 > (2,2) 5.5
    windows = [QAWindow(0, offsets)]
    assert postprocess_qa([example], windows, [start], [end]) == {"q": "Denver Broncos"}
    assert postprocess_qa([example], windows, [start], [end], max_answer_length=1) == {"q": "Denver"}
    null = start.copy()
    null[0] = 20.0  # no-answer score 20 > best span 9
    assert postprocess_qa([example], windows, [null], [end], allow_no_answer=True) == {"q": ""}
    assert postprocess_qa([example], windows, [null], [end], allow_no_answer=False) == {"q": "Denver Broncos"}


# ---- CoNLL-2003 ----------------------------------------------------------------------------------------------
CONLL = ("-DOCSTART- -X- -X- O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\n\n"
         "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\nJohn NNP I-NP B-PER\n\n"
         "-DOCSTART- -X- -X- O\n\nIn IN I-PP O\nEurope NNP I-NP I-LOC\n")


def test_conll_reader_splits_sentences_skips_docstart_and_converts_iob1(tmp_path):
    path = tmp_path / "eng.testa"
    path.write_text(CONLL)
    sentences = read_conll(path, get_task("conll2003").labels)
    assert [s.tokens for s in sentences] == [("EU", "rejects", "German"), ("Peter", "Blackburn", "John"),
                                             ("In", "Europe")]
    assert [s.tags for s in sentences] == [("B-ORG", "O", "B-MISC"), ("B-PER", "I-PER", "B-PER"), ("O", "B-LOC")]


def test_conll_bad_lines_name_file_and_line(tmp_path):
    path = tmp_path / "eng.train"
    path.write_text("EU NNP I-NP I-ORG\nrejects VBZ O\n")
    with pytest.raises(HarnessError) as err:
        read_conll(path, get_task("conll2003").labels)
    assert f"{path}:2:" in one_line(err)
    path.write_text("EU NNP I-NP I-ORG\nrejects VBZ I-VP I-FOO\n")
    with pytest.raises(HarnessError) as err:
        read_conll(path, get_task("conll2003").labels)
    assert f"{path}:2:" in one_line(err) and "I-FOO" in str(err.value)


def test_iob1_to_iob2():
    assert iob1_to_iob2(["I-PER", "I-PER", "B-PER", "I-PER", "O", "I-LOC", "I-ORG", "I-ORG"]) == \
        ["B-PER", "I-PER", "B-PER", "I-PER", "O", "B-LOC", "B-ORG", "I-ORG"]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert iob1_to_iob2(iob2) == iob2


def test_entity_f1_matches_hand_counted_entities_from_iob1_input():
    gold_iob1 = [["I-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC"], ["I-ORG", "O", "I-MISC"]]
    pred_iob1 = [["I-PER", "I-PER", "O", "I-LOC", "O", "B-LOC"], ["I-ORG", "I-ORG", "I-MISC"]]
    # gold entities: PER(0-1), LOC(3-4), LOC(5), ORG(0), MISC(2) = 5.
    # predicted: PER(0-1) ok, LOC(3) wrong span, LOC(5) ok, ORG(0-1) wrong span, MISC(2) ok -> 3 of 5 correct.
    scores = entity_scores([iob1_to_iob2(s) for s in gold_iob1], [iob1_to_iob2(s) for s in pred_iob1])
    assert scores["precision"] == pytest.approx(60.0) and scores["recall"] == pytest.approx(60.0)
    assert scores["f1"] == pytest.approx(60.0)
    # Why the conversion matters: strict IOB2 scoring of the raw IOB1 tags drops every entity that starts with
    # I- and leaves only LOC(5) on both sides - a meaningless 100.
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    converted = f1_score([iob1_to_iob2(s) for s in gold_iob1], [iob1_to_iob2(s) for s in pred_iob1], mode="strict",
                         scheme=IOB2)
    assert 100 * converted == pytest.approx(60.0)
    assert 100 * f1_score(gold_iob1, pred_iob1, mode="strict", scheme=IOB2) == pytest.approx(100.0)


def test_real_conll_sentence_counts(shared_data):
    labels = get_task("conll2003").labels
    root = shared_data / "ner" / "conll2003"
    counts = [len(read_conll(root / name, labels)) for name in ("eng.train", "eng.testa", "eng.testb")]
    assert counts == [14041, 3250, 3453]
    dev = load_examples(get_task("conll2003"), "dev", shared_data)
    assert all(isinstance(s, NerSentence) and len(s.tokens) == len(s.tags) for s in dev)
    assert not any(s.tags[0].startswith("I-") for s in dev)  # IOB2 after conversion


# ---- metrics equal scikit-learn / scipy ------------------------------------------------------------------------
def metric_values(task: str, predictions, targets) -> dict[str, float]:
    collection = glue_metrics(get_task(task))
    collection.update(torch.as_tensor(predictions), torch.as_tensor(targets))
    return {k: 100 * float(v) for k, v in collection.compute().items()}


def test_glue_metrics_equal_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    p[:120] = y[:120]  # correlated, so the values are not near zero
    assert metric_values("cola", p, y)["mcc"] == pytest.approx(100 * matthews_corrcoef(y, p), abs=1e-4)
    mrpc = metric_values("mrpc", p, y)
    assert mrpc["f1"] == pytest.approx(100 * f1_score(y, p), abs=1e-4)
    assert mrpc["accuracy"] == pytest.approx(100 * accuracy_score(y, p), abs=1e-4)
    y3, p3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert metric_values("mnli", p3, y3)["accuracy"] == pytest.approx(100 * accuracy_score(y3, p3), abs=1e-4)
    gold = rng.uniform(0, 5, 100)
    pred = gold + rng.normal(0, 1.5, 100)
    stsb = metric_values("stsb", torch.tensor(pred, dtype=torch.float32), torch.tensor(gold, dtype=torch.float32))
    assert stsb["pearson"] == pytest.approx(100 * pearsonr(pred, gold)[0], abs=1e-3)
    assert stsb["spearman"] == pytest.approx(100 * spearmanr(pred, gold)[0], abs=1e-3)
