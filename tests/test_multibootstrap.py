"""The intervals of harness.study.multibootstrap on simulated studies with known answers: coverage of the true
difference, the seeds-alone fallback, pairing, and why few seeds need the t interval."""

from __future__ import annotations

import numpy as np
import pytest

from harness.study.multibootstrap import metric_scores, multi_bootstrap, paired_t_interval, ratio_scores


def simulated_arm(rng: np.random.Generator, seeds: int, accuracy: float, seed_sd: float,
                  difficulty: np.ndarray) -> np.ndarray:
    """[seeds, examples] 0/1 outcomes: each pre-training seed shifts the arm's accuracy (seed_sd), each example has
    its own difficulty shared by both arms (what the shared example draw keeps)."""
    shift = rng.normal(0, seed_sd, size=(seeds, 1))
    logit = np.log(accuracy / (1 - accuracy)) + shift + difficulty[None, :]
    return (rng.random((seeds, difficulty.size)) < 1 / (1 + np.exp(-logit))).astype(float)


def test_the_multi_bootstrap_covers_a_known_difference():
    """Arms 0.75 and 0.70 (before example difficulty), 10 paired seeds, 400 examples: over 60 simulated studies the
    95% interval holds the study's true difference (its expectation over seeds and examples) about 95% of the time."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1.0, size=4000)
    truth = np.mean(simulated_arm(rng, 400, 0.75, 0.0, difficulty)) - np.mean(simulated_arm(rng, 400, 0.70, 0.0,
                                                                                            difficulty))
    covered, studies = 0, 60
    for _ in range(studies):
        examples = rng.choice(difficulty.size, size=400, replace=False)
        ours = simulated_arm(rng, 10, 0.75, 0.15, difficulty[examples])
        ref = simulated_arm(rng, 10, 0.70, 0.15, difficulty[examples])
        result = multi_bootstrap(ratio_scores(ours), ratio_scores(ref), (10, 10), 400, paired=True, draws=300)
        covered += result.low <= truth <= result.high
        assert result.examples == 400 and "paired" in result.method
    assert 0.85 <= covered / studies <= 1.0, covered


def test_no_effect_gives_a_probability_near_one_half_and_a_clear_effect_near_zero():
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0, 1.0, size=500)
    same = [simulated_arm(rng, 5, 0.7, 0.1, difficulty) for _ in range(2)]
    null = multi_bootstrap(ratio_scores(same[0]), ratio_scores(same[1]), (5, 5), 500, paired=True, draws=500)
    assert 0.05 < null.p_not_above < 0.95 and null.low < 0 < null.high
    clear = multi_bootstrap(ratio_scores(simulated_arm(rng, 5, 0.85, 0.05, difficulty)), ratio_scores(same[0]),
                            (5, 5), 500, paired=True, draws=500)
    assert clear.diff > 0.1 and clear.p_not_above == 0.0 and clear.excludes_zero and not clear.few_seeds


def test_hand_made_values_and_the_seeds_alone_fallback():
    ours = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], dtype=float)  # seed accuracies 0.75, 0.5
    ref = np.array([[0, 1, 0, 0], [1, 0, 0, 0]], dtype=float)  # 0.25, 0.25
    result = multi_bootstrap(ratio_scores(ours), ratio_scores(ref), (2, 2), None, paired=True, draws=400)
    assert result.diff == pytest.approx(0.375) and result.examples is None and "seeds alone" in result.method
    # seeds alone, paired: each replicate is the mean of drawn seed differences 0.5 and 0.25
    assert result.low == pytest.approx(0.25) and result.high == pytest.approx(0.5) and result.few_seeds
    # bits per character as a ratio of sums: 2 seeds x 2 documents of (nats / ln 2) / characters
    bits, chars = np.array([[10.0, 30.0], [20.0, 20.0]]), np.array([[10.0, 10.0], [10.0, 10.0]])
    assert list(ratio_scores(bits, chars)(None)) == [2.0, 2.0]
    assert list(ratio_scores(bits, chars)(np.array([0, 0]))) == [1.0, 2.0]
    with pytest.raises(ValueError, match="paired arms need the same seeds: 2 vs 3"):
        multi_bootstrap(ratio_scores(ours), ratio_scores(np.vstack([ref, ref[:1]])), (2, 3), 4, paired=True)


def test_any_metric_of_predictions_and_labels():
    labels = np.array([0.0, 1.0, 2.0, 3.0])
    predictions = np.array([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    pearson = metric_scores(predictions, labels, lambda p, g: float(np.corrcoef(p, g)[0, 1]))
    assert pearson(None) == pytest.approx([1.0, -1.0])
    assert pearson(np.array([0, 1, 3])) == pytest.approx([1.0, -1.0])


@pytest.mark.parametrize("seeds", [3, 5])
def test_with_few_seeds_the_t_interval_is_calibrated_and_the_bootstrap_is_not(seeds):
    """Seed-level differences drawn from N(0, 1): the t interval covers 0 about 95% of the time; the bootstrap over
    the seeds alone, whose interval cannot be wider than their range, covers it clearly less often with 3 seeds."""
    rng = np.random.default_rng(seeds)
    t_cover = boot_cover = 0
    studies = 400
    for _ in range(studies):
        diffs = rng.normal(0, 1, size=seeds)
        t = paired_t_interval(diffs)
        t_cover += t.low <= 0 <= t.high
        boot = multi_bootstrap(ratio_scores(diffs[:, None]), ratio_scores(np.zeros((seeds, 1))), (seeds, seeds),
                               None, paired=True, draws=200)
        boot_cover += boot.low <= 0 <= boot.high
    assert 0.92 <= t_cover / studies <= 0.98, t_cover
    assert boot_cover / studies < (0.85 if seeds == 3 else 0.93), boot_cover
