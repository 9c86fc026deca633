"""The ``economics:`` block of task.yaml: volume, which prices to use, and your own price entries.

By default a rung is priced as what was measured: a local climb self-hosted from its measured
throughput on a machine like the one it ran on; an OpenAI-compatible endpoint whose model is in
the catalog at that model's prices. ``price_model`` adds a clearly labelled hosted what-if.

Example (task.yaml)::

    economics:
      daily_volume: 20000               # requests per day in production
      price_model: openai/gpt-4o-mini   # what-if: these token counts on this hosted model
      self_host_gpu: l4                 # price self-hosting at this GPU's hourly rate
      as_of: 2026-11-30                 # judge availability and price age on this date (default today)
      labeling_cost_per_example: 0.10   # $ to label one clean training example
      retrain_every_days: 90
      prices:
        models:
          acme/llm: {input_per_1m: 0.2, output_per_1m: 0.8, source: "our contract", date: "2025-06-01"}
        gpus:
          l4: {usd_per_gpu_hour: 0.55, source: "our reserved rate", date: "2025-06-01"}
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rungwise.config.base import Strict

DEFAULT_PRICE_MODEL = "openai/gpt-4o-mini"
DEFAULT_DAILY_VOLUME = 1000
#: A price read longer ago than this is flagged as stale (about six months).
DEFAULT_MAX_PRICE_AGE_DAYS = 183


class AvailabilitySpec(Strict):
    """Who can buy an offer (a hosted model, or a provider's fine-tuning), from when, and where.

    No dates: open to anyone. ``closed_to_new``: from that date new customers cannot buy it
    (existing ones may). ``ends``: from that date nobody can. ``channel``: sold only through
    that channel (e.g. Amazon Bedrock), not through the provider's own API.
    """

    closed_to_new: dt.date | None = Field(None, description="From this date new customers cannot buy it (YYYY-MM-DD).")
    ends: dt.date | None = Field(None, description="From this date nobody can buy or use it (YYYY-MM-DD).")
    channel: str | None = Field(None, description="Sold only through this channel, e.g. 'Amazon Bedrock'.")
    source: str = Field(description="URL or document the availability comes from.")
    date: str = Field(description="When the source was read (YYYY-MM-DD).")
    note: str | None = Field(None, description="Anything a reader should know (who is still served, replacements).")

    @model_validator(mode="after")
    def _order(self) -> AvailabilitySpec:
        if self.closed_to_new and self.ends and self.ends < self.closed_to_new:
            raise ValueError("`ends` comes before `closed_to_new`")
        return self


class ConfirmationSpec(Strict):
    """A later source that lists the same figures (so the entry is known to be current then)."""

    source: str = Field(description="URL or document that lists the same prices.")
    date: str = Field(description="When it was read or last updated (YYYY-MM-DD).")
    note: str | None = Field(None, description="Which figures it confirms, if not all.")



class FinetunePriceSpec(Strict):
    """A provider's fine-tuning prices for one base model ($ per 1M tokens)."""

    training_per_1m: float | None = Field(
        None, ge=0, description="Training: $ per 1M training tokens (tokens in the file x epochs); none = not listed."
    )
    input_per_1m: float | None = Field(None, ge=0, description="Inference on the fine-tuned model: $ per 1M input tokens.")
    cached_input_per_1m: float | None = Field(None, ge=0, description="Fine-tuned model: $ per 1M cached input tokens.")
    output_per_1m: float | None = Field(None, ge=0, description="Fine-tuned model: $ per 1M output tokens.")
    availability: AvailabilitySpec | None = Field(
        None, description="Who can buy fine-tuning of this model and until when (none: open to anyone)."
    )


class ModelPriceSpec(Strict):
    """One hosted model's list prices ($ per 1M tokens), with where the figure came from.

    In task.yaml an entry whose key is already in the catalog overrides only the fields given
    (e.g. a negotiated input price); a new key needs at least the input and output prices.
    """

    provider: str | None = Field(None, description="Who sells it (openai, anthropic, google, ...).")
    input_per_1m: float | None = Field(None, ge=0, description="$ per 1M input (prompt) tokens.")
    cached_input_per_1m: float | None = Field(
        None, ge=0, description="$ per 1M input tokens served from the provider's prompt cache (none = no discount)."
    )
    cache_write_per_1m: float | None = Field(
        None, ge=0, description="$ per 1M tokens written to the cache on a miss, where the provider charges extra."
    )
    output_per_1m: float | None = Field(None, ge=0, description="$ per 1M output (completion) tokens.")
    cache_min_tokens: int | None = Field(
        None, ge=0, description="Prompts shorter than this are never cached by the provider (OpenAI: 1024)."
    )
    cache_ttl_s: float | None = Field(
        None, gt=0, description="How long an unused cached prefix survives (about 300 s at OpenAI and Anthropic)."
    )
    finetune: FinetunePriceSpec | None = Field(None, description="Fine-tuning prices, where the provider lists them.")
    availability: AvailabilitySpec | None = Field(
        None, description="Who can buy this hosted model and until when (none: open to anyone)."
    )
    source: str | None = Field(None, description="URL or document the figures come from.")
    date: str | None = Field(None, description="When the figures were read (YYYY-MM-DD or YYYY-MM).")
    confirmed: ConfirmationSpec | None = Field(None, description="A later source listing the same figures.")
    note: str | None = Field(None, description="Anything a reader should know about the figure.")


class GpuPriceSpec(Strict):
    """A GPU's hourly price you pay (overrides the catalog's public range), or a new GPU."""

    usd_per_gpu_hour: float = Field(gt=0, description="$ per GPU-hour you actually pay.")
    name: str | None = Field(None, description="Display name (new GPUs).")
    peak_bf16_tflops: float | None = Field(None, gt=0, description="Dense BF16/FP16 tensor peak, TFLOP/s (new GPUs).")
    memory_gb: float | None = Field(None, gt=0, description="Memory per GPU in GB (new GPUs).")
    source: str = Field("task.yaml", description="Where the price comes from.")
    date: str | None = Field(None, description="When the price was read.")


class PriceOverrides(Strict):
    """Your own price entries, merged over the shipped catalog."""

    models: dict[str, ModelPriceSpec] = Field(default_factory=dict, description="Hosted model prices by key.")
    gpus: dict[str, GpuPriceSpec] = Field(default_factory=dict, description="GPU-hour prices by GPU key.")


class EconomicsSpec(Strict):
    """How to price the ladder at your volume. Every field has a default, so the block is optional."""

    daily_volume: int | None = Field(
        None, ge=0, description=f"Requests per day in production (default {DEFAULT_DAILY_VOLUME} when not set)."
    )
    price_model: str = Field(
        DEFAULT_PRICE_MODEL,
        description="The hosted what-if: catalog key of a hosted model (see `rungwise prices`) at whose prices the "
        "measured token counts are also shown, labelled as a what-if (fine-tune rungs at its fine-tuning prices, "
        "where new customers can still buy them). It is the default price only when the climb ran that model.",
    )
    self_host_gpu: str | None = Field(
        None,
        description="Catalog GPU key (t4, l4, a100-40gb, h100-sxm, ...) for self-hosted cost from the measured "
        "throughput. The throughput is the one measured by the climb, so name the hardware it ran on. Default: "
        "the machine the climb ran on (its GPU from the catalog, or its vCPUs at the catalog's CPU-hour rate).",
    )
    self_host_usd_per_hour: float | None = Field(
        None, gt=0, description="Hourly price of the machine the climb ran on (wins over self_host_gpu)."
    )
    as_of: dt.date | None = Field(
        None,
        description="Price on this date (YYYY-MM-DD): offers new customers cannot buy on it are left out, and "
        "prices older than max_price_age_days on it are flagged. Default: today. Fix it for reproducible reports.",
    )
    max_price_age_days: int = Field(
        DEFAULT_MAX_PRICE_AGE_DAYS, gt=0,
        description="Warn when a catalog price used was read more than this many days before as_of "
        "(override stale ones under economics.prices).",
    )
    self_host_utilization: float = Field(
        0.5, gt=0, le=1, description="Average load / capacity a self-hosted server can sustain (headroom for peaks)."
    )
    labeling_cost_per_example: float = Field(0.0, ge=0, description="$ to label (or clean) one training example.")
    retrain_every_days: int | None = Field(
        None, gt=0, description="Retrain fine-tuned rungs this often; default from factors.update_frequency, else never."
    )
    new_examples_per_retrain: int = Field(0, ge=0, description="New labeled examples bought for each retraining.")
    horizon_days: int = Field(
        365, gt=0, description="Amortize one-off costs (training, labeling) over this many days."
    )
    caching: bool = Field(True, description="Apply the provider's prompt-caching discount to the shared prefix.")
    currency: Literal["USD"] = Field("USD", description="Only USD: the catalog's list prices are in USD.")
    prices: PriceOverrides = Field(default_factory=PriceOverrides, description="Your own or negotiated prices.")

    @field_validator("price_model")
    @classmethod
    def _key(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("price_model must be a catalog key such as 'openai/gpt-4o-mini'")
        return v.strip()
