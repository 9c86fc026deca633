"""``rungwise audit``: is this data fit to fine-tune on?

Most failed fine-tunes fail on data. The audit reads every line and reports, each with its
``file:line`` list:

1. format problems, as hosted fine-tuning services check them (roles, empty assistant reply,
   unknown keys, wrong types, malformed JSON);
2. the size band of the clean examples (under 100: prompt instead; 100-500: LoRA for narrow
   classification/extraction only; 500-1,000 reasonable; 1,000-5,000 reliably better);
3. exact and near-duplicates (MinHash LSH), conflicting outputs for the same or nearly the same
   input, label imbalance and likely label typos;
4. the mix of output shapes (JSON with its key set, label, number, list, markdown, prose);
5. token counts against the model's context and hosted per-example limits, and the training
   cost per epoch;
6. personal data (e-mail, phone, Luhn-checked card numbers, IBAN, national ids, IP addresses),
   always masked in the output;
7. leakage between train and test;
8. poisoning signs: trigger-like tokens and outliers by length or vocabulary;

and gives a verdict: ``ready`` (exit 0), ``ready_with_warnings`` (1) or ``not_ready`` (2).
:func:`write_fixed` writes a cleaned copy; the original is never touched.

Example:
    >>> from rungwise.data.audit import audit, write_fixed
    >>> report = audit("train.jsonl")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    audit: ready with warnings (1 warning; 1,204 clean examples: 1,000-5,000)
    >>> write_fixed(report, "train.clean.jsonl", mask_pii=True)  # doctest: +SKIP
"""

from __future__ import annotations

from rungwise.data.audit._core import BANDS, Thresholds, audit, size_band
from rungwise.data.audit._fix import FixResult, write_fixed
from rungwise.data.audit._report import AuditReport, Band, Finding

__all__ = [
    "BANDS",
    "AuditReport",
    "Band",
    "Finding",
    "FixResult",
    "Thresholds",
    "audit",
    "size_band",
    "write_fixed",
]
