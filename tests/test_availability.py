"""Economics that match the date and the model measured: offers closed to new customers are left
out, stale prices warn, and a climb is priced as the model it measured (what-ifs labelled)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from helpers import write_task
from rungwise.advise import verdict
from rungwise.climb import climb, load_climb
from rungwise.config.economics import PriceOverrides
from rungwise.config.task import load_task, task_from_dict
from rungwise.economics.basis import PricingBasis
from rungwise.economics.cost import HOURS_PER_MONTH, TokenProfile, price_profiles, price_rungs
from rungwise.economics.machine import Measured, default_gpu, self_host_machine
from rungwise.errors import ConfigError
from rungwise.prices.catalog import Availability, load_catalog
from rungwise.store import Store
from rungwise.types import (
    BASELINE,
    FINETUNE,
    PROMPT,
    Comparison,
    Ladder,
    MetricValue,
    RungResult,
    TrainingRecord,
)

ENDPOINT = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "id": "gpt-4o-mini"}
LOCAL = Measured("local", "local:smollm2-135m-instruct@abc123", "cpu", cpus=4, params=134_515_008)


def _task(model: dict[str, Any] | None = None, **econ: Any) -> Any:
    t: dict[str, Any] = {"name": "t", "data": {"path": "x.jsonl"}, "target": "accuracy >= 0.85", "economics": econ}
    if model is not None:
        t["model"] = model
    return task_from_dict(t)


# ------------------------------------------------------------------------------ availability
def test_every_availability_notice_is_sourced_and_dated() -> None:
    cat = load_catalog()
    notices = [m.availability for m in cat.models.values()] + [m.finetune.availability for m in cat.models.values()
                                                               if m.finetune]
    dated = [a for a in notices if a.source]
    assert len(dated) >= 8
    for a in dated:
        assert "https://" in a.source and dt.date.fromisoformat(a.date)
    # OpenAI's self-serve fine-tuning: closed to new customers May 2026, over for everyone January 2027.
    ft = cat.model("openai/gpt-4o-mini").finetune
    assert ft is not None and ft.availability.closed_to_new == dt.date(2026, 5, 7)
    assert ft.availability.ends == dt.date(2027, 1, 6)
    assert ft.availability.open_to_new(dt.date(2026, 5, 6)) and not ft.availability.open_to_new(dt.date(2026, 5, 7))
    # Anthropic: fine-tuning only through Amazon Bedrock; Google: on Vertex AI.
    haiku = cat.model("anthropic/claude-3-haiku").finetune
    assert haiku is not None and haiku.availability.channel == "Amazon Bedrock"
    gem = cat.model("google/gemini-2.5-flash").finetune
    assert gem is not None and gem.availability.channel == "Vertex AI" and gem.training_per_1m is None


def test_availability_phrases() -> None:
    a = Availability(closed_to_new=dt.date(2026, 5, 7), ends=dt.date(2027, 1, 6))
    assert a.describe(dt.date(2026, 1, 1)) == "open to new customers until 2026-05-07; ends for everyone 2027-01-06"
    assert a.describe(dt.date(2027, 1, 6)) == "ended 2027-01-06"
    assert Availability(channel="Amazon Bedrock").describe(dt.date(2026, 1, 1)) == "only through Amazon Bedrock"
    assert Availability().describe(dt.date(2026, 1, 1)) == "open"


def test_task_yaml_can_declare_availability_and_rejects_bad_order() -> None:
    ov = PriceOverrides.model_validate({"models": {"openai/gpt-4o-mini": {"availability": {
        "ends": "2026-03-01", "source": "our account manager", "date": "2026-02-01"}}}})
    m = load_catalog(ov).model("openai/gpt-4o-mini")
    assert not m.availability.open_to_new(dt.date(2026, 3, 1)) and m.input_per_1m == 0.15
    with pytest.raises(ValueError, match="`ends` comes before `closed_to_new`"):
        PriceOverrides.model_validate({"models": {"x/y": {"availability": {
            "closed_to_new": "2026-03-01", "ends": "2026-01-01", "source": "s", "date": "2026-01-01"}}}})


def _ladder() -> Ladder:
    n = 300

    def rung(name: str, value: float, prompt: float, eps: float, *, vs: str | None = None,
             art: TrainingRecord | None = None) -> RungResult:
        cmp = Comparison(vs, 0.1, 0.05, 0.15, 0.0001, "mcnemar", True) if vs else None
        k = int(n * value)
        return RungResult(name, MetricValue("accuracy", value, value - 0.03, min(value + 0.03, 1.0), n), 1.0, prompt,
                          3, 0, 0.15, 0.3, eps, True, scores=[1.0] * k + [0.0] * (n - k), valid=[True] * n,
                          comparison=cmp, kind=FINETUNE if art else PROMPT, training=art)

    # The fine-tuned model's short prompt answers 10x faster on the same machine.
    rungs = [rung("few_shot", 0.90, 2500, 2.0),
             rung("finetune", 0.93, 60, 20.0, vs="few_shot", art=TrainingRecord(800, 300_000, 3, seconds=1800))]
    return Ladder("t", 1, rungs, "accuracy >= 0.85", None, n)


def test_a_verdict_after_an_offer_closes_does_not_recommend_it() -> None:
    econ = {"daily_volume": 200_000, "labeling_cost_per_example": 0.5}
    before = verdict(_ladder(), _task(ENDPOINT, as_of="2026-01-01", **econ))
    assert before.recommended == "finetune" and "gpt-4o-mini (fine-tuned)" in before.headline
    after = verdict(_ladder(), _task(ENDPOINT, as_of="2026-11-30", **econ))
    # The fine-tune cannot be bought hosted: it has no price, so the priced prompting rung wins.
    assert after.recommended == "few_shot" and "fine-tuned" not in after.headline
    [why] = [w for w in after.warnings if "left out" in w]
    assert "openai's hosted fine-tuning of openai/gpt-4o-mini left out: closed to new customers since 2026-05-07" in why
    assert "self-hosted LoRA on t4" in why and "google/gemini-2.5-flash fine-tuning" in why
    assert after.pricing["as_of"] == "2026-11-30" and after.pricing["left_out"]
    # With a machine to self-host on, the fine-tune is priced there instead, never at OpenAI's rates.
    own = verdict(_ladder(), _task(ENDPOINT, as_of="2026-11-30", self_host_usd_per_hour=1.0, **econ))
    assert own.recommended == "finetune" and "self-hosted: your machine" in own.headline


def test_a_retired_hosted_model_is_left_out_with_open_alternatives() -> None:
    task = _task({**ENDPOINT, "id": "claude-3.5-haiku"}, as_of="2026-11-30", price_model="anthropic/claude-3.5-haiku")
    [c] = price_profiles([TokenProfile("zero_shot", 300, 0, 3)], task)
    assert c.hosted is None and c.best() is None
    [item] = c.left_out
    assert item.offer == "hosted anthropic/claude-3.5-haiku" and item.reason.startswith("ended 2026-02-19")
    assert item.alternatives[0].startswith("anthropic/claude-haiku-5.5")  # the same provider's open model first


# ---------------------------------------------------------------------------------- freshness
def test_a_stale_catalog_warns_with_how_to_override() -> None:
    cat = load_catalog()
    fresh = PricingBasis(dt.date(2026, 12, 1), cat, max_age_days=183)
    assert fresh.warnings() == [] and fresh.headline().endswith("(1 day old)")
    stale = PricingBasis(dt.date(2027, 9, 1), cat, max_age_days=183)
    [w] = stale.warnings()
    assert "revised 2026-11-30, 275 days before 2027-09-01" in w and "economics.prices in task.yaml" in w
    # A price used that was read long ago is named, even in a fresh catalog.
    fresh.use("openai/gpt-4o", "2025-08-01", "https://openai.com/api/pricing/")
    [w] = fresh.warnings()
    assert "openai/gpt-4o (read 2025-08-01, 487 days)" in w


def test_max_price_age_is_a_task_setting() -> None:
    [c] = price_profiles([TokenProfile("zero_shot", 300, 0, 3)], _task(ENDPOINT, as_of="2026-11-30",
                                                                       max_price_age_days=400))
    assert c.basis is not None and c.basis.warnings() == []
    [c] = price_profiles([TokenProfile("zero_shot", 300, 0, 3)], _task(ENDPOINT, as_of="2026-11-30"))
    assert c.basis is not None and "openai/gpt-4o-mini (read 2026-05-07, 207 days)" in c.basis.warnings()[0]


# ----------------------------------------------------------------------- price what was measured
def test_a_local_climb_is_priced_self_hosted_from_its_measured_throughput() -> None:
    cat = load_catalog()
    prompt = TokenProfile("few_shot", 400, 350, 3, examples_per_s=2.0)
    tuned = TokenProfile("finetune", 150, 120, 3, 1.0, FINETUNE, TrainingRecord(144, 67_224, 3, seconds=2554))
    costs = price_profiles([prompt, tuned], _task(daily_volume=20_000, as_of="2026-11-30"), measured=LOCAL)
    rate = 4 * cat.cpu.price_mid  # type: ignore[union-attr]
    for c in costs:
        s = c.self_hosted
        assert s is not None and c.best() is s and c.hosted is None
        assert s.usd_per_hour == pytest.approx(rate) and s.label.startswith("4 vCPUs @ $")
    # 2 examples/s at 50% utilization serve 86,400 a day: one server runs all month.
    assert costs[0].self_hosted.capacity_per_day == pytest.approx(86_400)  # type: ignore[union-attr]
    assert costs[0].total_monthly() == pytest.approx(rate * HOURS_PER_MONTH)
    # Training is priced from the measured training time on the same machine.
    one = costs[1].self_hosted.one_off  # type: ignore[union-attr]
    assert one is not None and one.training_usd == pytest.approx(2554 / 3600 * rate)
    # gpt-4o-mini stays a labelled what-if for prompting; its fine-tuning is closed to new customers.
    w = costs[0].what_if
    assert w is not None and w.what_if and w.label.startswith("what-if: these token counts on openai/gpt-4o-mini")
    assert costs[1].what_if is None and "self-hosted LoRA: finetune's own adapter" in costs[1].left_out[0].sentence()
    basis = costs[0].basis
    assert basis is not None and "throughput on 4 CPUs, priced as 4 cloud vCPUs" in basis.assumptions[0]


def test_a_baseline_rung_gets_a_price_without_any_setting() -> None:
    [c] = price_profiles([TokenProfile("tfidf", 0, 0, 0, 300.0, BASELINE)], _task(as_of="2026-11-30"), measured=LOCAL)
    assert c.hosted is None and c.what_if is None and c.self_hosted is not None and c.total_monthly() is not None


def test_an_endpoint_model_in_the_catalog_is_the_default_price() -> None:
    ep = Measured("openai", "openai:gpt-4.1-mini@api.openai.com")
    [c] = price_profiles([TokenProfile("zero_shot", 300, 0, 3, 5.0)], _task(as_of="2026-11-30"), measured=ep)
    assert c.hosted is not None and c.hosted.label == "openai/gpt-4.1-mini" and not c.hosted.what_if
    assert c.self_hosted is None  # an endpoint's throughput is not a machine we rent
    assert c.what_if is not None and "gpt-4o-mini" in c.what_if.label
    # An endpoint the catalog does not price: only the what-if, and the assumption says how to price it.
    mine = Measured("openai", "openai:my-model@127.0.0.1:8000")
    [c] = price_profiles([TokenProfile("zero_shot", 300, 0, 3, 5.0)], _task(as_of="2026-11-30"), measured=mine)
    assert c.hosted is None and c.best() is None and c.what_if is not None
    assert c.basis is not None and any("is not in the catalog" in a for a in c.basis.assumptions)


def test_the_gpu_the_climb_ran_on_or_a_stand_in_for_the_model_size() -> None:
    cat = load_catalog()
    econ = _task().economics
    l4 = self_host_machine(Measured("local", "local:x", "cuda", "NVIDIA L4", 8, 7_000_000_000), econ, cat)
    assert l4 is not None and l4.label.startswith("l4 @") and "NVIDIA L4" in l4.basis
    a100 = self_host_machine(Measured("local", "local:x", "cuda", "NVIDIA A100-SXM4-80GB", 8), econ, cat)
    assert a100 is not None and a100.label.startswith("a100-80gb @")
    h200 = self_host_machine(Measured("local", "local:x", "cuda", "NVIDIA H200", 16, 7_000_000_000), econ, cat)
    assert h200 is not None and h200.label.startswith("l40s @") and "stand-in" in h200.basis
    assert default_gpu(cat, 70_000_000_000).key == "a100-80gb"  # 280 GB fits no single GPU: the largest


def test_a_climb_records_what_it_measured_and_a_stored_run_is_priced_as_it(tmp_path: Path) -> None:
    p = write_task(tmp_path, target="accuracy >= 0.3", economics={"daily_volume": 2_000, "as_of": "2026-11-30"})
    res = climb(load_task(p), all_rungs=True)
    assert res.measured is not None and res.measured.backend == "scripted" and res.measured.cpus >= 1
    assert all(c.best() is c.self_hosted for c in res.costs)
    back = load_climb(res.run_id)
    assert back.measured == res.measured
    assert [c.total_monthly() for c in back.costs] == pytest.approx([c.total_monthly() for c in res.costs])
    # A run stored before the hardware was recorded: its model id still says what answered.
    store = Store()
    row = store.climb(res.run_id)
    stored = json.loads(row["result_json"])
    stored.pop("measured")
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE climbs SET result_json = ? WHERE id = ?", (json.dumps(stored), res.run_id))
    old = load_climb(res.run_id)
    assert old.measured == Measured("scripted", "scripted:scripted")
    assert old.costs[0].self_hosted is not None


def test_as_of_must_be_a_date_in_task_yaml(tmp_path: Path) -> None:
    p = write_task(tmp_path, economics={"as_of": "someday"})
    with pytest.raises(ConfigError, match="economics.as_of"):
        load_task(p)
    assert price_rungs([], _task(as_of="2026-11-30")) == []
