"""Reading a data file line by line, collecting every format problem instead of stopping at the first.

The strict loader (:mod:`rungwise.data.loaders`) raises on the first bad line, which is right for
``climb`` and wrong for an audit: here each line gets every check, its problems are recorded with
``file:line``, and the lines without an error become :class:`~rungwise.types.Example` objects built
by the loader's own constructors (so the audit and the loader can never disagree on a valid line).

The chat checks follow what hosted fine-tuning services validate before they accept a file
(OpenAI's checks, as published in the OpenAI Cookbook notebook "Data preparation and analysis for
chat model fine-tuning": data_type, missing_messages_list, message_missing_key,
message_unrecognized_key, unrecognized_role, missing_content, example_missing_assistant_message).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rungwise.data import loaders
from rungwise.errors import DataError
from rungwise.types import Example

ERROR, WARNING, INFO = "error", "warning", "info"

# Message keys OpenAI accepts in fine-tuning files; anything else is rejected there.
_MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id"}
# Top-level keys with a meaning in a chat line (OpenAI's, plus rungwise's optional label).
_CHAT_KEYS = {"messages", "tools", "functions", "parallel_tool_calls", "label", "id", "metadata"}
_ALPACA_KEYS = {"instruction", "input", "output", "id", "metadata"}
_PLAIN_EXTRA = {"gold_doc_ids", "label", "id", "metadata"}
_ROLES = {"system", "user", "assistant"}


@dataclass
class Problem:
    """One problem on one line."""

    kind: str
    severity: str
    message: str


@dataclass
class Row:
    """One record of the data file (a JSONL line or a CSV row), valid or not."""

    index: int  # position among the records, 0-based
    line: int  # physical line in the file, 1-based (0 when the data came as Examples)
    where: str  # "file:line"
    example: Example | None = None
    record: Any = None  # the parsed JSON value or CSV row dict, for --fix
    problems: list[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.example is not None


@dataclass
class ReadResult:
    rows: list[Row]
    fmt: str  # the detected or given format
    header: list[str] | None = None  # CSV header, for --fix
    input_field: str = "input"
    output_field: str = "output"


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(v), type(v).__name__)


def _check_text(row: Row, value: Any, field_name: str, *, structured_ok: bool) -> None:
    """A field that must hold text: strings always pass; numbers (and JSON for outputs) are converted."""
    if isinstance(value, str):
        return
    if isinstance(value, bool) or value is None:
        row.problems.append(
            Problem("wrong_type", ERROR, f"field '{field_name}' must be text, got {_type_name(value)}")
        )
    elif isinstance(value, (dict, list)) and not structured_ok:
        row.problems.append(
            Problem("wrong_type", WARNING, f"field '{field_name}' is a JSON {_type_name(value)}, not text; it is used as JSON text")
        )
    elif not isinstance(value, (int, float, dict, list)):
        row.problems.append(Problem("wrong_type", ERROR, f"field '{field_name}' has an unsupported type {_type_name(value)}"))


def _blank(v: Any) -> bool:
    return isinstance(v, str) and not v.strip()


def _check_plain(row: Row, rec: dict[str, Any], cin: str, cout: str) -> None:
    for f in (cin, cout):
        if f not in rec:
            looks = " (this line looks like chat format)" if "messages" in rec else ""
            keys = ", ".join(sorted(rec)) or "none"
            row.problems.append(Problem("missing_field", ERROR, f"missing field '{f}' (this line has: {keys}){looks}"))
    if cin in rec:
        _check_text(row, rec[cin], cin, structured_ok=False)
        if _blank(rec[cin]):
            row.problems.append(Problem("empty_input", WARNING, f"field '{cin}' is empty"))
    if cout in rec:
        _check_text(row, rec[cout], cout, structured_ok=True)
        if _blank(rec[cout]) or rec[cout] in ({}, []):
            row.problems.append(Problem("empty_output", ERROR, f"field '{cout}' (the expected output) is empty"))
    extra = sorted(set(rec) - {cin, cout} - _PLAIN_EXTRA)
    if extra:
        row.problems.append(Problem("unknown_key", INFO, f"unknown key(s) {', '.join(extra)}: kept as metadata, not trained on"))


def _check_alpaca(row: Row, rec: dict[str, Any]) -> None:
    for f in ("instruction", "output"):
        if f not in rec:
            row.problems.append(Problem("missing_field", ERROR, f"missing field '{f}' (alpaca format)"))
    for f in ("instruction", "input", "output"):
        if f in rec:
            _check_text(row, rec[f], f, structured_ok=f == "output")
    if "instruction" in rec and _blank(rec["instruction"]):
        row.problems.append(Problem("empty_input", WARNING, "field 'instruction' is empty"))
    if "output" in rec and _blank(rec["output"]):
        row.problems.append(Problem("empty_output", ERROR, "field 'output' (the expected output) is empty"))
    extra = sorted(set(rec) - _ALPACA_KEYS)
    if extra:
        row.problems.append(Problem("unknown_key", INFO, f"unknown key(s) {', '.join(extra)}: kept as metadata, not trained on"))


def _check_chat(row: Row, rec: dict[str, Any]) -> None:
    msgs = rec.get("messages")
    if "messages" not in rec or not isinstance(msgs, list) or not msgs:
        got = "missing" if "messages" not in rec else f"a {_type_name(msgs)}" if not isinstance(msgs, list) else "empty"
        row.problems.append(Problem("missing_messages", ERROR, f"'messages' must be a non-empty list (it is {got})"))
        return
    roles: list[str | None] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            row.problems.append(Problem("message_format", ERROR, f"messages[{i}] must be an object, got {_type_name(m)}"))
            roles.append(None)
            continue
        missing = [k for k in ("role", "content") if k not in m]
        if missing:
            row.problems.append(Problem("message_missing_key", ERROR, f"messages[{i}] has no {' or '.join(repr(k) for k in missing)}"))
        unknown = sorted(set(m) - _MESSAGE_KEYS)
        if unknown:
            row.problems.append(
                Problem(
                    "message_unknown_key",
                    WARNING,
                    f"messages[{i}] has unknown key(s) {', '.join(unknown)} (hosted fine-tuning rejects the file)",
                )
            )
        role = m.get("role")
        roles.append(role if isinstance(role, str) else None)
        if "role" in m and role not in _ROLES:
            row.problems.append(
                Problem("bad_role", ERROR, f"messages[{i}].role is {role!r}; use system, user or assistant")
            )
        if "content" in m:
            c = m["content"]
            if isinstance(c, str):
                if not c.strip() and i != len(msgs) - 1:
                    row.problems.append(Problem("empty_message", WARNING, f"messages[{i}] ({role}) has empty content"))
            elif isinstance(c, bool) or c is None or not isinstance(c, (int, float, dict, list)):
                row.problems.append(Problem("wrong_type", ERROR, f"messages[{i}].content must be text, got {_type_name(c)}"))
            else:
                row.problems.append(
                    Problem("wrong_type", WARNING, f"messages[{i}].content is a {_type_name(c)}, not a string (hosted fine-tuning needs text)")
                )
        if role == "system" and i > 0:
            row.problems.append(Problem("system_position", WARNING, f"messages[{i}] is a system message after the first turn"))
    last = msgs[-1] if isinstance(msgs[-1], dict) else {}
    if roles[-1] != "assistant" and (roles[-1] in _ROLES or roles[-1] is None and isinstance(msgs[-1], dict) and "role" not in msgs[-1]):
        # (A last turn with an unknown role, e.g. "bot", is already reported as bad_role.)
        has = "assistant" in roles
        msg = "the last message must be the assistant's reply (the expected output)"
        row.problems.append(Problem("missing_assistant", ERROR, msg + ("" if has else "; there is no assistant message")))
    elif _blank(last.get("content")) or last.get("content") in ({}, []):
        row.problems.append(Problem("empty_output", ERROR, "the last assistant message (the expected output) is empty"))
    if roles[-1] == "assistant" and "user" not in roles[:-1]:
        row.problems.append(Problem("no_user_message", ERROR, "no user message before the assistant reply"))
    extra = sorted(set(rec) - _CHAT_KEYS)
    if extra:
        row.problems.append(Problem("unknown_key", INFO, f"unknown top-level key(s) {', '.join(extra)}: kept as metadata"))


def _build(row: Row, rec: dict[str, Any], fmt: str, cin: str, cout: str) -> None:
    """Build the Example with the loader's own constructor, once no error was found."""
    if any(p.severity == ERROR for p in row.problems):
        return
    try:
        if fmt == "chat":
            row.example = loaders._from_chat(rec, row.where)
        elif fmt == "alpaca":
            row.example = loaders._from_alpaca(rec, row.where)
        else:
            row.example = loaders._from_plain(rec, row.where, cin, cout)
    except DataError as exc:  # a case the checks above did not name: still a finding, never a crash
        msg = exc.message.split(": ", 1)[-1]
        row.problems.append(Problem("invalid_record", ERROR, msg))


