"""What training a model from scratch would take: 6·N·D FLOPs, days, GPU-hours and a cost range.

Training a dense transformer costs about ``6 * N * D`` floating-point operations for ``N``
parameters and ``D`` tokens (2 for the forward pass, 4 for the backward pass; Kaplan et al.
2020). At a model FLOPs utilization (MFU) of the GPUs' datasheet peak, the run takes
``6ND / (gpus * peak * MFU)`` seconds.

Example (BloombergGPT: 50B parameters, 709B tokens, 512 A100s, about 53 days):
    >>> est = estimate_scratch(50e9, 709e9, gpu="a100", gpus=512, mfu=0.30)
    >>> round(est.days)
    51
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rungwise.errors import ConfigError
from rungwise.prices.catalog import Catalog, Gpu, load_catalog

# Mixed-precision Adam keeps ~16 bytes per parameter (fp16 weights and gradients, fp32 master
# weights, momentum and variance): ZeRO, Rajbhandari et al. 2020. Activations come on top.
BYTES_PER_PARAM_TRAINING = 16
# Compute-optimal tokens per parameter (Chinchilla, Hoffmann et al. 2022).
CHINCHILLA_TOKENS_PER_PARAM = 20

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_NUM_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def parse_count(text: str | float | int, what: str = "value") -> float:
    """Read ``"50B"``, ``"709e9"``, ``"1.5T"``, ``"135M"`` or a number.

    >>> parse_count("50B"), parse_count("1.5T"), parse_count(7e9)
    (50000000000.0, 1500000000000.0, 7000000000.0)
    """
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _NUM_RE.match(text)
        if not m:
            raise ConfigError(f"cannot read {what} {text!r}", hint="write a number such as 50B, 709e9, 1.5T or 135M")
        value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}", hint="give a positive count such as 7B")
    return value


def _fmt_count(x: float) -> str:
    for div, word in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million")):
        if x >= div:
            return f"{x / div:,.1f} {word}"
    return f"{x:,.0f}"


def _fmt_money(x: float) -> str:
    if x >= 1e6:
        return f"${x / 1e6:,.2f}M"
    if x >= 1e4:
        return f"${x / 1e3:,.0f}k"
    return f"${x:,.0f}"


@dataclass
class ScratchEstimate:
    """The estimate and its inputs. Money is USD at the GPU's public on-demand range."""

    params: float
    tokens: float
    gpu: Gpu
    gpus: int
    mfu: float
    usd_per_gpu_hour: tuple[float, float, float]  # low, mid, high

    @property
    def flops(self) -> float:
        return 6.0 * self.params * self.tokens

    @property
    def seconds(self) -> float:
        return self.flops / (self.gpus * self.gpu.peak_bf16_tflops * 1e12 * self.mfu)

    @property
    def days(self) -> float:
        return self.seconds / 86_400

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.seconds / 3600

    @property
    def cost_range(self) -> tuple[float, float]:
        return (self.gpu_hours * self.usd_per_gpu_hour[0], self.gpu_hours * self.usd_per_gpu_hour[2])

    @property
    def cost_mid(self) -> float:
        return self.gpu_hours * self.usd_per_gpu_hour[1]

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    def warnings(self) -> list[str]:
        out = []
        need_gb = self.params * BYTES_PER_PARAM_TRAINING / 1e9
        have_gb = self.gpus * self.gpu.memory_gb
        if self.gpu.memory_gb and need_gb > have_gb:
            out.append(
                f"model states alone need about {need_gb:,.0f} GB ({BYTES_PER_PARAM_TRAINING} bytes/parameter with "
                f"mixed-precision Adam), more than the {have_gb:,.0f} GB of all {self.gpus} GPUs together: add GPUs"
            )
        if self.mfu > 0.6:
            out.append(f"MFU {self.mfu:.0%} is optimistic: large training runs usually reach 30-50% of peak")
        return out

    def what_it_buys(self, catalog: Catalog | None = None, price_model: str = "openai/gpt-4o-mini",
                     daily_volume: int = 10_000) -> str:
        """A sentence putting the cost next to what the same money buys from a hosted model."""
        cat = catalog or load_catalog()
        p = cat.model(price_model)
        per_call = (1000 * p.input_per_1m + 100 * p.output_per_1m) / 1e6
        calls = self.cost_mid / per_call
        years = calls / daily_volume / 365
        ratio = self.tokens_per_param
        fit = (
            "about compute-optimal" if 0.5 * CHINCHILLA_TOKENS_PER_PARAM <= ratio <= 2 * CHINCHILLA_TOKENS_PER_PARAM
            else ("fewer tokens than compute-optimal" if ratio < CHINCHILLA_TOKENS_PER_PARAM else
                  "more tokens than compute-optimal (a smaller model, cheaper to serve)")
        )
        return (
            f"That buys one {self.params / 1e9:,.3g}B-parameter model trained on {self.tokens / 1e9:,.4g}B tokens "
            f"({ratio:,.1f} tokens per parameter: {fit}; Chinchilla's optimum is about {CHINCHILLA_TOKENS_PER_PARAM}), "
            "for one clean run, before failed runs, ablations, data and staff. "
            f"The same {_fmt_money(self.cost_mid)} pays for about {_fmt_count(calls)} {p.key} requests of 1,000 input + 100 "
            f"output tokens: {years:,.0f} years at {daily_volume:,} requests/day."
        )

    def summary(self) -> str:
        lo, hi = self.cost_range
        return (
            f"6·N·D = 6 x {self.params:.3g} x {self.tokens:.3g} = {self.flops:.3g} FLOPs. "
            f"On {self.gpus} x {self.gpu.name} ({self.gpu.peak_bf16_tflops:g} TFLOP/s peak) at {self.mfu:.0%} MFU: "
            f"{self.days:,.1f} days, {self.gpu_hours:,.0f} GPU-hours, "
            f"{_fmt_money(lo)}-{_fmt_money(hi)} at ${self.usd_per_gpu_hour[0]:.2f}-{self.usd_per_gpu_hour[2]:.2f} "
            "per GPU-hour."
        )

    def to_dict(self) -> dict[str, object]:
        lo, hi = self.cost_range
        return {
            "params": self.params, "tokens": self.tokens, "gpu": self.gpu.key, "gpus": self.gpus, "mfu": self.mfu,
            "flops": self.flops, "days": self.days, "gpu_hours": self.gpu_hours,
            "usd_per_gpu_hour": list(self.usd_per_gpu_hour), "cost_low_usd": lo, "cost_high_usd": hi,
            "cost_mid_usd": self.cost_mid, "tokens_per_param": self.tokens_per_param, "warnings": self.warnings(),
        }


