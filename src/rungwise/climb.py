"""The orchestrator: climb the ladder rung by rung on one held-out split.

Every prompt and completion is written to the run store as it is produced, in chunks, so an
interrupted climb resumes (``resume=True``) without re-generating anything already stored.

Example:
    >>> result = climb(load_task("task.yaml"), all_rungs=True)  # doctest: +SKIP
    >>> [(r.rung, round(r.metric.value, 2)) for r in result.rungs]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any, Protocol

from rungwise import __version__
from rungwise.backends import Backend, check_model, make_backend
from rungwise.config.task import Task
from rungwise.data.dataset import data_hash, load_split
from rungwise.errors import ConfigError, RungwiseError
from rungwise.evaluate.registry import get_metric
from rungwise.evaluate.scores import ScoreSet
from rungwise.evaluate.stats import bootstrap_ci, paired_test, percentile
from rungwise.rungs import RungContext, get_rung
from rungwise.store import Store
from rungwise.types import ClimbResult, Comparison, Example, MetricValue, RungResult


class Reporter(Protocol):
    """Receives progress events (the CLI draws progress bars from them)."""

    def rung_start(self, name: str, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def rung_end(self, result: RungResult) -> None: ...
    def note(self, message: str) -> None: ...


class _Quiet:
    def rung_start(self, name: str, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def rung_end(self, result: RungResult) -> None: ...
    def note(self, message: str) -> None: ...


CHUNK = 64  # predictions per store transaction: a crash loses at most one chunk


def _check_target(task: Task) -> None:
    t = task.parsed_target
    if t is None:
        return
    metric = task.metric.name
    aliases = {metric, metric.split(":")[-1], "score"}
    if metric in ("accuracy", "macro_f1", "exact_match"):
        aliases |= {"accuracy", "acc"} if metric == "accuracy" else set()
    if t.metric not in aliases:
        raise ConfigError(
            f"target {task.target!r} names metric {t.metric!r} but the task's metric is {metric!r}",
            hint=f"write the target as '{metric} {t.op} {t.value:g}'",
        )


def _rung_result(
    name: str, rows: Sequence[Any], scoreset: ScoreSet, task: Task, gen_seconds: float, artifact: dict[str, Any]
) -> RungResult:
    mv: MetricValue = bootstrap_ci(scoreset, seed=task.data.seed)
    lat = [float(r["latency_s"]) for r in rows]
    n = len(rows)
    target = task.parsed_target
    return RungResult(
        rung=name,
        metric=mv,
        format_valid_rate=scoreset.valid_rate,
        mean_prompt_tokens=sum(r["prompt_tokens"] for r in rows) / n,
        mean_completion_tokens=sum(r["completion_tokens"] for r in rows) / n,
        mean_cached_tokens=sum(r["cached_tokens"] for r in rows) / n,
        latency_p50_s=percentile(lat, 50),
        latency_p95_s=percentile(lat, 95),
        examples_per_s=n / gen_seconds if gen_seconds > 0 else 0.0,
        meets_target=bool(target and target.met(mv.value)),
        scores=list(scoreset.scores),
        valid=list(scoreset.valid),
        predictions=[r["completion"] for r in rows],
        artifact={k: v for k, v in artifact.items() if not k.startswith("_")},
    )


def result_to_dict(r: RungResult, with_examples: bool = False) -> dict[str, Any]:
    d = asdict(r)
    if not with_examples:
        for k in ("scores", "valid", "predictions"):
            d.pop(k)
    return d


def climb(
    task: Task,
    *,
    rungs: Sequence[str] | None = None,
    all_rungs: bool = False,
    limit: int | None = None,
    resume: bool | int = False,
    store: Store | None = None,
    reporter: Reporter | None = None,
    backend: Backend | None = None,
) -> ClimbResult:
    """Measure each rung on the held-out test split; stop at the first meeting the target unless ``all_rungs``.

    ``resume``: True resumes the latest unfinished climb of this exact config, an int resumes that run id.
    ``backend``: use this backend instead of building one from ``task.model`` (tests, embedding).
    """
    reporter = reporter or _Quiet()
    store = store or Store()
    _check_target(task)
    order = list(rungs or task.rungs.order)
    rung_objs = [get_rung(n) for n in order]  # unknown rung names fail before any work
    metric = get_metric(task.metric, task.labels, task.base_dir)
    split = load_split(task)
    test: list[Example] = split.test[:limit] if limit else split.test
    model_id = backend.model_id if backend else check_model(task.model)
    if split.leakage.count:
        reporter.note(
            f"leakage: {split.leakage.count} test example(s) duplicated train inputs and were dropped "
            f"({len(split.leakage.exact)} exact, {len(split.leakage.normalized)} after normalization)"
        )

    backend_box: list[Backend] = [backend] if backend else []

    def shared_backend() -> Backend:
        if not backend_box:
            backend_box.append(make_backend(task.model))
        return backend_box[0]

    config_hash = task.config_hash()
    options = {"limit": limit, "rungs": order}
    climb_id: int | None = None
    if resume:
        row = store.climb(int(resume)) if not isinstance(resume, bool) else store.latest_unfinished(config_hash)
        if row is None:
            reporter.note("nothing to resume for this task config: starting a new run")
        else:
            if row["config_hash"] != config_hash:
                raise RungwiseError(
                    f"run {row['id']} was made with a different task config (hash {row['config_hash']}, now {config_hash})",
                    hint="resume only with the same task.yaml, or start a new run without --resume",
                )
            climb_id = int(row["id"])
            stored = json.loads(row["options_json"])
            if limit is None and stored.get("limit"):
                limit = stored["limit"]
                test = split.test[:limit]
            reporter.note(f"resuming run {climb_id}")
    if climb_id is None:
        climb_id = store.create_climb(
            task_name=task.name,
            task_path=str(task.source_path or ""),
            config_hash=config_hash,
            config_json=json.dumps(task.model_dump(mode="json")),
            train_hash=data_hash(split.train),
            test_hash=data_hash(test),
            model_id=model_id,
            n_train=len(split.train),
            n_test=len(test),
            leakage_exact=len(split.leakage.exact),
            leakage_normalized=len(split.leakage.normalized),
            options_json=json.dumps(options),
            rungwise_version=__version__,
        )
    else:
        store.set_climb_status(climb_id, "running")

    results: list[RungResult] = []
    prev: tuple[str, ScoreSet] | None = None
    stopped_at: str | None = None
    try:
        for pos, (name, rung) in enumerate(zip(order, rung_objs, strict=True)):
            row = store.get_or_create_rung(climb_id, name, pos)
            rung_id = int(row["id"])
            ctx = RungContext(task=task, train=split.train, backend_factory=shared_backend)
            prepared = rung.prepare(ctx)
            store.set_rung_artifact(rung_id, prepared.artifact)
            done = store.predictions(rung_id)
            todo = [(i, ex) for i, ex in enumerate(test) if ex.id not in done]
            reporter.rung_start(name, len(test), len(test) - len(todo))
            params = task.model.params.to_params()
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                be = prepared.backend or shared_backend()
                t0 = time.perf_counter()
                comps = rung.predict(prepared, [ex for _, ex in chunk], be, params, reporter.advance)
                store.add_gen_seconds(rung_id, time.perf_counter() - t0)
                store.add_predictions(
                    rung_id,
                    [
                        {
                            "example_id": ex.id, "example_index": i, "source": ex.source, "input": ex.input,
                            "expected": ex.output, "prompt": prepared.prompt_for(ex), "completion": c.text,
                            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                            "cached_tokens": c.cached_tokens, "latency_s": c.latency_s,
                        }
                        for (i, ex), c in zip(chunk, comps, strict=True)
                    ],
                )
            stored = store.predictions(rung_id)
            rows = [stored[ex.id] for ex in test]
            scoreset = metric.score([r["completion"] for r in rows], test)
            store.set_scores(
                rung_id, [(ex.id, s, v, p) for ex, s, v, p in zip(test, scoreset.scores, scoreset.valid, scoreset.parsed, strict=True)]
            )
            gen_seconds = float(store.rung(rung_id)["gen_seconds"])
            result = _rung_result(name, rows, scoreset, task, gen_seconds, prepared.artifact)
            result.id = rung_id
            if prev is not None:
                result.comparison = paired_test(scoreset, prev[1], a_name=name, b_name=prev[0], seed=task.data.seed)
            rung.finalize(ctx, prepared, result, results)
            store.set_rung_artifact(rung_id, prepared.artifact)
            store.finish_rung(rung_id, result_to_dict(result))
            reporter.rung_end(result)
            results.append(result)
            prev = (name, scoreset)
            if result.meets_target and not all_rungs:
                stopped_at = name
                break
    except KeyboardInterrupt:
        store.set_climb_status(climb_id, "interrupted")
        raise
    except BaseException:
        store.set_climb_status(climb_id, "failed")
        raise
    finally:
        for b in backend_box:
            if b is not backend:
                b.close()

    out = ClimbResult(
        task=task.name,
        run_id=climb_id,
        rungs=results,
        target=str(task.parsed_target) if task.target else None,
        stopped_at=stopped_at,
        n_test=len(test),
        leakage_dropped=split.leakage.count,
    )
    if results:
        price_and_advise(out, task)
    store.finish_climb(climb_id, "done", climb_to_dict(out))
    return out


def price_and_advise(c: ClimbResult, task: Task) -> ClimbResult:
    """Price every measured rung at the task's volume and attach the verdict (pure; no model calls)."""
    from rungwise.advise import verdict
    from rungwise.economics.cost import price_rungs

    c.costs = price_rungs(c.rungs, task)
    c.verdict = verdict(c, task, c.costs)
    return c


