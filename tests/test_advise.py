"""The rules engine (one case per threshold) and the verdict on constructed ladders."""

from __future__ import annotations

from typing import Any

import pytest

from rungwise.advise import evaluate_factors, lean, verdict
from rungwise.config.factors import DecisionFactors
from rungwise.config.task import task_from_dict
from rungwise.economics.cost import price_rungs
from rungwise.types import FINETUNE, PROMPT, Comparison, Ladder, MetricValue, RungResult, TrainingRecord


def _favours(**f: Any) -> list[tuple[str, str, str]]:
    return [(s.factor, s.favours, s.strength) for s in evaluate_factors(DecisionFactors(**f))]


# ------------------------------------------------------------------------------ the rules
@pytest.mark.parametrize("volume,expect", [(9_999, "prompting"), (10_000, "neutral"), (50_000, "neutral"),
                                           (50_001, "fine_tuning")])
def test_volume_thresholds(volume: int, expect: str) -> None:
    assert _favours(daily_volume=volume)[0][1] == expect


@pytest.mark.parametrize("n,expect", [(0, ("prompting", "favours")), (299, ("prompting", "favours")),
                                      (300, ("neutral", "info")), (499, ("neutral", "info")),
                                      (500, ("fine_tuning", "allows"))])
def test_clean_example_thresholds(n: int, expect: tuple[str, str]) -> None:
    assert _favours(clean_examples=n)[0][1:] == expect


@pytest.mark.parametrize("freq,expect", [("daily", "prompting"), ("weekly", "prompting"), ("monthly", "prompting"),
                                         ("quarterly", "fine_tuning"), ("yearly", "fine_tuning"),
                                         ("stable", "fine_tuning")])
def test_update_frequency(freq: str, expect: str) -> None:
    assert _favours(update_frequency=freq)[0][1] == expect


def test_latency_time_audit_vocabulary_knowledge_consistency() -> None:
    assert _favours(latency_ms=199)[0][1] == "small_finetune"
    assert _favours(latency_ms=200)[0][1] == "neutral"
    assert _favours(time_to_production_days=13)[0][1] == "prompting"
    assert _favours(time_to_production_days=14)[0][1] == "neutral"
    assert _favours(regulatory="high")[0][1:] == ("auditability", "favours")
    assert _favours(regulatory="none")[0][1] == "neutral"
    assert _favours(proprietary_vocabulary=True)[0][1] == "fine_tuning"
    assert _favours(proprietary_vocabulary=False)[0][1] == "neutral"
    assert _favours(knowledge_change="fast")[0][1] == "rag"
    assert _favours(knowledge_change="static")[0][1:] == ("fine_tuning", "allows")
    assert _favours(output_consistency="high")[0][1] == "fine_tuning"
    assert _favours(output_consistency="low")[0][1] == "neutral"
    assert _favours() == []


def test_volume_from_economics_when_factor_unset() -> None:
    assert [s.favours for s in evaluate_factors(DecisionFactors(), daily_volume=80_000)] == ["fine_tuning"]


def test_lean_counts_favours_over_allows() -> None:
    sig = evaluate_factors(DecisionFactors(clean_examples=800, update_frequency="stable", daily_volume=1_000))
    # Two 'allows' (0.5 each) tie one 'favours prompting' (1).
    assert lean(sig) == "mixed (prompting / fine-tuning)"
    sig = evaluate_factors(DecisionFactors(clean_examples=100, update_frequency="weekly", daily_volume=80_000))
    assert lean(sig) == "prompting"
    assert lean([]) == "no preference"


def test_unknown_factor_values_are_rejected() -> None:
    with pytest.raises(ValueError):
        DecisionFactors(update_frequency="fortnightly")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DecisionFactors(clean_examples=-1)


# ---------------------------------------------------------------------------- the verdict
def _rung(name: str, value: float, half: float = 0.03, *, vs: tuple[str, float, float, bool] | None = None,
          prompt: float = 200, cached: float = 0, eps: float = 10, p95: float = 0.3, valid: float = 1.0,
          art: TrainingRecord | None = None, n: int = 300) -> RungResult:
    cmp = None
    if vs:
        cmp = Comparison(vs[0], vs[1], vs[1] - 0.03, vs[1] + 0.03, vs[2], "paired bootstrap", vs[3])
    return RungResult(name, MetricValue("accuracy", value, value - half, min(value + half, 1.0), n), valid, prompt, 3,
                      cached, p95 / 2, p95, eps, False, scores=[1.0] * int(n * value) + [0.0] * (n - int(n * value)),
                      valid=[True] * n, comparison=cmp, kind=FINETUNE if art else PROMPT, training=art)


