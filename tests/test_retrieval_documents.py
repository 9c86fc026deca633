"""Reading knowledge sources and chunking them: formats, structure, ids, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rungwise.config.knowledge import KnowledgeSpec
from rungwise.errors import DataError, RungwiseError
from rungwise.retrieval.chunking import chunk_document, chunk_documents, count_tokens
from rungwise.retrieval.documents import Document, load_documents

HTML = """<html><head><title>Returns</title></head><body><nav>Home | Shop | Cart</nav>
<h1>Returns</h1><p>Items can be returned within 30 days of delivery for a full refund to the card used.</p>
<h2>Exceptions</h2><p>Gift cards and opened software cannot be returned under any circumstances.</p>
<footer>Copyright the shop</footer></body></html>"""


def write_pdf(path: Path, pages: list[str], title: str = "Warranty") -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    pdf.output(str(path))
    return path


def folder_kb(tmp_path: Path) -> Path:
    kb = tmp_path / "kb"
    (kb / "faq").mkdir(parents=True)
    (kb / "faq" / "billing.md").write_text(
        "# Billing\n\nInvoices are sent on the first day of each month.\n\n"
        "## Payment methods\n\nWe accept cards and bank transfers.\n\n## Late fees\n\nA late fee of 5 euros applies.\n"
    )
    (kb / "notes.txt").write_text("The office is closed on public holidays.\n")
    (kb / "returns.html").write_text(HTML)
    write_pdf(kb / "warranty.pdf", ["The warranty lasts two years.", "Repairs take ten working days."])
    (kb / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # not matched by the default globs
    return kb


def test_folder_reads_every_format_with_ids_and_titles(tmp_path: Path) -> None:
    docs = load_documents(KnowledgeSpec(path="kb"), folder_kb(tmp_path).parent)
    by_id = {d.id: d for d in docs}
    assert sorted(by_id) == ["faq/billing.md", "notes.txt", "returns.html", "warranty.pdf"]
    assert by_id["faq/billing.md"].title == "Billing" and by_id["faq/billing.md"].markdown
    html = by_id["returns.html"]
    assert html.title == "Returns" and "## Exceptions" in html.text  # headings survive as Markdown
    assert "Home | Shop" not in html.text and "Copyright" not in html.text  # boilerplate removed
    pdf = by_id["warranty.pdf"]
    assert pdf.title == "Warranty" and len(pdf.page_starts) == 2
    assert pdf.page_at(pdf.text.index("Repairs")) == 2 and pdf.page_at(0) == 1


def test_markdown_chunks_follow_sections_and_keep_positions(tmp_path: Path) -> None:
    docs = load_documents(KnowledgeSpec(path="kb"), folder_kb(tmp_path).parent)
    chunks = chunk_documents(docs, chunk_tokens=64)
    billing = [c for c in chunks if c.doc_id == "faq/billing.md"]
    assert [c.headings for c in billing] == [(), ("Payment methods",), ("Late fees",)]
    assert [c.position for c in billing] == [0, 1, 2]
    doc = next(d for d in docs if d.id == "faq/billing.md")
    for c in billing:
        assert doc.text[c.start : c.end] == c.text and c.source.endswith("billing.md")
    assert billing[1].indexed_text() == "Billing > Payment methods\nWe accept cards and bank transfers."
    assert billing[1].indexed_text(with_titles=False) == "We accept cards and bank transfers."
    pdf_chunks = [c for c in chunks if c.doc_id == "warranty.pdf"]
    assert pdf_chunks[0].page == 1
    # ids are content hashes: the same input gives the same ids
    assert [c.id for c in chunk_documents(docs, chunk_tokens=64)] == [c.id for c in chunks]


def test_long_text_respects_the_budget_and_overlaps(tmp_path: Path) -> None:
    sentences = [f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(60)]
    doc = Document("long.txt", "Long", " ".join(sentences), "long.txt")
    plain = chunk_document(doc, chunk_tokens=40)
    assert len(plain) > 5
    assert all(count_tokens(c.text) <= 40 for c in plain)
    assert all(doc.text[c.start : c.end] == c.text for c in plain)
    assert all(a.end <= b.start for a, b in zip(plain, plain[1:], strict=False))  # disjoint without overlap
    overlapped = chunk_document(doc, chunk_tokens=40, overlap=10)
    assert all(count_tokens(c.text) <= 40 for c in overlapped)
    assert any(a.end > b.start for a, b in zip(overlapped, overlapped[1:], strict=False))


def test_repeated_text_in_one_document_gets_distinct_ids() -> None:
    doc = Document("d.md", "D", "# A\n\nSame words here.\n\n# B\n\nSame words here.\n", "d.md", markdown=True)
    ids = [c.id for c in chunk_document(doc)]
    assert len(ids) == 2 and ids[1] == ids[0] + "#2"


def test_jsonl_source(tmp_path: Path) -> None:
    rows = [{"doc": "a", "name": "Alpha", "body": "First text."}, {"doc": "b", "body": "Second text."}]
    (tmp_path / "kb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = KnowledgeSpec(path="kb.jsonl", id_field="doc", title_field="name", text_field="body")
    docs = load_documents(spec, tmp_path)
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "Alpha", "First text."), ("b", "", "Second text.")]
    assert docs[1].source.endswith("kb.jsonl:2")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "text": "x"}', "{not json"], "kb.jsonl:2: invalid JSON"),
        (['{"id": "a"}'], "kb.jsonl:1: missing field 'text'"),
        (['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'], "kb.jsonl:2: duplicate id 'a' (first on line 1)"),
        (['{"id": "a", "text": 3}'], "kb.jsonl:1: field 'text' must be a string"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path: Path, lines: list[str], message: str) -> None:
    (tmp_path / "kb.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_documents(KnowledgeSpec(path="kb.jsonl"), tmp_path)


READER = """
import json

