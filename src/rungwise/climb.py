"""The orchestrator: climb the ladder rung by rung on one held-out split.

Every prompt and completion is written to the run store as it is produced, in chunks, so an
interrupted climb resumes (``resume=True``) without re-generating anything already stored. The
rungs are prepared in one :class:`~rungwise.rungs.Workspace`, so a rung that builds on another
(``hybrid`` on ``finetune``) reuses its prepared model, and every backend opened during
the climb is closed at its end.

Example:
    >>> result = climb(load_task("task.yaml"), all_rungs=True)  # doctest: +SKIP
    >>> [(r.rung, round(r.metric.value, 2)) for r in result.rungs]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rungwise import __version__
from rungwise.advise import Verdict, verdict
from rungwise.backends.base import Backend
from rungwise.config.task import Task, task_from_dict
from rungwise.data.dataset import examples_hash, load_split
from rungwise.data.split import Split
from rungwise.economics.cost import RungCost, price_rungs
from rungwise.economics.machine import Measured
from rungwise.errors import ConfigError, RungwiseError, Unsupported
from rungwise.evaluate.diagnosis import diagnose
from rungwise.evaluate.metrics import Metric
from rungwise.evaluate.registry import get_metric
from rungwise.evaluate.scores import ScoreSet
from rungwise.evaluate.stats import bootstrap_ci, paired_test, percentile
from rungwise.registry import RUNGS, UnknownName
from rungwise.rungs import BackendPool, Prepared, Rung, RungSkipped, Scored, Workspace, get_rung
from rungwise.store import Store
from rungwise.types import (
    PROMPT,
    Comparison,
    Example,
    Ladder,
    MetricValue,
    RungKind,
    RungResult,
    TrainingRecord,
)


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


@dataclass
class ClimbResult(Ladder):
    """The measured ladder with every rung priced at the task's volume, and the verdict.

    ``measured`` is what answered (backend, model, hardware): costs are priced as that model.
    """

    costs: list[RungCost] = field(default_factory=list)
    verdict: Verdict | None = None
    measured: Measured | None = None


CHUNK = 64  # predictions per store transaction: a crash loses at most one chunk


def _check_target(task: Task) -> None:
    t = task.parsed_target
    if t is None:
        return
    metric = task.metric.name
    aliases = {metric, metric.split(":")[-1], "score"}
    if metric == "accuracy":
        aliases |= {"accuracy", "acc"}
    if t.metric not in aliases:
        raise ConfigError(
            f"target {task.target!r} names metric {t.metric!r} but the task's metric is {metric!r}",
            hint=f"write the target as '{metric} {t.op} {t.value:g}'",
        )


def _rung_result(
    rung: Rung, rows: Sequence[Any], scoreset: ScoreSet, task: Task, gen_seconds: float, prepared: Prepared
) -> RungResult:
    mv: MetricValue = bootstrap_ci(scoreset, seed=task.data.seed)
    lat = [float(r["latency_s"]) for r in rows]
    n = len(rows)
    target = task.parsed_target
    return RungResult(
        rung=rung.name,
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
        kind=rung.kind,
        **_from_artifact(prepared),
    )


def _from_artifact(prepared: Prepared) -> dict[str, Any]:
    """What a result carries from the rung's artifact (refreshed after ``finalize``)."""
    art = prepared.artifact
    return {"artifact": art.model_dump(mode="json"), "training": art.training(), "notes": art.notes()}


def result_to_dict(r: RungResult, with_examples: bool = False) -> dict[str, Any]:
    d = asdict(r)
    if not with_examples:
        for k in ("scores", "valid", "predictions"):
            d.pop(k)
    return d


def _resume_row(store: Store, resume: bool | int, task: Task, config_hash: str) -> Any:
    """The climb to resume (None: start a new one), refused with the reason when it cannot be."""
    row = store.climb(int(resume)) if not isinstance(resume, bool) else store.latest_unfinished(config_hash)
    if row is not None and row["config_hash"] != config_hash:
        raise RungwiseError(
            f"run {row['id']} was made with a different task config (hash {row['config_hash']}, now {config_hash})",
            hint="resume only with the same task.yaml, or start a new run without --resume",
        )
    return row


