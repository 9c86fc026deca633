"""The ``model:`` section of task.yaml: which backend answers, one config model per backend.

``backend`` picks the model class from the backend registry (:data:`rungwise.registry.BACKENDS`):
``local`` (transformers on this machine), ``openai`` (any OpenAI-compatible endpoint),
``scripted`` (the test double), or a plugin's. Each backend's class lives next to its
implementation and adds its own fields; the fields every backend shares are here.

Example (task.yaml)::

    model:
      backend: openai
      base_url: http://127.0.0.1:8000/v1
      id: my-model
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from rungwise.config.base import Strict
from rungwise.registry import BACKENDS, UnknownName
from rungwise.types import GenParams

if TYPE_CHECKING:
    from rungwise.backends.base import Backend

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_BACKEND = "local"


class GenParamsSpec(Strict):
    """Generation parameters."""

    max_tokens: int = Field(32, gt=0, description="Maximum new tokens per answer.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy (deterministic, the default for evaluation).")
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=lambda: ["\n\n"], description="Stop sequences.")
    seed: int | None = Field(0, description="Sampling seed where the backend supports one.")

    def to_params(self) -> GenParams:
        return GenParams(self.max_tokens, self.temperature, self.top_p, tuple(self.stop), self.seed)


class ModelSpec(Strict):
    """What every backend's config has: the backend's name, the model, generation parameters.

    A backend subclasses it with its own fields and implements :meth:`build` and :meth:`describe`.
    """

    backend: str = Field(
        DEFAULT_BACKEND,
        description="local: transformers on this machine (private by default); openai: any OpenAI-compatible "
        "endpoint (vLLM, llama.cpp server, Ollama, OpenAI); scripted: the deterministic test double; or a "
        "plugin's backend (`rungwise backends` lists them).",
    )
    id: str = Field(
        DEFAULT_MODEL,
        description=f"Model: '{DEFAULT_MODEL}' (the embedded GGUF), a local directory, a .gguf file, or a hub id "
        "(local); the served model name (openai).",
    )
    params: GenParamsSpec = Field(default_factory=GenParamsSpec)

    def build(self) -> Backend:
        """Make the backend (heavy imports and model loading happen here)."""
        raise TypeError(f"{type(self).__name__} does not build a backend; subclass ModelSpec for your backend")

    def describe(self) -> str:
        """The model id recorded in the run store; cheap, and fails fast when the model is missing."""
        return f"{self.backend}:{self.id}"

    def constraint_support(self) -> str | None:
        """How this deployment constrains output to a format (for the verdict), or None if it cannot."""
        return None


def model_spec_from(raw: Any) -> ModelSpec:
    """Validate a ``model:`` mapping with the config model of the backend it names.

    Raises pydantic's ValidationError (field errors) or ValueError (an unknown backend), which
    task.yaml loading turns into ``file:line`` messages.
    """
    if isinstance(raw, ModelSpec):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError("expected a mapping such as {backend: local, id: smollm2-135m-instruct}")
    name = raw.get("backend", DEFAULT_BACKEND)
    try:
        cls: type[ModelSpec] = BACKENDS.get(str(name))
    except UnknownName as exc:
        raise ValueError(f"{exc.message}; use one of: {', '.join(BACKENDS.names())}") from None
    return cls.model_validate(raw)
