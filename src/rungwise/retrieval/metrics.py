"""Retrieval metrics (recall@k, MRR@k, nDCG@k with binary relevance) and a judge-free groundedness.

Every function takes one query's ranked ids (best first, no repeats) and its set of relevant ids.

Example:
    >>> recall_at_k(["a", "b", "c"], {"b"}, 1), recall_at_k(["a", "b", "c"], {"b"}, 5)
    (0.0, 1.0)
    >>> mrr_at_k(["a", "b", "c"], {"b"})
    0.5
    >>> round(ndcg_at_k(["a", "b"], {"b"}), 3)
    0.631
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from rungwise.retrieval.lexical import analyze


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant ids found in the top ``k`` (1.0 or 0.0 with one relevant id)."""
    if not relevant:
        raise ValueError("recall needs at least one relevant id")
    return len(set(ranked[:k]) & set(relevant)) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevant: Collection[str], k: int = 10) -> float:
    """1 / rank of the first relevant id within the top ``k``, else 0."""
    for rank, item in enumerate(ranked[:k], 1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int = 10) -> float:
    """Normalised discounted cumulative gain with binary gains: 1.0 when all relevant ids lead the list."""
    dcg = sum(1.0 / math.log2(rank + 1) for rank, item in enumerate(ranked[:k], 1) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def groundedness(answer: str, contexts: Sequence[str], language: str = "english") -> float | None:
    """Share of the answer's content words (stemmed, stop words left out) that occur in the retrieved text.

    No judge model: 1.0 means every content word of the answer appears in the contexts, 0.0 that
    none does. None when the answer has no content words (nothing to check).

    Example:
        >>> groundedness("A refund is issued in 14 days.", ["Refunds are issued within 14 days of the return."])
        1.0
        >>> groundedness("Refunds take 30 days by cheque.", ["Refunds are issued within 14 days of the return."])
        0.4
    """
    words = analyze(answer, language)
    if not words:
        return None
    support = set(analyze(" ".join(contexts), language))
    return sum(w in support for w in words) / len(words)
