"""prices, cost, decide, scratch and report, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import write_task


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rungwise", *args], capture_output=True, text=True, input=stdin,
        env={**os.environ, "COLUMNS": "200"}, timeout=120,
    )


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p.stdout


def assert_clear_error(p: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    for f in (*fragments, "fix:"):
        assert f in p.stderr, (f, p.stderr)


def test_prices_lists_sources_and_dates() -> None:
    out = ok(run("prices"))
    assert "openai/gpt-4o-mini" in out and "https://openai.com/api/pricing/ (2025-08-01)" in out
    assert "a100-40gb: lambda" in out and "$1.29/GPU-hour" in out
    data = json.loads(ok(run("prices", "--json")))
    assert data["models"]["openai/gpt-4o-mini"]["finetune"]["training_per_1m"] == 3.0
    assert data["gpus"]["h100-sxm"]["peak_bf16_tflops"] == 989


def test_scratch_bloomberggpt_and_bad_gpu() -> None:
    out = ok(run("scratch", "--params", "50B", "--tokens", "709B", "--gpu", "a100", "--gpus", "512", "--mfu", "0.3"))
    assert "51.4 days" in out and "2.13e+23 FLOPs" in out and "That buys" in out
    assert_clear_error(run("scratch", "--params", "7B", "--tokens", "1T", "--gpu", "v100"), "unknown GPU 'v100'")
    assert_clear_error(run("scratch", "--params", "seven", "--tokens", "1T"), "cannot read parameter count")


def test_cost_and_decide_without_a_run(tmp_path: Path) -> None:
    t = write_task(tmp_path, target="accuracy >= 0.9", economics={"daily_volume": 30_000},
                   factors={"update_frequency": "weekly"})
    data = json.loads(ok(run("cost", str(t), "--json")))
    zs, fs = data["rungs"]
    assert data["source"].startswith("estimated tokens")
    assert zs["tokens"]["estimated"] and fs["tokens"]["prompt"] > zs["tokens"]["prompt"]  # demos cost tokens
    # The scripted double runs on this machine: gpt-4o-mini's prices are only a labelled what-if.
    assert zs["daily_volume"] == 30_000 and zs["hosted"] is None
    assert zs["what_if"]["label"] == "what-if: these token counts on openai/gpt-4o-mini" and zs["what_if"]["what_if"]
    out = ok(run("cost", str(t), "--volume", "500", "--price-model", "openai/gpt-4.1-nano"))
    assert "cost at 500 requests/day" in out and "estimated" in out
    assert_clear_error(run("cost", str(t), "--price-model", "nope/model"), "no price for model 'nope/model'")

    out = ok(run("decide", str(t), "--no-ask"))
    assert "update_frequency" in out and "favours prompting" in out and "the factors alone lean: prompting" in out
    # Interactive: answer three questions, skip the rest; the answers are echoed as YAML to keep.
    answers = "high\n120\n\n\n\nmaybe\nno\n\n"  # consistency, examples, (time), (latency), (audit), vocab x2, (knowledge)
    p = run("decide", str(t), "--ask", stdin=answers)
    out = ok(p)
    assert "output_consistency: high" in out and "clean_examples: 120" in out
    assert "proprietary_vocabulary: false" in out and "answer y or n" in p.stderr


def test_climb_then_cost_decide_and_report(tmp_path: Path) -> None:
    t = write_task(tmp_path, target="accuracy >= 0.3", economics={"daily_volume": 2_000, "self_host_gpu": "t4"})
    ok(run("climb", str(t), "--all", "--no-progress"))
    cost = json.loads(ok(run("cost", str(t), "--run", "latest", "--json")))
    assert cost["source"].startswith("measured tokens of run")
    assert not cost["rungs"][0]["tokens"]["estimated"] and cost["rungs"][0]["self_hosted"]["replicas"] == 1
    # The terminal labels the hosted what-if as one, apart from the measured model's costs.
    out = ok(run("cost", str(t), "--run", "latest"))
    assert "what-if: on openai/gpt-4o-mini $/1k" in out and "$/month (best)" in out
    assert "what-if: the measured token counts on openai/gpt-4o-mini" in out
    dec = json.loads(ok(run("decide", str(t), "--run", "latest", "--no-ask", "--json")))
    assert dec["verdict"]["recommended"] == "zero_shot"  # the scripted model answers 'billing': ~1/3 correct
    out = ok(run("decide", str(t), "--run", "latest", "--no-ask"))
    assert "Recommended: zero_shot" in out and "reasons:" in out
    out_dir = tmp_path / "rep"
    out = ok(run("report", "latest", "--out", str(out_dir)))
    assert "wrote html" in out and (out_dir / "report.html").exists() and (out_dir / "report.md").exists()
    assert json.loads((out_dir / "report.json").read_text())["verdict"]["recommended"] == "zero_shot"
    assert_clear_error(run("report", "999"), "no run 999")


def test_prices_show_the_catalog_age_and_warn_when_stale() -> None:
    fresh = ok(run("prices", "--as-of", "2026-12-01"))
    assert "price catalog revised 2026-11-30, 1 days old on 2026-12-01" in fresh
    assert "the catalog was revised" not in fresh  # not older than 183 days
    assert "ended 2026-02-19" in fresh and "closed to new customers since 2026-05-07" in fresh
    stale = ok(run("prices", "--as-of", "2027-09-01"))
    assert "warning: the catalog was revised 2026-11-30, 275 days before 2027-09-01 (more than 183)" in stale
    assert "override prices under economics.prices in task.yaml" in stale
    data = json.loads(ok(run("prices", "--json", "--as-of", "2027-09-01")))
    assert data["catalog_age_days"] == 275 and data["warnings"]
    assert data["models"]["openai/gpt-4o-mini"]["finetune_availability_now"] == "ended 2027-01-06"
    assert_clear_error(run("prices", "--as-of", "tomorrow"), "--as-of 'tomorrow' is not a date")


def test_cost_of_the_sample_task_before_and_after_openai_closes_fine_tuning(tmp_path: Path) -> None:
    ok(run("init", str(tmp_path / "demo")))
    t = str(tmp_path / "demo" / "task.yaml")
    before = json.loads(ok(run("cost", t, "--as-of", "2026-01-01", "--json")))
    after = json.loads(ok(run("cost", t, "--as-of", "2027-02-01", "--json")))
    ft_before = next(r for r in before["rungs"] if r["rung"] == "finetune")
    ft_after = next(r for r in after["rungs"] if r["rung"] == "finetune")
    # 2026-01-01: gpt-4o-mini fine-tuning is open to anyone; priced as the labelled what-if.
    assert ft_before["what_if"]["label"] == "what-if: these token counts on openai/gpt-4o-mini (fine-tuned)"
    assert ft_before["what_if"]["one_off"]["training_usd"] > 0 and not ft_before["left_out"]
    # 2027-02-01: it has ended for everyone: left out, with why and what remains.
    assert ft_after["what_if"] is None
    [why] = ft_after["left_out"]
    assert "hosted fine-tuning of openai/gpt-4o-mini left out: ended 2027-01-06" in why
    assert "self-hosted LoRA" in why and "google/gemini-2.5-flash fine-tuning (only through Vertex AI" in why
    assert after["pricing"]["as_of"] == "2027-02-01" and before["pricing"]["as_of"] == "2026-01-01"
    # Prompting rungs keep the hosted what-if on both dates.
    zero_before, zero_after = (next(r for r in d["rungs"] if r["rung"] == "zero_shot") for d in (before, after))
    assert zero_before["what_if"] and zero_after["what_if"]
    out = ok(run("cost", t, "--as-of", "2027-02-01"))
    assert "left out" in out and "ended 2027-01-06" in out
