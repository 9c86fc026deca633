"""The one base model of every task.yaml section and catalog entry.

Unknown keys are almost always typos, so every section forbids them and says so instead of
ignoring them; ``protected_namespaces=()`` lets fields be called ``model_*``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A pydantic model that rejects unknown keys.

    Example:
        >>> class Section(Strict):
        ...     k: int = 5
        >>> Section.model_validate({"k": 3}).k
        3
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
