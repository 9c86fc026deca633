"""What a climb measured (backend, model, hardware) and the machine its throughput is priced on.

Accuracy and price in one verdict must belong to the same model. So a rung is priced as what
was measured: a climb on this machine (the local backend, or the scripted test double) is priced
self-hosted, its measured examples/s on a machine like the one it ran on; a climb against an
OpenAI-compatible endpoint is priced at that model's list prices when the catalog has them.

The machine, in order: ``economics.self_host_usd_per_hour``; ``economics.self_host_gpu``; the
GPU the climb ran on when the catalog prices it; a stand-in GPU for the model's size when it
does not (the cheapest catalog GPU whose memory holds the bf16 weights twice over); the climb's
CPUs at the catalog's vCPU-hour rate when it ran on CPUs.

Example:
    >>> m = Measured.from_model_id("openai:gpt-4o-mini@api.openai.com")
    >>> m.on_endpoint, m.served_model
    (True, 'gpt-4o-mini')
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from rungwise.config.economics import EconomicsSpec
from rungwise.prices.catalog import Catalog, Gpu

#: Backends whose answers come from a remote endpoint (priced per token, not per machine-hour).
ENDPOINT_BACKENDS = frozenset({"openai"})
#: bf16 weights take 2 bytes a parameter; twice that leaves room for the KV cache and activations.
BYTES_PER_PARAM_SERVED = 4


@dataclass(frozen=True)
class Measured:
    """What answered the climb: its backend, the model id the run store keeps, and the hardware.

    ``device`` is ``cpu``, ``cuda`` (or another torch device type), or empty when unknown (a run
    stored before rungwise recorded it); ``cpus`` the logical CPUs the climb could use;
    ``params`` the model's parameter count where known.
    """

    backend: str
    model: str
    device: str = ""
    accelerator: str = ""
    cpus: int = 0
    params: int = 0

    @classmethod
    def from_model_id(cls, model_id: str, **hardware: Any) -> Measured:
        """From the run store's ``model_id`` (``local:...``, ``openai:<model>@<url>``, ``scripted:...``)."""
        backend = model_id.split(":", 1)[0]  # "local:...", "openai:...", or a bare "scripted"
        return cls(backend, model_id, **hardware)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measured:
        return cls(**{k: d[k] for k in ("backend", "model", "device", "accelerator", "cpus", "params") if k in d})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def on_endpoint(self) -> bool:
        return self.backend in ENDPOINT_BACKENDS

    @property
    def served_model(self) -> str:
        """The model name an endpoint served (``openai:gpt-4o-mini@host`` -> ``gpt-4o-mini``)."""
        rest = self.model.split(":", 1)[-1]
        return rest.rsplit("@", 1)[0] if self.on_endpoint else rest

    def hardware(self) -> str:
        """'2 CPUs', 'NVIDIA H100 80GB HBM3', or 'hardware not recorded'."""
        if self.device and self.device != "cpu":
            return self.accelerator or self.device
        if self.device == "cpu" and self.cpus:
            return f"{self.cpus} CPUs"
        return "hardware not recorded"


@dataclass(frozen=True)
class Machine:
    """The machine self-hosting is priced on: its hourly price (and public range) and why it was chosen."""

    label: str
    usd_per_hour: float
    usd_per_hour_range: tuple[float, float] | None
    basis: str
    price_date: str = ""  # when its price was read ("" = the user's own price)


def default_gpu(cat: Catalog, params: int) -> Gpu:
    """The cheapest catalog GPU (middle of its price range) whose memory holds the model's bf16
    weights twice over; the largest GPU when none does; the cheapest when the size is unknown.

    >>> from rungwise.prices.catalog import load_catalog
    >>> default_gpu(load_catalog(), 135_000_000).key, default_gpu(load_catalog(), 7_000_000_000).key
    ('t4', 'l40s')
    """
    need_gb = params * BYTES_PER_PARAM_SERVED / 1e9
    fits = [g for g in cat.gpus.values() if g.memory_gb >= need_gb and g.offers]
    if not fits:
        return max(cat.gpus.values(), key=lambda g: g.memory_gb)
    return min(fits, key=lambda g: (g.price_mid, g.memory_gb))


