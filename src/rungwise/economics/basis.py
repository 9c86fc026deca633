"""What a set of costs rests on: the date they are priced on, the catalog's age, every price used
with the day it was read, the machine assumption, and the offers left out because a new
customer cannot buy them on that date.

Example:
    >>> import datetime as dt
    >>> from rungwise.prices.catalog import load_catalog
    >>> b = PricingBasis(dt.date(2027, 9, 1), load_catalog(), max_age_days=183)
    >>> b.catalog_age_days, len(b.warnings())
    (275, 1)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from rungwise.config.economics import EconomicsSpec
from rungwise.prices.catalog import Catalog, read_on

OVERRIDE_HINT = "override prices under economics.prices in task.yaml (`rungwise prices` lists every source)"


def pricing_date(econ: EconomicsSpec, as_of: dt.date | None = None) -> dt.date:
    """The date costs are priced on: ``as_of``, else ``economics.as_of``, else today."""
    return as_of or econ.as_of or dt.date.today()


@dataclass
class PriceUsed:
    """One catalog figure a cost used: what, when it was read, and where from."""

    what: str
    date: str
    source: str


@dataclass
class LeftOut:
    """An offer a new customer cannot buy on the pricing date, why, and what remains instead."""

    offer: str
    reason: str
    alternatives: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        s = f"{self.offer} left out: {self.reason}"
        if self.alternatives:
            s += "; what remains: " + "; ".join(self.alternatives)
        return s


@dataclass
class PricingBasis:
    """The pricing date, the catalog and its age, and every price and assumption the costs used."""

    as_of: dt.date
    catalog: Catalog
    max_age_days: int
    used: list[PriceUsed] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)

    @property
    def catalog_age_days(self) -> int:
        return self.catalog.age_days(self.as_of)

    def use(self, what: str, date: str, source: str) -> None:
        if date and all(u.what != what for u in self.used):
            self.used.append(PriceUsed(what, date, source))

    def assume(self, sentence: str) -> None:
        if sentence not in self.assumptions:
            self.assumptions.append(sentence)

    def leave_out(self, item: LeftOut) -> None:
        if all(x.offer != item.offer for x in self.left_out):
            self.left_out.append(item)

    def stale(self) -> list[PriceUsed]:
        """Prices used that were read more than ``max_age_days`` before the pricing date."""
        return [u for u in self.used if (self.as_of - read_on(u.date)).days > self.max_age_days]

    def headline(self) -> str:
        """'priced on 2026-11-30 with the price catalog of 2026-11-30 (0 days old)'."""
        age = self.catalog_age_days
        return (f"priced on {self.as_of} with the price catalog revised {self.catalog.date} "
                f"({age} day{'s' if age != 1 else ''} old)" if age >= 0 else
                f"priced on {self.as_of}, before the price catalog's revision of {self.catalog.date}")

    def warnings(self) -> list[str]:
        """Stale catalog, stale prices used: each with how to override."""
        out = []
        if self.catalog_age_days > self.max_age_days:
            out.append(f"the price catalog was revised {self.catalog.date}, {self.catalog_age_days} days before "
                       f"{self.as_of} (more than {self.max_age_days}): its prices and availability may have "
                       f"changed; {OVERRIDE_HINT}")
        old = self.stale()
        if old:
            listed = ", ".join(f"{u.what} (read {u.date}, {(self.as_of - read_on(u.date)).days} days)" for u in old)
            out.append(f"prices older than {self.max_age_days} days on {self.as_of}: {listed}; {OVERRIDE_HINT}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(), "catalog_date": self.catalog.date, "catalog_age_days": self.catalog_age_days,
            "max_age_days": self.max_age_days, "headline": self.headline(),
            "prices_used": [u.__dict__ for u in self.used], "assumptions": list(self.assumptions),
            "left_out": [{"offer": x.offer, "reason": x.reason, "alternatives": list(x.alternatives),
                          "sentence": x.sentence()} for x in self.left_out],
            "warnings": self.warnings(),
        }
