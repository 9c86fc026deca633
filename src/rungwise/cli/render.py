"""Terminal tables for costs, factors and the verdict (rich), printed after the ladder table.

Example:
    >>> from rich.console import Console
    >>> print_economics(Console(), costs, verdict)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rungwise.economics.cost import RungCost, break_evens
from rungwise.money import usd
from rungwise.prices.catalog import Catalog

if TYPE_CHECKING:
    from rungwise.advise import Signal, Verdict


def cost_table(costs: Sequence[RungCost], title: str | None = None) -> Table:
    """One row per rung: tokens per call, $ per 1,000 requests hosted and self-hosted, one-off, monthly."""
    v = costs[0].daily_volume if costs else 0
    t = Table(title=title or f"cost at {v:,} requests/day", title_justify="left")
    for col, just in [("rung", "left"), ("tokens/call (cached)", "right"), ("hosted $/1k", "right"),
                      ("self-hosted $/1k", "right"), ("one-off", "right"), ("$/month (best)", "right")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for c in costs:
        tk = c.tokens
        toks = f"{tk.prompt_tokens:,.0f} ({tk.cached_tokens:,.0f}) + {tk.completion_tokens:,.1f}"
        if tk.estimated:
            toks += " est."
        h = c.hosted
        s = c.self_hosted
        hosted = usd(1000 * h.per_call(v)) if h else "—"
        if h and h.hit_rate(v) > 0:
            hosted += f" ({h.hit_rate(v):.0%} cached)"
        selfh = "—"
        if s:
            selfh = usd(1000 * s.per_call(v)) + f" ({s.replicas(v)} server{'s' if s.replicas(v) > 1 else ''})"
        best = c.best()
        one = usd(best.one_off.initial_usd) if best and best.one_off else "—"
        total = c.total_monthly()
        t.add_row(escape(c.rung), toks, hosted, selfh, one,
                  (usd(total) + f" {best.mode.replace('_', '-')}") if best and total is not None else "—")
    return t


def factors_table(signals: Sequence[Signal]) -> Table:
    """The decision factors that are set, what each favours, and the rule."""
    t = Table(title="decision factors", title_justify="left")
    for col in ("factor", "value", "says", "rule"):
        t.add_column(col)
    for s in signals:
        says = "—" if s.favours == "neutral" else f"{s.strength} {s.favours.replace('_', ' ')}"
        t.add_row(escape(s.factor), escape(s.value), says, escape(s.rule))
    return t


def verdict_panel(v: Verdict) -> Panel:
    """The verdict: headline, gap, reasons, warnings and next steps."""
    parts: list[Text] = [Text(v.headline, style="bold green" if v.recommended else "bold yellow")]
    if v.gap:
        parts.append(Text("gap: " + v.gap))
    if v.diagnosis:
        parts.append(Text("failures (behaviour = wrong format, knowledge = wrong content):", style="bold"))
        parts += [Text("  • " + d) for d in v.diagnosis]
    if v.reasons:
        parts.append(Text("reasons:", style="bold"))
        parts += [Text("  • " + r) for r in v.reasons]
    if v.warnings:
        parts.append(Text("warnings:", style="bold yellow"))
        parts += [Text("  • " + w) for w in v.warnings]
    if v.next_steps:
        parts.append(Text("next steps:", style="bold"))
        parts += [Text("  • " + s) for s in v.next_steps]
    return Panel(Group(*parts), title="verdict", title_align="left")


def print_economics(console: Console, costs: Sequence[RungCost], verdict: Verdict | None = None) -> None:
    """Print the cost table, break-evens and (if given) the verdict: what `climb` shows last."""
    if costs:
        console.print(cost_table(costs))
        for be in break_evens(costs):
            console.print("  " + be.sentence(), highlight=False, markup=False)
    if verdict is not None:
        console.print(verdict_panel(verdict))


def _host(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).netloc.removeprefix("www.") or url


def prices_tables(cat: Catalog) -> tuple[Table, Table, list[str]]:
    """The catalog: hosted model prices, GPU-hour ranges, and one line per source with its date."""
    m = Table(title=f"hosted models, $ per 1M tokens (catalog {cat.date})", title_justify="left")
    for col, just in [("model", "left"), ("input", "right"), ("cached", "right"), ("output", "right"),
                      ("FT train", "right"), ("FT in/out", "right"), ("date", "left"), ("source", "left")]:
        m.add_column(col, justify=just, no_wrap=col in ("model", "date"))  # type: ignore[arg-type]
    for k, p in sorted(cat.models.items()):
        ft = p.finetune
        m.add_row(
            escape(k), f"{p.input_per_1m:g}", "—" if p.cached_input_per_1m is None else f"{p.cached_input_per_1m:g}",
            f"{p.output_per_1m:g}", f"{ft.training_per_1m:g}" if ft else "—",
            f"{ft.input_per_1m:g}/{ft.output_per_1m:g}" if ft and ft.input_per_1m is not None and ft.output_per_1m
            is not None else "—",
            escape(p.date), escape(_host(p.source)),
        )
    g = Table(title="GPUs: dense BF16 peak and on-demand $ per GPU-hour", title_justify="left")
    for col, just in [("gpu", "left"), ("TFLOP/s", "right"), ("GB", "right"), ("$/GPU-hour", "right"),
                      ("offers", "left")]:
        g.add_column(col, justify=just, no_wrap=col == "gpu")  # type: ignore[arg-type]
    lines: list[str] = []
    for k, p in sorted(cat.models.items()):
        lines.append(f"{k}: {p.source} ({p.date})" + (f"; {p.note}" if p.note else ""))
    for k, gpu in sorted(cat.gpus.items()):
        lo, hi = gpu.price_range
        g.add_row(escape(k), f"{gpu.peak_bf16_tflops:g}" if gpu.peak_bf16_tflops else "?",
                  f"{gpu.memory_gb:g}" if gpu.memory_gb else "?", f"{lo:.2f}-{hi:.2f}" if hi > lo else f"{lo:.2f}",
                  escape(", ".join(f"{o.provider} {o.per_gpu_hour:.2f}" for o in gpu.offers)))
        if gpu.spec_source:
            lines.append(f"{k} datasheet: {gpu.spec_source}")
        for o in gpu.offers:
            lines.append(f"{k}: {o.provider} {o.instance} ({o.gpus} GPU{'s' if o.gpus > 1 else ''}) "
                         f"${o.usd_per_hour:g}/h = ${o.per_gpu_hour:.2f}/GPU-hour; {o.source} ({o.date})"
                         + (f"; {o.note}" if o.note else ""))
    return m, g, lines
