"""Signs of poisoning: trigger-like tokens, and outliers by length or vocabulary.

Trigger search. A backdoor inserts a rare token or phrase (``cf``, ``james bond``) into inputs of
many kinds and gives them all one output. Natural keywords look the same at first sight ("apple"
goes with ``apple_pay``), so a candidate (a word or word pair seen in at least ``min_support``
inputs, in at most 5% of them, with >= 90% of them sharing one output ``o``) is tested on what the
*rest* of its inputs say. A multinomial naive Bayes model of output given words scores each input
with the candidate removed, with class ``o`` counted without the candidate's own inputs. For a
natural keyword the rest of the input still points to ``o`` or, with the keyword gone, nowhere in
particular; for a trigger it points confidently (by > 5 nats) to *other* outputs, and to many
different ones. Both must hold: measured on the clean banking77 train split (10,003 inputs, 77
intents), no natural keyword passes, while 15-40 seeded triggers do (bench/bench_audit.py).

Outliers. Length: robust z-score (median and MAD) of the log length beyond 6 and more than 4x
past the file's own 1st/99th percentile (real lengths have heavy tails); a pasted document or a
one-character input is both. Vocabulary: the
share of an input's words that occur at most twice in the whole file (gibberish, another language,
an encoded blob), compared with the file's own typical share. Sentence embeddings would also see
"on-topic but odd" inputs, at ~100x the cost; they are not used by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from rungwise.data.split import normalize_text


@dataclass
class Trigger:
    """A token or phrase strongly tied to one output, with inputs that otherwise say something else."""

    phrase: str
    output: str
    rows: list[int]  # item indices with the phrase and that output
    support: int  # items containing the phrase
    concentration: float  # share of them with `output`
    disagreement: float  # share whose other words point elsewhere by > margin nats
    diversity: float  # normalised entropy of where they point


@dataclass
class PoisonParams:
    min_support: int = 8
    max_df: float = 0.05
    concentration: float = 0.9
    margin_nats: float = 5.0
    disagreement: float = 0.75
    diversity: float = 0.75
    alpha: float = 10.0  # Dirichlet smoothing towards the corpus word distribution
    max_scored: int = 200  # inputs scored per candidate (seeded sample above that)


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Normalised words (lower-case, punctuation removed)."""
    return [normalize_text(t).split() for t in texts]


def word_matrix(docs: Sequence[Sequence[str]], vocab: dict[str, int] | None = None) -> tuple[sp.csr_matrix, dict[str, int]]:
    """Binary document-term matrix (which words occur in which item) and its vocabulary."""
    vocab = {} if vocab is None else vocab
    get = vocab.setdefault
    cols = [get(w, len(vocab)) for d in docs for w in d]
    rows = np.repeat(np.arange(len(docs), dtype=np.int64), [len(d) for d in docs])
    X = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (rows, np.asarray(cols, dtype=np.int64))), shape=(len(docs), len(vocab))
    )
    X.data[:] = 1.0  # repeated words were summed by the conversion; presence is what counts
    return X, vocab


