"""Where rungwise keeps its data: the run store, model caches, artifacts.

``RUNGWISE_HOME`` moves it (tests point it at a temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from rungwise.errors import RungwiseError


def _directory(p: Path) -> Path:
    """``p`` as an existing directory, created if missing; a clear error if it cannot be one."""
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RungwiseError(
            f"{p}: rungwise's data directory is a file, not a directory",
            hint="set RUNGWISE_HOME to a directory (it is created if missing), or move that file away",
        ) from None
    except OSError as exc:
        raise RungwiseError(
            f"{p}: cannot create rungwise's data directory ({exc.strerror})",
            hint="set RUNGWISE_HOME to a directory you can write to",
        ) from None
    return p


def home() -> Path:
    """The data directory (``$RUNGWISE_HOME``, default ``~/.rungwise``), created on first use.

    Example:
        >>> home()  # doctest: +SKIP
        PosixPath('/home/me/.rungwise')
    """
    return _directory(Path(os.environ.get("RUNGWISE_HOME") or Path.home() / ".rungwise").expanduser())


def sub(*parts: str) -> Path:
    """A subdirectory of :func:`home`, created on first use."""
    return _directory(home().joinpath(*parts))
