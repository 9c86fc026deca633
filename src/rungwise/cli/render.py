"""Terminal tables for costs, factors and the verdict (rich), printed after the ladder table.

Example:
    >>> from rich.console import Console
    >>> print_economics(Console(), costs, verdict)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rungwise.economics.basis import OVERRIDE_HINT, PricingBasis
from rungwise.economics.cost import RungCost, break_evens
from rungwise.money import usd
from rungwise.prices.catalog import Catalog, read_on

if TYPE_CHECKING:
    from rungwise.advise import Signal, Verdict


def _what_if_key(costs: Sequence[RungCost]) -> str | None:
    for c in costs:
        if c.what_if is not None and c.what_if.price is not None:
            return c.what_if.price.key.removesuffix(" (fine-tuned)")
    return None


def cost_table(costs: Sequence[RungCost], title: str | None = None) -> Table:
    """One row per rung: tokens per call, $ per 1,000 requests self-hosted and hosted (the measured
    model), the hosted what-if in its own labelled column, one-off, and the best monthly total of
    the measured model."""
    v = costs[0].daily_volume if costs else 0
    t = Table(title=title or f"cost at {v:,} requests/day", title_justify="left")
    hosted = any(c.hosted for c in costs)
    what_if = _what_if_key(costs)
    cols = [("rung", "left"), ("tokens/call (cached)", "right"), ("self-hosted $/1k", "right")]
    if hosted:
        cols.append(("hosted $/1k", "right"))
    if what_if:
        cols.append((f"what-if: on {what_if} $/1k", "right"))
    cols += [("one-off", "right"), ("$/month (best)", "right")]
    for col, just in cols:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for c in costs:
        tk = c.tokens
        toks = f"{tk.prompt_tokens:,.0f} ({tk.cached_tokens:,.0f}) + {tk.completion_tokens:,.1f}"
        if tk.estimated:
            toks += " est."
        s = c.self_hosted
        row = [escape(c.rung), toks]
        row.append(usd(1000 * s.per_call(v)) + f" ({s.replicas(v)} server{'s' if s.replicas(v) > 1 else ''})" if s
                   else "—")
        for show, d in ((hosted, c.hosted), (bool(what_if), c.what_if)):
            if not show:
                continue
            cell = usd(1000 * d.per_call(v)) if d else ("left out" if c.left_out else "—")
            if d and d.hit_rate(v) > 0:
                cell += f" ({d.hit_rate(v):.0%} cached)"
            row.append(cell)
        best = c.best()
        row.append(usd(best.one_off.initial_usd) if best and best.one_off else "—")
        total = c.total_monthly()
        row.append((usd(total) + f" {best.mode.replace('_', '-')}") if best and total is not None else "—")
        t.add_row(*row)
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


def pricing_lines(basis: PricingBasis | None) -> list[tuple[str, str]]:
    """(style, line) for what the costs rest on: date and catalog age, assumptions, offers left
    out, stale prices."""
    if basis is None:
        return []
    out = [("dim", basis.headline())]
    out += [("dim", a) for a in basis.assumptions]
    out += [("yellow", x.sentence()) for x in basis.left_out]
    out += [("yellow", "warning: " + w) for w in basis.warnings()]
    return out


def print_economics(console: Console, costs: Sequence[RungCost], verdict: Verdict | None = None) -> None:
    """Print the cost table, break-evens, what the prices rest on and (if given) the verdict:
    what `climb` shows last. Break-evens fall back to the labelled what-if prices when the
    measured model has no price (token estimates before any climb)."""
    if costs:
        console.print(cost_table(costs))
        bes = break_evens(costs) or break_evens(costs, what_if=True)
        for be in bes:
            console.print("  " + be.sentence(), highlight=False, markup=False)
        for style, line in pricing_lines(costs[0].basis):
            console.print(f"  [{style}]{escape(line)}[/]", highlight=False, soft_wrap=True)
    if verdict is not None:
        console.print(verdict_panel(verdict))


def _host(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).netloc.removeprefix("www.") or url


def _age(date: str, on: dt.date) -> int:
    return (on - read_on(date)).days


def prices_tables(cat: Catalog, on: dt.date, max_age_days: int) -> tuple[Table, Table, list[str], list[str]]:
    """The catalog on date ``on``: hosted models (prices, who can buy them and their fine-tuning),
    GPU-hour ranges, one line per source with its date, and the warnings (catalog or prices older
    than ``max_age_days``)."""
    m = Table(title=f"hosted models, $ per 1M tokens, on {on}", title_justify="left")
    for col, just in [("model", "left"), ("input", "right"), ("cached", "right"), ("output", "right"),
                      ("FT train", "right"), ("FT in/out", "right"), ("read", "left"), ("available", "left")]:
        m.add_column(col, justify=just, no_wrap=col in ("model", "read"))  # type: ignore[arg-type]
    stale: list[str] = []
    for k, p in sorted(cat.models.items()):
        ft = p.finetune
        old = _age(p.read_date, on) > max_age_days
        if old:
            stale.append(k)
        avail = p.availability.describe(on)
        if ft is not None and p.availability.open_to_new(on):
            avail += f"; fine-tuning {ft.availability.describe(on)}"
        m.add_row(
            escape(k), f"{p.input_per_1m:g}", "—" if p.cached_input_per_1m is None else f"{p.cached_input_per_1m:g}",
            f"{p.output_per_1m:g}", f"{ft.training_per_1m:g}" if ft and ft.training_per_1m is not None else "—",
            f"{ft.input_per_1m:g}/{ft.output_per_1m:g}" if ft and ft.input_per_1m is not None and ft.output_per_1m
            is not None else "—",
            Text(p.read_date + (" !" if old else ""), style="yellow" if old else ""),
            Text(avail, style="" if p.availability.open_to_new(on) else "red"),
        )
    g = Table(title="GPUs: dense BF16 peak and on-demand $ per GPU-hour", title_justify="left")
    for col, just in [("gpu", "left"), ("TFLOP/s", "right"), ("GB", "right"), ("$/GPU-hour", "right"),
                      ("read", "left"), ("offers", "left")]:
        g.add_column(col, justify=just, no_wrap=col in ("gpu", "read"))  # type: ignore[arg-type]
    lines: list[str] = []
    # One line per availability notice, naming every entry it covers (one notice often covers a
    # provider's whole line-up).
    notices: dict[str, list[str]] = {}
    for k, p in sorted(cat.models.items()):
        lines.append(f"{k}: {p.source} ({p.date})" + (f"; same figures in {p.confirmed_source} ({p.confirmed_date})"
                                                      if p.confirmed_date else "") + (f"; {p.note}" if p.note else ""))
        for what, a in (("", p.availability), (" fine-tuning", p.finetune.availability if p.finetune else None)):
            if a is not None and a.source:
                head = f"{a.describe(on)}: {a.source} (read {a.date})" + (f"; {a.note}" if a.note else "")
                notices.setdefault(head, []).append(k + what)
    lines += [f"{', '.join(names)}: {head}" for head, names in notices.items()]
    for k, gpu in sorted(cat.gpus.items()):
        lo, hi = gpu.price_range
        read = min(o.date for o in gpu.offers)
        old = _age(read, on) > max_age_days
        if old:
            stale.append(k)
        g.add_row(escape(k), f"{gpu.peak_bf16_tflops:g}" if gpu.peak_bf16_tflops else "?",
                  f"{gpu.memory_gb:g}" if gpu.memory_gb else "?", f"{lo:.2f}-{hi:.2f}" if hi > lo else f"{lo:.2f}",
                  Text(read + (" !" if old else ""), style="yellow" if old else ""),
                  escape(", ".join(f"{o.provider} {o.per_gpu_hour:.2f}" for o in gpu.offers)))
        if gpu.spec_source:
            lines.append(f"{k} datasheet: {gpu.spec_source}")
        for o in gpu.offers:
            lines.append(f"{k}: {o.provider} {o.instance} ({o.gpus} GPU{'s' if o.gpus > 1 else ''}) "
                         f"${o.usd_per_hour:g}/h = ${o.per_gpu_hour:.2f}/GPU-hour; {o.source} ({o.date})"
                         + (f"; {o.note}" if o.note else ""))
    if cat.cpu is not None:
        lo, hi = cat.cpu.price_range
        g.add_row("cpu (per vCPU)", "—", "—", f"{lo:.4f}-{hi:.4f}", Text(cat.cpu.date),
                  ", ".join(f"{o.provider} {o.instance} {o.per_vcpu_hour:.4f}" for o in cat.cpu.offers))
        if _age(cat.cpu.date, on) > max_age_days:
            stale.append("cpu")
        for o in cat.cpu.offers:
            lines.append(f"cpu: {o.provider} {o.instance} ({o.vcpus} vCPUs) ${o.usd_per_hour:g}/h = "
                         f"${o.per_vcpu_hour:.4f}/vCPU-hour; {o.source} ({o.date})" + (f"; {o.note}" if o.note else ""))
    warnings = []
    age = cat.age_days(on)
    if age > max_age_days:
        warnings.append(f"the catalog was revised {cat.date}, {age} days before {on} (more than {max_age_days}): "
                        f"prices and availability may have changed; {OVERRIDE_HINT}")
    if stale:
        warnings.append(f"{len(stale)} entries were read more than {max_age_days} days before {on} (marked !): "
                        f"{', '.join(stale)}; check their sources, or {OVERRIDE_HINT}")
    return m, g, lines, warnings
