"""The price catalog: hosted models' token prices, GPU-hour and vCPU-hour prices, each with source
and date, and who can still buy each hosted offer (:class:`Availability`).

The shipped catalog is ``prices.yaml`` next to this file; ``economics.prices`` in task.yaml
overrides or adds entries (:func:`load_catalog`). Prices go stale: :meth:`Catalog.age_days` and
:func:`read_on` tell how old a figure is on a given date.

Example:
    >>> cat = load_catalog()
    >>> cat.model("openai/gpt-4o-mini").input_per_1m
    0.15
    >>> cat.gpu("a100").key
    'a100-40gb'
"""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml
from pydantic import Field, ValidationError

from rungwise.config.base import Strict
from rungwise.config.economics import AvailabilitySpec, FinetunePriceSpec, ModelPriceSpec, PriceOverrides
from rungwise.errors import ConfigError


class _Offer(Strict):
    provider: str
    instance: str
    gpus: int = Field(gt=0)
    usd_per_hour: float = Field(gt=0)
    source: str
    date: str
    note: str | None = None


class _Gpu(Strict):
    name: str
    peak_bf16_tflops: float = Field(gt=0)
    memory_gb: float = Field(gt=0)
    spec_source: str
    offers: list[_Offer] = Field(min_length=1)


class _CpuOffer(Strict):
    provider: str
    instance: str
    vcpus: int = Field(gt=0)
    usd_per_hour: float = Field(gt=0)
    source: str
    date: str
    note: str | None = None


class _Cpu(Strict):
    name: str
    offers: list[_CpuOffer] = Field(min_length=1)


class _CatalogFile(Strict):
    catalog_date: str
    currency: str
    models: dict[str, ModelPriceSpec]
    gpus: dict[str, _Gpu]
    cpu: _Cpu
    gpu_aliases: dict[str, str] = Field(default_factory=dict)


def read_on(date: str) -> dt.date:
    """The day a catalog date names (``YYYY-MM`` = the first of the month).

    >>> read_on("2025-08"), read_on("2025-08-01")
    (datetime.date(2025, 8, 1), datetime.date(2025, 8, 1))
    """
    try:
        return dt.date.fromisoformat(date if len(date) > 7 else date + "-01")
    except ValueError:
        raise ConfigError(f"price date {date!r} is not YYYY-MM-DD or YYYY-MM",
                          hint="write the date a price was read as 2025-08-01") from None


@dataclass(frozen=True)
class Availability:
    """Who can buy an offer on a given day: open, closed to new customers (since when), ended
    (when), or sold only through a named channel, with the source it comes from.

    Example:
        >>> a = Availability(closed_to_new=dt.date(2026, 5, 7), ends=dt.date(2027, 1, 6))
        >>> a.open_to_new(dt.date(2026, 1, 1)), a.open_to_new(dt.date(2026, 11, 30))
        (True, False)
        >>> a.describe(dt.date(2026, 11, 30))
        'closed to new customers since 2026-05-07; ends for everyone 2027-01-06'
    """

    closed_to_new: dt.date | None = None
    ends: dt.date | None = None
    channel: str | None = None
    source: str = ""
    date: str = ""
    note: str = ""

    def open_to_new(self, on: dt.date) -> bool:
        """Can a new customer buy it on ``on``?"""
        return not (self.ended(on) or (self.closed_to_new is not None and on >= self.closed_to_new))

    def ended(self, on: dt.date) -> bool:
        return self.ends is not None and on >= self.ends

    def describe(self, on: dt.date) -> str:
        """Its status on ``on``, in a few words."""
        if self.ended(on):
            return f"ended {self.ends}"
        parts = []
        if self.closed_to_new is not None and on >= self.closed_to_new:
            parts.append(f"closed to new customers since {self.closed_to_new}")
        elif self.closed_to_new is not None:
            parts.append(f"open to new customers until {self.closed_to_new}")
        if self.ends is not None:
            parts.append(f"ends for everyone {self.ends}")
        if self.channel:
            parts.append(f"only through {self.channel}")
        return "; ".join(parts) or "open"

    @classmethod
    def from_spec(cls, spec: AvailabilitySpec | None) -> Availability:
        if spec is None:
            return OPEN
        return cls(spec.closed_to_new, spec.ends, spec.channel, spec.source, spec.date, spec.note or "")


