"""``constrained``: a prompting rung whose output is constrained to the task's format.

Before anyone fine-tunes for format consistency, measure whether constraining the output closes
the format gap. The metric says what the format is (:meth:`rungwise.evaluate.metrics.Metric.constraint`):
a choice among the labels (accuracy, macro-F1), the task-wide regular expression (regex), a JSON
schema or any JSON object (json_schema, json_valid, json_fields). The prompt is the one of the
``zero_shot`` or ``few_shot`` rung (``prompt:``), prepared once and shared, so the two can be
compared on the same prompt; the backend enforces the constraint (the local backend through
llguidance and log-likelihood scoring, an endpoint through its structured-output fields). An
endpoint that rejects the constraint makes the rung "unsupported by this backend", never an
unconstrained run.

For label tasks, contextual calibration (``calibrate: true``) subtracts the label scores of
content-free inputs, a known fix for a model that always picks one label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from rungwise.config.base import Strict
from rungwise.evaluate.registry import get_metric
from rungwise.prompting import count_tokens_estimate
from rungwise.rungs.base import (
    Prepared,
    PromptArtifact,
    Rung,
    RungArtifact,
    RungContext,
    RungSkipped,
    Scored,
    estimate_prompts,
)
from rungwise.types import CONSTRAINED, Constraint, Example, RungResult, TokenEstimate


class ConstrainedConfig(Strict):
    """The ``rungs.constrained`` section."""

    prompt: Literal["zero_shot", "few_shot"] = Field(
        "zero_shot", description="Whose prompt to constrain: zero_shot (instructions only) or few_shot (with demos)."
    )
    calibrate: bool = Field(
        False, description="Label tasks: subtract the label scores of content-free inputs (contextual calibration)."
    )
    choice_method: Literal["likelihood", "greedy"] = Field(
        "likelihood",
        description="Label tasks: likelihood scores every label and answers the most likely (exact; slower with many "
        "labels); greedy decodes through the labels' grammar (the cost of one answer).",
    )


class ConstrainedArtifact(PromptArtifact):
    """The prompt it constrains, the constraint, and its calibration."""

    prompt_rung: str
    constraint: dict[str, Any]
    calibration: dict[str, Any] | None = None
    overhead: str | None = Field(None, description="Throughput against the same prompt unconstrained, when measured.")

    def notes(self) -> list[str]:
        c = Constraint(**{**self.constraint, "choices": tuple(self.constraint.get("choices") or ())})
        out = [f"the {self.prompt_rung} prompt with its output constrained to a {c.describe()}"
               + (", calibrated on content-free inputs" if self.calibration else "")]
        if self.overhead:
            out.append(self.overhead)
        return out


class Constrained(Rung):
    """A zero-shot or few-shot prompt whose answers are constrained to the task's format."""

    name = "constrained"
    summary = "the zero-shot or few-shot prompt with output constrained to the format (labels, regex, JSON)"
    kind = CONSTRAINED
    Config = ConstrainedConfig
    Artifact = ConstrainedArtifact

    def prepare(self, ctx: RungContext) -> Prepared:
        cfg: ConstrainedConfig = ctx.config
        constraint = _constraint(ctx, cfg)
        base = ctx.resolve(cfg.prompt)
        calibration = None
        if cfg.calibrate and constraint.kind == "choice":
            from rungwise.backends.calibration import ChoiceCalibration, content_free_prompts

            calibration = ChoiceCalibration.measure(ctx.shared_backend(), content_free_prompts(base.template.render),
                                                    constraint).to_dict()
        art = ConstrainedArtifact(prompt=base.template.to_dict(), prompt_rung=cfg.prompt,
                                  constraint=_constraint_dict(constraint), calibration=calibration)
        return self._prepared(ctx, art, base, constraint)

    def load(self, ctx: RungContext, artifact: RungArtifact) -> Prepared:
        assert isinstance(artifact, ConstrainedArtifact)
        constraint = Constraint(**{**artifact.constraint, "choices": tuple(artifact.constraint.get("choices") or ())})
        return self._prepared(ctx, artifact, ctx.resolve(artifact.prompt_rung), constraint)

    @staticmethod
    def _prepared(ctx: RungContext, art: ConstrainedArtifact, base: Prepared, constraint: Constraint) -> Prepared:
        backend = None
        if art.calibration is not None:
            from rungwise.backends.calibration import CalibratedBackend, ChoiceCalibration

            # Not adopted: closing it would close the shared backend it wraps, which the pool closes.
            backend = CalibratedBackend(ctx.shared_backend(), ChoiceCalibration.from_dict(art.calibration))
        return Prepared(art, base.template, backend=backend, per_example=base.per_example, constraint=constraint)

    def estimate(self, ctx: RungContext, sample: Sequence[Example]) -> TokenEstimate | None:
        cfg: ConstrainedConfig = ctx.config
        try:
            constraint = _constraint(ctx, cfg)
        except RungSkipped:
            return None
        est = estimate_prompts(ctx.resolve(cfg.prompt), sample)
        if constraint.kind == "choice":  # the answer is one label (+ the end-of-turn token)
            est.completion_tokens = sum(count_tokens_estimate(c) for c in constraint.choices) / len(constraint.choices) + 1
        return est

    def finalize(self, ctx: RungContext, prepared: Prepared, result: RungResult, previous: Sequence[RungResult],
                 scored: Scored) -> None:
        art = prepared.artifact
        assert isinstance(art, ConstrainedArtifact)
        free = next((r for r in previous if r.rung == art.prompt_rung), None)
        if free is not None and free.examples_per_s > 0 and result.examples_per_s > 0:
            ratio = result.examples_per_s / free.examples_per_s
            art.overhead = (f"{result.examples_per_s:.2f} examples/s constrained vs {free.examples_per_s:.2f} for "
                            f"{free.rung} on the same prompt unconstrained ({ratio:.2f}x); format-valid "
                            f"{result.format_valid_rate:.0%} vs {free.format_valid_rate:.0%}")


def _constraint(ctx: RungContext, cfg: ConstrainedConfig) -> Constraint:
    task = ctx.task
    constraint = get_metric(task.metric, task.labels, task.base_dir).constraint()
    if constraint is None:
        raise RungSkipped(
            f"the metric {task.metric.name} reads free text, so there is no output format to constrain",
            hint="constrained applies to label (accuracy, macro_f1), regex (with metric.options.pattern) and JSON metrics",
        )
    return replace(constraint, choice_method=cfg.choice_method) if constraint.kind == "choice" else constraint


def _constraint_dict(c: Constraint) -> dict[str, Any]:
    return {"kind": c.kind, "choices": list(c.choices), "pattern": c.pattern, "ignore_case": c.ignore_case,
            "json_schema": c.json_schema, "choice_method": c.choice_method}
