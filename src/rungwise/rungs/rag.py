"""``rag``: the task's prompt plus the passages retrieved for each input from the knowledge source.

For every input the retriever (BM25, dense embeddings, or both fused; :mod:`rungwise.retrieval`)
returns the top ``k`` chunks; they go into the per-example context slot after the cacheable
prefix (system prompt + optional fixed demos), each under a short id (``[p1]``, ``[p2]`` ...).
The instructions ask the model to answer from the passages and cite the ids it used. Citations
are taken out of the answer before scoring (so a metric sees the answer alone) and kept in the
trace with the retrieved chunk ids and scores, whether the gold passage was retrieved, and the
answer's groundedness (share of its content words found in the passages).

After scoring, retrieval itself is measured on the test inputs that carry gold document or chunk
ids: recall@1/5/10, MRR@10 and nDCG@10 for BM25, dense and fused retrieval separately; and, with
``judge`` set, a judge model's faithfulness verdicts (failed judgements counted, not dropped).

:class:`RetrievalPrompt` is shared with the ``hybrid`` rung (the fine-tuned model + retrieval).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, SerializeAsAny, field_validator

from rungwise.backends.base import Backend
from rungwise.config.knowledge import RetrieverSpec
from rungwise.config.model import ModelSpec, model_spec_from
from rungwise.errors import DataError
from rungwise.evaluate.diagnosis import GOLD_RETRIEVED
from rungwise.prompting import PromptTemplate
from rungwise.rungs.base import (
    Answer,
    Prepared,
    PromptArtifact,
    PromptPlan,
    Rung,
    RungArtifact,
    RungContext,
    Scored,
    base_system,
)
from rungwise.rungs.few_shot import stratified_demos
from rungwise.types import RETRIEVAL, Example, GenParams, RungResult, TokenEstimate

if TYPE_CHECKING:  # the retrieval stack is imported when a rung retrieves, not at start-up
    from rungwise.retrieval.knowledge_base import Hit, KnowledgeBase

#: How the model is told to use the passages (after the task's own instructions).
ANSWER_FROM_PASSAGES = (
    "Answer using the numbered passages in the user's message. After the answer, cite the ids of the passages "
    "you used in square brackets, like [p1]. If the passages do not contain the answer, answer as best you can."
)
_CITATION = re.compile(r"\s*\[(p\d+(?:\s*,\s*p\d+)*)\]")


class RagConfig(RetrieverSpec):
    """The ``rungs.rag`` section: the retriever's settings, plus demos and an optional judge."""

    demos: int = Field(
        0,
        ge=0,
        description="Fixed few-shot demos from the train split before the input (0: none), each shown as the inputs "
        "are: with the passages retrieved for it, its answer citing the passage that holds it.",
    )
    judge: SerializeAsAny[ModelSpec] | None = Field(
        None,
        description="A model config (like `model:`, usually backend: openai) that judges each answer's faithfulness "
        "to its passages after scoring; unset: only the judge-free groundedness is measured.",
    )

    @field_validator("judge", mode="before")
    @classmethod
    def _judge(cls, v: Any) -> Any:
        return None if v is None else model_spec_from(v)

    def retriever(self) -> RetrieverSpec:
        """The retrieval settings alone (what the index depends on)."""
        return RetrieverSpec.model_validate(self.model_dump(include=set(RetrieverSpec.model_fields)))


class RagArtifact(PromptArtifact):
    """The fixed prompt, the index it searched, and what retrieval measured on the test inputs."""

    index: str = Field(description="The saved index (knowledge source and content hash) the rung searched.")
    retriever: dict[str, Any] = Field(description="The retriever settings.")
    chunks: int = Field(description="Chunks in the index.")
    retrieval: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per retriever (bm25, dense, fused): recall@k, mrr@10, ndcg@10 on gold ids."
    )
    retrieval_n: int = Field(0, description="Test inputs with gold ids that retrieval was measured on.")
    groundedness: float | None = Field(None, description="Mean share of the answers' content words found in "
                                       "their passages.")
    faithfulness: dict[str, Any] | None = Field(None, description="The judge's verdicts: mean, judged, failed.")

    def notes(self) -> list[str]:
        out = [f"retrieved from {self.index} ({self.chunks:,} chunks), {self.retriever.get('mode')} retrieval, "
               f"k={self.retriever.get('k')}"]
        if self.retrieval:
            figures = "; ".join(f"{mode} recall@1 {s['recall@1']:.3f}, recall@5 {s['recall@5']:.3f}, MRR@10 "
                                f"{s['mrr@10']:.3f}" for mode, s in self.retrieval.items())
            out.append(f"retrieval on {self.retrieval_n} test inputs with gold ids: {figures}")
        if self.groundedness is not None:
            out.append(f"groundedness {self.groundedness:.2f} (share of the answers' content words found in the "
                       "retrieved passages)")
        if self.faithfulness:
            out.append(f"judge faithfulness: {self.faithfulness['summary']}")
        return out