#: No restriction known: anyone can buy it.
OPEN = Availability()


@dataclass(frozen=True)
class FinetunePrice:
    """Fine-tuning prices (training per 1M tokens, inference on the fine-tuned model; None where
    the provider lists none) and who can still buy fine-tuning."""

    training_per_1m: float | None
    input_per_1m: float | None
    cached_input_per_1m: float | None
    output_per_1m: float | None
    availability: Availability = OPEN


@dataclass(frozen=True)
class ModelPrice:
    """One hosted model's prices in $ per 1M tokens.

    ``cached_input_per_1m`` None means the provider lists no cache discount (tokens bill at the
    input price); ``cache_write_per_1m`` None means a cache miss bills at the input price.
    """

    key: str
    provider: str
    input_per_1m: float
    output_per_1m: float
    cached_input_per_1m: float | None = None
    cache_write_per_1m: float | None = None
    cache_min_tokens: int = 0
    cache_ttl_s: float = 300.0
    finetune: FinetunePrice | None = None
    source: str = ""
    date: str = ""
    note: str = ""
    availability: Availability = OPEN
    confirmed_source: str = ""
    confirmed_date: str = ""

    @property
    def read_date(self) -> str:
        """When these figures were last seen listed: the read date, or a later confirmation."""
        return max(self.date, self.confirmed_date)

    def finetuned(self) -> ModelPrice | None:
        """Inference prices of a model fine-tuned from this one (None where not listed)."""
        ft = self.finetune
        if ft is None or ft.input_per_1m is None or ft.output_per_1m is None:
            return None
        return replace(
            self,
            key=f"{self.key} (fine-tuned)",
            input_per_1m=ft.input_per_1m,
            output_per_1m=ft.output_per_1m,
            cached_input_per_1m=ft.cached_input_per_1m,
            finetune=None,
        )


@dataclass(frozen=True)
class GpuOffer:
    """One public on-demand offer of a GPU (an instance with ``gpus`` of them)."""

    provider: str
    instance: str
    gpus: int
    usd_per_hour: float
    source: str
    date: str
    note: str = ""

    @property
    def per_gpu_hour(self) -> float:
        return self.usd_per_hour / self.gpus


@dataclass(frozen=True)
class Gpu:
    """A GPU: datasheet peak (dense BF16 tensor TFLOP/s), memory, and its offers."""

    key: str
    name: str
    peak_bf16_tflops: float
    memory_gb: float
    spec_source: str
    offers: tuple[GpuOffer, ...] = field(default_factory=tuple)

    @property
    def price_range(self) -> tuple[float, float]:
        """(lowest, highest) $ per GPU-hour over the offers."""
        per = [o.per_gpu_hour for o in self.offers]
        return (min(per), max(per))

    @property
    def price_mid(self) -> float:
        """Geometric middle of the range: the range spans providers up to ~3x apart."""
        lo, hi = self.price_range
        return (lo * hi) ** 0.5


@dataclass(frozen=True)
class CpuOffer:
    """One public on-demand CPU instance (``vcpus`` of them, no GPU)."""

    provider: str
    instance: str
    vcpus: int
    usd_per_hour: float
    source: str
    date: str
    note: str = ""

    @property
    def per_vcpu_hour(self) -> float:
        return self.usd_per_hour / self.vcpus


@dataclass(frozen=True)
class CpuRate:
    """What a cloud vCPU-hour costs: the basis for pricing throughput measured on CPUs."""

    name: str
    offers: tuple[CpuOffer, ...]

    @property
    def price_range(self) -> tuple[float, float]:
        """(lowest, highest) $ per vCPU-hour over the offers."""
        per = [o.per_vcpu_hour for o in self.offers]
        return (min(per), max(per))

    @property
    def price_mid(self) -> float:
        lo, hi = self.price_range
        return (lo * hi) ** 0.5

    @property
    def date(self) -> str:
        """The oldest of its offers' read dates."""
        return min(o.date for o in self.offers)


