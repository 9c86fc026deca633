"""The rung contract: what a rung declares, and what it gets to work with.

A rung is one class in one file (here, or in another package through the ``rungwise.rungs``
entry-point group). It declares:

==============  ==========================================================================
``name``        how the user names it in ``rungs.order``
``summary``     one line for ``rungwise rungs`` and reports
``kind``        a :class:`~rungwise.types.RungKind`: what economics and the verdict read
``Config``      a pydantic model for its own ``rungs.<name>`` section of task.yaml
``Artifact``    a typed, versioned model of what it stores (JSON in the run store)
``estimate``    tokens per call before any climb (``rungwise cost``)
``prepare``     builds the artifact from the train split only
``load``        rebuilds the prepared rung from a stored artifact, without training (``serve``)
==============  ==========================================================================

and may override ``predict`` (how it answers) and ``finalize`` (after scoring).

A rung never sees the test split while preparing: :class:`RungContext` holds the train split,
the rung's validated config, a working directory, the shared backend, the task's knowledge
source and ``resolve(name)``, the prepared artifact of another rung of the same climb, built
once (a hybrid rung reuses the fine-tuned model this way).

Example, a complete rung::

    class Shout(Rung):
        name = "shout"
        summary = "the instructions in capitals"

        def prepare(self, ctx):
            tpl = PromptTemplate(base_system(ctx.task).upper())
            return Prepared(PromptArtifact(prompt=tpl.to_dict()), tpl)

        def load(self, ctx, artifact):
            return Prepared(artifact, PromptTemplate.from_dict(artifact.prompt))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from rungwise.backends.base import Backend, ProgressFn
from rungwise.config.base import Strict
from rungwise.config.knowledge import RetrieverSpec
from rungwise.config.task import Task
from rungwise.errors import ConfigError, RungwiseError
from rungwise.prompting import PromptTemplate, chat_tokens_estimate, count_tokens_estimate, system_prompt
from rungwise.types import (
    PROMPT,
    Chat,
    Completion,
    Constraint,
    Example,
    GenParams,
    RungKind,
    RungResult,
    TokenEstimate,
    TrainingRecord,
)

if TYPE_CHECKING:
    from rungwise.retrieval.knowledge_base import KnowledgeBase


class NoConfig(Strict):
    """A rung without settings of its own (an empty ``rungs.<name>`` section is allowed)."""


class RungArtifact(Strict):
    """What a rung stores: JSON in the run store, validated when read back.

    Subclasses add their fields and bump ``version`` when a field changes meaning, so a stored
    artifact of another version is refused with a clear message instead of being misread.
    """

    version: int = Field(1, description="Schema version of this artifact type.")

    def notes(self) -> list[str]:
        """Lines for the ladder's notes (the audit before training, the forgetting check, ...)."""
        return []

    def training(self) -> TrainingRecord | None:
        """What training this rung's model took (rungs that train); economics prices it."""
        return None


class PromptArtifact(RungArtifact):
    """A prompting rung's artifact: the fixed prompt (system + demos) it sends."""

    prompt: dict[str, Any] = Field(description="PromptTemplate.to_dict(): system prompt and demos.")


class RungSkipped(RungwiseError):
    """Raised by ``prepare`` when the rung cannot run in this climb for a reason that is not an
    error (e.g. the hybrid rung without a fine-tuned model). The climb records the reason and
    goes on with the next rung."""


@dataclass(frozen=True)
class PromptPlan:
    """What one example is sent: the template (cacheable prefix), its per-example context
    (retrieved text, after the prefix), and a trace of how they were chosen."""

    template: PromptTemplate
    context: str = ""
    trace: dict[str, Any] = field(default_factory=dict)

    def chat(self, ex: Example) -> Chat:
        return self.template.render(ex.chat(), self.context)


