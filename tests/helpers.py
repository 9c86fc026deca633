"""Small builders shared by tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ticket_rows(n_per_label: int = 10) -> list[dict[str, str]]:
    words = {"billing": "invoice charge", "bug": "crash error", "account": "password login"}
    return [
        {"input": f"ticket {i} about {w} number {i * 7 % 13}", "output": lab}
        for lab, w in words.items()
        for i in range(n_per_label)
    ]


def write_task(dirpath: Path, data: dict[str, Any] | None = None, **over: Any) -> Path:
    """A scripted-backend classification task; the script answers 'billing' to everything."""
    if data is None:
        write_jsonl(dirpath / "data.jsonl", ticket_rows())
        data = {"path": "data.jsonl", "test_fraction": 0.3, "seed": 1}
    task: dict[str, Any] = {
        "name": "t",
        "data": data,
        "instructions": "Route the ticket.",
        "labels": ["billing", "bug", "account"],
        "metric": "accuracy",
        "model": {"backend": "scripted", "script": {"default": "billing"}},
        # The two prompting rungs most tests climb (a label task's default order starts with classic).
        "rungs": {"order": ["zero_shot", "few_shot"]},
    }
    task.update(over)
    p = dirpath / "task.yaml"
    p.write_text(yaml.safe_dump(task, sort_keys=False))
    return p
