"""How rungwise writes an amount of money (USD), everywhere: terminal, reports, the verdict."""

from __future__ import annotations


def usd(x: float | None, missing: str = "—") -> str:
    """$ with sensible precision: ``$1,234.56`` for amounts from 10 cents up, ``$0.0123`` below.

    >>> usd(1234.5), usd(0.01234), usd(0), usd(None)
    ('$1,234.50', '$0.0123', '$0', '—')
    """
    if x is None:
        return missing
    if x == 0:
        return "$0"
    return f"${x:,.2f}" if abs(x) >= 0.1 else f"${x:.4f}"
