"""``zero_shot``: the task's instructions (+ the label list or format rules) and the input."""

from __future__ import annotations

from rungwise.prompting import PromptTemplate
from rungwise.rungs.base import Prepared, PromptArtifact, Rung, RungArtifact, RungContext, base_system


class ZeroShot(Rung):
    """System prompt (instructions + label list / format rules) and the input; nothing else."""

    name = "zero_shot"
    summary = "instructions + label list, no examples"

    def prepare(self, ctx: RungContext) -> Prepared:
        tpl = PromptTemplate(base_system(ctx.task))
        return Prepared(PromptArtifact(prompt=tpl.to_dict()), tpl)

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        assert isinstance(artifact, PromptArtifact)
        return Prepared(artifact, PromptTemplate.from_dict(artifact.prompt))
