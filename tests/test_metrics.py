"""Metrics: every metric's score and format-validity, option checking, user metrics, errors."""

from __future__ import annotations

import json
import math
import sys
import uuid
from pathlib import Path

import pytest

from rungwise.config.task import MetricSpec
from rungwise.errors import ConfigError, DataError
from rungwise.evaluate.parsing import extract_number, parse_label, strip_code_fence
from rungwise.evaluate.registry import get_metric, metric_names
from rungwise.evaluate.scores import ScoreSet
from rungwise.types import Example

LABELS = ["billing", "bug", "card_arrival", "Refund_not_showing_up"]


def ex(output: str, label: str | None = None, i: int = 1) -> Example:
    return Example(input=f"q{i}", output=output, label=label, source=f"data.jsonl:{i}")


def exs(*outputs: str) -> list[Example]:
    return [ex(o, i=i + 1) for i, o in enumerate(outputs)]


def metric(name: str, labels: list[str] | None = None, base_dir: Path = Path("."), **options):
    return get_metric(MetricSpec(name=name, options=options), labels, base_dir)


# ------------------------------------------------------------------ parse_label


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("billing", "billing"),
        ("  Billing  ", "billing"),
        ("'billing'.", "billing"),
        ('"BUG"', "bug"),
        ("**billing**", "billing"),
        ("`refund_not_showing_up`", "Refund_not_showing_up"),
        ("[card_arrival]", "card_arrival"),
        ("billing!!", "billing"),
        ("Label: billing", "billing"),
        ("**Category**: 'bug'.", "bug"),
        ("Intent - card_arrival", "card_arrival"),
        ("Answer => bug", "bug"),
        ("\n\n  bug\nbecause the app crashes", "bug"),
    ],
)
def test_parse_label_accepts_presentation_noise(text: str, expected: str) -> None:
    assert parse_label(text, LABELS) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n  ",
        "I think it is billing",  # a label inside a sentence is not a clean answer
        "not-billing",  # a dash without spaces is part of a word, not a separator
        "billing or bug",
        "Because the app crashes\nbug",  # only the first non-empty line counts
        "card arrival",  # no fuzzy matching of spaces vs underscores
        "billings",
    ],
)
def test_parse_label_rejects_what_is_not_a_clean_label(text: str) -> None:
    assert parse_label(text, LABELS) is None


# ------------------------------------------------------------------ exact_match


def test_exact_match_default_strips_and_ignores_case() -> None:
    s = metric("exact_match").score(["  Paris\n", "paris", "Lyon", ""], exs("Paris", "PARIS", "Paris", "Paris"))
    assert s.scores == [1.0, 1.0, 0.0, 0.0]
    assert s.valid == [True, True, True, False]  # only the empty answer is format-invalid
    assert s.value == 0.5 and s.valid_rate == 0.75


def test_exact_match_case_sensitive_and_no_strip() -> None:
    cs = metric("exact_match", case_sensitive=True).score(["paris", "Paris"], exs("Paris", "Paris"))
    assert cs.scores == [0.0, 1.0]
    raw = metric("exact_match", strip=False).score([" Paris", "Paris"], exs("Paris", "Paris"))
    assert raw.scores == [0.0, 1.0]


# ------------------------------------------------------------------ accuracy / macro_f1


def test_accuracy_scores_parsed_labels_and_flags_invalid_outputs() -> None:
    m = metric("accuracy", LABELS)
    preds = ["Billing.", "The label is bug", "card_arrival", "bug"]
    examples = [ex("billing", i=1), ex("bug", i=2), ex("x", label="card_arrival", i=3), ex("billing", i=4)]
    s = m.score(preds, examples)
    assert s.scores == [1.0, 0.0, 1.0, 0.0]
    assert s.valid == [True, False, True, True]  # "bug" for gold billing is wrong but well-formed
    assert s.parsed == ["billing", "", "card_arrival", "bug"]
    assert s.gold == ["billing", "bug", "card_arrival", "billing"]  # label field wins over output
    assert s.value == 0.5 and s.valid_rate == 0.75


def test_accuracy_gold_outside_label_set_is_a_data_error_naming_the_line() -> None:
    with pytest.raises(DataError) as err:
        metric("accuracy", LABELS).score(["bug"], [ex("refunds", i=7)])
    assert "data.jsonl:7" in str(err.value) and "'refunds'" in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("name", ["accuracy", "macro_f1"])
