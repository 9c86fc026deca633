"""``hybrid``: the fine-tuned model of the ``finetune`` rung, answering with retrieved passages.

Fine-tune for behaviour, RAG for knowledge: this rung is both. It reuses the ``finetune`` rung's
model, as prepared earlier in the same climb or stored by an earlier climb of this task (never
training one itself); when there is neither, the rung is skipped with that reason and the climb
goes on. Its prompt is the one the model was trained with, plus the passages retrieved for each
input, exactly as the ``rag`` rung adds them.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from rungwise.prompting import PromptTemplate
from rungwise.rungs.base import Prepared, RungArtifact, RungContext
from rungwise.rungs.finetune import Finetune, FinetuneArtifact
from rungwise.rungs.rag import (
    ANSWER_FROM_PASSAGES,
    Rag,
    RagArtifact,
    RagConfig,
)
from rungwise.types import HYBRID, TrainingRecord


class HybridArtifact(RagArtifact):
    """The retrieval record of ``rag`` plus the fine-tuned model it answers with."""

    finetune: dict[str, Any] = Field(description="The finetune rung's artifact (where the tuned model is).")

    def training(self) -> TrainingRecord | None:
        return FinetuneArtifact.model_validate(self.finetune).training()

    def notes(self) -> list[str]:
        tuned = FinetuneArtifact.model_validate(self.finetune)
        return [f"answers with the {tuned.method} model of the finetune rung ({tuned.adapter_dir or tuned.model_dir})",
                *super().notes()]


class Hybrid(Rag):
    """The fine-tuned model plus retrieval (see the module docstring). It answers, cites and is
    measured exactly as :class:`Rag`; only what it prepares differs."""

    name = "hybrid"
    summary = "the fine-tuned model (finetune rung) + passages retrieved from the knowledge source"
    kind = HYBRID
    Config = RagConfig
    Artifact = HybridArtifact
    cheap_to_prepare = False

    def prepare(self, ctx: RungContext) -> Prepared:
        cfg: RagConfig = ctx.config
        tuned = ctx.resolve(Finetune.name, build=False)
        system = tuned.template.system
        tpl = PromptTemplate((system + "\n\n" if system else "") + ANSWER_FROM_PASSAGES)
        kb = ctx.knowledge(cfg.retriever())
        art = HybridArtifact(prompt=tpl.to_dict(), index=kb.id, retriever=cfg.retriever().model_dump(mode="json"),
                             chunks=len(kb.chunks), finetune=tuned.artifact.model_dump(mode="json"))
        return self._prepared(ctx, art, tuned.backend)

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        assert isinstance(artifact, HybridArtifact)
        tuned = Finetune().load(ctx, FinetuneArtifact.model_validate(artifact.finetune))
        return self._prepared(ctx, artifact, tuned.backend)
