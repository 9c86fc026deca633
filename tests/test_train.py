"""The fine-tuning loop on a tiny Llama built in the test: learning, masking, packing, resume,
early stopping, artifacts, and the tuned backend."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from rungwise.config.task import task_from_dict
from rungwise.errors import ConfigError, Unsupported
from rungwise.train.data import collate, encode_examples
from rungwise.train.trainer import FinetuneResult, finetune, load_tuned_backend, load_tuned_model
from rungwise.types import Example

pytestmark = pytest.mark.model

LABELS = ["refund", "shipping", "account"]
WORDS = {"refund": "money back please", "shipping": "where is my parcel", "account": "cannot log in"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    """The shared tiny Llama with larger initial weights: with the default 0.02 its logits are
    almost uniform and frozen, so LoRA could barely move the loss in a few steps."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-trainable")
    cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    cfg.initializer_range = 0.2
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(d)
    return d


def _data(n: int) -> list[Example]:
    out = []
    for i in range(n):
        lab = LABELS[i % 3]
        out.append(Example(input=f"{WORDS[lab]} order {i}", output=lab, label=lab, source=f"d.jsonl:{i + 1}"))
    return out


def _task(model_dir: Path, **ft: Any):
    base = {"batch_size": 4, "learning_rate": 2e-2, "val_min": 4, "val_fraction": 0.2, "warmup_ratio": 0.0}
    return task_from_dict(
        {
            "name": "t",
            "data": {"path": "d.jsonl"},
            "labels": LABELS,
            "model": {"id": str(model_dir), "dtype": "float32"},
            "rungs": {"finetune": {**base, **ft}},
        }
    )


def _adapter(res: FinetuneResult) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(res.adapter_dir) / "adapter_model.safetensors"))


