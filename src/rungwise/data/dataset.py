"""Load a task's data and split it: the one entry point every rung and the audit share."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from rungwise.config.task import Task
from rungwise.data.loaders import load_examples
from rungwise.data.split import Split, make_split
from rungwise.errors import DataError
from rungwise.types import Example


def _load(task: Task, path: str) -> list[Example]:
    cols = task.data.columns
    return load_examples(task.resolve(path), task.data.format, cols.input, cols.output)


def check_labels(examples: Sequence[Example], labels: Sequence[str]) -> None:
    """Every expected output must be one of the task's labels."""
    allowed = set(labels)
    for ex in examples:
        if ex.output.strip() not in allowed:
            shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
            raise DataError(
                f"{ex.source}: label {ex.output.strip()!r} is not in the task's label set ({shown})",
                hint="fix the label in the data, or add it to `labels` in task.yaml",
            )


def load_split(task: Task) -> Split:
    """Load the task's data, validate labels, and split it deterministically (leaked test rows dropped).

    Example:
        >>> split = load_split(load_task("task.yaml"))  # doctest: +SKIP
        >>> len(split.test), split.leakage.count  # doctest: +SKIP
    """
    d = task.data
    train = _load(task, d.path or d.train or "")
    test = _load(task, d.test) if d.test else None
    if task.labels:
        check_labels(train, task.labels)
        if test:
            check_labels(test, task.labels)
        # Outputs are compared and stratified on the stripped label.
        train = [_strip(e) for e in train]
        test = [_strip(e) for e in test] if test else None
    split = make_split(
        train, test, test_fraction=d.test_fraction, seed=d.seed, stratify=bool(task.labels),
        max_train=d.max_train, max_test=d.max_test,
    )
    if not split.test:
        raise DataError(
            f"{task.resolve(d.path or d.test or '')}: the test split is empty",
            hint="add examples or raise data.test_fraction (every rung is scored on the held-out test split)",
        )
    if not split.train:
        raise DataError(f"{task.resolve(d.path or d.train or '')}: the train split is empty", hint="add examples")
    return split


def _strip(e: Example) -> Example:
    if e.output == e.output.strip():
        return e
    from dataclasses import replace

    return replace(e, output=e.output.strip())


def examples_hash(examples: Sequence[Example]) -> str:
    """Order-sensitive hash of the examples' content ids (provenance in the run store and model cards)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.id.encode())
    return h.hexdigest()[:16]
