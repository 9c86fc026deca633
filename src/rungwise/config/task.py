"""task.yaml: the schema, every field documented, and loading with clear errors.

Example:
    >>> task = load_task("examples/ticket-routing/task.yaml")  # doctest: +SKIP
    >>> task.metric.name  # doctest: +SKIP
    'accuracy'
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rungwise.config.base import Strict
from rungwise.config.economics import EconomicsSpec
from rungwise.config.factors import DecisionFactors
from rungwise.config.knowledge import KnowledgeSpec
from rungwise.config.model import ModelSpec, model_spec_from
from rungwise.errors import ConfigError
from rungwise.registry import RUNGS

#: The data formats rungwise reads itself (``python:module:function`` names your own reader).
DATA_FORMATS = ("auto", "jsonl", "chat", "alpaca", "csv")


class Columns(Strict):
    """Which fields (JSONL keys or CSV columns) hold the input and the expected output."""

    input: str = Field("input", description="Field or column with the model input.")
    output: str = Field("output", description="Field or column with the expected output.")


class DataSpec(Strict):
    """Where the examples come from and how they are split.

    Give either ``path`` (one file, split by ``test_fraction`` and ``seed``) or ``train`` and
    ``test`` (explicit files). Paths are relative to task.yaml.
    """

    path: str | None = Field(None, description="One data file, split into train/test by test_fraction.")
    train: str | None = Field(None, description="Explicit train file (use with `test`).")
    test: str | None = Field(None, description="Explicit held-out test file (use with `train`).")
    format: str = Field(
        "auto",
        description="auto: by extension and first record; jsonl {input, output}; chat {messages: [...]} "
        "(last assistant message = expected output); alpaca {instruction, input, output}; csv with named columns; "
        "or python:module:function, your own reader: function(path) yields one {input, output} mapping per example "
        "(optional gold_doc_ids, label, source; other keys become metadata). It runs that code.",
    )
    columns: Columns = Field(default_factory=Columns, description="Field names for jsonl/csv input and output.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of examples held out for testing (with `path`).")
    seed: int = Field(13, description="Seed of the deterministic split and of every sampler.")
    max_train: int | None = Field(None, gt=0, description="Cap the train split (seeded sample), for speed.")
    max_test: int | None = Field(None, gt=0, description="Cap the test split (seeded, stratified sample).")

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v not in DATA_FORMATS and not v.startswith("python:"):
            raise ValueError(f"unknown format {v!r}; use one of: {', '.join(DATA_FORMATS)}, or python:module:function")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if self.path and (self.train or self.test):
            raise ValueError("give either `path` or `train` + `test`, not both")
        if not self.path and not self.train:
            raise ValueError("give `path` (one file to split) or `train` and `test` files")
        if self.test and not self.train:
            raise ValueError("`test` needs a `train` file too")
        return self


class MetricSpec(Strict):
    """The metric. ``name`` is one of: exact_match, accuracy, macro_f1, json_valid, json_schema,
    json_fields, numeric, chrf, rouge_l, token_f1, regex, or ``python:module:function`` for your own.

    ``python:...`` imports and runs that code (a module or ``.py`` file beside task.yaml) on every
    climb, so a task file from someone else is code: read the module it names before climbing."""

    name: str = Field("exact_match", description="Metric name (see above).")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Metric options, e.g. {schema: schema.json} for json_schema, {pattern: '...'} for regex, "
        "{tolerance: 1e-6} for numeric, {case_sensitive: true} for exact_match.",
    )


_TARGET_RE = re.compile(r"^\s*([A-Za-z_][\w:.-]*)\s*(>=|>|<=|<)\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


class Target(BaseModel):
    """A parsed target such as ``accuracy >= 0.9``."""

    metric: str
    op: Literal[">=", ">", "<=", "<"]
    value: float

    def met(self, value: float) -> bool:
        return {">=": value >= self.value, ">": value > self.value, "<=": value <= self.value, "<": value < self.value}[
            self.op
        ]

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"

    def impossible(self) -> str | None:
        """Why no climb could ever meet this target (or every rung would), or None.

        Every metric scores in [0, 1] (built-ins and ``python:`` metrics alike), so ``>= 1.5``
        is never met and ``>= 0`` is met by the first rung, which then ends the climb.

        >>> print(parse_target("accuracy >= 85").impossible())
        can never be met: accuracy lies between 0 and 1; write a fraction (accuracy >= 0.9) or a percentage (accuracy >= 85%)
        """
        lo, hi = 0.0, 1.0
        never = {">=": self.value > hi, ">": self.value >= hi, "<=": self.value < lo, "<": self.value <= lo}[self.op]
        always = {">=": self.value <= lo, ">": False, "<=": self.value >= hi, "<": self.value > hi}[self.op]
        if never:
            example = f"{self.value:g}%" if 10 <= self.value <= 100 else "90%"  # 85 meant 85%
            return (f"can never be met: {self.metric} lies between 0 and 1; write a fraction ({self.metric} {self.op} 0.9) "
                    f"or a percentage ({self.metric} {self.op} {example})")
        if always:
            return (f"is met by any score ({self.metric} lies between 0 and 1), so the climb would stop after the "
                    "first rung; raise the bar, or drop `target` to measure every rung")
        return None


def parse_target(text: str) -> Target:
    """Parse ``"accuracy >= 0.9"`` or ``"accuracy >= 90%"``.

    >>> parse_target("accuracy >= 90%").value
    0.9
    """
    m = _TARGET_RE.match(text)
    if not m:
        raise ValueError(f"cannot read target {text!r}; write it like 'accuracy >= 0.9'")
    value = float(m.group(3)) / (100 if m.group(4) else 1)
    return Target(metric=m.group(1), op=m.group(2), value=value)  # type: ignore[arg-type]


def check_rung_order(order: list[str]) -> list[str]:
    """``rungs.order`` must name at least one rung, each once (a run stores one result per rung).
    For a ``field_validator("order")`` of the rungs section; raises ValueError, which the task
    loader reports with the file:line of the field.

    >>> check_rung_order(["zero_shot", "few_shot"])
    ['zero_shot', 'few_shot']
    >>> check_rung_order([])
    Traceback (most recent call last):
    ...
    ValueError: is empty, so a climb would measure nothing; list the rungs to climb, e.g. [zero_shot, few_shot]
    """
    if not order:
        raise ValueError("is empty, so a climb would measure nothing; list the rungs to climb, e.g. [zero_shot, few_shot]")
    dup = sorted({r for r in order if order.count(r) > 1})
    if dup:
        raise ValueError(f"names {', '.join(dup)} more than once; each rung is climbed once")
    return order


#: ``rungs.order`` when task.yaml gives none: a label task starts with the cheap answers.
DEFAULT_ORDER = ("zero_shot", "few_shot")
LABEL_TASK_ORDER = ("classic", "zero_shot", "constrained", "few_shot")


class RungsSpec(Strict):
    """Which rungs to climb, in order, and each rung's own settings.

    Every key besides ``order`` is a rung's section, validated by the config model that rung
    registers (``rungs.few_shot: {k: 8}``); ``rungwise rungs`` lists the rungs and their settings.
    A section with ``use: <rung>`` is a *variant*: the same rung under another name with other
    settings, so one ladder can hold both (``rag_dense: {use: rag, mode: dense}``).
    """

    model_config = ConfigDict(extra="allow")

    order: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ORDER),
        description="Rungs in climbing order (default: classic, zero_shot, constrained, few_shot for a task with "
        "labels; zero_shot, few_shot otherwise).",
    )
    _variants: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("order")
    @classmethod
    def _order(cls, v: list[str]) -> list[str]:
        return check_rung_order(v)

    @model_validator(mode="after")
    def _sections(self) -> RungsSpec:
        errors: list[Any] = []
        extra = self.__pydantic_extra__ or {}
        for name, raw in list(extra.items()):
            base = name
            if isinstance(raw, dict) and "use" in raw:
                raw = {k: v for k, v in raw.items() if k != "use"}
                base = str(extra[name]["use"])
                if name in RUNGS:
                    errors.append(_line_error((name, "use"), f"{name!r} is a rung of its own; name the variant "
                                              "differently", base))
                    continue
                if base not in RUNGS:
                    errors.append(_line_error((name, "use"), f"unknown rung {base!r}; use one of: "
                                              f"{', '.join(RUNGS.names())}", base))
                    continue
                self._variants[name] = base
            elif name not in RUNGS:
                errors.append(_line_error((name,), f"unknown rung section {name!r}; sections are named after rungs "
                                          f"({', '.join(RUNGS.names())}), or are variants with `use: <rung>`", raw))
                continue
            try:
                extra[name] = RUNGS.get(base).Config.model_validate({} if raw is None else raw)
            except ValidationError as exc:
                errors += [{**e, "loc": (name, *e["loc"])} for e in exc.errors(include_url=False)]
        for i, name in enumerate(self.order):
            if name not in RUNGS and name not in self._variants:
                errors.append(_line_error(("order", i), f"unknown rung {name!r}; use one of: {', '.join(RUNGS.names())}, "
                                          "or define it as a variant (a section with `use: <rung>`)", name))
        if errors:
            raise ValidationError.from_exception_data("RungsSpec", errors)
        return self

    @model_serializer(mode="wrap")
    def _with_use(self, handler: Any) -> Any:
        data = handler(self)
        for name, base in self._variants.items():
            if isinstance(data.get(name), dict):
                data[name] = {"use": base, **data[name]}
        return data

    def base(self, name: str) -> str:
        """The registered rung that ``name`` is (itself, or the rung a variant uses)."""
        return self._variants.get(name, name)

    def rung_class(self, name: str) -> Any:
        """The rung class that climbs ``name`` (a ConfigError names the valid rungs)."""
        return RUNGS.get(self.base(name))

    def section(self, name: str) -> Any:
        """The validated settings of rung ``name`` (its config model's defaults when the section is absent)."""
        got = (self.__pydantic_extra__ or {}).get(name)
        return got if got is not None else self.rung_class(name).Config()


def _line_error(loc: tuple[Any, ...], message: str, value: Any) -> Any:
    return {"type": PydanticCustomError("value_error", message), "loc": loc, "input": value}


class Task(Strict):
    """What the user wants measured. See ``rungwise init`` for a documented example."""

    name: str = Field(description="Short task name, shown in reports and the run store.")
    description: str = Field("", description="Free text for the report.")
    data: DataSpec
    instructions: str = Field("", description="The system prompt: what the model should do and how to answer.")
    labels: list[str] | None = Field(None, description="Closed label set for classification tasks.")
    metric: MetricSpec = Field(default_factory=MetricSpec)
    target: str | None = Field(None, description="Goal, e.g. 'accuracy >= 0.9'. The climb stops at the first rung meeting it.")
    model: SerializeAsAny[ModelSpec] = Field(
        default_factory=lambda: model_spec_from({}),
        description="Which model answers: `backend` picks the config (local, openai, scripted, or a plugin's).",
    )
    rungs: RungsSpec = Field(default_factory=RungsSpec)
    economics: EconomicsSpec = Field(
        default_factory=EconomicsSpec,
        description="How to price the rungs: daily volume, hosted price model, self-hosting GPU, labeling and "
        "retraining costs, your own prices (see `rungwise prices`).",
    )
    knowledge: KnowledgeSpec | None = Field(
        None,
        description="The documents retrieval rungs search (rag, hybrid): a folder of .md/.txt/.html/.pdf files or a "
        "JSONL of {id, title, text}, with chunking settings (see docs/retrieval.md).",
    )
    factors: DecisionFactors = Field(
        default_factory=DecisionFactors,
        description="Decision factors besides the score (volume, clean examples, update frequency, latency, audit "
        "exposure, ...); `rungwise decide` asks for the missing ones.",
    )

    # Set by load_task; not part of the YAML.
    base_dir: Path = Field(default=Path("."), exclude=True)
    source_path: Path | None = Field(default=None, exclude=True)

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> ModelSpec:
        return model_spec_from(v)

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_str(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        v = [str(x).strip() for x in v]
        empty = [i for i, x in enumerate(v) if not x]
        if empty:
            raise ValueError(f"labels[{empty[0]}] is empty; every label must be text the model can answer")
        if len(v) < 2:
            raise ValueError("a label set needs at least two labels")
        dup = {x for x in v if v.count(x) > 1}
        if dup:
            raise ValueError(f"duplicate labels: {sorted(dup)}")
        for i, x in enumerate(v):
            twin = label_lookalike(x, v[:i])
            if twin:
                raise ValueError(f"labels[{i}] {twin}; keep one of them")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        if v is not None:
            problem = parse_target(v).impossible()
            if problem:
                raise ValueError(f"{v!r} {problem}")
        return v

    @model_validator(mode="after")
    def _default_order(self) -> Task:
        # A label task climbs the cheap answers first: the classical baseline (seconds, no LLM) and
        # the constrained prompt (the format fixed without training) before the demos.
        if self.labels and "order" not in self.rungs.model_fields_set:
            self.rungs.order = list(LABEL_TASK_ORDER)
        return self

    @model_validator(mode="after")
    def _knowledge_for_retrieval(self) -> Task:
        retrieving = [n for n in self.rungs.order if self.rungs.rung_class(n).kind.retrieves]
        if retrieving and self.knowledge is None:
            raise ValueError(
                f"rungs {', '.join(retrieving)} retrieve from a knowledge source, but the task has none: add "
                "`knowledge: {path: docs/}` (a folder of documents or a JSONL of {id, title, text})"
            )
        return self

    @property
    def parsed_target(self) -> Target | None:
        return parse_target(self.target) if self.target else None

    def resolve(self, p: str | Path) -> Path:
        """A path from the YAML, relative to the task file's directory."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def config_hash(self) -> str:
        """Hash of the validated config (what would change results), for the run store."""
        # Economics and decision factors price and weigh results but never change them, so
        # changing the volume must not block `--resume`.
        blob = json.dumps(self.model_dump(mode="json", exclude={"economics", "factors"}), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _lookalike_key(text: str) -> str:
    # NFKC folds NFC/NFD, full-width letters and non-breaking spaces; format characters (zero-width
    # space, joiners) are invisible, so they are dropped too.
    return "".join(c for c in unicodedata.normalize("NFKC", text) if unicodedata.category(c) != "Cf")


def _unusual_chars(text: str) -> str:
    found = dict.fromkeys(c for c in text if ord(c) > 126 or unicodedata.category(c) in ("Cf", "Zs") and c != " ")
    return ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in found) or "plain ASCII only"


def label_lookalike(value: str, labels: Sequence[str]) -> str | None:
    """If ``value`` is not one of ``labels`` but prints like one (the same text in another Unicode
    form: NFD vs NFC, full-width letters, a non-breaking or zero-width space), say how they differ,
    code point by code point, since the two look identical on screen.

    >>> msg = label_lookalike("cafe\\u0301", ["caf\\u00e9", "tea"])
    >>> msg[msg.index("("):]
    '(U+0301 COMBINING ACUTE ACCENT vs U+00E9 LATIN SMALL LETTER E WITH ACUTE)'
    """
    if value in labels:
        return None
    key = _lookalike_key(value)
    for label in labels:
        if _lookalike_key(label) == key:
            return (f"{value!r} differs from the label {label!r} only in its Unicode characters "
                    f"({_unusual_chars(value)} vs {_unusual_chars(label)})")
    return None


def _yaml_node(text: str, loc: tuple[Any, ...]) -> tuple[int | None, yaml.Node | None]:
    """Line number (1-based) of the YAML node at ``loc``, or of its deepest existing parent, and
    the node itself when the whole path exists."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None, None
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(key):
                    line, nxt = k.start_mark.line + 1, v
                    break
            if nxt is None:
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line, None
    return line, node


def _not_text(value: Any, node: yaml.Node | None) -> str | None:
    """For a field that must be text but YAML read as something else (``no`` -> false, ``1.10`` ->
    1.1, an empty value -> null): say so, and that quoting keeps it as written."""
    written = node.value if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool):
        kind = f"a boolean ({str(value).lower()})"
    elif isinstance(value, int | float):
        kind = f"a number ({value})"
    elif value is None:
        return "YAML read an empty value (null), not text; write the text, in quotes if it starts with a special character"
    else:
        return None
    shown = written if written is not None else str(value)
    return f"YAML read {shown} as {kind}, not as text; quote it to keep it as written: \"{shown}\""


def task_from_dict(raw: Any, *, base_dir: Path = Path("."), source: str = "<task>", text: str = "") -> Task:
    """Validate a task dict; errors name ``source:line`` and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of task fields at the top level", hint="see `rungwise init`")
    try:
        task = Task.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
            field = ".".join(str(x) for x in loc) or "(top level)"
            ln, node = _yaml_node(text, loc) if text else (None, None)
            where = f"{source}:{ln}" if ln else source
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (typo?)"
            elif err["type"] == "missing":
                msg = "required field is missing"
            elif err["type"] == "string_type":
                msg = _not_text(err.get("input"), node) or msg
            lines.append(f"{where}: field '{field}': {msg}")
        raise ConfigError(
            "invalid task file:\n  " + "\n  ".join(lines),
            hint="correct the field(s) above; `rungwise init DIR` writes a documented example",
        ) from None
    task.base_dir = base_dir
    return task


def load_task(path: str | Path) -> Task:
    """Load and validate task.yaml.

    Example:
        >>> task = load_task("task.yaml")  # doctest: +SKIP
    """
    p = Path(path)
    if p.is_dir():
        p = p / "task.yaml"
    if not p.exists():
        raise ConfigError(f"{p}: no such task file", hint="pass the path to task.yaml, or create one with `rungwise init DIR`")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not valid UTF-8 (byte {exc.start})", hint="save the file as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}", hint="fix the YAML syntax at that line (indentation, quotes, colons)") from None
    task = task_from_dict(raw, base_dir=p.resolve().parent, source=str(p), text=text)
    task.source_path = p.resolve()
    return task