def _detect(path: Path, records: list[Any]) -> str:
    """The format most lines are in (the loader looks only at the first line; one broken first
    line should not make every other line look wrong)."""
    votes: Counter[str] = Counter()
    for rec in records[:200]:
        if isinstance(rec, dict):
            votes["chat" if "messages" in rec else "alpaca" if "instruction" in rec else "jsonl"] += 1
    return votes.most_common(1)[0][0] if votes else "jsonl"


def read_jsonl(path: Path, text: str, fmt: str, cin: str, cout: str) -> ReadResult:
    rows: list[Row] = []
    parsed: list[Any] = []
    decoder = json.JSONDecoder()
    for n, line in loaders.jsonl_lines(text):
        row = Row(len(rows), n, f"{path}:{n}")
        try:
            rec = decoder.decode(line)
        except json.JSONDecodeError as exc:
            row.problems.append(Problem("malformed_json", ERROR, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            rec = None
        else:
            if not isinstance(rec, dict):
                row.problems.append(Problem("not_object", ERROR, f"expected a JSON object, got {_type_name(rec)}"))
        row.record = rec
        rows.append(row)
        parsed.append(rec)
    if not rows:
        raise DataError(f"{path}: no examples in the file (it is empty)", hint="add examples, one JSON object per line")
    if not any(isinstance(r, dict) for r in parsed):
        raise DataError(
            f"{path}: not a JSONL file (no line is a JSON object; line 1: {rows[0].problems[0].message})",
            hint="write one JSON object per line, or audit a .csv file with --format csv",
        )
    if fmt == "auto":
        fmt = _detect(path, parsed)
    for row in rows:
        rec = row.record
        if not isinstance(rec, dict):
            continue
        if fmt == "chat":
            _check_chat(row, rec)
        elif fmt == "alpaca":
            _check_alpaca(row, rec)
        else:
            _check_plain(row, rec, cin, cout)
        _build(row, rec, fmt, cin, cout)
    return ReadResult(rows, fmt, None, cin, cout)


def read_csv(path: Path, text: str, cin: str, cout: str) -> ReadResult:
    header, records = loaders.read_csv_records(path, text, (cin, cout), "name the columns with --columns INPUT,OUTPUT, "
                                               "or data.columns in task.yaml")
    rows: list[Row] = []
    for csv_rec in records:
        rec = csv_rec.values
        row = Row(len(rows), csv_rec.line, f"{path}:{csv_rec.line}", record=rec)
        if csv_rec.problem:
            row.problems.append(Problem("csv_columns", ERROR, csv_rec.problem))
        else:
            if not rec[cout].strip():
                row.problems.append(Problem("empty_output", ERROR, f"column '{cout}' (the expected output) is empty"))
            if not rec[cin].strip():
                row.problems.append(Problem("empty_input", WARNING, f"column '{cin}' is empty"))
            if not any(p.severity == ERROR for p in row.problems):
                meta = {k: v for k, v in rec.items() if k not in (cin, cout)}
                row.example = Example(input=rec[cin], output=rec[cout], source=row.where, metadata=meta)
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no examples in the file (only a header, or empty)", hint="add rows below the header")
    return ReadResult(rows, "csv", header, cin, cout)


def read_file(path: str | Path, fmt: str = "auto", input_field: str = "input", output_field: str = "output") -> ReadResult:
    """Read a data file leniently: file-level problems raise :class:`DataError` (exit 2), line-level
    problems are recorded on each :class:`Row`."""
    p = Path(path)
    if fmt not in loaders.FORMATS:
        raise DataError(f"unknown data format {fmt!r}", hint=f"use one of: {', '.join(loaders.FORMATS)}")
    if not p.exists():
        raise DataError(f"{p}: no such data file", hint="check the path (a task's data paths are relative to task.yaml)")
    text = loaders.read_text(p)
    if fmt == "csv" or (fmt == "auto" and p.suffix.lower() in (".csv", ".tsv")):
        return read_csv(p, text, input_field, output_field)
    return read_jsonl(p, text, fmt, input_field, output_field)


def rows_from_examples(examples: list[Example]) -> ReadResult:
    """Rows for examples already loaded (the climb's train split): no format checks to do."""
    rows = []
    for i, ex in enumerate(examples):
        where = ex.source or f"example {i + 1}"
        tail = where.rsplit(":", 1)[-1]
        rows.append(Row(i, int(tail) if tail.isdigit() else 0, where, example=ex))
    return ReadResult(rows, "examples")