@dataclass(frozen=True)
class Catalog:
    """All prices: ``models`` by key (``provider/model``), ``gpus`` by key, with aliases, and the
    vCPU-hour rate. ``date`` is when the catalog was last revised; each entry has its own."""

    date: str
    currency: str
    models: dict[str, ModelPrice]
    gpus: dict[str, Gpu]
    aliases: dict[str, str] = field(default_factory=dict)
    cpu: CpuRate | None = None

    def age_days(self, on: dt.date) -> int:
        """Days between the catalog's revision and ``on``."""
        return (on - read_on(self.date)).days

    def find_model(self, name: str) -> ModelPrice | None:
        """A model by key or unambiguous bare name (``gpt-4o-mini``), or None."""
        if name in self.models:
            return self.models[name]
        bare = [k for k in self.models if k.split("/", 1)[-1] == name]
        return self.models[bare[0]] if len(bare) == 1 else None

    def model(self, key: str) -> ModelPrice:
        """A model's prices, or a ConfigError naming the closest keys."""
        found = self.find_model(key)
        if found is not None:
            return found
        close = difflib.get_close_matches(key, list(self.models), n=3, cutoff=0.5)
        raise ConfigError(
            f"economics.price_model: no price for model {key!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else ""),
            hint="run `rungwise prices` for the catalog keys, or add the model under economics.prices.models "
            "in task.yaml with input_per_1m and output_per_1m",
        )

    def gpu(self, key: str) -> Gpu:
        """A GPU by key or alias (``a100`` = ``a100-40gb``), or a ConfigError naming the keys."""
        k = self.aliases.get(key.lower(), key.lower())
        if k in self.gpus:
            return self.gpus[k]
        raise ConfigError(
            f"unknown GPU {key!r}; known: {', '.join(sorted(self.gpus))}",
            hint="use one of those keys, or add it under economics.prices.gpus in task.yaml with usd_per_gpu_hour",
        )


def _model_from_spec(key: str, spec: ModelPriceSpec, where: str) -> ModelPrice:
    missing = [f for f in ("input_per_1m", "output_per_1m") if getattr(spec, f) is None]
    if missing:
        raise ConfigError(
            f"{where}: price entry {key!r} needs {' and '.join(missing)}",
            hint="give $ per 1M tokens, e.g. {input_per_1m: 0.15, output_per_1m: 0.60, source: URL, date: 2025-08-01}",
        )
    return ModelPrice(
        key=key,
        provider=spec.provider or key.split("/", 1)[0],
        input_per_1m=float(spec.input_per_1m),  # type: ignore[arg-type]
        output_per_1m=float(spec.output_per_1m),  # type: ignore[arg-type]
        cached_input_per_1m=spec.cached_input_per_1m,
        cache_write_per_1m=spec.cache_write_per_1m,
        cache_min_tokens=spec.cache_min_tokens or 0,
        cache_ttl_s=spec.cache_ttl_s or 300.0,
        finetune=_finetune(spec.finetune, None),
        source=spec.source or "",
        date=spec.date or "",
        note=spec.note or "",
        availability=Availability.from_spec(spec.availability),
        confirmed_source=spec.confirmed.source if spec.confirmed else "",
        confirmed_date=spec.confirmed.date if spec.confirmed else "",
    )


def _finetune(ft: FinetunePriceSpec | None, old: FinetunePrice | None) -> FinetunePrice | None:
    """Fine-tuning prices from a spec; fields it leaves out keep ``old``'s (a task.yaml override)."""
    if ft is None:
        return old

    def pick(name: str) -> float | None:
        v = getattr(ft, name)
        return v if v is not None else (getattr(old, name) if old else None)

    availability = Availability.from_spec(ft.availability) if ft.availability else (old.availability if old else OPEN)
    return FinetunePrice(pick("training_per_1m"), pick("input_per_1m"), pick("cached_input_per_1m"),
                         pick("output_per_1m"), availability)