FT_ART = TrainingRecord(examples=800, tokens=300_000, epochs=3)


def _ladder(target: str | None = "accuracy >= 0.85", ft_value: float = 0.93) -> list[RungResult]:
    return [
        _rung("zero_shot", 0.62, prompt=200),
        _rung("few_shot", 0.90, vs=("zero_shot", 0.28, 0.0001, True), prompt=2500, cached=2300),
        _rung("finetune", ft_value, vs=("few_shot", ft_value - 0.90, 0.01, True), prompt=60, art=FT_ART),
    ]


#: The ladders below were measured on an OpenAI-compatible endpoint serving gpt-4o-mini, so its list
#: prices (and fine-tuning prices, on a date when new customers could still buy them) are the costs.
ENDPOINT = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "id": "gpt-4o-mini"}


def _judge(results: list[RungResult], target: str | None = "accuracy >= 0.85", **task: Any) -> Any:
    econ = {"as_of": "2026-01-01", **task.pop("economics", {})}
    t = task_from_dict({"name": "t", "data": {"path": "x.jsonl"}, "target": target, "model": task.pop("model", ENDPOINT),
                        "economics": econ, **task})
    climb = Ladder("t", 1, results, target, None, results[0].metric.n if results else 0)
    return verdict(climb, t, price_rungs(results, t))


def test_picks_the_cheapest_rung_meeting_the_target_at_each_volume() -> None:
    # Labeling 800 examples at $0.50 ($400 over a year) is what the fine-tune must pay back.
    low = _judge(_ladder(), economics={"daily_volume": 500, "labeling_cost_per_example": 0.5})
    assert low.recommended == "few_shot"
    assert any("finetune" in r and "also meets the target but costs" in r for r in low.reasons)
    high = _judge(_ladder(), economics={"daily_volume": 200_000, "labeling_cost_per_example": 0.5})
    assert high.recommended == "finetune"
    assert any("few_shot" in r and "also meets the target but costs" in r for r in high.reasons)
    assert any("becomes cheaper than few_shot above" in r for r in high.reasons)
    # zero_shot's shortfall is always a reason.
    assert any(r.startswith("zero_shot: accuracy 0.620") and "misses accuracy >= 0.85 by 0.230" in r
               for r in low.reasons)
    # The measured gap that justifies climbing above zero_shot.
    assert low.gap is not None and "few_shot 0.900 vs zero_shot 0.620" in low.gap and "p=0.0001" in low.gap
    assert "misses accuracy >= 0.85 by 0.230" in low.gap
    assert low.confidence == "high" and low.headline.startswith("Recommended: few_shot.")


def test_refuses_a_rung_whose_gain_over_a_failing_rung_is_not_significant() -> None:
    rungs = [_rung("zero_shot", 0.84), _rung("few_shot", 0.86, vs=("zero_shot", 0.02, 0.31, False), prompt=900)]
    v = _judge(rungs, economics={"daily_volume": 1000})
    assert v.recommended is None
    assert v.headline.startswith("No rung meets accuracy >= 0.85")
    assert any("few_shot" in r and "not significant" in r and "cannot tell them apart" in r for r in v.reasons)
    assert any("more test examples" in s for s in v.next_steps)
    # The same scores with a significant gain are accepted.
    rungs[1].comparison = Comparison("zero_shot", 0.02, 0.005, 0.035, 0.01, "paired bootstrap", True)
    assert _judge(rungs, economics={"daily_volume": 1000}).recommended == "few_shot"


def test_no_retrieval_step_when_the_answers_are_in_the_input() -> None:
    rung = _rung("few_shot", 0.65)
    rung.failures = {"behaviour": 1, "knowledge": 20, "knowledge_retrieved": 0, "knowledge_not_retrieved": 0,
                     "knowledge_in_input": 0}
    assert any("add the rag rung" in s for s in _judge([rung]).next_steps)
    rung.failures["knowledge_in_input"] = 20  # extraction misses: the values were in the request
    steps = _judge([rung]).next_steps
    assert not any("rag rung" in s for s in steps) and any("retrieval cannot fix" in s for s in steps)


