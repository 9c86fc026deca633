"""Where the chunk vectors live: in process (numpy, exact) or on disk (a FAISS IVF index).

* ``memory``: one float32 matrix in RAM, searched exactly with a matrix product. Refuses corpora
  whose vectors would take more than half of this machine's memory, and names the other store.
* ``faiss_ivf``: a FAISS ``IndexIVFFlat`` (inner product) whose inverted lists are written to an
  ``.ivfdata`` file and memory-mapped when searched, built shard by shard and merged on disk with
  ``faiss.contrib.ondisk.merge_ondisk`` (FAISS's own recipe for indexes that do not fit in RAM).
  RAM holds the cluster centroids and whatever pages the OS keeps cached; each query reads only
  the ``nprobe`` clusters nearest to it. Approximate: ``nprobe`` trades speed for recall.

Both are built from a callable that yields vector batches, so that no store needs every vector in
memory at once while building (the on-disk one reads them twice: once to sample training vectors).

Example:
    >>> store = build_store("memory", lambda: iter([vecs]), n=len(vecs), dim=384, directory=d)  # doctest: +SKIP
    >>> rows, scores = store.search(query_vecs, 10)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from rungwise._deps import require
from rungwise.errors import RungwiseError

StoreKind = Literal["memory", "faiss_ivf"]
Batches = Callable[[], Iterable[np.ndarray]]

#: the in-process store refuses vectors larger than this share of the machine's memory
MEMORY_SHARE = 0.5
#: vectors per FAISS shard while building (bounds the memory a build needs)
SHARD_SIZE = 200_000


class StoreTooLarge(RungwiseError):
    """The corpus does not fit the chosen vector store."""


class VectorStore(Protocol):
    kind: StoreKind
    size: int

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and inner-product scores of the ``n`` nearest vectors per query, best first; row -1 pads."""
        ...


def total_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(n: int, dim: int) -> None:
    """Raise :class:`StoreTooLarge` when ``n`` vectors of ``dim`` floats exceed the in-process store's share."""
    need, limit = n * dim * 4, int(total_memory() * MEMORY_SHARE)
    if need > limit:
        raise StoreTooLarge(
            f"knowledge source: {n:,} chunks need {need / 2**30:.1f} GiB of vectors, more than the in-memory store "
            f"allows on this machine ({limit / 2**30:.1f} GiB, half its memory)",
            hint="set rungs.rag.store: faiss_ivf (vectors on disk, memory-mapped), or index fewer documents",
        )


class MemoryStore:
    """Every vector in one numpy matrix; exact search."""

    kind: StoreKind = "memory"
    FILE = "vectors.npy"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.size = len(vectors)

    @classmethod
    def build(cls, batches: Batches, n: int, dim: int, directory: Path) -> MemoryStore:
        check_fits_in_memory(n, dim)
        out = np.lib.format.open_memmap(directory / cls.FILE, mode="w+", dtype=np.float32, shape=(n, dim))
        i = 0
        for batch in batches():
            out[i : i + len(batch)] = batch
            i += len(batch)
        if i != n:
            raise ValueError(f"expected {n} vectors, got {i}")
        out.flush()
        del out
        return cls.load(directory)

    @classmethod
    def load(cls, directory: Path) -> MemoryStore:
        vectors = np.load(directory / cls.FILE, allow_pickle=False)
        check_fits_in_memory(*vectors.shape)
        return cls(vectors)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self.vectors.T
        n = min(n, self.size)
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


