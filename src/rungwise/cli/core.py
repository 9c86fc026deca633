"""Core commands: init, climb, runs."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from rungwise.backends.base import WAITS_LOGGER
from rungwise.errors import RungwiseError
from rungwise.types import Ladder, RungResult

# Piped output (CI logs, `| tee`) gets a width that fits the ladder instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)


def _fmt_pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fmt_latency(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def ladder_table(c: Ladder, title: str | None = None) -> Table:
    """The ladder: one row per rung, with CI, format-valid rate, tokens, latency, p-value, target."""
    metric = c.rungs[0].metric.name if c.rungs else "metric"
    t = Table(title=title or f"{escape(c.task)}: the ladder (n_test={c.n_test}, run {c.run_id})", title_justify="left")
    for col, just in [("rung", "left"), (f"{metric} [95% CI]", "right"), ("format-valid", "right"),
                      ("tokens in+out", "right"), ("p50 latency", "right"), ("ex/s", "right"),
                      ("fails fmt/kn", "right"), ("p vs below", "right"), ("meets target", "center")]:
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for r in c.rungs:
        m = r.metric
        cmp = r.comparison
        p = "—" if cmp is None else (f"{cmp.p_value:.2g}" + (" *" if cmp.significant else ""))
        meets = "—" if not c.target else ("yes" if r.meets_target else "no")
        t.add_row(
            escape(r.rung),
            f"{m.value:.3f} [{m.ci_low:.3f}, {m.ci_high:.3f}]",
            _fmt_pct(r.format_valid_rate),
            f"{r.mean_prompt_tokens:.0f} + {r.mean_completion_tokens:.1f}",
            _fmt_latency(r.latency_p50_s),
            f"{r.examples_per_s:.1f}",
            f"{r.failures['behaviour']}/{r.failures['knowledge']}" if r.failures else "—",
            p,
            meets,
        )
    return t


def ladder_notes(c: Ladder) -> list[str]:
    """What the table cannot show: each rung's own notes (the audit before fine-tuning, the
    training, the forgetting check), rungs that were skipped, and the prompt tokens a trained rung
    saves per call against the best rung that sends the untrained model a prompt."""
    notes: list[str] = list(c.notes)
    prompting = [r for r in c.rungs if r.kind.uses_llm and not r.kind.trains_weights]
    best = max(prompting, key=lambda r: r.metric.value, default=None)
    for r in c.rungs:
        notes += [f"{r.rung}: {n}" for n in r.notes]
        if r.kind.trains_weights and best is not None and best.mean_prompt_tokens > 0:
            saved = best.mean_prompt_tokens - r.mean_prompt_tokens
            notes.append(
                f"{r.rung}: {r.mean_prompt_tokens:.0f} prompt tokens/call vs {best.mean_prompt_tokens:.0f} for the best "
                f"prompting rung ({best.rung}): {abs(saved):.0f} {'fewer' if saved >= 0 else 'more'} "
                f"({-100 * saved / best.mean_prompt_tokens:+.0f}%) per call"
            )
    return notes


def _summary(c: Ladder) -> str:
    if not c.target:
        return "no target set: every requested rung was measured"
    if c.stopped_at:
        return f"target {c.target} met at rung '{c.stopped_at}': climb stopped there (use --all to measure the rest)"
    met = [r.rung for r in c.rungs if r.meets_target]
    if met:
        return f"target {c.target} met by: {', '.join(met)}"
    return f"no measured rung meets the target {c.target}"


class _WaitCounter(logging.Handler):
    """Counts the waits backends report on :data:`~rungwise.backends.base.WAITS_LOGGER` (retries
    after a 429, a 5xx or a timeout), so the progress bar can say why a rung slowed down."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.seconds = 0.0
        self.reason = ""

    def emit(self, record: logging.LogRecord) -> None:
        wait = getattr(record, "retry_wait_s", None)
        if isinstance(wait, int | float):
            self.count += 1
            self.seconds += wait
            self.reason = str(getattr(record, "retry_reason", "") or "")

    def describe(self) -> str:
        if not self.count:
            return ""
        last = f", last: {self.reason}" if self.reason else ""
        return f" · {self.count} {'retry' if self.count == 1 else 'retries'}, {self.seconds:.1f} s waited{last}"


