"""Cost of every rung at the task's volume, fine-tuning's one-off costs, and break-even.

All money is USD. A rung is priced two ways where the inputs allow:

- **hosted**: its measured tokens per call at the list prices of ``economics.price_model``
  (fine-tune rungs at that provider's fine-tuned-model prices), with the prompt-caching discount
  on the shared prefix when the prompt is long enough to be cached and requests arrive often
  enough for the cache to stay warm;
- **self-hosted**: the measured throughput (examples/s) on a machine billed by the hour; a
  server runs all month whether busy or not, so cost per call falls as volume rises.

Fine-tune rungs add a one-off cost (training + labeling) amortized over ``horizon_days`` and a
recurring retraining cost. :func:`break_even` finds the daily volume at which a fine-tuned rung
becomes cheaper than a prompting rung, and the days it needs to pay its one-off back.

Example:
    >>> costs = price_rungs(climb_result.rungs, task)  # doctest: +SKIP
    >>> costs[0].hosted.per_call()  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rungwise.config.economics import DEFAULT_DAILY_VOLUME, EconomicsSpec
from rungwise.config.task import Task
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
    """Every price of one rung at the task's volume. ``best()`` is its cheapest deployment."""

    rung: str
    kind: RungKind
    tokens: TokenProfile
    daily_volume: int
    horizon_days: int
    hosted: Deployment | None = None
    self_hosted: Deployment | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def options(self) -> list[Deployment]:
        return [d for d in (self.hosted, self.self_hosted) if d is not None]

    def best(self, daily_volume: float | None = None) -> Deployment | None:
        """The deployment with the lowest total monthly cost at this volume (default: the task's)."""
        v = self.daily_volume if daily_volume is None else daily_volume
        opts = self.options
        return min(opts, key=lambda d: d.total_monthly(v, self.horizon_days)) if opts else None

    def total_monthly(self, daily_volume: float | None = None) -> float | None:
        """Cheapest total monthly cost (running + amortized one-off) at this volume."""
        v = self.daily_volume if daily_volume is None else daily_volume
        b = self.best(v)
        return b.total_monthly(v, self.horizon_days) if b else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary at the task's volume (for the report and `--json`)."""
        v = self.daily_volume

        def dep(d: Deployment | None) -> dict[str, Any] | None:
            if d is None:
                return None
            out: dict[str, Any] = {
                "mode": d.mode, "label": d.label, "per_call_usd": d.per_call(v), "per_1k_usd": 1000 * d.per_call(v),
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
            "hosted": dep(self.hosted), "self_hosted": dep(self.self_hosted),
            "best": best.mode if best else None, "total_monthly_usd": self.total_monthly(),
            "notes": list(self.notes),
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


def with_overrides(task: Task, daily_volume: int | None = None, price_model: str | None = None) -> Task:
    """A copy of ``task`` priced at another volume or model (what-if runs; the file is untouched).

    Both spellings of the volume (economics and factors) are kept equal.
    """
    upd: dict[str, Any] = {}
    if daily_volume is not None:
        upd["daily_volume"] = daily_volume
    if price_model is not None:
        upd["price_model"] = price_model
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
    if tr is None:
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


def price_profiles(
    profiles: Sequence[TokenProfile],
    task: Task,
    *,
    catalog: Catalog | None = None,
    daily_volume: int | None = None,
    price_model: str | None = None,
) -> list[RungCost]:
    """Price token profiles (measured or estimated) for ``task``; see :func:`price_rungs`."""
    econ = task.economics
    cat = catalog or load_catalog(econ.prices)
    vol, _given = daily_volume_of(task)
    if daily_volume is not None:
        vol = daily_volume
    base = cat.model(price_model or econ.price_model)
    ft_price = base.finetuned()
    retrain_days = retrain_days_of(task)
    clean = task.factors.clean_examples

    # Self-hosting: one hourly price for the machine the throughput was measured on.
    sh_price: float | None = None
    sh_range: tuple[float, float] | None = None
    sh_label = ""
    if econ.self_host_usd_per_hour:
        sh_price, sh_label = econ.self_host_usd_per_hour, f"your machine @ ${econ.self_host_usd_per_hour:g}/h"
    elif econ.self_host_gpu:
        g = cat.gpu(econ.self_host_gpu)
        sh_range, sh_price = g.price_range, g.price_mid
        lo, hi = sh_range
        sh_label = f"{g.key} @ ${sh_price:.2f}/h" + (f" (${lo:.2f}-{hi:.2f})" if hi > lo else "")

    out: list[RungCost] = []
    for t in profiles:
        rc = RungCost(t.rung, t.kind, t, vol, econ.horizon_days)
        if t.estimated:
            rc.notes.append("tokens estimated from the task's data (about 4 characters per token); climb to measure")
        # ---- hosted ----
        price = ft_price if t.kind.trains_weights else base
        if not t.kind.uses_llm:
            rc.notes.append("answers without a language model (no tokens): priced self-hosted from its measured "
                            "throughput only")
        elif price is None:
            rc.notes.append(f"{base.key} lists no fine-tuned inference price: hosted cost of this rung unknown")
        else:
            d = Deployment("hosted", price.key, t, price=price, caching=econ.caching)
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
                lab, lab_basis = _labeling(t, econ, clean)
                if tok is None or base.finetune is None:
                    d.notes.append("training tokens not recorded with the rung: training cost unknown")
                    train, basis = 0.0, "unknown"
                else:
                    train = tok * epochs * base.finetune.training_per_1m / 1e6
                    basis = (f"{_fmt_tokens(tok)} tokens x {epochs:g} epochs x ${base.finetune.training_per_1m:g}/1M "
                             f"({base.key}; tokens {how})")
                new_lab = econ.new_examples_per_retrain * econ.labeling_cost_per_example
                d.one_off = OneOff(train, basis, lab, lab_basis, retrain_days, train + new_lab)
            rc.hosted = d
        # ---- self-hosted ----
        if sh_price is not None:
            if t.examples_per_s <= 0:
                rc.notes.append("no measured throughput: self-hosted cost unknown")
            else:
                cap = t.examples_per_s * SECONDS_PER_DAY * econ.self_host_utilization
                d = Deployment("self_hosted", sh_label, t, usd_per_hour=sh_price, usd_per_hour_range=sh_range,
                               capacity_per_day=cap)
                d.notes.append(
                    f"{t.examples_per_s:.2f} examples/s measured; one server handles {cap:,.0f}/day at "
                    f"{econ.self_host_utilization:.0%} utilization"
                )
                if t.kind.trains_weights:
                    lab, lab_basis = _labeling(t, econ, clean)
                    secs = t.training.seconds if t.training else None
                    if secs:
                        devices = t.training.devices if t.training else 1
                        train = secs / 3600 * devices * sh_price
                        basis = f"{secs / 3600:.2f} h x {devices} device(s) x ${sh_price:.2f}/h (measured training time)"
                    else:
                        train, basis = 0.0, "unknown"
                        d.notes.append("training time not recorded with the rung: training cost unknown")
                    new_lab = econ.new_examples_per_retrain * econ.labeling_cost_per_example
                    d.one_off = OneOff(train, basis, lab, lab_basis, retrain_days, train + new_lab)
                rc.self_hosted = d
        out.append(rc)
    return out


def price_rungs(
    results: Sequence[RungResult],
    task: Task,
    *,
    catalog: Catalog | None = None,
    daily_volume: int | None = None,
    price_model: str | None = None,
) -> list[RungCost]:
    """Price every measured rung at the task's daily volume.

    ``task`` is a :class:`rungwise.config.task.Task` (its ``economics`` and ``factors`` are used);
    ``daily_volume`` and ``price_model`` override the task's for what-if runs.

    Example:
        >>> costs = price_rungs(climb_result.rungs, task, daily_volume=50_000)  # doctest: +SKIP
        >>> [round(c.total_monthly(), 2) for c in costs]  # doctest: +SKIP
    """
    return price_profiles([TokenProfile.from_result(r) for r in results], task, catalog=catalog,
                          daily_volume=daily_volume, price_model=price_model)


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

    def sentence(self) -> str:
        """One line for reasons and reports."""
        if self.volume_per_day is None:
            return (f"{self.finetune} never becomes cheaper than {self.against} (its cost per call is not lower "
                    "enough to repay training and retraining)")
        s = f"{self.finetune} becomes cheaper than {self.against} above {self.volume_per_day:,.0f} requests/day"
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
                "sentence": self.sentence()}



