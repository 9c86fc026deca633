"""Running the user's own code named in task.yaml: ``python:module:function`` (a module beside
task.yaml, an installed one, or ``python:file.py:function``).

A metric, a data loader and a knowledge-source loader can be the user's code. A task file from
someone else is therefore code: read the module it names before climbing it.

Example:
    >>> fn = load_function("python:my_metrics:score", Path("."), field="metric.name")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rungwise.errors import ConfigError

PREFIX = "python:"


def is_user_code(name: str) -> bool:
    return name.strip().startswith(PREFIX)


def load_function(spec: str, base_dir: Path, *, field: str, what: str = "function") -> Callable[..., Any]:
    """The callable ``spec`` names; every failure is a :class:`ConfigError` naming ``field``.

    The task's directory goes on ``sys.path`` only for the import, so a module next to task.yaml
    works without installing it and without changing global state.
    """
    parts = spec.strip().split(":")
    if len(parts) != 3 or parts[0] != "python" or not parts[1] or not parts[2]:
        raise ConfigError(
            f"field '{field}': {spec!r} is not of the form python:module:function",
            hint=f"e.g. python:my_{what}s:{what}, with my_{what}s.py next to task.yaml",
        )
    _, mod_name, fn_name = parts
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).expanduser()
            path = path if path.is_absolute() else base_dir / path
            if not path.is_file():
                raise ConfigError(f"field '{field}': {what} file {path} not found", hint="give the file path relative to task.yaml")
            mod_spec = importlib.util.spec_from_file_location(f"rungwise_user_{path.stem}", path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            here = str(base_dir.resolve())
            added = here not in sys.path
            if added:
                sys.path.insert(0, here)
            try:
                module = importlib.import_module(mod_name)
            finally:
                if added:
                    sys.path.remove(here)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"field '{field}': cannot import module {mod_name!r} ({exc})",
            hint=f"put {mod_name.replace('.', '/')}.py next to task.yaml, install its package, or add its "
            "directory to PYTHONPATH",
        ) from None
    except Exception as exc:  # a syntax error or a failing import inside the user's module
        raise ConfigError(
            f"field '{field}': importing {mod_name!r} failed: {type(exc).__name__}: {exc}",
            hint=f"fix the error in the {what} module",
        ) from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        funcs = sorted(n for n, o in vars(module).items() if inspect.isfunction(o) and not n.startswith("_"))
        raise ConfigError(
            f"field '{field}': module {mod_name!r} has no function {fn_name!r}",
            hint=f"functions there: {', '.join(funcs) or 'none'}",
        )
    return fn
