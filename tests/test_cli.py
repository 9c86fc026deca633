"""The real command line, run as a user would (a subprocess), on bad and good input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ticket_rows, write_jsonl, write_task


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rungwise", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=120,
    )


def assert_clear_error(p: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    for f in fragments:
        assert f in p.stderr, (f, p.stderr)
    assert "fix:" in p.stderr


def test_malformed_jsonl(tmp_path: Path) -> None:
    t = write_task(tmp_path)
    with open(tmp_path / "data.jsonl", "a") as f:
        f.write('{"input": "oops", "output": \n')
    assert_clear_error(run("climb", str(t)), "data.jsonl:31", "malformed JSON")


def test_missing_field(tmp_path: Path) -> None:
    rows = ticket_rows()
    rows[4] = {"input": rows[4]["input"], "answer": "bug"}
    write_jsonl(tmp_path / "data.jsonl", rows)
    t = write_task(tmp_path, data={"path": "data.jsonl"})
    assert_clear_error(run("climb", str(t)), "data.jsonl:5", "missing field 'output'")


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text("")
    t = write_task(tmp_path, data={"path": "data.jsonl"})
    assert_clear_error(run("climb", str(t)), "data.jsonl", "no examples")


def test_label_outside_label_set(tmp_path: Path) -> None:
    rows = ticket_rows()
    rows[7]["output"] = "refund"
    write_jsonl(tmp_path / "data.jsonl", rows)
    t = write_task(tmp_path, data={"path": "data.jsonl"})
    assert_clear_error(run("climb", str(t)), "data.jsonl:8", "'refund' is not in the task's label set")


def test_non_utf8(tmp_path: Path) -> None:
    t = write_task(tmp_path)
    with open(tmp_path / "data.jsonl", "ab") as f:
        f.write(b'{"input": "caf\xe9", "output": "bug"}\n')
    assert_clear_error(run("climb", str(t)), "data.jsonl:31", "not valid UTF-8")


def test_unknown_metric(tmp_path: Path) -> None:
    t = write_task(tmp_path, metric="acurracy")
    assert_clear_error(run("climb", str(t)), "acurracy")


def test_invalid_yaml(tmp_path: Path) -> None:
    t = tmp_path / "task.yaml"
    t.write_text("name: x\ndata:\n  path: data.jsonl\n   seed: 3\n")
    assert_clear_error(run("climb", str(t)), "task.yaml:4", "invalid YAML")


def test_missing_model(tmp_path: Path) -> None:
    t = write_task(tmp_path, model={"backend": "local", "id": str(tmp_path / "no-such-model")})
    assert_clear_error(run("climb", str(t)), "no-such-model")


def test_missing_task_file(tmp_path: Path) -> None:
    assert_clear_error(run("climb", str(tmp_path / "nope.yaml")), "no such task file")


def test_init_then_climb_scripted_json_and_runs(tmp_path: Path) -> None:
    d = tmp_path / "proj"
    p = run("init", str(d))
    assert p.returncode == 0, p.stderr
    assert (d / "task.yaml").exists() and sum(1 for _ in open(d / "data.jsonl")) >= 150
    # never overwrite what the user has
    (d / "task.yaml").write_text("mine")
    assert_clear_error(run("init", str(d)), "never overwrites")
    assert (d / "task.yaml").read_text() == "mine"

    t = write_task(tmp_path, target="accuracy >= 0.9")
    p = run("climb", str(t), "--all", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "zero_shot" in p.stdout and "few_shot" in p.stdout and "format-valid" in p.stdout
    p = run("climb", str(t), "--json", "--rungs", "zero_shot", "--limit", "3")
    data = json.loads(p.stdout)
    assert data["n_test"] == 3 and data["rungs"][0]["rung"] == "zero_shot"
    assert {"value", "ci_low", "ci_high"} <= set(data["rungs"][0]["metric"])
    p = run("runs", "list", "--json")
    runs = json.loads(p.stdout)
    assert len(runs) == 2 and runs[0]["status"] == "done"
    p = run("runs", "show", str(runs[0]["id"]))
    assert p.returncode == 0 and "zero_shot" in p.stdout
    assert_clear_error(run("runs", "show", "999"), "no run 999")


@pytest.mark.parametrize("cmd", [["--help"], ["climb", "--help"], ["runs", "--help"], ["init", "--help"]])
def test_help(cmd: list[str]) -> None:
    p = run(*cmd)
    assert p.returncode == 0 and "Usage" in p.stdout