class RetrievalPrompt:
    """Builds each input's prompt: ``template`` (the cacheable prefix) + its top-k passages."""

    def __init__(self, kb: KnowledgeBase, retriever: RetrieverSpec, template: PromptTemplate) -> None:
        self.kb = kb
        self.retriever = retriever
        self.template = template

    def plan(self, ex: Example) -> PromptPlan:
        hits = self.kb.search(ex.input, k=self.retriever.k, mode=self.retriever.mode)
        return PromptPlan(self.template, context=self.context(hits), trace=self.trace(ex, hits))

    @staticmethod
    def context(hits: Sequence[Hit]) -> str:
        blocks = [f"[p{i}]" + (f" ({h.chunk.title})" if h.chunk.title else "") + f" {h.text}" for i, h in enumerate(hits, 1)]
        return "Passages:\n" + "\n\n".join(blocks)

    def passages(self, trace: dict[str, Any]) -> list[str]:
        """The texts of the chunks a trace says were retrieved."""
        return [self.kb.chunks[self.kb.chunk_ids[r["id"]]].text for r in trace.get("retrieved", [])
                if r["id"] in self.kb.chunk_ids]

    def trace(self, ex: Example, hits: Sequence[Hit]) -> dict[str, Any]:
        trace: dict[str, Any] = {"retrieved": [{"ref": f"p{i}", **h.trace()} for i, h in enumerate(hits, 1)]}
        if ex.gold_doc_ids:
            from rungwise.retrieval.evaluation import ranked_ids, resolve_gold

            level, gold = resolve_gold(self.kb, ex)
            trace[GOLD_RETRIEVED] = bool(gold & set(ranked_ids(hits, level)))
        return trace


def split_citations(text: str) -> tuple[str, list[str]]:
    """The answer without its ``[p1, p3]`` citations, and the cited passage refs.

    >>> split_citations("Paris [p2]. It is the capital [p1, p3].")
    ('Paris. It is the capital.', ['p2', 'p1', 'p3'])
    """
    cited: list[str] = []
    for m in _CITATION.finditer(text):
        cited += [c.strip() for c in m.group(1).split(",")]
    return _CITATION.sub("", text).strip(), cited


def passage_demos(kb: KnowledgeBase, retriever: RetrieverSpec, train: Sequence[Example], n: int, seed: int, *,
                  by_label: bool) -> tuple[tuple[str, str], ...]:
    """``n`` demos in the shape the inputs will have: each train input under its own retrieved
    passages, its answer followed by the citation of the passage that holds it.

    A demo whose passages lack its answer would show the model answering from elsewhere, so for
    free-text answers the seeded candidates whose answer is found in their passages come first
    (at most ``20 * n`` candidates are searched). Label answers are not in the passages; they are
    spread over the labels as few-shot demos are, without a citation.
    """
    pool = stratified_demos(train, n if by_label else min(len(train), 20 * n), seed, by_label=by_label)
    found: list[tuple[str, str]] = []
    rest: list[tuple[str, str]] = []
    for ex in pool:
        hits = kb.search(ex.input, k=retriever.k, mode=retriever.mode)
        shown = PromptTemplate("").render([{"role": "user", "content": ex.input}], RetrievalPrompt.context(hits))
        holder = None if by_label else next(
            (i for i, h in enumerate(hits, 1) if ex.output.strip() and ex.output.strip().lower() in h.text.lower()), None)
        (found if holder else rest).append((shown[-1]["content"], ex.output + (f" [p{holder}]" if holder else "")))
        if len(found) == n:
            break
    return tuple((found + rest)[:n])


@dataclass
class RetrievalPrepared(Prepared):
    """A prepared rung that retrieves: its :class:`RetrievalPrompt` builds each input's prompt."""

    retrieval: RetrievalPrompt | None = None


def answer_with_passages(rung: Rung, prepared: Prepared, examples: Sequence[Example], backend: Any, params: GenParams,
                         progress: Any) -> list[Answer]:
    """Answer, then move the citations out of each answer into its trace, with the answer's
    groundedness in its passages."""
    from rungwise.retrieval.metrics import groundedness

    assert isinstance(prepared, RetrievalPrepared) and prepared.retrieval is not None
    answers = Rung.predict(rung, prepared, examples, backend, params, progress)
    for a in answers:
        trace = a.completion.trace
        text, cited = split_citations(a.completion.text)
        refs = {r["ref"]: r["id"] for r in trace.get("retrieved", [])}
        a.completion.text = text
        trace["cited"] = [refs.get(c, c) for c in cited]
        trace["groundedness"] = groundedness(text, prepared.retrieval.passages(trace))
    return answers


