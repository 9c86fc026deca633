"""Sharded training: `accelerate launch --use_fsdp --fsdp_version 2` with 2 CPU processes (gloo) on a
tiny Llama gives the run of one process with the same global batch, for LoRA and full
fine-tuning; an interrupted sharded run resumes from its sharded checkpoint; the consolidated
artifacts load and answer like the one-process ones."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rungwise.config.task import load_task
from rungwise.data.dataset import load_split
from rungwise.train.trainer import FinetuneResult, finetune, load_tuned_backend

LABELS = ["refund", "shipping", "account"]
#: Per method: (learning rate, validate every n steps, relative tolerance on the losses). LoRA trains
#: gently (float32; FSDP2 reduce-scatters where one process sums: observed differences about 1e-6).
#: The full fine-tune diverges on purpose (lr 0.2), so that it stops early and the best weights,
#: from an earlier step, are restored from their sharded copy; the tiny differences grow with the
#: divergence (observed: up to 1e-4 by the last step).
SETTINGS = {"lora": (0.01, 2, 1e-5), "full": (0.2, 1, 1e-3)}
#: Tolerance on the trained weights, times the largest weight (observed: about 1.4e-4 full, 1.2e-4 LoRA).
WEIGHT_TOL = 1e-3

# Run under one `accelerate launch` (starting processes is most of the test's time): a full
# fine-tune through the module entry point; a LoRA fine-tune stopped after step 2 the way Ctrl-C
# stops it (every process writes its slices of the checkpoint first), the checkpoint's files
# noted, then resumed through the entry point (a new model and accelerator read the checkpoint).
_DRIVER = """
import json, sys
from pathlib import Path
from rungwise.config.task import load_task
from rungwise.data.dataset import load_split
from rungwise.train.__main__ import main
from rungwise.train.trainer import finetune

full_task, lora_task, out = sys.argv[1:4]
assert main([full_task, "--out", f"{out}/full", "--no-progress"]) == 0

def stop_after_2(step, loss):
    if step == 2:
        raise KeyboardInterrupt

task = load_task(lora_task)
try:
    finetune(task, load_split(task).train, Path(out) / "lora", progress=False, on_step=stop_after_2)
except KeyboardInterrupt:
    pass
