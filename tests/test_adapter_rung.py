"""The adapter rung: a LoRA adapter (or merged model) trained outside rungwise, scored on the
ladder's held-out split with its provenance, forgetting check and the training cost the user
entered; and the clear refusals (missing, pickle-only, not fitting the task's model, changed
since it was scored), which happen before any model is loaded."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import write_jsonl
from rungwise.config.task import Task, task_from_dict
from rungwise.errors import ConfigError
from rungwise.rungs import BackendPool, Workspace
from rungwise.train.external import check_fits_base, inspect_weights_dir, model_name

# PEFT reads a transformers attribute that transformers 5 deprecated when the tests wrap a model
# themselves (rungwise silences exactly that warning around its own wraps).
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "rungwise" / "templates" / "ticket-routing"


def _llama(hidden: int, vocab: int = 200) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)


def _placeholder_model(d: Path) -> Path:
    """A folder that resolves as a model directory (a config.json), for refusals that come before
    the model is looked at."""
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def _config_only_model(d: Path, hidden: int) -> Path:
    """A model directory with a config.json and no weights: enough for rungwise to resolve it and
    for the fit check (which builds the model empty), never loadable."""
    _llama(hidden).save_pretrained(d)
    return d


def _random_adapter(d: Path, hidden: int, base_name: str | None) -> Path:
    """A LoRA adapter of a random tiny Llama of width ``hidden``, saved by PEFT; its recorded base
    set to ``base_name`` (what a trainer writes)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(_llama(hidden)), LoraConfig(r=4, target_modules="all-linear",
                                                                        task_type="CAUSAL_LM"))
    model.save_pretrained(d)
    cfg_path = d / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_name
    cfg_path.write_text(json.dumps(cfg))
    return d


def _task(tmp_path: Path, model_dir: Path, section: dict[str, Any], order: list[str] | None = None,
          **extra: Any) -> Task:
    raw: dict[str, Any] = {
        "name": "ext-adapter",
        "data": {"path": "data.jsonl", "test_fraction": 0.25, "seed": 13},
        "instructions": "Route the ticket to a team.",
        "labels": ["billing", "technical", "account", "shipping"],
        "metric": "accuracy",
        "model": {"id": str(model_dir), "dtype": "float32", "params": {"max_tokens": 4}},
        "rungs": {"order": order or ["adapter"], "adapter": section, **extra},
    }
    if not (tmp_path / "data.jsonl").exists():
        shutil.copy(SAMPLE / "data.jsonl", tmp_path / "data.jsonl")
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return task_from_dict(raw, base_dir=tmp_path)


def _prepare(task: Task, name: str = "adapter") -> Any:
    with Workspace(task, [], BackendPool(task.model.build)) as ws:
        return ws.prepare(name)


# -- refusals, before any model is loaded -----------------------------------------------------


def test_missing_directory_names_the_setting_and_what_to_put_there(tmp_path: Path) -> None:
    base = _placeholder_model(tmp_path / "base")
    with pytest.raises(ConfigError) as err:
        _prepare(_task(tmp_path, base, {"path": "adapters/nope"}))
    assert "rungs.adapter.path" in err.value.message and "does not exist" in err.value.message
    assert "adapter_config.json" in (err.value.hint or "") and "relative to task.yaml" in (err.value.hint or "")


