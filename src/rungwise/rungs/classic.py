"""``classic``: a classical text classifier (TF-IDF + logistic regression) trained on the train
split. No language model, no tokens: the cheapest answer for a label task, and the bar every
LLM rung has to clear. First in the default order of a label task because it costs seconds.

The fitted classifier is saved as safetensors + JSON (no pickle, nothing that runs code when
loaded) in the rung's working directory, served by :class:`rungwise.classic.ClassicBackend`
behind the same OpenAI-compatible API, and priced as self-hosted CPU inference from its
measured throughput. Skipped, with the reason, on a task without a label set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from rungwise.classic.config import ClassicSpec
from rungwise.prompting import PromptTemplate
from rungwise.rungs.base import Prepared, Rung, RungArtifact, RungContext, RungSkipped
from rungwise.types import BASELINE, Example, TokenEstimate


class ClassicArtifact(RungArtifact):
    """Where the fitted classifier is, and what fitting it took."""

    directory: str = Field(description="The saved classifier (classifier.safetensors + classic.json).")
    variant: str
    labels: list[str]
    n_train: int
    fit_seconds: float

    def notes(self) -> list[str]:
        return [f"{self.variant} fitted on {self.n_train} train examples in {self.fit_seconds:.1f} s on the CPU; "
                f"saved in {self.directory}"]


class Classic(Rung):
    """TF-IDF + logistic regression on the train split (see the module docstring)."""

    name = "classic"
    summary = "a classical classifier (TF-IDF + logistic regression): no LLM, no tokens"
    kind = BASELINE
    Config = ClassicSpec
    Artifact = ClassicArtifact
    cheap_to_prepare = False  # a fit (seconds to a minute); serving loads the saved classifier

    def prepare(self, ctx: RungContext) -> Prepared:
        from rungwise.classic import train_classifier

        if not ctx.task.labels:
            raise RungSkipped("the classical baseline answers labels, and this task has no label set",
                              hint="give `labels:` in task.yaml for a classification task, or drop classic")
        model = train_classifier(ctx.train, ctx.config)
        directory = model.save(Path(ctx.work_dir) / "classic")
        art = ClassicArtifact(directory=str(directory), variant=model.spec.variant, labels=list(model.labels),
                              n_train=model.n_train, fit_seconds=model.fit_seconds)
        return self.load(ctx, art)

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        from rungwise.classic import ClassicBackend

        assert isinstance(artifact, ClassicArtifact)
        backend = ctx.backends.adopt(ClassicBackend.load(artifact.directory))
        return Prepared(artifact, PromptTemplate(""), backend=backend)

    def estimate(self, ctx: RungContext, sample: Sequence[Example]) -> TokenEstimate:
        return TokenEstimate(prompt_tokens=0.0, cached_tokens=0.0, completion_tokens=0.0)
