"""``rungwise compare`` (two climbs side by side) and ``rungwise gate`` (a CI check)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rungwise.errors import RungwiseError
from rungwise.money import usd

console = Console(width=None if sys.stdout.isatty() else 140)


def _run_id(value: str) -> int:
    from rungwise.store import Store

    if value == "latest":
        rows = Store().list_climbs(limit=1)
        if not rows:
            raise RungwiseError("no runs in the store yet", hint="run `rungwise climb task.yaml` first")
        return int(rows[0]["id"])
    if not value.isdigit():
        raise RungwiseError(f"run {value!r} is not a run id", hint="give a number from `rungwise runs list`, or latest")
    return int(value)


def register(app: typer.Typer) -> None:
    @app.command()
    def compare(
        run_a: Annotated[str, typer.Argument(help="The earlier climb (run id).", metavar="RUN_A")],
        run_b: Annotated[str, typer.Argument(help="The later climb of the same task and split (run id or latest).",
                                             metavar="RUN_B")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    ) -> None:
        """Two climbs of the same task and test split (a new base model, prompt or data): per rung both scores,
        the paired difference with its CI and test, tokens and cost per call, and what it does to the verdict."""
        from rungwise.compare import compare_runs

        c = compare_runs(_run_id(run_a), _run_id(run_b))
        if as_json:
            print(json.dumps(c.to_dict(), indent=2, default=str))
            return
        t = Table(title=f"{escape(c.task)}: run {c.a_run} -> run {c.b_run} (n_test={c.n_test}, same test split)",
                  title_justify="left")
        for col, just in [("rung", "left"), (f"run {c.a_run} [95% CI]", "right"), (f"run {c.b_run} [95% CI]", "right"),
                          ("difference [95% CI]", "right"), ("p", "right"), ("tokens/call", "right"),
                          ("$/1k requests", "right"), ("meets target", "center")]:
            t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
        for p in c.rungs:
            cm = p.comparison
            t.add_row(
                escape(p.rung), f"{p.a.value:.3f} [{p.a.ci_low:.3f}, {p.a.ci_high:.3f}]",
                f"{p.b.value:.3f} [{p.b.ci_low:.3f}, {p.b.ci_high:.3f}]",
                f"{cm.delta:+.3f} [{cm.ci_low:+.3f}, {cm.ci_high:+.3f}]", f"{cm.p_value:.2g}" + (" *" if cm.significant else ""),
                f"{p.a_tokens:,.0f} -> {p.b_tokens:,.0f}", f"{usd(p.a_per_1k_usd)} -> {usd(p.b_per_1k_usd)}",
                f"{'yes' if p.a_meets else 'no'} -> {'yes' if p.b_meets else 'no'}",
            )
        console.print(t)
        for note in c.notes:
            console.print(f"  {note}", highlight=False, markup=False)
        for name in c.only_in_a:
            console.print(f"  {name}: only in run {c.a_run}", highlight=False, markup=False)
        for name in c.only_in_b:
            console.print(f"  {name}: only in run {c.b_run}", highlight=False, markup=False)
        console.print(f"verdict: {c.verdict_change}", highlight=False, markup=False)

    @app.command()
    def gate(
        run: Annotated[str, typer.Argument(help="The climb to check (run id or latest).", metavar="RUN")],
        baseline: Annotated[str | None, typer.Option(help="Fail on a significant drop against this earlier climb.")] = None,
        rung: Annotated[list[str] | None, typer.Option("--rung", help="Rung(s) to check (default: every rung both "
                                                      "climbs measured with --baseline, else the recommended one).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the machine-readable summary on stdout.")] = False,
    ) -> None:
        """CI gate: exit 1 when a rung no longer meets the target or scores significantly worse than the baseline
        climb; exit 0 when every checked rung holds. See docs/ci-gate.md for a GitHub Actions workflow."""
        from rungwise.compare import gate as run_gate

        res = run_gate(_run_id(run), baseline=_run_id(baseline) if baseline else None, rungs=rung)
        if as_json:
            print(res.to_json())
        else:
            for ch in res.checks:
                mark = "[green]pass[/]" if ch.passed else "[red]FAIL[/]"
                console.print(f"{mark} {escape(ch.rung)}: {escape(ch.reason)}", highlight=False)
            console.print("gate: " + ("passed" if res.passed else "failed"), highlight=False)
        # SystemExit survives main()'s standalone_mode=False, where typer.Exit would be lost.
        raise SystemExit(0 if res.passed else 1)
