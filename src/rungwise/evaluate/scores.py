"""Per-example scores of one metric on one rung, and how they aggregate.

A :class:`ScoreSet` holds one score in [0, 1] per example, whether each prediction was
*format-valid* (reported as its own figure, so "the model knows the answer but wraps it in
prose" is visible apart from "the model is wrong"), and the normalized prediction for reports.
The bootstrap and the paired tests (:mod:`rungwise.evaluate.stats`) resample it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Aggregation = Literal["mean", "macro_f1"]


@dataclass
class ScoreSet:
    """Per-example results of one metric on one rung.

    ``scores[i]`` is in [0, 1]; ``valid[i]`` says whether prediction ``i`` was format-valid;
    ``parsed[i]`` is the normalized prediction (the matched label, canonical JSON, the number).
    ``gold`` holds the gold labels (classification metrics only), ``aggregation`` says how
    scores combine (``mean``, or ``macro_f1`` which recomputes F1 from the labels), and
    ``extra`` carries per-example counts some metrics expose (``json_fields``: ``tp``,
    ``n_pred``, ``n_gold`` for micro precision/recall).

    Example:
        >>> s = ScoreSet("exact_match", [1.0, 0.0, 1.0], [True, True, False], ["a", "b", ""])
        >>> round(s.value, 3), round(s.valid_rate, 3), s.aggregate([0, 2])
        (0.667, 0.667, 1.0)
    """

    metric: str
    scores: list[float]
    valid: list[bool]
    parsed: list[str]
    gold: list[str] = field(default_factory=list)
    aggregation: Aggregation = "mean"
    extra: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.scores)
        if len(self.valid) != n or len(self.parsed) != n:
            raise ValueError(f"ScoreSet lengths differ: scores {n}, valid {len(self.valid)}, parsed {len(self.parsed)}")
        if self.aggregation == "macro_f1" and len(self.gold) != n:
            raise ValueError(f"macro_f1 ScoreSet needs one gold label per example ({len(self.gold)} for {n})")

    def __len__(self) -> int:
        return len(self.scores)

    def aggregate(self, idx: Sequence[int] | None = None) -> float:
        """The metric over the examples ``idx`` (all when None); NaN for no examples.

        ``mean`` aggregation averages the scores; ``macro_f1`` recomputes the macro-averaged
        F1 over the gold labels present among those examples (so a bootstrap resample is scored
        the way the full set is).
        """
        sel = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        if sel.size == 0:
            return float("nan")
        return float(self.aggregate_many(sel[None, :])[0])

    def aggregate_many(self, idx: np.ndarray) -> np.ndarray:
        """Vectorized :meth:`aggregate`: one value per row of the ``(B, m)`` index matrix ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.aggregation == "macro_f1":
            gold, pred, k = self.label_codes()
            return macro_f1_codes(gold[idx], pred[idx], k)
        return np.asarray(self.scores, dtype=np.float64)[idx].mean(axis=1)

    def label_codes(self, label_index: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """Gold and predicted labels as integer codes, for vectorized macro-F1.

        Returns ``(gold, pred, k)``: codes are in ``[0, k)``; code ``k - 1`` means "no valid
        label" and is never a gold code. Pass ``label_index`` to share codes between two
        ScoreSets (paired tests).
        """
        index = label_index if label_index is not None else build_label_index([self])
        invalid = len(index)
        gold = np.fromiter((index[g] for g in self.gold), dtype=np.int64, count=len(self))
        pred = np.fromiter(
            (index.get(p, invalid) if v else invalid for p, v in zip(self.parsed, self.valid, strict=True)),
            dtype=np.int64,
            count=len(self),
        )
        return gold, pred, invalid + 1

    @property
    def value(self) -> float:
        """The metric over all examples."""
        return self.aggregate()

    @property
    def valid_rate(self) -> float:
        """Share of format-valid predictions (NaN for no examples)."""
        return float(np.mean(self.valid)) if self.valid else float("nan")

    def micro_prf(self, idx: Sequence[int] | None = None) -> tuple[float, float, float]:
        """Micro precision, recall and F1 over fields (``json_fields`` only).

        Sums matched, predicted and gold fields over the examples before dividing, so large
        objects weigh more than in the per-example mean F1 that :attr:`value` reports.
        """
        if not {"tp", "n_pred", "n_gold"} <= self.extra.keys():
            raise ValueError(f"metric {self.metric!r} has no field counts; micro_prf needs json_fields")
        sel = slice(None) if idx is None else np.asarray(idx, dtype=np.int64)
        tp = float(np.asarray(self.extra["tp"])[sel].sum())
        n_pred = float(np.asarray(self.extra["n_pred"])[sel].sum())
        n_gold = float(np.asarray(self.extra["n_gold"])[sel].sum())
        p = tp / n_pred if n_pred else (1.0 if not n_gold else 0.0)
        r = tp / n_gold if n_gold else (1.0 if not n_pred else 0.0)
        f = 2 * tp / (n_pred + n_gold) if (n_pred + n_gold) else 1.0
        return p, r, f


def build_label_index(sets: Sequence[ScoreSet]) -> dict[str, int]:
    """A shared label -> code mapping over the gold and valid predicted labels of ``sets``."""
    labels: dict[str, int] = {}
    for s in sets:
        for g in s.gold:
            labels.setdefault(g, len(labels))
        for p, v in zip(s.parsed, s.valid, strict=True):
            if v:
                labels.setdefault(p, len(labels))
    return labels


def macro_f1_codes(gold: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 per row of ``(B, m)`` code matrices, averaged over the gold classes of each row.

    Code ``k - 1`` is "no valid label": it counts as a miss for the gold class and as a false
    positive for no class. A class that is predicted but absent from a row's gold labels is
    left out of that row's average (its F1 is undefined there), as in
    ``sklearn.metrics.f1_score(average="macro", labels=<gold labels present>)``.

    Example:
        >>> import numpy as np
        >>> float(macro_f1_codes(np.array([[0, 0, 1]]), np.array([[0, 1, 1]]), 3)[0])
        0.6666666666666666
    """
    gold = np.atleast_2d(gold)
    pred = np.atleast_2d(pred)
    b = gold.shape[0]
    offs = (np.arange(b, dtype=np.int64) * k)[:, None]
    size = b * k
    n_gold = np.bincount((offs + gold).ravel(), minlength=size).reshape(b, k)
    n_pred = np.bincount((offs + pred).ravel(), minlength=size).reshape(b, k)
    tp = np.bincount((offs + gold).ravel(), weights=(gold == pred).ravel(), minlength=size).reshape(b, k)
    n_gold[:, k - 1] = 0  # the "no valid label" code is never a class of its own
    present = n_gold > 0
    denom = n_gold + n_pred
    f1 = np.divide(2 * tp, denom, out=np.zeros((b, k)), where=present)
    n_classes = present.sum(axis=1)
    return np.divide(f1.sum(axis=1), n_classes, out=np.full(b, np.nan), where=n_classes > 0)