@lru_cache(maxsize=1)
def _shipped() -> Catalog:
    text = resources.files("rungwise.prices").joinpath("prices.yaml").read_text(encoding="utf-8")
    try:
        raw = _CatalogFile.model_validate(yaml.safe_load(text))
    except ValidationError as exc:  # a broken shipped file is a packaging bug, but say where
        raise ConfigError(f"rungwise/prices/prices.yaml is invalid: {exc}", hint="reinstall rungwise") from None
    models = {k: _model_from_spec(k, v, "prices.yaml") for k, v in raw.models.items()}
    gpus = {
        k: Gpu(
            key=k,
            name=g.name,
            peak_bf16_tflops=g.peak_bf16_tflops,
            memory_gb=g.memory_gb,
            spec_source=g.spec_source,
            offers=tuple(GpuOffer(**o.model_dump(exclude={"note"}), note=o.note or "") for o in g.offers),
        )
        for k, g in raw.gpus.items()
    }
    cpu = CpuRate(raw.cpu.name, tuple(CpuOffer(**o.model_dump(exclude={"note"}), note=o.note or "")
                                      for o in raw.cpu.offers))
    read_on(raw.catalog_date)
    return Catalog(raw.catalog_date, raw.currency, models, gpus, dict(raw.gpu_aliases), cpu)


def _merge_model(base: ModelPrice, spec: ModelPriceSpec) -> ModelPrice:
    given: dict[str, Any] = spec.model_dump(exclude_none=True, exclude={"finetune", "availability", "confirmed"})
    merged = replace(base, **given, finetune=_finetune(spec.finetune, base.finetune))
    if spec.availability is not None:
        merged = replace(merged, availability=Availability.from_spec(spec.availability))
    if spec.confirmed is not None:
        merged = replace(merged, confirmed_source=spec.confirmed.source, confirmed_date=spec.confirmed.date)
    if spec.source is None:
        # A partly overridden entry is no longer the public list price: say so.
        merged = replace(merged, source=f"task.yaml over {base.source}")
    return merged


def load_catalog(overrides: PriceOverrides | None = None) -> Catalog:
    """The shipped catalog with ``overrides`` (from ``task.economics.prices``) merged over it.

    A model key already in the catalog keeps the fields you do not give; a GPU override replaces
    its public range with your one price.

    Example:
        >>> from rungwise.config.economics import PriceOverrides
        >>> ov = PriceOverrides.model_validate({"gpus": {"l4": {"usd_per_gpu_hour": 0.5}}})
        >>> load_catalog(ov).gpu("l4").price_range
        (0.5, 0.5)
    """
    cat = _shipped()
    if overrides is None or (not overrides.models and not overrides.gpus):
        return cat
    models = dict(cat.models)
    for key, spec in overrides.models.items():
        where = f"economics.prices.models.{key}"
        models[key] = _merge_model(models[key], spec) if key in models else _model_from_spec(key, spec, where)
    gpus = dict(cat.gpus)
    for key, g in overrides.gpus.items():
        k = cat.aliases.get(key.lower(), key.lower())
        offer = GpuOffer("task.yaml", "your price", 1, g.usd_per_gpu_hour, g.source, g.date or "")
        if k in gpus:
            old = gpus[k]
            gpus[k] = Gpu(
                k, g.name or old.name, g.peak_bf16_tflops or old.peak_bf16_tflops, g.memory_gb or old.memory_gb,
                old.spec_source, (offer,),
            )
        else:
            # peak/memory 0 = unknown: costing needs the price alone; `scratch` asks for them.
            gpus[k] = Gpu(k, g.name or key, g.peak_bf16_tflops or 0.0, g.memory_gb or 0.0, g.source, (offer,))
    return Catalog(cat.date, cat.currency, models, gpus, cat.aliases, cat.cpu)
