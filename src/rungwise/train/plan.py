"""The training plan: what a fine-tune will process and how long it will take on this machine,
known before it starts, and the time budget that refuses a plan too long for it.

The estimate is not a constant: :func:`rungwise.train.trainer.plan_training` times a forward and
backward pass of a real batch on the loaded model (a few seconds) and scales it by the tokens
the whole run computes (the batch plan is deterministic, so those are counted, not guessed).

Example:
    >>> plan = plan_training(task, split.train, Path("ft"))  # doctest: +SKIP
    >>> print(plan.summary())  # doctest: +SKIP
    fine-tune plan: 143 examples (16 held out), 22,118 tokens/epoch x 3 epochs = 57 steps; ~1.9 min on cpu
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from rungwise.errors import ConfigError
from rungwise.train.data import validation_size

#: The share of the budget a suggested fix aims at: the next plan measures the speed again (one timed
#: pass, which varied by up to 20% between plans on a shared 2-core machine), and a fix that lands just
#: over the budget would be refused a second time.
BUDGET_MARGIN = 0.8


class TrainingBudgetExceeded(ConfigError):
    """The planned fine-tune would take longer than ``rungs.finetune.budget_minutes``."""


@dataclass
class TrainingPlan:
    """A fine-tune before it runs: data, steps, tokens, and the measured time estimate.

    ``example_tokens`` counts every token of every example (what a plain trainer processes and
    what tokens/s figures count); ``computed_tokens`` is what this trainer computes once a shared
    prompt prefix is computed once per batch (and padding is added).
    """

    prompt: str  # "minimal" | "full" (or "custom" when the caller passed its own system prompt)
    n_available: int  # train split examples before max_train_examples
    n_train: int
    n_val: int
    n_skipped: int  # longer than max_length
    epochs: float
    steps: int  # optimizer steps of the whole run
    start_step: int  # > 0 when an interrupted run resumes
    steps_per_epoch: int
    evaluations: int  # validation passes still to run
    example_tokens_per_epoch: int
    computed_tokens_per_epoch: int  # of the first epoch (later epochs batch differently, within a few %)
    computed_tokens: int  # of the steps still to run, by this process
    layout: str  # padded | packed | shared_prefix
    prefix_tokens: int  # tokens every training example shares (computed once per batch when shared)
    device: str
    world_size: int
    train_s_per_token: float  # measured: forward + backward, per computed token
    eval_s_per_token: float  # measured: forward only, per computed token
    warmup_seconds: float  # what measuring took
    estimated_seconds: float  # for the steps and evaluations still to run
    budget_minutes: float | None
    usd_per_hour: float | None = None
    max_train_examples: int | None = None
    validation_tokens: int = 0  # computed tokens of one validation pass
    validation_rule: tuple[float, int, int] = (0.1, 8, 256)  # val_fraction, val_min, val_max of the spec
    finished: bool = False  # a finished run with the same data and settings is already there
    _run: Any = field(default=None, repr=False, compare=False)  # the loaded model etc., reused by finetune()

    @property
    def estimated_cost_usd(self) -> float | None:
        """The estimated wall time priced at ``usd_per_hour`` (None when no price is known)."""
        if self.usd_per_hour is None:
            return None
        return self.estimated_seconds / 3600 * self.usd_per_hour

    @property
    def remaining_steps(self) -> int:
        return 0 if self.finished else self.steps - self.start_step

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able values (what a run record stores), without the loaded model."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["estimated_cost_usd"] = self.estimated_cost_usd
        return d

    def summary(self) -> str:
        """One line for the console before training starts.

        Example:
            >>> print(plan.summary())  # doctest: +SKIP
            fine-tune plan: 143 examples (+16 validation), minimal prompt, 22,118 tokens/epoch x 3 epochs = 57 steps
            (shared prefix of 31 tokens computed once per batch: 9,870 tokens/epoch computed); ~1.9 min on cpu
        """
        if self.finished:
            return "fine-tune: a finished run with the same data and settings is reused (no training)"
        cap = (
            f" (capped from {self.n_available:,} by max_train_examples)"
            if self.max_train_examples is not None and self.n_available > self.n_train + self.n_val
            else ""
        )
        skipped = f", {self.n_skipped} skipped as too long" if self.n_skipped else ""
        resume = f", resuming at step {self.start_step}" if self.start_step else ""
        shared = (
            f" (shared prefix of {self.prefix_tokens} tokens computed once per batch: "
            f"{self.computed_tokens_per_epoch:,} tokens/epoch computed)"
            if self.layout == "shared_prefix"
            else ""
        )
        cost = f", ~${self.estimated_cost_usd:,.2f} at ${self.usd_per_hour:g}/h" if self.usd_per_hour is not None else ""
        return (
            f"fine-tune plan: {self.n_train:,} examples{cap} (+{self.n_val} validation{skipped}), {self.prompt} prompt, "
            f"{self.example_tokens_per_epoch:,} tokens/epoch x {self.epochs:g} epochs = {self.steps} steps{resume}"
            f"{shared}; ~{_duration(self.estimated_seconds)} on {self.device}{cost} (measured)"
        )

    def check_budget(self) -> None:
        """Raise :class:`TrainingBudgetExceeded`, with the ways to fit, when the estimate exceeds the budget.

        Example:
            >>> plan.check_budget()  # doctest: +SKIP
        """
        if self.budget_minutes is None or self.finished or self.estimated_seconds <= self.budget_minutes * 60:
            return
        ratio = self.estimated_seconds / (self.budget_minutes * 60)
        fixes = []
        n_fit = self.examples_that_fit(self.budget_minutes * 60 * BUDGET_MARGIN)
        if n_fit >= 1:
            fixes.append(f"train on fewer examples (rungs.finetune.max_train_examples: {n_fit})")
        if self.prompt == "full":
            fixes.append("train on the minimal prompt (rungs.finetune.prompt: minimal): no instructions or label list per example")
        e_fit = math.floor(self.epochs / ratio * BUDGET_MARGIN * 10) / 10
        if e_fit >= 0.1:
            fixes.append(f"fewer epochs (rungs.finetune.epochs: {e_fit:g})")
        if not self.device.startswith("cuda"):
            fixes.append("a GPU (model.device: cuda)")
        fixes.append(f"a larger budget (rungs.finetune.budget_minutes: {math.ceil(self.estimated_seconds / 60)}, or null)")
        raise TrainingBudgetExceeded(
            f"rungs.finetune: the planned training would take ~{_duration(self.estimated_seconds)} on this machine "
            f"({self.remaining_steps} steps, {self.computed_tokens_per_epoch:,} tokens computed per epoch at "
            f"{1 / max(self.train_s_per_token, 1e-12):,.0f} tokens/s measured), over the budget of "
            f"{self.budget_minutes:g} min",
            hint="; or ".join(fixes),
        )

    def examples_that_fit(self, seconds: float) -> int:
        """The most examples (train + validation, before the split) whose training fits ``seconds``
        at the measured speed: fewer examples also shrink the validation slice, by its own rule."""
        fraction, vmin, vmax = self.validation_rule
        train_s = self.computed_tokens_per_epoch / max(self.n_train, 1) * self.epochs * self.train_s_per_token
        val_s = self.evaluations * self.validation_tokens / max(self.n_val, 1) * self.eval_s_per_token

        def seconds_for(n: int) -> float:
            n_val = validation_size(n, fraction, vmin=vmin, vmax=vmax)
            return (n - n_val) * train_s + n_val * val_s

        lo, hi = 0, self.n_train + self.n_val  # the largest n that fits (seconds_for grows with n)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if seconds_for(mid) <= seconds else (lo, mid - 1)
        return lo


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["TrainingBudgetExceeded", "TrainingPlan"]
