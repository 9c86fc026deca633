"""The rung extension point: ``prepare`` builds the artifact, ``predict`` answers with it.

A rung never sees the test split while preparing: ``RungContext.train`` is all it gets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rungwise.backends.base import Backend, ProgressFn
from rungwise.config.task import Task
from rungwise.prompting import PromptTemplate, system_prompt
from rungwise.types import Chat, Completion, Example, GenParams, RungResult


@dataclass
class RungContext:
    """What a rung may use to prepare: the task, the train split, the shared backend."""

    task: Task
    train: Sequence[Example]
    backend_factory: Callable[[], Backend]
    work_dir: Any = None  # a Path for artifacts (adapters, indexes)


@dataclass
class Prepared:
    """A rung's artifact. ``template`` is the fixed prompt; ``per_example`` overrides it when the
    prompt depends on the input (nearest-neighbour demos, retrieval)."""

    template: PromptTemplate
    backend: Backend | None = None  # None: the shared task backend
    per_example: Callable[[Example], PromptTemplate] | None = None
    artifact: dict[str, Any] = field(default_factory=dict)

    def prompt_for(self, ex: Example) -> Chat:
        tpl = self.per_example(ex) if self.per_example else self.template
        return tpl.for_example(ex)


class Rung(ABC):
    """Base class of every rung. Subclasses set ``name`` and implement ``prepare``.

    Example:
        >>> from rungwise.rungs import get_rung
        >>> get_rung("zero_shot").name
        'zero_shot'
    """

    name: str = ""
    #: a short description for --help and reports
    summary: str = ""

    @abstractmethod
    def prepare(self, ctx: RungContext) -> Prepared:
        """Build this rung's artifact from the train split only."""

    def predict(
        self,
        prepared: Prepared,
        examples: Sequence[Example],
        backend: Backend,
        params: GenParams,
        progress: ProgressFn | None = None,
    ) -> list[Completion]:
        """Answer ``examples`` with the prepared artifact (one batched backend call)."""
        return backend.generate([prepared.prompt_for(ex) for ex in examples], params, progress)


    def finalize(self, ctx: RungContext, prepared: Prepared, result: RungResult, previous: Sequence[RungResult]) -> None:  # noqa: B027
        """Optional hook after scoring (e.g. write a model card with the measured metrics).
        ``previous`` holds the rung results already measured in this climb."""


def base_system(task: Task) -> str:
    return system_prompt(task.instructions, task.labels)
