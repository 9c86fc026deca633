"""A deterministic, scripted test double that ships with the library.

Unit tests use it so they cannot reach a real model by accident (like pydantic-ai's
``TestModel`` and DSPy's ``DummyLM``). It is also a real backend for ``rungwise serve``
in tests of the HTTP path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from rungwise.backends.base import Backend, ProgressFn
from rungwise.backends.constraints import allows
from rungwise.config.model import ModelSpec
from rungwise.errors import BackendError
from rungwise.types import Chat, Completion, Constraint, GenParams


class ScriptedSpec(ModelSpec):
    """``model:`` for ``backend: scripted``: the deterministic test double (dry runs, tests)."""

    id: str = Field("scripted", description="A name for the run store.")
    script: dict[str, str] | list[str] | None = Field(
        None, description="Replies by input text (dict, `default` for the rest) or in order (list, cycling)."
    )
    delay_s: float = Field(0.0, ge=0, description="Seconds each reply takes (to test progress and interruption).")

    def build(self) -> ScriptedBackend:
        return ScriptedBackend(self.script if self.script is not None else ["ok"], model_id=f"scripted:{self.id}",
                               delay_s=self.delay_s)

    def describe(self) -> str:
        return f"scripted:{self.id}"

    def constraint_support(self) -> str:
        return "the scripted test double follows constraints"


def _last_user(chat: Chat) -> str:
    for m in reversed(chat):
        if m["role"] == "user":
            return m["content"]
    return ""


class ScriptedBackend(Backend):
    """Replies from a script.

    ``script`` is a list (replies in call order, cycling), a dict (reply by the last user
    message; ``default`` for anything else), or a function ``chat -> reply``. Token counts
    are whitespace word counts, so tests can assert on them.

    Constraints (``GenParams.constraint``), like a real backend, never let through an answer
    that breaks them, and stop strings are not applied under one:

    * ``choice``: the scripted reply if it is one of the choices, else the best choice by
      ``choice_scores`` (first on ties); ``trace["choice_logprobs"]`` holds every choice's score
      (``choice_scores``, or 0 for the scripted reply and -5 for the others);
    * ``regex`` / ``json``: the scripted reply if it matches the pattern / parses as JSON
      conforming to the schema (any JSON object without one), else a :class:`BackendError`
      (a script that contradicts its own constraint is a broken test).

    Example:
        >>> b = ScriptedBackend({"hello": "hi", "default": "?"})
        >>> [c.text for c in b.generate([[{"role": "user", "content": "hello"}]], GenParams())]
        ['hi']
    """

    def __init__(
        self,
        script: Sequence[str] | dict[str, str] | Callable[[Chat], str] | None = None,
        *,
        model_id: str = "scripted",
        delay_s: float = 0.0,
        choice_scores: Callable[[Chat, str], float] | None = None,
    ) -> None:
        self.script = script if script is not None else ["ok"]
        self.model_id = model_id
        self.delay_s = delay_s
        self.calls: list[Chat] = []
        self._i = 0
        self._choice_scores = choice_scores

    def _reply(self, chat: Chat) -> str:
        s = self.script
        if callable(s):
            return s(chat)
        if isinstance(s, dict):
            return s.get(_last_user(chat), s.get("default", ""))
        reply = s[self._i % len(s)]
        self._i += 1
        return reply

    def generate(self, prompts: Sequence[Chat], params: GenParams, progress: ProgressFn | None = None) -> list[Completion]:
        out = []
        for chat in prompts:
            t0 = time.perf_counter()
            if self.delay_s:
                time.sleep(self.delay_s)
            self.calls.append(list(chat))
            text = self._reply(list(chat))
            trace: dict[str, Any] = {}
            if params.constraint is not None:
                text, trace = self._constrained(list(chat), text, params.constraint)
            for stop in params.stop if params.constraint is None else ():
                if stop and stop in text:
                    text = text[: text.index(stop)]
            words = text.split()
            if len(words) > params.max_tokens:
                text = " ".join(words[: params.max_tokens])
            prompt_tokens = sum(len(m["content"].split()) + 1 for m in chat)
            out.append(Completion(text, prompt_tokens, len(text.split()), time.perf_counter() - t0, trace=trace))
            if progress:
                progress(1)
        return out

    def _constrained(self, chat: Chat, reply: str, constraint: Constraint) -> tuple[str, dict[str, Any]]:
        trace: dict[str, Any] = {"constraint": constraint.describe()}
        if constraint.kind == "choice":
            scores = self._scores(chat, constraint.choices, reply)
            trace["choice_logprobs"] = dict(zip(constraint.choices, scores, strict=True))
            if reply.strip() in constraint.choices:
                return reply.strip(), trace
            return constraint.choices[max(range(len(scores)), key=scores.__getitem__)], trace
        if not allows(constraint, reply):
            raise BackendError(
                f"{self.model_id}: the scripted reply {reply!r:.60} breaks the {constraint.describe()}",
                hint="script a reply that satisfies the constraint",
            )
        return reply, trace

    def _scores(self, chat: Chat, choices: Sequence[str], reply: str) -> list[float]:
        if self._choice_scores is None:
            # Prefer the choice the script would have answered.
            return [0.0 if c.strip() == reply.strip() else -5.0 for c in choices]
        return [self._choice_scores(chat, c) for c in choices]

    def loglikelihood(self, prompts: Sequence[Chat], choices: Sequence[Sequence[str]]) -> list[list[float]]:
        out = []
        for p, cs in zip(prompts, choices, strict=True):
            reply = self._reply(list(p)) if self._choice_scores is None else ""
            out.append(self._scores(list(p), cs, reply))
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())
