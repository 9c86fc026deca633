"""What the verdict says: the headline, the reasons with the measured numbers, the gap that
justifies climbing above the first rung, and the next steps. The rules that decide are in
:mod:`rungwise.advise.judge`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rungwise.advise.model import RungStatus, Verdict, fmt3, higher_is_better, n_for_halfwidth
from rungwise.config.factors import ENOUGH_EXAMPLES, HIGH_CONSISTENCY_VALID, DecisionFactors
from rungwise.config.task import Target
from rungwise.economics.cost import RungCost
from rungwise.money import usd
from rungwise.types import RungKind, RungResult


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
    s = (f"${1000 * d.per_call(vol):,.4f} per 1,000 requests, {usd(c.total_monthly(), 'unpriced')}/month at {vol:,}/day "
         f"({d.mode.replace('_', '-')}: {d.label}")
    if d.mode == "hosted" and d.hit_rate(vol) > 0:
        s += f", {d.hit_rate(vol):.0%} prefix-cache hits"
    if d.one_off:
        s += f", incl. {usd(d.one_off.amortized_per_month(c.horizon_days), 'unpriced')}/month of amortized training"
    return s + ")"


def explain_pick(
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
    no_llm = " (no LLM needed)" if not pick.kind.uses_llm else ""
    v.headline = (f"Recommended: {pick.rung}{no_llm}. {m.name} {fmt3(m.value)} [95% CI {fmt3(m.ci_low)}, "
                  f"{fmt3(m.ci_high)}]" + (f" meets {tgt}" if target else "") + f"; {_cost_phrase(costs.get(pick.rung))}.")
    # Why not the others.
    for s in statuses:
        if s.rung == pick.rung:
            continue
        base = f"{s.rung}: {m.name} {fmt3(s.value)} [{fmt3(s.ci_low)}, {fmt3(s.ci_high)}]"
        if target is not None and not s.meets:
            gap = abs(s.value - target.value)
            v.reasons.append(f"{base} misses {tgt} by {gap:.3f}" + _valid_note(results[[x.rung for x in statuses].index(s.rung)]))
        elif s.rung in dropped:
            v.reasons.append(f"{base} meets the target but was passed over: {dropped[s.rung]}")
        elif target is not None and not s.established:
            v.reasons.append(f"{base} meets the target on its point estimate, but {s.note}")
        elif target is not None:
            v.reasons.append(f"{base} also meets the target but {_costlier(s, pick, results, statuses)}")
    # The pick's own evidence.
    if target is not None:
        if pick.ci_meets:
            v.reasons.append(f"{pick.rung}: the whole 95% CI clears the target")
        else:
            bound = m.ci_low if higher_is_better(target) else m.ci_high
            v.reasons.append(f"{pick.rung}: the point estimate meets the target but the CI bound {fmt3(bound)} does "
                             "not; confidence is moderate")
            hw = (m.ci_high - m.ci_low) / 2
            want = abs(m.value - target.value)
            if want > 0:
                v.next_steps.append(
                    f"to confirm {pick.rung}, evaluate on about {n_for_halfwidth(m.n, hw, want):,} test examples "
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
        best_below = max(below, key=lambda s: s.value if (target is None or higher_is_better(target)) else -s.value)
        delta = pick.value - best_below.value
        g = (f"{pick.rung} {fmt3(pick.value)} vs {best_below.rung} {fmt3(best_below.value)} "
             f"[{fmt3(best_below.ci_low)}, {fmt3(best_below.ci_high)}]: {delta:+.3f}")
        if r.comparison is not None and r.comparison.against == best_below.rung:
            g += f" (paired test p={r.comparison.p_value:.3g})"
        elif r.comparison is not None:
            g += f"; against {r.comparison.against} directly below: {r.comparison.delta:+.3f} (p={r.comparison.p_value:.3g})"
        if target is not None and not best_below.meets:
            g += f"; {best_below.rung} misses {tgt} by {abs(best_below.value - target.value):.3f}"
        elif target is not None and best_below.rung in dropped:
            g += f"; {best_below.rung} was passed over: {dropped[best_below.rung]}"
        elif target is not None:
            g += f"; {best_below.rung} also meets the target but {_costlier(best_below, pick, results, statuses)}"
        v.gap = g
    if pick.kind.trains_weights and factors.clean_examples is None:
        v.next_steps.append("set factors.clean_examples: fine-tuning needs 500+ clean examples to be dependable")


def _costlier(s: RungStatus, pick: RungStatus, results: list[RungResult], statuses: list[RungStatus]) -> str:
    """Why ``s``, which also meets the target, lost to ``pick``: its monthly cost, or at the same
    cost its tokens per call (what the verdict breaks ties on), with the numbers."""
    if s.total_monthly_usd is None or pick.total_monthly_usd is None:
        return f"costs {usd(s.total_monthly_usd, 'unpriced')}/month vs {usd(pick.total_monthly_usd, 'unpriced')}"
    if s.total_monthly_usd != pick.total_monthly_usd:
        more = s.total_monthly_usd - pick.total_monthly_usd
        if usd(s.total_monthly_usd) == usd(pick.total_monthly_usd):  # a difference below the cents shown
            return f"costs {usd(more)}/month more ({usd(s.total_monthly_usd)}/month vs {usd(pick.total_monthly_usd)})"
        return f"costs {usd(s.total_monthly_usd)}/month vs {usd(pick.total_monthly_usd)}"
    names = [x.rung for x in statuses]
    tok = {x.rung: results[names.index(x.rung)].mean_prompt_tokens + results[names.index(x.rung)].mean_completion_tokens
           for x in (s, pick)}
    same = f"costs the same ({usd(s.total_monthly_usd)}/month at this volume)"
    if tok[s.rung] > tok[pick.rung]:
        return (f"{same} and sends {tok[s.rung] - tok[pick.rung]:,.0f} more tokens per call "
                f"({tok[s.rung]:,.0f} vs {tok[pick.rung]:,.0f} for {pick.rung})")
    return f"{same} with as many tokens per call; {pick.rung} is lower on the ladder"


def explain_none(
    v: Verdict, statuses: list[RungStatus], results: list[RungResult], target: Target | None,
    dropped: dict[str, str], factors: DecisionFactors, unmeasured: dict[str, RungKind] | None = None,
) -> None:
    """The verdict when no rung qualifies: each rung's miss, and the next steps. ``unmeasured``: the
    rungs of rungs.order this climb did not measure (skipped, or left out), by kind, so that a step
    names them rather than asking to add what is already in the order."""
    assert target is not None
    unmeasured = unmeasured or {}
    untried_training = [n for n, k in unmeasured.items() if k.trains_weights]
    untried_retrieval = [n for n, k in unmeasured.items() if k.retrieves]
    hib = higher_is_better(target)
    best_i = max(range(len(statuses)), key=lambda i: statuses[i].value if hib else -statuses[i].value)
    best = statuses[best_i]
    r = results[best_i]
    name = r.metric.name
    v.confidence = "none"
    v.recommended = None
    v.headline = (f"No rung meets {target}. Best: {best.rung} at {name} {fmt3(best.value)} "
                  f"[{fmt3(best.ci_low)}, {fmt3(best.ci_high)}].")
    for s, rr in zip(statuses, results, strict=True):
        base = f"{s.rung}: {name} {fmt3(s.value)} [{fmt3(s.ci_low)}, {fmt3(s.ci_high)}]"
        if not s.meets:
            v.reasons.append(f"{base} misses {target} by {abs(s.value - target.value):.3f}" + _valid_note(rr))
        elif s.rung in dropped:
            v.reasons.append(f"{base} meets the target on its point estimate but: {dropped[s.rung]}")
        else:
            v.reasons.append(f"{base} meets the target on its point estimate, but {s.note}")
    trained = [s for s in statuses if s.kind.trains_weights]
    unproven = [s for s in statuses if s.meets and not s.established]
    strict = [s for s in statuses if s.meets and s.established and not s.ci_meets]
    steps = v.next_steps
    if unproven or strict:
        s0 = (unproven or strict)[0]
        rr = results[[s.rung for s in statuses].index(s0.rung)]
        hw = (rr.metric.ci_high - rr.metric.ci_low) / 2
        want = max(abs(rr.metric.value - target.value), hw / 3)
        steps.append(f"measure {s0.rung} on more test examples (about {n_for_halfwidth(rr.metric.n, hw, want):,}, now "
                     f"{rr.metric.n}) to tell whether it really meets the target")
    bound = best.ci_high if hib else best.ci_low
    if target.met(bound) and not best.meets:
        steps.append(f"the target lies inside {best.rung}'s CI: more test examples could settle it")
    if not trained:
        if untried_training:
            steps.append(f"climb {', '.join(untried_training)} (in rungs.order, not measured in this run) to measure "
                         "whether training closes the gap")
        elif factors.clean_examples is not None and factors.clean_examples < ENOUGH_EXAMPLES:
            steps.append(f"collect {ENOUGH_EXAMPLES}+ clean examples (you have {factors.clean_examples}), then add the "
                         "finetune rung")
        else:
            steps.append("add the finetune rung (rungs.order) to measure whether training closes the gap")
    if trained:
        records = [rr.training for s, rr in zip(statuses, results, strict=True)
                   if s in trained and rr.training and rr.training.examples]  # 0: not known (trained elsewhere)
        more = f" (trained on {records[0].examples})" if records else ""
        steps.append(f"more clean training data{more}: fine-tuned scores usually keep rising with examples")
    steps.append("a larger base model (model.id): a bigger model starts higher on every rung")
    valid = r.format_valid_rate
    if valid < 0.9:
        steps.append(f"{1 - valid:.0%} of {best.rung}'s answers were not in a valid format: tighten the instructions, add "
                     "demos, or fine-tune for the format")
    wrong_valid = sum(1 for sc, ok in zip(r.scores, r.valid, strict=False) if ok and sc < 1)
    # Wrong answers whose expected values are in the input are misreadings; documents would not help.
    extraction = mostly_extraction(r.failures)
    if (not extraction and not any(s.kind.retrieves for s in statuses)
            and (factors.knowledge_change in ("fast", "slow") or wrong_valid > 0)):
        if untried_retrieval:
            steps.append(f"if the failures are missing knowledge, climb {', '.join(untried_retrieval)} (in rungs.order, "
                         "not measured in this run)")
        else:
            steps.append("if the failures are missing knowledge (facts the model cannot know), add the rag rung with "
                         "your documents as the knowledge source")
    if not steps:
        steps.append("revisit the target or the metric: every measured rung falls short")


def mostly_extraction(failures: dict[str, int] | None) -> bool:
    """Whether most valid-but-wrong answers had their expected values in the input (extraction misses)."""
    return bool(failures) and 2 * failures.get("knowledge_in_input", 0) > failures.get("knowledge", 0)


def explain_failures(results: Sequence[RungResult], *, labels: bool = False) -> tuple[list[str], str | None]:
    """Per rung, its failures by kind and what its step up closed; and the next step the remaining
    failures of the best rung point to (None when there is no clear majority).

    ``labels``: the task answers with one of its labels, so a valid but wrong answer is a confused
    label (what more examples of those labels teach) unless telling the labels apart needs facts.

    "Fine-tune for behaviour, RAG for knowledge": a rung whose failures are mostly wrong formats
    needs the format enforced (constrained decoding, demos, a fine-tune); one whose failures are
    mostly valid but wrong answers needs the facts (retrieval), not training.
    """
    lines: list[str] = []
    prev: RungResult | None = None
    for r in results:
        f = r.failures
        if not f:
            prev = r
            continue
        n = r.metric.n
        line = f"{r.rung}: {f['behaviour']} of {n} fail on format (behaviour), {f['knowledge']} on content (knowledge)"
        traced = f.get("knowledge_retrieved", 0) + f.get("knowledge_not_retrieved", 0)
        if traced:
            line += (f"; of those, the gold passage was not retrieved for {f['knowledge_not_retrieved']} and "
                     f"retrieved but misread for {f['knowledge_retrieved']}")
        elif f.get("knowledge_in_input"):
            line += f"; the expected answer is in the input for {f['knowledge_in_input']} of those"
        if prev is not None and prev.failures:
            db = prev.failures["behaviour"] - f["behaviour"]
            dk = prev.failures["knowledge"] - f["knowledge"]
            line += f"; against {prev.rung}: {_closed(db, 'format')}, {_closed(dk, 'content')}"
        lines.append(line)
        prev = r
    measured = [r for r in results if r.failures]
    if not measured:
        return lines, None
    best = max(measured, key=lambda r: r.metric.value)
    b, k = best.failures["behaviour"], best.failures["knowledge"]
    if b + k == 0:
        return lines, None
    step = None
    if k >= 2 * b:
        if best.kind.retrieves and best.failures.get("knowledge_not_retrieved", 0) > best.failures.get(
                "knowledge_retrieved", 0):
            step = (f"{best.rung}'s remaining failures are knowledge ({k} of {b + k}), mostly passages retrieval "
                    "missed: improve retrieval (more k, better chunking, the fused retriever) before training")
        elif best.kind.retrieves:
            misread = best.failures.get("knowledge_retrieved", 0)
            step = (f"{best.rung}'s remaining failures are knowledge ({k} of {b + k}), {misread} of them with the gold "
                    "passage retrieved: the model misreads it; a larger model or a fine-tune on answering from "
                    "passages (the hybrid rung) is next")
        elif labels:
            step = (f"{best.rung}'s remaining failures are valid labels but the wrong ones ({k} of {b + k}): the model "
                    "confuses labels; more training examples of the confused labels or clearer label definitions in "
                    "the instructions, and retrieval (the rag rung) only if telling them apart needs facts in documents")
        elif mostly_extraction(best.failures):
            step = (f"{best.rung}'s remaining failures are valid but wrong answers ({k} of {b + k}), "
                    f"{best.failures['knowledge_in_input']} of them with the expected values in the input itself: the "
                    "model misreads what it was given, which retrieval cannot fix; demos of that extraction, a larger "
                    "model or a fine-tune are next")
        else:
            step = (f"{best.rung}'s remaining failures are knowledge ({k} of {b + k} are valid but wrong): if the facts "
                    "are in documents, add retrieval (the rag rung) rather than training")
    elif b >= 2 * k:
        step = (f"{best.rung}'s remaining failures are behaviour ({b} of {b + k} answers are not in the format): "
                "constrain the output (the constrained rung) or add demos before fine-tuning for the format")
    return lines, step


def _closed(delta: int, what: str) -> str:
    if delta > 0:
        return f"{delta} fewer {what} failures"
    if delta < 0:
        return f"{-delta} more {what} failures"
    return f"no change in {what} failures"


def explain_cheap_answers(results: Sequence[RungResult], constraint_support: str | None) -> list[str]:
    """Reasons from the two cheap answers, when the ladder measured them.

    A classical baseline (a rung that uses no LLM) is the floor every LLM rung must clear: each
    LLM rung's distance above it. A rung that constrains the output and reaches a valid format
    where the same model unconstrained did not has closed a format gap without training: a
    reason not to fine-tune for format, with whether the deployment can constrain output.
    """
    out: list[str] = []
    baselines = [r for r in results if not r.kind.uses_llm]
    if baselines:
        base = max(baselines, key=lambda r: r.metric.value)
        name = base.metric.name
        llm = [r for r in results if r.kind.uses_llm]
        for r in llm:
            d = r.metric.value - base.metric.value
            out.append(f"{r.rung} vs the classical baseline {base.rung} ({fmt3(base.metric.value)}): {d:+.3f} {name}")
        if llm and all(r.metric.value <= base.metric.value for r in llm):
            out.append(f"no LLM rung scores above the classical baseline {base.rung}: for this score no LLM is needed")
    free = [r for r in results if r.kind.uses_llm and not r.kind.trains_weights and not r.kind.constrains_output]
    for c in (r for r in results if r.kind.constrains_output):
        before = max(free, key=lambda r: r.format_valid_rate, default=None)
        if before is None or c.format_valid_rate < HIGH_CONSISTENCY_VALID or before.format_valid_rate >= HIGH_CONSISTENCY_VALID:
            continue
        where = f"; {constraint_support}" if constraint_support else "; this deployment cannot constrain output"
        out.append(
            f"{c.rung} answers in a valid format {c.format_valid_rate:.0%} of the time where {before.rung} managed "
            f"{before.format_valid_rate:.0%}: constraining the output closes the format gap without training, so "
            f"fine-tuning must earn its place on {c.metric.name} ({c.rung} {fmt3(c.metric.value)}){where}"
        )
    return out
