"""Model backends behind one protocol (see :mod:`rungwise.backends.base`).

Each backend module holds its config model (``LocalSpec``, ``OpenAISpec``, ``ScriptedSpec``: the
``model:`` section for that backend) next to its implementation; the backend registry
(:data:`rungwise.registry.BACKENDS`) maps ``model.backend`` to the config model.
"""

from __future__ import annotations

from rungwise.backends.base import Backend, ProgressFn
from rungwise.config.model import ModelSpec

__all__ = ["Backend", "ProgressFn", "make_backend"]


def make_backend(spec: ModelSpec) -> Backend:
    """Build the backend a task's ``model`` section asks for (heavy imports happen here)."""
    return spec.build()
