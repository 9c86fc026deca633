"""Contextual calibration of choice constraints (Zhao et al., 2021, "Calibrate before use").

A small model scoring labels by likelihood tends to prefer one label whatever the input (the
embedded model answers ``billing`` to 39 of 40 sample tickets). Contextual calibration asks the
same prompt with content-free inputs (``N/A``, an empty string, ``[MASK]``), takes the mean
probability the model then gives each label as its bias, and divides it out:
``calibrated(c) = log p(c | input) - log mean_cf p(c | content-free)``, probabilities
normalized over the choices. It needs no training data and costs one scoring call of a
handful of prompts per prompt template.

It works with any backend whose choice-constrained completions carry per-choice scores in
``trace["choice_logprobs"]`` (the local and scripted backends).

Example (a model that leans to ``billing``, less so for a crash report):
    >>> from rungwise.backends.scripted import ScriptedBackend
    >>> from rungwise.prompting import PromptTemplate
    >>> lean = lambda chat, c: -1.0 if c == "billing" else (-1.5 if "crash" in chat[-1]["content"] else -2.0)
    >>> backend, tpl = ScriptedBackend(choice_scores=lean), PromptTemplate("Route the ticket.")
    >>> labels = Constraint("choice", choices=("billing", "bug"))
    >>> cal = ChoiceCalibration.measure(backend, content_free_prompts(tpl.render), labels)
    >>> answers = backend.generate([tpl.render([{"role": "user", "content": "app crash"}])], GenParams(constraint=labels))
    >>> answers[0].text, cal.apply(answers)[0].text
    ('billing', 'bug')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rungwise.backends.base import Backend, ProgressFn
from rungwise.errors import BackendError, Unsupported
from rungwise.types import Chat, Completion, Constraint, GenParams, Message

#: The content-free inputs of the paper; their mean is the bias estimate.
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def content_free_prompts(render: Callable[[list[Message]], Chat], inputs: Sequence[str] = CONTENT_FREE_INPUTS) -> list[Chat]:
    """The rung's prompt around each content-free input (``render`` is e.g. ``PromptTemplate.render``).

    >>> from rungwise.prompting import PromptTemplate
    >>> content_free_prompts(PromptTemplate("Sort it.").render)[0][-1]
    {'role': 'user', 'content': 'N/A'}
    """
    return [render([{"role": "user", "content": text}]) for text in inputs]


def choice_logprobs(completion: Completion, choices: Sequence[str]) -> list[float]:
    """The per-choice scores a choice-constrained completion carries, in ``choices`` order."""
    got = completion.trace.get("choice_logprobs")
    if not isinstance(got, dict) or any(c not in got for c in choices):
        raise Unsupported(
            "contextual calibration needs each choice's score, and this backend's answers do not carry them",
            hint="use the local backend (choice by log-likelihood) or turn calibration off",
        )
    return [float(got[c]) for c in choices]


def _log_normalize(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    lse = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - lse for s in scores]


@dataclass(frozen=True)
class ChoiceCalibration:
    """Per-choice offsets to subtract from log-likelihood scores: the log of the mean
    probability of each choice over content-free inputs. Store it with :meth:`to_dict`."""

    choices: tuple[str, ...]
    offsets: tuple[float, ...]

    @classmethod
    def measure(cls, backend: Backend, prompts: Sequence[Chat], constraint: Constraint,
                params: GenParams | None = None) -> ChoiceCalibration:
        """Score the content-free ``prompts`` (see :func:`content_free_prompts`) under ``constraint``."""
        if constraint.kind != "choice":
            raise BackendError(f"calibration applies to choice constraints, not {constraint.describe()}")
        if not prompts:
            raise BackendError("calibration needs at least one content-free prompt")
        params = replace(params or GenParams(), constraint=constraint)
        rows = [_log_normalize(choice_logprobs(c, constraint.choices)) for c in backend.generate(prompts, params)]
        mean = [sum(math.exp(r[i]) for r in rows) / len(rows) for i in range(len(constraint.choices))]
        return cls(constraint.choices, tuple(math.log(max(m, 1e-300)) for m in mean))

    def calibrate(self, scores: Sequence[float]) -> list[float]:
        """Calibrated log-probabilities of one answer's choice scores."""
        return [s - o for s, o in zip(_log_normalize(scores), self.offsets, strict=True)]

    def apply(self, completions: Sequence[Completion]) -> list[Completion]:
        """New completions answering the best calibrated choice, with ``trace["calibrated_logprobs"]``
        added; token counts and latency are kept (calibration is free per call)."""
        out = []
        for c in completions:
            cal = self.calibrate(choice_logprobs(c, self.choices))
            best = max(range(len(cal)), key=cal.__getitem__)
            trace = {**c.trace, "calibrated_logprobs": dict(zip(self.choices, cal, strict=True))}
            out.append(replace(c, text=self.choices[best], trace=trace))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"choices": list(self.choices), "offsets": list(self.offsets)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChoiceCalibration:
        return cls(tuple(str(c) for c in d["choices"]), tuple(float(o) for o in d["offsets"]))


class CalibratedBackend(Backend):
    """A backend whose answers under the calibrated choice constraint are recalibrated: what a
    calibrated rung serves (``rungwise serve`` over it), other calls pass through unchanged.

    Example:
        >>> served = CalibratedBackend(backend, cal)  # doctest: +SKIP
        >>> create_app(served, template, "tickets", default_params=GenParams(constraint=labels))  # doctest: +SKIP
    """

    def __init__(self, inner: Backend, calibration: ChoiceCalibration) -> None:
        self.inner = inner
        self.calibration = calibration
        self.model_id = inner.model_id

    def generate(self, prompts: Sequence[Chat], params: GenParams, progress: ProgressFn | None = None) -> list[Completion]:
        out = self.inner.generate(prompts, params, progress)
        c = params.constraint
        if c is not None and c.kind == "choice" and c.choices == self.calibration.choices:
            return self.calibration.apply(out)
        return out

    def loglikelihood(self, prompts: Sequence[Chat], choices: Sequence[Sequence[str]]) -> list[list[float]]:
        return self.inner.loglikelihood(prompts, choices)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def close(self) -> None:
        self.inner.close()
