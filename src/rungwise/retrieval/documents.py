"""Reading a knowledge source into documents: a folder of .md/.txt/.html/.pdf files, a JSONL file,
or the records of the user's own reader (``knowledge.format: python:module:function``).

PDFs are read with pypdf and HTML with trafilatura (as Markdown, so headings survive for the
chunker); plain text must be UTF-8. Every problem names the file (and line) and the fix.

Example:
    >>> from rungwise.config.knowledge import KnowledgeSpec
    >>> docs = load_documents(KnowledgeSpec(path="kb/"), base_dir=Path("."))  # doctest: +SKIP
    >>> docs[0].id, docs[0].source  # doctest: +SKIP
    ('faq/refunds.md', 'kb/faq/refunds.md')
"""

from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rungwise._deps import require
from rungwise.config.knowledge import KnowledgeSpec
from rungwise.errors import DataError, RungwiseError
from rungwise.usercode import is_user_code, load_function

log = logging.getLogger(__name__)

_MARKDOWN = {".md", ".markdown"}
_HTML = {".html", ".htm"}


@dataclass(frozen=True)
class Document:
    """One document of the knowledge source.

    ``id`` is what examples name in ``gold_doc_ids``: the path relative to the folder, or the JSONL
    ``id``. ``markdown`` says whether ``text`` has Markdown headings the chunker should follow.
    ``page_starts`` (PDFs) holds the character offset where each page begins.
    """

    id: str
    title: str
    text: str
    source: str
    markdown: bool = False
    page_starts: tuple[int, ...] = field(default=(), compare=False)

    def page_at(self, offset: int) -> int | None:
        """The 1-based PDF page holding character ``offset`` (None for other documents)."""
        if not self.page_starts:
            return None
        return bisect.bisect_right(self.page_starts, offset)


def load_documents(spec: KnowledgeSpec, base_dir: Path) -> list[Document]:
    """Every document of the knowledge source ``spec.path`` (relative to ``base_dir``), in a stable order."""
    path = (base_dir / spec.path).expanduser()
    if not path.exists():
        raise DataError(
            f"knowledge source {path} does not exist",
            hint="set knowledge.path in task.yaml to a folder of documents or a .jsonl file (relative to task.yaml)",
        )
    if is_user_code(spec.format):
        return _read_with_reader(path, spec, base_dir)
    if path.is_dir():
        return _read_folder(path, spec.include)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, spec)
    raise DataError(
        f"knowledge source {path} is neither a folder nor a .jsonl file",
        hint="point knowledge.path at a folder of .md/.txt/.html/.pdf files or a JSONL of {id, title, text}",
    )


def _read_folder(folder: Path, include: list[str]) -> list[Document]:
    files = sorted({p for pattern in include for p in folder.glob(pattern) if p.is_file()})
    if not files:
        others = sorted(p.name for p in folder.rglob("*") if p.is_file())[:5]
        found = f"; it holds only {', '.join(others)}" if others else " (it is empty)"
        raise DataError(
            f"knowledge folder {folder} has no file matching {', '.join(include)}{found}",
            hint="add .md, .txt, .html or .pdf documents to the folder, or widen knowledge.include",
        )
    docs = []
    for f in files:
        doc = read_file(f, doc_id=f.relative_to(folder).as_posix())
        if doc.text.strip():
            docs.append(doc)
        else:
            log.warning("knowledge file %s has no text; skipped", f)
    if not docs:
        raise DataError(f"every file in knowledge folder {folder} is empty", hint="add documents with text")
    return docs


