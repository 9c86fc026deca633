"""User-facing errors.

Anything the user can fix (a bad file, a missing field, a missing extra) raises a
:class:`RungwiseError`. The CLI prints its message, without a traceback, and exits with
``exit_code`` (2 by default). The message always says *where* (file:line or field) and
*what to do*.
"""

from __future__ import annotations


class RungwiseError(Exception):
    """An error caused by input the user controls; printed without a traceback.

    Example:
        >>> raise RungwiseError("data.jsonl:3: missing field 'output'", hint="add an 'output' key")
    """

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None) -> None:
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class DataError(RungwiseError):
    """A data file is malformed (bad line, missing field, wrong encoding, empty)."""


class ConfigError(RungwiseError):
    """task.yaml (or another config) is invalid."""


class BackendError(RungwiseError):
    """A model backend failed in a way the user can act on (missing model, bad endpoint)."""


class MissingDependency(RungwiseError):
    """An optional extra is not installed."""


class Unsupported(RungwiseError):
    """The operation is not supported by this backend or on this hardware."""
