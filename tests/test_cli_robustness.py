"""The real command line on usage errors, Ctrl-C, hostile names and broken stores (issue 12)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import assert_clear_error, run

from helpers import write_task

# -- 1: usage errors ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "args, message",
    [
        (["climb"], "Missing argument 'TASK'"),
        (["climb", "t/task.yaml", "--bogus"], "No such option: --bogus"),
        (["climb", "t/task.yaml", "--limit", "0"], "'--limit'"),
        (["runs", "show", "abc"], "'ID'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_usage_errors_exit_2_with_the_usage_line(args: list[str], message: str) -> None:
    p = run(*args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "Usage:" in p.stderr and message in p.stderr, p.stderr


# -- 2: Ctrl-C ------------------------------------------------------------------------------------

# A metric that signals when scoring starts, then takes its time; with STUBBORN it also ignores
# the first KeyboardInterrupt, as a cleanup that hangs would.
SLOW_METRIC = '''
import os, time
from pathlib import Path

def score(prediction, example):
    Path(os.environ["RW_TEST_MARK"]).touch()
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        if not os.environ.get("RW_TEST_STUBBORN"):
            raise
        Path(os.environ["RW_TEST_MARK"] + ".cleanup").touch()
        while True:
            try:
                time.sleep(60)
            except KeyboardInterrupt:
                pass
    return 1.0
'''


def _start_slow_climb(tmp_path: Path, stubborn: bool) -> tuple[subprocess.Popen[str], Path]:
    (tmp_path / "slow_metric.py").write_text(SLOW_METRIC)
    t = write_task(tmp_path, metric="python:slow_metric:score")
    mark = tmp_path / "scoring"
    env = {**os.environ, "COLUMNS": "200", "RW_TEST_MARK": str(mark), **({"RW_TEST_STUBBORN": "1"} if stubborn else {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rungwise", "climb", str(t), "--rungs", "zero_shot", "--no-progress"],
        cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    deadline = time.monotonic() + 60
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the climb never reached scoring"
        time.sleep(0.05)
    return proc, mark


def test_ctrl_c_exits_130_and_marks_the_run_interrupted(tmp_path: Path) -> None:
    proc, _ = _start_slow_climb(tmp_path, stubborn=False)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "interrupted: resume with" in err and "Traceback" not in err
    runs = json.loads(run("runs", "list", "--json").stdout)
    assert [r["status"] for r in runs] == ["interrupted"]


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    proc, mark = _start_slow_climb(tmp_path, stubborn=True)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while not Path(str(mark) + ".cleanup").exists():
        assert time.monotonic() < deadline, "the first Ctrl-C never reached the metric"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)  # the stubborn cleanup would sleep forever
    assert proc.returncode == -signal.SIGINT


# -- 9: a broken store or home, init on a file -----------------------------------------------------

def test_a_corrupt_store_is_a_clear_error_and_never_overwritten(tmp_path: Path, rungwise_home: Path) -> None:
    rungwise_home.mkdir()
    db = rungwise_home / "runs.db"
    junk = b"not a database at all\n" * 500
    db.write_bytes(junk)
    for args in (["runs", "list"], ["runs", "show", "1"], ["climb", str(write_task(tmp_path))]):
        assert_clear_error(run(*args), "runs.db", "not a readable rungwise run store")
    assert db.read_bytes() == junk


def test_rungwise_home_pointing_at_a_file(tmp_path: Path) -> None:
    f = tmp_path / "home-file"
    f.write_text("mine")
    assert_clear_error(run("runs", "list", env={"RUNGWISE_HOME": str(f)}), "home-file", "is a file, not a directory")
    assert f.read_text() == "mine"


def test_init_given_an_existing_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert_clear_error(run("init", str(f)), "notes.txt: is a file, not a directory")
    assert f.read_text() == "mine"


# -- 6: user text is printed, never read as rich markup ---------------------------------------------

def test_markup_in_a_task_name_is_printed_as_written(tmp_path: Path) -> None:
    name = "bad[/]name [bold]x[/bold] [red]"
    t = write_task(tmp_path, name=name, target="accuracy >= 0.9")
    p = run("climb", str(t), "--all", "--no-progress")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert f"{name}: the ladder" in p.stdout
    for args in (["runs", "list"], ["runs", "show", "1"]):
        p = run(*args)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (args, p.stderr)
        assert name in p.stdout, (args, p.stdout)


def test_markup_in_labels_is_printed_by_audit(tmp_path: Path) -> None:
    from test_audit import clean_records
    from test_audit import write_jsonl as write_records

    recs = clean_records()
    recs[5] = {"input": recs[5]["input"], "output": "[/urgent]"}  # a label seen once: a rare_label finding
    recs[11] = {"input": recs[11]["input"], "output": "[urgent]"}
    data = write_records(tmp_path / "train.jsonl", recs)
    p = run("audit", str(data))
    assert p.returncode in (0, 1) and "Traceback" not in p.stderr, p.stderr
    flat = " ".join(p.stdout.split())
    assert "'[/urgent]'" in flat and "'[urgent]'" in flat, p.stdout


def test_markup_in_price_entries_is_printed_as_written(tmp_path: Path) -> None:
    econ = {"price_model": "acme/[/]llm", "prices": {"models": {"acme/[/]llm": {
        "input_per_1m": 0.2, "output_per_1m": 0.8, "source": "our [bold]contract", "date": "2025-06-01", "note": "[/note]"}}}}
    t = write_task(tmp_path, economics=econ)
    p = run("prices", "--task", str(t))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "acme/[/]llm" in p.stdout and "our [bold]contract (2025-06-01); [/note]" in p.stdout, p.stdout


# -- 14: a python: metric runs code, and the scaffold says so ---------------------------------------

def test_init_warns_that_a_python_metric_runs_code(tmp_path: Path) -> None:
    p = run("init", str(tmp_path / "proj"))
    assert p.returncode == 0, p.stderr
    text = " ".join((tmp_path / "proj" / "task.yaml").read_text().replace("#", " ").split())
    assert "python:module:function imports and runs that Python code" in text
    assert "a task.yaml from someone else is code" in text