def read_file(path: Path, doc_id: str) -> Document:
    """One file as a document: PDF (pypdf), HTML (trafilatura), Markdown or plain UTF-8 text."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _read_pdf(path, doc_id)
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise DataError(
            f"{path}: binary file (it contains NUL bytes), not {suffix or 'text'}",
            hint="remove it from the knowledge folder or narrow knowledge.include",
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})",
            hint=f"convert it to UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{suffix}",
        ) from None
    if suffix in _HTML:
        return _from_html(path, doc_id, text)
    return Document(doc_id, _title_from(text, path), text, str(path), markdown=suffix in _MARKDOWN)


def _title_from(text: str, path: Path) -> str:
    """The first Markdown heading, else the file name without extension."""
    for line in text.splitlines()[:20]:
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("_", " ").replace("-", " ")


def _from_html(path: Path, doc_id: str, html: str) -> Document:
    trafilatura = require("trafilatura")
    # Markdown output keeps <h1>..<h6> as headings, which the chunker follows.
    text = trafilatura.extract(html, output_format="markdown", include_comments=False, favor_recall=True)
    if not text or not text.strip():
        raise DataError(
            f"{path}: no readable text in this HTML page",
            hint="check that the page has body text (not only scripts or images), or remove it from the folder",
        )
    meta = trafilatura.extract_metadata(html)
    title = (meta.title if meta and meta.title else None) or _title_from(text, path)
    return Document(doc_id, title, text, str(path), markdown=True)


def _read_pdf(path: Path, doc_id: str) -> Document:
    pypdf = require("pypdf")
    from pypdf.errors import DependencyError, PdfReadError

    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise DataError(
                f"{path}: encrypted PDF (it needs a password to open)",
                hint=f"save a decrypted copy (e.g. qpdf --decrypt --password=... {path.name} out.pdf) or remove it",
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except DependencyError as exc:
        raise DataError(
            f"{path}: encrypted PDF that needs a crypto library to read ({exc})",
            hint="pip install cryptography, or save a decrypted copy of the PDF",
        ) from None
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise DataError(
            f"{path}: unreadable PDF ({type(exc).__name__}: {exc})",
            hint="re-export it from its source application, or remove it from the knowledge folder",
        ) from None
    starts, parts, offset = [], [], 0
    for page in pages:
        starts.append(offset)
        parts.append(page)
        offset += len(page) + 2
    text = "\n\n".join(parts)
    if not text.strip():
        raise DataError(
            f"{path}: the PDF has no extractable text (a scan?)",
            hint="run OCR on it first (e.g. ocrmypdf) or remove it from the knowledge folder",
        )
    title = (reader.metadata.title if reader.metadata and reader.metadata.title else None) or _title_from("", path)
    return Document(doc_id, title, text, str(path), page_starts=tuple(starts))


def _read_jsonl(path: Path, spec: KnowledgeSpec) -> list[Document]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start})", hint="convert the file to UTF-8") from None
    records = _Records(spec, "one JSON object per line")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})", hint="one JSON object per line") from None
        records.add(rec, where, f"line {n}")
    return records.documents(f"{path}: no documents with text", "add records like {'id': 'a', 'text': '...'}")


def _read_with_reader(path: Path, spec: KnowledgeSpec, base_dir: Path) -> list[Document]:
    """The documents the user's reader yields for ``path`` (``knowledge.format: python:module:function``)."""
    read = load_function(spec.format, base_dir, field="knowledge.format", what="reader")
    records = _Records(spec, "yield one dict per document")
    try:
        for i, rec in enumerate(read(path), 1):
            records.add(rec, f"{path}#{i} (from {spec.format})", f"record {i}")
    except RungwiseError:
        raise
    except Exception as exc:  # the user's code: say which reader failed on which source
        raise DataError(f"{path}: the knowledge reader {spec.format} raised {type(exc).__name__}: {exc}",
                        hint="fix the reader function (it receives the knowledge path)") from exc
    return records.documents(f"{path}: the reader {spec.format} yielded no documents with text",
                             "check the reader and knowledge.path")


class _Records:
    """Documents from ``{id, title, text}`` records (JSONL lines or a reader's output), checked one by one."""

    def __init__(self, spec: KnowledgeSpec, shape_hint: str) -> None:
        self.spec = spec
        self.shape_hint = shape_hint
        self.docs: list[Document] = []
        self.seen: dict[str, str] = {}

    def add(self, rec: object, where: str, mark: str) -> None:
        """Check one record (``where`` names it in errors; ``mark`` is how a later duplicate refers to it)."""
        spec = self.spec
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object (a mapping), got {type(rec).__name__}",
                            hint=f"{self.shape_hint}: {{{spec.id_field!r}: ..., {spec.text_field!r}: ...}}")
        for key in (spec.id_field, spec.text_field):
            if key not in rec:
                raise DataError(
                    f"{where}: missing field {key!r}",
                    hint=f"every record needs {spec.id_field!r} and {spec.text_field!r} "
                    "(or set knowledge.id_field / knowledge.text_field)",
                )
        doc_id, text = str(rec[spec.id_field]), rec[spec.text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {spec.text_field!r} must be a string", hint="put the document text there")
        if doc_id in self.seen:
            raise DataError(f"{where}: duplicate id {doc_id!r} (first on {self.seen[doc_id]})",
                            hint="give every document a unique id")
        self.seen[doc_id] = mark
        if text.strip():
            self.docs.append(Document(doc_id, str(rec.get(spec.title_field) or ""), text, where))

    def documents(self, empty: str, hint: str) -> list[Document]:
        if not self.docs:
            raise DataError(empty, hint=hint)
        return self.docs
