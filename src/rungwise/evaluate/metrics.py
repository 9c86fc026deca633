"""Evaluation metrics: pure functions from (predictions, examples) to per-example scores.

Every metric returns a :class:`ScoreSet`: one score in [0, 1] per example, whether the
prediction was *format-valid* (reported as its own figure, so "the model knows the answer
but wraps it in prose" is visible apart from "the model is wrong"), and the normalized
prediction for reports.

Format-valid means, per metric:

- ``accuracy`` / ``macro_f1``: the output parses to a label of the label set (:func:`parse_label`);
- ``json_valid`` / ``json_fields``: the output parses as JSON (``json_fields``: a JSON object);
  ``json_schema``: parses and conforms to the schema;
- ``numeric``: a number was found;
- every other metric (``exact_match``, ``chrf``, ``rouge_l``, ``token_f1``, ``regex``, ``python:...``):
  the output is not empty (a ``python:`` metric may decide for itself by returning ``(score, valid)``).

Models often wrap JSON in Markdown code fences (```` ```json ... ``` ````); the JSON metrics
strip such a fence before parsing (:func:`strip_code_fence`) and do nothing cleverer than that,
so a JSON object buried in prose counts as invalid.

Example:
    >>> from rungwise.task import MetricSpec
    >>> from rungwise.types import Example
    >>> m = get_metric(MetricSpec(name="accuracy"), ["billing", "bug"], Path("."))
    >>> s = m.score(["Label: Billing.", "it is a bug"], [Example("a", "billing"), Example("b", "bug")])
    >>> s.scores, s.valid, s.value, s.valid_rate
    ([1.0, 0.0], [True, False], 0.5, 0.5)
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import json
import math
import re
import string
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rungwise.errors import ConfigError, DataError
from rungwise.task import MetricSpec
from rungwise.types import Example

#: Names of the built-in metrics; ``python:module:function`` adds your own.
METRIC_NAMES: tuple[str, ...] = (
    "exact_match",
    "accuracy",
    "macro_f1",
    "json_valid",
    "json_schema",
    "json_fields",
    "numeric",
    "chrf",
    "rouge_l",
    "token_f1",
    "regex",
)

Aggregation = Literal["mean", "macro_f1"]


# --------------------------------------------------------------------------------------------
# ScoreSet
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------

# Wrappers a model puts around a bare answer: quotes, backticks, Markdown emphasis, brackets.
_WRAP_CHARS = "\"'`*_“”‘’«»[]()<>"
_TRAILING_PUNCT = ".,;:!?。"
# "Label: billing", "Intent - billing", "**Category**: billing": a short prefix of 1-3 words.
# A dash separates only with spaces around it, so "not-billing" never reads as "billing".
_PREFIX_RE = re.compile(r"^\s*[*_`\"']*\s*[A-Za-z][\w ]{0,30}?[*_`\"']*(?:\s+(?:->|=>)|\s*[:=]|\s+[-–])\s*(.+)$")


def _label_variants(line: str) -> list[str]:
    """Candidate spellings of a label on one output line, most literal first."""
    out: list[str] = []

    def add(s: str) -> None:
        s = s.strip()
        if s and s not in out:
            out.append(s)
        # Peel wrappers and trailing punctuation alternately: "'billing'." and "**billing.**".
        prev = None
        while s and s != prev:
            prev = s
            s = s.strip().rstrip(_TRAILING_PUNCT).strip()
            if len(s) >= 2 and s[0] in _WRAP_CHARS and s[-1] in _WRAP_CHARS:
                s = s.strip(_WRAP_CHARS).strip()
            if s and s not in out:
                out.append(s)

    add(line)
    m = _PREFIX_RE.match(line)
    if m:
        add(m.group(1))
    return out


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label that ``text`` states, or None when it states none of ``labels``.

    Lenient about presentation, strict about content: looks only at the first non-empty
    line, compares case-insensitively, and peels whitespace, quotes, backticks, Markdown
    emphasis, brackets, trailing punctuation and a short ``Label:``-style prefix. It never
    searches for a label inside a sentence, so "I think it is billing" is None: that output
    is wrong in format, and the format-valid rate should say so.

    Example:
        >>> parse_label("  **Billing**.\\nbecause ...", ["billing", "bug"])
        'billing'
        >>> parse_label("Label: 'bug'", ["billing", "bug"])
        'bug'
        >>> parse_label("I think it is billing", ["billing", "bug"]) is None
        True
    """
    by_fold = {str(lab).strip().casefold(): str(lab) for lab in labels}
    for line in text.splitlines():
        if line.strip():
            for cand in _label_variants(line):
                hit = by_fold.get(cand.casefold())
                if hit is not None:
                    return hit
            return None
    return None


