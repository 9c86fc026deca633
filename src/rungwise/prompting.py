"""Building the messages a rung sends: system prompt (+ label list / format rules) + demos + input.

Demos are rendered as prior user/assistant turns, the form chat models follow best, and come
*before* the input so that a fixed demo set forms a shared prompt prefix whose KV cache (or a
provider's prompt cache) can be reused across inputs. Per-example context (retrieved passages)
goes into the last user turn, after that prefix, so retrieval keeps the prefix cache.

Token counts before a climb are estimated at about 4 characters per token (OpenAI's rule of
thumb for English) plus a few tokens per chat message; a climb replaces them with measured counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from rungwise.types import Chat, Example, Message


def system_prompt(instructions: str, labels: Sequence[str] | None) -> str:
    """The task's instructions plus, for classification, the closed label list and answer rule.

    >>> print(system_prompt("Route the ticket.", ["billing", "bug"]))
    Route the ticket.
    <BLANKLINE>
    Answer with exactly one label from this list and nothing else: billing, bug
    """
    parts = [instructions.strip()] if instructions.strip() else []
    if labels:
        parts.append("Answer with exactly one label from this list and nothing else: " + ", ".join(labels))
    return "\n\n".join(parts)


@dataclass(frozen=True)
class PromptTemplate:
    """A rung's prompt artifact: what is prepended to each user conversation.

    ``demos`` are (input, output) pairs shown as earlier turns.

    >>> t = PromptTemplate("Be brief.", (("2+2?", "4"),))
    >>> [m["role"] for m in t.render([{"role": "user", "content": "3+3?"}])]
    ['system', 'user', 'assistant', 'user']
    """

    system: str = ""
    demos: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def prefix(self) -> Chat:
        msgs: Chat = [{"role": "system", "content": self.system}] if self.system else []
        for inp, out in self.demos:
            msgs.append({"role": "user", "content": inp})
            msgs.append({"role": "assistant", "content": out})
        return msgs

    def render(self, chat: Sequence[Message], context: str = "") -> Chat:
        """Prefix + the example's own conversation. A system turn in the data replaces ours.

        ``context`` (per-example text, e.g. retrieved passages) opens the last user turn, after
        the cacheable prefix.

        >>> PromptTemplate("Answer from the context.").render([{"role": "user", "content": "Who?"}], "[d1] Ada")[-1]
        {'role': 'user', 'content': '[d1] Ada\\n\\nWho?'}
        """
        own = [dict(m) for m in chat]
        if context:
            last = max((i for i, m in enumerate(own) if m["role"] == "user"), default=None)
            if last is None:
                own.append({"role": "user", "content": context})
            else:
                own[last] = {**own[last], "content": f"{context}\n\n{own[last]['content']}"}
        prefix = self.prefix()
        if own and own[0]["role"] == "system":
            prefix = [m for m in prefix if m["role"] != "system"]
            return [own[0], *prefix, *own[1:]]  # type: ignore[list-item]
        return [*prefix, *own]  # type: ignore[list-item]

    def for_example(self, ex: Example, context: str = "") -> Chat:
        return self.render(ex.chat(), context)

    def to_dict(self) -> dict[str, object]:
        return {"system": self.system, "demos": [list(d) for d in self.demos]}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PromptTemplate:
        demos = d.get("demos") or []
        return cls(str(d.get("system", "")), tuple((str(a), str(b)) for a, b in demos))  # type: ignore[union-attr]


CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4  # role markers and separators of a chat template


def count_tokens_estimate(text: str) -> int:
    """About one token per 4 characters.

    >>> count_tokens_estimate("I was charged twice for my order")
    8
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def chat_tokens_estimate(chat: Sequence[Message]) -> int:
    """Estimated prompt tokens of a chat: content plus per-message template overhead."""
    if not chat:
        return 0
    return sum(count_tokens_estimate(m["content"]) + TOKENS_PER_MESSAGE for m in chat) + 3
