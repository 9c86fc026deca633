"""Benchmark of rungwise.retrieval: quality and speed on SQuAD v1.1 dev, and the vector stores' scaling.

Data (read from ../shared/datasets/squad_v1.1_dev, both files, never copied into the repository):
the 2,067 paragraphs become a JSONL knowledge source ``{id: "<article>#<n>", title, text}`` in a
temporary folder; the 10,570 questions are the queries, each with its paragraph as the gold id.

Measured, in one run on this machine:

* recall@1/5/10, MRR@10 and nDCG@10 of BM25, dense and the default fused retriever, through
  ``KnowledgeBase.open`` and ``evaluate_retrieval`` (the library as the rag rung will use it);
* the options tried on the way to the default (fusion method and weights, titles, chunk size,
  BM25 parameters), on the same questions;
* the index build time (reading, chunking, BM25, embedding every chunk, the store) from a cold
  ``$RUNGWISE_HOME``, next to sentence-transformers encoding the raw paragraphs with its defaults
  in the same run (the baseline the issue quotes: 62 s on an idle machine), a warm reopen, and the
  re-index after one paragraph is edited (embeddings counted);
* p50/p95 latency of one ``kb.search`` per mode (query embedding included);
* scaling: generated vectors of the model's dimension (384; clustered, like real embeddings) at
  10k, 100k and 1M chunks in the in-memory store and the on-disk FAISS IVF store: build time, peak
  memory of building and of searching (separate processes), p50 query latency, and the IVF's
  recall@10 against exact search. Embedding 1M chunks with MiniLM on 2 cores would take hours,
  so the scaling uses generated vectors; the measured embedding throughput is reported beside it.

    python bench/bench_retrieval.py              # everything; writes the "retrieval" and "retrieval-scale" sections
    python bench/bench_retrieval.py --all-options  # also the options that re-embed every chunk (slow)
    python bench/bench_retrieval.py --quick      # no re-embedding options, scaling to 100k (not written)
    python bench/bench_retrieval.py --all-options --skip-scale   # the SQuAD section alone
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import SHARED, machine, today, write_section  # noqa: E402

from rungwise.config.knowledge import KnowledgeSpec, RetrieverSpec  # noqa: E402
from rungwise.retrieval import KnowledgeBase, evaluate_retrieval  # noqa: E402
from rungwise.retrieval.evaluation import RetrievalEvaluation  # noqa: E402
from rungwise.types import Example  # noqa: E402

SQUAD = SHARED / "datasets" / "squad_v1.1_dev"
DIM = 384
SCALE_SIZES = (10_000, 100_000, 1_000_000)
LATENCY_QUERIES = 200


def load_squad(folder: Path, articles: int | None = None) -> tuple[Path, list[Example]]:
    """Write the paragraphs as a JSONL knowledge source in ``folder``; the questions as examples."""
    records, examples = [], []
    for name in ("dev-v1.1.json", "test-v1.1.json"):
        data = json.loads((SQUAD / name).read_text(encoding="utf-8"))
        for article in data["data"][:articles]:
            title = article["title"].replace("_", " ")
            for n, para in enumerate(article["paragraphs"]):
                pid = f"{article['title']}#{n}"
                records.append({"id": pid, "title": title, "text": para["context"]})
                for qa in para["qas"]:
                    answer = qa["answers"][0]["text"] if qa["answers"] else ""
                    examples.append(Example(qa["question"], answer, gold_doc_ids=(pid,), source=f"{name}:{qa['id']}"))
    path = folder / "squad_paragraphs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path, examples


class QueryCache:
    """Wraps an embedder so that repeated queries are embedded once (the option sweep asks 10,570 questions many times)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.id, self.dim = inner.id, inner.dim  # type: ignore[attr-defined]
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        if not query:
            return self.inner.encode(texts)  # type: ignore[attr-defined]
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.inner.encode(missing, query=True), strict=True))  # type: ignore[attr-defined]
        return np.stack([self.cache[t] for t in texts])


def baseline_encode_seconds(kb_path: Path) -> tuple[float, int]:
    """sentence-transformers with its defaults on the raw paragraphs: the issue's 62 s baseline."""
    from sentence_transformers import SentenceTransformer

    from rungwise.retrieval.embedder import default_model_dir

    texts = [json.loads(line)["text"] for line in kb_path.read_text().splitlines()]
    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    t = time.perf_counter()
    model.encode(texts)
    return time.perf_counter() - t, len(texts)