def articles(path):
    # one document per paragraph of a nested JSON file, the way a dataset ships them
    for art in json.loads(open(path, encoding="utf-8").read())["articles"]:
        for n, para in enumerate(art["paragraphs"]):
            yield {"id": f"{art['title']}#{n}", "title": art["title"], "text": para}

def broken(path):
    yield {"id": "a", "text": "fine"}
    raise KeyError("paragraphs")

def not_mappings(path):
    yield ["a", "text"]
"""


def test_a_reader_turns_any_source_into_documents(tmp_path: Path) -> None:
    (tmp_path / "kb_reader.py").write_text(READER)
    (tmp_path / "corpus.json").write_text(json.dumps(
        {"articles": [{"title": "Rivers", "paragraphs": ["The Nile is long.", "The Rhine is short."]}]}))
    docs = load_documents(KnowledgeSpec(path="corpus.json", format="python:kb_reader:articles"), tmp_path)
    assert [(d.id, d.title, d.text) for d in docs] == [("Rivers#0", "Rivers", "The Nile is long."),
                                                        ("Rivers#1", "Rivers", "The Rhine is short.")]
    assert docs[1].source.endswith("corpus.json#2 (from python:kb_reader:articles)")


@pytest.mark.parametrize(
    ("reader", "message"),
    [
        ("broken", r"corpus.json: the knowledge reader python:kb_reader:broken raised KeyError: 'paragraphs'"),
        ("not_mappings", r"corpus.json#1 \(from python:kb_reader:not_mappings\): expected a JSON object"),
        ("missing", r"field 'knowledge.format': module 'kb_reader' has no function 'missing'"),
    ],
)
def test_a_bad_reader_is_named_with_what_went_wrong(tmp_path: Path, reader: str, message: str) -> None:
    (tmp_path / "kb_reader.py").write_text(READER)
    (tmp_path / "corpus.json").write_text("{}")
    with pytest.raises(RungwiseError, match=message):
        load_documents(KnowledgeSpec(path="corpus.json", format=f"python:kb_reader:{reader}"), tmp_path)


def test_an_unknown_knowledge_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown knowledge format 'xml'"):
        KnowledgeSpec(path="kb", format="xml")


def test_empty_folder_and_folder_without_documents(tmp_path: Path) -> None:
    (tmp_path / "kb").mkdir()
    with pytest.raises(DataError, match="has no file matching.*it is empty") as err:
        load_documents(KnowledgeSpec(path="kb"), tmp_path)
    assert "add .md, .txt, .html or .pdf" in str(err.value)
    (tmp_path / "kb" / "manual.docx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match="it holds only manual.docx"):
        load_documents(KnowledgeSpec(path="kb"), tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_documents(KnowledgeSpec(path="nowhere"), tmp_path)


def test_binary_and_non_utf8_files_are_named(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "data.txt").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(DataError, match=r"data\.txt: binary file") as err:
        load_documents(KnowledgeSpec(path="kb"), tmp_path)
    assert "remove it" in str(err.value)
    (kb / "data.txt").write_bytes("Caf\u00e9 cr\u00e8me".encode("latin-1"))
    with pytest.raises(DataError, match=r"data\.txt: not UTF-8 text \(byte 3") as err:
        load_documents(KnowledgeSpec(path="kb"), tmp_path)
    assert "iconv -f latin1 -t utf-8" in str(err.value)


def test_encrypted_damaged_and_scanned_pdfs_are_named(tmp_path: Path) -> None:
    import pypdf

    kb = tmp_path / "kb"
    kb.mkdir()
    plain = write_pdf(tmp_path / "plain.pdf", ["Secret terms."])
    writer = pypdf.PdfWriter(clone_from=plain)
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    writer.write(kb / "locked.pdf")
    with pytest.raises(DataError, match=r"locked\.pdf: encrypted PDF") as err:
        load_documents(KnowledgeSpec(path="kb"), tmp_path)
    assert "qpdf --decrypt" in str(err.value)

    # An owner password only (opens without a password) is read normally.
    writer = pypdf.PdfWriter(clone_from=plain)
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    writer.write(kb / "locked.pdf")
    assert load_documents(KnowledgeSpec(path="kb"), tmp_path)[0].text == "Secret terms."

    (kb / "locked.pdf").write_bytes(b"%PDF-1.4\n this is not really a pdf")
    with pytest.raises(DataError, match=r"locked\.pdf: unreadable PDF"):
        load_documents(KnowledgeSpec(path="kb"), tmp_path)

    write_pdf(kb / "locked.pdf", [""])
    with pytest.raises(DataError, match=r"locked\.pdf: the PDF has no extractable text") as err:
        load_documents(KnowledgeSpec(path="kb"), tmp_path)
    assert "OCR" in str(err.value)


def test_html_without_text(tmp_path: Path) -> None:
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "empty.html").write_text("<html><body><script>var x = 1;</script></body></html>")
    with pytest.raises(DataError, match=r"empty\.html: no readable text"):
        load_documents(KnowledgeSpec(path="kb"), tmp_path)


def test_overlap_must_be_below_budget() -> None:
    with pytest.raises(ValueError, match="chunk_overlap"):
        KnowledgeSpec(path="kb", chunk_tokens=50, chunk_overlap=50)
