"""Decision factors + the measured, priced ladder -> one recommendation with every reason.

- :mod:`rungwise.advise.factors`: the factors' rules of thumb (volume, clean examples, ...);
- :mod:`rungwise.advise.judge`: which rungs qualify and which is recommended;
- :mod:`rungwise.advise.prose`: the headline, reasons, gap and next steps, with the numbers.

Example:
    >>> v = verdict(ladder, task, price_rungs(ladder.rungs, task))  # doctest: +SKIP
    >>> print(v.text())  # doctest: +SKIP
"""

from __future__ import annotations

from rungwise.advise.factors import FACTOR_QUESTIONS, Signal, evaluate_factors, lean
from rungwise.advise.judge import verdict
from rungwise.advise.model import RungStatus, Verdict

__all__ = ["FACTOR_QUESTIONS", "RungStatus", "Signal", "Verdict", "evaluate_factors", "lean", "verdict"]
