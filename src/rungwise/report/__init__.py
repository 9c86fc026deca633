"""Reports of a climb: a self-contained HTML page, Markdown and JSON.

Example:
    >>> from rungwise.report import report_data, write_report  # doctest: +SKIP
    >>> paths = write_report(report_data(result, task=task, examples=test), Path("report"))  # doctest: +SKIP
    >>> paths["html"]  # doctest: +SKIP
    PosixPath('report/report.html')

The shape of ``data`` is documented in :mod:`rungwise.report.data`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rungwise.errors import RungwiseError

__all__ = ["report_data", "report_data_from_store", "write_report"]

FILES = {"html": "report.html", "markdown": "report.md", "json": "report.json"}


def __getattr__(name: str) -> Any:
    # The builders import the economics and the store; load them only when asked for.
    if name in ("report_data", "report_data_from_store"):
        from rungwise.report import data

        return getattr(data, name)
    raise AttributeError(name)


def _ours(path: Path, kind: str) -> bool:
    """Was this existing file written by rungwise (so it may be replaced)?"""
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    if kind == "json":
        return '"generator": "rungwise"' in head
    from rungwise.report.html import MARKER as HTML_MARKER
    from rungwise.report.markdown import MARKER as MD_MARKER

    return (HTML_MARKER if kind == "html" else MD_MARKER) in head


def _atomic_write(path: Path, text: str) -> None:
    # Write then rename, so a crash never leaves half a report where a good one was.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        # mkstemp creates 0600; a report is meant to be shared, so use the usual umask mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(data: dict[str, Any], out_dir: Path | str) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``report.json`` into ``out_dir``.

    Files a previous report wrote are replaced; any other file of the same name is left alone
    and an error says so. Returns ``{"html": path, "markdown": path, "json": path}``.
    """
    from rungwise.report.html import render_html
    from rungwise.report.markdown import render_markdown

    if not isinstance(data, dict) or "rungs" not in data or "task" not in data:
        raise RungwiseError("report data must be a dict with at least 'task' and 'rungs'",
                            hint="build it with rungwise.report.report_data(...)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RungwiseError(f"{out}: exists and is not a directory", hint="give a directory for the report (--out DIR)")
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / name for k, name in FILES.items()}
    for kind, p in paths.items():
        if p.exists() and not _ours(p, kind):
            raise RungwiseError(f"{p}: exists and was not written by rungwise; not overwriting it",
                                hint="choose another directory with --out, or move that file away")
    payload = dict(data)
    payload.setdefault("generator", "rungwise")
    rendered = {
        "html": render_html(payload),
        "markdown": render_markdown(payload),
        # generator first, so _ours() finds it in the first bytes.
        "json": json.dumps({"generator": "rungwise", **payload}, indent=1, ensure_ascii=False, default=str) + "\n",
    }
    for kind, p in paths.items():
        _atomic_write(p, rendered[kind])
    return paths
