"""Rungs of the ladder, and a registry so a plugin can add one.

Example:
    >>> sorted(RUNGS)[:2]
    ['few_shot', 'zero_shot']
"""

from __future__ import annotations

import json

from rungwise.backends.base import Backend
from rungwise.config.task import Task
from rungwise.errors import ConfigError
from rungwise.prompting import PromptTemplate
from rungwise.rungs.base import Prepared, Rung, RungContext
from rungwise.rungs.finetune import Finetune, FinetuneMinimal
from rungwise.rungs.prompt_rungs import FewShot, ZeroShot

RUNGS: dict[str, type[Rung]] = {}


def register(cls: type[Rung]) -> type[Rung]:
    """Register a rung class under ``cls.name`` (usable as a decorator by plugins)."""
    RUNGS[cls.name] = cls
    return cls


register(ZeroShot)
register(FewShot)
register(Finetune)
register(FinetuneMinimal)


def get_rung(name: str) -> Rung:
    """Instantiate a registered rung, or raise a clear error naming the valid ones."""
    if name not in RUNGS:
        raise ConfigError(f"unknown rung {name!r} in rungs.order", hint=f"use one of: {', '.join(RUNGS)}")
    return RUNGS[name]()


def prepared_for(task: Task, rung_name: str, run_id: int | None = None) -> Prepared:
    """A rung's prepared artifact for serving: rebuilt from the task's train split (deterministic,
    seeded), and checked against the stored artifact of ``run_id`` when one is given.

    Example:
        >>> prepared = prepared_for(load_task("task.yaml"), "few_shot")  # doctest: +SKIP
        >>> chat = prepared.prompt_for(Example(input="my card was charged twice", output=""))  # doctest: +SKIP
    """
    from rungwise.data.dataset import load_split

    rung = get_rung(rung_name)
    if run_id is not None:
        from rungwise.store import Store

        store = Store()
        stored = {r["name"]: json.loads(r["artifact_json"]) for r in store.rungs(run_id)}
        if rung_name not in stored:
            raise ConfigError(
                f"run {run_id} has no rung {rung_name!r} (it has: {', '.join(stored) or 'none'})",
                hint="pick a rung that run measured, see `rungwise runs show ID`",
            )
        art = stored[rung_name]
        if art.get("kind") == "prompt" and art.get("strategy") != "nearest":
            return Prepared(PromptTemplate.from_dict(art["prompt"]), artifact=art)
    split = load_split(task)
    return rung.prepare(RungContext(task=task, train=split.train, backend_factory=_no_backend))


def prompt_for(task: Task, rung_name: str, run_id: int | None = None) -> PromptTemplate:
    """The fixed prompt (system + demos) of a prompting rung; see :func:`prepared_for` for per-input prompts."""
    prepared = prepared_for(task, rung_name, run_id)
    if prepared.per_example is not None:
        raise ConfigError(
            f"rung {rung_name!r} builds a different prompt per input (nearest-neighbour demos)",
            hint="use prepared_for(...).prompt_for(example) for per-input prompts",
        )
    return prepared.template


def _no_backend() -> Backend:
    raise ConfigError("preparing this rung for serving needs a model backend", hint="climb it first, then serve its run")


__all__ = ["RUNGS", "Prepared", "Rung", "RungContext", "get_rung", "prepared_for", "prompt_for", "register"]
