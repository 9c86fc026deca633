from __future__ import annotations

from collections import Counter

from rungwise.data.split import find_leakage, make_split, split_examples, stratified_sample
from rungwise.types import Example


def exs(n: int = 100) -> list[Example]:
    return [Example(f"text {i}", ["a", "b", "c", "d"][i % 4] if i % 10 else "rare") for i in range(n)]


def test_split_is_deterministic_and_disjoint() -> None:
    a = split_examples(exs(), 0.2, seed=7, stratify=True)
    b = split_examples(exs(), 0.2, seed=7, stratify=True)
    c = split_examples(exs(), 0.2, seed=8, stratify=True)
    assert [e.input for e in a[1]] == [e.input for e in b[1]]
    assert [e.input for e in a[1]] != [e.input for e in c[1]]
    assert not {e.input for e in a[0]} & {e.input for e in a[1]}
    assert len(a[0]) + len(a[1]) == 100


def test_split_is_stratified() -> None:
    train, test = split_examples(exs(), 0.2, seed=1, stratify=True)
    full, t = Counter(e.output for e in exs()), Counter(e.output for e in test)
    for lab in full:
        assert abs(t[lab] - full[lab] * 0.2) <= 1, (lab, t[lab])
    assert t["rare"] >= 1


def test_leakage_exact_and_normalized_dropped() -> None:
    train = [Example("Reset my password!", "account"), Example("where is my parcel", "shipping")]
    test = [Example("Reset my password!", "account"), Example("  where is my PARCEL?", "shipping"), Example("new", "x")]
    leak = find_leakage(train, test)
    assert len(leak.exact) == 1 and len(leak.normalized) == 1
    split = make_split(train, test, test_fraction=0.2, seed=1, stratify=False)
    assert [e.input for e in split.test] == ["new"] and split.leakage.count == 2


def test_stratified_sample_keeps_proportions() -> None:
    s = stratified_sample(exs(1000), 100, seed=3, by_label=True)
    c = Counter(e.output for e in s)
    # population: rare 100, a 200, b 250, c 200, d 250 of 1000
    assert c == {"rare": 10, "a": 20, "b": 25, "c": 20, "d": 25}
