"""The forgetting check: the probe sample, user probe files, and the base-vs-tuned delta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rungwise.backends.scripted import ScriptedBackend
from rungwise.errors import DataError
from rungwise.train.forgetting import ProbeQuestion, forgetting_check, load_probe, mmlu_dir, p_above_chance

HAS_MMLU = (mmlu_dir() / "data" / "test").is_dir()


@pytest.mark.skipif(not HAS_MMLU, reason="shared MMLU dataset not present")
def test_mmlu_probe_is_a_fixed_seeded_sample() -> None:
    qs = load_probe("mmlu", n=200, seed=0)
    assert len(qs) == 200 and len({q.source for q in qs}) == 200
    assert all(len(q.choices) == 4 and 0 <= q.answer < 4 for q in qs)
    assert len({q.source.split("_test.csv")[0] for q in qs}) > 30  # spread over many subjects
    assert load_probe("mmlu", n=200, seed=0) == qs
    assert load_probe("mmlu", n=200, seed=1) != qs
    chat = qs[0].chat()
    assert chat[0]["role"] == "user" and "\nA. " in chat[0]["content"] and "\nD. " in chat[0]["content"]


def test_missing_shared_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNGWISE_SHARED", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as e:
        load_probe("mmlu")
    assert "RUNGWISE_SHARED" in str(e.value) and "JSONL" in str(e.value)


def test_shared_folder_override_reads_mmlu_csvs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "datasets" / "mmlu" / "data" / "test"
    d.mkdir(parents=True)
    (d / "toy_test.csv").write_text('"2+2, in words?",three,four,five,six,B\nsky?,blue,green,red,pink,A\n')
    monkeypatch.setenv("RUNGWISE_SHARED", str(tmp_path))
    qs = load_probe("mmlu", n=200)
    assert [q.answer for q in qs] == [1, 0] and qs[0].question == "2+2, in words?"
    (d / "bad_test.csv").write_text("q,a,b,c,d,E\n")
    with pytest.raises(DataError, match="bad_test.csv:1"):
        load_probe("mmlu")


def test_user_probe_file_accepts_index_letter_or_text(tmp_path: Path) -> None:
    p = tmp_path / "probe.jsonl"
    rows = [
        {"question": "2+2", "choices": ["3", "4"], "answer": 1},
        {"question": "capital of France", "choices": ["Paris", "Rome", "Oslo"], "answer": "a"},
        {"question": "color of grass", "choices": ["red", "green"], "answer": "green"},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    qs = load_probe("probe.jsonl", n=10, base_dir=tmp_path)
    assert [q.answer for q in qs] == [1, 0, 1] and qs[1].letters == ["A", "B", "C"]
    assert qs[0].source == f"{p}:1"


@pytest.mark.parametrize(
    "line,msg",
    [
        ("not json", "invalid JSON"),
        ('{"choices": ["a", "b"], "answer": 0}', "'question'"),
        ('{"question": "q", "choices": ["a"], "answer": 0}', "at least two"),
        ('{"question": "q", "choices": ["a", "b"]}', "missing 'answer'"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 5}', "out of range"),
        ('{"question": "q", "choices": ["a", "b"], "answer": "zebra"}', "not an index"),
    ],
)
def test_bad_probe_lines_name_file_and_line(tmp_path: Path, line: str, msg: str) -> None:
    p = tmp_path / "probe.jsonl"
    p.write_text('{"question": "ok", "choices": ["a", "b"], "answer": 0}\n' + line + "\n")
    with pytest.raises(DataError) as e:
        load_probe(str(p))
    assert f"{p}:2" in str(e.value) and msg in str(e.value)


def test_missing_probe_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_probe(str(tmp_path / "none.jsonl"))


def _probe(tmp_path: Path, n: int) -> Path:
    p = tmp_path / "probe.jsonl"
    p.write_text("".join(json.dumps({"question": f"q{i}", "choices": ["w", "x", "y", "z"], "answer": i % 4}) + "\n" for i in range(n)))
    return p


def _knows(wrong_every: int = 0):
    """A choice scorer that picks the right letter, except on every `wrong_every`-th question."""

    def score(chat, choice: str) -> float:
        i = int(chat[0]["content"].split("\n")[0][1:])
        right = "ABCD"[i % 4]
        if wrong_every and i % wrong_every == 0:
            right = "ABCD"[(i + 1) % 4]
        return 0.0 if choice == right else -3.0

    return score


def test_drop_beyond_threshold_warns_with_a_ci(tmp_path: Path) -> None:
    p = _probe(tmp_path, 100)
    base = ScriptedBackend(choice_scores=_knows())
    tuned = ScriptedBackend(choice_scores=_knows(wrong_every=5))  # loses 20 of 100
    res = forgetting_check(base, tuned, probe=str(p), n=100)
    assert res.base_acc == 1.0 and res.tuned_acc == pytest.approx(0.8)
    assert res.delta_points == pytest.approx(-20.0) and res.warning
    assert res.ci_low < -20 < res.ci_high < 0 and res.p_value < 0.001
    assert "WARNING" in res.summary() and res.to_dict()["n"] == 100


def test_no_change_no_warning(tmp_path: Path) -> None:
    p = _probe(tmp_path, 40)
    res = forgetting_check(ScriptedBackend(choice_scores=_knows(3)), ScriptedBackend(choice_scores=_knows(3)), probe=str(p))
    assert res.delta_points == 0 and not res.warning and res.p_value == 1.0
    # A small drop within the threshold does not warn either.
    res = forgetting_check(
        ScriptedBackend(choice_scores=_knows()), ScriptedBackend(choice_scores=_knows(40)), probe=str(p), threshold_points=3.0
    )
    assert res.delta_points == pytest.approx(-2.5) and not res.warning


def test_a_base_model_at_chance_makes_the_check_inconclusive(tmp_path: Path) -> None:
    p = _probe(tmp_path, 100)
    asked: list[str] = []

    def tuned_scores(chat, choice: str) -> float:
        asked.append(choice)
        return 0.0

    def guesses(chat, choice: str) -> float:  # always "A": right on every 4th question, as guessing is
        return 0.0 if choice == "A" else -3.0

    res = forgetting_check(ScriptedBackend(choice_scores=guesses), ScriptedBackend(choice_scores=tuned_scores),
                           probe=str(p), n=100)
    assert res.inconclusive and not asked and not res.warning
    assert res.base_acc == pytest.approx(0.25) and res.chance == 0.25 and res.base_p_above_chance > 0.5
    assert res.tuned_acc is None and res.delta_points is None
    assert "inconclusive" in res.summary() and "not above chance (25.0%" in res.summary()
    # a base model that knows the probe is compared as before
    assert not forgetting_check(ScriptedBackend(choice_scores=_knows(3)), ScriptedBackend(choice_scores=_knows(3)),
                                probe=str(p)).inconclusive


def test_chance_tail_is_the_exact_poisson_binomial() -> None:
    four = ProbeQuestion("q", ("a", "b", "c", "d"), 0)
    # the binomial tail P(X >= 33 | 100, 1/4), and P(X >= 34)
    assert p_above_chance([1.0] * 33, [four] * 100) == pytest.approx(0.044596, abs=1e-6)
    assert p_above_chance([1.0] * 34, [four] * 100) == pytest.approx(0.027595, abs=1e-6)
    # mixed choices: one 2-choice and one 4-choice question
    two = ProbeQuestion("q", ("a", "b"), 0)
    assert p_above_chance([1.0, 1.0], [two, four]) == pytest.approx(1 / 8)
    assert p_above_chance([1.0, 0.0], [two, four]) == pytest.approx(1 - 1 / 2 * 3 / 4)
    assert p_above_chance([0.0, 0.0], [two, four]) == pytest.approx(1.0)


@pytest.mark.model
def test_real_model_scores_the_probe(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from rungwise.backends.local import LocalBackend

    b = LocalBackend.load(str(tiny_llama_dir), dtype="float32", device="cpu")
    res = forgetting_check(b, b, probe=str(_probe(tmp_path, 8)))
    # an untrained model guesses: the check says so instead of reporting a delta
    assert res.n == 8 and 0 <= res.base_acc <= 1 and res.inconclusive and res.chance == 0.25
    assert isinstance(ProbeQuestion("q", ("a", "b"), 0).chat()[0]["content"], str)


def test_task_settings_drive_the_check(tmp_path: Path) -> None:
    from rungwise.config.task import task_from_dict
    from rungwise.train.forgetting import forgetting_for_task

    _probe(tmp_path, 20)
    raw = {"name": "t", "data": {"path": "d.jsonl"},
           "rungs": {"finetune": {"forgetting": {"probe": "probe.jsonl", "n": 8, "threshold_points": 50}}}}
    task = task_from_dict(raw, base_dir=tmp_path)
    res = forgetting_for_task(task, ScriptedBackend(choice_scores=_knows()), ScriptedBackend(choice_scores=_knows(2)))
    assert res is not None and res.n == 8 and res.threshold_points == 50 and not res.warning
    raw["rungs"]["finetune"]["forgetting"]["enabled"] = False
    assert forgetting_for_task(task_from_dict(raw, base_dir=tmp_path), ScriptedBackend(), ScriptedBackend()) is None
