"""The rules of the verdict: which measured rungs qualify, which the factors pass over, and which
is cheapest. What the verdict *says* about them is :mod:`rungwise.advise.prose`.

The verdict starts from the measurements: the cheapest rung whose score meets the target, where
a rung only counts if its gain over the rung below is significant when the rung below misses the
target. The factors then narrow the candidates (never against the data: a factor that would
exclude every candidate becomes a warning instead).

Example:
    >>> v = verdict(ladder, task, price_rungs(ladder.rungs, task))  # doctest: +SKIP
    >>> v.recommended, v.reasons[0]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rungwise.advise.factors import evaluate_factors, lean
from rungwise.advise.model import RungStatus, Verdict, fmt3, higher_is_better
from rungwise.advise.prose import explain_cheap_answers, explain_failures, explain_none, explain_pick
from rungwise.config.factors import FEW_EXAMPLES, HIGH_CONSISTENCY_VALID, SHORT_TIME_DAYS
from rungwise.config.task import Target, Task, parse_target
from rungwise.economics.cost import RungCost, break_evens, daily_volume_of, price_rungs
from rungwise.types import Ladder, RungResult


def _status(results: Sequence[RungResult], target: Target | None, costs: dict[str, RungCost]) -> list[RungStatus]:
    out: list[RungStatus] = []
    hib = higher_is_better(target) if target else True
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
        out.append(RungStatus(r.rung, r.kind, m.value, m.ci_low, m.ci_high, meets, ci_meets,
                              established, monthly, note))
    return out


def _pricing_notes(v: Verdict, costs: Sequence[RungCost]) -> None:
    """What the costs rest on (date, catalog age, machine, what-if) and the offers left out."""
    basis = costs[0].basis if costs else None
    if basis is None:
        return
    v.pricing = basis.to_dict()
    v.reasons.append("costs " + basis.headline() + "; " + "; ".join(basis.assumptions))
    v.warnings += [x.sentence() for x in basis.left_out] + basis.warnings()


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


def verdict(
    climb: Ladder,
    task: Task,
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
    4. The cheapest remaining rung at the task's volume (running + amortized one-off) wins; at
       equal cost, the one that sends fewer tokens per call, then the lowest on the ladder.

    Costs are those of the measured model (never a what-if), and an offer a new customer cannot
    buy on the pricing date is never among them: the verdict says which were left out and why.

    ``costs`` defaults to :func:`rungwise.economics.cost.price_rungs` of the climb's rungs.
    """
    results = list(climb.rungs)
    target = parse_target(climb.target) if climb.target else task.parsed_target
    if costs is None:
        costs = price_rungs(results, task, measured=getattr(climb, "measured", None))
    by_name = {c.rung: c for c in costs}
    volume, volume_given = daily_volume_of(task)
    factors = task.factors
    signals = evaluate_factors(factors, volume if volume_given else None)
    bes = break_evens(costs)
    statuses = _status(results, target, by_name)
    v = Verdict(recommended=None, headline="", confidence="none", signals=signals, factors_lean=lean(signals),
                statuses=statuses, break_evens=[b.to_dict() for b in bes])
    if not volume_given:
        v.warnings.append(f"no daily volume given: costs assume {volume:,} requests/day (set economics.daily_volume)")
    order = list(task.rungs.order)
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
                                       f"{fmt3(s.ci_low)} does not clear the target")
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
            cands = _narrow(cands, lambda s: not s.kind.trains_weights,
                            "fine-tuning passed over: " + "; ".join(blockers), warnings, dropped)

    # ---- pick the cheapest ----------------------------------------------------------------
    order = {s.rung: i for i, s in enumerate(statuses)}
    if cands:
        priced = [s for s in cands if s.total_monthly_usd is not None]
        if priced:
            # At equal cost (self-hosted rungs that all fit on one server) the rung that sends fewer
            # tokens per call wins: it is cheaper as volume grows and on any per-token price.
            tokens = {r.rung: r.mean_prompt_tokens + r.mean_completion_tokens for r in results}
            pick = min(priced, key=lambda s: (s.total_monthly_usd, tokens[s.rung], order[s.rung]))
        else:
            pick = min(cands, key=lambda s: order[s.rung])
            warnings.append("no prices for the qualifying rungs: picked the lowest rung on the ladder")
        explain_pick(v, pick, statuses, results, by_name, target, dropped, bes, volume, factors)
    else:
        explain_none(v, statuses, results, target, dropped, factors,
                     unmeasured={n: task.rungs.rung_class(n).kind for n in unmeasured})

    v.reasons += explain_cheap_answers(results, task.model.constraint_support())
    v.diagnosis, failure_step = explain_failures(results, labels=bool(task.labels))
    if failure_step and v.confidence != "high":  # the gap is not closed: its kind says where to go next
        v.next_steps.insert(0, failure_step)
    v.reasons += ["factor: " + s.sentence() for s in signals]
    if signals:
        v.reasons.append(f"the factors alone lean: {v.factors_lean}")
    _pricing_notes(v, costs)
    return v
