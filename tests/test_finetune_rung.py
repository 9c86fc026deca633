"""The finetune rungs inside a real climb, on a tiny Llama built in the test: audit before
training, adapter + model card, forgetting check, minimal-prompt scoring, token saving, export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ticket_rows, write_jsonl
from rungwise.cli.core import ladder_notes
from rungwise.climb import climb
from rungwise.config.task import task_from_dict

pytestmark = pytest.mark.model


def test_climb_with_finetune_rungs(tiny_llama_dir: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", ticket_rows(12))
    probe = [
        {"question": f"What is {a} plus {a}?", "choices": [str(2 * a), str(2 * a + 1), str(a), "0"], "answer": 0}
        for a in range(1, 9)
    ]
    write_jsonl(tmp_path / "probe.jsonl", probe)
    task = task_from_dict(
        {
            "name": "ft-rung",
            "data": {"path": "data.jsonl", "test_fraction": 0.25, "seed": 3},
            "instructions": "Route the ticket to a team.",
            "labels": ["billing", "bug", "account"],
            "metric": "accuracy",
            "model": {"id": str(tiny_llama_dir), "dtype": "float32", "params": {"max_tokens": 4}},
            "rungs": {
                "order": ["few_shot", "finetune", "finetune_min"],
                "few_shot": {"k": 3},
                "finetune": {
                    "max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "val_min": 4, "warmup_ratio": 0.0,
                    "forgetting": {"probe": "probe.jsonl", "n": 8},
                },
            },
        },
        base_dir=tmp_path,
    )
    res = climb(task, all_rungs=True)
    few, ft, ft_min = res.rungs
    assert [r.rung for r in res.rungs] == ["few_shot", "finetune", "finetune_min"]
    art = ft.artifact
    # the audit ran before training and its verdict is recorded
    assert art["audit"]["verdict"] in ("ready", "ready_with_warnings", "not_ready")
    # trained on the train split only, adapter in safetensors with a model card
    assert art["train_examples"] + art["val_examples"] <= 27 and art["train_tokens"] > 0
    adapter = Path(art["adapter_dir"])
    assert (adapter / "adapter_model.safetensors").exists()
    card = Path(ft_min.artifact["model_card"]).read_text()
    assert "full prompt" in card and "minimal prompt" in card and task.name in card
    # forgetting check on the user probe, with a CI
    fg = art["forgetting"]
    assert fg["n"] == 8 and fg["ci_low"] <= fg["delta_points"] <= fg["ci_high"]
    # both tuned rungs share one adapter; the minimal prompt is shorter than the full one
    assert ft_min.artifact["adapter_dir"] == art["adapter_dir"]
    assert ft_min.mean_prompt_tokens < ft.mean_prompt_tokens < few.mean_prompt_tokens
    assert ft.comparison is not None and ft.comparison.against == "few_shot"
    notes = "\n".join(ladder_notes(res))
    assert "audit of the train split" in notes and "forgetting (probe.jsonl" in notes
    assert "prompt tokens/call vs" in notes and "best prompting rung (few_shot)" in notes
    # the verdict prices the fine-tuned rung with its training run
    assert {c.rung for c in res.costs} == {"few_shot", "finetune", "finetune_min"}

    # export the run as hosted fine-tuning JSONL; the validator passes it
    out = tmp_path / "train.openai.jsonl"
    p = subprocess.run(
        [sys.executable, "-m", "rungwise", "export", str(res.run_id), "--format", "openai", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs and all(r["messages"][-1]["role"] == "assistant" for r in recs)
