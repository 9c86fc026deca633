"""Token estimates for `rungwise cost` and `rungwise decide` before any climb.

Builds each prompting rung's real prompt from the task's train split (the same ``prepare`` the
climb runs) and counts about 4 characters per token (OpenAI's rule of thumb for English), plus
a few tokens per chat message for the template. A climb replaces these with measured counts.

Example:
    >>> profiles, notes = estimate_profiles(load_task("task.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rungwise.economics.cost import TokenProfile, rung_kind
from rungwise.types import Chat, Example

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4  # role markers and separators of a chat template
DEFAULT_EPOCHS = 3  # OpenAI's fine-tuning default for datasets of a few hundred examples


def count_tokens_estimate(text: str) -> int:
    """About one token per 4 characters.

    >>> count_tokens_estimate("I was charged twice for my order")
    8
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def chat_tokens_estimate(chat: Chat) -> int:
    """Estimated prompt tokens of a chat: content plus per-message template overhead."""
    return sum(count_tokens_estimate(m["content"]) + TOKENS_PER_MESSAGE for m in chat) + 3


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def estimate_profiles(task: Any, *, max_examples: int = 200) -> tuple[list[TokenProfile], list[str]]:
    """Estimated token profiles of the task's rungs (``rungs.order``) and notes on what was skipped."""
    from rungwise.data.dataset import load_split
    from rungwise.errors import ConfigError
    from rungwise.prompting import PromptTemplate, system_prompt
    from rungwise.rungs import RUNGS, RungContext, get_rung

    split = load_split(task)
    sample: list[Example] = list(split.test[:max_examples])
    completion = _mean([count_tokens_estimate(e.output) + 1 for e in sample])  # +1: end-of-turn token

    def no_backend() -> Any:
        raise ConfigError("estimating costs needs no model", hint="this is a bug: please report it")

    out: list[TokenProfile] = []
    notes: list[str] = []
    for name in task.rungs.order:
        kind = rung_kind(name)
        if kind == "finetune":
            # A fine-tuned model gets the instructions and the input, no demos.
            tpl = PromptTemplate(system_prompt(task.instructions, task.labels))
            prompt = _mean([chat_tokens_estimate(tpl.for_example(e)) for e in sample])
            per_train = [chat_tokens_estimate(tpl.for_example(e)) + count_tokens_estimate(e.output) + 1
                         for e in split.train]
            out.append(TokenProfile(
                name, prompt, 0.0, completion, 0.0,
                {"kind": "finetune", "train_tokens": sum(per_train), "epochs": DEFAULT_EPOCHS,
                 "train_examples": len(split.train)},
                estimated=True,
            ))
            continue
        if name not in RUNGS:
            notes.append(f"{name}: its prompt depends on what it retrieves or builds; climb to measure its tokens")
            continue
        prepared = get_rung(name).prepare(RungContext(task=task, train=split.train, backend_factory=no_backend))
        prompts = [chat_tokens_estimate(prepared.prompt_for(e)) for e in sample]
        if prepared.per_example is None:
            prefix = prepared.template.prefix()
        else:
            # Per-input demos: only the system prompt is shared between requests.
            prefix = [m for m in prepared.template.prefix() if m["role"] == "system"]
        cached = float(chat_tokens_estimate(prefix)) if prefix else 0.0
        out.append(TokenProfile(name, _mean(prompts), cached, completion, 0.0, dict(prepared.artifact), estimated=True))
    return out, notes
