"""Token masks that hold a local model's answer to a regex or a JSON schema, through llguidance.

The grammar engine is `llguidance <https://github.com/guidance-ai/llguidance>`_ (also a vLLM
structured-outputs backend). Compared on the embedded model against xgrammar and
lm-format-enforcer (BENCHMARKS.md, section constrained), it was chosen because:

* its regexes follow the syntax and semantics of Python's ``re``, the engine the ``regex`` metric
  scores with: inline flags (``(?i)``, which an ``ignore_case`` constraint needs) and Unicode
  classes (``\\d``, ``\\w``); xgrammar rejects ``(?i)``, so case-insensitive patterns would need a
  hand-written rewrite;
* grammars compile in milliseconds, and the mask of one row costs about a millisecond per step,
  noise next to a decoding step of the model on a CPU;
* lm-format-enforcer's transformers integration does not import under transformers 5, and its
  JSON masks cost tens of milliseconds per step.

This module is only the glue between llguidance and transformers' ``generate``: one matcher per
row fed the token the row just produced, and the allowed-token bitmask applied to the logits
before any sampling warper.

Example:
    >>> masks = GrammarMasks(tokenizer, vocab_size=49152, eos_ids=[2])  # doctest: +SKIP
    >>> processor = masks.processor(Constraint("regex", pattern=r"\\d{4}-\\d{2}-\\d{2}"), rows=8)  # doctest: +SKIP
    >>> model.generate(..., logits_processor=LogitsProcessorList([processor]))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from rungwise._deps import require
from rungwise.errors import Unsupported
from rungwise.types import Constraint

# The grammar of "any JSON object", for a json constraint without a schema.
ANY_OBJECT_SCHEMA = {"type": "object"}
# JSON without optional whitespace: a small model otherwise tends to pad with newlines until
# max_tokens, and compact JSON is what every JSON metric reads anyway.
JSON_OPTIONS = {"whitespace_flexible": False}


def grammar_for(constraint: Constraint) -> str:
    """The llguidance grammar (a JSON string) that accepts exactly the answers ``constraint`` allows.

    Example:
        >>> json.loads(grammar_for(Constraint("regex", pattern="[ab]+")))["grammars"][0]["lark_grammar"]
        'start: /[ab]+/'
    """
    llg = require("llguidance")
    if constraint.kind == "regex":
        if not constraint.pattern:
            raise Unsupported("a regex constraint needs a pattern", hint="set metric.options.pattern")
        pattern = f"(?i:{constraint.pattern})" if constraint.ignore_case else constraint.pattern
        return llg.LLMatcher.grammar_from_regex(pattern)
    if constraint.kind == "json":
        schema = json.loads(constraint.json_schema) if constraint.json_schema else ANY_OBJECT_SCHEMA
        return llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    # A choice as a grammar: an alternation of the literal choices (greedy decoding through it).
    # llguidance reads Python's re.escape output as the same literals (tested with spaces, ?, -, #).
    return llg.LLMatcher.grammar_from_regex("|".join(re.escape(c) for c in constraint.choices))


class GrammarMasks:
    """llguidance's view of one tokenizer, and the constraint processors built on it.

    Building the tokenizer view takes about a second (it reads the whole vocabulary), so a
    backend keeps one; grammars are checked once per constraint and cached.
    """

    def __init__(self, tokenizer: Any, *, vocab_size: int, eos_ids: Sequence[int]) -> None:
        llg_hf = require("llguidance.hf")
        self.vocab_size = vocab_size
        self.eos_ids = list(eos_ids)
        # Once the grammar is complete llguidance allows the model's end tokens, and generate()
        # ends the row on them.
        self.tokenizer = llg_hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=self.eos_ids)
        self._grammar = lru_cache(maxsize=32)(self._checked_grammar)

    def _checked_grammar(self, constraint: Constraint) -> str:
        llg = require("llguidance")
        grammar = grammar_for(constraint)
        error = llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error and not error.startswith("WARNING"):
            lines = error.strip().splitlines()
            reason = next((x for x in lines if x.startswith("error:")), lines[0])
            raise Unsupported(
                f"the local backend cannot enforce the {constraint.describe()}: {reason}",
                hint="the pattern may use look-around or back-references, which a token mask cannot follow; "
                "simplify metric.options.pattern (or the schema)",
            )
        return grammar

    def check(self, constraint: Constraint) -> None:
        """Raise :class:`Unsupported` now if ``constraint`` cannot be enforced (before any decoding)."""
        self._grammar(constraint)

    def processor(self, constraint: Constraint, rows: int) -> ConstraintProcessor:
        """A fresh logits processor for one ``generate`` call over ``rows`` rows."""
        return ConstraintProcessor(self, self._grammar(constraint), rows)


class ConstraintProcessor:
    """A transformers logits processor: masks each row's logits to the tokens its grammar allows.

    It is called once per decoding step with every row's tokens so far; from the second call
    on, each row's last token is what the previous step chose, which its matcher consumes
    first. A row that has ended (an end token, then padding) is left alone.
    """

    def __init__(self, masks: GrammarMasks, grammar: str, rows: int) -> None:
        llg = require("llguidance")
        llg_torch = require("llguidance.torch")
        self.torch = require("torch")
        self._fill = llg_torch.fill_next_token_bitmask
        self.matchers = [llg.LLMatcher(masks.tokenizer, grammar) for _ in range(rows)]
        self.live = [True] * rows
        self.eos_ids = set(masks.eos_ids)
        self.vocab_size = masks.vocab_size
        self.bitmask = llg_torch.allocate_token_bitmask(rows, masks.vocab_size)
        self._started = False
        self._bits = self.torch.arange(32, dtype=self.torch.int32)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self._started:
            for r, token in enumerate(input_ids[:, -1].tolist()):
                if self.live[r]:
                    # An end token closes the row; a matcher that refuses a token (cannot happen
                    # to a masked row) would only stop masking that row.
                    self.live[r] = token not in self.eos_ids and self.matchers[r].consume_token(token)
        self._started = True
        self.bitmask.fill_(-1)
        for r, matcher in enumerate(self.matchers):
            if self.live[r]:
                self._fill(matcher, self.bitmask, r)
        # Unpack 32 tokens per int32 word into a boolean mask over the vocabulary.
        allowed = ((self.bitmask.unsqueeze(-1) >> self._bits) & 1).bool().flatten(1)[:, : scores.shape[-1]]
        if allowed.shape[-1] < scores.shape[-1]:  # logits wider than the tokenizer's vocabulary
            pad = self.torch.zeros(allowed.shape[0], scores.shape[-1] - allowed.shape[-1], dtype=self.torch.bool)
            allowed = self.torch.cat([allowed, pad], dim=-1)
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))
