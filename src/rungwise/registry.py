"""Registries that pair a name with its implementation: rungs, backends, metrics.

Each registry knows its built-in entries as ``"module:attribute"`` strings, imported on first
use, and finds plugins through a Python entry-point group, so a separate package adds a rung, a
backend or a metric without editing rungwise (simonw/llm's plugin habit)::

    # pyproject.toml of a plugin package
    [project.entry-points."rungwise.rungs"]
    my_rung = "my_package.my_rung:MyRung"

The registries live in the core layer and import nothing above it: task.yaml validation asks
them for a section's config model by name, and the entries themselves are loaded lazily.

Example:
    >>> RUNGS.get("zero_shot").name
    'zero_shot'
    >>> "accuracy" in METRICS.names()
    True
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from rungwise.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


class UnknownName(ConfigError):
    """A name that no registry entry has (a typo, or a plugin that is not installed)."""


class Registry(Generic[T]):
    """Name -> implementation, from built-ins, entry points and :meth:`register` calls.

    ``what`` names the thing in messages ("rung", "backend", "metric"); ``group`` is the
    entry-point group plugins declare; ``builtins`` maps names to ``"module:attribute"``.
    """

    def __init__(self, what: str, group: str, builtins: dict[str, str]) -> None:
        self.what = what
        self.group = group
        self._paths: dict[str, str] = dict(builtins)
        self._order: list[str] = list(builtins)  # names in the order they became known
        self._builtin = frozenset(builtins)
        self._loaded: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, obj: T) -> T:
        """Add (or replace) an entry by object; returns it, so it works as a decorator's body."""
        self._loaded[name] = obj
        self._paths.pop(name, None)
        if name not in self._order:
            self._order.append(name)
        return obj

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugins that replace a built-in)."""
        self._loaded.pop(name, None)
        self._paths.pop(name, None)
        if name in self._order:
            self._order.remove(name)

    def refresh(self) -> None:
        """Look for newly installed plugins again (entry points are read once, on first use)."""
        self._discovered = False
        self._discover()

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for ep in entry_points(group=self.group):
            if ep.name in self._builtin:
                log.warning("%s plugin %r (%s) is ignored: a built-in %s has that name", self.what, ep.name, ep.value,
                            self.what)
                continue
            if ep.name not in self._loaded and ep.name not in self._paths:
                self._paths[ep.name] = ep.value
                self._order.append(ep.name)

    def names(self) -> list[str]:
        """Every registered name: built-ins first, in their declared order, then plugins."""
        self._discover()
        return list(self._order)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def get(self, name: str) -> T:
        """The entry called ``name``; :class:`UnknownName` (a ConfigError) lists the valid ones."""
        if name in self._loaded:
            return self._loaded[name]
        self._discover()
        path = self._paths.get(name)
        if path is None:
            raise UnknownName(
                f"unknown {self.what} {name!r}" + _did_you_mean(name, self.names()),
                hint=f"use one of: {', '.join(self.names())}, or install the plugin that provides it",
            )
        obj: T = _load(path, self.what, name)
        self._loaded[name] = obj
        del self._paths[name]
        return obj

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) for every entry; imports each one."""
        for name in self.names():
            yield name, self.get(name)

    def source(self, name: str) -> str:
        """Where an entry comes from: ``built-in`` or the plugin's ``module:attribute``."""
        if name in self._builtin:
            return "built-in"
        self._discover()
        obj = self._loaded.get(name)
        if obj is not None:
            return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', name)}"
        return self._paths.get(name, "?")


def _did_you_mean(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _load(path: str, what: str, name: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"the {what} {name!r} cannot be loaded from {path} ({type(exc).__name__}: {exc})",
            hint="reinstall the package that provides it, or remove it from task.yaml",
        ) from None
    return obj


#: Rung classes (:class:`rungwise.rungs.base.Rung` subclasses), group ``rungwise.rungs``.
RUNGS: Registry[Any] = Registry(
    "rung",
    "rungwise.rungs",
    {
        "zero_shot": "rungwise.rungs.zero_shot:ZeroShot",
        "few_shot": "rungwise.rungs.few_shot:FewShot",
        "finetune": "rungwise.rungs.finetune:Finetune",
        "finetune_min": "rungwise.rungs.finetune:FinetuneMinimal",
        "classic": "rungwise.rungs.classic:Classic",
        "constrained": "rungwise.rungs.constrained:Constrained",
        "rag": "rungwise.rungs.rag:Rag",
        "hybrid": "rungwise.rungs.hybrid:Hybrid",
        "adapter": "rungwise.rungs.adapter:Adapter",
    },
)

#: Backend config models (:class:`rungwise.config.model.ModelSpec` subclasses whose ``build()``
#: makes the backend), group ``rungwise.backends``.
BACKENDS: Registry[Any] = Registry(
    "backend",
    "rungwise.backends",
    {
        "local": "rungwise.backends.local:LocalSpec",
        "openai": "rungwise.backends.openai_compat:OpenAISpec",
        "scripted": "rungwise.backends.scripted:ScriptedSpec",
    },
)

#: Metric classes (:class:`rungwise.evaluate.metrics.Metric` subclasses), group ``rungwise.metrics``.
METRICS: Registry[Any] = Registry(
    "metric",
    "rungwise.metrics",
    {
        name: f"rungwise.evaluate.metrics:{cls}"
        for name, cls in [
            ("exact_match", "ExactMatch"), ("accuracy", "Accuracy"), ("macro_f1", "MacroF1"),
            ("json_valid", "JsonValid"), ("json_schema", "JsonSchema"), ("json_fields", "JsonFields"),
            ("numeric", "Numeric"), ("chrf", "ChrF"), ("rouge_l", "RougeL"), ("token_f1", "TokenF1"),
            ("regex", "Regex"),
        ]
    },
)
