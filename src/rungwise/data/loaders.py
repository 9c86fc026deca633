"""Loaders for JSONL ``{input, output}``, JSONL chat ``{messages}``, alpaca and CSV.

Every error names ``file:line`` and the field, and says what to do.

Example:
    >>> examples = load_examples("data.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rungwise.config.task import DATA_FORMATS
from rungwise.errors import DataError, RungwiseError
from rungwise.types import Example, Message
from rungwise.usercode import is_user_code, load_function

FORMATS = DATA_FORMATS
_ROLES = {"system", "user", "assistant"}


def read_text(path: Path) -> str:
    """Read a UTF-8 file (a BOM is accepted) or raise a DataError naming the line of the bad byte."""
    if not path.exists():
        raise DataError(f"{path}: no such data file", hint="check the path in task.yaml (relative to task.yaml)")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file", hint="point at a .jsonl or .csv file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            hint=f"convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}",
        ) from None


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a JSONL text with their 1-based line numbers.

    Lines end at ``\\n`` only (a ``\\r`` before it is JSON whitespace): ``str.splitlines`` would also
    split at U+2028, U+2029, U+0085 and other separators that JSON allows raw inside strings,
    and ``json.dumps(..., ensure_ascii=False)`` writes them so.

    >>> list(jsonl_lines('{"a": "x\\u2028y"}\\n\\n{"b": 1}\\r\\n'))
    [(1, '{"a": "x\\u2028y"}'), (3, '{"b": 1}\\r')]
    """
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield n, line


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in jsonl_lines(text):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{n}: malformed JSON ({exc.msg} at column {exc.colno})",
                hint="each line must be one JSON object; fix or delete that line",
            ) from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}", hint="write one {...} object per line")
        yield n, rec


def _detect(path: Path, first: dict[str, Any] | None) -> str:
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    if first is None:
        return "jsonl"
    if "messages" in first:
        return "chat"
    if "instruction" in first:
        return "alpaca"
    return "jsonl"


def _text(value: Any, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (dict, list)):
        # Structured outputs (JSON extraction) are kept as canonical JSON text.
        return json.dumps(value, ensure_ascii=False)
    raise DataError(f"{where}: field '{field}' must be text, got {type(value).__name__}", hint=f"give '{field}' a string value")


def _require(rec: dict[str, Any], field: str, where: str, fmt: str) -> Any:
    if field not in rec:
        keys = ", ".join(sorted(rec)) or "none"
        raise DataError(
            f"{where}: missing field '{field}' (this line has: {keys})",
            hint=f"add '{field}' to every record, or map your field names with data.columns in task.yaml ({fmt} format)",
        )
    return rec[field]


