"""Token counts per example, the limits they run into, and what one epoch of training costs.

Counting: with a tokenizer (the task's local model), the content of every message is tokenized in
one batch call and a per-message overhead measured once from the model's chat template is added.
Without one, the estimate is ``ceil(characters / 4)`` per message plus 4 tokens of overhead per
message and 3 for the reply (OpenAI Cookbook's counting for chat fine-tuning files); for English
text the 4-characters-per-token rule is within ~10-20% of BPE tokenizers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rungwise.types import Example

CHARS_PER_TOKEN = 4.0
EST_PER_MESSAGE = 4
EST_REPLY = 3


@dataclass(frozen=True)
class HostedLimit:
    """A hosted fine-tuning service's per-example limit and training price (list price, dated)."""

    key: str  # price-catalog key, provider/model
    snapshot: str  # the fine-tunable snapshot the limit belongs to
    max_tokens_per_example: int
    training_usd_per_1m: float
    as_of: str
    source: str


# Per-example training context lengths: Azure OpenAI "fine-tune models" table (MicrosoftDocs/azure-ai-docs,
# articles/ai-foundry/openai/includes/fine-tune-models.md, 2025: "Training example context length: 65,536"
# for gpt-4o-mini-2024-07-18 and gpt-4o-2024-08-06; 16,385 for gpt-35-turbo-0125), the same limits
# OpenAI's fine-tuning guide lists. Prices: https://openai.com/api/pricing/ (2025 list prices); when the
# price catalog (rungwise/prices/prices.yaml) has a training price for the key, that one is used.
HOSTED: tuple[HostedLimit, ...] = (
    HostedLimit("openai/gpt-4o-mini", "gpt-4o-mini-2024-07-18", 65_536, 3.00, "2025-08-01", "https://openai.com/api/pricing/"),
    HostedLimit("openai/gpt-4o", "gpt-4o-2024-08-06", 65_536, 25.00, "2025-08-01", "https://openai.com/api/pricing/"),
    HostedLimit("openai/gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", 65_536, 5.00, "2025-08-01", "https://openai.com/api/pricing/"),
    HostedLimit("openai/gpt-3.5-turbo", "gpt-3.5-turbo-0125", 16_385, 8.00, "2024-06-01", "https://openai.com/api/pricing/"),
)
DEFAULT_HOSTED = "openai/gpt-4o-mini"


def hosted_limits() -> list[HostedLimit]:
    """The table above, with training prices taken from the price catalog where it lists them."""
    try:
        from rungwise.prices.catalog import load_catalog

        cat = load_catalog()
    except Exception:  # the catalog is optional here: an unreadable one must not break an audit
        return list(HOSTED)
    out = []
    for h in HOSTED:
        m = cat.models.get(h.key)
        ft = getattr(m, "finetune", None) if m is not None else None
        if ft is not None and ft.training_per_1m:
            h = HostedLimit(h.key, h.snapshot, h.max_tokens_per_example, float(ft.training_per_1m), m.date or h.as_of, m.source or h.source)
        out.append(h)
    return out


@dataclass
class TokenCounts:
    """Per-example token counts (whole conversation, and the expected output alone)."""

    total: np.ndarray
    output: np.ndarray
    method: str  # "tokenizer <name>" or "estimate (chars/4)"
    model_context: int | None  # the local model's context window, when known


def _texts(ex: Example, system: str) -> tuple[list[str], str]:
    contents = ([system] if system else []) + [m["content"] for m in ex.messages]
    if not ex.messages:
        contents.append(ex.input)
    return contents, ex.output


def _context_of(tokenizer: Any) -> int | None:
    path = getattr(tokenizer, "name_or_path", "")
    cfg = Path(path) / "config.json" if path else None
    if cfg is not None and cfg.exists():
        try:
            c = json.loads(cfg.read_text())
            for k in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
                if isinstance(c.get(k), int):
                    return int(c[k])
        except (OSError, ValueError):
            pass
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and n < 10_000_000 else None


def _template_overhead(tokenizer: Any) -> tuple[float, float]:
    """(tokens per message, tokens for the reply prefix) added by the chat template, measured once."""
    if not getattr(tokenizer, "chat_template", None):
        return 0.0, 0.0
    try:
        conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        ids = tokenizer.apply_chat_template(conv, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
        content = len(tokenizer("a", add_special_tokens=False)["input_ids"]) + len(tokenizer("b", add_special_tokens=False)["input_ids"])
        return max(0.0, (len(ids) - content) / 2), 0.0
    except Exception:  # templates that need other arguments: no overhead rather than a crash
        return 0.0, 0.0


def count_tokens(examples: Sequence[Example], *, tokenizer: Any = None, system: str = "") -> TokenCounts:
    """Token counts of each example as it would be trained: system prompt, turns, expected output.

    >>> tc = count_tokens([Example("What is my balance?", "balance")])
    >>> int(tc.total[0]), tc.method
    (18, 'estimate (chars/4)')
    """
    per_ex: list[list[str]] = []
    outs: list[str] = []
    for ex in examples:
        c, o = _texts(ex, system)
        per_ex.append(c)
        outs.append(o)
    if tokenizer is None:
        lens_in = np.array([sum(math.ceil(len(t) / CHARS_PER_TOKEN) for t in c) for c in per_ex], dtype=np.int64)
        lens_out = np.array([math.ceil(len(o) / CHARS_PER_TOKEN) for o in outs], dtype=np.int64)
        n_msgs = np.array([len(c) + 1 for c in per_ex], dtype=np.int64)
        total = lens_in + lens_out + EST_PER_MESSAGE * n_msgs + EST_REPLY
        return TokenCounts(total, lens_out, "estimate (chars/4)", None)
    flat = [t for c in per_ex for t in c] + outs
    lens = np.fromiter(
        (len(ids) for ids in tokenizer(flat, add_special_tokens=False)["input_ids"]), dtype=np.int64, count=len(flat)
    )
    n_in = sum(len(c) for c in per_ex)
    owners = np.repeat(np.arange(len(per_ex)), [len(c) for c in per_ex])
    lens_in = np.bincount(owners, weights=lens[:n_in], minlength=len(per_ex)).astype(np.int64)
    lens_out = lens[n_in:]
    per_msg, reply = _template_overhead(tokenizer)
    n_msgs = np.array([len(c) + 1 for c in per_ex], dtype=np.int64)
    total = lens_in + lens_out + np.rint(per_msg * n_msgs + reply).astype(np.int64)
    name = Path(getattr(tokenizer, "name_or_path", "") or "tokenizer").name
    return TokenCounts(total, lens_out, f"tokenizer of {name}", _context_of(tokenizer))
