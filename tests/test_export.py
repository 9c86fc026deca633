"""`rungwise export`: hosted-fine-tuning JSONL with validation, alpaca/sharegpt, merged weights,
and the model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rungwise.config.task import task_from_dict
from rungwise.errors import DataError
from rungwise.train.card import write_model_card
from rungwise.train.export import chat_tokens, export, openai_epochs, to_format, validate_openai_jsonl
from rungwise.train.trainer import FinetuneResult, finetune
from rungwise.types import Example, MetricValue

LABELS = ["refund", "shipping", "account"]


def _examples(n: int) -> list[Example]:
    return [Example(input=f"{LABELS[i % 3]} question {i}", output=LABELS[i % 3], label=LABELS[i % 3]) for i in range(n)]


@pytest.fixture(scope="module")
def tuned(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FinetuneResult, object]:
    task = task_from_dict(
        {
            "name": "t",
            "data": {"path": "d.jsonl"},
            "labels": LABELS,
            "model": {"id": str(tiny_llama_dir), "dtype": "float32"},
            "rungs": {"finetune": {"max_steps": 2, "batch_size": 4, "learning_rate": 0.05, "val_min": 4}},
        }
    )
    out = tmp_path_factory.mktemp("ft")
    return finetune(task, _examples(24), out, system_prompt="Route it.", progress=False), task


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


@pytest.mark.model
def test_openai_export_of_a_finetune_is_valid_with_tokens_and_cost(tuned, tmp_path: Path) -> None:
    res, _ = tuned
    rep = export(res.out_dir, "openai", tmp_path / "train.jsonl")
    rows = _lines(tmp_path / "train.jsonl")
    assert rep.ok and rep.n_examples == len(rows) == res.n_train + res.n_val == 24
    assert rows[0]["messages"][0] == {"role": "system", "content": "Route it."}
    assert rows[0]["messages"][-1]["role"] == "assistant" and set(rows[0]) == {"messages"}
    assert rep.total_tokens == sum(chat_tokens(r["messages"], lambda s: -(-len(s) // 4)) for r in rows) or "tiktoken" in rep.token_counter
    # 24 examples: 3 epochs would show the model only 72, so the hosted default raises it to 5.
    assert rep.n_epochs == openai_epochs(24) == 5
    assert rep.est_cost_usd == pytest.approx(rep.billed_tokens / 1e6 * 3.00)  # gpt-4o-mini training price
    assert "training cost estimate" in rep.summary()
    # never overwrite
    with pytest.raises(DataError, match="never overwrites"):
        export(res.out_dir, "openai", tmp_path / "train.jsonl")
    assert export(res.out_dir, "openai", tmp_path / "train.jsonl", force=True).ok


def test_validation_names_every_bad_line(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = [
        "{not json",
        json.dumps({"prompt": "x"}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}),
        json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "hi", "mood": "sad"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}),
    ]
    p = tmp_path / "data.jsonl"
    p.write_text("\n".join([json.dumps(good)] * 12 + bad) + "\n")
    rep = validate_openai_jsonl(p, token_limit=100)
    text = "\n".join(rep.errors)
    for line, frag in [(13, "invalid JSON"), (14, "'messages'"), (15, "assistant message is empty"), (16, "unrecognized role"),
                       (17, "unrecognized key"), (18, "no assistant message"), (19, "over the 100-token limit"),
                       (20, "must be a string")]:
        assert f"{p}:{line}: " in text and frag in text, (line, frag, text)
    assert not rep.ok and rep.n_examples == 13  # 12 good + the over-long one (valid, but too long)


def test_too_few_examples(tmp_path: Path) -> None:
    p = tmp_path / "few.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    rep = validate_openai_jsonl(p)
    assert not rep.ok and "at least 10" in rep.errors[-1]


def test_an_export_for_a_closed_fine_tuning_offer_warns_and_keeps_line_separators(tmp_path: Path) -> None:
    # U+2028 inside a string is valid JSON written raw by ensure_ascii=False; str.splitlines would cut there.
    rec = {"messages": [{"role": "user", "content": "a\u2028b"}, {"role": "assistant", "content": "c"}]}
    p = tmp_path / "ok.jsonl"
    p.write_text("\n".join(json.dumps(rec, ensure_ascii=False) for _ in range(12)) + "\n", encoding="utf-8")
    rep = validate_openai_jsonl(p, price_model="openai/gpt-4o-mini")
    assert rep.ok and rep.n_examples == 12
    # gpt-4o-mini fine-tuning closed to new customers on 2026-05-07 (the catalog; it ends 2027-01-06),
    # so from then on it warns
    assert any("gpt-4o-mini fine-tuning is" in w and "rungwise prices" in w for w in rep.warnings)


def test_alpaca_and_sharegpt_from_a_task_file(tmp_path: Path) -> None:
    """A task file exports what its fine-tune trains on: the prompt shape of rungs.finetune.prompt."""
    rows = [{"input": f"{LABELS[i % 3]} text {i}", "output": LABELS[i % 3]} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = "name: t\ndata: {path: d.jsonl, test_fraction: 0.2}\ninstructions: Route it.\nlabels: [refund, shipping, account]\n"
    (tmp_path / "task.yaml").write_text(task + "rungs: {finetune: {prompt: full}}\n")
    rep = export(tmp_path / "task.yaml", "alpaca", tmp_path / "alpaca.jsonl")
    al = _lines(tmp_path / "alpaca.jsonl")
    assert rep.n_examples == len(al) == 24  # the train split only: the test split never leaves
    assert al[0]["instruction"].startswith("Route it.") and "refund, shipping, account" in al[0]["instruction"]
    assert al[0]["output"] in LABELS and al[0]["input"].split()[0] == al[0]["output"]
    export(tmp_path / "task.yaml", "sharegpt", tmp_path / "sharegpt.jsonl")
    sg = _lines(tmp_path / "sharegpt.jsonl")
    assert [t["from"] for t in sg[0]["conversations"]] == ["system", "human", "gpt"]
    # The default, minimal prompt: the input alone, no instructions.
    (tmp_path / "task.yaml").write_text(task)
    export(tmp_path / "task.yaml", "sharegpt", tmp_path / "minimal.jsonl")
    assert [t["from"] for t in _lines(tmp_path / "minimal.jsonl")[0]["conversations"]] == ["human", "gpt"]
    test_inputs = {r["input"] for r in rows} - {a["input"] for a in al}
    assert len(test_inputs) == 6 and not test_inputs & {t["conversations"][1]["value"] for t in sg}


def test_multi_turn_records_keep_their_history() -> None:
    rec = {"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"},
    ]}
    assert to_format(rec, "alpaca") == {"instruction": "S", "input": "u2", "output": "a2", "history": [["u1", "a1"]]}
    no_sys = {"messages": rec["messages"][1:3]}
    assert to_format(no_sys, "alpaca") == {"instruction": "u1", "input": "", "output": "a1"}
    assert [t["from"] for t in to_format(rec, "sharegpt")["conversations"]] == ["system", "human", "gpt", "human", "gpt"]


@pytest.mark.model
def test_merged_export_equals_base_plus_adapter(tuned, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rungwise.train.trainer import peft_reads_deprecated_alias

    res, task = tuned
    rep = export(res.out_dir, "merged", tmp_path / "merged", task=task)
    assert rep.ok and (tmp_path / "merged" / "config.json").exists()
    assert not list((tmp_path / "merged").glob("*.bin"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", use_safetensors=True)
    base = AutoModelForCausalLM.from_pretrained(res.base_path, use_safetensors=True, dtype=torch.float32)
    with peft_reads_deprecated_alias():  # PEFT's own read of a transformers 5 alias, not ours
        peft_model = PeftModel.from_pretrained(base, res.adapter_dir)
    ids = torch.tensor([[1, 520, 9531, 198, 28120, 665]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-4)
    with pytest.raises(DataError, match="never overwrites"):
        export(res.out_dir, "merged", tmp_path / "merged")


@pytest.mark.model
def test_model_card_records_provenance(tuned, tmp_path: Path) -> None:
    res, _ = tuned
    mv = MetricValue("accuracy", 0.9, 0.85, 0.95, 200)
    fg = {"probe": "mmlu", "n": 200, "base_acc": 0.3, "tuned_acc": 0.25, "delta_points": -5.0, "ci_low": -9.0,
          "ci_high": -1.0, "p_value": 0.01, "threshold_points": 2.0, "warning": True}
    readme = write_model_card(tmp_path / "card", res, metrics={"full prompt": mv}, forgetting=fg, task_name="t", date="2026-01-02")
    text = readme.read_text()
    assert text.startswith("---\nlibrary_name: peft\nbase_model: ")
    prov = json.loads((tmp_path / "card" / "provenance.json").read_text())
    assert prov["base_model"]["id"] == res.base_model_id and len(prov["base_model"]["weights_sha256"]) == 64
    assert prov["training_data"]["sha256"] == res.data_hash and prov["hyperparameters"]["r"] == 16
    assert prov["metrics"]["full prompt"]["ci_low"] == 0.85 and prov["forgetting"]["warning"] is True
    assert prov["date"] == "2026-01-02" and prov["rungwise_version"]
    # the prompt shape it was trained on, so that users send the same one
    assert prov["training_data"]["prompt_shape"] == res.prompt and f"- prompt: {res.prompt}" in text
    assert "[0.8500, 0.9500]" in text and "Warning: general ability dropped" in text
    # a base model at chance on the probe: the card says the check could not tell
    fg = {"probe": "mmlu", "n": 100, "base_acc": 0.19, "tuned_acc": None, "delta_points": None, "ci_low": None,
          "ci_high": None, "p_value": None, "threshold_points": 2.0, "warning": False, "chance": 0.25,
          "base_p_above_chance": 0.94}
    text = write_model_card(tmp_path / "card2", res, forgetting=fg, task_name="t").read_text()
    assert "base 19.0%, not above chance (25.0%, p=0.94). Inconclusive" in text and "points [" not in text


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rungwise", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)


def test_cli_check_reports_lines_and_exits_2(tmp_path: Path) -> None:
    p = tmp_path / "data.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    p.write_text("\n".join([good] * 11 + ['{"messages": [{"role": "user", "content": "a"}]}']) + "\n")
    r = _cli("export", str(p), "--check", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert f"{p}:12: no assistant message" in r.stdout and "fix:" in r.stderr
    p.write_text("\n".join([good] * 11) + "\n")
    r = _cli("export", str(p), "--check", cwd=tmp_path)
    assert r.returncode == 0 and "11 examples" in r.stdout and "$" in r.stdout
    r = _cli("export", str(tmp_path / "nope"), "--format", "openai", "--out", "x.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and "not a run id" in r.stderr