def _check_resumable(row: Any, train: Sequence[Example], test: Sequence[Example], limit: int | None) -> None:
    """Resuming is only honest on the same data and the same test slice: refuse otherwise."""
    stored_limit = json.loads(row["options_json"]).get("limit")
    if limit != stored_limit:
        raise RungwiseError(
            f"run {row['id']} was started with --limit {stored_limit or 'none'}; this resume asks for "
            f"--limit {limit or 'none'}",
            hint=f"resume with the same --limit ({stored_limit or 'none'}), or start a new run without --resume",
        )
    for what, examples, col in (("train", train, "train_hash"), ("test", test, "test_hash")):
        if examples_hash(examples) != row[col]:
            raise RungwiseError(
                f"run {row['id']} was made on different {what} data (the data file changed since it started)",
                hint="restore the data the run was started with, or start a new run without --resume",
            )


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
    reuse: int | None = None,
) -> ClimbResult:
    """Measure each rung on the held-out test split; stop at the first meeting the target unless ``all_rungs``.

    ``resume``: True resumes the latest unfinished climb of this exact config, an int resumes that
    run id; the data and ``limit`` must be those the run started with.
    ``reuse``: an earlier run of this task whose predictions stand in for this climb's wherever
    nothing that decides them changed (see :func:`_reuse_stored`): after editing one rung's
    settings, only that rung is generated again.
    ``backend``: use this backend instead of building one from ``task.model`` (tests, embedding);
    the caller keeps ownership and closes it.
    """
    reporter = reporter or _Quiet()
    store = store or Store()
    _check_target(task)
    order = list(rungs or task.rungs.order)
    rung_objs = [get_rung(n, task) for n in order]  # unknown rung names fail before any work
    metric = get_metric(task.metric, task.labels, task.base_dir)
    split = load_split(task)
    config_hash = task.config_hash()
    row = _resume_row(store, resume, task, config_hash) if resume else None
    if resume and row is None:
        reporter.note("nothing to resume for this task config: starting a new run")
    if row is not None and limit is None:
        limit = json.loads(row["options_json"]).get("limit")  # a bare --resume keeps the run's own limit
    test: list[Example] = split.test[:limit] if limit else split.test
    model_id = backend.model_id if backend else task.model.describe()
    for warning in split.warnings:
        reporter.note(warning)
    if split.leakage.count:
        reporter.note(
            f"leakage: {split.leakage.count} test example(s) duplicated train inputs and were dropped "
            f"({len(split.leakage.exact)} exact, {len(split.leakage.normalized)} after normalization)"
        )
    if row is not None:
        _check_resumable(row, split.train, test, limit)
        climb_id = int(row["id"])
        reporter.note(f"resuming run {climb_id}")
    else:
        climb_id = store.create_climb(
            task_name=task.name,
            task_path=str(task.source_path or ""),
            config_hash=config_hash,
            config_json=json.dumps(task.model_dump(mode="json")),
            train_hash=examples_hash(split.train),
            test_hash=examples_hash(test),
            model_id=model_id,
            n_train=len(split.train),
            n_test=len(test),
            leakage_exact=len(split.leakage.exact),
            leakage_normalized=len(split.leakage.normalized),
            options_json=json.dumps({"limit": limit, "rungs": order}),
            rungwise_version=__version__,
        )
    # One process climbs a run at a time: a second `--resume` of a run still being climbed is
    # refused instead of generating the same predictions twice.
    source = _ReuseSource.of(store, reuse, task) if reuse is not None else None
    plan = _Plan(task, split, test, order, rung_objs, metric, climb_id, model_id, limit, all_rungs, source)
    with store.claim_climb(climb_id):
        store.set_climb_status(climb_id, "running")
        return _climb_rungs(plan, store, reporter, backend)


@dataclass
class _Plan:
    """One climb's fixed inputs, decided before any rung runs."""

    task: Task
    split: Split
    test: list[Example]
    order: list[str]
    rungs: list[Rung]
    metric: Metric
    climb_id: int
    model_id: str
    limit: int | None
    all_rungs: bool
    reuse: _ReuseSource | None = None


