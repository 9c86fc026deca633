"""The classical baseline behind the backend protocol, so the climb and ``rungwise serve`` use it unchanged."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from rungwise.backends.base import Backend, ProgressFn
from rungwise.classic.model import ClassicModel
from rungwise.errors import Unsupported
from rungwise.types import Chat, Completion, GenParams

# Label probabilities are stored in every trace; six decimals are plenty to read them.
PROB_DIGITS = 6


def _last_user(chat: Chat) -> str:
    return next((m["content"] for m in reversed(chat) if m["role"] == "user"), "")


class ClassicBackend(Backend):
    """Answers each chat with the label the classifier predicts for its last user message.

    A rung's system prompt and demos are ignored (the classifier reads the input text only).
    There are no tokens: ``prompt_tokens`` and ``completion_tokens`` are 0, and ``latency_s`` is
    the wall time of the call's one batched prediction. ``trace["label_probs"]`` holds every
    label's probability. A ``choice`` constraint restricts the answer to the choices the
    classifier knows; regex and JSON constraints are unsupported (it only answers labels).

    Example:
        >>> backend = ClassicBackend.load("runs/3/classic")  # doctest: +SKIP
        >>> backend.generate([[{"role": "user", "content": "I was charged twice"}]], GenParams())[0].text  # doctest: +SKIP
        'billing'
    """

    def __init__(self, model: ClassicModel, *, model_id: str | None = None) -> None:
        self.model = model
        self.model_id = model_id or f"classic:{model.spec.variant}"

    @classmethod
    def load(cls, directory: str | Path) -> ClassicBackend:
        """The backend over a classifier saved by :meth:`ClassicModel.save`."""
        return cls(ClassicModel.load(directory), model_id=f"classic:{Path(directory).name}")

    def generate(self, prompts: Sequence[Chat], params: GenParams, progress: ProgressFn | None = None) -> list[Completion]:
        if not prompts:
            return []
        allowed = list(self.model.labels)
        c = params.constraint
        if c is not None:
            if c.kind != "choice":
                raise Unsupported(f"{self.model_id} answers labels only; it cannot produce a {c.describe()}",
                                  hint="use the classic rung for label tasks (metric accuracy or macro_f1)")
            allowed = [x for x in allowed if x in c.choices]
            if not allowed:
                raise Unsupported(f"{self.model_id} knows none of the {len(c.choices)} choices",
                                  hint="the constraint's labels must appear in the classifier's train split")
        t0 = time.perf_counter()
        rows = self.model.predict_proba([_last_user(list(chat)) for chat in prompts])
        latency = time.perf_counter() - t0
        out = []
        for probs in rows:
            best = max(allowed, key=probs.__getitem__)
            trace = {"label_probs": {k: round(v, PROB_DIGITS) for k, v in probs.items()}}
            if c is not None:
                trace["constraint"] = c.describe()
            out.append(Completion(best, 0, 0, latency, trace=trace))
        if progress:
            progress(len(prompts))
        return out

    def count_tokens(self, text: str) -> int:
        """No tokenizer and no tokens billed: a classifier reads text, not tokens."""
        return 0