def _size(params: int) -> str:
    return f"{params / 1e9:.2g}B-parameter" if params >= 1e9 else f"{params / 1e6:.0f}M-parameter"


def gpu_rule(cat: Catalog, params: int) -> tuple[Gpu, str]:
    """The stand-in GPU for a model of ``params`` parameters, and the rule in words."""
    g = default_gpu(cat, params)
    if params:
        why = (f"{g.key}: the cheapest catalog GPU whose memory holds the {_size(params)} model's bf16 weights "
               "twice over")
    else:
        why = f"{g.key}: the cheapest catalog GPU (model size not recorded)"
    return g, why


def _match_gpu(cat: Catalog, accelerator: str) -> Gpu | None:
    """The catalog GPU a device name denotes ('NVIDIA L4' -> l4), when exactly one matches."""
    name = accelerator.lower().replace("nvidia", "").replace("tesla", "")
    words = set(name.replace("-", " ").split())
    hits = [g for g in cat.gpus.values() if g.key.split("-", 1)[0] in words]
    if len(hits) > 1:  # a100-40gb vs a100-80gb, h100-pcie vs h100-sxm: use the memory or form factor
        narrowed = [g for g in hits if any(part in name for part in g.key.split("-")[1:])]
        hits = narrowed or hits[:1]
    return hits[0] if len(hits) == 1 else None


def _range(lo: float, hi: float) -> str:
    return f" (${lo:.2f}-{hi:.2f})" if hi > lo else ""


def self_host_machine(measured: Measured | None, econ: EconomicsSpec, cat: Catalog) -> Machine | None:
    """The machine the measured throughput is priced on, or None (an endpoint's model: priced per token).

    Example:
        >>> from rungwise.prices.catalog import load_catalog
        >>> m = self_host_machine(Measured("local", "local:x", "cpu", cpus=2), EconomicsSpec(), load_catalog())
        >>> m.label
        '2 vCPUs @ $0.08/h'
    """
    if econ.self_host_usd_per_hour:
        p = econ.self_host_usd_per_hour
        return Machine(f"your machine @ ${p:g}/h", p, None, f"economics.self_host_usd_per_hour = ${p:g}/h")
    if econ.self_host_gpu:
        g = cat.gpu(econ.self_host_gpu)
        lo, hi = g.price_range
        return Machine(f"{g.key} @ ${g.price_mid:.2f}/h" + _range(lo, hi), g.price_mid, (lo, hi),
                       f"economics.self_host_gpu = {g.key}", min(o.date for o in g.offers))
    if measured is None or measured.on_endpoint:
        return None
    if measured.device and measured.device != "cpu":
        g = _match_gpu(cat, measured.accelerator) if measured.accelerator else None
        where = measured.accelerator or measured.device
        if g is not None:
            basis = f"throughput measured on {where}, priced at the catalog's {g.key} on-demand range"
        else:
            g, why = gpu_rule(cat, measured.params)
            basis = (f"throughput measured on {where}, which the catalog does not price: priced at {why}, as a "
                     "stand-in (set economics.self_host_usd_per_hour to your machine's price)")
        lo, hi = g.price_range
        return Machine(f"{g.key} @ ${g.price_mid:.2f}/h" + _range(lo, hi), g.price_mid, (lo, hi), basis,
                       min(o.date for o in g.offers))
    rate = cat.cpu
    if rate is None:
        return None
    cpus = measured.cpus or os.cpu_count() or 1
    lo, hi = rate.price_range
    how = "" if measured.cpus else " (this machine's count: none recorded with the run)"
    basis = (f"the climb's throughput on {cpus} CPUs{how}, priced as {cpus} cloud vCPUs at ${rate.price_mid:.4f}/vCPU-hour "
             f"(${lo:.4f}-{hi:.4f}: " + ", ".join(f"{o.provider} {o.instance}" for o in rate.offers) + " on-demand)")
    return Machine(f"{cpus} vCPUs @ ${cpus * rate.price_mid:.2f}/h", cpus * rate.price_mid, (cpus * lo, cpus * hi),
                   basis, rate.date)
