"""The built-in metrics: pure functions from (predictions, examples) to a :class:`ScoreSet`.

Format-valid means, per metric:

- ``accuracy`` / ``macro_f1``: the output parses to a label of the label set (:func:`parse_label`);
- ``json_valid`` / ``json_fields``: the output parses as JSON (``json_fields``: a JSON object);
  ``json_schema``: parses and conforms to the schema;
- ``numeric``: a number was found;
- every other metric (``exact_match``, ``chrf``, ``rouge_l``, ``token_f1``, ``regex``, ``python:...``):
  the output is not empty (a ``python:`` metric may decide for itself by returning ``(score, valid)``).

A metric is one class: its ``name``, an ``Options`` model for ``metric.options`` in task.yaml,
``score_one`` (or ``score``), and, where it reads a fixed format, ``constraint()`` (the label
set, a JSON schema, a pattern) for the constrained rung. The registry
(:data:`rungwise.registry.METRICS`) finds it by name; :func:`rungwise.evaluate.registry.get_metric`
builds it from task.yaml.

Example:
    >>> from rungwise.types import Example
    >>> s = Accuracy(["billing", "bug"]).score(["Label: Billing.", "it is a bug"], [Example("a", "billing"), Example("b", "bug")])
    >>> s.scores, s.valid, s.value, s.valid_rate
    ([1.0, 0.0], [True, False], 0.5, 0.5)
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from rungwise.config.base import Strict
from rungwise.errors import ConfigError, DataError
from rungwise.evaluate.parsing import (
    NOT_JSON,
    PUNCTUATION_TABLE,
    canonical_json,
    extract_number,
    format_number,
    normalize_answer,
    parse_json,
    parse_label,
    strip_code_fence,
)
from rungwise.evaluate.scores import Aggregation, ScoreSet
from rungwise.types import Constraint, Example


class NoOptions(Strict):
    """A metric without options."""


@dataclass(frozen=True)
class MetricContext:
    """What building a metric may use besides its options: the task's labels and directory."""

    labels: Sequence[str] | None
    base_dir: Path


class Metric(ABC):
    """A metric: ``score(predictions, examples)`` returns one :class:`ScoreSet`.

    Subclasses implement :meth:`score_one` (pure, per example) or override :meth:`score`.
    """

    name: str = ""
    #: The metric's options in task.yaml (``metric.options``); none by default.
    Options: type[Strict] = NoOptions

    @classmethod
    def build(cls, options: Any, ctx: MetricContext) -> Metric:
        """The metric for validated ``options`` (an instance of :attr:`Options`)."""
        return cls(**options.model_dump())

    def constraint(self) -> Constraint | None:
        """The output format this metric reads, for constrained decoding; None when it reads free text."""
        return None

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

    class Options(Strict):
        model_config = ConfigDict(strict=True)
        case_sensitive: bool = Field(False, description="Compare case-sensitively.")
        strip: bool = Field(True, description="Strip surrounding whitespace before comparing.")

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

    @classmethod
    def build(cls, options: Any, ctx: MetricContext) -> Metric:
        if not ctx.labels:
            raise ConfigError(
                f"field 'labels': metric {cls.name} needs the task's label set",
                hint="add `labels: [label_a, label_b, ...]` to task.yaml, or use metric exact_match",
            )
        return cls(ctx.labels)

    def constraint(self) -> Constraint:
        return Constraint("choice", choices=tuple(self.labels))

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

    def constraint(self) -> Constraint:
        return Constraint("json")

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        value = parse_json(prediction)
        if value is NOT_JSON:
            return 0.0, False, strip_code_fence(prediction)
        return 1.0, True, canonical_json(value)