@dataclass
class _ReuseSource:
    """An earlier climb whose stored predictions may stand in for this one's (``climb(..., reuse=RUN)``).

    ``same_answers`` is True when its model section (backend, weights, dtype, batch size,
    generation parameters) and its metric (which decides the output constraint) equal this
    climb's; ``sections`` are its ``rungs.<name>`` settings.
    """

    run_id: int
    rung_ids: dict[str, int]
    sections: dict[str, Any]
    same_answers: bool

    @classmethod
    def of(cls, store: Store, run_id: int, task: Task) -> _ReuseSource:
        row = store.climb(run_id)
        if row["task_name"] != task.name:
            raise RungwiseError(f"run {run_id} climbed task {row['task_name']!r}, not {task.name!r}",
                                hint="reuse a run of the same task (`rungwise runs list`)")
        before, now = json.loads(row["config_json"]), task.model_dump(mode="json")
        same = all(before.get(k) == now.get(k) for k in ("model", "metric"))
        rung_ids = {r["name"]: int(r["id"]) for r in store.rungs(run_id) if r["status"] != "skipped"}
        return cls(run_id, rung_ids, before.get("rungs") or {}, same)

    def rung_for(self, name: str, task: Task, prepared: Prepared) -> int | None:
        """The earlier run's rung whose predictions may be reused for ``name``, or None.

        Only a rung that answers with the task's model (not its own: a fine-tuned model, a
        classifier, a calibrated wrapper) and whose own settings did not change."""
        if not self.same_answers or prepared.backend is not None or name not in self.rung_ids:
            return None
        if self.sections.get(name) != task.rungs.model_dump(mode="json").get(name):
            return None
        return self.rung_ids[name]


def _reuse_stored(store: Store, rung_id: int, source_rung: int, prepared: Prepared,
                  todo: list[tuple[int, Example]]) -> list[tuple[int, Example]]:
    """Copy the earlier rung's prediction of every example in ``todo`` that would be sent the very
    same prompt (so, with the same model, settings and constraint, gets the same answer), with its
    share of the earlier rung's generation time; returns the examples still to answer."""
    earlier = store.predictions(source_rung)
    copied, left = [], []
    for i, ex in todo:
        row = earlier.get(ex.id)
        if row is not None and json.loads(row["prompt_json"]) == prepared.plan(ex).chat(ex):
            copied.append({
                "example_id": ex.id, "example_index": i, "source": ex.source, "input": ex.input, "expected": ex.output,
                "prompt": json.loads(row["prompt_json"]), "completion": row["completion"],
                "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
                "cached_tokens": row["cached_tokens"], "latency_s": row["latency_s"],
                "trace": json.loads(row["trace_json"] or "{}"),
            })
        else:
            left.append((i, ex))
    if copied:
        store.add_predictions(rung_id, copied)
        store.add_gen_seconds(rung_id, float(store.rung(source_rung)["gen_seconds"] or 0) * len(copied) / len(earlier))
    return left


