"""The report's data: one JSON-able dict per climb, built from results in memory or from the run store.

The dict (``REPORT_SCHEMA_VERSION`` 1)::

    {
      "generator": "rungwise", "schema": 1, "version": "0.1.0", "created_at": "2026-11-22T10:00:00+00:00",
      "run_id": 3, "task": "ticket-routing", "description": "...", "model": "local:smollm2-135m-instruct",
      "metric": "accuracy", "target": "accuracy >= 0.85" | null,
      "n_test": 53, "n_train": 159 | null, "leakage_dropped": 0, "notes": ["..."],
      "rungs": [{
          "name": "few_shot", "kind": "prompt" | "rag" | "finetune",
          "metric": {"name", "value", "ci_low", "ci_high", "n"},
          "format_valid_rate", "mean_prompt_tokens", "mean_completion_tokens", "mean_cached_tokens",
          "latency_p50_s", "latency_p95_s", "examples_per_s", "meets_target": bool,
          "comparison": {"against", "delta", "ci_low", "ci_high", "p_value", "test", "significant"} | null,
          "artifact": {...},
          "cost": RungCost.to_dict() | null
      }],
      "examples": [{                       # the test split, in order
          "id": "ab12...", "source": "data.jsonl:12", "input": "...", "expected": "...",
          "rungs": {"few_shot": {"prediction": "...", "score": 1.0, "valid": true}, ...}
      }],
      "economics": {"daily_volume", "volume_given", "price_model" (the hosted what-if),
                    "measured": Measured.to_dict() | null, "pricing": PricingBasis.to_dict() | null,
                    "curves": {"volumes": [...], "series": {rung: [$ per month, ...]}},
                    "break_evens": [BreakEven.to_dict()]} | null,
      "verdict": Verdict.to_dict() | null
    }

Only ``task``, ``rungs`` (with ``name`` and ``metric``) are required by the renderers; every
other key may be missing.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from rungwise import __version__
from rungwise.advise import Verdict
from rungwise.config.task import Task, task_from_dict
from rungwise.economics.cost import (
    RungCost,
    break_evens,
    cost_curves,
    daily_volume_of,
    price_rungs,
    with_overrides,
)
from rungwise.economics.machine import Measured
from rungwise.errors import RungwiseError
from rungwise.store import Store
from rungwise.types import Example, Ladder

REPORT_SCHEMA_VERSION = 1


def report_data(
    climb: Ladder,
    *,
    task: Task | None = None,
    examples: Sequence[Example] | None = None,
    costs: Sequence[RungCost] | None = None,
    verdict: Verdict | None = None,
    model: str | None = None,
    n_train: int | None = None,
    created_at: str | None = None,
    measured: Measured | None = None,
) -> dict[str, Any]:
    """Build the report dict from a climb in memory.

    ``examples`` are the test examples in the order the rungs scored them (their predictions,
    scores and valid flags come from the rung results). ``costs`` and ``verdict`` are priced and
    judged from ``task`` when not given (and ``task`` is), as ``measured`` (default: the climb's).

    Example:
        >>> data = report_data(result, task=task, examples=split.test)  # doctest: +SKIP
        >>> write_report(data, Path("report"))  # doctest: +SKIP
    """
    measured = measured or getattr(climb, "measured", None)
    if costs is None and task is not None:
        costs = price_rungs(climb.rungs, task, measured=measured)
    if verdict is None and task is not None and costs is not None:
        from rungwise.advise import verdict as _verdict

        verdict = _verdict(climb, task, costs)
    by_cost = {c.rung: c for c in costs or []}
    rungs = []
    for r in climb.rungs:
        rungs.append({
            "name": r.rung, "kind": r.kind.name, "notes": list(r.notes), "failures": dict(r.failures), "metric": asdict(r.metric),
            "format_valid_rate": r.format_valid_rate, "mean_prompt_tokens": r.mean_prompt_tokens,
            "mean_completion_tokens": r.mean_completion_tokens, "mean_cached_tokens": r.mean_cached_tokens,
            "latency_p50_s": r.latency_p50_s, "latency_p95_s": r.latency_p95_s, "examples_per_s": r.examples_per_s,
            "meets_target": r.meets_target, "comparison": asdict(r.comparison) if r.comparison else None,
            "artifact": _jsonable(r.artifact), "cost": by_cost[r.rung].to_dict() if r.rung in by_cost else None,
        })
    rows: list[dict[str, Any]] = []
    if examples is not None:
        for i, ex in enumerate(examples):
            per = {}
            for r in climb.rungs:
                if i < len(r.predictions):
                    per[r.rung] = {
                        "prediction": r.predictions[i],
                        "score": r.scores[i] if i < len(r.scores) else None,
                        "valid": r.valid[i] if i < len(r.valid) else None,
                    }
            rows.append({"id": ex.id, "source": ex.source, "input": ex.input, "expected": ex.output, "rungs": per})
    econ = None
    if costs:
        given = daily_volume_of(task)[1] if task is not None else True
        econ = {
            "daily_volume": costs[0].daily_volume, "volume_given": given,
            "price_model": task.economics.price_model if task is not None else None,
            "measured": measured.to_dict() if measured is not None else None,
            "pricing": costs[0].basis.to_dict() if costs[0].basis else None,
            "curves": cost_curves(costs), "break_evens": [b.to_dict() for b in break_evens(costs)],
        }
    metric = climb.rungs[0].metric.name if climb.rungs else (task.metric.name if task is not None else "")
    return {
        "generator": "rungwise", "schema": REPORT_SCHEMA_VERSION, "version": __version__,
        "created_at": created_at or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "run_id": climb.run_id, "task": climb.task, "description": task.description if task is not None else "",
        "model": model or (f"{task.model.backend}:{task.model.id}" if task is not None else None),
        "metric": metric, "target": climb.target, "n_test": climb.n_test, "n_train": n_train,
        "leakage_dropped": climb.leakage_dropped, "notes": list(climb.notes), "rungs": rungs, "examples": rows,
        "economics": econ, "verdict": verdict.to_dict() if verdict is not None else None,
    }


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def report_data_from_store(
    run_id: int | str, *, task: Task | None = None, store: Store | None = None, daily_volume: int | None = None,
    as_of: _dt.date | None = None,
) -> dict[str, Any]:
    """Build the report dict for a stored run (``run_id`` an id or ``"latest"``).

    The task config saved with the run is used for pricing and the verdict unless ``task`` (e.g.
    the current task.yaml, with new volume or prices) is given; ``daily_volume`` and ``as_of``
    (the pricing date) override its own.
    """
    from rungwise.climb import load_climb

    st = store or Store()
    if isinstance(run_id, str):
        if run_id == "latest":
            rows = st.list_climbs(limit=1)
            if not rows:
                raise RungwiseError("no runs in the store yet", hint="run `rungwise climb task.yaml` first")
            run_id = int(rows[0]["id"])
        elif run_id.isdigit():
            run_id = int(run_id)
        else:
            raise RungwiseError(f"run id {run_id!r} is not a number", hint="give a run id from `rungwise runs list`, or latest")
    row = st.climb(run_id)
    climb = load_climb(run_id, st)
    if not climb.rungs:
        raise RungwiseError(f"run {run_id} has no finished rung", hint="resume it with `rungwise climb task.yaml`")
    if task is None:
        cfg = json.loads(row["config_json"])
        task = task_from_dict(cfg, source=f"run {run_id} config")
    task = with_overrides(task, daily_volume, as_of=as_of)
    # The test examples and each rung's predictions, in example order.
    per_rung = {}
    for rr in st.rungs(run_id):
        per_rung[rr["name"]] = sorted(st.predictions(rr["id"]).values(), key=lambda p: p["example_index"])
    first = per_rung.get(climb.rungs[0].rung, [])
    examples = [Example(input=p["input"], output=p["expected"], source=p["source"] or "") for p in first]
    # load_climb drops per-example lists; put them back from the predictions table.
    for r in climb.rungs:
        preds = per_rung.get(r.rung, [])
        r.predictions = [p["completion"] for p in preds]
        r.scores = [float(p["score"]) if p["score"] is not None else 0.0 for p in preds]
        r.valid = [bool(p["valid"]) for p in preds]
    data = report_data(climb, task=task, examples=examples, model=row["model_id"], n_train=row["n_train"],
                       created_at=row["created_at"])
    # Keep the stored example ids (they also key the predictions table), and show each rung's
    # per-example trace (retrieved chunks, the constraint used) beside its answer.
    traces = {name: {p["example_id"]: json.loads(p["trace_json"] or "{}") for p in preds} for name, preds in per_rung.items()}
    for d, p in zip(data["examples"], first, strict=False):
        d["id"] = p["example_id"]
        for name, cell in d["rungs"].items():
            trace = traces.get(name, {}).get(d["id"])
            if trace:
                cell["trace"] = trace
    return data


def comparison_cell(rung: dict[str, Any]) -> str:
    """'delta, p=... *' for a rung's paired test against the rung below, or a dash."""
    c = rung.get("comparison")
    if not c:
        return "—"
    return f"{c['delta']:+.3f}, p={c['p_value']:.3g}" + (" *" if c.get("significant") else "")


def meets_cell(data: dict[str, Any], rung: dict[str, Any]) -> str:
    """'yes' / 'no' against the report's target, or a dash when there is none."""
    return "—" if not data.get("target") else ("yes" if rung.get("meets_target") else "no")


def what_if_model(data: dict[str, Any]) -> str | None:
    """The hosted what-if's model key, when some rung was priced on it (or left it out)."""
    for r in data.get("rungs") or []:
        c = r.get("cost") or {}
        if c.get("what_if") or c.get("left_out"):
            return (data.get("economics") or {}).get("price_model")
    return None


def catalog_line(data: dict[str, Any]) -> str | None:
    """'prices: catalog revised 2026-11-30, 0 days old on 2026-11-30' for the report's header."""
    p = (data.get("economics") or {}).get("pricing")
    if not p:
        return None
    return f"prices: catalog revised {p['catalog_date']}, {p['catalog_age_days']} days old on {p['as_of']}"


def pricing_lines(pricing: dict[str, Any] | None) -> list[str]:
    """What the costs rest on, one line each: date and catalog age, assumptions (the what-if
    labelled), offers left out with the alternatives, and stale-price warnings."""
    if not pricing:
        return []
    return ([pricing["headline"], *pricing.get("assumptions", []),
             *(x["sentence"] for x in pricing.get("left_out", [])),
             *("warning: " + w for w in pricing.get("warnings", []))])
