"""Rungs of the ladder: one file per rung, found through the rung registry.

:mod:`rungwise.rungs.base` is the contract every rung implements; built-in rungs live in this
package (``classic``, ``zero_shot``, ``constrained``, ``few_shot``, ``rag``, ``finetune``, ``hybrid``,
``adapter``, ...; ``rungwise rungs`` lists them) and plugins add theirs
through the ``rungwise.rungs`` entry-point group (see :mod:`rungwise.registry`).

Example:
    >>> from rungwise.registry import RUNGS
    >>> RUNGS.names()[:2]
    ['zero_shot', 'few_shot']
"""

from __future__ import annotations

from rungwise.rungs.base import (
    Answer,
    BackendPool,
    Prepared,
    PromptArtifact,
    PromptPlan,
    Rung,
    RungArtifact,
    RungContext,
    RungSkipped,
    Scored,
)
from rungwise.rungs.workspace import Workspace, get_rung, read_artifact

__all__ = [
    "Answer",
    "BackendPool",
    "Prepared",
    "PromptArtifact",
    "PromptPlan",
    "Rung",
    "RungArtifact",
    "RungContext",
    "RungSkipped",
    "Scored",
    "Workspace",
    "get_rung",
    "read_artifact",
]