# An info string ("json") counts only when a newline follows it; an unclosed fence (the answer
# was cut at max_tokens) runs to the end of the text.
_FENCE_RE = re.compile(r"```(?:[ \t]*[A-Za-z0-9_+-]*[ \t]*\r?\n)?(.*?)(?:```|\Z)", re.DOTALL)


def strip_code_fence(text: str) -> str:
    """The content of the first Markdown code fence in ``text``, else ``text`` stripped.

    Example:
        >>> strip_code_fence('Here:\\n```json\\n{"a": 1}\\n```')
        '{"a": 1}'
    """
    m = _FENCE_RE.search(text)
    return m.group(1).strip() if m else text.strip()


_MISSING = object()


def parse_json(text: str) -> Any:
    """Parse a model output as JSON after stripping a code fence; ``_MISSING`` when it does not parse."""
    try:
        return json.loads(strip_code_fence(text))
    except (json.JSONDecodeError, RecursionError):
        return _MISSING


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


_NUM_RE = re.compile(r"(?<![\w.])(-)?\$?((?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)")
_FRACTION_RE = re.compile(r"^\s*(-)?(\d+)\s*/\s*(\d+)\s*$")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_number(text: str) -> float | None:
    """The final answer number in ``text``, or None.

    Looks, in order, after the last ``####`` (GSM8K style), inside the last ``\\boxed{}``,
    then anywhere, and takes the last number there. Thousands separators, a ``$`` sign and an
    exponent are accepted ("$1,234.50" is 1234.5); a fraction counts only as the whole of a
    ``\\boxed{}`` ("\\boxed{3/4}" is 0.75), since elsewhere "3/4" is as likely a date or a ratio.

    Example:
        >>> extract_number("She pays 3 * 4 = 12 dollars.\\n#### 12")
        12.0
        >>> extract_number("The answer is -1,250.5.")
        -1250.5
        >>> extract_number("no idea") is None
        True
    """
    scopes = []
    if "####" in text:
        scopes.append(text.rsplit("####", 1)[1])
    boxed = _BOXED_RE.findall(text)
    if boxed:
        frac = _FRACTION_RE.match(boxed[-1])
        if frac and int(frac.group(3)) != 0:
            value = int(frac.group(2)) / int(frac.group(3))
            return -value if frac.group(1) else value
        scopes.append(boxed[-1])
    scopes.append(text)
    for scope in scopes:
        nums = _NUM_RE.findall(scope)
        if nums:
            sign, digits = nums[-1]
            value = float(digits.replace(",", ""))
            return -value if sign else value
    return None


def format_number(x: float) -> str:
    """``12.0`` -> ``'12'``, ``0.5`` -> ``'0.5'``: how reports show an extracted number."""
    return str(int(x)) if x.is_integer() and abs(x) < 1e16 else repr(x)