def test_a_significant_loss_is_not_a_gain() -> None:
    rungs = [_rung("zero_shot", 0.80), _rung("few_shot", 0.86, vs=("zero_shot", -0.05, 0.001, True))]
    assert _judge(rungs).recommended is None


def test_moderate_confidence_when_the_ci_straddles_the_target() -> None:
    rungs = [_rung("zero_shot", 0.86, half=0.04)]
    v = _judge(rungs)
    assert v.recommended == "zero_shot" and v.confidence == "moderate"
    assert any("CI bound 0.820 does not" in r for r in v.reasons)
    # Halving the CI needs about 4x the examples: 300 x (0.04 / 0.01)^2.
    assert any("about 4,800 test examples" in s for s in v.next_steps)


def test_high_regulatory_exposure_requires_the_whole_ci_to_clear() -> None:
    rungs = [_rung("zero_shot", 0.62), _rung("few_shot", 0.87, vs=("zero_shot", 0.25, 0.0001, True)),
             _rung("finetune", 0.95, vs=("few_shot", 0.08, 0.001, True), prompt=60, art=FT_ART)]
    v = _judge(rungs, factors={"regulatory": "high"}, economics={"daily_volume": 1000})
    # few_shot's CI [0.84, 0.90] dips below 0.85; the fine-tune's [0.92, 0.98] clears it.
    assert v.recommended == "finetune"
    assert any("few_shot" in r and "95% CI lower bound 0.840" in r for r in v.reasons)
    assert any("fine-tuning passed over" in w and "no qualifying rung satisfies it" in w for w in v.warnings)
    rungs2 = rungs[:2]
    v2 = _judge(rungs2, factors={"regulatory": "high"})
    assert v2.recommended is None


def test_factors_pass_over_a_cheaper_fine_tune() -> None:
    # At 200k/day the fine-tune is cheapest, but requirements change weekly and examples are few.
    v = _judge(_ladder(), economics={"daily_volume": 200_000},
               factors={"update_frequency": "weekly", "clean_examples": 120})
    assert v.recommended == "few_shot"
    assert any(r.startswith("finetune") and "passed over" in r and "requirements change weekly" in r
               and "only 120 clean examples" in r for r in v.reasons)
    assert any("factor: update_frequency = weekly favours prompting" in r for r in v.reasons)


def test_a_factor_never_overrides_the_data() -> None:
    # Only the fine-tune meets the target: it is recommended despite the weekly updates, with a warning.
    v = _judge(_ladder()[:1] + [_rung("finetune", 0.93, vs=("zero_shot", 0.31, 0.0001, True), prompt=60, art=FT_ART)],
               factors={"update_frequency": "weekly"})
    assert v.recommended == "finetune"
    assert any("requirements change weekly" in w and "not applied" in w for w in v.warnings)


def test_latency_requirement_prefers_rungs_measured_under_it() -> None:
    rungs = _ladder()
    rungs[1].latency_p95_s = 0.9  # few_shot's long prompt is slow
    rungs[2].latency_p95_s = 0.12
    v = _judge(rungs, economics={"daily_volume": 500, "labeling_cost_per_example": 0.5}, factors={"latency_ms": 150})
    assert v.recommended == "finetune"  # dearer at 500/day, but the only one under 150 ms
    assert any("few_shot" in r and "p95 latency above the 150 ms" in r for r in v.reasons)
    assert any("latency_ms = 150 favours a small fine-tuned model" in r for r in v.reasons)


def test_high_consistency_needs_valid_formats() -> None:
    rungs = _ladder()
    rungs[1].format_valid_rate = 0.95
    v = _judge(rungs, economics={"daily_volume": 500, "labeling_cost_per_example": 0.5},
               factors={"output_consistency": "high"})
    assert v.recommended == "finetune"


