"""Where rungwise keeps its data: the run store, model caches, artifacts.

``RUNGWISE_HOME`` moves it (tests point it at a temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The data directory (``$RUNGWISE_HOME``, default ``~/.rungwise``), created on first use."""
    p = Path(os.environ.get("RUNGWISE_HOME") or Path.home() / ".rungwise").expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def sub(*parts: str) -> Path:
    p = home().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