@dataclass
class Prepared:
    """A rung ready to answer: its artifact, its fixed prompt, and how it answers.

    ``template`` is the fixed prompt (what ``serve`` reports and cost estimates count);
    ``per_example`` overrides it per input (nearest-neighbour demos, retrieved context);
    ``backend`` is the model that answers (None: the climb's shared backend); ``constraint``
    restricts its answers to the task's format.
    """

    artifact: RungArtifact
    template: PromptTemplate = field(default_factory=PromptTemplate)
    backend: Backend | None = None
    per_example: Callable[[Example], PromptPlan] | None = None
    constraint: Constraint | None = None

    def plan(self, ex: Example) -> PromptPlan:
        return self.per_example(ex) if self.per_example is not None else PromptPlan(self.template)

    def params(self, base: GenParams) -> GenParams:
        """The generation parameters this rung answers with (the task's, plus its constraint)."""
        return replace(base, constraint=self.constraint) if self.constraint is not None else base


@dataclass
class Scored:
    """The test examples a rung was just scored on, with each one's trace: what ``finalize`` may
    measure beyond the task metric (retrieval quality against gold ids, groundedness). The rung
    never sees them while preparing."""

    examples: Sequence[Example]
    traces: Sequence[dict[str, Any]]


@dataclass
class Answer:
    """One example's answer with the prompt that was sent (stored as it was sent)."""

    prompt: Chat
    completion: Completion


class BackendPool:
    """The climb's model backends: the task's shared one, built on first use, and any a rung
    opens (a fine-tuned model). Everything it holds is closed once, at the end of the climb.

    Example:
        >>> from rungwise.backends.scripted import ScriptedBackend
        >>> pool = BackendPool(lambda: ScriptedBackend(["ok"]))
        >>> pool.shared().model_id
        'scripted'
        >>> pool.close()
    """

    def __init__(self, factory: Callable[[], Backend], *, borrowed: Backend | None = None) -> None:
        self._factory = factory
        self._shared: Backend | None = borrowed
        self._borrowed = borrowed  # given by the caller: the caller closes it
        self._owned: list[Backend] = []

    def shared(self) -> Backend:
        """The task's backend (``model:`` in task.yaml)."""
        if self._shared is None:
            self._shared = self.adopt(self._factory())
        return self._shared

    @property
    def built(self) -> Backend | None:
        """The task's backend if it was built (or borrowed), without building it."""
        return self._shared

    def adopt(self, backend: Backend) -> Backend:
        """Close ``backend`` with the pool (a rung's own model)."""
        if backend is not self._borrowed and backend not in self._owned:
            self._owned.append(backend)
        return backend

    def close(self) -> None:
        while self._owned:
            self._owned.pop().close()


@dataclass
class RungContext:
    """What a rung may use: the task, the train split, its validated config section, a working
    directory for its artifacts, the climb's backends, and the other rungs of the climb.

    ``quick_limit`` is set when the climb is a quick try (``--limit``): a rung that trains caps
    its training examples with it and says so.
    """

    task: Task
    train: Sequence[Example]
    config: Any
    work_dir: Path
    backends: BackendPool
    resolver: Callable[..., Prepared]
    quick_limit: int | None = None
    knowledge_opener: Callable[[Any], Any] | None = None
    #: Tells the user something before a long step (the CLI prints it as a note): a training plan.
    say: Callable[[str], None] = lambda message: None

    def knowledge(self, retriever: RetrieverSpec) -> KnowledgeBase:
        """The task's knowledge source, indexed for ``retriever`` (opened once per climb and
        shared by every rung that retrieves with the same settings)."""
        if self.knowledge_opener is None or self.task.knowledge is None:
            raise ConfigError("this rung retrieves, but the task has no knowledge source",
                              hint="add `knowledge: {path: docs/}` (a folder or a JSONL of {id, title, text}) to task.yaml")
        kb: KnowledgeBase = self.knowledge_opener(retriever)
        return kb

    def resolve(self, name: str, *, build: bool = True) -> Prepared:
        """The prepared rung ``name`` of this climb (prepared once, then shared), or its stored
        artifact from an earlier run of this task, or (``build``) prepared now; without
        ``build`` and with neither, :class:`RungSkipped` says why."""
        return self.resolver(name, build=build)

    def shared_backend(self) -> Backend:
        return self.backends.shared()


