"""The backend protocol: one abstract method, ``generate``.

A backend turns a batch of chat-message lists into completions. Backends that can score
given continuations implement ``loglikelihood`` too (used for multiple-choice probes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from rungwise.errors import Unsupported
from rungwise.types import Chat, Completion, GenParams

# Called with the number of newly finished prompts, for progress bars.
ProgressFn = Callable[[int], None]

#: The logger a backend reports its waits on (a retry after a 429, a 5xx or a timeout): an INFO
#: record per wait, with the attributes ``retry_wait_s`` (seconds) and ``retry_reason`` (e.g.
#: "HTTP 429"). A progress display counts them (the CLI's climb bar does).
WAITS_LOGGER = "rungwise.waits"


class Backend(ABC):
    """Base class of every model backend.

    Example:
        >>> from rungwise.backends.scripted import ScriptedBackend
        >>> b = ScriptedBackend(["billing"])
        >>> b.generate([[{"role": "user", "content": "charged twice"}]], GenParams())[0].text
        'billing'
    """

    #: name used in the run store, e.g. "local:smollm2-135m-instruct@b179c9523d0e"
    model_id: str = "unknown"

    @abstractmethod
    def generate(
        self, prompts: Sequence[Chat], params: GenParams, progress: ProgressFn | None = None
    ) -> list[Completion]:
        """Answer every prompt (a list of chat messages), in order."""

    def loglikelihood(self, prompts: Sequence[Chat], choices: Sequence[Sequence[str]]) -> list[list[float]]:
        """Sum of log-probabilities of each choice as the assistant's answer to its prompt."""
        raise Unsupported(f"{type(self).__name__} cannot score choices by log-likelihood")

    def count_tokens(self, text: str) -> int:
        """Token count of ``text`` with this backend's tokenizer (an estimate where there is none)."""
        return max(1, len(text) // 4)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (models, HTTP clients)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
