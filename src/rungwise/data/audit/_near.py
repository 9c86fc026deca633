"""Near-duplicate search: character shingles, MinHash signatures and LSH banding, all in numpy.

Why not ``datasketch.MinHash`` per example: it updates one shingle at a time in Python, which
costs ~60 s for 100,000 short texts on two cores; here shingling, hashing and the per-example
minimum are a handful of vectorised passes over one array holding every shingle of the corpus
(~2 s for 100,000 texts). The algorithm is the standard one (Broder 1997; LSH banding as in
datasketch's ``MinHashLSH``); candidate pairs are then verified by their exact Jaccard
similarity, so the banding only decides which pairs get looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHINGLE = 5  # characters per shingle: robust to one-word edits in short texts (see bench/bench_audit.py)


@dataclass
class NearPair:
    """Two items whose shingle sets have Jaccard similarity ``jaccard`` (exact, not estimated)."""

    i: int
    j: int
    jaccard: float


def shingle_hashes(texts: Sequence[str], k: int = SHINGLE) -> tuple[np.ndarray, np.ndarray]:
    """Hash every k-byte window of every text (UTF-8), vectorised over the whole corpus.

    Returns ``(hashes, owner)``: one uint64 per shingle and the index of the text it came from,
    sorted by owner. Each text is padded with a space on both sides, so a text shorter than
    ``k`` still yields one shingle; empty texts yield none.

    >>> h, o = shingle_hashes(["hello world", ""])
    >>> int(o.max()), len(h) == len(" hello world ") - 4
    (0, True)
    """
    pieces = [(" " + t + " ").encode("utf-8") if t else b"" for t in texts]
    lens = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    if lens.sum() == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    # Texts shorter than k are right-padded with spaces to exactly k bytes (one shingle).
    short = (lens > 0) & (lens < k)
    if short.any():
        for i in np.flatnonzero(short):
            pieces[i] = pieces[i].ljust(k, b" ")
        lens = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    buf = np.frombuffer(b"".join(pieces), dtype=np.uint8).astype(np.uint64)
    # Hash the window at every position of the joined buffer with contiguous slices (no
    # gathers), then keep the windows that lie inside one text: first and last byte same owner.
    span = len(buf) - k + 1
    h = np.zeros(span, dtype=np.uint64)
    mult = np.uint64(1099511628211)  # FNV-1a 64-bit prime; overflow wraps (intended)
    with np.errstate(over="ignore"):
        for j in range(k):
            np.bitwise_xor(h, buf[j : j + span], out=h)
            np.multiply(h, mult, out=h)
        byte_owner = np.repeat(np.arange(len(pieces), dtype=np.int64), lens)
        inside = byte_owner[:span] == byte_owner[k - 1 :]
        h = h[inside]
        owner = byte_owner[:span][inside]
        # A final avalanche (splitmix64 finaliser) so that nearby byte patterns spread out.
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
    return h, owner


def minhash_signatures(hashes: np.ndarray, owner: np.ndarray, n_items: int, num_perm: int = 64, seed: int = 1) -> np.ndarray:
    """MinHash signatures (``n_items x num_perm`` uint64) with multiply-shift permutations.

    Items with no shingles get all-max signatures and never match anything.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 62, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 62, size=num_perm, dtype=np.uint64)
    sig = np.full((n_items, num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    if len(hashes) == 0:
        return sig
    present = np.flatnonzero(np.bincount(owner, minlength=n_items))
    bounds = np.searchsorted(owner, present)
    # One permutation at a time into a reused buffer: allocating a fresh (perms x shingles)
    # temporary was 20x slower here (page faults dominate at ~100 MB).
    buf = np.empty(len(hashes), dtype=np.uint64)
    cols = np.empty((num_perm, len(present)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(num_perm):
            np.multiply(hashes, a[j], out=buf)
            np.add(buf, b[j], out=buf)
            cols[j] = np.minimum.reduceat(buf, bounds)
    sig[present] = cols.T
    return sig


def lsh_candidates(sig: np.ndarray, bands: int, max_bucket: int = 64) -> np.ndarray:
    """Pairs (i < j) sharing at least one band of their signatures, as an ``m x 2`` array.

    A bucket larger than ``max_bucket`` (many near-identical items) contributes each member
    paired with the bucket's first few members only, which keeps the pair count linear while
    still connecting the cluster.
    """
    n, p = sig.shape
    rows = p // bands
    out: list[np.ndarray] = []
    valid = sig[:, 0] != np.iinfo(np.uint64).max
    idx_valid = np.flatnonzero(valid)
    if len(idx_valid) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    with np.errstate(over="ignore"):
        for bnd in range(bands):
            block = sig[idx_valid, bnd * rows : (bnd + 1) * rows]
            key = np.zeros(len(idx_valid), dtype=np.uint64)
            for r in range(rows):
                key = (key ^ block[:, r]) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(r)
            order = np.argsort(key, kind="stable")
            ks = key[order]
            brk = np.flatnonzero(np.diff(ks)) + 1
            starts = np.concatenate(([0], brk))
            ends = np.concatenate((brk, [len(ks)]))
            sizes = ends - starts
            # Buckets up to max_bucket: every pair, generated without a Python loop. Position p
            # of the sorted order pairs with every later position of its bucket.
            small = (sizes > 1) & (sizes <= max_bucket)
            if small.any():
                end_of = np.repeat(np.where(small, ends, 0), sizes)  # 0: position not in a small bucket
                pos = np.arange(len(ks))
                partners = np.maximum(end_of - pos - 1, 0)
                left = np.repeat(pos, partners)
                first = np.repeat(np.cumsum(partners) - partners, partners)
                right = left + 1 + (np.arange(len(left)) - first)
                out.append(np.stack([idx_valid[order[left]], idx_valid[order[right]]], axis=1))
            for s, e in zip(starts[sizes > max_bucket], ends[sizes > max_bucket], strict=True):
                members = idx_valid[order[s:e]]
                for a in members[:4]:
                    rest = members[members != a]
                    out.append(np.stack([np.full(len(rest), a), rest], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(out)
    pairs.sort(axis=1)
    # One int64 per pair makes the de-duplication a 1-D sort (np.unique(axis=0) is ~10x slower).
    code = np.unique(pairs[:, 0] * np.int64(n) + pairs[:, 1])
    return np.stack([code // n, code % n], axis=1)


def near_pairs(texts: Sequence[str], threshold: float, *, num_perm: int = 64, bands: int = 16, k: int = SHINGLE) -> list[NearPair]:
    """Every pair of texts whose exact shingle Jaccard similarity is at least ``threshold``.

    LSH finds candidates (with 16 bands of 4 rows, a pair at Jaccard 0.7 is a candidate with
    probability 0.99, at 0.8 with 0.9998); each candidate is then checked exactly.

    >>> [ (p.i, p.j) for p in near_pairs(["my card has not arrived yet", "my card has not arrived yet!", "pizza"], 0.7)]
    [(0, 1)]
    """
    n = len(texts)
    if n < 2:
        return []
    hashes, owner = shingle_hashes(texts, k)
    sig = minhash_signatures(hashes, owner, n, num_perm)
    cand = lsh_candidates(sig, bands)
    if len(cand) == 0:
        return []
    # A cheap estimated-similarity filter before the exact check: with 64 permutations the
    # estimate's sd is <= 0.0625, so a pair at the threshold falls below threshold - 0.15 with
    # probability ~0.1%. In chunks: gathering two signatures per candidate is 1 KB a pair.
    keep = []
    for c in range(0, len(cand), 50_000):
        part = cand[c : c + 50_000]
        est = (sig[part[:, 0]] == sig[part[:, 1]]).mean(axis=1)
        keep.append(part[est >= threshold - 0.15])
    cand = np.concatenate(keep)
    bounds = np.searchsorted(owner, np.arange(n + 1))
    sets: dict[int, frozenset[int]] = {}

    def shingles(i: int) -> frozenset[int]:
        s = sets.get(i)
        if s is None:
            s = sets[i] = frozenset(hashes[bounds[i] : bounds[i + 1]].tolist())
        return s

    found = []
    for i, j in cand.tolist():
        a, b = shingles(i), shingles(j)
        inter = len(a & b)
        jac = inter / (len(a) + len(b) - inter)
        if jac >= threshold:
            found.append(NearPair(i, j, jac))
    return found
