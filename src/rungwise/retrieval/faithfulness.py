"""Faithfulness judged by a model: is every claim of an answer supported by the retrieved text?

Optional (it costs a model call per answer); any backend works, an OpenAI-compatible endpoint in
practice. A judgement that fails (the call errors, or the reply is neither YES nor NO) is
counted in ``failed`` and left out of the mean, never silently dropped or guessed.

Example:
    >>> from rungwise.backends.scripted import ScriptedBackend
    >>> judge_faithfulness(ScriptedBackend(["YES", "NO", "maybe"]), ["a", "b", "c"], [["ctx"]] * 3).summary()
    'faithfulness 0.50 over 2 judged answers (1 failed of 3)'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rungwise.backends.base import Backend
from rungwise.errors import BackendError
from rungwise.types import Chat, GenParams

log = logging.getLogger(__name__)

JUDGE_SYSTEM = (
    "You check answers against source text. Reply with one word: YES if every claim in the answer is "
    "supported by the context, NO if any claim is not."
)
_VERDICT = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


@dataclass
class FaithfulnessResult:
    """Per-answer judgements (1.0 supported, 0.0 not, None failed) and their summary."""

    judgements: list[float | None]
    failed: int
    errors: list[str] = field(default_factory=list)

    @property
    def judged(self) -> int:
        return len(self.judgements) - self.failed

    @property
    def mean(self) -> float | None:
        """Share of judged answers found faithful (None when none could be judged)."""
        ok = [j for j in self.judgements if j is not None]
        return sum(ok) / len(ok) if ok else None

    def summary(self) -> str:
        mean = "n/a" if self.mean is None else f"{self.mean:.2f}"
        return f"faithfulness {mean} over {self.judged} judged answers ({self.failed} failed of {len(self.judgements)})"


def judge_prompt(answer: str, contexts: Sequence[str]) -> Chat:
    """The judge's chat: the retrieved contexts, the answer, and the YES/NO question."""
    context = "\n\n".join(f"[{i}] {c}" for i, c in enumerate(contexts, 1))
    user = f"Context:\n{context}\n\nAnswer:\n{answer}\n\nIs every claim in the answer supported by the context? YES or NO."
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(reply: str) -> float | None:
    """1.0 for YES, 0.0 for NO, None for anything else."""
    m = _VERDICT.match(reply)
    return None if m is None else float(m.group(1).lower() == "yes")


def judge_faithfulness(
    judge: Backend, answers: Sequence[str], contexts: Sequence[Sequence[str]], batch_size: int = 16
) -> FaithfulnessResult:
    """Ask ``judge`` whether each answer is supported by its contexts (greedy, 4 tokens per verdict)."""
    if len(answers) != len(contexts):
        raise ValueError(f"{len(answers)} answers but {len(contexts)} context lists")
    params = GenParams(max_tokens=4, temperature=0.0)
    replies: list[str | None] = []
    errors: list[str] = []
    prompts = [judge_prompt(a, c) for a, c in zip(answers, contexts, strict=True)]
    for start in range(0, len(prompts), batch_size):
        part = prompts[start : start + batch_size]
        try:
            replies.extend(c.text for c in judge.generate(part, params))
        except BackendError:
            # One bad request fails the whole batch: retry one by one, so only the failing ones count.
            for chat in part:
                try:
                    replies.append(judge.generate([chat], params)[0].text)
                except BackendError as exc:
                    errors.append(str(exc).splitlines()[0])
                    replies.append(None)
    judgements = [None if r is None else parse_verdict(r) for r in replies]
    failed = sum(j is None for j in judgements)
    if failed:
        log.warning("faithfulness judge: %d of %d judgements failed", failed, len(judgements))
    return FaithfulnessResult(judgements, failed, errors)
