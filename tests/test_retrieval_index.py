"""The knowledge base: BM25 and dense search, fusion, persistence, damage, stores, metrics, judges.

Dense tests without the real model use a hashing embedder (scikit-learn's HashingVectorizer): a
real, deterministic embedding of words that needs no weights. The tests marked ``model`` run the
packaged all-MiniLM-L6-v2 on a dozen short texts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from rungwise.backends.scripted import ScriptedBackend
from rungwise.config.knowledge import KnowledgeSpec, RetrieverSpec
from rungwise.errors import BackendError, DataError
from rungwise.retrieval import (
    KnowledgeBase,
    StoreTooLarge,
    evaluate_retrieval,
    groundedness,
    judge_faithfulness,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    stores,
)
from rungwise.retrieval.fusion import fuse
from rungwise.retrieval.knowledge_base import load_chunks
from rungwise.types import Chat, Example

DOCS = {
    "refunds.md": "# Refunds\n\nRefunds are paid back to the original card within 14 days of the return.\n",
    "shipping.md": "# Shipping\n\nParcels ship from Rotterdam and arrive in two to four working days.\n",
    "accounts.md": "# Accounts\n\nReset a forgotten password from the login page with the emailed link.\n",
    "warranty.md": "# Warranty\n\nEvery laptop carries a two year warranty covering manufacturing faults.\n",
    "stores.md": "# Stores\n\nOur shops open at nine and close at six, Monday to Saturday.\n",
}


class HashingEmbedder:
    """Bag-of-words vectors from scikit-learn's HashingVectorizer; counts the texts it embeds."""

    id = "hashing-256"
    dim = 256

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.vectorizer = HashingVectorizer(n_features=self.dim, alternate_sign=False, norm="l2")
        self.embedded: list[str] = []

    def encode(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        if not query:
            self.embedded.extend(texts)
        return self.vectorizer.transform(list(texts)).toarray().astype(np.float32)


def write_docs(tmp_path: Path, docs: dict[str, str] = DOCS) -> KnowledgeSpec:
    kb = tmp_path / "kb"
    kb.mkdir(exist_ok=True)
    for name, text in docs.items():
        (kb / name).write_text(text)
    return KnowledgeSpec(path=str(kb))


def test_bm25_search_persists_and_reopens(tmp_path: Path, rungwise_home: Path) -> None:
    spec = write_docs(tmp_path)
    kb = KnowledgeBase.open(spec, RetrieverSpec(mode="bm25", k=2))
    hits = kb.search("How long until my refund is paid?")
    assert hits[0].doc_id == "refunds.md" and hits[0].ranks == {"bm25": 1}
    assert hits[0].trace()["bm25"][0] == 1 and hits[0].trace()["id"] == hits[0].chunk_id
    assert kb.directory.parent == rungwise_home / "retrieval" / "indexes"
    assert kb.stats.rebuilt == [] and kb.embedder is None  # bm25 mode never loads a model
    again = KnowledgeBase.open(spec, RetrieverSpec(mode="bm25", k=2))
    assert again.directory == kb.directory and again.stats.rebuilt == []
    assert [h.chunk_id for h in again.search("refund paid")] == [h.chunk_id for h in kb.search("refund paid")]
    assert kb.search("zebra xylophone") == []  # no shared term: no result


def test_damaged_index_is_detected_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = write_docs(tmp_path)
    retriever = RetrieverSpec(mode="fused", k=3)
    kb = KnowledgeBase.open(spec, retriever, embedder=HashingEmbedder())
    expected = [h.chunk_id for h in kb.search("password reset link")]
    bm25_dir = next(kb.directory.glob("bm25-*"))
    dense_dir = next(kb.directory.glob("dense-*"))
    victim = next(bm25_dir.glob("*.npy"))
    victim.write_bytes(victim.read_bytes()[:-8] + b"garbage!")  # same size, other bytes
    vectors = dense_dir / "store" / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        reopened = KnowledgeBase.open(spec, retriever, embedder=HashingEmbedder())
    assert sorted(reopened.stats.rebuilt) == ["bm25", "dense"]
    assert "does not match its checksum" in caplog.text and "bytes" in caplog.text
    assert [h.chunk_id for h in reopened.search("password reset link")] == expected
    # An interrupted build (no manifest) is never used either.
    (next(reopened.directory.glob("bm25-*")) / "manifest.json").unlink()
    assert KnowledgeBase.open(spec, retriever, embedder=HashingEmbedder()).stats.rebuilt == ["bm25"]


def test_damaged_embedding_cache_is_set_aside(
    tmp_path: Path, rungwise_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = rungwise_home / "retrieval" / "embeddings.sqlite"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"this is not a SQLite database, it is garbage" * 100)
    with caplog.at_level(logging.WARNING):
        kb = KnowledgeBase.open(write_docs(tmp_path), RetrieverSpec(mode="dense"), embedder=HashingEmbedder())
    assert "embedding cache" in caplog.text and "damaged" in caplog.text
    assert cache.with_suffix(".damaged").exists() and kb.stats.embedded == 5
    assert kb.search("forgotten password", k=1)[0].doc_id == "accounts.md"


def test_editing_one_document_embeds_only_its_chunks(tmp_path: Path) -> None:
    spec = write_docs(tmp_path)
    first = HashingEmbedder()
    kb = KnowledgeBase.open(spec, RetrieverSpec(), embedder=first)
    assert len(first.embedded) == len(kb.chunks) == 5 and kb.stats.embedded == 5
    (tmp_path / "kb" / "shipping.md").write_text("# Shipping\n\nParcels now ship from Antwerp overnight.\n")
    second = HashingEmbedder()
    edited = KnowledgeBase.open(spec, RetrieverSpec(), embedder=second)
    assert second.embedded == ["Shipping\nParcels now ship from Antwerp overnight."]
    assert (edited.stats.embedded, edited.stats.cached) == (1, 4)
    assert edited.directory != kb.directory  # a new content version
    assert edited.search("Antwerp", k=1)[0].doc_id == "shipping.md"


def test_fused_search_records_both_retrievers(tmp_path: Path) -> None:
    kb = KnowledgeBase.open(write_docs(tmp_path), RetrieverSpec(k=5), embedder=HashingEmbedder())
    hits = kb.search("laptop warranty years")
    assert hits[0].doc_id == "warranty.md"
    assert set(hits[0].ranks) == {"bm25", "dense"} and hits[0].score == pytest.approx(1.0)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    dense_only = kb.search("laptop warranty years", mode="dense")
    assert set(dense_only[0].ranks) == {"dense"} and dense_only[0].score == dense_only[0].scores["dense"]


def test_evaluate_with_document_and_chunk_gold_ids(tmp_path: Path) -> None:
    kb = KnowledgeBase.open(write_docs(tmp_path), RetrieverSpec(), embedder=HashingEmbedder())
    refund_chunk = next(c.id for c in kb.chunks if c.doc_id == "refunds.md")
    examples = [
        Example("When are refunds paid back?", "14 days", gold_doc_ids=("refunds.md",), source="t.jsonl:1"),
        Example("password login link", "reset", gold_doc_ids=("accounts.md",), source="t.jsonl:2"),
        Example("refund card days", "14", gold_doc_ids=(refund_chunk,), source="t.jsonl:3"),
        Example("no gold here", "x", source="t.jsonl:4"),
    ]
    ev = evaluate_retrieval(kb, examples, ks=(1, 5))
    assert ev.skipped == 1 and set(ev.scores) == {"bm25", "dense", "fused"}
    assert ev.scores["bm25"].recall == {1: 1.0, 5: 1.0} and ev.scores["bm25"].mrr == 1.0
    assert ev.traces[2]["level"] == "chunk" and ev.traces[0]["level"] == "doc"
    assert ev.traces[0]["fused"][0]["doc"] == "refunds.md"
    bad = [Example("q", "a", gold_doc_ids=("nope.md",), source="t.jsonl:9")]
    with pytest.raises(DataError, match=r"t\.jsonl:9: gold id 'nope\.md' is neither a document nor a chunk"):
        evaluate_retrieval(kb, bad)


def test_faiss_ivf_store_matches_exact_search_and_moves(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32))
    vecs = (centers[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    batches = lambda: (vecs[i : i + 700] for i in range(0, len(vecs), 700))  # noqa: E731
    exact = stores.build_store("memory", batches, n=3000, dim=32, directory=tmp_path / "mem")
    ivf = stores.build_store("faiss_ivf", batches, n=3000, dim=32, directory=tmp_path / "ivf", nprobe=1000)
    assert ivf.size == 3000 and not list((tmp_path / "ivf").glob("shard*"))
    queries = vecs[:50] + 0.01
    assert np.array_equal(exact.search(queries, 5)[0], ivf.search(queries, 5)[0])  # all clusters probed: exact
    (tmp_path / "ivf").rename(tmp_path / "moved")
    moved = stores.load_store("faiss_ivf", tmp_path / "moved", nprobe=4)
    rows, _ = moved.search(queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact.search(queries, 10)[0], strict=True)])
    assert overlap > 0.8


