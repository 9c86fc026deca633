"""The audit's result: findings with file:line lists, a verdict, and renderings (rich, markdown, JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
Verdict = Literal["ready", "ready_with_warnings", "not_ready"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
VERDICT_TEXT = {"ready": "ready", "ready_with_warnings": "ready with warnings", "not_ready": "not ready"}
EXIT_CODES = {"ready": 0, "ready_with_warnings": 1, "not_ready": 2}
SHOW_LINES = 8  # file:line references printed per finding (all of them are in to_dict())

# Findings are grouped under these headings, in this order.
CATEGORIES = ("format", "size", "duplicates", "consistency", "length", "pii", "leakage", "poisoning")


@dataclass
class Finding:
    """One kind of problem, with every line where it occurs.

    ``lines`` are ``file:line`` references (all of them); ``count`` is how many items the finding
    is about (usually ``len(lines)``; for a dataset-level finding such as the size band, 0).
    Personal data never appears in ``message`` or ``samples``: values are masked.
    """

    kind: str
    severity: Severity
    message: str
    lines: list[str] = field(default_factory=list)
    count: int = 0
    category: str = "format"
    hint: str = ""
    samples: list[str] = field(default_factory=list)  # short illustrations (masked)
    rows: list[int] = field(default_factory=list, repr=False)  # item indices, for --fix

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "category": self.category,
            "severity": self.severity,
            "message": self.message,
            "count": self.count,
            "lines": list(self.lines),
            "hint": self.hint,
            "samples": list(self.samples),
        }

    def short_lines(self, n: int = SHOW_LINES) -> str:
        if not self.lines:
            return ""
        shown = ", ".join(_compact(self.lines[:n]))
        more = len(self.lines) - n
        return shown + (f" (+{more} more)" if more > 0 else "")


def _compact(lines: list[str]) -> list[str]:
    """``dir/a.jsonl:3, dir/a.jsonl:9`` -> ``a.jsonl:3, :9`` (the file named once, without its
    directory; ``to_dict()`` keeps the full references)."""
    out, prev = [], None
    for ref in lines:
        f, sep, ln = ref.rpartition(":")
        if sep and ln.isdigit() and f == prev:
            out.append(":" + ln)
        elif sep and ln.isdigit():
            out.append(f"{f.replace(chr(92), '/').rsplit('/', 1)[-1]}:{ln}")
            prev = f
        else:
            out.append(ref)
            prev = None
    return out


@dataclass
class Band:
    """Where the number of clean examples falls, and what that means for fine-tuning."""

    name: str
    low: int
    high: int | None
    meaning: str


@dataclass
class AuditReport:
    """The result of :func:`rungwise.data.audit.audit`.

    Example:
        >>> report = audit("train.jsonl")  # doctest: +SKIP
        >>> report.verdict, report.exit_code  # doctest: +SKIP
        ('ready_with_warnings', 1)
        >>> print(report.to_markdown())  # doctest: +SKIP
    """

    source: str
    format: str
    n_records: int
    n_valid: int
    n_clean: int
    band: Band
    findings: list[Finding]
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    _read: Any = field(default=None, repr=False)  # the rows, for --fix
    _pii_hits: Any = field(default=None, repr=False)
    _drop: dict[int, str] = field(default_factory=dict, repr=False)  # row index -> why --fix drops it

    def clean_examples(self) -> list[Any]:
        """The examples ``--fix`` would keep (valid, not duplicated, not conflicting, ...), in order.

        For callers that hold the data in memory (the climb before a fine-tune rung); personal
        data is not masked here (``write_fixed(..., mask_pii=True)`` does that on disk).
        """
        if self._read is None:
            return []
        return [r.example for r in self._read.rows if r.example is not None and r.index not in self._drop]

    @property
    def verdict(self) -> Verdict:
        """``not_ready`` with any error, ``ready_with_warnings`` with any warning, else ``ready``."""
        sev = {f.severity for f in self.findings}
        return "not_ready" if "error" in sev else "ready_with_warnings" if "warning" in sev else "ready"

    @property
    def exit_code(self) -> int:
        """0 ready, 1 ready with warnings, 2 not ready."""
        return EXIT_CODES[self.verdict]

    @property
    def reasons(self) -> list[str]:
        """The message of every error and warning, most severe first."""
        return [f"{f.severity}: {f.message}" for f in self.sorted_findings() if f.severity != "info"]

    def by_kind(self, kind: str) -> Finding | None:
        """The finding of one kind, if there is one."""
        return next((f for f in self.findings if f.kind == kind), None)

    def sorted_findings(self) -> list[Finding]:
        cat = {c: i for i, c in enumerate(CATEGORIES)}
        return sorted(self.findings, key=lambda f: (SEVERITY_ORDER[f.severity], cat.get(f.category, 99)))

    def summary(self) -> str:
        """One line for the ladder: ``audit: ready with warnings (2 warnings; 1,204 clean examples: ...)``."""
        n_err = sum(f.severity == "error" for f in self.findings)
        n_warn = sum(f.severity == "warning" for f in self.findings)
        parts = []
        if n_err:
            parts.append(f"{n_err} error{'s' * (n_err != 1)}")
        if n_warn:
            parts.append(f"{n_warn} warning{'s' * (n_warn != 1)}")
        counts = "; ".join(parts) + "; " if parts else ""
        return f"audit: {VERDICT_TEXT[self.verdict]} ({counts}{self.n_clean:,} clean examples: {self.band.name})"

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable (``rungwise audit --json``)."""
        return {
            "source": self.source,
            "format": self.format,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "records": self.n_records,
            "valid": self.n_valid,
            "clean": self.n_clean,
            "band": {"name": self.band.name, "low": self.band.low, "high": self.band.high, "meaning": self.band.meaning},
            "reasons": self.reasons,
            "findings": [f.to_dict() for f in self.sorted_findings()],
            "stats": self.stats,
            "seconds": round(self.seconds, 3),
        }

    def to_markdown(self) -> str:
        """A Markdown report (for the ladder report and for pasting into a review)."""
        out = [
            f"## Data audit: {VERDICT_TEXT[self.verdict]}",
            "",
            f"`{self.source}` ({self.format}): {self.n_records:,} records, {self.n_valid:,} valid, "
            f"**{self.n_clean:,} clean**. Size band **{self.band.name}**: {self.band.meaning}",
            "",
        ]
        if self.findings:
            out += ["| severity | check | count | what | where |", "|---|---|---:|---|---|"]
            for f in self.sorted_findings():
                msg = f.message.replace("|", "\\|")
                if f.hint:
                    msg += f" *Fix:* {f.hint.replace('|', '/')}"
                out.append(f"| {f.severity} | {f.kind} | {f.count:,} | {msg} | {f.short_lines(5).replace('|', '/')} |")
            out.append("")
        tok = self.stats.get("tokens")
        if tok:
            out.append(
                f"Tokens ({tok['method']}): {tok['total']:,} in total, median {tok['median']:,} and max {tok['max']:,} per example."
            )
            costs = tok.get("cost_per_epoch") or []
            if costs:
                out.append(
                    "Training cost per epoch: "
                    + "; ".join(f"{c['model']} ${c['usd']:,.2f} (at ${c['usd_per_1m']:.2f}/1M, {c['as_of']})" for c in costs)
                    + "."
                )
            out.append("")
        shapes = self.stats.get("output_shapes")
        if shapes:
            out.append("Output shapes: " + ", ".join(f"{s['share']:.0%} {s['shape']}" for s in shapes[:6]) + ".")
            out.append("")
        return "\n".join(out)

    def render(self, console: Any = None) -> None:
        """Print the report with rich (tables, colours) to ``console`` or stdout."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        con = console or Console()
        colour = {"ready": "green", "ready_with_warnings": "yellow", "not_ready": "red"}[self.verdict]
        con.print(f"[bold {colour}]audit: {VERDICT_TEXT[self.verdict]}[/]  [dim]{escape(self.source)} ({self.format}, {self.seconds:.1f} s)[/]")
        con.print(
            f"{self.n_records:,} records, {self.n_valid:,} valid, [bold]{self.n_clean:,} clean[/] "
            f"-> [bold]{escape(self.band.name)}[/]: {escape(self.band.meaning)}",
            highlight=False,
        )
        if self.findings:
            t = Table(show_lines=False, expand=True)
            t.add_column("sev", no_wrap=True)
            t.add_column("check", no_wrap=True)
            t.add_column("n", justify="right")
            t.add_column("what (and where)", ratio=1)
            sev_style = {"error": "bold red", "warning": "yellow", "info": "dim"}
            for f in self.sorted_findings():
                # Messages, samples and hints quote the user's data (labels such as "[urgent]"):
                # escaped, so rich prints them instead of reading them as markup.
                body = escape(f.message)
                if f.samples:
                    body += "\n[dim]e.g. " + escape(" / ".join(f.samples[:3])) + "[/]"
                if f.lines:
                    body += f"\n[cyan]{escape(f.short_lines())}[/]"
                if f.hint and f.severity != "info":
                    body += f"\n[green]fix:[/] {escape(f.hint)}"
                t.add_row(f"[{sev_style[f.severity]}]{f.severity}[/]", escape(f.kind), f"{f.count:,}" if f.count else "", body)
            con.print(t)
        tok = self.stats.get("tokens")
        if tok:
            con.print(
                f"tokens ({tok['method']}): {tok['total']:,} total, median {tok['median']:,}, max {tok['max']:,} per example",
                highlight=False, markup=False,
            )
            costs = tok.get("cost_per_epoch") or []
            if costs:
                con.print(
                    "training cost per epoch (list prices): "
                    + ", ".join(f"{c['model']} ${c['usd']:,.2f}" for c in costs),
                    highlight=False, markup=False,
                )
        shapes = self.stats.get("output_shapes")
        if shapes:
            con.print("output shapes: " + ", ".join(f"{s['share']:.0%} {s['shape']}" for s in shapes[:6]), highlight=False,
                      markup=False)