def test_cli_reports_a_missing_adapter_without_a_traceback(tmp_path: Path) -> None:
    base = _placeholder_model(tmp_path / "base")
    _task(tmp_path, base, {"path": "adapters/nope"})
    p = subprocess.run([sys.executable, "-m", "rungwise", "climb", str(tmp_path / "task.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    out = p.stdout + p.stderr
    assert "rungs.adapter.path" in out and "Traceback" not in out


def test_pickle_only_weights_are_refused_unopened(tmp_path: Path) -> None:
    base = _placeholder_model(tmp_path / "base")
    adapter = tmp_path / "pickled"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM"}))
    (adapter / "adapter_model.bin").write_bytes(b"not even a pickle")  # never opened: the refusal comes first
    with pytest.raises(ConfigError) as err:
        _prepare(_task(tmp_path, base, {"path": "pickled"}))
    assert "pickle" in err.value.message and "adapter_model.bin" in err.value.message
    assert "safe_serialization" in (err.value.hint or "")
    merged = tmp_path / "merged-bin"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    (merged / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="pytorch_model.bin"):
        inspect_weights_dir(merged, "rungs.adapter.path")


def test_a_folder_that_is_neither_says_what_it_holds(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    (d / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        inspect_weights_dir(d, "rungs.tickets.path")
    assert "neither a PEFT adapter nor a model directory" in err.value.message
    assert "trainer_state.json" in err.value.message and "checkpoint-*" in (err.value.hint or "")


def test_adapter_trained_on_another_model_is_refused_by_name_then_by_shape(tmp_path: Path) -> None:
    base = _config_only_model(tmp_path / "base", 64)
    _random_adapter(tmp_path / "qwen-adapter", 32, "Qwen/Qwen2.5-0.5B")
    with pytest.raises(ConfigError) as err:
        _prepare(_task(tmp_path, base, {"path": "qwen-adapter"}))
    assert "'Qwen/Qwen2.5-0.5B'" in err.value.message and "check_base_name: false" in (err.value.hint or "")
    # told that the names differ on purpose, the shapes still refuse it, with PEFT's own finding
    with pytest.raises(ConfigError) as err:
        _prepare(_task(tmp_path, base, {"path": "qwen-adapter", "check_base_name": False}))
    assert "does not fit the task's model" in err.value.message and "size mismatch" in err.value.message
    assert "Qwen/Qwen2.5-0.5B" in (err.value.hint or "")


def test_fit_check_follows_peft_on_an_empty_base(tmp_path: Path) -> None:
    base64 = _config_only_model(tmp_path / "base64", 64)
    fits = inspect_weights_dir(_random_adapter(tmp_path / "a64", 64, str(base64)), "rungs.adapter.path")
    check_fits_base(fits, str(base64), "rungs.adapter.path")  # same shapes: no error
    # an adapter of modules the base does not have (GPT-2's c_attn on a Llama)
    import torch
    from safetensors.torch import save_file

    gpt2 = tmp_path / "gpt2-adapter"
    gpt2.mkdir()
    (gpt2 / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"],
         "base_model_name_or_path": "openai-community/gpt2"}))
    save_file({"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": torch.zeros(4, 768)},
              str(gpt2 / "adapter_model.safetensors"))
    with pytest.raises(ConfigError) as err:
        check_fits_base(inspect_weights_dir(gpt2, "rungs.g.path"), str(base64), "rungs.g.path")
    assert "not found in the base model" in err.value.message and "openai-community/gpt2" in (err.value.hint or "")
    # a merged model must be the base's architecture with other weights
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    wide = tmp_path / "merged-wide"
    LlamaForCausalLM(_llama(32)).save_pretrained(wide)
    (wide / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="parameter\\(s\\) differ"):
        check_fits_base(inspect_weights_dir(wide, "rungs.m.path"), str(base64), "rungs.m.path")


def test_model_names_compare_by_their_last_part() -> None:
    assert model_name("/scratch/u/models/Llama-3.2-1B-Instruct/") == model_name("meta-llama/Llama-3.2-1B-Instruct")
    assert model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == model_name("smollm2-135m-instruct")
    assert model_name("~/.cache/huggingface/hub/models--Qwen--Qwen2.5-0.5B/snapshots/4f1e") == "qwen2.5-0.5b"
    assert model_name("Qwen/Qwen2.5-0.5B") != model_name("Qwen/Qwen2.5-1.5B")


def test_a_non_local_model_is_refused(tmp_path: Path) -> None:
    from rungwise.config.model import model_spec_from

    task = _task(tmp_path, tmp_path, {"path": "x"})
    task = task.model_copy(update={"model": model_spec_from({"backend": "scripted"})})
    with pytest.raises(ConfigError, match="model.backend: local"):
        _prepare(task)


def test_stored_artifact_of_changed_weights_is_refused(tmp_path: Path) -> None:
    base = _config_only_model(tmp_path / "base", 64)
    adapter = _random_adapter(tmp_path / "a64", 64, str(base))
    task = _task(tmp_path, base, {"path": "a64"})
    wd = inspect_weights_dir(adapter, "rungs.adapter.path")
    stored = {"version": 1, "prompt": {"system": "", "demos": []}, "path": str(adapter), "form": "adapter",
              "files": wd.hashes(), "base_model": str(base)}
    (adapter / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text() + "\n")
    with Workspace(task, [], BackendPool(task.model.build)) as ws, pytest.raises(ConfigError) as err:
        ws.load("adapter", stored)
    assert "changed since they were scored" in err.value.message and "adapter_config.json" in err.value.message
    assert "climb again" in (err.value.hint or "")


def test_estimate_carries_the_training_cost_entered(tmp_path: Path) -> None:
    from rungwise.economics.estimate import estimate_profiles

    base = _placeholder_model(tmp_path / "base")
    task = _task(tmp_path, base, {"path": "a", "training_usd": 7.5, "training_examples": 150})
    profiles, _ = estimate_profiles(task)
    tr = {p.rung: p for p in profiles}["adapter"].training
    assert tr is not None and tr.usd == 7.5 and tr.examples == 150 and tr.seconds is None


# -- a real adapter trained outside rungwise, climbed -----------------------------------------


def _train_outside(base_dir: Path, train: list[Any], out: Path, steps: int = 2, batch: int = 4) -> tuple[Path, Path]:
    """LoRA-train the tiny model on the train split with PEFT alone (as a cluster script would),
    save the adapter, and the same weights merged into a full model: (adapter dir, merged dir)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    texts = [tok.apply_chat_template([{"role": "user", "content": ex.input}, {"role": "assistant", "content": ex.output}],
                                     tokenize=False) for ex in train]
    for step in range(steps):
        enc = tok(texts[step * batch:(step + 1) * batch], return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out / "adapter")
    merged = model.merge_and_unload()
    merged.save_pretrained(out / "merged")
    tok.save_pretrained(out / "merged")
    return out / "adapter", out / "merged"


@pytest.mark.model
def test_climb_scores_prices_and_explains_an_external_adapter(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from rungwise.climb import climb
    from rungwise.data.dataset import load_split
    from rungwise.serve import prepared_for

    probe = [{"question": f"What is {a} plus {a}?", "choices": [str(2 * a), str(2 * a + 1), str(a), "0"], "answer": 0}
             for a in range(1, 9)]
    write_jsonl(tmp_path / "probe.jsonl", probe)
    section = {"path": "out/adapter", "training_usd": 4.5, "training_examples": 48,
               "forgetting": {"probe": "probe.jsonl", "n": 8}}
    variant = {"use": "adapter", "path": "out/merged", "forgetting": {"enabled": False}}
    task = _task(tmp_path, tiny_llama_dir, section, order=["zero_shot", "adapter", "merged"], merged=variant)
    split = load_split(task)
    adapter_dir, merged_dir = _train_outside(tiny_llama_dir, list(split.train), tmp_path / "out")

    res = climb(task, all_rungs=True, limit=12)  # a quick climb: the first 12 test examples
    zero, ext, merged = res.rungs
    assert [r.rung for r in res.rungs] == ["zero_shot", "adapter", "merged"]
    assert ext.metric.n == zero.metric.n == 12 and ext.kind.trains_weights
    # provenance: the sha256 of every file it loaded, the base it records and the one it ran over
    art = ext.artifact
    weights = hashlib.sha256((adapter_dir / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert art["files"]["adapter_model.safetensors"] == weights and set(art["files"]) == {
        "adapter_config.json", "adapter_model.safetensors"}
    assert art["adapter_base"] == str(tiny_llama_dir) and art["lora"]["r"] == 8
    # scored with the minimal prompt it was trained with: no system turn of rungwise's
    assert ext.mean_prompt_tokens < zero.mean_prompt_tokens
    # the forgetting check ran against the base on the user's probe
    assert art["forgetting"]["n"] == 8 and "forgetting (probe.jsonl" in art["forgetting_summary"]
    notes = "\n".join(ext.notes)
    assert weights[:12] in notes and str(tiny_llama_dir) in notes and "$4.50 as you entered it" in notes
    # the merged copy of the same weights answers exactly as base + adapter (merged on load)
    assert merged.predictions == ext.predictions and merged.artifact["form"] == "merged"
    assert "training cost unknown" in "\n".join(merged.notes)
    # priced as trained weights, with the training cost entered
    cost = {c.rung: c for c in res.costs}["adapter"]
    assert cost.self_hosted is not None and cost.self_hosted.one_off is not None
    assert cost.self_hosted.one_off.training_usd == 4.5
    assert cost.self_hosted.one_off.training_basis == "the training cost you entered"
    assert ext.training is not None and ext.training.usd == 4.5 and ext.training.examples == 48
    unknown = {c.rung: c for c in res.costs}["merged"].self_hosted
    assert unknown is not None and unknown.one_off is not None and unknown.one_off.training_basis == "unknown"

    # served from the stored artifact: the same weights, merged into the base
    ws, prepared = prepared_for(task, "adapter")
    try:
        assert prepared.backend is not None
        answer = prepared.backend.generate([prepared.template.render([{"role": "user", "content": split.test[0].input}])],
                                           task.model.params.to_params())
        assert answer[0].text == ext.predictions[0]
    finally:
        ws.close()
