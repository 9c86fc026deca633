"""The rung contract: composite rungs resolve each other once, a rung that cannot run is skipped
(never fails the climb), every prompt is built once and stored as sent with its trace, every
backend a climb opens is closed, stored artifacts are validated, resumes refuse changed data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from helpers import ticket_rows, write_jsonl, write_task
from rungwise.backends.scripted import ScriptedBackend
from rungwise.climb import climb
from rungwise.config.task import load_task
from rungwise.errors import ConfigError, RungwiseError, Unsupported
from rungwise.prompting import PromptTemplate
from rungwise.registry import RUNGS
from rungwise.rungs import Prepared, PromptArtifact, PromptPlan, Rung, RungContext, Workspace
from rungwise.rungs.base import BackendPool, base_system
from rungwise.store import Store
from rungwise.types import Example, GenParams


class Counting(Rung):
    """Counts how often it is prepared and loaded; owns a backend the climb must close."""

    name = "counting"
    summary = "test rung"
    prepares: ClassVar[int] = 0
    loads: ClassVar[int] = 0
    closed: ClassVar[int] = 0

    def prepare(self, ctx: RungContext) -> Prepared:
        type(self).prepares += 1
        own = ctx.backends.adopt(_Closing({"default": "billing"}))
        tpl = PromptTemplate("COUNTED " + base_system(ctx.task))
        return Prepared(PromptArtifact(prompt=tpl.to_dict()), tpl, backend=own)

    def load(self, ctx: RungContext, artifact: Any) -> Prepared:
        type(self).loads += 1
        own = ctx.backends.adopt(_Closing({"default": "billing"}))
        return Prepared(artifact, PromptTemplate.from_dict(artifact.prompt), backend=own)


class _Closing(ScriptedBackend):
    def close(self) -> None:
        Counting.closed += 1


class Composite(Rung):
    """Answers with the model and prompt of ``counting`` plus a per-example context and trace."""

    name = "composite"
    summary = "test rung built on counting"
    build: ClassVar[bool] = True

    def prepare(self, ctx: RungContext) -> Prepared:
        base = ctx.resolve("counting", build=self.build)

        def per_example(ex: Example) -> PromptPlan:
            return PromptPlan(base.template, context=f"[ctx] {ex.input[:6]}", trace={"retrieved": [ex.input[:6]]})

        return Prepared(PromptArtifact(prompt=base.template.to_dict()), base.template, backend=base.backend,
                        per_example=per_example)


class Lookup(Composite):
    """Like composite, but never builds ``counting``: it needs it to have run."""

    name = "lookup"
    build = False


class Refused(Rung):
    """A rung whose backend refuses its constraint."""

    name = "refused"
    summary = "test rung"

    def prepare(self, ctx: RungContext) -> Prepared:
        return Prepared(PromptArtifact(prompt={}), PromptTemplate("x"), backend=ctx.backends.adopt(_Refusing()))


class _Refusing(ScriptedBackend):
    def generate(self, prompts: Any, params: GenParams, progress: Any = None) -> Any:
        raise Unsupported("this endpoint rejects structured outputs")


@pytest.fixture(autouse=True)
def test_rungs() -> Iterator[None]:
    for cls in (Counting, Composite, Lookup, Refused):
        RUNGS.register(cls.name, cls)
    Counting.prepares = Counting.loads = Counting.closed = 0
    yield
    for cls in (Counting, Composite, Lookup, Refused):
        RUNGS.unregister(cls.name)


def _task(tmp_path: Path, order: list[str], **over: Any) -> Any:
    return load_task(write_task(tmp_path, rungs={"order": order}, **over))


def test_a_composite_rung_reuses_the_rung_it_resolves_prepared_once(tmp_path: Path) -> None:
    res = climb(_task(tmp_path, ["counting", "composite"]), all_rungs=True)
    assert Counting.prepares == 1 and Counting.loads == 0
    assert [r.rung for r in res.rungs] == ["counting", "composite"]
    assert Counting.closed == 1  # the backend counting opened was closed once, by the climb


def test_prompts_are_stored_as_sent_with_their_trace(tmp_path: Path) -> None:
    backend = ScriptedBackend({"default": "billing"})
    task = _task(tmp_path, ["zero_shot", "composite"])
    res = climb(task, all_rungs=True, backend=backend)
    store = Store()
    rows = sorted(store.predictions(res.rungs[1].id).values(), key=lambda r: r["example_index"])
    for row in rows:
        prompt = json.loads(row["prompt_json"])
        assert prompt[0]["content"].startswith("COUNTED")
        assert prompt[-1]["content"].startswith("[ctx] ") and prompt[-1]["content"].endswith(row["input"])
        assert json.loads(row["trace_json"]) == {"retrieved": [row["input"][:6]]}
    # zero_shot went through the shared backend: what it got is exactly what was stored
    zs = sorted(store.predictions(res.rungs[0].id).values(), key=lambda r: r["example_index"])
    assert [json.loads(r["prompt_json"]) for r in zs] == backend.calls[: len(zs)]


def test_a_rung_that_needs_another_is_skipped_with_the_reason_then_reuses_a_stored_one(tmp_path: Path) -> None:
    task = _task(tmp_path, ["zero_shot", "lookup"])
    res = climb(task, all_rungs=True)
    assert [r.rung for r in res.rungs] == ["zero_shot"]
    assert any(n.startswith("lookup skipped: needs the counting rung") for n in res.notes)
    assert res.verdict is not None  # the climb finished and judged what it measured
    assert Store().climb(res.run_id)["status"] == "done"
    # once counting has been climbed on this task, lookup loads its stored artifact
    climb(_task(tmp_path, ["counting"]))
    again = climb(_task(tmp_path, ["lookup"]))
    assert [r.rung for r in again.rungs] == ["lookup"] and Counting.prepares == 1 and Counting.loads == 1


def test_a_backend_that_rejects_the_rung_marks_it_unsupported(tmp_path: Path) -> None:
    res = climb(_task(tmp_path, ["zero_shot", "refused"]), all_rungs=True)
    assert [r.rung for r in res.rungs] == ["zero_shot"]
    assert any("refused skipped: unsupported by this backend: this endpoint rejects" in n for n in res.notes)
    rows = {r["name"]: r for r in Store().rungs(res.run_id)}
    assert rows["refused"]["status"] == "skipped" and "rejects" in rows["refused"]["skip_reason"]


def test_backends_are_closed_when_a_rung_fails(tmp_path: Path) -> None:
    class Broken(Composite):
        name = "broken"

        def predict(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("boom")

    RUNGS.register("broken", Broken)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            climb(_task(tmp_path, ["broken"]))
    finally:
        RUNGS.unregister("broken")
    assert Counting.closed == 1


def test_cycles_between_rungs_are_a_clear_error(tmp_path: Path) -> None:
    class Ouroboros(Rung):
        name = "ouroboros"

        def prepare(self, ctx: RungContext) -> Prepared:
            return ctx.resolve("ouroboros")

    RUNGS.register("ouroboros", Ouroboros)
    try:
        task = _task(tmp_path, ["ouroboros"])
        with Workspace(task, [], BackendPool(lambda: ScriptedBackend())) as ws, pytest.raises(ConfigError, match="cycle"):
            ws.prepare("ouroboros")
    finally:
        RUNGS.unregister("ouroboros")


def test_a_stored_artifact_of_another_version_is_refused(tmp_path: Path) -> None:
    task = _task(tmp_path, ["few_shot"])
    with Workspace(task, [], BackendPool(lambda: ScriptedBackend())) as ws:
        with pytest.raises(ConfigError, match="version 7"):
            ws.load("few_shot", {"version": 7, "prompt": {}, "strategy": "stratified", "k": 1})
        with pytest.raises(ConfigError, match="not what this rungwise expects"):
            ws.load("few_shot", {"version": 1, "prompt": {}, "strategy": "psychic", "k": 1})


def test_finetune_rungs_are_estimated_with_the_prompt_they_send(tmp_path: Path) -> None:
    from rungwise.economics.estimate import estimate_profiles

    task = load_task(write_task(tmp_path, rungs={"order": ["zero_shot", "finetune", "finetune_full"],
                                                 "finetune_full": {"use": "finetune", "prompt": "full"}}))
    by = {p.rung: p for p in estimate_profiles(task)[0]}
    system = base_system(task)
    # trained on the full prompt: sent the full prompt
    assert by["finetune_full"].prompt_tokens == pytest.approx(by["zero_shot"].prompt_tokens)
    # trained on the input alone (the default): about len(system)/4 + a message's overhead fewer tokens
    assert by["finetune_full"].prompt_tokens - by["finetune"].prompt_tokens >= len(system) / 4
    # and fewer training tokens too
    assert by["finetune"].training is not None and by["finetune_full"].training is not None
    assert by["finetune"].training.tokens < by["finetune_full"].training.tokens
    assert by["finetune"].kind.trains_weights and not by["zero_shot"].kind.trains_weights


# ------------------------------------------------------------------------------ resume honesty
def test_resume_refuses_changed_data(tmp_path: Path) -> None:
    from rungwise.climb import _Quiet

    task_path = write_task(tmp_path, model={"backend": "scripted", "script": {"default": "billing"}})
    task = load_task(task_path)

    class Stop(_Quiet):
        def advance(self, n: int) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        climb(task, reporter=Stop())
    write_jsonl(tmp_path / "data.jsonl", ticket_rows(6))  # the data file changed since
    with pytest.raises(RungwiseError, match="different (train|test) data") as err:
        climb(load_task(task_path), resume=True)
    assert "start a new run" in (err.value.hint or "")


def test_resume_refuses_another_limit(tmp_path: Path) -> None:
    from rungwise.climb import _Quiet

    task = load_task(write_task(tmp_path))

    class Stop(_Quiet):
        def advance(self, n: int) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        climb(task, reporter=Stop())
    with pytest.raises(RungwiseError, match="--limit none; this resume asks for --limit 5"):
        climb(task, resume=True, limit=5)
    res = climb(task, resume=True)  # the same (no) limit resumes
    assert res.n_test == len(res.rungs[0].scores)


def test_a_variant_climbs_the_same_rung_under_its_own_name_and_settings(tmp_path: Path) -> None:
    from rungwise.climb import load_climb

    task = load_task(write_task(tmp_path, rungs={"order": ["few_shot", "few_shot_2"], "few_shot": {"k": 4},
                                                 "few_shot_2": {"use": "few_shot", "k": 2}}))
    res = climb(task, all_rungs=True)
    assert [r.rung for r in res.rungs] == ["few_shot", "few_shot_2"]
    assert [len(r.artifact["prompt"]["demos"]) for r in res.rungs] == [4, 2]
    again = load_climb(res.run_id)  # the stored config (with `use`) validates again
    assert [r.rung for r in again.rungs] == ["few_shot", "few_shot_2"]
    with pytest.raises(ConfigError, match="unknown rung 'fewshot'"):
        load_task(write_task(tmp_path, rungs={"order": ["v"], "v": {"use": "fewshot"}}))
    with pytest.raises(ConfigError, match="'zero_shot' is a rung of its own"):
        load_task(write_task(tmp_path, rungs={"order": ["zero_shot"], "zero_shot": {"use": "few_shot"}}))
    with pytest.raises(ConfigError, match=r"rungs.v.kk"):
        load_task(write_task(tmp_path, rungs={"order": ["v"], "v": {"use": "few_shot", "kk": 2}}))


def test_a_rung_work_dir_follows_only_what_its_artifact_depends_on(tmp_path: Path) -> None:
    def work_dir(finetune: dict[str, Any]) -> Path:
        task = load_task(write_task(tmp_path, rungs={"order": ["finetune"], "finetune": finetune}))
        return Workspace(task, [], BackendPool(lambda: ScriptedBackend())).work_dir("finetune")

    base = work_dir({"epochs": 3})
    # the forgetting probe and the time budget check around the adapter: the same trained work
    assert work_dir({"epochs": 3, "budget_minutes": 5, "forgetting": {"n": 50}}) == base
    # a training setting makes other weights: other work
    assert work_dir({"epochs": 2}) != base