def climb_to_dict(c: ClimbResult, with_examples: bool = False) -> dict[str, Any]:
    d = asdict(replace(c, costs=[], verdict=None))
    d["rungs"] = [result_to_dict(r, with_examples) for r in c.rungs]
    d["costs"] = [x.to_dict() for x in c.costs]
    d["verdict"] = c.verdict.to_dict() if c.verdict is not None else None
    return d


def comparison_from_dict(d: dict[str, Any] | None) -> Comparison | None:
    return Comparison(**d) if d else None


def rung_result_from_dict(d: dict[str, Any]) -> RungResult:
    d = dict(d)
    d["metric"] = MetricValue(**d["metric"])
    d["comparison"] = comparison_from_dict(d.get("comparison"))
    return RungResult(**d)


def load_climb(climb_id: int, store: Store | None = None) -> ClimbResult:
    """Rebuild a finished (or partial) climb's results from the store, priced with its stored config."""
    store = store or Store()
    row = store.climb(climb_id)
    rungs = [rung_result_from_dict(json.loads(r["result_json"])) for r in store.rungs(climb_id) if r["result_json"]]
    cfg = json.loads(row["config_json"])
    c = ClimbResult(
        task=row["task_name"], run_id=climb_id, rungs=rungs, target=cfg.get("target"),
        stopped_at=(json.loads(row["result_json"]) or {}).get("stopped_at") if row["result_json"] else None,
        n_test=row["n_test"], leakage_dropped=row["leakage_exact"] + row["leakage_normalized"],
    )
    if rungs:
        from rungwise.config.task import task_from_dict

        price_and_advise(c, task_from_dict(cfg, source=f"run {climb_id} config"))
    return c


ProgressCallback = Callable[[int], None]
