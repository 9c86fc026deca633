"""Model backends behind one protocol (see :mod:`rungwise.backends.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rungwise.backends.base import Backend, ProgressFn

if TYPE_CHECKING:
    from rungwise.config.task import ModelSpec

__all__ = ["Backend", "ProgressFn", "check_model", "make_backend"]


def check_model(spec: ModelSpec) -> str:
    """Fail fast, before any work is stored, when the model cannot be found (cheap: no loading).

    Returns the model id recorded in the run store (with the weights' hash where known)."""
    if spec.backend == "local":
        from rungwise import models

        return "local:" + models.resolve(spec.id, spec.gguf_file).display
    if spec.backend == "openai":
        from rungwise.backends.openai_compat import _public_url

        return f"openai:{spec.id}@{_public_url((spec.base_url or '').rstrip('/'))}"
    return f"scripted:{spec.id}"


def make_backend(spec: ModelSpec) -> Backend:
    """Build the backend a task's ``model`` section asks for (heavy imports happen here)."""
    if spec.backend == "scripted":
        from rungwise.backends.scripted import ScriptedBackend

        return ScriptedBackend(spec.script if spec.script is not None else ["ok"], model_id=f"scripted:{spec.id}")
    if spec.backend == "openai":
        from rungwise.backends.openai_compat import OpenAIBackend

        return OpenAIBackend.from_spec(spec)
    from rungwise.backends.local import LocalBackend

    return LocalBackend.from_spec(spec)
