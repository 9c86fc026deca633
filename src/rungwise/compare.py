"""Two climbs of the same task side by side (a new base model, prompt or data version), and the
CI gate that fails a build when a rung regresses.

"Revisit it every time the base models jump": climb the task again with the new model, then
``rungwise compare OLD NEW`` shows, per rung, both scores with their CIs, the paired difference
on the same test examples with its CI and test, tokens and cost per call side by side, and what
the change does to the verdict. Two climbs are only comparable on the same test split: the
comparison refuses, with the reason, when the splits differ.

Example:
    >>> c = compare_runs(12, 15)  # doctest: +SKIP
    >>> [(r.rung, r.comparison.delta) for r in c.rungs if r.comparison]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rungwise.climb import ClimbResult, load_climb
from rungwise.errors import RungwiseError
from rungwise.evaluate.scores import ScoreSet
from rungwise.evaluate.stats import paired_test
from rungwise.store import Store
from rungwise.types import Comparison, MetricValue

#: Metrics whose aggregate is recomputed from labels (the paired test needs the gold labels).
_LABEL_AGGREGATED = {"macro_f1"}


@dataclass
class RungPair:
    """One rung measured in both climbs."""

    rung: str
    a: MetricValue
    b: MetricValue
    #: b - a on the same test examples, with its paired CI and test
    comparison: Comparison
    a_tokens: float
    b_tokens: float
    a_per_1k_usd: float | None
    b_per_1k_usd: float | None
    a_meets: bool
    b_meets: bool


@dataclass
class RunComparison:
    """What changed between climb ``a`` (before) and climb ``b`` (after)."""

    task: str
    a_run: int
    b_run: int
    a_model: str
    b_model: str
    n_test: int
    target: str | None
    rungs: list[RungPair]
    only_in_a: list[str]
    only_in_b: list[str]
    a_recommended: str | None
    b_recommended: str | None
    verdict_change: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scoreset(store: Store, rung_id: int, metric: str, order: list[str]) -> ScoreSet:
    rows = store.predictions(rung_id)
    got = [rows[eid] for eid in order]
    scores = [float(r["score"]) if r["score"] is not None else 0.0 for r in got]
    valid = [bool(r["valid"]) for r in got]
    parsed = [r["parsed"] or "" for r in got]
    if metric in _LABEL_AGGREGATED:
        return ScoreSet(metric, scores, valid, parsed, gold=[r["expected"] for r in got], aggregation="macro_f1")
    return ScoreSet(metric, scores, valid, parsed)


def _test_ids(store: Store, climb_id: int) -> list[str]:
    """The example ids of a climb's test split, in order (from any finished rung's predictions)."""
    for r in store.rungs(climb_id):
        if r["status"] == "done":
            preds = sorted(store.predictions(r["id"]).values(), key=lambda p: p["example_index"])
            return [p["example_id"] for p in preds]
    return []


def _check_comparable(store: Store, a: int, b: int) -> list[str]:
    ra, rb = store.climb(a), store.climb(b)
    if ra["task_name"] != rb["task_name"]:
        raise RungwiseError(
            f"runs {a} and {b} are different tasks ({ra['task_name']!r} and {rb['task_name']!r})",
            hint="compare two climbs of the same task (see `rungwise runs list`)",
        )
    if ra["test_hash"] != rb["test_hash"] or ra["n_test"] != rb["n_test"]:
        raise RungwiseError(
            f"runs {a} and {b} were scored on different test splits ({ra['n_test']} examples, hash "
            f"{ra['test_hash']}; {rb['n_test']} examples, hash {rb['test_hash']}): their scores are not comparable",
            hint="climb both on the same data, split seed and --limit (changing only the model, prompt or train data)",
        )
    notes = []
    if ra["train_hash"] != rb["train_hash"]:
        notes.append(f"the train split differs (run {a}: {ra['n_train']} examples, run {b}: {rb['n_train']}): "
                     "demos and fine-tunes were built from different data")
    if ra["model_id"] != rb["model_id"]:
        notes.append(f"model: {ra['model_id']} -> {rb['model_id']}")
    return notes


def _per_1k(c: ClimbResult, rung: str) -> float | None:
    cost = next((x for x in c.costs if x.rung == rung), None)
    best = cost.best() if cost else None
    return 1000 * best.per_call(cost.daily_volume) if (cost and best) else None


def compare_runs(a: int, b: int, store: Store | None = None) -> RunComparison:
    """Compare climb ``a`` (before) with climb ``b`` (after) on their shared test split."""
    store = store or Store()
    notes = _check_comparable(store, a, b)
    ca, cb = load_climb(a, store), load_climb(b, store)
    ids = _test_ids(store, a)
    ids_b = _test_ids(store, b)
    if ids != ids_b:
        raise RungwiseError(f"runs {a} and {b} hold predictions for different examples",
                            hint="resume the unfinished run first, then compare")
    rows_a = {r["name"]: r for r in store.rungs(a) if r["status"] == "done"}
    rows_b = {r["name"]: r for r in store.rungs(b) if r["status"] == "done"}
    pairs = []
    for ra in ca.rungs:
        rb = next((x for x in cb.rungs if x.rung == ra.rung), None)
        if rb is None or ra.rung not in rows_a or ra.rung not in rows_b:
            continue
        metric = ra.metric.name
        sa = _scoreset(store, int(rows_a[ra.rung]["id"]), metric, ids)
        sb = _scoreset(store, int(rows_b[ra.rung]["id"]), metric, ids)
        cmp = paired_test(sb, sa, a_name=f"run {b}", b_name=f"run {a}")
        pairs.append(RungPair(ra.rung, ra.metric, rb.metric, cmp, ra.mean_prompt_tokens + ra.mean_completion_tokens,
                              rb.mean_prompt_tokens + rb.mean_completion_tokens, _per_1k(ca, ra.rung),
                              _per_1k(cb, ra.rung), ra.meets_target, rb.meets_target))
    rec_a = ca.verdict.recommended if ca.verdict else None
    rec_b = cb.verdict.recommended if cb.verdict else None
    ra_row, rb_row = store.climb(a), store.climb(b)
    return RunComparison(
        task=ca.task, a_run=a, b_run=b, a_model=ra_row["model_id"], b_model=rb_row["model_id"], n_test=len(ids),
        target=cb.target or ca.target, rungs=pairs,
        only_in_a=[r.rung for r in ca.rungs if r.rung not in {p.rung for p in pairs}],
        only_in_b=[r.rung for r in cb.rungs if r.rung not in {p.rung for p in pairs}],
        a_recommended=rec_a, b_recommended=rec_b, verdict_change=_verdict_change(ca, cb), notes=notes,
    )


def _verdict_change(ca: ClimbResult, cb: ClimbResult) -> str:
    """One sentence: what the second climb does to the recommendation."""
    rec_a = ca.verdict.recommended if ca.verdict else None
    rec_b = cb.verdict.recommended if cb.verdict else None
    if rec_a == rec_b:
        return f"the recommendation is unchanged: {rec_b or 'no rung meets the target'}"
    if rec_b is None:
        return f"no rung meets the target any more (it was {rec_a}): do not switch"
    kind_a = next((r.kind for r in ca.rungs if r.rung == rec_a), None)
    kind_b = next((r.kind for r in cb.rungs if r.rung == rec_b), None)
    if rec_a is None:
        return f"{rec_b} now meets the target (no rung did before)"
    if kind_a is not None and kind_a.trains_weights and kind_b is not None and not kind_b.trains_weights:
        return (f"the new climb meets the target at {rec_b} without training: the {rec_a} model can be retired "
                "(no retraining, no adapter to maintain)")
    order = [r.rung for r in cb.rungs]
    if rec_b in order and rec_a in order and order.index(rec_b) < order.index(rec_a):
        return f"the target is now met lower on the ladder, at {rec_b} (was {rec_a}): move down"
    return f"the recommendation moves from {rec_a} to {rec_b}"


# -------------------------------------------------------------------------------------- gate
@dataclass
class GateCheck:
    rung: str
    passed: bool
    reason: str


@dataclass
class GateResult:
    """The CI gate's outcome: ``passed`` is False when any checked rung regressed."""

    run: int
    baseline: int | None
    passed: bool
    checks: list[GateCheck]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def gate(run: int, *, baseline: int | None = None, rungs: list[str] | None = None, store: Store | None = None) -> GateResult:
    """Fail when a rung of ``run`` no longer meets the target, or (with ``baseline``) scores
    significantly worse than in the baseline climb on the same test split.

    Checked rungs: ``rungs`` when given; else every rung both climbs measured (with a baseline);
    else the rung the verdict recommends (what would ship). Against a baseline, a rung that did
    not meet the target there is not a regression for missing it now; a rung the gate was asked
    to check that ``run`` lacks fails.
    """
    store = store or Store()
    c = load_climb(run, store)
    by_name = {r.rung: r for r in c.rungs}
    base = compare_runs(baseline, run, store) if baseline is not None else None
    base_pairs = {p.rung: p for p in base.rungs} if base else {}
    if rungs:
        names = list(rungs)
    elif base is not None:
        names = [p.rung for p in base.rungs]
    elif c.verdict is not None and c.verdict.recommended:
        names = [c.verdict.recommended]  # what would ship
    else:
        return GateResult(run, None, False, [GateCheck("*", False, f"no rung of run {run} meets {c.target or 'a target'}")])
    checks = []
    for name in names:
        r = by_name.get(name)
        if r is None:
            checks.append(GateCheck(name, False, f"run {run} has no finished rung {name!r}"))
            continue
        problems = []
        was_meeting = base_pairs[name].a_meets if name in base_pairs else True
        if c.target and not r.meets_target and was_meeting:
            problems.append(f"{r.metric.name} {r.metric.value:.3f} does not meet {c.target}")
        pair = base_pairs.get(name)
        if pair is not None and pair.comparison.significant and pair.comparison.delta < 0:
            cm = pair.comparison
            problems.append(f"significantly worse than run {baseline}: {cm.delta:+.3f} [{cm.ci_low:+.3f}, "
                            f"{cm.ci_high:+.3f}], p={cm.p_value:.3g} ({cm.test})")
        elif base is not None and pair is None:
            problems.append(f"run {baseline} has no {name} to compare with")
        ok = not problems
        reason = "; ".join(problems) if problems else (
            f"{r.metric.name} {r.metric.value:.3f} [{r.metric.ci_low:.3f}, {r.metric.ci_high:.3f}]"
            + (f" meets {c.target}" if c.target and r.meets_target else "")
            + (f"; vs run {baseline}: {pair.comparison.delta:+.3f}, p={pair.comparison.p_value:.3g}" if pair else ""))
        checks.append(GateCheck(name, ok, reason))
    return GateResult(run, baseline, all(ch.passed for ch in checks), checks)