def test_label_metrics_need_labels(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        metric(name, None)
    assert "labels" in str(err.value) and err.value.hint


def _macro_f1_reference(gold: list[str], pred: list[str | None]) -> float:
    """sklearn's formula, written out: per-class P and R (0 when undefined), F1 = 2PR/(P+R),
    averaged over the gold classes."""
    f1s = []
    for c in sorted(set(gold)):
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p == c)
        n_pred = sum(1 for p in pred if p == c)
        n_gold = sum(1 for g in gold if g == c)
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_gold
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(f1s) / len(f1s)


def test_macro_f1_matches_hand_computed_value() -> None:
    labels = ["a", "b", "c"]
    gold = ["a", "a", "a", "b", "b", "c"]
    preds = ["a", "a", "b", "b", "nonsense", "a"]
    s = metric("macro_f1", labels).score(preds, exs(*gold))
    # a: tp 2, 3 gold, 3 predicted -> F1 2/3; b: tp 1, 2 gold, 2 predicted -> 1/2; c: tp 0 -> 0.
    assert s.value == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert s.value == pytest.approx(_macro_f1_reference(gold, ["a", "a", "b", "b", None, "a"]))
    assert s.scores == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]  # per-example score is correctness
    assert s.valid == [True, True, True, True, False, True]
    # A subset is re-scored, not averaged: examples 3..5 hold classes b and c only.
    assert s.aggregate([3, 4, 5]) == pytest.approx(_macro_f1_reference(["b", "b", "c"], ["b", None, "a"]))
    assert math.isnan(s.aggregate([]))  # no examples, no value


def test_macro_f1_agrees_with_reference_on_random_data() -> None:
    import random

    rnd = random.Random(5)
    labels = [f"l{i}" for i in range(7)]
    gold = [rnd.choice(labels) for _ in range(300)]
    preds = [g if rnd.random() < 0.6 else rnd.choice(labels + ["junk"]) for g in gold]
    s = metric("macro_f1", labels).score(preds, exs(*gold))
    ref = _macro_f1_reference(gold, [p if p in labels else None for p in preds])
    assert s.value == pytest.approx(ref)
    assert s.value != pytest.approx(sum(s.scores) / len(s.scores))  # not accuracy


# ------------------------------------------------------------------ JSON metrics


def test_strip_code_fence_variants() -> None:
    assert strip_code_fence('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_code_fence('Sure!\n```\n[1, 2]\n```\nDone.') == "[1, 2]"
    assert strip_code_fence('```json\n{"a": 1') == '{"a": 1'  # cut at max_tokens
    assert strip_code_fence('  {"a": 1}  ') == '{"a": 1}'


def test_json_valid() -> None:
    preds = ['{"b": 2, "a": 1}', '```json\n{"a": [1, 2]}\n```', "Here it is: {\"a\": 1}", "{'a': 1}", ""]
    s = metric("json_valid").score(preds, exs(*["{}"] * 5))
    assert s.scores == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert s.valid == [True, True, False, False, False]
    assert s.parsed[0] == '{"a":1,"b":2}'  # canonical: sorted keys, compact


SCHEMA = {
    "type": "object",
    "properties": {"intent": {"enum": ["refund", "order"]}, "amount": {"type": "number"}},
    "required": ["intent"],
    "additionalProperties": False,
}


def test_json_schema_from_file_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "s.json").write_text(json.dumps(SCHEMA))
    m = metric("json_schema", base_dir=tmp_path, schema="schemas/s.json")
    preds = ['{"intent": "refund", "amount": 3}', '```json\n{"intent": "order"}\n```', '{"intent": "other"}', "{", '{"amount": 1}']
    s = m.score(preds, exs(*["{}"] * 5))
    assert s.scores == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert s.valid == [True, True, False, False, False]  # conforming is the format here


