"""What the verdict is made of: each rung judged against the target, and the recommendation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rungwise.advise.factors import Signal
from rungwise.config.task import Target
from rungwise.types import RungKind


@dataclass
class RungStatus:
    """One rung judged against the target."""

    rung: str
    kind: RungKind
    value: float
    ci_low: float
    ci_high: float
    meets: bool  # point estimate meets the target
    ci_meets: bool  # the whole 95% CI meets it
    established: bool  # meets, and its gain over a failing rung below is significant
    total_monthly_usd: float | None
    note: str = ""


@dataclass
class Verdict:
    """The recommendation: ``recommended`` rung (None when nothing qualifies), its reasons, the
    measured gap that justifies climbing above the first rung, and next steps."""

    recommended: str | None
    headline: str
    confidence: Literal["high", "moderate", "none"]
    reasons: list[str] = field(default_factory=list)
    gap: str | None = None
    next_steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    factors_lean: str = "no preference"
    statuses: list[RungStatus] = field(default_factory=list)
    break_evens: list[dict[str, Any]] = field(default_factory=list)
    #: what kind of failures each rung shows and which rung closed which kind (behaviour vs knowledge)
    diagnosis: list[str] = field(default_factory=list)
    #: what the costs rest on: pricing date, catalog age, prices used, assumptions, offers left out
    pricing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """Plain-text rendering (for logs, the README and Markdown)."""
        lines = [self.headline]
        if self.gap:
            lines.append(f"Gap: {self.gap}")
        if self.diagnosis:
            lines.append("Failures (behaviour = wrong format, knowledge = wrong content):")
            lines += [f"  - {d}" for d in self.diagnosis]
        if self.reasons:
            lines.append("Reasons:")
            lines += [f"  - {r}" for r in self.reasons]
        if self.warnings:
            lines.append("Warnings:")
            lines += [f"  - {w}" for w in self.warnings]
        if self.next_steps:
            lines.append("Next steps:")
            lines += [f"  - {s}" for s in self.next_steps]
        return "\n".join(lines)


def higher_is_better(t: Target) -> bool:
    return t.op in (">=", ">")


def fmt3(x: float) -> str:
    return f"{x:.3f}"



def n_for_halfwidth(n: int, halfwidth: float, wanted: float) -> int:
    # A CI's half-width shrinks with 1/sqrt(n).
    if wanted <= 0 or halfwidth <= 0:
        return n
    return int(math.ceil(n * (halfwidth / wanted) ** 2))
