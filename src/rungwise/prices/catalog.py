"""The price catalog: hosted models' token prices and GPU-hour prices, each with source and date.

The shipped catalog is ``prices.yaml`` next to this file; ``economics.prices`` in task.yaml
overrides or adds entries (:func:`load_catalog`).

Example:
    >>> cat = load_catalog()
    >>> cat.model("openai/gpt-4o-mini").input_per_1m
    0.15
    >>> cat.gpu("a100").key
    'a100-40gb'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml
from pydantic import Field, ValidationError

from rungwise.config.base import Strict
from rungwise.config.economics import FinetunePriceSpec, ModelPriceSpec, PriceOverrides
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


class _CatalogFile(Strict):
    catalog_date: str
    currency: str
    models: dict[str, ModelPriceSpec]
    gpus: dict[str, _Gpu]
    gpu_aliases: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class FinetunePrice:
    """Fine-tuning prices: training per 1M tokens, and inference on the fine-tuned model."""

    training_per_1m: float
    input_per_1m: float | None
    cached_input_per_1m: float | None
    output_per_1m: float | None


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
class Catalog:
    """All prices: ``models`` by key (``provider/model``), ``gpus`` by key, with aliases."""

    date: str
    currency: str
    models: dict[str, ModelPrice]
    gpus: dict[str, Gpu]
    aliases: dict[str, str] = field(default_factory=dict)

    def model(self, key: str) -> ModelPrice:
        """A model's prices, or a ConfigError naming the closest keys."""
        if key in self.models:
            return self.models[key]
        # Accept the bare model name when it is unambiguous ("gpt-4o-mini").
        bare = [k for k in self.models if k.split("/", 1)[-1] == key]
        if len(bare) == 1:
            return self.models[bare[0]]
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
    ft = spec.finetune
    return ModelPrice(
        key=key,
        provider=spec.provider or key.split("/", 1)[0],
        input_per_1m=float(spec.input_per_1m),  # type: ignore[arg-type]
        output_per_1m=float(spec.output_per_1m),  # type: ignore[arg-type]
        cached_input_per_1m=spec.cached_input_per_1m,
        cache_write_per_1m=spec.cache_write_per_1m,
        cache_min_tokens=spec.cache_min_tokens or 0,
        cache_ttl_s=spec.cache_ttl_s or 300.0,
        finetune=FinetunePrice(ft.training_per_1m, ft.input_per_1m, ft.cached_input_per_1m, ft.output_per_1m)
        if ft
        else None,
        source=spec.source or "",
        date=spec.date or "",
        note=spec.note or "",
    )


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
    return Catalog(raw.catalog_date, raw.currency, models, gpus, dict(raw.gpu_aliases))


def _merge_model(base: ModelPrice, spec: ModelPriceSpec) -> ModelPrice:
    given: dict[str, Any] = spec.model_dump(exclude_none=True, exclude={"finetune"})
    merged = replace(base, **given)
    if spec.finetune is not None:
        old = base.finetune
        ft: FinetunePriceSpec = spec.finetune
        merged = replace(
            merged,
            finetune=FinetunePrice(
                ft.training_per_1m,
                ft.input_per_1m if ft.input_per_1m is not None else (old.input_per_1m if old else None),
                ft.cached_input_per_1m if ft.cached_input_per_1m is not None else (old.cached_input_per_1m if old else None),
                ft.output_per_1m if ft.output_per_1m is not None else (old.output_per_1m if old else None),
            ),
        )
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
    return Catalog(cat.date, cat.currency, models, gpus, cat.aliases)