_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD answer normalization: lowercase, drop punctuation and articles, squeeze spaces."""
    text = _ARTICLES_RE.sub(" ", text.lower().translate(_PUNCT_TABLE))
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


class Metric(ABC):
    """A metric: ``score(predictions, examples)`` returns one :class:`ScoreSet`.

    Subclasses implement :meth:`score_one` (pure, per example) or override :meth:`score`.
    """

    name: str = ""

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> ScoreSet:
        """Score ``predictions[i]`` against ``examples[i]`` for every i."""
        _check_lengths(predictions, examples)
        scores: list[float] = []
        valid: list[bool] = []
        parsed: list[str] = []
        for pred, ex in zip(predictions, examples, strict=True):
            s, v, p = self.score_one(pred or "", ex)
            scores.append(float(s))
            valid.append(bool(v))
            parsed.append(p)
        return ScoreSet(self.name, scores, valid, parsed)

    @abstractmethod
    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        """``(score, format_valid, normalized prediction)`` for one example."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _check_lengths(predictions: Sequence[str], examples: Sequence[Example]) -> None:
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")


def _where(ex: Example) -> str:
    return f"{ex.source}: " if ex.source else ""


class ExactMatch(Metric):
    """1 if the prediction equals the expected output (after stripping; case-insensitive by default)."""

    name = "exact_match"

    def __init__(self, case_sensitive: bool = False, strip: bool = True) -> None:
        self.case_sensitive = case_sensitive
        self.strip = strip

    def _norm(self, s: str) -> str:
        s = s.strip() if self.strip else s
        return s if self.case_sensitive else s.casefold()

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        p = self._norm(prediction)
        return float(p == self._norm(example.output)), bool(prediction.strip()), p


class Accuracy(Metric):
    """Label accuracy: the prediction is read with :func:`parse_label`; no label = invalid and wrong."""

    name = "accuracy"

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = [str(x) for x in labels]
        self._by_fold = {x.strip().casefold(): x for x in self.labels}

    def gold_label(self, example: Example) -> str:
        """The example's gold label, spelled as in the label set (``label`` field, else the output)."""
        raw = str(example.label if example.label is not None else example.output).strip()
        hit = self._by_fold.get(raw.casefold())
        if hit is None:
            shown = ", ".join(self.labels[:10]) + (" ..." if len(self.labels) > 10 else "")
            raise DataError(
                f"{_where(example)}expected label {raw!r} is not in the label set ({shown})",
                hint="add it to `labels` in task.yaml, or correct the example's expected output",
            )
        return hit

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> ScoreSet:
        _check_lengths(predictions, examples)
        gold = [self.gold_label(ex) for ex in examples]
        hits = [parse_label(p or "", self.labels) for p in predictions]
        scores = [float(h == g) for h, g in zip(hits, gold, strict=True)]
        valid = [h is not None for h in hits]
        parsed = [h or "" for h in hits]
        agg: Aggregation = "macro_f1" if self.name == "macro_f1" else "mean"
        return ScoreSet(self.name, scores, valid, parsed, gold=gold, aggregation=agg)

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        hit = parse_label(prediction, self.labels)
        return float(hit == self.gold_label(example)), hit is not None, hit or ""


class MacroF1(Accuracy):
    """Macro-averaged F1 over the gold labels; per-example score is correctness (as accuracy)."""

    name = "macro_f1"


class JsonValid(Metric):
    """1 if the output (code fence stripped) parses as JSON."""

    name = "json_valid"

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        value = parse_json(prediction)
        if value is _MISSING:
            return 0.0, False, strip_code_fence(prediction)
        return 1.0, True, canonical_json(value)


class JsonSchema(Metric):
    """1 if the output parses as JSON and conforms to a JSON schema (format-valid likewise)."""

    name = "json_schema"

    def __init__(self, schema: dict[str, Any]) -> None:
        from jsonschema.validators import validator_for  # imported here: keeps `import rungwise` light

        cls = validator_for(schema)
        self.validator = cls(schema)

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        value = parse_json(prediction)
        if value is _MISSING:
            return 0.0, False, strip_code_fence(prediction)
        ok = self.validator.is_valid(value)
        return float(ok), ok, canonical_json(value)


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects -> dotted paths; lists and scalars are leaf values. Null fields are dropped."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        elif v is not None:
            out[key] = v
    return out


