"""`rungwise compare` and `rungwise gate` on real stored climbs (scripted models standing in for
an old and a new base model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ticket_rows, write_task
from rungwise.backends.scripted import ScriptedBackend
from rungwise.climb import climb
from rungwise.compare import compare_runs, gate
from rungwise.config.task import load_task
from rungwise.errors import RungwiseError

ORACLE = {r["input"]: r["output"] for r in ticket_rows(20)}


def _runs(tmp_path: Path) -> tuple[int, int]:
    task = load_task(write_task(tmp_path, data=None, target="accuracy >= 0.9"))
    from helpers import write_jsonl

    write_jsonl(tmp_path / "data.jsonl", ticket_rows(20))
    task = load_task(tmp_path / "task.yaml")
    old = climb(task, all_rungs=True, backend=ScriptedBackend({"default": "billing"}))
    new = climb(task, all_rungs=True, backend=ScriptedBackend(lambda chat: ORACLE.get(chat[-1]["content"], "bug")))
    return old.run_id, new.run_id


def test_compare_pairs_each_rung_on_the_same_examples(tmp_path: Path) -> None:
    a, b = _runs(tmp_path)
    c = compare_runs(a, b)
    assert [p.rung for p in c.rungs] == ["zero_shot", "few_shot"] and c.n_test == 18
    zs = c.rungs[0]
    assert zs.a.value == pytest.approx(1 / 3) and zs.b.value == 1.0
    assert zs.comparison.delta == pytest.approx(2 / 3) and zs.comparison.significant
    assert not zs.a_meets and zs.b_meets
    assert c.a_recommended is None and c.b_recommended == "zero_shot"
    assert "zero_shot now meets the target" in c.verdict_change


def test_gate_passes_an_improvement_and_fails_a_regression(tmp_path: Path) -> None:
    a, b = _runs(tmp_path)
    assert gate(b, baseline=a).passed
    worse = gate(a, baseline=b)
    assert not worse.passed
    reasons = {ch.rung: ch.reason for ch in worse.checks}
    assert "does not meet accuracy >= 0.9" in reasons["zero_shot"] and "significantly worse than run" in reasons["zero_shot"]
    # Without a baseline the gate checks what would ship: the recommended rung against the target.
    assert gate(b).passed and [ch.rung for ch in gate(b).checks] == ["zero_shot"]
    assert not gate(a).passed


def test_compare_refuses_different_test_splits(tmp_path: Path) -> None:
    a, _ = _runs(tmp_path)
    other = load_task(write_task(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path))
    c = climb(other, limit=4, backend=ScriptedBackend({"default": "billing"}))
    with pytest.raises(RungwiseError, match="different test splits") as err:
        compare_runs(a, c.run_id)
    assert "same data, split seed and --limit" in (err.value.hint or "")


def test_the_cli_gate_exits_1_on_a_regression_with_a_json_summary(tmp_path: Path) -> None:
    a, b = _runs(tmp_path)
    code = "import sys; from rungwise.cli import main; sys.argv = ['rungwise'] + sys.argv[1:]; main()"
    p = subprocess.run([sys.executable, "-c", code, "gate", str(a), "--baseline", str(b), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    summary = json.loads(p.stdout)
    assert summary["passed"] is False and summary["baseline"] == b
    p = subprocess.run([sys.executable, "-c", code, "gate", str(b), "--baseline", str(a)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "gate: passed" in p.stdout
    p = subprocess.run([sys.executable, "-c", code, "compare", str(a), str(b)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "+0.667" in p.stdout and "verdict: zero_shot now meets the target" in p.stdout