class _RichReporter:
    """The climb's progress bars: one per rung, with examples/s and the backend's retry waits."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task_id: Any = None
        self._waits = _WaitCounter()
        self._waits_logger = logging.getLogger(WAITS_LOGGER)
        self._saved: tuple[int, bool] | None = None  # the waits logger's level and propagate flag

    def rung_start(self, name: str, total: int, done: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=err_console, transient=False,
            )
            self.progress.start()
            # The bar shows the waits instead of a log line per retry.
            lg = self._waits_logger
            self._saved = (lg.level, lg.propagate)
            lg.setLevel(logging.INFO)
            lg.propagate = False
            lg.addHandler(self._waits)
        self.task_id = self.progress.add_task(escape(name), total=total, completed=done, rate="")
        self._t0 = time.perf_counter()
        self._n = 0
        self._waits.count, self._waits.seconds, self._waits.reason = 0, 0.0, ""

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self._n += n
            dt = time.perf_counter() - self._t0
            rate = f"{self._n / dt:.1f} ex/s" if dt > 0 else ""
            self.progress.update(self.task_id, advance=n, rate=rate + self._waits.describe())

    def rung_end(self, result: RungResult) -> None:
        pass

    def note(self, message: str) -> None:
        err_console.print(f"[dim]note:[/] {escape(message)}", highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self._saved is not None:
            self._waits_logger.removeHandler(self._waits)
            self._waits_logger.setLevel(self._saved[0])
            self._waits_logger.propagate = self._saved[1]
            self._saved = None


def register(app: typer.Typer) -> None:
    @app.command()
    def init(
        directory: Annotated[Path, typer.Argument(help="Directory to create the task in.")],
        force: Annotated[bool, typer.Option(help="Write into an existing non-empty directory (never overwrites files).")] = False,
    ) -> None:
        """Write a working task (task.yaml + a 212-example ticket-routing dataset) to DIRECTORY."""
        src = resources.files("rungwise") / "templates" / "ticket-routing"
        if directory.exists() and not directory.is_dir():
            raise RungwiseError(f"{directory}: is a file, not a directory", hint="give a new directory name, e.g. my-task")
        directory.mkdir(parents=True, exist_ok=True)
        names = [p.name for p in src.iterdir() if p.name in ("task.yaml", "data.jsonl")]
        clash = [n for n in names if (directory / n).exists()]
        if clash:
            raise RungwiseError(
                f"{directory}: {', '.join(clash)} already exist(s); rungwise never overwrites your files",
                hint="choose a new directory, or move those files away",
            )
        if any(directory.iterdir()) and not force:
            raise RungwiseError(f"{directory}: directory is not empty", hint="use a new directory, or pass --force")
        for n in names:
            with resources.as_file(src / n) as f:
                shutil.copyfile(f, directory / n)
        console.print(f"wrote {directory}/task.yaml and {directory}/data.jsonl\nnext: rungwise climb {directory}/task.yaml",
                      markup=False)

    @app.command()
    def climb(
        task_file: Annotated[Path, typer.Argument(help="task.yaml (or its directory).", metavar="TASK")],
        all_rungs: Annotated[bool, typer.Option("--all", help="Measure every rung, even after one meets the target.")] = False,
        rungs: Annotated[str | None, typer.Option(help="Comma-separated rungs to climb (default: rungs.order).")] = None,
        limit: Annotated[int | None, typer.Option(
            min=1, help="A quick try: score only the first N test examples (and train on at most 4N, at least 32).",
        )] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Resume the latest unfinished run of this task config.")] = False,
        run: Annotated[int | None, typer.Option(help="With --resume: the run id to resume.")] = None,
        reuse: Annotated[int | None, typer.Option(help="A new run that reuses run REUSE's predictions wherever the "
                                                  "model, the rung's settings and the prompt are unchanged (after "
                                                  "editing one rung's settings).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")] = False,
        progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
        as_of: Annotated[str | None, typer.Option("--as-of", help="Price the ladder on this date (YYYY-MM-DD; "
                                                  "default: economics.as_of, else today).")] = None,
    ) -> None:
        """Climb the ladder on the held-out split and print the ladder table."""
        from rungwise.cli.economics import _as_of
        from rungwise.climb import climb as do_climb
        from rungwise.climb import climb_to_dict
        from rungwise.config.task import load_task
        from rungwise.economics.cost import with_overrides

        task = with_overrides(load_task(task_file), as_of=_as_of(as_of))
        rep = _RichReporter(progress and not as_json)
        try:
            result = do_climb(
                task,
                rungs=[r.strip() for r in rungs.split(",") if r.strip()] if rungs else None,
                all_rungs=all_rungs,
                limit=limit,
                resume=(run if run is not None else True) if resume else False,
                reporter=rep,
                reuse=reuse,
            )
        except KeyboardInterrupt:
            rep.close()
            err_console.print(f"\ninterrupted: resume with  rungwise climb {task_file} --resume", markup=False)
            # SystemExit, not typer.Exit: it keeps its status through any typer/click version.
            raise SystemExit(130) from None
        finally:
            rep.close()
        if as_json:
            print(json.dumps(climb_to_dict(result), indent=2, default=str))
            return
        console.print(ladder_table(result))
        for note in ladder_notes(result):
            console.print(f"  {note}", highlight=False, markup=False)
        console.print(_summary(result), markup=False)
        console.print("[dim]* = significant at p < 0.05 (paired test against the rung below); fails fmt/kn = failed "
                      "examples with a wrong format (behaviour) / valid but wrong (knowledge)[/]")
        from rungwise.cli.render import print_economics

        print_economics(console, result.costs, result.verdict)

    @app.command("rungs")
    def list_rungs(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """List the installed rungs, backends and metrics (built-in and plugins), one line each."""
        from rungwise.registry import BACKENDS, METRICS, RUNGS

        rows = []
        for name, cls in RUNGS.items():
            settings = ", ".join(cls.Config.model_fields) or "none"
            rows.append({"what": "rung", "name": name, "kind": cls.kind.name, "summary": cls.summary,
                         "settings": settings, "source": RUNGS.source(name)})
        for name, spec in BACKENDS.items():
            doc = (spec.__doc__ or "").strip().splitlines()[0] if spec.__doc__ else ""
            rows.append({"what": "backend", "name": name, "kind": "", "summary": doc, "settings": "",
                         "source": BACKENDS.source(name)})
        for name, cls in METRICS.items():
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            rows.append({"what": "metric", "name": name, "kind": "", "summary": doc, "settings": "",
                         "source": METRICS.source(name)})
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        t = Table(title="installed rungs, backends and metrics", title_justify="left")
        for col in ("what", "name", "kind", "summary", "settings (rungs.<name>)", "source"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["what"], r["name"], r["kind"], r["summary"], r["settings"], r["source"])
        console.print(t)

    runs_app = typer.Typer(help="The run store: past climbs and their rungs.", no_args_is_help=True)
    app.add_typer(runs_app, name="runs")

    @runs_app.command("list")
    def runs_list(
        limit: Annotated[int, typer.Option(min=1, help="How many recent runs.")] = 20,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """List recent runs."""
        from rungwise.store import Store

        rows = Store().list_climbs(limit)
        if as_json:
            print(json.dumps([{k: r[k] for k in r.keys() if k not in ("config_json", "result_json")} for r in rows], indent=2))
            return
        t = Table(title="runs")
        for col in ("id", "task", "model", "n_test", "status", "created"):
            t.add_column(col)
        for r in rows:
            t.add_row(*(escape(str(r[k])) for k in ("id", "task_name", "model_id", "n_test", "status", "created_at")))
        console.print(t)

    @runs_app.command("show")
    def runs_show(
        run_id: Annotated[int, typer.Argument(help="Run id (see `rungwise runs list`).", metavar="ID")],
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Show a run: its ladder, data and model provenance, and each rung's prompt artifact."""
        from rungwise.climb import climb_to_dict, load_climb
        from rungwise.store import Store

        store = Store()
        row = store.climb(run_id)
        c = load_climb(run_id, store)
        if as_json:
            d = climb_to_dict(c)
            d["provenance"] = {k: row[k] for k in ("config_hash", "train_hash", "test_hash", "model_id", "n_train", "status", "created_at", "rungwise_version")}
            d["artifacts"] = {r["name"]: json.loads(r["artifact_json"]) for r in store.rungs(run_id)}
            print(json.dumps(d, indent=2, default=str))
            return
        console.print(
            f"run {run_id}: task [bold]{escape(row['task_name'])}[/] ({escape(row['status'])}), model {escape(row['model_id'])}\n"
            f"config {row['config_hash']}, train {row['n_train']} ({row['train_hash']}), test {row['n_test']} ({row['test_hash']}), "
            f"leakage dropped {row['leakage_exact']} exact + {row['leakage_normalized']} normalized"
        )
        console.print(ladder_table(c))
        for note in ladder_notes(c):
            console.print(f"  {note}", highlight=False, markup=False)
        from rungwise.cli.render import print_economics

        print_economics(console, c.costs, c.verdict)
        for r in store.rungs(run_id):
            art = json.loads(r["artifact_json"])
            prompt = art.get("prompt", {})
            demos = len(prompt.get("demos", [])) if isinstance(prompt, dict) else 0
            kind = next((x.kind.name for x in c.rungs if x.rung == r["name"]), None)
            why = f": {r['skip_reason']}" if r["status"] == "skipped" else ""
            console.print(f"[bold]{escape(r['name'])}[/] ({escape(r['status'] + why)}): {kind or '?'}, {demos} demo(s)",
                          highlight=False)