class JsonFields(Metric):
    """Field-level F1 of a predicted JSON object against the expected one.

    Nested objects are compared field by field (``address.city``); lists and scalars as whole
    values. Strings compare stripped and case-insensitively (``case_sensitive: true`` to change),
    numbers by value (``1 == 1.0``). Fields whose value is null count as absent on both sides,
    the usual convention for "not mentioned". An example whose expected and predicted objects
    are both empty scores 1. The per-example score is F1; :meth:`ScoreSet.micro_prf` gives
    micro precision/recall/F1 over all fields.
    """

    name = "json_fields"

    def __init__(self, case_sensitive: bool = False) -> None:
        self.case_sensitive = case_sensitive

    def _norm(self, v: Any) -> Any:
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, str):
            v = " ".join(v.split())
            return v if self.case_sensitive else v.casefold()
        if isinstance(v, list):
            return tuple(self._norm(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((k, self._norm(x)) for k, x in v.items()))
        return v

    def _gold(self, example: Example) -> dict[str, Any]:
        gold = parse_json(example.output)
        if not isinstance(gold, dict):
            raise DataError(
                f"{_where(example)}json_fields needs the expected output to be a JSON object, got "
                f"{example.output[:60]!r}",
                hint="write the expected output as a JSON object, or use metric json_valid / exact_match",
            )
        return {k: self._norm(v) for k, v in _flatten(gold).items()}

    def counts(self, prediction: str, example: Example) -> tuple[int, int, int, bool, str]:
        """``(matched, predicted, gold)`` field counts, format-valid, canonical prediction."""
        gold = self._gold(example)
        value = parse_json(prediction)
        if not isinstance(value, dict):
            shown = strip_code_fence(prediction) if value is _MISSING else canonical_json(value)
            return 0, 0, len(gold), False, shown
        pred = {k: self._norm(v) for k, v in _flatten(value).items()}
        tp = sum(1 for k, v in pred.items() if k in gold and gold[k] == v)
        return tp, len(pred), len(gold), True, canonical_json(value)

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        tp, n_pred, n_gold, ok, shown = self.counts(prediction, example)
        return _f1(tp, n_pred, n_gold), ok, shown

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> ScoreSet:
        _check_lengths(predictions, examples)
        rows = [self.counts(p or "", ex) for p, ex in zip(predictions, examples, strict=True)]
        extra = {
            "tp": [float(r[0]) for r in rows],
            "n_pred": [float(r[1]) for r in rows],
            "n_gold": [float(r[2]) for r in rows],
        }
        return ScoreSet(
            self.name,
            [_f1(*r[:3]) for r in rows],
            [r[3] for r in rows],
            [r[4] for r in rows],
            extra=extra,
        )


def _f1(tp: int, n_pred: int, n_gold: int) -> float:
    return 1.0 if n_pred + n_gold == 0 else 2 * tp / (n_pred + n_gold)


class Numeric(Metric):
    """1 if the final number of the prediction equals the expected one (see :func:`extract_number`).

    Equal within ``tolerance`` (absolute, default 1e-6) or ``rel_tolerance`` (relative, default 0).
    """

    name = "numeric"

    def __init__(self, tolerance: float = 1e-6, rel_tolerance: float = 0.0) -> None:
        self.tolerance = tolerance
        self.rel_tolerance = rel_tolerance

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        gold = extract_number(example.output)
        if gold is None:
            raise DataError(
                f"{_where(example)}metric numeric: the expected output has no number: {example.output[:60]!r}",
                hint="put the answer number in the expected output (e.g. '#### 42'), or use another metric",
            )
        got = extract_number(prediction)
        if got is None:
            return 0.0, False, ""
        ok = math.isclose(got, gold, rel_tol=self.rel_tolerance, abs_tol=self.tolerance)
        return float(ok), True, format_number(got)


class ChrF(Metric):
    """Sentence-level chrF (sacrebleu ``CHRF``) scaled to [0, 1]; the rung's value is the mean.

    ``word_order: 2`` gives chrF++. A mean of sentence scores (not corpus chrF) keeps the
    bootstrap and paired tests on per-example scores.
    """

    name = "chrf"

    def __init__(self, char_order: int = 6, word_order: int = 0) -> None:
        from sacrebleu.metrics import CHRF  # imported here: keeps `import rungwise` light

        self._chrf = CHRF(char_order=char_order, word_order=word_order)

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        p = prediction.strip()
        if not p:
            return 0.0, False, ""
        return self._chrf.sentence_score(p, [example.output.strip()]).score / 100.0, True, p


def _lcs_len(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


class RougeL(Metric):
    """ROUGE-L F1 on lowercased word tokens (punctuation dropped): longest common subsequence."""

    name = "rouge_l"

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        p = prediction.strip()
        pt = p.lower().translate(_PUNCT_TABLE).split()
        gt = example.output.lower().translate(_PUNCT_TABLE).split()
        if not pt or not gt:
            return float(pt == gt and bool(p)), bool(p), p
        lcs = _lcs_len(pt, gt)
        return (2 * lcs / (len(pt) + len(gt))), bool(p), p


class TokenF1(Metric):
    """SQuAD token F1: overlap of normalized words (lowercase, no punctuation or articles)."""

    name = "token_f1"

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        from collections import Counter

        p = normalize_answer(prediction)
        pt, gt = p.split(), normalize_answer(example.output).split()
        if not pt or not gt:
            return float(pt == gt and bool(prediction.strip())), bool(prediction.strip()), p
        common = sum((Counter(pt) & Counter(gt)).values())
        return 2 * common / (len(pt) + len(gt)), True, p


class Regex(Metric):
    """1 if the prediction matches a regular expression.

    ``pattern`` from the options applies to every example; without it, each example's expected
    output is its own pattern. ``mode``: ``search`` (anywhere, default) or ``fullmatch`` (the
    stripped prediction as a whole). ``ignore_case``: false by default.
    """

    name = "regex"

    def __init__(self, pattern: str | None = None, mode: str = "search", ignore_case: bool = False) -> None:
        self.flags = re.IGNORECASE if ignore_case else 0
        self.mode = mode
        self.pattern = re.compile(pattern, self.flags) if pattern is not None else None
        self._cache: dict[str, re.Pattern[str]] = {}

    def _pattern_for(self, example: Example) -> re.Pattern[str]:
        if self.pattern is not None:
            return self.pattern
        src = example.output.strip()
        if src not in self._cache:
            try:
                self._cache[src] = re.compile(src, self.flags)
            except re.error as exc:
                raise DataError(
                    f"{_where(example)}metric regex: the expected output is not a valid regular expression: {exc}",
                    hint="fix the pattern, or set `metric.options.pattern` to use one pattern for every example",
                ) from None
        return self._cache[src]

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        pat = self._pattern_for(example)
        p = prediction.strip()
        m = pat.fullmatch(p) if self.mode == "fullmatch" else pat.search(prediction)
        return float(m is not None), bool(p), (m.group(0) if m is not None else p)


class PythonMetric(Metric):
    """A user metric ``python:module:function`` (or ``python:file.py:function``).

    ``function(prediction: str, example: Example, **options) -> float | bool | (float, bool)``:
    a score in [0, 1] (a bool counts as 1/0), optionally with the format-valid flag; without
    the flag, valid means "not empty". ``options`` from task.yaml are passed as keyword
    arguments when given.
    """

    def __init__(self, name: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.name = name
        self.fn = fn
        self.options = options

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        try:
            out = self.fn(prediction, example, **self.options)
        except Exception as exc:  # user code: report which example and what it raised
            raise ConfigError(
                f"metric.name: {self.name} raised {type(exc).__name__}: {exc} on example {example.source or example.id}",
                hint="fix the metric function (it receives the prediction text and the rungwise Example)",
            ) from exc
        valid = bool(prediction.strip())
        if isinstance(out, tuple):
            if len(out) != 2:
                raise ConfigError(
                    f"metric.name: {self.name} returned a tuple of {len(out)} items",
                    hint="return a float, a bool, or (score, format_valid)",
                )
            out, valid = out[0], bool(out[1])
        if isinstance(out, bool | np.bool_):
            value = float(bool(out))
        elif isinstance(out, int | float | np.integer | np.floating):
            value = float(out)
        else:
            raise ConfigError(
                f"metric.name: {self.name} returned {type(out).__name__} {out!r:.60}",
                hint="return a float in [0, 1], a bool, or (score, format_valid)",
            )
        if not (0.0 <= value <= 1.0):  # also catches NaN
            raise ConfigError(
                f"metric.name: {self.name} returned {value} for example {example.source or example.id}; "
                "scores must be in [0, 1]",
                hint="scale the score into [0, 1] (higher = better)",
            )
        return value, valid, prediction.strip()


# --------------------------------------------------------------------------------------------
# Construction from task.yaml
# --------------------------------------------------------------------------------------------

# Allowed options per metric: name -> (type(s), check, description). Unknown keys are typos.
_OPTIONS: dict[str, dict[str, tuple[Any, Callable[[Any], bool], str]]] = {
    "exact_match": {
        "case_sensitive": (bool, lambda v: True, "true or false"),
        "strip": (bool, lambda v: True, "true or false"),
    },
    "accuracy": {},
    "macro_f1": {},
    "json_valid": {},
    "json_schema": {"schema": ((str, dict), lambda v: True, "a schema file path or an inline schema mapping")},
    "json_fields": {"case_sensitive": (bool, lambda v: True, "true or false")},
    "numeric": {
        "tolerance": ((int, float), lambda v: v >= 0, "a number >= 0"),
        "rel_tolerance": ((int, float), lambda v: v >= 0, "a number >= 0"),
    },
    "chrf": {
        "char_order": (int, lambda v: 1 <= v <= 20, "an integer 1..20"),
        "word_order": (int, lambda v: 0 <= v <= 4, "an integer 0..4 (2 = chrF++)"),
    },
    "rouge_l": {},
    "token_f1": {},
    "regex": {
        "pattern": (str, lambda v: True, "a regular expression"),
        "mode": (str, lambda v: v in ("search", "fullmatch"), "'search' or 'fullmatch'"),
        "ignore_case": (bool, lambda v: True, "true or false"),
    },
}


def _check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    allowed = _OPTIONS[name]
    for key, value in options.items():
        if key not in allowed:
            valid = ", ".join(allowed) or "none"
            raise ConfigError(
                f"field 'metric.options.{key}': unknown option for metric {name!r}",
                hint=f"options of {name}: {valid}",
            )
        types, check, desc = allowed[key]
        # bool is an int subclass; `tolerance: true` is a typo, not 1.
        if (isinstance(value, bool) and types is not bool) or not isinstance(value, types) or not check(value):
            raise ConfigError(f"field 'metric.options.{key}': got {value!r}", hint=f"use {desc}")
    return options


def _load_schema(spec: Any, base_dir: Path) -> dict[str, Any]:
    if spec is None:
        raise ConfigError(
            "field 'metric.options.schema': json_schema needs a schema",
            hint="set metric.options.schema to a JSON schema file (relative to task.yaml) or an inline mapping",
        )
    if isinstance(spec, dict):
        schema, where = spec, "metric.options.schema"
    else:
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ConfigError(
                f"field 'metric.options.schema': schema file {path} not found",
                hint="give a path relative to task.yaml, or inline the schema as a mapping",
            )
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})", hint="fix the schema file") from None
        where = str(path)
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, dict):
        raise ConfigError(f"{where}: a JSON schema must be an object", hint='e.g. {"type": "object"}')
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ConfigError(f"{where}: invalid JSON schema: {exc.message}", hint="fix the schema") from None
    return schema


