"""The two cheap rungs: a classical baseline that can be the whole answer ("no LLM needed"), and a
constrained prompt that closes a format gap without training (or reports an endpoint that cannot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import ticket_rows, write_jsonl, write_task
from rungwise.backends.scripted import ScriptedBackend
from rungwise.climb import climb
from rungwise.config.task import load_task
from rungwise.prompting import PromptTemplate
from rungwise.types import Chat


def _task(tmp_path: Path, **over: Any) -> Any:
    write_jsonl(tmp_path / "data.jsonl", ticket_rows(20))
    return load_task(write_task(tmp_path, data={"path": "data.jsonl", "test_fraction": 0.3, "seed": 1}, **over))


def test_classic_meets_the_target_and_the_verdict_says_no_llm_is_needed(tmp_path: Path) -> None:
    task = _task(tmp_path, target="accuracy >= 0.9", rungs={"order": ["classic", "zero_shot"]})
    res = climb(task, all_rungs=True)
    classic, zero = res.rungs
    assert classic.kind.name == "baseline" and not classic.kind.uses_llm
    assert classic.metric.value == 1.0 and classic.mean_prompt_tokens == 0 and classic.examples_per_s > 0
    assert (Path(classic.artifact["directory"]) / "classifier.safetensors").exists()
    cost = res.costs[0]
    assert cost.hosted is None and cost.self_hosted is not None  # no tokens: priced from throughput on a machine
    assert res.verdict is not None and res.verdict.recommended == "classic"
    assert "(no LLM needed)" in res.verdict.headline
    assert any(r.startswith("zero_shot vs the classical baseline classic (1.000): -") for r in res.verdict.reasons)


def test_classic_is_the_default_first_rung_of_a_label_task_and_stops_the_climb(tmp_path: Path) -> None:
    raw = _task(tmp_path, target="accuracy >= 0.9").model_dump(mode="json")
    del raw["rungs"]  # no order given
    from rungwise.config.task import task_from_dict

    task = task_from_dict(raw, base_dir=tmp_path)
    assert task.rungs.order == ["classic", "zero_shot", "constrained", "few_shot"]
    res = climb(task)
    assert res.stopped_at == "classic" and [r.rung for r in res.rungs] == ["classic"]


def test_classic_is_served_behind_the_same_api(tmp_path: Path) -> None:
    from rungwise.backends.openai_compat import OpenAIBackend
    from rungwise.serve import app_for_task, background
    from rungwise.types import GenParams

    task = _task(tmp_path, rungs={"order": ["classic"]})
    res = climb(task)
    app = app_for_task(task, "classic", res.run_id)
    try:
        with background(app) as url:
            got = OpenAIBackend(url + "/v1", "t-classic", max_retries=0).generate(
                [[{"role": "user", "content": "ticket 3 about crash error number 8"}]], GenParams())
    finally:
        app.state.close()
    assert got[0].text == "bug"


def test_classic_is_skipped_without_labels(tmp_path: Path) -> None:
    task = _task(tmp_path, labels=None, metric="exact_match", rungs={"order": ["zero_shot", "classic"]})
    res = climb(task, all_rungs=True)
    assert any("classic skipped: the classical baseline answers labels" in n for n in res.notes)


def _wordy(chat: Chat) -> str:
    """A 'model' that knows the answer but never says it in the format."""
    words = {"invoice": "billing", "crash": "bug", "password": "account"}
    text = chat[-1]["content"]
    return "I think this is about " + next((v for k, v in words.items() if k in text), "something")


def _scores(chat: Chat, choice: str) -> float:
    return 0.0 if choice in _wordy(chat) else -3.0


def test_constraining_the_output_closes_a_format_gap_and_the_verdict_says_so(tmp_path: Path) -> None:
    task = _task(tmp_path, target="accuracy >= 0.9", factors={"output_consistency": "high"},
                 rungs={"order": ["zero_shot", "constrained", "finetune"]})
    res = climb(task, rungs=["zero_shot", "constrained"], all_rungs=True,
                backend=ScriptedBackend(_wordy, choice_scores=_scores))
    zero, con = res.rungs
    assert zero.format_valid_rate == 0.0 and zero.failures["behaviour"] == zero.metric.n
    assert con.format_valid_rate == 1.0 and con.metric.value == 1.0 and con.kind.constrains_output
    assert con.comparison is not None and con.comparison.significant
    assert res.verdict is not None and res.verdict.recommended == "constrained"
    assert any("constraining the output closes the format gap without training" in r
               and "the scripted test double follows constraints" in r for r in res.verdict.reasons)
    assert any("the zero_shot prompt with its output constrained to a choice of 3" in n for n in con.notes)
    assert any("(same prompt unconstrained" in n or "on the same prompt unconstrained" in n for n in con.notes)


def test_calibration_is_measured_at_prepare_and_stored(tmp_path: Path) -> None:
    task = _task(tmp_path, rungs={"order": ["constrained"], "constrained": {"calibrate": True}})
    res = climb(task, backend=ScriptedBackend(_wordy, choice_scores=_scores))
    cal = res.rungs[0].artifact["calibration"]
    assert cal["choices"] == ["billing", "bug", "account"] and len(cal["offsets"]) == 3


def test_a_free_text_metric_has_nothing_to_constrain(tmp_path: Path) -> None:
    task = _task(tmp_path, labels=None, metric="exact_match", rungs={"order": ["zero_shot", "constrained"]})
    res = climb(task, all_rungs=True)
    assert any("constrained skipped: the metric exact_match reads free text" in n for n in res.notes)


def test_an_endpoint_that_cannot_constrain_makes_the_rung_unsupported_never_unconstrained(tmp_path: Path) -> None:
    from rungwise.serve import background, create_app

    server = create_app(ScriptedBackend(_wordy), PromptTemplate(""), "t")
    with background(server) as url:
        task = _task(tmp_path, model={"backend": "openai", "base_url": url + "/v1", "id": "t",
                                      "structured_outputs": "none", "max_retries": 0},
                     rungs={"order": ["zero_shot", "constrained"]})
        res = climb(task, all_rungs=True)
    assert [r.rung for r in res.rungs] == ["zero_shot"]
    assert any(n.startswith("constrained skipped: unsupported by this backend") for n in res.notes)


@pytest.mark.parametrize("metric,options,kind", [("json_valid", {}, "json"), ("regex", {"pattern": "^[a-z]+$"}, "regex")])
def test_the_metric_names_the_format_to_constrain(tmp_path: Path, metric: str, options: dict, kind: str) -> None:
    from rungwise.evaluate.registry import get_metric

    task = _task(tmp_path, labels=None, metric={"name": metric, "options": options})
    c = get_metric(task.metric, task.labels, task.base_dir).constraint()
    assert c is not None and c.kind == kind


@pytest.mark.model
def test_classic_embeddings_variant_fits_saves_and_reloads(tmp_path: Path) -> None:
    task = _task(tmp_path, rungs={"order": ["classic", "classic_emb"], "classic_emb": {"use": "classic",
                                                                                        "variant": "embeddings_lr"}})
    res = climb(task, all_rungs=True)
    emb = res.rungs[1]
    assert emb.rung == "classic_emb" and emb.artifact["variant"] == "embeddings_lr" and emb.metric.value >= 0.9
    from rungwise.classic import ClassicModel

    again = ClassicModel.load(emb.artifact["directory"])
    assert again.predict(["ticket 1 about password login number 7"]) == ["account"]
