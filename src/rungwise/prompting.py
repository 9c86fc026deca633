"""Building the messages a rung sends: system prompt (+ label list / format rules) + demos + input.

Demos are rendered as prior user/assistant turns, the form chat models follow best, and come
*before* the input so that a fixed demo set forms a shared prompt prefix whose KV cache (or a
provider's prompt cache) can be reused across inputs.
"""

from __future__ import annotations

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

    def render(self, chat: Sequence[Message]) -> Chat:
        """Prefix + the example's own conversation. A system turn in the data replaces ours."""
        own = [dict(m) for m in chat]
        prefix = self.prefix()
        if own and own[0]["role"] == "system":
            prefix = [m for m in prefix if m["role"] != "system"]
            return [own[0], *prefix, *own[1:]]  # type: ignore[list-item]
        return [*prefix, *own]  # type: ignore[list-item]

    def for_example(self, ex: Example) -> Chat:
        return self.render(ex.chat())

    def to_dict(self) -> dict[str, object]:
        return {"system": self.system, "demos": [list(d) for d in self.demos]}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PromptTemplate:
        demos = d.get("demos") or []
        return cls(str(d.get("system", "")), tuple((str(a), str(b)) for a, b in demos))  # type: ignore[union-attr]
