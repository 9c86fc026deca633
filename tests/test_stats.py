"""Bootstrap confidence intervals and paired significance tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rungwise.config.task import MetricSpec
from rungwise.evaluate.registry import get_metric
from rungwise.evaluate.scores import ScoreSet
from rungwise.evaluate.stats import bootstrap_ci, mcnemar_exact, paired_test, percentile
from rungwise.types import Example


def binary(scores: list[int] | np.ndarray, metric: str = "accuracy") -> ScoreSet:
    vals = [float(x) for x in scores]
    return ScoreSet(metric, vals, [True] * len(vals), [""] * len(vals))


def graded(scores: np.ndarray, metric: str = "chrf") -> ScoreSet:
    return ScoreSet(metric, [float(x) for x in scores], [True] * len(scores), [""] * len(scores))


def test_percentile() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0, 1.0, 3.0], 0) == 1.0 and percentile([5.0, 1.0, 3.0], 100) == 5.0
    assert percentile(list(range(101)), 95) == 95.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


# ------------------------------------------------------------------ bootstrap_ci


def test_ci_contains_the_estimate_and_matches_the_normal_approximation() -> None:
    s = binary([1, 0] * 500)  # p = 0.5, n = 1000: standard error 0.0158
    mv = bootstrap_ci(s, n_resamples=2000)
    assert (mv.name, mv.value, mv.n) == ("accuracy", 0.5, 1000)
    assert mv.ci_low < 0.5 < mv.ci_high
    half = 1.96 * math.sqrt(0.25 / 1000)
    assert mv.ci_low == pytest.approx(0.5 - half, abs=0.006)
    assert mv.ci_high == pytest.approx(0.5 + half, abs=0.006)


def test_ci_narrows_with_more_examples() -> None:
    small = bootstrap_ci(binary([1, 1, 1, 0] * 25))  # n = 100
    large = bootstrap_ci(binary([1, 1, 1, 0] * 500))  # n = 2000
    assert small.value == large.value == 0.75
    w_small, w_large = small.ci_high - small.ci_low, large.ci_high - large.ci_low
    # width scales as 1/sqrt(n): sqrt(20) = 4.5x narrower, give or take resampling noise
    assert 3.5 < w_small / w_large < 5.5


def test_bootstrap_is_seeded() -> None:
    s = graded(np.random.default_rng(3).random(200))
    a, b = bootstrap_ci(s, seed=7), bootstrap_ci(s, seed=7)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    c = bootstrap_ci(s, seed=8)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_bootstrap_coverage_is_near_nominal() -> None:
    """Over 300 simulated test sets of 150 Bernoulli(0.7) outcomes, about 95% of the
    intervals should contain the true 0.7 (percentile bootstrap runs a little under)."""
    rng = np.random.default_rng(11)
    hits = 0
    for i in range(300):
        mv = bootstrap_ci(binary(rng.random(150) < 0.7), n_resamples=500, seed=i)
        hits += mv.ci_low <= 0.7 <= mv.ci_high
    assert 0.89 <= hits / 300 <= 0.99


def test_bootstrap_constant_scores_and_bad_args() -> None:
    mv = bootstrap_ci(binary([1] * 20))
    assert (mv.value, mv.ci_low, mv.ci_high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no examples"):
        bootstrap_ci(binary([]))
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(binary([1, 0]), alpha=1.5)


def _macro_set(
    n: int, acc: float, seed: int, gold: list[str] | None = None, probs: list[float] | None = None
) -> ScoreSet:
    """A macro_f1 ScoreSet over 5 labels: right with probability ``acc``, else a random label
    (or, one time in five, a malformed one)."""
    rng = np.random.default_rng(seed)
    labels = [f"c{i}" for i in range(5)]
    gold = gold or [labels[i] for i in rng.choice(5, size=n, p=probs)]
    preds = [g if rng.random() < acc else labels[rng.integers(0, 5)] + ("" if rng.random() < 0.8 else "?") for g in gold]
    examples = [Example(input=str(i), output=g) for i, g in enumerate(gold)]
    return get_metric(MetricSpec(name="macro_f1"), labels, Path(".")).score(preds, examples)


def test_macro_f1_bootstrap_recomputes_f1_per_resample() -> None:
    # Imbalanced gold labels: rare classes weigh as much as the common one in macro-F1.
    s = _macro_set(400, 0.7, seed=1, probs=[0.7, 0.1, 0.1, 0.05, 0.05])
    mv = bootstrap_ci(s, n_resamples=500)
    assert mv.value == s.value and mv.ci_low < mv.value < mv.ci_high
    # Resampling the macro-F1 (not the per-example correctness) centres the interval on macro-F1.
    acc = sum(s.scores) / len(s.scores)
    assert abs((mv.ci_low + mv.ci_high) / 2 - mv.value) < 0.02
    assert abs(mv.value - acc) > 0.03  # the two metrics really differ here
    # The vectorized aggregation equals the one-resample-at-a-time definition.
    idx = np.random.default_rng(0).integers(0, len(s), size=(5, len(s)))
    assert s.aggregate_many(idx) == pytest.approx([s.aggregate(row) for row in idx])


# ------------------------------------------------------------------ McNemar


def test_mcnemar_exact_on_a_known_table() -> None:
    # 10 examples only A gets right, 2 only B, 30 both, 8 neither.
    a = [1] * 10 + [0] * 2 + [1] * 30 + [0] * 8
    b = [0] * 10 + [1] * 2 + [1] * 30 + [0] * 8
    p, n01, n10 = mcnemar_exact(a, b)
    assert (n01, n10) == (10, 2)
    # two-sided exact binomial: 2 * P(X <= 2 | n = 12, p = 1/2) = 2 * (1 + 12 + 66) / 4096
    assert p == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact([1, 0], [1, 0]) == (1.0, 0, 0)
    assert mcnemar_exact(b, a)[0] == pytest.approx(p)  # symmetric


def test_paired_test_uses_mcnemar_for_binary_scores() -> None:
    a = binary([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8)
    b = binary([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8)
    c = paired_test(a, b, a_name="few_shot", b_name="zero_shot")
    assert c.against == "zero_shot" and c.test == "mcnemar-exact"
    assert c.delta == pytest.approx(8 / 50)
    assert c.p_value == pytest.approx(2 * 79 / 4096) and c.significant
    assert c.ci_low < c.delta < c.ci_high and c.ci_low > 0
    # The other direction: same p-value, negative delta.
    r = paired_test(b, a, a_name="zero_shot", b_name="few_shot")
    assert r.delta == pytest.approx(-8 / 50) and r.p_value == pytest.approx(c.p_value)


def test_paired_test_identical_rungs_are_not_different() -> None:
    a = binary([1, 0, 1, 1] * 20)
    c = paired_test(a, a, a_name="x", b_name="y")
    assert (c.delta, c.ci_low, c.ci_high, c.p_value, c.significant) == (0.0, 0.0, 0.0, 1.0, False)


def test_pairing_is_more_sensitive_than_separate_intervals() -> None:
    """B is A with 12 of 300 answers made wrong: the two rungs' CIs overlap, yet the paired
    test sees that every disagreement favours A."""
    a_scores = np.array([1] * 200 + [0] * 100)
    b_scores = a_scores.copy()
    b_scores[:12] = 0
    a, b = binary(a_scores), binary(b_scores)
    ca, cb = bootstrap_ci(a), bootstrap_ci(b)
    assert ca.ci_low < cb.ci_high  # unpaired intervals overlap
    c = paired_test(a, b, a_name="a", b_name="b")
    assert c.significant and c.p_value == pytest.approx(2 * 0.5**12)
    assert c.ci_low > 0


# ------------------------------------------------------------------ permutation


def test_paired_test_graded_scores_use_a_permutation_test() -> None:
    rng = np.random.default_rng(4)
    base = rng.random(300)
    better = graded(np.clip(base + 0.05 + rng.normal(0, 0.05, 300), 0, 1))
    c = paired_test(better, graded(base), a_name="rag", b_name="few_shot", n_resamples=1000)
    assert c.test == "paired-permutation"
    assert c.p_value == pytest.approx(1 / 1001) and c.significant  # no permutation reaches it
    assert c.ci_low > 0
    noise = graded(np.clip(base + rng.normal(0, 0.05, 300), 0, 1))
    n = paired_test(noise, graded(base), a_name="rag", b_name="few_shot", n_resamples=1000)
    assert n.p_value > 0.05 and not n.significant
    assert n.ci_low < 0 < n.ci_high  # the bootstrap CI agrees: the difference may be zero


def test_permutation_p_value_is_calibrated_under_the_null() -> None:
    """With no real difference, p < 0.05 should happen about 5% of the time."""
    rng = np.random.default_rng(21)
    rejections = 0
    trials = 200
    for i in range(trials):
        x, y = rng.random(60), rng.random(60)
        rejections += paired_test(graded(x), graded(y), a_name="a", b_name="b", n_resamples=400, seed=i).significant
    assert rejections / trials < 0.1


def test_paired_test_macro_f1() -> None:
    lo = _macro_set(300, 0.4, seed=2)
    hi = _macro_set(300, 0.8, seed=3, gold=lo.gold)
    c = paired_test(hi, lo, a_name="few_shot", b_name="zero_shot", n_resamples=500)
    assert c.test == "paired-permutation"  # macro-F1 is not a mean of 0/1 scores: no McNemar
    assert c.delta == pytest.approx(hi.value - lo.value) and c.delta > 0.2
    assert c.significant and c.ci_low < c.delta < c.ci_high
    with pytest.raises(ValueError, match="different gold labels"):
        paired_test(hi, _macro_set(300, 0.8, seed=9), a_name="a", b_name="b")


def test_paired_test_is_deterministic_and_checks_pairing() -> None:
    rng = np.random.default_rng(0)
    a, b = graded(rng.random(100)), graded(rng.random(100))
    assert paired_test(a, b, a_name="a", b_name="b") == paired_test(a, b, a_name="a", b_name="b")
    with pytest.raises(ValueError, match="same examples"):
        paired_test(a, graded(rng.random(99)), a_name="a", b_name="b")
    with pytest.raises(ValueError, match="scored with"):
        paired_test(a, graded(rng.random(100), metric="rouge_l"), a_name="a", b_name="b")
