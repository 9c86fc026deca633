"""Behaviour or knowledge: every failure classified, per rung, in the ladder, the report and the verdict."""

from __future__ import annotations

from pathlib import Path

from helpers import write_task
from rungwise.advise.prose import explain_failures
from rungwise.backends.scripted import ScriptedBackend
from rungwise.climb import climb
from rungwise.config.task import load_task
from rungwise.evaluate.diagnosis import GOLD_RETRIEVED, Failures, answer_in_input, diagnose
from rungwise.evaluate.scores import ScoreSet
from rungwise.types import FINETUNE, PROMPT, RETRIEVAL, Example, MetricValue, RungResult


def test_failures_are_format_or_content_and_retrieval_misses_are_told_apart() -> None:
    s = ScoreSet("accuracy", [1.0, 0.0, 0.0, 0.0, 0.0], [True, False, True, True, True], ["a", "", "b", "b", "b"])
    traces = [{}, {}, {GOLD_RETRIEVED: True}, {GOLD_RETRIEVED: False}, {}]
    f = diagnose(s, traces)
    assert f == Failures(behaviour=1, knowledge=3, knowledge_retrieved=1, knowledge_not_retrieved=1)
    assert f.summary() == "1 format, 3 content (1 gold passage not retrieved, 1 retrieved)"


def test_a_graded_metric_fails_below_one_half() -> None:
    s = ScoreSet("token_f1", [0.9, 0.4, 0.6, 0.0], [True, True, True, False], ["", "", "", ""])
    assert diagnose(s) == Failures(behaviour=1, knowledge=1)


def test_an_answer_made_of_spans_of_the_input_is_told_apart() -> None:
    snips = Example("play the song Yellow Submarine by the  beatles",
                    '{"intent": "PlayMusic", "slots": {"track": "Yellow Submarine", "artist": "The Beatles"}}')
    assert answer_in_input(snips)  # two of its three values are in the request (not the intent)
    assert not answer_in_input(Example("what's the weather", '{"intent": "GetWeather", "slots": {}}'))
    assert answer_in_input(Example("Context: Paris is the capital of France. Q: capital?", "Paris"))
    assert not answer_in_input(Example("Who wrote Hamlet?", "William Shakespeare"))
    assert not answer_in_input(Example("Tom has 3 apples and eats 1. How many are left? 2 is wrong.", "2"))
    s = ScoreSet("json_fields", [0.2, 0.1, 0.0], [True, True, False], ["", "", ""])
    exs = [snips, Example("Who wrote Hamlet?", "William Shakespeare"), snips]
    assert diagnose(s, None, exs) == Failures(behaviour=1, knowledge=2, knowledge_in_input=1)


def _result(name: str, value: float, behaviour: int, knowledge: int, kind=PROMPT, **extra: int) -> RungResult:
    return RungResult(name, MetricValue("accuracy", value, value - 0.1, value + 0.1, 100), 0.9, 100, 2, 0, 0.1, 0.2, 5,
                      False, kind=kind, failures={"behaviour": behaviour, "knowledge": knowledge,
                                                  "knowledge_retrieved": 0, "knowledge_not_retrieved": 0, **extra})


def test_the_verdict_says_which_rung_closed_which_kind_and_where_the_rest_points() -> None:
    lines, step = explain_failures([_result("zero_shot", 0.2, 80, 0), _result("few_shot", 0.6, 5, 35)])
    assert lines[1].startswith("few_shot: 5 of 100 fail on format (behaviour), 35 on content (knowledge)")
    assert "against zero_shot: 75 fewer format failures, 35 more content failures" in lines[1]
    assert step is not None and "knowledge" in step and "rag rung" in step and "rather than training" in step
    # On a label task a valid but wrong answer is a confused label: more examples first, not documents.
    _, step = explain_failures([_result("finetune", 0.86, 0, 7, kind=FINETUNE)], labels=True)
    assert step is not None and "valid labels but the wrong ones (7 of 7)" in step and "confuses labels" in step
    _, step = explain_failures([_result("zero_shot", 0.3, 60, 10)])
    assert step is not None and "behaviour" in step and "constrain the output" in step
    _, step = explain_failures([_result("rag", 0.7, 2, 28, kind=RETRIEVAL, knowledge_not_retrieved=20,
                                        knowledge_retrieved=8)])
    assert step is not None and "improve retrieval" in step
    _, step = explain_failures([_result("rag", 0.7, 2, 28, kind=RETRIEVAL, knowledge_not_retrieved=3,
                                        knowledge_retrieved=25)])
    assert step is not None and "(28 of 30), 25 of them with the gold passage retrieved: the model misreads it" in step
    # Extraction: the expected values are in the input, so documents would add nothing.
    lines, step = explain_failures([_result("few_shot", 0.5, 5, 45, knowledge_in_input=40)])
    assert "the expected answer is in the input for 40 of those" in lines[0]
    assert step is not None and "40 of them with the expected values in the input itself" in step
    assert "retrieval cannot fix" in step and "rag rung" not in step


def test_the_ladder_report_and_verdict_carry_the_counts(tmp_path: Path) -> None:
    from rungwise.report.data import report_data_from_store
    from rungwise.report.markdown import render_markdown

    task = load_task(write_task(tmp_path, target="accuracy >= 0.9"))
    # "billing" is valid but often wrong (knowledge); "no idea" is not a label (behaviour)
    script = {"default": "billing"}
    res = climb(task, rungs=["zero_shot"], backend=ScriptedBackend(script))
    f = res.rungs[0].failures
    n = res.n_test
    wrong = sum(1 for s in res.rungs[0].scores if s < 1)
    assert f["behaviour"] == 0 and f["knowledge"] == wrong and wrong < n
    assert res.verdict is not None and res.verdict.diagnosis[0].startswith(f"zero_shot: 0 of {n} fail on format")
    data = report_data_from_store(res.run_id)
    assert data["rungs"][0]["failures"]["knowledge"] == wrong
    md = render_markdown(data)
    assert f"| 0 / {wrong} |" in md and "Failures (behaviour = wrong format" in md


def test_only_free_text_answers_count_as_in_the_input(tmp_path: Path) -> None:
    from helpers import write_jsonl

    # every input names its own answer; the script answers "billing" to all of them
    rows = [{"input": f"ticket {i}: my {w} needs help", "output": w} for i in range(8) for w in ("account", "bug")]
    write_jsonl(tmp_path / "data.jsonl", rows)
    data = {"path": "data.jsonl", "test_fraction": 0.5, "seed": 1}
    labelled = climb(load_task(write_task(tmp_path, data)), rungs=["zero_shot"])
    f = labelled.rungs[0].failures
    assert f["knowledge"] > 0 and f["knowledge_in_input"] == 0  # a label that is a word of the input: no extraction
    free = climb(load_task(write_task(tmp_path, data, labels=None, metric="exact_match")), rungs=["zero_shot"])
    f = free.rungs[0].failures
    assert f["knowledge"] > 0 and f["knowledge_in_input"] == f["knowledge"]
