"""Token estimates for `rungwise cost` and `rungwise decide` before any climb.

Each rung estimates itself (:meth:`rungwise.rungs.base.Rung.estimate`) from the task's train
split and a sample of test inputs: a prompting rung builds its real prompts (the same
``prepare`` the climb runs) and counts about 4 characters per token; a rung that trains also
estimates its training tokens. A climb replaces these with measured counts.

Example:
    >>> profiles, notes = estimate_profiles(load_task("task.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from rungwise.backends.base import Backend
from rungwise.config.task import Task
from rungwise.data.dataset import load_split
from rungwise.economics.cost import TokenProfile
from rungwise.errors import ConfigError
from rungwise.rungs import BackendPool, Workspace, get_rung


def _no_backend() -> Backend:
    raise ConfigError("estimating costs needs no model", hint="this is a bug: please report it")


def estimate_profiles(task: Task, *, max_examples: int = 200) -> tuple[list[TokenProfile], list[str]]:
    """Estimated token profiles of the task's rungs (``rungs.order``) and notes on what was skipped."""
    split = load_split(task)
    sample = list(split.test[:max_examples])
    out: list[TokenProfile] = []
    notes: list[str] = []
    with Workspace(task, split.train, BackendPool(_no_backend)) as ws:
        for name in task.rungs.order:
            rung = get_rung(name, task)
            est = rung.estimate(ws.context(name), sample)
            if est is None:
                notes.append(f"{name}: its tokens depend on what it builds; climb to measure them")
                continue
            out.append(TokenProfile(name, est.prompt_tokens, est.cached_tokens, est.completion_tokens, 0.0,
                                    rung.kind, est.training, estimated=True))
    return out, notes