def row(name: str, ev: RetrievalEvaluation, modes: Sequence[str] = ("bm25", "dense", "fused")) -> list[str]:
    cells = []
    for m in modes:
        s = ev.scores[m]
        cells.append(f"{s.recall[1]:.3f} / {s.recall[5]:.3f} / {s.mrr:.3f}")
    return [name, *cells]


def latency(kb: KnowledgeBase, queries: Sequence[str], mode: str) -> tuple[float, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        kb.search(q, mode=mode)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def squad_section(quick: bool, articles: int | None = None, all_options: bool = False) -> tuple[list[str], float]:
    """The SQuAD part of the section (Markdown lines) and the measured chunk-embedding throughput."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    os.environ["RUNGWISE_HOME"] = str(tmp / "home")
    kb_path, examples = load_squad(tmp, articles)
    knowledge = KnowledgeSpec(path=str(kb_path))
    default = RetrieverSpec()
    n_par = len(kb_path.read_text().splitlines())
    print(f"SQuAD: {n_par} paragraphs, {len(examples)} questions", flush=True)

    t = time.perf_counter()
    kb = KnowledgeBase.open(knowledge, default)
    build_s = time.perf_counter() - t
    stats = kb.stats
    throughput = stats.embedded / stats.seconds["embed_and_store"]
    print(f"cold build {build_s:.1f} s: {stats}", flush=True)
    t = time.perf_counter()
    KnowledgeBase.open(knowledge, default)
    warm_s = time.perf_counter() - t

    lines = kb_path.read_text().splitlines()
    edited = json.loads(lines[len(lines) // 2])
    edited["text"] += " This sentence was added to measure an incremental re-index."
    lines[len(lines) // 2] = json.dumps(edited, ensure_ascii=False)
    kb_path.write_text("\n".join(lines) + "\n")
    t = time.perf_counter()
    after_edit = KnowledgeBase.open(knowledge, default)
    edit_s = time.perf_counter() - t
    edit_stats = after_edit.stats
    print(f"after one edit {edit_s:.1f} s: embedded {edit_stats.embedded}, cached {edit_stats.cached}", flush=True)

    sample = [ex.input for ex in random.Random(0).sample(examples, LATENCY_QUERIES)]
    lat = {m: latency(after_edit, sample, m) for m in ("bm25", "dense", "fused")}

    cached_embedder = QueryCache(after_edit.embedder)
    after_edit.embedder = cached_embedder  # type: ignore[assignment]
    t = time.perf_counter()
    ev = evaluate_retrieval(after_edit, examples, modes=("bm25", "dense", "fused"), ks=(1, 5, 10))
    eval_s = time.perf_counter() - t
    print(f"evaluated in {eval_s:.0f} s: {ev.scores}", flush=True)

    sweep: list[list[str]] = []

    def fusion_option(name: str, **update: object) -> None:
        after_edit.spec = default.model_copy(update=update)
        e = evaluate_retrieval(after_edit, examples, modes=("fused",), ks=(1, 5))
        s = e.scores["fused"]
        sweep.append([name, "", "", f"{s.recall[1]:.3f} / {s.recall[5]:.3f} / {s.mrr:.3f}"])
        print(sweep[-1], flush=True)

    fusion_option("plain RRF, k=60, equal weights (the issue's baseline fusion)", fusion="rrf", bm25_weight=0.5)
    fusion_option("RRF, k=60, BM25 weight 0.67", fusion="rrf", bm25_weight=0.67)
    fusion_option("RRF, k=5, BM25 weight 0.6", fusion="rrf", rrf_k=5, bm25_weight=0.6)
    for w in (0.3, 0.4, 0.6, 0.7):
        fusion_option(f"relative score, BM25 weight {w}", bm25_weight=w)
    fusion_option("relative score, 0.5, 20 candidates per retriever", candidates=20)
    after_edit.spec = default

    def rebuilt_option(name: str, knowledge_spec: KnowledgeSpec, spec: RetrieverSpec) -> None:
        other = KnowledgeBase.open(knowledge_spec, spec, embedder=cached_embedder)  # type: ignore[arg-type]
        e = evaluate_retrieval(other, examples, modes=("bm25", "dense", "fused"), ks=(1, 5))
        sweep.append(row(f"{name} ({other.stats.chunks:,} chunks)", e))
        print(sweep[-1], other.stats.embedded, "embedded", flush=True)

    rebuilt_option("BM25 k1=1.5 (bm25s default)", knowledge, default.model_copy(update={"bm25_k1": 1.5}))
    if not quick:
        # These re-embed only the chunks that differ from the default's (the cache has the rest).
        rebuilt_option("chunks of 512 tokens (whole paragraphs)", knowledge.model_copy(update={"chunk_tokens": 512}), default)
        rebuilt_option(
            "chunks of 200 tokens, 40 overlapping", knowledge.model_copy(update={"chunk_overlap": 40}), default
        )
    if all_options:  # these re-embed every chunk (each as long as a cold build)
        rebuilt_option("no titles in the indexed text", knowledge, default.model_copy(update={"index_titles": False}))
        rebuilt_option("chunks of 128 tokens", knowledge.model_copy(update={"chunk_tokens": 128}), default)

    base_s, base_n = baseline_encode_seconds(kb_path)
    print(f"baseline encode {base_s:.1f} s for {base_n} paragraphs", flush=True)

    best_single = max(("bm25", "dense"), key=lambda m: ev.scores[m].recall[5])
    f, b = ev.scores["fused"], ev.scores[best_single]
    secs = stats.seconds
    out = [
        f"Knowledge source: all {n_par:,} SQuAD v1.1 dev paragraphs as JSONL (title + text); "
        f"{len(examples):,} questions, gold id = the question's paragraph (judged by document). "
        f"Default settings: {stats.chunks:,} chunks of at most {knowledge.chunk_tokens} tokens, titles indexed, "
        f"all-MiniLM-L6-v2 (batch {default.embed_batch_size}), fusion {default.fusion} with BM25 weight {default.bm25_weight}, "
        f"{default.candidates} candidates per retriever.",
        "",
        "| retriever | recall@1 | recall@5 | recall@10 | MRR@10 | nDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    for m in ("bm25", "dense", "fused"):
        s = ev.scores[m]
        name = {"bm25": "BM25 (bm25s, Lucene, stemmed, stop words)", "dense": "dense (all-MiniLM-L6-v2)", "fused": "**fused (default)**"}[m]
        out.append(f"| {name} | {s.recall[1]:.3f} | {s.recall[5]:.3f} | {s.recall[10]:.3f} | {s.mrr:.3f} | {s.ndcg:.3f} |")
    beats = f.recall[5] > b.recall[5] and f.mrr > b.mrr
    out += [
        "",
        f"Goal: the default beats the best single retriever ({best_single}) on recall@5 and MRR@10 "
        f"({f.recall[5]:.3f} vs {b.recall[5]:.3f}, {f.mrr:.3f} vs {b.mrr:.3f}: **{'met' if beats else 'not met'}**), "
        f"recall@5 >= 0.95 (**{'met' if f.recall[5] >= 0.95 else 'not met'}**).",
        "",
        "| speed | measured |",
        "|---|---|",
        f"| index build from a cold `$RUNGWISE_HOME` (read + chunk + BM25 + embed {stats.embedded:,} chunks + store) | "
        f"**{build_s:.1f} s** (read and chunk {secs['read_and_chunk']:.1f} s, BM25 {secs['bm25']:.1f} s, "
        f"model load {secs['load_embedder']:.1f} s, embed and store {secs['embed_and_store']:.1f} s) |",
        f"| baseline in the same run: sentence-transformers defaults encoding the {base_n:,} raw paragraphs | "
        f"{base_s:.1f} s (the whole build takes **{build_s / base_s:.2f}x** of it) |",
        f"| embedding throughput | {throughput:.1f} chunks/s (so 1M chunks would take about {duration(1e6 / throughput)} here) |",
        f"| reopening the saved index (documents re-read and re-chunked, index checked) | {warm_s:.1f} s |",
        f"| re-index after editing one paragraph | {edit_s:.1f} s; {edit_stats.embedded} chunk(s) embedded, "
        f"{edit_stats.cached:,} read from the cache, BM25 rebuilt |",
        f"| evaluating {len(examples):,} questions x 3 retrievers (queries embedded once) | {eval_s:.0f} s |",
    ]
    for m in ("bm25", "dense", "fused"):
        p50, p95 = lat[m]
        out.append(f"| `kb.search` latency, {m}, k={default.k} ({LATENCY_QUERIES} questions, query embedding included) | "
                   f"p50 **{p50 * 1000:.1f} ms**, p95 {p95 * 1000:.1f} ms |")  # fmt: skip
    out += [
        "",
        "Options tried (recall@1 / recall@5 / MRR@10 on all questions; the fusion rows re-rank the default index):",
        "",
        "| option | BM25 | dense | fused |",
        "|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in [row("**default** (above)", ev), *sweep]),
    ]
    shutil.rmtree(tmp, ignore_errors=True)
    return out, throughput


# ---------------------------------------------------------------------- scaling (child processes)


def generated_batches(n: int, seed: int = 0, batch: int = 50_000) -> Iterator[np.ndarray]:
    """``n`` unit vectors around 2,000 random centres (real embeddings cluster too), deterministic."""
    centres = np.random.default_rng(1234).normal(size=(2000, DIM)).astype(np.float32)
    for start in range(0, n, batch):
        rng = np.random.default_rng(seed + start)
        m = min(batch, n - start)
        v = centres[rng.integers(0, 2000, m)] + 0.35 * rng.normal(size=(m, DIM)).astype(np.float32)
        yield v / np.linalg.norm(v, axis=1, keepdims=True)


def scale_queries(n: int) -> np.ndarray:
    """Queries near random stored vectors (a question near its passage)."""
    rng = np.random.default_rng(99)
    picks = set(rng.choice(n, LATENCY_QUERIES, replace=False).tolist())
    out = []
    for start, batch in zip(range(0, n, 50_000), generated_batches(n), strict=False):
        out += [batch[i - start] for i in sorted(p for p in picks if start <= p < start + len(batch))]
    q = np.stack(out) + 0.05 * rng.normal(size=(len(out), DIM)).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def scale_child(kind: str, n: int, directory: Path, phase: str) -> dict[str, float]:
    from rungwise.retrieval import stores

    if phase == "build":
        peak_anon = [0]
        done = threading.Event()

        def watch() -> None:  # /proc has no peak of the process's own memory: sample it
            while not done.wait(0.05):
                peak_anon[0] = max(peak_anon[0], memory_kib()["RssAnon"])

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t = time.perf_counter()
        stores.build_store(kind, lambda: generated_batches(n), n=n, dim=DIM, directory=directory)  # type: ignore[arg-type]
        result = {"build_s": time.perf_counter() - t}
        done.set()
        watcher.join()
        result["anon_peak_mib"] = peak_anon[0] / 1024
    else:
        # Queries come from a file the parent wrote: generating them here would leave freed
        # temporaries in this process's heap and blur what the store itself adds.
        queries = np.load(directory.parent / f"queries-{n}.npy")
        before = memory_kib()
        t = time.perf_counter()
        store = stores.load_store(kind, directory)  # type: ignore[arg-type]
        load_s = time.perf_counter() - t
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            rows, _ = store.search(q[None, :], 10)
            times.append(time.perf_counter() - t)
            found.append(rows[0])
        after = memory_kib()
        result = {
            "load_s": load_s,
            "p50_ms": statistics.median(times) * 1000,
            # what loading and searching added: the process's own memory, and mapped file pages
            # (the OS page cache: shared, dropped under memory pressure)
            "anon_mib": (after["RssAnon"] - before["RssAnon"]) / 1024,
            "file_mib": (after["RssFile"] - before["RssFile"]) / 1024,
        }
        if kind == "faiss_ivf":  # recall@10 against exact search, computed batch by batch
            best = np.full((len(queries), 10), -np.inf, dtype=np.float32)
            ids = np.zeros((len(queries), 10), dtype=np.int64)
            for start, batch in zip(range(0, n, 50_000), generated_batches(n), strict=False):
                s = queries @ batch.T
                allv = np.concatenate([best, s], axis=1)
                alli = np.concatenate([ids, np.arange(start, start + len(batch))[None, :].repeat(len(queries), 0)], axis=1)
                top = np.argpartition(-allv, 9, axis=1)[:, :10]
                best, ids = np.take_along_axis(allv, top, 1), np.take_along_axis(alli, top, 1)
            result["recall10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, ids, strict=True)]))
    result["peak_rss_mib"] = memory_kib()["VmHWM"] / 1024
    return result


def memory_kib() -> dict[str, int]:
    """Memory figures of this process from /proc (KiB): VmHWM is the peak resident set (unlike
    ru_maxrss it restarts at exec, not at fork); RssAnon its own memory; RssFile mapped file pages."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def run_child(kind: str, n: int, directory: Path, phase: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--scale-child", kind, str(n), str(directory), phase]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


