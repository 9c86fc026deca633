"""Retrieval for the knowledge rungs: documents, chunking, BM25 + dense indexes, fusion, metrics.

Heavy libraries (bm25s, sentence-transformers, faiss, pypdf, trafilatura, semchunk) are imported
where they are used; they come with ``pip install 'rungwise[rag]'``.

Example:
    >>> from rungwise.config.knowledge import KnowledgeSpec, RetrieverSpec
    >>> kb = KnowledgeBase.open(KnowledgeSpec(path="docs"), RetrieverSpec(k=3))  # doctest: +SKIP
    >>> hits = kb.search("How long do refunds take?")  # doctest: +SKIP
    >>> [h.trace() for h in hits]  # ids, fused score, per-retriever [rank, score]  # doctest: +SKIP
"""

from rungwise.retrieval.chunking import Chunk, chunk_document, chunk_documents
from rungwise.retrieval.documents import Document, load_documents
from rungwise.retrieval.embedder import EmbeddingCache, load_embedder
from rungwise.retrieval.evaluation import RetrievalEvaluation, RetrievalScores, evaluate_retrieval
from rungwise.retrieval.faithfulness import FaithfulnessResult, judge_faithfulness
from rungwise.retrieval.knowledge_base import BuildStats, Hit, KnowledgeBase
from rungwise.retrieval.metrics import groundedness, mrr_at_k, ndcg_at_k, recall_at_k
from rungwise.retrieval.stores import StoreTooLarge

__all__ = [
    "BuildStats",
    "Chunk",
    "Document",
    "EmbeddingCache",
    "FaithfulnessResult",
    "Hit",
    "KnowledgeBase",
    "RetrievalEvaluation",
    "RetrievalScores",
    "StoreTooLarge",
    "chunk_document",
    "chunk_documents",
    "evaluate_retrieval",
    "groundedness",
    "judge_faithfulness",
    "load_documents",
    "load_embedder",
    "mrr_at_k",
    "ndcg_at_k",
    "recall_at_k",
]
