"""The rungs of one climb (or one ``serve``): each prepared once, in its own working directory,
reachable by the others through ``ctx.resolve(name)``, with every backend they open closed
together at the end.

Example:
    >>> ws = Workspace(task, split.train, BackendPool(task.model.build))  # doctest: +SKIP
    >>> prepared = ws.prepare("few_shot")  # doctest: +SKIP
    >>> ws.close()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rungwise import paths
from rungwise.config.knowledge import RetrieverSpec
from rungwise.config.task import Task
from rungwise.data.dataset import examples_hash
from rungwise.errors import ConfigError
from rungwise.registry import RUNGS
from rungwise.rungs.base import BackendPool, Prepared, Rung, RungArtifact, RungContext, RungSkipped
from rungwise.types import Example

if TYPE_CHECKING:
    from rungwise.retrieval.knowledge_base import KnowledgeBase

#: Looks up the artifact a rung stored in an earlier run of the same task (None: there is none).
StoredLookup = Callable[[str], dict[str, Any] | None]


def get_rung(name: str, task: Task | None = None) -> Rung:
    """Rung ``name`` instantiated: a registered rung, or (given the task) a variant of one that the
    task defines (``rungs.<name>: {use: <rung>, ...}``); a ConfigError names the valid ones."""
    cls: type[Rung] = task.rungs.rung_class(name) if task is not None else RUNGS.get(name)
    rung = cls()
    if rung.name != name:
        rung.name = name  # type: ignore[misc]  # a variant answers to its own name
    return rung


def read_artifact(rung: Rung, stored: dict[str, Any], where: str) -> RungArtifact:
    """Validate a stored artifact against the rung's ``Artifact`` model (and its version)."""
    want = rung.Artifact.model_fields["version"].default
    got = stored.get("version", 1)
    if got != want:
        raise ConfigError(
            f"{where}: the stored {rung.name} artifact is version {got}; this rungwise reads version {want}",
            hint="climb the task again with this version of rungwise",
        )
    try:
        return rung.Artifact.model_validate(stored)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(
            f"{where}: the stored {rung.name} artifact is not what this rungwise expects "
            f"({'.'.join(str(x) for x in err['loc'])}: {err['msg']})",
            hint="climb the task again with this version of rungwise",
        ) from None


class Workspace:
    """Prepares the rungs of one task on one train split, each at most once.

    ``stored`` finds a rung's artifact from an earlier run of this task (for rungs that resolve
    another rung which this climb does not run); ``quick_limit`` marks a quick try (``--limit``); ``say``
    passes what a rung tells the user before a long step (the climb's reporter notes).
    """

    def __init__(
        self,
        task: Task,
        train: Sequence[Example],
        backends: BackendPool,
        *,
        stored: StoredLookup | None = None,
        quick_limit: int | None = None,
        root: Path | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.task = task
        self.train = train
        self.backends = backends
        self._stored = stored or (lambda name: None)
        self.quick_limit = quick_limit
        self._root = root
        self._say = say or (lambda message: None)
        self._train_hash = examples_hash(train)
        self._prepared: dict[str, Prepared] = {}
        self._knowledge: dict[str, KnowledgeBase] = {}
        self._preparing: list[str] = []
        self._contexts: dict[str, RungContext] = {}

    # -- contexts -------------------------------------------------------------------------
    def work_dir(self, name: str) -> Path:
        """Where rung ``name`` keeps its artifacts: keyed by what its result depends on (the model,
        the prompt's ingredients, its own settings and the train split), so re-running the same
        rung finds its previous work (a trained adapter, an index) and a change starts afresh."""
        key_src = json.dumps(
            [self.task.model.model_dump(mode="json", exclude={"params"}), self.task.instructions, self.task.labels,
             get_rung(name, self.task).work_key(self.task.rungs.section(name)), self._train_hash],
            sort_keys=True,
        )
        key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.task.name)[:40] or "task"
        return (self._root or paths.home() / "rungs") / safe / f"{name}-{key}"

    def context(self, name: str) -> RungContext:
        if name not in self._contexts:
            self._contexts[name] = RungContext(
                task=self.task, train=self.train, config=self.task.rungs.section(name), work_dir=self.work_dir(name),
                backends=self.backends, resolver=self.resolve, quick_limit=self.quick_limit,
                knowledge_opener=self.knowledge, say=self._say,
            )
        return self._contexts[name]

    def knowledge(self, retriever: RetrieverSpec) -> KnowledgeBase:
        """The task's knowledge source indexed for ``retriever``, opened once per setting."""
        from rungwise.retrieval.knowledge_base import KnowledgeBase

        assert self.task.knowledge is not None
        key = retriever.model_dump_json()
        if key not in self._knowledge:
            self._knowledge[key] = KnowledgeBase.open(self.task.knowledge, retriever, self.task.base_dir)
        return self._knowledge[key]

    # -- preparing ------------------------------------------------------------------------
    def prepare(self, name: str) -> Prepared:
        """Rung ``name`` prepared (once) from the train split."""
        if name in self._prepared:
            return self._prepared[name]
        if name in self._preparing:
            chain = " -> ".join([*self._preparing, name])
            raise ConfigError(f"rungs resolve each other in a cycle: {chain}", hint="a rung cannot depend on itself")
        self._preparing.append(name)
        try:
            prepared = get_rung(name, self.task).prepare(self.context(name))
        finally:
            self._preparing.pop()
        self._prepared[name] = prepared
        return prepared

    def load(self, name: str, stored: dict[str, Any], where: str = "run store") -> Prepared:
        """Rung ``name`` rebuilt from a stored artifact (no training, no indexing)."""
        if name in self._prepared:
            return self._prepared[name]
        rung = get_rung(name, self.task)
        prepared = rung.load(self.context(name), read_artifact(rung, stored, where))
        self._prepared[name] = prepared
        return prepared

    def resolve(self, name: str, *, build: bool = True) -> Prepared:
        """What ``ctx.resolve`` answers: the rung prepared in this workspace, else its artifact
        stored by an earlier run of this task, else (``build``) prepared now; without ``build``
        and with neither, :class:`RungSkipped` says why."""
        if name in self._prepared or name in self._preparing:
            return self.prepare(name)
        stored = self._stored(name)
        if stored is not None:
            return self.load(name, stored, where=f"the stored {name} rung")
        if not build:
            raise RungSkipped(
                f"needs the {name} rung, which neither ran in this climb nor was stored by an earlier run of this task",
                hint=f"add {name} to rungs.order before this rung, or climb it first",
            )
        return self.prepare(name)

    def close(self) -> None:
        """Close every backend the rungs opened (and the shared one, unless the caller lent it)."""
        self.backends.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
