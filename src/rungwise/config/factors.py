"""The ``factors:`` block of task.yaml: what the field weighs besides the score.

Kept apart from :mod:`rungwise.advise` (the rules engine) so that the task schema can import it
without importing the engine. The thresholds live here, next to the field docs that quote them.

Example (task.yaml)::

    factors:
      clean_examples: 800
      update_frequency: quarterly
      latency_ms: 500
      regulatory: moderate
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rungwise.config.base import Strict

# ------------------------------------------------------------------------------ thresholds
# The field's rules of thumb, kept in one place so a reader can check them against the tests.
LOW_VOLUME = 10_000  # requests/day: below this, prompting (training rarely pays back)
HIGH_VOLUME = 50_000  # above this, fine-tuning (shorter prompts on every call add up)
FEW_EXAMPLES = 300  # clean examples: below this, prompting
ENOUGH_EXAMPLES = 500  # at or above this, fine-tuning is an option
FAST_LATENCY_MS = 200  # below this, a small fine-tuned model
SHORT_TIME_DAYS = 14  # to production: below this, prompting (a fine-tune takes weeks of rounds)
HIGH_CONSISTENCY_VALID = 0.99  # format-valid rate demanded when output consistency is "high"
STABLE_UPDATES = ("quarterly", "yearly", "stable")  # 3+ months between requirement changes



class DecisionFactors(Strict):
    """The factors the field weighs besides the score. All optional; `rungwise decide` asks for
    the missing ones. Each is documented with its allowed values and the threshold it feeds."""

    daily_volume: int | None = Field(
        None, ge=0, description="Requests per day (same number as economics.daily_volume). <10,000 favours "
        "prompting; >50,000 favours fine-tuning; in between the measured break-even decides.",
    )
    output_consistency: Literal["low", "medium", "high"] | None = Field(
        None, description="How strictly every answer must follow one format/style. high favours fine-tuning and "
        f"requires a format-valid rate >= {HIGH_CONSISTENCY_VALID:.0%}.",
    )
    clean_examples: int | None = Field(
        None, ge=0, description=f"Clean labeled examples available for training. <{FEW_EXAMPLES} favours prompting; "
        f"{ENOUGH_EXAMPLES}+ allows fine-tuning.",
    )
    update_frequency: Literal["daily", "weekly", "monthly", "quarterly", "yearly", "stable"] | None = Field(
        None, description="How often the task's requirements (labels, format, policy) change. daily/weekly/monthly "
        "favour prompting; quarterly or slower (stable 3+ months) allows training. Sets the retraining cadence.",
    )
    time_to_production_days: int | None = Field(
        None, ge=0, description=f"Days until it must be in production. <{SHORT_TIME_DAYS} favours prompting.",
    )
    latency_ms: float | None = Field(
        None, gt=0, description=f"Required p95 latency per request in ms. <{FAST_LATENCY_MS} favours a small fine-tuned "
        "model; rungs whose measured p95 exceeds it are passed over when another rung qualifies.",
    )
    regulatory: Literal["none", "moderate", "high"] | None = Field(
        None, description="Regulatory or audit exposure. high: the CI's lower bound must meet the target, and "
        "inspectable rungs (prompts, retrieved sources) are preferred over opaque weights.",
    )
    proprietary_vocabulary: bool | None = Field(
        None, description="Does the task use in-house terms a base model cannot know? true favours fine-tuning.",
    )
    knowledge_change: Literal["static", "slow", "fast"] | None = Field(
        None, description="How fast the facts the answers depend on change. fast favours RAG (weights go stale); "
        "static allows baking knowledge into a fine-tune.",
    )
