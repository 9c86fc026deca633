"""Reading a model's answer: a label, a JSON value, a number, a normalized string.

Lenient about presentation (quotes, code fences, a "Label:" prefix), strict about content: a
label is never searched for inside a sentence, and a JSON object buried in prose is not JSON.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from typing import Any

# Wrappers a model puts around a bare answer: quotes, backticks, Markdown emphasis, brackets.
_WRAP_CHARS = "\"'`*_“”‘’«»[]()<>"
_TRAILING_PUNCT = ".,;:!?。"
# "Label: billing", "Intent - billing", "**Category**: billing": a short prefix of 1-3 words.
# A dash separates only with spaces around it, so "not-billing" never reads as "billing".
_PREFIX_RE = re.compile(r"^\s*[*_`\"']*\s*[A-Za-z][\w ]{0,30}?[*_`\"']*(?:\s+(?:->|=>)|\s*[:=]|\s+[-–])\s*(.+)$")


def _label_variants(line: str) -> list[str]:
    """Candidate spellings of a label on one output line, most literal first."""
    out: list[str] = []

    def add(s: str) -> None:
        s = s.strip()
        if s and s not in out:
            out.append(s)
        # Peel wrappers and trailing punctuation alternately: "'billing'." and "**billing.**".
        prev = None
        while s and s != prev:
            prev = s
            s = s.strip().rstrip(_TRAILING_PUNCT).strip()
            if len(s) >= 2 and s[0] in _WRAP_CHARS and s[-1] in _WRAP_CHARS:
                s = s.strip(_WRAP_CHARS).strip()
            if s and s not in out:
                out.append(s)

    add(line)
    m = _PREFIX_RE.match(line)
    if m:
        add(m.group(1))
    return out


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label that ``text`` states, or None when it states none of ``labels``.

    Lenient about presentation, strict about content: looks only at the first non-empty
    line, compares case-insensitively, and peels whitespace, quotes, backticks, Markdown
    emphasis, brackets, trailing punctuation and a short ``Label:``-style prefix. It never
    searches for a label inside a sentence, so "I think it is billing" is None: that output
    is wrong in format, and the format-valid rate should say so.

    Example:
        >>> parse_label("  **Billing**.\\nbecause ...", ["billing", "bug"])
        'billing'
        >>> parse_label("Label: 'bug'", ["billing", "bug"])
        'bug'
        >>> parse_label("I think it is billing", ["billing", "bug"]) is None
        True
    """
    by_fold = {str(lab).strip().casefold(): str(lab) for lab in labels}
    for line in text.splitlines():
        if line.strip():
            for cand in _label_variants(line):
                hit = by_fold.get(cand.casefold())
                if hit is not None:
                    return hit
            return None
    return None


# An info string ("json") counts only when a newline follows it; an unclosed fence (the answer
# was cut at max_tokens) runs to the end of the text.
_FENCE_RE = re.compile(r"```(?:[ \t]*[A-Za-z0-9_+-]*[ \t]*\r?\n)?(.*?)(?:```|\Z)", re.DOTALL)


def strip_code_fence(text: str) -> str:
    """The content of the first Markdown code fence in ``text``, else ``text`` stripped.

    Example:
        >>> strip_code_fence('Here:\\n```json\\n{"a": 1}\\n```')
        '{"a": 1}'
    """
    m = _FENCE_RE.search(text)
    return m.group(1).strip() if m else text.strip()


#: What :func:`parse_json` returns when the text is not JSON (``None`` is valid JSON).
NOT_JSON = object()


def parse_json(text: str) -> Any:
    """Parse a model output as JSON after stripping a code fence; ``NOT_JSON`` when it does not parse."""
    try:
        return json.loads(strip_code_fence(text))
    except (json.JSONDecodeError, RecursionError):
        return NOT_JSON


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


_NUM_RE = re.compile(r"(?<![\w.])(-)?\$?((?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)")
_FRACTION_RE = re.compile(r"^\s*(-)?(\d+)\s*/\s*(\d+)\s*$")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_number(text: str) -> float | None:
    """The final answer number in ``text``, or None.

    Looks, in order, after the last ``####`` (GSM8K style), inside the last ``\\boxed{}``,
    then anywhere, and takes the last number there. Thousands separators, a ``$`` sign and an
    exponent are accepted ("$1,234.50" is 1234.5); a fraction counts only as the whole of a
    ``\\boxed{}`` ("\\boxed{3/4}" is 0.75), since elsewhere "3/4" is as likely a date or a ratio.

    Example:
        >>> extract_number("She pays 3 * 4 = 12 dollars.\\n#### 12")
        12.0
        >>> extract_number("The answer is -1,250.5.")
        -1250.5
        >>> extract_number("no idea") is None
        True
    """
    scopes = []
    if "####" in text:
        scopes.append(text.rsplit("####", 1)[1])
    boxed = _BOXED_RE.findall(text)
    if boxed:
        frac = _FRACTION_RE.match(boxed[-1])
        if frac and int(frac.group(3)) != 0:
            value = int(frac.group(2)) / int(frac.group(3))
            return -value if frac.group(1) else value
        scopes.append(boxed[-1])
    scopes.append(text)
    for scope in scopes:
        nums = _NUM_RE.findall(scope)
        if nums:
            sign, digits = nums[-1]
            value = float(digits.replace(",", ""))
            return -value if sign else value
    return None


def format_number(x: float) -> str:
    """``12.0`` -> ``'12'``, ``0.5`` -> ``'0.5'``: how reports show an extracted number."""
    return str(int(x)) if x.is_integer() and abs(x) < 1e16 else repr(x)


PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD answer normalization: lowercase, drop punctuation and articles, squeeze spaces."""
    text = _ARTICLES_RE.sub(" ", text.lower().translate(PUNCTUATION_TABLE))
    return " ".join(text.split())
