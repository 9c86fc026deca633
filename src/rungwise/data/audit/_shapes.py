"""What shape each expected output has, so that a mix of shapes can be reported.

A model learns the format of its training outputs as much as their content: when 18% of the
outputs are prose and 82% JSON, the fine-tuned model answers with prose about as often.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_NUMBER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?$|^[-+]?\.\d+$")
_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S")
_MARKDOWN = re.compile(r"^#{1,6} \S|^```|^\|.*\|\s*$|\*\*\S.*?\*\*|^> ", re.M)

LABEL_MAX_WORDS = 5
LABEL_MAX_CHARS = 60

FAMILY_NAMES = {
    "json": "JSON",
    "label": "a label",
    "number": "a number",
    "list": "a list",
    "markdown": "markdown",
    "prose": "prose",
}


@dataclass(frozen=True)
class Shape:
    """``family`` is one of json, label, number, list, markdown, prose; ``detail`` refines it
    (the JSON key set, the prose length band)."""

    family: str
    detail: str = ""

    def __str__(self) -> str:
        name = FAMILY_NAMES[self.family]
        return f"{name} {self.detail}" if self.detail else name


def _json_shape(t: str) -> Shape | None:
    if not t or t[0] not in "{[":
        return None
    try:
        v = json.loads(t)
    except ValueError:
        return None
    if isinstance(v, dict):
        keys = sorted(v)
        shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
        return Shape("json", "{" + shown + "}")
    if isinstance(v, list):
        return Shape("json", "list")
    return None


def _label_like(t: str) -> bool:
    return "\n" not in t and len(t) <= LABEL_MAX_CHARS and len(t.split()) <= LABEL_MAX_WORDS


def _prose_band(t: str) -> str:
    n = len(t.split())
    return "(under 20 words)" if n < 20 else "(20-150 words)" if n <= 150 else "(over 150 words)"


def classification_labels(outputs: Sequence[str], given: Sequence[str] | None = None) -> set[str] | None:
    """The label set when the outputs look like classification, else ``None``.

    With a task's label set, that is the answer. Otherwise outputs count as labels when at least
    70% of them are short single-line strings that occur more than once (a typo'd singleton label
    is then still a short output, and reported as a rare label, not as a new shape).

    >>> sorted(classification_labels(["spam", "ham", "spam", "ham", "ham"]))
    ['ham', 'spam']
    """
    if given:
        return set(given)
    if not outputs:
        return None
    counts = Counter(o.strip() for o in outputs)
    repeated = {o for o, c in counts.items() if c >= 2 and _label_like(o) and _json_shape(o) is None and not _NUMBER.match(o)}
    covered = sum(counts[o] for o in repeated)
    return repeated if repeated and covered >= 0.7 * len(outputs) else None


def shape_of(text: str, labels: set[str] | None) -> Shape:
    """The shape of one expected output.

    >>> str(shape_of('{"name": "Ann", "date": "2024-01-02"}', None))
    'JSON {date, name}'
    >>> str(shape_of("billing", {"billing", "other"})), str(shape_of("It was charged twice.", None))
    ('a label', 'prose (under 20 words)')
    """
    t = text.strip()
    if labels is not None and (t in labels or (_label_like(t) and _json_shape(t) is None and not _NUMBER.match(t))):
        return Shape("label")
    js = _json_shape(t)
    if js is not None:
        return js
    if _NUMBER.match(t):
        return Shape("number")
    lines = [ln for ln in t.splitlines() if ln.strip()]
    if len(lines) >= 2 and sum(bool(_LIST_LINE.match(ln)) for ln in lines) >= 0.8 * len(lines):
        return Shape("list")
    if _MARKDOWN.search(t):
        return Shape("markdown")
    return Shape("prose", _prose_band(t))


# Families that define a format a model must reproduce exactly: mixing them with anything else
# is a warning. Mixes among the free-text families (prose of different lengths, a number now and
# then, a list) are normal in generative data and only reported as information.
STRICT_FAMILIES = {"json", "label"}
