"""The knowledge base: documents -> chunks -> BM25 + dense index, persisted and searched.

``KnowledgeBase.open`` reads the knowledge source, chunks it, and opens the index saved under
``$RUNGWISE_HOME/retrieval/indexes/<source>-<content hash>/`` or builds it. Chunk vectors come
from an embedding cache keyed by text hash, so after one document changes only its chunks are
embedded again (BM25 is rebuilt whole: bm25s cannot update in place, and it takes about a
second). Every saved part carries a manifest of its files' sizes and hashes; a part that fails
the check, or fails to load, is deleted and rebuilt with a warning, never used.

Layout::

    retrieval/embeddings.sqlite                   vectors by (model, text hash), shared
    retrieval/indexes/<source>-<hash>/chunks.jsonl + manifest.json
        bm25-<settings hash>/                     bm25s files + manifest.json
        dense-<model and store hash>/             vectors.npy or ivf.faiss + ivf.ivfdata, manifest.json

Example:
    >>> kb = KnowledgeBase.open(KnowledgeSpec(path="docs"), RetrieverSpec(), base_dir=Path("."))  # doctest: +SKIP
    >>> [(h.doc_id, round(h.score, 2)) for h in kb.search("how long do refunds take?", k=2)]  # doctest: +SKIP
    [('refunds.md', 1.0), ('shipping.md', 0.31)]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from rungwise import paths
from rungwise.config.knowledge import KnowledgeSpec, RetrieverSpec
from rungwise.retrieval.chunking import Chunk, chunk_documents
from rungwise.retrieval.documents import load_documents
from rungwise.retrieval.embedder import Embedder, EmbeddingCache, load_embedder
from rungwise.retrieval.fusion import fuse
from rungwise.retrieval.lexical import Bm25Index
from rungwise.retrieval.stores import VectorStore, build_store, load_store

log = logging.getLogger(__name__)

Mode = Literal["fused", "bm25", "dense"]
T = TypeVar("T")
FORMAT = 1  # bump when the saved layout changes: older indexes are then rebuilt
KEEP_VERSIONS = 3  # saved indexes kept per knowledge source (older content versions are removed)
EMBED_BATCH = 4096  # chunks embedded (and cached) per step, so progress survives an interruption
_FULL_HASH_LIMIT = 64 * 2**20  # files above this are checked by size and sampled blocks


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk with its fused score and each retriever's rank and score (1-based ranks)."""

    chunk: Chunk
    score: float
    ranks: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def chunk_id(self) -> str:
        return self.chunk.id

    @property
    def doc_id(self) -> str:
        return self.chunk.doc_id

    @property
    def text(self) -> str:
        return self.chunk.text

    def trace(self) -> dict[str, Any]:
        """A compact record for a completion's trace and the report: ids, scores, per-retriever ranks."""
        out: dict[str, Any] = {"id": self.chunk.id, "doc": self.chunk.doc_id, "score": round(self.score, 4)}
        for name, rank in self.ranks.items():
            out[name] = [rank, round(self.scores[name], 4)]
        return out


@dataclass
class BuildStats:
    """What opening the knowledge base did: counts, and seconds per step."""

    documents: int = 0
    chunks: int = 0
    embedded: int = 0  # chunk vectors computed by the model
    cached: int = 0  # chunk vectors read from the embedding cache
    rebuilt: list[str] = field(default_factory=list)  # damaged parts that were rebuilt
    seconds: dict[str, float] = field(default_factory=dict)


