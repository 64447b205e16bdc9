"""Trivial predictors: chosen on hand-made training labels and scored on hand-made dev labels with values worked
out by hand, then on the real GLUE dev sets (the floors of the paper's tables at any model size)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness.config import HarnessError
from harness.downstream.baselines import TrivialPredictor, score_trivial, trivial_predictor, trivial_scores
from harness.tasks import get_task


def test_majority_class_of_the_training_labels():
    predictor = trivial_predictor(get_task("sst2"), [1, 1, 0])
    assert predictor == TrivialPredictor("always '1'", 1)
    assert score_trivial(get_task("sst2"), predictor, [1, 0, 0, 0]) == {"accuracy": 25.0, "score": 25.0}


def test_a_tie_goes_to_the_lower_class_index():
    rte = get_task("rte")
    predictor = trivial_predictor(rte, [1, 0, 0, 1])  # two each: index 0 (entailment) before 1
    assert predictor == TrivialPredictor("always 'entailment'", 0)
    assert score_trivial(rte, predictor, [1, 1, 1, 0]) == {"accuracy": 25.0, "score": 25.0}


def test_mcc_ties_every_constant_and_the_frequent_class_wins():
    cola = get_task("cola")
    predictor = trivial_predictor(cola, [1, 0, 1])  # MCC of any constant is 0: class 1 is more frequent
    assert predictor.constant == 1
    assert score_trivial(cola, predictor, [0, 1, 1, 1]) == {"mcc": 0.0, "score": 0.0}


def test_mcc_is_scikit_learns_zero_when_undefined_not_torchmetrics_guess():
    from harness.downstream.metrics import compute_percent, glue_metrics

    def mcc(predictions: list[int], targets: list[int]) -> float:
        metrics = glue_metrics(get_task("cola"))
        metrics.update(torch.tensor(predictions), torch.tensor(targets))
        return compute_percent(metrics)["mcc"]

    assert mcc([1, 1, 1, 1], [0, 1, 1, 1]) == 0.0  # torchmetrics 1.9 alone: 57.7
    # tp 2, tn 1, fp 1, fn 0: (2 x 1 - 1 x 0) / sqrt(3 x 2 x 2 x 1) = 0.57735
    assert mcc([1, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(57.735, abs=1e-3)


def test_f1_tasks_take_the_constant_best_on_f1_and_accuracy_of_the_training_labels():
    mrpc = get_task("mrpc")
    # 2 of 5 positive. Always 1: F1 = 2 x 0.4 / 1.4 = 57.14, accuracy 40, mean 48.57; always 0: F1 0, accuracy 60,
    # mean 30. So 1, though 0 is the majority.
    predictor = trivial_predictor(mrpc, [0, 0, 0, 1, 1])
    assert predictor.constant == 1
    # On dev, 1 of 4 positive: precision 1/4, recall 1, F1 = 2 x 0.25 / 1.25 = 40; accuracy 25; score 32.5.
    scores = score_trivial(mrpc, predictor, [1, 0, 0, 0])
    assert scores == pytest.approx({"f1": 40.0, "accuracy": 25.0, "score": 32.5})
    # 1 of 10 positive: always 1 scores (18.18 + 10) / 2 = 14.09, always 0 scores (0 + 90) / 2 = 45.
    assert trivial_predictor(mrpc, [0] * 9 + [1]).constant == 0


def test_regression_predicts_the_training_mean_and_its_correlations_are_zero_not_nan():
    stsb = get_task("stsb")
    predictor = trivial_predictor(stsb, [1.0, 2.0, 4.5])
    assert predictor.constant == pytest.approx(2.5) and predictor.description == "always 2.5 (the training mean)"
    for constant in (2.5, 2.7009990253653497):  # torchmetrics: NaN for one, a 1.6e-6 rounding residue for another
        scores = score_trivial(stsb, TrivialPredictor("", constant), [0.5, 3.0, 5.0, 2.2, 4.8])
        assert scores == {"pearson": 0.0, "spearman": 0.0, "score": 0.0}


def test_qa_predicts_the_empty_answer_and_ner_no_entity():
    v1, v2 = get_task("squad_v1"), get_task("squad_v2")
    assert trivial_predictor(v1, []) == TrivialPredictor("always the empty answer", "")
    assert score_trivial(v1, trivial_predictor(v1, []), [("Paris",), ("Rome", "rome")]) == {
        "exact_match": 0.0, "f1": 0.0, "score": 0.0}
    scores = score_trivial(v2, trivial_predictor(v2, []), [("Paris",), (), ()])  # right on the 2 unanswerable
    assert scores["exact_match"] == pytest.approx(200 / 3) and scores["f1"] == pytest.approx(200 / 3)
    assert scores["no_answer_exact_match"] == 100.0 and scores["has_answer_f1"] == 0.0
    ner = get_task("conll2003")
    scores = score_trivial(ner, trivial_predictor(ner, []), [["B-PER", "I-PER", "O"], ["O", "B-LOC"]])
    assert scores == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "score": 0.0}
    assert not any(math.isnan(v) for v in scores.values())


def test_a_kind_without_training_labels_is_a_one_line_error():
    zero_shot = dataclasses.replace(get_task("sst2"), name="pairs", kind="zero_shot")
    with pytest.raises(HarnessError) as err:
        trivial_predictor(zero_shot, [1])
    message = str(err.value)
    assert "\n" not in message and "'zero_shot'" in message and "classification, regression, qa, ner" in message


@pytest.mark.parametrize("task, description, metrics, score", [
    ("sst2", "always '1'", {"accuracy": 50.92}, 50.92),  # 444 of 872
    ("mrpc", "always '1'", {"f1": 81.22, "accuracy": 68.38}, 74.80),  # "always paraphrase": 279 of 408
    ("rte", "always 'entailment'", {"accuracy": 52.71}, 52.71),  # 146 of 277
    ("stsb", "always 2.723 (the training mean)", {"pearson": 0.0, "spearman": 0.0}, 0.0),
])
def test_real_dev_floors(shared_data, task, description, metrics, score):
    result = trivial_scores(get_task(task), shared_data, train_subsample=2000, subsample_seed=0)
    assert result["description"] == description and result["train_examples"] == 2000
    assert result["metrics"] == pytest.approx(metrics, abs=0.005) and result["score"] == pytest.approx(score, abs=0.005)
