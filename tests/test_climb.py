from __future__ import annotations

from pathlib import Path

import pytest

from helpers import write_task
from rungwise.backends.scripted import ScriptedBackend
from rungwise.climb import climb, load_climb
from rungwise.config.task import load_task
from rungwise.store import Store
from rungwise.types import Chat


def oracle(chat: Chat) -> str:
    """Right when the prompt carries demos (few-shot), always 'billing' otherwise."""
    text = chat[-1]["content"]
    has_demos = sum(m["role"] == "assistant" for m in chat) > 0
    if not has_demos:
        return "billing"
    return "billing" if "invoice" in text else "bug" if "crash" in text else "account"


def test_climb_scores_rungs_and_compares(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path, target="accuracy >= 0.9"))
    be = ScriptedBackend(oracle)
    res = climb(task, backend=be)
    zs, fs = res.rungs
    assert zs.rung == "zero_shot" and fs.rung == "few_shot"
    assert zs.metric.value == pytest.approx(1 / 3, abs=0.01) and fs.metric.value == 1.0
    assert zs.metric.ci_low <= zs.metric.value <= zs.metric.ci_high
    assert fs.meets_target and not zs.meets_target and res.stopped_at == "few_shot"
    assert fs.comparison is not None and fs.comparison.against == "zero_shot" and fs.comparison.p_value < 0.05
    assert fs.mean_prompt_tokens > zs.mean_prompt_tokens  # demos cost tokens
    assert zs.format_valid_rate == 1.0
    # the test split never served as demos
    test_inputs = {p["input"] for p in Store().db.execute("SELECT input FROM predictions")}
    demo_inputs = {d[0] for d in fs.artifact["prompt"]["demos"]}
    assert demo_inputs and not demo_inputs & test_inputs


def test_stops_at_first_rung_meeting_target_unless_all(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path, target="accuracy >= 0.3"))
    assert [r.rung for r in climb(task, backend=ScriptedBackend(oracle)).rungs] == ["zero_shot"]
    assert [r.rung for r in climb(task, backend=ScriptedBackend(oracle), all_rungs=True).rungs] == ["zero_shot", "few_shot"]


def test_outputs_outside_label_set_are_format_failures(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path))
    res = climb(task, rungs=["zero_shot"], backend=ScriptedBackend({"default": "I think it is about money"}))
    assert res.rungs[0].format_valid_rate == 0.0 and res.rungs[0].metric.value == 0.0


def test_limit(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path))
    res = climb(task, rungs=["zero_shot"], limit=4, backend=ScriptedBackend(oracle))
    assert res.n_test == 4 and res.rungs[0].metric.n == 4


def test_interrupted_climb_resumes_without_regenerating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rungwise.climb as climb_mod

    monkeypatch.setattr(climb_mod, "CHUNK", 2)
    task = load_task(write_task(tmp_path))
    n_test = len(climb_mod.load_split(task).test)

    class Boom(ScriptedBackend):
        def generate(self, prompts, params, progress=None):  # type: ignore[no-untyped-def]
            if len(self.calls) >= 4:
                raise KeyboardInterrupt
            return super().generate(prompts, params, progress)

    first = Boom(oracle)
    with pytest.raises(KeyboardInterrupt):
        climb(task, all_rungs=True, backend=first)
    store = Store()
    (row,) = store.list_climbs()
    assert row["status"] == "interrupted"
    assert store.db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 4

    second = ScriptedBackend(oracle)
    res = climb(task, all_rungs=True, resume=True, backend=second)
    assert res.run_id == row["id"]
    assert len(second.calls) == 2 * n_test - 4  # nothing already stored was generated again
    assert [r.rung for r in res.rungs] == ["zero_shot", "few_shot"]
    assert Store().climb(res.run_id)["status"] == "done"
    again = load_climb(res.run_id)
    assert again.rungs[1].metric.value == res.rungs[1].metric.value


def test_resume_refuses_changed_config(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path))
    res = climb(task, rungs=["zero_shot"], backend=ScriptedBackend(oracle))
    changed = load_task(write_task(tmp_path, instructions="Something else."))
    from rungwise.errors import RungwiseError

    with pytest.raises(RungwiseError, match="different task config"):
        climb(changed, resume=res.run_id, backend=ScriptedBackend(oracle))


def test_nearest_neighbour_demos_are_similar(tmp_path: Path) -> None:
    from helpers import write_jsonl

    words = {"billing": "invoice charge", "bug": "crash error", "account": "password login"}
    rows = [{"input": f"my {w} problem, customer {lab}{i}", "output": lab} for lab, w in words.items() for i in range(10)]
    write_jsonl(tmp_path / "nn.jsonl", rows)
    task = load_task(write_task(tmp_path, data={"path": "nn.jsonl", "test_fraction": 0.3, "seed": 1},
                                rungs={"order": ["few_shot"], "few_shot": {"k": 3, "strategy": "nearest"}}))
    be = ScriptedBackend(oracle)
    climb(task, backend=be)
    for chat in be.calls:
        demos = [m["content"] for m in chat if m["role"] == "assistant"]
        q = chat[-1]["content"]
        topic = "invoice" if "invoice" in q else "crash" if "crash" in q else "password"
        # the closest demo (last) shares the ticket's topic words
        assert topic in [m["content"] for m in chat if m["role"] == "user"][-2], (q, demos)


def test_store_records_provenance(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path))
    res = climb(task, rungs=["zero_shot"], backend=ScriptedBackend(oracle))
    store = Store()
    row = store.climb(res.run_id)
    assert row["config_hash"] == task.config_hash() and len(row["train_hash"]) == 16 and row["model_id"] == "scripted"
    assert store.schema_version >= 1
    preds = store.db.execute("SELECT prompt_json, completion, score, valid FROM predictions").fetchall()
    assert len(preds) == res.n_test and all(p["score"] is not None for p in preds)


def test_reuse_generates_again_only_what_a_changed_setting_touches(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path, rungs={"order": ["zero_shot", "few_shot"], "few_shot": {"k": 3}}))
    first = climb(task, all_rungs=True, backend=ScriptedBackend(oracle))
    n = first.n_test
    # Only the few-shot settings changed: zero-shot's prompts are the same, so its answers are reused.
    changed = load_task(write_task(tmp_path, rungs={"order": ["zero_shot", "few_shot"], "few_shot": {"k": 2}}))
    be = ScriptedBackend(oracle)
    second = climb(changed, all_rungs=True, reuse=first.run_id, backend=be)
    assert second.run_id != first.run_id and len(be.calls) == n  # few_shot alone was generated
    assert [c[-1]["role"] for c in be.calls] == ["user"] * n and all(len(c) > 2 for c in be.calls)
    z1, z2 = first.rungs[0], second.rungs[0]
    assert z2.predictions == z1.predictions and z2.metric.value == z1.metric.value
    assert z2.examples_per_s == pytest.approx(z1.examples_per_s)  # its measured generation time came along
    # New instructions change every prompt: nothing is reused.
    other = load_task(write_task(tmp_path, instructions="Something else.",
                                 rungs={"order": ["zero_shot", "few_shot"], "few_shot": {"k": 2}}))
    be = ScriptedBackend(oracle)
    climb(other, all_rungs=True, reuse=first.run_id, backend=be)
    assert len(be.calls) == 2 * n
