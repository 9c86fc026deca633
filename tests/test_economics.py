"""Price catalog, cost per call, fine-tuning one-off costs and break-even, on numbers checked by hand."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from helpers import write_task
from rungwise.config.economics import PriceOverrides
from rungwise.config.task import load_task, task_from_dict
from rungwise.economics.cost import (
    DAYS_PER_MONTH,
    HOURS_PER_MONTH,
    TokenProfile,
    break_even,
    break_evens,
    cache_hit_rate,
    cost_curves,
    daily_volume_of,
    price_profiles,
    price_rungs,
)
from rungwise.errors import ConfigError
from rungwise.prices.catalog import load_catalog
from rungwise.types import BASELINE, FINETUNE, PROMPT, MetricValue, RungResult, TrainingRecord


def _task(**econ: object) -> object:
    """A task measured on an OpenAI-compatible endpoint serving the price model (so its own list
    prices are the default), priced on 2026-01-01, before OpenAI closed fine-tuning to new customers."""
    factors = econ.pop("factors", {})
    econ.setdefault("as_of", "2026-01-01")
    served = str(econ.get("price_model", "openai/gpt-4o-mini")).split("/", 1)[-1]
    return task_from_dict({"name": "t", "data": {"path": "x.jsonl"}, "economics": econ, "factors": factors,
                           "model": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "id": served}})


# ---------------------------------------------------------------------------------- catalog
def test_every_catalog_entry_is_sourced_dated_and_positive() -> None:
    cat = load_catalog()
    assert len(cat.models) >= 8 and {"openai/gpt-4o-mini", "openai/gpt-4.1-nano", "anthropic/claude-3.5-haiku",
                                      "google/gemini-2.0-flash"} <= set(cat.models)
    for k, m in cat.models.items():
        assert m.source.startswith("https://"), k
        assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", m.date), k
        assert m.input_per_1m > 0 and m.output_per_1m > m.input_per_1m, k  # output always dearer
        if m.cached_input_per_1m is not None:
            assert m.cached_input_per_1m < m.input_per_1m, k
    for k, g in cat.gpus.items():
        assert g.peak_bf16_tflops > 0 and g.memory_gb > 0 and g.offers, k
        for o in g.offers:
            assert o.source.startswith("https://") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", o.date), (k, o)
            assert 0.1 < o.per_gpu_hour < 20, (k, o)
    assert {"t4", "l4", "a100-40gb", "h100-sxm"} <= set(cat.gpus)


def test_issue_list_prices_for_gpt_4o_mini() -> None:
    m = load_catalog().model("openai/gpt-4o-mini")
    assert (m.input_per_1m, m.output_per_1m) == (0.15, 0.60)
    ft = m.finetuned()
    assert ft is not None and (ft.input_per_1m, ft.output_per_1m) == (0.30, 1.20)
    assert m.finetune is not None and m.finetune.training_per_1m == 3.00


def test_bare_names_aliases_and_unknown_keys() -> None:
    cat = load_catalog()
    assert cat.model("gpt-4o-mini").key == "openai/gpt-4o-mini"
    assert cat.gpu("A100").key == "a100-40gb" and cat.gpu("h100").key == "h100-sxm"
    with pytest.raises(ConfigError, match="did you mean openai/gpt-4o-mini"):
        cat.model("openai/gpt-4o-mine")
    with pytest.raises(ConfigError, match="unknown GPU 'v100'"):
        cat.gpu("v100")


def test_overrides_merge_partially_and_add_entries() -> None:
    ov = PriceOverrides.model_validate({
        "models": {
            "openai/gpt-4o-mini": {"input_per_1m": 0.10},  # a negotiated input price, nothing else
            "acme/llm": {"input_per_1m": 1.0, "output_per_1m": 2.0, "source": "contract", "date": "2025-06-01"},
        },
        "gpus": {"l4": {"usd_per_gpu_hour": 0.5}, "mi300x": {"usd_per_gpu_hour": 3.0, "peak_bf16_tflops": 1307,
                                                              "memory_gb": 192}},
    })
    cat = load_catalog(ov)
    m = cat.model("openai/gpt-4o-mini")
    assert m.input_per_1m == 0.10 and m.output_per_1m == 0.60 and m.finetune is not None
    assert m.source.startswith("task.yaml over https://")
    assert cat.model("acme/llm").output_per_1m == 2.0
    assert cat.gpu("l4").price_range == (0.5, 0.5) and cat.gpu("l4").peak_bf16_tflops == 121
    assert cat.gpu("mi300x").peak_bf16_tflops == 1307
    # The shipped catalog is untouched.
    assert load_catalog().model("openai/gpt-4o-mini").input_per_1m == 0.15


def test_new_model_without_prices_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="acme/llm.*needs input_per_1m and output_per_1m"):
        load_catalog(PriceOverrides.model_validate({"models": {"acme/llm": {"source": "x"}}}))


def test_task_yaml_economics_and_factors_validate_with_line_numbers(tmp_path: Path) -> None:
    p = write_task(tmp_path, economics={"daily_volume": 20000, "self_host_gpu": "l4"},
                   factors={"clean_examples": 800, "update_frequency": "quarterly"})
    t = load_task(p)
    assert t.economics.daily_volume == 20000 and t.factors.update_frequency == "quarterly"
    raw = yaml.safe_load(p.read_text())
    raw["economics"]["dayly_volume"] = 5
    raw["factors"]["update_frequency"] = "fortnightly"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as exc:
        load_task(p)
    msg = str(exc.value)
    line_typo = p.read_text().splitlines().index("  dayly_volume: 5") + 1
    assert f"task.yaml:{line_typo}: field 'economics.dayly_volume': unknown field" in msg
    assert "factors.update_frequency" in msg and "weekly" in msg


def test_volume_given_twice_must_agree() -> None:
    assert daily_volume_of(_task()) == (1000, False)
    assert daily_volume_of(_task(daily_volume=7, factors={"daily_volume": 7})) == (7, True)
    with pytest.raises(ConfigError, match="disagree"):
        daily_volume_of(_task(daily_volume=7, factors={"daily_volume": 8}))


# ------------------------------------------------------------------------------ cost per call
def test_pricing_follows_the_declared_kind_not_the_name() -> None:
    # A plugin rung whose name says nothing: its declared kind decides the prices.
    trained = TokenProfile("my_plugin", 100, 0, 5, 20.0, FINETUNE, TrainingRecord(examples=10, tokens=1000, epochs=1))
    named_like_one = TokenProfile("lora_but_prompt", 100, 0, 5)
    [a, b] = price_profiles([trained, named_like_one], _task(daily_volume=1000))
    assert a.hosted is not None and a.hosted.one_off is not None and "fine-tuned" in a.hosted.label
    assert b.hosted is not None and b.hosted.one_off is None
    no_llm = TokenProfile("classifier", 0, 0, 0, 50.0, BASELINE)
    [c] = price_profiles([no_llm], _task(self_host_usd_per_hour=1.0))
    assert c.hosted is None and c.self_hosted is not None


def test_cache_hit_rate_is_poisson() -> None:
    assert cache_hit_rate(0, 300) == 0.0
    assert cache_hit_rate(86_400, 1) == pytest.approx(1 - math.exp(-1))
    assert cache_hit_rate(1_000_000, 300) > 0.999


def test_hosted_cost_per_call_by_hand_without_caching() -> None:
    # 500 prompt tokens (below OpenAI's 1,024-token cache minimum) + 10 completion at $0.15 / $0.60.
    [c] = price_profiles([TokenProfile("zero_shot", 500, 400, 10)], _task(daily_volume=1000))
    h = c.hosted
    assert h is not None
    assert h.per_call(1000) == pytest.approx(500 * 0.15e-6 + 10 * 0.60e-6)
    assert h.hit_rate(1000) == 0 and "caching minimum" in h.notes[0]
    assert h.monthly(1000) == pytest.approx(h.per_call(1000) * 1000 * DAYS_PER_MONTH)
    assert c.to_dict()["hosted"]["per_1k_usd"] == pytest.approx(1000 * h.per_call(1000))


def test_prompt_caching_discount_on_the_shared_prefix() -> None:
    prof = TokenProfile("few_shot", 2000, 1800, 10)
    [c] = price_profiles([prof], _task(daily_volume=100_000))
    h = c.hosted
    assert h is not None
    hit = cache_hit_rate(100_000, 300)
    expect = 200 * 0.15e-6 + 1800 * (hit * 0.075e-6 + (1 - hit) * 0.15e-6) + 10 * 0.60e-6
    assert h.per_call(100_000) == pytest.approx(expect)
    # Caching off: every prompt token at the input price.
    [c2] = price_profiles([prof], _task(daily_volume=100_000, caching=False))
    assert c2.hosted is not None and c2.hosted.per_call(100_000) == pytest.approx(2000 * 0.15e-6 + 10 * 0.60e-6)
    # At 10 requests/day the cache is cold most of the time: the discount nearly vanishes.
    assert h.per_call(10) > 0.95 * c2.hosted.per_call(10)


def test_anthropic_cache_writes_cost_more_than_input() -> None:
    prof = TokenProfile("few_shot", 3000, 2800, 10)
    [c] = price_profiles([prof], _task(daily_volume=50, price_model="anthropic/claude-3.5-haiku"))
    h = c.hosted
    assert h is not None
    hit = cache_hit_rate(50, 300)
    assert h.breakdown(50)["cached_input"] == pytest.approx(2800 * (hit * 0.08e-6 + (1 - hit) * 1.00e-6))


def test_self_hosted_cost_is_a_step_function_of_volume() -> None:
    # 10 examples/s at 50% utilization: one server serves 432,000 requests/day.
    [c] = price_profiles([TokenProfile("zero_shot", 100, 0, 5, examples_per_s=10)],
                         _task(daily_volume=1000, self_host_usd_per_hour=2.0))
    s = c.self_hosted
    assert s is not None and s.capacity_per_day == pytest.approx(432_000)
    assert s.replicas(1000) == 1 and s.replicas(432_000) == 1 and s.replicas(432_001) == 2
    assert s.monthly(1000) == pytest.approx(2.0 * HOURS_PER_MONTH)
    assert s.per_call(1000) == pytest.approx(2.0 * HOURS_PER_MONTH / (1000 * DAYS_PER_MONTH))
    # At 1,000/day the idle server makes self-hosting dearer than the API; the best option is hosted.
    assert c.best() is c.hosted


def test_self_host_gpu_uses_the_catalog_range() -> None:
    [c] = price_profiles([TokenProfile("zero_shot", 100, 0, 5, examples_per_s=10)],
                         _task(daily_volume=1000, self_host_gpu="l4"))
    s = c.self_hosted
    assert s is not None and s.usd_per_hour_range == (0.7068, 0.8048)
    lo, hi = s.monthly_range(1000)
    assert lo == pytest.approx(0.7068 * HOURS_PER_MONTH) and hi == pytest.approx(0.8048 * HOURS_PER_MONTH)


def test_no_throughput_means_no_self_hosted_price() -> None:
    [c] = price_profiles([TokenProfile("zero_shot", 100, 0, 5)], _task(self_host_usd_per_hour=1.0))
    assert c.self_hosted is None and any("no measured throughput" in n for n in c.notes)


# --------------------------------------------------------------------- fine-tuning and break-even
def _ft(train_tokens: int = 1_000_000, epochs: int = 3, examples: int = 0, seconds: float | None = None) -> TokenProfile:
    """A fine-tuned rung whose training took ``train_tokens`` per epoch."""
    return TokenProfile("finetune", 100, 0, 5, 20.0, FINETUNE,
                        TrainingRecord(examples=examples, tokens=train_tokens, epochs=epochs, seconds=seconds))


def test_finetune_one_off_hosted_and_self_hosted() -> None:
    task = _task(daily_volume=10_000, labeling_cost_per_example=0.5, retrain_every_days=30,
                 new_examples_per_retrain=100, self_host_usd_per_hour=4.0)
    [c] = price_profiles([_ft(examples=600, seconds=7200)], task)
    h, s = c.hosted, c.self_hosted
    assert h is not None and s is not None and h.one_off is not None and s.one_off is not None
    # Hosted: 1M tokens x 3 epochs x $3/1M = $9; labeling 600 x $0.5 = $300.
    assert h.one_off.training_usd == pytest.approx(9.0) and h.one_off.labeling_usd == pytest.approx(300.0)
    assert h.one_off.retrain_usd == pytest.approx(9.0 + 100 * 0.5)
    assert h.one_off.retrain_per_month() == pytest.approx(59.0 * DAYS_PER_MONTH / 30)
    # Fine-tuned inference is priced at the fine-tuned rates ($0.30 / $1.20).
    assert h.per_call(10_000) == pytest.approx(100 * 0.30e-6 + 5 * 1.20e-6)
    # Self-hosted: 2 h of measured training at $4/h.
    assert s.one_off.training_usd == pytest.approx(8.0)
    amort = h.one_off.amortized_per_month(365)
    assert amort == pytest.approx(309 * DAYS_PER_MONTH / 365 + 59 * DAYS_PER_MONTH / 30)
    assert h.total_monthly(10_000, 365) == pytest.approx(h.monthly(10_000) + amort)


def test_retrain_cadence_defaults_from_update_frequency() -> None:
    [c] = price_profiles([_ft()], _task(factors={"update_frequency": "weekly"}))
    assert c.hosted is not None and c.hosted.one_off is not None and c.hosted.one_off.retrain_every_days == 7
    [c] = price_profiles([_ft()], _task(factors={"update_frequency": "stable"}))
    assert c.hosted is not None and c.hosted.one_off is not None and c.hosted.one_off.retrain_every_days is None


def test_break_even_matches_the_closed_form() -> None:
    # Prompting: 2,000 uncached tokens in, 10 out at $0.15/$0.60 -> $0.000306 per call.
    # Fine-tuned: 100 in, 10 out at $0.30/$1.20 -> $0.000042 per call; saving $0.000264 per call.
    # One-off: 10M tokens x 1 epoch x $3 = $30 training + 600 x $0.50 labeling = $330, over 365 days;
    # retrained every 91 days at $30. Break-even volume V: V x saving = 330/365 + 30/91 per day.
    task = _task(daily_volume=20_000, labeling_cost_per_example=0.5, retrain_every_days=91, caching=False)
    prompt = TokenProfile("few_shot", 2000, 0, 10)
    ft = TokenProfile("finetune", 100, 0, 10, 0.0, FINETUNE, TrainingRecord(examples=600, tokens=10_000_000, epochs=1))
    costs = price_profiles([prompt, ft], task)
    be = break_even(costs[1], costs[0])
    assert be is not None
    saving = (2000 * 0.15 + 10 * 0.60 - 100 * 0.30 - 10 * 1.20) / 1e6
    assert saving == pytest.approx(0.000264)
    expect_v = (330 / 365 + 30 / 91) / saving
    assert be.volume_per_day == pytest.approx(expect_v, abs=1.0)
    # Payback at 20,000/day: $330 over the daily saving net of retraining.
    daily = 20_000 * saving - 30 / 91
    assert be.payback_days == pytest.approx(330 / daily, rel=1e-6)
    assert be.monthly_saving_usd == pytest.approx(daily * DAYS_PER_MONTH, rel=1e-6)
    assert "becomes cheaper than few_shot above" in be.sentence()
    assert [(b.finetune, b.against) for b in break_evens(costs)] == [("finetune", "few_shot")]


def test_fine_tune_that_costs_more_per_call_never_breaks_even() -> None:
    # A short zero-shot prompt: the fine-tuned model's 2x token price makes every call dearer.
    costs = price_profiles([TokenProfile("zero_shot", 100, 0, 10), _ft()], _task(daily_volume=50_000))
    be = break_even(costs[1], costs[0])
    assert be is not None and be.volume_per_day is None and be.payback_days is None
    assert "never becomes cheaper" in be.sentence()


def test_break_even_against_a_self_hosted_floor() -> None:
    # Prompting hosted vs a fine-tune that is only self-hostable: it pays once volume fills a server.
    task = _task(daily_volume=100_000, self_host_usd_per_hour=1.0, price_model="openai/gpt-4o", caching=False)
    prompt = TokenProfile("few_shot", 1000, 0, 10)  # $0.0026/call hosted on gpt-4o
    costs = price_profiles([prompt], task)
    ft = price_profiles([TokenProfile("finetune", 50, 0, 10, 50.0, FINETUNE,
                                      TrainingRecord(examples=0, tokens=0, epochs=1, seconds=3600))],
                        _task(daily_volume=100_000, self_host_usd_per_hour=1.0, caching=False,
                              price_model="google/gemini-2.0-flash"))  # lists no fine-tuning
    assert ft[0].hosted is None and ft[0].self_hosted is not None
    be = break_even(ft[0], costs[0])
    assert be is not None and be.volume_per_day is not None
    # One server costs ~$730/month (+$1 training amortized): equal to gpt-4o at ~9.2k calls/day.
    server = HOURS_PER_MONTH * 1.0 + 1.0 * DAYS_PER_MONTH / 365
    assert be.volume_per_day == pytest.approx(server / (0.0026 * DAYS_PER_MONTH), rel=0.01)


def test_price_rungs_from_measured_results_and_curves() -> None:
    def rr(name: str, p: float, c: float, o: float, training: TrainingRecord | None = None) -> RungResult:
        return RungResult(name, MetricValue("accuracy", 0.9, 0.85, 0.95, 100), 1.0, p, o, c, 0.1, 0.2, 5.0, True,
                          kind=FINETUNE if training else PROMPT, training=training)

    task = _task(daily_volume=30_000)
    costs = price_rungs([rr("few_shot", 1500, 1400, 3), rr("finetune", 80, 0, 3, TrainingRecord(800, 0, 1))], task)
    assert costs[0].tokens.prompt_tokens == 1500 and costs[0].kind.name == "prompt"
    one = costs[1].hosted.one_off  # type: ignore[union-attr]
    assert one is not None and "estimated as 800 examples" in one.training_basis
    curves = cost_curves(costs)
    assert len(curves["volumes"]) == 60 and set(curves["series"]) == {"few_shot", "finetune"}
    assert curves["volumes"][0] <= 3_000 and curves["volumes"][-1] >= 300_000
    # What-if: another volume and model without touching the task; the measured model stays the price.
    alt = price_rungs([rr("few_shot", 1500, 1400, 3)], task, daily_volume=10, price_model="openai/gpt-4.1-nano")
    assert alt[0].daily_volume == 10 and alt[0].hosted is not None and alt[0].hosted.label == "openai/gpt-4o-mini"
    w = alt[0].what_if
    assert w is not None and w.what_if and w.label == "what-if: these token counts on openai/gpt-4.1-nano"
    assert alt[0].best() is alt[0].hosted and alt[0].to_dict()["what_if"]["what_if"] is True


def test_unknown_price_model_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="rungwise prices"):
        price_profiles([TokenProfile("zero_shot", 1, 0, 1)], _task(price_model="nope/model"))