def _climb_rungs(plan: _Plan, store: Store, reporter: Reporter, backend: Backend | None) -> ClimbResult:
    """Prepare, answer, score and compare each rung in order; price and judge the ladder."""
    task, split, test, metric, climb_id, limit = plan.task, plan.split, plan.test, plan.metric, plan.climb_id, plan.limit
    workspace = Workspace(
        task, split.train, BackendPool(task.model.build, borrowed=backend),
        stored=lambda name: store.latest_artifact(name, str(workspace.work_dir(name))),
        quick_limit=limit, say=reporter.note,
    )
    params = task.model.params.to_params()
    results: list[RungResult] = []
    notes: list[str] = []
    prev: tuple[str, ScoreSet] | None = None
    stopped_at: str | None = None
    try:
        for pos, (name, rung) in enumerate(zip(plan.order, plan.rungs, strict=True)):
            rung_id = int(store.get_or_create_rung(climb_id, name, pos)["id"])
            try:
                prepared = workspace.prepare(name)
                store.set_rung_artifact(rung_id, prepared.artifact.model_dump(mode="json"), str(workspace.work_dir(name)))
                _predict_missing(store, rung_id, rung, prepared, test, workspace, params, reporter, plan)
            except (RungSkipped, Unsupported) as exc:
                reason = exc.message if isinstance(exc, RungSkipped) else f"unsupported by this backend: {exc.message}"
                store.skip_rung(rung_id, reason)
                notes.append(f"{name} skipped: {reason}")
                reporter.note(f"{name} skipped: {reason}")
                continue
            stored = store.predictions(rung_id)
            rows = [stored[ex.id] for ex in test]
            scoreset = metric.score([r["completion"] for r in rows], test)
            store.set_scores(
                rung_id, [(ex.id, s, v, p) for ex, s, v, p in zip(test, scoreset.scores, scoreset.valid, scoreset.parsed, strict=True)]
            )
            gen_seconds = float(store.rung(rung_id)["gen_seconds"])
            result = _rung_result(rung, rows, scoreset, task, gen_seconds, prepared)
            traces = [json.loads(r["trace_json"] or "{}") for r in rows]
            # A label that happens to be a word of the input is no extraction: only free-text answers count.
            result.failures = diagnose(scoreset, traces, None if task.labels else test).as_dict()
            result.id = rung_id
            if prev is not None:
                result.comparison = paired_test(scoreset, prev[1], a_name=name, b_name=prev[0], seed=task.data.seed)
            rung.finalize(workspace.context(name), prepared, result, results, Scored(test, traces))
            for key, value in _from_artifact(prepared).items():
                setattr(result, key, value)
            store.set_rung_artifact(rung_id, result.artifact)
            store.finish_rung(rung_id, result_to_dict(result))
            reporter.rung_end(result)
            results.append(result)
            prev = (name, scoreset)
            if result.meets_target and not plan.all_rungs:
                stopped_at = name
                break
        measured = _measured(plan.model_id, workspace.backends.built)
    except KeyboardInterrupt:
        store.set_climb_status(climb_id, "interrupted")
        raise
    except BaseException:
        store.set_climb_status(climb_id, "failed")
        raise
    finally:
        workspace.close()

    out = ClimbResult(
        task=task.name,
        run_id=climb_id,
        rungs=results,
        target=str(task.parsed_target) if task.target else None,
        stopped_at=stopped_at,
        n_test=len(test),
        leakage_dropped=split.leakage.count,
        notes=notes,
        measured=measured,
    )
    if results:
        price_and_advise(out, task)
    store.finish_climb(climb_id, "done", climb_to_dict(out))
    return out