ckpt = Path(out) / "lora" / "checkpoint"
seen = {"step": json.loads((ckpt / "state.json").read_text())["step"], "files": sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*"))}
(Path(out) / "checkpoint_seen.json").write_text(json.dumps(seen))
assert main([lora_task, "--out", f"{out}/lora", "--no-progress"]) == 0
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_task(d: Path, model_dir: Path, method: str, batch_size: int) -> Path:
    if not (d / "data.jsonl").exists():
        with open(d / "data.jsonl", "w") as f:
            for i in range(40):
                lab = LABELS[i % 3]
                f.write(json.dumps({"input": f"{lab} request number {i}" + " please" * (i % 5), "output": lab}) + "\n")
    lr, every, _ = SETTINGS[method]
    p = d / f"task_{method}{batch_size}.yaml"
    p.write_text(
        "name: fsdp\n"
        "data: {path: data.jsonl, test_fraction: 0.2}\n"
        "labels: [refund, shipping, account]\n"
        f"model: {{id: '{model_dir}'}}\n"
        "rungs:\n"
        f"  finetune: {{method: {method}, max_steps: 4, batch_size: {batch_size}, dropout: 0.0, learning_rate: {lr},\n"
        f"              bf16: false, eval_every: {every}, val_min: 4, early_stopping_patience: 2}}\n"
    )
    return p


def _launch(args: list[str], cwd: Path) -> None:
    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [
        launcher, "launch", "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _same_run(one: FinetuneResult, two: FinetuneResult, rtol: float) -> None:
    assert two.world_size == 2 and two.sharded and one.world_size == 1 and not one.sharded
    assert two.n_train == one.n_train and two.steps == one.steps
    assert (two.best_step, two.stopped_early) == (one.best_step, one.stopped_early)
    assert [h["train_loss"] for h in two.history] == pytest.approx([h["train_loss"] for h in one.history], rel=rtol)
    val = [h["val_loss"] for h in one.history if "val_loss" in h]
    assert [h["val_loss"] for h in two.history if "val_loss" in h] == pytest.approx(val, rel=rtol) and len(val) >= 2


def _same_weights(a_dir: Path, b_dir: Path) -> None:
    from safetensors.torch import load_file

    (a_file,) = a_dir.glob("*.safetensors")
    (b_file,) = b_dir.glob("*.safetensors")
    a, b = load_file(str(a_file)), load_file(str(b_file))
    assert sorted(a) == sorted(b)  # consolidated: the same tensors under the same names, no shards
    scale = max(t.abs().max().item() for t in a.values())
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= WEIGHT_TOL * scale, k


def _same_answers(one: FinetuneResult, two_dir: Path, task: object) -> None:
    """The consolidated artifact loads like any fine-tune and scores the labels as the 1-process one."""
    a, b = load_tuned_backend(one, task), load_tuned_backend(two_dir, task)
    prompts = [[{"role": "user", "content": f"{lab} request number 99"}] for lab in LABELS]
    la, lb = a.loglikelihood(prompts, [LABELS] * 3), b.loglikelihood(prompts, [LABELS] * 3)
    assert [x for row in lb for x in row] == pytest.approx([x for row in la for x in row], rel=1e-3, abs=1e-3)
    out = b.generate(prompts[:1], task.model.params.to_params())  # type: ignore[attr-defined]
    assert out[0].prompt_tokens > 0 and isinstance(out[0].text, str)


@pytest.mark.model
@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_fsdp_two_cpu_processes_match_one_process_and_resume(tiny_llama_dir: Path, tmp_path: Path) -> None:
    # One process, 4 examples per step: the reference runs.
    one = {}
    for method in ("full", "lora"):
        task = load_task(_write_task(tmp_path, tiny_llama_dir, method, 4))
        one[method] = finetune(task, load_split(task).train, tmp_path / f"one_{method}", progress=False)

    # Two sharded processes x 2 examples per step (see _DRIVER).
    full2, lora2 = _write_task(tmp_path, tiny_llama_dir, "full", 2), _write_task(tmp_path, tiny_llama_dir, "lora", 2)
    (tmp_path / "driver.py").write_text(_DRIVER)
    _launch([str(tmp_path / "driver.py"), str(full2), str(lora2), str(tmp_path / "two")], tmp_path)
    seen = json.loads((tmp_path / "two" / "checkpoint_seen.json").read_text())
    # The interrupted run's checkpoint held each process's slices, not gathered weights.
    assert seen["step"] == 2
    assert len([f for f in seen["files"] if f.startswith("sharded/") and f.endswith(".distcp")]) == 2
    assert "trainable.safetensors" not in seen["files"] and {"rng_0.pt", "rng_1.pt"} <= set(seen["files"])

    # The full fine-tune did what it is set up for: stop early, keep an earlier step's weights.
    assert one["full"].stopped_early and one["full"].best_step < one["full"].steps
    assert one["lora"].steps == 4
    for method in ("full", "lora"):
        two = FinetuneResult.load(tmp_path / "two" / method)
        _same_run(one[method], two, SETTINGS[method][2])
        _same_weights(one[method].artifact_dir, two.artifact_dir)
        task = load_task(tmp_path / f"task_{method}4.yaml")
        _same_answers(one[method], tmp_path / "two" / method, task)
    lora = FinetuneResult.load(tmp_path / "two" / "lora")
    assert lora.resumed_from_step == 2 and not (tmp_path / "two" / "lora" / "checkpoint").exists()
    assert (tmp_path / "two" / "lora" / "adapter" / "adapter_config.json").exists()


@pytest.mark.parametrize(("flag", "named"), [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")])
def test_a_deepspeed_or_megatron_launch_stops_with_a_clear_error(
    flag: str, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `accelerate launch --use_deepspeed` / a DeepSpeed config sets: refused before any model
    loads (exit 2, no traceback), with the FSDP2 launch as the fix."""
    from rungwise.train.__main__ import main

    task = _write_task(tmp_path, tmp_path / "no-model-needed", "lora", 2)
    monkeypatch.setenv(flag, "true")
    assert main([str(task), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert named in err and "--use_fsdp --fsdp_version 2" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