def _load_python_metric(name: str, options: dict[str, Any], base_dir: Path) -> PythonMetric:
    parts = name.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ConfigError(
            f"field 'metric.name': {name!r} is not of the form python:module:function",
            hint="e.g. python:my_metrics:score, with my_metrics.py next to task.yaml",
        )
    _, mod_name, fn_name = parts
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).expanduser()
            path = path if path.is_absolute() else base_dir / path
            if not path.is_file():
                raise ConfigError(
                    f"field 'metric.name': metric file {path} not found",
                    hint="give the file path relative to task.yaml",
                )
            mod_spec = importlib.util.spec_from_file_location(f"rungwise_user_metric_{path.stem}", path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            # The task's directory goes on sys.path only for the import, so a metrics module
            # next to task.yaml works without installing it and without changing global state.
            added = str(base_dir.resolve()) not in sys.path
            if added:
                sys.path.insert(0, str(base_dir.resolve()))
            try:
                module = importlib.import_module(mod_name)
            finally:
                if added:
                    sys.path.remove(str(base_dir.resolve()))
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"field 'metric.name': cannot import module {mod_name!r} ({exc})",
            hint=f"put {mod_name.replace('.', '/')}.py next to task.yaml, install its package, or add its "
            "directory to PYTHONPATH",
        ) from None
    except Exception as exc:  # a syntax error or a failing import inside the user's module
        raise ConfigError(
            f"field 'metric.name': importing {mod_name!r} failed: {type(exc).__name__}: {exc}",
            hint="fix the error in the metric module",
        ) from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        funcs = sorted(n for n, o in vars(module).items() if inspect.isfunction(o) and not n.startswith("_"))
        raise ConfigError(
            f"field 'metric.name': module {mod_name!r} has no function {fn_name!r}",
            hint=f"functions there: {', '.join(funcs) or 'none'}",
        )
    return PythonMetric(name, fn, dict(options))


