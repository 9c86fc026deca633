"""Decision factors + the measured, priced ladder -> one recommendation with every reason.

Two parts:

1. A rules engine (:func:`evaluate_factors`) that encodes the thresholds practitioners use to
   choose between prompting, RAG and fine-tuning (volume, clean examples, how often requirements
   change, time to production, latency, audit exposure, vocabulary, knowledge churn).
2. :func:`verdict`, which starts from the measurements: the cheapest rung whose score meets the
   target, where a rung only counts if its gain over the rung below is significant when the rung
   below misses the target. The factors then narrow the candidates (never against the data: a
   factor that would exclude every candidate becomes a warning instead), and the reasons say why.

Example:
    >>> v = verdict(climb_result, task, price_rungs(climb_result.rungs, task))  # doctest: +SKIP
    >>> v.recommended, v.reasons[0]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rungwise.config.factors import (
    ENOUGH_EXAMPLES,
    FAST_LATENCY_MS,
    FEW_EXAMPLES,
    HIGH_CONSISTENCY_VALID,
    HIGH_VOLUME,
    LOW_VOLUME,
    SHORT_TIME_DAYS,
    STABLE_UPDATES,
    DecisionFactors,
)
from rungwise.config.task import Target, parse_target
from rungwise.economics.cost import (
    RungCost,
    RungKind,
    break_evens,
    daily_volume_of,
    price_rungs,
    rung_kind,
)
from rungwise.types import ClimbResult, RungResult

# Questions for `rungwise decide` (interactive): field -> (question, choices or type name).
FACTOR_QUESTIONS: dict[str, tuple[str, tuple[str, ...] | str]] = {
    "daily_volume": ("Requests per day in production", "int"),
    "output_consistency": ("How strictly must every answer follow one format", ("low", "medium", "high")),
    "clean_examples": ("Clean labeled examples available for training", "int"),
    "update_frequency": ("How often do the requirements change",
                         ("daily", "weekly", "monthly", "quarterly", "yearly", "stable")),
    "time_to_production_days": ("Days until it must be in production", "int"),
    "latency_ms": ("Required p95 latency in ms", "float"),
    "regulatory": ("Regulatory or audit exposure", ("none", "moderate", "high")),
    "proprietary_vocabulary": ("Does it use in-house vocabulary a base model cannot know", "bool"),
    "knowledge_change": ("How fast does the underlying knowledge change", ("static", "slow", "fast")),
}

Favours = Literal["prompting", "fine_tuning", "small_finetune", "rag", "auditability", "neutral"]


@dataclass
class Signal:
    """What one factor says: which approach it favours (or allows), by which rule."""

    factor: str
    value: str
    favours: Favours
    strength: Literal["favours", "allows", "info"]
    rule: str

    def sentence(self) -> str:
        if self.favours == "neutral":
            return f"{self.factor} = {self.value}: {self.rule}"
        word = {"fine_tuning": "fine-tuning", "small_finetune": "a small fine-tuned model"}.get(self.favours, self.favours)
        return f"{self.factor} = {self.value} {self.strength} {word}: {self.rule}"


def evaluate_factors(factors: DecisionFactors, daily_volume: int | None = None) -> list[Signal]:
    """Apply the field's thresholds to the factors that are set.

    ``daily_volume`` (from economics) is used when ``factors.daily_volume`` is not set.

    >>> [s.favours for s in evaluate_factors(DecisionFactors(clean_examples=120, knowledge_change="fast"))]
    ['prompting', 'rag']
    """
    f = factors
    out: list[Signal] = []
    vol = f.daily_volume if f.daily_volume is not None else daily_volume
    if vol is not None:
        if vol < LOW_VOLUME:
            out.append(Signal("daily_volume", f"{vol:,}", "prompting", "favours",
                              f"under {LOW_VOLUME:,} requests/day a cheaper call rarely repays training"))
        elif vol > HIGH_VOLUME:
            out.append(Signal("daily_volume", f"{vol:,}", "fine_tuning", "favours",
                              f"over {HIGH_VOLUME:,} requests/day the shorter prompts of a fine-tuned model add up"))
        else:
            out.append(Signal("daily_volume", f"{vol:,}", "neutral", "info",
                              f"between {LOW_VOLUME:,} and {HIGH_VOLUME:,} requests/day the measured break-even decides"))
    if f.output_consistency is not None:
        if f.output_consistency == "high":
            out.append(Signal("output_consistency", "high", "fine_tuning", "favours",
                              "a fixed format is what fine-tuning does best; the pick must answer in a valid format "
                              f">= {HIGH_CONSISTENCY_VALID:.0%} of the time"))
        else:
            out.append(Signal("output_consistency", f.output_consistency, "neutral", "info",
                              "no special format requirement"))
    if f.clean_examples is not None:
        n = f.clean_examples
        if n < FEW_EXAMPLES:
            out.append(Signal("clean_examples", f"{n:,}", "prompting", "favours",
                              f"under {FEW_EXAMPLES} clean examples a fine-tune is unreliable; use them as demos"))
        elif n < ENOUGH_EXAMPLES:
            out.append(Signal("clean_examples", f"{n:,}", "neutral", "info",
                              f"{FEW_EXAMPLES}-{ENOUGH_EXAMPLES - 1} clean examples is borderline; "
                              f"{ENOUGH_EXAMPLES}+ is the usual floor for fine-tuning"))
        else:
            out.append(Signal("clean_examples", f"{n:,}", "fine_tuning", "allows",
                              f"{ENOUGH_EXAMPLES}+ clean examples are enough to fine-tune"))
    if f.update_frequency is not None:
        if f.update_frequency in STABLE_UPDATES:
            out.append(Signal("update_frequency", f.update_frequency, "fine_tuning", "allows",
                              "requirements stable for 3+ months let a trained model stay current"))
        else:
            out.append(Signal("update_frequency", f.update_frequency, "prompting", "favours",
                              "requirements changing weekly or monthly are cheaper to follow by editing a prompt "
                              "than by relabeling and retraining"))
    if f.time_to_production_days is not None:
        d = f.time_to_production_days
        if d < SHORT_TIME_DAYS:
            out.append(Signal("time_to_production_days", str(d), "prompting", "favours",
                              f"under {SHORT_TIME_DAYS} days leaves no time for data collection, training and "
                              "evaluation rounds"))
        else:
            out.append(Signal("time_to_production_days", str(d), "neutral", "info", "time allows any rung"))
    if f.latency_ms is not None:
        if f.latency_ms < FAST_LATENCY_MS:
            out.append(Signal("latency_ms", f"{f.latency_ms:g}", "small_finetune", "favours",
                              f"under {FAST_LATENCY_MS} ms favours a small fine-tuned model: short prompts, small "
                              "model, no retrieval step"))
        else:
            out.append(Signal("latency_ms", f"{f.latency_ms:g}", "neutral", "info",
                              "measured p95 latency is checked against it"))
    if f.regulatory is not None:
        if f.regulatory == "high":
            out.append(Signal("regulatory", "high", "auditability", "favours",
                              "the CI's lower bound must meet the target, and prompts and retrieved sources (which "
                              "can be inspected and versioned) are preferred over opaque weights"))
        elif f.regulatory == "moderate":
            out.append(Signal("regulatory", "moderate", "auditability", "info",
                              "keep the run store and the report as the audit trail of the decision"))
        else:
            out.append(Signal("regulatory", "none", "neutral", "info", "no audit requirement"))
    if f.proprietary_vocabulary is not None:
        if f.proprietary_vocabulary:
            out.append(Signal("proprietary_vocabulary", "yes", "fine_tuning", "favours",
                              "a base model does not know in-house terms; training on examples teaches them"))
        else:
            out.append(Signal("proprietary_vocabulary", "no", "neutral", "info", "general vocabulary"))
    if f.knowledge_change is not None:
        if f.knowledge_change == "fast":
            out.append(Signal("knowledge_change", "fast", "rag", "favours",
                              "facts that change quickly go stale in weights; retrieval reads the current source"))
        elif f.knowledge_change == "static":
            out.append(Signal("knowledge_change", "static", "fine_tuning", "allows",
                              "static knowledge can be baked into a fine-tune"))
        else:
            out.append(Signal("knowledge_change", "slow", "neutral", "info", "knowledge changes slowly"))
    return out


def lean(signals: Sequence[Signal]) -> str:
    """Which way the factors lean on their own: 'prompting', 'fine-tuning', 'rag' or 'mixed'.

    A 'favours' counts 1 and an 'allows' 0.5, so permissions never outvote requirements.
    """
    score = {"prompting": 0.0, "fine-tuning": 0.0, "rag": 0.0}
    for s in signals:
        w = {"favours": 1.0, "allows": 0.5}.get(s.strength, 0.0)
        if s.favours == "prompting":
            score["prompting"] += w
        elif s.favours in ("fine_tuning", "small_finetune"):
            score["fine-tuning"] += w
        elif s.favours == "rag":
            score["rag"] += w
    best = max(score.values())
    if best == 0:
        return "no preference"
    top = [k for k, v in score.items() if v == best]
    return top[0] if len(top) == 1 else "mixed (" + " / ".join(top) + ")"


# ------------------------------------------------------------------------------ the verdict
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """Plain-text rendering (for logs, the README and Markdown)."""
        lines = [self.headline]
        if self.gap:
            lines.append(f"Gap: {self.gap}")
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


def _higher_is_better(t: Target) -> bool:
    return t.op in (">=", ">")


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _money(x: float | None) -> str:
    if x is None:
        return "unpriced"
    return f"${x:,.2f}" if x >= 0.01 else f"${x:.4f}"


def _status(results: Sequence[RungResult], target: Target | None, costs: dict[str, RungCost]) -> list[RungStatus]:
    out: list[RungStatus] = []
    hib = _higher_is_better(target) if target else True
    for i, r in enumerate(results):
        m = r.metric
        c = costs.get(r.rung)
        monthly = c.total_monthly() if c else None
        if target is None:
            meets = ci_meets = False
        else:
            meets = target.met(m.value)
            ci_meets = target.met(m.ci_low if hib else m.ci_high)
        established = meets
        note = ""
        if meets and i > 0:
            below = out[i - 1]
            cmp = r.comparison
            if not below.meets:
                better = cmp is not None and cmp.significant and ((cmp.delta > 0) == hib) and cmp.delta != 0
                if not better:
                    established = False
                    if cmp is None:
                        note = f"no paired test against {below.rung}, which misses the target"
                    else:
                        note = (f"its gain over {below.rung} ({cmp.delta:+.3f}, p={cmp.p_value:.3g}) is not "
                                f"significant, and {below.rung} misses the target: the data cannot tell them apart")
        out.append(RungStatus(r.rung, rung_kind(r.rung, r.artifact), m.value, m.ci_low, m.ci_high, meets, ci_meets,
                              established, monthly, note))
    return out


def _narrow(cands: list[RungStatus], keep: Any, why: str, warnings: list[str], dropped: dict[str, str]) -> list[RungStatus]:
    """Keep candidates passing ``keep``; if none would remain, keep all and record a warning."""
    kept = [c for c in cands if keep(c)]
    if not kept:
        warnings.append(why + ": no qualifying rung satisfies it, so it was not applied")
        return cands
    for c in cands:
        if c not in kept:
            dropped[c.rung] = why
    return kept


def _n_for_halfwidth(n: int, halfwidth: float, wanted: float) -> int:
    # A CI's half-width shrinks with 1/sqrt(n).
    if wanted <= 0 or halfwidth <= 0:
        return n
    return int(math.ceil(n * (halfwidth / wanted) ** 2))


def verdict(
    climb: ClimbResult,
    task: Any,
    costs: Sequence[RungCost] | None = None,
) -> Verdict:
    """Turn a measured ladder into a recommendation.

    Rules, in order:

    1. A rung qualifies if its score meets the target; a rung whose lower neighbour misses the
       target qualifies only if its paired test against that neighbour is significant (else the
       data cannot separate it from a failing rung).
    2. Under high regulatory exposure the whole 95% CI must meet the target.
    3. Factors narrow the qualifying rungs (format-valid rate under high consistency, measured
       p95 under a latency requirement, no fine-tune when examples are few, requirements change
       weekly, time is short or knowledge changes fast, inspectable rungs under audit exposure);
       a factor that would leave nothing is reported as a warning instead.
    4. The cheapest remaining rung at the task's volume (running + amortized one-off) wins.

    ``costs`` defaults to :func:`rungwise.economics.cost.price_rungs` of the climb's rungs.
    """
    results = list(climb.rungs)
    target = parse_target(climb.target) if climb.target else getattr(task, "parsed_target", None)
    if costs is None:
        costs = price_rungs(results, task)
    by_name = {c.rung: c for c in costs}
    volume, volume_given = daily_volume_of(task)
    factors: DecisionFactors = getattr(task, "factors", None) or DecisionFactors()
    signals = evaluate_factors(factors, volume if volume_given else None)
    bes = break_evens(costs)
    statuses = _status(results, target, by_name)
    v = Verdict(recommended=None, headline="", confidence="none", signals=signals, factors_lean=lean(signals),
                statuses=statuses, break_evens=[b.to_dict() for b in bes])
    if not volume_given:
        v.warnings.append(f"no daily volume given: costs assume {volume:,} requests/day (set economics.daily_volume)")
    order = list(getattr(getattr(task, "rungs", None), "order", []) or [])
    unmeasured = [n for n in order if n not in {r.rung for r in results}]
    if climb.stopped_at and unmeasured:
        # A rung above the first one to meet the target may still be cheaper at this volume.
        v.warnings.append(f"the climb stopped at {climb.stopped_at}: {', '.join(unmeasured)} not measured, so not "
                          "priced; climb with --all to compare them")
    if not results:
        v.headline = "No rung was measured: nothing to recommend."
        v.next_steps.append("run `rungwise climb task.yaml --all`")
        return v

    res_by = {r.rung: r for r in results}
    dropped: dict[str, str] = {}
    warnings = v.warnings

    # ---- candidates ---------------------------------------------------------------------
    if target is None:
        # No target: the highest rung that beats the rung below significantly, walking up.
        pick_i = 0
        for i in range(1, len(results)):
            cmp = results[i].comparison
            if cmp is not None and cmp.significant and cmp.delta > 0:
                pick_i = i
        cands = [statuses[pick_i]]
        warnings.append("no target set: recommending the highest rung whose gain over the rung below is significant")
    else:
        cands = [s for s in statuses if s.established]
        if factors.regulatory == "high" and cands:
            strict = [s for s in cands if s.ci_meets]
            for s in cands:
                if s not in strict:
                    dropped[s.rung] = ("high regulatory exposure: its 95% CI lower bound "
                                       f"{_fmt(s.ci_low)} does not clear the target")
            cands = strict
        if cands and factors.output_consistency == "high":
            cands = _narrow(cands, lambda s: res_by[s.rung].format_valid_rate >= HIGH_CONSISTENCY_VALID,
                            f"output consistency 'high' needs >= {HIGH_CONSISTENCY_VALID:.0%} format-valid answers",
                            warnings, dropped)
        if cands and factors.latency_ms is not None:
            lim = factors.latency_ms / 1000
            cands = _narrow(cands, lambda s: res_by[s.rung].latency_p95_s <= lim,
                            f"measured p95 latency above the {factors.latency_ms:g} ms requirement", warnings, dropped)
        blockers = []
        if factors.clean_examples is not None and factors.clean_examples < FEW_EXAMPLES:
            blockers.append(f"only {factors.clean_examples} clean examples (< {FEW_EXAMPLES})")
        if factors.update_frequency in ("daily", "weekly", "monthly"):
            blockers.append(f"requirements change {factors.update_frequency}")
        if factors.time_to_production_days is not None and factors.time_to_production_days < SHORT_TIME_DAYS:
            blockers.append(f"{factors.time_to_production_days} days to production")
        if factors.knowledge_change == "fast":
            blockers.append("knowledge changes fast (weights go stale)")
        if factors.regulatory == "high":
            blockers.append("high audit exposure favours inspectable prompts and sources")
        if cands and blockers:
            cands = _narrow(cands, lambda s: s.kind != "finetune",
                            "fine-tuning passed over: " + "; ".join(blockers), warnings, dropped)

    # ---- pick the cheapest ----------------------------------------------------------------
    order = {s.rung: i for i, s in enumerate(statuses)}
    if cands:
        priced = [s for s in cands if s.total_monthly_usd is not None]
        if priced:
            pick = min(priced, key=lambda s: (s.total_monthly_usd, order[s.rung]))
        else:
            pick = min(cands, key=lambda s: order[s.rung])
            warnings.append("no prices for the qualifying rungs: picked the lowest rung on the ladder")
        _explain_pick(v, pick, statuses, results, by_name, target, dropped, bes, volume, factors)
    else:
        _explain_none(v, statuses, results, target, dropped, factors)

    v.reasons += ["factor: " + s.sentence() for s in signals]
    if signals:
        v.reasons.append(f"the factors alone lean: {v.factors_lean}")
    return v


def _valid_note(r: RungResult) -> str:
    # A rung that cannot keep to the answer format fails for a different reason than one that answers wrongly.
    if r.format_valid_rate < 0.9:
        return f" ({r.format_valid_rate:.0%} of its answers in a valid format)"
    return ""


def _cost_phrase(c: RungCost | None) -> str:
    if c is None or c.best() is None:
        return "cost unknown (no price)"
    d = c.best()
    assert d is not None
    vol = c.daily_volume
    s = (f"${1000 * d.per_call(vol):,.4f} per 1,000 requests, {_money(c.total_monthly())}/month at {vol:,}/day "
         f"({d.mode.replace('_', '-')}: {d.label}")
    if d.mode == "hosted" and d.hit_rate(vol) > 0:
        s += f", {d.hit_rate(vol):.0%} prefix-cache hits"
    if d.one_off:
        s += f", incl. {_money(d.one_off.amortized_per_month(c.horizon_days))}/month of amortized training"
    return s + ")"


def _explain_pick(
    v: Verdict, pick: RungStatus, statuses: list[RungStatus], results: list[RungResult],
    costs: dict[str, RungCost], target: Target | None, dropped: dict[str, str], bes: Sequence[Any],
    volume: int, factors: DecisionFactors,
) -> None:
    idx = [s.rung for s in statuses].index(pick.rung)
    r = results[idx]
    m = r.metric
    v.recommended = pick.rung
    tgt = str(target) if target else "no target"
    v.confidence = "high" if (target is None or pick.ci_meets) else "moderate"
    v.headline = (f"Recommended: {pick.rung}. {m.name} {_fmt(m.value)} [95% CI {_fmt(m.ci_low)}, {_fmt(m.ci_high)}]"
                  + (f" meets {tgt}" if target else "") + f"; {_cost_phrase(costs.get(pick.rung))}.")
    # Why not the others.
    for s in statuses:
        if s.rung == pick.rung:
            continue
        base = f"{s.rung}: {m.name} {_fmt(s.value)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]"
        if target is not None and not s.meets:
            gap = abs(s.value - target.value)
            v.reasons.append(f"{base} misses {tgt} by {gap:.3f}" + _valid_note(results[[x.rung for x in statuses].index(s.rung)]))
        elif s.rung in dropped:
            v.reasons.append(f"{base} meets the target but was passed over: {dropped[s.rung]}")
        elif target is not None and not s.established:
            v.reasons.append(f"{base} meets the target on its point estimate, but {s.note}")
        elif target is not None:
            v.reasons.append(f"{base} also meets the target but costs {_money(s.total_monthly_usd)}/month vs "
                             f"{_money(pick.total_monthly_usd)}")
    # The pick's own evidence.
    if target is not None:
        if pick.ci_meets:
            v.reasons.append(f"{pick.rung}: the whole 95% CI clears the target")
        else:
            bound = m.ci_low if _higher_is_better(target) else m.ci_high
            v.reasons.append(f"{pick.rung}: the point estimate meets the target but the CI bound {_fmt(bound)} does "
                             "not; confidence is moderate")
            hw = (m.ci_high - m.ci_low) / 2
            want = abs(m.value - target.value)
            if want > 0:
                v.next_steps.append(
                    f"to confirm {pick.rung}, evaluate on about {_n_for_halfwidth(m.n, hw, want):,} test examples "
                    f"(now {m.n}): the CI would then clear the target if the score holds"
                )
    if r.comparison is not None:
        c = r.comparison
        sig = "significant" if c.significant else "not significant"
        v.reasons.append(f"{pick.rung} vs {c.against}: {c.delta:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}], "
                         f"p={c.p_value:.3g} ({c.test}): {sig}")
    v.reasons.append(f"{pick.rung}: format-valid {r.format_valid_rate:.1%}, p95 latency {1000 * r.latency_p95_s:,.0f} ms "
                     f"(measured on the climb's hardware)")
    # Break-evens that bear on the choice: the pick against rungs that also qualify.
    qualifying = {s.rung for s in statuses if s.established or target is None}
    for be in bes:
        if pick.rung in (be.finetune, be.against) and {be.finetune, be.against} <= qualifying:
            v.reasons.append(be.sentence())
    # The gap that justifies climbing above the first rung.
    if idx > 0:
        below = statuses[:idx]
        best_below = max(below, key=lambda s: s.value if (target is None or _higher_is_better(target)) else -s.value)
        delta = pick.value - best_below.value
        g = (f"{pick.rung} {_fmt(pick.value)} vs {best_below.rung} {_fmt(best_below.value)} "
             f"[{_fmt(best_below.ci_low)}, {_fmt(best_below.ci_high)}]: {delta:+.3f}")
        if r.comparison is not None and r.comparison.against == best_below.rung:
            g += f" (paired test p={r.comparison.p_value:.3g})"
        elif r.comparison is not None:
            g += f"; against {r.comparison.against} directly below: {r.comparison.delta:+.3f} (p={r.comparison.p_value:.3g})"
        if target is not None and not best_below.meets:
            g += f"; {best_below.rung} misses {tgt} by {abs(best_below.value - target.value):.3f}"
        elif target is not None and best_below.rung in dropped:
            g += f"; {best_below.rung} was passed over: {dropped[best_below.rung]}"
        elif target is not None:
            g += f"; {best_below.rung} also meets the target, {pick.rung} is cheaper at this volume"
        v.gap = g
    if pick.kind == "finetune" and factors.clean_examples is None:
        v.next_steps.append("set factors.clean_examples: fine-tuning needs 500+ clean examples to be dependable")


def _explain_none(
    v: Verdict, statuses: list[RungStatus], results: list[RungResult], target: Target | None,
    dropped: dict[str, str], factors: DecisionFactors,
) -> None:
    assert target is not None
    hib = _higher_is_better(target)
    best_i = max(range(len(statuses)), key=lambda i: statuses[i].value if hib else -statuses[i].value)
    best = statuses[best_i]
    r = results[best_i]
    name = r.metric.name
    v.confidence = "none"
    v.recommended = None
    v.headline = (f"No rung meets {target}. Best: {best.rung} at {name} {_fmt(best.value)} "
                  f"[{_fmt(best.ci_low)}, {_fmt(best.ci_high)}].")
    for s, rr in zip(statuses, results, strict=True):
        base = f"{s.rung}: {name} {_fmt(s.value)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]"
        if not s.meets:
            v.reasons.append(f"{base} misses {target} by {abs(s.value - target.value):.3f}" + _valid_note(rr))
        elif s.rung in dropped:
            v.reasons.append(f"{base} meets the target on its point estimate but: {dropped[s.rung]}")
        else:
            v.reasons.append(f"{base} meets the target on its point estimate, but {s.note}")
    kinds = {s.kind for s in statuses}
    unproven = [s for s in statuses if s.meets and not s.established]
    strict = [s for s in statuses if s.meets and s.established and not s.ci_meets]
    steps = v.next_steps
    if unproven or strict:
        s0 = (unproven or strict)[0]
        rr = results[[s.rung for s in statuses].index(s0.rung)]
        hw = (rr.metric.ci_high - rr.metric.ci_low) / 2
        want = max(abs(rr.metric.value - target.value), hw / 3)
        steps.append(f"measure {s0.rung} on more test examples (about {_n_for_halfwidth(rr.metric.n, hw, want):,}, now "
                     f"{rr.metric.n}) to tell whether it really meets the target")
    bound = best.ci_high if hib else best.ci_low
    if target.met(bound) and not best.meets:
        steps.append(f"the target lies inside {best.rung}'s CI: more test examples could settle it")
    if best.kind != "finetune" and "finetune" not in kinds:
        if factors.clean_examples is not None and factors.clean_examples < ENOUGH_EXAMPLES:
            steps.append(f"collect {ENOUGH_EXAMPLES}+ clean examples (you have {factors.clean_examples}), then add the "
                         "finetune rung")
        else:
            steps.append("add the finetune rung (rungs.order) to measure whether training closes the gap")
    if "finetune" in kinds:
        ft = [s for s in statuses if s.kind == "finetune"]
        n_train = next((results[[x.rung for x in statuses].index(s.rung)].artifact.get("train_examples") for s in ft), None)
        more = f" (trained on {n_train})" if n_train else ""
        steps.append(f"more clean training data{more}: fine-tuned scores usually keep rising with examples")
    steps.append("a larger base model (model.id): a bigger model starts higher on every rung")
    valid = r.format_valid_rate
    if valid < 0.9:
        steps.append(f"{1 - valid:.0%} of {best.rung}'s answers were not in a valid format: tighten the instructions, add "
                     "demos, or fine-tune for the format")
    wrong_valid = sum(1 for sc, ok in zip(r.scores, r.valid, strict=False) if ok and sc < 1)
    if "rag" not in kinds and (factors.knowledge_change in ("fast", "slow") or wrong_valid > 0):
        steps.append("if the failures are missing knowledge (facts the model cannot know), add the rag rung with your "
                     "documents as the knowledge source")
    if not steps:
        steps.append("revisit the target or the metric: every measured rung falls short")