class FaissIvfStore:
    """A FAISS IVF-Flat index with its inverted lists on disk (memory-mapped)."""

    kind: StoreKind = "faiss_ivf"
    FILE, DATA = "ivf.faiss", "ivf.ivfdata"

    def __init__(self, index: object, nprobe: int) -> None:
        self.index = index
        self.index.nprobe = nprobe  # type: ignore[attr-defined]
        self.size = int(index.ntotal)  # type: ignore[attr-defined]

    @staticmethod
    def default_nlist(n: int) -> int:
        """sqrt(n) clusters, with at least 39 training vectors each (FAISS's minimum).

        FAISS suggests 4-16 x sqrt(n) for very large corpora; sqrt(n) keeps k-means training short on
        2 cores (about 50,000 training vectors at 1M chunks), and 32 probed clusters still read only
        3% of a 1M-chunk index per query.
        """
        return max(1, min(int(math.sqrt(n)), n // 39))

    @classmethod
    def build(
        cls, batches: Batches, n: int, dim: int, directory: Path, *, nlist: int | None = None, nprobe: int = 32
    ) -> FaissIvfStore:
        faiss = require("faiss")
        from faiss.contrib.ondisk import merge_ondisk

        nlist = min(nlist or cls.default_nlist(n), n)
        train = _sample(batches, n, min(n, max(nlist * 50, 10_000)), dim)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(train)
        del train
        trained = directory / "trained.faiss"
        faiss.write_index(index, str(trained))
        shards: list[str] = []
        shard, row, pending = None, 0, 0
        for batch in batches():
            if shard is None:
                shard = faiss.read_index(str(trained))
            shard.add_with_ids(np.ascontiguousarray(batch, dtype=np.float32), np.arange(row, row + len(batch)))
            row += len(batch)
            pending += len(batch)
            if pending >= SHARD_SIZE:
                shards.append(cls._write_shard(shard, directory, len(shards)))
                shard, pending = None, 0
        if shard is not None:
            shards.append(cls._write_shard(shard, directory, len(shards)))
        index = faiss.read_index(str(trained))
        merge_ondisk(index, shards, str(directory / cls.DATA))
        faiss.write_index(index, str(directory / cls.FILE))
        for f in [*shards, str(trained)]:
            Path(f).unlink()
        del index
        return cls.load(directory, nprobe)

    @staticmethod
    def _write_shard(shard: object, directory: Path, number: int) -> str:
        path = str(directory / f"shard{number}.faiss")
        require("faiss").write_index(shard, path)
        return path

    @classmethod
    def load(cls, directory: Path, nprobe: int = 32) -> FaissIvfStore:
        faiss = require("faiss")
        # The on-disk inverted lists are always memory-mapped; ONDISK_SAME_DIR finds ivf.ivfdata beside
        # ivf.faiss, so that the folder can move. (Adding IO_FLAG_MMAP to it crashes searches in faiss 1.15.)
        return cls(faiss.read_index(str(directory / cls.FILE), faiss.IO_FLAG_ONDISK_SAME_DIR), nprobe)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(n, self.size))  # type: ignore[attr-defined]
        return rows, scores


def _sample(batches: Batches, n: int, size: int, dim: int) -> np.ndarray:
    """``size`` vectors spread evenly over the corpus (training on the first ones alone would skew the clusters)."""
    step = max(1, n // size)
    out = np.empty((size, dim), dtype=np.float32)
    got, row = 0, 0
    for batch in batches():
        picks = np.arange((-row) % step, len(batch), step)
        take = picks[: size - got]
        out[got : got + len(take)] = batch[take]
        got += len(take)
        row += len(batch)
        if got >= size:
            break
    return out[:got]


def build_store(
    kind: StoreKind, batches: Batches, *, n: int, dim: int, directory: Path, nlist: int | None = None, nprobe: int = 32
) -> VectorStore:
    """Build the ``kind`` store in ``directory`` (emptied first) from ``batches`` of ``n`` vectors."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    if kind == "memory":
        return MemoryStore.build(batches, n, dim, directory)
    return FaissIvfStore.build(batches, n, dim, directory, nlist=nlist, nprobe=nprobe)


def load_store(kind: StoreKind, directory: Path, *, nprobe: int = 32) -> VectorStore:
    """Open a store built by :func:`build_store`."""
    if kind == "memory":
        return MemoryStore.load(directory)
    return FaissIvfStore.load(directory, nprobe)