def test_lora_learns_and_writes_a_safetensors_adapter(tiny: Path, tmp_path: Path) -> None:
    task = _task(tiny, max_steps=10, eval_every=5)
    res = finetune(task, _data(30), tmp_path / "ft", system_prompt="Route it.", progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 10 and losses[-1] < losses[0] * 0.7
    assert res.n_train == 24 and res.n_val == 6 and res.steps == 10 and res.best_val_loss is not None
    files = {p.name for p in Path(res.adapter_dir).iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert json.loads((Path(res.adapter_dir) / "adapter_config.json").read_text())["r"] == 16
    # resume state is cleaned up; the data trained on is kept for `rungwise export`
    assert not (tmp_path / "ft" / "checkpoint").exists()
    lines = (tmp_path / "ft" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 24 and json.loads(lines[0])["messages"][0] == {"role": "system", "content": "Route it."}
    assert res.tokens_per_s > 0 and res.peak_mem_mb > 0 and res.train_tokens > 0
    # A second call with the same data and settings returns the finished run without training.
    again = finetune(task, _data(30), tmp_path / "ft", system_prompt="Route it.", progress=False)
    assert again.train_seconds == res.train_seconds and again.history == res.history


def test_loss_is_the_mean_over_answer_tokens_like_hf(tiny: Path) -> None:
    """The head-only-on-answers loss equals the standard causal-LM loss with masked prompts."""
    import torch

    from rungwise import models
    from rungwise.train.trainer import _make_loss_module

    model, tok = models.load_causal_lm(models.resolve(str(tiny)))
    enc, _ = encode_examples(tok, _data(5), "sys", 128)
    b = collate(enc, tok.pad_token_id)
    loss_sum, n = _make_loss_module(model)(**b)
    with torch.no_grad():
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    assert n.item() == sum(e.n_label_tokens for e in enc) - 0  # shift: the first token is never labelled
    assert torch.allclose(loss_sum / n, ref, atol=1e-5)
    # Changing only prompt tokens' labels cannot change the loss: they are masked.
    assert all(lab == -100 for e in enc for lab in e.labels[:5])


def test_packed_examples_do_not_attend_to_each_other(tiny: Path) -> None:
    import torch

    from rungwise import models
    from rungwise.train.trainer import _make_loss_module

    model, tok = models.load_causal_lm(models.resolve(str(tiny)))
    enc, _ = encode_examples(tok, _data(3), "sys", 128)
    packed = collate(enc, tok.pad_token_id, "packed")
    with torch.no_grad():
        # use_cache=False as in the trainer: with a KV cache transformers skips packed-sequence masking.
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        start = 0
        for e in enc:
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            assert torch.allclose(logits[start : start + len(e)], alone, atol=1e-4)
            start += len(e)
        lm = _make_loss_module(model)
        s_packed, n_packed = lm(**packed)
        s_padded, n_padded = lm(**collate(enc, tok.pad_token_id))
    assert n_packed == n_padded and torch.allclose(s_packed, s_padded, rtol=1e-4)


def test_interrupted_run_resumes_to_the_same_weights(tiny: Path, tmp_path: Path) -> None:
    # dropout > 0: the resumed run must also restore the random state to match
    task = _task(tiny, max_steps=6, eval_every=2, dropout=0.1, early_stopping_patience=None)
    data = _data(30)
    full = finetune(task, data, tmp_path / "a", system_prompt="", progress=False)

    def stop_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(task, data, tmp_path / "b", system_prompt="", progress=False, on_step=stop_at_3)
    state_file = tmp_path / "b" / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["step"] == 3 and not (tmp_path / "b" / "result.json").exists()
    # The training time counts the interrupted invocation too (what the training cost): pretend it
    # took 1000 s; the checkpoint alone says so.
    assert state["wall_time"] >= state["train_time"] > 0
    state_file.write_text(json.dumps({**state, "wall_time": 1000.0}))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = finetune(task, data, tmp_path / "b", system_prompt="", progress=False)
    assert 1000.0 < resumed.train_seconds <= 1000.0 + time.perf_counter() - t0
    # Neither torch's "lr_scheduler.step() before optimizer.step()" nor a deprecated transformers alias.
    assert not [str(w.message) for w in caught if issubclass(w.category, (UserWarning, FutureWarning, DeprecationWarning))]
    assert resumed.resumed_from_step == 3 and resumed.steps == 6
    a, b = _adapter(full), _adapter(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-6, k
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history], rel=1e-6)
    # Other settings with a stale checkpoint in the way: a clear error, not a silent mix.
    with pytest.raises(KeyboardInterrupt):
        finetune(task, data, tmp_path / "c", system_prompt="", progress=False, on_step=stop_at_3)
    with pytest.raises(ConfigError, match="no-resume"):
        finetune(_task(tiny, max_steps=6, learning_rate=1e-3), data, tmp_path / "c", system_prompt="", progress=False)


def test_early_stopping_keeps_the_best_validated_weights(tiny: Path, tmp_path: Path) -> None:
    """Validation answers contradict the training answers for the same input: the better the model
    fits the training answer, the worse its validation loss, so the run must stop early and keep
    the best validated weights, not the last ones.

    (This test used to rely on a learning rate "far too high" making the validation loss rise; that
    holds for some random tiny models and not others: 3 in 10 draws never stopped early. A
    contradiction between train and validation answers makes the rise certain.)"""
    import torch

    from rungwise.train.data import split_validation
    from rungwise.train.trainer import _make_loss_module

    task = _task(tiny, max_steps=30, eval_every=1, early_stopping_patience=2, bf16=False)
    spec = task.rungs.finetune
    # `label` (a group key) drives the stratified validation slice; `output` is what is trained on.
    data = [Example(input="Which team handles this?", output="refund", label=LABELS[i % 3], source=f"d:{i}") for i in range(30)]
    _, val = split_validation(data, spec.val_fraction, seed=spec.seed, vmin=spec.val_min, vmax=spec.val_max)
    data = [
        Example(input=ex.input, output="account" if ex in val else "refund", label=ex.label, source=ex.source) for ex in data
    ]
    res = finetune(task, data, tmp_path / "ft", system_prompt="", progress=False)
    vals = [h["val_loss"] for h in res.history]
    assert res.n_val == len(val) and res.stopped_early and res.steps < 30
    assert res.best_val_loss == min(vals) and res.best_step == res.steps - 2
    # The saved adapter is the best one: its validation loss is the best validation loss.
    model, tok = load_tuned_model(res, task, merge=False)
    val_rows = [json.loads(line) for line in (tmp_path / "ft" / "val.jsonl").read_text().splitlines()]
    assert {r["messages"][-1]["content"] for r in val_rows} == {"account"}
    enc, _ = encode_examples(tok, [Example(input=r["messages"][-2]["content"], output="account") for r in val_rows], "", 512)
    with torch.no_grad():
        s, n = _make_loss_module(model)(**collate(enc, tok.pad_token_id))
    assert float(s / n) == pytest.approx(res.best_val_loss, rel=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prefix_gives_the_padded_loss_and_gradients(tiny: Path, attention: str) -> None:
    """The common prompt prefix computed once per batch: the same loss, and the same gradient on
    every adapter weight (gradients from every example flow back through the one prefix)."""
    import torch

    from rungwise import models
    from rungwise.train.config import FinetuneSpec
    from rungwise.train.data import shared_prefix_length
    from rungwise.train.trainer import _make_loss_module, _wrap_peft

    model, tok = models.load_causal_lm(models.resolve(str(tiny)))
    model.set_attn_implementation(attention)
    model = _wrap_peft(model, FinetuneSpec(dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero, which would leave A without gradient
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.05)
    lm = _make_loss_module(model)
    enc, _ = encode_examples(tok, _data(6), "Route the customer ticket to the right team. " * 3, 256)
    assert shared_prefix_length(enc) > 20
    losses, grads = {}, {}
    for layout in ("padded", "shared_prefix"):
        model.zero_grad()
        s, n = lm(**collate(enc, tok.pad_token_id, layout))
        (s / n).backward()
        losses[layout] = float(s.detach() / n)
        grads[layout] = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    assert losses["shared_prefix"] == pytest.approx(losses["padded"], rel=1e-5)
    assert grads["padded"].keys() == grads["shared_prefix"].keys()
    for k, g in grads["padded"].items():
        scale = g.abs().max().item()
        assert scale > 0, k
        # fp32 summation order differs between the layouts: equal to ~1e-6 of the largest entry
        torch.testing.assert_close(grads["shared_prefix"][k], g, rtol=1e-4, atol=1e-5 * scale)


def test_plan_counts_the_run_and_finetune_follows_it(tiny: Path, tmp_path: Path) -> None:
    from rungwise.prompting import system_prompt
    from rungwise.train.trainer import plan_training

    task = _task(tiny, epochs=2, eval_every="epoch", prompt="full")
    task.instructions = "Route the customer ticket to the team that handles it."
    plan = plan_training(task, _data(30), tmp_path / "ft")
    assert (plan.n_train, plan.n_val, plan.steps_per_epoch, plan.steps, plan.evaluations) == (24, 6, 6, 12, 2)
    assert plan.prompt == "full" and plan.layout == "shared_prefix" and plan.prefix_tokens > 20
    assert plan.computed_tokens_per_epoch < plan.example_tokens_per_epoch
    assert plan.train_s_per_token > 0 and plan.estimated_seconds > 0 and plan.estimated_cost_usd is None
    assert json.loads(json.dumps(plan.to_dict()))["steps"] == 12  # what a run record stores
    line = plan.summary()
    assert "24 examples" in line and "full prompt" in line and "12 steps" in line and "shared prefix" in line
    res = finetune(task, _data(30), tmp_path / "ft", progress=False, plan=plan)
    assert res.steps == plan.steps and res.prompt == "full" and res.layout == "shared_prefix"
    assert res.system_prompt == system_prompt(task.instructions, task.labels)
    assert res.train_tokens == 2 * plan.example_tokens_per_epoch
    assert res.computed_tokens == plan.computed_tokens < res.train_tokens
    assert res.estimated_seconds == pytest.approx(plan.estimated_seconds, abs=0.1)
    # The finished run is found again, and planned as nothing to do.
    again = plan_training(task, _data(30), tmp_path / "ft")
    assert again.finished and again.remaining_steps == 0 and "reused" in again.summary()


def test_default_prompt_is_minimal_and_a_cap_samples_the_train_split(tiny: Path, tmp_path: Path) -> None:
    from rungwise.train.trainer import plan_training

    task = _task(tiny, max_train_examples=12, max_steps=2)
    task.instructions = "Route the ticket."
    plan = plan_training(task, _data(30), tmp_path / "ft", usd_per_hour=3.6)
    assert plan.n_available == 30 and plan.n_train + plan.n_val == 12
    assert "capped from 30 by max_train_examples" in plan.summary()
    assert plan.estimated_cost_usd == pytest.approx(plan.estimated_seconds / 1000)
    res = finetune(task, _data(30), tmp_path / "ft", progress=False, plan=plan)
    assert res.prompt == "minimal" and res.system_prompt == "" and res.n_available == 30
    first = json.loads((tmp_path / "ft" / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    # the same labels keep their shares in the sample
    labels = [json.loads(line)["messages"][-1]["content"] for line in (tmp_path / "ft" / "train.jsonl").read_text().splitlines()]
    assert set(labels) == set(LABELS)


def test_a_plan_over_the_budget_stops_before_training(tiny: Path, tmp_path: Path) -> None:
    from rungwise.train.plan import TrainingBudgetExceeded

    task = _task(tiny, epochs=3, budget_minutes=1e-6)
    with pytest.raises(TrainingBudgetExceeded) as e:
        finetune(task, _data(30), tmp_path / "ft", progress=False)
    assert "budget of 1e-06 min" in str(e.value) and "budget_minutes" in str(e.value)
    assert not (tmp_path / "ft" / "result.json").exists() and not (tmp_path / "ft" / "checkpoint").exists()


def _cpu_plan(**figures: Any) -> Any:
    """A TrainingPlan of a fresh one-process CPU run with a shared prompt prefix, from its figures."""
    from rungwise.train.plan import TrainingPlan

    return TrainingPlan(**{"n_skipped": 0, "start_step": 0, "layout": "shared_prefix", "device": "cpu", "world_size": 1,
                           "warmup_seconds": 4.0, **figures})


def test_budget_error_lists_the_fixes_that_fit() -> None:
    from rungwise.train.plan import BUDGET_MARGIN, TrainingBudgetExceeded

    # 9,744 + 256 examples, 3 epochs at 400 tokens/s: 9,750 s of training + 6 validations of 12,800 tokens at 1,200/s
    plan = _cpu_plan(
        prompt="full", n_available=10_000, n_train=9_744, n_val=256, epochs=3, steps=3750, steps_per_epoch=1250,
        evaluations=6, example_tokens_per_epoch=6_500_000, computed_tokens_per_epoch=1_300_000, computed_tokens=3_900_000,
        prefix_tokens=600, train_s_per_token=1 / 400, eval_s_per_token=1 / 1200, estimated_seconds=9_814,
        budget_minutes=60, usd_per_hour=0.5, validation_tokens=12_800, validation_rule=(0.1, 8, 256),
    )
    assert plan.estimated_cost_usd == pytest.approx(9_814 / 3600 * 0.5)
    with pytest.raises(TrainingBudgetExceeded) as e:
        plan.check_budget()
    msg = str(e.value)
    assert "~2.7 h" in msg and "budget of 60 min" in msg and "400 tokens/s" in msg
    # The suggested cap fits the budget with a margin, by the plan's own speeds: each train example costs
    # 1,300,000 / 9,744 tokens x 3 epochs / 400 per s, each validation example 6 x 50 tokens / 1,200 per s.
    n = plan.examples_that_fit(3600 * BUDGET_MARGIN)
    per_train, per_val = 1_300_000 / 9_744 * 3 / 400, 6 * 12_800 / 256 / 1200

    def seconds(m: int) -> float:
        return (m - 256) * per_train + 256 * per_val  # m > 2,560: the validation slice stays at its 256 maximum

    assert seconds(n) <= 3600 * BUDGET_MARGIN < seconds(n + 1)
    # 3 epochs x 3,600 / 9,814 s x the margin, one decimal down; the other fixes are named
    for fix in (f"max_train_examples: {n}", "prompt: minimal", f"epochs: {int(3 * 3600 / 9814 * BUDGET_MARGIN * 10) / 10:g}", "a GPU", "budget_minutes: 164"):
        assert fix in msg, fix
    plan.budget_minutes = 170
    plan.check_budget()  # fits now


def test_a_capped_run_holds_out_a_smaller_validation_slice_in_the_fit() -> None:
    # Below 2,560 examples the 10% validation slice shrinks with the cap; validation here is cheap per
    # example, so the fit is computed with the slice the capped run will really have.
    plan = _cpu_plan(
        prompt="minimal", n_available=10_003, n_train=9_747, n_val=256, epochs=3, steps=3657, steps_per_epoch=1219,
        evaluations=6, example_tokens_per_epoch=500_378, computed_tokens_per_epoch=295_699, computed_tokens=887_097,
        prefix_tokens=24, train_s_per_token=1 / 63, eval_s_per_token=1 / 190, estimated_seconds=14_400,
        budget_minutes=10, validation_tokens=256 * 30,
    )
    n = plan.examples_that_fit(600)
    from rungwise.train.data import validation_size

    def seconds(m: int) -> float:
        v = validation_size(m, 0.1, vmin=8, vmax=256)
        return (m - v) * 295_699 / 9_747 * 3 / 63 + v * 6 * 30 / 190

    assert seconds(n) <= 600 < seconds(n + 1) and validation_size(n, 0.1, vmin=8, vmax=256) < 256


def test_tuned_backend_prefers_the_trained_answers(tiny: Path, tmp_path: Path) -> None:
    from rungwise.backends.local import LocalBackend

    task = _task(tiny, max_steps=12, eval_every=12)
    res = finetune(task, _data(30), tmp_path / "ft", system_prompt="Route it.", progress=False)
    tuned = load_tuned_backend(tmp_path / "ft", task)  # from the directory, as `rungwise serve` does
    base = LocalBackend.load(str(tiny), dtype="float32", device="cpu")
    prompts = [[{"role": "system", "content": "Route it."}, {"role": "user", "content": f"{WORDS[lab]} order 99"}] for lab in LABELS]
    choices = [LABELS] * 3
    lt, lb = tuned.loglikelihood(prompts, choices), base.loglikelihood(prompts, choices)
    for i, lab in enumerate(LABELS):
        j = LABELS.index(lab)
        assert lt[i][j] > lb[i][j]  # the right label became more likely
    out = tuned.generate(prompts[:1], task.model.params.to_params())
    assert out[0].prompt_tokens > 0
    assert res.adapter_dir and tuned.model_id.startswith("local:")


def test_full_finetune_writes_a_full_safetensors_model(tiny: Path, tmp_path: Path) -> None:
    task = _task(tiny, method="full", max_steps=2, learning_rate=1e-4)
    res = finetune(task, _data(12), tmp_path / "ft", system_prompt="", progress=False)
    assert res.adapter_dir is None and res.hyperparameters["learning_rate"] == 1e-4
    files = {p.name for p in Path(res.model_dir).iterdir()}
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    model, _ = load_tuned_model(res, task)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_qlora_without_cuda_is_a_clear_error(tiny: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: QLoRA is supported here")
    with pytest.raises(Unsupported) as e:
        finetune(_task(tiny, method="qlora"), _data(12), tmp_path / "ft", system_prompt="", progress=False)
    assert "CUDA" in str(e.value) and "method: lora" in str(e.value)


def test_unknown_target_module_is_a_config_error(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="target_modules"):
        finetune(_task(tiny, target_modules=["no_such_proj"]), _data(12), tmp_path / "ft", system_prompt="", progress=False)