def _predict_missing(
    store: Store, rung_id: int, rung: Rung, prepared: Prepared, test: Sequence[Example], workspace: Workspace,
    params: Any, reporter: Reporter, plan: _Plan,
) -> None:
    """Answer the test examples the store has no prediction for yet (or that the run being reused
    answered with the same prompt), a chunk per transaction."""
    done = store.predictions(rung_id)
    todo = [(i, ex) for i, ex in enumerate(test) if ex.id not in done]
    source_rung = plan.reuse.rung_for(rung.name, plan.task, prepared) if plan.reuse and todo else None
    if source_rung is not None:
        before = len(todo)
        todo = _reuse_stored(store, rung_id, source_rung, prepared, todo)
        if len(todo) < before:
            assert plan.reuse is not None
            reporter.note(f"{rung.name}: {before - len(todo)} prediction(s) reused from run {plan.reuse.run_id} "
                          "(same model, settings and prompts)")
    reporter.rung_start(rung.name, len(test), len(test) - len(todo))
    backend = prepared.backend or workspace.backends.shared()
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        t0 = time.perf_counter()
        answers = rung.predict(prepared, [ex for _, ex in chunk], backend, params, reporter.advance)
        store.add_gen_seconds(rung_id, time.perf_counter() - t0)
        store.add_predictions(
            rung_id,
            [
                {
                    "example_id": ex.id, "example_index": i, "source": ex.source, "input": ex.input,
                    "expected": ex.output, "prompt": a.prompt, "completion": a.completion.text,
                    "prompt_tokens": a.completion.prompt_tokens, "completion_tokens": a.completion.completion_tokens,
                    "cached_tokens": a.completion.cached_tokens, "latency_s": a.completion.latency_s,
                    "trace": a.completion.trace,
                }
                for (i, ex), a in zip(chunk, answers, strict=True)
            ],
        )


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use (containers, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _measured(model_id: str, backend: Backend | None) -> Measured:
    """What answered the climb and the hardware it ran on, recorded with the run for pricing.

    The local backend exposes its torch ``device`` and ``model``; other backends ran on this
    machine's CPUs (the scripted double) or behind an endpoint (priced per token, not per hour).
    """
    device, accelerator, params = "cpu", "", 0
    dev = getattr(backend, "device", None)
    if dev is not None and getattr(dev, "type", "cpu") != "cpu":
        device = str(dev.type)
        torch = sys.modules.get("torch")  # loaded already: the model runs on it
        if device == "cuda" and torch is not None:
            accelerator = str(torch.cuda.get_device_name(dev))
    model = getattr(backend, "model", None)
    if model is not None and hasattr(model, "num_parameters"):
        params = int(model.num_parameters())
    return Measured.from_model_id(model_id, device=device, accelerator=accelerator, cpus=_cpus(), params=params)


def price_and_advise(c: ClimbResult, task: Task) -> ClimbResult:
    """Price every measured rung at the task's volume, as the model measured, and attach the
    verdict (pure; no model calls)."""
    c.costs = price_rungs(c.rungs, task, measured=c.measured)
    c.verdict = verdict(c, task, c.costs)
    return c


def climb_to_dict(c: ClimbResult, with_examples: bool = False) -> dict[str, Any]:
    d = asdict(Ladder(c.task, c.run_id, [], c.target, c.stopped_at, c.n_test, c.leakage_dropped, c.notes))
    d["rungs"] = [result_to_dict(r, with_examples) for r in c.rungs]
    d["costs"] = [x.to_dict() for x in c.costs]
    d["pricing"] = c.costs[0].basis.to_dict() if c.costs and c.costs[0].basis else None
    d["measured"] = c.measured.to_dict() if c.measured is not None else None
    d["verdict"] = c.verdict.to_dict() if c.verdict is not None else None
    return d


def rung_result_from_dict(d: dict[str, Any]) -> RungResult:
    """A stored rung result, read back (results stored before rung kinds existed get their
    rung class's kind, or ``prompt`` for a rung no longer installed)."""
    d = dict(d)
    d["metric"] = MetricValue(**d["metric"])
    d["comparison"] = Comparison(**d["comparison"]) if d.get("comparison") else None
    kind = d.get("kind")
    d["kind"] = RungKind(**kind) if isinstance(kind, dict) else _registered_kind(d["rung"])
    d["training"] = TrainingRecord(**d["training"]) if d.get("training") else None
    return RungResult(**d)


def _registered_kind(name: str) -> RungKind:
    try:
        return RUNGS.get(name).kind
    except UnknownName:
        return PROMPT


def load_climb(climb_id: int, store: Store | None = None) -> ClimbResult:
    """Rebuild a finished (or partial) climb's results from the store, priced with its stored config."""
    store = store or Store()
    row = store.climb(climb_id)
    rungs = [rung_result_from_dict(json.loads(r["result_json"])) for r in store.rungs(climb_id) if r["result_json"]]
    skipped = [f"{r['name']} skipped: {r['skip_reason']}" for r in store.rungs(climb_id) if r["status"] == "skipped"]
    cfg = json.loads(row["config_json"])
    stored = (json.loads(row["result_json"]) or {}) if row["result_json"] else {}
    # Runs stored before the hardware was recorded: the model id still says which backend answered.
    measured = (Measured.from_dict(stored["measured"]) if stored.get("measured")
                else Measured.from_model_id(row["model_id"]))
    c = ClimbResult(
        task=row["task_name"], run_id=climb_id, rungs=rungs, target=cfg.get("target"),
        stopped_at=stored.get("stopped_at"),
        n_test=row["n_test"], leakage_dropped=row["leakage_exact"] + row["leakage_normalized"], notes=skipped,
        measured=measured,
    )
    if rungs:
        price_and_advise(c, task_from_dict(cfg, source=f"run {climb_id} config"))
    return c
