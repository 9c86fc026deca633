"""Economics commands: prices, cost, decide, scratch, report."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from rungwise.errors import RungwiseError

console = Console()
err_console = Console(stderr=True)


AS_OF_HELP = ("Price on this date (YYYY-MM-DD): offers a new customer cannot buy then are left out, and old "
              "prices are flagged (default: economics.as_of, else today).")


def _as_of(value: str | None) -> dt.date | None:
    """``--as-of`` as a date, or a clear error."""
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise RungwiseError(f"--as-of {value!r} is not a date", hint="write it as YYYY-MM-DD, e.g. --as-of 2027-02-01") \
            from None


def _load_run(run: str, task: Any) -> Any:
    """The ClimbResult of run ``run`` (an id or ``latest``)."""
    from rungwise.climb import load_climb
    from rungwise.store import Store

    store = Store()
    if run == "latest":
        rows = [r for r in store.list_climbs(limit=200) if task is None or r["task_name"] == task.name]
        if not rows:
            raise RungwiseError(
                "no stored run" + (f" of task {task.name!r}" if task is not None else ""),
                hint="run `rungwise climb task.yaml` first, or leave out --run to use token estimates",
            )
        run_id = int(rows[0]["id"])
    elif run.isdigit():
        run_id = int(run)
    else:
        raise RungwiseError(f"--run {run!r} is not a run id", hint="give a number from `rungwise runs list`, or latest")
    c = load_climb(run_id, store)
    if not c.rungs:
        raise RungwiseError(f"run {run_id} has no finished rung", hint="resume it with `rungwise climb task.yaml --resume`")
    return c


def _ask_factors(task: Any) -> Any:
    """Ask for the decision factors task.yaml leaves unset; blank skips one."""
    from rungwise.advise import FACTOR_QUESTIONS
    from rungwise.config.factors import DecisionFactors

    f = task.factors
    update: dict[str, Any] = {}
    for name, (question, kind) in FACTOR_QUESTIONS.items():
        if getattr(f, name) is not None:
            continue
        if name == "daily_volume" and task.economics.daily_volume is not None:
            continue
        hint = "/".join(kind) if isinstance(kind, tuple) else {"int": "a number", "float": "a number",
                                                                 "bool": "y/n"}[kind]
        while True:
            raw = typer.prompt(f"{question} ({hint}; blank to skip)", default="", show_default=False).strip()
            if not raw:
                break
            try:
                if isinstance(kind, tuple):
                    if raw.lower() not in kind:
                        raise ValueError(f"choose one of {', '.join(kind)}")
                    value: Any = raw.lower()
                elif kind == "int":
                    value = int(raw.replace(",", "").replace("_", ""))
                elif kind == "float":
                    value = float(raw)
                else:
                    if raw.lower() not in ("y", "yes", "n", "no", "true", "false"):
                        raise ValueError("answer y or n")
                    value = raw.lower() in ("y", "yes", "true")
                DecisionFactors.model_validate({**f.model_dump(), **update, name: value})
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                msg = str(exc).splitlines()[-1] if "validation error" in str(exc) else str(exc)
                err_console.print(f"  [yellow]{escape(msg)}[/]")
                continue
            update[name] = value
            break
    if not update:
        return task
    return task.model_copy(update={"factors": f.model_copy(update=update)})


def _print_notes(notes: list[str], costs: Any) -> None:
    seen: set[str] = set()
    for x in costs:
        deployments = [*x.options, *([x.what_if] if x.what_if else [])]
        for n in [*x.notes, *(n for d in deployments for n in d.notes)]:
            if n not in seen:
                notes.append(f"{x.rung}: {n}" if "examples/s" in n or "shared-prefix" in n or "below" in n else n)
                seen.add(n)
    for n in dict.fromkeys(notes):
        console.print(f"[dim]note: {escape(n)}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def prices(
        task_file: Annotated[Path | None, typer.Option("--task", help="Merge this task.yaml's economics.prices.")] = None,
        as_of: Annotated[str | None, typer.Option("--as-of", help="Show availability and price ages on this date "
                                                  "(YYYY-MM-DD; default: the task's economics.as_of, else today).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the catalog as JSON.")] = False,
    ) -> None:
        """List the price catalog: hosted models' token prices and who can still buy them (and their
        fine-tuning), GPU- and vCPU-hour prices, with sources, dates, and a warning for old prices."""
        from dataclasses import asdict

        from rungwise.cli.render import prices_tables
        from rungwise.config.economics import EconomicsSpec
        from rungwise.config.task import load_task
        from rungwise.economics.basis import pricing_date
        from rungwise.prices.catalog import load_catalog

        econ = load_task(task_file).economics if task_file else EconomicsSpec()
        cat = load_catalog(econ.prices if task_file else None)
        on = pricing_date(econ, _as_of(as_of))
        m, g, sources, warnings = prices_tables(cat, on, econ.max_price_age_days)
        if as_json:
            print(json.dumps({
                "catalog_date": cat.date, "as_of": on.isoformat(), "catalog_age_days": cat.age_days(on),
                "currency": cat.currency, "warnings": warnings,
                "models": {k: {**asdict(v), "read_date": v.read_date,
                               "available_to_new_customers": v.availability.open_to_new(on),
                               "availability_now": v.availability.describe(on),
                               "finetune_availability_now": v.finetune.availability.describe(on) if v.finetune else None}
                           for k, v in cat.models.items()},
                "gpus": {k: {**asdict(v), "price_range": list(v.price_range)} for k, v in cat.gpus.items()},
                "cpu": {**asdict(cat.cpu), "price_range_per_vcpu_hour": list(cat.cpu.price_range)} if cat.cpu else None,
            }, indent=2, default=str))
            return
        age = cat.age_days(on)
        console.print(f"[bold]price catalog revised {cat.date}[/], {age} days old on {on} "
                      f"(prices older than {econ.max_price_age_days} days are marked !)", highlight=False)
        console.print(m)
        console.print(g)
        console.print("[bold]sources[/] (list prices change and offers close: check before relying on a figure)")
        for line in sources:
            console.print("  " + line, highlight=False, soft_wrap=True, markup=False)
        for w in warnings:
            console.print("[yellow]warning:[/] " + escape(w), highlight=False, soft_wrap=True)
        console.print("[dim]override or add prices under economics.prices in task.yaml[/]")

    @app.command()
    def cost(
        task_file: Annotated[Path, typer.Argument(help="task.yaml (or its directory).", metavar="TASK")],
        volume: Annotated[int | None, typer.Option(min=0, help="Requests per day (default: economics.daily_volume).")] = None,
        price_model: Annotated[str | None, typer.Option(
            help="The hosted what-if: also show the token counts at this catalog model's prices, e.g. "
            "openai/gpt-5.4-mini (default: economics.price_model).")] = None,
        run: Annotated[str | None, typer.Option(help="Use the measured tokens of this run (id or latest).")] = None,
        as_of: Annotated[str | None, typer.Option("--as-of", help=AS_OF_HELP)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print costs as JSON.")] = False,
    ) -> None:
        """Cost per call, per 1,000 requests and per month of each rung, with fine-tuning break-even.

        Costs are those of the model measured: a local climb self-hosted from its measured
        throughput, an endpoint at its model's list prices; price_model adds a labelled what-if.
        Without --run, tokens are estimated from the task's data (no model is run)."""
        from rungwise.cli.render import print_economics
        from rungwise.config.task import load_task
        from rungwise.economics.cost import break_evens, price_profiles, price_rungs, with_overrides
        from rungwise.economics.estimate import estimate_profiles

        task = with_overrides(load_task(task_file), volume, price_model, _as_of(as_of))
        notes: list[str] = []
        if run:
            c = _load_run(run, task)
            costs = price_rungs(c.rungs, task, measured=c.measured)
            source = f"measured tokens of run {c.run_id} ({c.measured.model}, {c.measured.hardware()})"
        else:
            profiles, notes = estimate_profiles(task)
            costs = price_profiles(profiles, task)
            source = "estimated tokens (no run); measure with `rungwise climb` and pass --run latest"
        if as_json:
            bes = break_evens(costs) or break_evens(costs, what_if=True)
            print(json.dumps({"source": source, "rungs": [x.to_dict() for x in costs],
                              "break_evens": [b.to_dict() for b in bes], "notes": notes,
                              "pricing": costs[0].basis.to_dict() if costs and costs[0].basis else None}, indent=2))
            return
        console.print(f"[dim]{escape(source)}[/]")
        print_economics(console, costs)
        _print_notes(notes, costs)

    @app.command()
    def decide(
        task_file: Annotated[Path, typer.Argument(help="task.yaml (or its directory).", metavar="TASK")],
        run: Annotated[str | None, typer.Option(help="Judge this run's measured ladder (id or latest).")] = None,
        volume: Annotated[int | None, typer.Option(min=0, help="Requests per day (overrides task.yaml).")] = None,
        as_of: Annotated[str | None, typer.Option("--as-of", help=AS_OF_HELP)] = None,
        ask: Annotated[bool | None, typer.Option("--ask/--no-ask",
                                                 help="Ask for factors task.yaml leaves unset (default: on a terminal).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
    ) -> None:
        """The decision factors and (with --run) the measured ladder -> one recommendation with reasons."""
        import sys

        import yaml

        from rungwise.advise import evaluate_factors, lean, verdict
        from rungwise.cli.render import factors_table, print_economics, verdict_panel
        from rungwise.config.task import load_task
        from rungwise.economics.cost import daily_volume_of, price_profiles, price_rungs, with_overrides
        from rungwise.economics.estimate import estimate_profiles

        task = with_overrides(load_task(task_file), volume, None, _as_of(as_of))
        if ask if ask is not None else (sys.stdin.isatty() and not as_json):
            before = task.factors.model_dump(exclude_none=True)
            task = _ask_factors(task)
            added = {k: v for k, v in task.factors.model_dump(exclude_none=True).items() if k not in before}
            if added and not as_json:
                console.print("[dim]to keep these answers, add to task.yaml:[/]")
                console.print(yaml.safe_dump({"factors": added}, sort_keys=False).rstrip(), highlight=False, markup=False)
        vol, given = daily_volume_of(task)
        if run:
            c = _load_run(run, task)
            costs = price_rungs(c.rungs, task, measured=c.measured)
            v = verdict(c, task, costs)
            if as_json:
                print(json.dumps({"run_id": c.run_id, "verdict": v.to_dict(),
                                  "costs": [x.to_dict() for x in costs]}, indent=2, default=str))
                return
            print_economics(console, costs)
            console.print(factors_table(v.signals))
            console.print(verdict_panel(v))
            return
        signals = evaluate_factors(task.factors, vol if given else None)
        profiles, notes = estimate_profiles(task)
        costs = price_profiles(profiles, task)
        direction = lean(signals)
        if as_json:
            print(json.dumps({"run_id": None, "factors_lean": direction, "signals": [s.__dict__ for s in signals],
                              "costs": [x.to_dict() for x in costs], "notes": notes,
                              "pricing": costs[0].basis.to_dict() if costs and costs[0].basis else None},
                             indent=2, default=str))
            return
        console.print(factors_table(signals))
        console.print(f"the factors alone lean: [bold]{direction}[/]")
        print_economics(console, costs)
        _print_notes(notes, costs)
        console.print("[dim]tokens are estimated; for a verdict on measured scores: rungwise climb "
                      f"{task_file} --all, then rungwise decide {task_file} --run latest[/]")

    @app.command()
    def scratch(
        params: Annotated[str, typer.Option(help="Parameters, e.g. 7B, 50e9.")],
        tokens: Annotated[str, typer.Option(help="Training tokens, e.g. 2T, 709B.")],
        gpu: Annotated[str, typer.Option(help="GPU key from `rungwise prices` (a100, h100, l4, ...).")] = "a100",
        gpus: Annotated[int, typer.Option(min=1, help="Number of GPUs.")] = 8,
        mfu: Annotated[float, typer.Option(help="Model FLOPs utilization, a fraction of peak (0.3 = 30%).")] = 0.4,
        usd_per_gpu_hour: Annotated[float | None, typer.Option(help="Your GPU-hour price (default: public range).")] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """What pretraining from scratch would take: 6·N·D FLOPs, days, GPU-hours, cost range."""
        from rungwise.economics.scratch import estimate_scratch

        est = estimate_scratch(params, tokens, gpu=gpu, gpus=gpus, mfu=mfu, usd_per_gpu_hour=usd_per_gpu_hour)
        if as_json:
            print(json.dumps({**est.to_dict(), "what_it_buys": est.what_it_buys()}, indent=2))
            return
        console.print(est.summary(), highlight=False, markup=False)
        console.print(est.what_it_buys(), highlight=False, markup=False)
        for w in est.warnings():
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)

    @app.command()
    def report(
        run: Annotated[str, typer.Argument(help="Run id (see `rungwise runs list`) or latest.", metavar="RUN")],
        out: Annotated[Path | None, typer.Option(help="Output directory (default: ./rungwise-report-RUN).")] = None,
        task_file: Annotated[Path | None, typer.Option("--task", help="Re-price with this task.yaml's economics and "
                                                                          "factors instead of the run's.")] = None,
        volume: Annotated[int | None, typer.Option(min=0, help="Requests per day for the costs.")] = None,
        as_of: Annotated[str | None, typer.Option("--as-of", help=AS_OF_HELP)] = None,
    ) -> None:
        """Write the run's report: self-contained HTML (charts, per-example browser), Markdown and JSON."""
        from rungwise.config.task import load_task
        from rungwise.report import write_report
        from rungwise.report.data import report_data_from_store

        task = load_task(task_file) if task_file else None
        data = report_data_from_store(run, task=task, daily_volume=volume, as_of=_as_of(as_of))
        target = out or Path(f"rungwise-report-{data['run_id']}")
        paths = write_report(data, target)
        for kind, p in paths.items():
            console.print(f"wrote {kind}: {p}", markup=False)
        v = data.get("verdict") or {}
        if v.get("headline"):
            console.print(v["headline"], highlight=False, markup=False)
