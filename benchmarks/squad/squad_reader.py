"""SQuAD v1.1 dev as a retrieval task: its questions as examples, its paragraphs as the knowledge source.

The official dev set ships here as two files split by article (``dev-v1.1.json``: 24 articles,
4,961 questions; ``test-v1.1.json``: the other 24, 5,609 questions): the first is the train split
(demos, fine-tuning), the second the test split. The knowledge source is every paragraph of both
(2,067), so retrieval searches the whole dev set. A paragraph's id is ``<article>#<n>``; each
question's gold id is its paragraph. The data stays in ../shared/datasets.

``f1`` is SQuAD's own F1: token overlap after SQuAD's normalisation, the best over the reference
answers (about three per question), so a correct answer phrased like any annotator's scores 1.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rungwise.evaluate.parsing import normalize_answer
from rungwise.types import Example

FILES = ("dev-v1.1.json", "test-v1.1.json")


def _articles(path: Path) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text(encoding="utf-8"))["data"]


def questions(path: Path) -> Iterator[dict[str, Any]]:
    """One example per question of a SQuAD JSON file (the reader of ``data.format``).

    The expected output is the first reference answer; all of them go into the metadata for ``f1``.
    """
    for article in _articles(path):
        for n, para in enumerate(article["paragraphs"]):
            for qa in para["qas"]:
                answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                yield {"input": qa["question"], "output": answers[0], "answers": answers,
                       "gold_doc_ids": [f"{article['title']}#{n}"], "source": f"{Path(path).name}:{qa['id']}"}


def paragraphs(folder: Path) -> Iterator[dict[str, str]]:
    """Every paragraph of both dev files as ``{id, title, text}`` (the reader of ``knowledge.format``)."""
    for name in FILES:
        for article in _articles(Path(folder) / name):
            title = article["title"].replace("_", " ")
            for n, para in enumerate(article["paragraphs"]):
                yield {"id": f"{article['title']}#{n}", "title": title, "text": para["context"]}


def _token_f1(prediction: str, reference: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    return 0.0 if common == 0 else 2 * common / (len(p) + len(g))


def f1(prediction: str, example: Example) -> float:
    """SQuAD F1: the best token F1 of the prediction against any reference answer (``metric.name``).

    >>> ex = Example("Who?", "Denver Broncos", metadata={"answers": ["Denver Broncos", "the Broncos"]})
    >>> f1("The Broncos.", ex), round(f1("Broncos of Denver", ex), 3)
    (1.0, 0.8)
    """
    refs = example.metadata.get("answers") or [example.output]
    return max(_token_f1(prediction, r) for r in refs)
