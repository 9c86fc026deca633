"""Rungs of the ladder, and a registry so a plugin can add one.

Example:
    >>> sorted(RUNGS)[:2]
    ['few_shot', 'zero_shot']
"""

from __future__ import annotations

from rungwise.errors import ConfigError
from rungwise.rungs.base import Prepared, Rung, RungContext
from rungwise.rungs.prompt_rungs import FewShot, ZeroShot

RUNGS: dict[str, type[Rung]] = {}


def register(cls: type[Rung]) -> type[Rung]:
    """Register a rung class under ``cls.name`` (usable as a decorator by plugins)."""
    RUNGS[cls.name] = cls
    return cls


register(ZeroShot)
register(FewShot)


def get_rung(name: str) -> Rung:
    """Instantiate a registered rung, or raise a clear error naming the valid ones."""
    if name not in RUNGS:
        raise ConfigError(f"unknown rung {name!r} in rungs.order", hint=f"use one of: {', '.join(RUNGS)}")
    return RUNGS[name]()


__all__ = ["RUNGS", "Prepared", "Rung", "RungContext", "get_rung", "register"]