def break_even(ft: RungCost, other: RungCost) -> BreakEven | None:
    """Break-even daily volume and payback days of fine-tuned rung ``ft`` against ``other``.

    Each side uses its cheapest deployment at each volume, so a self-hosted server's monthly
    floor and a hosted API's linear cost are compared correctly. None when either side has no
    price.

    Example: a fine-tuned model that saves $0.001 per call and cost $300 to build (over a
    365-day horizon, never retrained) breaks even at 300 / 365 / 0.001 = 822 requests/day.
    """
    if ft.best() is None or other.best() is None:
        return None

    def diff(v: float) -> float:
        return ft.total_monthly(v) - other.total_monthly(v)  # type: ignore[operator]

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
    bf = ft.best(v0)
    bo = other.best(v0)
    assert bf is not None and bo is not None
    one = bf.one_off
    initial = one.initial_usd if one else 0.0
    saving = bo.monthly(v0) - bf.monthly(v0) - (one.retrain_per_month() if one else 0.0)
    payback = None
    if saving > 0:
        payback = initial / (saving / DAYS_PER_MONTH) if initial > 0 else 0.0
    return BreakEven(ft.rung, other.rung, found, payback, initial, saving, v0)


def break_evens(costs: Sequence[RungCost]) -> list[BreakEven]:
    """Break-even of every fine-tuned rung against every prompting (and RAG) rung."""
    out = []
    for f in costs:
        if not f.kind.trains_weights:
            continue
        for o in costs:
            if o.kind.trains_weights:
                continue
            be = break_even(f, o)
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
