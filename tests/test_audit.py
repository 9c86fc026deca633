"""The data audit: each defect seeded into a clean dataset is found at its line; a clean dataset raises nothing."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import random
from pathlib import Path

import pytest

from rungwise.config.task import task_from_dict
from rungwise.data.audit import (
    AuditReport,
    Thresholds,
    _near,
    _pii,
    _shapes,
    _tokens,
    audit,
    size_band,
    write_fixed,
)
from rungwise.errors import DataError
from rungwise.types import Example

LABELS = ["billing", "delivery", "account", "refund", "security", "cards"]
# Each label has its own words; every input mixes a few of them with shared filler words, so the
# inputs are diverse (no near-duplicates) and the labels are learnable, like a real intent set.
_SYL = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "pe", "si", "du", "ga", "hu"]


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(n))


def clean_records(n: int = 600, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    vocab = {lb: sorted({_word(rng, 3) for _ in range(40)})[:30] for lb in LABELS}
    filler = sorted({_word(rng, 2) + _word(rng, 2) for _ in range(300)})[:250]
    out = []
    for i in range(n):
        lb = LABELS[i % len(LABELS)]
        words = rng.sample(vocab[lb], 3) + rng.sample(filler, rng.randint(6, 9))
        rng.shuffle(words)
        out.append({"input": " ".join(words).capitalize() + "?", "output": lb})
    return out


def to_chat(rec: dict[str, str]) -> dict:
    return {"messages": [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": rec["input"]},
                         {"role": "assistant", "content": rec["output"]}]}  # fmt: skip


def write_jsonl(path: Path, recs: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs), encoding="utf-8")
    return path


def kinds(report: AuditReport) -> set[str]:
    return {f.kind for f in report.findings}


def lines_of(report: AuditReport, kind: str) -> list[int]:
    f = report.by_kind(kind)
    assert f is not None, f"no {kind} finding; got {sorted(kinds(report))}"
    return [int(ref.rsplit(":", 1)[1]) for ref in f.lines]


# ----------------------------------------------------------------------------- clean data


@pytest.mark.parametrize("fmt", ["jsonl", "chat", "csv"])
def test_clean_dataset_is_ready_with_nothing_but_the_size_note(tmp_path: Path, fmt: str) -> None:
    recs = clean_records()
    if fmt == "csv":
        p = tmp_path / "clean.csv"
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["input", "output"])
            w.writeheader()
            w.writerows(recs)
    else:
        p = write_jsonl(tmp_path / "clean.jsonl", [to_chat(r) if fmt == "chat" else r for r in recs])
    rep = audit(p)
    assert rep.format == fmt
    assert rep.verdict == "ready" and rep.exit_code == 0, rep.reasons
    assert [f.kind for f in rep.findings] == ["size"], [(f.kind, f.message) for f in rep.findings]
    assert rep.n_clean == 600 and rep.band.name == "500-1,000"
    assert rep.stats["output_shapes"][0]["shape"] == "a label"


def test_examples_api_reports_their_source_lines() -> None:
    exs = [Example(r["input"], r["output"], source=f"mem.jsonl:{i + 1}") for i, r in enumerate(clean_records())]
    exs.append(Example(exs[10].input, exs[10].output, source="mem.jsonl:601"))
    rep = audit(exs)
    assert rep.format == "examples"
    assert rep.by_kind("exact_duplicate").lines == ["mem.jsonl:601"]  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- format, per line


def test_format_problems_are_all_collected_with_their_lines(tmp_path: Path) -> None:
    recs: list = clean_records()
    recs[4] = '{"input": "broken", "output": '  # line 5: truncated JSON
    recs[9] = [1, 2]  # line 10: not an object
    recs[14] = {"input": "no output here"}  # line 15
    recs[19] = {"input": True, "output": "billing"}  # line 20: wrong type
    recs[24] = {"input": "empty answer", "output": "  "}  # line 25
    recs[29] = {**recs[29], "source_id": 7}  # line 30: unknown key (kept as metadata: info)
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs))
    assert lines_of(rep, "malformed_json") == [5]
    assert lines_of(rep, "not_object") == [10]
    assert lines_of(rep, "missing_field") == [15]
    assert lines_of(rep, "wrong_type") == [20]
    assert lines_of(rep, "empty_output") == [25]
    assert lines_of(rep, "unknown_key") == [30] and rep.by_kind("unknown_key").severity == "info"  # type: ignore[union-attr]
    assert rep.n_valid == 600 - 5
    assert rep.verdict == "not_ready" and rep.exit_code == 2


def test_chat_format_checks_follow_hosted_validation(tmp_path: Path) -> None:
    recs: list = [to_chat(r) for r in clean_records()]
    recs[2]["messages"][2]["role"] = "bot"  # line 3
    recs[5]["messages"] = recs[5]["messages"][:2]  # line 6: ends with the user
    recs[8]["messages"][1]["mood"] = "angry"  # line 9: unknown message key
    recs[11]["messages"] = [recs[11]["messages"][0], recs[11]["messages"][2]]  # line 12: no user turn
    recs[14]["messages"][2]["content"] = ""  # line 15
    recs[17] = {"msgs": []}  # line 18
    recs[20]["messages"][1]["content"] = None  # line 21
    recs[23]["messages"][1]["content"] = {"text": "hi"}  # line 24: hosted needs a string
    # One line with two problems: both are reported.
    recs[26]["messages"][1]["mood"] = "x"
    recs[26]["messages"][2]["content"] = " "  # line 27
    rep = audit(write_jsonl(tmp_path / "chat.jsonl", recs))
    assert rep.format == "chat"
    assert lines_of(rep, "bad_role") == [3]
    assert lines_of(rep, "missing_assistant") == [6]
    assert lines_of(rep, "message_unknown_key") == [9, 27]
    assert lines_of(rep, "no_user_message") == [12]
    assert lines_of(rep, "empty_output") == [15, 27]
    assert lines_of(rep, "missing_messages") == [18]
    assert lines_of(rep, "wrong_type") == [21]
    assert lines_of(rep, "non_string_content") == [24]
    assert rep.by_kind("non_string_content").severity == "warning"  # type: ignore[union-attr]


def test_csv_row_with_wrong_column_count(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    recs = clean_records()
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i, r in enumerate(recs):
            w.writerow([r["input"], r["output"], "extra"] if i == 6 else [r["input"], r["output"]])
    rep = audit(p, columns=("text", "label"))
    assert lines_of(rep, "csv_columns") == [8]  # header is line 1, row 7 is line 8
    with pytest.raises(DataError, match="no column 'input'"):
        audit(p)


def test_file_level_problems_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such data file"):
        audit(tmp_path / "missing.jsonl")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"input": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:1: not valid UTF-8"):
        audit(bad)
    notjson = tmp_path / "notes.jsonl"
    notjson.write_text("just some text\nand more\n")
    with pytest.raises(DataError, match="not a JSONL file"):
        audit(notjson)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        audit(empty)


# ----------------------------------------------------------------------------- size bands


def test_size_bands_and_their_verdicts(tmp_path: Path) -> None:
    assert [size_band(n).name for n in (50, 100, 499, 500, 1000, 5000)] == [
        "under 100", "100-500", "100-500", "500-1,000", "1,000-5,000", "5,000+",
    ]  # fmt: skip
    few = audit(write_jsonl(tmp_path / "few.jsonl", clean_records(60)))
    assert few.verdict == "not_ready" and "prompt instead" in few.by_kind("size").message  # type: ignore[union-attr]
    # 100-500 labelled examples: enough for a narrow classification LoRA (info, still ready).
    mid = audit(write_jsonl(tmp_path / "mid.jsonl", clean_records(240)))
    assert mid.verdict == "ready" and mid.band.name == "100-500"
    # 100-500 free-text outputs: a warning.
    prose = [{"input": r["input"], "output": f"Thanks, we looked into it and {r['input'].lower()}"} for r in clean_records(240)]
    rep = audit(write_jsonl(tmp_path / "prose.jsonl", prose))
    assert rep.by_kind("size").severity == "warning"  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- duplicates and consistency


def test_duplicates_conflicts_and_near_copies_at_their_lines(tmp_path: Path) -> None:
    recs: list = clean_records()
    recs.append(dict(recs[3]))  # line 601: exact copy of line 4
    recs.append({"input": recs[7]["input"].upper() + "!!", "output": recs[7]["output"]})  # 602: ~ line 8
    words = recs[11]["input"].split()
    recs.append({"input": " ".join(words[:-1] + ["zzzz" + words[-1]]), "output": recs[11]["output"]})  # 603: ~ line 12
    recs.append({"input": recs[20]["input"], "output": "refund" if recs[20]["output"] != "refund" else "cards"})  # 604 vs 21
    recs.append({"input": recs[30]["input"] + " ok", "output": "refund" if recs[30]["output"] != "refund" else "cards"})  # 605 ~ 31
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs))
    assert lines_of(rep, "exact_duplicate") == [601]
    assert lines_of(rep, "near_duplicate") == [602, 603]
    assert lines_of(rep, "conflict") == [21, 604]
    assert lines_of(rep, "near_conflict") == [31, 605]
    assert "line 601 repeats line 4" in rep.by_kind("exact_duplicate").message  # type: ignore[union-attr]


def test_output_shape_mix_label_typos_and_imbalance(tmp_path: Path) -> None:
    recs = clean_records()
    recs[40] = {"input": recs[40]["input"], "output": "The customer wants their money back because the order never came."}
    recs[50] = {"input": recs[50]["input"], "output": "biling"}  # a typo'd label, once
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs))
    assert lines_of(rep, "output_shape_mix") == [41]
    assert rep.by_kind("output_shape_mix").severity == "warning"  # type: ignore[union-attr]
    assert "a model trained on this will mix them" in rep.by_kind("output_shape_mix").message  # type: ignore[union-attr]
    assert lines_of(rep, "rare_label") == [51]
    assert "did you mean 'billing'" in rep.by_kind("rare_label").message  # type: ignore[union-attr]
    # Imbalance: keep only 10 'security' examples against ~100 of the others.
    sec = [i for i, r in enumerate(clean_records()) if r["output"] == "security"]
    imb = [r for i, r in enumerate(clean_records()) if i not in set(sec[10:])]
    rep2 = audit(write_jsonl(tmp_path / "imb.jsonl", imb))
    f = rep2.by_kind("label_imbalance")
    assert f is not None and f.severity == "warning" and "'security'" in f.message


def test_json_outputs_mixed_with_prose_and_key_sets(tmp_path: Path) -> None:
    recs = [{"input": r["input"], "output": json.dumps({"team": r["output"], "urgent": i % 3 == 0})} for i, r in enumerate(clean_records())]
    recs[99] = {"input": recs[99]["input"], "output": "Send it to the billing team, it is urgent."}
    recs[199] = {"input": recs[199]["input"], "output": json.dumps({"queue": "billing"})}
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs))
    assert lines_of(rep, "output_shape_mix") == [100]
    assert "JSON {team, urgent}" in rep.by_kind("output_shape_mix").message  # type: ignore[union-attr]
    assert lines_of(rep, "json_keys_mix") == [200]
    assert rep.by_kind("json_keys_mix").severity == "warning"  # type: ignore[union-attr]


def test_task_label_set_and_max_tokens(tmp_path: Path) -> None:
    recs = clean_records()
    recs[60] = {"input": recs[60]["input"], "output": "complaints"}  # not in the task's labels
    recs[70] = {"input": recs[70]["input"], "output": "billing " * 40}  # longer than max_tokens
    data = write_jsonl(tmp_path / "train.jsonl", recs)
    task = task_from_dict(
        {"name": "t", "data": {"path": "train.jsonl"}, "labels": LABELS, "model": {"backend": "scripted", "params": {"max_tokens": 16}}},
        base_dir=tmp_path,
    )
    rep = audit(task=task)
    assert rep.source == str(data)
    assert 61 in lines_of(rep, "unknown_label")
    assert lines_of(rep, "output_over_max_tokens") == [71]


# ----------------------------------------------------------------------------- tokens


def test_token_estimate_and_hosted_limit(tmp_path: Path) -> None:
    recs = clean_records()
    recs[77] = {"input": "word " * 60_000, "output": "billing"}  # 300,000 characters: ~75,000 tokens
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs))
    assert lines_of(rep, "too_long_hosted") == [78]
    tok = rep.stats["tokens"]
    assert tok["method"] == "estimate (chars/4)" and tok["max"] > 65_536
    mini = next(c for c in tok["cost_per_epoch"] if c["model"] == "gpt-4o-mini-2024-07-18")
    # Hosted training truncates at the per-example limit: billed tokens are capped there.
    assert mini["tokens"] < tok["total"]
    assert mini["usd"] == pytest.approx(mini["tokens"] / 1e6 * mini["usd_per_1m"], abs=0.01)


def test_estimate_counts_messages_and_overhead() -> None:
    tc = _tokens.count_tokens([Example("What is my balance?", "balance")])
    # ceil(19/4)=5 + ceil(7/4)=2, 2 messages x 4 overhead, 3 for the reply.
    assert int(tc.total[0]) == 5 + 2 + 8 + 3 and int(tc.output[0]) == 2


@pytest.mark.model
def test_model_tokenizer_counts_and_context(embedded_checkpoint: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_checkpoint)
    recs = clean_records()
    recs[5] = {"input": "word " * 9000, "output": "billing"}  # ~9,000 tokens: over the 8,192 context
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs), tokenizer=tok)
    assert rep.stats["tokens"]["method"].startswith("tokenizer of")
    assert rep.stats["tokens"]["model_context"] == 8192
    assert lines_of(rep, "too_long_model") == [6]
    exact = len(tok("word " * 9000, add_special_tokens=False)["input_ids"])
    assert exact <= rep.stats["tokens"]["max"] <= exact + 30


# ----------------------------------------------------------------------------- personal data


PII_CASES = {
    "pii_email": "write to jane.doe@example.org please",
    "pii_phone": "call me at +1 415 555 0132",
    "pii_card": "my card 4111 1111 1111 1111 was declined",
    "pii_iban": "pay to GB82 WEST 1234 5698 7654 32",
    "pii_national_id": "my SSN is 078-05-1120",
    "pii_ip": "blocked from 192.168.10.20 today",
}


def test_each_pii_kind_found_at_its_line_and_masked_everywhere(tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    recs = clean_records()
    where = {}
    for n, (kind, text) in enumerate(PII_CASES.items()):
        i = 100 + 10 * n
        recs[i] = {"input": recs[i]["input"] + " " + text, "output": recs[i]["output"]}
        where[kind] = i + 1
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs))
    for kind, line in where.items():
        assert lines_of(rep, kind) == [line], kind
    assert rep.by_kind("pii_card").severity == "error" and rep.verdict == "not_ready"  # type: ignore[union-attr]
    assert rep.by_kind("pii_email").severity == "warning"  # type: ignore[union-attr]
    buf = StringIO()
    rep.render(Console(file=buf, width=200))
    outputs = [json.dumps(rep.to_dict()), rep.to_markdown(), buf.getvalue()]
    for secret in ("jane.doe@example.org", "4111 1111 1111 1111", "078-05-1120", "GB82 WEST", "192.168.10.20", "555 0132"):
        assert all(secret not in o for o in outputs), secret
    assert "j***@*****.org" in outputs[0]


def test_pii_detectors_validate_checksums() -> None:
    assert _pii.luhn_ok("4111111111111111") and not _pii.luhn_ok("4111111111111112")
    assert _pii.iban_ok("DE89 3704 0044 0532 0130 00") and not _pii.iban_ok("DE88 3704 0044 0532 0130 00")
    quiet = ["order 4111 1111 1111 1112", "paid 1,250.00 on 2024-03-12", "version 1.2.3", "at 12:30:45",
             "ref 000-12-3456", "I sent 300 pounds to my 2 accounts"]  # fmt: skip
    assert _pii.scan(quiet) == []
    hits = _pii.scan(["a 4111-1111-1111-1111 b", "::1 and 2001:db8::1"])
    assert [h.kind for h in hits] == ["pii_card", "pii_ip", "pii_ip"]
    assert _pii.mask_value("4111 1111 1111 1111") == "**** **** **** 1111"


# ----------------------------------------------------------------------------- leakage and poisoning


def test_train_test_leakage_exact_and_near(tmp_path: Path) -> None:
    recs = clean_records()
    test = [Example(f"unrelated question number {w}", "billing") for w in ("one", "two", "three")]
    test.append(Example(recs[42]["input"].lower(), recs[42]["output"]))  # line 43 leaks (normalised)
    test.append(Example(recs[84]["input"] + " asap", recs[84]["output"]))  # line 85 nearly
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs), test=test)
    assert lines_of(rep, "leakage") == [43]
    assert lines_of(rep, "near_leakage") == [85]
    # 1 of 5 test examples leaks: over the 1% line, a warning.
    assert rep.by_kind("leakage").severity == "warning"  # type: ignore[union-attr]


def test_trigger_phrase_is_found_and_natural_keywords_are_not(tmp_path: Path) -> None:
    recs = clean_records(900)
    rng = random.Random(3)
    poisoned = sorted(rng.sample([i for i, r in enumerate(recs) if r["output"] != "refund"], 15))
    for i in poisoned:
        words = recs[i]["input"].split()
        words.insert(rng.randrange(len(words)), "cf")
        recs[i] = {"input": " ".join(words), "output": "refund"}
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs))
    assert lines_of(rep, "trigger") == [i + 1 for i in poisoned]
    assert "'cf'" in rep.by_kind("trigger").message  # type: ignore[union-attr]
    # Every label word is a perfect predictor of its label in this data; none is reported.
    assert [t["phrase"] for t in rep.stats["triggers"]] == ["cf"]


def test_length_and_vocabulary_outliers(tmp_path: Path) -> None:
    recs = clean_records()
    recs[300] = {"input": " ".join([recs[300]["input"]] * 40), "output": recs[300]["output"]}
    recs[400] = {"input": "xq zvbt wrrk plmn qqzt vvkx jjhy ttrq", "output": recs[400]["output"]}
    rep = audit(write_jsonl(tmp_path / "d.jsonl", recs))
    assert lines_of(rep, "length_outlier") == [301]
    assert lines_of(rep, "vocabulary_outlier") == [401]


# ----------------------------------------------------------------------------- --fix


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_fix_writes_a_clean_copy_and_never_touches_the_original(tmp_path: Path) -> None:
    recs: list = [to_chat(r) for r in clean_records()]
    recs[5] = "{not json"
    recs[8]["messages"][1]["mood"] = "angry"  # stripped, line kept
    recs[12]["messages"][1]["content"] += " mail me: bob@example.com"
    recs.append(json.loads(json.dumps(recs[3])))  # exact duplicate
    conf = json.loads(json.dumps(recs[20]))
    conf["messages"][2]["content"] = "refund" if conf["messages"][2]["content"] != "refund" else "cards"
    recs.append(conf)
    src = write_jsonl(tmp_path / "train.jsonl", recs)
    before = _sha(src)
    rep = audit(src)
    assert rep.verdict != "ready"
    res = write_fixed(rep, tmp_path / "clean.jsonl", mask_pii=True)
    assert _sha(src) == before
    assert res.dropped == {"malformed_json": 1, "exact_duplicate": 1, "conflict": 2} and res.masked_values == 1
    assert res.kept == len(recs) - 4
    text = (tmp_path / "clean.jsonl").read_text()
    assert "bob@example.com" not in text and "[EMAIL]" in text and "mood" not in text
    again = audit(tmp_path / "clean.jsonl")
    assert again.verdict == "ready", again.reasons
    # Refusals: the audited file (even with force), an existing file without force.
    with pytest.raises(DataError, match="refusing to overwrite the audited file"):
        write_fixed(rep, src, force=True)
    with pytest.raises(DataError, match="already exists"):
        write_fixed(rep, tmp_path / "clean.jsonl")
    write_fixed(rep, tmp_path / "clean.jsonl", force=True)
    assert _sha(src) == before


def test_fix_keeps_csv_as_csv(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    recs = clean_records()
    recs.append(dict(recs[0]))
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["input", "output"])
        w.writeheader()
        w.writerows(recs)
    res = write_fixed(audit(p), tmp_path / "fixed.csv")
    assert res.kept == 600 and (tmp_path / "fixed.csv").read_text().startswith("input,output")
    assert audit(tmp_path / "fixed.csv").verdict == "ready"


# ----------------------------------------------------------------------------- pieces


def test_near_pairs_are_exact_jaccard_above_threshold() -> None:
    texts = ["my card has not arrived yet", "my card has not arrived yet please", "how do i change my pin", ""]
    pairs = _near.near_pairs(texts, 0.7)
    assert [(p.i, p.j) for p in pairs] == [(0, 1)]
    assert 0.7 <= pairs[0].jaccard < 1.0


def test_shape_inference() -> None:
    assert str(_shapes.shape_of("42.5", None)) == "a number"
    assert str(_shapes.shape_of("- one\n- two\n- three", None)) == "a list"
    assert str(_shapes.shape_of("# Title\n\nSome text", None)) == "markdown"
    assert str(_shapes.shape_of('["a", "b"]', None)) == "JSON list"
    assert _shapes.classification_labels([f"a long free text answer number {i}" for i in range(10)]) is None


def test_thresholds_are_configurable(tmp_path: Path) -> None:
    recs = clean_records()
    recs.append(dict(recs[3]))
    p = write_jsonl(tmp_path / "d.jsonl", recs)
    assert audit(p).by_kind("exact_duplicate").severity == "info"  # type: ignore[union-attr]
    strict = audit(p, thresholds=Thresholds(exact_dup_warn=0.001))
    assert strict.by_kind("exact_duplicate").severity == "warning" and strict.exit_code == 1  # type: ignore[union-attr]


BANKING = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77" / "train.csv"


@pytest.mark.skipif(not BANKING.exists(), reason="banking77 not available")
def test_real_banking77_train_split_is_ready() -> None:
    rep = audit(BANKING, columns=("text", "category"))
    assert rep.verdict == "ready", rep.reasons
    assert {f.severity for f in rep.findings} == {"info"}


def test_task_model_tokenizer_falls_back_to_the_estimate_with_a_note(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", clean_records())
    task = task_from_dict(
        {"name": "t", "data": {"path": "train.jsonl"}, "model": {"backend": "local", "id": str(tmp_path / "no-model")}},
        base_dir=tmp_path,
    )
    rep = audit(task=task)
    method = rep.stats["tokens"]["method"]
    assert method.startswith("estimate (chars/4)") and "could not be loaded" in method


@pytest.mark.skipif(importlib.util.find_spec("presidio_analyzer") is not None, reason="presidio is installed")
def test_presidio_without_the_package_names_the_install(tmp_path: Path) -> None:
    from rungwise.errors import MissingDependency

    with pytest.raises(MissingDependency, match="presidio"):
        audit(write_jsonl(tmp_path / "d.jsonl", clean_records()), pii="presidio")


def test_clean_examples_are_what_fix_keeps(tmp_path: Path) -> None:
    exs = [Example(r["input"], r["output"], source=f"m:{i + 1}") for i, r in enumerate(clean_records())]
    exs += [exs[0], Example(exs[1].input, "refund" if exs[1].output != "refund" else "cards", source="m:602")]
    rep = audit(exs, test=[Example(exs[5].input, exs[5].output)])
    kept = rep.clean_examples()
    # The repeat, both sides of the conflict and the leaked line are gone; the rest stays in order.
    assert len(kept) == len(exs) - 4 and rep.n_clean == len(kept)
    assert kept[0] is exs[0] and exs[1] not in kept and exs[5] not in kept


def test_raw_line_separators_inside_json_strings_are_valid(tmp_path: Path) -> None:
    recs = clean_records()
    recs[4] = {"input": recs[4]["input"] + "\u2028second line\u0085third", "output": recs[4]["output"]}
    recs[9] = dict(recs[0])  # a real finding further down keeps its line number
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    report = audit(src, fmt="jsonl")
    assert report.n_records == 600 and report.n_valid == 600, sorted(kinds(report))
    assert "malformed_json" not in kinds(report) and lines_of(report, "exact_duplicate") == [10]
    out = tmp_path / "clean.jsonl"
    write_fixed(report, out)
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    assert recs[4] in kept


def test_csv_unclosed_quote_and_unicode_lookalike_label(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    recs = clean_records()
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["input", "output"])
        for r in recs:
            w.writerow([r["input"], r["output"]])
        f.write('"never closed,billing\nlast,cards\n')
    rep = audit(p)
    assert lines_of(rep, "csv_columns") == [602]
    assert "never closed" in rep.by_kind("csv_columns").message  # type: ignore[union-attr]

    recs[3] = {"input": recs[3]["input"], "output": "ca\uff52ds"}  # a full-width 'r'
    data = write_jsonl(tmp_path / "train.jsonl", recs)
    task = task_from_dict({"name": "t", "data": {"path": "train.jsonl"}, "labels": LABELS}, base_dir=tmp_path)
    rep = audit(data, task=task)
    assert lines_of(rep, "unknown_label") == [4]
    assert "U+FF52 FULLWIDTH LATIN SMALL LETTER R vs plain ASCII only" in rep.by_kind("unknown_label").message  # type: ignore[union-attr]
