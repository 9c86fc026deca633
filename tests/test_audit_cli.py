"""`rungwise audit`: exit codes 0/1/2, --json, --markdown, --fix, and clean errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_audit import clean_records, to_chat, write_jsonl
from typer.testing import CliRunner

from rungwise.cli import app

runner = CliRunner()


def test_exit_codes_follow_the_verdict(tmp_path: Path) -> None:
    clean = write_jsonl(tmp_path / "clean.jsonl", clean_records())
    r = runner.invoke(app, ["audit", str(clean)])
    assert r.exit_code == 0, r.output
    assert "audit: ready" in r.output and "500-1,000" in " ".join(r.output.split())

    recs = clean_records()
    recs[7] = {"input": recs[7]["input"] + " mail me at ann@example.com", "output": recs[7]["output"]}
    warn = write_jsonl(tmp_path / "warn.jsonl", recs)
    r = runner.invoke(app, ["audit", str(warn)])
    assert r.exit_code == 1, r.output
    assert "ann@example.com" not in r.output and "pii_email" in r.output

    bad = write_jsonl(tmp_path / "bad.jsonl", clean_records(50))
    r = runner.invoke(app, ["audit", str(bad)])
    assert r.exit_code == 2 and "not ready" in r.output


def test_json_and_markdown_outputs(tmp_path: Path) -> None:
    recs = clean_records()
    recs.append(dict(recs[0]))
    p = write_jsonl(tmp_path / "d.jsonl", recs)
    r = runner.invoke(app, ["audit", str(p), "--json"])
    data = json.loads(r.stdout)
    assert data["verdict"] == "ready" and data["exit_code"] == 0
    dup = next(f for f in data["findings"] if f["kind"] == "exact_duplicate")
    assert dup["lines"] == [f"{p}:601"] and dup["count"] == 1
    r = runner.invoke(app, ["audit", str(p), "--markdown"])
    assert r.stdout.startswith("## Data audit: ready") and "| info | exact_duplicate | 1 |" in r.stdout


def test_fix_then_reaudit(tmp_path: Path) -> None:
    recs: list = [to_chat(r) for r in clean_records()]
    recs[3] = "not json at all {"
    recs[9]["messages"][1]["content"] += " card 4111 1111 1111 1111"
    src = write_jsonl(tmp_path / "train.jsonl", recs)
    original = src.read_bytes()
    out = tmp_path / "train.clean.jsonl"
    r = runner.invoke(app, ["audit", str(src), "--fix", str(out), "--mask-pii"])
    assert r.exit_code == 2, r.output  # the verdict of the audited file, not of the copy
    flat = " ".join(r.output.split())  # rich wraps lines at the terminal width
    assert "re-audit of" in flat and "audit: ready (599 clean examples" in flat
    assert src.read_bytes() == original
    assert "[CARD]" in out.read_text() and "4111 1111" not in out.read_text()
    r = runner.invoke(app, ["audit", str(out)])
    assert r.exit_code == 0
    # An existing OUT needs --force; the audited file itself is refused even then.
    r = runner.invoke(app, ["audit", str(src), "--fix", str(out)])
    assert r.exception is not None and "already exists" in str(r.exception)
    r = runner.invoke(app, ["audit", str(src), "--fix", str(src), "--force"])
    assert "refusing to overwrite the audited file" in str(r.exception)
    assert src.read_bytes() == original


def test_columns_and_task_options(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"{r['input']},{r['output']}\n" for r in clean_records()))
    r = runner.invoke(app, ["audit", str(p), "--columns", "text,label"])
    assert r.exit_code == 0, r.output
    (tmp_path / "task.yaml").write_text(
        "name: t\ndata: {path: d.csv, columns: {input: text, output: label}}\nmodel: {backend: scripted}\n"
    )
    r = runner.invoke(app, ["audit", "--task", str(tmp_path / "task.yaml"), "--json"])
    assert json.loads(r.stdout)["source"] == str(p)


def test_bad_input_is_a_clean_error_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"input": "ol\xe9", "output": "x"}\n')
    for args in ([str(tmp_path / "missing.jsonl")], [str(bad)], [str(bad), "--mask-pii"], [str(bad), "--columns", "x"]):
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from rungwise.cli import main; sys.argv = ['rungwise'] + sys.argv[1:]; main()",
             "audit", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert "error:" in proc.stderr and "Traceback" not in proc.stderr and "fix:" in proc.stderr