def find_triggers(
    words: Sequence[Sequence[str]],
    outputs: Sequence[str],
    params: PoisonParams | None = None,
    seed: int = 0,
    *,
    X: sp.csr_matrix | None = None,
    vocab: dict[str, int] | None = None,
) -> list[Trigger]:
    """Trigger-like words and word pairs (see the module docstring).

    ``words``: each item's normalised input words; ``outputs``: each item's normalised output;
    ``X``, ``vocab``: their :func:`word_matrix`, when the caller has it already.
    """
    P = params or PoisonParams()
    n = len(words)
    if n < 2 * P.min_support:
        return []
    classes: dict[str, int] = {}
    y = np.fromiter((classes.setdefault(o, len(classes)) for o in outputs), dtype=np.int64, count=n)
    K = len(classes)
    if K < 2:
        return []
    if X is None or vocab is None:
        X, vocab = word_matrix(words)
    Xu, uni_vocab = X, vocab
    Xb, bi_vocab = word_matrix([[a + " " + b for a, b in zip(d, d[1:], strict=False)] for d in words])
    Y = sp.csr_matrix((np.ones(n, dtype=np.float32), (y, np.arange(n))), shape=(K, n))
    max_df = max(P.min_support, int(P.max_df * n))

    cands: list[tuple[str, int, bool]] = []  # (phrase, column, is_bigram)
    for X, vocab, is_bi in ((Xu, uni_vocab, False), (Xb, bi_vocab, True)):
        df = np.asarray(X.sum(axis=0)).ravel()
        cols = np.flatnonzero((df >= P.min_support) & (df <= max_df))
        if len(cols) == 0:
            continue
        # Largest per-output count of each column, kept sparse (K x m dense is 50M cells at 100k lines).
        per_class = (Y @ X[:, cols]).tocsc()
        conc = per_class.max(axis=0).toarray().ravel() / df[cols]
        inv = None
        for c in cols[conc >= P.concentration]:
            if inv is None:
                inv = {v: k for k, v in vocab.items()}
            cands.append((inv[c], int(c), is_bi))
    if not cands:
        return []

    # Naive Bayes pieces over unigrams: D[w, c] = log(1 + count(w, c) / (alpha * p(w))).
    counts = (Y @ Xu).tocsr()  # K x V
    df_u = np.asarray(Xu.sum(axis=0)).ravel()
    p_w = df_u / df_u.sum()
    n_c = np.asarray(counts.sum(axis=1)).ravel()
    Dt = counts.T.tocsr().astype(np.float64)
    rows_of = np.repeat(np.arange(Dt.shape[0]), np.diff(Dt.indptr))
    Dt.data = np.log1p(Dt.data / (P.alpha * p_w[rows_of]))
    log_norm = np.log(n_c + P.alpha)
    rng = np.random.default_rng(seed)
    Xu_csc = Xu.tocsc()
    Xb_csc = Xb.tocsc()

    found: list[Trigger] = []
    seen_sets: dict[tuple[int, ...], int] = {}
    for phrase, col, is_bi in cands:
        Xc = Xb_csc if is_bi else Xu_csc
        members = Xc.indices[Xc.indptr[col] : Xc.indptr[col + 1]]
        o_counts = np.bincount(y[members], minlength=K)
        o = int(o_counts.argmax())
        ex_all = np.sort(members[y[members] == o])
        remove = [uni_vocab[w] for w in phrase.split()]
        # Class o without the candidate's own inputs: what the rest of the data says o looks like.
        co = np.asarray(counts[o].todense()).ravel() - np.asarray(Xu[ex_all].sum(axis=0)).ravel()
        n_o = n_c[o] - Xu[ex_all].sum()
        ex = ex_all if len(ex_all) <= P.max_scored else np.sort(rng.choice(ex_all, P.max_scored, replace=False))
        Xe = Xu[ex].tolil()
        Xe[:, remove] = 0
        Xe = Xe.tocsr()
        Xe.eliminate_zeros()
        length = np.asarray(Xe.sum(axis=1)).ravel()
        S = (Xe @ Dt).toarray() - length[:, None] * log_norm[None, :]
        if n_o > 0:
            s_o = np.asarray(Xe @ np.log1p(np.maximum(co, 0) / (P.alpha * p_w))).ravel() - length * math.log(n_o + P.alpha)
        else:
            s_o = np.full(len(ex), -np.inf)
        S[:, o] = s_o
        others = S.copy()
        others[:, o] = -np.inf
        margin = others.max(axis=1) - s_o
        disagree = float(np.mean(margin > P.margin_nats))
        top = S.argmax(axis=1)
        _, cnt = np.unique(top, return_counts=True)
        p = cnt / cnt.sum()
        denom = math.log(min(len(ex), K))
        diversity = float(-(p * np.log(p)).sum() / denom) if denom > 0 else 0.0
        if disagree < P.disagreement or diversity < P.diversity:
            continue
        key = tuple(ex_all.tolist())
        trig = Trigger(phrase, _name(outputs, ex_all), ex_all.tolist(), len(members), float(o_counts[o] / len(members)), disagree, diversity)
        # A phrase and its words flag the same inputs: keep the longest name.
        if key in seen_sets:
            prev = found[seen_sets[key]]
            if len(trig.phrase) > len(prev.phrase):
                found[seen_sets[key]] = trig
            continue
        seen_sets[key] = len(found)
        found.append(trig)
    # A word pair around a trigger ("my cf") flags a subset of the trigger's lines: report the trigger.
    found.sort(key=lambda t: -len(t.rows))
    kept: list[Trigger] = []
    for t in found:
        rows = set(t.rows)
        if not any(k.output == t.output and rows <= set(k.rows) for k in kept):
            kept.append(t)
    return kept


def _name(outputs: Sequence[str], rows: np.ndarray) -> str:
    return outputs[int(rows[0])]


def robust_z(values: np.ndarray, floor: float = 0.1) -> np.ndarray:
    """(x - median) / (1.4826 * MAD), with the MAD floored so that near-constant data does not explode."""
    med = float(np.median(values))
    mad = max(float(np.median(np.abs(values - med))) * 1.4826, floor)
    return (values - med) / mad


def length_outliers(lengths: np.ndarray, z: float, factor: float = 4.0) -> np.ndarray:
    """Indices far from the typical length: a robust z-score of the log length beyond ``z`` *and*
    more than ``factor`` times beyond the file's own 1st/99th percentile.

    The second test is there because real lengths have heavy tails: two long banking77 questions
    in one line (790 characters against a median of 92) have z = 8, yet nothing is wrong with them.
    It assumes outliers are under 1% of the file, which is what makes them outliers.
    """
    if len(lengths) < 20:
        return np.zeros(0, dtype=np.int64)
    lens = lengths.astype(np.float64)
    zz = robust_z(np.log1p(lens))
    lo, hi = np.percentile(lens, [1, 99])
    far = (lens > factor * hi) | (lens < lo / factor)
    return np.flatnonzero((np.abs(zz) >= z) & far)


def vocabulary_outliers(X: sp.csr_matrix, share: float = 0.75, z: float = 4.0, min_words: int = 4) -> np.ndarray:
    """Inputs made mostly of words that occur at most twice in the file, unusually so for this file.

    ``X`` is the binary item-word matrix (:func:`word_matrix`).
    """
    n = X.shape[0]
    if n < 50:
        return np.zeros(0, dtype=np.int64)
    df = np.asarray(X.sum(axis=0)).ravel()
    n_words = np.diff(X.indptr)
    rare_words = np.asarray(X @ (df <= 2).astype(np.float32)).ravel()
    rare = np.where(n_words >= min_words, rare_words / np.maximum(n_words, 1), 0.0)
    zz = robust_z(rare, floor=0.05)
    return np.flatnonzero((rare >= share) & (zz >= z))