class JsonSchema(Metric):
    """1 if the output parses as JSON and conforms to a JSON schema (format-valid likewise)."""

    name = "json_schema"

    class Options(Strict):
        schema_: str | dict[str, Any] | None = Field(
            None, alias="schema", description="A JSON schema file (relative to task.yaml) or an inline schema mapping."
        )

    @classmethod
    def build(cls, options: Any, ctx: MetricContext) -> Metric:
        return cls(load_schema(options.schema_, ctx.base_dir))

    def __init__(self, schema: dict[str, Any]) -> None:
        from jsonschema.validators import validator_for  # imported here: keeps `import rungwise` light

        self.schema = schema
        self.validator = validator_for(schema)(schema)

    def constraint(self) -> Constraint:
        return Constraint("json", json_schema=json.dumps(self.schema, sort_keys=True))

    def score_one(self, prediction: str, example: Example) -> tuple[float, bool, str]:
        value = parse_json(prediction)
        if value is NOT_JSON:
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

    ``schema`` (optional) is the JSON schema constrained decoding follows (the ``constrained``
    rung): without one, the constraint is "any JSON object", and a small model may keep adding
    fields until it runs out of tokens. Scoring is unchanged: fields against the expected object.
    """

    name = "json_fields"

    class Options(Strict):
        case_sensitive: bool = Field(False, strict=True, description="Compare string values case-sensitively.")
        schema_: str | dict[str, Any] | None = Field(
            None, alias="schema", description="A JSON schema (file relative to task.yaml, or inline) for constrained "
            "decoding; fields are still scored against the expected object."
        )

    @classmethod
    def build(cls, options: Any, ctx: MetricContext) -> Metric:
        schema = load_schema(options.schema_, ctx.base_dir) if options.schema_ is not None else None
        return cls(options.case_sensitive, schema)

    def constraint(self) -> Constraint:
        if self.schema is not None:
            return Constraint("json", json_schema=json.dumps(self.schema, sort_keys=True))
        return Constraint("json")

    def __init__(self, case_sensitive: bool = False, schema: dict[str, Any] | None = None) -> None:
        self.case_sensitive = case_sensitive
        self.schema = schema

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
            shown = strip_code_fence(prediction) if value is NOT_JSON else canonical_json(value)
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

    class Options(Strict):
        model_config = ConfigDict(strict=True)
        tolerance: float = Field(1e-6, ge=0, description="Absolute tolerance.")
        rel_tolerance: float = Field(0.0, ge=0, description="Relative tolerance.")

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

    class Options(Strict):
        model_config = ConfigDict(strict=True)
        char_order: int = Field(6, ge=1, le=20, description="Character n-gram order.")
        word_order: int = Field(0, ge=0, le=4, description="Word n-gram order (2 = chrF++).")

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
        pt = p.lower().translate(PUNCTUATION_TABLE).split()
        gt = example.output.lower().translate(PUNCTUATION_TABLE).split()
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

    class Options(Strict):
        model_config = ConfigDict(strict=True)
        pattern: str | None = Field(None, description="One regular expression for every example (default: each "
                                    "example's expected output is its own pattern).")
        mode: Literal["search", "fullmatch"] = Field("search", description="search: anywhere; fullmatch: the whole "
                                                     "stripped prediction.")
        ignore_case: bool = Field(False, description="Match case-insensitively.")

        @field_validator("pattern")
        @classmethod
        def _compiles(cls, v: str | None) -> str | None:
            if v is not None:
                try:
                    re.compile(v)
                except re.error as exc:
                    raise ValueError(f"invalid regular expression: {exc} (YAML: single-quote it so backslashes "
                                     "survive)") from None
            return v

    def constraint(self) -> Constraint | None:
        # Only a task-wide pattern describes every answer; a per-example pattern cannot constrain.
        if self.pattern is None:
            return None
        return Constraint("regex", pattern=self.pattern.pattern, ignore_case=bool(self.flags & re.IGNORECASE))

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


def load_schema(spec: Any, base_dir: Path) -> dict[str, Any]:
    """A JSON schema from an inline mapping or a file relative to task.yaml, checked against its meta-schema."""
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
