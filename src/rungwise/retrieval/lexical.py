"""BM25 with bm25s: stemmed (PyStemmer), stop words removed, Lucene scoring; saved and loaded as
bm25s's own .npy/.json files. bm25s cannot update an index in place, so a changed corpus is
re-indexed whole (2,067 SQuAD paragraphs take about a second).

Example:
    >>> index = Bm25Index.build(["a cat purrs", "a dog barks"])  # doctest: +SKIP
    >>> index.search("cats", 1)  # doctest: +SKIP
    (array([0]), array([0.46], dtype=float32))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rungwise._deps import require
from rungwise.errors import ConfigError

# bm25s's stop-word lists, by the PyStemmer language name used in task.yaml
_STOPWORDS = {
    "english": "en", "german": "de", "dutch": "nl", "french": "fr", "spanish": "es", "portuguese": "pt",
    "italian": "it", "russian": "ru", "swedish": "sv", "norwegian": "no", "danish": "da", "turkish": "tr",
}  # fmt: skip


class Bm25Index:
    """A bm25s index over a list of texts; rows are the texts' positions."""

    def __init__(self, retriever: object, language: str) -> None:
        self.retriever = retriever
        self.language = language
        self._stemmer = _stemmer(language)

    @classmethod
    def build(cls, texts: Sequence[str], *, language: str = "english", k1: float = 1.2, b: float = 0.75) -> Bm25Index:
        bm25s = require("bm25s")
        tokens = bm25s.tokenize(
            list(texts), stopwords=_STOPWORDS.get(language), stemmer=_stemmer(language), show_progress=False
        )
        retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        retriever.index(tokens, show_progress=False)
        return cls(retriever, language)

    def save(self, directory: Path) -> None:
        self.retriever.save(str(directory), show_progress=False)  # type: ignore[attr-defined]

    @classmethod
    def load(cls, directory: Path, *, language: str = "english", mmap: bool = False) -> Bm25Index:
        bm25s = require("bm25s")
        return cls(bm25s.BM25.load(str(directory), mmap=mmap, show_progress=False), language)

    @property
    def size(self) -> int:
        return int(self.retriever.scores["num_docs"])  # type: ignore[attr-defined]

    def search(self, query: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the ``n`` best texts for ``query`` (only texts sharing a term with it)."""
        return self.search_many([query], n)[0]

    def search_many(self, queries: Sequence[str], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search` for many queries in one bm25s call."""
        bm25s = require("bm25s")
        tokens = bm25s.tokenize(
            list(queries), stopwords=_STOPWORDS.get(self.language), stemmer=self._stemmer,
            return_ids=False, show_progress=False,
        )  # fmt: skip
        rows, scores = self.retriever.retrieve(tokens, k=min(n, self.size), show_progress=False)  # type: ignore[attr-defined]
        # A text sharing no term with the query scores 0: it is not a result.
        return [(r[s > 0].astype(np.int64), s[s > 0].astype(np.float32)) for r, s in zip(rows, scores, strict=True)]


def analyze(text: str, language: str = "english") -> list[str]:
    """The terms BM25 sees in ``text``, single characters (digits) included: lower-cased, stemmed, no stop words.

    Example:
        >>> analyze("Refunds are issued within 14 days")  # doctest: +SKIP
        ['refund', 'issu', '14', 'day']
    """
    bm25s = require("bm25s")
    return bm25s.tokenize(
        [text], token_pattern=r"(?u)\b\w+\b", stopwords=_STOPWORDS.get(language), stemmer=_stemmer(language),
        return_ids=False, show_progress=False,
    )[0]  # fmt: skip


def _stemmer(language: str) -> object:
    stemmer_mod = require("Stemmer")
    try:
        return stemmer_mod.Stemmer(language)
    except KeyError:
        raise ConfigError(
            f"rungs.rag.language: no stemmer for {language!r}",
            hint=f"use one of {', '.join(sorted(stemmer_mod.algorithms()))}",
        ) from None
