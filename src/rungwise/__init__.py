"""rungwise: measure the customization ladder on your own data, priced, with a verdict.

The Python API mirrors the CLI::

    import rungwise
    task = rungwise.load_task("task.yaml")
    result = rungwise.climb(task, all_rungs=True)

Heavy stacks (torch, transformers, peft) are imported only where used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "climb", "load_task"]


def __getattr__(name: str) -> Any:
    # Lazy exports keep `import rungwise` light.
    if name == "load_task":
        from rungwise.config.task import load_task

        return load_task
    if name == "climb":
        from rungwise.climb import climb

        return climb
    if name == "audit":
        from rungwise.data.audit import audit

        return audit
    raise AttributeError(name)
