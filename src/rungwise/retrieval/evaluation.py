"""Measuring retrieval on examples that carry gold ids: recall@k, MRR@10 and nDCG@10 per retriever.

A gold id names a document (its id in the knowledge source) or a chunk (:attr:`Chunk.id`).
When an example's gold ids are all chunk ids, hits are judged chunk by chunk; otherwise they are
judged by document: the ranked chunks become a ranked list of distinct documents (a gold chunk id
then stands for its document).

Example:
    >>> ev = evaluate_retrieval(kb, examples, modes=("bm25", "dense", "fused"))  # doctest: +SKIP
    >>> ev.scores["fused"].recall[5], ev.scores["fused"].mrr  # doctest: +SKIP
    (0.96, 0.88)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rungwise.errors import DataError
from rungwise.retrieval.knowledge_base import Hit, KnowledgeBase, Mode
from rungwise.retrieval.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from rungwise.types import Example

TRACE_DEPTH = 10  # hits kept per retriever in each example's trace


@dataclass
class RetrievalScores:
    """One retriever's figures over the examples with gold ids (means over examples)."""

    mode: str
    n: int
    recall: dict[int, float]
    mrr: float  # MRR@10
    ndcg: float  # nDCG@10


@dataclass
class RetrievalEvaluation:
    """Scores per retriever, and one trace per evaluated example (ids and scores of each retriever's top 10)."""

    scores: dict[str, RetrievalScores]
    traces: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # examples without gold ids


def resolve_gold(kb: KnowledgeBase, example: Example) -> tuple[str, set[str]]:
    """("chunk" or "doc", the relevant ids at that level); an unknown gold id is an error naming the example."""
    chunk_gold, doc_gold = set(), set()
    for gid in example.gold_doc_ids:
        if gid in kb.chunk_ids:
            chunk_gold.add(gid)
        elif gid in kb.doc_ids:
            doc_gold.add(gid)
        else:
            where = f"{example.source}: " if example.source else ""
            raise DataError(
                f"{where}gold id {gid!r} is neither a document nor a chunk of the knowledge source",
                hint="gold_doc_ids name documents (a file's path relative to the knowledge folder, or a JSONL id) "
                "or chunk ids; check the spelling, or add the missing document",
            )
    if not doc_gold:
        return "chunk", chunk_gold
    return "doc", doc_gold | {kb.chunks[kb.chunk_ids[c]].doc_id for c in chunk_gold}


def ranked_ids(hits: Sequence[Hit], level: str) -> list[str]:
    """Distinct chunk or document ids in rank order."""
    ids = [h.chunk_id if level == "chunk" else h.doc_id for h in hits]
    return list(dict.fromkeys(ids))


def evaluate_retrieval(
    kb: KnowledgeBase,
    examples: Sequence[Example],
    modes: Sequence[Mode] = ("bm25", "dense", "fused"),
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 256,
) -> RetrievalEvaluation:
    """Recall@k (each of ``ks``), MRR@10 and nDCG@10 of every retriever in ``modes`` on ``examples``.

    Examples without gold ids are skipped (and counted); unknown gold ids raise a DataError.
    """
    judged = [(ex, *resolve_gold(kb, ex)) for ex in examples if ex.gold_doc_ids]
    # Enough chunks that the top 10 distinct documents are there even when documents have many chunks.
    depth = max(kb.spec.candidates, max(ks), TRACE_DEPTH)
    sums = {m: {"mrr": 0.0, "ndcg": 0.0, **{f"r{k}": 0.0 for k in ks}} for m in modes}
    traces: list[dict[str, Any]] = [
        {"query": ex.input, "gold": sorted(gold), "level": level, "source": ex.source} for ex, level, gold in judged
    ]
    for mode in modes:
        for start in range(0, len(judged), batch_size):
            part = judged[start : start + batch_size]
            results = kb.search_many([ex.input for ex, _, _ in part], k=depth, mode=mode)
            for i, ((_, level, gold), hits) in enumerate(zip(part, results, strict=True)):
                ranked = ranked_ids(hits, level)
                s = sums[mode]
                s["mrr"] += mrr_at_k(ranked, gold, 10)
                s["ndcg"] += ndcg_at_k(ranked, gold, 10)
                for k in ks:
                    s[f"r{k}"] += recall_at_k(ranked, gold, k)
                traces[start + i][mode] = [h.trace() for h in hits[:TRACE_DEPTH]]
    n = len(judged)
    scores = {
        m: RetrievalScores(
            mode=m,
            n=n,
            recall={k: s[f"r{k}"] / n if n else 0.0 for k in ks},
            mrr=s["mrr"] / n if n else 0.0,
            ndcg=s["ndcg"] / n if n else 0.0,
        )
        for m, s in sums.items()
    }
    return RetrievalEvaluation(scores, traces, skipped=len(examples) - n)
