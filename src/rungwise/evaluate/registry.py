"""Building the metric task.yaml names: a registered metric with validated options, or the
user's own ``python:module:function``.

Example:
    >>> from rungwise.config.task import MetricSpec
    >>> get_metric(MetricSpec(name="numeric", options={"tolerance": 0.01}), None, Path("."))
    Numeric('numeric')
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
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
