"""The stable data model: examples, completions, rung and climb results.

Standard library only (dataclasses), so every layer can import it cheaply.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict


class Message(TypedDict):
    """One chat message, OpenAI-style: ``{"role": "user", "content": "hi"}``."""

    role: str
    content: str


Chat = list[Message]


@dataclass(frozen=True)
class Example:
    """One input and its expected output.

    ``input`` is the user's text; ``messages`` holds the prior chat turns when the data was
    in chat format (the last assistant turn, the expected output, is not in it).

    Example:
        >>> ex = Example(input="I was charged twice", output="billing", source="data.jsonl:1")
        >>> ex.label is None
        True
    """

    input: str
    output: str
    messages: tuple[Message, ...] = ()
    label: str | None = None
    gold_doc_ids: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str = ""  # "file:line" for error messages and reports

    def chat(self) -> Chat:
        """The user-side conversation to send to a model (without the system prompt)."""
        if self.messages:
            return [dict(m) for m in self.messages]  # type: ignore[misc]
        return [{"role": "user", "content": self.input}]

    @property
    def id(self) -> str:
        """A stable content hash: same input and output give the same id on any machine."""
        payload = json.dumps([self.input, [dict(m) for m in self.messages], self.output], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Constraint:
    """What an answer must match, for constrained decoding.

    ``choice``: exactly one of ``choices``; ``regex``: the whole answer matches ``pattern``;
    ``json``: a JSON value conforming to ``json_schema`` (JSON text), or any JSON object when
    ``json_schema`` is None. Frozen and hashable, so requests with equal constraints batch together.

    ``choice_method``: ``likelihood`` scores every choice and answers the most likely one (exact;
    per-choice scores in the trace, which calibration needs); ``greedy`` decodes through the
    choices token by token, the way servers do (cost of generating one answer: for a large label
    set, scoring every label costs far more, 6x generation on BANKING77's 77 labels).

    Example:
        >>> Constraint("choice", choices=("billing", "bug")).kind
        'choice'
    """

    kind: Literal["choice", "regex", "json"]
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    ignore_case: bool = False
    json_schema: str | None = None
    choice_method: Literal["likelihood", "greedy"] = "likelihood"

    def describe(self) -> str:
        """One line for traces and reports."""
        if self.kind == "choice":
            return f"choice of {len(self.choices)}" + (" (greedy)" if self.choice_method == "greedy" else "")
        if self.kind == "regex":
            return f"regex {self.pattern}"
        return "json schema" if self.json_schema else "json object"


@dataclass(frozen=True)
class GenParams:
    """Generation parameters shared by every backend.

    ``constraint``: decode only answers that match it; a backend that cannot enforce it raises
    :class:`rungwise.errors.Unsupported` rather than answer unconstrained.
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = 0
    constraint: Constraint | None = None


@dataclass
class Completion:
    """One model answer with what it cost.

    ``cached_tokens`` is the number of prompt tokens served from a reused prefix cache
    (local KV-cache reuse or a provider's prompt caching). ``trace`` records how the answer
    came about, per example (retrieved chunk ids and scores, the constraint used); it is stored
    with the prediction and shown in the report's per-example view.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached_tokens: int = 0
    finish_reason: str = "stop"
    trace: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RungKind:
    """What a rung is, declared by the rung class: economics and the verdict read these flags and
    never a rung's name.

    ``name`` is a label for tables and reports (prompt, retrieval, finetune, hybrid, constrained,
    baseline, or a plugin's own). ``trains_weights``: serves a model trained on the train split
    (priced with fine-tuned-model rates, a one-off training cost and retraining; passed over when
    the factors rule training out). ``uses_llm``: False for a rung that answers without a language
    model (a classical classifier: no tokens, priced from throughput alone). ``retrieves``: reads
    the knowledge source for each request. ``constrains_output``: decodes only answers in the
    task's format.

    Example:
        >>> FINETUNE.trains_weights, BASELINE.uses_llm
        (True, False)
    """

    name: str
    trains_weights: bool = False
    uses_llm: bool = True
    retrieves: bool = False
    constrains_output: bool = False


PROMPT = RungKind("prompt")
RETRIEVAL = RungKind("retrieval", retrieves=True)
FINETUNE = RungKind("finetune", trains_weights=True)
HYBRID = RungKind("hybrid", trains_weights=True, retrieves=True)
CONSTRAINED = RungKind("constrained", constrains_output=True)
BASELINE = RungKind("baseline", uses_llm=False)


@dataclass
class TrainingRecord:
    """What training a rung's model took: the basis of its one-off and retraining costs.

    ``tokens`` are the training tokens of one epoch; ``seconds`` the measured wall time (None when
    unknown, e.g. an estimate before a climb or an adapter trained elsewhere); ``usd`` a cost the
    user entered (an adapter trained elsewhere), which wins over any computed one.
    """

    examples: int
    tokens: int
    epochs: float
    seconds: float | None = None
    devices: int = 1
    device: str = ""
    method: str = ""
    usd: float | None = None


@dataclass
class TokenEstimate:
    """A rung's tokens per call before any climb (for `rungwise cost`), from its real prompts
    counted at about 4 characters per token; ``training`` for rungs that train."""

    prompt_tokens: float
    cached_tokens: float
    completion_tokens: float
    training: TrainingRecord | None = None


@dataclass
class MetricValue:
    """A metric's point estimate with a bootstrap 95% confidence interval."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    n: int


@dataclass
class Comparison:
    """A paired significance test of one rung against the rung below it."""

    against: str
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    significant: bool


@dataclass
class RungResult:
    """Everything measured for one rung on the held-out split."""

    rung: str
    metric: MetricValue
    format_valid_rate: float
    mean_prompt_tokens: float
    mean_completion_tokens: float
    mean_cached_tokens: float
    latency_p50_s: float
    latency_p95_s: float
    examples_per_s: float
    meets_target: bool
    scores: list[float] = field(default_factory=list)
    valid: list[bool] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    #: the rung's stored artifact, as JSON (its typed model is the rung class's ``Artifact``)
    artifact: dict[str, Any] = field(default_factory=dict)
    kind: RungKind = PROMPT
    training: TrainingRecord | None = None
    #: lines the ladder prints under its table (the audit before training, the forgetting check, ...)
    notes: list[str] = field(default_factory=list)
    #: failed examples by kind (rungwise.evaluate.diagnosis): behaviour (format) or knowledge (content)
    failures: dict[str, int] = field(default_factory=dict)
    id: int | None = None


@dataclass
class Ladder:
    """The measured ladder: rung results in order, and where it stopped.

    :class:`rungwise.climb.ClimbResult` adds its prices and the verdict.
    """

    task: str
    run_id: int
    rungs: list[RungResult]
    target: str | None
    stopped_at: str | None
    n_test: int
    leakage_dropped: int = 0
    notes: list[str] = field(default_factory=list)
