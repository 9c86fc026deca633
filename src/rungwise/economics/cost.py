"""Cost of every rung at the task's volume, fine-tuning's one-off costs, and break-even.

All money is USD. A rung is priced as what was measured (:mod:`rungwise.economics.machine`):

- **self-hosted** (a climb on this machine: the local backend): the measured throughput
  (examples/s) on a machine billed by the hour, by default one like the machine the climb ran
  on; a server runs all month whether busy or not, so cost per call falls as volume rises;
- **hosted** (a climb against an OpenAI-compatible endpoint whose model is in the catalog): its
  measured tokens per call at that model's list prices (fine-tune rungs at its fine-tuned-model
  prices), with the prompt-caching discount on the shared prefix when the prompt is long enough
  to be cached and requests arrive often enough for the cache to stay warm;
- **what-if** (``economics.price_model`` when it is not the measured model): the same token
  counts at another hosted model's prices. It is shown, labelled, and never picked as a rung's
  best deployment, because that model's accuracy was not measured.

Offers a new customer cannot buy on the pricing date (``economics.as_of``, default today) are
left out with the reason and the alternatives that remain (:class:`~rungwise.economics.basis.LeftOut`).

Fine-tune rungs add a one-off cost (training + labeling) amortized over ``horizon_days`` and a
recurring retraining cost. :func:`break_even` finds the daily volume at which a fine-tuned rung
becomes cheaper than a prompting rung, and the days it needs to pay its one-off back.

Example:
    >>> costs = price_rungs(climb_result.rungs, task)  # doctest: +SKIP
    >>> costs[0].hosted.per_call()  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rungwise.config.economics import DEFAULT_DAILY_VOLUME, EconomicsSpec
from rungwise.config.task import Task
from rungwise.economics.basis import LeftOut, PricingBasis, pricing_date
from rungwise.economics.machine import Machine, Measured, gpu_rule, self_host_machine
from rungwise.errors import ConfigError
from rungwise.prices.catalog import Catalog, ModelPrice, load_catalog
from rungwise.types import PROMPT, RungKind, RungResult, TrainingRecord

DAYS_PER_MONTH = 365 / 12
HOURS_PER_MONTH = 24 * DAYS_PER_MONTH
SECONDS_PER_DAY = 86_400

# Requirements-change cadence (factors.update_frequency) -> days between retrainings.
UPDATE_DAYS = {"daily": 1, "weekly": 7, "monthly": 30, "quarterly": 91, "yearly": 365, "stable": None}

def cache_hit_rate(daily_volume: float, ttl_s: float) -> float:
    """Share of requests that find the shared prefix still cached.

    With requests arriving at random (Poisson) at ``daily_volume`` per day, the prefix is still
    cached when the previous request came less than ``ttl_s`` ago: ``1 - exp(-rate * ttl)``.

    >>> round(cache_hit_rate(1000, 300), 3), round(cache_hit_rate(100, 300), 3)
    (0.969, 0.293)
    """
    if daily_volume <= 0:
        return 0.0
    return 1.0 - math.exp(-daily_volume / SECONDS_PER_DAY * ttl_s)


@dataclass(frozen=True)
class TokenProfile:
    """What one call of a rung consumes: mean prompt, cacheable-prefix and completion tokens,
    measured throughput, what the rung is (its kind), and what training it took."""

    rung: str
    prompt_tokens: float
    cached_tokens: float
    completion_tokens: float
    examples_per_s: float = 0.0
    kind: RungKind = PROMPT
    training: TrainingRecord | None = None
    estimated: bool = False  # True when tokens come from `estimate`, not a measured climb

    @classmethod
    def from_result(cls, r: RungResult) -> TokenProfile:
        return cls(
            r.rung, r.mean_prompt_tokens, r.mean_cached_tokens, r.mean_completion_tokens, r.examples_per_s,
            r.kind, r.training,
        )


@dataclass
class OneOff:
    """One-off and recurring costs of a fine-tuned rung under one deployment."""

    training_usd: float
    training_basis: str
    labeling_usd: float
    labeling_basis: str
    retrain_every_days: int | None
    retrain_usd: float  # each retraining: compute + new labels

    @property
    def initial_usd(self) -> float:
        return self.training_usd + self.labeling_usd

    def retrain_per_month(self) -> float:
        if not self.retrain_every_days:
            return 0.0
        return self.retrain_usd * DAYS_PER_MONTH / self.retrain_every_days

    def amortized_per_month(self, horizon_days: int) -> float:
        """Initial cost spread over the horizon, plus retraining."""
        return self.initial_usd * DAYS_PER_MONTH / horizon_days + self.retrain_per_month()


@dataclass
class Deployment:
    """One way to serve a rung, able to price any daily volume.

    Hosted: ``price`` and the token profile; the cost per call depends on volume only through
    the cache hit rate. Self-hosted: ``usd_per_hour`` for one machine that serves
    ``capacity_per_day`` requests at the target utilization; whole machines run all month.
    """

    mode: Literal["hosted", "self_hosted"]
    label: str
    tokens: TokenProfile
    price: ModelPrice | None = None
    caching: bool = True
    usd_per_hour: float = 0.0
    usd_per_hour_range: tuple[float, float] | None = None
    capacity_per_day: float = 0.0
    one_off: OneOff | None = None
    notes: list[str] = field(default_factory=list)
    what_if: bool = False  # another model's prices for these token counts: shown, never picked

    # -- hosted ---------------------------------------------------------------------------
    def cacheable(self) -> bool:
        p = self.price
        return bool(
            self.caching and p is not None and p.cached_input_per_1m is not None and self.tokens.cached_tokens > 0
            and self.tokens.prompt_tokens >= p.cache_min_tokens
        )

    def breakdown(self, daily_volume: float) -> dict[str, float]:
        """$ per call by component at this volume (hosted: input/cached/output; self-hosted: server)."""
        if self.mode == "self_hosted":
            return {"server": self.monthly(daily_volume) / max(daily_volume * DAYS_PER_MONTH, 1e-9)}
        p = self.price
        assert p is not None
        t = self.tokens
        uncached = t.prompt_tokens
        cached_cost = 0.0
        if self.cacheable():
            hit = cache_hit_rate(daily_volume, p.cache_ttl_s)
            uncached = t.prompt_tokens - t.cached_tokens
            miss_price = p.cache_write_per_1m if p.cache_write_per_1m is not None else p.input_per_1m
            cached_cost = t.cached_tokens * (hit * p.cached_input_per_1m + (1 - hit) * miss_price) / 1e6  # type: ignore[operator]
        return {
            "input": uncached * p.input_per_1m / 1e6,
            "cached_input": cached_cost,
            "output": t.completion_tokens * p.output_per_1m / 1e6,
        }

    def hit_rate(self, daily_volume: float) -> float:
        return cache_hit_rate(daily_volume, self.price.cache_ttl_s) if self.cacheable() and self.price else 0.0

    # -- both -----------------------------------------------------------------------------
    def replicas(self, daily_volume: float) -> int:
        """Self-hosted machines needed (at least one: a deployed server runs all day)."""
        if self.mode != "self_hosted":
            return 0
        return max(1, math.ceil(daily_volume / self.capacity_per_day))

    def monthly(self, daily_volume: float) -> float:
        """Running cost per month at this volume, without one-off costs."""
        if self.mode == "self_hosted":
            return self.replicas(daily_volume) * self.usd_per_hour * HOURS_PER_MONTH
        return sum(self.breakdown(daily_volume).values()) * daily_volume * DAYS_PER_MONTH

    def per_call(self, daily_volume: float) -> float:
        """$ per request at this volume (self-hosted includes idle capacity)."""
        if self.mode == "self_hosted":
            return self.monthly(daily_volume) / max(daily_volume * DAYS_PER_MONTH, 1e-9)
        return sum(self.breakdown(daily_volume).values())

    def total_monthly(self, daily_volume: float, horizon_days: int) -> float:
        """Running cost plus amortized one-off and retraining costs, per month."""
        extra = self.one_off.amortized_per_month(horizon_days) if self.one_off else 0.0
        return self.monthly(daily_volume) + extra

    def monthly_range(self, daily_volume: float) -> tuple[float, float]:
        """Self-hosted: running cost at the cheapest and dearest public offer."""
        if self.mode != "self_hosted" or not self.usd_per_hour_range:
            m = self.monthly(daily_volume)
            return (m, m)
        n = self.replicas(daily_volume) * HOURS_PER_MONTH
        return (n * self.usd_per_hour_range[0], n * self.usd_per_hour_range[1])


@dataclass
class RungCost:
    """Every price of one rung at the task's volume. ``best()`` is its cheapest deployment of the
    measured model; ``what_if`` (another model's prices) is kept apart and only counted when asked."""

    rung: str
    kind: RungKind
    tokens: TokenProfile
    daily_volume: int
    horizon_days: int
    hosted: Deployment | None = None
    self_hosted: Deployment | None = None
    what_if: Deployment | None = None
    notes: list[str] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    basis: PricingBasis | None = None

    @property
    def options(self) -> list[Deployment]:
        """The measured model's deployments (never the what-if)."""
        return [d for d in (self.hosted, self.self_hosted) if d is not None]

    def best(self, daily_volume: float | None = None, *, what_if: bool = False) -> Deployment | None:
        """The deployment with the lowest total monthly cost at this volume (default: the task's);
        ``what_if`` falls back to the what-if deployment when the measured model has no price."""
        v = self.daily_volume if daily_volume is None else daily_volume
        opts = self.options or ([self.what_if] if what_if and self.what_if else [])
        return min(opts, key=lambda d: d.total_monthly(v, self.horizon_days)) if opts else None

    def total_monthly(self, daily_volume: float | None = None, *, what_if: bool = False) -> float | None:
        """Cheapest total monthly cost (running + amortized one-off) at this volume."""
        v = self.daily_volume if daily_volume is None else daily_volume
        b = self.best(v, what_if=what_if)
        return b.total_monthly(v, self.horizon_days) if b else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary at the task's volume (for the report and `--json`)."""
        v = self.daily_volume

        def dep(d: Deployment | None) -> dict[str, Any] | None:
            if d is None:
                return None
            out: dict[str, Any] = {
                "mode": d.mode, "label": d.label, "what_if": d.what_if,
                "per_call_usd": d.per_call(v), "per_1k_usd": 1000 * d.per_call(v),
                "monthly_usd": d.monthly(v), "total_monthly_usd": d.total_monthly(v, self.horizon_days),
                "breakdown_usd": d.breakdown(v), "notes": list(d.notes),
            }
            if d.mode == "hosted":
                out["cache_hit_rate"] = d.hit_rate(v)
            else:
                out.update(replicas=d.replicas(v), usd_per_hour=d.usd_per_hour, capacity_per_day=d.capacity_per_day,
                           monthly_range_usd=list(d.monthly_range(v)))
            if d.one_off:
                o = d.one_off
                out["one_off"] = {
                    "training_usd": o.training_usd, "training_basis": o.training_basis,
                    "labeling_usd": o.labeling_usd, "labeling_basis": o.labeling_basis,
                    "retrain_every_days": o.retrain_every_days, "retrain_usd": o.retrain_usd,
                    "initial_usd": o.initial_usd, "amortized_monthly_usd": o.amortized_per_month(self.horizon_days),
                }
            return out

        best = self.best()
        return {
            "rung": self.rung, "kind": self.kind.name, "daily_volume": v, "horizon_days": self.horizon_days,
            "tokens": {"prompt": self.tokens.prompt_tokens, "cached": self.tokens.cached_tokens,
                       "completion": self.tokens.completion_tokens, "estimated": self.tokens.estimated},
            "examples_per_s": self.tokens.examples_per_s,
            "hosted": dep(self.hosted), "self_hosted": dep(self.self_hosted), "what_if": dep(self.what_if),
            "best": best.mode if best else None, "total_monthly_usd": self.total_monthly(),
            "notes": list(self.notes), "left_out": [x.sentence() for x in self.left_out],
        }


def daily_volume_of(task: Task) -> tuple[int, bool]:
    """The task's daily volume and whether it was given (False: the default was assumed).

    ``factors.daily_volume`` and ``economics.daily_volume`` mean the same number; if both are
    set they must agree.
    """
    econ = task.economics
    fv = task.factors.daily_volume
    ev = econ.daily_volume
    if fv is not None and ev is not None and fv != ev:
        raise ConfigError(
            f"factors.daily_volume ({fv}) and economics.daily_volume ({ev}) disagree",
            hint="give the daily volume once (economics.daily_volume), or make the two equal",
        )
    v = ev if ev is not None else fv
    return (int(v), True) if v is not None else (DEFAULT_DAILY_VOLUME, False)


def with_overrides(
    task: Task, daily_volume: int | None = None, price_model: str | None = None, as_of: dt.date | None = None
) -> Task:
    """A copy of ``task`` priced at another volume, what-if model or date (the file is untouched).

    Both spellings of the volume (economics and factors) are kept equal.
    """
    upd: dict[str, Any] = {}
    if daily_volume is not None:
        upd["daily_volume"] = daily_volume
    if price_model is not None:
        upd["price_model"] = price_model
    if as_of is not None:
        upd["as_of"] = as_of
    if not upd:
        return task
    new = task.model_copy(update={"economics": task.economics.model_copy(update=upd)})
    if daily_volume is not None and task.factors.daily_volume is not None:
        new = new.model_copy(update={"factors": task.factors.model_copy(update={"daily_volume": daily_volume})})
    return new


def retrain_days_of(task: Task) -> int | None:
    """Days between retrainings: economics.retrain_every_days, else from factors.update_frequency."""
    econ = task.economics
    if econ.retrain_every_days:
        return econ.retrain_every_days
    freq = task.factors.update_frequency
    return UPDATE_DAYS.get(freq) if freq else None


def _train_tokens(t: TokenProfile) -> tuple[float | None, float, str]:
    """Training tokens per epoch, epochs, and how the tokens are known."""
    tr = t.training
    if tr is None or not (tr.tokens or tr.examples):  # e.g. an adapter trained elsewhere, nothing entered
        return None, 1.0, ""
    epochs = tr.epochs or 1.0
    if tr.tokens:
        return float(tr.tokens), epochs, "estimated" if t.estimated else "measured"
    # One example = its prompt without the shared prefix + the answer.
    per = max(t.prompt_tokens - t.cached_tokens, 1) + t.completion_tokens
    return float(tr.examples) * per, epochs, f"estimated as {tr.examples} examples x {per:.0f} tokens"


def _labeling(t: TokenProfile, econ: EconomicsSpec, clean_examples: int | None) -> tuple[float, str]:
    n = (t.training.examples if t.training else None) or clean_examples
    if not econ.labeling_cost_per_example:
        return 0.0, "no labeling cost set (economics.labeling_cost_per_example)"
    if not n:
        return 0.0, "number of training examples unknown: labeling not costed"
    return econ.labeling_cost_per_example * int(n), f"{int(n)} examples x ${econ.labeling_cost_per_example:g}"


def _fmt_tokens(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,.0f}"


def measured_of_task(task: Task) -> Measured:
    """What a climb of ``task`` would measure, before any run (backend and model; hardware unknown)."""
    return Measured(task.model.backend, f"{task.model.backend}:{task.model.id}")


def _hosted_alternatives(cat: Catalog, as_of: dt.date, provider: str, machine: Machine | None) -> list[str]:
    """What remains when a hosted model cannot be bought: self-hosting, then open hosted models
    (the same provider's first), cheapest input first."""
    out = [f"self-hosted on {machine.label} (priced here)"] if machine else []
    open_models = [m for m in cat.models.values() if m.availability.open_to_new(as_of)]
    open_models.sort(key=lambda m: (m.provider != provider, m.input_per_1m))
    out += [f"{m.key} (hosted, ${m.input_per_1m:g}/${m.output_per_1m:g} per 1M in/out)" for m in open_models[:3]]
    return out


def _finetune_alternatives(
    cat: Catalog, as_of: dt.date, rung: str, machine: Machine | None, params: int
) -> list[str]:
    """What remains when a provider's fine-tuning cannot be bought: a self-hosted LoRA (this
    rung's own, on the priced machine, or on a GPU for the model's size), then other providers'
    fine-tuning offers a new customer can buy on ``as_of``."""
    if machine is not None:
        out = [f"self-hosted LoRA: {rung}'s own adapter, trained and served on {machine.label} (priced here)"]
    else:
        g, why = gpu_rule(cat, params)
        out = [f"self-hosted LoRA on {g.key} at ${g.price_mid:.2f}/h ({why})"]
    for m in cat.models.values():
        ft = m.finetune
        if ft is None or not (ft.availability.open_to_new(as_of) and m.availability.open_to_new(as_of)):
            continue
        price = (f"${ft.training_per_1m:g} per 1M training tokens" if ft.training_per_1m is not None
                 else "price not in the catalog")
        out.append(f"{m.key} fine-tuning ({ft.availability.describe(as_of)}; {price})")
    return out


@dataclass
class _Pricing:
    """What every rung of one pricing shares: volume, dates, prices, the machine, and the basis."""

    econ: EconomicsSpec
    cat: Catalog
    vol: int
    as_of: dt.date
    measured: Measured | None
    hosted_price: ModelPrice | None  # the measured model's own prices (an endpoint in the catalog)
    what_if_price: ModelPrice | None  # price_model, when it is not the measured model
    machine: Machine | None
    retrain_days: int | None
    clean: int | None
    basis: PricingBasis


def _hosted(pr: _Pricing, rc: RungCost, t: TokenProfile, base: ModelPrice, *, what_if: bool) -> Deployment | None:
    """The rung on ``base``'s hosted prices, or None with the reason in ``rc`` (left out or unpriced)."""
    econ, vol, as_of = pr.econ, pr.vol, pr.as_of
    kind = "what-if" if what_if else "hosted"
    if not base.availability.open_to_new(as_of):
        item = LeftOut(f"{kind} {base.key}", f"{base.availability.describe(as_of)} ({base.availability.source})",
                       _hosted_alternatives(pr.cat, as_of, base.provider, pr.machine))
        rc.left_out.append(item)
        pr.basis.leave_out(item)
        return None
    price: ModelPrice | None = base
    if t.kind.trains_weights:
        ft = base.finetune
        if ft is not None and not ft.availability.open_to_new(as_of):
            params = pr.measured.params if pr.measured else 0
            item = LeftOut(f"{base.provider}'s hosted fine-tuning of {base.key}",
                           f"{ft.availability.describe(as_of)} ({ft.availability.source})",
                           _finetune_alternatives(pr.cat, as_of, t.rung, pr.machine, params))
            rc.left_out.append(item)
            pr.basis.leave_out(item)
            return None
        price = base.finetuned()
        if price is None:
            where = f" (sold only through {ft.availability.channel})" if ft and ft.availability.channel else ""
            rc.notes.append(f"{base.key} lists no fine-tuned inference price{where}: {kind} cost of this rung unknown")
            return None
    label = f"what-if: these token counts on {price.key}" if what_if else price.key
    d = Deployment("hosted", label, t, price=price, caching=econ.caching, what_if=what_if)
    pr.basis.use(base.key, base.read_date, base.source)
    if econ.caching and t.cached_tokens > 0 and price.cached_input_per_1m is not None and not d.cacheable():
        d.notes.append(
            f"prompt of {t.prompt_tokens:.0f} tokens is below {price.provider}'s {price.cache_min_tokens}-token "
            "caching minimum: no cache discount"
        )
    elif d.cacheable():
        d.notes.append(
            f"{t.cached_tokens:.0f} shared-prefix tokens cached; warm-cache rate {d.hit_rate(vol):.0%} at "
            f"{vol:,}/day ({price.cache_ttl_s:.0f} s cache lifetime)"
        )
    if t.kind.trains_weights:
        tok, epochs, how = _train_tokens(t)
        lab, lab_basis = _labeling(t, econ, pr.clean)
        per_1m = base.finetune.training_per_1m if base.finetune else None
        if tok is None or per_1m is None:
            d.notes.append("training tokens or the training price unknown: training cost unknown")
            train, basis = 0.0, "unknown"
        else:
            train = tok * epochs * per_1m / 1e6
            basis = f"{_fmt_tokens(tok)} tokens x {epochs:g} epochs x ${per_1m:g}/1M ({base.key}; tokens {how})"
        new_lab = econ.new_examples_per_retrain * econ.labeling_cost_per_example
        d.one_off = OneOff(train, basis, lab, lab_basis, pr.retrain_days, train + new_lab)
    return d


def _self_hosted(pr: _Pricing, rc: RungCost, t: TokenProfile) -> Deployment | None:
    """The rung on the priced machine from its measured throughput, or None with the reason."""
    m = pr.machine
    if m is None:
        return None
    econ = pr.econ
    if t.examples_per_s <= 0:
        rc.notes.append("no measured throughput: self-hosted cost unknown (climb to measure it)")
        return None
    cap = t.examples_per_s * SECONDS_PER_DAY * econ.self_host_utilization
    d = Deployment("self_hosted", m.label, t, usd_per_hour=m.usd_per_hour, usd_per_hour_range=m.usd_per_hour_range,
                   capacity_per_day=cap)
    d.notes.append(
        f"{t.examples_per_s:.2f} examples/s measured; one server handles {cap:,.0f}/day at "
        f"{econ.self_host_utilization:.0%} utilization"
    )
    if t.kind.trains_weights:
        lab, lab_basis = _labeling(t, econ, pr.clean)
        tr = t.training
        if tr is not None and tr.usd is not None:
            train, basis = tr.usd, "the training cost you entered"
        elif tr is not None and tr.seconds:
            train = tr.seconds / 3600 * tr.devices * m.usd_per_hour
            basis = f"{tr.seconds / 3600:.2f} h x {tr.devices} device(s) x ${m.usd_per_hour:.2f}/h (measured training time)"
        else:
            train, basis = 0.0, "unknown"
            d.notes.append("training time not recorded with the rung: training cost unknown")
        new_lab = econ.new_examples_per_retrain * econ.labeling_cost_per_example
        d.one_off = OneOff(train, basis, lab, lab_basis, pr.retrain_days, train + new_lab)
    return d


def _setup(task: Task, cat: Catalog, vol: int, price_model: str | None, measured: Measured | None,
           as_of: dt.date | None) -> _Pricing:
    econ = task.economics
    when = pricing_date(econ, as_of)
    basis = PricingBasis(when, cat, econ.max_price_age_days)
    hosted_price = cat.find_model(measured.served_model) if measured and measured.on_endpoint else None
    what_if = cat.model(price_model or econ.price_model)
    if hosted_price is not None and what_if.key == hosted_price.key:
        what_if = None
    machine = self_host_machine(measured, econ, cat)
    if machine is not None:
        basis.assume("self-hosted: " + machine.basis)
        if machine.price_date:
            basis.use(f"self-hosting ({machine.label.split(' @')[0]})", machine.price_date,
                      "economics.self_host_gpu" if econ.self_host_gpu else "catalog cpu/gpu offers")
    if measured is not None and measured.on_endpoint:
        basis.assume(f"hosted: the measured endpoint model {measured.served_model} "
                     + (f"at {hosted_price.key}'s list prices" if hosted_price else
                        "is not in the catalog (add its prices under economics.prices.models, or set "
                        "economics.self_host_usd_per_hour for the machine serving it)"))
    if what_if is not None:
        basis.assume(f"what-if: the measured token counts on {what_if.key}, another model than the one measured "
                     "(shown for comparison, never picked)")
    return _Pricing(econ, cat, vol, when, measured, hosted_price, what_if, machine, retrain_days_of(task),
                    task.factors.clean_examples, basis)


def price_profiles(
    profiles: Sequence[TokenProfile],
    task: Task,
    *,
    catalog: Catalog | None = None,
    daily_volume: int | None = None,
    price_model: str | None = None,
    measured: Measured | None = None,
    as_of: dt.date | None = None,
) -> list[RungCost]:
    """Price token profiles (measured or estimated) for ``task``; see :func:`price_rungs`."""
    econ = task.economics
    cat = catalog or load_catalog(econ.prices)
    vol, _given = daily_volume_of(task)
    if daily_volume is not None:
        vol = daily_volume
    pr = _setup(task, cat, vol, price_model, measured if measured is not None else measured_of_task(task), as_of)
    out: list[RungCost] = []
    for t in profiles:
        rc = RungCost(t.rung, t.kind, t, vol, econ.horizon_days, basis=pr.basis)
        if t.estimated:
            rc.notes.append("tokens estimated from the task's data (about 4 characters per token); climb to measure")
        if not t.kind.uses_llm:
            rc.notes.append("answers without a language model (no tokens): priced self-hosted from its measured "
                            "throughput only")
        else:
            if pr.hosted_price is not None:
                rc.hosted = _hosted(pr, rc, t, pr.hosted_price, what_if=False)
            if pr.what_if_price is not None:
                rc.what_if = _hosted(pr, rc, t, pr.what_if_price, what_if=True)
        rc.self_hosted = _self_hosted(pr, rc, t)
        out.append(rc)
    return out


def price_rungs(
    results: Sequence[RungResult],
    task: Task,
    *,
    catalog: Catalog | None = None,
    daily_volume: int | None = None,
    price_model: str | None = None,
    measured: Measured | None = None,
    as_of: dt.date | None = None,
) -> list[RungCost]:
    """Price every measured rung at the task's daily volume, as what was measured.

    ``task`` is a :class:`rungwise.config.task.Task` (its ``economics`` and ``factors`` are used);
    ``measured`` says what answered the climb (default: the task's backend and model, hardware
    unknown); ``daily_volume``, ``price_model`` (the what-if) and ``as_of`` (the pricing date)
    override the task's.

    Example:
        >>> costs = price_rungs(climb_result.rungs, task, measured=climb_result.measured)  # doctest: +SKIP
        >>> [round(c.total_monthly(), 2) for c in costs]  # doctest: +SKIP
    """
    return price_profiles([TokenProfile.from_result(r) for r in results], task, catalog=catalog,
                          daily_volume=daily_volume, price_model=price_model, measured=measured, as_of=as_of)


# --------------------------------------------------------------------------------- break-even
@dataclass
class BreakEven:
    """When a fine-tuned rung becomes cheaper than a prompting rung.

    ``volume_per_day``: the smallest daily volume at which the fine-tuned rung's total monthly
    cost (running + amortized one-off + retraining) is no higher than the other's; None when it
    never is up to 100M/day. ``payback_days``: at the task's volume, days for the monthly
    saving (after retraining) to repay the initial one-off; None when there is no saving.
    """

    finetune: str
    against: str
    volume_per_day: float | None
    payback_days: float | None
    initial_usd: float
    monthly_saving_usd: float
    daily_volume: int
    what_if: bool = False  # computed on what-if prices (another model than the one measured)

    def sentence(self) -> str:
        """One line for reasons and reports."""
        pre = "what-if prices: " if self.what_if else ""
        if self.volume_per_day is None:
            return (f"{pre}{self.finetune} never becomes cheaper than {self.against} (its cost per call is not low "
                    "enough to repay training and retraining)")
        s = f"{pre}{self.finetune} becomes cheaper than {self.against} above {self.volume_per_day:,.0f} requests/day"
        if self.payback_days is not None:
            s += (f"; at {self.daily_volume:,}/day it saves ${self.monthly_saving_usd:,.2f}/month and repays its "
                  f"${self.initial_usd:,.2f} one-off in {self.payback_days:,.0f} days")
        else:
            s += f"; at {self.daily_volume:,}/day it saves nothing"
        return s

    def to_dict(self) -> dict[str, Any]:
        return {"finetune": self.finetune, "against": self.against, "volume_per_day": self.volume_per_day,
                "payback_days": self.payback_days, "initial_usd": self.initial_usd,
                "monthly_saving_usd": self.monthly_saving_usd, "daily_volume": self.daily_volume,
                "what_if": self.what_if, "sentence": self.sentence()}



def break_even(ft: RungCost, other: RungCost, *, what_if: bool = False) -> BreakEven | None:
    """Break-even daily volume and payback days of fine-tuned rung ``ft`` against ``other``.

    Each side uses its cheapest deployment at each volume, so a self-hosted server's monthly
    floor and a hosted API's linear cost are compared correctly. None when either side has no
    price. ``what_if``: use the what-if prices where the measured model has none (labelled so).

    Example: a fine-tuned model that saves $0.001 per call and cost $300 to build (over a
    365-day horizon, never retrained) breaks even at 300 / 365 / 0.001 = 822 requests/day.
    """
    if ft.best(what_if=what_if) is None or other.best(what_if=what_if) is None:
        return None

    def diff(v: float) -> float:
        return ft.total_monthly(v, what_if=what_if) - other.total_monthly(v, what_if=what_if)  # type: ignore[operator]

    # Log grid, then bisection in the first bracket where the fine-tuned rung is no dearer.
    grid = [10 ** (k / 40) for k in range(0, 321)]  # 1 .. 1e8
    found: float | None = None
    prev = 0.0
    for v in grid:
        if diff(v) <= 0:
            lo, hi = prev, v
            for _ in range(60):
                mid = (lo + hi) / 2
                if diff(mid) <= 0:
                    hi = mid
                else:
                    lo = mid
                if hi - lo < 0.5:
                    break
            found = hi
            break
        prev = v

    v0 = ft.daily_volume
    bf = ft.best(v0, what_if=what_if)
    bo = other.best(v0, what_if=what_if)
    assert bf is not None and bo is not None
    one = bf.one_off
    initial = one.initial_usd if one else 0.0
    saving = bo.monthly(v0) - bf.monthly(v0) - (one.retrain_per_month() if one else 0.0)
    payback = None
    if saving > 0:
        payback = initial / (saving / DAYS_PER_MONTH) if initial > 0 else 0.0
    return BreakEven(ft.rung, other.rung, found, payback, initial, saving, v0,
                     what_if=bf.what_if or bo.what_if)


def break_evens(costs: Sequence[RungCost], *, what_if: bool = False) -> list[BreakEven]:
    """Break-even of every fine-tuned rung against every prompting (and RAG) rung (``what_if``:
    on the what-if prices where the measured model has none)."""
    out = []
    for f in costs:
        if not f.kind.trains_weights:
            continue
        for o in costs:
            if o.kind.trains_weights:
                continue
            be = break_even(f, o, what_if=what_if)
            if be is not None:
                out.append(be)
    return out


def cost_curves(costs: Sequence[RungCost], volumes: Sequence[float] | None = None) -> dict[str, Any]:
    """Total monthly cost of each rung (cheapest deployment) over a range of daily volumes.

    The range spans 1/10 of the task's volume to 10x it, widened to include every break-even
    volume, so the chart shows where the lines cross.
    """
    if not costs:
        return {"volumes": [], "series": {}}
    v0 = max(costs[0].daily_volume, 1)
    if volumes is None:
        lo, hi = v0 / 10, v0 * 10
        for be in break_evens(costs):
            if be.volume_per_day:
                lo, hi = min(lo, be.volume_per_day / 3), max(hi, be.volume_per_day * 3)
        lo = max(lo, 1.0)
        n = 60
        volumes = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    series = {c.rung: [c.total_monthly(v) for v in volumes] for c in costs if c.best() is not None}
    return {"volumes": list(volumes), "series": series}