def _meta(rec: dict[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in used}


def _from_chat(rec: dict[str, Any], where: str) -> Example:
    msgs = _require(rec, "messages", where, "chat")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field 'messages' must be a non-empty list", hint='write {"messages": [{"role": "user", ...}, ...]}')
    clean: list[Message] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: messages[{i}] needs 'role' and 'content'", hint="each message is {\"role\": ..., \"content\": ...}")
        if m["role"] not in _ROLES:
            raise DataError(f"{where}: messages[{i}].role is {m['role']!r}", hint="use one of: system, user, assistant")
        clean.append({"role": m["role"], "content": _text(m["content"], where, f"messages[{i}].content")})
    if clean[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last message must be the assistant's (the expected output), got {clean[-1]['role']!r}",
            hint="end each conversation with the assistant reply to learn or score",
        )
    if not clean[-1]["content"].strip():
        raise DataError(f"{where}: the last assistant message is empty", hint="give the expected output, or drop the line")
    history = clean[:-1]
    # The task's instructions are the system prompt; a system turn in the data stays in the history.
    users = [m["content"] for m in history if m["role"] == "user"]
    if not users:
        raise DataError(f"{where}: no user message before the assistant reply", hint="add the user's turn")
    return Example(
        input=users[-1],
        output=clean[-1]["content"],
        messages=tuple(history),
        label=rec.get("label"),
        source=where,
        metadata=_meta(rec, {"messages", "label"}),
    )


def _from_alpaca(rec: dict[str, Any], where: str) -> Example:
    instr = _text(_require(rec, "instruction", where, "alpaca"), where, "instruction")
    inp = _text(rec.get("input", ""), where, "input")
    out = _text(_require(rec, "output", where, "alpaca"), where, "output")
    text = f"{instr}\n\n{inp}" if inp.strip() else instr
    return Example(input=text, output=out, source=where, metadata=_meta(rec, {"instruction", "input", "output"}))


def _from_plain(rec: dict[str, Any], where: str, cin: str, cout: str) -> Example:
    inp = _text(_require(rec, cin, where, "jsonl"), where, cin)
    out = _text(_require(rec, cout, where, "jsonl"), where, cout)
    docs = rec.get("gold_doc_ids") or ()
    return Example(
        input=inp,
        output=out,
        source=where,
        gold_doc_ids=tuple(str(d) for d in docs) if isinstance(docs, list) else (),
        metadata=_meta(rec, {cin, cout, "gold_doc_ids"}),
    )


@dataclass
class CsvRecord:
    """One CSV record: the physical line it starts on (1-based), its fields by column name, and
    what is wrong with its shape (a column count that differs from the header's, a quote that
    never closes), or None."""

    line: int
    values: dict[str, str]
    problem: str | None = None


def csv_delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def read_csv_records(path: Path, text: str, columns: Sequence[str], name_hint: str) -> tuple[list[str], list[CsvRecord]]:
    """The header and every record of a CSV/TSV text, each record at the line where it starts.

    Raises :class:`DataError` when one of ``columns`` is not in the header; ``name_hint`` says how
    to name the columns (data.columns in task.yaml, or --columns). A file without a header row is
    told to add one, since its first row of data was read as the column names.
    """
    delim = csv_delimiter(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
    header = list(reader.fieldnames or [])
    missing = [c for c in columns if c not in header]
    if missing:
        shown = ", ".join(repr(h) for h in header[:6]) + (", ..." if len(header) > 6 else "")
        sample = delim.join(columns)
        raise DataError(
            f"{path}:1: no column {', '.join(repr(c) for c in missing)} in the header row (it reads: {shown or 'nothing'})",
            hint=f"if that row is data, the file has no header: add a first line naming the columns, e.g. {sample!r}; "
            f"otherwise {name_hint}",
        )
    # csv counts physical lines the way StringIO(newline="") splits them; a record starts on the
    # first non-blank line after the previous record.
    lines = io.StringIO(text, newline="").readlines()
    records: list[CsvRecord] = []
    prev_end = reader.line_num  # the header's last line
    for row in reader:
        first, last = prev_end + 1, reader.line_num
        while first < last and not lines[first - 1].strip():
            first += 1
        prev_end = last
        rec = CsvRecord(first, {k: v for k, v in row.items() if k is not None})
        extra = row.get(None) or []  # type: ignore[call-overload]
        short = sum(1 for k, v in row.items() if k is not None and v is None)
        if last == len(lines) and last > first and _unclosed_quote("".join(lines[first - 1 :]), delim):
            rec.problem = (f"a quoted field opened on this line is never closed, so lines {first}-{last} (the rest of "
                           "the file) were read as one record; close the quote (a quote inside a quoted field is "
                           'written twice: "")')
        elif extra or short:
            got = len(header) - short + len(extra)
            rec.problem = f"expected {len(header)} columns, got {got} (quote fields that contain {delim!r})"
            if last > first:
                rec.problem += f"; this record runs on to line {last}: a quoted field may lack its closing quote"
        records.append(rec)
    return header, records


def _unclosed_quote(chunk: str, delim: str) -> bool:
    """Does this text (a record through the end of the file) end inside a quoted field?"""
    try:
        for _ in csv.reader(io.StringIO(chunk, newline=""), delimiter=delim, strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _csv_examples(path: Path, text: str, cin: str, cout: str) -> list[Example]:
    _, records = read_csv_records(path, text, (cin, cout), "name the columns with data.columns.input / "
                                  "data.columns.output in task.yaml")
    out = []
    for rec in records:
        where = f"{path}:{rec.line}"
        if rec.problem:
            raise DataError(f"{where}: {rec.problem}", hint="quote fields that contain the delimiter or a line break, and close every quote")
        row = rec.values
        if not row[cout].strip():
            raise DataError(f"{where}: column '{cout}' is empty", hint="give the expected output, or drop the row")
        out.append(Example(input=row[cin], output=row[cout], source=where, metadata=_meta(row, {cin, cout})))
    return out


def load_examples(
    path: str | Path, fmt: str = "auto", input_field: str = "input", output_field: str = "output",
    base_dir: Path | None = None,
) -> list[Example]:
    """Load examples from a data file. Raises :class:`DataError` on any malformed line.

    ``fmt`` ``python:module:function`` reads the file with the user's own function (resolved
    against ``base_dir``, the task's folder).
    """
    p = Path(path)
    if is_user_code(fmt):
        return _user_examples(p, fmt, input_field, output_field, base_dir or Path("."))
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
    text = read_text(p)
    if fmt == "auto" and p.suffix.lower() in (".csv", ".tsv"):
        fmt = "csv"
    if fmt == "csv":
        examples = _csv_examples(p, text, input_field, output_field)
    else:
        records = list(_jsonl_records(p, text))
        if fmt == "auto":
            fmt = _detect(p, records[0][1] if records else None)
        examples = []
        for n, rec in records:
            where = f"{p}:{n}"
            if fmt == "chat":
                ex = _from_chat(rec, where)
            elif fmt == "alpaca":
                ex = _from_alpaca(rec, where)
            else:
                ex = _from_plain(rec, where, input_field, output_field)
            if fmt != "chat" and not ex.output.strip():
                raise DataError(f"{where}: field '{output_field}' is empty", hint="give the expected output, or drop the line")
            examples.append(ex)
    if not examples:
        raise DataError(f"{p}: no examples in the file (it is empty)", hint="add examples, one per line (JSONL) or per row (CSV)")
    return examples


def _user_examples(path: Path, spec: str, cin: str, cout: str, base_dir: Path) -> list[Example]:
    """Examples from the user's reader: ``function(path)`` yields one mapping per example."""
    read = load_function(spec, base_dir, field="data.format", what="reader")
    if not path.exists():
        raise DataError(f"{path}: no such file or folder", hint="check data.path (relative to task.yaml)")
    examples = []
    try:
        records = list(read(path))
    except RungwiseError:
        raise
    except Exception as exc:  # the user's code: say which reader failed on which file
        raise DataError(f"{path}: the reader {spec} raised {type(exc).__name__}: {exc}",
                        hint="fix the reader function (it receives the data path)") from exc
    for i, rec in enumerate(records, 1):
        where = f"{path}#{i}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: the reader {spec} yielded {type(rec).__name__}, not a mapping",
                            hint="yield one dict per example, e.g. {'input': ..., 'output': ...}")
        ex = _from_plain(rec, str(rec.pop("source", where)), cin, cout)
        if not ex.output.strip():
            raise DataError(f"{ex.source}: field '{cout}' is empty", hint="give the expected output, or drop the example")
        examples.append(ex)
    if not examples:
        raise DataError(f"{path}: the reader {spec} yielded no examples", hint="check the reader and the data path")
    return examples