def scale_section(throughput: float, quick: bool, sizes: Sequence[int] | None = None) -> list[str]:
    sizes = sizes or (SCALE_SIZES[:2] if quick else SCALE_SIZES)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    out = [
        f"Generated unit vectors of all-MiniLM-L6-v2's dimension ({DIM}), clustered around 2,000 centres; "
        f"{LATENCY_QUERIES} queries near stored vectors, k=10, one query at a time. Build and search run in separate "
        "processes: *build peak* is the building process's peak own memory (sampled every 50 ms; in brackets its peak "
        "resident set, mapped files included), Python and numpy included; "
        "*search memory* is what opening the store and answering the queries added to the searching process, "
        "its own memory + mapped index pages (the OS page cache: shared, and dropped under memory pressure). "
        f"Embedding real chunks runs at {throughput:.1f} chunks/s here, so real corpora of these sizes would "
        f"first spend {duration(sizes[0] / throughput)} to {duration(sizes[-1] / throughput)} embedding.",
        "",
        "| chunks | store | build | build peak | load | search memory | p50 query | recall@10 vs exact | on disk |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        np.save(tmp / f"queries-{n}.npy", scale_queries(n))
        for kind in ("memory", "faiss_ivf"):
            d = tmp / f"{kind}-{n}"
            b = run_child(kind, n, d, "build")
            q = run_child(kind, n, d, "query")
            disk = sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) / 2**20
            recall = f"{q['recall10']:.3f}" if "recall10" in q else "1 (exact)"
            out.append(
                f"| {n:,} | {kind} | {b['build_s']:.1f} s | {b['anon_peak_mib']:,.0f} MiB ({b['peak_rss_mib']:,.0f}) | {q['load_s']:.2f} s | "
                f"{q['anon_mib']:,.0f} + {q['file_mib']:,.0f} MiB | {q['p50_ms']:.1f} ms | {recall} | {disk:,.0f} MiB |"
            )
            print(out[-1], flush=True)
            shutil.rmtree(d)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip re-embedding options and the 1M size; do not write")
    parser.add_argument("--scale-child", nargs=4, metavar=("KIND", "N", "DIR", "PHASE"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-squad", action="store_true", help="only the scaling section")
    parser.add_argument("--throughput", type=float, default=0.0, help="with --skip-squad: chunks/s, for the text")
    parser.add_argument("--all-options", action="store_true", help="also the options that re-embed every chunk")
    parser.add_argument("--articles", type=int, help="only the first N articles of each file (a check; not written)")
    parser.add_argument("--sizes", type=int, nargs="+", help="scaling sizes (a check; not written)")
    parser.add_argument("--skip-scale", action="store_true", help="only the SQuAD section")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine a second thread mostly waits; see the inference section)")
    args = parser.parse_args()
    if args.scale_child:
        kind, n, directory, phase = args.scale_child
        print(json.dumps(scale_child(kind, int(n), Path(directory), phase)))
        return
    import torch  # after the scaling children: their peak memory must not count torch

    torch.set_num_threads(args.threads)
    check = args.quick or args.articles or args.sizes
    throughput = args.throughput
    if not args.skip_squad:
        header = _measured(args.threads)  # read before the run: its load average is the start's
        squad, throughput = squad_section(args.quick, args.articles, args.all_options)
        publish("retrieval", ["## retrieval: SQuAD v1.1 dev", "", header, "", *squad], check)
    if args.skip_scale:
        return
    header = _measured(None)  # the scaling runs numpy and FAISS in child processes, not torch
    scale = scale_section(throughput, args.quick, args.sizes)
    publish("retrieval-scale", ["## retrieval-scale: the vector stores up to 1M chunks", "", header, "", *scale], check)


def _measured(threads: int | None) -> str:
    """The command as run, the date, the machine, the torch threads (when torch runs) and the load average now."""
    command = " ".join(["python bench/bench_retrieval.py", *sys.argv[1:]])
    torch_threads = f"torch threads {threads}; " if threads else ""
    return (f"`{command}` ({today()}; {machine()}; {torch_threads}shared with other jobs, load average "
            f"{os.getloadavg()[0]:.1f} at the start).")


def publish(section: str, lines: list[str], check: bool) -> None:
    if check:
        print("\n".join(lines))
    else:
        write_section(section, "\n".join(lines))
        print(f"wrote the {section} section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
