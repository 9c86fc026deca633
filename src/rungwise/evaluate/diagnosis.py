"""Behaviour or knowledge: what kind of failure each wrong answer is.

"Fine-tune for behaviour, RAG for knowledge": the ladder can only apply that rule if it knows
which kind of gap the failures show.

- **behaviour**: the answer is not in the required format (no label of the label set, invalid
  JSON, no number): the model did not do what it was asked, whatever it knows. Constrained
  decoding, demos or a fine-tune fix this.
- **knowledge**: the answer is in the format but its content is wrong: the model does not know
  (or did not find) the fact. Retrieval fixes this when the facts are in documents; when the rung
  retrieved, the trace says whether the gold passage was among what it read:
  ``not_retrieved`` (a retrieval miss: better retrieval) or ``retrieved`` (a reading miss: the
  model had the passage and still answered wrong). A knowledge failure whose expected answer is
  mostly spans of the input itself (slot values, an extractive answer: :func:`answer_in_input`)
  is counted as ``in_input``: the model misread what it was given, which no retrieval can fix.

An example fails when its score is below 0.5: wrong for a right-or-wrong metric, and mostly wrong
for a graded one (chrF, token F1, field F1), where a partly right answer is common.

Example:
    >>> from rungwise.evaluate.scores import ScoreSet
    >>> s = ScoreSet("accuracy", [1.0, 0.0, 0.0], [True, True, False], ["a", "b", ""])
    >>> diagnose(s).as_dict()
    {'behaviour': 1, 'knowledge': 1, 'knowledge_retrieved': 0, 'knowledge_not_retrieved': 0, 'knowledge_in_input': 0}
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rungwise.evaluate.scores import ScoreSet
from rungwise.types import Example

#: The trace key a retrieving rung sets per example: did the gold passage come back?
GOLD_RETRIEVED = "gold_retrieved"


@dataclass(frozen=True)
class Failures:
    """Counts of failed examples by kind; ``knowledge_retrieved`` + ``knowledge_not_retrieved``
    are the knowledge failures whose trace says whether the gold passage was retrieved;
    ``knowledge_in_input`` those whose expected answer is in the input (:func:`answer_in_input`)."""

    behaviour: int = 0
    knowledge: int = 0
    knowledge_retrieved: int = 0
    knowledge_not_retrieved: int = 0
    knowledge_in_input: int = 0

    @property
    def total(self) -> int:
        return self.behaviour + self.knowledge

    def as_dict(self) -> dict[str, int]:
        return {"behaviour": self.behaviour, "knowledge": self.knowledge,
                "knowledge_retrieved": self.knowledge_retrieved, "knowledge_not_retrieved": self.knowledge_not_retrieved,
                "knowledge_in_input": self.knowledge_in_input}

    def summary(self) -> str:
        """``3 format, 5 content (2 with the gold passage retrieved)``."""
        if not self.total:
            return "no failures"
        s = f"{self.behaviour} format, {self.knowledge} content"
        traced = self.knowledge_retrieved + self.knowledge_not_retrieved
        if traced:
            s += f" ({self.knowledge_not_retrieved} gold passage not retrieved, {self.knowledge_retrieved} retrieved)"
        return s


FAIL_BELOW = 0.5


def _text_values(answer: Any) -> Iterator[str]:
    if isinstance(answer, str):
        yield answer
    elif isinstance(answer, Mapping):
        for v in answer.values():
            yield from _text_values(v)
    elif isinstance(answer, list):
        for v in answer:
            yield from _text_values(v)


def answer_in_input(example: Example) -> bool:
    """Whether the expected answer is mostly spans of the input (asked of free-text tasks only: a label
    that is a word of the input is no extraction): at least half of its text values
    (the string leaves of a JSON answer, or the answer itself) occur in the input, ignoring case
    and spacing. A plain answer without a letter never counts (a number in a word problem is
    rarely its answer)."""
    out = example.output.strip()
    try:
        parsed = json.loads(out) if out[:1] in "{[" else out
    except json.JSONDecodeError:
        parsed = out
    values = [" ".join(v.lower().split()) for v in _text_values(parsed)]
    values = [v for v in values if v]
    if not values or (parsed is out and not any(c.isalpha() for c in out)):
        return False
    text = " ".join(example.input.lower().split())
    return 2 * sum(v in text for v in values) >= len(values)


def diagnose(scores: ScoreSet, traces: Sequence[Mapping[str, Any]] | None = None,
             examples: Sequence[Example] | None = None) -> Failures:
    """Classify every failed example of one rung as behaviour or knowledge (``examples``, in the
    order of ``scores``, let it count the knowledge failures whose answer is in the input)."""
    behaviour = knowledge = hit = miss = in_input = 0
    for i, (score, valid) in enumerate(zip(scores.scores, scores.valid, strict=True)):
        if score >= FAIL_BELOW:
            continue
        if not valid:
            behaviour += 1
            continue
        knowledge += 1
        gold = (traces[i] if traces is not None and i < len(traces) else {}).get(GOLD_RETRIEVED)
        if gold is True:
            hit += 1
        elif gold is False:
            miss += 1
        if examples is not None and answer_in_input(examples[i]):
            in_input += 1
    return Failures(behaviour, knowledge, hit, miss, in_input)
