"""`rungwise audit DATA`: is this data fit to fine-tune on? Exit 0 ready, 1 ready with warnings, 2 not ready."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from rungwise.errors import ConfigError

console = Console()
err_console = Console(stderr=True)


def _columns(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--columns {value!r}: expected INPUT,OUTPUT", hint="e.g. --columns text,category")
    return parts[0], parts[1]


def audit_command(
    data: Annotated[Path | None, typer.Argument(help="Data file (.jsonl chat/plain/alpaca, .csv). Default: the task's train file.")] = None,
    task: Annotated[Path | None, typer.Option("--task", "-t", help="task.yaml: format, columns, labels, instructions, model, test file.")] = None,
    test: Annotated[Path | None, typer.Option("--test", help="Test file to check for train/test leakage (default: the task's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the report as Markdown.")] = False,
    fix: Annotated[Path | None, typer.Option("--fix", help="Write a cleaned copy to this new file (the original is never touched).")] = None,
    mask_pii: Annotated[bool, typer.Option("--mask-pii", help="With --fix: replace personal data by placeholders such as [EMAIL].")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --fix: replace OUT if it exists (never the audited file).")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="auto, jsonl, chat, alpaca or csv (default: the task's, else auto).")] = None,
    columns: Annotated[str | None, typer.Option("--columns", help="INPUT,OUTPUT field or column names, e.g. text,category.")] = None,
    estimate: Annotated[bool, typer.Option("--estimate-tokens", help="Count tokens as chars/4 even when the task names a local model.")] = False,
    pii: Annotated[str, typer.Option("--pii", help="regex (built-in, checksummed) or presidio (also run Microsoft Presidio).")] = "regex",
) -> None:
    """Audit training data before fine-tuning: format, size band, duplicates and conflicts, output shapes,
    tokens and cost, personal data, leakage, poisoning signs. Exit 0 ready, 1 ready with warnings, 2 not ready."""
    from rungwise.data.audit import audit, write_fixed

    if (mask_pii or force) and fix is None:
        raise ConfigError("--mask-pii and --force only apply to --fix OUT", hint="add --fix OUT, e.g. --fix train.clean.jsonl")
    if as_json and markdown:
        raise ConfigError("choose one of --json and --markdown", hint="drop one of them")
    t = None
    if task is not None:
        from rungwise.config.task import load_task

        t = load_task(task)
    if data is None and t is None:
        raise ConfigError("nothing to audit", hint="rungwise audit DATA [--task task.yaml]")
    cols = _columns(columns)
    kwargs = dict(task=t, test=test, fmt=fmt, columns=cols, pii=pii, tokenizer="estimate" if estimate else None)
    quiet = as_json or markdown
    if not quiet and t is not None and t.model.backend == "local" and not estimate:
        err_console.print(f"[dim]counting tokens with the tokenizer of {escape(t.model.id)} ...[/]")
    report = audit(data, **kwargs)  # type: ignore[arg-type]
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    elif markdown:
        sys.stdout.write(report.to_markdown() + "\n")
    else:
        report.render(console)
    if fix is not None:
        res = write_fixed(report, fix, mask_pii=mask_pii, force=force)
        again = audit(res.path, **{**kwargs, "fmt": report.format if report.format != "examples" else None})  # type: ignore[arg-type]
        out = err_console if quiet else console
        out.print(f"[bold]fix:[/] {escape(res.summary())}", highlight=False)
        colour = {"ready": "green", "ready_with_warnings": "yellow", "not_ready": "red"}[again.verdict]
        out.print(f"re-audit of {escape(str(res.path))}: [{colour}]{escape(again.summary())}[/]", highlight=False)
        for r in again.reasons[:5]:
            out.print(f"  {r}", highlight=False, markup=False)
    # The verdict is the exit status (for CI); raising SystemExit keeps it through main()'s
    # standalone_mode=False, where typer.Exit would be turned into a return value and lost.
    raise SystemExit(report.exit_code)


def register(app: typer.Typer) -> None:
    """Add `rungwise audit` to the CLI."""
    app.command("audit")(audit_command)