def get_metric(spec: MetricSpec, labels: Sequence[str] | None, base_dir: Path) -> Metric:
    """Build the metric named in task.yaml (``spec.name`` with ``spec.options``).

    ``labels`` is the task's label set (needed by accuracy and macro_f1); ``base_dir`` is the
    task file's directory, against which file options (a schema, a metric module) resolve.
    Bad names and options raise :class:`ConfigError` naming the field and the valid values.

    Example:
        >>> get_metric(MetricSpec(name="numeric", options={"tolerance": 0.01}), None, Path("."))
        Numeric('numeric')
    """
    raw = spec.name.strip()
    if raw.startswith("python:"):
        return _load_python_metric(raw, spec.options, base_dir)
    name = raw.lower()
    if name not in _OPTIONS:
        close = difflib.get_close_matches(name, METRIC_NAMES, n=1)
        did = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"field 'metric.name': unknown metric {raw!r}{did}",
            hint=f"use one of: {', '.join(METRIC_NAMES)}, or python:module:function for your own",
        )
    opts = _check_options(name, dict(spec.options))
    if name in ("accuracy", "macro_f1"):
        if not labels:
            raise ConfigError(
                f"field 'labels': metric {name} needs the task's label set",
                hint="add `labels: [label_a, label_b, ...]` to task.yaml, or use metric exact_match",
            )
        return (MacroF1 if name == "macro_f1" else Accuracy)(labels)
    if name == "exact_match":
        return ExactMatch(**opts)
    if name == "json_valid":
        return JsonValid()
    if name == "json_schema":
        return JsonSchema(_load_schema(opts.get("schema"), base_dir))
    if name == "json_fields":
        return JsonFields(**opts)
    if name == "numeric":
        return Numeric(**{k: float(v) for k, v in opts.items()})
    if name == "chrf":
        return ChrF(**opts)
    if name == "rouge_l":
        return RougeL()
    if name == "token_f1":
        return TokenF1()
    # regex
    pattern = opts.get("pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"field 'metric.options.pattern': invalid regular expression: {exc}",
                hint="fix the pattern (YAML: single-quote it so backslashes survive)",
            ) from None
    return Regex(pattern, opts.get("mode", "search"), opts.get("ignore_case", False))
