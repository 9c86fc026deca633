"""Building the metric task.yaml names: a registered metric with validated options, or the
user's own ``python:module:function``.

Example:
    >>> from rungwise.config.task import MetricSpec
    >>> get_metric(MetricSpec(name="numeric", options={"tolerance": 0.01}), None, Path("."))
    Numeric('numeric')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from rungwise.config.task import MetricSpec
from rungwise.errors import ConfigError
from rungwise.evaluate.metrics import Metric, MetricContext
from rungwise.registry import METRICS, UnknownName
from rungwise.types import Example
from rungwise.usercode import load_function


def metric_names() -> list[str]:
    """Names of the registered metrics (built-ins and plugins); ``python:module:function`` adds your own."""
    return METRICS.names()


def get_metric(spec: MetricSpec, labels: Sequence[str] | None, base_dir: Path) -> Metric:
    """Build the metric named in task.yaml (``spec.name`` with ``spec.options``).

    ``labels`` is the task's label set (needed by accuracy and macro_f1); ``base_dir`` is the
    task file's directory, against which file options (a schema, a metric module) resolve.
    Bad names and options raise :class:`ConfigError` naming the field and the valid values.
    """
    raw = spec.name.strip()
    if raw.startswith("python:"):
        return _load_python_metric(raw, spec.options, base_dir)
    name = raw.lower()
    try:
        cls: type[Metric] = METRICS.get(name)
    except UnknownName as exc:
        raise ConfigError(
            f"field 'metric.name': {exc.message}",
            hint=f"use one of: {', '.join(metric_names())}, or python:module:function for your own",
        ) from None
    try:
        options = cls.Options.model_validate(dict(spec.options))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        msg = "unknown option (typo?)" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        allowed = ", ".join(f"{f.alias or k} ({f.description})" if f.description else (f.alias or k)
                            for k, f in cls.Options.model_fields.items()) or "none"
        raise ConfigError(f"field 'metric.options.{field}': {msg}; got {err.get('input')!r}",
                          hint=f"options of {name}: {allowed}") from None
    return cls.build(options, MetricContext(labels, base_dir))


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


def _load_python_metric(name: str, options: dict[str, Any], base_dir: Path) -> PythonMetric:
    fn = load_function(name, base_dir, field="metric.name", what="metric")
    return PythonMetric(name, fn, dict(options))