def test_nothing_meets_the_target_says_what_to_try() -> None:
    rungs = [_rung("zero_shot", 0.50, valid=0.6), _rung("few_shot", 0.70, vs=("zero_shot", 0.2, 0.0001, True))]
    v = _judge(rungs, factors={"knowledge_change": "fast"})
    assert v.recommended is None and v.confidence == "none"
    assert "Best: few_shot at accuracy 0.700" in v.headline
    steps = " | ".join(v.next_steps)
    assert "add the finetune rung" in steps and "add the rag rung" in steps and "a larger base model" in steps
    assert any(r.startswith("zero_shot") and "(60% of its answers in a valid format)" in r for r in v.reasons)
    v2 = _judge(rungs, factors={"clean_examples": 120})
    assert any("collect 500+ clean examples (you have 120)" in s for s in v2.next_steps)
    # With a fine-tune measured and still short: more data, a larger model.
    ft = _rung("finetune", 0.78, vs=("few_shot", 0.08, 0.001, True), art=FT_ART)
    v3 = _judge([*rungs, ft])
    steps3 = " | ".join(v3.next_steps)
    assert "more clean training data (trained on 800)" in steps3 and "a larger base model" in steps3
    # A fine-tune already in rungs.order but not measured (skipped, or left out of this climb) is named,
    # not asked for again.
    v4 = _judge(rungs, rungs={"order": ["zero_shot", "few_shot", "finetune"]})
    steps4 = " | ".join(v4.next_steps)
    assert "climb finetune (in rungs.order, not measured in this run)" in steps4 and "add the finetune" not in steps4


def test_format_failures_are_named() -> None:
    v = _judge([_rung("zero_shot", 0.5, valid=0.4)])
    assert any("60% of zero_shot's answers were not in a valid format" in s for s in v.next_steps)


def test_no_target_recommends_the_highest_significant_rung() -> None:
    rungs = _ladder(target=None)
    rungs[2].comparison = Comparison("few_shot", 0.01, -0.02, 0.04, 0.4, "paired bootstrap", False)
    v = _judge(rungs, target=None)
    assert v.recommended == "few_shot"
    assert any("no target set" in w for w in v.warnings)


def test_lower_is_better_targets() -> None:
    rungs = [_rung("zero_shot", 0.30), _rung("few_shot", 0.08, half=0.01, vs=("zero_shot", -0.22, 0.0001, True))]
    for r in rungs:
        r.metric.name = "error"
    v = _judge(rungs, target="error <= 0.1")
    assert v.recommended == "few_shot" and v.confidence == "high"


def test_default_volume_is_flagged_and_verdict_serializes() -> None:
    v = _judge(_ladder())
    assert any("no daily volume given" in w for w in v.warnings)
    d = v.to_dict()
    assert d["recommended"] == v.recommended and d["statuses"][0]["rung"] == "zero_shot"
    assert "Reasons:" in v.text()


def test_an_early_stop_is_flagged() -> None:
    rungs = _ladder()[:2]
    t = task_from_dict({"name": "t", "data": {"path": "x.jsonl"}, "target": "accuracy >= 0.85",
                        "rungs": {"order": ["zero_shot", "few_shot", "finetune"]}})
    v = verdict(Ladder("t", 1, rungs, "accuracy >= 0.85", "few_shot", 300), t)
    assert v.recommended == "few_shot"
    assert any("stopped at few_shot: finetune not measured" in w for w in v.warnings)


def test_at_equal_cost_the_rung_with_fewer_tokens_per_call_wins_and_the_reason_says_so() -> None:
    # Self-hosted on this machine, both rungs fit on one server at 1,000 requests/day: equal cost.
    ladder = [_rung("zero_shot", 0.50, prompt=300),
              _rung("few_shot", 0.90, vs=("zero_shot", 0.40, 0.0001, True), prompt=900),
              _rung("short_prompt", 0.90, vs=("few_shot", 0.0, 1.0, False), prompt=60)]
    v = _judge(ladder, model={"backend": "local"}, economics={"daily_volume": 1_000})
    few, short = (s for s in v.statuses if s.rung in ("few_shot", "short_prompt"))
    assert few.total_monthly_usd == short.total_monthly_usd
    assert v.recommended == "short_prompt"
    assert any(r.startswith("few_shot: accuracy 0.900") and "costs the same" in r
               and "sends 840 more tokens per call (903 vs 63 for short_prompt)" in r for r in v.reasons), v.reasons
