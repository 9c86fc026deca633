"""The decision factors' rules: the thresholds practitioners use to choose between prompting,
RAG and fine-tuning (volume, clean examples, how often requirements change, time to production,
latency, audit exposure, vocabulary, knowledge churn), applied to a task's ``factors:``.

Example:
    >>> [s.favours for s in evaluate_factors(DecisionFactors(clean_examples=120, knowledge_change="fast"))]
    ['prompting', 'rag']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rungwise.config.factors import (
    ENOUGH_EXAMPLES,
    FAST_LATENCY_MS,
    FEW_EXAMPLES,
    HIGH_CONSISTENCY_VALID,
    HIGH_VOLUME,
    LOW_VOLUME,
    SHORT_TIME_DAYS,
    STABLE_UPDATES,
    DecisionFactors,
)

# Questions for `rungwise decide` (interactive): field -> (question, choices or type name).
FACTOR_QUESTIONS: dict[str, tuple[str, tuple[str, ...] | str]] = {
    "daily_volume": ("Requests per day in production", "int"),
    "output_consistency": ("How strictly must every answer follow one format", ("low", "medium", "high")),
    "clean_examples": ("Clean labeled examples available for training", "int"),
    "update_frequency": ("How often do the requirements change",
                         ("daily", "weekly", "monthly", "quarterly", "yearly", "stable")),
    "time_to_production_days": ("Days until it must be in production", "int"),
    "latency_ms": ("Required p95 latency in ms", "float"),
    "regulatory": ("Regulatory or audit exposure", ("none", "moderate", "high")),
    "proprietary_vocabulary": ("Does it use in-house vocabulary a base model cannot know", "bool"),
    "knowledge_change": ("How fast does the underlying knowledge change", ("static", "slow", "fast")),
}

Favours = Literal["prompting", "fine_tuning", "small_finetune", "rag", "auditability", "neutral"]


@dataclass
class Signal:
    """What one factor says: which approach it favours (or allows), by which rule."""

    factor: str
    value: str
    favours: Favours
    strength: Literal["favours", "allows", "info"]
    rule: str

    def sentence(self) -> str:
        if self.favours == "neutral":
            return f"{self.factor} = {self.value}: {self.rule}"
        word = {"fine_tuning": "fine-tuning", "small_finetune": "a small fine-tuned model"}.get(self.favours, self.favours)
        return f"{self.factor} = {self.value} {self.strength} {word}: {self.rule}"


def evaluate_factors(factors: DecisionFactors, daily_volume: int | None = None) -> list[Signal]:
    """Apply the field's thresholds to the factors that are set.

    ``daily_volume`` (from economics) is used when ``factors.daily_volume`` is not set.

    >>> [s.favours for s in evaluate_factors(DecisionFactors(clean_examples=120, knowledge_change="fast"))]
    ['prompting', 'rag']
    """
    f = factors
    out: list[Signal] = []
    vol = f.daily_volume if f.daily_volume is not None else daily_volume
    if vol is not None:
        if vol < LOW_VOLUME:
            out.append(Signal("daily_volume", f"{vol:,}", "prompting", "favours",
                              f"under {LOW_VOLUME:,} requests/day a cheaper call rarely repays training"))
        elif vol > HIGH_VOLUME:
            out.append(Signal("daily_volume", f"{vol:,}", "fine_tuning", "favours",
                              f"over {HIGH_VOLUME:,} requests/day the shorter prompts of a fine-tuned model add up"))
        else:
            out.append(Signal("daily_volume", f"{vol:,}", "neutral", "info",
                              f"between {LOW_VOLUME:,} and {HIGH_VOLUME:,} requests/day the measured break-even decides"))
    if f.output_consistency is not None:
        if f.output_consistency == "high":
            out.append(Signal("output_consistency", "high", "fine_tuning", "favours",
                              "a fixed format is what fine-tuning does best; the pick must answer in a valid format "
                              f">= {HIGH_CONSISTENCY_VALID:.0%} of the time"))
        else:
            out.append(Signal("output_consistency", f.output_consistency, "neutral", "info",
                              "no special format requirement"))
    if f.clean_examples is not None:
        n = f.clean_examples
        if n < FEW_EXAMPLES:
            out.append(Signal("clean_examples", f"{n:,}", "prompting", "favours",
                              f"under {FEW_EXAMPLES} clean examples a fine-tune is unreliable; use them as demos"))
        elif n < ENOUGH_EXAMPLES:
            out.append(Signal("clean_examples", f"{n:,}", "neutral", "info",
                              f"{FEW_EXAMPLES}-{ENOUGH_EXAMPLES - 1} clean examples is borderline; "
                              f"{ENOUGH_EXAMPLES}+ is the usual floor for fine-tuning"))
        else:
            out.append(Signal("clean_examples", f"{n:,}", "fine_tuning", "allows",
                              f"{ENOUGH_EXAMPLES}+ clean examples are enough to fine-tune"))
    if f.update_frequency is not None:
        if f.update_frequency in STABLE_UPDATES:
            out.append(Signal("update_frequency", f.update_frequency, "fine_tuning", "allows",
                              "requirements stable for 3+ months let a trained model stay current"))
        else:
            out.append(Signal("update_frequency", f.update_frequency, "prompting", "favours",
                              "requirements changing weekly or monthly are cheaper to follow by editing a prompt "
                              "than by relabeling and retraining"))
    if f.time_to_production_days is not None:
        d = f.time_to_production_days
        if d < SHORT_TIME_DAYS:
            out.append(Signal("time_to_production_days", str(d), "prompting", "favours",
                              f"under {SHORT_TIME_DAYS} days leaves no time for data collection, training and "
                              "evaluation rounds"))
        else:
            out.append(Signal("time_to_production_days", str(d), "neutral", "info", "time allows any rung"))
    if f.latency_ms is not None:
        if f.latency_ms < FAST_LATENCY_MS:
            out.append(Signal("latency_ms", f"{f.latency_ms:g}", "small_finetune", "favours",
                              f"under {FAST_LATENCY_MS} ms favours a small fine-tuned model: short prompts, small "
                              "model, no retrieval step"))
        else:
            out.append(Signal("latency_ms", f"{f.latency_ms:g}", "neutral", "info",
                              "measured p95 latency is checked against it"))
    if f.regulatory is not None:
        if f.regulatory == "high":
            out.append(Signal("regulatory", "high", "auditability", "favours",
                              "the CI's lower bound must meet the target, and prompts and retrieved sources (which "
                              "can be inspected and versioned) are preferred over opaque weights"))
        elif f.regulatory == "moderate":
            out.append(Signal("regulatory", "moderate", "auditability", "info",
                              "keep the run store and the report as the audit trail of the decision"))
        else:
            out.append(Signal("regulatory", "none", "neutral", "info", "no audit requirement"))
    if f.proprietary_vocabulary is not None:
        if f.proprietary_vocabulary:
            out.append(Signal("proprietary_vocabulary", "yes", "fine_tuning", "favours",
                              "a base model does not know in-house terms; training on examples teaches them"))
        else:
            out.append(Signal("proprietary_vocabulary", "no", "neutral", "info", "general vocabulary"))
    if f.knowledge_change is not None:
        if f.knowledge_change == "fast":
            out.append(Signal("knowledge_change", "fast", "rag", "favours",
                              "facts that change quickly go stale in weights; retrieval reads the current source"))
        elif f.knowledge_change == "static":
            out.append(Signal("knowledge_change", "static", "fine_tuning", "allows",
                              "static knowledge can be baked into a fine-tune"))
        else:
            out.append(Signal("knowledge_change", "slow", "neutral", "info", "knowledge changes slowly"))
    return out


def lean(signals: Sequence[Signal]) -> str:
    """Which way the factors lean on their own: 'prompting', 'fine-tuning', 'rag' or 'mixed'.

    A 'favours' counts 1 and an 'allows' 0.5, so permissions never outvote requirements.
    """
    score = {"prompting": 0.0, "fine-tuning": 0.0, "rag": 0.0}
    for s in signals:
        w = {"favours": 1.0, "allows": 0.5}.get(s.strength, 0.0)
        if s.favours == "prompting":
            score["prompting"] += w
        elif s.favours in ("fine_tuning", "small_finetune"):
            score["fine-tuning"] += w
        elif s.favours == "rag":
            score["rag"] += w
    best = max(score.values())
    if best == 0:
        return "no preference"
    top = [k for k, v in score.items() if v == best]
    return top[0] if len(top) == 1 else "mixed (" + " / ".join(top) + ")"
