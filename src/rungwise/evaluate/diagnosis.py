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
  model had the passage and still answered wrong).

An example fails when its score is below 0.5: wrong for a right-or-wrong metric, and mostly wrong
for a graded one (chrF, token F1, field F1), where a partly right answer is common.

Example:
    >>> from rungwise.evaluate.scores import ScoreSet
    >>> s = ScoreSet("accuracy", [1.0, 0.0, 0.0], [True, True, False], ["a", "b", ""])
    >>> diagnose(s).as_dict()
    {'behaviour': 1, 'knowledge': 1, 'knowledge_retrieved': 0, 'knowledge_not_retrieved': 0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rungwise.evaluate.scores import ScoreSet

#: The trace key a retrieving rung sets per example: did the gold passage come back?
GOLD_RETRIEVED = "gold_retrieved"


@dataclass(frozen=True)
class Failures:
    """Counts of failed examples by kind; ``knowledge_retrieved`` + ``knowledge_not_retrieved``
    are the knowledge failures whose trace says whether the gold passage was retrieved."""

    behaviour: int = 0
    knowledge: int = 0
    knowledge_retrieved: int = 0
    knowledge_not_retrieved: int = 0

    @property
    def total(self) -> int:
        return self.behaviour + self.knowledge

    def as_dict(self) -> dict[str, int]:
        return {"behaviour": self.behaviour, "knowledge": self.knowledge,
                "knowledge_retrieved": self.knowledge_retrieved, "knowledge_not_retrieved": self.knowledge_not_retrieved}

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


def diagnose(scores: ScoreSet, traces: Sequence[Mapping[str, Any]] | None = None) -> Failures:
    """Classify every failed example of one rung as behaviour or knowledge."""
    behaviour = knowledge = hit = miss = 0
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
    return Failures(behaviour, knowledge, hit, miss)
