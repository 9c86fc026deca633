"""Statistics for the ladder: bootstrap confidence intervals and paired significance tests.

Every rung is scored on the same held-out examples, so two rungs are compared *paired*:
resampling examples (not rungs) keeps each example's two scores together, which is far more
sensitive than comparing two independent intervals.

- :func:`bootstrap_ci`: percentile bootstrap 95% CI of a rung's metric.
- :func:`paired_test`: the difference to the rung below, with a paired-bootstrap CI and a
  p-value from the exact McNemar test (0/1 scores under a mean metric, e.g. accuracy) or a
  paired permutation test (graded scores, or macro-F1).

All resampling is seeded (``numpy.random.default_rng(seed)``) and vectorized: 1000 resamples
of 3000 examples take a few tens of milliseconds.

Example:
    >>> from rungwise.evaluate.scores import ScoreSet
    >>> a = ScoreSet("accuracy", [1.0] * 30 + [0.0] * 10, [True] * 40, [""] * 40)
    >>> ci = bootstrap_ci(a)
    >>> ci.ci_low < ci.value == 0.75 < ci.ci_high
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from rungwise.evaluate.scores import ScoreSet, build_label_index, macro_f1_codes
from rungwise.types import Comparison, MetricValue

# Upper bound on resample-matrix elements held at once (int64: 8 bytes each -> 32 MB).
_BLOCK_ELEMENTS = 4_000_000


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation) of ``values``; NaN when empty.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    return float(np.percentile(arr, q))


def _index_blocks(rng: np.random.Generator, n: int, n_resamples: int) -> Iterator[np.ndarray]:
    """Bootstrap index matrices, ``(block, n)`` each, drawn in order from one generator."""
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_resamples:
        b = min(block, n_resamples - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def _check_args(n: int, n_resamples: int, alpha: float = 0.05) -> None:
    if n == 0:
        raise ValueError("no examples to resample")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_ci(s: ScoreSet, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> MetricValue:
    """Percentile bootstrap ``1 - alpha`` confidence interval of ``s``'s metric.

    Resamples examples with replacement and recomputes the metric each time (the mean, or
    macro-F1 from the labels), so the interval matches how the metric is aggregated.
    Deterministic for a given ``seed``.

    Example:
        >>> from rungwise.evaluate.scores import ScoreSet
        >>> mv = bootstrap_ci(ScoreSet("exact_match", [1.0, 0.0] * 50, [True] * 100, [""] * 100))
        >>> (mv.value, mv.n, round(mv.ci_low, 2), round(mv.ci_high, 2))
        (0.5, 100, 0.4, 0.6)
    """
    n = len(s)
    _check_args(n, n_resamples, alpha)
    rng = np.random.default_rng(seed)
    stats = np.concatenate([s.aggregate_many(idx) for idx in _index_blocks(rng, n, n_resamples)])
    # A resample can hold no gold class of a macro-F1 set only if n is tiny; such draws say nothing.
    stats = stats[~np.isnan(stats)]
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return MetricValue(name=s.metric, value=s.value, ci_low=float(lo), ci_high=float(hi), n=n)


def _is_binary(s: ScoreSet) -> bool:
    arr = np.asarray(s.scores, dtype=np.float64)
    return bool(np.all((arr == 0.0) | (arr == 1.0)))


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> tuple[float, int, int]:
    """Exact (binomial) McNemar test on paired 0/1 outcomes.

    Returns ``(p_value, n01, n10)``: ``n01`` examples only ``a`` got right, ``n10`` only ``b``;
    the p-value is two-sided, ``binomtest(n01, n01 + n10, 0.5)``, and 1.0 with no discordant pair.

    Example:
        >>> round(mcnemar_exact([1] * 10 + [0] * 2, [0] * 10 + [1] * 2)[0], 4)
        0.0386
    """
    from scipy.stats import binomtest  # imported here: keeps `import rungwise` light

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    n01 = int(np.sum((x == 1) & (y == 0)))
    n10 = int(np.sum((x == 0) & (y == 1)))
    if n01 + n10 == 0:
        return 1.0, 0, 0
    return float(binomtest(n01, n01 + n10, 0.5, alternative="two-sided").pvalue), n01, n10


def paired_test(
    a: ScoreSet,
    b: ScoreSet,
    *,
    a_name: str,
    b_name: str,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare rung ``a`` with the rung below it, ``b``, on the same examples.

    ``delta = a - b`` with a paired percentile-bootstrap 95% CI (the same resampled examples
    score both rungs). The p-value is two-sided:

    - exact McNemar when every score of both rungs is 0 or 1 and the metric is a mean
      (accuracy, exact match, numeric, ...): the count of examples only ``a`` gets right
      against those only ``b`` gets right;
    - otherwise a paired permutation test (approximate randomization): each example's two
      predictions are swapped at random ``n_resamples`` times and the metric difference
      recomputed; ``p = (1 + #{|delta*| >= |delta|}) / (1 + n_resamples)``.

    ``significant`` is ``p < 0.05``. ``test`` names the method used.

    Example:
        >>> from rungwise.evaluate.scores import ScoreSet
        >>> hi = ScoreSet("accuracy", [1.0] * 40 + [0.0] * 10, [True] * 50, [""] * 50)
        >>> lo = ScoreSet("accuracy", [1.0] * 20 + [0.0] * 30, [True] * 50, [""] * 50)
        >>> c = paired_test(hi, lo, a_name="few_shot", b_name="zero_shot")
        >>> (c.against, c.delta, c.test, c.significant)
        ('zero_shot', 0.4, 'mcnemar-exact', True)
    """
    n = len(a)
    if len(b) != n:
        raise ValueError(f"paired_test: {a_name} has {n} scores, {b_name} has {len(b)}; pair them on the same examples")
    if a.metric != b.metric or a.aggregation != b.aggregation:
        raise ValueError(f"paired_test: {a_name} is scored with {a.metric}, {b_name} with {b.metric}")
    if a.aggregation == "macro_f1" and a.gold != b.gold:
        raise ValueError(f"paired_test: {a_name} and {b_name} were scored against different gold labels")
    _check_args(n, n_resamples)
    delta = a.value - b.value
    rng = np.random.default_rng(seed)

    if a.aggregation == "macro_f1":
        index = build_label_index([a, b])
        gold, pa, k = a.label_codes(index)
        _, pb, _ = b.label_codes(index)

        def diff_many(idx: np.ndarray) -> np.ndarray:
            g = gold[idx]
            return macro_f1_codes(g, pa[idx], k) - macro_f1_codes(g, pb[idx], k)

        def perm_many(swap: np.ndarray) -> np.ndarray:
            g = np.broadcast_to(gold, swap.shape)
            x = np.where(swap, pb, pa)
            y = np.where(swap, pa, pb)
            return macro_f1_codes(g, x, k) - macro_f1_codes(g, y, k)

    else:
        d = np.asarray(a.scores, dtype=np.float64) - np.asarray(b.scores, dtype=np.float64)

        def diff_many(idx: np.ndarray) -> np.ndarray:
            return d[idx].mean(axis=1)

        def perm_many(swap: np.ndarray) -> np.ndarray:
            # Swapping an example's two scores flips the sign of its difference.
            return (np.where(swap, -d, d)).mean(axis=1)

    boots = np.concatenate([diff_many(idx) for idx in _index_blocks(rng, n, n_resamples)])
    boots = boots[~np.isnan(boots)]
    lo, hi = np.percentile(boots, [2.5, 97.5])

    if a.aggregation == "mean" and _is_binary(a) and _is_binary(b):
        p, _, _ = mcnemar_exact(a.scores, b.scores)
        test = "mcnemar-exact"
    else:
        block = max(1, _BLOCK_ELEMENTS // n)
        exceed = 0
        done = 0
        # A tolerance keeps ties (|delta*| == |delta| up to float rounding) on the conservative side.
        thresh = abs(delta) - 1e-12
        while done < n_resamples:
            m = min(block, n_resamples - done)
            perms = perm_many(rng.random((m, n)) < 0.5)
            exceed += int(np.sum(np.abs(perms) >= thresh))
            done += m
        p = (1 + exceed) / (1 + n_resamples)
        test = "paired-permutation"

    return Comparison(
        against=b_name,
        delta=float(delta),
        ci_low=float(lo),
        ci_high=float(hi),
        p_value=float(p),
        test=test,
        significant=bool(p < 0.05),
    )