class KnowledgeBase:
    """Chunks of a knowledge source with a BM25 index and (unless mode is bm25) a dense index.

    Build it with :meth:`open`; search with :meth:`search` / :meth:`search_many`; measure it with
    :func:`rungwise.retrieval.evaluation.evaluate_retrieval`.
    """

    def __init__(
        self,
        chunks: list[Chunk],
        spec: RetrieverSpec,
        directory: Path,
        bm25: Bm25Index | None,
        store: VectorStore | None,
        embedder: Embedder | None,
        stats: BuildStats,
    ) -> None:
        self.chunks = chunks
        self.spec = spec
        self.directory = directory
        self.bm25 = bm25
        self.store = store
        self.embedder = embedder
        self.stats = stats
        self.doc_ids = {c.doc_id for c in chunks}
        self.chunk_ids = {c.id: i for i, c in enumerate(chunks)}

    @property
    def id(self) -> str:
        """The saved index's name (source and content hash): what a rung's artifact records."""
        return self.directory.name

    # ------------------------------------------------------------------ building and opening

    @classmethod
    def open(
        cls,
        knowledge: KnowledgeSpec,
        retriever: RetrieverSpec | None = None,
        base_dir: Path = Path("."),
        *,
        embedder: Embedder | None = None,
    ) -> KnowledgeBase:
        """Read, chunk and index ``knowledge`` (paths relative to ``base_dir``), reusing what is saved.

        ``embedder`` replaces the model named by ``retriever.embedding_model`` (for tests, or a
        model already in memory).
        """
        spec = retriever or RetrieverSpec()
        stats = BuildStats()
        t0 = time.perf_counter()
        docs = load_documents(knowledge, base_dir)
        chunks = chunk_documents(docs, knowledge.chunk_tokens, knowledge.chunk_overlap)
        stats.documents, stats.chunks = len(docs), len(chunks)
        stats.seconds["read_and_chunk"] = time.perf_counter() - t0
        texts = [c.indexed_text(spec.index_titles) for c in chunks]
        source = (base_dir / knowledge.path).resolve()
        directory = _index_root() / f"{_slug(source)}-{_digest([FORMAT, *(c.id for c in chunks), *texts])}"
        _ensure_part(directory, lambda d: _write_chunks(d, chunks), stats, "chunks")
        kb = cls._open_parts(chunks, texts, spec, directory, embedder, stats)
        _touch(directory)
        _prune_versions(directory)
        return kb

    @classmethod
    def _open_parts(
        cls,
        chunks: list[Chunk],
        texts: list[str],
        spec: RetrieverSpec,
        directory: Path,
        embedder: Embedder | None,
        stats: BuildStats,
    ) -> KnowledgeBase:
        bm25 = store = None
        if spec.mode in ("fused", "bm25"):
            bm25_dir = directory / f"bm25-{_digest([spec.language, spec.bm25_k1, spec.bm25_b])}"
            t = time.perf_counter()

            def build_bm25(d: Path) -> None:
                Bm25Index.build(texts, language=spec.language, k1=spec.bm25_k1, b=spec.bm25_b).save(d)

            _ensure_part(bm25_dir, build_bm25, stats, "bm25")
            bm25 = _load_or_rebuild(bm25_dir, build_bm25, lambda d: Bm25Index.load(d, language=spec.language), stats)
            stats.seconds["bm25"] = time.perf_counter() - t
        if spec.mode in ("fused", "dense"):
            t = time.perf_counter()
            embedder = embedder or load_embedder(spec.embedding_model, batch_size=spec.embed_batch_size)
            stats.seconds["load_embedder"] = time.perf_counter() - t
            dense_dir = directory / f"dense-{_digest([embedder.id, spec.store, spec.ivf_nlist])}"
            t = time.perf_counter()

            def build_dense(d: Path) -> None:
                _build_dense(d, texts, embedder, spec, stats)

            _ensure_part(dense_dir, build_dense, stats, "dense")
            store = _load_or_rebuild(
                dense_dir, build_dense, lambda d: load_store(spec.store, d / "store", nprobe=spec.ivf_nprobe), stats
            )
            stats.seconds["dense"] = time.perf_counter() - t
        return cls(chunks, spec, directory, bm25, store, embedder, stats)

    # ------------------------------------------------------------------ searching

    def search(self, query: str, k: int | None = None, mode: Mode | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (``k`` and ``mode`` default to the retriever settings)."""
        return self.search_many([query], k, mode)[0]

    def search_many(self, queries: Sequence[str], k: int | None = None, mode: Mode | None = None) -> list[list[Hit]]:
        """:meth:`search` for many queries at once (queries are embedded in batches)."""
        k = k or self.spec.k
        mode = mode or self.spec.mode
        depth = max(self.spec.candidates, k)
        lists: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        if mode in ("fused", "bm25"):
            if self.bm25 is None:
                raise ValueError("this knowledge base was opened without BM25 (mode: dense)")
            lists["bm25"] = self.bm25.search_many(queries, depth)
        if mode in ("fused", "dense"):
            if self.store is None or self.embedder is None:
                raise ValueError("this knowledge base was opened without a dense index (mode: bm25)")
            qvecs = self.embedder.encode(list(queries), query=True)
            rows, scores = self.store.search(qvecs, depth)
            lists["dense"] = [(r[r >= 0], s[r >= 0]) for r, s in zip(rows, scores, strict=True)]
        weights = {"bm25": self.spec.bm25_weight, "dense": 1.0 - self.spec.bm25_weight}
        if mode != "fused":
            weights = {mode: 1.0}
        out = []
        for i in range(len(queries)):
            per = {name: (rows.tolist(), scores.tolist()) for name, (rows, scores) in ((n, lists[n][i]) for n in lists)}
            ranked = fuse(per, weights, self.spec.fusion, self.spec.rrf_k)[:k]
            where = {name: dict(zip(rows, range(len(rows)), strict=True)) for name, (rows, _) in per.items()}
            hits = []
            for row, score in ranked:
                ranks = {name: where[name][row] + 1 for name in per if row in where[name]}
                scores = {name: per[name][1][ranks[name] - 1] for name in ranks}
                hits.append(Hit(self.chunks[row], score if mode == "fused" else scores[mode], ranks, scores))
            out.append(hits)
        return out


# ---------------------------------------------------------------------- dense part


def _build_dense(directory: Path, texts: list[str], embedder: Embedder, spec: RetrieverSpec, stats: BuildStats) -> None:
    cache = EmbeddingCache(paths.sub("retrieval") / "embeddings.sqlite")
    try:

        def batches() -> Iterator[np.ndarray]:
            for i in range(0, len(texts), EMBED_BATCH):
                vecs, computed = cache.embed(embedder, texts[i : i + EMBED_BATCH])
                stats.embedded += computed
                yield vecs

        t = time.perf_counter()
        build_store(
            spec.store, batches, n=len(texts), dim=embedder.dim, directory=directory / "store",
            nlist=spec.ivf_nlist, nprobe=spec.ivf_nprobe,
        )  # fmt: skip
        stats.cached = len(texts) - stats.embedded
        stats.seconds["embed_and_store"] = time.perf_counter() - t
    finally:
        cache.close()


# ---------------------------------------------------------------------- saved parts and their checks


def _index_root() -> Path:
    return paths.sub("retrieval", "indexes")


def _digest(parts: Sequence[object]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _slug(source: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name)[:40] or "source"
    return f"{name}-{hashlib.sha256(str(source).encode()).hexdigest()[:8]}"


def _file_hash(path: Path) -> str:
    """sha256 of the file, or, above 64 MiB, of its size and three sampled 1 MiB blocks (fast on huge indexes)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            for offset in (0, size // 2, size - 2**20):
                f.seek(offset)
                h.update(f.read(2**20))
    return h.hexdigest()


def _write_manifest(directory: Path) -> None:
    """List every file of the part with its size and hash; files of nested parts (bm25-*, dense-*) are theirs."""
    nested = {p.parent for p in directory.glob("*/manifest.json")}
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _file_hash(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and not any(n in p.parents for n in nested)
    }
    tmp = directory / "manifest.json.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))
    tmp.replace(directory / "manifest.json")  # written last: a part without it was never finished


def _damage(directory: Path) -> str | None:
    """Why the saved part in ``directory`` cannot be trusted, or None when every file checks out."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is missing or unreadable (an interrupted build?)"
    if manifest.get("format") != FORMAT:
        return f"it was saved in format {manifest.get('format')}, this version reads {FORMAT}"
    for name, meta in files.items():
        p = directory / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != meta["size"]:
            return f"{name} has {p.stat().st_size} bytes, {meta['size']} were written"
        if _file_hash(p) != meta["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _ensure_part(directory: Path, build: Callable[[Path], None], stats: BuildStats, what: str) -> None:
    """Build the part in ``directory`` unless a checked-out copy is there; rebuild a damaged one."""
    if directory.is_dir():
        why = _damage(directory)
        if why is None:
            return
        log.warning("saved %s index %s is damaged (%s); rebuilding it", what, directory, why)
        stats.rebuilt.append(what)
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    build(directory)
    _write_manifest(directory)


def _load_or_rebuild(directory: Path, build: Callable[[Path], None], load: Callable[[Path], T], stats: BuildStats) -> T:
    """Load a checked part; if loading still fails (damage the checksums missed), rebuild once."""
    try:
        return load(directory)
    except Exception as exc:  # noqa: BLE001 - any failure to read a saved index means: rebuild it
        log.warning("saved index %s could not be loaded (%s); rebuilding it", directory, exc)
        stats.rebuilt.append(directory.name)
        shutil.rmtree(directory)
        directory.mkdir(parents=True)
        build(directory)
        _write_manifest(directory)
        return load(directory)


def _write_chunks(directory: Path, chunks: list[Chunk]) -> None:
    with open(directory / "chunks.jsonl", "w", encoding="utf-8") as f:
        for c in chunks:
            f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")


def load_chunks(index_dir: Path) -> list[Chunk]:
    """The chunks saved with an index (``KnowledgeBase.directory``): chunk texts by id without the source.

    Example:
        >>> {c.id: c.text for c in load_chunks(kb.directory)}  # doctest: +SKIP
    """
    rows = [json.loads(line) for line in (index_dir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    return [Chunk(**{**r, "headings": tuple(r["headings"])}) for r in rows]


def _touch(directory: Path) -> None:
    os.utime(directory)


def _prune_versions(current: Path) -> None:
    """Keep the KEEP_VERSIONS most recently used indexes of this source; remove older content versions."""
    prefix = current.name.rsplit("-", 1)[0] + "-"
    versions = sorted(
        (p for p in current.parent.iterdir() if p.is_dir() and p.name.startswith(prefix)),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in versions[KEEP_VERSIONS:]:
        shutil.rmtree(old, ignore_errors=True)
