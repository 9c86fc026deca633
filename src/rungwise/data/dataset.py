"""Load a task's data and split it: the one entry point every rung and the audit share."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from rungwise.config.task import Task, label_lookalike
from rungwise.data.loaders import load_examples
from rungwise.data.split import Split, make_split
from rungwise.errors import DataError
from rungwise.types import Example


def _load(task: Task, path: str) -> list[Example]:
    cols = task.data.columns
    return load_examples(task.resolve(path), task.data.format, cols.input, cols.output, base_dir=task.base_dir)


def check_labels(examples: Sequence[Example], labels: Sequence[str]) -> None:
    """Every expected output must be one of the task's labels."""
    allowed = set(labels)
    for ex in examples:
        out = ex.output.strip()
        if out not in allowed:
            twin = label_lookalike(out, labels)
            if twin:
                raise DataError(
                    f"{ex.source}: label {twin}",
                    hint="write the label with the same characters as in task.yaml (e.g. save both files as NFC)",
                )
            shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
            raise DataError(
                f"{ex.source}: label {out!r} is not in the task's label set ({shown})",
                hint="fix the label in the data, or add it to `labels` in task.yaml",
            )


def split_warnings(split: Split, labels: Sequence[str] | None) -> list[str]:
    """What this split will do to the rungs that the user should know before they run.

    A train split whose examples all share one expected output gives few-shot demos and
    fine-tuning nothing to tell apart: those rungs can only learn to answer that output.

    >>> from rungwise.data.split import Leakage
    >>> split_warnings(Split([Example("a", "x"), Example("b", "x")], [Example("c", "y")], Leakage(), 0), ["x", "y"])[0][:47]
    "the train split's 2 examples all have label 'x'"
    """
    outputs = {e.output for e in split.train}
    if len(split.train) < 2 or len(outputs) != 1:
        return []
    (only,) = outputs
    others = f" (task.yaml lists {len(labels)})" if labels else ""
    return [
        f"the train split's {len(split.train)} examples all have {'label' if labels else 'the output'} {only!r}{others}: "
        f"few-shot demos and fine-tuning see no other answer, so those rungs can only learn to answer {only!r}; "
        "add train examples of the other labels"
    ]


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
    split.warnings += split_warnings(split, task.labels)
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