def test_json_schema_inline_and_errors(tmp_path: Path) -> None:
    s = metric("json_schema", schema=SCHEMA).score(['{"intent": "order", "x": 1}'], exs("{}"))
    assert s.scores == [0.0]  # additionalProperties: false
    with pytest.raises(ConfigError) as err:
        metric("json_schema", base_dir=tmp_path, schema="nope.json")
    assert "metric.options.schema" in str(err.value) and "nope.json" in str(err.value)
    with pytest.raises(ConfigError, match="needs a schema"):
        metric("json_schema")
    with pytest.raises(ConfigError, match="invalid JSON schema"):
        metric("json_schema", schema={"type": "no-such-type"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        metric("json_schema", base_dir=tmp_path, schema="bad.json")


def test_json_fields_hand_computed() -> None:
    gold = json.dumps({"name": "Ann", "age": 30, "address": {"city": "Oslo", "zip": "0150"}, "phone": None})
    pred = '```json\n{"name": " ann ", "age": 30.0, "address": {"city": "Bergen", "zip": "0150"}, "extra": 1}\n```'
    s = metric("json_fields").score([pred], [ex(gold)])
    # gold fields: name, age, address.city, address.zip (phone is null: absent) -> 4
    # predicted: name, age, address.city, address.zip, extra -> 5; matched: name, age, zip -> 3
    assert s.scores == [pytest.approx(2 * 3 / (4 + 5))]
    assert s.valid == [True]
    assert s.micro_prf() == (pytest.approx(3 / 5), pytest.approx(3 / 4), pytest.approx(6 / 9))


def test_json_fields_invalid_and_micro_over_examples() -> None:
    golds = [ex('{"a": 1, "b": 2}', i=1), ex('{"a": 1}', i=2), ex("{}", i=3), ex('{"x": "Y"}', i=4)]
    preds = ['{"a": 1, "b": 3}', "not json", "{}", '["x", "Y"]']
    s = metric("json_fields").score(preds, golds)
    assert s.scores == [0.5, 0.0, 1.0, 0.0]  # empty vs empty is a perfect answer
    assert s.valid == [True, False, True, False]  # a JSON array is not an object
    p, r, f = s.micro_prf()
    assert (p, r) == (pytest.approx(1 / 2), pytest.approx(1 / 4))  # 1 match, 2 predicted, 4 gold
    assert f == pytest.approx(2 / 6)
    cs = metric("json_fields", case_sensitive=True).score(['{"x": "y"}'], [ex('{"x": "Y"}')])
    assert cs.scores == [0.0]
    with pytest.raises(ValueError, match="micro_prf"):
        metric("json_valid").score(["{}"], exs("{}")).micro_prf()


def test_json_fields_schema_shapes_the_constraint_not_the_score(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"intent": {"enum": ["a", "b"]}}, "required": ["intent"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    m = metric("json_fields", base_dir=tmp_path, schema="schema.json")
    c = m.constraint()
    assert c is not None and c.kind == "json" and json.loads(c.json_schema or "") == schema
    assert metric("json_fields").constraint().json_schema is None  # without one: any JSON object
    # an object the schema would refuse is still scored field by field against the expected one
    assert m.score(['{"intent": "c", "x": 1}'], [ex('{"intent": "c", "x": 1}')]).scores == [1.0]
    with pytest.raises(ConfigError, match="invalid JSON schema"):
        metric("json_fields", schema={"type": 3})


def test_json_fields_gold_must_be_an_object() -> None:
    with pytest.raises(DataError, match="data.jsonl:1"):
        metric("json_fields").score(["{}"], [ex("plain text")])


# ------------------------------------------------------------------ numeric


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3 * 4 = 12\n#### 12", 12.0),
        ("#### 1,234", 1234.0),
        ("costs $1,000.50.", 1000.5),
        ("x = 5 - 3 = 2. #### 2", 2.0),
        ("first 7 then 9", 9.0),
        ("The answer is -4.", -4.0),
        ("3-5", 5.0),  # a hyphen between digits is not a minus sign
        ("so \\boxed{3/4}", 0.75),
        ("about 2.5e-3", 0.0025),
        ("no number here", None),
    ],
)
def test_extract_number(text: str, value: float | None) -> None:
    assert extract_number(text) == value


def test_numeric_metric_tolerance_and_validity() -> None:
    golds = exs("Work...\n#### 18", "#### 0.5", "#### 100", "#### 3")
    preds = ["She makes $18 a day.", "0.5000001", "about 101", "I cannot tell"]
    s = metric("numeric").score(preds, golds)
    assert s.scores == [1.0, 1.0, 0.0, 0.0]
    assert s.valid == [True, True, True, False]
    assert s.parsed == ["18", "0.5000001", "101", ""]
    loose = metric("numeric", tolerance=1).score(preds, golds)
    assert loose.scores == [1.0, 1.0, 1.0, 0.0]
    rel = metric("numeric", rel_tolerance=0.02).score(preds, golds)
    assert rel.scores[2] == 1.0


def test_numeric_gold_without_number_is_a_data_error() -> None:
    with pytest.raises(DataError, match="data.jsonl:1.*no number"):
        metric("numeric").score(["4"], [ex("four")])


def test_numeric_on_real_gsm8k_answers() -> None:
    """Every GSM8K reference answer's number is read from its '#### N' line, not from its reasoning."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "gsm8k" / "test.jsonl"
    if not path.exists():
        pytest.skip("shared GSM8K data not on this machine")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:400]]
    golds = [Example(input=r["question"], output=r["answer"]) for r in rows]
    finals = [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    s = metric("numeric").score(finals, golds)
    assert s.value == 1.0 and s.valid_rate == 1.0
    # The reasoning alone (without the final line) usually ends on the answer, but not always:
    reasoning = [r["answer"].rsplit("####", 1)[0] for r in rows]
    assert 0.5 < metric("numeric").score(reasoning, golds).value < 1.0


# ------------------------------------------------------------------ free text


def test_chrf_matches_sacrebleu_and_is_scaled() -> None:
    from sacrebleu.metrics import CHRF

    golds = exs("The cat sat on the mat.", "Paris is the capital of France.", "x")
    preds = ["The cat sat on the mat.", "The capital of France is Paris", ""]
    s = metric("chrf").score(preds, golds)
    assert s.scores[0] == pytest.approx(1.0)
    assert s.scores[1] == pytest.approx(CHRF().sentence_score(preds[1], [golds[1].output]).score / 100)
    assert 0.3 < s.scores[1] < 1.0
    assert s.scores[2] == 0.0 and s.valid == [True, True, False]
    pp = metric("chrf", word_order=2).score(preds[1:2], golds[1:2])
    assert pp.scores[0] == pytest.approx(CHRF(word_order=2).sentence_score(preds[1], [golds[1].output]).score / 100)


def test_rouge_l_hand_computed() -> None:
    # LCS("the cat sat on the mat", "the cat was on a mat") = the cat on mat = 4 tokens; F = 2*4/(6+6)
    s = metric("rouge_l").score(["The cat sat on the mat.", ""], exs("the cat was on a mat", "x"))
    assert s.scores == [pytest.approx(8 / 12), 0.0]
    assert s.valid == [True, False]


def test_token_f1_squad_normalization() -> None:
    # normalized: "eiffel tower paris" vs "eiffel tower" -> overlap 2, F1 = 2*2/(3+2)
    s = metric("token_f1").score(["The Eiffel Tower, Paris!", "Eiffel tower"], exs("the eiffel tower", "An Eiffel Tower."))
    assert s.scores == [pytest.approx(4 / 5), 1.0]


# ------------------------------------------------------------------ regex


def test_regex_option_pattern_search_and_fullmatch() -> None:
    preds = ["Order #A123 confirmed", "A999", "nothing", ""]
    golds = exs(*["-"] * 4)
    s = metric("regex", pattern=r"A\d{3}").score(preds, golds)
    assert s.scores == [1.0, 1.0, 0.0, 0.0] and s.valid == [True, True, True, False]
    assert s.parsed[0] == "A123"
    full = metric("regex", pattern=r"A\d{3}", mode="fullmatch").score(preds, golds)
    assert full.scores == [0.0, 1.0, 0.0, 0.0]
    ci = metric("regex", pattern=r"a\d{3}", ignore_case=True).score(preds, golds)
    assert ci.scores == [1.0, 1.0, 0.0, 0.0]


def test_regex_pattern_from_expected_output() -> None:
    s = metric("regex").score(["It is 42", "It is 41"], exs(r"\b42\b", r"\b42\b"))
    assert s.scores == [1.0, 0.0]
    with pytest.raises(DataError, match="data.jsonl:1.*not a valid regular expression"):
        metric("regex").score(["x"], exs("(unclosed"))
    with pytest.raises(ConfigError, match="metric.options.pattern"):
        metric("regex", pattern="(unclosed")


# ------------------------------------------------------------------ python:module:function


def _write_module(tmp_path: Path, body: str) -> str:
    name = f"user_metric_{uuid.uuid4().hex[:8]}"  # unique: sys.modules caches by name
    (tmp_path / f"{name}.py").write_text(body)
    return name


USER_METRIC = """
def contains(prediction, example):
    return example.output.lower() in prediction.lower()

def graded(prediction, example, scale=1.0):
    return min(1.0, len(prediction) / (10 * scale))

def with_validity(prediction, example):
    return (1.0 if prediction.startswith("OK") else 0.0, prediction.startswith(("OK", "NO")))

def out_of_range(prediction, example):
    return 3.5

def broken(prediction, example):
    raise KeyError("field")
"""


def test_python_metric_on_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _write_module(tmp_path, USER_METRIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    m = metric(f"python:{mod}:contains")
    s = m.score(["yes, Paris", "London", ""], exs("paris", "paris", "paris"))
    assert s.metric == f"python:{mod}:contains"
    assert s.scores == [1.0, 0.0, 0.0] and s.valid == [True, True, False]
    g = metric(f"python:{mod}:graded", scale=2.0).score(["abcde", "x" * 40], exs("a", "a"))
    assert g.scores == [0.25, 1.0]  # options are passed as keyword arguments
    v = metric(f"python:{mod}:with_validity").score(["OK", "NO", "maybe"], exs("a", "a", "a"))
    assert v.scores == [1.0, 0.0, 0.0] and v.valid == [True, True, False]


def test_python_metric_next_to_task_file_without_sys_path(tmp_path: Path) -> None:
    mod = _write_module(tmp_path, USER_METRIC)
    before = list(sys.path)
    m = metric(f"python:{mod}:contains", base_dir=tmp_path)
    assert sys.path == before  # the task dir was on sys.path only for the import
    assert m.score(["PARIS"], exs("paris")).scores == [1.0]
    f = metric(f"python:{mod}.py:contains", base_dir=tmp_path)  # file form
    assert f.score(["no"], exs("paris")).scores == [0.0]


def test_python_metric_errors(tmp_path: Path) -> None:
    mod = _write_module(tmp_path, USER_METRIC)
    with pytest.raises(ConfigError) as err:
        metric("python:no_such_module_xyz:f", base_dir=tmp_path)
    assert "metric.name" in str(err.value) and "no_such_module_xyz.py" in err.value.hint
    with pytest.raises(ConfigError) as err:
        metric(f"python:{mod}:nope", base_dir=tmp_path)
    assert "no function 'nope'" in str(err.value) and "contains" in err.value.hint
    with pytest.raises(ConfigError, match="python:module:function"):
        metric("python:only_module", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"returned 3.5 .*data.jsonl:1.*\[0, 1\]"):
        metric(f"python:{mod}:out_of_range", base_dir=tmp_path).score(["a"], exs("a"))
    with pytest.raises(ConfigError, match="raised KeyError.*data.jsonl:1"):
        metric(f"python:{mod}:broken", base_dir=tmp_path).score(["a"], exs("a"))
    bad = _write_module(tmp_path, "def f(:\n")
    with pytest.raises(ConfigError, match="importing .* failed: SyntaxError"):
        metric(f"python:{bad}:f", base_dir=tmp_path)


# ------------------------------------------------------------------ get_metric errors


def test_unknown_metric_names_the_field_and_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        metric("acuracy", LABELS)
    text = str(err.value)
    assert "metric.name" in text and "'acuracy'" in text and "did you mean 'accuracy'" in text
    for name in metric_names():
        assert name in err.value.hint
    assert "python:module:function" in err.value.hint
    assert err.value.exit_code == 2


def test_metric_names_are_case_insensitive_and_all_constructible(tmp_path: Path) -> None:
    assert metric(" Accuracy ", LABELS).name == "accuracy"
    for name in metric_names():
        opts = {"schema": {"type": "object"}} if name == "json_schema" else {}
        assert get_metric(MetricSpec(name=name, options=opts), LABELS, tmp_path).name == name


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("exact_match", {"case_sensitve": True}, "metric.options.case_sensitve"),
        ("numeric", {"tolerance": -1}, "metric.options.tolerance"),
        ("numeric", {"tolerance": True}, "metric.options.tolerance"),
        ("regex", {"pattern": "a", "mode": "match"}, "metric.options.mode"),
        ("accuracy", {"labels": ["a"]}, "metric.options.labels"),
    ],
)
def test_bad_options_name_the_field(name: str, options: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        get_metric(MetricSpec(name=name, options=options), LABELS, Path("."))
    assert field in str(err.value) and err.value.hint


def test_length_mismatch_and_scoreset_invariants() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 examples"):
        metric("exact_match").score(["a", "b"], exs("a"))
    with pytest.raises(ValueError):
        ScoreSet("x", [1.0], [True, False], ["a"])
    empty = ScoreSet("x", [], [], [])
    assert math.isnan(empty.value) and math.isnan(empty.valid_rate)