def estimate_scratch(
    params: float | str,
    tokens: float | str,
    *,
    gpu: str = "a100",
    gpus: int = 8,
    mfu: float = 0.4,
    usd_per_gpu_hour: float | None = None,
    catalog: Catalog | None = None,
) -> ScratchEstimate:
    """Estimate a from-scratch pretraining run.

    ``params`` and ``tokens`` accept ``"7B"``-style strings; ``gpu`` is a catalog key;
    ``usd_per_gpu_hour`` replaces the catalog's public price range with your price.

    Example:
        >>> e = estimate_scratch("7B", "2T", gpu="h100", gpus=256, mfu=0.4)
        >>> round(e.days, 1)
        9.6
    """
    n = parse_count(params, "parameter count")
    d = parse_count(tokens, "token count")
    if not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"GPU count must be a positive integer, got {gpus!r}", hint="e.g. --gpus 512")
    if not 0 < mfu <= 1:
        raise ConfigError(f"MFU must be in (0, 1], got {mfu}", hint="MFU is a fraction of peak: 0.3 means 30%")
    cat = catalog or load_catalog()
    g = cat.gpu(gpu)
    if not g.peak_bf16_tflops:
        raise ConfigError(
            f"GPU {g.key!r} has no peak TFLOP/s in the catalog",
            hint="add peak_bf16_tflops (and memory_gb) to its entry under economics.prices.gpus",
        )
    if usd_per_gpu_hour is not None:
        if usd_per_gpu_hour <= 0:
            raise ConfigError("--usd-per-gpu-hour must be positive", hint="e.g. --usd-per-gpu-hour 2.5")
        prices = (usd_per_gpu_hour, usd_per_gpu_hour, usd_per_gpu_hour)
    else:
        lo, hi = g.price_range
        prices = (lo, g.price_mid, hi)
    return ScratchEstimate(n, d, g, gpus, mfu, prices)