def test_knowledge_base_on_the_faiss_store(tmp_path: Path) -> None:
    spec = write_docs(tmp_path)
    kb = KnowledgeBase.open(spec, RetrieverSpec(mode="dense", store="faiss_ivf"), embedder=HashingEmbedder())
    assert kb.store is not None and kb.store.kind == "faiss_ivf"
    assert kb.search("forgotten password", k=1)[0].doc_id == "accounts.md"


def test_corpus_too_large_for_the_memory_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stores, "total_memory", lambda: 4096)  # a machine with 4 KiB of memory
    with pytest.raises(StoreTooLarge, match=r"5 chunks need .* more than the in-memory store allows") as err:
        KnowledgeBase.open(write_docs(tmp_path), RetrieverSpec(mode="dense"), embedder=HashingEmbedder())
    assert "store: faiss_ivf" in str(err.value)


def test_fusion_methods() -> None:
    lists = {"bm25": ([3, 1, 2], [9.0, 5.0, 1.0]), "dense": ([1, 2], [0.8, 0.7])}
    fused = fuse(lists, {"bm25": 0.5, "dense": 0.5})
    assert fused == [(1, pytest.approx(0.75)), (3, 0.5), (2, 0.0)]
    rrf = fuse(lists, {"bm25": 1.0, "dense": 1.0}, method="rrf", rrf_k=60)
    assert [row for row, _ in rrf] == [1, 2, 3]  # 1: 1/62 + 1/61; 2: 1/63 + 1/62; 3: 1/61
    assert rrf[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_ranking_metrics() -> None:
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"c", "z"}, 3) == 0.5 and recall_at_k(ranked, {"c"}, 2) == 0.0
    assert mrr_at_k(ranked, {"c"}) == pytest.approx(1 / 3) and mrr_at_k(ranked, {"d"}, k=3) == 0.0
    assert ndcg_at_k(ranked, {"a", "b"}) == pytest.approx(1.0)
    assert ndcg_at_k(ranked, {"b", "z"}) == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))