def measure_retrieval(ctx: RungContext, retriever: RetrieverSpec, art: RagArtifact, scored: Scored,
                      answers: Sequence[str], judge: ModelSpec | None) -> None:
    """Retrieval quality per retriever on the test inputs with gold ids, mean groundedness, and
    (with a judge) faithfulness, recorded on ``art``."""
    from rungwise.retrieval.evaluation import evaluate_retrieval

    kb = ctx.knowledge(retriever)
    modes = ("bm25", "dense", "fused") if retriever.mode == "fused" else (retriever.mode,)
    try:
        ev = evaluate_retrieval(kb, scored.examples, modes=modes, ks=(1, 5, 10))
    except DataError:
        raise  # a gold id that is not in the corpus: the user must fix the data
    if ev.scores and next(iter(ev.scores.values())).n:
        art.retrieval = {m: {"recall@1": s.recall[1], "recall@5": s.recall[5], "recall@10": s.recall[10],
                             "mrr@10": s.mrr, "ndcg@10": s.ndcg} for m, s in ev.scores.items()}
        art.retrieval_n = next(iter(ev.scores.values())).n
    grounded = [t["groundedness"] for t in scored.traces if t.get("groundedness") is not None]
    art.groundedness = sum(grounded) / len(grounded) if grounded else None
    if judge is not None:
        from rungwise.retrieval.faithfulness import judge_faithfulness

        contexts = [[h.text for h in kb.search(ex.input, k=retriever.k, mode=retriever.mode)] for ex in scored.examples]
        result = judge_faithfulness(ctx.backends.adopt(judge.build()), list(answers), contexts)
        art.faithfulness = {"mean": result.mean, "judged": result.judged, "failed": result.failed,
                            "summary": result.summary()}


class Rag(Rung):
    """The task's prompt plus the top-k passages retrieved for each input (see the module docstring)."""

    name = "rag"
    summary = "the prompt + top-k passages retrieved from the knowledge source (BM25, dense, fused)"
    kind = RETRIEVAL
    Config = RagConfig
    Artifact = RagArtifact
    cheap_to_prepare = False  # the first climb builds the index (embeddings); serving reuses it

    def prepare(self, ctx: RungContext) -> Prepared:
        cfg: RagConfig = ctx.config
        system = base_system(ctx.task) + "\n\n" + ANSWER_FROM_PASSAGES
        retriever = cfg.retriever()
        kb = ctx.knowledge(retriever)
        demos = passage_demos(kb, retriever, ctx.train, cfg.demos, ctx.task.data.seed,
                              by_label=bool(ctx.task.labels)) if cfg.demos else ()
        tpl = PromptTemplate(system, demos)
        art = RagArtifact(prompt=tpl.to_dict(), index=kb.id, retriever=retriever.model_dump(mode="json"),
                          chunks=len(kb.chunks))
        return self._prepared(ctx, art)

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        assert isinstance(artifact, RagArtifact)
        return self._prepared(ctx, artifact)

    @staticmethod
    def _prepared(ctx: RungContext, art: RagArtifact, backend: Backend | None = None) -> Prepared:
        """The rung ready to answer: its index opened, each input's passages retrieved when asked;
        ``backend`` answers (None: the climb's shared model)."""
        retriever = RetrieverSpec.model_validate(art.retriever)
        tpl = PromptTemplate.from_dict(art.prompt)
        planner = RetrievalPrompt(ctx.knowledge(retriever), retriever, tpl)
        return RetrievalPrepared(art, tpl, backend=backend, per_example=planner.plan, retrieval=planner)

    def estimate(self, ctx: RungContext, sample: Sequence[Example]) -> TokenEstimate | None:
        return None  # what it retrieves decides its tokens: a climb measures them

    def predict(self, prepared: Prepared, examples: Sequence[Example], backend: Any, params: GenParams,
                progress: Any = None) -> list[Answer]:
        return answer_with_passages(self, prepared, examples, backend, params, progress)

    def finalize(self, ctx: RungContext, prepared: Prepared, result: RungResult, previous: Sequence[RungResult],
                 scored: Scored) -> None:
        art = prepared.artifact
        assert isinstance(art, RagArtifact)
        cfg: RagConfig = ctx.config
        measure_retrieval(ctx, RetrieverSpec.model_validate(art.retriever), art, scored, result.predictions, cfg.judge)
