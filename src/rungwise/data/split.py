"""Deterministic, stratified train/test split with train-test leakage removal.

The test split is never used for demos or training: every rung receives ``Split.train`` only.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from rungwise.types import Example

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalize_text(text: str) -> str:
    """Lower-case, NFKC, punctuation stripped, whitespace collapsed: catches near-verbatim copies.

    >>> normalize_text("  Hello,   World! ")
    'hello world'
    """
    t = unicodedata.normalize("NFKC", text).casefold()
    return _WS.sub(" ", _PUNCT.sub(" ", t)).strip()


@dataclass
class Leakage:
    """Test examples whose input also appears in train (exactly, or after normalization)."""

    exact: list[Example] = field(default_factory=list)
    normalized: list[Example] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.exact) + len(self.normalized)


@dataclass
class Split:
    train: list[Example]
    test: list[Example]
    leakage: Leakage
    seed: int
    #: What the user should hear before any rung runs (e.g. a train split with a single label).
    warnings: list[str] = field(default_factory=list)


def _key(ex: Example) -> str:
    return "\x00".join(m["content"] for m in ex.messages) + "\x01" + ex.input if ex.messages else ex.input


def find_leakage(train: Sequence[Example], test: Sequence[Example]) -> Leakage:
    """Test examples whose input duplicates a train input, exactly or after normalization."""
    exact_keys = {_key(e) for e in train}
    norm_keys = {normalize_text(_key(e)) for e in train}
    leak = Leakage()
    for e in test:
        k = _key(e)
        if k in exact_keys:
            leak.exact.append(e)
        elif normalize_text(k) in norm_keys:
            leak.normalized.append(e)
    return leak


def stratified_sample(examples: Sequence[Example], n: int, seed: int, by_label: bool) -> list[Example]:
    """A seeded sample of ``n`` examples keeping label proportions (largest remainder), in input order."""
    if n >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    if not by_label:
        idx = sorted(rng.sample(range(len(examples)), n))
        return [examples[i] for i in idx]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[e.output].append(i)
    total = len(examples)
    quotas = {k: n * len(v) / total for k, v in groups.items()}
    take = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: (-(quotas[k] - take[k]), k))[: n - sum(take.values())]:
        take[k] += 1
    chosen: list[int] = []
    for k in sorted(groups):
        chosen += rng.sample(groups[k], take[k])
    return [examples[i] for i in sorted(chosen)]


def split_examples(
    examples: Sequence[Example], test_fraction: float, seed: int, stratify: bool
) -> tuple[list[Example], list[Example]]:
    """Seeded split; with ``stratify`` each output label keeps its share in both parts.

    >>> exs = [Example(str(i), "a" if i % 2 else "b") for i in range(10)]
    >>> tr, te = split_examples(exs, 0.2, seed=1, stratify=True)
    >>> sorted(e.output for e in te)
    ['a', 'b']
    """
    rng = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[e.output if stratify else ""].append(i)
    test_idx: set[int] = set()
    for k in sorted(groups):
        idx = groups[k][:]
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        if stratify and len(idx) >= 2:
            n_test = max(1, min(n_test, len(idx) - 1))  # every label in both parts where possible
        test_idx.update(idx[:n_test])
    train = [e for i, e in enumerate(examples) if i not in test_idx]
    test = [e for i, e in enumerate(examples) if i in test_idx]
    return train, test


def make_split(
    train: Sequence[Example],
    test: Sequence[Example] | None,
    *,
    test_fraction: float,
    seed: int,
    stratify: bool,
    max_train: int | None = None,
    max_test: int | None = None,
) -> Split:
    """Split (when no explicit test set), drop leaked test examples, apply caps."""
    if test is None:
        train, test = split_examples(train, test_fraction, seed, stratify)
    train, test = list(train), list(test)
    leak = find_leakage(train, test)
    if leak.count:
        dropped = {id(e) for e in leak.exact + leak.normalized}
        test = [e for e in test if id(e) not in dropped]
    if max_train:
        train = stratified_sample(train, max_train, seed, stratify)
    if max_test:
        test = stratified_sample(test, max_test, seed, stratify)
    return Split(train, test, leak, seed)
