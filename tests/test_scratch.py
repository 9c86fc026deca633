"""The from-scratch training estimator: 6·N·D FLOPs, days, GPU-hours, cost range."""

from __future__ import annotations

import pytest

from rungwise.economics.scratch import estimate_scratch, parse_count
from rungwise.errors import ConfigError


def test_bloomberggpt_reproduces_its_published_training_time() -> None:
    # BloombergGPT (Wu et al. 2023): ~50B parameters, a 709B-token corpus, 512 A100 40GB GPUs
    # (64 p4d.24xlarge), about 53 days. 6ND at 30% of the A100's 312 TFLOP/s bf16 peak:
    est = estimate_scratch(50e9, 709e9, gpu="a100", gpus=512, mfu=0.30)
    assert est.flops == pytest.approx(6 * 50e9 * 709e9)
    assert est.flops == pytest.approx(2.127e23, rel=1e-3)
    assert est.gpu.peak_bf16_tflops == 312
    assert est.seconds == pytest.approx(2.127e23 / (512 * 312e12 * 0.30), rel=1e-3)
    assert est.days == pytest.approx(53, rel=0.05)  # 51.4 days: within 5% of the published 53
    assert est.gpu_hours == pytest.approx(512 * est.days * 24)
    lo, hi = est.cost_range
    assert lo == pytest.approx(est.gpu_hours * 1.29) and hi == pytest.approx(est.gpu_hours * 32.7726 / 8)
    assert 0.5e6 < lo < est.cost_mid < hi < 3e6
    text = est.summary()
    assert "51.4 days" in text and "512 x NVIDIA A100" in text
    buys = est.what_it_buys()
    assert "14.2 tokens per parameter" in buys and "gpt-4o-mini requests" in buys
    assert est.warnings() == []  # 800 GB of model states fit in 512 x 40 GB


def test_parse_count() -> None:
    assert parse_count("50B") == 50e9
    assert parse_count("709e9") == 709e9
    assert parse_count("1.5T") == 1.5e12
    assert parse_count("135m") == 135e6
    assert parse_count(7) == 7.0
    for bad in ("fifty", "7 billion", "-3B", "0"):
        with pytest.raises(ConfigError):
            parse_count(bad, "parameter count")


def test_your_price_replaces_the_public_range() -> None:
    est = estimate_scratch("7B", "2T", gpu="h100", gpus=256, mfu=0.4, usd_per_gpu_hour=2.0)
    assert est.cost_range == (est.gpu_hours * 2.0, est.gpu_hours * 2.0)
    assert est.days == pytest.approx(6 * 7e9 * 2e12 / (256 * 989e12 * 0.4) / 86400)


def test_warnings_for_memory_and_optimistic_mfu() -> None:
    est = estimate_scratch("70B", "1T", gpu="l4", gpus=8, mfu=0.7)
    w = " ".join(est.warnings())
    assert "1,120 GB" in w and "192 GB" in w  # 70B x 16 bytes vs 8 x 24 GB
    assert "optimistic" in w


@pytest.mark.parametrize("kw", [{"mfu": 0}, {"mfu": 1.5}, {"gpus": 0}, {"gpu": "v100"}, {"usd_per_gpu_hour": -1.0}])
def test_bad_inputs_raise_clear_errors(kw: dict) -> None:
    args = {"gpu": "a100", "gpus": 8, "mfu": 0.4} | kw
    with pytest.raises(ConfigError):
        estimate_scratch("1B", "20B", **args)
