"""``--fix OUT``: a cleaned copy of the audited file. The original is never opened for writing."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rungwise.data.audit import _pii
from rungwise.data.audit._core import drop_rows
from rungwise.data.audit._records import _MESSAGE_KEYS, Row
from rungwise.data.audit._report import AuditReport
from rungwise.errors import DataError


@dataclass
class FixResult:
    """What ``write_fixed`` wrote: where, how many rows, and why the others were dropped."""

    path: Path
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    masked_values: int = 0

    def summary(self) -> str:
        why = ", ".join(f"{v:,} {k}" for k, v in sorted(self.dropped.items(), key=lambda kv: -kv[1]))
        masked = f"; {self.masked_values:,} personal-data values masked" if self.masked_values else ""
        return f"wrote {self.path}: {self.kept:,} examples kept, {sum(self.dropped.values()):,} dropped" + (
            f" ({why})" if why else ""
        ) + masked


def _mask_deep(value: Any) -> tuple[Any, int]:
    """Mask personal data in every string inside a JSON value; returns (value, values masked)."""
    if isinstance(value, str):
        hits = _pii.scan([value])
        return (_pii.mask_text(value, hits), len(hits)) if hits else (value, 0)
    if isinstance(value, list):
        out, n = [], 0
        for v in value:
            v2, k = _mask_deep(v)
            out.append(v2)
            n += k
        return out, n
    if isinstance(value, dict):
        res, n = {}, 0
        for k, v in value.items():
            v2, c = _mask_deep(v)
            res[k] = v2
            n += c
        return res, n
    return value, 0


def _record_of(row: Row) -> Any:
    """The record to write for a row: the original JSON/CSV record, or one rebuilt from its Example."""
    if row.record is not None:
        rec = copy.deepcopy(row.record)
        if isinstance(rec, dict) and isinstance(rec.get("messages"), list):
            # Hosted services reject unknown message keys: strip them.
            rec["messages"] = [
                {k: v for k, v in m.items() if k in _MESSAGE_KEYS} if isinstance(m, dict) else m for m in rec["messages"]
            ]
        return rec
    ex = row.example
    assert ex is not None
    if ex.messages:
        rec = {"messages": [dict(m) for m in ex.messages] + [{"role": "assistant", "content": ex.output}]}
    else:
        rec = {"input": ex.input, "output": ex.output}
    if ex.label is not None:
        rec["label"] = ex.label
    return rec


def write_fixed(report: AuditReport, out: str | Path, *, mask_pii: bool = False, force: bool = False) -> FixResult:
    """Write a cleaned copy of the audited data to ``out``.

    Dropped: invalid lines, exact and near duplicates (the first copy stays), every line of a
    conflict (same input, different outputs), training lines that leak into the test set, and,
    where their finding is a warning or error, near-conflicts, trigger-like and outlier lines,
    over-long lines, minority output shapes and unknown or typo'd labels. With ``mask_pii``,
    personal data is replaced by placeholders (``[EMAIL]``, ``[CARD]``, ...). The format stays
    the input's (CSV stays CSV with its header).

    Never writes to the audited file, and never over an existing file unless ``force``.

    Example:
        >>> res = write_fixed(audit("train.jsonl"), "train.clean.jsonl", mask_pii=True)  # doctest: +SKIP
    """
    read = report._read
    if read is None:
        raise DataError("this report holds no rows to write", hint="call write_fixed on the result of audit(...)")
    out_p = Path(out).expanduser()
    src = Path(report.source)
    if report.source != "examples" and src.exists() and out_p.exists() and out_p.resolve() == src.resolve():
        raise DataError(f"{out_p}: refusing to overwrite the audited file", hint="give --fix a new file name")
    if out_p.exists() and not force:
        raise DataError(f"{out_p}: already exists", hint="choose another name, or pass --force to replace it")
    if out_p.is_dir():
        raise DataError(f"{out_p}: is a directory", hint="give --fix a file name")
    if not out_p.parent.exists():
        raise DataError(f"{out_p.parent}: no such directory", hint="create it first, or write elsewhere")

    dropped_of = drop_rows(report.findings)
    for row in read.rows:
        if row.example is None:
            dropped_of.setdefault(row.index, "invalid")
    pii_rows: dict[int, Any] = report._pii_hits or {}
    kept = 0
    masked = 0
    is_csv = read.fmt == "csv"
    buf = io.StringIO(newline="") if is_csv else io.StringIO()
    writer = None
    if is_csv:
        delim = "\t" if src.suffix.lower() == ".tsv" else ","
        writer = csv.DictWriter(buf, fieldnames=read.header or [read.input_field, read.output_field], delimiter=delim)
        writer.writeheader()
    for row in read.rows:
        if row.index in dropped_of:
            continue
        rec = _record_of(row)
        if mask_pii and row.index in pii_rows:
            rec, k = _mask_deep(rec)
            masked += k
        if writer is not None:
            writer.writerow(rec)
        else:
            buf.write(json.dumps(rec, ensure_ascii=False) + "\n")
        kept += 1
    # Write beside the target and rename: a crash never leaves a half-written file under its name.
    fd, tmp = tempfile.mkstemp(prefix=".rungwise-fix-", dir=out_p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
        os.replace(tmp, out_p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return FixResult(out_p, kept, dict(Counter(dropped_of.values())), masked)
