"""The finetune rungs inside a real climb, on a tiny Llama built in the test: audit before
training, the training plan said first, adapter + model card, forgetting check, each prompt shape
trained and scored as itself, token saving, quick climbs capped, export."""

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
from rungwise.rungs.base import BackendPool, RungContext
from rungwise.rungs.finetune import QUICK_TRAIN_MIN, quick_spec
from rungwise.train.config import FinetuneSpec


class _Notes:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def rung_start(self, name: str, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def rung_end(self, result: object) -> None: ...

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.mark.model
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
                "order": ["few_shot", "finetune", "finetune_full", "finetune_min"],
                "few_shot": {"k": 3},
                "finetune": {
                    "max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "val_min": 4, "warmup_ratio": 0.0,
                    "forgetting": {"probe": "probe.jsonl", "n": 8},
                },
                "finetune_full": {
                    "use": "finetune", "prompt": "full", "max_steps": 3, "batch_size": 4, "learning_rate": 1e-2,
                    "val_min": 4, "warmup_ratio": 0.0, "forgetting": {"enabled": False},
                },
            },
        },
        base_dir=tmp_path,
    )
    reporter = _Notes()
    res = climb(task, all_rungs=True, reporter=reporter)
    few, ft, ft_full = res.rungs
    assert [r.rung for r in res.rungs] == ["few_shot", "finetune", "finetune_full"]
    # the default fine-tune trains on the input alone and is scored the same way; finetune_min
    # would repeat it, so it is skipped with the reason
    assert ft.artifact["prompt"]["system"] == "" and ft_full.artifact["prompt"]["system"].startswith("Route the ticket")
    assert any(n.startswith("finetune_min skipped: finetune already trains on") for n in reporter.notes)
    # the plan of each training was said before it started, with its measured estimate
    plans = [n for n in reporter.notes if n.startswith("fine-tune plan:")]
    assert len(plans) == 2 and all("(measured)" in p for p in plans)
    assert "minimal prompt" in plans[0] and "full prompt" in plans[1]
    art = ft.artifact
    # the audit ran before training and its verdict is recorded
    assert art["audit"]["verdict"] in ("ready", "ready_with_warnings", "not_ready")
    # trained on the train split only, adapter in safetensors with a model card
    assert art["train_examples"] + art["val_examples"] <= 27 and art["train_tokens"] > 0
    adapter = Path(art["adapter_dir"])
    assert (adapter / "adapter_model.safetensors").exists()
    card = Path(art["model_card"]).read_text()
    assert "minimal prompt" in card and "full prompt" not in card and task.name in card
    assert "full prompt" in Path(ft_full.artifact["model_card"]).read_text()
    # forgetting check on the user probe, with a CI
    fg = art["forgetting"]
    assert fg["n"] == 8 and fg["ci_low"] <= fg["delta_points"] <= fg["ci_high"]
    # two prompt shapes, two adapters; the minimal prompt is shorter than the full one
    assert ft_full.artifact["adapter_dir"] != art["adapter_dir"]
    assert ft.mean_prompt_tokens < ft_full.mean_prompt_tokens < few.mean_prompt_tokens
    assert ft.comparison is not None and ft.comparison.against == "few_shot"
    notes = "\n".join(ladder_notes(res))
    assert "audit of the train split" in notes and "forgetting (probe.jsonl" in notes
    assert "prompt tokens/call vs" in notes and "best prompting rung (few_shot)" in notes
    # the verdict prices the fine-tuned rung with its training run
    assert {c.rung for c in res.costs} == {"few_shot", "finetune", "finetune_full"}

    # export the run as hosted fine-tuning JSONL; the validator passes it
    out = tmp_path / "train.openai.jsonl"
    p = subprocess.run(
        [sys.executable, "-m", "rungwise", "export", str(res.run_id), "--format", "openai", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs and all(r["messages"][-1]["role"] == "assistant" for r in recs)


def test_a_quick_climb_caps_the_training_data_and_says_so(tmp_path: Path) -> None:
    def ctx(limit: int | None, n_train: int = 200) -> RungContext:
        return RungContext(task=None, train=[None] * n_train, config=FinetuneSpec(), work_dir=tmp_path,  # type: ignore[arg-type]
                           backends=BackendPool(lambda: None), resolver=lambda name, build=True: None,  # type: ignore[arg-type,return-value]
                           quick_limit=limit)

    spec, note = quick_spec(FinetuneSpec(), ctx(None))
    assert spec.max_train_examples is None and note is None
    spec, note = quick_spec(FinetuneSpec(), ctx(20))
    assert spec.max_train_examples == 80 and note is not None and "--limit 20" in note and "80 of the 200" in note
    spec, note = quick_spec(FinetuneSpec(), ctx(2))
    assert spec.max_train_examples == QUICK_TRAIN_MIN
    # a cap that changes nothing is not applied, nor said
    assert quick_spec(FinetuneSpec(), ctx(20, n_train=50)) == (FinetuneSpec(), None)
    assert quick_spec(FinetuneSpec(max_train_examples=40), ctx(20))[0].max_train_examples == 40


@pytest.mark.model
def test_a_fine_tune_over_its_budget_is_skipped_and_the_ladder_stands(tiny_llama_dir: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", ticket_rows(8))
    task = task_from_dict(
        {
            "name": "ft-budget", "data": {"path": "data.jsonl", "test_fraction": 0.25, "seed": 3},
            "instructions": "Route the ticket to a team.", "labels": ["billing", "bug", "account"],
            "model": {"id": str(tiny_llama_dir), "dtype": "float32", "params": {"max_tokens": 4}},
            "rungs": {"order": ["zero_shot", "finetune"],
                      "finetune": {"budget_minutes": 1e-6, "forgetting": {"enabled": False}}},
        },
        base_dir=tmp_path,
    )
    reporter = _Notes()
    res = climb(task, all_rungs=True, reporter=reporter)
    assert [r.rung for r in res.rungs] == ["zero_shot"] and res.verdict is not None
    [skip] = [n for n in reporter.notes if n.startswith("finetune skipped:")]
    assert "over the budget of 1e-06 min" in skip and "to fit:" in skip and "budget_minutes" in skip