class Rung(ABC):
    """Base class of every rung; see the module docstring for the contract.

    Example:
        >>> from rungwise.registry import RUNGS
        >>> RUNGS.get("zero_shot").kind.name
        'prompt'
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    kind: ClassVar[RungKind] = PROMPT
    Config: ClassVar[type[Strict]] = NoConfig
    Artifact: ClassVar[type[RungArtifact]] = PromptArtifact
    #: False when ``prepare`` is expensive (training, indexing): ``serve`` then needs a stored run
    #: and never prepares the rung itself.
    cheap_to_prepare: ClassVar[bool] = True

    @abstractmethod
    def prepare(self, ctx: RungContext) -> Prepared:
        """Build this rung's artifact from the train split only."""

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        """Rebuild the prepared rung from its stored artifact, without training or indexing.

        The default prepares again, which is right for rungs that are cheap and deterministic
        to prepare; rungs that train or index override it.
        """
        return self.prepare(ctx)

    def work_key(self, config: Any) -> Any:
        """The part of this rung's settings its stored work depends on: its ``work_dir`` is keyed
        by it, so changing any other setting finds the same work. The default is every setting; a
        rung whose settings include checks or limits around the artifact leaves those out."""
        return config.model_dump(mode="json") if hasattr(config, "model_dump") else config

    def estimate(self, ctx: RungContext, sample: Sequence[Example]) -> TokenEstimate | None:
        """Tokens per call before any climb; None when only a climb can tell.

        The default prepares the rung (cheap rungs only) and counts its real prompts.
        """
        if not self.cheap_to_prepare:
            return None
        return estimate_prompts(self.prepare(ctx), sample)

    def predict(
        self,
        prepared: Prepared,
        examples: Sequence[Example],
        backend: Backend,
        params: GenParams,
        progress: ProgressFn | None = None,
    ) -> list[Answer]:
        """Answer ``examples`` with the prepared rung: each prompt is built once, sent, and
        returned with its completion (one batched backend call)."""
        plans = [prepared.plan(ex) for ex in examples]
        chats = [plan.chat(ex) for plan, ex in zip(plans, examples, strict=True)]
        comps = backend.generate(chats, prepared.params(params), progress)
        out = []
        for plan, chat, comp in zip(plans, chats, comps, strict=True):
            if plan.trace:
                comp.trace = {**plan.trace, **comp.trace}
            out.append(Answer(chat, comp))
        return out

    def finalize(  # noqa: B027 - an optional hook, empty by default
        self, ctx: RungContext, prepared: Prepared, result: RungResult, previous: Sequence[RungResult], scored: Scored
    ) -> None:
        """Optional hook after scoring (write a model card with the measured metrics, measure
        retrieval against gold ids). ``previous`` holds the rung results already measured in
        this climb; ``scored`` the test examples and their traces."""


def base_system(task: Task) -> str:
    """The task's full system prompt: instructions plus the label list or format rules."""
    return system_prompt(task.instructions, task.labels)


def estimate_prompts(prepared: Prepared, sample: Sequence[Example]) -> TokenEstimate:
    """Estimated tokens per call of a prepared rung's real prompts on ``sample``.

    The cached part is the fixed prefix: the whole template when every input shares it, only
    the system prompt when demos are chosen per input.
    """
    prompts = [chat_tokens_estimate(prepared.plan(e).chat(e)) for e in sample]
    prefix = prepared.template.prefix()
    if prepared.per_example is not None:
        prefix = [m for m in prefix if m["role"] == "system"]
    completion = [count_tokens_estimate(e.output) + 1 for e in sample]  # +1: end-of-turn token
    return TokenEstimate(
        prompt_tokens=_mean(prompts),
        cached_tokens=float(chat_tokens_estimate(prefix)),
        completion_tokens=_mean(completion),
    )


def estimate_template(tpl: PromptTemplate, sample: Sequence[Example]) -> TokenEstimate:
    """Estimated tokens per call of a fixed prompt template on ``sample``."""
    return estimate_prompts(Prepared(RungArtifact(), tpl), sample)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