def test_groundedness() -> None:
    context = ["Refunds are paid back to the original card within 14 days of the return."]
    assert groundedness("Refunds are paid within 14 days.", context) == 1.0
    # refund, take, 30, day, cheque: refund and day are in the context
    assert groundedness("Refunds take 30 days by cheque.", context) == pytest.approx(2 / 5)
    assert groundedness("It is the.", context) is None  # only stop words: nothing to check


def test_faithfulness_judge_counts_failures() -> None:
    def reply(chat: Chat) -> str:
        answer = chat[-1]["content"].split("Answer:\n")[1].split("\n")[0]
        if answer == "boom":
            raise BackendError("judge endpoint returned 500")
        return {"good": "YES, all supported", "bad": "No."}.get(answer, "I am not sure")

    result = judge_faithfulness(ScriptedBackend(reply), ["good", "bad", "boom", "vague"], [["ctx"]] * 4)
    assert result.judgements == [1.0, 0.0, None, None]
    assert result.failed == 2 and result.mean == 0.5 and result.errors == ["judge endpoint returned 500"]
    assert "2 failed of 4" in result.summary()


@pytest.mark.model
def test_real_model_end_to_end(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 from the package: dense search finds a paraphrase BM25 cannot, and an edit
    re-embeds only the edited document's chunk (counted at the model)."""
    from rungwise.retrieval.embedder import load_embedder

    spec = write_docs(tmp_path)
    model = load_embedder()
    counted: list[str] = []
    original = model.encode

    def counting_encode(texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        if not query:
            counted.extend(texts)
        return original(texts, query=query)

    model.encode = counting_encode  # type: ignore[method-assign]
    kb = KnowledgeBase.open(spec, RetrieverSpec(k=3), embedder=model)
    assert model.dim == 384 and len(counted) == 5
    query = "I can't remember my credentials, how do I sign in?"
    assert kb.search(query, mode="bm25") == []  # no word in common with any document
    assert kb.search(query, mode="dense")[0].doc_id == "accounts.md"
    assert kb.search(query)[0].doc_id == "accounts.md"
    counted.clear()
    (tmp_path / "kb" / "stores.md").write_text("# Stores\n\nOur shops now open at eight.\n")
    KnowledgeBase.open(spec, RetrieverSpec(k=3), embedder=model)
    assert counted == ["Stores\nOur shops now open at eight."]
    # The default path resolves the packaged model by name, offline.
    kb_default = KnowledgeBase.open(spec, RetrieverSpec(k=1))
    assert kb_default.stats.embedded == 0 and kb_default.search("laptop guarantee")[0].doc_id == "warranty.md"


def test_saved_chunks_round_trip(tmp_path: Path) -> None:
    kb = KnowledgeBase.open(write_docs(tmp_path), RetrieverSpec(mode="bm25"))
    assert load_chunks(kb.directory) == kb.chunks
